"""Classical stereo (OpenCV block matching and semi-global matching) and stereo metrics.

The matchers are pure functions ``(left, right, calib=None, **params) -> disparity`` returning
float32 disparity of the left image with **NaN = invalid** (no match, or columns without a full
search range); wrap them as :class:`~entangle.node.FunctionNode`. They accept one image pair
(H, W, 3)/(H, W) or a batch (N, H, W, 3). The disparity search range comes from the calibration
(the largest disparity is ``f·B / min_depth``) or from ``num_disparities``.

Metrics follow KITTI stereo 2015 and Middlebury: ground truth 0/NaN/inf marks invalid pixels,
invalid predictions are filled by KITTI's background interpolation before scoring, and the
share of predicted pixels is reported as ``density``.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import cv2
import numpy as np

from entangle.data.kitti import Calib

log = logging.getLogger(__name__)

#: KITTI's outlier rule: error above 3 px and above 5 % of the true disparity.
D1_ABS, D1_REL = 3.0, 0.05
#: default depth bins (m) for per-distance metrics.
DEPTH_BINS = (0.0, 10.0, 20.0, 30.0, 40.0, 60.0, math.inf)


def num_disparities_for(calib: Calib | None = None, *, min_depth: float = 3.0,
                        max_disparity: float | None = None) -> int:
    """The search range OpenCV needs (a multiple of 16) to reach ``f·B / min_depth`` pixels."""
    if max_disparity is None:
        if calib is None:
            raise ValueError("give a calib (with min_depth) or max_disparity/num_disparities")
        max_disparity = calib.fb / min_depth
    return int(16 * math.ceil((max_disparity + 1) / 16))


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    elif img.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {img.shape}")
    return np.ascontiguousarray(img, dtype=np.uint8)


def _batched(fn):
    """Let a matcher take one pair or a batch (N, H, W[, 3]) of pairs."""

    def wrapper(left, right, calib=None, **params):
        left, right = np.asarray(left), np.asarray(right)
        if left.shape != right.shape:
            raise ValueError(f"left {left.shape} and right {right.shape} images differ in shape")
        if left.ndim == 4 or (left.ndim == 3 and left.shape[2] != 3):
            calibs = calib if isinstance(calib, (list, tuple)) else [calib] * len(left)
            return np.stack([fn(l, r, c, **params) for l, r, c in zip(left, right, calibs)])
        return fn(left, right, calib, **params)

    wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    wrapper.__module__ = fn.__module__
    return wrapper


def _finish(raw: np.ndarray, matcher, num_disparities: int) -> np.ndarray:
    disp = raw.astype(np.float32) / 16.0  # OpenCV returns fixed point with 4 fractional bits
    invalid = raw < matcher.getMinDisparity() * 16
    disp[invalid] = np.nan
    disp[:, :num_disparities] = np.nan  # no full search range left of this column
    return disp


@_batched
def block_matching(left: np.ndarray, right: np.ndarray, calib: Calib | None = None, *,
                   num_disparities: int | None = None, min_depth: float = 3.0,
                   block_size: int = 11, uniqueness_ratio: int = 15, texture_threshold: int = 10,
                   speckle_window: int = 100, speckle_range: int = 2, prefilter_cap: int = 31
                   ) -> np.ndarray:
    """OpenCV local block matching (SAD on a sign-filtered image); float32, NaN = invalid."""
    nd = num_disparities or num_disparities_for(calib, min_depth=min_depth)
    bm = cv2.StereoBM_create(numDisparities=nd, blockSize=block_size)
    bm.setUniquenessRatio(uniqueness_ratio)
    bm.setTextureThreshold(texture_threshold)
    bm.setSpeckleWindowSize(speckle_window)
    bm.setSpeckleRange(speckle_range)
    bm.setPreFilterCap(prefilter_cap)
    return _finish(bm.compute(_gray(left), _gray(right)), bm, nd)


_SGBM_MODES = {"sgbm": cv2.STEREO_SGBM_MODE_SGBM, "hh": cv2.STEREO_SGBM_MODE_HH,
               "3way": cv2.STEREO_SGBM_MODE_SGBM_3WAY, "hh4": cv2.STEREO_SGBM_MODE_HH4}


@_batched
def semi_global_matching(left: np.ndarray, right: np.ndarray, calib: Calib | None = None, *,
                         num_disparities: int | None = None, min_depth: float = 3.0,
                         block_size: int = 5, p1: int | None = None, p2: int | None = None,
                         mode: str = "hh", uniqueness_ratio: int = 10, speckle_window: int = 100,
                         speckle_range: int = 2, disp12_max_diff: int = 1, prefilter_cap: int = 63,
                         color: bool = True) -> np.ndarray:
    """OpenCV semi-global matching (Hirschmüller 2008); float32, NaN = invalid.

    ``p1``/``p2`` (smoothness penalties) default to 8·c·b² and 32·c·b² for ``c`` channels and
    block size ``b``; ``mode`` is ``sgbm`` (5 paths), ``hh`` (8 paths), ``3way`` or ``hh4``.
    """
    nd = num_disparities or num_disparities_for(calib, min_depth=min_depth)
    if mode not in _SGBM_MODES:
        raise ValueError(f"mode must be one of {sorted(_SGBM_MODES)}, got {mode!r}")
    if color and np.asarray(left).ndim == 3:
        a = np.ascontiguousarray(left, dtype=np.uint8)
        b = np.ascontiguousarray(right, dtype=np.uint8)
        channels = 3
    else:
        a, b, channels = _gray(left), _gray(right), 1
    sgbm = cv2.StereoSGBM_create(
        minDisparity=0, numDisparities=nd, blockSize=block_size,
        P1=p1 if p1 is not None else 8 * channels * block_size ** 2,
        P2=p2 if p2 is not None else 32 * channels * block_size ** 2,
        disp12MaxDiff=disp12_max_diff, preFilterCap=prefilter_cap,
        uniquenessRatio=uniqueness_ratio, speckleWindowSize=speckle_window,
        speckleRange=speckle_range, mode=_SGBM_MODES[mode])
    return _finish(sgbm.compute(a, b), sgbm, nd)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------

def valid_mask(gt: np.ndarray) -> np.ndarray:
    """Pixels with ground truth: finite and > 0 (KITTI uses 0, Middlebury inf for invalid)."""
    gt = np.asarray(gt)
    return np.isfinite(gt) & (gt > 0)


def fill_invalid(disp: np.ndarray) -> np.ndarray:
    """KITTI's background interpolation: each invalid run takes the smaller of its neighbours.

    Along every row a gap between two valid pixels gets the minimum of the two (the farther
    surface); gaps at the row ends take the nearest valid value; rows without any stay 0.
    Works on (H, W) or (N, H, W); returns float32 without NaN.
    """
    d = np.asarray(disp, dtype=np.float32)
    flat = d.reshape(-1, d.shape[-1])
    valid = np.isfinite(flat) & (flat > 0)
    n, w = flat.shape
    cols = np.arange(w)
    prev = np.maximum.accumulate(np.where(valid, cols, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(valid, cols, w)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(n)[:, None]
    left = np.where(prev >= 0, flat[rows, np.clip(prev, 0, w - 1)], np.nan)
    right = np.where(nxt < w, flat[rows, np.clip(nxt, 0, w - 1)], np.nan)
    filled = np.where(valid, flat, np.fmin(left, right))
    return np.nan_to_num(filled, nan=0.0).astype(np.float32).reshape(d.shape)


def _prepare(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None, fill: bool):
    pred, gt = np.asarray(pred, dtype=np.float32), np.asarray(gt, dtype=np.float32)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    m = valid_mask(gt)
    if mask is not None:
        m &= np.asarray(mask, dtype=bool)
    predicted = np.isfinite(pred) & (pred > 0)
    density = float(predicted[m].mean()) if m.any() else math.nan
    if fill:
        pred = fill_invalid(pred)
    else:
        m &= predicted
    return np.abs(pred[m] - gt[m]), gt[m], density


def end_point_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                    fill: bool = True) -> float:
    """Mean absolute disparity error (px) over pixels with ground truth."""
    err, _, _ = _prepare(pred, gt, mask, fill)
    return float(err.mean()) if err.size else math.nan


def bad_pixel_rate(pred: np.ndarray, gt: np.ndarray, threshold: float = 3.0,
                   mask: np.ndarray | None = None, fill: bool = True) -> float:
    """Share of ground-truth pixels whose error exceeds ``threshold`` px (bad-3 by default)."""
    err, _, _ = _prepare(pred, gt, mask, fill)
    return float((err > threshold).mean()) if err.size else math.nan


def d1_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
             fill: bool = True) -> float:
    """KITTI D1: share of pixels with error > 3 px and > 5 % of the true disparity."""
    err, g, _ = _prepare(pred, gt, mask, fill)
    return float(((err > D1_ABS) & (err > D1_REL * g)).mean()) if err.size else math.nan


def stereo_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                   fill: bool = True) -> dict[str, float]:
    """EPE, bad-1/2/3 rates, D1, density and pixel count in one pass."""
    err, g, density = _prepare(pred, gt, mask, fill)
    if not err.size:
        return {"epe": math.nan, "bad1": math.nan, "bad2": math.nan, "bad3": math.nan,
                "d1": math.nan, "density": density, "n_pixels": 0}
    return {"epe": float(err.mean()), "bad1": float((err > 1).mean()),
            "bad2": float((err > 2).mean()), "bad3": float((err > 3).mean()),
            "d1": float(((err > D1_ABS) & (err > D1_REL * g)).mean()), "density": density,
            "n_pixels": int(err.size)}


def metrics_by_distance(pred: np.ndarray, gt: np.ndarray, fb: float,
                        bins: Sequence[float] = DEPTH_BINS, mask: np.ndarray | None = None,
                        fill: bool = True) -> list[dict[str, float]]:
    """Stereo metrics per true-depth bin (depth = fb / disparity), plus depth errors in metres.

    Returns one dict per bin ``[lo, hi)`` with the :func:`stereo_metrics` keys and
    ``depth_mae`` (m) and ``depth_abs_rel``; predicted depth uses the filled disparity.
    """
    pred, gt = np.asarray(pred, dtype=np.float32), np.asarray(gt, dtype=np.float32)
    if fill:
        density_mask = np.isfinite(pred) & (pred > 0)
        pred_f = fill_invalid(pred)
    else:
        density_mask, pred_f = None, pred
    m = valid_mask(gt) if mask is None else valid_mask(gt) & np.asarray(mask, bool)
    depth = np.zeros(gt.shape, dtype=np.float64)
    depth[m] = fb / gt[m]
    out = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        b = m & (depth >= lo) & (depth < hi)
        row = {"depth_lo": float(lo), "depth_hi": float(hi)}
        row.update(stereo_metrics(pred_f, gt, b, fill=False))
        if density_mask is not None:
            row["density"] = float(density_mask[b].mean()) if b.any() else math.nan
        ok = b & np.isfinite(pred_f) & (pred_f > 0)
        if ok.any():
            zp = fb / pred_f[ok].astype(np.float64)
            zt = depth[ok]
            row["depth_mae"] = float(np.abs(zp - zt).mean())
            row["depth_abs_rel"] = float((np.abs(zp - zt) / zt).mean())
        else:
            row["depth_mae"] = row["depth_abs_rel"] = math.nan
        out.append(row)
    return out
