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
    """The study seeds as a list of ints; ``seeds`` must be a non-empty list."""
    raw = cfg.get("seeds")
    if raw is None or isinstance(raw, (str, int)) or len(raw) < minimum:
        raise ConfigError(f"seeds must be a list of at least {minimum} ints, e.g. seeds=[0,1,2]; got {raw!r}")
    try:
        return [int(s) for s in raw]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"seeds must be ints, got {list(raw)!r}") from err


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
    """The artifact store named by ``store.root`` (the user's cache dir when null).

    With ``store.remote`` set (an fsspec URL), a :class:`~entangle.remote_store.RemoteStore`:
    ``store.root`` becomes the local cache of a store shared through that URL.
    """
    from entangle.store import Store
    conf = cfg.get("store")
    root = conf.get("root") if conf is not None else None
    remote = conf.get("remote") if conf is not None else None
    if remote not in (None, "", "null"):
        from entangle.remote_store import RemoteStore
        return RemoteStore(root, str(remote))
    return Store(root)


def make_executor(cfg: DictConfig):
    """The executor named by the ``executor`` config group (local when absent)."""
    from hydra.utils import instantiate

    from entangle.executor import LocalExecutor
    ex = cfg.get("executor")
    return LocalExecutor() if ex is None else instantiate(ex)
