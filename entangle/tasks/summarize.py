"""Gather every job's ``report.json`` of a Hydra sweep into one table and figure, failures listed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from entangle.tasks import ConfigError, output_dir  # noqa: E402

log = logging.getLogger(__name__)


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml
    return list(yaml.safe_load(path.read_text()) or [])


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder holding a report.json (or a .hydra folder without one: a crash)."""
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
                        row[f"{name}.verdict"] = node["verdict"]
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
    columns = sorted({k for r in rows for k in r if k.endswith(".delta")})
    lines = ["| job | overrides | status | " + " | ".join(columns) + " | self-defeating |",
             "|" + "---|" * (len(columns) + 4)]
    for r in rows:
        cells = [f"{r[c]:+.4g} ({r.get(c[:-6] + '.verdict')})" if c in r else "" for c in columns]
        lines.append(f"| {r['job']} | {' '.join(r['overrides'])} | {r['status']} | " + " | ".join(cells)
                     + f" | {', '.join(r.get('self_defeating', []))} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    figures = []
    ok = [r for r in rows if r["status"] == "ok" and columns]
    if ok:
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(ok) * len(columns) / 2), 3.5))
        width = 0.8 / len(columns)
        for i, c in enumerate(columns):
            ax.bar(np.arange(len(ok)) + i * width, [r.get(c, np.nan) for r in ok], width, label=c[:-6])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(ok)) + 0.4 - width / 2,
                      [" ".join(r["overrides"])[-40:] or r["job"] for r in ok], rotation=30, ha="right",
                      fontsize=7)
        ax.set_ylabel("paired delta (new − old)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "summary.png", dpi=110)
        plt.close(fig)
        figures.append("summary.png")
    failures = [{"job": r["job"], "overrides": r["overrides"], "error": r.get("error")}
                for r in rows if r["status"] != "ok"]
    for f in failures:
        log.warning("failed job %s (%s): %s", f["job"], " ".join(f["overrides"]), f["error"])
    log.info("%d jobs, %d failed; table in %s", len(rows), len(failures), out / "summary.md")
    return {"sweep_dir": str(sweep), "jobs": rows, "failures": failures, "figures": figures,
            "table": "summary.md"}
