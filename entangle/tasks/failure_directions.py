"""The failure-directions experiment: find where a node errs, describe it, grade it against a plant.

Three parts, each in ``report.json``:

- ``digits``: per seed, the pipeline is run (through the store); per-class failure directions
  are fitted to the node's errors on ``analysis.fit_split`` in each feature space (its own
  embedding, the pixels) and graded on ``analysis.eval_split`` against the planted
  subpopulation (AUROC of the score, precision at ``k``), and described by attributes;
- ``table``: the same on a synthetic attribute table whose detector misses low-contrast
  objects by construction (:func:`~entangle.data.planted.planted_detection_table`);
- ``flips``: an improvement study (``flips.old`` patches the pipeline into the old system) and
  the direction of its negative flips — what the change broke — graded the same way.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from entangle.analysis import failure_figures as ff
from entangle.analysis.directions import (TooFewErrorsError, class_decision, describe,
                                          fit_class_directions, fit_direction,
                                          fit_flip_direction, negative_flips)
from entangle.analysis.planted import grade_direction
from entangle.system import System, parse_ref
from entangle.tasks import ConfigError, apply_profile, make_store, output_dir, profile, seeds
from entangle.tasks.study import pipeline_where

log = logging.getLogger(__name__)


def ref_value(run, ref: str, split: str) -> np.ndarray:
    """The value of ``"node.output"`` on ``split`` from a run (through the store)."""
    node, out = parse_ref(ref)
    values = run.values(node, split)
    if out not in values:
        raise ConfigError(f"{ref!r}: node {node!r} has no output {out!r} (it has {sorted(values)})")
    return np.asarray(values[out])


def _features(value: np.ndarray) -> np.ndarray:
    return np.asarray(value, dtype=np.float64).reshape(len(value), -1)


def _attribute_names(system: System, acfg: DictConfig, width: int) -> list[str]:
    names = acfg.get("attribute_names")
    if names is None:
        src = parse_ref(str(acfg.attributes))[0]
        getter = getattr(system[src], "attribute_names", None)
        names = getter() if callable(getter) else [f"attr{i}" for i in range(width)]
    names = [str(n) for n in names]
    if len(names) != width:
        raise ConfigError(f"analysis.attribute_names has {len(names)} names for {width} attribute columns")
    return names


def _mean_sd(values: list[float]) -> dict[str, float]:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(a):
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": int(len(a))}


def analyse_seed(run, system: System, acfg: DictConfig, sizes: DictConfig, out, *,
                 figures: bool) -> tuple[dict[str, Any], list[str]]:
    """Failure directions of one run in every feature space, graded against the plant."""
    fit_s, eval_s = str(acfg.fit_split), str(acfg.eval_split)
    node, pred_out = str(acfg.node), str(acfg.get("prediction", "pred"))
    k = int(sizes.get("k", acfg.get("k", 50)))
    Cs = [float(c) for c in sizes.get("Cs", acfg.get("Cs", [0.01, 0.1, 1.0]))]
    truth = {s: ref_value(run, str(acfg.truth), s) for s in (fit_s, eval_s)}
    errors = {s: run.values(node, s)[pred_out] != truth[s] for s in (fit_s, eval_s)}
    labels = ({s: ref_value(run, str(acfg.labels), s) for s in (fit_s, eval_s)}
              if acfg.get("labels") else None)
    planted = ref_value(run, str(acfg.planted), eval_s).astype(bool) if acfg.get("planted") else None
    attrs = _features(ref_value(run, str(acfg.attributes), eval_s)) if acfg.get("attributes") else None
    names = _attribute_names(system, acfg, attrs.shape[1]) if attrs is not None else []
    images = ref_value(run, str(acfg.images), eval_s) if acfg.get("images") else None
    err_e = errors[eval_s]
    result: dict[str, Any] = {
        "seed": run.seed, "accuracy": float(1 - err_e.mean()), "n_errors_eval": int(err_e.sum()),
        "planted_error_rate": float(err_e[planted].mean()) if planted is not None and planted.any() else None,
        "spaces": {}}
    files: list[str] = []
    # the class holding the planted samples: its direction is the one graded
    pclass = None
    if planted is not None and labels is not None and planted.any():
        vals, counts = np.unique(labels[eval_s][planted], return_counts=True)
        pclass = vals[np.argmax(counts)].item()
        result["planted_class"] = pclass
    for space, ref in dict(acfg.features).items():
        F = {s: _features(ref_value(run, str(ref), s)) for s in (fit_s, eval_s)}
        entry: dict[str, Any] = {"features": str(ref), "dim": int(F[fit_s].shape[1])}
        try:
            glob = fit_direction(F[fit_s], errors[fit_s], Cs=Cs, seed=run.seed)
        except TooFewErrorsError as err:
            entry["error"] = str(err)
            result["spaces"][space] = entry
            continue
        g_scores = glob.decision(F[eval_s])
        entry["global"] = {**glob.summary(), "heldout_auroc": glob.auroc(F[eval_s], err_e)}
        if planted is not None:
            entry["global"]["planted"] = grade_direction(g_scores, planted, err_e, k=k)
        scores, rows = g_scores, np.ones(len(err_e), dtype=bool)
        if labels is not None:
            dirs = fit_class_directions(F[fit_s], errors[fit_s], labels[fit_s], Cs=Cs, seed=run.seed,
                                        min_errors=int(acfg.get("min_errors", 10)))
            cs = class_decision(dirs, F[eval_s], labels[eval_s])
            per_class = {}
            for c, d in dirs.items():
                r = labels[eval_s] == c
                per_class[str(c)] = {**d.summary(), "heldout_auroc": d.auroc(F[eval_s][r], err_e[r]),
                                     "eval_errors": int(err_e[r].sum()), "eval_n": int(r.sum())}
            entry["classes"] = per_class
            if planted is not None:
                entry["classwise"] = {"planted": grade_direction(cs, planted, err_e, k=k)}
            if pclass is not None and pclass in dirs:
                rows = labels[eval_s] == pclass
                scores = dirs[pclass].decision(F[eval_s][rows])
                entry["planted_class"] = {"class": pclass,
                                          "planted": grade_direction(scores, planted[rows], err_e[rows], k=k)}
        if attrs is not None:
            desc = describe(scores, attrs[rows], names)
            entry["attributes"] = desc
        result["spaces"][space] = entry
        if figures:
            what = f"class {pclass}" if pclass is not None and rows.sum() < len(rows) else "all classes"
            title = f"{node} errors, {space} space, {what} (seed {run.seed})"
            files.append(ff.save(ff.score_histogram(scores, err_e[rows], title=title,
                                                    planted=None if planted is None else planted[rows]),
                                 out, f"directions_{space}_hist.png"))
            if attrs is not None:
                files.append(ff.save(ff.attribute_bars(entry["attributes"], title=title), out,
                                     f"directions_{space}_attributes.png"))
            if images is not None:
                files.append(ff.save(ff.gallery(images[rows], scores, k=10, title=title), out,
                                     f"directions_{space}_gallery.png"))
    return result, files


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and seed-to-seed spread of the grading figures per feature space."""
    out: dict[str, Any] = {"accuracy": _mean_sd([r["accuracy"] for r in per_seed])}
    spaces = per_seed[0]["spaces"].keys() if per_seed else []
    for space in spaces:
        s: dict[str, Any] = {}
        for which in ("planted_class", "classwise", "global"):
            got = [r["spaces"][space].get(which, {}).get("planted") for r in per_seed]
            got = [g for g in got if g]
            if got:
                s[which] = {m: _mean_sd([g[m] for g in got])
                            for m in ("auroc_planted", "precision_at_k", "auroc_errors")}
        tops = [r["spaces"][space]["attributes"][0]["attribute"] for r in per_seed
                if r["spaces"][space].get("attributes")]
        if tops:
            s["top_attribute"] = {t: tops.count(t) for t in sorted(set(tops))}
        out[space] = s
    return out


