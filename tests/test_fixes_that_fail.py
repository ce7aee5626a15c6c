"""The case study end to end at profile=quick: the report contract, figures, RESULTS.md, reruns.

The numbers of a quick run are meaningless (a few scenes, one epoch); what is tested is that every
part of the experiment runs and lands where the issue says, and that a rerun is served from the
store.
"""

from __future__ import annotations

import json

import pytest

from entangle.cli import run
from entangle.stats import IDENTICAL

NODES = ("stereo", "car", "pedestrian")


@pytest.fixture(scope="module")
def quick(tmp_path_factory, compose_cfg_module):
    from parity import one_torch_thread
    tmp = tmp_path_factory.mktemp("ftf")
    store = f"store.root={tmp / 'store'}"
    with one_torch_thread():   # as the pool's workers, for the fresh-store parity test
        first = run(compose_cfg_module("experiment=fixes_that_fail", "profile=quick", store, run_dir=tmp / "r1"))
    return tmp, store, first


def test_report_contract(quick):
    tmp, _, report = quick
    on_disk = json.loads((tmp / "r1" / "report.json").read_text())
    assert on_disk["changed"] == "stereo" and on_disk["seeds"] == [0, 1]
    for name in NODES:
        node = on_disk["nodes"][name]
        assert len(node["old"]) == len(node["new"]) == 2
        assert node["verdict"] in {"improved", "worse", "noise"}
    assert on_disk["nodes"]["stereo"]["metric"] == "depth_mae"
    assert on_disk["nodes"]["car"]["metric"] == on_disk["nodes"]["pedestrian"]["metric"] == "bev_ap_moderate"
    # references: oracle has zero depth error; both carry every node
    assert set(on_disk["references"]) == {"oracle", "sgbm"}
    assert on_disk["references"]["oracle"]["stereo"]["mean"] == 0.0
    assert on_disk["references"]["sgbm"]["stereo"]["mean"] > 0.0
    # depth error per distance bin for both losses and the references, and the paired deltas
    systems = on_disk["depth_by_distance"]["systems"]
    assert set(systems) == {"disparity loss", "depth loss", "oracle", "sgbm"}
    assert on_disk["depth_by_distance"]["bins"][0] == "0-10"
    assert {"near", "far"} <= set(on_disk["depth_loss_vs_disparity_loss"])
    # the outcomes declared before the run, each with its paired delta, verdict and power
    declared = on_disk["declared_outcomes"]
    for det in ("car", "pedestrian"):
        assert list(on_disk["outcomes"][det]) == declared["detection"][det]
        for key, row in on_disk["outcomes"][det].items():
            assert len(row["old"]) == 2 and row["verdict"] in {"improved", "worse", "noise", "undefined"}
            if row["verdict"] != "undefined":   # no spread over seeds: identical, no smallest effect
                assert row["detectable_effect"] is None if row["identical"] else row["detectable_effect"] > 0
    # the paper's four claims, each checked
    claims = on_disk["paper"]
    assert len(claims) == 4 and all(isinstance(c["holds"], bool) for c in claims)
    assert claims[3]["metric"] == declared["primary"]["pedestrian"]
    # the gate: object-pixel error per class and bin, the oracle at zero, SGBM not; a verdict
    gate = on_disk["gate"]
    assert set(gate["table"]["systems"]) == {"disparity loss", "depth loss", "oracle", "sgbm"}
    oracle = gate["table"]["systems"]["oracle"]
    cells = [c for per_bin in oracle.values() for c in per_bin.values() if c["n"]]
    assert cells and all(c["median"] == 0.0 for c in cells)
    assert isinstance(gate["verdict"]["passed"], bool) and gate["verdict"]["reference"] == "sgbm"
    # every seed of each learned system is checked (per-seed medians), and the per-bin paired
    # difference depth loss − disparity loss over the two seeds is reported
    cell = gate["table"]["systems"]["depth loss"]["car"]["10-20"]
    assert len(cell["medians"]) == 2 or cell["n"] == 0
    assert set(gate["paired"]) == {"car", "pedestrian"} and isinstance(gate["nothing_to_test"], bool)
    for cells in gate["paired"].values():
        for c in cells.values():
            assert c["better"] in {"depth loss", "disparity loss", "neither (noise)"}
    # the instrument's gate, first: the detectors on ground-truth depth against their floors
    ceiling = on_disk["ceiling"]
    assert ceiling["detectors"]["car"]["floor"] == 0.6 and ceiling["detectors"]["pedestrian"]["floor"] == 0.4
    assert ceiling["detectors"]["car"]["metric"] == declared["primary"]["car"]
    assert isinstance(ceiling["passed"], bool)
    # the decomposition of both detectors' risk changes
    for det in ("car", "pedestrian"):
        terms = on_disk["decomposition"][det]
        assert "sentence" in terms and terms["sentence"]
    # churn: depth loss vs disparity loss against seed-to-seed, per node; the pedestrian's
    # negative flips get a failure direction (or say why not)
    assert set(on_disk["flips"]["churn"]["nodes"]) == set(NODES)
    for name in NODES:
        assert {"version", "seed_old", "seed_new"} <= set(on_disk["flips"]["churn"]["nodes"][name])
    direction = on_disk["flips"]["flip_direction"]
    assert direction["node"] == "pedestrian" and ("aligned_with" in direction or direction["skipped"])
    assert on_disk["store"]["misses"] == report["store"]["misses"] > 0


