"""What each stage of the hybrid stereo upstream costs: SGBM, and the refiner's training and prediction.

Times, on the world's validation scenes (192 × 624; rendered on first use), OpenCV SGBM per
scene as the pipeline's ``sgbm`` node runs it, the edge-aware candidates per scene as its
``sgbm_means`` node computes them (once for every seed and loss), then the refiner
(:class:`entangle.models.stereo_refiner.StereoRefiner`, the pipeline's network): its input
features per scene, a prediction per scene (batch norm folded, candidates given), and a
training step (batch of 4 crops of 96 × 320, features computed on the crop's rows, as ``fit``
does). The refiner is the one of ``conf/pipeline/fixes_that_fail.yaml`` (its ``stereo`` node).
From these it prints what one fine-tuning and one prediction pass cost at the case study's
sizes. Numbers are printed, never asserted; say the load average when you quote them::

    python experiments/bench_hybrid_stereo.py                    # one torch thread
    python experiments/bench_hybrid_stereo.py --threads 2 --scenes 8
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from entangle.data.world_source import WorldSource
from entangle.models.refine_net import BLOCK, DisparityRefiner, edge_aware_candidates, refiner_features
from entangle.models.stereo import ClassicalStereo
from entangle.models.stereo_net import fused_for_inference
from entangle.models.stereo_refiner import StereoRefiner


#: the pipeline whose refiner is priced
PIPELINE = Path(__file__).resolve().parents[1] / "conf" / "pipeline" / "fixes_that_fail.yaml"


def pipeline_refiner() -> StereoRefiner:
    """The case study's refiner node, built from its pipeline config (no inputs, no targets)."""
    spec = OmegaConf.to_container(OmegaConf.load(PIPELINE).nodes.stereo, resolve=True)
    params = {k: v for k, v in spec.items() if k not in ("_target_", "inputs", "targets", "init")}
    return StereoRefiner(**{**params, "device": "cpu", "crop": None})


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=16, help="validation scenes timed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train", type=int, default=300, help="training scenes of the fine-tuning priced")
    parser.add_argument("--test", type=int, default=500, help="test scenes of the prediction priced")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs priced "
                        "(default: the pipeline's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    node = pipeline_refiner()
    epochs = args.epochs if args.epochs is not None else int(node.epochs)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"torch threads: {args.threads}")

    val = WorldSource(n_scenes=1200, seed=0).load("val", 0)
    n = min(args.scenes, len(val["left"]))
    x = {k: val[k][:n] for k in ("left", "right", "calib", "baseline")}
    sgbm = ClassicalStereo(method="sgbm").fit({}, {}, seed=0)
    t0 = time.perf_counter()
    out = sgbm.predict(x)
    t_sgbm = (time.perf_counter() - t0) / n
    h, w = x["left"].shape[1:3]

    bs = int(node.batch_size)
    left, right, d0, invalid = node._tensors(x["left"][:bs], x["right"][:bs], out["disparity"][:bs],
                                             out["matched"][:bs], torch.device("cpu"))
    config = node.refiner_config()
    net = DisparityRefiner(config)
    fused = fused_for_inference(net)
    smooth, rng = config.smooth, float(config.smooth_range)
    with torch.inference_mode():
        t_feat = _median_time(lambda: refiner_features(left, right, d0, invalid, config.scale, smooth, rng),
                              args.repeats) / bs
        t_cand = _median_time(lambda: edge_aware_candidates(d0, invalid, smooth, rng), args.repeats) / bs
        candidates = edge_aware_candidates(d0, invalid, smooth, rng)
        t_pred = _median_time(lambda: fused(left, right, d0, invalid, candidates), args.repeats) / bs

    ch, cw = 96, 320
    target = torch.from_numpy(np.array(val["disparity"][:bs], dtype=np.float32))[:, :ch, :cw]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    torch.nn.init.normal_(net.out.weight, std=1e-3)

    rows = slice(0, ch + BLOCK // 2)        # the crop's rows and the block average's margin

    def step():
        with torch.no_grad():
            f = refiner_features(left[:, :, rows], right[:, :, rows], d0[:, rows], invalid[:, rows], config.scale,
                                 smooth, rng, candidates[:, :, rows])[:, :, :ch, :cw]
        pred = d0[:, :ch, :cw] + net.correction(f)
        loss = torch.nn.functional.smooth_l1_loss(pred, target, beta=float(node.beta))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.train()
    t_step = _median_time(step, args.repeats)

    steps = epochs * math.ceil(args.train / bs)
    print(f"\nPer 192 x 624 scene ({n} validation scenes for SGBM; batches of {bs} for the refiner):")
    print(f"  SGBM (8 paths, 80 px search, holes filled): {t_sgbm:.3f} s")
    print(f"  refiner input features (warps, block costs, candidates): {t_feat:.3f} s, of which "
          f"the edge-aware candidates {smooth}: {t_cand:.3f} s")
    print(f"  refiner prediction, features included (candidates given): {t_pred:.3f} s")
    print(f"  refiner training step (batch {bs} of {ch} x {cw} crops): {t_step:.3f} s")
    print(f"\nAt the case study's sizes ({args.train} training, {args.test} test scenes, {epochs} epochs):")
    scenes = args.train + args.test
    print(f"  once for every seed and loss: SGBM {t_sgbm * scenes:.0f} s, its edge-aware candidates "
          f"{t_cand * scenes:.0f} s")
    print(f"  per seed and loss: the refiner's fine-tuning, {steps} steps: {steps * t_step:.0f} s; its "
          f"predictions on train + test: {t_pred * scenes:.0f} s")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
