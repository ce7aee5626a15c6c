"""Misclassification regions (Defuse, Slack et al. 2021) as an analysis of a study.

For each latent space — a VAE trained on the inputs (``vae``: the classic Defuse setting, with a
reference classifier as annotator) and, where the source is a simulator, its exact style
latents (``exact``: the simulator is the annotator) — and each clustering method:

1. latents are sampled, decoded and classified; the latents of errors are clustered into regions;
2. the planted region's coverage by the best single region is measured;
3. each region is sampled and labelled once by the annotator; a region whose confirmed error
   rate reaches ``min_error_rate`` is a bug;
4. the classifier is fine-tuned on the bug regions' labelled samples with a retention term
   (distillation on the training inputs outside the bug regions), and per-region accuracy
   (fresh samples), overall accuracy and planted-subpopulation accuracy are reported before
   and after.

The primitives (spaces, clustering, probing, fine-tuning) are in :mod:`entangle.analysis.regions`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
from omegaconf import OmegaConf

from entangle.analysis import failure_figures as ff
from entangle.analysis.planted import region_coverage
from entangle.analysis.regions import (DigitStyleSpace, VAESpace, find_regions, fine_tune, probe,
                                       reference_annotator, region_accuracy)
from entangle.models.vae import VAENode
from entangle.study import ConfigError
from entangle.system import NodeSpec, System, parse_ref

log = logging.getLogger(__name__)


def _input_arg(system: System, node: str, input_ref: str) -> str:
    """The name of ``node``'s only input, which must be wired to ``input_ref``."""
    spec = system.specs[node]
    args = [a for a, r in spec.inputs.items() if r == input_ref]
    if len(args) != 1 or len(spec.inputs) != 1:
        raise ConfigError(f"regions.node={node!r} must read exactly one input, wired to "
                          f"regions.input={input_ref!r} (its inputs: {dict(spec.inputs)})")
    return args[0]


def classifier_fn(fitted: Any, arg: str) -> Callable[[np.ndarray], np.ndarray]:
    """``classify(x) -> labels`` of a fitted node reading ``x`` as input ``arg``."""
    return lambda x: np.asarray(fitted.predict({arg: np.asarray(x)})["pred"])


def _value(run: Any, ref: str, split: str) -> np.ndarray:
    node, out = parse_ref(ref)
    return np.asarray(run.values(node, split)[out])


