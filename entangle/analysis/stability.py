"""Per-sample instability: which samples change prediction across retrainings and checkpoints.

Datta et al. (2023) measure *local instability* as the entropy of a sample's predicted label
over runs: ``H = -sum_c p_c log p_c`` with ``p_c`` the share of runs (different seeds, same
data) or of one run's last checkpoints that predict class ``c``. A sample is *unstable* when
``H > 0`` (not every run agrees). Model-update work (Yan et al. 2021) counts *flips* between two
models: churn (the label changed), negative flips (right before, wrong after) and positive flips.

Every node is read through its **outcomes** on a split: one ``label`` and one ``correct`` flag
per item. For a classifier the item is a sample, the label its predicted class. For any other
node (a regressor, a detector whose per-sample losses are per ground-truth *object*) the item is
one per-sample loss: the label is the loss's bin and ``correct`` means the loss is at most a
threshold (a detector's ``1 - IoU x score <= 0.5``: detected). Bins and threshold are fixed once
(given, or from a reference run's losses) so that runs and versions are read on one scale.

>>> import numpy as np
>>> label_entropy(np.array([[0, 1, 2], [0, 1, 1]])).round(3).tolist()
[0.0, 0.0, 0.693]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from entangle.study import ConfigError
from entangle.system import System, parse_ref

log = logging.getLogger(__name__)


class StabilityError(ConfigError):
    """An analysis option is wrong (too few runs, unknown node, no labels); the message names it.
    A ConfigError, so the command line reports it in one line."""


# -- measures on plain arrays ------------------------------------------------------------------

def label_entropy(labels: np.ndarray, *, option: str = "seeds") -> np.ndarray:
    """Per-item entropy (nats) of the labels of ``R`` runs: ``labels`` is ``(R, N)``.

    Raises :class:`StabilityError` naming ``option`` when fewer than 2 runs are given: one run
    cannot disagree with itself.
    """
    a = np.asarray(labels)
    if a.ndim != 2:
        raise StabilityError(f"labels must be (runs, items), got shape {a.shape}")
    if a.shape[0] < 2:
        raise StabilityError(f"label entropy needs at least 2 runs, got {a.shape[0]} "
                             f"(option {option!r})")
    r = a.shape[0]
    h = np.zeros(a.shape[1], dtype=np.float64)
    for value in np.unique(a):
        p = (a == value).sum(axis=0) / r
        nz = p > 0
        h[nz] -= p[nz] * np.log(p[nz])
    return h


def pairwise_disagreement(labels: np.ndarray, *, option: str = "seeds") -> np.ndarray:
    """Per-item probability that two distinct runs (drawn without replacement) disagree.

    Unlike the entropy it does not grow with the number of runs: it is the expected churn
    between two retrainings, estimated without bias from ``R >= 2`` runs.
    """
    a = np.asarray(labels)
    if a.ndim != 2 or a.shape[0] < 2:
        raise StabilityError(f"pairwise disagreement needs (runs >= 2, items) labels, got shape "
                             f"{a.shape} (option {option!r})")
    r = a.shape[0]
    same = np.zeros(a.shape[1], dtype=np.float64)
    for value in np.unique(a):
        n = (a == value).sum(axis=0).astype(np.float64)
        same += n * (n - 1)
    return 1.0 - same / (r * (r - 1))


def flip_rates(old_correct: np.ndarray, new_correct: np.ndarray,
               old_labels: np.ndarray | None = None, new_labels: np.ndarray | None = None) -> dict[str, float]:
    """Churn, negative flip rate (right → wrong) and positive flip rate (wrong → right).

    All three are shares of all items; ``churn`` is the share whose label changed (whose
    correctness changed when no labels are given).
    """
    oc, nc = np.asarray(old_correct, dtype=bool), np.asarray(new_correct, dtype=bool)
    if oc.shape != nc.shape or oc.ndim != 1:
        raise StabilityError(f"old and new outcomes must be paired 1-D arrays, got {oc.shape} and {nc.shape}")
    if len(oc) == 0:
        return {"churn": float("nan"), "nfr": float("nan"), "pfr": float("nan"), "n": 0}
    if old_labels is not None and new_labels is not None:
        churn = float(np.mean(np.asarray(old_labels) != np.asarray(new_labels)))
    else:
        churn = float(np.mean(oc != nc))
    return {"churn": churn, "nfr": float(np.mean(oc & ~nc)), "pfr": float(np.mean(~oc & nc)),
            "n": int(len(oc))}


# -- outcomes of a node ------------------------------------------------------------------------

@dataclass(frozen=True)
class OutcomeSpec:
    """How a node's predictions become per-item labels and correct flags.

    ``kind``: ``"label"`` (a classifier's ``pred`` against its target), ``"loss"`` (per-sample
    losses: label = bin, correct = loss <= threshold), ``"detected"`` (a detector's objects:
    right when a detection finds the object at IoU ``>= iou``; label = found or not) or
    ``"auto"`` (label when ``pred`` is a 1-D integer array, else loss). ``threshold``/``bins``
    fix the loss scale; when None they come from a reference run (its median loss; its loss
    quartiles). Bins are right-closed and the threshold is always one of their edges, so two
    items with one label agree on correctness.
    """

    kind: str = "auto"
    threshold: float | None = None
    bins: tuple[float, ...] | None = None
    iou: float | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, where: str = "outcomes") -> "OutcomeSpec":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"kind", "threshold", "bins", "iou"}
        if unknown:
            raise StabilityError(f"{where}: unknown field(s) {sorted(unknown)} (expected kind, threshold, bins, iou)")
        kind = str(cfg.get("kind", "auto"))
        if kind not in ("auto", "label", "loss", "detected"):
            raise StabilityError(f"{where}.kind must be auto, label, loss or detected, got {kind!r}")
        if kind == "detected" and not (isinstance(cfg.get("iou"), (int, float)) and 0 < float(cfg["iou"]) <= 1):
            raise StabilityError(f"{where}.iou: kind 'detected' needs the IoU an object is found at, in (0, 1]; "
                                 f"got {cfg.get('iou')!r}")
        bins = cfg.get("bins")
        return cls(kind, None if cfg.get("threshold") is None else float(cfg["threshold"]),
                   None if bins is None else tuple(float(b) for b in bins),
                   None if cfg.get("iou") is None else float(cfg["iou"]))


@dataclass(frozen=True)
class Outcomes:
    """Per-item ``labels`` and ``correct`` flags of one node in one run, and how they were read."""

    labels: np.ndarray
    correct: np.ndarray
    kind: str
    threshold: float | None = None
    bins: tuple[float, ...] | None = None


def node_targets(run: Any, name: str, split: str | None = None) -> dict[str, Any]:
    """The ground truth wired to ``name`` on ``split`` (eval split by default)."""
    split = split or run.system.eval_split
    spec = run.system.specs[name]
    out = {}
    for arg, ref in spec.targets.items():
        up, output = parse_ref(ref)
        out[arg] = run.values(up, split)[output]
    return out


def _same_value(a: Any, b: Any) -> bool:
    from entangle.node import Ragged
    if isinstance(a, Ragged) or isinstance(b, Ragged):
        return (isinstance(a, Ragged) and isinstance(b, Ragged)
                and np.array_equal(a.offsets, b.offsets) and np.array_equal(a.values, b.values))
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.array_equal(a, b)


def check_same_items(run_a: Any, run_b: Any, name: str, split: str | None = None) -> None:
    """Raise unless two runs evaluate ``name`` on the same items (identical ground truth).

    Per-item comparisons across seeds (entropy, seed-to-seed flips) are meaningless when a
    source resamples its data with the seed; the error says how to fix it.
    """
    split = split or run_a.system.eval_split
    ta, tb = node_targets(run_a, name, split), node_targets(run_b, name, split)
    for arg in ta:
        if arg not in tb or not _same_value(ta[arg], tb[arg]):
            raise StabilityError(
                f"node {name!r}: the ground truth on split {split!r} differs between seeds {run_a.seed} "
                f"and {run_b.seed}, so its items cannot be compared across seeds (the source resamples "
                "its data with the seed: fix its data seed, e.g. data_seed: 0)")


def is_label_node(predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> bool:
    """Whether a node's outcomes are class labels (1-D integer ``pred`` and one target)."""
    pred = predictions.get("pred")
    if pred is None or len(targets) != 1:
        return False
    p = np.asarray(pred)
    return p.ndim == 1 and p.dtype.kind in "iub"


