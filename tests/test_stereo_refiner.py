"""The hybrid stereo upstream: SGBM's answer plus a learned residual refiner.

The refiner must start as the identity (its output *is* the classical disparity, bit for bit),
learn what a classical map gets systematically wrong, follow the node contract, and refuse bad
input with one line naming the field.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from entangle.data.labels import CAR, LABEL_COLUMNS, L
from entangle.models.refine_net import (IN_CHANNELS, DisparityRefiner, RefinerConfig, edge_aware_mean,
                                        edge_aware_means, refiner_features)
from entangle.models.stereo import ClassicalStereo, file_sha256
from entangle.node import Ragged
from entangle.models.stereo_refiner import EdgeAwareMeans, RefinerCheckpoint, StereoRefiner, save_refiner
from entangle.testing import check_node
from test_stereo_net import random_dot_pairs, stereo_inputs

SMALL = dict(channels=4, dilations=[1, 2], device="cpu", batch_size=3, crop=None)


@pytest.fixture(scope="module")
def dots():
    """Random-dot pairs with SGBM's answer on them, as the pipeline's sgbm node gives it."""
    torch.set_num_threads(1)
    left, right, disp = random_dot_pairs(6, h=32, w=64, seed=3, max_disp=12)
    x = stereo_inputs(left, right)
    sgbm = ClassicalStereo(method="sgbm", params={"num_disparities": 16}).fit({}, {}, seed=0).predict(x)
    return {**x, "disparity": sgbm["disparity"], "matched": sgbm["matched"]}, {"disparity": disp}, sgbm


def test_an_untrained_refiner_is_sgbm_bit_for_bit(dots):
    x, y, sgbm = dots
    for node in (StereoRefiner(epochs=0, **SMALL), StereoRefiner(epochs=0, split=True, smooth=[3, 5], **SMALL),
                 StereoRefiner(epochs=0, device="cpu", crop=None)):
        out = node.fit(x, y, seed=0).predict(x)
        assert np.array_equal(out["disparity"], sgbm["disparity"])
        assert np.array_equal(out["depth"], sgbm["depth"])
        assert np.array_equal(out["focal_baseline"], sgbm["focal_baseline"])
    # and so is its score, every metric of it
    assert node.score(out, y) == ClassicalStereo(method="sgbm").score(sgbm, y)


def test_sgbm_reports_which_pixels_it_matched(dots):
    x, _, sgbm = dots
    m = sgbm["matched"].astype(bool)
    assert sgbm["matched"].dtype == np.uint8 and m.any() and not m.all()
    assert not m[:, :, :16].any()      # no full search range left of num_disparities
    raw = ClassicalStereo(method="sgbm", params={"num_disparities": 16}, fill_holes=False).fit(
        {}, {}, seed=0).predict({k: x[k] for k in ("left", "right", "calib", "baseline")})
    assert np.array_equal(raw["disparity"] > 0, m)


def test_refiner_follows_the_node_contract(dots):
    x, y, _ = dots
    check_node(StereoRefiner(epochs=1, **SMALL), x, y)


def test_edge_aware_means_node_follows_the_node_contract(dots):
    x, y, _ = dots
    out = check_node(EdgeAwareMeans(smooth=[3, 5]), {"disparity": x["disparity"], "matched": x["matched"]}, y)
    assert out["candidates"].shape == (6, 2, 32, 64)


@pytest.mark.parametrize("split", [False, True])
def test_training_removes_a_systematic_bias_of_the_classical_map(dots, split):
    """A classical answer 0.6 px too far everywhere: the refiner learns to add it back."""
    x, y, _ = dots
    biased = np.where(y["disparity"] > 0, y["disparity"] - 0.6, 0).astype(np.float32)
    xb = {**x, "disparity": biased, "matched": np.ones_like(x["matched"])}
    node = StereoRefiner(epochs=30, lr=1e-2, split=split, smooth=[5] if split else [], **SMALL).fit(xb, y, seed=0)
    before = np.abs(biased - y["disparity"]).mean()
    after = np.abs(node.predict(xb)["disparity"] - y["disparity"]).mean()
    assert after < 0.5 * before, (before, after)
    assert np.all(np.isfinite(node.train_loss_)) and node.train_loss_[-1] < node.train_loss_[0]


def test_the_two_objectives_train_different_refiners_from_one_start(dots):
    x, y, _ = dots
    start = StereoRefiner(epochs=2, lr=1e-2, **SMALL).fit(x, y, seed=0)
    outs = {}
    for objective in ("disparity", "depth"):
        node = StereoRefiner(objective=objective, epochs=2, lr=1e-2, **SMALL)
        node.init_from(start)
        outs[objective] = node.fit(x, y, seed=1).predict(x)["disparity"]
    assert not np.array_equal(outs["disparity"], outs["depth"])


def test_fine_tuning_for_zero_epochs_keeps_the_start(dots):
    x, y, _ = dots
    start = StereoRefiner(epochs=2, lr=1e-2, **SMALL).fit(x, y, seed=0)
    node = StereoRefiner(epochs=0, **SMALL)
    node.init_from(start)
    np.testing.assert_allclose(node.fit(x, y, seed=5).predict(x)["disparity"],
                               start.predict(x)["disparity"], rtol=0, atol=1e-5)


def test_receptive_field_is_what_the_config_says_and_about_sixty_pixels():
    cfg = RefinerConfig()
    assert 60 <= cfg.receptive_field <= 90
    net = DisparityRefiner(cfg).eval()
    torch.nn.init.normal_(net.out.weight)          # a trained last layer: the correction reads its field
    f = torch.randn(1, IN_CHANNELS, 16, 160, generator=torch.Generator().manual_seed(0)).requires_grad_()
    net.correction(f)[0, 8, 80].backward()
    cols = torch.nonzero(f.grad.abs().sum(dim=(0, 1, 2))).flatten()
    width = int(cols.max() - cols.min() + 1)
    assert 0.8 * cfg.receptive_field <= width <= cfg.receptive_field


def test_split_refiner_reads_a_local_field_where_matched_and_the_context_where_not():
    """Replace, refine: a matched pixel's correction cannot carry corrections across an edge."""
    cfg = RefinerConfig(split=True)
    net = DisparityRefiner(cfg).eval()
    for layer in (net.out, net.local_out):          # trained last layers
        torch.nn.init.normal_(layer.weight)
    f = torch.randn(1, IN_CHANNELS, 16, 160, generator=torch.Generator().manual_seed(0))
    widths = {}
    for name, invalid in (("matched", 0.0), ("unmatched", 1.0)):
        g = f.clone()
        g[:, 4] = invalid
        g.requires_grad_()
        net.correction(g)[0, 8, 80].backward()
        cols = torch.nonzero(g.grad.abs().sum(dim=(0, 1, 2))).flatten()
        widths[name] = int(cols.max() - cols.min() + 1)
    assert widths["matched"] == cfg.local_field == 3
    assert 0.8 * cfg.receptive_field <= widths["unmatched"] <= cfg.receptive_field


