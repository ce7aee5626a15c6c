"""Cache keys: what covering the code a node runs costs per key.

    python experiments/bench_hashing.py

A node's code version hashes the source files of every module of the project's own code that its
class's module imports, transitively (found by parsing, not importing). The first key of a class
in a process reads and parses those files; the result is cached for the process, so every later
key of that class costs only the parameters' fingerprint. Prints, per node class of the case
study, the modules covered, the first (cold) and later (warm) cost, and the time per key of a
whole system.
"""

from __future__ import annotations

import importlib
import os
import time

CLASSES = ("entangle.data.world_source.WorldSource", "entangle.models.stereo.StereoNet",
           "entangle.models.pseudo_lidar.PseudoLidar", "entangle.models.car_detector.CarDetector",
           "entangle.models.pedestrian_detector.PedestrianDetector", "entangle.node.SklearnNode",
           "entangle.models.mlp_node.MLPNode")


def main() -> None:
    from entangle import hashing
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    classes = []
    for path in CLASSES:
        module, name = path.rsplit(".", 1)
        classes.append(getattr(importlib.import_module(module), name))   # imports are not timed
    print(f"{'class':<22} {'modules':>7} {'cold ms':>8} {'warm us':>8}")
    for cls in classes:
        hashing.clear_code_cache()
        t0 = time.perf_counter()
        hashing.code_version(cls)
        cold = time.perf_counter() - t0
        n = 1000
        t0 = time.perf_counter()
        for _ in range(n):
            hashing.code_version(cls)
        warm = (time.perf_counter() - t0) / n
        modules = {m for k in cls.__mro__ if k.__module__.startswith("entangle")
                   for m, _ in hashing.module_closure(k.__module__)}
        print(f"{cls.__name__:<22} {len(modules):>7} {1e3 * cold:8.2f} {1e6 * warm:8.2f}")

    from hydra import compose, initialize_config_dir
    from entangle.system import System
    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=fixes_that_fail"])
    system = System.from_config(cfg.pipeline)
    hashing.clear_code_cache()
    t0 = time.perf_counter()
    system.keys(0)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for seed in range(1, 101):
        system.keys(seed)
    warm = (time.perf_counter() - t0) / 100
    n = len(system.specs)
    print(f"case-study system ({n} nodes): first keys {1e3 * cold:.1f} ms "
          f"({1e3 * cold / n:.2f} ms per key), later {1e3 * warm:.2f} ms ({1e3 * warm / n:.3f} ms per key)")


if __name__ == "__main__":
    main()
