"""The interventions experiment: discover what an improvement broke, fix it, re-run the study.

1. The improvement study (``pipeline`` + ``change``) is run; the failing node is ``failing`` or
   the first flagged self-defeating downstream.
2. *Failure direction*: a direction is fitted to the failing node's negative flips (pooled over
   seeds) on ``directions.fit_split`` in the feature space ``directions.features``, graded on
   the eval split (held-out AUROC, planted recovery) and described by attributes; the failing
   node is retrained with the top-ranked samples up-weighted and the study is re-run.
3. *Misclassification regions* (when the source is a simulator): scenes are sampled from the
   exact latent space and run through the fitted new system; the failing node's errors are
   clustered into regions; regions the simulator confirms get ``regions.n_add`` samples,
   labelled by the simulator and added to ``regions.split``; the study is re-run.

The report says, for each fix, whether the self-defeating flag went away.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from entangle.analysis import failure_figures as ff
from entangle.analysis.directions import TooFewErrorsError
from entangle.analysis.interventions import (augmented, flag_summary, flip_direction, refix,
                                             region_data, upweighted)
from entangle.compare import improvement, summary_lines
from entangle.study import ConfigError, Study, seeds_from_config
from entangle.tasks import output_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point (see the module docstring)."""
    seeds_from_config(cfg, minimum=2)   # the flag needs a paired interval
    study = Study.from_config(cfg)
    out = output_dir(cfg)
    compared = improvement(study)
    for line in summary_lines(compared):
        log.info(line)
    failing = cfg.get("failing")
    if failing is None:
        flagged = [f["downstream"] for f in compared["self_defeating"]]
        if not flagged:
            raise ConfigError("the improvement study flags no self-defeating downstream; name one with failing=NODE")
        failing = flagged[0]
    failing = str(failing)
    new, changed = study.new, study.changed
    if failing not in new.specs or not new.specs[failing].targets:
        raise ConfigError(f"failing={failing!r} is not a model node of the pipeline")
    variants: dict[str, dict[str, Any]] = {"new": flag_summary(compared, failing)}
    report: dict[str, Any] = {"changed": changed, "failing": failing, "seeds": study.seeds,
                              "study": compared, "figures": []}
    if cfg.get("directions") is not None:
        dcfg = cfg.directions
        try:
            direction, info = flip_direction(study, failing, dcfg, k=int(dcfg.get("k", 50)))
        except TooFewErrorsError as err:
            log.warning("no failure direction for %s's negative flips: %s", failing, err)
            report["upweight"] = {"error": str(err)}
        else:
            fixed = upweighted(new, failing, direction, str(dcfg.features),
                               top_fraction=float(dcfg.top_fraction), factor=int(dcfg.factor))
            again, flags = refix(study, fixed, failing=failing)
            variants["new + upweighted"] = flags
            report["upweight"] = {"direction": info, "top_fraction": float(dcfg.top_fraction),
                                  "factor": int(dcfg.factor), "study": again, "flags": flags}
    if cfg.get("regions"):
        rcfg = cfg.regions
        info, extra = region_data(study, failing, rcfg, study.seeds[0])
        report["augment"] = {"regions": info}
        if extra:
            fixed = augmented(new, str(rcfg.source), extra, str(rcfg.split))
            again, flags = refix(study, fixed, failing=failing)
            variants["new + region data"] = flags
            report["augment"].update({"split": str(rcfg.split), "study": again, "flags": flags})
    report["variants"] = variants
    report["flag_gone"] = {name: not v["flagged"] for name, v in variants.items() if name != "new"}
    metric = compared["nodes"][failing]["metric"]
    for node in (failing, changed):
        if any(node in v for v in variants.values()):
            report["figures"].append(ff.save(ff.delta_bars(variants, node, metric=metric if node == failing
                                                           else compared["nodes"][node]["metric"],
                                                           title=f"{node}: change {changed!r} and fixes"),
                                             out, f"interventions_{node}.png"))
    for name, v in variants.items():
        log.info("%s: self-defeating %s", name, v["flagged"])
    return report
