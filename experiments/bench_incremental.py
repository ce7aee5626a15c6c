"""Incremental recompute: change one node of a 10-node learned system; rerun time / full run time.

    python experiments/bench_incremental.py

The system: a Gaussian source, a chain of learned nodes (MLP regressors) with side branches.
Changing a leaf-side node should cost a small fraction of the full run (target < 0.2).
"""

from __future__ import annotations

import functools
import tempfile
import time

from entangle.data.toys import GaussianSource
from entangle.executor import LocalExecutor
from entangle.models.mlp import MLP
from entangle.node import TorchNode
from entangle.store import Store
from entangle.system import NodeSpec, System


def learned(epochs: int = 6, hidden: int = 64) -> TorchNode:
    return TorchNode(module=functools.partial(MLP, in_features=1, hidden=hidden), epochs=epochs, lr=3e-3)


def ten_node_system(leaf_epochs: int = 6) -> System:
    specs = {"data": GaussianSource(variances=[1.0] * 4, weights={"y": [1.0, -1.0, 0.5, 2.0]},
                                    noise={"y": 0.2}, sizes={"train": 4000, "test": 2000})}
    first = TorchNode(module=functools.partial(MLP, in_features=4, hidden=64), epochs=6, lr=3e-3)
    specs["m0"] = NodeSpec(first, inputs={"x": "data.x"}, targets={"y": "data.y"})
    for i in range(1, 9):  # a chain m0 -> m1 -> ... -> m8
        node = learned(leaf_epochs if i == 8 else 6)
        specs[f"m{i}"] = NodeSpec(node, inputs={"u": f"m{i - 1}.pred"}, targets={"y": "data.y"},
                                  output=i == 8)
    return System(specs)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        LocalExecutor().run(ten_node_system(), [0], Store(tmp))
        full = time.perf_counter() - t0
        store = Store(tmp)
        t0 = time.perf_counter()
        LocalExecutor().run(ten_node_system(leaf_epochs=7), [0], store)
        leaf = time.perf_counter() - t0
        print(f"full run of 9 learned nodes: {full:.2f} s")
        print(f"rerun after changing the leaf node: {leaf:.2f} s "
              f"({store.stats.hits} hits, {store.stats.misses} misses)")
        print(f"ratio rerun / full: {leaf / full:.3f}  (target < 0.2)")


if __name__ == "__main__":
    main()