def outcome_arrays(predictions: Mapping[str, Any], targets: Mapping[str, Any], loss: np.ndarray | None,
                   spec: OutcomeSpec = OutcomeSpec(), node: Any = None) -> Outcomes:
    """Outcomes from one node's predictions, targets and per-sample losses (see :class:`OutcomeSpec`);
    kind ``detected`` asks ``node.detected(predictions, targets, iou)``."""
    kind = spec.kind
    if kind == "detected":
        if node is None or not callable(getattr(node, "detected", None)):
            raise StabilityError(f"outcome kind 'detected' needs a detector node (with a 'detected' method), "
                                 f"got {type(node).__name__}")
        found = np.asarray(node.detected(predictions, targets, spec.iou), dtype=bool)
        if loss is not None and len(found) != len(loss):
            raise StabilityError(f"{type(node).__name__}.detected returned {len(found)} items for "
                                 f"{len(loss)} per-sample losses")
        return Outcomes(found.astype(np.int64), found, "detected", spec.iou)
    if kind == "auto":
        kind = "label" if is_label_node(predictions, targets) else "loss"
    if kind == "label":
        if "pred" not in predictions or len(targets) != 1:
            raise StabilityError("outcome kind 'label' needs a 'pred' output and exactly one target")
        pred = np.asarray(predictions["pred"])
        y = np.asarray(next(iter(targets.values())))
        return Outcomes(pred, pred == y, "label")
    if loss is None:
        raise StabilityError("outcome kind 'loss' needs per-sample losses (the node has no targets?)")
    loss = np.asarray(loss, dtype=np.float64)
    if spec.threshold is None or spec.bins is None:
        raise StabilityError("outcome kind 'loss' needs a threshold and bins: use resolve_spec first")
    # right-closed bins with the threshold among the edges: equal labels imply equal correctness
    edges = np.unique(np.asarray([*spec.bins, spec.threshold], dtype=np.float64))
    return Outcomes(np.digitize(loss, edges, right=True), loss <= spec.threshold, "loss",
                    spec.threshold, spec.bins)


