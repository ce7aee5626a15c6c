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
import os
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


#: the run dir's record of the files entangle wrote there: only those are ever removed
MANIFEST = ".entangle-manifest.json"


class RunDirError(ConfigError):
    """The run dir holds what this run must not touch (an earlier report, a user's files)."""


def _files(path: Path) -> list[str]:
    """Every file (and link) under ``path``, and every empty folder (``name/``), relative."""
    out = []
    for root, dirs, files in os.walk(path):
        rel = Path(root).relative_to(path)
        out += [(rel / d).as_posix() for d in dirs if os.path.islink(Path(root) / d)]
        out += [(rel / f).as_posix() for f in files]
        if not dirs and not files and rel != Path("."):
            out.append(rel.as_posix() + "/")
    return sorted(out)


def _hydra_files(files: list[str], hydra: Any = None) -> set[str]:
    """Those of ``files`` Hydra writes into a run dir before the task starts: its ``.hydra/``
    folder and the job's log (``hydra``: Hydra's config, this run's by default)."""
    if hydra is None:
        try:
            from hydra.core.hydra_config import HydraConfig
            hydra = HydraConfig.get()
        except Exception:  # not under a Hydra run
            return set()
    subdir, log_name = hydra.output_subdir, f"{hydra.job.name}.log"
    return {f for f in files if f == log_name or (subdir and f.startswith(f"{subdir}/"))}


def _manifest(path: Path) -> set[str]:
    """The files the manifest of ``path`` lists (none when it has no readable manifest)."""
    try:
        return set(json.loads((path / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def write_manifest(path: Path) -> Path:
    """Record every file now in the run dir as entangle's (it refused a dir holding others)."""
    target = Path(path) / MANIFEST
    files = [f for f in _files(Path(path)) if f != MANIFEST]
    target.write_text(json.dumps({"files": files}, indent=1) + "\n")
    return target


def check_output_dir(path: Path, overwrite: bool = False, hydra: Any = None) -> list[str]:
    """The files in run dir ``path``; :class:`RunDirError` when it holds any entangle did not
    write (its manifest lists those it did, Hydra's own count as its) or, without ``overwrite``,
    an earlier report. Reads only: nothing in the dir is changed."""
    files = _files(path) if Path(path).is_dir() else []
    ours = _manifest(path) | _hydra_files(files, hydra) | {MANIFEST}
    foreign = [f for f in files if f not in ours]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise RunDirError(f"the run dir {path} holds files entangle did not write ({', '.join(foreign[:3])}"
                          f"{more}): choose another (hydra.run.dir=DIR) or move them away")
    if "report.json" in files and not overwrite:
        raise RunDirError(f"the run dir {path} already holds a report (report.json of an earlier run): "
                          "choose another (hydra.run.dir=DIR) or pass overwrite=true to replace it")
    return files


def prepare_output_dir(cfg: DictConfig) -> Path:
    """The run dir, checked (:func:`check_output_dir`); the files of an earlier run there go
    first (the log emptied), so no old figure sits beside the new report."""
    path = output_dir(cfg)
    files = check_output_dir(path, bool(cfg.get("overwrite", False)))
    if not (path / MANIFEST).exists():
        return path   # a new run dir: only Hydra's files of this run
    hydra_now = _hydra_files(files)
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)]
    open_logs = {Path(h.baseFilename).resolve() for lg in loggers
                 for h in getattr(lg, "handlers", []) if isinstance(h, logging.FileHandler)}
    removed = 0
    for name in files:
        entry = path / name
        if entry.parent.resolve() / entry.name in open_logs:
            with open(entry, "r+") as fh:
                fh.truncate(0)
        elif name not in hydra_now and name != MANIFEST:   # Hydra's .hydra/ is this run's
            if name.endswith("/"):
                entry.rmdir()
            else:
                entry.unlink()
            removed += 1
            for parent in Path(name.rstrip("/")).parents[:-1]:   # folders it leaves empty
                if any((path / parent).iterdir()):
                    break
                (path / parent).rmdir()
    if removed:
        log.info("removed %d file(s) of an earlier run from %s", removed, path)
    return path


def results_path(cfg: DictConfig, experiment: str) -> Path:
    """The repository's results file of an experiment: ``experiments/EXPERIMENT/results_file``."""
    name = cfg.get("results_file")
    name = "RESULTS.md" if name is None else name
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".md"):
        raise ConfigError(f"results_file: {name!r} must be a file name ending in .md, without a "
                          f"folder (it is written under experiments/{experiment}/)")
    return Path(__file__).resolve().parents[2] / "experiments" / experiment / name


def write_results(cfg: DictConfig, experiment: str, text: str) -> Path:
    """RESULTS.md into the run dir and, only when asked (``write_results=true``), into the
    repository's ``experiments/EXPERIMENT/`` under ``results_file`` (``RESULTS.md`` unless a
    profile keeps its own, as ``paper_epochs`` does); returns the run dir's copy."""
    path = output_dir(cfg) / "RESULTS.md"
    path.write_text(text)
    if cfg.get("write_results", False):
        target = results_path(cfg, experiment)
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


