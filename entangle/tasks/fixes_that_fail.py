"""The reference case study: stereo depth → pseudo-LiDAR → car and pedestrian detectors.

The improvement under study replaces the stereo network's disparity loss by a depth loss (the
only difference between u and u'), retrains both detectors on the new pseudo-LiDAR over seeds,
and compares every node. The oracle (ground-truth depth) and SGBM systems run beside it as
references, the depth error is broken down by distance, and the detectors' risk changes are
decomposed (upstream / approximation / estimation error) where the experiment asks for it.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from entangle.compare import attach_explanations, improvement, summary_lines
from entangle.decompose import decomposition
from entangle.stats import mean_sd, paired_delta
from entangle.study import Study
from entangle.tasks import output_dir

log = logging.getLogger(__name__)

DETECTORS = ("car", "pedestrian")
#: AP keys shown in tables and figures: (metric key suffix, label).
AP_KEYS = (("bev_ap40_strict_easy", "BEV easy"), ("bev_ap40_strict_moderate", "BEV moderate"),
           ("bev_ap40_strict_hard", "BEV hard"), ("3d_ap40_strict_moderate", "3D moderate"),
           ("bev_ap40_loose_moderate", "BEV moderate (loose IoU)"), ("bev_ap40_strict_near", "BEV near ≤20 m"),
           ("bev_ap11_strict_moderate", "BEV moderate, AP|R11"))


def _mean_sd(values: list[float]) -> dict[str, Any]:
    """Mean and sd over seeds of a quantity a seed may lack (NaN: e.g. no object in a bin)."""
    a = np.asarray(values, dtype=np.float64)
    return mean_sd(a[np.isfinite(a)])


def depth_bins(metrics_by_system: Mapping[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Depth error per distance bin (and near/far) for every system, mean and sd over seeds."""
    first = next(iter(metrics_by_system.values()))[0]
    bins = [k.split("@", 1)[1] for k in first if k.startswith("depth_absrel@") and not k.endswith(("near", "far"))]
    out: dict[str, Any] = {"bins": bins, "systems": {}}
    for name, per_seed in metrics_by_system.items():
        out["systems"][name] = {
            f"{m}@{b}": _mean_sd([s.get(f"{m}@{b}", float("nan")) for s in per_seed])
            for m in ("depth_absrel", "depth_mae", "epe") for b in [*bins, "near", "far"]}
    return out


def near_far_deltas(study_report: Mapping[str, Any], old_metrics: list[dict], new_metrics: list[dict],
                    bins: list[str]) -> dict[str, Any]:
    """Paired deltas (depth loss − disparity loss) of the depth error per bin: where each is better."""
    out = {}
    for b in [*bins, "near", "far"]:
        key = f"depth_absrel@{b}"
        o = [m[key] for m in old_metrics]
        n = [m[key] for m in new_metrics]
        if np.any(~np.isfinite(o)) or np.any(~np.isfinite(n)):
            continue
        pd = paired_delta(o, n, higher_is_better=False)
        out[b] = {"old": o, "new": n, "delta_mean": pd.mean, "delta_ci": list(pd.ci),
                  "better": {"improved": "depth loss", "worse": "disparity loss"}.get(pd.verdict, "neither (noise)")}
    return out