def resolve_spec(spec: OutcomeSpec, predictions: Mapping[str, Any], targets: Mapping[str, Any],
                 loss: np.ndarray | None) -> OutcomeSpec:
    """Fix the kind, threshold and bins from a reference run where the spec leaves them open."""
    kind = spec.kind
    if kind == "auto":
        kind = "label" if is_label_node(predictions, targets) else "loss"
    if kind in ("label", "detected"):
        return OutcomeSpec(kind, iou=spec.iou)
    if loss is None or len(loss) == 0:
        raise StabilityError("cannot fix a loss threshold from a reference run without losses")
    loss = np.asarray(loss, dtype=np.float64)
    threshold = spec.threshold if spec.threshold is not None else float(np.median(loss))
    bins = spec.bins if spec.bins is not None else tuple(float(q) for q in np.quantile(loss, [0.25, 0.5, 0.75]))
    return OutcomeSpec("loss", threshold, tuple(sorted(bins)))


def run_outcomes(run: Any, name: str, split: str | None = None,
                 spec: OutcomeSpec = OutcomeSpec()) -> Outcomes:
    """A node's outcomes in a fitted run, from the store (``spec`` must be resolved for losses)."""
    if name not in run.system.specs:
        raise StabilityError(f"no node {name!r} in the system (nodes: {sorted(run.system.specs)})")
    if not run.system.specs[name].targets:
        raise StabilityError(f"node {name!r} has no targets, so it has no per-sample outcomes")
    split = split or run.system.eval_split
    preds = run.values(name, split)
    targets = node_targets(run, name, split)
    loss = run.losses(name, split)
    return outcome_arrays(preds, targets, loss, spec, node=run.system.specs[name].node)


def reference_spec(run: Any, name: str, split: str | None = None,
                   spec: OutcomeSpec = OutcomeSpec()) -> OutcomeSpec:
    """``spec`` resolved on one reference run of ``name`` (see :func:`resolve_spec`)."""
    split = split or run.system.eval_split
    return resolve_spec(spec, run.values(name, split), node_targets(run, name, split),
                        run.losses(name, split))


# -- attributes and enrichment -----------------------------------------------------------------