def test_features_are_the_documented_channels():
    left, right = torch.zeros(2, 3, 16, 32), torch.zeros(2, 3, 16, 32)
    d = torch.full((2, 16, 32), 3.25)
    f = refiner_features(left, right, d, torch.zeros(2, 16, 32), 64.0)
    assert f.shape == (2, IN_CHANNELS, 16, 32) == (2, 17, 16, 32)
    assert torch.allclose(f[:, 3], d / 64.0)
    # the sub-pixel phase: sin and cos of 2π·d
    assert torch.allclose(f[:, 5], torch.full_like(d, 1.0), atol=1e-5)      # sin(2π·0.25)
    assert torch.allclose(f[:, 6], torch.zeros_like(d), atol=1e-5)

    # an edge-aware candidate per window size, as its difference from d0
    f = refiner_features(left, right, d, torch.zeros(2, 16, 32), 64.0, smooth=(3, 5))
    assert f.shape[1] == RefinerConfig(smooth=(3, 5)).in_channels == 19
    assert torch.allclose(f[:, -2:], torch.zeros(2, 2, 16, 32), atol=1e-6)      # a flat map stays


def test_edge_aware_candidates_average_a_surface_and_stop_at_its_edge():
    gen = torch.Generator().manual_seed(0)
    truth = torch.where(torch.arange(40.0) < 20, 10.0, 20.0).expand(1, 30, 40)   # a 10 px step
    noisy = truth + 0.3 * torch.randn(1, 30, 40, generator=gen)
    matched = torch.ones(1, 30, 40)
    smooth = edge_aware_mean(noisy, matched, 9, 0.7)
    inner = (slice(None), slice(5, 25))
    assert float((smooth - truth)[inner].abs().mean()) < 0.5 * float((noisy - truth)[inner].abs().mean())
    assert float((smooth - truth)[inner][..., 17:23].abs().max()) < 0.5      # no mixing across the step
    # unmatched neighbours do not count, and a pixel with no matched neighbour keeps its value
    holes = matched.clone()
    holes[..., 10:15, 10:15] = 0
    filled = noisy.clone()
    filled[..., 10:15, 10:15] = 99.0
    assert torch.allclose(edge_aware_mean(filled, holes, 3, 0.7)[..., 9, 9],
                          edge_aware_mean(noisy, holes, 3, 0.7)[..., 9, 9])
    alone = torch.zeros(1, 30, 40)
    assert torch.equal(edge_aware_mean(noisy, alone, 5, 0.7), noisy)



