"""Improvement studies: an old and a new system over seeds, paired deltas, intervals and flags.

Seeds are the pairing unit: seed ``s`` of the old system and seed ``s`` of the new share data
sampling and initialisation, so the per-seed difference removes most of the seed-to-seed
spread. Every node is judged on its own metric with the paired interval of
:mod:`entangle.stats`, and a pair (changed node, descendant) is flagged by the one
self-defeating rule there (:func:`entangle.stats.self_defeating`).

:func:`improvement` is the analysis (``improvement(study, ...) -> dict``); :func:`compare` builds
a :class:`~entangle.study.Study` from two systems and runs it, for use from code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from entangle.decompose import decomposition as decompose_changes
from entangle.stats import IDENTICAL, IMPROVED, NOISE, TEST, WORSE, paired_delta, self_defeating
from entangle.store import Store
from entangle.study import Study, infer_changed
from entangle.system import System

log = logging.getLogger(__name__)

__all__ = ["IMPROVED", "NOISE", "WORSE", "Comparison", "compare", "improvement", "infer_changed",
           "paired_delta", "summary_lines"]


def improvement(study: Study, *, splits: Mapping[str, str] | None = None,
                confidence: float = 0.95) -> dict[str, Any]:
    """Every model node of the old and new system on its own metric, paired over seeds, and the
    self-defeating pairs.

    ``splits`` names, per node, the split its own metric is read on (default: the eval split;
    e.g. an upstream trained for another task is judged on its own test split). Returns
    ``changed``, ``seeds``, ``split``, ``test``, ``nodes`` (per node: metric, direction, per-seed
    old/new, paired delta mean and interval, verdict, whether the change retrained it) and
    ``self_defeating`` (``[{"upstream", "downstream"}]``).
    """
    old, new, changed = study.old, study.new, study.changed
    changed_nodes = list(study.changed_nodes)
    old_runs, new_runs = study.runs("old"), study.runs("new")
    below = set().union(*(new.descendants(c) for c in changed_nodes))
    nodes: dict[str, Any] = {}
    for name in new.models():
        if name not in old.specs or not old.specs[name].targets:
            continue
        new_node, old_node = new.specs[name].node, old.specs[name].node
        metric = new_node.metric
        if old_node.metric != metric:
            nodes[name] = {"metric": metric, "metric_old": old_node.metric, "verdict": "incomparable"}
            continue
        split = (splits or {}).get(name, new.eval_split)
        hib = bool(new_node.higher_is_better)
        o = [old_runs[s].metrics(name, split)[metric] for s in study.seeds]
        n = [new_runs[s].metrics(name, split)[metric] for s in study.seeds]
        pd = paired_delta(o, n, higher_is_better=hib, confidence=confidence)
        nodes[name] = {"metric": metric, "higher_is_better": hib, "split": split, "old": o, "new": n,
                       **pd.as_dict(),
                       "retrained": name in changed_nodes or name in below}
    ups = [nodes.get(c, {}).get("verdict", NOISE) for c in changed_nodes]
    flags = [{"upstream": changed, "downstream": v} for v in sorted(below - set(changed_nodes))
             if v in nodes and self_defeating(ups, nodes[v].get("verdict", NOISE))]
    return {"changed": changed, "seeds": list(study.seeds), "split": new.eval_split,
            "test": f"{TEST} ({confidence:.0%})", "nodes": nodes, "self_defeating": flags}


@dataclass
class Comparison:
    """An improvement study run from code: its ``report`` and the :class:`~entangle.study.Study`
    behind it (systems and fitted runs), whose attributes it passes through."""

    report: dict[str, Any]
    study: Study

    def __getattr__(self, name: str) -> Any:
        if name in ("report", "study"):
            raise AttributeError(name)
        return getattr(self.study, name)


def compare(old: System, new: System, seeds: Iterable[int], store: Store, *,
            changed: str | None = None, executor: Any = None, confidence: float = 0.95,
            decomposition: Any = None) -> Comparison:
    """Run both systems over ``seeds`` and compare every model node on the eval split.

    The report holds :func:`improvement`'s result and the store's hits and misses for this
    study. ``decomposition`` (``{downstream: Estimators or its config}``, or True for every
    flagged downstream with default estimators) explains every flagged pair it covers: the flag
    gets ``dominant`` and ``explanation``, ``report["decomposition"]`` the full decompositions.
    """
    study = Study(old, new=new, changed=changed, seeds=seeds, store=store, executor=executor)
    hits0, misses0 = store.stats.hits, store.stats.misses
    report = improvement(study, confidence=confidence)
    if decomposition:
        flagged = [f["downstream"] for f in report["self_defeating"]]
        nodes = {v: (None if decomposition is True else decomposition[v]) for v in flagged
                 if decomposition is True or v in decomposition}
        report["decomposition"] = decompose_changes(study, nodes=nodes, confidence=confidence)
        attach_explanations(report, report["decomposition"])
    report["store"] = {"hits": store.stats.hits - hits0, "misses": store.stats.misses - misses0,
                       "root": str(store.root)}
    return Comparison(report, study)


def attach_explanations(report: dict[str, Any], decompositions: Mapping[str, Any]) -> None:
    """Give every flagged pair whose downstream was decomposed its dominant term and sentence."""
    for flag in report["self_defeating"]:
        d = decompositions.get(flag["downstream"])
        if d:
            flag["dominant"] = d["dominant"]
            flag["explanation"] = d["sentence"]


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
                     f"{r['verdict']}" + (f" ({IDENTICAL})" if r.get("identical") else ""))
    for f in report["self_defeating"]:
        lines.append(f"  SELF-DEFEATING: improving {f['upstream']!r} made {f['downstream']!r} worse")
        if "explanation" in f:
            lines.append(f"    {f['explanation']}")
    if "store" in report:
        s = report["store"]
        lines.append(f"  store: {s['hits']} hits, {s['misses']} fits computed")
    return lines
