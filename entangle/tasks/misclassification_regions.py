"""The misclassification-regions experiment (Defuse): find, verify, and fix a classifier's bugs.

Runs :func:`entangle.analysis.defuse.misclassification_regions` on the pipeline (with its
planted labelling bug), and with ``classic.enabled`` the VAE setting again on the pipeline
without the planted bug, where Defuse's claim (regions fixed, overall accuracy held within about
a point) is checked on the model's natural errors (with its own ``classic.min_error_rate``:
natural regions are weaker than a planted bug).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from entangle.analysis.defuse import misclassification_regions, summarise
from entangle.study import ConfigError, Study, patched_system, pipeline_where
from entangle.system import parse_ref
from entangle.tasks import output_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point (see the module docstring)."""
    if cfg.get("regions") is None:
        raise ConfigError("misclassification_regions needs a `regions` block")
    study = Study.from_config(cfg)
    out = output_dir(cfg)
    spaces = [str(s) for s in cfg.spaces]
    report: dict[str, Any] = {"node": str(cfg.regions.node), "seeds": study.seeds, "spaces": spaces,
                              "methods": [str(m) for m in cfg.regions.methods], "classic": []}
    report["planted"], report["figures"] = misclassification_regions(study, cfg, out=out)
    classic = cfg.get("classic")
    if classic and classic.get("enabled", True):
        src = parse_ref(str(cfg.regions.input))[0]
        clean = patched_system(cfg.pipeline, {src: {"planted": None}},
                               where=f"{pipeline_where(cfg)} without the planted bug")
        clean_study = Study(clean.labelled("system without the planted bug"), seeds=study.seeds,
                            store=study.store, executor=study.executor)
        classic_out = out / "classic"
        classic_out.mkdir(exist_ok=True)
        report["classic"], files = misclassification_regions(
            clean_study, cfg, out=classic_out, spaces=["vae"], min_error_rate=float(classic.min_error_rate))
        report["figures"] += [f"classic/{f}" for f in files]
    report["summary"] = summarise(report)
    return report
