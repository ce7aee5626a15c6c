"""Stereo benchmarks: training throughput of the learned network, and disparity vs depth loss.

``throughput`` times training steps (forward, backward, Adam) and inference of
:class:`entangle.models.stereo_net.StereoNet` on random tensors, per thread count and image size,
and prints images/s. ``world`` trains the stereo node with the disparity loss and with the depth
loss on the synthetic world (same data, crops, order and initialisation per seed), runs OpenCV
SGBM/BM, and prints depth and disparity errors per ground-truth distance bin, with the paired
depth-minus-disparity difference per seed::

    python experiments/bench_stereo.py throughput --threads 1 2
    python experiments/bench_stereo.py world --train 150 --eval 500 --epochs 4 --seeds 0 1 2

``world`` trains from scratch; ``experiments/stereo_gate.py`` fine-tunes from the pretrained
checkpoint and scores per object (the case study's gate).

The world is rendered on first use under ``datasets/generated/`` (or read from ``--root``).
Numbers are printed, never asserted: timings depend on the machine and its load.

Measured on the 2-core development machine (idle; batch 4, max_disp 48): training 35 (1 thread)
/ 42 (2 threads) images/s on 64x208 crops, 8.7 / 12.1 on full 128x416 images; inference 36 / 56
full images/s; one model on 300 scenes x 6 epochs of crops in about 50 s. When other jobs load
the cores, 2 threads fall to a fraction of 1 thread's speed (OpenMP threads wait on each other):
use ``--threads 1`` (or ``torch.set_num_threads(1)``) on a shared machine. The thread count
also changes the floating-point reduction order, so results are reproducible per thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch

from entangle.models.stereo_net import StereoNet as Net
from entangle.models.stereo_net import StereoNetConfig, stacked_smooth_l1


def throughput(threads: list[int], sizes: list[tuple[int, int]], batch: int, max_disp: int,
               steps: int, disp_steps: list[int], refine: list[int]) -> None:
    """Print training and inference images/s of the network per variant, thread count and size."""
    print(f"StereoNet throughput (batch {batch}, max_disp {max_disp}, median of {steps} steps; "
          f"load average {os.getloadavg()[0]:.2f})")
    print(f"{'threads':>7} {'step':>4} {'refine':>6} {'size':>9} {'train s/step':>12} "
          f"{'train img/s':>11} {'infer img/s':>11}")
    for t in threads:
        torch.set_num_threads(t)
        for disp_step in disp_steps:
            for ref in refine:
                for h, w in sizes:
                    torch.manual_seed(0)
                    net = Net(StereoNetConfig(max_disp=max_disp, disp_step=disp_step, refine=bool(ref)))
                    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
                    left, right = torch.randn(batch, 3, h, w), torch.randn(batch, 3, h, w)
                    target = torch.rand(batch, h, w) * (max_disp - 1)
                    mask = torch.ones(batch, h, w, dtype=torch.bool)
                    times = []
                    for i in range(steps + 1):                   # the first step warms up oneDNN
                        start = time.perf_counter()
                        opt.zero_grad()
                        loss = stacked_smooth_l1(net(left, right), target, mask)
                        loss.backward()
                        opt.step()
                        if i:
                            times.append(time.perf_counter() - start)
                    step = statistics.median(times)
                    net.eval()
                    infer = []
                    with torch.no_grad():
                        for i in range(steps + 1):
                            start = time.perf_counter()
                            net(left, right)
                            if i:
                                infer.append(time.perf_counter() - start)
                    print(f"{t:>7} {disp_step:>4} {ref:>6} {h:>4}x{w:<4} {step:>12.3f} "
                          f"{batch / step:>11.1f} {batch / statistics.median(infer):>11.1f}", flush=True)


BINS = ("0-10", "10-20", "20-30", "30-40", "40-80", "near", "far")
ROWS = (["smoothl1@disparity", "smoothl1@depth", "depth_mae", "depth_absrel", "depth_rmse", "epe", "d1", "density"]
        + [f"depth_mae@{b}" for b in BINS] + [f"depth_absrel@{b}" for b in BINS]
        + [f"depth_rmse@{b}" for b in BINS] + [f"epe@{b}" for b in BINS] + [f"share@{b}" for b in BINS])


def _fmt(values: list[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "nan"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f}±{np.std(vals, ddof=1):.3f}"


def world(args: argparse.Namespace) -> None:
    """Train both objectives per seed, run SGBM/BM, print metrics per distance bin."""
    from entangle.data.world_source import WorldSource
    from entangle.models.stereo import ClassicalStereo, StereoNet

    torch.set_num_threads(args.threads[0])
    src = WorldSource(root=args.root, n_scenes=args.scenes, seed=args.world_seed)
    train, test = src.load("train", 0), src.load(args.split, 0)
    keys = ("left", "right", "calib", "baseline")
    x_train = {k: train[k][:args.train] for k in keys}
    y_train = {"disparity": train["disparity"][:args.train]}
    x_test = {k: test[k][:args.eval] for k in keys}
    y_test = {"disparity": test["disparity"][:args.eval]}
    print(f"world: {len(y_train['disparity'])} training scenes, {len(y_test['disparity'])} "
          f"{args.split} scenes, images {x_train['left'].shape[1:3]}")

    crop = None if args.crop == "none" else [int(v) for v in args.crop.split("x")]
    results: dict[str, list[dict]] = {}
    timing: dict[str, list[float]] = {}
    for seed in args.seeds:
        for objective in ("disparity", "depth"):
            node = StereoNet(objective=objective, max_disp=args.max_disp, epochs=args.epochs,
                             lr=args.lr, batch_size=args.batch_size, crop=crop)
            start = time.perf_counter()
            node.fit(x_train, y_train, seed=seed)
            elapsed = time.perf_counter() - start
            name = f"{objective} loss"
            preds = node.predict(x_test)
            score = node.score(preds, y_test)
            for space in ("disparity", "depth"):          # both objectives, on both models
                score[f"smoothl1@{space}"] = float(np.mean(
                    node.set_params(objective=space).loss(preds, y_test)))
            results.setdefault(name, []).append(score)
            timing.setdefault(name, []).append(elapsed)
            print(f"seed {seed} {name}: trained in {elapsed:.0f} s "
                  f"({len(y_train['disparity']) * args.epochs / elapsed:.1f} images/s), "
                  f"depth_mae {score['depth_mae']:.3f} m, epe {score['epe']:.3f} px", flush=True)
    for method, params in (("sgbm", {"block_size": 5, "mode": "3way"}), ("bm", {"block_size": 11})):
        node = ClassicalStereo(method=method, params=params).fit(x_test, {}, seed=0)
        preds = node.predict(x_test)
        score = node.score(preds, y_test)
        for space in ("disparity", "depth"):
            score[f"smoothl1@{space}"] = float(np.mean(node.set_params(objective=space).loss(preds, y_test)))
        results[method] = [score]

    names = list(results)
    print(f"\nmetrics on {args.split} ({len(args.seeds)} seeds: mean±std); bins by true depth (m)")
    print(f"{'metric':<20}" + "".join(f"{n:>20}" for n in names) + f"{'depth-disp (paired)':>22}")
    for row in ROWS:
        cells = [_fmt([r.get(row) for r in results[n]]) for n in names]
        diffs = [b[row] - a[row] for a, b in zip(results["disparity loss"], results["depth loss"])]
        print(f"{row:<20}" + "".join(f"{c:>20}" for c in cells) + f"{_fmt(diffs):>22}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "results": results, "train_seconds": timing}, fh, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tp = sub.add_parser("throughput", help="training/inference images per second")
    tp.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    tp.add_argument("--sizes", nargs="+", default=["192x624", "96x320"])
    tp.add_argument("--batch", type=int, default=4)
    tp.add_argument("--max-disp", type=int, default=64)
    tp.add_argument("--steps", type=int, default=5)
    tp.add_argument("--disp-steps", type=int, nargs="+", default=[4, 2],
                    help="disparity spacing of the cost volume (px)")
    tp.add_argument("--refine", type=int, nargs="+", default=[0, 1], help="0: without, 1: with refinement")
    wp = sub.add_parser("world", help="disparity vs depth loss on the synthetic world")
    wp.add_argument("--root", default=None, help="a KITTI-layout folder (default: render the world)")
    wp.add_argument("--scenes", type=int, default=1200, help="scenes to render (45%% train, 45%% test)")
    wp.add_argument("--world-seed", type=int, default=0)
    wp.add_argument("--split", default="test")
    wp.add_argument("--train", type=int, default=150)
    wp.add_argument("--eval", type=int, default=500)
    wp.add_argument("--epochs", type=int, default=4)
    wp.add_argument("--crop", default="96x320", help="HxW training crops, or none")
    wp.add_argument("--batch-size", type=int, default=4)
    wp.add_argument("--lr", type=float, default=3e-3)
    wp.add_argument("--max-disp", type=int, default=64)
    wp.add_argument("--seeds", type=int, nargs="+", default=[0])
    wp.add_argument("--threads", type=int, nargs=1, default=[2])
    wp.add_argument("--out", default=None, help="write all numbers as JSON here")
    args = parser.parse_args()
    if args.command == "throughput":
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
        throughput(args.threads, sizes, args.batch, args.max_disp, args.steps, args.disp_steps,
                   args.refine)
    else:
        world(args)


if __name__ == "__main__":
    main()
