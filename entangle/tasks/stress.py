"""The stress experiment: a system's seeds under corruptions and shifted subpopulations.

Config: ``pipeline`` (the system), ``analysis`` (per-pipeline options: ``images``/``pairs`` to
corrupt, the ``attributes`` function, ``subpopulations``; read from ``conf/analysis/NAME.yaml``
for ``pipeline=NAME`` unless ``analysis=`` is given), and ``stress`` (``corruptions``,
``severities``, ``corruption_seed``, ``matched_draws``). A profile may patch ``pipeline``,
``stress`` and set ``seeds``; the pipeline's sizes per profile come from
``analysis.profiles.<profile>.pipeline``; command-line values always win.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from entangle.system import System
from entangle.tasks import ConfigError, _task_overrides, apply_profile, make_store, output_dir, profile, seeds

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"


def _choices() -> dict[str, Any]:
    try:
        from hydra.core.hydra_config import HydraConfig
        return dict(HydraConfig.get().runtime.choices)
    except Exception:  # not under Hydra
        return {}


def _cmdline_keys() -> set[str]:
    return {ov.key_or_group for ov in _task_overrides()}


def with_profile(cfg: DictConfig, key: str) -> DictConfig:
    """``cfg[key]`` with the profile's ``key`` patch merged under the command line's ``key.*`` values."""
    base = cfg.get(key)
    patch = profile(cfg).get(key)
    merged = OmegaConf.merge(base if base is not None else {}, patch if patch is not None else {})
    for ov in _task_overrides():
        name = ov.key_or_group
        if name.startswith(key + ".") and not ov.is_delete():
            OmegaConf.update(merged, name[len(key) + 1:], ov.value(), merge=False, force_add=True)
    return merged


def study_seeds(cfg: DictConfig, minimum: int = 2) -> list[int]:
    """The seeds: ``seeds=`` from the command line, else the profile's ``seeds``, else the config's."""
    block = profile(cfg)
    if "seeds" not in _cmdline_keys() and block.get("seeds") is not None:
        return seeds(OmegaConf.create({"seeds": block.seeds}), minimum=minimum)
    return seeds(cfg, minimum=minimum)


def analysis_options(cfg: DictConfig) -> DictConfig:
    """The analysis options for the chosen pipeline.

    ``analysis=NAME`` on the command line wins; otherwise, when the pipeline is not the one the
    experiment's default analysis is written for, ``conf/analysis/PIPELINE.yaml`` is used.
    """
    choices = _choices()
    pipe, chosen = choices.get("pipeline"), choices.get("analysis")
    opts = cfg.get("analysis")
    if pipe and chosen != pipe and "analysis" not in _cmdline_keys():
        path = CONF_DIR / "analysis" / f"{pipe}.yaml"
        if not path.is_file():
            raise ConfigError(f"no analysis options for pipeline={pipe}: write conf/analysis/{pipe}.yaml "
                              f"(images, pairs, attributes, subpopulations, node, change) or choose "
                              f"analysis=NAME")
        log.info("analysis options from conf/analysis/%s.yaml (pipeline=%s)", pipe, pipe)
        opts = OmegaConf.load(path)
        for ov in _task_overrides():
            name = ov.key_or_group
            if name.startswith("analysis.") and not ov.is_delete():
                OmegaConf.update(opts, name[len("analysis."):], ov.value(), merge=False, force_add=True)
    if opts is None:
        raise ConfigError("no analysis options: choose them with analysis=NAME (conf/analysis/NAME.yaml)")
    return opts


def apply_analysis_profile(cfg: DictConfig, opts: DictConfig) -> DictConfig:
    """The config with ``analysis.profiles.<profile>.pipeline`` merged into ``pipeline``.

    Pipeline sizes depend on the pipeline, so they live beside its analysis options rather than
    in the experiment's profiles; command-line ``pipeline.*`` values are re-applied and win.
    """
    name = str(cfg.get("profile", "default"))
    block = (opts.get("profiles") or {}).get(name)
    patch = block.get("pipeline") if block is not None else None
    if patch is None:
        return cfg
    merged = cfg.copy()
    with open_dict(merged):
        merged.pipeline = OmegaConf.merge(merged.pipeline, patch)
    for ov in _task_overrides():
        key = ov.key_or_group
        if key.startswith("pipeline.") and not ov.is_delete():
            OmegaConf.update(merged, key, ov.value(), merge=False, force_add=True)
    return merged


def _container(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) or \
        OmegaConf.is_list(value) else value


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: stress test of every model node over the seeds, with figures."""
    from entangle.analysis.corruptions import CorruptionError, check_names, check_severity
    from entangle.analysis.plots import save_stress_figures
    from entangle.analysis.stress import StressError, corruption_summary, stress_test
    from entangle.tasks.study import pipeline_where

    cfg = apply_profile(cfg)
    if cfg.get("pipeline") is None:
        raise ConfigError("no pipeline: choose one with pipeline=NAME")
    opts = analysis_options(cfg)
    cfg = apply_analysis_profile(cfg, opts)
    st = with_profile(cfg, "stress")
    system = System.from_config(cfg.pipeline, where=pipeline_where(cfg))
    run_seeds = study_seeds(cfg, minimum=2)
    images = list(_container(opts.get("images")) or [])
    pairs = [list(p) for p in (_container(opts.get("pairs")) or [])]
    corruptions = list(_container(st.get("corruptions")) or [])
    severities = list(_container(st.get("severities")) or [])
    try:  # checked before anything is fitted, naming the config keys
        check_names(corruptions, "stress.corruptions")
        for sv in severities:
            check_severity(sv, "stress.severities")
    except CorruptionError as err:
        raise ConfigError(str(err)) from err
    if not severities:
        raise ConfigError("stress.severities is empty: give severities from 1 to 5, e.g. [1, 3, 5]")
    note = None
    if corruptions and not images and not pairs:
        note = "no image outputs in analysis.images/pairs: corruptions skipped, subpopulation shifts only"
        log.info(note)
        corruptions = []
    try:
        result = stress_test(
            system, run_seeds, make_store(cfg), images=images, pairs=pairs, corruptions=corruptions,
            severities=severities,
            subpopulations=_container(opts.get("subpopulations")) or {},
            attributes=opts.get("attributes"), corruption_seed=int(st.get("corruption_seed", 0)),
            matched_draws=int(st.get("matched_draws", 20)))
    except (CorruptionError, StressError) as err:
        raise ConfigError(f"stress: {err}") from err
    report = dict(result.report)
    if note:
        report["note"] = note
    out = output_dir(cfg)
    report["figures"] = save_stress_figures(report, out)
    for line in corruption_summary(report):
        log.info(line)
    return report
