"""The interventions experiment: discover what an improvement broke, fix it, re-run the study.

1. The improvement study (``pipeline`` + ``change``, as :mod:`entangle.tasks.study`) is run;
   the failing node is ``failing`` or the first flagged self-defeating downstream.
2. *Failure direction*: a direction is fitted to the failing node's negative flips (pooled over
   seeds) on ``directions.fit_split`` in the feature space ``directions.features``, graded on
   the eval split (held-out AUROC, planted recovery) and described by attributes; the failing
   node is retrained with the top-ranked samples up-weighted and the study is re-run.
3. *Misclassification regions* (when the source is a simulator): scenes are sampled from the
   exact latent space and run through the fitted new system; the failing node's errors are
   clustered into regions; regions the simulator confirms get ``regions.n_add`` samples,
   labelled by the simulator and added to ``regions.split``; the study is re-run.

The report says, for each fix, whether the self-defeating flag went away.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from omegaconf import DictConfig

from entangle.analysis import failure_figures as ff
from entangle.analysis.directions import (TooFewErrorsError, describe, fit_direction,
                                          negative_flips)
from entangle.analysis.interventions import (augmented, errors_with, flag_summary, node_errors,
                                             refix, upweighted)
from entangle.analysis.planted import grade_direction
from entangle.analysis.regions import DigitStyleSpace, find_regions
from entangle.compare import compare, summary_lines
from entangle.tasks import ConfigError, apply_profile, make_store, output_dir, profile, seeds
from entangle.tasks.failure_directions import _attribute_names, _features, ref_value
from entangle.tasks.study import build_systems

log = logging.getLogger(__name__)


def flip_direction(study, failing: str, dcfg: DictConfig, seeds_: list[int], k: int) -> tuple[Any, dict]:
    """The failing node's negative-flip direction, pooled over seeds, and its held-out grading."""
    fit_s, eval_s = str(dcfg.fit_split), str(dcfg.get("eval_split", study.new.eval_split))
    feats = str(dcfg.features)
    X, y = [], []
    for s in seeds_:
        o, n = study.old_runs[s], study.new_runs[s]
        eo, en = node_errors(o, failing, fit_s), node_errors(n, failing, fit_s)
        F = _features(ref_value(n, feats, fit_s))
        X.append(F[~eo])
        y.append(en[~eo])
    direction = fit_direction(np.concatenate(X), np.concatenate(y), seed=seeds_[0])
    per_seed = []
    for s in seeds_:
        o, n = study.old_runs[s], study.new_runs[s]
        eo, en = node_errors(o, failing, eval_s), node_errors(n, failing, eval_s)
        flips = negative_flips(eo, en)
        F = _features(ref_value(n, feats, eval_s))[~eo]
        scores = direction.decision(F)
        entry: dict[str, Any] = {"seed": s, "n_flips": int(flips.sum()),
                                 "heldout_auroc": direction.auroc(F, flips[~eo])}
        if dcfg.get("planted"):
            planted = ref_value(n, str(dcfg.planted), eval_s).astype(bool)[~eo]
            entry["planted"] = grade_direction(scores, planted, flips[~eo], k=k)
        if dcfg.get("attributes"):
            attrs = _features(ref_value(n, str(dcfg.attributes), eval_s))[~eo]
            names = _attribute_names(study.new, dcfg, attrs.shape[1])
            entry["attributes"] = describe(scores, attrs, names)[:5]
            if dcfg.get("labels") and flips.any():
                # across classes, attributes partly describe the class; within the class that
                # flipped most they describe the subpopulation
                labels = ref_value(n, str(dcfg.labels), eval_s)[~eo]
                vals, counts = np.unique(labels[flips[~eo]], return_counts=True)
                c = vals[np.argmax(counts)]
                entry["class"] = c.item()
                entry["attributes_in_class"] = describe(scores[labels == c], attrs[labels == c], names)[:5]
        per_seed.append(entry)
    return direction, {"features": feats, **direction.summary(), "per_seed": per_seed}


