"""Corruptions: severity ordering, determinism, dtype/shape, stereo pairs and clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from entangle.analysis.corruptions import (CORRUPTIONS, CorruptionError, check_severity, corrupt,
                                           corrupt_pair)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    return load_digits().images[:64].astype(np.float32) / 16.0          # (64, 8, 8) in [0, 1]


@pytest.fixture(scope="module")
def street():
    rng = np.random.default_rng(0)
    raw = (rng.random((6, 48, 160, 3)) * 255).astype(np.uint8)
    return np.stack([cv2.GaussianBlur(im, (7, 7), 2.0) for im in raw])  # (6, 48, 160, 3) uint8


def change(a: np.ndarray, b: np.ndarray) -> float:
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / scale)


def corrupted(images, name, severity, seed=0):
    if CORRUPTIONS[name].stereo_only:
        return corrupt_pair(images, images, name, severity, seed=seed)[1]
    return corrupt(images, name, severity, seed=seed)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("images", ["digits", "street"])
def test_severity_one_changes_images_less_than_severity_five(name, images, request):
    x = request.getfixturevalue(images)
    mild, harsh = change(corrupted(x, name, 1), x), change(corrupted(x, name, 5), x)
    assert 0 < mild < harsh, f"{name} on {images}: severity 1 changed {mild:.4f}, severity 5 {harsh:.4f}"


@pytest.mark.parametrize("name", [n for n, c in CORRUPTIONS.items() if not c.stereo_only])
def test_dtype_shape_range_and_determinism(name, digits, street):
    for x in (digits, street, street[..., 0]):
        out = corrupt(x, name, 3, seed=7)
        assert out.shape == x.shape and out.dtype == x.dtype
        if out.dtype.kind == "f":
            assert out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_array_equal(out, corrupt(x, name, 3, seed=7))
    noisy = [corrupt(digits, "gaussian_noise", 2, seed=s) for s in (0, 1)]
    assert not np.array_equal(*noisy)  # the corruption seed matters where draws are random


def test_stereo_pairs_are_consistent_where_physical(street):
    left, right = corrupt_pair(street, street, "motion_blur", 4)
    np.testing.assert_array_equal(left, right)           # one rig, one blur kernel
    left, right = corrupt_pair(street, street, "fog", 4)
    np.testing.assert_array_equal(left, right)           # one fog field
    left, right = corrupt_pair(street, street, "gaussian_noise", 4)
    assert not np.array_equal(left, right)               # each camera has its own sensor noise
    left, right = corrupt_pair(street, street, "stereo_mismatch", 3)
    np.testing.assert_array_equal(left, street)          # only the right camera is off
    assert right.mean() < street.mean()                  # gain < 1, gamma > 1 darken it
    with pytest.raises(CorruptionError, match="needs a stereo pair"):
        corrupt(street, "stereo_mismatch", 1)


@pytest.mark.parametrize("bad", [0, 6, -1, 2.5, True, "3"])
def test_severity_outside_one_to_five_is_refused(bad, digits):
    with pytest.raises(CorruptionError, match=r"severity must be an integer from 1 to 5 \(option 'severity'\)"):
        corrupt(digits, "contrast", bad)
    with pytest.raises(CorruptionError, match="option 'severities'"):
        check_severity(bad)


def test_unknown_corruption_and_bad_images_are_named(digits):
    with pytest.raises(CorruptionError, match=r"unknown corruption 'gausian_noise'.*did you mean 'gaussian_noise'"):
        corrupt(digits, "gausian_noise", 1)
    with pytest.raises(CorruptionError, match=r"floats in \[0, 16\]"):
        corrupt(digits * 16, "contrast", 1)
    with pytest.raises(CorruptionError, match="must be \\(N, H, W\\)"):
        corrupt(digits[0], "contrast", 1)
    with pytest.raises(CorruptionError, match="differ in shape"):
        corrupt_pair(digits, digits[:3], "fog", 1)
