"""Executors: the process pool gives the local executor's results, bit for bit, and counts hits."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, Ridge

from entangle.data.toys import GaussianSource
from entangle.executor import LocalExecutor, ProcessExecutor, RayExecutor, Run, stored_dependencies
from entangle.node import FunctionNode, SklearnNode
from entangle.store import Store
from entangle.system import NodeSpec, System


def negate(s):
    return -np.asarray(s)


def two_branch_system() -> System:
    data = GaussianSource(variances=[4.0, 1.0], weights={"s": [1.0, 2.0], "a": [1.0, 0.0], "b": [0.0, 1.0]},
                          noise={"s": 0.3}, sizes={"train": 200, "test": 100})
    return System({
        "data": data,
        "left": NodeSpec(SklearnNode(estimator=Ridge(alpha=3.0)), inputs={"x": "data.x"}, targets={"y": "data.s"}),
        "neg": NodeSpec(FunctionNode(fn=negate), inputs={"s": "left.pred"}),
        "right": NodeSpec(SklearnNode(estimator=Ridge(alpha=30.0)), inputs={"x": "data.x"}, targets={"y": "data.s"}),
        "a": NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"u": "neg.out"}, targets={"y": "data.a"},
                      output=True),
        "b": NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"u": "right.pred"}, targets={"y": "data.b"},
                      output=True),
    })


def test_stored_dependencies_skip_functions_and_sources():
    deps = stored_dependencies(two_branch_system())
    assert deps == {"left": set(), "right": set(), "a": {"left"}, "b": {"right"}}


def test_process_pool_matches_local_bit_for_bit(tmp_path):
    system = two_branch_system()
    local_store, pool_store = Store(tmp_path / "l"), Store(tmp_path / "p")
    local = LocalExecutor().run(system, [0, 1], local_store)
    pooled = ProcessExecutor(workers=2).run(system, [0, 1], pool_store)
    assert pool_store.stats.misses == 8 and pool_store.stats.hits == 0
    for seed in (0, 1):
        for name in ("left", "right", "a", "b"):
            assert pooled[seed].metrics(name) == local[seed].metrics(name)
            np.testing.assert_array_equal(pooled[seed].losses(name), local[seed].losses(name))
    assert pool_store.stats.hits == 0  # reading results does not count as lookups
    again = Store(tmp_path / "p")
    ProcessExecutor(workers=2).run(system, [0, 1], again)
    assert (again.stats.hits, again.stats.misses) == (8, 0)


def test_failing_node_in_a_worker_is_reported_and_stored_work_kept(tmp_path):
    system = two_branch_system().replace("b", SklearnNode(estimator=Ridge(alpha=-1.0), task="regressor"))
    store = Store(tmp_path / "s")
    executor = ProcessExecutor(workers=2)
    with pytest.raises(Exception, match="node 'b' \\(seed 0\\) failed while fitting"):
        executor.run(system, [0], store)
    assert store.has(system.keys(0)["right"])  # finished work survives the failure
    assert executor._pool is None              # the failed run's pool is shut down (a next run opens one)


def test_ray_requested_but_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)     # `import ray` fails, as without Ray
    with pytest.raises(RuntimeError, match=r"pip install 'entangle\[ray\]'"):
        RayExecutor().run(two_branch_system(), [0], Store(tmp_path / "s"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
def test_ray_matches_local(tmp_path):
    system = two_branch_system()
    local = LocalExecutor().run(system, [0], Store(tmp_path / "l"))
    remote = RayExecutor(num_cpus=2).run(system, [0], Store(tmp_path / "r"))
    for name in ("left", "right", "a", "b"):
        assert remote[0].metrics(name) == local[0].metrics(name)


def test_a_run_forgets_values_once_their_last_reader_is_done(tmp_path, monkeypatch):
    """A run holds what the next fits read, not all the system produced; reads after come back
    from the store, equal to what was published."""
    held = {}
    ensure = Run.ensure

    def spy(self, name):
        held.setdefault(name, {n for n, _ in self._values})   # when run_all reaches it
        ensure(self, name)

    monkeypatch.setattr(Run, "ensure", spy)
    store = Store(tmp_path)
    run = Run(two_branch_system(), 0, store).run_all()
    # order: data, left, neg, a, right, b; left and neg are read through a alone, which is done
    assert held["right"] == {"data"}
    assert held["b"] == {"data"}
    assert run._values == {}
    again = Run(two_branch_system(), 0, store)
    for name in ("left", "a", "b"):
        np.testing.assert_array_equal(run.values(name, "test")["pred"], again.values(name, "test")["pred"])
        assert run.metrics(name) == again.metrics(name)


_KILLED_PARENT = """
import time
from entangle.executor import ProcessExecutor
ex = ProcessExecutor(workers=2)
pool = ex._open()
futures = [pool.submit(time.sleep, 600) for _ in range(2)]
print(" ".join(str(pid) for pid in pool._processes), flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's reaper may be slow to collect it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_pool_workers_exit_when_the_main_process_is_killed():
    # a killed main runs no clean-up: its workers used to go on fitting queued nodes for hours
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PARENT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    workers = [int(pid) for pid in line.split()]
    assert len(workers) == 2, f"no worker pids printed: {line!r} {proc.stderr.read() if not line else ''}"
    assert all(_running(pid) for pid in workers)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 60
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if _running(pid)]
    assert not left, f"pool workers {left} still run 60 s after their main process was killed"
