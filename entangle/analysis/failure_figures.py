"""Figures of failure discovery: score histograms, attribute bars, galleries, region accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, out: Path, name: str) -> str:
    """Write ``fig`` as ``out/name`` (PNG), close it, return the file name."""
    fig.savefig(Path(out) / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name


def score_histogram(scores: np.ndarray, errors: np.ndarray, *, title: str = "",
                    planted: np.ndarray | None = None):
    """Histogram of direction scores for errors vs non-errors (and the planted samples)."""
    s = np.asarray(scores, dtype=np.float64)
    err = np.asarray(errors, dtype=bool)
    ok = np.isfinite(s)
    s, err = s[ok], err[ok]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.linspace(s.min(), s.max(), 40) if len(s) and s.max() > s.min() else 20
    ax.hist(s[~err], bins=bins, alpha=0.6, color="#607d8b", label=f"correct ({(~err).sum()})", density=True)
    ax.hist(s[err], bins=bins, alpha=0.6, color="#e53935", label=f"errors ({err.sum()})", density=True)
    if planted is not None:
        pl = np.asarray(planted, dtype=bool)[ok]
        ax.hist(s[pl], bins=bins, histtype="step", lw=2, color="#1e88e5", density=True,
                label=f"planted ({pl.sum()})")
    ax.set_xlabel("score along the failure direction")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def attribute_bars(description: Sequence[dict[str, Any]], *, title: str = "", top: int = 10):
    """Spearman correlation of the direction score with each attribute, strongest first."""
    rows = list(description)[:top]
    fig, ax = plt.subplots(figsize=(5, 0.35 * len(rows) + 1.2))
    vals = [r["spearman"] if np.isfinite(r["spearman"]) else 0.0 for r in rows]
    ax.barh(range(len(rows)), vals, color=["#e53935" if v > 0 else "#1e88e5" for v in vals])
    ax.set_yticks(range(len(rows)), [r["attribute"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Spearman correlation with the direction score")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def gallery(images: np.ndarray, scores: np.ndarray, *, k: int = 10, title: str = "",
            captions: Sequence[str] | None = None):
    """The ``k`` most and least failure-like samples by score (top and bottom rows)."""
    s = np.where(np.isfinite(scores), scores, -np.inf)
    order = np.argsort(-s, kind="stable")
    valid = order[np.isfinite(s[order])]
    k = int(min(k, max(1, len(valid) // 2)))
    rows = [("most failure-like", valid[:k]), ("least failure-like", valid[::-1][:k])]
    fig, axes = plt.subplots(2, k, figsize=(1.1 * k, 2.8), squeeze=False)
    for r, (name, idx) in enumerate(rows):
        for c in range(k):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(idx):
                continue
            img = np.asarray(images[idx[c]])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            if captions is not None:
                ax.set_title(captions[idx[c]], fontsize=6)
        axes[r, 0].text(-0.3, 0.5, name, transform=axes[r, 0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def region_gallery(images: Sequence[np.ndarray], *, k: int = 8, title: str = "",
                   names: Sequence[str] | None = None):
    """Up to ``k`` samples from each region, one row per region."""
    n = max(1, len(images))
    fig, axes = plt.subplots(n, k, figsize=(1.0 * k, 1.1 * n + 0.4), squeeze=False)
    for r, imgs in enumerate(images):
        for c in range(k):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(np.asarray(imgs[c]), cmap="gray", vmin=0, vmax=1)
        if names is not None:
            axes[r, 0].text(-0.3, 0.5, names[r], transform=axes[r, 0].transAxes, va="center",
                            ha="right", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def before_after_bars(names: Sequence[str], before: Sequence[float], after: Sequence[float], *,
                      title: str = "", ylabel: str = "accuracy"):
    """Paired bars of a metric before and after an intervention, one pair per group."""
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 3.2))
    ax.bar(x - 0.2, before, 0.4, label="before", color="#90a4ae")
    ax.bar(x + 0.2, after, 0.4, label="after", color="#43a047")
    ax.set_xticks(x, names, fontsize=8, rotation=30 if len(names) > 6 else 0)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def delta_bars(variants: dict[str, dict[str, Any]], node: str, *, title: str = "",
               metric: str = "metric"):
    """A node's paired delta (new − old, with its interval) under each variant of the new system."""
    names = [k for k, v in variants.items() if node in v]
    means = np.array([variants[k][node]["delta_mean"] for k in names], dtype=np.float64)
    lo = np.array([variants[k][node]["delta_ci"][0] for k in names], dtype=np.float64)
    hi = np.array([variants[k][node]["delta_ci"][1] for k in names], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(names) + 1.5), 3.2))
    colors = ["#e53935" if variants[k][node]["verdict"] == "worse" else
              "#43a047" if variants[k][node]["verdict"] == "improved" else "#90a4ae" for k in names]
    x = np.arange(len(names))
    ax.bar(x, means, color=colors)
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.errorbar(x[ok], means[ok], yerr=[means[ok] - lo[ok], hi[ok] - means[ok]], fmt="none",
                ecolor="k", capsize=4)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel(f"{node}: Δ {metric} vs old")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
