"""The failure-directions experiments: find where a node errs, describe it, grade it against a plant.

``run`` (``experiment=failure_directions``), three parts, each in ``report.json``:

- ``digits``: per seed, failure directions of ``analysis.node``'s errors in each feature space,
  graded against the planted subpopulation and described by attributes
  (:func:`entangle.analysis.failure_directions.failure_directions`);
- ``table``: the same on a synthetic attribute table whose detector misses low-contrast
  objects by construction (:func:`~entangle.analysis.failure_directions.planted_table`);
- ``flips``: an improvement study (``flips.old`` patches the pipeline into the old system) and
  the direction of its negative flips — what the change broke.

``run_world`` (``experiment=failure_directions_world``): which objects classical stereo gets
wrong on the synthetic world, per class, in the space of the world's exact object attributes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from entangle.analysis import failure_figures as ff
from entangle.analysis.directions import TooFewErrorsError, describe, fit_direction
from entangle.analysis.failure_directions import failure_directions, flip_directions, planted_table
from entangle.study import ConfigError, Study, patched_system, pipeline_where
from entangle.tasks import output_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point (see the module docstring)."""
    acfg = cfg.get("analysis")
    if not acfg:
        raise ConfigError("failure_directions needs an `analysis` block (node, truth, features, splits)")
    study = Study.from_config(cfg)
    out = output_dir(cfg)
    report: dict[str, Any] = {"node": str(acfg.node), "seeds": study.seeds, "fit_split": str(acfg.fit_split),
                              "eval_split": str(acfg.eval_split), "figures": []}
    report["digits"], files = failure_directions(study, acfg, out=out)
    report["figures"] += files
    if cfg.get("table") is not None:
        report["table"], files = planted_table(study.seeds, k=int(acfg.get("k", 50)), out=out,
                                               **OmegaConf.to_container(cfg.table, resolve=True))
        report["figures"] += files
    fcfg = cfg.get("flips")
    if fcfg:
        old = patched_system(cfg.pipeline, fcfg.old, where=f"{pipeline_where(cfg)} with flips.old")
        flips = Study(old, new=study.old, seeds=study.seeds, store=study.store, executor=study.executor,
                      changed=str(fcfg.get("changed", next(iter(dict(fcfg.old))))))
        report["flips"], files = flip_directions(flips, acfg, space=fcfg.get("space"), out=out)
        report["figures"] += files
    for space, s in report["digits"]["summary"].items():
        if isinstance(s, dict) and "planted_class" in s:
            pc = s["planted_class"]
            log.info("%s: planted AUROC %.3f, precision@k %.2f", space,
                     pc["auroc_planted"]["mean"], pc["precision_at_k"]["mean"])
    return report


# --------------------------------------------------------------------------------------------
# the synthetic stereo world: which objects does stereo get wrong?
# --------------------------------------------------------------------------------------------

def _crops(images: np.ndarray, labels, scenes: np.ndarray, rows: np.ndarray, size: int = 32) -> np.ndarray:
    """Grey crops (n, size, size) in [0, 1] of objects' 2D boxes in their scenes' left images."""
    import cv2

    from entangle.data.labels import L
    out = np.zeros((len(scenes), size, size), dtype=np.float32)
    for k, (i, j) in enumerate(zip(scenes, rows)):
        lab = labels[int(i)][int(j)]
        img = images[int(i)]
        H, W = img.shape[:2]
        x1, y1 = max(int(lab[L["x1"]]), 0), max(int(lab[L["y1"]]), 0)
        x2, y2 = min(int(np.ceil(lab[L["x2"]])), W - 1), min(int(np.ceil(lab[L["y2"]])), H - 1)
        if x2 <= x1 or y2 <= y1:
            continue
        crop = img[y1:y2 + 1, x1:x2 + 1].astype(np.float32).mean(axis=-1) / 255.0
        out[k] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return out


