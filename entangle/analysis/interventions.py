"""Interventions that close the loop: retrain with what failure discovery found, then re-check.

Two data-centric fixes, each a system edit that the store and the improvement study handle
like any other change:

- :class:`UpweightedNode` retrains a node with the training samples that a failure direction
  ranks highest replicated (up-weighting the discovered subpopulation, for any node, without a
  sample-weight API);
- :class:`AugmentedSource` adds samples to a source's split — e.g. scenes sampled from a
  discovered misclassification region and labelled once by the annotator (the simulator).

:func:`refix` re-runs the improvement study with the fix applied and says whether the
self-defeating flag went away.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from entangle.analysis.directions import describe, fit_direction, negative_flips
from entangle.analysis.failure_directions import _attribute_names, _features, ref_value
from entangle.analysis.planted import grade_direction
from entangle.analysis.regions import DigitStyleSpace, find_regions
from entangle.node import ANY, BaseNode, NotFittedError, Source, take
from entangle.study import ConfigError
from entangle.system import NodeSpec, System, parse_ref

log = logging.getLogger(__name__)

#: the extra input an :class:`UpweightedNode` reads its direction's features from.
FEATURE_INPUT = "fd_features"


class UpweightedNode(BaseNode):
    """A node fitted with the samples a failure direction ranks highest replicated ``factor`` times.

    The direction (``coef``, ``intercept``) scores each training sample's features (the extra
    input ``fd_features``, e.g. the image or the simulator's attributes); the top
    ``top_fraction`` are up-weighted by replication, so any node can be reweighted. Predictions,
    losses, metrics and state are the wrapped node's; ``fd_features`` is ignored when predicting.

    Parameters
    ----------
    node : the node to retrain (its parameters enter the cache key).
    coef, intercept : the failure direction's decision function in raw feature units.
    top_fraction : share of training samples up-weighted.
    factor : total copies of each up-weighted sample (1 = no change).
    """

    version = "1"

    def __init__(self, *, node: BaseNode, coef: Any, intercept: float = 0.0,
                 top_fraction: float = 0.1, factor: int = 5):
        self.node = node
        self.coef = coef
        self.intercept = intercept
        self.top_fraction = top_fraction
        self.factor = factor
        if not 0.0 < float(top_fraction) <= 1.0:
            raise ValueError(f"UpweightedNode top_fraction must lie in (0, 1], got {top_fraction}")
        if int(factor) < 1:
            raise ValueError(f"UpweightedNode factor must be >= 1, got {factor}")

    # -- the wrapped node's declarations ------------------------------------------------------
    @property
    def input_kinds(self) -> dict[str, str]:  # type: ignore[override]
        base = dict(self.node.input_kinds)
        return {**base, FEATURE_INPUT: ANY} if base else {}

    @property
    def target_kinds(self) -> dict[str, str]:  # type: ignore[override]
        return dict(self.node.target_kinds)

    @property
    def output_kinds(self) -> dict[str, str]:  # type: ignore[override]
        return dict(self.node.output_kinds)

    @property
    def metric(self) -> str:  # type: ignore[override]
        return self.node.metric

    @property
    def higher_is_better(self) -> bool:  # type: ignore[override]
        return bool(self.node.higher_is_better)

    def _inner(self) -> BaseNode:
        if not hasattr(self, "inner_"):
            raise NotFittedError("UpweightedNode is not fitted")
        return self.inner_

    # -- the contract -------------------------------------------------------------------------
    def scores(self, features: np.ndarray) -> np.ndarray:
        """The direction's score of each sample's features."""
        X = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        coef = np.asarray(self.coef, dtype=np.float64)
        if X.shape[1] != len(coef):
            raise ValueError(f"UpweightedNode: {FEATURE_INPUT} has {X.shape[1]} columns, the "
                             f"direction has {len(coef)}")
        return X @ coef + float(self.intercept)

    def fit(self, inputs, targets, *, seed):
        inputs = dict(inputs)
        if FEATURE_INPUT not in inputs:
            raise ValueError(f"UpweightedNode needs the input {FEATURE_INPUT!r} (the direction's features)")
        s = self.scores(inputs.pop(FEATURE_INPUT))
        n = len(s)
        k = max(1, int(round(float(self.top_fraction) * n)))
        top = np.argsort(-s, kind="stable")[:k]
        index = np.concatenate([np.arange(n)] + [top] * (int(self.factor) - 1))
        self.inner_ = self.node.clone().fit({a: take(v, index) for a, v in inputs.items()},
                                            {a: take(v, index) for a, v in targets.items()}, seed=seed)
        self.n_upweighted_ = int(k)
        return self

    def predict(self, inputs):
        inputs = {a: v for a, v in inputs.items() if a != FEATURE_INPUT}
        return self._inner().predict(inputs)

    def loss(self, predictions, targets):
        return self._inner().loss(predictions, targets)

    def score(self, predictions, targets):
        return self._inner().score(predictions, targets)

    def extra_arrays(self) -> dict[str, np.ndarray]:
        return dict(getattr(self._inner(), "extra_arrays", lambda: {})())

    def state_dict(self) -> dict[str, Any]:
        state = {f"inner.{k}": v for k, v in self._inner().state_dict().items()}
        state["n_upweighted_"] = np.asarray(self.n_upweighted_)
        return state

    def load_state_dict(self, state):
        self.inner_ = self.node.clone().load_state_dict(
            {k[len("inner."):]: v for k, v in state.items() if k.startswith("inner.")})
        self.n_upweighted_ = int(np.asarray(state["n_upweighted_"]))
        return self


class AugmentedSource(Source):
    """A source whose ``split`` gains extra samples (every output, appended after its own rows).

    ``extra`` maps each output name to an array of the added rows (e.g. scenes rendered from a
    discovered region, labelled by the simulator); the arrays enter the cache key, so every
    node fitted on the augmented split is refitted and nothing else is.
    """

    def __init__(self, *, source: Source, extra: Mapping[str, Any], split: str = "train"):
        self.source = source
        self.extra = extra
        self.split = split
        lengths = {k: len(v) for k, v in dict(extra).items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"AugmentedSource extra arrays differ in length: {lengths}")

    @property
    def output_kinds(self) -> dict[str, str]:  # type: ignore[override]
        return dict(self.source.output_kinds)

    @property
    def uses_seed(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.source, "uses_seed", True))

    def __getattr__(self, name: str) -> Any:
        # simulator helpers (render, bases, attribute_names) are the wrapped source's
        if name.startswith("_") or name in ("source", "extra", "split"):
            raise AttributeError(name)
        return getattr(self.source, name)

    def load(self, split: str, seed: int) -> dict[str, Any]:
        base = self.source.load(split, seed)
        if split != self.split:
            return base
        extra = dict(self.extra)
        missing, unknown = sorted(set(base) - set(extra)), sorted(set(extra) - set(base))
        if missing or unknown:
            raise ValueError(f"AugmentedSource extra must hold every output of the source; "
                             f"missing {missing}, unknown {unknown}")
        return {k: np.concatenate([np.asarray(base[k]), np.asarray(extra[k]).astype(np.asarray(base[k]).dtype)])
                for k in base}


def upweighted(system: System, name: str, direction: Any, features: str, *,
               top_fraction: float = 0.1, factor: int = 5) -> System:
    """``system`` with node ``name`` retrained by :class:`UpweightedNode` along ``direction``.

    ``features`` is the ``"node.output"`` the direction was fitted on; it is wired to the
    node's extra input ``fd_features``.
    """
    spec = system.specs[name]
    parse_ref(features)
    node = UpweightedNode(node=spec.node, coef=np.asarray(direction.coef, dtype=np.float64),
                          intercept=float(direction.intercept), top_fraction=top_fraction,
                          factor=factor)
    return system.replace(name, NodeSpec(node, inputs={**spec.inputs, FEATURE_INPUT: features},
                                         targets=dict(spec.targets), output=spec.output,
                                         fit_split=spec.fit_split))


def augmented(system: System, source: str, extra: Mapping[str, Any], split: str) -> System:
    """``system`` with ``extra`` samples added to ``source``'s ``split``."""
    return system.replace(source, AugmentedSource(source=system[source], extra=dict(extra), split=split))