def source_attributes(run: Any, split: str | None = None,
                      fn: Callable[..., Mapping[str, Any]] | str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Per-sample attributes on ``split``: ``fn(**source outputs)``, or the sources' numeric columns.

    Without ``fn``, every 1-D numeric source output (except ``index``) is an attribute and every
    2-D one with at most 8 columns gives one attribute per column (``x_0``, ``x_1``, ...).
    ``fn`` may be a dotted path (``package.module.function``) or a Hydra config with
    ``_partial_: true``. Its result maps names to per-sample arrays and may hold, under a node's
    name, a mapping of attributes of *that node's* items (e.g. a detector's objects): see
    :func:`node_attributes`.
    """
    split = split or run.system.eval_split
    values: dict[str, Any] = {}
    for src in run.system.sources():
        values.update(run.values(src, split))
    if fn is not None:
        if isinstance(fn, str):
            from hydra.utils import get_method
            fn = get_method(fn)
        elif isinstance(fn, Mapping) or hasattr(fn, "keys"):
            from hydra.utils import instantiate
            fn = instantiate(fn)
        return {k: (dict(v) if isinstance(v, Mapping) else np.asarray(v)) for k, v in dict(fn(**values)).items()}
    out: dict[str, np.ndarray] = {}
    for k, v in values.items():
        if k == "index" or not isinstance(v, np.ndarray) or v.dtype.kind not in "iufb":
            continue
        if v.ndim == 1:
            out[k] = v
        elif v.ndim == 2 and v.shape[1] <= 8:
            out.update({f"{k}_{j}": v[:, j] for j in range(v.shape[1])})
    return out


def node_attributes(attributes: Mapping[str, Any], node: str) -> dict[str, np.ndarray]:
    """The attributes of ``node``'s items: the per-sample arrays plus ``attributes[node]`` (if a mapping).

    Node-specific entries win over per-sample ones of the same name; other nodes' blocks are dropped.
    """
    out = {k: np.asarray(v) for k, v in attributes.items() if not isinstance(v, Mapping)}
    own = attributes.get(node)
    if isinstance(own, Mapping):
        out.update({k: np.asarray(v) for k, v in own.items()})
    return out


def _bins_of(values: np.ndarray, n_bins: int) -> list[tuple[str, np.ndarray]]:
    """(description, mask) per bin: categories for few distinct values, else quantile bins."""
    v = np.asarray(values)
    uniq = np.unique(v[~np.isnan(v)] if v.dtype.kind == "f" else v)
    if len(uniq) <= max(n_bins, 10) and (v.dtype.kind in "iub" or np.all(uniq == np.round(uniq))):
        return [(f"= {u:g}", v == u) for u in uniq]
    if v.dtype.kind == "f" and np.all(np.isnan(v)):
        return []
    edges = np.unique(np.nanquantile(v, np.linspace(0, 1, n_bins + 1)))  # NaN (unknown) in no bin
    out = []
    for j in range(len(edges) - 1):
        lo, hi = edges[j], edges[j + 1]
        last = j == len(edges) - 2
        mask = (v >= lo) & ((v <= hi) if last else (v < hi))
        out.append((f"in [{lo:.3g}, {hi:.3g}{']' if last else ')'}", mask))
    return out


def enrichment(flag: np.ndarray, attributes: Mapping[str, np.ndarray], *, n_bins: int = 4,
               min_count: int = 10, top: int = 5) -> list[dict[str, Any]]:
    """The attribute bins where flagged (e.g. unstable) items are most over-represented.

    For each attribute (quantile bins for continuous values, categories otherwise) and bin with
    at least ``min_count`` items: the flagged share, its ratio to the overall share
    (``enrichment``), and a one-sided Fisher exact p-value. Returns the ``top`` bins by
    enrichment (over 1), at most one per attribute. Attributes whose length differs from the
    items are skipped (e.g. per-image attributes of per-object outcomes).
    """
    from scipy.stats import fisher_exact

    flag = np.asarray(flag, dtype=bool)
    n, k = len(flag), int(flag.sum())
    if n == 0 or k == 0:
        return []
    base = k / n
    best: list[dict[str, Any]] = []
    for name, values in attributes.items():
        values = np.asarray(values)
        if values.ndim != 1 or len(values) != n:
            log.debug("attribute %r has %s values for %d items: skipped", name, values.shape, n)
            continue
        rows = []
        for desc, mask in _bins_of(values, n_bins):
            m = int(mask.sum())
            if m < min_count:
                continue
            a = int((flag & mask).sum())
            rate = a / m
            table = [[a, m - a], [k - a, (n - m) - (k - a)]]
            p = float(fisher_exact(table, alternative="greater")[1])
            rows.append({"attribute": name, "bin": f"{name} {desc}", "n": m, "flagged": a,
                         "rate": rate, "enrichment": rate / base, "p_value": p})
        if rows:
            best.append(max(rows, key=lambda r: (r["enrichment"], -r["p_value"])))
    best = [r for r in best if r["enrichment"] > 1.0]
    best.sort(key=lambda r: (-r["enrichment"], r["p_value"]))
    return best[:top]


# -- instability across seeds and checkpoints --------------------------------------------------

@dataclass
class Instability:
    """Per-item instability of one node over runs: arrays for figures, ``report`` for JSON."""

    node: str
    split: str
    entropy: np.ndarray                  # (items,) label entropy over the runs
    disagreement: np.ndarray             # (items,) pairwise disagreement over the runs
    labels: np.ndarray                   # (runs, items)
    correct: np.ndarray                  # (runs, items)
    report: dict[str, Any] = field(default_factory=dict)


def summarize_entropy(entropy: np.ndarray, disagreement: np.ndarray | None = None) -> dict[str, float]:
    """Mean entropy, share of unstable items (entropy > 0) and mean pairwise disagreement."""
    e = np.asarray(entropy)
    out = {"mean_entropy": float(e.mean()) if len(e) else float("nan"),
           "unstable_fraction": float(np.mean(e > 1e-12)) if len(e) else float("nan")}
    if disagreement is not None:
        out["pairwise_disagreement"] = float(np.mean(disagreement)) if len(e) else float("nan")
    return out


def _check_model(system: System, name: str, option: str = "node") -> None:
    if name not in system.specs:
        raise StabilityError(f"{option}={name!r} is not a node of the system (nodes: {sorted(system.specs)})")
    if not system.specs[name].targets:
        raise StabilityError(f"{option}={name!r} has no targets: instability needs a node with a metric "
                             f"(models: {system.models()})")


def seed_instability(study: Any, node: str, *, which: str = "old", split: str | None = None,
                     spec: OutcomeSpec = OutcomeSpec(), attributes: Mapping[str, np.ndarray] | None = None,
                     top: int = 5) -> Instability:
    """Label entropy of ``node``'s items over the study's retrainings (same data, new seeds).

    Fits what the store lacks through the study, reads each run's outcomes, and reports the mean
    entropy, the unstable share, the mean pairwise disagreement, each seed's accuracy on the
    items, and the attributes most enriched among unstable items.
    """
    seeds = list(study.seeds)
    if len(seeds) < 2:
        raise StabilityError(f"instability across retrainings needs at least 2 seeds, got {seeds} (option 'seeds')")
    system = study.systems[which]
    _check_model(system, node)
    split = split or system.eval_split
    runs = study.runs(which)
    for s in seeds[1:]:
        check_same_items(runs[seeds[0]], runs[s], node, split)
    ref = reference_spec(runs[seeds[0]], node, split, spec)
    outs = [run_outcomes(runs[s], node, split, ref) for s in seeds]
    sizes = {len(o.labels) for o in outs}
    if len(sizes) != 1:
        raise StabilityError(f"node {node!r} has a different number of items per seed {sorted(sizes)}: "
                             "per-item instability needs the same evaluation data for every seed")
    labels = np.stack([o.labels for o in outs])
    correct = np.stack([o.correct for o in outs])
    h = label_entropy(labels)
    d = pairwise_disagreement(labels)
    unstable = h > 1e-12
    report: dict[str, Any] = {
        "node": node, "split": split, "seeds": seeds, "n_runs": len(seeds), "n_items": int(labels.shape[1]),
        "outcome": {"kind": ref.kind, "threshold": ref.threshold, "bins": list(ref.bins or [])},
        **summarize_entropy(h, d),
        "max_entropy": float(np.log(min(len(seeds), max(2, len(np.unique(labels)))))),
        "accuracy_per_seed": correct.mean(axis=1).tolist(),
        "always_wrong_fraction": float(np.mean(~correct.any(axis=0))),
    }
    if attributes:
        report["enriched"] = enrichment(unstable, attributes, top=top)
    return Instability(node, split, h, d, labels, correct, report)


def checkpoint_labels(run: Any, name: str, split: str | None = None,
                      spec: OutcomeSpec = OutcomeSpec()) -> np.ndarray:
    """``(checkpoints, items)`` labels of one run from the node's ``ckpt_pred`` output."""
    split = split or run.system.eval_split
    preds = run.values(name, split)
    if "ckpt_pred" not in preds:
        raise StabilityError(f"node {name!r} has no 'ckpt_pred' output: give it checkpoints=K "
                             "(TorchNode) or expose per-checkpoint predictions as 'ckpt_pred'")
    ck = np.asarray(preds["ckpt_pred"])
    targets = node_targets(run, name, split)
    if spec.kind == "label" or (spec.kind == "auto" and is_label_node(preds, targets)):
        return ck.T
    if spec.threshold is None or spec.bins is None:
        raise StabilityError("checkpoint outcomes of a loss-read node need a resolved spec")
    node = run.fitted(name)
    rows = []
    for j in range(ck.shape[1]):
        loss = np.asarray(node.loss({**preds, "pred": ck[:, j]}, targets), dtype=np.float64)
        edges = np.unique(np.asarray([*spec.bins, spec.threshold], dtype=np.float64))
        rows.append(np.digitize(loss, edges, right=True))
    return np.stack(rows)


