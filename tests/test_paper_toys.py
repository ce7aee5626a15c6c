"""The paper's illustrative experiments on digits: the sources' splits and label noise, and the
paper_toys experiment end to end on one experiment (quick profile)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from entangle.cli import run
from entangle.data.paper_digits import SETUPS, PaperDigitsSource, flip_labels

SPLITS = ("up_train", "up_test", "train", "large", "test")


@pytest.mark.parametrize("setup", SETUPS)
def test_splits_are_disjoint_and_hold_the_setups_classes(setup):
    src = PaperDigitsSource(setup=setup)
    data = {s: src.load(s, 0) for s in SPLITS}
    rows = np.concatenate(list(src._indices(0).values()))
    assert len(rows) == len(np.unique(rows))                 # no image in two splits
    kept = {"loss_function": {1, 3, 7, 9}, "entanglement": {1, 6, 7}}.get(setup, set(range(10)))
    for s in SPLITS:
        assert set(np.unique(data[s]["digit"])) <= kept
    if setup == "data_distribution":   # the downstream sees only the two digits it separates
        for s in ("train", "large", "test"):
            assert set(np.unique(data[s]["digit"])) == {1, 7}
            assert set(np.unique(data[s]["pair"])) == {0, 1}
        assert set(np.unique(data["up_train"]["digit"])) == set(range(10))
    assert len(data["large"]["digit"]) > 2 * len(data["train"]["digit"])
    again = src.load("train", 0)
    assert np.array_equal(again["x"], data["train"]["x"])
    assert not np.array_equal(src.load("train", 1)["digit"], data["train"]["digit"])  # seeds resample


def test_loss_function_noise_swaps_half_of_each_pair_after_the_clean_fifth():
    src = PaperDigitsSource(setup="loss_function")
    d = src.load("up_train", 3)
    clean = int(round(0.2 * len(d["digit"])))
    assert np.array_equal(d["value"][:clean], d["value_clean"][:clean])
    dirty = slice(clean, None)
    swapped = d["value"][dirty] != d["value_clean"][dirty]
    pair13 = np.isin(d["digit"][dirty], (1, 3))
    assert swapped[pair13].mean() == pytest.approx(0.5, abs=0.02)
    assert set(np.unique(d["value"][dirty][swapped & pair13] + d["value_clean"][dirty][swapped & pair13])) == {4.0}
    assert np.array_equal(src.load("test", 3)["value"], src.load("test", 3)["value_clean"])
    none = PaperDigitsSource(setup="loss_function", dirty_share=0.0).load("up_train", 3)
    assert np.array_equal(none["value"], none["value_clean"])


def test_flip_labels_swaps_one_and_seven_on_the_hardest_samples():
    digit = np.array([1, 7, 6, 1, 7, 6])
    rank = np.array([0.1, 0.2, 0.0, 0.9, 0.45, 2.0])
    assert flip_labels(digit, rank, noise=0.0, positive=1).tolist() == [1, 0, 0, 1, 0, 0]
    # noise 0.5 flips ranks below 0.25: the first 1 and the first 7 (a 6 never changes)
    assert flip_labels(digit, rank, noise=0.5, positive=1).tolist() == [0, 1, 0, 1, 0, 0]
    assert flip_labels(digit, rank, noise=0.5, positive=7).tolist() == [1, 0, 0, 0, 1, 0]
    src = PaperDigitsSource(setup="entanglement")
    up = src.load("up_train", 0)
    ones_sevens = np.isin(up["digit"], (1, 7))
    assert (up["rank"][ones_sevens] < 1).all() and (up["rank"][~ones_sevens] == 2).all()
    assert (src.load("test", 0)["rank"] == 2).all()


def test_paper_toys_entanglement_quick(compose_cfg, tmp_path):
    cfg = compose_cfg("experiment=paper_toys", "profile=quick", "seeds=[0,1]",
                      "run_experiments=[entanglement]", f"store.root={tmp_path / 'store'}",
                      run_dir=tmp_path / "run")
    run(cfg)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (exp,) = report["experiments"]
    assert exp["name"] == "entanglement" and exp["knob"]["values"] == [1.0, 0.0]
    assert set(exp["upstream"]["error"]) == {"up1", "up7"}
    for u in ("up1", "up7"):
        assert len(exp["upstream"]["error"][u]) == 2
        assert all(0 <= e["mean"] <= 1 for e in exp["upstream"]["error"][u])
    assert len(exp["downstream"]["error"]) == 2 and exp["downstream"]["loss"] == "log loss"
    for dec in exp["decomposition"]:
        t = dec["terms"]
        assert {"upstream", "approximation", "estimation", "upstream:up1", "upstream:up7",
                "compatibility"} <= set(t)
        assert t["upstream"]["mean"] == pytest.approx(
            t["upstream:up1"]["mean"] + t["upstream:up7"]["mean"] + t["compatibility"]["mean"])
    (change,) = exp["changes"]
    # the knob changes the two label nodes: the upstream delta splits into them and compatibility
    assert {"upstream:labels1", "upstream:labels7", "compatibility"} <= set(change["deltas"])
    assert change["dominant"] in {"upstream", "approximation", "estimation", "compatibility"}
    assert set(change["upstream_verdicts"]) == {"up1", "up7"}
    assert change["sentence"].startswith("Improving 'labels1' and 'labels7'")
    assert (tmp_path / "run" / "paper_toys_entanglement.png").stat().st_size > 10_000
