"""Per-object depth errors: the one definition every analysis of a stereo node's objects uses.

A stereo model's error is per pixel; what a detector downstream reads is its objects. Whole-
image error is dominated by road and background, so the case study's gate, its reports and
failure discovery on the world all measure stereo per object, with one rule:

* an object's **own pixels** are the pixels inside its 2D box whose ground-truth depth lies
  within the object's extent around its label's ``z`` (the box centre's depth): half the
  diagonal of its footprint, ``hypot(l, w) / 2``, which bounds how far any point of the box can
  be from ``z`` whatever its yaw, plus ``margin`` (0.25 m: the ground truth's PNG quantisation at
  80 m and the labels' 0.01 m rounding). Occluders (nearer) and background (farther) fall out;
  ground right next to the object, at the object's own depth, stays in, as it does for a detector.
* its **error** is the median absolute depth error (metres) over its own pixels that have an
  estimate; ``rel_error`` is the median of ``|Ẑ − Z| / Z`` over the same pixels and ``unmatched``
  the share of its own pixels without an estimate (0 or NaN). An object with no estimate at all
  has error ``inf``.

:func:`gate_table` tabulates these errors per class and distance bin for several systems: the
table the case study prints first, with the gate "the learned stereo must beat SGBM on object
pixels for both classes up to 40 m" (:func:`gate_verdict`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from entangle.data.labels import CAR, DONTCARE, PEDESTRIAN, L

#: distance bins (m) of the gate table, on the label's z; the last is open.
DISTANCE_BINS = (0.0, 10.0, 20.0, 30.0, 40.0, math.inf)
#: the classes the gate is about: name -> class id.
GATE_CLASSES = {"car": CAR, "pedestrian": PEDESTRIAN}
#: an object "off by more than this" (m) counts in the gate table's second column.
OFF_THRESHOLD = 1.0
#: default slack (m) around an object's extent (ground-truth quantisation, label rounding).
MARGIN = 0.25


def object_pixels(gt_depth: np.ndarray, row: np.ndarray, margin: float = MARGIN
                  ) -> tuple[tuple[slice, slice], np.ndarray]:
    """An object's own pixels: its 2D box window of ``gt_depth`` (H, W) and the mask inside it.

    Returns ``(window, mask)``; ``gt_depth[window][mask]`` are the object's true depths.
    """
    H, W = gt_depth.shape
    x1, y1 = max(int(np.floor(row[L["x1"]])), 0), max(int(np.floor(row[L["y1"]])), 0)
    x2, y2 = min(int(np.ceil(row[L["x2"]])), W - 1), min(int(np.ceil(row[L["y2"]])), H - 1)
    window = (slice(y1, max(y2 + 1, y1)), slice(x1, max(x2 + 1, x1)))
    extent = 0.5 * math.hypot(float(row[L["l"]]), float(row[L["w"]])) + margin
    g = gt_depth[window]
    return window, (g > 0) & np.isfinite(g) & (np.abs(g - float(row[L["z"]])) <= extent)


def foreground_mask(gt_depth: np.ndarray, labels: Any, classes: Sequence[int] | None = None,
                    margin: float = MARGIN) -> np.ndarray:
    """(N, H, W) bool: the own pixels (:func:`object_pixels`) of every labelled object of
    ``classes`` (default: car and pedestrian), KITTI's "foreground" for D1-fg."""
    gt_depth = np.asarray(gt_depth)
    keep = set(GATE_CLASSES.values() if classes is None else classes)
    out = np.zeros(gt_depth.shape, dtype=bool)
    for i in range(len(gt_depth)):
        for row in np.asarray(labels[i]):
            if int(row[L["cls"]]) in keep:
                window, own = object_pixels(gt_depth[i], row, margin)
                out[i][window] |= own
    return out


