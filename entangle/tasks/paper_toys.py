"""The paper_toys experiment: the paper's four illustrative experiments on the street-digits world.

Each experiment (``conf/pipeline/paper_*.yaml``) sweeps an improvement knob of its upstream
(training data, head depth, label noise) over seeds, under a protocol (``protocol`` in
``conf/experiment/paper_toys.yaml``: the paper's by default, each point one override from the
older one). Every knob value is a study of the first value (old) against it (new), fitted
through the study's executor and store: the improvement study judges every node on its own
metric and flags self-defeating pairs by the one rule (:func:`entangle.stats.self_defeating`);
the decomposition explains each change (its deltas split by the engine) and gives the terms at
every knob value. Before any verdict, each experiment's premise is checked
(:mod:`entangle.analysis.paper_premises`); the figures and the results table are the report's
(:mod:`entangle.report.paper_toys`).
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from entangle.analysis.paper_premises import check as premise_check
from entangle.compare import improvement
from entangle.decompose import Estimators, decompose, decompose_change, loss_name
from entangle.report import paper_toys as report_
from entangle.stats import detectable_effect, interval, paired_delta, seeds_needed
from entangle.study import ConfigError, Study, executor_from_config, seeds_from_config, store_from_config
from entangle.system import System
from entangle.tasks import output_dir, write_results

log = logging.getLogger(__name__)

#: the protocol points and their values, the default first: the paper's, but for
#: ``upstream_net``, whose paper value (ResNet-18) costs about five times the ConvNet's CPU time
PROTOCOL: dict[str, tuple[str, ...]] = {
    "downstream_data": ("upstream", "separate"),
    "upstream_run": ("epochs", "steps"),
    "swap_order": ("model", "latents"),
    "augment": ("crop", "crop_flip", "none"),
    "upstream_net": ("convnet", "paper"),
}
#: the point whose default is not the paper's value, and that value
NOT_PAPER_DEFAULT = {"upstream_net": "paper"}
_CONVNET = "entangle.models.convnet.ConvNetNode"
_RESNET = "entangle.models.resnet.ResNet18Node"
_CONVNETS = (_CONVNET, "entangle.models.convnet.LossAreaRankNode", _RESNET)


def protocol_from_config(cfg: Any) -> dict[str, str]:
    """The run's protocol (``cfg.protocol``), every point checked; missing points are the paper's."""
    raw = cfg.get("protocol")
    given = dict(OmegaConf.to_container(raw, resolve=True)) if raw is not None else {}
    unknown = sorted(set(given) - set(PROTOCOL))
    if unknown:
        raise ConfigError(f"protocol: unknown point(s) {unknown} (points: {sorted(PROTOCOL)})")
    out = {}
    for point, values in PROTOCOL.items():
        value = str(given.get(point, values[0]))
        if value not in values:
            raise ConfigError(f"protocol.{point}: must be one of {list(values)}, got {value!r}")
        out[point] = value
    return out


def apply_protocol(pipe: dict[str, Any], protocol: Mapping[str, str],
                   paper_net: Sequence[str] = (), where: str = "paper_net") -> dict[str, Any]:
    """A pipeline dict under ``protocol``: the data's downstream split, the upstreams' run
    length and checkpoint, the entanglement's swap order, the augmentation, and (with
    ``upstream_net=paper``) ResNet-18 for the ``paper_net`` nodes, the upstreams the paper
    trained as ResNet-18 (every other upstream stays the ConvNet, as in the paper)."""
    pipe = copy.deepcopy(pipe)
    nodes = pipe["nodes"]
    nodes["data"]["downstream_train"] = protocol["downstream_data"]
    for name in paper_net:
        if nodes.get(name, {}).get("_target_") != _CONVNET:
            raise ConfigError(f"{where}: {name!r} is not a {_CONVNET} of this pipeline (its ConvNets: "
                              f"{sorted(n for n, s in nodes.items() if s.get('_target_') == _CONVNET)})")
        if protocol.get("upstream_net", PROTOCOL["upstream_net"][0]) == "paper":
            nodes[name]["_target_"] = _RESNET
            nodes[name].pop("channels", None)
    convnets = [n for n, spec in nodes.items() if spec.get("_target_") in _CONVNETS]
    for name in convnets:
        spec = nodes[name]
        spec["crop"] = 0 if protocol["augment"] == "none" else 4
        spec["flip"] = protocol["augment"] == "crop_flip"
        if protocol["upstream_run"] == "steps" and spec["_target_"] in (_CONVNET, _RESNET):
            spec["epochs"], spec["checkpoint"] = None, "best"
    if protocol["swap_order"] == "latents":
        for spec in nodes.values():
            if isinstance(spec.get("inputs"), dict) and spec["inputs"].get("order", "").startswith("rank."):
                spec["inputs"]["order"] = "data.order"
        nodes.pop("rank", None)
    return pipe


def _set_path(tree: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """Set ``nodes.<dotted>`` (``node.field[.sub]``) in a pipeline dict, checking the node exists."""
    parts = dotted.split(".")
    if parts[0] not in tree["nodes"]:
        raise ConfigError(f"{where}: {dotted!r} names no node {parts[0]!r} (nodes: {sorted(tree['nodes'])})")
    node = tree["nodes"][parts[0]]
    for p in parts[1:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = copy.deepcopy(value)


def knob_values(knob: Any, where: str) -> tuple[list[str], list[Any], bool]:
    """The knob's paths and values: ``set`` + ``values`` (every path gets the value), or
    ``grid`` (path -> values; every combination, the first of each first). The flag says grid."""
    if knob is None:
        raise ConfigError(f"{where}.knob: needs `set` and `values`, or `grid`")
    grid = knob.get("grid")
    if grid:
        axes = OmegaConf.to_container(grid, resolve=True)
        if not isinstance(axes, dict) or any(not isinstance(v, list) or not v for v in axes.values()):
            raise ConfigError(f"{where}.knob.grid: maps node.field paths to non-empty value lists")
        paths = [str(p) for p in axes]
        values = [list(v) for v in itertools.product(*axes.values())]
        if len(values) < 2:
            raise ConfigError(f"{where}.knob.grid: a sweep needs at least two points, got {values}")
        return paths, values, True
    if not knob.get("set") or not knob.get("values"):
        raise ConfigError(f"{where}.knob: needs `set` (node.field paths) and `values`, or `grid`")
    values = OmegaConf.to_container(knob["values"], resolve=True)
    if len(values) < 2:
        raise ConfigError(f"{where}.knob.values: a sweep needs at least two values, got {values}")
    return [str(p) for p in knob.set], values, False


def knob_systems(exp: DictConfig, prof: Any, where: str) -> tuple[list[Any], list[System], list[str]]:
    """The knob values, one system per value (under the run's protocol), and the changed nodes
    (``exp.changed``, else the nodes the knob sets). ``prof`` is the composed config."""
    paths, values, grid = knob_values(exp.get("knob"), where)
    paper_net = [str(n) for n in (exp.get("paper_net") or [])]
    base = apply_protocol(OmegaConf.to_container(exp.pipeline, resolve=True), protocol_from_config(prof),
                          paper_net, f"{where}.paper_net")
    systems = []
    for value in values:
        pipe = copy.deepcopy(base)
        for i, path in enumerate(paths):
            _set_path(pipe, path, value[i] if grid else value, f"{where}.knob")
        systems.append(System.from_config(pipe, where=f"{where} with knob={knob_label(value, grid)}"))
    changed = [str(c) for c in exp.get("changed") or sorted({p.split(".")[0] for p in paths})]
    for c in changed:
        if c not in systems[0].specs:
            raise ConfigError(f"{where}.changed: no node {c!r} (nodes: {sorted(systems[0].specs)})")
    return values, systems, changed


def _run_length(node: Any) -> str:
    """How long an upstream trained: ``200 epochs, last checkpoint`` or ``150 steps, best ...``,
    after the network where it is not the ConvNet (``ResNet-18, 200 epochs, ...``)."""
    epochs, steps = getattr(node, "epochs", None), getattr(node, "steps", None)
    if epochs is None and steps is None:
        return "its own fit"
    length = f"{int(epochs)} epochs" if epochs is not None else f"{int(steps)} steps"
    if type(node).__name__ == "ResNet18Node":
        length = f"ResNet-18, {length}"
    checkpoint = getattr(node, "checkpoint", None)
    return f"{length}, {checkpoint} checkpoint" if checkpoint else length


def knob_label(value: Any, grid: bool = False) -> str:
    """A knob value as a tick label: a grid point is its coordinates (``1/0.4``); a list of
    hidden widths is its depth."""
    if grid:
        return "/".join(knob_label(v) for v in value)
    if isinstance(value, (list, tuple)):
        return f"{len(value)}" if value else "0"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _estimators(exp: DictConfig, reference_cfg: Any) -> Estimators:
    from hydra.utils import instantiate
    oracle = OmegaConf.to_container(exp.oracle, resolve=True) if exp.get("oracle") is not None else None
    return Estimators(reference=instantiate(reference_cfg, _convert_="all"),
                      large_split=str(exp.get("large_split", "large")), oracle=oracle)


def _metrics_by_value(runs: Mapping[int, Any], seeds: Sequence[int], node: str, split: str | None,
                      confidence: float) -> dict[str, Any]:
    """Every metric of ``node`` on ``split`` over seeds (intervals)."""
    per = [runs[s].metrics(node, split) for s in seeds]
    return {k: interval([p[k] for p in per], confidence) for k in per[0]}


def detectability(old: Sequence[float], new: Sequence[float], confidence: float,
                  sign: float = 1.0) -> dict[str, Any]:
    """The smallest true paired change these seeds detect (power 0.8), and the seeds needed to
    detect the change observed, from the sd of the paired per-seed differences (``sign``: −1
    turns accuracy deltas into error deltas); ``identical`` when that sd is 0 (no detectable)."""
    pd = paired_delta(old, new, higher_is_better=True, confidence=confidence)
    mean = sign * pd.mean
    return {"sd": pd.sd, "observed": mean, "identical": pd.identical,
            "detectable": detectable_effect(pd.sd, pd.n, confidence=confidence),
            "seeds_for_observed": seeds_needed(mean, pd.sd, confidence=confidence)}


def _as_error(metrics: Mapping[str, Any], metric: str, confidence: float) -> dict[str, Any]:
    """The node's own loss over seeds: 1 − accuracy (per seed), or its metric (mse)."""
    m = metrics[metric]
    return interval([1.0 - a for a in m["per_seed"]], confidence) if metric == "accuracy" else m


def run_experiment(name: str, exp: DictConfig, prof: Any, reference_cfg: Any, seeds_: list[int],
                   store, executor: Any = None, confidence: float = 0.95) -> dict[str, Any]:
    """One illustrative experiment: its premise, the sweep, its studies and decompositions."""
    where = f"experiments.{name}"
    start = time.perf_counter()
    values, systems, changed = knob_systems(exp, prof, where)
    grid = bool(exp.knob.get("grid"))
    labels = [knob_label(v, grid) for v in values]
    v = str(exp.get("downstream", "down"))
    judged = [str(u) for u in (exp.get("judged") or changed)]
    judge_split = str(exp.get("judge_split", "up_test"))
    est = _estimators(exp, reference_cfg)
    labelled = [s.labelled(f"{name}, knob {lab}") for lab, s in zip(labels, systems)]
    base = Study(labelled[0], seeds=seeds_, store=store, executor=executor)
    eval_split = labelled[0].eval_split
    up_metrics, down_metrics, decomps, knob_runs = [], [], [], []
    for label, system in zip(labels, labelled):
        log.info("%s: knob %s", name, label)
        runs = base.fit(system, seeds_)
        knob_runs.append(runs)
        up_metrics.append({u: _metrics_by_value(runs, seeds_, u, judge_split, confidence) for u in judged})
        down_metrics.append(_metrics_by_value(runs, seeds_, v, eval_split, confidence))
    premise = premise_check(name, knob_runs, labelled, seeds_, judge_split=judge_split, eval_split=eval_split,
                            confidence=confidence,
                            thresholds=OmegaConf.to_container(exp.premise, resolve=True) if exp.get("premise") else None)
    log.info("%s: premise %s: %s", name, {True: "MET", False: "NOT MET", None: "unchecked"}[premise["met"]],
             premise["statement"])
    for value, system in zip(values, labelled):
        d = decompose(system, v, seeds_, store, estimators=est, confidence=confidence, fit=base.fit)
        decomps.append({"knob": value, "values": d.report["values"], "terms": d.report["terms"],
                        "warnings": d.report["warnings"]})
    changes = []
    for value, label, system in zip(values[1:], labels[1:], labelled[1:]):
        study = Study(labelled[0], new=system, changed=changed, seeds=seeds_, store=store, executor=executor)
        compared = improvement(study, splits={u: judge_split for u in judged}, confidence=confidence)
        ch = decompose_change(study.old, study.new, v, seeds_, store, changed=changed, estimators=est,
                              confidence=confidence, fit=study.fit)
        flagged = any(f["downstream"] == v for f in compared["self_defeating"])
        nodes = compared["nodes"]
        keep = ("metric", "old", "new", "delta_mean", "delta_ci", "verdict")
        changes.append({
            "knob": value, "label": label,
            "upstream": {u: {k: nodes[u][k] for k in keep} for u in judged if u in nodes},
            "downstream": {k: nodes[v][k] for k in keep},
            "self_defeating": flagged,
            "deltas": ch.report["deltas"], "dominant_term": ch.report["dominant_term"],
            "dominant": ch.report["dominant"], "sentence": ch.report["sentence"],
            "detectable": {"downstream": detectability(nodes[v]["old"], nodes[v]["new"], confidence,
                                                       report_.loss_sign(nodes[v]["metric"])),
                           **{f"upstream:{u}": detectability(nodes[u]["old"], nodes[u]["new"], confidence,
                                                             report_.loss_sign(nodes[u]["metric"]))
                              for u in changed if u in nodes}},
        })
        log.info("%s, knob %s -> %s: %s %s", name, labels[0], label, ch.report["sentence"],
                 f"By the nodes' own metrics ({nodes[v]['metric']} for {v!r}): "
                 + ("SELF-DEFEATING." if flagged else "not self-defeating."))
    v_node, u_nodes = labelled[0].specs[v].node, {u: labelled[0].specs[u].node for u in judged}
    knob = exp.knob
    return {
        "name": name,
        "description": str(exp.get("description", "")),
        "paper": report_.PAPER.get(name, {}),
        "knob": {"name": str(knob.get("name", "")), "grid": grid,
                 "set": list(knob.grid.keys()) if grid else list(knob.set), "values": values,
                 "labels": labels},
        "changed": changed,
        "premise": premise,
        "upstream": {"nodes": judged, "split": judge_split,
                     "metric": {u: n.metric for u, n in u_nodes.items()},
                     "error": {u: [_as_error(m[u], u_nodes[u].metric, confidence) for m in up_metrics]
                               for u in judged},
                     "metrics": {u: [m[u] for m in up_metrics] for u in judged},
                     "run": {u: _run_length(n) for u, n in u_nodes.items()}},
        "downstream": {"node": v, "split": eval_split, "metric": v_node.metric,
                       "error": [_as_error(m, v_node.metric, confidence) for m in down_metrics],
                       "metrics": down_metrics, "loss": loss_name(v_node)},
        "decomposition": decomps,
        "changes": changes,
        "self_defeating_any": any(c["self_defeating"] for c in changes),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _data_name(cfg: DictConfig, names: Sequence[str]) -> str:
    """What the experiments read: the street-digits world, or the SVHN folder some of them name."""
    roots = sorted({str(cfg.experiments[n].pipeline.nodes.data.get("svhn_root")) for n in names
                    if cfg.experiments[n].pipeline.nodes.data.get("svhn_root")})
    return f"SVHN from {', '.join(roots)}" if roots else "the street-digits world (rendered per seed)"


def _command() -> str:
    """The command line of this run (Hydra's overrides), for the results table."""
    try:
        from hydra.core.hydra_config import HydraConfig
        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # called from code, not under a Hydra run
        overrides = [a for a in sys.argv[1:] if "=" in a]
    return "python -m entangle " + " ".join(overrides)


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def run(cfg: DictConfig) -> dict[str, Any]:
    """Experiment entry point: every illustrative experiment, its figure, the report and the table."""
    start, load_start = time.perf_counter(), _load()
    seeds_ = seeds_from_config(cfg, minimum=2)
    protocol = protocol_from_config(cfg)
    if cfg.get("reference") is None:
        raise ConfigError("paper_toys needs a `reference` learner config (conf/node/reference_mlp_classifier.yaml)")
    names = list(cfg.get("run_experiments") or cfg.experiments.keys())
    for name in names:
        if name not in cfg.experiments:
            raise ConfigError(f"run_experiments: no experiment {name!r} (experiments: {sorted(cfg.experiments)})")
        knob_systems(cfg.experiments[name], cfg, f"experiments.{name}")   # config errors before any fit
    store, executor = store_from_config(cfg), executor_from_config(cfg)
    out = output_dir(cfg)
    hits0, misses0 = store.stats.hits, store.stats.misses
    results, figures = [], []
    for name in names:
        exp = cfg.experiments[name]
        result = run_experiment(name, exp, cfg, exp.get("reference") or cfg.reference, seeds_, store, executor)
        results.append(result)
        figures += report_.save_figures(result, Path(out))
    report = {"seeds": seeds_, "profile": str(cfg.get("profile")), "protocol": protocol,
              "data": _data_name(cfg, names),
              "experiments": results, "figures": figures,
              "store": {"hits": store.stats.hits - hits0, "misses": store.stats.misses - misses0,
                        "root": str(store.root)},
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "load_start": load_start, "command": _command(),
                          "executor": type(executor).__name__, "load_end": _load()},
              "wall_time_s": round(time.perf_counter() - start, 1)}
    write_results(cfg, "paper_toys", report_.results_markdown(report))
    for line in report_.summary_lines(report):
        log.info(line)
    return report
