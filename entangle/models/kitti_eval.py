"""KITTI-style 3D detection evaluation: AP|R40 and AP|R11 in BEV and 3D, per class and difficulty.

The matching follows the KITTI devkit (``evaluate_object.cpp`` / ``kitti-object-eval-python``):

* For class C and a difficulty, a ground-truth (GT) object is *valid* (``0``) when it is of class
  C and passes the difficulty's limits (2D height, occlusion, truncation); it is *ignored*
  (``1``) when it is of class C but fails them, or is of the neighbouring class (Van for Car,
  Person_sitting for Pedestrian); other rows play no part (``-1``). A detection is ignored when
  its 2D box is lower than the difficulty's minimum height. Matches to ignored objects (or by
  ignored detections) are neither true nor false positives, and an ignored object is never a
  false negative. Detections overlapping a DontCare region (2D intersection over the detection's
  area above the IoU threshold, as in the C++ devkit, for every metric) are not false positives.
* A first pass matches each GT object, in label order, to the highest-scoring unassigned
  detection with IoU above the threshold; the scores of the true positives are the candidate
  score thresholds. At each threshold the devkit matches again, using only detections scoring at
  least the threshold and taking the *largest-overlap* candidate, and counts TP, FP, FN.
* AP|R40 averages the interpolated precision (the best precision at recall >= r) at
  r = 1/40, ..., 40/40; AP|R11 at r = 0, 0.1, ..., 1. Following the definition exactly
  (``recall_sampling="exact"``, the default) the precision is evaluated at every true-positive
  score. The devkit instead samples 41 thresholds by an index rule that is only right with more
  than 40 valid objects (with 10 objects, perfect detections score 0.25 in its AP|R40);
  ``recall_sampling="devkit"`` reproduces it for comparison with published numbers.

The "near" evaluation (the paper's ``get_range_eval_result``) keeps only GT rows and detections
with ``0 < z <= near_depth`` and ignores the difficulty limits (every object of the class is
valid, no detection is ignored for its height).

The difficulty limits are the devkit's (:data:`entangle.data.kitti.DIFFICULTY_RULES`, the one
rule :func:`~entangle.data.kitti.difficulty` also applies): heights of 40/25/25 px for
375-px-high images, scaled by ``image_height / 375``. An AP with no valid object is NaN (JSON ``null``): undefined, not 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from entangle.data.kitti import DIFFICULTY_NAMES as DIFFICULTIES
from entangle.data.kitti import difficulty_of, min_heights
from entangle.data.labels import (B, BOX_COLUMNS, CAR, CLASS_NAMES, DONTCARE, L, LABEL_COLUMNS,
                                  PEDESTRIAN, PERSON_SITTING, VAN, class_id)
from entangle.models import boxes as bx
from entangle.node import Ragged

log = logging.getLogger(__name__)

#: IoU thresholds per class, for (bev, 3d): KITTI's official ("strict") and the looser set.
IOU_SETS = {
    "strict": {CAR: 0.7, PEDESTRIAN: 0.5},
    "loose": {CAR: 0.5, PEDESTRIAN: 0.25},
}
#: rows of this class are ignored (not false negatives, not false positives) when scoring the key.
NEIGHBOUR_CLASS = {CAR: VAN, PEDESTRIAN: PERSON_SITTING}
METRICS = ("bev", "3d")
R40 = np.arange(1, 41) / 40.0
R11 = np.arange(0, 11) / 10.0
#: the "near" evaluation's depth limit in metres (the paper's range evaluation, 0-20 m).
NEAR_DEPTH = 20.0
#: bound on the elements of one vectorised matching batch (images x levels x detections x GT).
_MAX_BATCH_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------------
# input checks and difficulty
# --------------------------------------------------------------------------------------------
def _check_ragged(r: Ragged, width: int, name: str, columns: Sequence[str]) -> None:
    if not isinstance(r, Ragged):
        raise TypeError(f"{name} must be a Ragged of rows with columns {columns}, got {type(r).__name__}")
    v = np.asarray(r.values)
    if len(v) and (v.ndim != 2 or v.shape[1] != width):
        raise ValueError(f"{name} rows must have {width} columns {tuple(columns)}, got shape {v.shape}")
    if len(v) and not np.all(np.isfinite(v)):
        row, col = np.argwhere(~np.isfinite(v))[0]
        image = int(np.searchsorted(r.offsets, row, side="right") - 1)
        raise ValueError(f"{name}: image {image}, row {row - r.offsets[image]}, column "
                         f"{columns[col]!r} is {v[row, col]} (must be finite)")


def _class_id(c: int | str) -> int:
    """A class's id from its name (any known class) or its id (an evaluable class only)."""
    if isinstance(c, str):
        return class_id(c)
    c = int(c)
    if c not in IOU_SETS["strict"]:
        raise ValueError(f"no IoU thresholds for class {CLASS_NAMES[c] if 0 <= c < len(CLASS_NAMES) else c!r}; "
                         f"evaluable: {[CLASS_NAMES[k] for k in IOU_SETS['strict']]}")
    return c


