"""Per-object errors of a depth estimate, so failure directions can run on the world's objects.

A stereo model's error is per pixel; failure discovery on the world works per object (each
object has attributes: distance, visible fraction, contrast, lighting...). An object's error is
the median relative depth error over its own pixels — the pixels inside its 2D box whose true
depth lies within the object's extent around its centre — and an object is *failed* when that
error exceeds a threshold or most of its pixels got no estimate.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from entangle.models.layout import L


def object_depth_errors(pred_disparity: np.ndarray, gt_disparity: np.ndarray, depth: np.ndarray,
                        labels: Any, focal_baseline: np.ndarray, *,
                        classes: Sequence[int] | None = None, min_pixels: int = 5
                        ) -> dict[str, np.ndarray]:
    """Per-object relative depth error and unmatched share for a batch of scenes.

    Parameters
    ----------
    pred_disparity, gt_disparity, depth : (N, H, W); NaN or 0 where there is no value.
    labels : per-scene label rows (a :class:`~entangle.node.Ragged` of ``LABEL_COLUMNS`` rows).
    focal_baseline : (N,) focal length × baseline, so depth = focal_baseline / disparity.
    classes : class ids to keep (all when None).
    min_pixels : objects with fewer own pixels are skipped.

    Returns
    -------
    dict with ``scene`` and ``row`` (the object's scene and its row among the scene's labels),
    ``cls``, ``rel_error`` (median |Ẑ − Z| / Z over matched pixels; inf when none matched) and
    ``unmatched`` (share of the object's pixels without an estimate).
    """
    out: dict[str, list] = {"scene": [], "row": [], "cls": [], "rel_error": [], "unmatched": []}
    for i in range(len(pred_disparity)):
        pred, gt, dep = pred_disparity[i], gt_disparity[i], depth[i]
        H, W = gt.shape
        fb = float(focal_baseline[i])
        for j, lab in enumerate(labels[i]):
            c = int(lab[L["cls"]])
            if classes is not None and c not in classes:
                continue
            x1, y1 = max(int(np.floor(lab[L["x1"]])), 0), max(int(np.floor(lab[L["y1"]])), 0)
            x2, y2 = min(int(np.ceil(lab[L["x2"]])), W - 1), min(int(np.ceil(lab[L["y2"]])), H - 1)
            if x2 < x1 or y2 < y1:
                continue
            extent = 0.5 * max(float(lab[L["l"]]), float(lab[L["w"]])) + 0.5
            g = gt[y1:y2 + 1, x1:x2 + 1]
            own = (g > 0) & (np.abs(dep[y1:y2 + 1, x1:x2 + 1] - float(lab[L["z"]])) < extent)
            if own.sum() < min_pixels:
                continue
            p = pred[y1:y2 + 1, x1:x2 + 1][own]
            matched = np.isfinite(p) & (p > 0)
            z_true = fb / g[own]
            rel = (np.median(np.abs(fb / p[matched] - z_true[matched]) / z_true[matched])
                   if matched.any() else np.inf)
            for k, v in (("scene", i), ("row", j), ("cls", c), ("rel_error", rel),
                         ("unmatched", 1.0 - matched.mean())):
                out[k].append(v)
    return {k: np.asarray(v, dtype=np.float64 if k in ("rel_error", "unmatched") else np.int64)
            for k, v in out.items()}


def failed(errors: dict[str, np.ndarray], *, rel_threshold: float = 0.1,
           unmatched_threshold: float = 0.5) -> np.ndarray:
    """Objects whose depth is off by more than ``rel_threshold`` or mostly unmatched."""
    return (errors["rel_error"] > rel_threshold) | (errors["unmatched"] > unmatched_threshold)
