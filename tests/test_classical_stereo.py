"""OpenCV stereo functions and the stereo metrics, on hand-made data and real Middlebury data."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from entangle.cli import run as run_experiment
from entangle.data.world import WorldConfig, make_calib
from entangle.models.classical_stereo import (block_matching, bad_pixel_rate, d1_error,
                                              end_point_error, fill_invalid, metrics_by_distance,
                                              num_disparities_for, semi_global_matching,
                                              stereo_metrics)


def test_metrics_on_hand_computed_values():
    gt = np.array([[10.0, 20.0, 100.0, 0.0], [4.0, np.nan, np.inf, 50.0]], np.float32)
    pred = np.array([[11.0, 24.0, 104.0, 7.0], [3.5, 1.0, 1.0, 50.0]], np.float32)
    # valid ground truth: 10, 20, 100, 4, 50 -> errors 1, 4, 4, 0.5, 0
    assert end_point_error(pred, gt) == pytest.approx(9.5 / 5)
    assert bad_pixel_rate(pred, gt) == pytest.approx(2 / 5)
    assert bad_pixel_rate(pred, gt, threshold=0.75) == pytest.approx(3 / 5)
    # D1 also needs > 5 % of the truth: 4 px on 100 px is 4 %, not an outlier
    assert d1_error(pred, gt) == pytest.approx(1 / 5)
    m = stereo_metrics(pred, gt)
    assert m["n_pixels"] == 5 and m["density"] == 1.0 and m["bad1"] == pytest.approx(2 / 5)


def test_invalid_predictions_are_filled_like_the_kitti_devkit():
    d = np.array([[np.nan, 5.0, np.nan, np.nan, 3.0, np.nan],
                  [np.nan, np.nan, np.nan, np.nan, np.nan, np.nan],
                  [2.0, 0.0, 9.0, 9.0, 9.0, 9.0]], np.float32)
    np.testing.assert_array_equal(fill_invalid(d), [[5, 5, 3, 3, 3, 3], [0, 0, 0, 0, 0, 0],
                                                    [2, 2, 9, 9, 9, 9]])
    gt = np.full((3, 6), 5.0, np.float32)
    m = stereo_metrics(d, gt)
    assert m["density"] == pytest.approx(7 / 18)  # 0 and NaN are both invalid
    assert m["epe"] == pytest.approx(np.abs(fill_invalid(d) - 5).mean())
    unfilled = stereo_metrics(d, gt, fill=False)  # only predicted pixels count
    assert unfilled["n_pixels"] == 7


def test_metrics_by_distance_bins_on_true_depth():
    fb = 100.0
    gt = np.array([[20.0, 20.0, 5.0, 5.0, 2.0, 0.0]], np.float32)  # depths 5, 5, 20, 20, 50
    pred = np.array([[21.0, 20.0, 9.0, 5.0, 2.0, 1.0]], np.float32)
    rows = metrics_by_distance(pred, gt, fb, bins=(0, 10, 30, math.inf))
    assert [r["n_pixels"] for r in rows] == [2, 2, 1]
    assert rows[0]["epe"] == pytest.approx(0.5) and rows[0]["bad3"] == 0
    assert rows[1]["epe"] == pytest.approx(2.0) and rows[1]["bad3"] == pytest.approx(0.5)
    assert rows[1]["depth_mae"] == pytest.approx((20 - 100 / 9) / 2)
    assert rows[2]["epe"] == 0 and rows[2]["depth_lo"] == 30


def _shifted_pair(shift: int, h: int = 96, w: int = 256):
    """A random-texture pair whose true disparity is ``shift`` everywhere."""
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (h, w + shift)).astype(np.float32), (0, 0), 1.0)
    tex = np.clip(tex * 2 - 128, 0, 255).astype(np.uint8)
    left = np.ascontiguousarray(tex[:, :w])
    right = np.ascontiguousarray(tex[:, shift:])   # right(u - shift) = left(u)
    return np.repeat(left[..., None], 3, axis=2), np.repeat(right[..., None], 3, axis=2)


@pytest.mark.parametrize("matcher", [block_matching, semi_global_matching])
def test_matchers_recover_a_known_shift_and_mark_invalid_with_nan(matcher):
    left, right = _shifted_pair(7)
    disp = matcher(left, right, num_disparities=32)
    assert disp.dtype == np.float32 and disp.shape == left.shape[:2]
    assert np.isnan(disp[:, :32]).all()          # no full search range: invalid
    inner = disp[8:-8, 40:-8]
    assert np.isfinite(inner).mean() > 0.9
    assert np.nanmedian(inner) == pytest.approx(7.0, abs=0.1)
    assert end_point_error(disp[8:-8, 40:-8], np.full(inner.shape, 7.0)) < 0.3


def test_matchers_take_batches_and_calib_sets_the_search_range():
    calib = make_calib(WorldConfig().camera)
    assert num_disparities_for(calib, min_depth=3.0) == 80  # f*B/3 = 65.3 px
    left, right = _shifted_pair(5)
    batch = semi_global_matching(np.stack([left, left]), np.stack([right, right]), calib)
    single = semi_global_matching(left, right, calib)
    assert batch.shape == (2,) + left.shape[:2]
    np.testing.assert_array_equal(batch[1], single)
    assert np.isnan(single[:, :80]).all() and not np.isnan(single[:, 80:]).all()
    with pytest.raises(ValueError, match="calib"):
        block_matching(left, right)


def test_stereo_real_reports_middlebury_and_world_per_distance(compose_cfg, tmp_path):
    cfg = compose_cfg("experiment=stereo_real", "profile=quick")
    report = run_experiment(cfg)
    mb = report["middlebury"]["methods"]
    assert set(mb) == {"bm", "sgbm"}
    # the target on the real pair; OpenCV's SGBM reaches ~1.5 px here
    assert mb["sgbm"]["epe"] < 2.0
    assert mb["sgbm"]["epe"] < mb["bm"]["epe"]
    world = report["world"]["methods"]["sgbm"]
    assert world["all"]["bad3"] < 0.15  # the world is matchable
    assert [r["depth_lo"] for r in world["by_distance"]] == [0, 10, 20, 30, 40, 60]
    for name in ("stereo_middlebury.png", "stereo_world.png", "stereo_world_bins.png"):
        assert (tmp_path / "run" / name).stat().st_size > 1000