def test_edge_aware_means_are_the_definition_computed_pixel_by_pixel():
    """The one-pass computation against the formula, written out per pixel and per window."""
    gen = torch.Generator().manual_seed(1)
    d = 5.0 + 3.0 * torch.rand(2, 9, 11, generator=gen)
    m = (torch.rand(2, 9, 11, generator=gen) > 0.3).float()
    got = edge_aware_means(d, m, (3, 5), 0.7).numpy()
    dn, mn = d.double().numpy(), m.double().numpy()
    for b in range(2):
        for y in range(9):
            for x in range(11):
                for i, k in enumerate((3, 5)):
                    r = k // 2
                    ys, xs = slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1)
                    wgt = mn[b, ys, xs] * np.exp(-0.5 * ((dn[b, ys, xs] - dn[b, y, x]) / 0.7) ** 2)
                    want = (wgt * dn[b, ys, xs]).sum() / wgt.sum() if wgt.sum() > 1e-6 else dn[b, y, x]
                    assert abs(got[b, i, y, x] - want) < 1e-4


def test_candidates_computed_once_by_their_node_give_the_same_refiner(dots):
    """Wired from an EdgeAwareMeans node (once per scene, every seed), the candidates train and
    predict what the refiner computing them itself does, up to float rounding."""
    x, y, _ = dots
    opts = dict(SMALL, split=True, smooth=[3, 5], smooth_range=0.7, epochs=3, lr=0.01, crop=[16, 32])
    means = EdgeAwareMeans(smooth=[3, 5], smooth_range=0.7).fit({}, {}, seed=0)
    cand = means.predict({"disparity": x["disparity"], "matched": x["matched"]})["candidates"]
    assert cand.shape == (6, 2, 32, 64) and cand.dtype == np.float32
    own = StereoRefiner(**opts).fit(x, y, seed=0).predict(x)["disparity"]
    wired = {**x, "candidates": cand}
    given = StereoRefiner(**opts).fit(wired, y, seed=0).predict(wired)["disparity"]
    moved = np.abs(own - x["disparity"]).max()
    assert moved > 0.02                                         # the training did move it
    assert np.abs(given - own).max() < 0.01 * moved


@pytest.mark.parametrize("means, says", [
    (dict(smooth=[3, 5], smooth_range=1.5), "differs from this node's smooth=[3, 5], smooth_range=0.7"),
    (dict(smooth=[5], smooth_range=0.7), "input 'candidates' must have shape (6, 2, 32, 64)"),
])
def test_candidates_made_with_other_windows_or_range_are_refused(dots, means, says):
    x, y, _ = dots
    cand = EdgeAwareMeans(**means).fit({}, {}, seed=0).predict(
        {"disparity": x["disparity"], "matched": x["matched"]})["candidates"]
    with pytest.raises(ValueError, match=r"StereoRefiner\(.*" + re.escape(says)):
        StereoRefiner(**dict(SMALL, split=True, smooth=[3, 5], epochs=1)).fit({**x, "candidates": cand}, y, seed=0)



def test_a_refiner_can_start_at_an_edge_aware_mean_of_the_classical_map(dots):
    """blend_start [0, 1]: untrained, matched pixels are the 5 x 5 mean, unmatched ones SGBM's
    filled value (the classical answer the refiner learns from)."""
    x, y, sgbm = dots
    out = StereoRefiner(epochs=0, split=True, smooth=[3, 5], blend_start=[0, 1], **SMALL).fit(x, y, seed=0).predict(x)
    matched = sgbm["matched"].astype(bool)
    mean = edge_aware_mean(torch.from_numpy(sgbm["disparity"]), torch.from_numpy(matched).float(), 5, 0.7).numpy()
    assert np.abs(out["disparity"] - mean)[matched].max() < 1e-4
    assert np.array_equal(out["disparity"][~matched], sgbm["disparity"][~matched])
    assert np.abs(mean - sgbm["disparity"])[matched].max() > 0.1    # and that start is not SGBM