def planted_table(tcfg: DictConfig | Mapping, sizes: DictConfig, seeds_: list[int], out, *,
                  figures: bool) -> tuple[dict[str, Any], list[str]]:
    """Failure directions on the planted detection table: fit on one draw, grade on another."""
    from entangle.data.planted import DETECTION_ATTRIBUTES, planted_detection_table
    n = int(sizes.get("table_n", tcfg.get("n", 3000)))
    k = int(sizes.get("k", 50))
    kw = {"contrast_below": tcfg.get("contrast_below", 0.25),
          "planted_rate": float(tcfg.get("planted_rate", 0.9)),
          "natural": float(tcfg.get("natural", 1.0)), "noise": float(tcfg.get("noise", 0.3))}
    per_seed, files = [], []
    for seed in seeds_:
        fit = planted_detection_table(n, 2 * seed, **kw)
        ev = planted_detection_table(n, 2 * seed + 1, **kw)
        d = fit_direction(fit["features"], fit["miss"], seed=seed)
        s = d.decision(ev["features"])
        desc = describe(s, ev["attrs"], DETECTION_ATTRIBUTES)
        per_seed.append({"seed": seed, **d.summary(), "heldout_auroc": d.auroc(ev["features"], ev["miss"]),
                         "miss_rate": float(ev["miss"].mean()),
                         "planted_share_of_misses": float(ev["planted"][ev["miss"]].mean()),
                         "planted": grade_direction(s, ev["planted"], ev["miss"], k=k),
                         "attributes": desc})
        if figures and not files:
            t = f"planted detection table: misses (seed {seed})"
            files.append(ff.save(ff.score_histogram(s, ev["miss"], title=t, planted=ev["planted"]),
                                 out, "table_hist.png"))
            files.append(ff.save(ff.attribute_bars(desc, title=t), out, "table_attributes.png"))
    summary = {m: _mean_sd([r["planted"][m] for r in per_seed])
               for m in ("auroc_planted", "precision_at_k", "auroc_errors")}
    tops = [r["attributes"][0]["attribute"] for r in per_seed]
    summary["top_attribute"] = {t: tops.count(t) for t in sorted(set(tops))}
    return {"n": n, "config": kw, "per_seed": per_seed, "summary": summary}, files


