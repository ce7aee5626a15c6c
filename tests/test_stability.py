"""Instability and churn: hand-checked entropy and flip rates, checkpoints, analyses on a tiny system."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from entangle.analysis.churn import seed_pairs, version_churn
from entangle.analysis.stability import (OutcomeSpec, StabilityError, checkpoint_instability, enrichment,
                                         flip_rates, label_entropy, outcome_arrays, pairwise_disagreement,
                                         resolve_spec, seed_instability)
from entangle.compare import compare
from entangle.study import Study
from entangle.data.digit_tasks import derived_labels
from entangle.data.digits import DigitsSource
from entangle.models.mlp import MLP
from entangle.node import FunctionNode, TorchNode
from entangle.system import NodeSpec, System
from entangle.testing import check_node


def digits_system(hidden: int = 16, epochs: int = 3) -> System:
    """data -> digit (MLP on the 8x8 image, 3 checkpoints) -> parity; a tiny share of digits."""
    cls = functools.partial(TorchNode, criterion="cross_entropy", lr=0.01, batch_size=64, checkpoints=3)
    return System({
        "data": DigitsSource(fractions={"train": 0.25, "test": 0.15}, data_seed=0),
        "tasks": NodeSpec(FunctionNode(fn=derived_labels, outputs=("parity", "large")), inputs={"y": "data.y"}),
        "digit": NodeSpec(cls(module=functools.partial(MLP, in_features=64, hidden=hidden, out_features=10),
                              epochs=epochs),
                          inputs={"image": "data.image"}, targets={"y": "data.y"}),
        "parity": NodeSpec(cls(module=functools.partial(MLP, in_features=10, hidden=8, out_features=2), epochs=2),
                           inputs={"p": "digit.proba"}, targets={"y": "tasks.parity"}, output=True),
    })


# -- hand-made predictions ---------------------------------------------------------------------

def test_label_entropy_on_hand_made_labels():
    labels = np.array([[0, 1, 2, 3],
                       [0, 1, 2, 3],
                       [0, 1, 0, 4],
                       [0, 2, 0, 5]])              # (runs, items)
    h = label_entropy(labels)
    np.testing.assert_allclose(h, [0.0,
                                   -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)),
                                   np.log(2.0),
                                   -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))])
    # expected disagreement of two distinct runs: item 1 has 3 of 4 runs on one label
    np.testing.assert_allclose(pairwise_disagreement(labels), [0.0, 0.5, 2 / 3, 5 / 6])


def test_fewer_than_two_runs_is_a_clear_error():
    with pytest.raises(StabilityError, match=r"at least 2 runs, got 1 \(option 'seeds'\)"):
        label_entropy(np.array([[0, 1, 2]]))
    with pytest.raises(StabilityError, match="option 'checkpoints'"):
        label_entropy(np.array([[0, 1, 2]]), option="checkpoints")
    with pytest.raises(StabilityError, match="option 'seeds'"):
        seed_pairs([3])


def test_flip_rates_on_hand_made_predictions():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    old = np.array([0, 1, 2, 3, 9, 9, 6, 9])       # right on 0, 1, 2, 3, 6
    new = np.array([0, 1, 8, 3, 4, 9, 7, 8])       # right on 0, 1, 3, 4
    r = flip_rates(old == y, new == y, old, new)
    assert r == {"churn": 4 / 8, "nfr": 2 / 8, "pfr": 1 / 8, "n": 8}  # flips: 2 and 6 wrong, 4 right
    # without labels churn counts changed correctness only (7: wrong -> wrong is no flip)
    assert flip_rates(old == y, new == y)["churn"] == 3 / 8


def test_outcomes_of_classifiers_and_of_losses():
    out = outcome_arrays({"pred": np.array([1, 2, 3])}, {"y": np.array([1, 0, 3])}, None)
    assert out.kind == "label" and out.correct.tolist() == [True, False, True]
    loss = np.array([0.1, 0.2, 0.3, 0.9])
    spec = resolve_spec(OutcomeSpec(), {"pred": np.zeros(4)}, {"y": np.zeros(4)}, loss)
    assert spec.kind == "loss" and spec.threshold == pytest.approx(0.25)
    out = outcome_arrays({"pred": np.zeros(4)}, {"y": np.zeros(4)}, loss, spec)
    assert out.correct.tolist() == [True, True, False, False] and out.labels.tolist() == [0, 1, 2, 3]
    fixed = resolve_spec(OutcomeSpec("loss", threshold=0.5, bins=(0.25,)), {}, {}, loss)
    assert outcome_arrays({}, {}, loss, fixed).labels.tolist() == [0, 0, 1, 2]  # threshold is an edge
    # a loss exactly at the threshold is correct and binned with the correct ones
    at = outcome_arrays({}, {}, np.array([0.5, 0.500001]), fixed)
    assert at.correct.tolist() == [True, False] and at.labels[0] != at.labels[1]
    with pytest.raises(StabilityError, match="kind must be auto, label, loss or detected"):
        OutcomeSpec.from_config({"kind": "boxes"}, "analysis.outcomes.car")


def test_detected_outcomes_ask_the_detector_at_the_declared_iou():
    class Detector:
        def __init__(self):
            self.asked = []

        def detected(self, predictions, targets, min_overlap):
            self.asked.append(min_overlap)
            return np.array([True, False, True])

    det = Detector()
    spec = OutcomeSpec.from_config({"kind": "detected", "iou": 0.25}, "flips.outcomes.pedestrian")
    out = outcome_arrays({}, {}, np.array([0.1, 0.9, 0.4]), resolve_spec(spec, {}, {}, None), node=det)
    assert det.asked == [0.25] and out.correct.tolist() == [True, False, True] and out.kind == "detected"
    with pytest.raises(StabilityError, match="3 items for 2 per-sample losses"):
        outcome_arrays({}, {}, np.array([0.1, 0.9]), spec, node=det)
    with pytest.raises(StabilityError, match="needs a detector node"):
        outcome_arrays({}, {}, None, spec, node=object())
    with pytest.raises(StabilityError, match="iou"):
        OutcomeSpec.from_config({"kind": "detected"}, "flips.outcomes.car")


def test_enrichment_finds_the_planted_attribute():
    rng = np.random.default_rng(0)
    n = 600
    colour = rng.integers(0, 3, n)                 # categorical
    size = rng.random(n)                           # continuous, unrelated
    flag = (colour == 2) & (rng.random(n) < 0.5) | (rng.random(n) < 0.02)
    top = enrichment(flag, {"colour": colour, "size": size, "wrong_length": np.zeros(5)})
    assert top[0]["bin"] == "colour = 2" and top[0]["enrichment"] > 2.0 and top[0]["p_value"] < 1e-6
    assert all(r["attribute"] != "wrong_length" for r in top)
    assert enrichment(np.zeros(n, bool), {"colour": colour}) == []


def test_node_attributes_merge_shared_and_own_items():
    from entangle.analysis.stability import node_attributes
    attrs = {"night": np.array([0, 1]), "car": {"distance": np.array([5.0, 30.0, 60.0])},
             "pedestrian": {"distance": np.array([8.0])}}
    car = node_attributes(attrs, "car")
    assert set(car) == {"night", "distance"} and car["distance"].tolist() == [5.0, 30.0, 60.0]
    assert set(node_attributes(attrs, "depth")) == {"night"}


def test_seed_pairs():
    assert seed_pairs([4, 5]) == [(4, 5)]
    assert seed_pairs([1, 2, 3]) == [(1, 2), (2, 3), (3, 1)]


# -- TorchNode checkpoints ---------------------------------------------------------------------

def test_torch_node_checkpoints_are_outputs_that_round_trip():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 3))
    y = (x[:, 0] + 0.3 * rng.standard_normal(150) > 0).astype(int)
    node = TorchNode(module=functools.partial(MLP, in_features=3, hidden=8, out_features=2),
                     criterion="cross_entropy", epochs=4, checkpoints=3)
    preds = check_node(node, {"x": x}, {"y": y})   # contract incl. store round-trip of checkpoints
    assert preds["ckpt_pred"].shape == (150, 3) and preds["ckpt_logit"].shape == (150, 3, 2)
    np.testing.assert_array_equal(preds["ckpt_pred"][:, -1], preds["pred"])  # last = final model
    assert not np.array_equal(preds["ckpt_logit"][:, 0], preds["ckpt_logit"][:, -1])
    short = TorchNode(module=functools.partial(MLP, in_features=3, hidden=8), epochs=2, checkpoints=5)
    assert short.fit({"x": x}, {"y": x[:, 0]}, seed=0).predict({"x": x})["ckpt_pred"].shape == (150, 2)
    plain = TorchNode(module=functools.partial(MLP, in_features=3, hidden=8), epochs=2)
    assert set(plain.output_kinds) == {"pred", "proba"}
    with pytest.raises(ValueError, match="checkpoints must be an int >= 0"):
        TorchNode(module=MLP, checkpoints=-1)


# -- analyses on a tiny system, through the store -----------------------------------------------

@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    from entangle.store import Store
    store = Store(tmp_path_factory.mktemp("stability") / "store")
    old, new = digits_system(hidden=16), digits_system(hidden=32)
    return compare(old, new, [0, 1, 2], store, changed="digit"), store


def test_seed_and_checkpoint_instability_match_the_stored_predictions(tiny_study):
    study, store = tiny_study
    runs = study.old_runs
    inst = seed_instability(study, "digit", attributes={"digit": runs[0].values("data", "test")["y"]})
    preds = np.stack([runs[s].values("digit", "test")["pred"] for s in (0, 1, 2)])
    y = runs[0].values("data", "test")["y"]
    unstable = ~np.all(preds == preds[0], axis=0)
    assert inst.report["n_items"] == len(y) == inst.entropy.shape[0]
    assert inst.report["unstable_fraction"] == pytest.approx(unstable.mean())
    assert inst.report["accuracy_per_seed"] == pytest.approx([runs[s].metrics("digit")["accuracy"] for s in (0, 1, 2)])
    np.testing.assert_allclose(inst.entropy, label_entropy(preds))
    ck = checkpoint_instability(study, "digit", across_seeds=inst)
    own = label_entropy(runs[1].values("digit", "test")["ckpt_pred"].T, option="checkpoints")
    assert ck["report"]["per_seed"][1]["mean_entropy"] == pytest.approx(own.mean())
    assert ck["report"]["per_seed"][1]["n_checkpoints"] == 3
    assert -1.0 <= ck["report"]["spearman_with_seed_entropy"] <= 1.0
    one = Study(study.old, seeds=[0], store=store)
    with pytest.raises(StabilityError, match="at least 2 seeds, got \\[0\\] \\(option 'seeds'\\)"):
        seed_instability(one, "digit")
    with pytest.raises(StabilityError, match="'tasks' has no targets"):
        seed_instability(study, "tasks")


def test_version_churn_matches_flips_counted_by_hand(tiny_study):
    study, _ = tiny_study
    churn = version_churn(study)
    assert set(churn["nodes"]) == {"digit", "parity"} and churn["seed_pairs"] == [[0, 1], [1, 2], [2, 0]]
    y = study.old_runs[0].values("data", "test")["y"]
    nfr = [np.mean((study.old_runs[s].values("digit", "test")["pred"] == y)
                   & (study.new_runs[s].values("digit", "test")["pred"] != y)) for s in (0, 1, 2)]
    d = churn["nodes"]["digit"]
    assert d["version"]["nfr"]["per_seed"] == pytest.approx(nfr)
    seed_nfr = np.mean((study.old_runs[0].values("digit", "test")["pred"] == y)
                       & (study.old_runs[1].values("digit", "test")["pred"] != y))
    assert d["seed_old"]["nfr"]["per_seed"][0] == pytest.approx(seed_nfr)
    assert d["version_minus_seed"]["nfr"]["verdict"] in {"worse", "improved", "noise"}


def test_resampled_data_is_refused_for_per_item_comparisons(tmp_path):
    from entangle.data.toys import GaussianSource
    from entangle.node import SklearnNode
    from entangle.store import Store
    from sklearn.linear_model import Ridge
    system = System({"data": GaussianSource(weights={"y": [1.0, 1.0]}, sizes={"train": 50, "test": 40}),
                     "reg": NodeSpec(SklearnNode(estimator=Ridge()), inputs={"x": "data.x"},
                                     targets={"y": "data.y"}, output=True)})
    with pytest.raises(StabilityError, match="differs between seeds 0 and 1.*fix its data seed"):
        seed_instability(Study(system, seeds=[0, 1], store=Store(tmp_path / "s")), "reg")


def test_world_attributes_give_each_detector_its_objects():
    from entangle.data.world_attributes import world_attributes
    from entangle.data.world_source import OBJECT_ATTRIBUTES
    from entangle.data.labels import CAR, LABEL_COLUMNS, PEDESTRIAN, L
    from entangle.node import Ragged

    def row(cls, z, occluded):
        r = np.zeros(len(LABEL_COLUMNS), np.float32)
        r[L["cls"]], r[L["z"]], r[L["occluded"]] = cls, z, occluded
        return r

    labels = Ragged.from_list([np.stack([row(CAR, 10, 0), row(PEDESTRIAN, 5, 1)]), np.stack([row(CAR, 40, 2)])])
    table = np.full((3, len(OBJECT_ATTRIBUTES)), np.nan, np.float32)
    table[:, OBJECT_ATTRIBUTES.index("distance")] = [10.5, 5.2, 40.1]
    left = np.stack([np.full((4, 6, 3), 51, np.uint8), np.full((4, 6, 3), 204, np.uint8)])
    a = world_attributes(left, labels, Ragged(table, labels.offsets))
    np.testing.assert_allclose(a["brightness"], [0.2, 0.8])
    assert a["n_car"].tolist() == [1.0, 1.0] and a["n_pedestrian"].tolist() == [1.0, 0.0]
    assert a["car"]["distance"].tolist() == pytest.approx([10.5, 40.1])
    assert a["car"]["occluded"].tolist() == [0.0, 2.0] and a["car"]["brightness"].tolist() == pytest.approx([0.2, 0.8])
    assert a["pedestrian"]["depth_z"].tolist() == [5.0]
    # unknown (NaN) attributes fall in no enrichment bin
    assert enrichment(np.array([True, False, True]), {"luminance": a["car"]["luminance"].tolist() + [np.nan]},
                      min_count=1) == []
