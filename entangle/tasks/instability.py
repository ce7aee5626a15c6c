"""The instability experiment: per-sample instability, version churn and what damps them.

For the chosen pipeline and its analysis options (``conf/analysis/NAME.yaml``, ``analysis``):

1. an improvement study old → new (``analysis.change``) over the seeds, through the store;
2. per model node of the old system: label entropy across seeds and across each run's last
   checkpoints, the unstable share, and the attributes enriched among unstable items;
3. churn, negative and positive flip rates old → new per retrained node, against seed → seed;
4. on ``analysis.node``: k-seed ensembles vs guided label smoothing (instability, negative
   flips between retrainings, metric, cost, smoothing's share of the ensemble's reduction);
5. on ``analysis.distill_node``: focal distillation from the old version (negative flips).

Sizes come from ``instability``.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from entangle.study import ConfigError, Study, seeds_from_config
from entangle.tasks import output_dir
from entangle.tasks.stress import analysis_options, plain

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: instability, churn and mitigations, with figures."""
    from entangle.analysis import plots
    from entangle.analysis.churn import version_churn
    from entangle.analysis.mitigation import (ensemble_version_flips, focal_distillation,
                                              mitigate_instability)
    from entangle.analysis.stability import StabilityError, instability
    from entangle.compare import improvement

    opts = analysis_options(cfg)
    if opts.get("change") is None:
        raise ConfigError("analysis.change is missing: the instability experiment reads version churn "
                          "of an improvement (change.node and change.set or change.replace)")
    seeds_from_config(cfg, minimum=2)
    inst = cfg.instability
    study = Study.from_config(cfg)
    try:
        compared = improvement(study)
        unstable = instability(study, outcomes=plain(opts.get("outcomes")), attributes=opts.get("attributes"),
                               top_attributes=int(inst.get("top_attributes", 5)))
        churn = version_churn(study, outcomes=plain(opts.get("outcomes")))
        mitigation = distill = None
        if opts.get("node") is not None:
            mitigation = mitigate_instability(study, str(opts.node), ensemble_size=int(inst.ensemble_size),
                                              temperature=float(inst.temperature),
                                              checkpoints=int(inst.teacher_checkpoints))
        if opts.get("distill_node") is not None:
            d = inst.get("distill") or {}
            distill = focal_distillation(study, str(opts.distill_node), weight=float(d.get("weight", 1.0)),
                                         alpha=float(d.get("alpha", 1.0)), beta=float(d.get("beta", 5.0)),
                                         temperature=float(d.get("temperature", 1.0)))
            if len(study.seeds) >= 2 * int(inst.ensemble_size):
                distill["ensembles"] = ensemble_version_flips(study, str(opts.distill_node),
                                                              int(inst.ensemble_size))
    except StabilityError as err:
        raise ConfigError(f"instability: {err}") from err

    out = output_dir(cfg)
    figures = [plots._save(plots.entropy_figure(unstable.pop("_entropies")), out, "entropy.png"),
               plots._save(plots.churn_figure(churn), out, "churn.png")]
    report: dict[str, Any] = {
        "seeds": study.seeds, "changed": study.changed, "split": study.old.eval_split,
        "study": {n: {k: v for k, v in r.items() if k in ("metric", "old", "new", "delta_mean",
                                                           "delta_ci", "verdict")}
                  for n, r in compared["nodes"].items()},
        "self_defeating": compared["self_defeating"],
        "instability": unstable["nodes"], "churn": churn,
    }
    if mitigation is not None:
        arrays = mitigation.pop("_arrays")
        report["mitigation"] = mitigation
        figures.append(plots._save(plots.entropy_figure({f"{mitigation['node']} "
                                                          f"({mitigation['runs_per_entropy']} runs)": arrays}),
                                   out, "mitigation_entropy.png"))
    if distill is not None:
        report["distillation"] = distill
    if mitigation is not None:
        figures.append(plots._save(plots.mitigation_figure(mitigation, distill), out, "mitigation.png"))
    report["store"] = study.store.stats.as_dict()
    report["figures"] = figures
    for line in summary_lines(report):
        log.info(line)
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A one-screen summary: unstable shares, version vs seed negative flips, mitigations."""
    lines = [f"seeds {report['seeds']}  changed: {report['changed']}"]
    for name, r in report["instability"].items():
        ck = r.get("checkpoints", {})
        lines.append(f"  {name:<10} unstable {r['unstable_fraction']:.2%} over {r['n_runs']} seeds "
                     f"(mean entropy {r['mean_entropy']:.4f})"
                     + (f"; over checkpoints {ck['unstable_fraction']:.2%}" if ck else ""))
    for name, c in report["churn"]["nodes"].items():
        v, s = c["version"]["nfr"], c["seed_old"]["nfr"]
        lines.append(f"  {name:<10} negative flips old→new {v['mean']:.2%} vs seed→seed {s['mean']:.2%} "
                     f"({c['version_minus_seed'].get('nfr', {}).get('verdict', 'n/a')})")
    m = report.get("mitigation")
    if m:
        f = m["smoothing_fraction_of_ensemble"]["mean_entropy"]
        lines.append(f"  {m['node']}: mean entropy single {m['single']['mean_entropy']:.4f}, "
                     f"ensemble(k={m['ensemble']['k']}) {m['ensemble']['mean_entropy']:.4f}, "
                     f"guided LS {m['label_smoothing']['mean_entropy']:.4f}; LS reaches "
                     + (f"{f:.0%}" if f is not None else "n/a") + " of the ensemble's reduction")
    d = report.get("distillation")
    if d:
        lines.append(f"  {d['node']}: negative flips old→new {d['nfr_plain']['mean']:.2%}, with focal "
                     f"distillation {d['nfr_distilled']['mean']:.2%}"
                     + (f", as {d['ensembles']['k']}-seed ensembles {d['ensembles']['nfr_version']['mean']:.2%}"
                        if "ensembles" in d else ""))
    return lines
