"""The error-decomposition engine: why a downstream model's risk is what it is, and why it changed.

For a downstream node ``v`` reading upstream node(s) ``u`` (DESIGN.md §2), with ``L`` the mean of
``v``'s own per-sample loss on the eval split::

    L(v̂∘u) − L* = [L*(u) − L*]          upstream error       (information u's output lacks)
                + [L_H(u) − L*(u)]       approximation error  (what v's class cannot express)
                + [L(v̂∘u) − L_H(u)]     estimation error     (what v's finite data cannot fit)

Every value is estimated by a *derived system* run through the ordinary executor and store, so
the store deduplicates everything a study already trained and a repeated decomposition trains
nothing:

- ``L(v̂∘u)``: ``v`` as trained in the system (its stored per-sample losses);
- ``L_H(u)``: ``v``'s own class fitted on the large split (``system.with_spec(v, fit_split=...)``;
  ``u`` is not retrained, it only predicts on the large split);
- ``L*(u)``: a high-capacity reference learner fitted on the large split of ``u``'s outputs,
  reported as ``min(reference, L_H(u))`` because ``L*(u) ≤ L_H(u)`` by definition;
- ``L*``: the reference learner on an oracle (ground truth wired in place of ``u``'s output), or
  the source's closed form ``bayes_risk(target)``.

With several upstreams the upstream error splits into each upstream's own part (only that
upstream real, the others oracles) and an interaction, the *upstream compatibility error*.
An improvement ``u → u'`` (one changed upstream or several) is decomposed into the paired
per-seed deltas of every term, the per-upstream parts and compatibility included: each delta is
the new system's level minus the old one's, seed by seed (:func:`change_deltas`). When every
oracle carries full information (the oracle of the other upstreams alone determines the target),
each upstream's own part is 0 by construction and compatibility is the whole upstream term.

>>> from entangle.data.toy_systems import LinearGaussianSource
>>> from entangle.node import SklearnNode
>>> from entangle.system import System, NodeSpec
>>> from sklearn.linear_model import LinearRegression
>>> src = LinearGaussianSource(variances=[1.0], outputs={"y": {"weights": [1.0], "noise": 0.5}},
...                            sizes={"train": 50, "large": 500, "test": 500})
>>> sys_ = System({"data": src, "v": NodeSpec(SklearnNode(estimator=LinearRegression()),
...                inputs={"x": "data.x"}, targets={"y": "data.y"}, output=True)},
...               splits=("train", "large", "test"))
>>> sorted(derived_systems(sys_, "v", Estimators(l_star="source")))
['own_class_large', 'reference_large', 'trained']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from entangle.executor import LocalExecutor, Run
from entangle.node import BaseNode, NodeError, SklearnNode, TorchNode
from entangle.stats import interval
from entangle.store import Store
from entangle.study import Study, infer_changed
from entangle.system import NodeSpec, System, parse_ref

#: fits a system over seeds: ``fit(system, seeds) -> {seed: Run}`` (a study's :meth:`Study.fit`)
Fit = Callable[[System, Sequence[int]], Mapping[int, Run]]

log = logging.getLogger(__name__)

#: the estimated quantities, in the order of the decomposition.
VALUES = ("L*", "L*(u)", "L_H(u)", "L(v̂∘u)")
#: the mechanisms the engine can name.
MECHANISMS = ("upstream", "approximation", "estimation", "compatibility")

WHY = {
    "upstream": "the upstream's new output carries less of the information the downstream needs",
    "approximation": "the downstream's model class can no longer express the best predictor on "
                     "the new representation",
    "estimation": "the downstream's finite training data no longer suffice to fit the new representation",
    "compatibility": "the upstreams' errors no longer complement each other",
}


_LOGGED: set[tuple[str, str]] = set()


class DecompositionError(ValueError):
    """The decomposition cannot be set up for this system; the message names node and field."""


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimators:
    """How the engine estimates each value for one downstream node.

    Parameters
    ----------
    reference : the high-capacity reference learner for ``L*(u)`` and ``L*`` (its per-sample
        loss must be the downstream's); None: :func:`default_reference` for the downstream;
        ``"own"``: the downstream's own class and parameters (cheap — its large-split fits are
        L_H(u)'s — but then the approximation term is 0 by construction, and the report says so).
    large_split : the split the reference and ``v``'s own class are fitted on (many samples of
        the upstream's outputs); it must be one of the system's splits.
    oracle : upstream output -> ground-truth output wired in its place for ``L*``, e.g.
        ``{"depth.pred": "data.depth"}``. Needed for per-upstream parts with several upstreams.
    l_star : ``"oracle"``, ``"source"`` (the closed form ``bayes_risk(target)`` of the source
        that provides ``v``'s target) or ``"auto"`` (oracle when given, else source).
    upstreams : the upstream nodes of ``v`` to decompose over (default: every non-source node
        whose output ``v`` reads).
    clip_reference : report ``L*(u) = min(reference, L_H(u))`` per seed (True), or the
        reference alone (False).
    """

    reference: BaseNode | str | None = None
    large_split: str = "large"
    oracle: Mapping[str, str] | None = None
    l_star: str = "auto"
    upstreams: tuple[str, ...] | None = None
    clip_reference: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.reference, str) and self.reference != "own":
            raise DecompositionError(f"estimators field 'reference': a node config or 'own', got {self.reference!r}")
        if self.l_star not in ("auto", "oracle", "source"):
            raise DecompositionError(f"estimators field 'l_star': expected auto, oracle or source, "
                                     f"got {self.l_star!r}")
        if self.l_star == "oracle" and not self.oracle:
            raise DecompositionError("estimators field 'l_star' is 'oracle' but no 'oracle' mapping is given")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, where: str = "decomposition") -> "Estimators":
        """Build from a config mapping (``reference`` is a ``_target_`` node config)."""
        from hydra.utils import instantiate
        from omegaconf import DictConfig, OmegaConf

        if cfg is None:
            return cls()
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg = dict(cfg)
        known = {"reference", "large_split", "oracle", "l_star", "upstreams", "clip_reference"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise DecompositionError(f"{where}: unknown field(s) {unknown} (expected {sorted(known)})")
        ref = cfg.pop("reference", None)
        if isinstance(ref, Mapping):
            try:
                ref = instantiate(dict(ref), _convert_="all")
            except Exception as err:
                raise DecompositionError(f"{where}, field 'reference': {err}") from err
        ups = cfg.pop("upstreams", None)
        return cls(reference=ref, upstreams=tuple(ups) if ups is not None else None, **cfg)


def estimators_by_node(cfg: Mapping[str, Any] | None) -> dict[str, Estimators]:
    """``{downstream: Estimators}`` from a config block ``{downstream: {reference, oracle, ...}}``."""
    from omegaconf import DictConfig, OmegaConf
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return {str(name): (v if isinstance(v, Estimators) else
                        Estimators.from_config(v, where=f"decomposition.{name}"))
            for name, v in dict(cfg).items()}


def check_decomposition(system: System, cfg: Mapping[str, Any] | None) -> dict[str, Estimators]:
    """:func:`estimators_by_node` of a ``decomposition`` block, each checked against ``system``
    (node, fields, splits, oracles) so a wrong one is refused before anything is fitted."""
    out = estimators_by_node(cfg)
    for name, est in out.items():
        try:
            _check(system, name, est)
        except DecompositionError as err:
            raise DecompositionError(f"decomposition.{name}: {err}") from None
    return out


def default_reference(node: BaseNode) -> BaseNode:
    """A high-capacity reference learner whose per-sample loss matches ``node``'s."""
    from entangle.models.mlp_node import MLPNode
    classification = node.metric == "accuracy" or bool(getattr(node, "is_classifier", False))
    return MLPNode(task="classification" if classification else "regression")


def loss_name(node: BaseNode) -> str:
    """A short description of a node's per-sample loss (what the decomposition is over)."""
    if isinstance(node, SklearnNode):
        return "log loss" if node.is_classifier else "squared error"
    if isinstance(node, TorchNode):
        return "log loss" if node.criterion == "cross_entropy" else "squared error (mean over columns)"
    task = getattr(node, "task", None)
    if task in ("classification", "regression"):
        return "log loss" if task == "classification" else "squared error"
    return f"{type(node).__name__}.loss"


def upstreams_of(system: System, downstream: str) -> list[str]:
    """The non-source nodes whose outputs ``downstream`` reads as inputs."""
    spec = system.specs[downstream]
    ups = {parse_ref(r)[0] for r in spec.inputs.values()}
    return sorted(u for u in ups if not system.specs[u].node.is_source)


def _check(system: System, downstream: str, est: Estimators) -> tuple[list[str], BaseNode]:
    if downstream not in system.specs:
        raise DecompositionError(f"no node {downstream!r} in the system (nodes: {sorted(system.specs)})")
    spec = system.specs[downstream]
    if not spec.targets:
        raise DecompositionError(f"node {downstream!r} has no targets: there is no risk to decompose")
    if est.large_split not in system.splits:
        raise DecompositionError(
            f"estimators field 'large_split': {est.large_split!r} is not a split of the system "
            f"{list(system.splits)}; add it to the pipeline's `splits` (and the source's sizes)")
    if est.large_split == system.eval_split:
        raise DecompositionError(f"estimators field 'large_split' must differ from the eval split "
                                 f"{system.eval_split!r}")
    ups = list(est.upstreams) if est.upstreams is not None else upstreams_of(system, downstream)
    for u in ups:
        if u not in system.specs:
            raise DecompositionError(f"estimators field 'upstreams': no node {u!r} in the system")
    for ref, truth in (est.oracle or {}).items():
        up, _ = parse_ref(ref)
        t_node, _ = parse_ref(truth)
        if ref not in spec.inputs.values():
            raise DecompositionError(f"estimators field 'oracle.{ref}': {downstream!r} does not read {ref!r} "
                                     f"(it reads {sorted(spec.inputs.values())})")
        if t_node not in system.specs:
            raise DecompositionError(f"estimators field 'oracle.{ref}': no node {t_node!r} for {truth!r}")
    if est.reference == "own":   # v's own class and parameters
        reference = spec.node.clone()
    else:
        reference = est.reference if est.reference is not None else default_reference(spec.node)
    if reference.metric != spec.node.metric:
        raise DecompositionError(
            f"the reference learner {type(reference).__name__} scores {reference.metric!r} but "
            f"{downstream!r} scores {spec.node.metric!r}: their per-sample losses must be the same")
    return ups, reference


# -- derived systems ----------------------------------------------------------------------------
def _with_oracles(system: System, downstream: str, est: Estimators, ups: Sequence[str],
                  oracled: Iterable[str], learner: BaseNode | None) -> System:
    """``v`` fitted on the large split (as ``learner`` when given, else its own class) with the
    outputs of the ``oracled`` upstreams replaced by their ground truth."""
    spec = system.specs[downstream]
    oracled = set(oracled)
    oracle = dict(est.oracle or {})
    inputs = {}
    for arg, ref in spec.inputs.items():
        up = parse_ref(ref)[0]
        if up in oracled:
            if ref not in oracle:
                raise DecompositionError(f"estimators field 'oracle': no ground truth for {ref!r} "
                                         f"(node {downstream!r}, input {arg!r})")
            inputs[arg] = oracle[ref]
        else:
            inputs[arg] = ref
    out = system
    for u in sorted(oracled):
        out = out.with_spec(u, output=True)  # nobody may read it any more; output keeps it valid
    node = learner if learner is not None else spec.node
    return out.replace(downstream, NodeSpec(node, inputs=inputs, targets=dict(spec.targets),
                                            output=True, fit_split=est.large_split))


def _oracle_covers(est: Estimators, system: System, downstream: str, ups: Sequence[str]) -> bool:
    refs = [r for r in system.specs[downstream].inputs.values() if parse_ref(r)[0] in ups]
    return bool(refs) and all(r in (est.oracle or {}) for r in refs)


def derived_systems(system: System, downstream: str, est: Estimators | None = None) -> dict[str, System]:
    """The systems whose ``downstream`` losses estimate each value, by role.

    ``trained`` (L(v̂∘u)), ``own_class_large`` (L_H(u)), ``reference_large`` (L*(u)); with an
    oracle, ``oracle:reference`` (L*) and, with several upstreams and oracles for all of them,
    ``only:NAME:reference`` (only NAME real, the other upstreams oracles). With
    ``clip_reference`` every reference role has an ``...:own_class`` twin (v's class on the same
    inputs), since a best risk over all functions is at most the risk of any one class.
    """
    est = est or Estimators()
    ups, reference = _check(system, downstream, est)
    out = {"trained": system,
           "own_class_large": system.with_spec(downstream, fit_split=est.large_split),
           "reference_large": _with_oracles(system, downstream, est, ups, (), reference)}

    def add(role: str, oracled: Sequence[str]) -> None:
        out[f"{role}:reference"] = _with_oracles(system, downstream, est, ups, oracled, reference)
        if est.clip_reference:
            out[f"{role}:own_class"] = _with_oracles(system, downstream, est, ups, oracled, None)

    if _use_oracle(est, system, downstream, ups):
        add("oracle", ups)
        if len(ups) > 1:
            for u in ups:
                add(f"only:{u}", [w for w in ups if w != u])
    return out


def _use_oracle(est: Estimators, system: System, downstream: str, ups: Sequence[str]) -> bool:
    if est.l_star == "source":
        return False
    covered = _oracle_covers(est, system, downstream, ups)
    if est.l_star == "auto" and est.oracle and not covered:
        missing = sorted(r for r in system.specs[downstream].inputs.values()
                         if parse_ref(r)[0] in ups and r not in est.oracle)
        raise DecompositionError(f"node {downstream!r}: estimators field 'oracle' gives no ground truth for "
                                 f"{missing} (read from upstreams {list(ups)}); map them too, or name the "
                                 f"upstreams to decompose over with 'upstreams'")
    if est.l_star == "oracle" and not covered:
        raise DecompositionError(f"estimators field 'oracle' must give ground truth for every input of "
                                 f"{downstream!r} read from {list(ups)}")
    return covered


def _source_bayes_risk(system: System, downstream: str) -> float:
    spec = system.specs[downstream]
    if len(spec.targets) != 1:
        raise DecompositionError(f"l_star='source' needs exactly one target on {downstream!r}")
    name, out = parse_ref(next(iter(spec.targets.values())))
    node = system.specs[name].node
    if not hasattr(node, "bayes_risk"):
        raise DecompositionError(f"l_star='source': node {name!r} ({type(node).__name__}) has no "
                                 f"bayes_risk(output); give an oracle instead")
    return float(node.bayes_risk(out))


# -- terms ---------------------------------------------------------------------------------------
def terms_from_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The decomposition terms from the values (arrays per seed or scalars), keyed by mechanism.

    ``upstream:NAME`` and ``compatibility`` appear when ``L*(only NAME)`` values are present.
    """
    v = {k: np.asarray(x, dtype=np.float64) for k, x in values.items()}
    terms = {"upstream": v["L*(u)"] - v["L*"],
             "approximation": v["L_H(u)"] - v["L*(u)"],
             "estimation": v["L(v̂∘u)"] - v["L_H(u)"]}
    parts = {k[len("L*(only "):-1]: x - v["L*"] for k, x in v.items() if k.startswith("L*(only ")}
    if parts:
        for u, part in parts.items():
            terms[f"upstream:{u}"] = part
        terms["compatibility"] = terms["upstream"] - sum(parts.values())
    return terms


# -- one system ---------------------------------------------------------------------------------
@dataclass
class Decomposition:
    """The decomposition of one downstream node in one system over seeds.

    ``values[name]`` and ``terms[mechanism]`` are per-seed arrays; ``report`` is JSON-able.
    """

    downstream: str
    upstreams: list[str]
    seeds: list[int]
    values: dict[str, np.ndarray]
    terms: dict[str, np.ndarray]
    report: dict[str, Any]
    systems: dict[str, System] = field(repr=False, default_factory=dict)


def _fitter(store: Store, fit: Fit | None) -> Fit:
    """``fit`` or, from code without a study, the local executor on ``store``."""
    return fit if fit is not None else (lambda system, seeds: LocalExecutor().run(system, seeds, store))


def _mean_losses(fit: Fit, system: System, seeds: Sequence[int], name: str, role: str) -> list[float]:
    runs = fit(system.labelled(f"decomposition of {name!r}: {role}"), seeds)
    return [float(np.mean(runs[s].losses(name))) for s in seeds]


def decompose(system: System, downstream: str, seeds: Iterable[int], store: Store, *,
              estimators: Estimators | None = None, confidence: float = 0.95,
              fit: Fit | None = None) -> Decomposition:
    """Estimate ``L*``, ``L*(u)``, ``L_H(u)``, ``L(v̂∘u)`` and the terms for ``downstream``.

    Every derived system is fitted by ``fit`` (a study's :meth:`~entangle.study.Study.fit`: its
    executor and store; default: the local executor on ``store``); what the store holds (a
    study's nodes, an earlier decomposition) is served from it.
    """
    est = estimators or Estimators()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise DecompositionError("seeds must hold at least one seed")
    fit = _fitter(store, fit)
    ups, reference = _check(system, downstream, est)
    systems = derived_systems(system, downstream, est)
    hits0, misses0 = store.stats.hits, store.stats.misses
    raw: dict[str, list[float]] = {}
    failed: dict[str, str] = {}
    for role, s in systems.items():
        try:
            raw[role] = _mean_losses(fit, s, seeds, downstream, role)
        except NodeError as err:
            if not role.endswith(":own_class"):
                raise
            failed[role] = str(err).splitlines()[0]  # v's class cannot read the oracle input

    def best(role: str) -> np.ndarray:
        ref = np.asarray(raw[f"{role}:reference"])
        own = raw.get(f"{role}:own_class")
        return np.minimum(ref, own) if own is not None else ref

    values: dict[str, np.ndarray] = {
        "L(v̂∘u)": np.asarray(raw["trained"]),
        "L_H(u)": np.asarray(raw["own_class_large"]),
        "reference(u)": np.asarray(raw["reference_large"]),
    }
    values["L*(u)"] = (np.minimum(values["reference(u)"], values["L_H(u)"]) if est.clip_reference
                       else values["reference(u)"].copy())
    if "oracle:reference" in systems:
        values["L*"] = best("oracle")
        values["reference(oracle)"] = np.asarray(raw["oracle:reference"])
        how_l_star = (f"{type(reference).__name__} on the oracle inputs {dict(est.oracle or {})}, "
                      f"fitted on split {est.large_split!r}"
                      + (" (per seed, the lower of it and v's own class there)" if est.clip_reference else ""))
        for u in ups if len(ups) > 1 else ():
            values[f"L*(only {u})"] = best(f"only:{u}")
    else:
        values["L*"] = np.full(len(seeds), _source_bayes_risk(system, downstream))
        how_l_star = "closed form: the source's bayes_risk(target)"
    terms = terms_from_values({k: v for k, v in values.items() if not k.startswith("reference(")})
    v_node = system.specs[downstream].node
    warnings = _warnings(values, terms, reference, v_node, est, confidence)
    if system.specs[downstream].fit_split == est.large_split or _same_data(system, downstream, est):
        warnings.append(
            f"the large split {est.large_split!r} holds the same samples as {downstream!r}'s training "
            f"split {system.specs[downstream].fit_split!r}: L_H(u) is then v as trained, so the "
            "estimation error is 0 by construction; give the decomposition a larger split")
    warnings += [f"{role}: v's own class could not be fitted there ({msg}); the reference alone is used"
                 for role, msg in failed.items()]
    for w in warnings:
        if (downstream, w) not in _LOGGED:   # a change decomposes the old system again: say it once
            _LOGGED.add((downstream, w))
            log.warning("decomposition of %r: %s", downstream, w)
    report = {
        "downstream": downstream,
        "upstreams": ups,
        "seeds": seeds,
        "loss": loss_name(v_node),
        "eval_split": system.eval_split,
        "large_split": est.large_split,
        "estimators": {
            "L*": how_l_star,
            "L*(u)": (f"per seed, the lower of {type(reference).__name__}{_short_params(reference)} and "
                      f"{type(v_node).__name__}, both fitted on split {est.large_split!r} of u's outputs"
                      if est.clip_reference else
                      f"{type(reference).__name__}{_short_params(reference)} fitted on split "
                      f"{est.large_split!r} of u's outputs"),
            "L_H(u)": f"{type(v_node).__name__} (v's own class) fitted on split {est.large_split!r}",
            "L(v̂∘u)": f"v as trained on split {system.specs[downstream].fit_split!r}",
        },
        "values": {k: interval(v, confidence) for k, v in values.items()},
        "terms": {k: interval(v, confidence) for k, v in terms.items()},
        "warnings": warnings,
        "store": {"hits": store.stats.hits - hits0, "misses": store.stats.misses - misses0},
    }
    return Decomposition(downstream, ups, seeds, values, terms, report, systems)


def _same_data(system: System, downstream: str, est: Estimators) -> bool:
    """Whether every source ``downstream`` reads serves its fit split and the large split with
    the same data (an alias such as ``large: train`` on an unlimited source)."""
    spec = system.specs[downstream]
    sources = {parse_ref(r)[0] for r in [*spec.inputs.values(), *spec.targets.values()]}
    sources = {u for u in system.ancestors(downstream) | sources if system.specs[u].node.is_source}
    if not sources:
        return False
    for name in sources:
        node = system.specs[name].node
        aliases = dict(getattr(node, "aliases", None) or {})
        limits = dict(getattr(node, "limits", None) or {})
        if aliases.get(est.large_split, est.large_split) != aliases.get(spec.fit_split, spec.fit_split):
            return False
        if limits.get(est.large_split) != limits.get(spec.fit_split):
            return False
    return True


def _short_params(node: BaseNode) -> str:
    try:
        params = node.get_params()
    except Exception:  # pragma: no cover - every node has get_params
        return ""
    keep = {k: v for k, v in params.items() if isinstance(v, (int, float, str, tuple, list)) and k != "device"}
    return "(" + ", ".join(f"{k}={v}" for k, v in sorted(keep.items())) + ")"


def _fingerprint(value: Any) -> Any:
    from entangle.hashing import UnhashableError, fingerprint
    try:
        return fingerprint(value)
    except UnhashableError:
        return repr(value)


def _warnings(values, terms, reference, v_node, est, confidence) -> list[str]:
    out = []
    if type(reference) is type(v_node):
        ref_p = {k: _fingerprint(v) for k, v in reference.get_params().items()}
        own_p = {k: _fingerprint(v) for k, v in v_node.get_params().items()}
        if ref_p == own_p:
            out.append(
                f"the reference learner is the downstream's own class with the same parameters "
                f"({type(v_node).__name__}): L*(u) = L_H(u), so the approximation error is 0 by "
                "construction and whatever the class cannot express is counted as upstream error")
        else:
            diff = sorted(k for k in ref_p if own_p.get(k) != ref_p[k])
            out.append(
                f"the reference learner is the same class as the downstream ({type(v_node).__name__}, "
                f"differing in {diff}): the approximation error only measures what that "
                "difference adds; if the reference is not more expressive on u's output, upstream "
                "error is over-estimated and approximation error under-estimated")
    scale = float(np.mean(values["L(v̂∘u)"]))
    gap = values["reference(u)"] - values["L_H(u)"]
    if len(gap) > 1:
        d = interval(gap, confidence)
        if d["ci"][0] > 0 and d["mean"] > 0.005 * abs(scale):
            out.append(f"the reference learner is worse than the downstream's own class on u's output "
                       f"(by {d['mean']:+.4g} [{d['ci'][0]:+.3g}, {d['ci'][1]:+.3g}]): it is not "
                       "high-capacity enough here, so L*(u) is the own class's risk and the "
                       "approximation error is set to 0")
    for name in ("upstream", "approximation", "estimation"):
        t = np.asarray(terms[name])
        if len(t) > 1:
            d = interval(t, confidence)
            # negative beyond noise and beyond the large-split fits' own estimation error
            if d["ci"][1] < 0 and abs(d["mean"]) > 0.005 * abs(scale):
                hint = {"upstream": "the oracle input is less informative than u's output, or the "
                                    "reference learner fits it worse (L* over-estimated)",
                        "approximation": "the reference learner over-fits the large split",
                        "estimation": "the large split is too small for L_H(u)"}[name]
                out.append(f"{name} error is negative beyond noise ({d['mean']:+.4g}): {hint}")
    return out


# -- an improvement ------------------------------------------------------------------------------
@dataclass
class ChangeDecomposition:
    """The decomposition of an improvement ``u → u'`` for one downstream node."""

    old: Decomposition
    new: Decomposition
    deltas: dict[str, np.ndarray]
    report: dict[str, Any]


def _mechanism(term: str) -> str:
    return "upstream" if term.startswith("upstream") else term


def change_deltas(old: Decomposition, new: Decomposition) -> dict[str, np.ndarray]:
    """Every term's paired per-seed delta, new level minus old level, with the total.

    The terms are the same on both sides (the same downstream, upstreams and estimators), so
    the deltas add up as the levels do: ``total = upstream + approximation + estimation`` and,
    with several upstreams and their oracles, ``upstream = Σ upstream:NAME + compatibility``.
    """
    if old.seeds != new.seeds:
        raise DecompositionError(f"old and new decompositions must pair seeds: {old.seeds} vs {new.seeds}")
    if set(old.terms) != set(new.terms):
        raise DecompositionError(f"old and new decompositions of {old.downstream!r} have different terms: "
                                 f"{sorted(old.terms)} vs {sorted(new.terms)}")
    deltas = {"total": new.values["L(v̂∘u)"] - old.values["L(v̂∘u)"]}
    deltas.update({k: np.asarray(new.terms[k]) - np.asarray(old.terms[k]) for k in old.terms})
    return deltas


def dominant_term(deltas: Mapping[str, Any], total: float) -> str:
    """The term that moved most in the direction of the total change (largest rise if it got worse).

    Where the upstream term is split (per-upstream parts and compatibility) its parts compete,
    not their sum.
    """
    candidates = {k: float(np.mean(v)) for k, v in deltas.items() if k != "total"}
    if "compatibility" in candidates:
        candidates.pop("upstream", None)  # split into per-upstream parts and compatibility
    if not candidates:
        raise ValueError("no terms to choose from")
    sign = 1.0 if total >= 0 else -1.0
    return max(candidates, key=lambda k: sign * candidates[k])


def explain(report: Mapping[str, Any]) -> str:
    """One sentence naming the dominant mechanism of a change decomposition's report."""
    d = report["deltas"]
    total = d["total"]
    term = report["dominant_term"]
    mech = _mechanism(term)
    changed = " and ".join(repr(u) for u in report["changed"])
    worse = total["mean"] > 0
    verb = "made"
    noise = total["ci"][0] <= 0 <= total["ci"][1]   # the interval holds no change: say so first
    head = (f"Improving {changed} {verb} {report['downstream']!r} "
            f"{'worse' if worse else 'better'}: its {report['loss']} "
            f"{'rose' if worse else 'fell'} by {total['mean']:+.4g} "
            f"[{total['ci'][0]:+.3g}, {total['ci'][1]:+.3g}]")
    if noise:
        head = (f"Improving {changed} did not change {report['downstream']!r} beyond noise: its "
                f"{report['loss']} moved by {total['mean']:+.4g} [{total['ci'][0]:+.3g}, {total['ci'][1]:+.3g}]")
    label = f"upstream error of {term.split(':', 1)[1]!r}" if term.startswith("upstream:") else f"{mech} error"
    why = WHY[mech] if worse else {
        "upstream": "the upstream's new output carries more of the information the downstream needs",
        "approximation": "the downstream's class fits the new representation better",
        "estimation": "the new representation is easier to fit from the downstream's data",
        "compatibility": "the upstreams' errors complement each other better"}[mech]
    others = ", ".join(f"{k} {d[k]['mean']:+.3g}" for k in d if k not in ("total", term)
                       and not (k == "upstream" and "compatibility" in d))
    return f"{head}, mostly through {label} ({d[term]['mean']:+.4g}: {why}); other terms: {others}."


def _changed_nodes(old: System, new: System, changed: str | Sequence[str] | None) -> list[str]:
    if changed is None:
        found = infer_changed(old, new)
        if not found:
            raise DecompositionError("the old and new systems do not differ; nothing to decompose")
        return found
    return [changed] if isinstance(changed, str) else list(changed)


def decompose_change(old: System, new: System, downstream: str, seeds: Iterable[int], store: Store, *,
                     changed: str | Sequence[str] | None = None,
                     estimators: Estimators | None = None,
                     confidence: float = 0.95, fit: Fit | None = None) -> ChangeDecomposition:
    """Decompose how ``downstream``'s risk changed between ``old`` and ``new`` (paired by seed).

    Every term's delta is the paired difference of its per-seed levels (:func:`change_deltas`),
    for one changed node or several; with several upstreams and an oracle for each, the upstream
    delta splits into each upstream's own part and compatibility, and the dominant term is
    chosen among those parts, approximation and estimation. The report
    explains a change; whether it is self-defeating is decided once, by the improvement study
    (:func:`entangle.compare.improvement`, the rule in :mod:`entangle.stats`).
    """
    est = estimators or Estimators()
    seeds = [int(s) for s in seeds]
    fit = _fitter(store, fit)
    names = _changed_nodes(old, new, changed)
    for u in names:
        if u not in old.specs or u not in new.specs:
            raise DecompositionError(f"changed node {u!r} is not in both systems")
    hits0, misses0 = store.stats.hits, store.stats.misses
    d_old = decompose(old, downstream, seeds, store, estimators=est, confidence=confidence, fit=fit)
    d_new = decompose(new, downstream, seeds, store, estimators=est, confidence=confidence, fit=fit)
    deltas = change_deltas(d_old, d_new)
    term = dominant_term(deltas, float(np.mean(deltas["total"])))
    report = {
        "downstream": downstream,
        "changed": names,
        "seeds": seeds,
        "loss": d_old.report["loss"],
        "old": d_old.report,
        "new": d_new.report,
        "deltas": {k: interval(v, confidence) for k, v in deltas.items()},
        "dominant_term": term,
        "dominant": _mechanism(term),
        "warnings": sorted(set(d_old.report["warnings"]) | set(d_new.report["warnings"])),
        "store": {"hits": store.stats.hits - hits0, "misses": store.stats.misses - misses0},
    }
    report["sentence"] = explain(report)
    return ChangeDecomposition(d_old, d_new, deltas, report)


def decomposition(study: Study, *, nodes: Mapping[str, Any] | None = None,
                  seeds: Sequence[int] | None = None, confidence: float = 0.95) -> dict[str, Any]:
    """The analysis: decompose how each downstream in ``nodes`` changed from the study's old
    system to its new one, every derived system fitted through the study.

    ``nodes`` maps a downstream node to its estimators (an :class:`Estimators` or its config;
    None for defaults); ``seeds`` restricts the decomposition to some of the study's seeds (the
    derived systems cost a fit per seed each). Returns ``{downstream: change report}``.
    """
    seeds = list(seeds) if seeds is not None else list(study.seeds)
    out: dict[str, Any] = {}
    for v, cfg in (nodes or {}).items():
        est = cfg if isinstance(cfg, Estimators) else Estimators.from_config(cfg, where=f"decomposition.{v}")
        change = decompose_change(study.old, study.new, str(v), seeds, study.store,
                                  changed=getattr(study, "changed_nodes", None) or study.changed,
                                  estimators=est, confidence=confidence, fit=study.fit)
        out[str(v)] = change.report
        log.info("decomposition of %s: %s", v, change.report["sentence"])
    return out


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A short text table of a change decomposition: each term old, new and delta."""
    lines = [f"decomposition of {report['downstream']!r} ({report['loss']}, seeds {report['seeds']}):"]
    for name in ("upstream", "approximation", "estimation"):
        o = report["old"]["terms"][name]["mean"]
        n = report["new"]["terms"][name]["mean"]
        d = report["deltas"][name]
        lines.append(f"  {name:<14} old {o:.4g}  new {n:.4g}  Δ {d['mean']:+.4g} "
                     f"[{d['ci'][0]:+.3g}, {d['ci'][1]:+.3g}]")
    for name, d in report["deltas"].items():
        if name.startswith("upstream:") or name == "compatibility":
            lines.append(f"  {name:<14} Δ {d['mean']:+.4g} [{d['ci'][0]:+.3g}, {d['ci'][1]:+.3g}]")
    lines.append(f"  {report['sentence']}")
    return lines
