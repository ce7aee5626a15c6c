"""Figures of the stereo case study: depth error by distance, and AP old vs new per difficulty."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from entangle.stats import IDENTICAL, detectable_text  # noqa: E402

SYSTEM_COLORS = {"disparity loss": "#1565c0", "depth loss": "#c62828", "oracle": "#2e7d32", "sgbm": "#757575"}


def depth_by_distance_figure(depth: Mapping[str, Any], metric: str = "depth_absrel"):
    """Depth error per ground-truth distance bin, one line per system with a ±1 sd seed band."""
    bins = depth["bins"]
    x = np.arange(len(bins))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, vals in depth["systems"].items():
        if name == "oracle":
            continue  # zero error by construction
        mean = np.array([vals[f"{metric}@{b}"]["mean"] for b in bins])
        sd = np.array([vals[f"{metric}@{b}"]["sd"] for b in bins])
        color = SYSTEM_COLORS.get(name)
        ax.plot(x, mean, marker="o", label=name, color=color)
        if np.all(np.isfinite(sd)):
            ax.fill_between(x, mean - sd, mean + sd, alpha=0.2, color=color)
    ax.set_xticks(x, [f"{b} m" for b in bins], fontsize=8)
    ax.set_ylabel({"depth_absrel": "depth abs-rel error", "depth_mae": "depth MAE (m)"}.get(metric, metric))
    ax.set_xlabel("ground-truth distance")
    ax.set_yscale("log")
    ax.set_title("depth error by distance (band: ±1 sd over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def outcomes_figure(outcomes: Mapping[str, Any]):
    """The declared detection outcomes, old vs new per detector, with the paired delta's interval."""
    dets = list(outcomes)
    fig, axes = plt.subplots(1, len(dets), figsize=(5.4 * len(dets), 3.8), squeeze=False)
    for ax, det in zip(axes[0], dets):
        rows = outcomes[det]
        keys = list(rows)
        y = np.arange(len(keys))[::-1]
        old = np.array([np.nanmean(rows[k]["old"]) for k in keys])
        new = np.array([np.nanmean(rows[k]["new"]) for k in keys])
        ax.barh(y + 0.2, old, height=0.4, color=SYSTEM_COLORS["disparity loss"], label="disparity loss (old)")
        ax.barh(y - 0.2, new, height=0.4, color=SYSTEM_COLORS["depth loss"], label="depth loss (new)")
        for yi, o, n, k in zip(y, old, new, keys):
            lo, hi = rows[k]["delta_ci"]
            ax.text(max(np.nan_to_num(o), np.nan_to_num(n)) + 0.01, yi,
                    f"Δ {rows[k]['delta_mean']:+.3f} [{lo:+.2f}, {hi:+.2f}] {rows[k]['verdict']}",
                    va="center", fontsize=7)
        ax.set_yticks(y, [outcome_label(k) for k in keys], fontsize=8)
        ax.set_xlim(0, 1.5)
        ax.set_xlabel("AP|R40")
        ax.set_title(det, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def outcome_label(key: str) -> str:
    """``bev_ap40_loose_near`` -> ``BEV AP|R40, loose IoU, near ≤ 20 m``."""
    parts = key.split("_")
    if len(parts) != 4:
        return key
    metric, ap, iou, subset = parts
    return (f"{metric.upper()} AP|R{ap[2:]}, {iou} IoU, "
            + {"near": "near ≤ 20 m"}.get(subset, subset))


def save_case_study_figures(report: Mapping[str, Any], out: Path) -> list[str]:
    """Write the case study's own figures into ``out``; returns their file names."""
    out = Path(out)
    files = []
    for name, fig in (("depth_by_distance.png", depth_by_distance_figure(report["depth_by_distance"])),
                      ("outcomes_old_vs_new.png", outcomes_figure(report["outcomes"]))):
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        files.append(name)
    return files


# -- RESULTS.md ------------------------------------------------------------------------------

def _fmt(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not np.isfinite(v) else f"{v:.{digits}f}"


def _delta(r: Mapping[str, Any], digits: int = 3) -> str:
    lo, hi = (r.get("delta_ci") or [None, None])[:2]
    if not np.isfinite(float(r.get("delta_mean", np.nan))):
        return "–"
    return f"{r['delta_mean']:+.{digits}f} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def results_markdown(report: Mapping[str, Any]) -> str:
    """RESULTS.md of a case-study run: the gate first, the declared outcomes, the paper's table,
    then every node, depth by distance, the decomposition, churn and the negative flips."""
    m = report["machine"]
    seeds = report["seeds"]
    declared = report["declared_outcomes"]
    lines = ["# Fixes That Fail, reproduced on the synthetic world", "",
             f"Command: `python -m entangle experiment=fixes_that_fail profile={report.get('profile')} "
             "write_results=true`  ",
             f"Seeds: {seeds}; machine: {m['platform']}, {m['cpus']} CPUs, load {m.get('load')} at the end; "
             f"wall time {report['wall_time_s']} s (store: {report['store']['hits']} fits reused, "
             f"{report['store']['misses']} computed).", ""]
    ceiling = report.get("ceiling")
    if ceiling is not None:
        lines += ["## Gate 1, the instrument: the detectors on ground-truth depth", ""]
        if ceiling.get("passed") is None:
            lines.append(f"**Not checked**: {ceiling.get('note')}.")
        else:
            lines.append(("**Passed**" if ceiling["passed"] else "**Failed**") + ": with the oracle's "
                         "pseudo-LiDAR (ground-truth depth) each detector must reach its floor on its primary "
                         "outcome" + ("." if ceiling["passed"] else "; the detector verdicts below measure "
                                       "the detectors' limits, not the upstream's change."))
            lines += ["", "| detector | outcome | oracle (mean over its seeds) | floor | |", "|---|---|---|---|---|"]
            for det, d in ceiling["detectors"].items():
                lines.append(f"| {det} | {outcome_label(d['metric'])} | {_fmt(d['value'])} ({d['seeds']} seed"
                             f"{'s' if d['seeds'] != 1 else ''}) | {d['floor']:g} | {'✓' if d['passed'] else '✗'} |")
        lines.append("")
    gate = report["gate"]
    v = gate["verdict"]
    lines += [("## Gate 2, the upstream" if ceiling is not None else "## The gate") +
              ": the learned stereo against SGBM and the oracle, on the objects' own pixels", ""]
    if v.get("passed") is None:
        lines.append(f"**Not checked**: {v.get('note')}.")
    elif v["passed"]:
        lines.append(f"**Passed**: both learned systems beat {v['reference']} on object pixels for both "
                     f"classes in every bin up to {v['up_to']:g} m, so the detector verdicts below test the "
                     "paper's mechanism.")
    else:
        lines.append(f"**Failed**: the learned stereo does not beat {v['reference']} on object pixels "
                     f"everywhere up to {v['up_to']:g} m; the detector verdicts below do not test the paper's "
                     "mechanism.")
    lines += ["", gate["markdown"], ""]
    paired = gate.get("paired") or {}
    if any(paired.values()):
        lines += ["Per class and bin, the paired difference depth loss − disparity loss of the median "
                  "object error over seeds (m; 95 % interval; negative: the depth loss is better):", "",
                  "| class | " + " | ".join(f"{b} m" for b in next(c for c in paired.values() if c)) + " |",
                  "|---|" + "---|" * len(next(c for c in paired.values() if c))]
        for cname, cells in paired.items():
            lines.append(f"| {cname} | " + " | ".join(f"{_delta(c)} ({c['better']})" for c in cells.values()) + " |")
        lines.append("")
        if gate.get("nothing_to_test"):
            lines += ["**Every interval covers zero**: on the objects the two losses do not differ in depth, "
                      "so the study has nothing to test; the detector results below are reported for "
                      "completeness.", ""]
    lines += ["## Outcomes declared before the run", "",
              "From the experiment config (`outcomes`), fixed before any result was produced:", ""]
    for det, keys in declared["detection"].items():
        lines.append(f"- {det}: " + ", ".join(f"`{k}` ({outcome_label(k)})" for k in keys)
                     + f"; primary: `{declared['primary'][det]}`")
    lines += [f"- gate: the learned stereo beats `{declared['gate']['reference']}` up to "
              f"{declared['gate']['up_to']:g} m", ""]
    lines += ["## The paper's result, side by side", "",
              "| claim | paper | here | Δ (95% CI, paired over seeds) | ✓/✗ |", "|---|---|---|---|---|"]
    for row in report["paper"]:
        lines.append(f"| {row['claim']} | {row['paper']} | {row['here']} | {_delta(row, 4)} | "
                     f"{'✓' if row['holds'] else '✗'} |")
    lines += ["", "## Declared detection outcomes, disparity loss (old) → depth loss (new)", "",
              "| detector | outcome | old | new | Δ (95% CI) | verdict | smallest detectable Δ | "
              + " | ".join(f"seeds for {e}" for e in ("0.01", "0.02", "0.05")) + " |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for det, rows in report["outcomes"].items():
        for key, r in rows.items():
            need = {} if r.get("identical") else r.get("seeds_needed") or {}
            lines.append(f"| {det} | {outcome_label(key)} | {_fmt(np.nanmean(r['old']))} | "
                         f"{_fmt(np.nanmean(r['new']))} | {_delta(r)} | {r['verdict']} | "
                         f"{detectable_text(r.get('detectable_effect'), r.get('identical'))} | "
                         + " | ".join(str(need.get(e) if need.get(e) is not None else "> 1000")
                                      if need else "–" for e in ("0.01", "0.02", "0.05")) + " |")
    lines += ["", "Smallest detectable Δ: the true mean AP change that a paired t test over these seeds "
              "detects with 80 % power at the 95 % level, from the seed-to-seed sd of the paired deltas; "
              "the last columns give the seeds needed for a true change of 0.01, 0.02, 0.05 AP; "
              f"*{IDENTICAL}*: every seed's delta was the same, so there is no spread to size them by.", ""]
    lines += ["## Every node, disparity loss (old) vs depth loss (new)", "",
              "| node | metric | old | new | Δ (95% CI) | verdict |", "|---|---|---|---|---|---|"]
    for name, r in report["nodes"].items():
        if "delta_mean" not in r:
            continue
        arrow = "↑" if r["higher_is_better"] else "↓"
        lines.append(f"| {name} | {r['metric']} {arrow} | {_fmt(np.mean(r['old']))} | {_fmt(np.mean(r['new']))} | "
                     f"{_delta(r)} | {r['verdict']} |")
    flags = ", ".join(f"{f['upstream']} → {f['downstream']}" for f in report["self_defeating"]) or "none"
    lines += ["", f"Self-defeating pairs (the one rule: the changed node better, the detector worse, each "
              f"on its own metric beyond noise): **{flags}**.", ""]
    refs = report.get("references") or {}
    if refs:
        nodes = list(next(iter(refs.values())))
        lines += ["## References (mean ± sd over their seeds)", "",
                  "| system | " + " | ".join(f"{n} {next(iter(refs.values()))[n]['metric']}" for n in nodes) + " |",
                  "|---|" + "---|" * len(nodes)]
        for name, r in refs.items():
            lines.append(f"| {name} | " + " | ".join(f"{_fmt(r[n]['mean'])} ± {_fmt(r[n]['sd'])}" for n in nodes)
                         + " |")
        lines.append("")
    dbd = report["depth_by_distance"]
    nf = report.get("depth_loss_vs_disparity_loss", {})
    lines += ["## Depth abs-rel error by ground-truth distance (whole image, mean over seeds)", "",
              "| bin (m) | " + " | ".join(dbd["systems"]) + " | better |",
              "|---|" + "---|" * (len(dbd["systems"]) + 1)]
    for b in [*dbd["bins"], "near", "far"]:
        cells = [_fmt(sv[f"depth_absrel@{b}"]["mean"]) for sv in dbd["systems"].values()]
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {nf.get(b, {}).get('better', '–')} |")
    if report.get("decomposition"):
        lines += ["", "## Decomposition of the detectors' risk changes (per-object loss, new − old)", "",
                  "| detector | total | upstream | approximation | estimation | dominant |", "|---|---|---|---|---|---|"]
        for det, d in report["decomposition"].items():
            cells = [_delta({"delta_mean": d["deltas"][t]["mean"], "delta_ci": d["deltas"][t]["ci"]}, 4)
                     for t in ("total", "upstream", "approximation", "estimation")]
            lines.append(f"| {det} | " + " | ".join(cells) + f" | {d['dominant_term']} |")
        lines.append("")
        lines += [f"- {det}: {d['sentence']}" for det, d in report["decomposition"].items()]
        warnings = sorted({w for d in report["decomposition"].values() for w in d.get("warnings", [])})
        lines += [f"- warning: {w}" for w in warnings]
    churn = report.get("flips", {}).get("churn", {}).get("nodes", {})
    if churn:
        lines += ["", "## Churn: depth loss vs disparity loss (same seed) against seed-to-seed", "",
                  "Share of items (images for stereo, ground-truth objects for detectors: right when a "
                  "detection finds them at the loose IoU) whose outcome flips; nfr: right before, wrong after.", "",
                  "| node | version churn | version nfr | seed churn (old) | seed nfr (old) | nfr − seed nfr |",
                  "|---|---|---|---|---|---|"]
        for name, c in churn.items():
            d = c.get("version_minus_seed", {}).get("nfr", {})
            lines.append(f"| {name} | {_fmt(c['version']['churn']['mean'])} | {_fmt(c['version']['nfr']['mean'])} | "
                         f"{_fmt(c['seed_old']['churn']['mean'])} | {_fmt(c['seed_old']['nfr']['mean'])} | "
                         f"{_delta({'delta_mean': d.get('mean', np.nan), 'delta_ci': d.get('ci', [None, None])})} "
                         f"{d.get('verdict', '')} |")
    fd = report.get("flips", {}).get("flip_direction")
    if fd:
        lines += ["", f"## What the {fd['node']} negative flips share", "",
                  f"{fd['n_negative_flips']} negative and {fd['n_positive_flips']} positive flips among "
                  f"{fd['n_old_correct']} (object, seed) pairs the disparity-loss system got right."]
        if fd.get("skipped"):
            lines.append(f"No failure direction: {fd['skipped']}.")
        else:
            lines += [f"Failure direction (linear SVM on the world's object attributes): out-of-fold AUROC "
                      f"{_fmt(fd.get('cv_auroc'))}. Attributes it aligns with (Spearman ρ with the score; mean in "
                      "the top 10 % vs all):", "", "| attribute | ρ | mean, top 10 % | mean, all |", "|---|---|---|---|"]
            for row in fd["aligned_with"][:6]:
                lines.append(f"| {row['attribute']} | {row['spearman']:+.2f} | {_fmt(row['mean_top'], 2)} | "
                             f"{_fmt(row['mean_all'], 2)} |")
    return "\n".join(lines) + "\n"
