"""Failure directions (Jain et al., 2022): a linear classifier that predicts where a model errs.

In a feature space (a model's embedding, the image, or a simulator's attributes), a
class-balanced linear SVM is trained to tell the samples a model gets wrong from those it gets
right. Its normal vector is a *direction of failure*: ranking held-out samples by their signed
distance along it surfaces a hard subpopulation. Without a captioning model, a direction is
described by the attributes its score correlates with and by galleries of its extreme samples.

Fitted to *negative flips* of an improvement study (samples the old system got right and the new
one gets wrong), the direction says what the improvement broke.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(400, 3))
>>> errors = X[:, 0] + 0.3 * rng.normal(size=400) > 1.0    # the model errs where x0 is large
>>> d = fit_direction(X, errors, seed=0)
>>> int(np.argmax(np.abs(d.direction))), d.cv_auroc > 0.9
(0, True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CS = (0.01, 0.1, 1.0)


class TooFewErrorsError(ValueError):
    """There are too few errors (or too few correct samples) to fit a direction."""


@dataclass
class FailureDirection:
    """A fitted failure direction.

    Attributes
    ----------
    coef, intercept : the decision function in raw feature units, ``X @ coef + intercept``
        (positive: predicted error).
    direction : the unit normal in the standardized feature space (comparable across features).
    C : the SVM's regularisation chosen by cross-validation.
    cv_auroc : out-of-fold AUROC of the decision value for predicting errors on the fit samples.
    oof_scores : out-of-fold decision values of the fit samples (each scored by a model that did
        not see it), so the fit samples themselves can be ranked without optimism.
    n_samples, n_errors : size of the fit set and its number of errors.
    """

    coef: np.ndarray
    intercept: float
    direction: np.ndarray
    C: float
    cv_auroc: float
    oof_scores: np.ndarray = field(repr=False)
    n_samples: int = 0
    n_errors: int = 0

    def decision(self, features: np.ndarray) -> np.ndarray:
        """Signed score along the direction (higher: more failure-like), one per sample."""
        X = _as_matrix(features, "features")
        if X.shape[1] != len(self.coef):
            raise ValueError(f"features have {X.shape[1]} columns, the direction was fitted on "
                             f"{len(self.coef)}")
        return X @ self.coef + self.intercept

    def rank(self, features: np.ndarray) -> np.ndarray:
        """Sample indices, most failure-like first."""
        return np.argsort(-self.decision(features), kind="stable")

    def auroc(self, features: np.ndarray, errors: np.ndarray) -> float:
        """AUROC of the direction score for predicting ``errors`` on (held-out) samples."""
        return auroc(self.decision(features), errors)

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (without the per-sample scores)."""
        return {"C": self.C, "cv_auroc": self.cv_auroc, "n_samples": self.n_samples,
                "n_errors": self.n_errors, "intercept": self.intercept}


def _as_matrix(a: Any, name: str) -> np.ndarray:
    X = np.asarray(a, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim > 2:
        X = X.reshape(len(X), -1)
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} hold NaN/inf values")
    return X


def _as_mask(a: Any, n: int, name: str) -> np.ndarray:
    m = np.asarray(a)
    if m.shape != (n,):
        raise ValueError(f"{name} must be one boolean per sample ({n}), got shape {m.shape}")
    return m.astype(bool)


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positives``; NaN when one class is absent."""
    from sklearn.metrics import roc_auc_score
    pos = np.asarray(positives, dtype=bool)
    if pos.all() or not pos.any():
        return float("nan")
    return float(roc_auc_score(pos, np.asarray(scores, dtype=np.float64)))


def fit_direction(features: np.ndarray, errors: np.ndarray, *, Cs: Sequence[float] = DEFAULT_CS,
                  folds: int = 5, seed: int = 0, max_iter: int = 20000) -> FailureDirection:
    """Fit a class-balanced linear SVM that predicts ``errors`` from ``features``.

    Features are standardized; ``C`` is chosen among ``Cs`` by stratified ``folds``-fold
    cross-validated AUROC; the out-of-fold decision values give the held-out AUROC and an
    unbiased ranking of the fit samples, and the final SVM is refitted on all of them.

    Raises
    ------
    TooFewErrorsError : fewer than ``folds`` errors or correct samples.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    X = _as_matrix(features, "features")
    y = _as_mask(errors, len(X), "errors")
    n_err = int(y.sum())
    if n_err < folds or len(y) - n_err < folds:
        raise TooFewErrorsError(f"a failure direction needs at least {folds} errors and {folds} "
                                f"correct samples; got {n_err} errors among {len(y)}")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pipe = make_pipeline(StandardScaler(),
                         LinearSVC(class_weight="balanced", max_iter=max_iter, random_state=seed))
    search = GridSearchCV(pipe, {"linearsvc__C": list(Cs)}, scoring="roc_auc", cv=cv)
    search.fit(X, y)
    best = search.best_estimator_
    C = float(search.best_params_["linearsvc__C"])
    oof = cross_val_predict(best, X, y, cv=cv, method="decision_function")
    scaler, svm = best.named_steps["standardscaler"], best.named_steps["linearsvc"]
    w = svm.coef_.ravel()                                  # (d,) in standardized units
    coef = w / scaler.scale_
    intercept = float(svm.intercept_[0] - np.dot(w, scaler.mean_ / scaler.scale_))
    norm = float(np.linalg.norm(w)) or 1.0
    return FailureDirection(coef=coef, intercept=intercept, direction=w / norm, C=C,
                            cv_auroc=auroc(oof, y), oof_scores=np.asarray(oof, dtype=np.float64),
                            n_samples=len(y), n_errors=n_err)