def node_errors(run: Any, name: str, split: str, prediction: str = "pred") -> np.ndarray:
    """Per-sample errors of a classifier node on a split: its prediction differs from its target."""
    spec = run.system.specs[name]
    if len(spec.targets) != 1:
        raise ValueError(f"node {name!r} must have exactly one target to count errors, has {dict(spec.targets)}")
    (ref,) = spec.targets.values()
    up, out = parse_ref(ref)
    return np.asarray(run.values(name, split)[prediction]) != np.asarray(run.values(up, split)[out])


def errors_with(run: Any, name: str, overrides: Mapping[tuple[str, str], Any],
                prediction: str = "pred") -> np.ndarray:
    """Errors of node ``name`` when the fitted system is re-run on replaced values (no retraining)."""
    res = run.predict_with(overrides)
    spec = run.system.specs[name]
    (ref,) = spec.targets.values()
    up, out = parse_ref(ref)
    target = res[up]["predictions"][out] if up in res else overrides[(up, out)]
    return np.asarray(res[name]["predictions"][prediction]) != np.asarray(target)


def flag_summary(report: Mapping[str, Any], failing: str | None = None) -> dict[str, Any]:
    """Whether an improvement study is self-defeating, and the failing node's delta."""
    out: dict[str, Any] = {"self_defeating": [dict(f) for f in report["self_defeating"]],
                           "flagged": bool(report["self_defeating"])}
    for name in ([failing] if failing else []) + [report["changed"]]:
        r = report["nodes"].get(name)
        if r and "delta_mean" in r:
            out[name] = {"delta_mean": r["delta_mean"], "delta_ci": r["delta_ci"], "verdict": r["verdict"]}
    return out


