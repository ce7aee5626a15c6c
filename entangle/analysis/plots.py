"""Figures of the stress, instability, churn and mitigation analyses (matplotlib, PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SEED_COLOR = "#90a4ae"
COLORS = {"single": "#607d8b", "ensemble": "#2e7d32", "label_smoothing": "#1565c0",
          "version": "#c62828", "seed_old": "#9e9e9e", "seed_new": "#bdbdbd",
          "plain": "#c62828", "distilled": "#1565c0"}


def _save(fig, out: Path, name: str) -> str:
    fig.savefig(Path(out) / name, dpi=100)
    plt.close(fig)
    return name


def stress_figure(report: Mapping[str, Any], node: str):
    """Metric vs severity per corruption for one node: a line per seed, the seed band, i.i.d. level."""
    cors = list(report["corruption_metrics"])
    subs = list(report.get("subpopulations", {}))
    panels = len(cors) + (1 if subs else 0)
    cols = min(5, max(1, panels))
    rows = max(1, int(np.ceil(panels / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.7 * cols, 2.4 * rows), squeeze=False)
    info = report["nodes"][node]
    iid = np.asarray(info["iid"], dtype=float)
    sev = [int(s) for s in report["severities"]]
    for ax, c in zip(axes.flat, cors):
        vals = np.array([report["corruption_metrics"][c]["severities"][str(s)][node] for s in sev],
                        dtype=float)  # (severities, seeds)
        x = [0] + sev
        full = np.vstack([iid[None, :], vals])
        for j in range(full.shape[1]):
            ax.plot(x, full[:, j], color=SEED_COLOR, lw=0.8, alpha=0.8)
        ax.fill_between(x, full.min(axis=1), full.max(axis=1), color="#1565c0", alpha=0.2, lw=0)
        ax.plot(x, full.mean(axis=1), color="#1565c0", lw=2)
        ratio = report["underspecification"][node]["corruptions"][c]["ratio"]
        ax.set_title(f"{c}\nsd ratio {ratio:.1f}" if ratio is not None else c, fontsize=8)
        ax.set_xticks(x, ["iid"] + [str(s) for s in sev], fontsize=7)
        ax.tick_params(labelsize=7)
    if subs:
        ax = axes.flat[len(cors)]
        for i, p in enumerate(subs):
            v = np.asarray(report["subpopulations"][p]["nodes"][node] or [], dtype=float)
            if not np.any(np.isfinite(v)):
                continue  # not defined for this node's items
            ax.scatter(np.full(len(v), i + 1), v, color=SEED_COLOR, s=10)
            ax.plot([i + 0.7, i + 1.3], [np.nanmean(v)] * 2, color="#c62828", lw=2)
        ax.scatter(np.zeros(len(iid)), iid, color=SEED_COLOR, s=10)
        ax.plot([-0.3, 0.3], [iid.mean()] * 2, color="#1565c0", lw=2)
        ax.set_xticks(range(len(subs) + 1), ["iid"] + subs, rotation=30, fontsize=7, ha="right")
        ax.set_title("subpopulations", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    arrow = "↑" if info["higher_is_better"] else "↓"
    fig.suptitle(f"{node}: {info['metric']} {arrow} per seed under stress ({len(iid)} seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def save_stress_figures(report: Mapping[str, Any], out: Path) -> list[str]:
    """One stress figure per model node (``stress_NODE.png``)."""
    return [_save(stress_figure(report, n), out, f"stress_{n}.png") for n in report["nodes"]]


def entropy_figure(entropies: Mapping[str, Mapping[str, np.ndarray]]):
    """Histograms of per-item label entropy: one panel per node, one series per source."""
    names = list(entropies)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.3 * max(1, len(names)), 2.8), squeeze=False)
    for ax, n in zip(axes[0], names):
        series = entropies[n]
        top = max([float(np.max(v)) for v in series.values() if len(v)] + [1e-3])
        bins = np.linspace(0, top, 16)
        any_unstable = False
        for label, v in series.items():
            v = np.asarray(v)
            share = float(np.mean(v > 1e-12)) if len(v) else 0.0
            any_unstable |= share > 0
            ax.hist(v[v > 1e-12], bins=bins, alpha=0.55, color=COLORS.get(label),
                    label=f"{label} ({share:.1%} unstable)")
        if any_unstable:
            ax.set_yscale("log")
        ax.set_xlabel("label entropy (nats), unstable items", fontsize=8)
        ax.set_title(n, fontsize=9)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def churn_figure(churn: Mapping[str, Any]):
    """Bars of churn, negative and positive flip rates: old→new vs seed→seed, with intervals."""
    names = list(churn["nodes"])
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.4 * max(1, len(names)), 2.9), squeeze=False)
    rates = ("churn", "nfr", "pfr")
    for ax, n in zip(axes[0], names):
        e = churn["nodes"][n]
        for k, label in enumerate(("version", "seed_old", "seed_new")):
            means = [e[label][r]["mean"] for r in rates]
            ci = [e[label][r]["ci"] for r in rates]
            err = np.array([[m - (c[0] if c[0] is not None else m) for m, c in zip(means, ci)],
                            [(c[1] if c[1] is not None else m) - m for m, c in zip(means, ci)]])
            ax.bar(np.arange(3) + (k - 1) * 0.27, means, width=0.27, color=COLORS[label],
                   yerr=np.clip(err, 0, None), capsize=2,
                   label={"version": "old→new", "seed_old": "seed→seed (old)",
                          "seed_new": "seed→seed (new)"}[label])
        ax.set_xticks(range(3), ["churn", "negative\nflips", "positive\nflips"], fontsize=8)
        ax.set_title(n, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(f"changed: {churn['changed']}  ·  {len(churn['seeds'])} seeds", fontsize=10)
    fig.tight_layout()
    return fig


def mitigation_figure(mit: Mapping[str, Any], distill: Mapping[str, Any] | None = None):
    """Instability, negative flips and metric of single models, ensembles and smoothed students."""
    kinds = ("single", "ensemble", "label_smoothing")
    panels = [("mean_entropy", "mean entropy"), ("unstable_fraction", "unstable share"),
              ("nfr", "negative flips\n(retraining)"), ("metric", mit["metric"])]
    n = len(panels) + (1 if distill else 0)
    fig, axes = plt.subplots(1, n, figsize=(2.5 * n, 2.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        vals = [mit[k][key] for k in kinds]
        ax.bar(range(3), vals, color=[COLORS[k] for k in kinds])
        ax.set_xticks(range(3), ["single", f"ens k={mit['ensemble']['k']}", "guided LS"], fontsize=7)
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
        if key == "metric":
            lo = min(vals)
            ax.set_ylim(lo - 0.02 * abs(lo) - 1e-3, max(vals) + 0.01 * abs(max(vals)) + 1e-3)
    if distill:
        ax = axes[0][-1]
        vals = [distill["nfr_seed_old"]["mean"], distill["nfr_plain"]["mean"], distill["nfr_distilled"]["mean"]]
        ax.bar(range(3), vals, color=[COLORS["seed_old"], COLORS["plain"], COLORS["distilled"]])
        ax.set_xticks(range(3), ["seed→seed", "old→new", "old→new\ndistilled"], fontsize=7)
        ax.set_title(f"{distill['node']}: negative flips", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"mitigations on {mit['node']} ({len(mit['seeds'])} seeds)", fontsize=10)
    fig.tight_layout()
    return fig
