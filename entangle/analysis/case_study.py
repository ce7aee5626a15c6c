"""The stereo case study's analyses: the gate, depth by distance, declared outcomes, flips, the paper's table.

Each is a function of the :class:`~entangle.study.Study` (its old system: the stereo network
with the disparity loss; its new one: the depth loss; its references: the oracle and SGBM), so
everything is fitted once, through the study's executor and store.

- :func:`ceiling_gate`: with ground-truth depth, do the detectors reach their floors? They are
  the instrument; a detector that cannot detect from perfect depth measures nothing.
- :func:`gate`: object-pixel depth error per class and distance bin of the learned systems next
  to SGBM and the oracle, whether the learned stereo beats SGBM on both classes up to 40 m on
  every seed, and the per-bin paired difference depth loss − disparity loss over seeds.
  A detector verdict means something only when the upstream earns its place: every report says
  the gate's answer before anything else.
- :func:`depth_by_distance` and :func:`near_far_deltas`: where each loss is better.
- :func:`detection_outcomes`: the detection outcomes the experiment declared before the run
  (``outcomes``), each a paired delta over seeds with the smallest effect the seeds could detect.
- :func:`flips`: churn of every node, and the failure direction of the pedestrian's negative flips.
- :func:`paper_claims`: the paper's four claims, ✓ or ✗ each.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from entangle.stats import IMPROVED, WORSE, detectable_effect, mean_sd, paired_delta, seeds_needed

log = logging.getLogger(__name__)

DETECTORS = ("car", "pedestrian")
#: the systems of the study under the names the tables use
SYSTEM_NAMES = {"old": "disparity loss", "new": "depth loss"}


def _finite_mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sd over seeds of a quantity a seed may lack (NaN: e.g. no object in a bin)."""
    a = np.asarray(values, dtype=np.float64)
    return mean_sd(a[np.isfinite(a)])


def system_runs(study: Any, reference_seeds: Sequence[int] | None = None) -> dict[str, dict[int, Any]]:
    """Runs of every system by table name: disparity loss, depth loss, then each reference
    (on ``reference_seeds``, default all)."""
    out = {SYSTEM_NAMES[k]: study.runs(k) for k in ("old", "new")}
    for name in study.references:
        out[name] = study.runs(name, reference_seeds)
    return out


# -- the gate ----------------------------------------------------------------------------------

def gate(study: Any, runs: Mapping[str, Mapping[int, Any]], *, stereo: str = "stereo",
         source: str = "world", up_to: float = 40.0, reference: str = "sgbm") -> dict[str, Any]:
    """Object-pixel depth error per class and distance bin for every system (mean over its seeds),
    and the gate verdict: every learned system beats ``reference`` in every bin up to ``up_to``."""
    from entangle.analysis.object_errors import (format_gate_table, gate_table, gate_verdict,
                                                 paired_bin_differences)
    first = next(iter(runs.values()))
    split = study.old.eval_split
    world = first[next(iter(first))].values(source, split)
    # memory-mapped from the store: the table reads each object's window only
    preds = {name: [r.values(stereo, split)["depth"] for r in rs.values()] for name, rs in runs.items()}
    table = gate_table(preds, world["depth"], world["labels"])
    learned = [SYSTEM_NAMES["old"], SYSTEM_NAMES["new"]]
    verdict = gate_verdict(table, learned, reference=reference, up_to=up_to) if reference in table["systems"] \
        else {"passed": None, "reference": reference, "up_to": up_to, "systems": {},
              "note": f"no {reference!r} reference system: the gate cannot be checked"}
    # where each loss is better on the objects: the paper's depth pattern, per class and bin
    paired = paired_bin_differences(table, *learned, up_to=up_to)
    cells = [c for per_class in paired.values() for c in per_class.values()]
    nothing = bool(cells) and all(c["better"] == "neither (noise)" for c in cells)
    return {"table": table, "verdict": verdict, "paired": paired, "nothing_to_test": nothing,
            "markdown": format_gate_table(table, verdict if verdict.get("systems") else None)}


def ceiling_gate(runs: Mapping[str, Mapping[int, Any]], primary: Mapping[str, str],
                 floors: Mapping[str, float], oracle: str = "oracle") -> dict[str, Any]:
    """The instrument's gate: with ground-truth depth (the ``oracle`` system) each detector's
    ``primary`` metric (mean over the oracle's seeds) must reach its floor."""
    if oracle not in runs:
        return {"passed": None, "note": f"no {oracle!r} reference system: the ceiling cannot be checked",
                "detectors": {}}
    out: dict[str, Any] = {"oracle": oracle, "detectors": {}}
    for det, floor in floors.items():
        values = [r.metrics(det).get(primary[det], float("nan")) for r in runs[oracle].values()]
        value = float(np.mean(values))
        out["detectors"][det] = {"metric": primary[det], "value": value, "floor": float(floor),
                                 "seeds": len(values), "passed": bool(value >= float(floor))}
    out["passed"] = all(d["passed"] for d in out["detectors"].values())
    return out


