"""Hydra sweeps: a failing job is recorded and the sweep goes on; summarize gathers the jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from entangle.cli import run  # noqa: E402
from entangle.store_cli import main as store_main  # noqa: E402


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


COMMON = ["experiment=toy_pipeline", "profile=quick", "store.root=/store"]


def _node(metric: str, higher: bool, delta: float, verdict: str) -> dict:
    return {"metric": metric, "higher_is_better": higher, "old": [1.0, 1.0], "new": [1.0, 1.0],
            "delta_mean": delta, "delta_ci": [delta - 0.1, delta + 0.1], "verdict": verdict}


def fake_sweep(root):
    """Three jobs over alpha sharing their other overrides: two finish (nodes on an MSE and an
    accuracy scale, one flagged self-defeating), one fails."""
    jobs = {"0": ("alpha=0.1", {"upstream": _node("mse", False, -10.0, "improved"),
                                "clf": _node("accuracy", True, -0.02, "worse")}),
            "1": ("alpha=10", {"upstream": _node("mse", False, -0.5, "noise"),
                               "clf": _node("accuracy", True, 0.01, "improved")}),
            "2": ("alpha=-5", None)}
    for job, (alpha, nodes) in jobs.items():
        (root / job / ".hydra").mkdir(parents=True)
        overrides = [COMMON[0], COMMON[1], f"change.set.estimator.{alpha}", COMMON[2]]
        (root / job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        report = ({"status": "failed", "error": "alpha must be positive"} if nodes is None else
                  {"changed": "upstream", "nodes": nodes, "self_defeating":
                   [{"upstream": "upstream", "downstream": "clf"}] if job == "0" else []})
        (root / job / "report.json").write_text(json.dumps(report))


def test_split_overrides_keeps_only_what_differs():
    from entangle.report.format import split_overrides

    common, varying = split_overrides([["a=1", "b=2", "c=3"], ["a=1", "b=5", "c=3"], ["a=1", "c=3", "d=4"]])
    assert common == ["a=1", "c=3"]
    assert varying == [["b=2"], ["b=5"], ["d=4"]]
    assert split_overrides([]) == ([], [])


def test_summary_labels_jobs_by_what_differs_and_gives_each_node_its_axes(tmp_path, compose_cfg):
    """summary.png's data: one panel per node (own metric, own axes), points coloured by verdict,
    jobs named by the override that varies, the common ones stated once; the table and the page
    say the same."""
    from entangle.report.html import render_html
    from entangle.report.sweep import summary_figure, sweep_panels
    from entangle.tasks.summarize import collect

    fake_sweep(tmp_path / "sweep")
    rows = collect(tmp_path / "sweep")
    data = sweep_panels(rows)
    assert [p["node"] for p in data["panels"]] == ["upstream", "clf"]
    assert [p["metric"] for p in data["panels"]] == ["mse", "accuracy"]
    assert data["labels"] == ["0.1", "10"] and data["xlabel"] == "change.set.estimator.alpha"
    assert data["common"] == COMMON and data["failed"] == ["change.set.estimator.alpha=-5"]
    clf = data["panels"][1]["points"]
    assert [p["verdict"] for p in clf] == ["self-defeating", "improved"]
    assert clf[0]["lo"] == pytest.approx(-0.12) and clf[0]["hi"] == pytest.approx(0.08)

    fig = summary_figure(rows)
    assert [ax.get_title() for ax in fig.axes] == ["upstream", "clf"]   # one axes per node
    assert not fig.axes[0].get_shared_y_axes().joined(fig.axes[0], fig.axes[1])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.1", "10"]
    plt.close(fig)

    report = run(compose_cfg("experiment=summarize", f"sweep_dir={tmp_path / 'sweep'}"))
    assert report["common_overrides"] == COMMON and report["figures"] == ["summary.png"]
    assert report["jobs"][0]["clf.ci"] == pytest.approx([-0.12, 0.08])
    table = (tmp_path / "run" / "summary.md").read_text()
    assert table.count("profile=quick") == 1                            # stated once, above
    assert "| 1 | change.set.estimator.alpha=10 | ok |" in table
    page = " ".join(render_html(report, tmp_path / "run").split())
    assert "Every job ran with <code>experiment=toy_pipeline profile=quick store.root=/store</code>" in page
    assert "<td><code>change.set.estimator.alpha=10</code></td>" in page
    assert "Self-defeating in 1 of them: change.set.estimator.alpha=0.1: upstream-&gt;clf." in page
