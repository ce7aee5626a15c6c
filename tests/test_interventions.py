"""Interventions: up-weighting along a direction, augmenting a source, re-running the study."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LogisticRegression

from entangle.analysis.interventions import (FEATURE_INPUT, AugmentedSource, UpweightedNode,
                                             augmented, errors_with, flag_summary, node_errors,
                                             upweighted)
from entangle.data.toys import GaussianSource
from entangle.executor import Run
from entangle.node import SklearnNode
from entangle.system import NodeSpec, System
from entangle.testing import check_node


def test_upweighting_replicates_the_top_ranked_samples():
    """A mean regressor fitted with the top 10 % (by feature) counted 3 times: the mean by hand."""
    f = np.arange(100, dtype=np.float64)[:, None]
    y = np.arange(100, dtype=np.float64)
    node = UpweightedNode(node=SklearnNode(estimator=DummyRegressor()), coef=[1.0], intercept=0.0,
                          top_fraction=0.1, factor=3)
    node.fit({"x": f, FEATURE_INPUT: f}, {"y": y}, seed=0)
    expected = (y.sum() + 2 * y[90:].sum()) / (100 + 2 * 10)
    assert node.n_upweighted_ == 10
    np.testing.assert_allclose(node.predict({"x": f})["pred"], expected)
    # factor 1 changes nothing
    plain = UpweightedNode(node=SklearnNode(estimator=DummyRegressor()), coef=[1.0], factor=1)
    np.testing.assert_allclose(plain.fit({"x": f, FEATURE_INPUT: f}, {"y": y}, seed=0)
                               .predict({"x": f})["pred"], y.mean())
    with pytest.raises(ValueError, match=FEATURE_INPUT):
        node.clone().fit({"x": f}, {"y": y}, seed=0)
    with pytest.raises(ValueError, match="top_fraction"):
        UpweightedNode(node=node.node, coef=[1.0], top_fraction=0.0)


def test_upweighted_node_contract():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(int)
    node = UpweightedNode(node=SklearnNode(estimator=LogisticRegression()), coef=[0.0, 1.0, 0.0])
    preds = check_node(node, {"x": X, FEATURE_INPUT: X}, {"y": y},
                       eval_inputs={"x": X, FEATURE_INPUT: X})
    assert set(preds) == {"pred", "proba"}
    assert node.metric == "accuracy" and node.higher_is_better


def test_upweighted_system_is_wired_and_refits_only_that_node(store):
    base = System({"data": GaussianSource(variances=[1.0, 1.0], weights={"t": [1.0, 0.0]},
                                          sizes={"train": 200, "test": 100}, data_seed=0),
                   "reg": NodeSpec(SklearnNode(estimator=DummyRegressor()), inputs={"x": "data.x"},
                                   targets={"y": "data.t"}, output=True)})
    direction = SimpleNamespace(coef=np.array([1.0, 0.0]), intercept=0.0)
    fixed = upweighted(base, "reg", direction, "data.x", top_fraction=0.2, factor=4)
    assert fixed.specs["reg"].inputs == {"x": "data.x", FEATURE_INPUT: "data.x"}
    k0, k1 = base.keys(0), fixed.keys(0)
    assert k0["data"] == k1["data"] and k0["reg"] != k1["reg"]
    r0, r1 = Run(base, 0, store).run_all(), Run(fixed, 0, store).run_all()
    # the mean moved toward the samples with large x0, which have large targets
    assert r1.values("reg", "test")["pred"][0] > r0.values("reg", "test")["pred"][0] + 0.3
    restored = Run(fixed, 0, store).fitted("reg")
    np.testing.assert_allclose(restored.predict({"x": np.zeros((2, 2))})["pred"],
                               r1.values("reg", "test")["pred"][:2])


def test_augmented_source_adds_rows_to_one_split_only():
    src = GaussianSource(variances=[1.0], weights={"t": [2.0]}, sizes={"train": 10, "test": 5}, data_seed=0)
    extra = {"x": np.full((3, 1), 9.0), "t": np.full(3, 18.0)}
    aug = AugmentedSource(source=src, extra=extra, split="train")
    tr, te = aug.load("train", 0), aug.load("test", 0)
    assert len(tr["x"]) == 13 and len(te["x"]) == 5
    np.testing.assert_array_equal(tr["x"][:10], src.load("train", 0)["x"])
    np.testing.assert_array_equal(tr["t"][10:], 18.0)
    assert aug.output_kinds == src.output_kinds
    with pytest.raises(ValueError, match="missing"):
        AugmentedSource(source=src, extra={"x": extra["x"]}).load("train", 0)
    with pytest.raises(ValueError, match="differ in length"):
        AugmentedSource(source=src, extra={"x": extra["x"], "t": np.zeros(2)})
    # as a system edit: the source and everything fitted on it get new keys
    system = System({"data": src, "reg": NodeSpec(SklearnNode(estimator=DummyRegressor()),
                                                  inputs={"x": "data.x"}, targets={"y": "data.t"},
                                                  output=True)})
    edited = augmented(system, "data", extra, "train")
    assert isinstance(edited["data"], AugmentedSource)
    assert all(system.keys(0)[n] != edited.keys(0)[n] for n in ("data", "reg"))
    # simulator helpers are passed through to the wrapped source
    from entangle.data.planted import DigitWorldSource
    wrapped = AugmentedSource(source=DigitWorldSource(copies=1), extra={})
    assert wrapped.attribute_names() == DigitWorldSource.attribute_names()


def test_node_errors_and_errors_with_a_replaced_input(store):
    from entangle.node import FunctionNode
    data = GaussianSource(variances=[1.0, 1.0], weights={"t": [1.0, 0.0]},
                          sizes={"train": 300, "test": 100}, data_seed=0)
    system = System({"data": data,
                     "label": NodeSpec(FunctionNode(fn=_positive), inputs={"t": "data.t"}),
                     "clf": NodeSpec(SklearnNode(estimator=LogisticRegression(), task="classifier"),
                                     inputs={"x": "data.x"}, targets={"y": "label.out"}, output=True)})
    run = Run(system, 0, store).run_all()
    err = node_errors(run, "clf", "test")
    acc = run.metrics("clf")["accuracy"]
    assert err.dtype == bool and err.mean() == pytest.approx(1 - acc)
    # replaced inputs whose labels contradict the learned rule are all errors
    x = np.array([[2.0, 0.0], [-2.0, 0.0]])
    got = errors_with(run, "clf", {("data", "x"): x, ("data", "t"): np.array([-1.0, 1.0])})
    np.testing.assert_array_equal(got, [True, True])


def _positive(t):
    return (np.asarray(t) > 0).astype(np.int64)


def test_flag_summary():
    report = {"changed": "u", "self_defeating": [{"upstream": "u", "downstream": "v"}],
              "nodes": {"u": {"delta_mean": 1.0, "delta_ci": [0.5, 1.5], "verdict": "improved"},
                        "v": {"delta_mean": -1.0, "delta_ci": [-2, -0.5], "verdict": "worse"}}}
    s = flag_summary(report, "v")
    assert s["flagged"] and s["v"]["verdict"] == "worse" and s["u"]["verdict"] == "improved"
    assert not flag_summary({**report, "self_defeating": []})["flagged"]


def test_interventions_experiment_report(compose_cfg, tmp_path):
    from entangle.cli import run
    cfg = compose_cfg("experiment=interventions", "profile=quick", "failing=detector",
                      f"store.root={tmp_path / 'store'}")
    report = run(cfg)
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["failing"] == "detector" and on_disk["changed"] == "upstream"
    assert set(on_disk["variants"]) >= {"new", "new + upweighted"}
    assert set(on_disk["flag_gone"]) == set(on_disk["variants"]) - {"new"}
    d = on_disk["upweight"]["direction"]
    assert d["n_errors"] > 0 and len(d["per_seed"]) == 2
    assert report["upweight"]["study"]["nodes"]["detector"]["retrained"]
    assert "regions" in on_disk["augment"]
    for f in on_disk["figures"]:
        assert (tmp_path / "run" / f).stat().st_size > 1000