def run_world(cfg: DictConfig) -> dict[str, Any]:
    """Failure directions of classical stereo's per-object depth failures on the synthetic world.

    Scenes of the world are matched with OpenCV semi-global matching; an object fails when its
    median relative depth error exceeds ``world.rel_threshold`` (or most of its pixels get no
    match). Per class, a direction is fitted in the space of the world's exact per-object
    attributes on ``world.fit_split`` and graded and described on the other splits.
    """
    from hydra.utils import instantiate

    from entangle.analysis.object_errors import failed, object_depth_errors
    from entangle.data.world_source import OBJECT_ATTRIBUTES
    from entangle.models.classical_stereo import semi_global_matching
    from entangle.data.labels import CLASS_IDS

    wcfg = cfg.get("world")
    if wcfg is None:
        raise ConfigError("failure_directions_world needs a `world` block")
    src_cfg = OmegaConf.to_container(wcfg.source, resolve=True)
    source = instantiate(src_cfg)
    classes = {str(k): CLASS_IDS[str(k)] for k in wcfg.classes}
    stereo_kw = OmegaConf.to_container(wcfg.stereo, resolve=True)
    out = output_dir(cfg)
    tables: dict[str, dict[str, np.ndarray]] = {}
    crops: dict[str, np.ndarray] = {}
    for split in [str(wcfg.fit_split), *map(str, wcfg.eval_splits)]:
        d = source.load(split, 0)
        pred = semi_global_matching(d["left"], d["right"], **stereo_kw)       # (N, H, W)
        fb = d["calib"][:, 0, 0] * d["baseline"]
        e = object_depth_errors(pred, d["disparity"], d["depth"], d["labels"], fb,
                                classes=list(classes.values()))
        attrs = np.stack([d["object_attributes"][int(i)][int(j)] for i, j in zip(e["scene"], e["row"])]) \
            if len(e["scene"]) else np.zeros((0, len(OBJECT_ATTRIBUTES)))
        e["attrs"] = attrs.astype(np.float64)
        e["failed"] = failed(e, rel_threshold=float(wcfg.rel_threshold),
                             unmatched_threshold=float(wcfg.unmatched_threshold))
        tables[split] = e
        crops[split] = _crops(d["left"], d["labels"], e["scene"], e["row"])
    fit_t = tables[str(wcfg.fit_split)]
    medians = np.nanmedian(fit_t["attrs"], axis=0)
    medians = np.where(np.isfinite(medians), medians, 0.0)
    fill = lambda A: np.where(np.isnan(A), medians, A)  # noqa: E731  NaN attributes: fit-split medians
    ev = {k: np.concatenate([tables[str(s)][k] for s in wcfg.eval_splits]) for k in ("cls", "failed")}
    ev_attrs = fill(np.concatenate([tables[str(s)]["attrs"] for s in wcfg.eval_splits]))
    ev_crops = np.concatenate([crops[str(s)] for s in wcfg.eval_splits])
    report: dict[str, Any] = {"n_scenes": int(src_cfg.get("n_scenes", 0)), "stereo": stereo_kw,
                              "rel_threshold": float(wcfg.rel_threshold), "classes": {}, "figures": []}
    for name, cid in classes.items():
        rf, re_ = fit_t["cls"] == cid, ev["cls"] == cid
        entry: dict[str, Any] = {"n_fit": int(rf.sum()), "n_eval": int(re_.sum()),
                                 "failure_rate_fit": float(fit_t["failed"][rf].mean()) if rf.any() else None,
                                 "failure_rate_eval": float(ev["failed"][re_].mean()) if re_.any() else None}
        try:
            d = fit_direction(fill(fit_t["attrs"][rf]), fit_t["failed"][rf], seed=0)
        except TooFewErrorsError as err:
            entry["error"] = str(err)
            report["classes"][name] = entry
            continue
        scores = d.decision(ev_attrs[re_])
        entry.update({**d.summary(), "heldout_auroc": d.auroc(ev_attrs[re_], ev["failed"][re_]),
                      "direction": dict(zip(OBJECT_ATTRIBUTES, d.direction.tolist())),
                      "attributes": describe(scores, ev_attrs[re_], OBJECT_ATTRIBUTES)})
        report["classes"][name] = entry
        title = f"stereo depth failures, {name} (world, {report['n_scenes']} scenes)"
        report["figures"].append(ff.save(ff.score_histogram(scores, ev["failed"][re_], title=title),
                                         out, f"world_{name}_hist.png"))
        report["figures"].append(ff.save(ff.attribute_bars(entry["attributes"], title=title), out,
                                         f"world_{name}_attributes.png"))
        report["figures"].append(ff.save(ff.gallery(ev_crops[re_], scores, k=8, title=title), out,
                                         f"world_{name}_gallery.png"))
        log.info("%s: %d/%d eval objects failed; held-out AUROC %.3f; top attribute %s", name,
                 int(ev["failed"][re_].sum()), int(re_.sum()), entry["heldout_auroc"],
                 entry["attributes"][0]["attribute"])
    return report
