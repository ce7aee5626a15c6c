"""The improvement-study experiment: a pipeline, one changed node, every descendant retrained.

Config: ``pipeline`` (the system), ``change.node`` and ``change.set`` (fields merged onto its
config) or ``change.replace`` (a whole node config); optionally ``decomposition``
(``{downstream: estimators}``) to explain the flagged pairs it covers (``decompose: false``
turns it off).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from entangle.compare import attach_explanations, improvement, summary_lines
from entangle.decompose import decomposition
from entangle.study import Study
from entangle.tasks import output_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: the improvement study, its decompositions, figures and summary."""
    from entangle.report.figures import save_study_figures

    study = Study.from_config(cfg)
    report = improvement(study)
    wanted = cfg.get("decomposition") if cfg.get("decompose", True) else None
    if wanted:
        flagged = {f["downstream"] for f in report["self_defeating"]}
        report["decomposition"] = decomposition(study, nodes={v: e for v, e in wanted.items() if v in flagged})
        attach_explanations(report, report["decomposition"])
    report["store"] = study.store.stats.as_dict() | {"root": str(study.store.root)}
    report["figures"] = save_study_figures(study, report, output_dir(cfg))
    for line in summary_lines(report):
        log.info(line)
    return report