def object_errors(pred_depth: np.ndarray, gt_depth: np.ndarray, labels: Any, *,
                  classes: Sequence[int] | None = None, min_pixels: int = 5,
                  margin: float = MARGIN, against: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-object depth errors of depth predictions for a batch of scenes.

    Parameters
    ----------
    pred_depth, gt_depth : (N, H, W) metres; 0 or NaN where there is no value.
    labels : per-scene label rows (a :class:`~entangle.node.Ragged` of ``LABEL_COLUMNS`` rows).
    classes : class ids to keep (all but DontCare when None).
    min_pixels : objects with fewer own pixels are skipped (too small or hidden to measure).
    margin : metres of slack around the object's extent.
    against : (N, H, W) depth compared in place of ``gt_depth`` on the same own pixels (how far
        two predictions are apart on an object: a model from its starting point, two losses);
        the own pixels stay the ground truth's, and a pixel counts where both have a value.

    Returns
    -------
    dict of arrays, one entry per object: ``scene`` and ``row`` (its scene and its row among the
    scene's labels), ``cls``, ``z`` (label depth), ``difficulty``, ``pixels`` (own pixels),
    ``abs_error`` (median ``|Ẑ − Z|``, m), ``rel_error`` (median ``|Ẑ − Z| / Z``) and
    ``unmatched`` (share of own pixels without an estimate); errors are ``inf`` when none has one.
    """
    pred_depth = np.asarray(pred_depth)
    gt_depth = np.asarray(gt_depth)
    if pred_depth.shape != gt_depth.shape:
        raise ValueError(f"predicted depth {pred_depth.shape} and ground truth {gt_depth.shape} "
                         "differ in shape")
    if against is not None:
        against = np.asarray(against)
        if against.shape != gt_depth.shape:
            raise ValueError(f"depth compared against {against.shape} and ground truth "
                             f"{gt_depth.shape} differ in shape")
    keys = ("scene", "row", "cls", "z", "difficulty", "pixels", "abs_error", "rel_error", "unmatched")
    out: dict[str, list] = {k: [] for k in keys}
    for i in range(len(gt_depth)):
        gt = gt_depth[i]
        for j, row in enumerate(np.asarray(labels[i])):
            c = int(row[L["cls"]])
            if c == DONTCARE or (classes is not None and c not in classes):
                continue
            window, own = object_pixels(gt, row, margin)
            n_own = int(own.sum())
            if n_own < min_pixels:
                continue
            z_true = np.asarray((gt if against is None else against[i])[window][own], dtype=np.float64)
            z_pred = np.asarray(pred_depth[i][window][own], dtype=np.float64)
            matched = np.isfinite(z_pred) & (z_pred > 0) & np.isfinite(z_true) & (z_true > 0)
            if matched.any():
                err = np.abs(z_pred[matched] - z_true[matched])
                abs_err, rel_err = float(np.median(err)), float(np.median(err / z_true[matched]))
            else:
                abs_err = rel_err = math.inf
            for k, v in zip(keys, (i, j, c, float(row[L["z"]]), int(row[L["difficulty"]]), n_own,
                                   abs_err, rel_err, 1.0 - float(matched.mean()))):
                out[k].append(v)
    ints = {"scene", "row", "cls", "difficulty", "pixels"}
    return {k: np.asarray(v, dtype=np.int64 if k in ints else np.float64) for k, v in out.items()}


def object_depth_errors(pred_disparity: np.ndarray, gt_disparity: np.ndarray, depth: np.ndarray,
                        labels: Any, focal_baseline: np.ndarray, *,
                        classes: Sequence[int] | None = None, min_pixels: int = 5,
                        margin: float = MARGIN) -> dict[str, np.ndarray]:
    """:func:`object_errors` for disparity predictions (NaN or 0: no estimate).

    ``gt_disparity`` is not read beyond its shape (``depth`` is the ground truth); it stays in
    the signature for the callers that pass a matcher's output beside the world's arrays.
    ``focal_baseline`` (N,) converts the predictions: ``Ẑ = f·B / d``.
    """
    d = np.asarray(pred_disparity, dtype=np.float64)
    if d.shape != np.shape(gt_disparity):
        raise ValueError(f"predicted disparity {d.shape} and ground truth {np.shape(gt_disparity)} "
                         "differ in shape")
    fb = np.asarray(focal_baseline, dtype=np.float64).reshape(-1, *([1] * (d.ndim - 1)))
    ok = np.isfinite(d) & (d > 0)
    pred_depth = np.where(ok, fb / np.where(ok, d, 1.0), 0.0)
    return object_errors(pred_depth, depth, labels, classes=classes, min_pixels=min_pixels,
                         margin=margin)


def failed(errors: dict[str, np.ndarray], *, rel_threshold: float = 0.1,
           unmatched_threshold: float = 0.5) -> np.ndarray:
    """Objects whose depth is off by more than ``rel_threshold`` or mostly unmatched."""
    return (errors["rel_error"] > rel_threshold) | (errors["unmatched"] > unmatched_threshold)


# -- the gate table ------------------------------------------------------------------------------

def bin_label(lo: float, hi: float) -> str:
    """``"10-20"``, or ``"40+"`` for the open last bin."""
    return f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}"


def gate_table(systems: Mapping[str, Any], gt_depth: np.ndarray, labels: Any, *,
               bins: Sequence[float] = DISTANCE_BINS, classes: Mapping[str, int] | None = None,
               min_pixels: int = 5, threshold: float = OFF_THRESHOLD,
               margin: float = MARGIN, against: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Median object error and share off by more than ``threshold`` per class, distance bin, system.

    Parameters
    ----------
    systems : name -> depth predictions (N, H, W), or a list of them (one per seed).
    gt_depth, labels : the ground truth of the same N scenes.
    bins : edges (m) on the label's z; the last may be ``inf``.
    classes : name -> class id (default: car and pedestrian).
    against : system -> depth (or one per seed) compared in place of the ground truth
        (:func:`object_errors`): the table then says how far each system is from another on
        the objects, not how wrong it is.

    Returns
    -------
    ``{"bins": [...], "classes": [...], "threshold": m, "systems": {name: {class: {bin:
    {"median": m, "medians": [m per seed], "median_sd": m, "over": share, "n": objects}}}}}``;
    statistics are per seed and then averaged over seeds (``median_sd`` their standard deviation,
    NaN for one seed); empty cells are NaN with ``n`` 0.
    """
    classes = dict(GATE_CLASSES if classes is None else classes)
    edges = list(bins)
    names = [bin_label(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
    out: dict[str, Any] = {"bins": names, "classes": list(classes), "threshold": float(threshold),
                           "systems": {}}
    unknown = sorted(set(against or {}) - set(systems))
    if unknown:
        raise ValueError(f"against names {unknown}, which are not among the systems {list(systems)}")
    for system, preds in systems.items():
        runs = [preds] if isinstance(preds, np.ndarray) else list(preds)
        other = (against or {}).get(system)
        others = ([None] * len(runs) if other is None else
                  [other] * len(runs) if isinstance(other, np.ndarray) else list(other))
        if len(others) != len(runs):
            raise ValueError(f"system {system!r}: {len(runs)} predictions but {len(others)} to "
                             "compare them against")
        per_seed = [object_errors(p, gt_depth, labels, classes=list(classes.values()),
                                  min_pixels=min_pixels, margin=margin, against=o)
                    for p, o in zip(runs, others)]
        table: dict[str, dict[str, dict[str, float]]] = {}
        for cname, cid in classes.items():
            table[cname] = {}
            for name, lo, hi in zip(names, edges[:-1], edges[1:]):
                medians, overs, count = [], [], 0
                for e in per_seed:
                    sel = (e["cls"] == cid) & (e["z"] >= lo) & (e["z"] < hi)
                    count = int(sel.sum())
                    if count:
                        medians.append(float(np.median(e["abs_error"][sel])))
                        overs.append(float(np.mean(e["abs_error"][sel] > threshold)))
                table[cname][name] = {
                    "median": float(np.mean(medians)) if medians else math.nan,
                    "medians": medians,
                    "median_sd": float(np.std(medians, ddof=1)) if len(medians) > 1 else math.nan,
                    "over": float(np.mean(overs)) if overs else math.nan,
                    "n": count}
        out["systems"][system] = table
    return out


def gate_verdict(table: Mapping[str, Any], learned: Sequence[str], reference: str = "sgbm",
                 up_to: float = 40.0) -> dict[str, Any]:
    """Does each ``learned`` system beat ``reference`` on object pixels, both classes, up to ``up_to`` m?

    "Beat" is a lower median object error in every class and every bin that ends at or before
    ``up_to`` (and holds objects), **on every seed** of the learned system (the reference's
    median is its mean over its seeds). Returns ``{"passed": bool, "systems": {name: {"passed":
    bool, "failing": ["pedestrian 30-40 m: 0.62 m vs sgbm 0.55 m (seed 1 of 3)", ...]}}}``.
    """
    ref = table["systems"][reference]
    result: dict[str, Any] = {"reference": reference, "up_to": up_to, "systems": {}}
    for name in learned:
        failing = []
        for cname in table["classes"]:
            for b in table["bins"]:
                hi = math.inf if b.endswith("+") else float(b.split("-")[1])
                if hi > up_to:
                    continue
                mine, theirs = table["systems"][name][cname][b], ref[cname][b]
                if not mine["n"] or not theirs["n"]:
                    continue
                per_seed = mine.get("medians") or [mine["median"]]
                for k, m in enumerate(per_seed):
                    if not m < theirs["median"]:
                        which = f" (seed {k + 1} of {len(per_seed)})" if len(per_seed) > 1 else ""
                        failing.append(f"{cname} {b} m: {m:.2f} m vs {reference} "
                                       f"{theirs['median']:.2f} m{which}")
        result["systems"][name] = {"passed": not failing, "failing": failing}
    result["passed"] = all(v["passed"] for v in result["systems"].values())
    return result


def format_gate_table(table: Mapping[str, Any], verdict: Mapping[str, Any] | None = None,
                      title: str | None = None) -> str:
    """The gate table as markdown: one row per system and class, per bin ``median m (share > 1 m)``;
    ``title`` replaces the first line (a table made with ``against`` measures no error)."""
    bins = table["bins"]
    thr = table["threshold"]
    lines = [title or f"Median object depth error (m) and share of objects off by more than {thr:g} m, "
             "by the object's distance:", "",
             "| system | class | " + " | ".join(f"{b} m" for b in bins) + " |",
             "|---|---|" + "---|" * len(bins)]
    for system, per_class in table["systems"].items():
        for cname, cells in per_class.items():
            row = []
            for b in bins:
                c = cells[b]
                row.append("–" if not c["n"] else f"{c['median']:.2f} ({100 * c['over']:.0f} %, n={c['n']})")
            lines.append(f"| {system} | {cname} | " + " | ".join(row) + " |")
    if verdict is not None:
        lines.append("")
        for name, v in verdict["systems"].items():
            state = "passes" if v["passed"] else "fails: " + "; ".join(v["failing"])
            lines.append(f"- gate ({name} beats {verdict['reference']} on object pixels, both classes, "
                         f"up to {verdict['up_to']:g} m): {state}")
    return "\n".join(lines)


def paired_bin_differences(table: Mapping[str, Any], old: str, new: str, *,
                           up_to: float = math.inf) -> dict[str, dict[str, dict[str, Any]]]:
    """Per class and bin, the paired difference ``new − old`` of the per-seed median object errors.

    Seeds pair by position (both systems ran the same seeds in the same order). Each cell holds
    the :class:`~entangle.stats.PairedDelta` fields (mean, interval, verdict: lower is better)
    and says which system is better (``"neither (noise)"`` when the interval covers zero).
    """
    from entangle.stats import IMPROVED, WORSE, paired_delta
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for cname in table["classes"]:
        out[cname] = {}
        for b in table["bins"]:
            hi = math.inf if b.endswith("+") else float(b.split("-")[1])
            if hi > up_to:
                continue
            a = table["systems"][old][cname][b].get("medians") or []
            c = table["systems"][new][cname][b].get("medians") or []
            if len(a) != len(c) or len(a) < 2:
                continue
            pd = paired_delta(a, c, higher_is_better=False)
            out[cname][b] = {**pd.as_dict(), "better": {IMPROVED: new, WORSE: old}.get(pd.verdict, "neither (noise)")}
    return out
