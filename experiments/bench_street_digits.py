"""Benchmark: how fast the street-digits world renders, in images per second.

    python experiments/bench_street_digits.py [--n 20000] [--size 32] [--workers 1 2]

Prints, for each number of worker processes, the wall-clock throughput of ``render`` (worker
start-up included) and, for one process, its CPU time per image, which stays meaningful on a
busy machine; the load average is printed before and after. The issue's target is 5,000
images/s on 2 cores at 32x32.
"""

from __future__ import annotations

import argparse
import os
import time

from entangle.data.street_digits import StreetDigitsConfig, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="images per measurement")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = StreetDigitsConfig(size=args.size)
    print(f"cores visible: {os.cpu_count()}, load average (1/5/15 min): "
          + " / ".join(f"{v:.2f}" for v in os.getloadavg()))
    render(500, args.seed + 1, config=cfg)  # warm the glyph cache of this process
    for workers in args.workers:
        wall, cpu = time.perf_counter(), time.process_time()
        images, _ = render(args.n, args.seed, config=cfg, workers=workers)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        line = (f"{workers} worker(s): {args.n} images {images.shape[1]}x{images.shape[2]} in "
                f"{wall:.2f} s wall = {args.n / wall:,.0f} images/s")
        if workers == 1:
            line += f"; CPU {1e6 * cpu / args.n:.0f} us/image = {args.n / cpu:,.0f} images/s per core"
        print(line, flush=True)
    print("load average after (1/5/15 min): " + " / ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
