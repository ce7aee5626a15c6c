"""Scheduling overhead: random DAGs of trivial stored nodes, time per node and how it grows.

    python experiments/bench_scheduling.py [--sizes 100 1000 10000]

Prints build (validation + keys) and run time per node for each size, and the exponent of
time ~ nodes^k fitted on a log-log scale (1.0 is linear).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from entangle.executor import LocalExecutor
from entangle.node import BaseNode, Source
from entangle.store import Store
from entangle.system import NodeSpec, System


class One(Source):
    output_kinds = {"x": "array"}

    def load(self, split, seed):
        return {"x": np.zeros(1)}


class Add(BaseNode):
    """A trivial stored node: output = sum of inputs + 1 (one sample)."""

    output_kinds = {"y": "array"}

    def __init__(self, *, k: int = 0):
        self.k = k

    def fit(self, inputs, targets, *, seed):
        self.fitted_ = True
        return self

    def predict(self, inputs):
        return {"y": sum(np.asarray(v) for v in inputs.values()) + 1}

    def loss(self, predictions, targets):
        return np.zeros(1)


def random_dag(n: int, seed: int = 0, max_parents: int = 3) -> System:
    rng = np.random.default_rng(seed)
    specs = {"src": One()}
    names = ["src"]
    for i in range(n - 1):
        k = int(rng.integers(1, max_parents + 1))
        window = names[-50:]  # local wiring keeps depth growing with n, like real pipelines
        parents = sorted(set(rng.choice(window, size=min(k, len(window)), replace=False)))
        specs[f"n{i}"] = NodeSpec(Add(k=i), inputs={f"in{j}": f"{p}.{'x' if p == 'src' else 'y'}"
                                                    for j, p in enumerate(parents)})
        names.append(f"n{i}")
    read = {r.split(".")[0] for s in specs.values() if isinstance(s, NodeSpec) for r in s.inputs.values()}
    for name in names:
        if name not in read:
            specs[name] = NodeSpec(specs[name].node, inputs=specs[name].inputs, output=True)
    return System(specs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: imports and first-touch costs
        LocalExecutor().run(random_dag(20, seed=1), [0], Store(tmp))
    for n in args.sizes:
        t0 = time.perf_counter()
        system = random_dag(n)
        system.keys(0)
        t_build = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(tmp)
            t0 = time.perf_counter()
            LocalExecutor().run(system, [0], store)
            t_run = time.perf_counter() - t0
            t0 = time.perf_counter()
            LocalExecutor().run(system, [0], Store(tmp))
            t_rerun = time.perf_counter() - t0
        rows.append((n, t_build, t_run, t_rerun))
        print(f"{n:>6} nodes: build+keys {t_build:7.2f} s ({1e3 * t_build / n:.3f} ms/node)  "
              f"run {t_run:7.2f} s ({1e3 * t_run / n:.2f} ms/node)  "
              f"cached rerun {t_rerun:6.2f} s ({1e3 * t_rerun / n:.2f} ms/node)", flush=True)
    if len(rows) >= 2:
        ns = np.log([r[0] for r in rows])
        for label, col in (("build+keys", 1), ("run", 2), ("cached rerun", 3)):
            k = np.polyfit(ns, np.log([r[col] for r in rows]), 1)[0]
            print(f"fitted exponent, {label}: time ~ nodes^{k:.2f}")


if __name__ == "__main__":
    main()
