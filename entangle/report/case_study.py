"""Figures of the stereo case study: depth error by distance, and AP old vs new per difficulty."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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


def ap_figure(ap: Mapping[str, Any]):
    """AP old vs new per detector and difficulty, with the paired delta's 95% interval."""
    dets = list(ap)
    fig, axes = plt.subplots(1, len(dets), figsize=(5.2 * len(dets), 3.8), squeeze=False)
    for ax, det in zip(axes[0], dets):
        rows = ap[det]
        keys = list(rows)
        y = np.arange(len(keys))[::-1]
        old = np.array([np.nanmean(rows[k]["old"]) for k in keys])
        new = np.array([np.nanmean(rows[k]["new"]) for k in keys])
        lo = np.array([rows[k]["delta_ci"][0] for k in keys], dtype=float)
        hi = np.array([rows[k]["delta_ci"][1] for k in keys], dtype=float)
        ax.barh(y + 0.2, old, height=0.4, color=SYSTEM_COLORS["disparity loss"], label="disparity loss (old)")
        ax.barh(y - 0.2, new, height=0.4, color=SYSTEM_COLORS["depth loss"], label="depth loss (new)")
        for yi, o, n, l, h, k in zip(y, old, new, lo, hi, keys):
            verdict = rows[k]["verdict"]
            ax.text(max(o, n) + 0.01, yi, f"Δ {n - o:+.3f} [{l:+.2f}, {h:+.2f}] {verdict}", va="center", fontsize=7)
        ax.set_yticks(y, [rows[k]["label"] for k in keys], fontsize=8)
        ax.set_xlim(0, 1.45)
        ax.set_xlabel("AP|R40")
        ax.set_title(det, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def save_case_study_figures(report: Mapping[str, Any], out: Path) -> list[str]:
    """Write the case study's own figures into ``out``; returns their file names."""
    out = Path(out)
    files = []
    for name, fig in (("depth_by_distance.png", depth_by_distance_figure(report["depth_by_distance"])),
                      ("ap_old_vs_new.png", ap_figure(report["ap"]))):
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        files.append(name)
    return files
