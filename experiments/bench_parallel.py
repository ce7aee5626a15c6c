"""Parallel speed-up: two independent branches × 4 seeds, process pool (and Ray) vs local.

    python experiments/bench_parallel.py [--ray]
    python experiments/bench_parallel.py --decomposition

Each executor runs the same system into a fresh store; results are checked identical. Ray's
start-up is timed separately from the run. ``--decomposition`` instead times a tiny study's
decomposition (many small derived systems: the pool's start-up, not the fits, dominates) and
counts the pools it opened.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import tempfile
import time

import entangle.executor as executor_mod
from entangle.data.toy_systems import ridge_chain
from entangle.data.toys import GaussianSource
from entangle.decompose import Estimators, decomposition
from entangle.executor import LocalExecutor, ProcessExecutor, RayExecutor
from entangle.models.mlp import MLP
from entangle.node import SklearnNode, TorchNode
from entangle.store import Store
from entangle.study import Study
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


def timed_decomposition(executor, tmp) -> tuple[float, dict]:
    """Wall time and deltas of decomposing a tiny study's change (the study closed at the end)."""
    from sklearn.linear_model import LinearRegression
    est = Estimators(reference=SklearnNode(estimator=LinearRegression()), oracle={"up.pred": "data.x"})
    t0 = time.perf_counter()
    with Study(ridge_chain(1000.0), new=ridge_chain(0.1), seeds=[0, 1], store=Store(tmp), executor=executor) as study:
        deltas = decomposition(study, nodes={"v": est})["v"]["deltas"]
    return time.perf_counter() - t0, deltas


@contextlib.contextmanager
def counting_pools():
    """Counts the process pools opened inside (a list, one item per pool)."""
    opened, original = [], executor_mod.ProcessPoolExecutor

    class Counted(original):
        def __init__(self, *args, **kwargs):
            opened.append(1)
            super().__init__(*args, **kwargs)

    executor_mod.ProcessPoolExecutor = Counted
    try:
        yield opened
    finally:
        executor_mod.ProcessPoolExecutor = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ray", action="store_true", help="also time executor=ray (needs Ray)")
    parser.add_argument("--decomposition", action="store_true",
                        help="time a tiny decomposition on the pool vs locally (only that)")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)  # the same thread count as each worker, so results are bit-identical
    if args.decomposition:
        ridge_chain(1.0).keys(0)    # the code is hashed once per process: outside both timings
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            d_local, r_local = timed_decomposition(LocalExecutor(), a)
            with counting_pools() as opened:
                d_proc, r_proc = timed_decomposition(ProcessExecutor(workers=os.cpu_count(), threads=1), b)
        print(f"tiny decomposition: local {d_local:.2f} s   processes {d_proc:.2f} s ({len(opened)} "
              f"pool(s) opened); identical results: {r_local == r_proc}")
        return
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
