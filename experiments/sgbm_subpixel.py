"""A first look at what a refiner of SGBM could learn, with no network: bias or noise?

SGM's parabola fit pulls disparities towards whole pixels (Haller et al. 2010), a bias that
depends only on the sub-pixel fraction of the answer; what is not bias is per-pixel noise, which
only aggregation along a surface removes. This benchmark runs SGBM (the case study's settings)
on ``--train`` training scenes and ``--scenes`` **validation** scenes (never the test split) and
prints

* SGBM's signed disparity error on the validation object pixels (median, mean, share off by more
  than 1 px): the bias plus the heavy tail of gross errors a learned refiner faces;
* a ``--bins``-bin correction of SGBM's disparity by its sub-pixel fraction alone (the median
  signed error per fraction bin, on every pixel with ground truth of the training scenes);
* the gate table on the validation scenes (median object depth error per class and distance
  bin, :mod:`entangle.analysis.object_errors`) of SGBM, SGBM with that correction, one
  Lucas–Kanade sub-pixel step on luminance (5 × 5 windows), and the edge-aware mean of SGBM's
  matched disparities (:func:`entangle.models.refine_net.edge_aware_mean`, 9 × 9, 0.7 px): the
  refiner's candidates.

::

    python experiments/sgbm_subpixel.py                         # 150 + 120 scenes, about a minute
    python experiments/sgbm_subpixel.py --train 10 --scenes 10  # a smoke run
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from entangle.analysis.object_errors import format_gate_table, gate_table, object_pixels
from entangle.data.world_source import WorldSource
from entangle.models.stereo import ClassicalStereo, focal_baseline
from entangle.models.stereo_metrics import depth_from_disparity

#: the edge-aware mean shown: the largest window of the shipped refiner's candidates
SMOOTH_WINDOW, SMOOTH_RANGE = 9, 0.7


def subpixel_correction(pred: np.ndarray, gt: np.ndarray, bins: int) -> np.ndarray:
    """Median signed error (gt − pred, px) per sub-pixel-fraction bin of ``pred`` on valid pixels."""
    ok = (gt > 0) & (pred > 0)
    frac = np.mod(pred[ok], 1.0)
    idx = np.minimum((frac * bins).astype(int), bins - 1)
    err = (gt[ok] - pred[ok]).astype(np.float64)
    return np.array([np.median(err[idx == b]) if np.any(idx == b) else 0.0 for b in range(bins)])


def apply_correction(pred: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``pred`` plus its fraction bin's correction (invalid pixels, 0, stay 0)."""
    bins = len(table)
    idx = np.minimum((np.mod(pred, 1.0) * bins).astype(int), bins - 1)
    return np.where(pred > 0, pred + table[idx], 0.0).astype(np.float32)


