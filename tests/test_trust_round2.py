"""Trust, round 2: nothing a user wrote is deleted, no good report is overwritten, and a wrong
config is said in one line before anything is fitted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from entangle.cli import RunDirGuard, _record_failure, run, run_job
from entangle.decompose import DecompositionError
from entangle.store import Store
from entangle.study import ConfigError, Study
from entangle.tasks import MANIFEST, RunDirError

QUICK = ("experiment=toy_pipeline", "profile=quick", "seeds=[0,1]")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "entangle", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("entangle: ")]


# -- 4. nothing a user wrote is deleted, no good result is overwritten ---------------------------

def test_overwrite_removes_only_what_entangle_wrote(compose_cfg, tmp_path):
    common = (*QUICK, f"store.root={tmp_path / 's'}")
    run_dir = tmp_path / "r"
    (run_dir / ".hydra").mkdir(parents=True)        # what Hydra writes before the task starts
    (run_dir / ".hydra" / "config.yaml").write_text("{}\n")
    (run_dir / "app.log").write_text("")
    run(compose_cfg(*common, run_dir=run_dir))
    listed = json.loads((run_dir / MANIFEST).read_text())["files"]
    assert {".hydra/config.yaml", "app.log", "report.json", "report.html"} <= set(listed)

    (run_dir / "figures").mkdir()                   # an earlier run's figure, in the manifest
    (run_dir / "figures" / "old.png").write_bytes(b"old")
    json.dump({"files": [*listed, "figures/old.png"]}, (run_dir / MANIFEST).open("w"))
    run(compose_cfg(*common, "overwrite=true", run_dir=run_dir))
    assert not (run_dir / "figures").exists() and (run_dir / "report.json").exists()

    notes = run_dir / "notes.md"                    # the user's notes beside the report
    notes.write_text("seed 1 looks odd")
    before = (run_dir / "report.json").read_bytes()
    with pytest.raises(RunDirError, match=r"holds files entangle did not write \(notes.md\)"):
        run(compose_cfg(*common, "overwrite=true", run_dir=run_dir))
    assert notes.read_text() == "seed 1 looks odd" and (run_dir / "report.json").read_bytes() == before


def test_a_users_folder_is_refused_as_run_dir_and_left_as_it_is(compose_cfg, tmp_path):
    """``hydra.run.dir=.`` in a user's project: their node module and conf/ are never touched."""
    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    (project / "conf" / "pipeline.yaml").write_text("nodes: {}\n")
    (project / "my_node.py").write_text("X = 1\n")
    for overwrite in ("false", "true"):
        with pytest.raises(RunDirError, match="conf/pipeline.yaml, my_node.py"):
            run(compose_cfg(*QUICK, f"overwrite={overwrite}", f"store.root={tmp_path / 's'}",
                            run_dir=project))
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*")) == \
        ["conf", "conf/pipeline.yaml", "my_node.py"]
    assert not (tmp_path / "s").exists()            # refused before any fit


def test_the_guard_refuses_before_hydra_writes_the_run_dir(tmp_path):
    """Hydra's ``.hydra/`` of a kept report must not be replaced by a refused run's config."""
    def config(overwrite: bool):
        return OmegaConf.create({"overwrite": overwrite, "hydra": {
            "run": {"dir": str(tmp_path / "r")}, "output_subdir": ".hydra", "job": {"name": "cli"}}})
    (tmp_path / "r" / ".hydra").mkdir(parents=True)
    (tmp_path / "r" / "cli.log").write_text("")
    RunDirGuard().on_run_start(config(False))      # only Hydra's files (a killed run): accepted
    (tmp_path / "r" / "report.json").write_text("{}")
    (tmp_path / "r" / MANIFEST).write_text(json.dumps({"files": ["report.json"]}))
    with pytest.raises(SystemExit) as exit_:
        RunDirGuard().on_run_start(config(False))
    assert exit_.value.code == 2
    RunDirGuard().on_run_start(config(True))


def test_rerunning_a_sweep_into_its_sweep_dir_is_refused_before_anything_is_written(tmp_path):
    sweep = tmp_path / "sweep"
    good = {"changed": "upstream", "nodes": {"upstream": {"verdict": "improved"}}}
    for job in ("0", "1"):
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "config.yaml").write_text("old: config\n")
        (sweep / job / "report.json").write_text(json.dumps(good))
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    proc = _cli("--multirun", *QUICK, f"store.root={tmp_path / 's'}", f"hydra.sweep.dir={sweep}",
                "change.set.estimator.alpha=1.0,-5.0", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert _errors(proc.stderr) == [
        f"entangle: error: the sweep dir {sweep} already holds the reports of an earlier sweep "
        "(0/report.json, 1/report.json): choose another (hydra.sweep.dir=DIR) or pass overwrite=true "
        "to replace them"]
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "s").exists()


def test_a_failing_sweep_job_never_writes_over_a_report(compose_cfg, tmp_path):
    cfg = compose_cfg(*QUICK, run_dir=tmp_path / "job")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "report.json").write_text('{"nodes": {}}')
    _record_failure(cfg, RuntimeError("boom"))
    assert (tmp_path / "job" / "report.json").read_text() == '{"nodes": {}}'
    assert not (tmp_path / "job" / "report.html").exists()


# -- 5. config errors before any fit, in one line -------------------------------------------------

