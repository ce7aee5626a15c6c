"""Planted failures as the grader: the data with planted bugs, the graders, and recovery on them."""

from __future__ import annotations

import numpy as np
import pytest

from entangle.analysis.directions import class_decision, fit_class_directions, fit_direction
from entangle.analysis.planted import grade_direction, precision_at_k, region_coverage
from entangle.data.planted import (STYLE, DigitWorldSource, PlantedBug, measure_attributes,
                                   planted_detection_table, render_digits)

BUG = {"digit": 7, "attribute": "thickness", "above": 0.7, "relabel_to": 1}


def test_precision_at_k_and_grade_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.1, np.nan])
    planted = np.array([1, 0, 1, 0, 1], dtype=bool)
    assert precision_at_k(scores, planted, 1) == 1.0
    assert precision_at_k(scores, planted, 2) == 0.5
    assert precision_at_k(scores, planted, 3) == pytest.approx(2 / 3)
    g = grade_direction(scores, planted, errors=np.array([1, 1, 0, 0, 0], dtype=bool), k=2)
    assert g["n"] == 4 and g["n_planted"] == 2 and g["base_rate"] == 0.5
    assert g["auroc_planted"] == pytest.approx(0.75)   # pairs (p, n): 0.9>0.8, 0.9>0.1, 0.7<0.8, 0.7>0.1
    assert g["auroc_errors"] == 1.0
    with pytest.raises(ValueError):
        precision_at_k(scores, planted, 0)


def test_region_coverage_by_hand():
    planted = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    assign = np.array([0, 0, 0, 1, 0, -1, 1, 1])
    cov = region_coverage(assign, planted)
    assert cov["best_region"] == 0 and cov["coverage"] == 0.75 and cov["purity"] == 0.75
    assert {r["region"]: r["n"] for r in cov["regions"]} == {0: 4, 1: 3}
    none = region_coverage(np.full(8, -1), planted)
    assert none["best_region"] is None and none["coverage"] == 0.0


def test_rendering_thickness_adds_ink_and_contrast_scales_it():
    from entangle.data.planted import _digits
    base = np.repeat(_digits()[0][:20], 3, axis=0)
    style = np.tile([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.5]], (20, 1))
    img = render_digits(base, style)
    assert img.shape == (60, 8, 8) and img.min() >= 0 and img.max() <= 1
    ink = measure_attributes(img)[:, 0].reshape(20, 3)
    assert (ink[:, 1] > ink[:, 0]).all()                      # thicker strokes, more ink
    np.testing.assert_allclose(ink[:, 2], 0.5 * ink[:, 1], rtol=1e-5)   # contrast scales it
    with pytest.raises(ValueError, match="style"):
        render_digits(base, style[:, :2])


def test_digit_world_splits_labels_and_planted_mask():
    src = DigitWorldSource(copies=2, planted=BUG)
    train, test = src.load("train", 0), src.load("test", 0)
    assert set(src.bases("train", 0)).isdisjoint(src.bases("test", 0))
    assert train["x"].shape == (len(train["y"]), 64) and train["style"].shape[1] == len(STYLE)
    assert train["attrs"].shape[1] == len(src.attribute_names())
    for d in (train, test):
        expect = (d["y_true"] == 7) & (d["style"][:, 0] > 0.7)
        np.testing.assert_array_equal(d["planted"], expect)
    # the bug is in the training labels only
    np.testing.assert_array_equal(train["y"][train["planted"]], 1)
    np.testing.assert_array_equal(train["y"][~train["planted"]], train["y_true"][~train["planted"]])
    np.testing.assert_array_equal(test["y"], test["y_true"])
    again = DigitWorldSource(copies=2, planted=BUG).load("train", 5)   # data_seed fixes the data
    np.testing.assert_array_equal(again["x"], train["x"])
    with pytest.raises(KeyError, match="no split"):
        src.load("nope", 0)


@pytest.mark.parametrize("spec, match", [
    ({"digit": 7, "attribute": "colour", "above": 0.5, "relabel_to": 1}, "style latent"),
    ({"digit": 7, "attribute": "thickness", "above": 0.5}, "missing"),
    ({"digit": 7, "attribute": "thickness", "above": 0.5, "relabel_to": 7}, "nothing is planted"),
])
def test_planted_bug_is_validated(spec, match):
    with pytest.raises(ValueError, match=match):
        PlantedBug.from_dict(spec)


def test_detection_table_plants_low_contrast_misses():
    t = planted_detection_table(4000, 0)
    assert t["attrs"].shape == (4000, 5) and t["features"].shape == (4000, 32)
    assert t["miss"][t["planted"]].mean() > 0.85
    assert t["miss"][~t["planted"]].mean() < 0.25
    clean = planted_detection_table(4000, 0, contrast_below=None)
    assert not clean["planted"].any()


def test_failure_direction_recovers_the_planted_table_failure():
    """The issue's target (AUROC >= 0.85, precision@50 >= 0.7) on a held-out draw of the table."""
    fit, ev = planted_detection_table(2000, 10), planted_detection_table(2000, 11)
    d = fit_direction(fit["features"], fit["miss"], seed=0)
    g = grade_direction(d.decision(ev["features"]), ev["planted"], ev["miss"], k=50)
    assert g["auroc_planted"] >= 0.85 and g["precision_at_k"] >= 0.7


def test_failure_direction_recovers_the_planted_digit_bug_in_pixel_space():
    """A classifier trained on buggy labels fails on thick 7s; the class-7 direction finds them."""
    from entangle.models.embedding_classifier import EmbeddingClassifier
    src = DigitWorldSource(copies=2, planted=BUG)
    tr, va, te = (src.load(s, 0) for s in ("train", "val", "test"))
    # 16 epochs: every training seed learns the bug (at 8, some fail on under half of the plant)
    clf = EmbeddingClassifier(epochs=16).fit({"x": tr["x"]}, {"y": tr["y"]}, seed=0)
    err_v = clf.predict({"x": va["x"]})["pred"] != va["y_true"]
    err_t = clf.predict({"x": te["x"]})["pred"] != te["y_true"]
    assert err_t[te["planted"]].mean() > 0.5 > err_t[~te["planted"]].mean() * 3
    dirs = fit_class_directions(va["x"], err_v, va["y_true"], seed=0)
    rows = te["y_true"] == 7
    s = class_decision(dirs, te["x"], te["y_true"])[rows]
    g = grade_direction(s, te["planted"][rows], err_t[rows], k=20)
    # precision@20 moves in steps of 0.05: asked clearly above the base rate, not at twice it
    assert g["auroc_planted"] > 0.75 and g["precision_at_k"] > 1.75 * g["base_rate"]