def lucas_kanade_step(left: np.ndarray, right: np.ndarray, pred: np.ndarray, window: int = 5) -> np.ndarray:
    """One Lucas–Kanade step of ``pred`` on luminance: the shift that best explains the left
    image by the right one warped at ``pred``, over ``window`` × ``window`` windows (±1 px)."""
    import torch
    import torch.nn.functional as F

    from entangle.models.stereo_net import warp_right

    def lum(a):
        return torch.from_numpy(np.asarray(a, np.float32)).permute(0, 3, 1, 2).mean(1, keepdim=True) / 255.0
    out = np.empty_like(pred)
    for i in range(len(pred)):
        L, R, d = lum(left[i:i + 1]), lum(right[i:i + 1]), torch.from_numpy(pred[i:i + 1])
        grad = warp_right(R, d - 0.5) - warp_right(R, d + 0.5)       # dR/dx at x − d
        err = L - warp_right(R, d)
        num = F.avg_pool2d(err * grad, window, 1, window // 2, count_include_pad=False)
        den = F.avg_pool2d(grad * grad, window, 1, window // 2, count_include_pad=False)
        out[i] = (d - (num / (den + 1e-4))[:, 0].clamp(-1, 1)).numpy()[0]
    return out


def object_signed_errors(pred: np.ndarray, gt_disp: np.ndarray, gt_depth: np.ndarray, labels) -> np.ndarray:
    """Signed disparity errors (pred − gt, px) on the own pixels of every car and pedestrian."""
    from entangle.analysis.object_errors import GATE_CLASSES
    from entangle.data.labels import L
    out = []
    for i in range(len(pred)):
        for row in np.asarray(labels[i]):
            if int(row[L["cls"]]) not in GATE_CLASSES.values():
                continue
            window, own = object_pixels(gt_depth[i], row)
            out.append((pred[i][window] - gt_disp[i][window])[own])
    return np.concatenate(out) if out else np.zeros(0)


def main() -> None:
    import torch

    from entangle.models.refine_net import edge_aware_mean

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=150, help="training scenes the correction is fitted on")
    parser.add_argument("--scenes", type=int, default=120, help="validation scenes evaluated")
    parser.add_argument("--bins", type=int, default=32, help="sub-pixel fraction bins")
    parser.add_argument("--world-scenes", type=int, default=1200)
    parser.add_argument("--world-seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    source = WorldSource(n_scenes=args.world_scenes, seed=args.world_seed)
    train, val = source.load("train", 0), source.load("val", 0)
    keys = ("left", "right", "calib", "baseline")
    n_tr, n = min(args.train, len(train["left"])), min(args.scenes, len(val["left"]))
    sgbm = ClassicalStereo(method="sgbm").fit({}, {}, seed=0)
    fitted = sgbm.predict({k: train[k][:n_tr] for k in keys})
    x = {k: val[k][:n] for k in keys}
    t0 = time.perf_counter()
    out = sgbm.predict(x)
    pred, matched = out["disparity"], out["matched"].astype(bool)
    t_sgbm = time.perf_counter() - t0
    gt = np.asarray(val["disparity"][:n], dtype=np.float32)
    depth = np.asarray(val["depth"][:n])
    fb = focal_baseline(x, n).astype(np.float32)

    labels = val["labels"].take(np.arange(n))
    for what, p in (("every own pixel (holes filled)", pred), ("matched own pixels", np.where(matched, pred, np.nan))):
        signed = object_signed_errors(p, gt, depth, labels)
        signed = signed[np.isfinite(signed)]
        print(f"SGBM on object pixels of {n} validation scenes, {what} ({signed.size} pixels): signed "
              f"error median {np.median(signed):+.3f} px, mean {np.mean(signed):+.3f} px, off by more "
              f"than 1 px {100 * np.mean(np.abs(signed) > 1):.1f} %")
    print(f"SGBM's disparities take {len(np.unique(np.mod(pred[matched], 1.0)))} sub-pixel fractions "
          "(OpenCV's fixed point: 1/16 px)")

    table = subpixel_correction(fitted["disparity"], np.asarray(train["disparity"][:n_tr], np.float32), args.bins)
    print(f"\ncorrection per sub-pixel fraction bin (fitted on {n_tr} training scenes, all pixels; px):")
    print(" ".join(f"{v:+.3f}" for v in table))

    def kept(new: np.ndarray) -> np.ndarray:
        return np.where(matched, new, pred)                                  # holes stay SGBM's

    smooth = edge_aware_mean(torch.from_numpy(pred), torch.from_numpy(matched.astype(np.float32)),
                             SMOOTH_WINDOW, SMOOTH_RANGE).numpy()
    systems = {"sgbm": pred,
               f"sgbm + {args.bins}-bin fraction correction": kept(apply_correction(pred, table)),
               "sgbm + one Lucas-Kanade step": kept(lucas_kanade_step(x["left"], x["right"], pred)),
               f"edge-aware mean {SMOOTH_WINDOW}x{SMOOTH_WINDOW}, {SMOOTH_RANGE} px": kept(smooth)}
    gate = gate_table({k: depth_from_disparity(v, fb) for k, v in systems.items()}, depth, labels)
    print(f"\nMedian object depth error (m) on the {n} validation scenes:\n")
    print(format_gate_table(gate))
    print(f"\nSGBM: {t_sgbm / n:.3f} s per scene (load average now {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