def old_system(cfg: DictConfig, patch: Mapping) -> System:
    """The pipeline with ``patch`` (node name -> fields) merged in: the old side of a study."""
    pipe = OmegaConf.to_container(cfg.pipeline, resolve=True)
    for name, fields in dict(patch).items():
        if name not in pipe["nodes"]:
            raise ConfigError(f"flips.old names no node {name!r} of {pipeline_where(cfg)}")
        merged = OmegaConf.merge(pipe["nodes"][name], fields)
        pipe["nodes"][name] = OmegaConf.to_container(merged, resolve=True)
    return System.from_config(pipe, where=f"{pipeline_where(cfg)} with flips.old")


def _class_flips(run, acfg: DictConfig, F: dict, err: dict, fit_s: str, eval_s: str, k: int,
                 seed: int) -> dict[str, Any]:
    """The flip direction within the class that flipped most (attributes then compare like with like)."""
    labels = {s: ref_value(run, str(acfg.labels), s) for s in (fit_s, eval_s)}
    flips_f = negative_flips(*err[fit_s])
    vals, counts = np.unique(labels[fit_s][flips_f], return_counts=True)
    if not len(vals):
        return {"error": "no negative flips on the fit split"}
    c = vals[np.argmax(counts)].item()
    rf, re_ = labels[fit_s] == c, labels[eval_s] == c
    out: dict[str, Any] = {"class": c, "n_flips_fit": int(counts.max())}
    try:
        d, _ = fit_flip_direction(F[fit_s][rf], err[fit_s][0][rf], err[fit_s][1][rf], seed=seed)
    except TooFewErrorsError as e:
        out["error"] = str(e)
        return out
    right = re_ & ~err[eval_s][0]
    flips_e = negative_flips(*err[eval_s])
    scores = d.decision(F[eval_s][right])
    out.update({**d.summary(), "heldout_auroc": d.auroc(F[eval_s][right], flips_e[right])})
    if acfg.get("planted"):
        planted = ref_value(run, str(acfg.planted), eval_s).astype(bool)
        out["planted"] = grade_direction(scores, planted[right], flips_e[right], k=k)
    if acfg.get("attributes"):
        attrs = _features(ref_value(run, str(acfg.attributes), eval_s))
        out["attributes"] = describe(scores, attrs[right], _attribute_names(run.system, acfg, attrs.shape[1]))
    return out


