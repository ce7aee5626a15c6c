"""Experiment entry points: each module holds a plain ``run(cfg) -> dict`` that tests can call.

``@hydra.main`` in :mod:`entangle.cli` only wraps them; helpers here give every task the same
run dir, profile selection and report writing.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PROFILES = ("quick", "default", "paper")


class ConfigError(ValueError):
    """A config value is wrong; the message names the key (and file where known)."""


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


def profile(cfg: DictConfig) -> DictConfig:
    """The sizes of the chosen profile from the experiment's ``profiles`` block."""
    name = str(cfg.get("profile", "default"))
    profiles = cfg.get("profiles")
    if profiles is None:
        raise ConfigError(f"experiment {cfg.get('name')!r} defines no `profiles` block")
    if name not in profiles:
        raise ConfigError(
            f"profile={name!r} is not one of {sorted(profiles)} for experiment {cfg.get('name')!r}")
    return profiles[name]


def seeds(cfg: DictConfig, minimum: int = 1) -> list[int]:
    """The study seeds: distinct non-negative ints, at least ``minimum`` of them (ConfigError)."""
    from entangle.executor import check_seeds
    raw = cfg.get("seeds")
    if raw is not None and not isinstance(raw, (str, int, float)):
        raw = list(raw)
    try:
        out = check_seeds(raw)
    except ValueError as err:
        raise ConfigError(f"seeds: {err}") from None
    if len(out) < minimum:
        raise ConfigError(f"seeds: this experiment needs at least {minimum} seeds, e.g. "
                          f"seeds={list(range(minimum))}; got {out}")
    return out


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


def _task_overrides() -> list:
    """The command line's overrides (parsed), when running under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.override_parser.overrides_parser import OverridesParser
        raw = list(HydraConfig.get().overrides.task)
    except Exception:  # not under Hydra: nothing to re-apply
        return []
    return OverridesParser.create().parse_overrides(raw)


def apply_profile(cfg: DictConfig) -> DictConfig:
    """The config with the chosen profile's ``pipeline`` patch merged in (other keys are sizes).

    The patch goes *under* the user's command-line overrides: a ``pipeline.*`` override given
    on the command line is re-applied after the profile, so it always wins.
    """
    block = profile(cfg)
    patch = block.get("pipeline")
    if patch is None:
        return cfg
    merged = OmegaConf.merge(cfg, {"pipeline": patch})
    for ov in _task_overrides():
        key = ov.key_or_group
        if not key.startswith("pipeline."):
            continue
        if ov.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(merged, parent)
            if node is not None and leaf in node:
                del node[leaf]
        else:
            OmegaConf.update(merged, key, ov.value(), merge=False, force_add=True)
    return merged


def make_store(cfg: DictConfig):
    """The artifact store named by ``store.root`` (an empty root is refused: StoreError).

    With ``store.remote`` set (an fsspec URL), a :class:`~entangle.remote_store.RemoteStore`:
    ``store.root`` becomes the local cache of a store shared through that URL.
    """
    from entangle.store import Store
    conf = cfg.get("store")
    root = conf.get("root") if conf is not None else None
    remote = conf.get("remote") if conf is not None else None
    if remote not in (None, "", "null"):
        from entangle.remote_store import RemoteStore
        store = RemoteStore(root, str(remote))
        log.info("store: %s (shared through %s)", store.root, store.remote)
        return store
    store = Store(root)
    log.info("store: %s", store.root)
    return store


def make_executor(cfg: DictConfig):
    """The executor named by the ``executor`` config group (local when absent)."""
    from hydra.utils import instantiate

    from entangle.executor import LocalExecutor
    ex = cfg.get("executor")
    return LocalExecutor() if ex is None else instantiate(ex)
