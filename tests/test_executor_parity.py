"""Every experiment gives the same numbers on the process pool (and on Ray) as in this process.

Each experiment that fits systems runs its quick profile into fresh stores: with the local
executor, with ``executor=processes`` (two worker processes, one torch thread each, as the local
run here) and with ``executor=ray`` (a local cluster of two CPUs, started once for the module),
where fitting in the main process is made to fail. The reports must agree number for number,
and the stores hold the same fits: an analysis that fitted outside the study's executor would
fail here. The case study's parity run is its (slow-marked) fresh-store test
(tests/test_fixes_that_fail.py), which shares its local run with the rest of that module.
"""

from __future__ import annotations

import importlib.util

import pytest
from parity import assert_same_numbers, no_fit_in_this_process, one_torch_thread

from entangle.cli import run
from entangle.executor import RayExecutor
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
SLOW = {"toy_decomposition", "paper_toys", "instability", "misclassification_regions", "stress",
        "interventions"}


#: what runs on Ray in CI: its scheduling is the pool's (one code path), so one experiment shows
#: it end to end; the others on Ray run with -m slow
ON_RAY = {"toy_pipeline"}


@pytest.fixture(scope="module")
def local_run(compose_cfg_module, tmp_path_factory):
    """local_run(name) -> the folder of the experiment's local run (run once, shared by executors)."""
    done = {}

    def local(name):
        if name not in done:
            folder = tmp_path_factory.mktemp(f"local-{name}")
            with one_torch_thread():   # as each worker: torch's low bits depend on the thread count
                run(compose_cfg_module(f"experiment={name}", "profile=quick", *EXPERIMENTS[name],
                                       f"store.root={folder / 'store'}", run_dir=folder / "run"))
            done[name] = folder
        return done[name]

    return local


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster of two CPUs for the module (it takes seconds to start), started as
    ``executor=ray`` starts one."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install 'entangle[ray]')")
    import ray
    RayExecutor(num_cpus=2)._ray()
    yield
    ray.shutdown()


def check_parity(name, executor, compose_cfg, local, tmp_path, monkeypatch) -> None:
    """The experiment on ``executor`` (overrides) gives the local run's numbers and fits."""
    with no_fit_in_this_process(monkeypatch):
        run(compose_cfg(f"experiment={name}", "profile=quick", *EXPERIMENTS[name], *executor,
                        f"store.root={tmp_path / 'store'}", run_dir=tmp_path / "run"))
    assert_same_numbers(local / "run", tmp_path / "run")
    fitted = [sorted(Store(where).keys()) for where in (local / "store", tmp_path / "store")]
    assert fitted[0] == fitted[1] and fitted[0]          # the same fits, under the same keys


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(EXPERIMENTS)])
def test_the_process_pool_gives_the_local_numbers(compose_cfg, local_run, tmp_path, monkeypatch, name):
    check_parity(name, ["executor=processes", "executor.workers=2"], compose_cfg, local_run(name),
                 tmp_path, monkeypatch)


@pytest.mark.parametrize("name", [n if n in ON_RAY else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(EXPERIMENTS)])
def test_ray_gives_the_local_numbers(compose_cfg, local_run, ray_cluster, tmp_path, monkeypatch, name):
    check_parity(name, ["executor=ray", "executor.num_cpus=2"], compose_cfg, local_run(name),
                 tmp_path, monkeypatch)