def flip_study(cfg: DictConfig, new: System, store, seeds_: list[int], sizes: DictConfig, out, *,
               figures: bool) -> tuple[dict[str, Any], list[str]]:
    """Negative flips of ``analysis.node`` between the old and new systems, and their direction."""
    from entangle.compare import compare
    acfg, fcfg = cfg.analysis, cfg.flips
    old = old_system(cfg, fcfg.old)
    changed = str(fcfg.get("changed", next(iter(dict(fcfg.old)))))
    study = compare(old, new, seeds_, store, changed=changed)
    fit_s, eval_s = str(acfg.fit_split), str(acfg.eval_split)
    node, pred_out = str(acfg.node), str(acfg.get("prediction", "pred"))
    k = int(sizes.get("k", 50))
    space = str(fcfg.get("space", next(iter(dict(acfg.features)))))
    ref = str(acfg.features[space])
    per_seed, files = [], []
    for seed in seeds_:
        o, n = study.old_runs[seed], study.new_runs[seed]
        err = {}
        for s in (fit_s, eval_s):
            truth = ref_value(n, str(acfg.truth), s)
            err[s] = (o.values(node, s)[pred_out] != truth, n.values(node, s)[pred_out] != truth)
        flips_e = negative_flips(*err[eval_s])
        entry: dict[str, Any] = {"seed": seed, "n_flips_eval": int(flips_e.sum()),
                                 "n_positive_flips_eval": int((err[eval_s][0] & ~err[eval_s][1]).sum())}
        F = {s: _features(ref_value(n, ref, s)) for s in (fit_s, eval_s)}
        try:
            d, _ = fit_flip_direction(F[fit_s], *err[fit_s], seed=seed)
        except TooFewErrorsError as e:
            entry["error"] = str(e)
            per_seed.append(entry)
            continue
        right = ~err[eval_s][0]
        scores = d.decision(F[eval_s][right])
        entry.update({**d.summary(), "heldout_auroc": d.auroc(F[eval_s][right], flips_e[right])})
        if acfg.get("planted"):
            planted = ref_value(n, str(acfg.planted), eval_s).astype(bool)
            entry["planted"] = grade_direction(scores, planted[right], flips_e[right], k=k)
        if acfg.get("attributes"):
            attrs = _features(ref_value(n, str(acfg.attributes), eval_s))
            entry["attributes"] = describe(scores, attrs[right],
                                           _attribute_names(new, acfg, attrs.shape[1]))
        if acfg.get("labels"):
            entry["by_class"] = _class_flips(n, acfg, F, err, fit_s, eval_s, k, seed)
        per_seed.append(entry)
        if figures and not files:
            t = f"negative flips of {node} ({space} space, seed {seed})"
            files.append(ff.save(ff.score_histogram(scores, flips_e[right], title=t), out, "flips_hist.png"))
            if "attributes" in entry:
                files.append(ff.save(ff.attribute_bars(entry["attributes"], title=t), out,
                                     "flips_attributes.png"))
            if acfg.get("images"):
                imgs = ref_value(n, str(acfg.images), eval_s)[right]
                files.append(ff.save(ff.gallery(imgs, scores, k=10, title=t), out, "flips_gallery.png"))
    ok = [r for r in per_seed if "planted" in r]
    summary = {m: _mean_sd([r["planted"][m] for r in ok]) for m in ("auroc_planted", "precision_at_k")}
    summary["heldout_auroc"] = _mean_sd([r.get("heldout_auroc") for r in per_seed])
    by_class = [r["by_class"] for r in per_seed if r.get("by_class", {}).get("planted")]
    if by_class:
        summary["by_class"] = {m: _mean_sd([b["planted"][m] for b in by_class])
                               for m in ("auroc_planted", "precision_at_k")}
        tops = [b["attributes"][0]["attribute"] for b in by_class if b.get("attributes")]
        summary["by_class"]["top_attribute"] = {t: tops.count(t) for t in sorted(set(tops))}
    return {"changed": changed, "space": space, "study": study.report, "per_seed": per_seed,
            "summary": summary}, files


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point (see the module docstring)."""
    cfg = apply_profile(cfg)
    sizes = profile(cfg)
    if cfg.get("pipeline") is None or cfg.get("analysis") is None:
        raise ConfigError("failure_directions needs a pipeline and an `analysis` block")
    system = System.from_config(cfg.pipeline, where=pipeline_where(cfg))
    acfg = cfg.analysis
    for key in ("node", "truth", "features", "fit_split", "eval_split"):
        if acfg.get(key) is None:
            raise ConfigError(f"analysis.{key} is required")
    if str(acfg.node) not in system.specs:
        raise ConfigError(f"analysis.node={acfg.node!r} is not a node of {pipeline_where(cfg)}")
    for split in (acfg.fit_split, acfg.eval_split):
        if str(split) not in system.splits:
            raise ConfigError(f"analysis split {split!r} is not one of the pipeline's splits {list(system.splits)}")
    store = make_store(cfg)
    all_seeds = seeds(cfg)[: int(sizes.get("max_seeds", 10 ** 6))]
    out = output_dir(cfg)
    from entangle.executor import Run
    report: dict[str, Any] = {"node": str(acfg.node), "seeds": all_seeds, "fit_split": str(acfg.fit_split),
                              "eval_split": str(acfg.eval_split), "figures": []}
    per_seed = []
    for i, seed in enumerate(all_seeds):
        r = Run(system, seed, store).run_all()
        res, files = analyse_seed(r, system, acfg, sizes, out, figures=i == 0)
        per_seed.append(res)
        report["figures"] += files
    report["digits"] = {"per_seed": per_seed, "summary": summarise(per_seed)}
    if cfg.get("table") is not None:
        report["table"], files = planted_table(cfg.table, sizes, all_seeds, out, figures=True)
        report["figures"] += files
    if cfg.get("flips") is not None and sizes.get("flips", True):
        report["flips"], files = flip_study(cfg, system, store, all_seeds, sizes, out, figures=True)
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

    from entangle.models.layout import L
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
    from entangle.models.layout import CLASS_IDS

    sizes = profile(cfg)
    wcfg = cfg.get("world")
    if wcfg is None:
        raise ConfigError("failure_directions_world needs a `world` block")
    src_cfg = OmegaConf.to_container(wcfg.source, resolve=True)
    if sizes.get("n_scenes") is not None:
        src_cfg["n_scenes"] = int(sizes.n_scenes)
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
