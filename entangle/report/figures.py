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


def save_study_figures(study, out: Path) -> list[str]:
    """Write the study figure and the DAG coloured by verdict; returns the file names."""
    out = Path(out)
    files = []
    fig = study_figure(study.report)
    fig.savefig(out / "study.png", dpi=110)
    plt.close(fig)
    files.append("study.png")
    status = node_status(study.report)
    status.setdefault(study.report["changed"], status.get(study.report["changed"]))
    fig = draw_system(study.new.graph, status, title=f"changed: {study.report['changed']}")
    fig.savefig(out / "system.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    files.append("system.png")
    return files
