"""What damps instability and version churn: ensembles, guided label smoothing, focal distillation.

* **Ensembles** of ``k`` seeds are the gold standard (Datta et al. 2023): they are built from the
  stored predictions of ``k`` runs (probabilities averaged; regression outputs averaged), so they
  cost ``k`` trainings and ``k`` predictions but no new fit here.
* **Guided label smoothing** (Datta et al.'s data-centric method): a teacher run keeps its last
  checkpoints; its temperature-scaled probabilities on the training data, averaged over those
  checkpoints, become soft targets (:class:`SoftLabelNode`). Samples the teacher is unsure or
  inconsistent about get softer targets. One teacher serves every retraining of the student.
* **Focal distillation** (Yan et al. 2021, positive-congruent training) retrains a node of the new
  version with an extra KL term towards the old version's probabilities, weighted
  ``alpha + beta * [old model right]`` per sample, so the new model keeps what the old got right
  (:class:`FocalDistillNode`).

Retrained variants are ordinary nodes whose parameters (soft targets, old probabilities) enter
their cache keys: they go through the store like any other node.

Training cost is counted in epochs over the same data (deterministic); measured fit seconds,
as stored when each node was fitted, are reported beside it but depend on the machine's load at
that time. Instability is compared at a matched number of runs ``R`` (the number of disjoint ``k``-seed
ensembles): label entropy grows with the number of runs it is computed over, so the single
models' and the smoothed students' entropies are averaged over disjoint groups of ``R`` seeds.
The pairwise disagreement and the negative flip rate between retrainings do not depend on ``R``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from entangle.analysis.churn import seed_pairs
from entangle.analysis.stability import (OutcomeSpec, Outcomes, StabilityError, check_same_items, flip_rates,
                                         label_entropy, node_targets, outcome_arrays,
                                         pairwise_disagreement, reference_spec, run_outcomes)
from entangle.node import TorchNode
from entangle.progress import progress
from entangle.stats import interval
from entangle.system import System

log = logging.getLogger(__name__)


# -- retrained variants --------------------------------------------------------------------------

class SoftLabelNode(TorchNode):
    """A TorchNode classifier trained on per-sample soft targets ``(N, classes)`` (rows sum to 1).

    Metrics and per-sample losses still use the hard target ``y``; only training changes.
    """

    version = "1"

    def __init__(self, *, module: Callable[[], Any], soft_targets: np.ndarray, criterion: str = "cross_entropy",
                 epochs: int = 20, lr: float = 1e-2, batch_size: int = 128, weight_decay: float = 0.0,
                 device: str = "auto", checkpoints: int = 0):
        super().__init__(module=module, criterion=criterion, epochs=epochs, lr=lr, batch_size=batch_size,
                         weight_decay=weight_decay, device=device, checkpoints=checkpoints)
        self.soft_targets = soft_targets
        if criterion != "cross_entropy":
            raise ValueError(f"SoftLabelNode trains classifiers: criterion must be 'cross_entropy', got {criterion!r}")
        q = np.asarray(soft_targets, dtype=np.float64)
        if q.ndim != 2 or not np.allclose(q.sum(axis=1), 1.0, atol=1e-4) or np.any(q < 0):
            raise ValueError(f"soft_targets must be (samples, classes) rows of probabilities, got shape {q.shape}")

    def _objective(self, targets):
        import torch
        y = np.asarray(next(iter(targets.values())))
        q = np.asarray(self.soft_targets, dtype=np.float32)
        if len(q) != len(y):
            raise ValueError(f"SoftLabelNode: {len(q)} soft targets for {len(y)} training samples")

        def soft_cross_entropy(out, rows):  # out: (batch, classes), rows: (batch, classes)
            return -(rows * torch.log_softmax(out, dim=1)).sum(dim=1).mean()

        return torch.as_tensor(q), soft_cross_entropy


class FocalDistillNode(TorchNode):
    """A TorchNode classifier with focal distillation towards an old model's probabilities.

    Loss per batch: cross-entropy on ``y`` plus ``weight * mean_i w_i * T^2 * KL(p_old_i^T ||
    p_new_i^T)`` with ``w_i = alpha + beta * [old model right on i]`` and ``p^T`` the
    temperature-``T`` softmax (Yan et al. 2021). ``old_proba`` are the old model's probabilities
    on the training samples, in their order.
    """

    version = "1"

    def __init__(self, *, module: Callable[[], Any], old_proba: np.ndarray, weight: float = 1.0,
                 alpha: float = 1.0, beta: float = 5.0, temperature: float = 1.0,
                 criterion: str = "cross_entropy", epochs: int = 20, lr: float = 1e-2,
                 batch_size: int = 128, weight_decay: float = 0.0, device: str = "auto",
                 checkpoints: int = 0):
        super().__init__(module=module, criterion=criterion, epochs=epochs, lr=lr, batch_size=batch_size,
                         weight_decay=weight_decay, device=device, checkpoints=checkpoints)
        self.old_proba = old_proba
        self.weight = weight
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        if criterion != "cross_entropy":
            raise ValueError("FocalDistillNode trains classifiers: criterion must be 'cross_entropy', "
                             f"got {criterion!r}")
        if np.asarray(old_proba).ndim != 2:
            raise ValueError(f"old_proba must be (samples, classes), got shape {np.shape(old_proba)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")

    def _objective(self, targets):
        import torch
        import torch.nn.functional as F
        y = np.asarray(next(iter(targets.values()))).astype(np.int64)
        p_old = np.asarray(self.old_proba, dtype=np.float64)
        if len(p_old) != len(y):
            raise ValueError(f"FocalDistillNode: {len(p_old)} old probabilities for {len(y)} training samples")
        w = self.alpha + self.beta * (p_old.argmax(axis=1) == y)
        rows = np.concatenate([y[:, None], w[:, None], np.log(np.clip(p_old, 1e-12, 1.0))], axis=1)
        t, lam = float(self.temperature), float(self.weight)

        def focal_distillation(out, batch):  # out: (batch, classes); batch: (batch, 2 + classes)
            label, wi, old_logit = batch[:, 0].long(), batch[:, 1], batch[:, 2:]
            ce = F.cross_entropy(out, label)
            kl = F.kl_div(F.log_softmax(out / t, dim=1), F.log_softmax(old_logit / t, dim=1),
                          reduction="none", log_target=True).sum(dim=1)  # (batch,)
            return ce + lam * t * t * (wi * kl).mean()

        return torch.as_tensor(rows, dtype=torch.float32), focal_distillation


# -- ensembles from stored predictions --------------------------------------------------------------

def ensemble_predictions(runs: Mapping[int, Any], name: str, members: Sequence[int],
                         split: str | None = None) -> dict[str, np.ndarray]:
    """Averaged predictions of ``members`` (seeds) of ``name``: ``proba`` averaged, else ``pred``."""
    split = split or next(iter(runs.values())).system.eval_split
    preds = [runs[int(s)].values(name, split) for s in members]
    if all("proba" in p for p in preds):
        proba = np.mean([np.asarray(p["proba"], dtype=np.float64) for p in preds], axis=0)
        fitted = runs[int(members[0])].fitted(name)
        classes = getattr(getattr(fitted, "estimator_", None), "classes_", None)
        idx = proba.argmax(axis=1)
        return {"pred": np.asarray(classes)[idx] if classes is not None else idx, "proba": proba}
    if all("pred" in p and isinstance(p["pred"], np.ndarray) and p["pred"].dtype.kind == "f" for p in preds):
        return {"pred": np.mean([np.asarray(p["pred"]) for p in preds], axis=0)}
    raise StabilityError(f"cannot ensemble node {name!r}: its outputs are neither 'proba' nor float 'pred' "
                         f"arrays (outputs: {sorted(preds[0])})")


def ensemble_outcomes(runs: Mapping[int, Any], name: str, members: Sequence[int], spec: OutcomeSpec,
                      split: str | None = None) -> tuple[Outcomes, dict[str, float]]:
    """Outcomes and metrics of the ensemble of ``members`` (scored by the first member's node)."""
    run = runs[int(members[0])]
    split = split or run.system.eval_split
    preds = ensemble_predictions(runs, name, members, split)
    targets = node_targets(run, name, split)
    fitted = run.fitted(name)
    loss = np.asarray(fitted.loss(preds, targets), dtype=np.float64)
    return outcome_arrays(preds, targets, loss, spec), fitted.score(preds, targets)


# -- guided label smoothing ----------------------------------------------------------------------

def _classifier_params(system: System, name: str, what: str) -> dict[str, Any]:
    node = system.specs[name].node
    if not isinstance(node, TorchNode) or node.criterion != "cross_entropy":
        raise StabilityError(f"{what} needs a TorchNode classifier (criterion cross_entropy); node "
                             f"{name!r} is a {type(node).__name__}")
    params = TorchNode.get_params(node)
    return {k: params[k] for k in TorchNode._param_names()}


def teacher_soft_targets(study: Any, name: str, teacher_seed: int, *, temperature: float = 2.0,
                         checkpoints: int = 5) -> tuple[np.ndarray, Any]:
    """Soft targets ``(train samples, classes)``: the teacher's ``softmax(logit / T)`` averaged
    over its last checkpoints, on the node's fit split. Returns them and the teacher's run
    (fitted through the study)."""
    system = study.old
    if temperature <= 0:
        raise StabilityError(f"temperature must be > 0 (option 'temperature'), got {temperature}")
    params = _classifier_params(system, name, "guided label smoothing")
    teacher_sys = system
    if not params["checkpoints"]:
        teacher_sys = system.replace(name, TorchNode(**{**params, "checkpoints": int(checkpoints)}))
    run = study.fit(teacher_sys, [int(teacher_seed)], label=f"teacher of {name!r}")[int(teacher_seed)]
    fit_split = teacher_sys.specs[name].fit_split
    logits = np.asarray(run.values(name, fit_split)["ckpt_logit"], dtype=np.float64)  # (N, K, C)
    z = logits / temperature
    z -= z.max(axis=2, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=2, keepdims=True)
    return p.mean(axis=1), run


def _same_training_data(runs: Sequence[Any], name: str, what: str) -> None:
    """Raise unless every run has the same training targets for ``name`` (rows align)."""
    ref = None
    for run in runs:
        split = run.system.specs[name].fit_split
        y = np.asarray(next(iter(node_targets(run, name, split).values())))
        if ref is None:
            ref, ref_seed = y, run.seed
        elif y.shape != ref.shape or not np.array_equal(y, ref):
            raise StabilityError(f"{what} needs the same training data for every seed, but node {name!r}'s "
                                 f"training targets differ between seeds {ref_seed} and {run.seed} "
                                 "(fix the source's data seed)")


def _fit_seconds(run: Any, name: str) -> float:
    run.ensure(name)
    return float(run.store.meta(run.keys[name]).get("fit_seconds", float("nan")))


# -- the mitigation study ----------------------------------------------------------------------

def _stability_at(labels: np.ndarray, group: int) -> dict[str, float]:
    """Mean label entropy and unstable share averaged over disjoint groups of ``group`` runs."""
    n = labels.shape[0] // group
    ents = [label_entropy(labels[i * group:(i + 1) * group]) for i in range(n)]
    return {"mean_entropy": float(np.mean([e.mean() for e in ents])),
            "unstable_fraction": float(np.mean([(e > 1e-12).mean() for e in ents])),
            "pairwise_disagreement": float(pairwise_disagreement(labels).mean())}


def _retrain_nfr(outs: Sequence[Outcomes]) -> dict[str, Any]:
    """Negative flip rate and churn between consecutive retrainings (cyclic pairs)."""
    idx = list(range(len(outs)))
    rows = [flip_rates(outs[i].correct, outs[j].correct, outs[i].labels, outs[j].labels)
            for i, j in seed_pairs(idx)]
    return {"nfr": float(np.mean([r["nfr"] for r in rows])), "churn": float(np.mean([r["churn"] for r in rows]))}


def _fraction(base: float, mitigated: float, gold: float) -> float | None:
    """How much of the gold standard's reduction the mitigation reaches: (base-m)/(base-gold)."""
    if not np.isfinite(base - gold) or abs(base - gold) < 1e-12:
        return None
    return float((base - mitigated) / (base - gold))


def mitigate_instability(study: Any, name: str, *, ensemble_size: int = 5, temperature: float = 2.0,
                         teacher_seed: int | None = None, checkpoints: int = 5,
                         split: str | None = None) -> dict[str, Any]:
    """The analysis: instability of ``name`` in the study's old system across its seeds, single
    models vs k-seed ensembles vs guided label smoothing, with metric change, training cost and
    smoothing's share of the ensemble's gain.

    Needs at least ``2 * ensemble_size`` seeds (two disjoint ensembles). The teacher is one extra
    run at ``teacher_seed`` (default: one past the largest seed), shared by every student; every
    fit goes through the study.
    """
    system = study.old
    seeds = list(study.seeds)
    k = int(ensemble_size)
    if k < 2:
        raise StabilityError(f"ensemble_size must be at least 2, got {ensemble_size} (option 'ensemble_size')")
    if len(seeds) < 2 * k:
        raise StabilityError(f"comparing {k}-model ensembles needs at least {2 * k} seeds (two disjoint "
                             f"ensembles), got {len(seeds)} (options 'seeds', 'ensemble_size')")
    if name not in system.specs or not system.specs[name].targets:
        raise StabilityError(f"mitigation node {name!r} is not a model of the system (models: {system.models()})")
    split = split or system.eval_split
    runs = study.runs("old")
    for s in seeds[1:]:
        check_same_items(runs[seeds[0]], runs[s], name, split)
    spec = reference_spec(runs[seeds[0]], name, split, OutcomeSpec())
    node = system.specs[name].node
    metric = node.metric
    r = len(seeds) // k

    # single models
    singles = [run_outcomes(runs[s], name, split, spec) for s in seeds]
    single_labels = np.stack([o.labels for o in singles])
    single_secs = [_fit_seconds(runs[s], name) for s in seeds]
    epochs = float(getattr(node, "epochs", 1) or 1)
    base = {**_stability_at(single_labels, r), **_retrain_nfr(singles),
            "metric": float(np.mean([runs[s].metrics(name, split)[metric] for s in seeds])),
            "n_runs": len(seeds), "fit_seconds_per_model": float(np.mean(single_secs)),
            "train_epochs_per_model": epochs, "train_cost_relative": 1.0, "predict_cost_relative": 1.0}

    # k-seed ensembles from the stored predictions
    groups = [seeds[i * k:(i + 1) * k] for i in range(r)]
    ens = [ensemble_outcomes(runs, name, g, spec, split) for g in groups]
    ens_labels = np.stack([o.labels for o, _ in ens])
    ensemble = {**_stability_at(ens_labels, r), **_retrain_nfr([o for o, _ in ens]),
                "metric": float(np.mean([m[metric] for _, m in ens])),
                "k": k, "n_ensembles": r, "members": groups,
                "fit_seconds_per_model": float(np.mean(single_secs)) * k,
                "train_epochs_per_model": k * epochs, "train_cost_relative": float(k),
                "predict_cost_relative": float(k)}

    # guided label smoothing: one teacher, one student per seed
    teacher_seed = int(teacher_seed if teacher_seed is not None else max(seeds) + 1)
    soft, teacher_run = teacher_soft_targets(study, name, teacher_seed, temperature=temperature,
                                             checkpoints=checkpoints)
    params = _classifier_params(system, name, "guided label smoothing")
    student_sys = system.replace(name, SoftLabelNode(**params, soft_targets=soft.astype(np.float32)))
    _same_training_data([teacher_run, *[runs[s] for s in seeds]], name, "guided label smoothing")
    students = study.fit(student_sys, seeds, label=f"{name!r} with guided label smoothing")
    smooth_outs = [run_outcomes(students[s], name, split, spec) for s in seeds]
    smooth_labels = np.stack([o.labels for o in smooth_outs])
    student_secs = [_fit_seconds(students[s], name) for s in seeds]
    teacher_secs = _fit_seconds(teacher_run, name)
    teacher_epochs = float(teacher_run.system.specs[name].node.epochs)
    smoothing = {**_stability_at(smooth_labels, r), **_retrain_nfr(smooth_outs),
                 "metric": float(np.mean([students[s].metrics(name, split)[metric] for s in seeds])),
                 "n_runs": len(seeds), "temperature": float(temperature), "teacher_seed": teacher_seed,
                 "teacher_checkpoints": int(checkpoints if not params["checkpoints"] else params["checkpoints"]),
                 "soft_target_max_mean": float(soft.max(axis=1).mean()),
                 "fit_seconds_per_model": float(np.mean(student_secs)),
                 "teacher_fit_seconds": teacher_secs,
                 "train_epochs_per_model": epochs, "teacher_epochs": teacher_epochs,
                 # one teacher serves every student: amortised over the students trained here
                 "train_cost_relative": (epochs + teacher_epochs / len(seeds)) / epochs,
                 "train_cost_relative_single_deployment": (epochs + teacher_epochs) / epochs,
                 "predict_cost_relative": 1.0}

    measures = ("mean_entropy", "unstable_fraction", "pairwise_disagreement", "nfr", "churn")
    reduction = {m: {"ensemble": base[m] - ensemble[m], "label_smoothing": base[m] - smoothing[m]}
                 for m in measures}
    fraction = {m: _fraction(base[m], smoothing[m], ensemble[m]) for m in measures}
    return {
        "node": name, "split": split, "seeds": seeds, "metric": metric,
        "higher_is_better": bool(node.higher_is_better), "runs_per_entropy": r,
        "outcome": {"kind": spec.kind, "threshold": spec.threshold, "bins": list(spec.bins or [])},
        "single": base, "ensemble": ensemble, "label_smoothing": smoothing,
        "reduction": reduction, "smoothing_fraction_of_ensemble": fraction,
        "metric_change": {"ensemble": ensemble["metric"] - base["metric"],
                          "label_smoothing": smoothing["metric"] - base["metric"]},
        "_arrays": {"single": label_entropy(single_labels[:r]), "ensemble": label_entropy(ens_labels),
                    "label_smoothing": label_entropy(smooth_labels[:r])},
    }


def focal_distillation(study: Any, name: str, *, weight: float = 1.0, alpha: float = 1.0, beta: float = 5.0,
                       temperature: float = 1.0, split: str | None = None,
                       confidence: float = 0.95) -> dict[str, Any]:
    """Compatibility-aware retraining of ``name`` in the study's new system, seed by seed.

    For seed ``s`` the new version of ``name`` is retrained with focal distillation from the old
    version at seed ``s`` (its probabilities on the training split). Reports the old→new
    negative flip rate with plain and distilled retraining, the old version's seed-to-seed
    negative flip rate, the metric of both, and the training time.
    """
    seeds = list(study.seeds)
    old, new = study.old, study.new
    if name not in old.specs or name not in new.specs or not new.specs[name].targets:
        raise StabilityError(f"distillation node {name!r} must be a model in both systems "
                             f"(models: {new.models()})")
    split = split or new.eval_split
    params = _classifier_params(new, name, "focal distillation")
    spec = reference_spec(study.old_runs[seeds[0]], name, split, OutcomeSpec())
    metric = new.specs[name].node.metric
    plain, distilled, seed_rows, m_plain, m_dist, secs_plain, secs_dist = [], [], [], [], [], [], []
    plain_labels: list[np.ndarray] = []
    dist_labels: list[np.ndarray] = []
    for s in progress(seeds, desc=f"distilled {name}", leave=False):
        old_run, new_run = study.old_runs[s], study.new_runs[s]
        fit_split = old.specs[name].fit_split
        _same_training_data([old_run, new_run], name, "focal distillation")
        old_proba = np.asarray(old_run.values(name, fit_split)["proba"], dtype=np.float32)
        variant = FocalDistillNode(**params, old_proba=old_proba, weight=weight, alpha=alpha, beta=beta,
                                   temperature=temperature)
        run = study.fit(new.replace(name, variant), [s], label=f"{name!r} distilled from the old version")[s]
        o_old = run_outcomes(old_run, name, split, spec)
        o_new = run_outcomes(new_run, name, split, spec)
        o_dist = run_outcomes(run, name, split, spec)
        plain_labels.append(o_new.labels)
        dist_labels.append(o_dist.labels)
        plain.append(flip_rates(o_old.correct, o_new.correct, o_old.labels, o_new.labels))
        distilled.append(flip_rates(o_old.correct, o_dist.correct, o_old.labels, o_dist.labels))
        m_plain.append(new_run.metrics(name, split)[metric])
        m_dist.append(run.metrics(name, split)[metric])
        secs_plain.append(_fit_seconds(new_run, name))
        secs_dist.append(_fit_seconds(run, name))
    for i, j in seed_pairs(seeds):
        a = run_outcomes(study.old_runs[i], name, split, spec)
        b = run_outcomes(study.old_runs[j], name, split, spec)
        seed_rows.append(flip_rates(a.correct, b.correct, a.labels, b.labels))
    nfr_plain = interval([r["nfr"] for r in plain], confidence)
    nfr_dist = interval([r["nfr"] for r in distilled], confidence)
    stability = {}
    if len(seeds) >= 2:
        for label, labels in (("plain", plain_labels), ("distilled", dist_labels)):
            h = label_entropy(np.stack(labels))
            stability[label] = {"mean_entropy": float(h.mean()), "unstable_fraction": float(np.mean(h > 1e-12))}
    return {
        "node": name, "seeds": seeds, "split": split, "metric": metric,
        "params": {"weight": weight, "alpha": alpha, "beta": beta, "temperature": temperature},
        "nfr_plain": nfr_plain, "nfr_distilled": nfr_dist,
        "churn_plain": interval([r["churn"] for r in plain], confidence),
        "churn_distilled": interval([r["churn"] for r in distilled], confidence),
        "nfr_seed_old": interval([r["nfr"] for r in seed_rows], confidence),
        "nfr_reduction": nfr_plain["mean"] - nfr_dist["mean"],
        "metric_plain": interval(m_plain, confidence),
        "metric_distilled": interval(m_dist, confidence),
        "fit_seconds_plain": float(np.mean(secs_plain)),
        "fit_seconds_distilled": float(np.mean(secs_dist)),
        "instability_across_seeds": stability,
    }


def ensemble_version_flips(study: Any, name: str, ensemble_size: int = 5, *, split: str | None = None,
                           confidence: float = 0.95) -> dict[str, Any]:
    """Negative flips old → new when both versions ship as ``k``-seed ensembles (no retraining).

    Seeds are split into disjoint groups of ``k``; group ``g`` of the old version is compared with
    group ``g`` of the new, and, as the baseline, with the next group of the old version.
    """
    seeds = list(study.seeds)
    k = int(ensemble_size)
    groups = [seeds[i * k:(i + 1) * k] for i in range(len(seeds) // k)]
    if len(groups) < 2:
        raise StabilityError(f"ensemble version flips need at least {2 * k} seeds (two disjoint {k}-seed "
                             f"ensembles), got {len(seeds)} (options 'seeds', 'ensemble_size')")
    split = split or study.new.eval_split
    spec = reference_spec(study.old_runs[seeds[0]], name, split, OutcomeSpec())
    old = [ensemble_outcomes(study.old_runs, name, g, spec, split)[0] for g in groups]
    new = [ensemble_outcomes(study.new_runs, name, g, spec, split)[0] for g in groups]
    version = [flip_rates(o.correct, n.correct, o.labels, n.labels) for o, n in zip(old, new)]
    seed = [flip_rates(old[i].correct, old[j].correct, old[i].labels, old[j].labels)
            for i, j in seed_pairs(list(range(len(groups))))]
    return {"node": name, "k": k, "groups": groups,
            "nfr_version": interval([r["nfr"] for r in version], confidence),
            "nfr_seed_old": interval([r["nfr"] for r in seed], confidence),
            "churn_version": interval([r["churn"] for r in version], confidence)}