# -- depth by distance ---------------------------------------------------------------------------

def depth_by_distance(metrics_by_system: Mapping[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Depth error per distance bin (and near/far) for every system, mean and sd over seeds."""
    first = next(iter(metrics_by_system.values()))[0]
    bins = [k.split("@", 1)[1] for k in first if k.startswith("depth_absrel@") and not k.endswith(("near", "far"))]
    out: dict[str, Any] = {"bins": bins, "systems": {}}
    for name, per_seed in metrics_by_system.items():
        out["systems"][name] = {
            f"{m}@{b}": _finite_mean_sd([s.get(f"{m}@{b}", float("nan")) for s in per_seed])
            for m in ("depth_absrel", "depth_mae", "epe") for b in [*bins, "near", "far"]}
    return out


def near_far_deltas(old_metrics: list[dict], new_metrics: list[dict], bins: list[str]) -> dict[str, Any]:
    """Paired deltas (depth loss − disparity loss) of the depth error per bin: where each is better."""
    out = {}
    for b in [*bins, "near", "far"]:
        key = f"depth_absrel@{b}"
        o = [m.get(key, float("nan")) for m in old_metrics]
        n = [m.get(key, float("nan")) for m in new_metrics]
        if not (np.all(np.isfinite(o)) and np.all(np.isfinite(n))):
            continue
        pd = paired_delta(o, n, higher_is_better=False)
        out[b] = {"old": o, "new": n, "delta_mean": pd.mean, "delta_ci": list(pd.ci),
                  "better": {IMPROVED: "depth loss", WORSE: "disparity loss"}.get(pd.verdict, "neither (noise)")}
    return out


# -- declared outcomes ---------------------------------------------------------------------------

def detection_outcomes(study: Any, outcomes: Mapping[str, Sequence[str]], *,
                       references: Mapping[str, Mapping[int, Any]] | None = None,
                       effects: Sequence[float] = (0.01, 0.02, 0.05)) -> dict[str, Any]:
    """Every declared detection outcome (``{detector: [metric keys]}``), old vs new over seeds.

    Per outcome: per-seed old/new, the paired delta with its interval and verdict (``undefined``
    when a seed cannot score it, e.g. no object near), the reference systems' means, the
    smallest true effect the seeds detect with 80 % power (from the paired deltas' sd; NaN, with
    ``identical`` true, when every seed's delta is the same) and how many seeds would detect an
    effect of each size in ``effects``.
    """
    old, new = study.runs("old"), study.runs("new")
    out: dict[str, Any] = {}
    for det, keys in outcomes.items():
        out[det] = {}
        for key in keys:
            o = [old[s].metrics(det).get(key, float("nan")) for s in study.seeds]
            n = [new[s].metrics(det).get(key, float("nan")) for s in study.seeds]
            row: dict[str, Any] = {"old": o, "new": n}
            if np.all(np.isfinite(o)) and np.all(np.isfinite(n)):
                pd = paired_delta(o, n, higher_is_better=True)
                row.update(pd.as_dict())
                row["delta_sd"] = pd.sd
                row["detectable_effect"] = detectable_effect(pd.sd, pd.n)
                row["seeds_needed"] = {f"{e:g}": seeds_needed(e, pd.sd) for e in effects}
            else:
                row.update({"delta_mean": float("nan"), "delta_ci": [float("nan")] * 2, "verdict": "undefined"})
            row["references"] = {name: float(np.nanmean([r.metrics(det).get(key, np.nan) for r in runs.values()]))
                                 for name, runs in (references or {}).items()}
            out[det][key] = row
    return out


# -- flips ---------------------------------------------------------------------------------------

def outcome_specs(outcomes: Mapping[str, Any], where: str = "flips.outcomes") -> dict[str, Any]:
    """Each node's :class:`~entangle.analysis.stability.OutcomeSpec` from its config, checked
    (the task reads them before fitting anything, so a wrong one costs no run)."""
    from entangle.analysis.stability import OutcomeSpec
    return {name: OutcomeSpec.from_config(c, where=f"{where}.{name}") for name, c in outcomes.items()}


def flips(study: Any, specs: Mapping[str, Any], *, direction_node: str = "pedestrian",
          attribute_source: str = "world") -> dict[str, Any]:
    """Churn of every node (depth loss vs disparity loss, against seed-to-seed churn) and the
    failure direction of ``direction_node``'s negative flips on the world's object attributes.

    ``specs`` (:func:`outcome_specs`) reads each node's items (for a detector: ``{kind: detected, iou: ...}``: an
    object is right when a detection finds it at that IoU); the direction pools (object, seed)
    pairs the disparity-loss system got right and asks which of them the depth-loss system lost
    (out-of-fold, so unbiased).
    """
    from entangle.analysis.churn import version_churn
    from entangle.analysis.directions import TooFewErrorsError, describe, fit_flip_direction
    from entangle.analysis.stability import reference_spec, run_outcomes
    from entangle.data.world_attributes import world_attributes

    out: dict[str, Any] = {"churn": version_churn(study, nodes=list(specs), specs=specs)}
    split = study.old.eval_split
    if direction_node not in specs:
        return out
    seeds = list(study.seeds)
    old_runs, new_runs = study.runs("old"), study.runs("new")
    spec = reference_spec(old_runs[seeds[0]], direction_node, split, specs[direction_node])
    world = old_runs[seeds[0]].values(attribute_source, split)
    block = world_attributes(world["left"], world["labels"], world.get("object_attributes"))
    table = {k: np.asarray(v, dtype=np.float64) for k, v in block[direction_node].items()}
    names = [k for k, v in table.items() if len(v) and np.all(np.isfinite(v)) and np.std(v) > 0]
    A = np.stack([table[k] for k in names], axis=1) if names else np.zeros((0, 0))
    old_err = np.concatenate([~run_outcomes(old_runs[s], direction_node, split, spec).correct for s in seeds])
    new_err = np.concatenate([~run_outcomes(new_runs[s], direction_node, split, spec).correct for s in seeds])
    X = np.tile(A, (len(seeds), 1))
    entry: dict[str, Any] = {"node": direction_node, "outcome": {"kind": spec.kind, "iou": spec.iou,
                                                                 "threshold": spec.threshold},
                             "attributes": names, "n_items": int(len(old_err)),
                             "n_old_correct": int((~old_err).sum()),
                             "n_negative_flips": int((~old_err & new_err).sum()),
                             "n_positive_flips": int((old_err & ~new_err).sum())}
    try:
        d, rows = fit_flip_direction(X, old_err, new_err, seed=0)
    except TooFewErrorsError as err:
        entry["skipped"] = str(err)
        log.info("negative-flip direction of %s not fitted: %s", direction_node, err)
    else:
        entry.update(d.summary())
        entry["direction"] = dict(zip(names, d.direction.tolist()))
        entry["aligned_with"] = describe(d.oof_scores, X[rows], names)
    out["flip_direction"] = entry
    return out


# -- the paper's table ---------------------------------------------------------------------------

def paper_claims(nodes: Mapping[str, Any], near_far: Mapping[str, Any], outcomes: Mapping[str, Any],
                 primary: Mapping[str, str]) -> list[dict[str, Any]]:
    """The paper's four claims against this run: depth far better, depth near worse, car
    better, pedestrian worse (on each detector's ``primary`` declared outcome), ✓ or ✗ each."""
    rows = []

    def depth_row(claim: str, key: str, want: str) -> dict[str, Any]:
        r = near_far.get(key, {})
        got = r.get("better", "not measured")
        return {"claim": claim, "paper": want, "here": got, "holds": got == want,
                "delta_mean": r.get("delta_mean"), "delta_ci": r.get("delta_ci"),
                "what": "depth abs-rel error, depth loss − disparity loss"}

    rows.append(depth_row("far depth (> 20 m): the depth loss is better", "far", "depth loss"))
    rows.append(depth_row("near depth (≤ 20 m): the depth loss is worse", "near", "disparity loss"))
    for det, want in (("car", IMPROVED), ("pedestrian", WORSE)):
        key = primary[det]
        r = outcomes.get(det, {}).get(key, {})
        got = r.get("verdict", "not measured")
        rows.append({"claim": f"{det} detection after retraining is {'better' if want == IMPROVED else 'worse'}",
                     "paper": want, "here": got, "holds": got == want, "metric": key,
                     "delta_mean": r.get("delta_mean"), "delta_ci": r.get("delta_ci"),
                     "detectable_effect": r.get("detectable_effect"), "identical": r.get("identical")})
    return rows


def stereo_metrics(runs: Mapping[str, Mapping[int, Any]], stereo: str = "stereo") -> dict[str, list[dict]]:
    """The stereo node's stored metrics per system and seed."""
    return {name: [r.metrics(stereo) for r in rs.values()] for name, rs in runs.items()}


def references_summary(runs: Mapping[str, Mapping[int, Any]], nodes: Sequence[str]) -> dict[str, Any]:
    """Mean and sd over seeds of each node's own metric in every reference system."""
    out = {}
    for name, rs in runs.items():
        if name in SYSTEM_NAMES.values():
            continue
        system = next(iter(rs.values())).system
        out[name] = {n: {"metric": system.specs[n].node.metric, "seeds": sorted(rs),
                         **_finite_mean_sd([r.metrics(n)[system.specs[n].node.metric] for r in rs.values()])}
                     for n in nodes}
    return out
