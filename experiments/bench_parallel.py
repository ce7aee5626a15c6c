"""Parallel speed-up: two independent branches × 4 seeds, process pool (and Ray) vs local.

    python experiments/bench_parallel.py [--ray]

Each executor runs the same system into a fresh store; results are checked identical. Ray's
start-up is timed separately from the run.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time

from entangle.data.toys import GaussianSource
from entangle.executor import LocalExecutor, ProcessExecutor, RayExecutor
from entangle.models.mlp import MLP
from entangle.node import TorchNode
from entangle.store import Store
from entangle.system import NodeSpec, System


def branchy() -> System:
    data = GaussianSource(variances=[1.0] * 8, weights={"a": [1.0] * 8, "b": [0.5, -1.0] * 4},
                          noise={"a": 0.1, "b": 0.1}, sizes={"train": 6000, "test": 2000})
    mk = functools.partial(MLP, in_features=8, hidden=128, depth=2)
    return System({
        "data": data,
        "left": NodeSpec(TorchNode(module=mk, epochs=8, lr=1e-3), inputs={"x": "data.x"},
                         targets={"y": "data.a"}, output=True),
        "right": NodeSpec(TorchNode(module=mk, epochs=8, lr=1e-3), inputs={"x": "data.x"},
                          targets={"y": "data.b"}, output=True),
    })


def timed(executor, seeds, tmp) -> tuple[float, dict]:
    t0 = time.perf_counter()
    runs = executor.run(branchy(), seeds, Store(tmp))
    elapsed = time.perf_counter() - t0
    return elapsed, {(s, n): runs[s].metrics(n) for s in seeds for n in ("left", "right")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ray", action="store_true", help="also time executor=ray (needs Ray)")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)  # the same thread count as each worker, so results are bit-identical
    seeds = [0, 1, 2, 3]
    print(f"cores: {os.cpu_count()}; 2 branches x {len(seeds)} seeds = 8 trainings")
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        t_local, m_local = timed(LocalExecutor(), seeds, a)
        t_proc, m_proc = timed(ProcessExecutor(workers=os.cpu_count(), threads=1), seeds, b)
    print(f"local: {t_local:.2f} s   processes: {t_proc:.2f} s   speed-up {t_local / t_proc:.2f}x "
          f"(target >= 1.6x on 2 cores); identical results: {m_local == m_proc}")
    if args.ray:
        import ray
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        t_start = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as c:
            t_ray, m_ray = timed(RayExecutor(threads=1), seeds, c)
        print(f"ray: start-up {t_start:.2f} s, run {t_ray:.2f} s, speed-up vs local "
              f"{t_local / t_ray:.2f}x; identical results: {m_local == m_ray}")


if __name__ == "__main__":
    main()
