"""Mitigations: the retrained variants' contracts and limits, ensembles, the mitigation study, the experiment."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from entangle.analysis.mitigation import (FocalDistillNode, SoftLabelNode, ensemble_predictions,
                                          mitigate_instability)
from entangle.analysis.stability import StabilityError
from entangle.models.mlp import MLP
from entangle.node import TorchNode
from entangle.testing import check_node

from test_stability import digits_system  # noqa: E402  (tests/ is on sys.path under pytest)


def blobs(n=240, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((n, 4)) + 1.5 * np.eye(3, 4)[y]
    return x, y


MODULE = functools.partial(MLP, in_features=4, hidden=8, out_features=3)
COMMON = dict(module=MODULE, criterion="cross_entropy", epochs=4, lr=0.02, batch_size=32)


def test_variants_follow_the_node_contract():
    x, y = blobs()
    check_node(SoftLabelNode(**COMMON, soft_targets=np.full((len(y), 3), 1 / 3)), {"x": x}, {"y": y})
    check_node(FocalDistillNode(**COMMON, old_proba=np.eye(3)[y] * 0.8 + 0.2 / 3), {"x": x}, {"y": y})


def test_one_hot_soft_labels_and_zero_distillation_reduce_to_plain_training():
    x, y = blobs()
    plain = TorchNode(**COMMON).fit({"x": x}, {"y": y}, seed=3).predict({"x": x})["proba"]
    soft = SoftLabelNode(**COMMON, soft_targets=np.eye(3)[y]).fit({"x": x}, {"y": y}, seed=3)
    np.testing.assert_allclose(soft.predict({"x": x})["proba"], plain, atol=1e-5)
    off = FocalDistillNode(**COMMON, old_proba=np.full((len(y), 3), 1 / 3), weight=0.0)
    np.testing.assert_allclose(off.fit({"x": x}, {"y": y}, seed=3).predict({"x": x})["proba"], plain, atol=1e-5)


def test_distillation_pulls_the_new_model_towards_the_old():
    x, y = blobs()
    old_pred = np.where(x[:, 3] > 0.5, (y + 1) % 3, y)   # an old model wrong on a learnable region
    old_proba = np.eye(3)[old_pred] * 0.9 + 0.1 / 3
    agree = {}
    for w in (0.0, 5.0):
        wide = functools.partial(MLP, in_features=4, hidden=32, out_features=3)
        node = FocalDistillNode(**{**COMMON, "epochs": 20, "module": wide}, old_proba=old_proba, weight=w,
                                beta=0.0)
        agree[w] = np.mean(node.fit({"x": x}, {"y": y}, seed=0).predict({"x": x})["pred"] == old_pred)
    assert agree[5.0] > agree[0.0] + 0.05


def test_soft_targets_are_validated():
    with pytest.raises(ValueError, match="rows of probabilities"):
        SoftLabelNode(**COMMON, soft_targets=np.ones((5, 3)))
    x, y = blobs()
    node = SoftLabelNode(**COMMON, soft_targets=np.full((7, 3), 1 / 3))
    with pytest.raises(ValueError, match="7 soft targets for 240 training samples"):
        node.fit({"x": x}, {"y": y}, seed=0)


@pytest.fixture(scope="module")
def runs_and_store(tmp_path_factory):
    from entangle.store import Store
    from entangle.study import Study
    store = Store(tmp_path_factory.mktemp("mitigation") / "store")
    study = Study(digits_system(epochs=3), seeds=[0, 1, 2, 3], store=store)
    return study, study.runs("old"), store


def test_ensemble_averages_the_stored_probabilities(runs_and_store):
    _, runs, _ = runs_and_store
    ens = ensemble_predictions(runs, "digit", [0, 2])
    mean = (runs[0].values("digit", "test")["proba"] + runs[2].values("digit", "test")["proba"]) / 2
    np.testing.assert_allclose(ens["proba"], mean)
    np.testing.assert_array_equal(ens["pred"], mean.argmax(axis=1))


def test_mitigation_study_compares_at_matched_runs(runs_and_store):
    study, runs, store = runs_and_store
    with pytest.raises(StabilityError, match=r"at least 6 seeds.*'seeds', 'ensemble_size'"):
        mitigate_instability(study, "digit", ensemble_size=3)
    rep = mitigate_instability(study, "digit", ensemble_size=2)
    assert rep["runs_per_entropy"] == 2 and rep["ensemble"]["members"] == [[0, 1], [2, 3]]
    assert rep["ensemble"]["train_cost_relative"] == 2.0
    base, ens, ls = rep["single"], rep["ensemble"], rep["label_smoothing"]
    for m in ("mean_entropy", "unstable_fraction", "nfr"):
        assert rep["reduction"][m]["ensemble"] == pytest.approx(base[m] - ens[m])
        frac = rep["smoothing_fraction_of_ensemble"][m]
        if frac is not None:
            assert frac == pytest.approx((base[m] - ls[m]) / (base[m] - ens[m]))
    assert 0.0 < ls["soft_target_max_mean"] < 1.0 and ls["teacher_seed"] == 4
    assert store.has(runs[0].keys["digit"])
    arrays = rep.pop("_arrays")
    assert set(arrays) == {"single", "ensemble", "label_smoothing"}
    json.dumps(rep)  # the report is plain JSON


def test_experiment_quick_report_contract(compose_cfg, tmp_path):
    from entangle.cli import run
    report = run(compose_cfg("experiment=instability", "profile=quick", f"store.root={tmp_path / 's'}",
                             run_dir=tmp_path / "r"))
    on_disk = json.loads((tmp_path / "r" / "report.json").read_text())
    assert on_disk["seeds"] == [0, 1, 2, 3] and on_disk["changed"] == "digit"
    assert set(on_disk["instability"]) == {"digit", "parity", "large"}
    assert "checkpoints" in on_disk["instability"]["digit"]
    assert set(on_disk["churn"]["nodes"]) == {"digit", "parity", "large"}
    assert on_disk["mitigation"]["ensemble"]["k"] == 2
    assert on_disk["distillation"]["node"] == "parity"
    for fig in on_disk["figures"]:
        assert (tmp_path / "r" / fig).stat().st_size > 1000
    assert report["store"]["misses"] > 0


def test_ensemble_version_flips_count_flips_between_ensembles(tmp_path):
    from entangle.analysis.mitigation import ensemble_version_flips
    from entangle.compare import compare
    from entangle.store import Store
    study = compare(digits_system(hidden=16, epochs=2), digits_system(hidden=24, epochs=2), [0, 1, 2, 3],
                    Store(tmp_path / "s"), changed="digit")
    rep = ensemble_version_flips(study, "digit", 2)
    assert rep["groups"] == [[0, 1], [2, 3]]
    y = study.old_runs[0].values("data", "test")["y"]
    old = ensemble_predictions(study.old_runs, "digit", [2, 3])["pred"]
    new = ensemble_predictions(study.new_runs, "digit", [2, 3])["pred"]
    assert rep["nfr_version"]["per_seed"][1] == pytest.approx(np.mean((old == y) & (new != y)))
    with pytest.raises(StabilityError, match="at least 6 seeds"):
        ensemble_version_flips(study, "digit", 3)