def test_figures_and_results_table(quick):
    tmp, _, report = quick
    run_dir = tmp / "r1"
    for fig in ("depth_by_distance.png", "outcomes_old_vs_new.png", "system.png"):
        assert fig in report["figures"] and (run_dir / fig).stat().st_size > 1000
    assert any("decomposition" in f for f in report["figures"])
    text = (run_dir / "RESULTS.md").read_text()
    assert "python -m entangle experiment=fixes_that_fail profile=quick" in text
    assert "| stereo | depth_mae" in text and "oracle" in text and "sgbm" in text
    # a declared outcome whose delta is the same on every seed says so instead of an effect of 0
    rows = [r for det in report["outcomes"].values() for r in det.values() if r["verdict"] != "undefined"]
    if any(r["identical"] for r in rows):
        assert f"| {IDENTICAL} |" in text
    # the gate comes first, the declared outcomes before any number, then the paper's table
    order = [text.index(h) for h in ("## Gate 1, the instrument", "## Gate 2, the upstream",
                                     "## Outcomes declared before the run",
                                     "## The paper's result, side by side", "## Declared detection outcomes")]
    assert order == sorted(order)


def test_rerun_is_served_from_the_store(quick, compose_cfg_module):
    tmp, store, first = quick
    again = run(compose_cfg_module("experiment=fixes_that_fail", "profile=quick", store, run_dir=tmp / "r2"))
    assert again["store"]["misses"] == 0 and again["store"]["hits"] > 0
    assert again["nodes"] == first["nodes"]
    assert again["references"] == first["references"]


@pytest.mark.slow   # a second full quick run (about a minute); the pool's parity is in CI through
                    # tests/test_executor_parity.py
def test_fresh_store_on_the_process_pool_gives_the_same_numbers(quick, compose_cfg_module, tmp_path,
                                                                 monkeypatch):
    """Determinism on CPU, and the executor everywhere: the same command on an empty store, run
    by a pool of worker processes (nothing may be fitted in this process), reproduces every
    number of the local run."""
    from parity import assert_same_numbers, no_fit_in_this_process
    tmp, _, first = quick
    with no_fit_in_this_process(monkeypatch):
        fresh = run(compose_cfg_module("experiment=fixes_that_fail", "profile=quick", "executor=processes",
                                       "executor.workers=2", f"store.root={tmp_path / 'fresh'}",
                                       run_dir=tmp_path / "r"))
    assert fresh["store"]["misses"] == first["store"]["misses"]   # everything fitted again
    assert_same_numbers(tmp / "r1", tmp_path / "r")


def test_case_study_report_in_chromium(quick):
    """The case study's report.html in a real browser: no console errors, no request leaving the
    file, every figure decoded, and the answer stated on the page (skips without Chromium)."""
    from test_browser import LAUNCH_ARGS, chromium_path, open_and_check
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found: install the system package (apt-get install chromium)")
    tmp, _, _ = quick
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=LAUNCH_ARGS)
        try:
            facts = open_and_check(browser, tmp / "r1" / "report.html", "case_study.png")
        finally:
            browser.close()
    assert len(facts["images"]) >= 4
    assert "stereo" in facts["answer"] and "self-defeating" in facts["answer"]


@pytest.mark.parametrize("override, message", [
    ("flips.outcomes.car.iou=null", "flips.outcomes.car.iou: kind 'detected' needs the IoU"),
    ("flips.outcomes.pedestrian.kind=boxes", "flips.outcomes.pedestrian.kind must be auto, label, loss or detected"),
])
def test_a_wrong_outcome_is_a_config_error_before_anything_is_fitted(compose_cfg, tmp_path, override, message):
    from entangle.store import Store
    from entangle.study import ConfigError
    with pytest.raises(ConfigError, match=message):
        run(compose_cfg("experiment=fixes_that_fail", "profile=quick", f"store.root={tmp_path / 's'}", override))
    assert not list(Store(tmp_path / "s").keys())     # failed before the first fit


def test_references_do_not_inherit_a_target_only_the_refiner_reads(compose_cfg, tmp_path):
    """Weighting the refiner's loss by object pixels wires it the world's labels; the oracle and
    SGBM systems that replace it take no labels, and must still build (not fail on its wiring)."""
    from entangle.study import Study
    cfg = compose_cfg("experiment=fixes_that_fail", "profile=quick", f"store.root={tmp_path / 's'}",
                      "+pipeline.nodes.stereo.object_weight=4", "+pipeline.nodes.stereo.targets.labels=world.labels")
    study = Study.from_config(cfg)
    assert study.old.specs["stereo"].targets == {"disparity": "world.disparity", "labels": "world.labels"}
    for name, system in study.references.items():
        assert "labels" not in system.specs["stereo"].targets, name
    assert study.references["oracle"].specs["stereo"].targets == {"disparity": "world.disparity"}
