"""The improvement-study experiment: a pipeline, one changed node, every descendant retrained.

Config: ``pipeline`` (the system), ``change.node`` (the node to replace) and ``change.set`` (its
fields to change, merged onto its config) or ``change.replace`` (a whole new node config).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from entangle.compare import Study, compare, summary_lines
from entangle.system import System, WIRING_KEYS
from entangle.tasks import ConfigError, apply_profile, make_executor, make_store, output_dir, seeds

log = logging.getLogger(__name__)


def pipeline_where(cfg: DictConfig) -> str:
    """Where the pipeline config came from, for error messages (``conf/pipeline/NAME.yaml``)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        choice = HydraConfig.get().runtime.choices.get("pipeline")
    except Exception:  # not under a Hydra run
        choice = cfg.get("pipeline_name")
    return f"pipeline/{choice}.yaml" if choice else "pipeline config"


def build_systems(cfg: DictConfig) -> tuple[System, System, str]:
    """The old system, the new system and the changed node's name from ``pipeline`` and ``change``."""
    if cfg.get("pipeline") is None:
        raise ConfigError("no pipeline: choose one with pipeline=NAME")
    where = pipeline_where(cfg)
    old = System.from_config(cfg.pipeline, where=where)
    change = cfg.get("change")
    if change is None or change.get("node") is None:
        raise ConfigError("an improvement study needs change.node (and change.set or change.replace)")
    name = str(change.node)
    if name not in old.specs:
        raise ConfigError(f"change.node={name!r} is not a node of {where} (nodes: {sorted(old.specs)})")
    node_cfg = OmegaConf.to_container(cfg.pipeline.nodes[name], resolve=True)
    if change.get("replace") is not None:
        new_cfg = OmegaConf.to_container(change.replace, resolve=True)
        for k in WIRING_KEYS:
            if k in node_cfg and k not in new_cfg:
                new_cfg[k] = node_cfg[k]
    elif change.get("set") is not None:
        new_cfg = OmegaConf.to_container(OmegaConf.merge(node_cfg, change.set), resolve=True)
    else:
        raise ConfigError("change needs `set` (fields to change) or `replace` (a node config)")
    pipe = OmegaConf.to_container(cfg.pipeline, resolve=True)
    pipe["nodes"][name] = new_cfg
    new = System.from_config(pipe, where=f"{where} with change.node={name}")
    return old, new, name


def run_study(cfg: DictConfig) -> Study:
    """Build both systems from the config and run the improvement study over the seeds.

    A ``decomposition`` block (``{downstream: {reference, oracle, large_split, ...}}``) attaches
    the error decomposition to every flagged pair it covers, unless ``decompose: false``.
    """
    cfg = apply_profile(cfg)
    old, new, changed = build_systems(cfg)
    store = make_store(cfg)
    decomposition = cfg.get("decomposition") if cfg.get("decompose", True) else None
    return compare(old, new, seeds(cfg), store, changed=changed, executor=make_executor(cfg),
                   decomposition=decomposition)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: the improvement study, its figures and a printed summary."""
    from entangle.report.figures import save_study_figures

    study = run_study(cfg)
    out = output_dir(cfg)
    report = dict(study.report)
    report["figures"] = save_study_figures(study, out)
    for line in summary_lines(report):
        log.info(line)
    return report
