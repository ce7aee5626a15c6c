"""Graders for failure discovery against a *planted* failure whose subpopulation is known.

A failure direction is graded by the AUROC of its score for the planted subpopulation and the
precision of its top-``k`` ranked samples; misclassification regions by the share of the planted
region that a single found region covers (and how pure that region is).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entangle.analysis.directions import auroc


def precision_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Share of planted samples among the ``k`` highest-scoring samples (NaN scores last)."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    if s.shape != pos.shape:
        raise ValueError(f"scores {s.shape} and positives {pos.shape} differ in shape")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = np.where(np.isfinite(s), s, -np.inf)
    top = np.argsort(-s, kind="stable")[:k]
    return float(pos[top].mean())


def grade_direction(scores: np.ndarray, planted: np.ndarray, errors: np.ndarray | None = None,
                    *, k: int = 50) -> dict[str, Any]:
    """Recovery of a planted subpopulation by a direction score on held-out samples.

    Returns ``auroc_planted`` (score vs planted membership), ``precision_at_k`` (planted share
    of the top ``k``), ``k``, the number of samples and planted samples, the base rate (the
    precision of a random ranking), and with ``errors`` the AUROC for the errors themselves.
    """
    s = np.asarray(scores, dtype=np.float64)
    planted = np.asarray(planted, dtype=bool)
    ok = np.isfinite(s)
    out = {"auroc_planted": auroc(s[ok], planted[ok]),
           "precision_at_k": precision_at_k(s, planted, min(k, len(s))), "k": int(min(k, len(s))),
           "n": int(ok.sum()), "n_planted": int(planted[ok].sum()),
           "base_rate": float(planted[ok].mean()) if ok.any() else float("nan")}
    if errors is not None:
        err = np.asarray(errors, dtype=bool)
        out["auroc_errors"] = auroc(s[ok], err[ok])
        out["planted_error_rate"] = float(err[ok & planted].mean()) if (ok & planted).any() else float("nan")
    return out


def region_coverage(assignment: np.ndarray, planted: np.ndarray) -> dict[str, Any]:
    """How well one found region covers the planted region.

    ``assignment`` gives each probe point its region (``-1``: outside every region); probe
    points are latents sampled over the space (or encoded data), ``planted`` marks those in the
    planted region. Returns the best region's ``coverage`` (share of planted points it holds),
    its ``purity`` (share of its points that are planted) and per-region counts.
    """
    a = np.asarray(assignment)
    planted = np.asarray(planted, dtype=bool)
    if a.shape != planted.shape:
        raise ValueError(f"assignment {a.shape} and planted {planted.shape} differ in shape")
    n_planted = int(planted.sum())
    per = []
    for r in sorted(set(a[a >= 0].tolist())):
        inside = a == r
        per.append({"region": int(r), "n": int(inside.sum()),
                    "n_planted": int((inside & planted).sum()),
                    "coverage": float((inside & planted).sum() / max(n_planted, 1)),
                    "purity": float((inside & planted).sum() / max(int(inside.sum()), 1))})
    if not per or n_planted == 0:
        return {"best_region": None, "coverage": 0.0, "purity": float("nan"),
                "n_planted": n_planted, "regions": per}
    best = max(per, key=lambda r: (r["coverage"], r["purity"]))
    return {"best_region": best["region"], "coverage": best["coverage"], "purity": best["purity"],
            "n_planted": n_planted, "regions": per}
