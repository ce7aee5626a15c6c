"""A first look at what a refiner of SGBM could learn, with no network: its sub-pixel bias.

SGM's parabola fit pulls disparities towards whole pixels (Haller et al. 2010), a bias that
depends only on the sub-pixel fraction of the answer. This benchmark measures it on the world's
**validation** split (never the test split): it runs SGBM (the case study's settings) on
``2 × --scenes`` validation scenes, fits a ``--bins``-bin correction of SGBM's disparity by its
sub-pixel fraction alone (the median signed error per fraction bin, on every pixel with ground
truth of the first half), applies it to the second half and prints

* SGBM's signed disparity error on object pixels (median, mean, share off by more than 1 px):
  the bias plus the heavy tail of gross errors a learned refiner faces;
* the correction per fraction bin (px);
* the gate table of SGBM and of the corrected SGBM on the second half: median object depth
  error per class and distance bin (:mod:`entangle.analysis.object_errors`).

::

    python experiments/sgbm_subpixel.py                 # 60 + 60 validation scenes, ~30 s
    python experiments/sgbm_subpixel.py --scenes 10     # a smoke run
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=60, help="validation scenes per half")
    parser.add_argument("--bins", type=int, default=32, help="sub-pixel fraction bins")
    parser.add_argument("--world-scenes", type=int, default=1200)
    parser.add_argument("--world-seed", type=int, default=0)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    val = WorldSource(n_scenes=args.world_scenes, seed=args.world_seed).load("val", 0)
    n = min(2 * args.scenes, len(val["left"]))
    half = n // 2
    x = {k: val[k][:n] for k in ("left", "right", "calib", "baseline")}
    t0 = time.perf_counter()
    out = ClassicalStereo(method="sgbm").fit({}, {}, seed=0).predict(x)
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

    table = subpixel_correction(pred[:half], gt[:half], args.bins)
    print(f"\ncorrection per sub-pixel fraction bin (fitted on {half} scenes, all pixels; px):")
    print(" ".join(f"{v:+.3f}" for v in table))
    corrected = apply_correction(pred[half:], table)
    systems = {"sgbm": depth_from_disparity(pred[half:], fb[half:]),
               f"sgbm + {args.bins}-bin fraction correction": depth_from_disparity(corrected, fb[half:])}
    gate = gate_table(systems, depth[half:], val["labels"].take(np.arange(half, n)))
    print(f"\nMedian object depth error (m) on the other {n - half} validation scenes:\n")
    print(format_gate_table(gate))
    print(f"\nSGBM: {t_sgbm / n:.3f} s per scene (load average now {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
