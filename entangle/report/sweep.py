"""``summary.png`` of a sweep: each node's paired delta per job, on its own axes, by verdict.

Nodes of one system are scored on different metrics and scales (an upstream's MSE in the tens, a
classifier's accuracy change in hundredths), so each gets its own panel; within it, one point
per job with its 95% interval, coloured by the node's verdict in that job. Jobs are labelled by
the overrides that tell them apart (:func:`entangle.report.format.split_overrides`); the
overrides every job shares are stated once, below the panels.

:func:`sweep_panels` turns the sweep's job rows (``entangle.tasks.summarize.collect``) into
plain data, :func:`summary_figure` draws it, :func:`save_summary_figure` writes it.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from entangle.report.colors import LEGEND_ORDER, VERDICT_COLORS  # noqa: E402
from entangle.report.format import split_overrides  # noqa: E402

#: characters per line of a job's label before it wraps.
LABEL_WIDTH = 22
#: panels per row of the figure.
COLUMNS = 3


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _job_labels(varying: Sequence[Sequence[str]], names: Sequence[str]) -> tuple[list[str], str]:
    """Tick labels of the jobs and the x-axis label naming the keys that vary.

    A key is shortened to its last dotted part where that stays unambiguous
    (``change.set.estimator.alpha=10`` -> ``alpha=10``); with one key, a tick is its value alone.
    """
    keys = list(dict.fromkeys(o.split("=", 1)[0] for job in varying for o in job))
    if not keys:
        return [f"job {name}" for name in names], "job"
    last = [k.rsplit(".", 1)[-1] for k in keys]
    short = {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}

    def label(o: str) -> str:
        key, sep, value = o.partition("=")
        text = value if len(keys) == 1 and sep else short[key] + sep + value
        return textwrap.fill(text, LABEL_WIDTH, break_long_words=False, break_on_hyphens=False)

    labels = ["\n".join(label(o) for o in job) or f"job {name}" for job, name in zip(varying, names)]
    return labels, textwrap.fill(", ".join(keys), 60)


def sweep_panels(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What ``summary.png`` draws, as plain data.

    Returns ``{"panels": [...], "labels": [...], "xlabel": str, "common": [...], "failed": [...]}``:
    one panel per node (in the order the jobs' reports list them) with its metric and, per
    finished job, the delta, its interval and the verdict (``self-defeating`` where the job
    flagged the node); ``labels`` names the finished jobs by the overrides that differ between
    all jobs; ``common`` holds the overrides all jobs share; ``failed`` the failed jobs' labels.
    """
    common, varying = split_overrides([list(r.get("overrides") or []) for r in rows])
    ok = [i for i, r in enumerate(rows) if r.get("status") == "ok"]
    labels, xlabel = _job_labels([varying[i] for i in ok], [str(rows[i].get("job")) for i in ok])
    nodes = list(dict.fromkeys(k[:-6] for i in ok for k in rows[i] if k.endswith(".delta")))
    panels = []
    for node in nodes:
        points = []
        for x, i in enumerate(ok):
            r = rows[i]
            delta = _finite(r.get(f"{node}.delta"))
            if delta is None:
                continue
            ci = r.get(f"{node}.ci") or [None, None]
            flagged = any(str(f).split("->")[-1] == node for f in r.get("self_defeating") or [])
            points.append({"x": x, "delta": delta, "lo": _finite(ci[0]), "hi": _finite(ci[1]),
                           "verdict": "self-defeating" if flagged else r.get(f"{node}.verdict")})
        first = next((rows[i] for i in ok if f"{node}.delta" in rows[i]), {})
        panels.append({"node": node, "metric": first.get(f"{node}.metric"),
                       "higher_is_better": first.get(f"{node}.higher_is_better"), "points": points})
    failed = [" ".join(varying[i]) or f"job {rows[i].get('job')}" for i, r in enumerate(rows)
              if r.get("status") != "ok"]
    return {"panels": panels, "labels": labels, "xlabel": xlabel, "common": common, "failed": failed}


def _caption(data: Mapping[str, Any], width: int) -> str:
    """The overrides common to every job, and the jobs that failed (not drawn)."""
    lines = []
    if data["common"]:
        lines += textwrap.wrap("every job: " + " ".join(data["common"]), width)
    if data["failed"]:
        lines += textwrap.wrap("failed, not drawn: " + "; ".join(data["failed"]), width)
    return "\n".join(lines)


def summary_figure(rows: Sequence[Mapping[str, Any]]):
    """The sweep's figure: one panel per node, paired delta per job with its 95% interval,
    coloured by verdict; None when no job finished with a compared node."""
    data = sweep_panels(rows)
    panels, labels = data["panels"], data["labels"]
    if not panels or not labels:
        return None
    ncols = min(len(panels), COLUMNS)
    nrows = math.ceil(len(panels) / ncols)
    lines = max(label.count("\n") + 1 for label in labels)
    panel = max(3.0, 0.5 * len(labels) + 1.6)  # inches
    longest = max(len(s) for label in labels for s in label.split("\n"))
    # tick labels at 7 pt are about 0.06 inch a character: rotate those wider than their slot
    rotate = longest * 0.06 > 0.9 * (panel - 0.8) / len(labels)
    width = panel * ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.0, width), (2.6 + 0.18 * lines) * nrows + 0.8),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.remove()
    seen = set()
    for ax, panel in zip(axes.flat, panels):
        ax.axhline(0, color="#90a4ae", lw=0.8, ls="--", zorder=1)
        for p in panel["points"]:
            color = VERDICT_COLORS.get(p["verdict"], VERDICT_COLORS[None])
            seen.add(p["verdict"])
            if p["lo"] is not None and p["hi"] is not None:
                ax.vlines(p["x"], p["lo"], p["hi"], color=color, lw=2.5, zorder=2)
            ax.plot(p["x"], p["delta"], "o", color=color, ms=7, mec="white", mew=0.8, zorder=3)
        arrow = {True: " ↑", False: " ↓"}.get(panel["higher_is_better"], "")
        ax.set_title(panel["node"], fontsize=10)
        ax.set_ylabel(f"Δ {panel['metric'] or 'metric'}{arrow} (new − old)", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30 if rotate else 0,
                      ha="right" if rotate else "center")
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_xlabel(data["xlabel"], fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    handles = [Line2D([], [], marker="o", ls="", color=VERDICT_COLORS[v], label=v)
               for v in LEGEND_ORDER if v in seen]
    if handles:
        fig.legend(handles=handles, loc="outside upper right", ncols=len(handles), fontsize=7,
                   frameon=False)
    fig.suptitle("Paired delta per node and job (95% interval, coloured by verdict)", fontsize=10)
    caption = _caption(data, width=int(fig.get_figwidth() * 14))
    if caption:
        fig.supxlabel(caption, fontsize=7, color="#455a64")
    return fig


def save_summary_figure(rows: Sequence[Mapping[str, Any]], path: Path | str) -> bool:
    """Write :func:`summary_figure` to ``path`` (PNG); False when there is nothing to draw."""
    fig = summary_figure(rows)
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
