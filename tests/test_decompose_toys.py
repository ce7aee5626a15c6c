"""The toy_decomposition experiment end to end (quick profile): report contract, the mechanism
named for each toy, closed forms beside every estimate, and no refits after the study."""

from __future__ import annotations

import json

from entangle.cli import run
from entangle.decompose import MECHANISMS


def test_toy_decomposition_report(compose_cfg, tmp_path):
    cfg = compose_cfg("experiment=toy_decomposition", "profile=quick", "seeds=[0,1]",
                      f"store.root={tmp_path / 'store'}", run_dir=tmp_path / "run")
    report = run(cfg)
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    toys = on_disk["toys"]
    assert [t["mechanism"] for t in toys] == ["upstream", "approximation", "estimation", "compatibility"]
    for toy in toys:
        assert set(toy["terms"]) >= {"upstream", "approximation", "estimation"}
        for term in ("upstream", "approximation", "estimation"):
            for side in ("old", "new", "delta"):
                pair = toy["terms"][term][side]
                assert set(pair["closed_form"]) >= {"mean", "ci"} and set(pair["estimate"]) >= {"mean", "ci"}
                assert isinstance(pair["agrees"], bool)
        assert isinstance(toy["self_defeating"], bool) and toy["dominant"] in MECHANISMS
        # the engine names the toy's own mechanism (the effects are large even at quick sizes)
        assert toy["dominant"] == toy["mechanism"], toy["sentence"]
        # the decomposition fits its derived systems (the study's own nodes come from the store),
        # and the flag is the improvement study's, not a second rule of the decomposition's
        assert toy["store"]["decomposition"]["misses"] > 0
        assert toy["self_defeating"] == bool(toy["study_flags"])
        assert toy["loss"] == "squared error"
    compat = toys[3]
    assert {"upstream:up1", "upstream:up2", "compatibility"} <= set(compat["terms"])
    assert compat["terms"]["compatibility"]["delta"]["closed_form"]["mean"] > 0.15
    assert report["all_dominant_correct"] is True
    assert sum(bool(t["study_flags"]) for t in toys) >= 3
    assert (tmp_path / "run" / "toy_decomposition.png").stat().st_size > 10_000
    assert "closed form" in (tmp_path / "run" / "toy_decomposition.txt").read_text()