def checkpoint_instability(study: Any, node: str, *, which: str = "old", split: str | None = None,
                           spec: OutcomeSpec = OutcomeSpec(),
                           across_seeds: Instability | None = None) -> dict[str, Any]:
    """Label entropy over the last checkpoints of each run, and how well it predicts seed instability.

    Returns per seed the mean checkpoint entropy and unstable share, their means, and, when the
    across-seed instability is given, the Spearman correlation between the per-item checkpoint
    entropy (averaged over seeds) and the across-seed entropy, plus the ROC AUC of the former for
    finding items that are unstable across seeds (Datta et al.: checkpoints are a cheap proxy).
    """
    seeds = list(study.seeds)
    system = study.systems[which]
    _check_model(system, node)
    split = split or system.eval_split
    runs = study.runs(which)
    ref = reference_spec(runs[seeds[0]], node, split, spec)
    per_seed, ent = [], []
    for s in seeds:
        labels = checkpoint_labels(runs[s], node, split, ref)
        h = label_entropy(labels, option="checkpoints")
        ent.append(h)
        per_seed.append({"seed": s, "n_checkpoints": int(labels.shape[0]), **summarize_entropy(h)})
    mean_h = np.mean(ent, axis=0)
    report: dict[str, Any] = {
        "node": node, "split": split, "per_seed": per_seed,
        "mean_entropy": float(np.mean([p["mean_entropy"] for p in per_seed])),
        "unstable_fraction": float(np.mean([p["unstable_fraction"] for p in per_seed])),
    }
    if across_seeds is not None and len(across_seeds.entropy) == len(mean_h):
        from scipy.stats import spearmanr
        from sklearn.metrics import roc_auc_score
        rho = spearmanr(mean_h, across_seeds.entropy).statistic
        report["spearman_with_seed_entropy"] = float(rho) if np.isfinite(rho) else None
        target = across_seeds.entropy > 1e-12
        report["auc_for_seed_unstable"] = (float(roc_auc_score(target, mean_h))
                                          if 0 < target.sum() < len(target) else None)
    return {"report": report, "entropy": mean_h, "entropy_per_seed": np.stack(ent)}