def fit_class_directions(features: np.ndarray, errors: np.ndarray, labels: np.ndarray, *,
                         min_errors: int = 10, **kwargs: Any) -> dict[Any, FailureDirection]:
    """One direction per class (Jain et al. fit one per class), for classes with ``min_errors``.

    Classes with too few errors (or too few correct samples) are skipped and logged.
    """
    X = _as_matrix(features, "features")
    y = _as_mask(errors, len(X), "errors")
    labels = np.asarray(labels)
    out: dict[Any, FailureDirection] = {}
    for c in np.unique(labels):
        rows = labels == c
        n_err = int(y[rows].sum())
        if n_err < min_errors or int(rows.sum()) - n_err < min_errors:
            log.info("class %s: %d errors among %d samples, no direction fitted", c, n_err, rows.sum())
            continue
        key = c.item() if isinstance(c, np.generic) else c
        out[key] = fit_direction(X[rows], y[rows], **kwargs)
    return out


def class_decision(directions: Mapping[Any, FailureDirection], features: np.ndarray,
                   labels: np.ndarray) -> np.ndarray:
    """Each sample's score along its own class's direction (NaN for classes without one)."""
    X = _as_matrix(features, "features")
    labels = np.asarray(labels)
    scores = np.full(len(X), np.nan)
    for c, d in directions.items():
        rows = labels == c
        if rows.any():
            scores[rows] = d.decision(X[rows])
    return scores


def classification_errors(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-sample errors of a classifier: prediction differs from the target."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"predictions {pred.shape} and targets {target.shape} differ in shape")
    return pred != target


def errors_from_loss(loss: np.ndarray, threshold: float) -> np.ndarray:
    """Per-sample errors from a per-sample loss: loss above ``threshold`` (regression, detection)."""
    return np.asarray(loss, dtype=np.float64) > float(threshold)


def negative_flips(old_errors: np.ndarray, new_errors: np.ndarray) -> np.ndarray:
    """Samples the old system got right and the new one gets wrong."""
    old = np.asarray(old_errors, dtype=bool)
    new = np.asarray(new_errors, dtype=bool)
    if old.shape != new.shape:
        raise ValueError(f"old and new errors differ in shape: {old.shape} vs {new.shape}")
    return ~old & new


def fit_flip_direction(features: np.ndarray, old_errors: np.ndarray, new_errors: np.ndarray,
                       **kwargs: Any) -> tuple[FailureDirection, np.ndarray]:
    """A direction for negative flips: among samples the old system got right, which broke.

    Returns the direction and the indices of the samples it was fitted on (those the old
    system got right); its ``oof_scores`` align with those indices.
    """
    X = _as_matrix(features, "features")
    old = _as_mask(old_errors, len(X), "old_errors")
    new = _as_mask(new_errors, len(X), "new_errors")
    rows = np.flatnonzero(~old)
    return fit_direction(X[rows], new[rows], **kwargs), rows


def describe(scores: np.ndarray, attributes: np.ndarray, names: Sequence[str], *,
             top: float = 0.1) -> list[dict[str, Any]]:
    """Describe a direction by the attributes its score aligns with, strongest first.

    For each attribute column: Pearson and Spearman correlation with the score, and the
    attribute's mean over all samples, the top ``top`` share and the bottom share by score.
    """
    from scipy import stats

    s = np.asarray(scores, dtype=np.float64)
    A = _as_matrix(attributes, "attributes")
    if A.shape[0] != len(s):
        raise ValueError(f"attributes have {A.shape[0]} rows for {len(s)} scores")
    if A.shape[1] != len(names):
        raise ValueError(f"attributes have {A.shape[1]} columns but {len(names)} names")
    ok = np.isfinite(s)
    s, A = s[ok], A[ok]
    k = max(1, int(round(top * len(s))))
    order = np.argsort(-s, kind="stable")
    rows = []
    for j, name in enumerate(names):
        col = A[:, j]
        if np.std(col) == 0 or np.std(s) == 0:
            r = rho = float("nan")
        else:
            r = float(np.corrcoef(s, col)[0, 1])
            rho = float(stats.spearmanr(s, col).statistic)
        rows.append({"attribute": str(name), "pearson": r, "spearman": rho,
                     "mean_all": float(col.mean()), "mean_top": float(col[order[:k]].mean()),
                     "mean_bottom": float(col[order[-k:]].mean())})
    rows.sort(key=lambda r: -abs(r["spearman"]) if np.isfinite(r["spearman"]) else 0.0)
    return rows