def flips(study, the_seeds: list[int], outcomes: Mapping[str, Any], direction_node: str = "pedestrian",
          attribute_source: str = "world") -> dict[str, Any]:
    """Churn of every node (depth-loss vs disparity-loss, against seed-to-seed churn) and the
    failure direction of the ``direction_node``'s negative flips on the world's object attributes.

    A detector's item is a ground-truth object, correct when its per-object loss is at most the
    outcome threshold; the direction pools (object, seed) pairs the disparity-loss system got
    right and asks which of them the depth-loss system lost (out-of-fold, so unbiased).
    """
    from entangle.analysis.churn import version_churn
    from entangle.analysis.directions import TooFewErrorsError, describe, fit_flip_direction
    from entangle.analysis.stability import OutcomeSpec, reference_spec, run_outcomes
    from entangle.data.world_attributes import world_attributes

    specs = {name: OutcomeSpec.from_config(c, where=f"flips.outcomes.{name}") for name, c in outcomes.items()}
    out: dict[str, Any] = {"churn": version_churn(study, nodes=list(specs), specs=specs)}
    split = study.old.eval_split
    if direction_node not in specs:
        return out
    # the same outcome as the churn's: a threshold left open is the old system's median loss
    spec = reference_spec(study.old_runs[the_seeds[0]], direction_node, split, specs[direction_node])
    world = study.old_runs[the_seeds[0]].values(attribute_source, split)
    block = world_attributes(world["left"], world["labels"], world.get("object_attributes"))
    table = {k: np.asarray(v, dtype=np.float64) for k, v in block[direction_node].items()}
    names = [k for k, v in table.items() if len(v) and np.all(np.isfinite(v)) and np.std(v) > 0]
    A = np.stack([table[k] for k in names], axis=1) if names else np.zeros((0, 0))
    old_err = np.concatenate([~run_outcomes(study.old_runs[s], direction_node, split, spec).correct
                              for s in the_seeds])
    new_err = np.concatenate([~run_outcomes(study.new_runs[s], direction_node, split, spec).correct
                              for s in the_seeds])
    X = np.tile(A, (len(the_seeds), 1))
    entry: dict[str, Any] = {"node": direction_node, "threshold": spec.threshold, "attributes": names,
                             "n_items": int(len(old_err)), "n_old_correct": int((~old_err).sum()),
                             "n_negative_flips": int((~old_err & new_err).sum()),
                             "n_positive_flips": int((old_err & ~new_err).sum())}
    try:
        d, rows = fit_flip_direction(X, old_err, new_err, seed=0)
    except TooFewErrorsError as err:
        entry["skipped"] = str(err)
        log.info("negative-flip direction of %s not fitted: %s", direction_node, err)
    else:
        entry.update(d.summary())
        entry["direction"] = dict(zip(names, d.direction.tolist()))
        entry["aligned_with"] = describe(d.oof_scores, X[rows], names)
    out["flip_direction"] = entry
    return out


