"""Stereo metrics in disparity and in depth, overall and per ground-truth distance bin.

Disparity ``d`` and depth ``Z`` relate by ``Z = f·B / d`` (``f`` the focal length in pixels, ``B``
the baseline in metres), so a fixed disparity error costs a depth error growing with ``Z²``.
That is why the same predictions are scored both ways and per distance bin: a disparity loss
weighs near pixels most, a depth loss far pixels.

Conventions (shared by every stereo node): disparity 0 means invalid, in ground truth and in
predictions; the evaluated pixels are those with valid ground truth no farther than
``max_depth`` (80 m, KITTI's LiDAR range by default); errors are pooled over all evaluated
pixels of a split (not averaged per image), so sparse far bins are not overweighted.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: Lower edges of the ground-truth depth bins, metres; the last bin ends at ``max_depth``.
DEPTH_BIN_EDGES = (0.0, 10.0, 20.0, 30.0, 40.0)
#: Ground-truth depth that splits pixels into ``near`` and ``far`` (the paper's 20 m subset).
NEAR_FAR_SPLIT = 20.0
#: KITTI's D1 outlier: error above 3 px *and* above 5 % of the true disparity.
D1_PIXELS, D1_RELATIVE = 3.0, 0.05
#: images per chunk of the per-pixel arithmetic (float64 temporaries of 32 images of 192 × 624
#: are about 30 MB each)
CHUNK = 32


def depth_from_disparity(disparity: np.ndarray, focal_baseline: np.ndarray,
                         min_disparity: float = 1e-2) -> np.ndarray:
    """Depth ``f·B / d`` (N, H, W) float32 for disparities (N, H, W); 0 where ``d < min_disparity``.

    ``focal_baseline`` is ``f·B`` per image, shape (N,). Disparities under ``min_disparity``
    (0.01 px: depth beyond 10 km at KITTI's geometry) count as invalid, like 0. Computed in
    float64 a few images at a time, so a split's depth costs one float32 copy of memory.
    """
    disparity = np.asarray(disparity)
    fb_all = np.asarray(focal_baseline, dtype=np.float64).reshape(-1, *([1] * (disparity.ndim - 1)))
    out = np.empty(disparity.shape, dtype=np.float32)
    for sl in _chunks(len(disparity)):
        d = np.asarray(disparity[sl], dtype=np.float64)
        valid = d >= min_disparity
        out[sl] = np.where(valid, fb_all[sl] / np.where(valid, d, 1.0), 0.0)
    return out


def _chunks(n: int, size: int = CHUNK) -> list[slice]:
    """Slices of ``size`` images covering ``n``: whole-split float64 temporaries cost gigabytes."""
    return [slice(i, i + size) for i in range(0, n, size)] or [slice(0, 0)]


def evaluation_mask(disparity_gt: np.ndarray, focal_baseline: np.ndarray,
                    max_depth: float) -> np.ndarray:
    """Pixels that are scored: valid ground truth (d > 0) with ``f·B / d <= max_depth``."""
    gt_all = np.asarray(disparity_gt)
    fb_all = np.asarray(focal_baseline, dtype=np.float64).reshape(-1, *([1] * (gt_all.ndim - 1)))
    out = np.empty(gt_all.shape, dtype=bool)
    for sl in _chunks(len(gt_all)):
        gt = np.asarray(gt_all[sl], dtype=np.float64)
        out[sl] = (gt > 0) & (fb_all[sl] <= max_depth * gt)
    return out


def smooth_l1(x: np.ndarray) -> np.ndarray:
    """Elementwise smooth-L1 (Huber with beta 1), as ``torch.nn.functional.smooth_l1_loss``."""
    a = np.abs(x)
    return np.where(a < 1.0, 0.5 * a * a, a - 0.5)


def per_image_smooth_l1(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean smooth-L1 over the masked pixels of each image, shape (N,); 0 for an empty mask."""
    p = np.asarray(prediction, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    err = np.where(m, smooth_l1(np.where(m, p - t, 0.0)), 0.0).reshape(len(p), -1).sum(axis=1)
    count = m.reshape(len(m), -1).sum(axis=1)
    return np.where(count > 0, err / np.maximum(count, 1), 0.0)


def bin_names(max_depth: float, edges: Sequence[float] = DEPTH_BIN_EDGES) -> list[tuple[str, float, float]]:
    """``(name, low, high)`` of each depth bin, e.g. ``("10-20", 10, 20)``; the last ends at max_depth."""
    lows = [e for e in edges if e < max_depth]
    highs = lows[1:] + [max_depth]
    return [(f"{lo:g}-{hi:g}", lo, hi) for lo, hi in zip(lows, highs)]


def _error_sums(dp: np.ndarray, dg: np.ndarray, zp: np.ndarray, zg: np.ndarray) -> np.ndarray:
    """Pixel count and the sums every error is a mean of: |e_d|, D1 outliers, |e_z|, |e_z|/z, e_z²."""
    err_d = np.abs(dp - dg)
    err_z = zp - zg
    return np.array([dg.size, err_d.sum(), np.count_nonzero((err_d > D1_PIXELS) & (err_d > D1_RELATIVE * dg)),
                     np.abs(err_z).sum(), (np.abs(err_z) / zg).sum(), (err_z ** 2).sum()], dtype=np.float64)


def _errors(sums: np.ndarray) -> dict[str, float]:
    """EPE, D1, depth MAE, abs-rel and RMSE from :func:`_error_sums` (NaN for no pixel)."""
    n = sums[0]
    if n == 0:
        return {"epe": math.nan, "d1": math.nan, "depth_mae": math.nan,
                "depth_absrel": math.nan, "depth_rmse": math.nan}
    return {"epe": float(sums[1] / n), "d1": float(sums[2] / n), "depth_mae": float(sums[3] / n),
            "depth_absrel": float(sums[4] / n), "depth_rmse": float(math.sqrt(sums[5] / n))}


def stereo_metrics(disparity_pred: np.ndarray, disparity_gt: np.ndarray, focal_baseline: np.ndarray,
                   *, max_depth: float = 80.0, edges: Sequence[float] = DEPTH_BIN_EDGES,
                   split: float = NEAR_FAR_SPLIT) -> dict[str, float]:
    """Disparity and depth errors of a split, overall and per ground-truth depth bin.

    Returns ``epe`` (px), ``d1`` (share of outliers), ``depth_mae`` and ``depth_rmse`` (m),
    ``depth_absrel``, ``density`` (share of evaluated pixels with a valid prediction; errors are
    computed on those), ``pixels`` (evaluated pixel count), and the same five errors with suffix
    ``@LOW-HIGH`` per bin and ``@near``/``@far`` (ground truth closer/farther than ``split``),
    plus ``share@...``, the bin's share of evaluated pixels. Empty bins give NaN. Every error is
    a mean over pixels, so the split is summed a few images at a time (memory: one chunk).
    """
    dp_all, dg_all = np.asarray(disparity_pred), np.asarray(disparity_gt)
    if dp_all.shape != dg_all.shape:
        raise ValueError(f"predicted disparity {dp_all.shape} and ground truth {dg_all.shape} differ in shape")
    fb_all = np.asarray(focal_baseline, dtype=np.float64).reshape(-1, *([1] * (dg_all.ndim - 1)))
    bins = bin_names(max_depth, edges)
    names = [None] + [name for name, _, _ in bins] + ["near", "far"]
    sums = {name: np.zeros(6) for name in names}        # n, |e_d|, d1, |e_z|, |e_z|/z, e_z²
    n_scored = 0
    for sl in _chunks(len(dg_all)):
        dp = np.asarray(dp_all[sl], dtype=np.float64)
        dg = np.asarray(dg_all[sl], dtype=np.float64)
        fb = np.broadcast_to(fb_all[sl], dg.shape)
        scored = evaluation_mask(dg, fb_all[sl].reshape(-1), max_depth)
        n_scored += int(scored.sum())
        m = scored & (dp > 0)
        dp_m, dg_m, fb_m = dp[m], dg[m], fb[m]
        zp_m, zg_m = fb_m / dp_m, fb_m / dg_m
        # bins are [low, high) except the last, which includes max_depth like the evaluation mask
        groups = [(None, slice(None))]
        groups += [(name, (zg_m >= lo) & ((zg_m < hi) | ((hi == max_depth) & (zg_m <= hi))))
                   for name, lo, hi in bins]
        groups += [("near", zg_m < split), ("far", zg_m >= split)]
        for name, sel in groups:
            sums[name] += _error_sums(dp_m[sel], dg_m[sel], zp_m[sel], zg_m[sel])
    n_valid = sums[None][0]
    out: dict[str, float] = {
        **_errors(sums[None]),
        "density": float(n_valid / n_scored) if n_scored else math.nan,
        "pixels": float(n_scored),
    }
    for name in names[1:]:
        for key, value in _errors(sums[name]).items():
            out[f"{key}@{name}"] = value
        out[f"share@{name}"] = float(sums[name][0] / n_valid) if n_valid else math.nan
    return out
