"""Benchmark: how fast the synthetic world renders and writes, in scenes per second.

    python experiments/bench_world.py [--scenes 200] [--workers 2] [--height 192 --width 624]

Prints the time of each stage for one process (sampling, rendering, writing the KITTI files)
and the end-to-end throughput of ``generate`` with the given workers. The image size defaults
to the world's (``WorldConfig().camera``); other sizes keep its geometry scaled to the width.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from entangle.data.kitti import write_sample
from entangle.data.world import (WorldConfig, generate, render_scene, sample_scene, scene_rng,
                                 texture_atlas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--height", type=int, default=None, help="default: the world's")
    parser.add_argument("--width", type=int, default=None, help="default: the world's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = WorldConfig()
    args.height = args.height or cfg.camera.height
    args.width = args.width or cfg.camera.width
    cfg = dataclasses.replace(cfg, camera=dataclasses.replace(cfg.camera, height=args.height,
                                                              width=args.width))
    print(f"cores visible: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    texture_atlas(cfg.texture.seed, cfg.texture.count, cfg.texture.size)
    print(f"texture bank: {time.perf_counter() - start:.2f} s (once per process)")

    n = min(args.scenes, 60)
    t_sample, t_render, t_write = [], [], []
    # process_time: CPU seconds of this process, robust to other work on a shared machine
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            t0 = time.process_time()
            params = sample_scene(scene_rng(args.seed, i), cfg)
            t1 = time.process_time()
            sample = render_scene(params, cfg, sample_id=f"{i:06d}")
            t2 = time.process_time()
            write_sample(Path(tmp) / "training", sample)
            t3 = time.process_time()
            t_sample.append(t1 - t0)
            t_render.append(t2 - t1)
            t_write.append(t3 - t2)
    per = np.mean(t_sample) + np.mean(t_render) + np.mean(t_write)
    print(f"one process, {n} scenes at {args.height}x{args.width}, CPU time: sample "
          f"{1e3 * np.mean(t_sample):.1f} ms, render {1e3 * np.mean(t_render):.1f} ms, write "
          f"{1e3 * np.mean(t_write):.1f} ms -> {1 / per:.1f} scenes/s")

    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        generate(Path(tmp) / "world", args.scenes, seed=args.seed, cfg=cfg, workers=args.workers)
        elapsed = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
    rate = args.scenes / elapsed
    print(f"generate: {args.scenes} scenes with {args.workers} workers in {elapsed:.2f} s -> "
          f"{rate:.1f} scenes/s (5,000 scenes: {5000 / rate / 60:.1f} min)")
    # on a shared machine the wall clock also counts other people's work; CPU time does not
    print(f"generate CPU time: {1e3 * cpu / args.scenes:.1f} ms per scene (all processes) -> "
          f"{args.workers * args.scenes / cpu:.1f} scenes/s on {args.workers} otherwise idle cores; "
          f"load average now {os.getloadavg()[0]:.2f}")


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
