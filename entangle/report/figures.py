"""Figures of improvement studies (matplotlib, written as PNG into the run dir)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from entangle.report.dag import VERDICT_COLORS, draw_system  # noqa: E402


def node_status(report: dict[str, Any]) -> dict[str, str]:
    """Each node's colour key: its verdict, ``self-defeating`` for flagged downstreams."""
    status = {name: r.get("verdict") for name, r in report["nodes"].items()}
    for flag in report.get("self_defeating", []):
        status[flag["downstream"]] = "self-defeating"
    return status


def study_figure(report: dict[str, Any]):
    """Per node: old vs new metric per seed (paired lines) and the delta's interval."""
    names = [n for n, r in report["nodes"].items() if "old" in r]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.4),
                             squeeze=False)
    status = node_status(report)
    for ax, name in zip(axes[0], names):
        r = report["nodes"][name]
        old, new = np.asarray(r["old"]), np.asarray(r["new"])
        for o, n in zip(old, new):
            ax.plot([0, 1], [o, n], color="#90a4ae", marker="o", lw=1)
        ax.plot([0, 1], [old.mean(), new.mean()], color=VERDICT_COLORS.get(status[name], "k"),
                lw=3, marker="s")
        lo, hi = r["delta_ci"]
        ax.set_xticks([0, 1], ["old", "new"])
        ax.set_xlim(-0.3, 1.3)
        arrow = "↑" if r["higher_is_better"] else "↓"
        ax.set_title(f"{name}: {status[name]}\nΔ {r['delta_mean']:+.3g} [{lo:+.2g}, {hi:+.2g}]",
                     fontsize=9)
        ax.set_ylabel(f"{r['metric']} {arrow}")
    fig.suptitle(f"changed: {report['changed']}  ·  {len(report['seeds'])} seeds", fontsize=10)
    fig.tight_layout()
    return fig


#: colours of the decomposition terms (the same in every figure).
TERM_COLORS = {"L*": "#b0bec5", "upstream": "#1565c0", "approximation": "#ef6c00",
               "estimation": "#2e7d32", "compatibility": "#6a1b9a", "total": "#37474f"}


def _term_color(term: str) -> str:
    return TERM_COLORS.get(term, "#64b5f6" if term.startswith("upstream:") else "#90a4ae")


def decomposition_figure(change: dict[str, Any]):
    """Bars of a change decomposition: the terms old vs new (stacked) and each term's delta.

    ``change`` is the report of :func:`entangle.decompose.decompose_change` (``old``/``new``
    hold ``terms``, ``deltas`` the paired deltas with intervals).
    """
    deltas = change.get("deltas") or {}
    old_t = (change.get("old") or {}).get("terms") or {}
    new_t = (change.get("new") or {}).get("terms") or {}
    stack = [t for t in ("L*", "upstream", "approximation", "estimation") if t in old_t and t in new_t]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.6), gridspec_kw={"width_ratios": [1, 1.6]})
    for x, terms in enumerate((old_t, new_t)):
        up = down = 0.0  # positive terms stack upward, negative ones (hatched) downward
        for t in stack:
            h = terms[t].get("mean") or 0.0
            bottom = up if h >= 0 else down
            ax1.bar(x, h, bottom=bottom, color=_term_color(t), width=0.6,
                    label=t if x == 0 else None, edgecolor="white", linewidth=0.5,
                    hatch="//" if h < 0 else None)
            if h >= 0:
                up += h
            else:
                down += h
    ax1.axhline(0, color="k", lw=0.6)
    ax1.set_xticks([0, 1], ["old", "new"])
    ax1.set_ylabel(f"downstream risk ({change.get('loss', 'loss')})")
    ax1.set_title("terms (mean over seeds)", fontsize=9)
    ax1.legend(fontsize=7, loc="upper left")
    order = [t for t in ("total", "upstream") if t in deltas]
    order += [t for t in deltas if t.startswith("upstream:")]
    order += [t for t in ("compatibility", "approximation", "estimation") if t in deltas]
    order += [t for t in deltas if t not in order]
    means = [deltas[t].get("mean") or 0.0 for t in order]
    ci = [deltas[t].get("ci") or [None, None] for t in order]
    err = [[m - lo if lo is not None else 0.0 for m, (lo, _) in zip(means, ci)],
           [hi - m if hi is not None else 0.0 for m, (_, hi) in zip(means, ci)]]
    y = np.arange(len(order))[::-1]
    ax2.barh(y, means, xerr=err, color=[_term_color(t) for t in order], capsize=3,
             error_kw={"lw": 1})
    ax2.axvline(0, color="k", lw=0.8)
    ax2.set_yticks(y, order, fontsize=8)
    ax2.set_xlabel("Δ new − old (95% interval)")
    ax2.set_title(f"what changed: dominant {change.get('dominant_term', '?')}", fontsize=9)
    fig.suptitle(f"decomposition of {change.get('downstream', '')!r}", fontsize=10)
    fig.tight_layout()
    return fig


def save_study_figures(study, report: dict[str, Any], out: Path) -> list[str]:
    """Write the study figure, the DAG coloured by verdict and any decomposition bars of an
    improvement ``report`` (:func:`entangle.compare.improvement`) of ``study``."""
    out = Path(out)
    files = []
    fig = study_figure(report)
    fig.savefig(out / "study.png", dpi=110)
    plt.close(fig)
    files.append("study.png")
    status = node_status(report)
    fig = draw_system(study.new.graph, status, title=f"changed: {report['changed']}",
                      highlight=list(getattr(study, "changed_nodes", [report["changed"]])))
    fig.savefig(out / "system.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    files.append("system.png")
    for name, change in (report.get("decomposition") or {}).items():
        fig = decomposition_figure(change)
        fig.savefig(out / f"decomposition_{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        files.append(f"decomposition_{name}.png")
    return files
