"""The instability experiment: per-sample instability, version churn and what damps them.

For the chosen pipeline and its analysis options (``conf/analysis/NAME.yaml``):

1. an improvement study old → new (``analysis.change``) over the seeds, through the store;
2. per model node of the old system: label entropy across seeds and across each run's last
   checkpoints, the unstable share, and the attributes enriched among unstable items;
3. churn, negative and positive flip rates old → new per retrained node, against seed → seed;
4. on ``analysis.node``: k-seed ensembles vs guided label smoothing (instability, negative
   flips between retrainings, metric, cost, smoothing's share of the ensemble's reduction);
5. on ``analysis.distill_node``: focal distillation from the old version (negative flips).

Sizes come from ``instability`` (patched by the profile; the command line wins).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from omegaconf import DictConfig, open_dict

from entangle.tasks import ConfigError, apply_profile, make_store, output_dir
from entangle.tasks.stress import (_container, analysis_options, apply_analysis_profile, study_seeds,
                                   with_profile)

log = logging.getLogger(__name__)


def _outcome_specs(opts: DictConfig) -> dict:
    from entangle.analysis.stability import OutcomeSpec
    raw = _container(opts.get("outcomes")) or {}
    return {name: OutcomeSpec.from_config(spec, f"analysis.outcomes.{name}") for name, spec in raw.items()}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: instability, churn and mitigations, with figures."""
    from entangle.analysis import plots
    from entangle.analysis.churn import version_churn
    from entangle.analysis.mitigation import (ensemble_version_flips, focal_distillation,
                                              mitigate_instability)
    from entangle.analysis.stability import (OutcomeSpec, StabilityError, checkpoint_instability,
                                             node_attributes, seed_instability, source_attributes)
    from entangle.compare import compare
    from entangle.tasks.study import build_systems

    cfg = apply_profile(cfg)
    opts = analysis_options(cfg)
    cfg = apply_analysis_profile(cfg, opts)
    inst = with_profile(cfg, "instability")
    if opts.get("change") is None:
        raise ConfigError("analysis.change is missing: the instability experiment reads version churn "
                          "of an improvement (change.node and change.set or change.replace)")
    study_cfg = cfg.copy()
    with open_dict(study_cfg):
        study_cfg.change = opts.change
    old, new, changed = build_systems(study_cfg)
    run_seeds = study_seeds(cfg, minimum=2)
    store = make_store(cfg)
    specs = _outcome_specs(opts)
    out = output_dir(cfg)
    try:
        study = compare(old, new, run_seeds, store, changed=changed)
        attrs = source_attributes(study.old_runs[run_seeds[0]], old.eval_split, opts.get("attributes"))

        nodes: dict[str, Any] = {}
        entropies: dict[str, dict[str, np.ndarray]] = {}
        for name in old.models():
            spec = specs.get(name, OutcomeSpec())
            seeds_inst = seed_instability(old, name, run_seeds, store, spec=spec,
                                          attributes=node_attributes(attrs, name),
                                          runs=study.old_runs, top=int(inst.get("top_attributes", 5)))
            entry = dict(seeds_inst.report)
            entropies[name] = {"across seeds": seeds_inst.entropy}
            if "ckpt_pred" in old.specs[name].node.output_kinds:
                ck = checkpoint_instability(old, name, run_seeds, store, spec=spec, runs=study.old_runs,
                                            across_seeds=seeds_inst)
                entry["checkpoints"] = ck["report"]
                entropies[name]["across checkpoints"] = ck["entropy_per_seed"].ravel()  # pooled runs
            nodes[name] = entry
        churn = version_churn(study, specs=specs)

        mitigation = None
        if opts.get("node") is not None:
            mitigation = mitigate_instability(
                old, str(opts.node), run_seeds, store, ensemble_size=int(inst.ensemble_size),
                temperature=float(inst.temperature), checkpoints=int(inst.teacher_checkpoints),
                runs=study.old_runs)
        distill = None
        if opts.get("distill_node") is not None:
            d = inst.get("distill") or {}
            distill = focal_distillation(study, str(opts.distill_node), weight=float(d.get("weight", 1.0)),
                                         alpha=float(d.get("alpha", 1.0)), beta=float(d.get("beta", 5.0)),
                                         temperature=float(d.get("temperature", 1.0)))
            if len(run_seeds) >= 2 * int(inst.ensemble_size):
                distill["ensembles"] = ensemble_version_flips(study, str(opts.distill_node),
                                                              int(inst.ensemble_size))
    except StabilityError as err:
        raise ConfigError(f"instability: {err}") from err

    figures = []
    fig = plots.entropy_figure(entropies)
    figures.append(plots._save(fig, out, "entropy.png"))
    figures.append(plots._save(plots.churn_figure(churn), out, "churn.png"))
    report: dict[str, Any] = {
        "seeds": run_seeds, "changed": changed, "split": old.eval_split,
        "study": {n: {k: v for k, v in r.items() if k in ("metric", "old", "new", "delta_mean",
                                                           "delta_ci", "verdict")}
                  for n, r in study.report["nodes"].items()},
        "self_defeating": study.report["self_defeating"],
        "instability": nodes, "churn": churn,
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
    report["store"] = {"hits": store.stats.hits, "misses": store.stats.misses}
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
