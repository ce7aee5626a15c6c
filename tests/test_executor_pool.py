"""The process pool lives as long as its executor: one pool for a whole study, decomposition included."""

from __future__ import annotations

import gc

from sklearn.linear_model import LinearRegression

import entangle.executor as executor_mod
from entangle.data.toy_systems import ridge_chain
from entangle.decompose import Estimators, decomposition
from entangle.executor import ProcessExecutor
from entangle.node import SklearnNode
from entangle.store import Store
from entangle.study import Study


def decompose_tiny(study: Study) -> dict:
    est = Estimators(reference=SklearnNode(estimator=LinearRegression()), oracle={"up.pred": "data.x"})
    return decomposition(study, nodes={"v": est})["v"]["deltas"]


def test_a_decomposition_on_the_process_pool_opens_one_pool_and_gives_the_local_numbers(tmp_path, monkeypatch):
    opened, shut = [], []

    class CountedPool(executor_mod.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            opened.append(self)
            super().__init__(*args, **kwargs)

        def shutdown(self, *args, **kwargs):
            shut.append(self)
            super().shutdown(*args, **kwargs)

    monkeypatch.setattr(executor_mod, "ProcessPoolExecutor", CountedPool)
    systems = dict(old=ridge_chain(1000.0), new=ridge_chain(0.1), seeds=[0, 1])
    local = decompose_tiny(Study(store=Store(tmp_path / "l"), **systems))
    with Study(store=Store(tmp_path / "p"), executor=ProcessExecutor(workers=2), **systems) as study:
        assert decompose_tiny(study) == local     # several derived systems, every one through the pool
        assert len(opened) == 1 and not shut
    assert shut == opened                         # the end of the study shuts its pool down
    forgotten = ProcessExecutor(workers=1)
    forgotten.run(ridge_chain(1000.0), [0, 1], Store(tmp_path / "p"))   # all served from the store
    assert len(opened) == 2 and len(shut) == 1
    del forgotten
    gc.collect()
    assert shut == opened                         # a forgotten close: the pool goes with the executor
