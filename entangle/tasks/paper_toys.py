"""The paper_toys experiment: the paper's four illustrative experiments on the digits data.

Each experiment (``conf/pipeline/paper_*.yaml``) sweeps an improvement knob of its upstream
(training data share, head depth, label noise) over seeds and records the upstream's own error,
the downstream's error after retraining, the decomposition at every knob value and the
decomposition of every change from the first knob value (with the self-defeating flag and the
sentence naming its dominant mechanism).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from entangle.compare import improvement
from entangle.decompose import Estimators, decompose, decompose_change
from entangle.stats import interval
from entangle.study import ConfigError, Study, executor_from_config, seeds_from_config, store_from_config
from entangle.system import System
from entangle.tasks import output_dir
from entangle.tasks.toy_decomposition import stack_terms

log = logging.getLogger(__name__)


def _set_path(tree: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """Set ``nodes.<dotted>`` (``node.field[.sub]``) in a pipeline dict, checking the node exists."""
    parts = dotted.split(".")
    if parts[0] not in tree["nodes"]:
        raise ConfigError(f"{where}: {dotted!r} names no node {parts[0]!r} (nodes: {sorted(tree['nodes'])})")
    node = tree["nodes"][parts[0]]
    for p in parts[1:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = copy.deepcopy(value)


def knob_systems(exp: DictConfig, prof: DictConfig, where: str) -> tuple[list[Any], list[System], list[str]]:
    """The knob values, one system per value, and the nodes the knob changes (``prof``:
    ``knob_points`` keeps that many values, ``epochs`` shortens every network's training)."""
    knob = exp.get("knob")
    if knob is None or not knob.get("set") or not knob.get("values"):
        raise ConfigError(f"{where}.knob: needs `set` (node.field paths) and `values`")
    values = OmegaConf.to_container(knob["values"], resolve=True)
    points = prof.get("knob_points")
    if points is not None and int(points) < len(values):
        keep = np.unique(np.linspace(0, len(values) - 1, int(points)).round().astype(int))
        values = [values[i] for i in keep]
    base = OmegaConf.to_container(exp.pipeline, resolve=True)
    if prof.get("epochs") is not None:  # shorten every network's training (quick runs)
        for node in base["nodes"].values():
            if isinstance(node, dict) and "epochs" in node:
                node["epochs"] = int(prof.epochs)
    systems = []
    for value in values:
        pipe = copy.deepcopy(base)
        for path in knob.set:
            _set_path(pipe, str(path), value, f"{where}.knob.set")
        systems.append(System.from_config(pipe, where=f"{where} with knob={value}"))
    changed = sorted({str(p).split(".")[0] for p in knob.set})
    return values, systems, changed


def _error(metrics: dict[str, float], metric: str) -> float:
    """An error to plot from a node's metrics: 1 − accuracy, or the loss itself."""
    return 1.0 - metrics[metric] if metric == "accuracy" else metrics[metric]


def run_experiment(name: str, exp: DictConfig, prof: DictConfig, reference_cfg: Any, seeds_: list[int],
                   store, executor: Any = None, confidence: float = 0.95) -> dict[str, Any]:
    """One illustrative experiment: the sweep, the decompositions and the changes from the first
    value; every knob value is a study of the first value (old) against it (new)."""
    from hydra.utils import instantiate

    where = f"experiments.{name}"
    values, systems, changed = knob_systems(exp, prof, where)
    v = str(exp.get("downstream", "down"))
    judged = list(exp.get("judged") or changed)
    judge_split = str(exp.get("judge_split", "up_test"))
    oracle = OmegaConf.to_container(exp.oracle, resolve=True) if exp.get("oracle") is not None else None
    est = Estimators(reference=instantiate(reference_cfg, _convert_="all"),
                     large_split=str(exp.get("large_split", "large")), oracle=oracle)
    base = Study(systems[0].labelled(f"knob {values[0]}"), seeds=seeds_, store=store, executor=executor)
    up_err, down_err, decomps = [], [], []
    for value, system in zip(values, systems):
        log.info("%s: knob %s", name, value)
        d = decompose(system, v, seeds_, store, estimators=est, confidence=confidence, fit=base.fit)
        decomps.append(d)
        runs = base.fit(system.labelled(f"knob {value}"), seeds_)
        ups = {}
        for u in judged:
            node = system.specs[u].node
            ups[u] = interval([_error(runs[s].metrics(u, judge_split), node.metric) for s in seeds_], confidence)
        up_err.append(ups)
        vnode = system.specs[v].node
        down_err.append(interval([_error(runs[s].metrics(v), vnode.metric) for s in seeds_], confidence))
    changes = []
    for value, system in zip(values[1:], systems[1:]):
        study = Study(systems[0].labelled(f"knob {values[0]}"), new=system.labelled(f"knob {value}"),
                      changed=changed, seeds=seeds_, store=store, executor=executor)
        compared = improvement(study, splits={u: judge_split for u in judged}, confidence=confidence)
        ch = decompose_change(study.old, study.new, v, seeds_, store, changed=changed, estimators=est,
                              confidence=confidence, fit=study.fit)
        rep = ch.report
        flagged = any(f["downstream"] == v for f in compared["self_defeating"])
        changes.append({"knob": value, "deltas": rep["deltas"], "dominant": rep["dominant"],
                        "dominant_term": rep["dominant_term"], "sentence": rep["sentence"],
                        "self_defeating": flagged,
                        "upstream_verdicts": {u: compared["nodes"][u]["verdict"] for u in judged
                                              if u in compared["nodes"]},
                        "downstream_verdict": compared["nodes"][v]["verdict"]})
        if flagged:
            log.info("%s, knob %s -> %s: %s", name, values[0], value, rep["sentence"])
    vnode = systems[0].specs[v].node
    return {
        "name": name,
        "description": str(exp.get("description", "")),
        "knob": {"name": str(exp.knob.get("name", "")), "set": list(exp.knob.set), "values": values},
        "upstream": {"nodes": judged, "split": judge_split,
                     "metric": {u: systems[0].specs[u].node.metric for u in judged},
                     "error": {u: [e[u] for e in up_err] for u in judged}},
        "downstream": {"node": v, "metric": vnode.metric, "error": down_err,
                       "loss": decomps[0].report["loss"]},
        "decomposition": [{"knob": value, "values": d.report["values"], "terms": d.report["terms"],
                           "warnings": d.report["warnings"]} for value, d in zip(values, decomps)],
        "changes": changes,
        "self_defeating_any": any(c["self_defeating"] for c in changes),
    }


def sweep_figure(exp: dict[str, Any]):
    """Upstream and downstream error against the knob, and the terms at every knob value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = exp["knob"]["values"]
    labels = [str(v) if not isinstance(v, list) else str(len(v)) for v in values]
    x = np.arange(len(values))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    for u, errs in exp["upstream"]["error"].items():
        m = [e["mean"] for e in errs]
        s = [0.0 if not np.isfinite(e["sd"]) else e["sd"] for e in errs]
        metric = exp["upstream"]["metric"][u]
        ax.errorbar(x, m, yerr=s, marker="o", capsize=3,
                    label=f"upstream {u} ({'error' if metric == 'accuracy' else metric})")
    ax.set_xticks(x, labels)
    ax.set_xlabel(exp["knob"]["name"], fontsize=8)
    ax.set_ylabel("upstream error")
    ax2 = ax.twinx()
    d = exp["downstream"]["error"]
    ax2.errorbar(x, [e["mean"] for e in d], yerr=[0.0 if not np.isfinite(e["sd"]) else e["sd"] for e in d],
                 marker="s", color="#c62828", capsize=3, label="downstream error")
    ax2.set_ylabel("downstream error", color="#c62828")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    ax.set_title(exp["name"].replace("_", " "), fontsize=10)
    for i, dec in enumerate(exp["decomposition"]):
        parts = [t for t in dec["terms"] if t.startswith("upstream:")]
        stack = (parts + ["compatibility"] if parts else ["upstream"]) + ["approximation", "estimation"]
        items = [("L*", dec["values"]["L*"]["mean"])] + [(t, dec["terms"][t]["mean"]) for t in stack]
        stack_terms(bx, i, items, parts, labelled=i == 0)
    bx.axhline(0, color="#607d8b", lw=0.8)
    bx.set_xticks(x, labels)
    bx.set_xlabel(exp["knob"]["name"], fontsize=8)
    bx.set_ylabel(f"downstream risk ({exp['downstream']['loss']})")
    bx.legend(fontsize=7)
    bx.set_title("decomposition at each knob value (hatched: negative; black: L(v̂∘u))", fontsize=9)
    fig.tight_layout()
    return fig


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: every illustrative experiment, its figure and the report."""
    import matplotlib.pyplot as plt

    prof = cfg
    seeds_ = seeds_from_config(cfg, minimum=2)
    store, executor = store_from_config(cfg), executor_from_config(cfg)
    if cfg.get("reference") is None:
        raise ConfigError("paper_toys needs a `reference` learner config (conf/node/reference_mlp_classifier.yaml)")
    names = list(cfg.get("run_experiments") or cfg.experiments.keys())
    out = output_dir(cfg)
    results, figures = [], []
    for name in names:
        if name not in cfg.experiments:
            raise ConfigError(f"run_experiments: no experiment {name!r} (experiments: {sorted(cfg.experiments)})")
        exp = cfg.experiments[name]
        reference_cfg = exp.get("reference") or cfg.reference
        result = run_experiment(name, exp, prof, reference_cfg, seeds_, store, executor)
        results.append(result)
        fig = sweep_figure(result)
        fig.savefig(Path(out) / f"paper_toys_{name}.png", dpi=110)
        plt.close(fig)
        figures.append(f"paper_toys_{name}.png")
        for ch in result["changes"]:
            log.info("%s knob %s: %s", name, ch["knob"], ch["sentence"])
    return {"seeds": seeds_, "profile": str(cfg.get("profile")), "data": "scikit-learn digits (SVHN stand-in)",
            "experiments": results, "figures": figures}