def object_depth_errors(runs_by_system: Mapping[str, Mapping[int, Any]], stereo: str = "stereo",
                        source: str = "world", min_pixels: int = 3, surface: float = 1.5) -> dict[str, Any]:
    """Depth error on the pixels of the objects the detectors must find, per class and system.

    Whole-image depth error is dominated by road and background; a detector reads the points of
    its objects. An object's pixels are those inside its 2D box whose ground-truth depth lies
    within ``surface`` metres of its label's z (its visible surface); per object, the median
    absolute depth error over them; per system, the median over objects (moderate and easy
    objects) and the share of objects off by more than 1 m, averaged over seeds.
    """
    from entangle.data.labels import CAR, L, PEDESTRIAN

    out: dict[str, Any] = {}
    for name, runs in runs_by_system.items():
        per_class: dict[str, dict[str, list[float]]] = {"car": {"median": [], "over_1m": []},
                                                       "pedestrian": {"median": [], "over_1m": []}}
        for run in runs.values():
            split = run.system.eval_split
            world = run.values(source, split)
            gt, labels = np.asarray(world["depth"]), world["labels"]
            pred = np.asarray(run.values(stereo, split)["depth"])
            for cls, key in ((CAR, "car"), (PEDESTRIAN, "pedestrian")):
                errs = []
                for i in range(len(gt)):
                    for row in np.asarray(labels[i]):
                        if row[L["cls"]] != cls or not 0 <= row[L["difficulty"]] <= 1:
                            continue
                        x1, y1, x2, y2 = (int(round(float(row[L[k]]))) for k in ("x1", "y1", "x2", "y2"))
                        g = gt[i, y1:y2 + 1, x1:x2 + 1]
                        m = (g > 0) & (np.abs(g - row[L["z"]]) < surface)
                        if m.sum() >= min_pixels:
                            errs.append(float(np.median(np.abs(pred[i, y1:y2 + 1, x1:x2 + 1][m] - g[m]))))
                if errs:
                    per_class[key]["median"].append(float(np.median(errs)))
                    per_class[key]["over_1m"].append(float(np.mean(np.asarray(errs) > 1.0)))
        out[name] = {k: {stat: float(np.mean(v)) if v else float("nan") for stat, v in d.items()}
                     for k, d in per_class.items()}
    return out


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: ``python -m entangle experiment=fixes_that_fail``."""
    from entangle.report.case_study import save_case_study_figures
    from entangle.report.figures import save_study_figures

    start = time.perf_counter()
    study = Study.from_config(cfg)
    changed, the_seeds = study.changed, study.seeds
    log.info("case study: %s -> %s over seeds %s", OmegaConf.select(cfg, f"pipeline.nodes.{changed}.objective"),
             cfg.change.set.get("objective"), the_seeds)
    report: dict[str, Any] = improvement(study)
    if cfg.get("decompose", True) and cfg.get("decomposition"):
        n_dec = cfg.get("decompose_seeds")
        report["decomposition"] = decomposition(study, nodes={d: cfg.decomposition[d] for d in DETECTORS
                                                              if d in cfg.decomposition},
                                                seeds=the_seeds[:int(n_dec)] if n_dec else None)
        attach_explanations(report, report["decomposition"])
    if cfg.get("flips"):
        report["flips"] = flips(study, the_seeds, OmegaConf.to_container(cfg.flips.outcomes, resolve=True))

    # references: the same system with the stereo node replaced, every detector retrained
    # (on the first `reference_seeds` seeds only: they are context, not the study, and each
    # costs a full set of detector fits per seed)
    n_ref = cfg.get("reference_seeds")
    ref_seeds = the_seeds[:int(n_ref)] if n_ref else list(the_seeds)
    references: dict[str, Any] = {}
    ref_runs: dict[str, dict] = {}
    for name, system in study.references.items():
        runs = study.runs(name, ref_seeds)
        ref_runs[name] = runs
        references[name] = {
            node: {"metric": system.specs[node].node.metric, "seeds": ref_seeds,
                   **_mean_sd([runs[s].metrics(node)[system.specs[node].node.metric] for s in ref_seeds])}
            for node in (changed, *DETECTORS)}
    report["references"] = references
    report["store"] = {**study.store.stats.as_dict(), "root": str(study.store.root)}

    # depth error per distance bin: disparity loss (old), depth loss (new), references
    old_runs, new_runs = study.runs("old"), study.runs("new")
    stereo_metrics = {"disparity loss": [old_runs[s].metrics(changed) for s in the_seeds],
                      "depth loss": [new_runs[s].metrics(changed) for s in the_seeds]}
    for name, runs in ref_runs.items():
        stereo_metrics[name] = [runs[s].metrics(changed) for s in ref_seeds]
    bins = depth_bins(stereo_metrics)
    report["object_depth_error"] = object_depth_errors(
        {"disparity loss": old_runs, "depth loss": new_runs, **ref_runs}, stereo=changed)
    report["depth_by_distance"] = bins
    report["depth_loss_vs_disparity_loss"] = near_far_deltas(
        report, stereo_metrics["disparity loss"], stereo_metrics["depth loss"], bins["bins"])

    # AP per class and difficulty, old vs new, with paired intervals (a key some seed cannot
    # score, e.g. no near object, is reported without a verdict)
    ap: dict[str, Any] = {}
    for det in DETECTORS:
        ap[det] = {}
        for key, label in AP_KEYS:
            o = [old_runs[s].metrics(det).get(key, float("nan")) for s in the_seeds]
            n = [new_runs[s].metrics(det).get(key, float("nan")) for s in the_seeds]
            row: dict[str, Any] = {"label": label, "old": o, "new": n,
                                   "references": {r: float(np.nanmean([runs[s].metrics(det).get(key, np.nan)
                                                                       for s in ref_seeds]))
                                                  for r, runs in ref_runs.items()}}
            if np.all(np.isfinite(o)) and np.all(np.isfinite(n)):
                row.update(paired_delta(o, n, higher_is_better=True).as_dict())
            else:
                row.update({"delta_mean": float("nan"), "delta_ci": [float("nan")] * 2, "verdict": "undefined"})
            ap[det][key] = row
    report["ap"] = ap

    out = output_dir(cfg)
    report["figures"] = save_study_figures(study, report, out) + save_case_study_figures(report, out)
    report["profile"] = str(cfg.profile)
    report["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                         "cpus": __import__("os").cpu_count()}
    report["wall_time_s"] = round(time.perf_counter() - start, 1)
    results = results_markdown(report, cfg)
    (out / "RESULTS.md").write_text(results)
    if cfg.get("write_results", False):
        target = Path(__file__).resolve().parents[2] / "experiments" / "fixes_that_fail" / "RESULTS.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(results)
        log.info("results table written to %s", target)
    for line in summary_lines(report):
        log.info(line)
    return report


def _fmt(x: Any, digits: int = 3) -> str:
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return "–"


def results_markdown(report: Mapping[str, Any], cfg: DictConfig) -> str:
    """The results table of a run, side by side with the paper's qualitative result."""
    nodes = report["nodes"]
    seeds_ = report["seeds"]
    lines = ["# Fixes That Fail, reproduced on the synthetic world", "",
             f"Command: `python -m entangle experiment=fixes_that_fail profile={report.get('profile')}`  ",
             f"Seeds: {seeds_}; machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs; "
             f"wall time {report['wall_time_s']} s (store: {report['store']['hits']} hits, "
             f"{report['store']['misses']} misses).", "",
             "## Every node, disparity loss (old) vs depth loss (new)", "",
             "| node | metric | old | new | Δ (95% CI, paired t over seeds) | verdict |", "|---|---|---|---|---|---|"]
    for name, r in nodes.items():
        if "delta_mean" not in r:
            continue
        arrow = "↑" if r["higher_is_better"] else "↓"
        lines.append(f"| {name} | {r['metric']} {arrow} | {_fmt(np.mean(r['old']))} | {_fmt(np.mean(r['new']))} | "
                     f"{r['delta_mean']:+.3f} [{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}] | {r['verdict']} |")
    flags = ", ".join(f"{f['upstream']} → {f['downstream']}" for f in report["self_defeating"]) or "none"
    lines += ["", f"Self-defeating pairs: **{flags}**.", "",
              f"## References (mean ± sd over seeds {next(iter(report.get('references', {}).values()), {}).get('stereo', {}).get('seeds', '')})", "",
              "| system | " + " | ".join(["stereo depth_mae (m)", "car BEV AP mod.", "pedestrian BEV AP mod."]) + " |",
              "|---|---|---|---|"]
    for name, r in report.get("references", {}).items():
        lines.append(f"| {name} | " + " | ".join(f"{_fmt(r[n]['mean'])} ± {_fmt(r[n]['sd'])}"
                                               for n in ("stereo", "car", "pedestrian")) + " |")
    lines += ["", "## Depth abs-rel error by ground-truth distance (mean over seeds)", "",
              "| bin (m) | " + " | ".join(report["depth_by_distance"]["systems"]) + " | better |",
              "|---|" + "---|" * (len(report["depth_by_distance"]["systems"]) + 1)]
    nf = report.get("depth_loss_vs_disparity_loss", {})
    for b in [*report["depth_by_distance"]["bins"], "near", "far"]:
        cells = [_fmt(s[f"depth_absrel@{b}"]["mean"]) for s in report["depth_by_distance"]["systems"].values()]
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {nf.get(b, {}).get('better', '–')} |")
    ode = report.get("object_depth_error", {})
    if ode:
        lines += ["", "## Depth error on the objects' own pixels (median over objects, mean over seeds)", "",
                  "Whole-image error is mostly road and background; the detectors read their objects' points.", "",
                  "| system | car: median \\|Δz\\| (m) | car: share > 1 m | pedestrian: median \\|Δz\\| (m) | pedestrian: share > 1 m |",
                  "|---|---|---|---|---|"]
        for name, r in ode.items():
            lines.append(f"| {name} | {_fmt(r['car']['median'], 2)} | {_fmt(r['car']['over_1m'], 2)} | "
                         f"{_fmt(r['pedestrian']['median'], 2)} | {_fmt(r['pedestrian']['over_1m'], 2)} |")
    lines += ["", "## Detection AP|R40 (KITTI strict IoU unless noted), old → new", "",
              "| detector | AP | old | new | Δ (95% CI) | verdict |", "|---|---|---|---|---|---|"]
    for det, rows in report.get("ap", {}).items():
        for key, r in rows.items():
            lines.append(f"| {det} | {r['label']} | {_fmt(np.nanmean(r['old']))} | {_fmt(np.nanmean(r['new']))} | "
                         f"{r['delta_mean']:+.3f} [{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}] | {r['verdict']} |")
    if report.get("decomposition"):
        lines += ["", "## Decomposition of the detectors' risk changes (per-object loss, new − old)", "",
                  "| detector | total | upstream | approximation | estimation |", "|---|---|---|---|---|"]
        for det, d in report["decomposition"].items():
            cells = [f"{d['deltas'][t]['mean']:+.4f} [{d['deltas'][t]['ci'][0]:+.4f}, {d['deltas'][t]['ci'][1]:+.4f}]"
                     for t in ("total", "upstream", "approximation", "estimation")]
            lines.append(f"| {det} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += [f"- {det}: {d['sentence']}" for det, d in report["decomposition"].items()]
    churn = report.get("flips", {}).get("churn", {}).get("nodes", {})
    if churn:
        lines += ["", "## Churn: depth loss vs disparity loss (same seed) against seed-to-seed", "",
                  "Share of items (images for stereo, ground-truth objects for detectors) whose outcome "
                  "flips; nfr: right before, wrong after.", "",
                  "| node | version churn | version nfr | seed churn (old) | seed nfr (old) | nfr − seed nfr |",
                  "|---|---|---|---|---|---|"]
        for name, c in churn.items():
            d = c.get("version_minus_seed", {}).get("nfr", {})
            lines.append(f"| {name} | {_fmt(c['version']['churn']['mean'])} | {_fmt(c['version']['nfr']['mean'])} | "
                         f"{_fmt(c['seed_old']['churn']['mean'])} | {_fmt(c['seed_old']['nfr']['mean'])} | "
                         f"{d.get('mean', float('nan')):+.3f} [{_fmt(d.get('ci', [None])[0])}, "
                         f"{_fmt(d.get('ci', [None, None])[1])}] {d.get('verdict', '')} |")
    fd = report.get("flips", {}).get("flip_direction")
    if fd:
        lines += ["", f"## What the {fd['node']} negative flips share", "",
                  f"{fd['n_negative_flips']} negative and {fd['n_positive_flips']} positive flips among "
                  f"{fd['n_old_correct']} (object, seed) pairs the disparity-loss system got right."]
        if fd.get("skipped"):
            lines.append(f"No failure direction: {fd['skipped']}.")
        else:
            lines += [f"Failure direction (linear SVM on the world's object attributes): out-of-fold AUROC "
                      f"{_fmt(fd['cv_auroc'])}. Attributes it aligns with (Spearman ρ with the score; mean in "
                      "the top 10 % vs all):", "", "| attribute | ρ | mean, top 10 % | mean, all |", "|---|---|---|---|"]
            for row in fd["aligned_with"][:6]:
                lines.append(f"| {row['attribute']} | {row['spearman']:+.2f} | {_fmt(row['mean_top'], 2)} | "
                             f"{_fmt(row['mean_all'], 2)} |")
    lines += ["", "## The paper's result, side by side", "",
              "| | paper (KITTI, PSMNet, PointRCNN / F-PointNet) | here |", "|---|---|---|",
              f"| depth loss vs disparity loss, far depth | better | {nf.get('far', {}).get('better', '–')} |",
              f"| depth loss vs disparity loss, near depth | worse | "
              f"{ {'disparity loss': 'worse', 'depth loss': 'better'}.get(nf.get('near', {}).get('better'), 'no difference')} |",
              f"| car detection after retraining | better | {nodes.get('car', {}).get('verdict', '–')} |",
              f"| pedestrian detection after retraining | worse (self-defeating) | "
              f"{nodes.get('pedestrian', {}).get('verdict', '–')} |", ""]
    return "\n".join(lines)