def _one_car_per_scene(disp, fb):
    """A car's label row per scene whose box is rows 8-23, columns 20-43 and whose extent holds
    every depth in it: its own pixels are the box's valid pixels."""
    rows = []
    for d, f in zip(disp, fb):
        row = np.zeros(len(LABEL_COLUMNS), np.float32)
        depth = f / d[8:24, 20:44][d[8:24, 20:44] > 0]
        row[[L["cls"], L["z"], L["l"], L["w"]]] = CAR, float(np.median(depth)), 1e4, 1e4
        row[[L["x1"], L["y1"], L["x2"], L["y2"]]] = 20, 8, 43, 23
        rows.append(row[None])
    return Ragged.from_list(rows, width=len(LABEL_COLUMNS))


def test_object_weight_weighs_the_labelled_objects_pixels_in_the_loss(dots):
    """The first step's loss (whole images, one batch, the start is SGBM) is the declared mean:
    smooth-L1 per pixel, the objects' own pixels weighted by object_weight, the rest by 1."""
    x, y, sgbm = dots
    fb = sgbm["focal_baseline"].astype(np.float64)
    labels = _one_car_per_scene(y["disparity"], fb)
    gt, d0 = y["disparity"].astype(np.float64), sgbm["disparity"].astype(np.float64)
    valid = gt > 0
    box = np.zeros_like(valid)
    box[:, 8:24, 20:44] = True
    err = np.abs(d0 - gt)
    per = np.where(err < 0.5, 0.5 * err ** 2 / 0.5, err - 0.25)
    for weight in (1.0, 10.0):
        node = StereoRefiner(epochs=1, object_weight=weight, beta=0.5, **{**SMALL, "batch_size": 6})
        node.fit(x, {**y, "labels": labels}, seed=0)
        w = np.where(box, weight, 1.0)[valid]
        np.testing.assert_allclose(node.train_loss_[0], (w * per[valid]).sum() / w.sum(), rtol=1e-4)
    # weight 1 reads no labels and trains the very refiner it trains without them
    plain = StereoRefiner(epochs=1, **SMALL).fit(x, y, seed=0)
    ones = StereoRefiner(epochs=1, object_weight=1, **SMALL).fit(x, {**y, "labels": labels}, seed=0)
    assert np.array_equal(plain.predict(x)["disparity"], ones.predict(x)["disparity"])


def test_fine_tuning_one_head_keeps_the_other_heads_pixels_at_the_start(dots):
    x, y, _ = dots
    opts = dict(split=True, smooth=[3, 5], blend_start=[0, 1], **SMALL)
    start = StereoRefiner(epochs=0, **opts).fit(x, y, seed=0).predict(x)["disparity"]
    out = {mode: StereoRefiner(epochs=3, lr=1e-2, fine_tune=mode, **opts).fit(x, y, seed=0).predict(x)["disparity"]
           for mode in ("all", "unmatched", "matched")}
    matched = x["matched"].astype(bool)
    for mode, kept, learned in (("unmatched", matched, ~matched), ("matched", ~matched, matched)):
        assert np.array_equal(out[mode][kept], start[kept]), mode
        assert not np.array_equal(out[mode][learned], start[learned]), mode
    assert not np.array_equal(out["all"][matched], start[matched])
    assert not np.array_equal(out["all"][~matched], start[~matched])
    with pytest.raises(ValueError, match="fine_tune must be one of .'all', 'unmatched', 'matched'., got 'none'"):
        StereoRefiner(epochs=1, fine_tune="none", **opts).fit(x, y, seed=0)
    with pytest.raises(ValueError, match="fine_tune 'matched' needs split: true"):
        StereoRefiner(epochs=1, fine_tune="matched", **SMALL).fit(x, y, seed=0)


@pytest.mark.parametrize("weight, targets, says", [
    (0.0, "labels", "object_weight must be a finite number > 0"),
    (float("inf"), "labels", "object_weight must be a finite number > 0"),
    ("heavy", "labels", "object_weight must be a finite number > 0"),
    (4.0, None, "object_weight 4 needs the target 'labels'"),
    (4.0, "short", "target 'labels' holds 5 scenes, the images 6"),
])
def test_a_bad_object_weight_or_missing_labels_is_refused_naming_the_field(dots, weight, targets, says):
    x, y, sgbm = dots
    labels = _one_car_per_scene(y["disparity"], sgbm["focal_baseline"])
    extra = {"labels": labels} if targets == "labels" else {"labels": labels.take(np.arange(5))} if targets else {}
    with pytest.raises(ValueError, match=says) as info:
        StereoRefiner(epochs=1, object_weight=weight, **SMALL).fit(x, {**y, **extra}, seed=0)
    assert "StereoRefiner" in str(info.value) and "\n" not in str(info.value)