def region_data(study, failing: str, rcfg: DictConfig, sizes: DictConfig, seed: int) -> tuple[dict, dict]:
    """Regions of the failing node's errors in the simulator's latent space, and the samples to add."""
    src_name = str(rcfg.source)
    source = study.new[src_name]
    if not all(hasattr(source, a) for a in ("render", "bases", "sample_style")):
        raise ConfigError(f"regions.source={src_name!r} is not a simulator (needs render, bases, sample_style)")
    run = study.new_runs[seed]
    space = DigitStyleSpace(source, source.bases(str(rcfg.probe_split), seed))
    rng = np.random.default_rng([seed, 41])

    def errors(pr):
        return errors_with(run, failing, {(src_name, k): v for k, v in pr.outputs.items()})

    pr = space.sample(int(sizes.get("n_probe", rcfg.n_probe)), rng)
    err = errors(pr)
    regs = find_regions(pr.latents, err, groups=pr.groups, method=str(rcfg.method),
                        max_regions=int(rcfg.max_regions), min_members=int(rcfg.min_members), seed=seed)
    info: dict[str, Any] = {"n_probe": len(pr), "probe_error_rate": float(err.mean()), "regions": []}
    bugs = []
    for r in regs:
        held = space.sample_region(r, int(rcfg.n_eval), rng)
        rate = float(errors(held).mean())
        entry = {**r.summary(), "error_rate": rate, "bug": rate >= float(rcfg.min_error_rate)}
        if held.planted is not None:
            entry["planted_share"] = float(held.planted.mean())
        info["regions"].append(entry)
        if entry["bug"]:
            bugs.append(r)
    info["bugs"] = [r.index for r in bugs]
    if not bugs:
        return info, {}
    n_add = int(sizes.get("n_add", rcfg.n_add))
    weights = np.array([r.n_members for r in bugs], dtype=np.float64)
    counts = np.maximum(1, np.round(n_add * weights / weights.sum()).astype(int))
    parts = [space.sample_region(r, int(c), rng).outputs for r, c in zip(bugs, counts)]
    extra = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    info["n_added"] = int(sum(counts))
    return info, extra


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point (see the module docstring)."""
    cfg = apply_profile(cfg)
    sizes = profile(cfg)
    old, new, changed = build_systems(cfg)
    store = make_store(cfg)
    all_seeds = seeds(cfg, minimum=2)[: int(sizes.get("max_seeds", 10 ** 6))]
    if len(all_seeds) < 2:
        raise ConfigError("interventions needs at least 2 seeds (the flag needs a paired interval)")
    out = output_dir(cfg)
    study = compare(old, new, all_seeds, store, changed=changed)
    for line in summary_lines(study.report):
        log.info(line)
    failing = cfg.get("failing")
    if failing is None:
        flagged = [f["downstream"] for f in study.report["self_defeating"]]
        if not flagged:
            raise ConfigError("the improvement study flags no self-defeating downstream; name one with failing=NODE")
        failing = flagged[0]
    failing = str(failing)
    if failing not in new.specs or not new.specs[failing].targets:
        raise ConfigError(f"failing={failing!r} is not a model node of the pipeline")
    k = int(sizes.get("k", 50))
    variants: dict[str, dict[str, Any]] = {"new": flag_summary(study.report, failing)}
    report: dict[str, Any] = {"changed": changed, "failing": failing, "seeds": all_seeds,
                              "study": study.report, "figures": []}
    if cfg.get("directions") is not None:
        dcfg = cfg.directions
        try:
            direction, info = flip_direction(study, failing, dcfg, all_seeds, k)
        except TooFewErrorsError as err:
            log.warning("no failure direction for %s's negative flips: %s", failing, err)
            report["upweight"] = {"error": str(err)}
        else:
            fixed = upweighted(new, failing, direction, str(dcfg.features),
                               top_fraction=float(dcfg.top_fraction), factor=int(dcfg.factor))
            st, flags = refix(old, fixed, all_seeds, store, changed=changed, failing=failing)
            variants["new + upweighted"] = flags
            report["upweight"] = {"direction": info, "top_fraction": float(dcfg.top_fraction),
                                  "factor": int(dcfg.factor), "study": st.report, "flags": flags}
    if cfg.get("regions") is not None and sizes.get("regions", True):
        rcfg = cfg.regions
        info, extra = region_data(study, failing, rcfg, sizes, all_seeds[0])
        report["augment"] = {"regions": info}
        if extra:
            fixed = augmented(new, str(rcfg.source), extra, str(rcfg.split))
            st, flags = refix(old, fixed, all_seeds, store, changed=changed, failing=failing)
            variants["new + region data"] = flags
            report["augment"].update({"split": str(rcfg.split), "study": st.report, "flags": flags})
    report["variants"] = variants
    report["flag_gone"] = {name: not v["flagged"] for name, v in variants.items() if name != "new"}
    metric = study.report["nodes"][failing]["metric"]
    for node in (failing, changed):
        if any(node in v for v in variants.values()):
            report["figures"].append(ff.save(ff.delta_bars(variants, node, metric=metric if node == failing
                                                           else study.report["nodes"][node]["metric"],
                                                           title=f"{node}: change {changed!r} and fixes"),
                                             out, f"interventions_{node}.png"))
    for name, v in variants.items():
        log.info("%s: self-defeating %s", name, v["flagged"])
    return report
