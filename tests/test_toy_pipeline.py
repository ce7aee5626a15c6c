"""The toy_pipeline experiment end to end: report contract, flags and the store contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from entangle.cli import run

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_report_contract_flag_and_store_reuse(compose_cfg, tmp_path):
    store = f"store.root={tmp_path / 'store'}"
    cfg = compose_cfg("experiment=toy_pipeline", "profile=quick", store, run_dir=tmp_path / "r1")
    report = run(cfg)
    on_disk = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert on_disk["changed"] == "upstream" and on_disk["seeds"] == [0, 1, 2]
    for name in ("upstream", "down_a", "down_b"):
        node = on_disk["nodes"][name]
        assert set(node) >= {"metric", "higher_is_better", "old", "new", "delta_mean", "delta_ci", "verdict"}
        assert len(node["old"]) == len(node["new"]) == 3
        assert node["verdict"] in {"improved", "worse", "noise"}
    assert on_disk["self_defeating"] == [{"upstream": "upstream", "downstream": "down_a"}]
    assert on_disk["nodes"]["down_b"]["verdict"] == "improved"  # harmless for the other downstream
    assert report["store"]["misses"] == 18
    for fig in on_disk["figures"]:
        assert (tmp_path / "r1" / fig).stat().st_size > 1000

    # same command again: nothing recomputed, same numbers
    again = run(compose_cfg("experiment=toy_pipeline", "profile=quick", store, run_dir=tmp_path / "r2"))
    assert again["store"]["misses"] == 0 and again["store"]["hits"] == 18
    assert again["nodes"] == report["nodes"]

    # changing only a leaf's option: everything upstream of it is served from the store
    leaf = run(compose_cfg("experiment=toy_pipeline", "profile=quick", store,
                           "pipeline.nodes.down_b.epochs=4", run_dir=tmp_path / "r3"))
    assert leaf["store"] == {**leaf["store"], "hits": 12, "misses": 6}


def test_seeds_override_and_other_seed_counts(compose_cfg, tmp_path):
    cfg = compose_cfg("experiment=toy_pipeline", "profile=quick", "seeds=[3,4]",
                      f"store.root={tmp_path / 's'}")
    report = run(cfg)
    assert report["seeds"] == [3, 4]
    assert all(len(n["old"]) == 2 for n in report["nodes"].values())


def _cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "entangle", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_cli_bad_input_gives_one_clear_message(tmp_path):
    common = ["experiment=toy_pipeline", "profile=quick", f"store.root={tmp_path / 's'}",
              f"hydra.run.dir={tmp_path / 'run'}"]
    cases = {
        "pipeline.nodes.upstream._target_=entangle.node.Nope":
            "node 'upstream', field '_target_' (entangle.node.Nope)",
        "pipeline.nodes.down_a.inputs.s=upstreem.pred":
            "reference 'upstreem.pred' names no node 'upstreem' (did you mean 'upstream'?)",
        "pipeline.nodes.upstream.inputs.x=down_a.pred": "cycle: ",
        "~pipeline.nodes.upstream.estimator": "missing 1 required keyword-only argument: 'estimator'",
    }
    for override, expected in cases.items():
        proc = _cli(*common, override, cwd=tmp_path)
        assert proc.returncode == 2, (override, proc.stderr)
        assert expected in proc.stderr, (override, proc.stderr)
        assert "pipeline/toy.yaml" in proc.stderr
        assert "Traceback" not in proc.stderr
    proc = _cli("experiment=no_such_experiment", cwd=tmp_path)
    assert proc.returncode != 0 and "Could not find 'experiment/no_such_experiment'" in proc.stderr
    proc = _cli(*common, "profile=huge", cwd=tmp_path)   # a profile is a config group: Hydra says so
    assert proc.returncode != 0 and "Could not find 'profile/huge'" in proc.stderr
    assert "Available options in 'profile'" in proc.stderr and "quick" in proc.stderr
