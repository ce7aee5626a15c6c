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


def depth_from_disparity(disparity: np.ndarray, focal_baseline: np.ndarray,
                         min_disparity: float = 1e-2) -> np.ndarray:
    """Depth ``f·B / d`` (N, H, W) float32 for disparities (N, H, W); 0 where ``d < min_disparity``.

    ``focal_baseline`` is ``f·B`` per image, shape (N,). Disparities under ``min_disparity``
    (0.01 px: depth beyond 10 km at KITTI's geometry) count as invalid, like 0.
    """
    d = np.asarray(disparity, dtype=np.float64)
    fb = np.asarray(focal_baseline, dtype=np.float64).reshape(-1, *([1] * (d.ndim - 1)))
    valid = d >= min_disparity
    depth = np.where(valid, fb / np.where(valid, d, 1.0), 0.0)
    return depth.astype(np.float32)


def evaluation_mask(disparity_gt: np.ndarray, focal_baseline: np.ndarray,
                    max_depth: float) -> np.ndarray:
    """Pixels that are scored: valid ground truth (d > 0) with ``f·B / d <= max_depth``."""
    gt = np.asarray(disparity_gt, dtype=np.float64)
    fb = np.asarray(focal_baseline, dtype=np.float64).reshape(-1, *([1] * (gt.ndim - 1)))
    return (gt > 0) & (fb <= max_depth * gt)


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


def _errors(dp: np.ndarray, dg: np.ndarray, zp: np.ndarray, zg: np.ndarray) -> dict[str, float]:
    if dg.size == 0:
        return {"epe": math.nan, "d1": math.nan, "depth_mae": math.nan,
                "depth_absrel": math.nan, "depth_rmse": math.nan}
    err_d = np.abs(dp - dg)
    err_z = zp - zg
    return {
        "epe": float(err_d.mean()),
        "d1": float(np.mean((err_d > D1_PIXELS) & (err_d > D1_RELATIVE * dg))),
        "depth_mae": float(np.abs(err_z).mean()),
        "depth_absrel": float(np.mean(np.abs(err_z) / zg)),
        "depth_rmse": float(np.sqrt(np.mean(err_z ** 2))),
    }


def stereo_metrics(disparity_pred: np.ndarray, disparity_gt: np.ndarray, focal_baseline: np.ndarray,
                   *, max_depth: float = 80.0, edges: Sequence[float] = DEPTH_BIN_EDGES,
                   split: float = NEAR_FAR_SPLIT) -> dict[str, float]:
    """Disparity and depth errors of a split, overall and per ground-truth depth bin.

    Returns ``epe`` (px), ``d1`` (share of outliers), ``depth_mae`` and ``depth_rmse`` (m),
    ``depth_absrel``, ``density`` (share of evaluated pixels with a valid prediction; errors are
    computed on those), ``pixels`` (evaluated pixel count), and the same five errors with suffix
    ``@LOW-HIGH`` per bin and ``@near``/``@far`` (ground truth closer/farther than ``split``),
    plus ``share@...``, the bin's share of evaluated pixels. Empty bins give NaN.
    """
    dp = np.asarray(disparity_pred, dtype=np.float64)
    dg = np.asarray(disparity_gt, dtype=np.float64)
    if dp.shape != dg.shape:
        raise ValueError(f"predicted disparity {dp.shape} and ground truth {dg.shape} differ in shape")
    fb = np.broadcast_to(np.asarray(focal_baseline, dtype=np.float64).reshape(-1, *([1] * (dg.ndim - 1))),
                         dg.shape)
    scored = evaluation_mask(dg, focal_baseline, max_depth)
    valid_pred = dp > 0
    m = scored & valid_pred
    dp_m, dg_m, fb_m = dp[m], dg[m], fb[m]
    zp_m, zg_m = fb_m / dp_m, fb_m / dg_m
    n_scored = int(scored.sum())
    out: dict[str, float] = {
        **_errors(dp_m, dg_m, zp_m, zg_m),
        "density": float(m.sum() / n_scored) if n_scored else math.nan,
        "pixels": float(n_scored),
    }
    # bins are [low, high) except the last, which includes max_depth like the evaluation mask
    groups = [(name, (zg_m >= lo) & ((zg_m < hi) | ((hi == max_depth) & (zg_m <= hi))))
              for name, lo, hi in bin_names(max_depth, edges)]
    groups += [("near", zg_m < split), ("far", zg_m >= split)]
    for name, sel in groups:
        for key, value in _errors(dp_m[sel], dg_m[sel], zp_m[sel], zg_m[sel]).items():
            out[f"{key}@{name}"] = value
        out[f"share@{name}"] = float(sel.sum() / len(zg_m)) if len(zg_m) else math.nan
    return out
