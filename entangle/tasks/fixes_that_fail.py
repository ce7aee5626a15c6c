"""The reference case study: stereo depth → pseudo-LiDAR → car and pedestrian detectors.

The improvement under study replaces the stereo network's disparity loss by a depth loss (the
only difference between u and u'; both fine-tune the same pretrained network), retrains both
detectors on the new pseudo-LiDAR over seeds, and compares every node. The oracle
(ground-truth depth) and SGBM systems run beside it as references. The report leads with the
gate (does the learned stereo beat SGBM on the objects' own pixels?), then the outcomes the
experiment declared before the run, the paper's table, the decomposition of the detectors'
changes, churn and the pedestrian's negative flips (:mod:`entangle.analysis.case_study`).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from entangle.analysis import case_study as cs
from entangle.compare import attach_explanations, improvement, summary_lines
from entangle.decompose import decomposition
from entangle.study import ConfigError, Study
from entangle.tasks import output_dir, write_results

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: ``python -m entangle experiment=fixes_that_fail``."""
    from entangle.report.case_study import results_markdown, save_case_study_figures
    from entangle.report.figures import save_study_figures

    start = time.perf_counter()
    declared = OmegaConf.to_container(cfg.get("outcomes") or {}, resolve=True)
    for key in ("detection", "primary", "gate"):
        if key not in declared:
            raise ConfigError(f"outcomes.{key} is missing: the case study's outcomes are declared in the "
                              "experiment config before the run")
    flip_specs = cs.outcome_specs(OmegaConf.to_container(cfg.flips.outcomes, resolve=True)) if cfg.get("flips") else None
    study = Study.from_config(cfg)
    changed, seeds = study.changed, study.seeds
    n_ref = cfg.get("reference_seeds")
    runs = cs.system_runs(study, seeds[:int(n_ref)] if n_ref else None)

    report: dict[str, Any] = {"profile": str(cfg.profile), "declared_outcomes": declared}
    if declared["gate"].get("ceiling"):
        report["ceiling"] = cs.ceiling_gate(runs, declared["primary"], declared["gate"]["ceiling"],
                                            oracle=str(declared["gate"].get("oracle", "oracle")))
        log.info("ceiling gate (oracle depth): %s", {True: "passed", False: "FAILED", None: "not checked"}[
            report["ceiling"]["passed"]])
    report["gate"] = cs.gate(study, runs, stereo=changed, up_to=float(declared["gate"]["up_to"]),
                             reference=str(declared["gate"]["reference"]))
    log.info("gate: %s", "passed" if report["gate"]["verdict"]["passed"] else "FAILED")
    if report["gate"]["nothing_to_test"]:
        log.warning("every per-bin interval of depth loss − disparity loss covers zero: the two "
                    "losses do not differ on the objects, so the study has nothing to test")
    report.update(improvement(study))
    metrics = cs.stereo_metrics(runs, changed)
    report["depth_by_distance"] = cs.depth_by_distance(metrics)
    report["depth_loss_vs_disparity_loss"] = cs.near_far_deltas(
        metrics[cs.SYSTEM_NAMES["old"]], metrics[cs.SYSTEM_NAMES["new"]], report["depth_by_distance"]["bins"])
    references = {k: v for k, v in runs.items() if k not in cs.SYSTEM_NAMES.values()}
    report["outcomes"] = cs.detection_outcomes(study, declared["detection"], references=references)
    report["paper"] = cs.paper_claims(report["nodes"], report["depth_loss_vs_disparity_loss"],
                                      report["outcomes"], declared["primary"])
    report["references"] = cs.references_summary(runs, [changed, *cs.DETECTORS])
    if cfg.get("decompose", True) and cfg.get("decomposition"):
        n_dec = cfg.get("decompose_seeds")
        report["decomposition"] = decomposition(
            study, nodes={d: cfg.decomposition[d] for d in cs.DETECTORS if d in cfg.decomposition},
            seeds=seeds[:int(n_dec)] if n_dec else None)
        attach_explanations(report, report["decomposition"])
    if flip_specs is not None:
        report["flips"] = cs.flips(study, flip_specs)
    report["store"] = {**study.store.stats.as_dict(), "root": str(study.store.root)}

    out = output_dir(cfg)
    report["figures"] = save_study_figures(study, report, out) + save_case_study_figures(report, out)
    report["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                         "cpus": os.cpu_count(), "load": round(os.getloadavg()[0], 1)}
    report["wall_time_s"] = round(time.perf_counter() - start, 1)
    write_results(cfg, "fixes_that_fail", results_markdown(report))
    for line in summary_lines(report):
        log.info(line)
    return report