@pytest.mark.parametrize("override, error, match", [
    ("+decomposition.down_a.oracel={}", DecompositionError,
     r"decomposition.down_a: unknown field\(s\) \['oracel'\]"),
    ("+decomposition.down_a.large_split=larg", DecompositionError,
     r"decomposition.down_a: estimators field 'large_split': 'larg' is not a split of the system"),
    ("+decomposition.dwn_a.large_split=train", ConfigError, r"decomposition.dwn_a: .* has no node 'dwn_a'"),
    ("+flips.outcomes.dwn_b={kind:loss}", ConfigError, r"flips.outcomes.dwn_b: .* has no node 'dwn_b'"),
])
def test_analysis_blocks_are_checked_when_the_study_is_built(compose_cfg, tmp_path, override, error,
                                                             match):
    cfg = compose_cfg(*QUICK, f"store.root={tmp_path / 's'}", override)
    with pytest.raises(error, match=match):
        Study.from_config(cfg)


def test_a_wrong_decomposition_exits_2_in_one_line_before_any_fit(compose_cfg, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_job(compose_cfg(*QUICK, f"store.root={tmp_path / 's'}", "+decomposition.down_a.oracel={}"))
    assert exit_.value.code == 2
    assert _errors(capsys.readouterr().err) == [
        "entangle: error: decomposition.down_a: unknown field(s) ['oracel'] (expected ['clip_reference', "
        "'l_star', 'large_split', 'oracle', 'reference', 'upstreams'])"]
    assert not list(Store(tmp_path / "s").keys())


def test_a_decomposition_turned_off_is_not_checked_for_its_splits(compose_cfg, tmp_path):
    cfg = compose_cfg(*QUICK, f"store.root={tmp_path / 's'}", "+decomposition.down_a.large_split=large",
                      "+decompose=false")
    assert Study.from_config(cfg).changed == "upstream"


@pytest.mark.parametrize("where", ["experiment", "pipeline"])
def test_a_yaml_file_with_a_tab_is_one_line_naming_file_line_and_column(tmp_path, where):
    conf = tmp_path / "conf"
    (conf / where).mkdir(parents=True)
    bad = conf / where / "bad.yaml"
    if where == "experiment":
        bad.write_text("# @package _global_\ntask: entangle.tasks.study.run\nchange:\n\tnode: upstream\n")
        args = ["experiment=bad"]
    else:
        bad.write_text("splits: [train, test]\nnodes:\n  data:\n\t  _target_: x\n")
        args = ["experiment=toy_pipeline", "pipeline=bad"]
    proc = _cli("--config-dir", str(conf), *args, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"entangle: error: {bad}:4:1: found a tab character where YAML allows none (indent with spaces)"]


def _numbers(report: dict) -> dict:
    """What a report says, without timings, paths and store counts."""
    return json.loads(json.dumps({k: report[k] for k in ("changed", "seeds", "nodes", "self_defeating")}))


def test_an_interrupt_says_what_is_kept_and_the_same_command_resumes(compose_cfg, tmp_path, capsys,
                                                                    monkeypatch):
    store = tmp_path / "s"
    cfg = compose_cfg(*QUICK, f"store.root={store}", run_dir=tmp_path / "r")
    put = Store.put
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return put(self, *args, **kwargs)

    monkeypatch.setattr(Store, "put", interrupted)
    with pytest.raises(SystemExit) as exit_:
        run_job(cfg)
    assert exit_.value.code == 130
    assert _errors(capsys.readouterr().err) == [
        f"entangle: interrupted: 3 fits are kept in the store ({store}); the same command resumes from them"]
    monkeypatch.setattr(Store, "put", put)

    resumed = run(cfg)                               # the same command, the same run dir
    assert resumed["store"]["hits"] >= 3
    fresh = run(compose_cfg(*QUICK, f"store.root={tmp_path / 'fresh'}", run_dir=tmp_path / "u"))
    assert _numbers(resumed) == _numbers(fresh)
    assert _numbers(json.loads((tmp_path / "r" / "report.json").read_text())) == _numbers(fresh)


def test_one_seed_is_refused_for_an_improvement_study_but_not_for_one_system(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^seeds: .*at least 2 seeds .*one seed gives none.*got \[0\]"):
        Study.from_config(compose_cfg(*QUICK, "seeds=[0]", f"store.root={tmp_path / 's'}"))
    one = Study.from_config(compose_cfg(*QUICK, "seeds=[0]", "change.node=null", f"store.root={tmp_path / 's'}"))
    assert one.seeds == [0] and one.changed is None


@pytest.mark.parametrize("name", ["../RESULTS.md", "sub/RESULTS.md", "RESULTS.txt", ""])
def test_a_bad_results_file_exits_2_in_one_line_before_any_fit(compose_cfg, tmp_path, capsys, name):
    """write_results puts the table under experiments/NAME/; a results_file that would land
    elsewhere, or is no Markdown file, is refused before anything is fitted or written."""
    with pytest.raises(SystemExit) as exit_:
        run_job(compose_cfg(*QUICK, f"store.root={tmp_path / 's'}", "write_results=true",
                            f"results_file='{name}'"))
    assert exit_.value.code == 2
    shown = repr(name) if name else "''"
    assert _errors(capsys.readouterr().err) == [
        f"entangle: error: results_file: {shown} must be a file name ending in .md, without a folder "
        "(it is written under experiments/toy_pipeline/)"]
    assert not list(Store(tmp_path / "s").keys())


def test_results_file_names_where_the_table_goes(compose_cfg):
    from entangle.tasks import results_path
    default = results_path(compose_cfg(*QUICK), "toy_pipeline")
    assert default.parts[-3:] == ("experiments", "toy_pipeline", "RESULTS.md")
    own = compose_cfg("experiment=paper_toys", "profile=paper_epochs")
    assert results_path(own, "paper_toys").name == "RESULTS_paper_epochs.md"