# -- bad input: one line naming the field --------------------------------------------------------

@pytest.mark.parametrize("field, value, says", [
    ("beta", -1.0, "beta must be a finite number >= 0"),
    ("beta", float("nan"), "beta must be a finite number >= 0"),
    ("smooth", [4], "smooth must list odd window sizes"),
    ("blend_start", [0, 1], "blend_start must give one finite weight per smooth window"),
    ("smooth_range", 0.0, "smooth_range must be positive"),
])
def test_bad_refiner_options_are_refused_before_training_naming_the_field(dots, field, value, says):
    x, y, _ = dots
    with pytest.raises(ValueError, match=says) as info:
        StereoRefiner(epochs=1, **{**SMALL, field: value}).fit(x, y, seed=0)
    assert "StereoRefiner" in str(info.value) and "\n" not in str(info.value)


def test_a_classical_disparity_of_the_wrong_shape_is_refused_naming_the_input(dots):
    x, y, _ = dots
    node = StereoRefiner(epochs=0, **SMALL).fit(x, y, seed=0)
    with pytest.raises(ValueError, match=r"input 'disparity' must have the images' shape \(6, 32, 64\)"):
        node.predict({**x, "disparity": x["disparity"][:, :16]})
    with pytest.raises(ValueError, match="input 'matched'"):
        node.predict({**x, "matched": x["matched"][:3]})


def test_a_classical_map_without_a_valid_pixel_is_refused_naming_the_sample(dots):
    x, y, _ = dots
    matched = x["matched"].copy()
    matched[4] = 0
    with pytest.raises(ValueError, match="input 'matched' of sample 4 has no valid pixel"):
        StereoRefiner(epochs=1, **SMALL).fit({**x, "matched": matched}, y, seed=0)


def test_an_objective_typo_is_refused_naming_the_choices(dots):
    x, y, _ = dots
    with pytest.raises(ValueError, match=r"objective must be one of \('disparity', 'depth'\), got 'dept'"):
        StereoRefiner(objective="dept", **SMALL).fit(x, y, seed=0)


def test_a_crop_larger_than_the_images_is_refused(dots):
    x, y, _ = dots
    with pytest.raises(ValueError, match="crop 64x64 must fit in the images"):
        StereoRefiner(**{**SMALL, "crop": [64, 64]}).fit(x, y, seed=0)


def test_warm_start_refuses_another_network_naming_both_configs(dots):
    x, y, _ = dots
    start = StereoRefiner(epochs=0, **SMALL).fit(x, y, seed=0)
    with pytest.raises(ValueError, match="network configs differ.*channels=8.*channels=4"):
        StereoRefiner(**{**SMALL, "channels": 8}).init_from(start)


def test_checkpoint_round_trip_and_a_changed_digest_is_refused(dots, tmp_path):
    x, y, _ = dots
    node = StereoRefiner(epochs=2, lr=1e-2, **SMALL).fit(x, y, seed=0)
    path = tmp_path / "refiner.pt"
    digest = save_refiner(node, path, note="test")
    assert digest == file_sha256(path)
    ck = RefinerCheckpoint(path=str(path), sha256=digest, device="cpu").fit({}, {}, seed=0)
    np.testing.assert_allclose(ck.predict(x)["disparity"], node.predict(x)["disparity"], rtol=0, atol=1e-5)
    assert ck.meta_ == {"note": "test"}
    again = RefinerCheckpoint(path=str(path), sha256=digest, device="cpu").load_state_dict(ck.state_dict())
    np.testing.assert_array_equal(again.predict(x)["disparity"], ck.predict(x)["disparity"])
    with pytest.raises(ValueError, match=r"RefinerCheckpoint.sha256: checkpoint .* has SHA-256 [0-9a-f]{64}, not "
                                         r"the expected 0+1"):
        RefinerCheckpoint(path=str(path), sha256="0" * 63 + "1").fit({}, {}, seed=0)
    with pytest.raises(FileNotFoundError, match="RefinerCheckpoint.path: checkpoint .* does not exist"):
        RefinerCheckpoint(path=str(tmp_path / "missing.pt"), sha256=digest).fit({}, {}, seed=0)
