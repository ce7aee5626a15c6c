"""Store: write and hit latency and throughput for small and 100 MB artifacts.

    python experiments/bench_store.py
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from entangle.hashing import key_of
from entangle.store import Store


def bench(store: Store, nbytes: int, count: int) -> None:
    arr = np.random.default_rng(0).random(nbytes // 8)
    keys = [key_of({"i": i, "n": nbytes}) for i in range(count)]
    t0 = time.perf_counter()
    for k in keys:
        store.put(k, meta={"node": "bench"}, arrays={"pred/test/x": arr})
    t_put = (time.perf_counter() - t0) / count
    t0 = time.perf_counter()
    for k in keys:
        assert store.has(k)
        x = store.array(k, "pred/test/x", mmap=False)
    t_hit = (time.perf_counter() - t0) / count
    t0 = time.perf_counter()
    for k in keys:
        store.array(k, "pred/test/x", mmap=True)
    t_map = (time.perf_counter() - t0) / count
    mb = nbytes / 2**20
    print(f"{mb:8.3f} MB x {count:4d}: write {1e3 * t_put:8.2f} ms ({mb / t_put:8.1f} MB/s)  "
          f"hit+read {1e3 * t_hit:8.2f} ms ({mb / t_hit:8.1f} MB/s)  hit+mmap {1e3 * t_map:6.2f} ms")
    assert x.nbytes == arr.nbytes


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        bench(store, 8 * 1024, 500)
        bench(store, 100 * 2**20, 5)


if __name__ == "__main__":
    main()
