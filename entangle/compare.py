"""Improvement studies: an old and a new system over seeds, paired deltas, intervals and flags.

Seeds are the pairing unit: seed ``s`` of the old system and seed ``s`` of the new share data
sampling and initialisation, so the per-seed difference removes most of the seed-to-seed
spread. The interval is the paired t interval (the interval of ``scipy.stats.ttest_rel``), and a
node's verdict is *improved* or *worse* only when that interval excludes zero.

A pair (changed node ``u``, descendant ``v``) is **self-defeating** when ``u`` improves on its
own metric beyond noise and ``v``, retrained on ``u``'s new outputs, gets worse beyond noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats

from entangle.store import Store
from entangle.system import System

log = logging.getLogger(__name__)

IMPROVED, WORSE, NOISE = "improved", "worse", "noise"


@dataclass
class Study:
    """An improvement study's result: the JSON-able ``report`` and the runs behind it."""

    report: dict[str, Any]
    old: System
    new: System
    old_runs: dict[int, Any]
    new_runs: dict[int, Any]


@dataclass(frozen=True)
class PairedDelta:
    """Paired difference new − old over seeds: mean, the (1 − alpha) t interval, the verdict."""

    mean: float
    ci: tuple[float, float]
    verdict: str
    n: int


def paired_delta(old: Sequence[float], new: Sequence[float], *, higher_is_better: bool,
                 confidence: float = 0.95) -> PairedDelta:
    """Paired t interval of ``new - old``; the verdict says whether it excludes zero, and which way.

    With one seed there is no interval and the verdict is ``noise``; with zero spread the
    interval collapses to the mean (a deterministic difference is not noise).
    """
    a = np.asarray(old, dtype=np.float64)
    b = np.asarray(new, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"old and new must be paired 1-D sequences, got shapes {a.shape} and {b.shape}")
    d = b - a
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return PairedDelta(mean, (float("nan"), float("nan")), NOISE, n)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        lo = hi = mean
    else:
        half = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * sd / np.sqrt(n)
        lo, hi = mean - half, mean + half
    if lo > 0:
        verdict = IMPROVED if higher_is_better else WORSE
    elif hi < 0:
        verdict = WORSE if higher_is_better else IMPROVED
    else:
        verdict = NOISE
    return PairedDelta(mean, (float(lo), float(hi)), verdict, n)


def infer_changed(old: System, new: System) -> list[str]:
    """Nodes whose own spec differs between the systems (not merely their inputs' keys)."""
    changed = []
    k_old, k_new = old.keys(0), new.keys(0)
    for name in old.topological_order():
        if name not in new.specs or k_old[name] == k_new[name]:
            continue
        ups_same = all(k_old[u] == k_new[u] for u in old.graph.predecessors(name))
        if ups_same:
            changed.append(name)
    return changed