def outcome_specs(outcomes: Mapping[str, Any] | None, option: str = "outcomes") -> dict[str, OutcomeSpec]:
    """``{node: OutcomeSpec}`` from a config block ``{node: {kind, threshold, bins}}``."""
    return {str(name): OutcomeSpec.from_config(spec, f"{option}.{name}")
            for name, spec in dict(outcomes or {}).items()}


def instability(study: Any, *, outcomes: Mapping[str, Any] | None = None, attributes: Any = None,
                top_attributes: int = 5) -> dict[str, Any]:
    """The analysis: per model node of the study's old system, label entropy across its seeds
    and across each run's last checkpoints (where the node keeps them), the unstable share and
    the attributes unstable items share.

    ``outcomes`` reads a node's items (``{node: {kind, threshold, bins}}``; classifiers need
    none); ``attributes`` is the sources' attribute function (or its dotted path).
    Returns ``{"nodes": {name: report}, "_entropies": {name: {label: per-item entropy}}}``
    (arrays for figures, under a private key).
    """
    specs = outcome_specs(outcomes)
    old = study.old
    attrs = source_attributes(study.runs("old")[study.seeds[0]], old.eval_split, attributes)
    nodes: dict[str, Any] = {}
    entropies: dict[str, dict[str, np.ndarray]] = {}
    for name in old.models():
        spec = specs.get(name, OutcomeSpec())
        across = seed_instability(study, name, spec=spec, attributes=node_attributes(attrs, name),
                                  top=int(top_attributes))
        entry = dict(across.report)
        entropies[name] = {"across seeds": across.entropy}
        if "ckpt_pred" in old.specs[name].node.output_kinds:
            ck = checkpoint_instability(study, name, spec=spec, across_seeds=across)
            entry["checkpoints"] = ck["report"]
            entropies[name]["across checkpoints"] = ck["entropy_per_seed"].ravel()  # pooled runs
        nodes[name] = entry
    return {"nodes": nodes, "_entropies": entropies}