def refix(study: Any, fixed: System, *, failing: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Re-run the study's improvement with the fixed new system (same seeds, store, executor);
    returns the improvement report and its flag summary."""
    from entangle.compare import improvement
    from entangle.study import Study
    again = Study(study.old, new=fixed.labelled("fixed new system"), changed=study.changed_nodes,
                  seeds=study.seeds, store=study.store, executor=study.executor)
    report = improvement(again)
    return report, flag_summary(report, failing)


def flip_direction(study: Any, failing: str, dcfg: Any, k: int = 50) -> tuple[Any, dict]:
    """The failing node's negative-flip direction from the study's old to its new system,
    pooled over seeds, and its held-out grading."""
    seeds_ = list(study.seeds)
    fit_s, eval_s = str(dcfg.fit_split), str(dcfg.get("eval_split", study.new.eval_split))
    feats = str(dcfg.features)
    X, y = [], []
    for s in seeds_:
        o, n = study.old_runs[s], study.new_runs[s]
        eo, en = node_errors(o, failing, fit_s), node_errors(n, failing, fit_s)
        F = _features(ref_value(n, feats, fit_s))
        X.append(F[~eo])
        y.append(en[~eo])
    direction = fit_direction(np.concatenate(X), np.concatenate(y), seed=seeds_[0])
    per_seed = []
    for s in seeds_:
        o, n = study.old_runs[s], study.new_runs[s]
        eo, en = node_errors(o, failing, eval_s), node_errors(n, failing, eval_s)
        flips = negative_flips(eo, en)
        F = _features(ref_value(n, feats, eval_s))[~eo]
        scores = direction.decision(F)
        entry: dict[str, Any] = {"seed": s, "n_flips": int(flips.sum()),
                                 "heldout_auroc": direction.auroc(F, flips[~eo])}
        if dcfg.get("planted"):
            planted = ref_value(n, str(dcfg.planted), eval_s).astype(bool)[~eo]
            entry["planted"] = grade_direction(scores, planted, flips[~eo], k=k)
        if dcfg.get("attributes"):
            attrs = _features(ref_value(n, str(dcfg.attributes), eval_s))[~eo]
            names = _attribute_names(study.new, dcfg, attrs.shape[1])
            entry["attributes"] = describe(scores, attrs, names)[:5]
            if dcfg.get("labels") and flips.any():
                # across classes, attributes partly describe the class; within the class that
                # flipped most they describe the subpopulation
                labels = ref_value(n, str(dcfg.labels), eval_s)[~eo]
                vals, counts = np.unique(labels[flips[~eo]], return_counts=True)
                c = vals[np.argmax(counts)]
                entry["class"] = c.item()
                entry["attributes_in_class"] = describe(scores[labels == c], attrs[labels == c], names)[:5]
        per_seed.append(entry)
    return direction, {"features": feats, **direction.summary(), "per_seed": per_seed}


def region_data(study: Any, failing: str, rcfg: Any, seed: int) -> tuple[dict, dict]:
    """Regions of the failing node's errors (in the study's new system) in the simulator's
    latent space, and the simulator-labelled samples to add from the confirmed ones."""
    src_name = str(rcfg.source)
    source = study.new[src_name]
    if not all(hasattr(source, a) for a in ("render", "bases", "sample_style")):
        raise ConfigError(f"regions.source={src_name!r} is not a simulator (needs render, bases, sample_style)")
    run = study.new_runs[seed]
    space = DigitStyleSpace(source, source.bases(str(rcfg.probe_split), seed))
    rng = np.random.default_rng([seed, 41])

    def errors(pr):
        return errors_with(run, failing, {(src_name, k): v for k, v in pr.outputs.items()})

    pr = space.sample(int(rcfg.n_probe), rng)
    err = errors(pr)
    regs = find_regions(pr.latents, err, groups=pr.groups, method=str(rcfg.method),
                        max_regions=int(rcfg.max_regions), min_members=int(rcfg.min_members), seed=seed)
    info: dict[str, Any] = {"n_probe": len(pr), "probe_error_rate": float(err.mean()), "regions": []}
    bugs = []
    for r in regs:
        held = space.sample_region(r, int(rcfg.n_eval), rng)
        rate = float(errors(held).mean())
        entry = {**r.summary(), "error_rate": rate, "bug": rate >= float(rcfg.min_error_rate)}
        if held.planted is not None:
            entry["planted_share"] = float(held.planted.mean())
        info["regions"].append(entry)
        if entry["bug"]:
            bugs.append(r)
    info["bugs"] = [r.index for r in bugs]
    if not bugs:
        return info, {}
    n_add = int(rcfg.n_add)
    weights = np.array([r.n_members for r in bugs], dtype=np.float64)
    counts = np.maximum(1, np.round(n_add * weights / weights.sum()).astype(int))
    parts = [space.sample_region(r, int(c), rng).outputs for r, c in zip(bugs, counts)]
    extra = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    info["n_added"] = int(sum(counts))
    return info, extra