def compare(old: System, new: System, seeds: Iterable[int], store: Store, *,
            changed: str | None = None, executor: Any = None, confidence: float = 0.95,
            decomposition: Any = None) -> Study:
    """Run both systems over ``seeds`` and compare every model node on the eval split.

    Returns a :class:`Study` whose ``report`` holds ``changed``, ``seeds``, ``nodes`` (per node: metric,
    direction, per-seed old/new, paired delta mean and interval, verdict), ``self_defeating``
    pairs, and the store's hits and misses for this study.

    ``decomposition`` attaches the error decomposition (:mod:`entangle.decompose`) to every
    flagged pair: ``{downstream: Estimators or its config}`` for the downstream nodes to explain,
    or True for all of them with default estimators. Each flagged pair then carries ``dominant``
    and ``explanation`` (a sentence), and ``report["decomposition"]`` the full decompositions.
    """
    from entangle.executor import LocalExecutor, check_seeds

    seeds = check_seeds(seeds)
    old, new = old.labelled(old.label or "old system"), new.labelled(new.label or "new system")
    if changed is None:
        found = infer_changed(old, new)
        if len(found) != 1:
            raise ValueError(f"cannot tell which node changed (found {found}); pass changed=NAME")
        changed = found[0]
    if changed not in old.specs or changed not in new.specs:
        raise KeyError(f"changed node {changed!r} is not in both systems")
    executor = executor or LocalExecutor()
    hits0, misses0 = store.stats.hits, store.stats.misses
    old_runs = executor.run(old, seeds, store)
    new_runs = executor.run(new, seeds, store)
    nodes: dict[str, Any] = {}
    for name in new.models():
        if name not in old.specs or not old.specs[name].targets:
            continue
        new_node, old_node = new.specs[name].node, old.specs[name].node
        metric = new_node.metric
        if old_node.metric != metric:
            nodes[name] = {"metric": metric, "metric_old": old_node.metric,
                           "verdict": "incomparable"}
            continue
        hib = bool(new_node.higher_is_better)
        o = [old_runs[s].metrics(name)[metric] for s in seeds]
        n = [new_runs[s].metrics(name)[metric] for s in seeds]
        pd = paired_delta(o, n, higher_is_better=hib, confidence=confidence)
        nodes[name] = {"metric": metric, "higher_is_better": hib, "old": o, "new": n,
                       "delta_mean": pd.mean, "delta_ci": list(pd.ci), "verdict": pd.verdict,
                       "retrained": name == changed or name in new.descendants(changed)}
    flags = []
    if nodes.get(changed, {}).get("verdict") == IMPROVED:
        for v in sorted(new.descendants(changed)):
            if nodes.get(v, {}).get("verdict") == WORSE:
                flags.append({"upstream": changed, "downstream": v})
    report = {
        "changed": changed,
        "seeds": seeds,
        "split": new.eval_split,
        "test": f"paired t interval over seeds ({confidence:.0%}), as scipy.stats.ttest_rel",
        "nodes": nodes,
        "self_defeating": flags,
        "store": {"hits": store.stats.hits - hits0, "misses": store.stats.misses - misses0,
                  "root": str(store.root)},
    }
    if decomposition:
        _attach_decomposition(report, old, new, seeds, store, decomposition, confidence)
    return Study(report, old, new, old_runs, new_runs)


def _attach_decomposition(report: dict[str, Any], old: System, new: System, seeds: list[int],
                          store: Store, decomposition: Any, confidence: float) -> None:
    """Decompose every flagged pair whose downstream ``decomposition`` covers (see :func:`compare`)."""
    from entangle.decompose import Estimators, decompose_change, estimators_by_node

    by_node = {} if decomposition is True else estimators_by_node(decomposition)
    report["decomposition"] = {}
    differ = infer_changed(old, new)
    for flag in report["self_defeating"]:
        v = flag["downstream"]
        if decomposition is not True and v not in by_node:
            continue
        # several changed upstreams split the upstream delta into their parts and compatibility
        changed = differ if flag["upstream"] in differ else [flag["upstream"]]
        change = decompose_change(old, new, v, seeds, store, changed=changed,
                                  estimators=by_node.get(v) or Estimators(), confidence=confidence)
        report["decomposition"][v] = change.report
        flag["dominant"] = change.report["dominant"]
        flag["explanation"] = change.report["sentence"]


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A one-screen text summary of an improvement study (verdicts and flags)."""
    lines = [f"changed: {report['changed']}  seeds: {report['seeds']}"]
    for name, r in report["nodes"].items():
        if "delta_mean" not in r:
            lines.append(f"  {name:<14} {r.get('verdict')}")
            continue
        arrow = "↑" if r["higher_is_better"] else "↓"
        lo, hi = r["delta_ci"]
        lines.append(f"  {name:<14} {r['metric']}{arrow}  old {np.mean(r['old']):.4g}  "
                     f"new {np.mean(r['new']):.4g}  Δ {r['delta_mean']:+.4g} [{lo:+.3g}, {hi:+.3g}]  "
                     f"{r['verdict']}")
    for f in report["self_defeating"]:
        lines.append(f"  SELF-DEFEATING: improving {f['upstream']!r} made {f['downstream']!r} worse")
        if "explanation" in f:
            lines.append(f"    {f['explanation']}")
    s = report["store"]
    lines.append(f"  store: {s['hits']} hits, {s['misses']} misses")
    return lines