def _rows(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(len(a), -1)


def defuse_once(space, regions_space: str, method: str, rcfg: Any, *,
                min_error_rate: float,
                fitted: Any, arg: str, coverage_probe: Callable, keep_latents: Callable,
                x_train: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray,
                planted_eval: np.ndarray | None, seed: int, out, figures: bool) -> tuple[dict, list[str]]:
    """One space and clustering method: identify, distill, verify, correct; returns its report."""
    classify = classifier_fn(fitted, arg)
    rng = np.random.default_rng([seed, 17])
    pr, pred, errors = probe(space, classify, int(rcfg.n_probe), rng)
    regs = find_regions(pr.latents, errors, groups=pr.groups, method=method,
                        max_regions=int(rcfg.max_regions), min_members=int(rcfg.min_members),
                        quantile=float(rcfg.quantile), seed=seed)
    res: dict[str, Any] = {"space": regions_space, "method": method, "n_probe": len(pr),
                           "min_error_rate": min_error_rate,
                           "valid_share": float(pr.valid.mean()), "probe_error_rate": float(errors[pr.valid].mean()),
                           "n_regions": len(regs), "regions": []}
    cov = coverage_probe(regs)
    if cov is not None:
        res["planted_coverage"] = cov
    files: list[str] = []
    if not len(regs):
        return res, files
    n_label, n_eval = int(rcfg.n_label), int(rcfg.n_eval)
    fix = [space.sample_region(r, n_label, rng) for r in regs]
    held = [space.sample_region(r, n_eval, rng) for r in regs]
    before = region_accuracy(held, classify)
    bugs = [i for i, acc in enumerate(before) if np.isfinite(acc) and 1 - acc >= min_error_rate]
    acc_before = float(np.mean(classify(x_eval) == y_eval))
    res.update({"bugs": bugs, "accuracy_before": acc_before})
    if planted_eval is not None and planted_eval.any():
        res["planted_accuracy_before"] = float(np.mean(classify(x_eval[planted_eval]) == y_eval[planted_eval]))
    after = list(before)
    if bugs:
        x_fix = np.concatenate([fix[i].inputs[fix[i].valid] for i in bugs])
        y_fix = np.concatenate([fix[i].labels[fix[i].valid] for i in bugs])
        keep = keep_latents(regs, bugs)
        ft = rcfg.fine_tune
        tuned = fine_tune(fitted, x_fix, y_fix, x_train[keep], retention=float(ft.retention),
                          epochs=int(ft.epochs), lr=float(ft.lr),
                          seed=seed)
        classify_after = classifier_fn(tuned, arg)
        after = region_accuracy(held, classify_after)
        res.update({"n_labelled": int(len(x_fix)), "retained_share": float(keep.mean()),
                    "accuracy_after": float(np.mean(classify_after(x_eval) == y_eval))})
        if "planted_accuracy_before" in res:
            res["planted_accuracy_after"] = float(np.mean(classify_after(x_eval[planted_eval])
                                                          == y_eval[planted_eval]))
    else:
        res["accuracy_after"] = acc_before
    for i, r in enumerate(regs):
        labels, counts = np.unique(held[i].labels[held[i].valid], return_counts=True)
        preds = classify(held[i].inputs[held[i].valid])
        wrong = preds != held[i].labels[held[i].valid]
        common = np.unique(preds[wrong], return_counts=True)
        res["regions"].append({**r.summary(), "bug": i in bugs, "accuracy_before": before[i],
                               "accuracy_after": after[i],
                               "annotator_labels": {str(a): int(b) for a, b in zip(labels, counts)},
                               "predicted_when_wrong": {str(a): int(b) for a, b in zip(*common)},
                               "valid_share": float(held[i].valid.mean())})
    if figures:
        tag = f"{regions_space}_{method}"
        side = int(round(np.sqrt(held[0].inputs.shape[1])))
        imgs = [h.inputs[h.valid][:8].reshape(-1, side, side) for h in held]
        names = [f"r{r.index}{'*' if i in bugs else ''}" for i, r in enumerate(regs)]
        files.append(ff.save(ff.region_gallery(imgs, title=f"regions ({regions_space} latents, {method}); "
                                               "* = confirmed bug", names=names), out, f"regions_{tag}_gallery.png"))
        files.append(ff.save(ff.before_after_bars(names + ["overall"], before + [acc_before],
                                                  after + [res["accuracy_after"]],
                                                  title=f"accuracy before/after fine-tuning ({regions_space}, {method})"),
                             out, f"regions_{tag}_accuracy.png"))
    return res, files


def analyse(study: Any, system: System, cfg: Any, seed: int, out, *,
            figures: bool, spaces: list[str], min_error_rate: float) -> tuple[dict[str, Any], list[str]]:
    """All spaces and methods for one system and seed (the system and its VAE fitted through
    the study)."""
    rcfg = cfg.regions
    node, input_ref = str(rcfg.node), str(rcfg.input)
    train_s, eval_s = str(rcfg.train_split), str(rcfg.eval_split)
    vae_cfg = OmegaConf.to_container(cfg.vae, resolve=True)
    full = System({**system.specs, "vae": NodeSpec(VAENode(**vae_cfg), inputs={"x": input_ref},
                                                   output=True, fit_split=train_s)},
                  splits=system.splits, eval_split=system.eval_split, where=system.where)
    run = study.fit(full, [seed], label=f"{system.label or 'system'} with a VAE of {input_ref}")[seed]
    arg = _input_arg(full, node, input_ref)
    fitted = run.fitted(node)
    classify = classifier_fn(fitted, arg)
    x_train = _rows(_value(run, input_ref, train_s))
    x_eval = _rows(_value(run, input_ref, eval_s))
    y_eval = _value(run, str(rcfg.truth), eval_s)
    planted_eval = _value(run, str(rcfg.planted), eval_s).astype(bool) if rcfg.get("planted") else None
    report: dict[str, Any] = {"seed": seed, "accuracy": float(np.mean(classify(x_eval) == y_eval)),
                              "results": []}
    files: list[str] = []
    src_name = parse_ref(input_ref)[0]
    source = system[src_name]
    for space_name in spaces:
        scfg = cfg.spaces[space_name]
        if space_name == "vae":
            vae = run.fitted("vae")
            x_all = np.concatenate([_rows(_value(run, input_ref, s)) for s in system.splits])
            y_all = np.concatenate([_value(run, str(rcfg.truth), s) for s in system.splits])
            annotator = reference_annotator(x_all, y_all, seed=seed)
            anchors = vae.encode(x_train)[0]
            space = VAESpace(vae, anchors, annotator, scale=float(scfg.scale),
                             confidence=float(scfg.confidence))
            z_eval = vae.encode(x_eval)[0]

            def coverage(regs, z_eval=z_eval):
                return None if planted_eval is None or not planted_eval.any() else \
                    region_coverage(regs.assign(z_eval), planted_eval)

            def keep(regs, bugs, anchors=anchors):
                a = regs.assign(anchors)
                return ~np.isin(a, bugs)
        elif space_name == "exact":
            if not hasattr(source, "render") or not hasattr(source, "bases"):
                raise ConfigError(f"spaces.exact needs a simulator source with render/bases; "
                                  f"{type(source).__name__} has none")
            space = DigitStyleSpace(source, source.bases(train_s, seed))
            train_vals = run.values(src_name, train_s)

            def coverage(regs, space=space):
                pp = space.sample(int(rcfg.n_probe), np.random.default_rng([seed, 29]))
                if pp.planted is None or not pp.planted.any():
                    return None
                return region_coverage(regs.assign(pp.latents, pp.groups), pp.planted)

            def keep(regs, bugs, tv=train_vals):
                a = regs.assign(tv["style"], tv["y_true"])
                return ~np.isin(a, bugs)
        else:
            raise ConfigError(f"unknown latent space {space_name!r}: expected 'vae' or 'exact'")
        for method in rcfg.methods:
            res, f = defuse_once(space, space_name, str(method), rcfg,
                                 min_error_rate=min_error_rate, fitted=fitted,
                                 arg=arg, coverage_probe=coverage, keep_latents=keep,
                                 x_train=x_train, x_eval=x_eval, y_eval=y_eval,
                                 planted_eval=planted_eval, seed=seed, out=out, figures=figures)
            report["results"].append(res)
            files += f
            cov = res.get("planted_coverage") or {}
            log.info("%s/%s: %d regions, bugs %s, coverage %s, accuracy %.3f -> %.3f", space_name, method,
                     res["n_regions"], res.get("bugs"), None if not cov else round(cov["coverage"], 3),
                     res.get("accuracy_before", float("nan")), res.get("accuracy_after", float("nan")))
    return report, files


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Per setting, space and method: mean over seeds of coverage and accuracy before/after."""
    out: dict[str, Any] = {}
    for setting in ("planted", "classic"):
        groups: dict[str, list[dict]] = {}
        for seed_res in report[setting]:
            for r in seed_res["results"]:
                groups.setdefault(f"{r['space']}/{r['method']}", []).append(r)
        s = {}
        for key, rs in groups.items():
            def mean(field, rs=rs):
                v = [r[field] for r in rs if r.get(field) is not None]
                return float(np.mean(v)) if v else None
            bug_before = [reg["accuracy_before"] for r in rs for reg in r["regions"] if reg["bug"]]
            bug_after = [reg["accuracy_after"] for r in rs for reg in r["regions"] if reg["bug"]]
            s[key] = {"n_regions": mean("n_regions"), "n_bugs": float(np.mean([len(r.get("bugs", [])) for r in rs])),
                      "bug_region_accuracy_before": float(np.mean(bug_before)) if bug_before else None,
                      "bug_region_accuracy_after": float(np.mean(bug_after)) if bug_after else None,
                      "accuracy_before": mean("accuracy_before"), "accuracy_after": mean("accuracy_after"),
                      "planted_accuracy_before": mean("planted_accuracy_before"),
                      "planted_accuracy_after": mean("planted_accuracy_after")}
            covs = [r["planted_coverage"] for r in rs if r.get("planted_coverage")]
            if covs:
                s[key]["coverage"] = float(np.mean([c["coverage"] for c in covs]))
                s[key]["purity"] = float(np.mean([c["purity"] for c in covs]))
        out[setting] = s
    return out


def misclassification_regions(study: Any, cfg: Any, *, out: Path, which: str = "old",
                              setting: str = "planted", spaces: list[str] | None = None,
                              min_error_rate: float | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The analysis: Defuse on ``cfg.regions.node`` of the study's system ``which``, per seed;
    ``cfg`` holds ``regions``, ``vae`` and ``spaces`` (see the experiment config). Returns the
    per-seed results and the figures written into ``out`` (first seed)."""
    rcfg = cfg.regions
    for key in ("node", "input", "truth", "train_split", "eval_split", "methods"):
        if rcfg.get(key) is None:
            raise ConfigError(f"regions.{key} is required")
    system = study.systems[which]
    if str(rcfg.node) not in system.specs:
        raise ConfigError(f"regions.node={rcfg.node!r} is not a node of the system (nodes: {sorted(system.specs)})")
    spaces = list(spaces or [str(s) for s in cfg.spaces])
    results, figures = [], []
    for i, seed in enumerate(study.seeds):
        res, files = analyse(study, system, cfg, seed, out, figures=i == 0, spaces=spaces,
                             min_error_rate=float(rcfg.min_error_rate if min_error_rate is None
                                                  else min_error_rate))
        results.append(res)
        figures += files
    return results, figures
