"""Every experiment gives the same numbers on the process pool as in this process.

Each experiment that fits systems runs its quick profile twice, into two fresh stores: with the
local executor and with ``executor=processes`` (two worker processes, one torch thread each, as
the local run here). The reports must agree number for number: an analysis that fitted outside
the study's executor would show up as a difference (or as fits the pool never saw).
"""

from __future__ import annotations

import json
import math

import pytest

from entangle.cli import run

#: experiment -> extra overrides keeping its quick run short
EXPERIMENTS = {
    "toy_pipeline": [],
    "stress": [],
    "instability": [],
    "failure_directions": [],
    "misclassification_regions": [],
    "interventions": [],
    "toy_decomposition": ["run_toys=[upstream,compatibility]"],
    "paper_toys": ["run_experiments=[entanglement]"],
    "fixes_that_fail": ["seeds=[0,1]"],
}
#: keys whose values depend on the run, not on the numbers: timings, paths, store counts
VOLATILE = {"wall_time_s", "store", "figures", "machine", "fit_seconds", "fit_seconds_per_model",
            "teacher_fit_seconds", "fit_seconds_plain", "fit_seconds_distilled", "seconds"}


def _numbers(value, path="report"):
    """Flatten a report into {path: value}, leaving out volatile keys."""
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in VOLATILE:
                out.update(_numbers(v, f"{path}.{k}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_numbers(v, f"{path}[{i}]"))
    else:
        out[path] = value
    return out


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_the_process_pool_gives_the_local_numbers(compose_cfg, tmp_path, monkeypatch, name):
    from entangle.executor import Run
    common = [f"experiment={name}", "profile=quick", *EXPERIMENTS[name]]
    local = run(compose_cfg(*common, f"store.root={tmp_path / 'local'}", run_dir=tmp_path / "l"))

    def fitted_here(self, node):   # the pool's workers are other processes: they do not see this
        raise AssertionError(f"{self.where(node)} was fitted in the main process, not by the executor")

    monkeypatch.setattr(Run, "_fit_and_publish", fitted_here)
    pooled = run(compose_cfg(*common, "executor=processes", "executor.workers=2",
                             f"store.root={tmp_path / 'pool'}", run_dir=tmp_path / "p"))
    a = _numbers(json.loads((tmp_path / "l" / "report.json").read_text()))
    b = _numbers(json.loads((tmp_path / "p" / "report.json").read_text()))
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k] != b[k] and not (isinstance(a[k], float) and isinstance(b[k], float)
                                                   and math.isnan(a[k]) and math.isnan(b[k]))]
    assert not differ, f"{len(differ)} numbers differ, e.g. {[(k, a[k], b[k]) for k in differ[:5]]}"
    assert local["store"]["misses"] == pooled["store"]["misses"] > 0
