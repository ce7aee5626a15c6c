"""Store: write and hit latency and throughput for small and 100 MB artifacts, and what checking
checksums on read costs.

    python experiments/bench_store.py

Every entry's files are checked against the checksums in its ``meta.json`` the first time a
process reads it (a corrupt entry is refitted, never read); later reads in the same process use
the verified entry. The "first read" columns open a new :class:`Store` per entry (what a new
process pays), the "again" columns reuse one (what every later read pays).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from entangle.hashing import key_of
from entangle.store import Store


def bench(root: str, nbytes: int, count: int) -> None:
    arr = np.random.default_rng(0).random(nbytes // 8)
    keys = [key_of({"i": i, "n": nbytes}) for i in range(count)]
    store = Store(root)
    t0 = time.perf_counter()
    for k in keys:
        store.put(k, meta={"node": "bench"}, arrays={"pred/test/x": arr})
    t_put = (time.perf_counter() - t0) / count

    t0 = time.perf_counter()
    for k in keys:                     # a new process: the checksums are verified first
        fresh = Store(root)
        assert fresh.has(k)
        fresh.array(k, "pred/test/x", mmap=True)
    t_first = (time.perf_counter() - t0) / count
    t0 = time.perf_counter()
    for k in keys:                     # the same process again: verified already
        assert store.has(k)
        x = store.array(k, "pred/test/x", mmap=False)
    t_hit = (time.perf_counter() - t0) / count
    t0 = time.perf_counter()
    for k in keys:
        store.array(k, "pred/test/x", mmap=True)
    t_map = (time.perf_counter() - t0) / count
    mb = nbytes / 2**20
    print(f"{mb:8.3f} MB x {count:4d}: write {1e3 * t_put:8.2f} ms ({mb / t_put:7.1f} MB/s)  "
          f"first read (checksums) {1e3 * t_first:8.2f} ms ({mb / t_first:7.1f} MB/s)  "
          f"again: read {1e3 * t_hit:7.2f} ms, mmap {1e3 * t_map:5.2f} ms")
    assert x.nbytes == arr.nbytes


def main() -> None:
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        bench(tmp, 8 * 1024, 500)
        bench(tmp, 100 * 2**20, 5)


if __name__ == "__main__":
    main()
