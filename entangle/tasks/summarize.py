"""Gather every job's ``report.json`` of a Hydra sweep into one table and figure, failures listed.

Jobs are labelled by the overrides that differ between them; those common to every job are
stated once (in the table's header line, the figure's caption and ``common_overrides``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from entangle.report.format import split_overrides
from entangle.report.sweep import save_summary_figure
from entangle.tasks import ConfigError, output_dir

log = logging.getLogger(__name__)


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml
    return list(yaml.safe_load(path.read_text()) or [])


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder holding a report.json (or a .hydra folder without one: a crash).

    Per compared node ``NODE``: ``NODE.delta``, ``NODE.ci`` (its 95% interval), ``NODE.verdict``,
    ``NODE.metric`` and ``NODE.higher_is_better``.
    """
    rows = []
    jobs = sorted({p.parent for p in sweep_dir.rglob("report.json")} |
                  {p.parent for p in sweep_dir.rglob(".hydra")}, key=lambda p: str(p))
    for job in jobs:
        if job == sweep_dir:
            continue
        row: dict[str, Any] = {"job": str(job.relative_to(sweep_dir)), "overrides": _overrides(job)}
        path = job / "report.json"
        if not path.is_file():
            row.update(status="failed", error="no report.json (the job died before writing it)")
        else:
            try:
                rep = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                row.update(status="failed", error=f"unreadable report.json: {err}")
            else:
                row["status"] = rep.get("status", "ok")
                if row["status"] == "failed":
                    row["error"] = rep.get("error")
                for name, node in (rep.get("nodes") or {}).items():
                    if "delta_mean" in node:
                        row[f"{name}.delta"] = node["delta_mean"]
                        row[f"{name}.ci"] = node.get("delta_ci")
                        row[f"{name}.verdict"] = node["verdict"]
                        row[f"{name}.metric"] = node.get("metric")
                        row[f"{name}.higher_is_better"] = node.get("higher_is_better")
                row["self_defeating"] = [f"{f['upstream']}->{f['downstream']}"
                                         for f in rep.get("self_defeating", [])]
        rows.append(row)
    return rows


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: ``experiment=summarize sweep_dir=DIR``."""
    if not cfg.get("sweep_dir"):
        raise ConfigError("summarize needs sweep_dir=DIR (a Hydra multirun folder)")
    sweep = Path(str(cfg.sweep_dir))
    if not sweep.is_dir():
        raise ConfigError(f"sweep_dir={sweep} is not a folder")
    rows = collect(sweep)
    if not rows:
        raise ConfigError(f"sweep_dir={sweep} holds no job folders with report.json")
    out = output_dir(cfg)
    common, varying = split_overrides([r["overrides"] for r in rows])
    columns = list(dict.fromkeys(k for r in rows for k in r if k.endswith(".delta")))
    lines = [f"Overrides of every job: `{' '.join(common)}`", ""] if common else []
    lines += ["| job | overrides | status | " + " | ".join(columns) + " | self-defeating |",
              "|" + "---|" * (len(columns) + 4)]
    for r, own in zip(rows, varying):
        cells = [f"{r[c]:+.4g} ({r.get(c[:-6] + '.verdict')})" if c in r else "" for c in columns]
        lines.append(f"| {r['job']} | {' '.join(own)} | {r['status']} | " + " | ".join(cells)
                     + f" | {', '.join(r.get('self_defeating', []))} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    figures = ["summary.png"] if save_summary_figure(rows, out / "summary.png") else []
    failures = [{"job": r["job"], "overrides": r["overrides"], "error": r.get("error")}
                for r in rows if r["status"] != "ok"]
    for f in failures:
        log.warning("failed job %s (%s): %s", f["job"], " ".join(f["overrides"]), f["error"])
    log.info("%d jobs, %d failed; table in %s", len(rows), len(failures), out / "summary.md")
    return {"sweep_dir": str(sweep), "common_overrides": common, "jobs": rows, "failures": failures,
            "figures": figures, "table": "summary.md"}
