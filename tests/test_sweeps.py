"""Hydra sweeps: a failing job is recorded and the sweep goes on; summarize gathers the jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from entangle.cli import run
from entangle.store_cli import main as store_main


def test_multirun_records_failure_and_summarize_lists_it(tmp_path, compose_cfg, capsys):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "entangle", "--multirun", "experiment=toy_pipeline", "profile=quick",
         "seeds=[0,1]", f"store.root={tmp_path / 's'}", f"hydra.sweep.dir={sweep}",
         "change.set.estimator.alpha=1.0,-5.0"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    failed = json.loads((sweep / "1" / "report.json").read_text())
    assert failed["status"] == "failed" and "alpha" in failed["error"]
    ok = json.loads((sweep / "0" / "report.json").read_text())
    assert ok["self_defeating"] == [{"upstream": "upstream", "downstream": "down_a"}]

    report = run(compose_cfg("experiment=summarize", f"sweep_dir={sweep}"))
    assert [j["status"] for j in report["jobs"]] == ["ok", "failed"]
    assert report["failures"][0]["overrides"][-1] == "change.set.estimator.alpha=-5.0"
    table = (tmp_path / "run" / "summary.md").read_text()
    assert "upstream->down_a" in table and "| failed |" in table

    # the store command sees what the sweep stored, and verifies it clean
    assert store_main(["verify", "--root", str(tmp_path / "s")]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


def test_sweeps_through_the_joblib_and_submitit_launchers(tmp_path):
    """The same sweep through hydra-joblib-launcher (local processes) and hydra-submitit-launcher
    (its local backend: the code path of a Slurm sweep without Slurm): a failing job is recorded
    and the others finish."""
    import pytest
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    for launcher, module, extra in (("joblib", "hydra_plugins.hydra_joblib_launcher", ["hydra.launcher.n_jobs=2"]),
                                    ("submitit_local", "hydra_plugins.hydra_submitit_launcher",
                                     ["hydra.launcher.timeout_min=10"])):
        pytest.importorskip(module)
        sweep = tmp_path / launcher
        proc = subprocess.run(
            [sys.executable, "-m", "entangle", "--multirun", "experiment=toy_pipeline", "profile=quick",
             "seeds=[0,1]", f"store.root={tmp_path / 's'}", f"hydra.sweep.dir={sweep}",
             f"hydra/launcher={launcher}", *extra, "change.set.estimator.alpha=1.0,-5.0"],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        statuses = {json.loads((sweep / str(i) / "report.json").read_text()).get("status", "ok") for i in (0, 1)}
        assert statuses == {"ok", "failed"}, launcher
