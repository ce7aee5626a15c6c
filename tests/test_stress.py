"""Stress tests: subpopulations, corrupted inputs through fitted runs, stereo pairs, the experiment."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from entangle.analysis.stress import StressError, stress, subpopulation_mask
from entangle.data.digits import DigitsSource
from entangle.models.mlp import MLP
from entangle.node import Source, TorchNode
from entangle.study import Study
from entangle.system import NodeSpec, System

CLS = functools.partial(TorchNode, criterion="cross_entropy", lr=0.01, batch_size=64, epochs=3)


class StereoDigits(Source):
    """A toy 'stereo' source: each digit seen by a left camera and a right one shifted by a pixel."""

    output_kinds = {"left": "image", "right": "image", "y": "array"}

    def __init__(self, *, n: int = 300):
        self.n = n

    def load(self, split, seed):
        vals = DigitsSource(fractions={"train": 0.2, "test": 0.15}, data_seed=0).load(split, seed)
        left = vals["image"]
        return {"left": left, "right": np.roll(left, -1, axis=2), "y": vals["y"]}


def test_subpopulation_masks_and_their_errors():
    attrs = {"ink": np.arange(10.0), "kind": np.array(list("aabbccddee"))}
    assert subpopulation_mask(attrs, {"attribute": "ink", "quantile": [0.0, 0.2]}, "s").sum() == 2
    assert subpopulation_mask(attrs, {"attribute": "ink", "range": [3, 5]}, "s").tolist() == \
        [False] * 3 + [True] * 3 + [False] * 4
    assert subpopulation_mask(attrs, {"attribute": "kind", "values": ["a", "e"]}, "s").sum() == 4
    with pytest.raises(StressError, match=r"subpopulations.far.attribute: unknown attribute 'depth' \(known"):
        subpopulation_mask(attrs, {"attribute": "depth", "quantile": [0.9, 1]}, "subpopulations.far")
    with pytest.raises(StressError, match="exactly one of quantile, range, values"):
        subpopulation_mask(attrs, {"attribute": "ink"}, "subpopulations.x")
    with pytest.raises(StressError, match=r"subpopulations.x.quantile: bounds must lie in \[0, 1\]"):
        subpopulation_mask(attrs, {"attribute": "ink", "quantile": [0.5, 2]}, "subpopulations.x")


@pytest.fixture(scope="module")
def two_readers(tmp_path_factory):
    """One classifier reads the image, another the flattened copy ``x`` the stress test leaves alone."""
    from entangle.store import Store
    system = System({
        "data": DigitsSource(fractions={"train": 0.25, "test": 0.15}, data_seed=0),
        "on_image": NodeSpec(CLS(module=functools.partial(MLP, in_features=64, hidden=16, out_features=10)),
                             inputs={"image": "data.image"}, targets={"y": "data.y"}, output=True),
        "on_x": NodeSpec(CLS(module=functools.partial(MLP, in_features=64, hidden=16, out_features=10)),
                         inputs={"x": "data.x"}, targets={"y": "data.y"}, output=True),
    })
    return system, Store(tmp_path_factory.mktemp("stress") / "store")


def test_stress_reruns_fitted_seeds_on_corrupted_images(two_readers):
    system, store = two_readers
    res = stress(Study(system, seeds=[0, 1, 2], store=store), images=["data.image"], corruptions=["gaussian_noise", "contrast"],
                      severities=[1, 5], subpopulations={"faint": {"attribute": "ink", "quantile": [0, 0.25]}},
                      attributes="entangle.data.digit_tasks.digit_attributes", matched_draws=5)
    rep = res.report
    misses = store.stats.misses
    assert misses == 6  # two models x three seeds, fitted once; stress itself retrains nothing
    iid = rep["nodes"]["on_image"]["iid"]
    noisy5 = rep["corruption_metrics"]["gaussian_noise"]["severities"]["5"]["on_image"]
    assert np.mean(noisy5) < np.mean(iid) - 0.05             # sigma 0.38 noise hurts a digit MLP
    assert rep["corruption_metrics"]["contrast"]["severities"]["5"]["on_x"] == rep["nodes"]["on_x"]["iid"]
    u = rep["underspecification"]["on_image"]["corruptions"]["gaussian_noise"]
    sd_iid = np.std(iid, ddof=1)
    assert u["sd"][1] == pytest.approx(np.std(noisy5, ddof=1))
    assert u["ratio"] == pytest.approx(np.mean(u["sd"]) / sd_iid)
    assert rep["underspecification"]["on_image"]["families"]["noise"] == pytest.approx(u["ratio"])
    assert rep["skipped_corruptions"] == [] and rep["system_outputs"] == ["on_image", "on_x"]
    assert len(rep["subpopulations"]["faint"]["nodes"]["on_image"]) == 3
    assert rep["subpopulations"]["faint"]["n_items"]["on_image"][0] == pytest.approx(0.25 * len(
        res.runs[0].values("data", "test")["y"]), abs=3)
    json.dumps(rep)
    stress(Study(system, seeds=[0, 1, 2], store=store), images=["data.image"], corruptions=["jpeg"], severities=[3])
    assert store.stats.misses == misses


def test_stress_options_are_checked(two_readers):
    system, store = two_readers
    with pytest.raises(StressError, match=r"at least 2, got \[0\] \(option 'seeds'\)"):
        stress(Study(system, seeds=[0], store=store), images=["data.image"])
    with pytest.raises(StressError, match="option 'images': node 'data' has no output 'left'"):
        stress(Study(system, seeds=[0, 1], store=store), images=["data.left"])
    with pytest.raises(StressError, match="no image outputs are given"):
        stress(Study(system, seeds=[0, 1], store=store), corruptions=["fog"])
    from entangle.analysis.corruptions import CorruptionError
    with pytest.raises(CorruptionError, match="option 'severities'"):
        stress(Study(system, seeds=[0, 1], store=store), images=["data.image"], severities=[0])


def test_stereo_pairs_run_the_stereo_corruption(tmp_path):
    from entangle.store import Store
    system = System({
        "data": StereoDigits(),
        "match": NodeSpec(CLS(module=functools.partial(MLP, in_features=128, hidden=16, out_features=10)),
                          inputs={"l": "data.left", "r": "data.right"}, targets={"y": "data.y"}, output=True),
    })
    store = Store(tmp_path / "s")
    pair = stress(Study(system, seeds=[0, 1], store=store), pairs=[["data.left", "data.right"]],
                       corruptions=["stereo_mismatch", "fog"], severities=[5])
    assert pair.report["corruptions"] == ["stereo_mismatch", "fog"] and pair.report["skipped_corruptions"] == []
    mismatch = pair.report["corruption_metrics"]["stereo_mismatch"]["severities"]["5"]["match"]
    assert mismatch != pair.report["nodes"]["match"]["iid"]
    single = stress(Study(system, seeds=[0, 1], store=store), images=["data.left"], corruptions=["stereo_mismatch", "fog"],
                         severities=[5])
    assert single.report["skipped_corruptions"] == ["stereo_mismatch"]


def test_experiment_quick_and_toy_subpopulations_only(compose_cfg, tmp_path):
    from entangle.cli import run
    store = f"store.root={tmp_path / 's'}"
    report = run(compose_cfg("experiment=stress", "profile=quick", store, run_dir=tmp_path / "r"))
    on_disk = json.loads((tmp_path / "r" / "report.json").read_text())
    assert on_disk["seeds"] == [0, 1, 2] and on_disk["severities"] == [1, 5]
    assert on_disk["skipped_corruptions"] == ["stereo_mismatch"]
    assert set(on_disk["underspecification"]) == {"digit", "parity", "large"}
    assert set(on_disk["subpopulations"]) == {"faint", "low_contrast", "slanted", "off_centre"}
    for fig in on_disk["figures"]:
        assert (tmp_path / "r" / fig).stat().st_size > 1000
    assert report["nodes"]["digit"]["metric"] == "accuracy"

    toy = run(compose_cfg("experiment=stress", "profile=quick", "pipeline=toy", "seeds=[0,1]", store,
                          run_dir=tmp_path / "t"))
    assert toy["corruptions"] == [] and "subpopulation shifts only" in toy["note"]
    assert set(toy["subpopulations"]) == {"x0_high", "x0_low", "x1_high"}
    assert toy["seeds"] == [0, 1]  # the command line wins over the profile's seeds


def test_node_specific_attributes_apply_to_that_node_only(two_readers):
    from entangle.data.digit_tasks import digit_attributes
    system, store = two_readers

    def attrs(image, y, **_):
        ink = digit_attributes(image)["ink"]
        return {"digit": y, "on_image": {"own_ink": ink}}   # an attribute of on_image's items only

    rep = stress(Study(system, seeds=[0, 1], store=store), images=["data.image"], corruptions=[], attributes=attrs,
                      subpopulations={"faint": {"attribute": "own_ink", "quantile": [0, 0.3]},
                                      "sevens": {"attribute": "digit", "values": [7]}}, matched_draws=3).report
    assert rep["subpopulations"]["faint"]["nodes"]["on_x"] is None
    assert len(rep["subpopulations"]["faint"]["nodes"]["on_image"]) == 2
    assert rep["underspecification"]["on_x"]["subpopulations"]["faint"] is None
    assert rep["subpopulations"]["sevens"]["quantity"] == {"on_image": "accuracy", "on_x": "accuracy"}
    with pytest.raises(StressError, match=r"subpopulations.far.attribute: unknown attribute 'depth'"):
        stress(Study(system, seeds=[0, 1], store=store), images=["data.image"], corruptions=[], attributes=attrs,
                    subpopulations={"far": {"attribute": "depth", "quantile": [0.9, 1.0]}})


@pytest.mark.parametrize("override,message", [
    ("stress.severities=[1,7]", r"severity must be an integer from 1 to 5 \(option 'stress.severities'\), got 7"),
    ("stress.corruptions=[fog,snow]", r"unknown corruption\(s\) \['snow'\] in option 'stress.corruptions'"),
    ("seeds=[3]", r"needs at least 2 seeds, e.g. seeds=\[0, 1\]; got \[3\]"),
])
def test_experiment_bad_input_names_the_option(compose_cfg, tmp_path, override, message):
    from entangle.cli import run
    from entangle.study import ConfigError
    cfg = compose_cfg("experiment=stress", "profile=quick", override, f"store.root={tmp_path / 's'}")
    with pytest.raises(ConfigError, match=message):
        run(cfg)
    assert not (tmp_path / "s").exists()  # refused before anything was fitted
