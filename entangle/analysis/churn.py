"""Churn between versions, read against the churn between two seeds of the same version.

An improvement study pairs seed ``s`` of the old system with seed ``s`` of the new. For every
model node that the change retrains, this module counts, per seed, the items whose label changed
(churn), the negative flips (right before, wrong after: the regressions users notice) and the
positive flips. Retraining the *same* version with another seed also flips items, so each
version figure is set against the seed-to-seed figure of the old version (seed ``s_i`` against
``s_{i+1}``, cyclically), and the paired difference (version − seed, per seed) gets the same
paired t interval as the study's metric deltas: a version whose negative flips stay within the
interval flips no more than retraining does anyway.

With ``n`` seeds the cyclic seed pairs share runs, so their spread is slightly understated;
the interval is a guide, not an exact test.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

from entangle.analysis.stability import (OutcomeSpec, StabilityError, check_same_items, flip_rates,
                                         outcome_specs, reference_spec, run_outcomes)
from entangle.stats import interval, paired_delta

log = logging.getLogger(__name__)

RATES = ("churn", "nfr", "pfr")


def seed_pairs(seeds: Sequence[int]) -> list[tuple[int, int]]:
    """Each seed paired with the next, cyclically: ``n`` pairs for ``n >= 3`` seeds, 1 for 2."""
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2:
        raise StabilityError(f"seed-to-seed churn needs at least 2 seeds, got {seeds} (option 'seeds')")
    if len(seeds) == 2:
        return [(seeds[0], seeds[1])]
    return [(seeds[i], seeds[(i + 1) % len(seeds)]) for i in range(len(seeds))]


def churn_between(a_runs: Mapping[int, Any], b_runs: Mapping[int, Any], node: str,
                  pairs: Iterable[tuple[int, int]], *, split: str | None = None,
                  spec: OutcomeSpec = OutcomeSpec()) -> list[dict[str, float]]:
    """Flip rates of ``node`` from run ``a_runs[i]`` to ``b_runs[j]`` for each pair ``(i, j)``."""
    out = []
    for i, j in pairs:
        check_same_items(a_runs[i], b_runs[j], node, split)
        a = run_outcomes(a_runs[i], node, split, spec)
        b = run_outcomes(b_runs[j], node, split, spec)
        if len(a.labels) != len(b.labels):
            raise StabilityError(f"node {node!r}: {len(a.labels)} items in one run, {len(b.labels)} "
                                 "in the other; churn needs the same evaluation items")
        out.append({"pair": [int(i), int(j)],
                    **flip_rates(a.correct, b.correct, a.labels, b.labels)})
    return out


def version_churn(study: Any, *, nodes: Sequence[str] | None = None, split: str | None = None,
                  specs: Mapping[str, OutcomeSpec] | None = None, outcomes: Mapping[str, Any] | None = None,
                  confidence: float = 0.95) -> dict[str, Any]:
    """Per retrained node of an improvement study: version flips vs seed-to-seed flips.

    ``study`` is a :class:`~entangle.study.Study` with a new system (its runs are fitted once,
    through the study; nothing is refitted). ``specs`` (or their config, ``outcomes``) read
    each node's items. ``nodes`` defaults to the changed node and its descendants with targets. Returns
    ``{"seeds", "split", "nodes": {name: {"version": {rate: mean/ci/per_seed}, "seed_old": ...,
    "seed_new": ..., "version_minus_seed": {rate: {mean, ci, verdict}}, "outcome": ...}}}``;
    a ``version_minus_seed`` verdict ``worse`` means the version flips more than retraining.
    """
    seeds = list(study.seeds)
    pairs = seed_pairs(seeds)
    changed = study.changed
    old, new = study.old, study.new
    split = split or new.eval_split
    specs = dict(specs or outcome_specs(outcomes))
    below = set(study.changed_nodes).union(*(new.descendants(c) for c in study.changed_nodes))
    if nodes is None:
        nodes = [n for n in new.models() if n in old.specs and old.specs[n].targets and n in below]
    result: dict[str, Any] = {"changed": changed, "seeds": seeds, "split": split,
                              "seed_pairs": [list(p) for p in pairs], "nodes": {}}
    for name in nodes:
        if name not in old.specs or name not in new.specs:
            raise StabilityError(f"churn node {name!r} is not in both systems")
        base = specs.get(name, OutcomeSpec())
        spec = reference_spec(study.old_runs[seeds[0]], name, split, base)
        version = churn_between(study.old_runs, study.new_runs, name, [(s, s) for s in seeds],
                                split=split, spec=spec)
        seed_old = churn_between(study.old_runs, study.old_runs, name, pairs, split=split, spec=spec)
        seed_new = churn_between(study.new_runs, study.new_runs, name, pairs, split=split, spec=spec)
        entry: dict[str, Any] = {
            "outcome": {"kind": spec.kind, "threshold": spec.threshold, "bins": list(spec.bins or []),
                        "iou": spec.iou},
            "n_items": version[0]["n"],
        }
        for label, rows in (("version", version), ("seed_old", seed_old), ("seed_new", seed_new)):
            entry[label] = {r: interval([row[r] for row in rows], confidence) for r in RATES}
        # pair version seed s with the seed pair that starts at s (same length n for n >= 3)
        diff: dict[str, Any] = {}
        if len(seed_old) == len(version):
            for r in RATES:
                # more churn or negative flips than retraining is worse; more positive flips better
                pd = paired_delta([row[r] for row in seed_old], [row[r] for row in version],
                                  higher_is_better=(r == "pfr"), confidence=confidence)
                diff[r] = {"mean": pd.mean, "ci": list(pd.ci), "verdict": pd.verdict}
        entry["version_minus_seed"] = diff
        result["nodes"][name] = entry
    return result
