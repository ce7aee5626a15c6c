"""Experiment entry points: each module holds a plain ``run(cfg) -> dict`` that tests can call.

``@hydra.main`` in :mod:`entangle.cli` only wraps them. A task composes nothing itself: Hydra has
composed the config (profile and per-pipeline analysis options included), the task builds the
:class:`~entangle.study.Study`, calls analyses on it and returns the report; helpers here give
every task the same run dir and report writing.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from entangle.study import ConfigError  # noqa: F401  (tasks raise it; cli reports it)

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """The run dir of this experiment (Hydra's, or ``output_dir`` when called from code)."""
    path = Path(str(cfg.output_dir))
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_output_dir(cfg: DictConfig) -> Path:
    """The run dir, refused when it already holds a report unless ``overwrite=true``; then the
    old run's files go first (Hydra's ``.hydra/`` of this run and open log files are kept, the
    logs emptied), so no figure of an old run sits beside the new report."""
    import shutil
    path = output_dir(cfg)
    if not (path / "report.json").exists():
        return path
    if not cfg.get("overwrite", False):
        raise ConfigError(f"the run dir {path} already holds a report (report.json of an earlier run): "
                          "choose another (hydra.run.dir=DIR) or pass overwrite=true to replace it")
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)]
    open_logs = {Path(h.baseFilename).resolve() for lg in loggers
                 for h in getattr(lg, "handlers", []) if isinstance(h, logging.FileHandler)}
    for entry in path.iterdir():
        if entry.name == ".hydra":
            continue
        if entry.resolve() in open_logs:
            with open(entry, "r+") as fh:
                fh.truncate(0)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    log.info("overwrite=true: removed the earlier run's files from %s", path)
    return path


def write_results(cfg: DictConfig, experiment: str, text: str) -> Path:
    """RESULTS.md into the run dir and, only when asked (``write_results=true``), into the
    repository's ``experiments/EXPERIMENT/RESULTS.md``; returns the run dir's copy."""
    path = output_dir(cfg) / "RESULTS.md"
    path.write_text(text)
    if cfg.get("write_results", False):
        target = Path(__file__).resolve().parents[2] / "experiments" / experiment / "RESULTS.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        log.info("results table written to %s", target)
    return path


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and containers for ``json.dump``; NaN/inf become null."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, DictConfig):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def write_report(report: dict, directory: Path) -> Path:
    """Write ``report.json`` atomically into ``directory``."""
    path = Path(directory) / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_jsonable(report), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