# --------------------------------------------------------------------------------------------
# per-class data, padded per image
# --------------------------------------------------------------------------------------------
@dataclass
class _ClassData:
    """GT and detections relevant to one class, padded to (images, max GT) and (images, max det)."""

    gt_rows: np.ndarray       # (I, G) index into gt.values, -1 = padding
    gt: np.ndarray            # (I, G, 15) label rows (zeros at padding)
    det_rows: np.ndarray      # (I, D) index into det.values, -1 = padding; sorted by score desc
    det: np.ndarray           # (I, D, 13)
    dc: np.ndarray            # (I, D) detection overlaps a DontCare box (value = max overlap)
    overlaps: dict            # metric -> (I, D, G) IoU


def _pad_rows(r: Ragged, select: np.ndarray, width: int, order_key: np.ndarray | None = None):
    n_img = len(r)
    lengths = np.zeros(n_img, dtype=np.int64)
    per_img = []
    for i in range(n_img):
        lo, hi = r.offsets[i], r.offsets[i + 1]
        idx = np.arange(lo, hi)[select[lo:hi]]
        if order_key is not None and len(idx):
            idx = idx[np.argsort(-order_key[idx], kind="stable")]
        per_img.append(idx)
        lengths[i] = len(idx)
    m = int(lengths.max()) if n_img else 0
    rows = np.full((n_img, m), -1, dtype=np.int64)
    vals = np.zeros((n_img, m, width))
    for i, idx in enumerate(per_img):
        rows[i, :len(idx)] = idx
        if len(idx):
            vals[i, :len(idx)] = r.values[idx]
    return rows, vals


def _class_data(gt: Ragged, det: Ragged, cls: int, near_depth: float | None) -> _ClassData:
    gv = np.asarray(gt.values, dtype=np.float64).reshape(-1, len(LABEL_COLUMNS))
    dv = np.asarray(det.values, dtype=np.float64).reshape(-1, len(BOX_COLUMNS))
    g_cls = gv[:, L["cls"]].astype(np.int64)
    d_cls = dv[:, B["cls"]].astype(np.int64)
    g_sel = (g_cls == cls) | (g_cls == NEIGHBOUR_CLASS[cls])
    d_sel = d_cls == cls
    if near_depth is not None:
        g_sel &= (gv[:, L["z"]] > 0) & (gv[:, L["z"]] <= near_depth)
        d_sel &= (dv[:, B["z"]] > 0) & (dv[:, B["z"]] <= near_depth)
    gt_rows, gt_vals = _pad_rows(Ragged(gv, gt.offsets), g_sel, len(LABEL_COLUMNS))
    det_rows, det_vals = _pad_rows(Ragged(dv, det.offsets), d_sel, len(BOX_COLUMNS),
                                   order_key=dv[:, B["score"]])
    n_img, G = gt_rows.shape
    D = det_rows.shape[1]
    overlaps = {m: np.zeros((n_img, D, G)) for m in METRICS}
    dc = np.zeros((n_img, D))
    # IoU of every (detection, GT) pair of the same image, in one vectorised call per metric
    ii, dd, gg = np.nonzero((det_rows[:, :, None] >= 0) & (gt_rows[:, None, :] >= 0))
    if len(ii):
        a = det_vals[ii, dd][:, 1:8]
        b = gt_vals[ii, gg][:, 1:8]
        overlaps["bev"][ii, dd, gg] = bx.bev_iou(a, b, pairwise=True)
        overlaps["3d"][ii, dd, gg] = bx.iou_3d(a, b, pairwise=True)
    # DontCare regions (never inside the near range: their z is -1000 in KITTI's files)
    dc_sel = g_cls == DONTCARE
    if near_depth is None and np.any(dc_sel) and D:
        for i in range(n_img):
            lo, hi = gt.offsets[i], gt.offsets[i + 1]
            regions = gv[lo:hi][dc_sel[lo:hi]]
            k = int((det_rows[i] >= 0).sum())
            if len(regions) and k:
                ov = bx.box2d_overlap(det_vals[i, :k, 8:12], regions[:, 8:12], criterion="a")
                dc[i, :k] = ov.max(axis=1)
    return _ClassData(gt_rows, gt_vals, det_rows, det_vals, dc, overlaps)


