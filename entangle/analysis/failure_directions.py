"""Failure directions as analyses of a study: where a node errs, described and graded.

Jain et al. (2022): a linear classifier on a feature space predicts where a model errs; its
normal vector is a direction of failure, and samples ranked along it surface a hard
subpopulation. Here, per seed of the study's old system: per-class directions fitted to the
node's errors on a fit split in each feature space (its own embedding, the pixels), graded on a
held-out split against a planted subpopulation (AUROC of the score, precision at ``k``) and
described by the simulator's exact attributes (:func:`failure_directions`); the same on a
synthetic detection table with a planted failure (:func:`planted_table`); and the direction of
an improvement's negative flips (:func:`flip_directions`). The primitives are in
:mod:`entangle.analysis.directions`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from entangle.analysis import failure_figures as ff
from entangle.analysis.directions import (TooFewErrorsError, class_decision, describe,
                                          fit_class_directions, fit_direction,
                                          fit_flip_direction, negative_flips)
from entangle.analysis.planted import grade_direction
from entangle.stats import mean_sd
from entangle.study import ConfigError
from entangle.system import System, parse_ref

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


def _attribute_names(system: System, acfg: Mapping, width: int) -> list[str]:
    names = acfg.get("attribute_names")
    if names is None:
        src = parse_ref(str(acfg.attributes))[0]
        getter = getattr(system[src], "attribute_names", None)
        names = getter() if callable(getter) else [f"attr{i}" for i in range(width)]
    names = [str(n) for n in names]
    if len(names) != width:
        raise ConfigError(f"attribute_names has {len(names)} names for {width} attribute columns")
    return names


def _mean_sd(values: list[float]) -> dict[str, Any]:
    """Mean and sd over seeds of the values that exist (a seed without errors has no AUROC)."""
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return {**mean_sd(kept), "n": len(kept)}


def analyse_seed(run, system: System, acfg: Mapping, out: Path | None) -> tuple[dict[str, Any], list[str]]:
    """Failure directions of one run in every feature space, graded against the plant; figures
    into ``out`` when given."""
    figures = out is not None
    fit_s, eval_s = str(acfg.fit_split), str(acfg.eval_split)
    node, pred_out = str(acfg.node), str(acfg.get("prediction", "pred"))
    k = int(acfg.get("k", 50))
    Cs = [float(c) for c in acfg.get("Cs", [0.01, 0.1, 1.0])]
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


def planted_table(seeds_: list[int], *, n: int = 3000, k: int = 50, contrast_below: float = 0.25,
                  planted_rate: float = 0.9, natural: float = 1.0, noise: float = 0.3,
                  out: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """Failure directions on the planted detection table: fit on one draw, grade on another,
    per seed (no system to fit: the table is the detector's output by construction)."""
    from entangle.data.planted import DETECTION_ATTRIBUTES, planted_detection_table
    figures = out is not None
    n, k = int(n), int(k)
    kw = {"contrast_below": contrast_below, "planted_rate": float(planted_rate),
          "natural": float(natural), "noise": float(noise)}
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


def _class_flips(run, acfg: Mapping, F: dict, err: dict, fit_s: str, eval_s: str, k: int,
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
    out.update(_held_out(d, run, acfg, F[eval_s], negative_flips(*err[eval_s]), re_ & ~err[eval_s][0],
                         eval_s, k))
    return out


def _held_out(d: Any, run: Any, acfg: Any, feats: np.ndarray, flips: np.ndarray, right: np.ndarray,
              split: str, k: int) -> dict[str, Any]:
    """A fitted flip direction judged on ``split``'s items that were right before (``right``):
    its held-out AUROC for the negative ``flips``, graded against the planted bug and described
    by the attributes when the options name them."""
    scores = d.decision(feats[right])
    out: dict[str, Any] = {**d.summary(), "heldout_auroc": d.auroc(feats[right], flips[right])}
    if acfg.get("planted"):
        planted = ref_value(run, str(acfg.planted), split).astype(bool)
        out["planted"] = grade_direction(scores, planted[right], flips[right], k=k)
    if acfg.get("attributes"):
        attrs = _features(ref_value(run, str(acfg.attributes), split))
        out["attributes"] = describe(scores, attrs[right], _attribute_names(run.system, acfg, attrs.shape[1]))
    return out


def flip_directions(study: Any, options: Mapping, *, space: str | None = None,
                    out: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """The analysis: negative flips of ``options.node`` from the study's old system to its new
    one (right before, wrong after), the direction of those flips in feature space ``space``,
    graded and described like :func:`failure_directions`."""
    from entangle.compare import improvement
    acfg = _options(options)
    figures = out is not None
    seeds_ = list(study.seeds)
    compared = improvement(study)
    fit_s, eval_s = str(acfg.fit_split), str(acfg.eval_split)
    node, pred_out = str(acfg.node), str(acfg.get("prediction", "pred"))
    k = int(acfg.get("k", 50))
    space = str(space or next(iter(dict(acfg.features))))
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
        entry.update(_held_out(d, n, acfg, F[eval_s], flips_e, right, eval_s, k))
        if acfg.get("labels"):
            entry["by_class"] = _class_flips(n, acfg, F, err, fit_s, eval_s, k, seed)
        per_seed.append(entry)
        if figures and not files:
            t = f"negative flips of {node} ({space} space, seed {seed})"
            scores = d.decision(F[eval_s][right])
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
    return {"changed": study.changed, "space": space, "study": compared, "per_seed": per_seed,
            "summary": summary}, files




def _options(options: Mapping) -> Any:
    """The options as a config node (attribute access, ``.get``), whatever mapping was given."""
    from omegaconf import OmegaConf
    return options if OmegaConf.is_config(options) else OmegaConf.create(dict(options))


def failure_directions(study: Any, options: Mapping, *, out: Path | None = None,
                       which: str = "old") -> tuple[dict[str, Any], list[str]]:
    """The analysis: per seed of the study's system ``which``, failure directions of
    ``options.node``'s errors in every feature space of ``options.features``, graded against
    ``options.planted`` and described by ``options.attributes``; figures of the first seed into
    ``out``. Options: ``node``, ``prediction``, ``truth``, ``labels``, ``features``,
    ``attributes``, ``attribute_names``, ``planted``, ``images``, ``fit_split``, ``eval_split``,
    ``Cs``, ``min_errors``, ``k``."""
    acfg = _options(options)
    system = study.systems[which]
    for key in ("node", "truth", "features", "fit_split", "eval_split"):
        if acfg.get(key) is None:
            raise ConfigError(f"analysis.{key} is required")
    if str(acfg.node) not in system.specs:
        raise ConfigError(f"analysis.node={acfg.node!r} is not a node of the system (nodes: "
                          f"{sorted(system.specs)})")
    for split in (acfg.fit_split, acfg.eval_split):
        if str(split) not in system.splits:
            raise ConfigError(f"analysis split {split!r} is not one of the pipeline's splits {list(system.splits)}")
    runs = study.runs(which)
    per_seed, files = [], []
    for i, seed in enumerate(study.seeds):
        res, made = analyse_seed(runs[seed], system, acfg, out if i == 0 else None)
        per_seed.append(res)
        files += made
    return {"per_seed": per_seed, "summary": summarise(per_seed)}, files
