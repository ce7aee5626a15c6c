"""Every experiment gives the same numbers on the process pool as in this process.

Each experiment that fits systems runs its quick profile twice, into two fresh stores: with the
local executor and with ``executor=processes`` (two worker processes, one torch thread each, as
the local run here), where fitting in the main process is made to fail. The reports must agree
number for number, and the stores hold the same fits: an analysis that fitted outside the
study's executor would fail here. The case study's parity run is its (slow-marked) fresh-store test
(tests/test_fixes_that_fail.py), which shares its local run with the rest of that module.
"""

from __future__ import annotations

import pytest
from parity import assert_same_numbers, no_fit_in_this_process

from entangle.cli import run
from entangle.store import Store

#: experiment -> extra overrides keeping its quick run short
EXPERIMENTS = {
    "toy_pipeline": [],
    "stress": [],
    "instability": [],
    "failure_directions": [],
    "misclassification_regions": [],
    "interventions": ["failing=detector"],
    "toy_decomposition": ["run_toys=[compatibility]"],
    "paper_toys": ["run_experiments=[entanglement]"],
}


#: the slowest quick runs (one to several minutes each on 2 cores): the pool's code path is the
#: one the others exercise, so CI keeps them out (run with -m slow)
SLOW = {"toy_decomposition", "paper_toys", "instability"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(EXPERIMENTS)])
def test_the_process_pool_gives_the_local_numbers(compose_cfg, tmp_path, monkeypatch, name):
    common = [f"experiment={name}", "profile=quick", *EXPERIMENTS[name]]
    run(compose_cfg(*common, f"store.root={tmp_path / 'local'}", run_dir=tmp_path / "l"))
    with no_fit_in_this_process(monkeypatch):
        run(compose_cfg(*common, "executor=processes", "executor.workers=2",
                        f"store.root={tmp_path / 'pool'}", run_dir=tmp_path / "p"))
    assert_same_numbers(tmp_path / "l", tmp_path / "p")
    fitted = [sorted(Store(tmp_path / which).keys()) for which in ("local", "pool")]
    assert fitted[0] == fitted[1] and fitted[0]          # the same fits, under the same keys
