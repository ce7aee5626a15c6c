"""The stress experiment: a system's seeds under corruptions and shifted subpopulations.

Config: ``pipeline`` (the system); ``analysis`` (per-pipeline options, ``conf/analysis/NAME.yaml``
for ``pipeline=NAME``: ``images``/``pairs`` to corrupt, the ``attributes`` function,
``subpopulations``); ``stress`` (``corruptions``, ``severities``, ``corruption_seed``,
``matched_draws``).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from entangle.study import ConfigError, Study, seeds_from_config
from entangle.tasks import output_dir

log = logging.getLogger(__name__)


def plain(value: Any) -> Any:
    """A config node as plain Python (lists, dicts), anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def analysis_options(cfg: DictConfig) -> DictConfig:
    """The analyses' per-pipeline options (``analysis``), or a ConfigError saying where they go."""
    opts = cfg.get("analysis")
    if not opts:
        try:
            from hydra.core.hydra_config import HydraConfig
            pipe = HydraConfig.get().runtime.choices.get("pipeline")
        except Exception:  # not under Hydra
            pipe = None
        raise ConfigError(f"no analysis options for pipeline={pipe}: write conf/analysis/{pipe}.yaml "
                          "(images, pairs, attributes, subpopulations, outcomes, node, change) in a "
                          "--config-dir, or give `analysis` on the command line")
    return opts


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: stress test of every model node over the seeds, with figures."""
    from entangle.analysis.corruptions import CorruptionError, check_names, check_severity
    from entangle.analysis.plots import save_stress_figures
    from entangle.analysis.stress import StressError, corruption_summary, stress

    opts = analysis_options(cfg)
    seeds_from_config(cfg, minimum=2)
    st = cfg.stress
    images, pairs = list(plain(opts.get("images")) or []), list(plain(opts.get("pairs")) or [])
    corruptions = list(plain(st.get("corruptions")) or [])
    severities = list(plain(st.get("severities")) or [])
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
    study = Study.from_config(cfg)
    try:
        result = stress(study, images=images, pairs=pairs, corruptions=corruptions,
                        severities=severities,
                        subpopulations=plain(opts.get("subpopulations")) or {},
                        attributes=opts.get("attributes"), corruption_seed=int(st.get("corruption_seed", 0)),
                        matched_draws=int(st.get("matched_draws", 20)))
    except (CorruptionError, StressError) as err:
        raise ConfigError(f"stress: {err}") from err
    report = dict(result.report)
    if note:
        report["note"] = note
    report["figures"] = save_stress_figures(report, output_dir(cfg))
    for line in corruption_summary(report):
        log.info(line)
    return report
