"""The flying-objects pretraining set: exact disparity, determinism, the source's contract."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from entangle.data import flying
from entangle.data.flying import FlyingConfig, FlyingSource, render_index
from entangle.data.world import WorldConfig

SMALL = {"height": 48, "width": 96}


def test_config_checks_sizes_and_uses_the_street_camera():
    cfg = FlyingConfig()
    cam = WorldConfig().camera
    assert cfg.camera == cam and cfg.focal_baseline == pytest.approx(cam.focal * cam.baseline)
    assert cfg.near_depth == pytest.approx(cfg.focal_baseline / 63)       # one pixel under 64
    with pytest.raises(ValueError, match="multiples of 16"):
        FlyingConfig(height=50)
    with pytest.raises(ValueError, match="does not fit"):
        FlyingConfig(width=640)
    assert FlyingConfig.from_dict(cfg.to_dict()) == cfg


def test_disparity_is_exact_f_b_over_depth_and_matches_the_right_view():
    cfg = FlyingConfig.from_dict(SMALL)
    for i in range(3):
        img = render_index(cfg, 1, i)
        d, z = img["disparity"], img["depth"]
        assert img["left"].shape == (48, 96, 3) and img["left"].dtype == np.uint8
        assert np.isfinite(z).all() and (d > 0).all() and d.max() < cfg.max_disp
        np.testing.assert_allclose(d * z, cfg.focal_baseline, rtol=1e-5)
        # the right image sampled at x - d is the left image, up to noise, occlusions and edges
        H, W = d.shape
        xs = np.arange(W, dtype=np.float32)[None] - d
        ys = np.repeat(np.arange(H, dtype=np.float32)[:, None], W, axis=1)
        warped = cv2.remap(img["right"], xs, ys, cv2.INTER_LINEAR).astype(float)
        left, right = img["left"].astype(float), img["right"].astype(float)
        inner = (slice(2, -2), slice(int(d.max()) + 2, -2))
        assert np.median(np.abs(warped - left)[inner]) < 0.6 * np.median(np.abs(right - left)[inner])


def test_objects_fill_the_depth_range_and_image_i_depends_on_seed_and_i_only():
    cfg = FlyingConfig.from_dict(SMALL)
    disp = np.concatenate([render_index(cfg, 0, i)["disparity"].ravel() for i in range(12)])
    assert disp.max() > 30 and disp.min() < 3                 # near objects and far backgrounds
    a = render_index(cfg, 0, 5)
    b = render_index(cfg, 0, 5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["left"], render_index(cfg, 1, 5)["left"])
    assert not np.array_equal(a["left"], render_index(cfg, 0, 6)["left"])


def test_source_serves_the_stereo_outputs_and_caches_them(tmp_path, monkeypatch):
    monkeypatch.setattr(flying, "GENERATED", tmp_path)
    src = FlyingSource(n_train=4, n_val=2, seed=3, config=SMALL, workers=1)
    train = src.load("train", seed=9)
    assert set(train) == set(FlyingSource.output_kinds) and not FlyingSource.uses_seed
    assert train["left"].shape == (4, 48, 96, 3) and train["disparity"].shape == (4, 48, 96)
    cfg = src.flying_config()
    assert (train["calib"][:, 0, 0] == np.float32(cfg.camera.focal)).all()
    np.testing.assert_allclose(train["baseline"], cfg.camera.baseline)
    # image i of the train split is image i of the set; val continues after the train images
    np.testing.assert_array_equal(train["left"][2], render_index(cfg, 3, 2)["left"])
    val = src.load("val", seed=0)
    np.testing.assert_array_equal(val["left"][1], render_index(cfg, 3, 5)["left"])
    # the second load reads the cached arrays (memory-mapped)
    again = src.load("train", seed=0)
    assert isinstance(again["left"], np.memmap) and np.array_equal(again["left"], train["left"])
    with pytest.raises(ValueError, match="unknown split"):
        src.load("large", seed=0)


def test_a_stereo_net_fits_on_flying_objects():
    from entangle.models.stereo import StereoNet
    src = FlyingSource(n_train=4, n_val=0, config={"height": 32, "width": 64, "max_disp": 32},
                       workers=1, cache=False)
    data = src.load("train", 0)
    assert data["disparity"].max() < 32
    node = StereoNet(max_disp=32, channels=8, groups=4, volume_channels=4, epochs=1, batch_size=2)
    node.fit({k: data[k] for k in ("left", "right", "calib", "baseline")},
             {"disparity": data["disparity"]}, seed=0)
    preds = node.predict({k: data[k] for k in ("left", "right", "calib", "baseline")})
    assert preds["disparity"].shape == (4, 32, 64) and np.isfinite(preds["depth"]).all()
