"""Helpers for the executor-parity checks: a report's numbers, and a run that may not fit in
this process."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

#: keys whose values depend on the run, not on the numbers: timings, paths, store counts, load
VOLATILE = {"wall_time_s", "store", "figures", "machine", "fit_seconds", "fit_seconds_per_model",
            "teacher_fit_seconds", "fit_seconds_plain", "fit_seconds_distilled", "seconds"}


def numbers(value, path="report") -> dict:
    """Flatten a report into {path: value}, leaving out volatile keys."""
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in VOLATILE:
                out.update(numbers(v, f"{path}.{k}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(numbers(v, f"{path}[{i}]"))
    else:
        out[path] = value
    return out


def assert_same_numbers(run_dir_a: Path, run_dir_b: Path) -> None:
    """The report.json of two runs hold the same numbers (NaN equals NaN), key for key."""
    a = numbers(json.loads((Path(run_dir_a) / "report.json").read_text()))
    b = numbers(json.loads((Path(run_dir_b) / "report.json").read_text()))
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:10]
    differ = [k for k in a if a[k] != b[k] and not (isinstance(a[k], float) and isinstance(b[k], float)
                                                   and math.isnan(a[k]) and math.isnan(b[k]))]
    assert not differ, f"{len(differ)} numbers differ, e.g. {[(k, a[k], b[k]) for k in differ[:5]]}"


@contextlib.contextmanager
def no_fit_in_this_process(monkeypatch):
    """Inside, fitting a node in this process fails: a pool's workers are other processes."""
    from entangle.executor import Run

    def fitted_here(self, node):
        raise AssertionError(f"{self.where(node)} was fitted in the main process, not by the executor")

    with monkeypatch.context() as m:
        m.setattr(Run, "_fit_and_publish", fitted_here)
        yield


@contextlib.contextmanager
def one_torch_thread():
    """Inside, this process uses one torch thread, as a pool's workers do (``executor.threads``):
    torch's low bits depend on the thread count, so a local run to compare with the pool pins it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