def _ignore_flags(data: _ClassData, cls: int, difficulty: int | None, image_height: int):
    """The devkit's ``clean_data``: ignored_gt and ignored_det in {-1, 0, 1} per padded slot."""
    g = data.gt
    g_cls = g[..., L["cls"]].astype(np.int64)
    real_g = data.gt_rows >= 0
    ign_gt = np.full(real_g.shape, -1, dtype=np.int64)
    if difficulty is None:      # the near evaluation: no difficulty limits
        hard_ok = np.ones(real_g.shape, dtype=bool)
    else:                       # the limits nest: passing this level's = this level or easier
        level = difficulty_of(g.reshape(-1, len(LABEL_COLUMNS)), image_height).reshape(real_g.shape)
        hard_ok = (level >= 0) & (level <= difficulty)
    ign_gt[real_g & (g_cls == cls) & hard_ok] = 0
    ign_gt[real_g & (((g_cls == cls) & ~hard_ok) | (g_cls == NEIGHBOUR_CLASS[cls]))] = 1
    real_d = data.det_rows >= 0
    ign_det = np.where(real_d, 0, -1)
    if difficulty is not None:
        d = data.det
        height = np.abs(d[..., B["y2"]] - d[..., B["y1"]])
        ign_det[real_d & (height < min_heights(image_height)[difficulty])] = 1
    return ign_gt, ign_det


# --------------------------------------------------------------------------------------------
# matching (vectorised over a batch of images and score levels)
# --------------------------------------------------------------------------------------------
def _match(ov, ign_gt, ign_det, scores, active, min_overlap, compute_fp):
    """The devkit's ``computeStatistics`` for a batch: returns tp, fn, assigned, matched det.

    ov (B, D, G); ign_gt (B, G); ign_det, scores, active (B, D). GT objects are taken in order;
    without ``compute_fp`` the highest-scoring candidate wins (first pass), with it the largest
    overlap among non-ignored detections, else the first ignored one.
    """
    nb, nd, ng = ov.shape
    assigned = np.zeros((nb, nd), dtype=bool)
    tp = np.zeros(nb, dtype=np.int64)
    fn = np.zeros(nb, dtype=np.int64)
    match = np.full((nb, ng), -1, dtype=np.int64)
    is_tp_all = np.zeros((nb, ng), dtype=bool)
    usable = (ign_det != -1) & active
    rows = np.arange(nb)
    for k in range(ng):
        ig = ign_gt[:, k]
        cand = usable & ~assigned & (ov[:, :, k] > min_overlap)
        if not compute_fp:
            j = np.argmax(np.where(cand, scores, -np.inf), axis=1) if nd else np.zeros(nb, dtype=np.int64)
            has = cand.any(axis=1)
        else:
            valid = cand & (ign_det == 0)
            jv = np.argmax(np.where(valid, ov[:, :, k], -np.inf), axis=1) if nd else np.zeros(nb, dtype=np.int64)
            ign_c = cand & (ign_det == 1)
            ji = np.argmax(ign_c, axis=1) if nd else np.zeros(nb, dtype=np.int64)
            hv = valid.any(axis=1)
            j = np.where(hv, jv, ji)
            has = hv | ign_c.any(axis=1)
        has &= ig != -1
        fn += (~has) & (ig == 0)
        if nd:
            det_ign = ign_det[rows, j] == 1
        else:
            det_ign = np.zeros(nb, dtype=bool)
        is_tp = has & (ig != 1) & ~det_ign
        assigned[rows[has], j[has]] = True
        match[has, k] = j[has]
        tp += is_tp
        is_tp_all[:, k] = is_tp
    return tp, fn, assigned, match, is_tp_all


