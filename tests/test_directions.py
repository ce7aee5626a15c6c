"""Failure directions: the SVM finds a planted direction, its scores, per-class fits, flips, descriptions."""

from __future__ import annotations

import numpy as np
import pytest

from entangle.analysis.directions import (TooFewErrorsError, auroc, class_decision, describe,
                                          errors_from_loss, fit_class_directions, fit_direction,
                                          fit_flip_direction, negative_flips)


def _planted(n=600, d=5, axis=2, rate=0.1, seed=0):
    """Errors where feature ``axis`` is large (top ``rate``), with noise; features have unequal scales."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.arange(1, d + 1)
    z = X[:, axis] / (axis + 1) + 0.3 * rng.normal(size=n)
    return X, z > np.quantile(z, 1 - rate)


def test_direction_points_along_the_planted_feature_and_scores_held_out_samples():
    X, err = _planted()
    d = fit_direction(X, err, seed=0)
    assert int(np.argmax(np.abs(d.direction))) == 2 and d.direction[2] > 0
    assert np.isclose(np.linalg.norm(d.direction), 1.0)
    assert d.cv_auroc > 0.9 and d.n_errors == err.sum() and d.n_samples == len(err)
    assert d.oof_scores.shape == (len(err),)
    Xh, eh = _planted(seed=1)
    assert d.auroc(Xh, eh) > 0.9
    # the raw-unit decision is the standardized SVM's: ranking follows it
    s = d.decision(Xh)
    np.testing.assert_array_equal(d.rank(Xh), np.argsort(-s, kind="stable"))
    with pytest.raises(ValueError, match="columns"):
        d.decision(Xh[:, :3])


def test_class_balanced_svm_still_ranks_rare_errors():
    X, err = _planted(n=1000, rate=0.03, seed=2)
    d = fit_direction(X, err, seed=0)
    Xh, eh = _planted(n=1000, rate=0.03, seed=3)
    assert d.auroc(Xh, eh) > 0.85
    # the top of the ranking is mostly errors although they are 3 % of the samples
    assert eh[d.rank(Xh)[:20]].mean() > 0.5


def test_too_few_errors_is_a_clear_error():
    X, _ = _planted()
    err = np.zeros(len(X), dtype=bool)
    err[:3] = True
    with pytest.raises(TooFewErrorsError, match="3 errors"):
        fit_direction(X, err)
    with pytest.raises(ValueError, match="one boolean per sample"):
        fit_direction(X, err[:-1])


def test_per_class_directions_skip_classes_without_enough_errors():
    X0, e0 = _planted(n=300, axis=0, rate=0.2, seed=4)
    X1, e1 = _planted(n=300, axis=3, rate=0.2, seed=5)
    X2, _ = _planted(n=300, seed=6)
    X = np.concatenate([X0, X1, X2])
    err = np.concatenate([e0, e1, np.zeros(300, dtype=bool)])
    labels = np.repeat([0, 1, 2], 300)
    dirs = fit_class_directions(X, err, labels, seed=0)
    assert set(dirs) == {0, 1}
    assert int(np.argmax(np.abs(dirs[0].direction))) == 0
    assert int(np.argmax(np.abs(dirs[1].direction))) == 3
    s = class_decision(dirs, X, labels)
    assert np.isnan(s[labels == 2]).all() and np.isfinite(s[labels < 2]).all()
    np.testing.assert_allclose(s[labels == 1], dirs[1].decision(X1))


def test_negative_flips_and_their_direction_use_only_samples_the_old_model_got_right():
    old = np.array([0, 0, 1, 1], dtype=bool)
    new = np.array([0, 1, 0, 1], dtype=bool)
    np.testing.assert_array_equal(negative_flips(old, new), [False, True, False, False])
    with pytest.raises(ValueError):
        negative_flips(old, new[:3])

    X, new_err = _planted(seed=7)
    rng = np.random.default_rng(0)
    old_err = rng.random(len(X)) < 0.2
    d, rows = fit_flip_direction(X, old_err, new_err, seed=0)
    np.testing.assert_array_equal(rows, np.flatnonzero(~old_err))
    assert d.n_samples == (~old_err).sum() and d.n_errors == (new_err & ~old_err).sum()
    assert int(np.argmax(np.abs(d.direction))) == 2


def test_describe_orders_attributes_by_alignment():
    rng = np.random.default_rng(0)
    s = rng.normal(size=500)
    A = np.stack([rng.normal(size=500), -2 * s + 0.1 * rng.normal(size=500), np.ones(500),
                  s ** 3], axis=1)
    rows = describe(s, A, ["noise", "anti", "constant", "cubic"], top=0.1)
    assert [r["attribute"] for r in rows[:2]] == ["cubic", "anti"] or \
        [r["attribute"] for r in rows[:2]] == ["anti", "cubic"]
    by = {r["attribute"]: r for r in rows}
    assert by["cubic"]["spearman"] == pytest.approx(1.0)
    assert by["anti"]["spearman"] < -0.99 and by["anti"]["mean_top"] < by["anti"]["mean_bottom"]
    assert np.isnan(by["constant"]["spearman"]) and rows[-1]["attribute"] == "constant"
    with pytest.raises(ValueError, match="names"):
        describe(s, A, ["a", "b"])


def test_auroc_and_errors_from_loss():
    assert auroc(np.array([0.1, 0.9, 0.5]), np.array([0, 1, 0])) == 1.0
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1])))
    np.testing.assert_array_equal(errors_from_loss(np.array([0.1, 2.0, 0.5]), 0.5), [False, True, False])


def test_failure_directions_experiment_report(compose_cfg, tmp_path):
    import json

    from entangle.cli import run
    cfg = compose_cfg("experiment=failure_directions", "profile=quick", f"store.root={tmp_path / 's'}")
    report = run(cfg)
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    seed0 = on_disk["digits"]["per_seed"][0]
    assert seed0["planted_class"] == 7 and set(seed0["spaces"]) == {"embedding", "pixels"}
    for space in ("embedding", "pixels"):
        entry = seed0["spaces"][space]
        g = entry["planted_class"]["planted"]
        assert 0.5 < g["auroc_planted"] <= 1 and 0 <= g["precision_at_k"] <= 1
        assert entry["attributes"][0]["attribute"] in {"thickness", "width", "ink"}
        assert "7" in entry["classes"]
    assert on_disk["table"]["summary"]["top_attribute"] == {"contrast": 1}
    assert "flips" not in on_disk            # the quick profile skips the study
    for f in report["figures"]:
        assert (tmp_path / "run" / f).stat().st_size > 1000


def test_object_depth_errors_by_hand():
    """One scene, two objects: one matched exactly, one 20 % too far on half its pixels."""
    from entangle.analysis.object_errors import failed, object_depth_errors
    from entangle.data.labels import CAR, LABEL_COLUMNS, PEDESTRIAN, L
    from entangle.node import Ragged
    H, W, fb = 20, 40, 100.0
    gt = np.full((1, H, W), 2.0, dtype=np.float32)            # background at 50 m
    depth = fb / gt
    rows = []
    for cls, (x1, x2), z in ((CAR, (2, 11), 10.0), (PEDESTRIAN, (20, 29), 20.0)):
        gt[0, 5:15, x1:x2 + 1] = fb / z
        depth[0, 5:15, x1:x2 + 1] = z
        row = np.zeros(len(LABEL_COLUMNS), dtype=np.float32)
        row[[L["cls"], L["z"], L["l"], L["w"], L["x1"], L["y1"], L["x2"], L["y2"]]] = \
            [cls, z, 1.0, 1.0, x1, 3, x2, 16]                  # the box also holds background
        rows.append(row)
    pred = gt.copy()
    pred[0, 5:10, 20:30] = fb / 24.0                           # half the pedestrian: 24 m, not 20
    pred[0, 10:15, 20:30] = np.nan                             # the other half unmatched
    e = object_depth_errors(pred, gt, depth, Ragged.from_list([np.stack(rows)]), np.array([fb]))
    np.testing.assert_array_equal(e["cls"], [CAR, PEDESTRIAN])
    np.testing.assert_allclose(e["rel_error"], [0.0, 0.2], atol=1e-6)
    np.testing.assert_allclose(e["unmatched"], [0.0, 0.5])
    np.testing.assert_array_equal(failed(e, rel_threshold=0.1), [False, True])
    only_cars = object_depth_errors(pred, gt, depth, Ragged.from_list([np.stack(rows)]),
                                    np.array([fb]), classes=[CAR])
    assert len(only_cars["cls"]) == 1


@pytest.mark.slow
def test_failure_directions_world_experiment(compose_cfg, tmp_path):
    """Renders a small world (seconds to a minute): kept out of CI."""
    from entangle.cli import run
    report = run(compose_cfg("experiment=failure_directions_world", "profile=quick"))
    for name in ("Car", "Pedestrian"):
        entry = report["classes"][name]
        assert entry["n_fit"] > 0 and 0 <= entry["failure_rate_eval"] <= 1
        if "error" not in entry:
            assert 0 <= entry["heldout_auroc"] <= 1 and len(entry["attributes"]) == 10
