"""Benchmark: how fast the street-digits world renders, in images per second.

    python experiments/bench_street_digits.py [--n 20000] [--size 32] [--workers 1 2] [--repeat 3]

Prints, for each number of worker processes, the wall-clock throughput of ``render`` (worker
start-up included) and, for one process, its CPU time per image, which stays meaningful on a
busy machine; the load average is printed before and after. With ``--repeat`` each measurement
runs that many times and the best and the median are printed. The issue's target is 5,000
images/s on 2 cores at 32x32; ``--baseline`` numbers (images/s per worker count, e.g. the
README's) are printed as ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from entangle.data.street_digits import StreetDigitsConfig, render

#: the issue's target for 2 workers at 32x32, images/s
TARGET = 5000.0


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="images per measurement")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="measurements per worker count")
    parser.add_argument("--baseline", type=float, nargs="*", default=[],
                        help="images/s to compare with, one per entry of --workers")
    args = parser.parse_args()
    cfg = StreetDigitsConfig(size=args.size)
    print(f"cores visible: {os.cpu_count()}, load average (1/5/15 min): {_load()}")
    render(500, args.seed + 1, config=cfg)  # warm the glyph cache of this process
    for k, workers in enumerate(args.workers):
        rates = []
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            images, _ = render(args.n, args.seed, config=cfg, workers=workers)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rates.append(args.n / wall)
            line = (f"{workers} worker(s): {args.n} images {images.shape[1]}x{images.shape[2]} "
                    f"in {wall:.2f} s wall = {args.n / wall:,.0f} images/s")
            if workers == 1:
                line += (f"; CPU {1e6 * cpu / args.n:.0f} us/image = {args.n / cpu:,.0f} "
                         "images/s per core")
            print(line + f"  [load {_load()}]", flush=True)
        best, median = max(rates), statistics.median(rates)
        summary = f"{workers} worker(s): best {best:,.0f}, median {median:,.0f} images/s"
        if k < len(args.baseline):
            summary += f" = {median / args.baseline[k]:.2f}x the baseline {args.baseline[k]:,.0f}"
        if workers == 2 and args.size == 32:
            summary += f"; target {TARGET:,.0f}: {'met' if median >= TARGET else 'not met'} (median)"
        print(summary, flush=True)
    print(f"load average after (1/5/15 min): {_load()}")


if __name__ == "__main__":
    main()