def _devkit_thresholds(tp_scores: np.ndarray, n_valid: int, n_points: int = 41) -> np.ndarray:
    """The devkit's ``getThresholds``: scores whose recall approximates the sample points."""
    v = np.sort(tp_scores)[::-1]
    out = []
    current = 0.0
    for i, s in enumerate(v):
        l_recall = (i + 1) / n_valid
        r_recall = (i + 2) / n_valid if i < len(v) - 1 else l_recall
        if (r_recall - current) < (current - l_recall) and i < len(v) - 1:
            continue
        out.append(s)
        current += 1.0 / (n_points - 1.0)
    return np.asarray(out)


@dataclass
class _Curve:
    """TP/FP counts at score thresholds and the resulting precision and recall."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_valid: int

    @property
    def precision(self) -> np.ndarray:
        denom = self.tp + self.fp
        return np.where(denom > 0, self.tp / np.maximum(denom, 1), 0.0)

    @property
    def recall(self) -> np.ndarray:
        return self.tp / max(self.n_valid, 1)


def _pr_curve(data: _ClassData, ign_gt, ign_det, metric: str, min_overlap: float,
              recall_sampling: str) -> _Curve:
    ov = data.overlaps[metric]
    n_img, D, G = ov.shape
    scores = np.where(data.det_rows >= 0, data.det[..., B["score"]], -np.inf)
    n_valid = int((ign_gt == 0).sum())
    if D == 0 or n_valid == 0:
        return _Curve(np.zeros(0), np.zeros(0), np.zeros(0), n_valid)
    # first pass: the true positives' scores are the candidate thresholds
    all_active = np.ones((n_img, D), dtype=bool)
    _, _, _, match, is_tp = _match(ov, ign_gt, ign_det, scores, all_active, min_overlap, False)
    tp_scores = np.take_along_axis(scores, np.maximum(match, 0), axis=1)[is_tp]
    if n_valid == 0 or len(tp_scores) == 0:
        return _Curve(np.zeros(0), np.zeros(0), np.zeros(0), n_valid)
    if recall_sampling == "devkit":
        thresholds = _devkit_thresholds(tp_scores, n_valid)
    elif recall_sampling == "exact":
        thresholds = np.unique(tp_scores)[::-1]
    else:
        raise ValueError(f"recall_sampling must be 'exact' or 'devkit', got {recall_sampling!r}")
    # Detections are sorted by score within each image, so the detections kept at a threshold
    # are the image's first k; the counts of image i depend only on k, which has D + 1 values.
    K = D + 1
    tp_k = np.zeros((n_img, K), dtype=np.int64)
    fp_k = np.zeros((n_img, K), dtype=np.int64)
    level_active = np.arange(D)[None, :] < np.arange(K)[:, None]              # (K, D)
    step = max(1, _MAX_BATCH_ELEMENTS // max(K * max(D, 1) * max(G, 1), 1))
    for lo in range(0, n_img, step):
        sl = slice(lo, lo + step)
        n = len(ov[sl])
        rep = lambda a: np.repeat(a[sl], K, axis=0)                           # noqa: E731
        active = np.broadcast_to(level_active, (n, K, D)).reshape(n * K, D)
        ign_det_b = rep(ign_det)
        tp_b, _, assigned, _, _ = _match(rep(ov), rep(ign_gt), ign_det_b, rep(scores), active,
                                         min_overlap, True)
        dc_b = rep(data.dc) > min_overlap
        fp_b = (active & ~assigned & (ign_det_b == 0) & ~dc_b).sum(axis=1)
        tp_k[sl] = tp_b.reshape(n, K)
        fp_k[sl] = fp_b.reshape(n, K)
    # number of kept detections per image at each threshold: (I, T)
    k_at = (scores[:, :, None] >= thresholds[None, None, :]).sum(axis=1)
    tp = np.take_along_axis(tp_k, k_at, axis=1).sum(axis=0)
    fp = np.take_along_axis(fp_k, k_at, axis=1).sum(axis=0)
    return _Curve(thresholds, tp.astype(np.float64), fp.astype(np.float64), n_valid)


def _average_precision(curve: _Curve, recall_sampling: str) -> tuple[float, float]:
    """(AP|R40, AP|R11) of a curve; NaN when there is no valid object."""
    if curve.n_valid == 0:
        return float("nan"), float("nan")
    if len(curve.thresholds) == 0:
        return 0.0, 0.0
    prec = curve.precision
    if recall_sampling == "devkit":
        p = np.zeros(41)
        p[:len(prec)] = prec[:41]
        p = np.maximum.accumulate(p[::-1])[::-1]
        return float(p[1:].sum() / 40.0), float(p[::4].sum() / 11.0)
    rec = curve.recall

    def interp(points: np.ndarray) -> np.ndarray:
        ok = rec[None, :] >= points[:, None] - 1e-12                          # (R, T)
        return np.where(ok, prec[None, :], 0.0).max(axis=1)

    return float(interp(R40).mean()), float(interp(R11).mean())


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def evaluate(gt: Ragged, det: Ragged, image_height: int,
             classes: Iterable[int | str] = (CAR, PEDESTRIAN), *,
             near_depth: float = NEAR_DEPTH, recall_sampling: str = "exact") -> dict:
    """KITTI AP|R40 and AP|R11, BEV and 3D, strict and loose IoU, per class and difficulty.

    Parameters
    ----------
    gt : Ragged
        Ground-truth rows per image with :data:`~entangle.data.labels.LABEL_COLUMNS`.
    det : Ragged
        Detection rows per image with :data:`~entangle.data.labels.BOX_COLUMNS`.
    image_height : int
        Height of the images in pixels (scales the devkit's minimum 2D box heights).
    classes : iterable of int or str
        Classes to evaluate (Car and Pedestrian have IoU thresholds).
    near_depth : float
        Depth limit of the "near" evaluation (objects and detections with ``0 < z <= near_depth``).
    recall_sampling : {"exact", "devkit"}
        How precision is sampled at the recall points (see the module docstring).

    Returns
    -------
    dict
        ``result[class_name]`` holds ``n_gt`` (valid objects per difficulty and ``near``),
        ``n_det``, ``iou`` (the thresholds of each set) and ``result[class_name][metric][set]
        [ap]`` for metric ``bev``/``3d``, set ``strict``/``loose``, ap ``R40``/``R11``, each a
        dict ``easy``/``moderate``/``hard``/``near`` -> AP in [0, 1] (NaN without valid objects).
    """
    _check_ragged(gt, len(LABEL_COLUMNS), "gt", LABEL_COLUMNS)
    _check_ragged(det, len(BOX_COLUMNS), "det", BOX_COLUMNS)
    if len(gt) != len(det):
        raise ValueError(f"gt has {len(gt)} images but det has {len(det)}")
    result: dict = {}
    for c in classes:
        cls = _class_id(c)
        name = CLASS_NAMES[cls]
        full = _class_data(gt, det, cls, None)
        near = _class_data(gt, det, cls, near_depth)
        res: dict = {"n_gt": {}, "n_det": int((full.det_rows >= 0).sum()),
                     "iou": {s: {m: IOU_SETS[s][cls] for m in METRICS} for s in IOU_SETS}}
        for m in METRICS:
            res[m] = {s: {"R40": {}, "R11": {}} for s in IOU_SETS}
        for dname, data, d in [*[(n, full, i) for i, n in enumerate(DIFFICULTIES)], ("near", near, None)]:
            ign_gt, ign_det = _ignore_flags(data, cls, d, image_height)
            res["n_gt"][dname] = int((ign_gt == 0).sum())
            for m in METRICS:
                for s in IOU_SETS:
                    curve = _pr_curve(data, ign_gt, ign_det, m, IOU_SETS[s][cls], recall_sampling)
                    r40, r11 = _average_precision(curve, recall_sampling)
                    res[m][s]["R40"][dname] = r40
                    res[m][s]["R11"][dname] = r11
        result[name] = res
    return result


def flat_metrics(result: dict, cls: int | str) -> dict[str, float]:
    """One class's APs as flat readable keys, e.g. ``bev_ap40_strict_moderate``, ``3d_ap11_loose_near``."""
    name = CLASS_NAMES[_class_id(cls)]
    res = result[name]
    out: dict[str, float] = {}
    for m in METRICS:
        for s in IOU_SETS:
            for ap, key in (("R40", "ap40"), ("R11", "ap11")):
                for d, v in res[m][s][ap].items():
                    out[f"{m}_{key}_{s}_{d}"] = v
    for d, n in res["n_gt"].items():
        out[f"n_gt_{d}"] = float(n)
    out["n_det"] = float(res["n_det"])
    return out


def match_objects(gt: Ragged, det: Ragged, cls: int | str, *, metric: str = "bev",
                  min_overlap: float | None = None) -> dict[str, np.ndarray]:
    """Per-object match results for the rows of class ``cls``, in label-row order.

    Every object of the class counts (no difficulty limits); the matching is the devkit's first
    pass at ``min_overlap`` (default: the strict KITTI IoU of the class): objects in label
    order take the highest-scoring unassigned detection of the class above the IoU threshold.

    Returns
    -------
    dict of arrays, one entry per object:
        ``row`` (index into ``gt.values``), ``image``, ``matched`` (bool), ``iou`` (with the
        matched detection, 0 if missed), ``score`` (of the matched detection, 0 if missed),
        ``best_iou`` (largest IoU with any detection of the class), and ``quality`` (the largest
        IoU x score over detections of the class: 1 for a confident exact box, 0 for no overlap).
    """
    _check_ragged(gt, len(LABEL_COLUMNS), "gt", LABEL_COLUMNS)
    _check_ragged(det, len(BOX_COLUMNS), "det", BOX_COLUMNS)
    if len(gt) != len(det):
        raise ValueError(f"gt has {len(gt)} images but det has {len(det)}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    cid = _class_id(cls)
    thr = IOU_SETS["strict"][cid] if min_overlap is None else float(min_overlap)
    data = _class_data(gt, det, cid, None)
    ign_gt, ign_det = _ignore_flags(data, cid, None, 1)
    ov = data.overlaps[metric]
    scores = np.where(data.det_rows >= 0, data.det[..., B["score"]], 0.0)
    active = np.ones(scores.shape, dtype=bool)
    _, _, _, match, _ = _match(ov, ign_gt, ign_det, scores, active, thr, False)
    is_obj = (data.gt_rows >= 0) & (data.gt[..., L["cls"]].astype(np.int64) == cid)
    img, slot = np.nonzero(is_obj)
    rows = data.gt_rows[img, slot]
    order = np.argsort(rows, kind="stable")
    img, slot, rows = img[order], slot[order], rows[order]
    j = match[img, slot]
    matched = j >= 0
    jj = np.maximum(j, 0)
    iou = np.where(matched, ov[img, jj, slot] if ov.shape[1] else 0.0, 0.0)
    score = np.where(matched, scores[img, jj] if scores.shape[1] else 0.0, 0.0)
    if ov.shape[1]:
        best_iou = ov[img, :, slot].max(axis=1)
        quality = (ov[img, :, slot] * scores[img]).max(axis=1)
    else:
        best_iou = np.zeros(len(rows))
        quality = np.zeros(len(rows))
    return {"row": rows, "image": img, "matched": matched, "iou": iou, "score": score,
            "best_iou": best_iou, "quality": quality}
