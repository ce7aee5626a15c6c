"""The stereo network and the stereo nodes: shapes, size errors, the node contract, learning.

Data are random-dot stereo pairs with a known disparity field (a slanted background plane and a
few fronto-parallel rectangles): the left image samples the right one at ``x - d(x, y)``.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from entangle.models.stereo import ClassicalStereo, OracleStereo, StereoNet
from entangle.models.stereo_metrics import (bin_names, depth_from_disparity, per_image_smooth_l1,
                                            smooth_l1, stereo_metrics)
from entangle.models.stereo_net import StereoNet as Net
from entangle.models.stereo_net import StereoNetConfig, disparity_to_depth, stacked_smooth_l1
from entangle.node import NodeError, NotFittedError
from entangle.testing import check_node

F, B = 241.5, 0.54            # KITTI-like focal length (px) and baseline (m) at 416 px width
FB = F * B


def random_dot_pairs(n: int, h: int = 64, w: int = 128, seed: int = 0, max_disp: float = 30.0):
    """``left, right`` (n, h, w, 3) uint8 and the left image's disparity (n, h, w) float32."""
    rng = np.random.default_rng(seed)
    left = np.zeros((n, h, w, 3), np.uint8)
    right = np.zeros_like(left)
    disp = np.zeros((n, h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    pad = int(np.ceil(max_disp)) + 2
    for i in range(n):
        d = rng.uniform(2, max_disp / 2) + rng.uniform(0, max_disp / 2) * ys / h
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            d[y0:y0 + rng.integers(8, h // 2), x0:x0 + rng.integers(8, w // 3)] = rng.uniform(2, max_disp)
        texture = cv2.GaussianBlur(rng.integers(0, 256, (h, w + pad, 3)).astype(np.uint8), (0, 0), 0.8)
        right[i] = texture[:, pad:]
        left[i] = cv2.remap(texture, xs + pad - d.astype(np.float32), ys, cv2.INTER_LINEAR)
        disp[i] = d
    return left, right, disp


def stereo_inputs(left, right):
    P2 = np.array([[F, 0, left.shape[2] / 2, 0], [0, F, left.shape[1] / 2, 0], [0, 0, 1, 0]], np.float32)
    return {"left": left, "right": right, "calib": np.repeat(P2[None], len(left), axis=0),
            "baseline": np.full(len(left), B, np.float32)}


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    left, right, disp = random_dot_pairs(6, h=32, w=64, seed=3, max_disp=12)
    return stereo_inputs(left, right), {"disparity": disp}


TINY = dict(max_disp=16, channels=8, groups=2, volume_channels=4, epochs=1, batch_size=3)


# -- the torch module ---------------------------------------------------------------------------

def test_network_outputs_three_stacked_full_resolution_disparities_in_range():
    net = Net(StereoNetConfig(max_disp=32, channels=8, groups=4, volume_channels=4, refine=False)).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 48, 80), torch.randn(2, 3, 48, 80))
    assert out.shape == (3, 2, 48, 80)
    assert torch.all(out >= 0) and torch.all(out <= 31)


@pytest.mark.parametrize("h,w", [(50, 64), (48, 70), (8, 64)])
def test_network_rejects_sizes_that_do_not_fit_its_downsampling(h, w):
    net = Net(StereoNetConfig(max_disp=16, channels=8, volume_channels=4))
    with pytest.raises(ValueError, match=rf"multiples of 16.*got {h}x{w}"):
        net(torch.zeros(1, 3, h, w), torch.zeros(1, 3, h, w))


@pytest.mark.parametrize("kw", [dict(max_disp=40), dict(channels=10, groups=4), dict(volume_channels=0)])
def test_config_rejects_inconsistent_sizes(kw):
    with pytest.raises(ValueError, match="StereoNetConfig"):
        StereoNetConfig(**kw)


def test_stacked_loss_weighs_outputs_point_five_point_seven_one():
    target = torch.zeros(1, 2, 2)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    outputs = torch.stack([torch.full((1, 2, 2), v) for v in (3.0, 0.0, 0.0)])   # smooth-L1(3) = 2.5
    assert stacked_smooth_l1(outputs, target, mask).item() == pytest.approx(0.5 * 2.5)
    outputs = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 0.0, 0.5)])   # smooth-L1(.5) = .125
    assert stacked_smooth_l1(outputs, target, mask).item() == pytest.approx(0.125)


def test_disparity_to_depth_is_f_times_b_over_d_per_image():
    d = torch.tensor([[[2.0, 4.0]], [[8.0, 0.0]]])
    z = disparity_to_depth(d, torch.tensor([100.0, 50.0]))
    assert torch.allclose(z[0], torch.tensor([[50.0, 25.0]]))
    assert z[1, 0, 0].item() == pytest.approx(6.25)
    assert torch.isfinite(z).all()


# -- metrics ------------------------------------------------------------------------------------

def test_metrics_on_a_hand_checked_example():
    # f·B = 120: disparities 12, 6, 3, 2 are 10, 20, 40, 60 m; predictions off by +1 px each
    gt = np.array([[[12.0, 6.0, 3.0, 2.0, 0.0, 1.0]]], np.float32)     # 0: invalid, 1: 120 m > 80
    pred = np.array([[[13.0, 7.0, 4.0, 3.0, 5.0, 1.0]]], np.float32)
    m = stereo_metrics(pred, gt, np.array([120.0]), max_depth=80.0)
    z_gt = np.array([10, 20, 40, 60.0])
    z_pred = 120 / np.array([13, 7, 4, 3.0])
    assert m["pixels"] == 4 and m["density"] == 1.0
    assert m["epe"] == pytest.approx(1.0)
    assert m["d1"] == 0.0                                 # 1 px is under the 3 px threshold
    assert m["depth_mae"] == pytest.approx(np.mean(np.abs(z_pred - z_gt)))
    assert m["depth_rmse"] == pytest.approx(np.sqrt(np.mean((z_pred - z_gt) ** 2)))
    assert m["depth_absrel"] == pytest.approx(np.mean(np.abs(z_pred - z_gt) / z_gt))
    # 10 m falls in the 10-20 bin ([low, high)), 40 and 60 m in 40-80
    assert [name for name, *_ in bin_names(80.0)] == ["0-10", "10-20", "20-30", "30-40", "40-80"]
    assert np.isnan(m["epe@0-10"]) and m["share@10-20"] == 0.25 and m["share@40-80"] == 0.5
    assert m["depth_mae@40-80"] == pytest.approx(np.mean(np.abs(z_pred[2:] - z_gt[2:])))
    assert m["depth_mae@near"] == pytest.approx(abs(z_pred[0] - 10))
    assert m["share@far"] == 0.75


def test_metrics_count_invalid_predictions_in_density_not_in_errors():
    gt = np.array([[[10.0, 10.0]]], np.float32)
    m = stereo_metrics(np.array([[[10.0, 0.0]]], np.float32), gt, np.array([100.0]))
    assert m["density"] == 0.5 and m["epe"] == 0.0


def test_numpy_smooth_l1_matches_torch():
    x = np.linspace(-3, 3, 61)
    expected = torch.nn.functional.smooth_l1_loss(torch.tensor(x), torch.zeros(61), reduction="none")
    np.testing.assert_allclose(smooth_l1(x), expected.numpy())
    per = per_image_smooth_l1(np.array([[2.0, 0.0], [0.0, 0.0]]), np.zeros((2, 2)),
                              np.array([[True, True], [False, False]]))
    np.testing.assert_allclose(per, [0.75, 0.0])


# -- the StereoNet node -------------------------------------------------------------------------

@pytest.mark.parametrize("objective", ["disparity", "depth"])
def test_stereo_net_node_follows_the_contract(tiny, objective):
    inputs, targets = tiny
    node = StereoNet(objective=objective, **TINY)
    preds = check_node(node, inputs, targets)
    assert preds["disparity"].shape == preds["depth"].shape == (6, 32, 64)
    assert preds["disparity"].dtype == preds["depth"].dtype == np.float32
    assert node.get_params()["objective"] == objective          # the unfitted original is untouched


def test_depth_output_is_f_times_b_over_disparity(tiny):
    inputs, targets = tiny
    inputs = dict(inputs, baseline=np.linspace(0.3, 0.6, 6).astype(np.float32))
    preds = StereoNet(**TINY).fit(inputs, targets, seed=0).predict(inputs)
    fb = inputs["calib"][:, 0, 0] * inputs["baseline"]
    np.testing.assert_allclose(preds["focal_baseline"], fb, rtol=1e-6)
    d = preds["disparity"]
    assert (d > 0.01).all()
    np.testing.assert_allclose(preds["depth"], fb[:, None, None] / d, rtol=1e-5)


def test_per_image_loss_is_the_objective_in_its_own_units(tiny):
    inputs, targets = tiny
    node = StereoNet(**TINY).fit(inputs, targets, seed=0)
    preds = node.predict(inputs)
    gt = targets["disparity"]
    z_gt = depth_from_disparity(gt, preds["focal_baseline"])
    mask = gt > 0
    loss_disp = node.loss(preds, targets)
    node.set_params(objective="depth")
    loss_depth = node.loss(preds, targets)
    np.testing.assert_allclose(loss_disp, per_image_smooth_l1(preds["disparity"], gt, mask))
    np.testing.assert_allclose(loss_depth, per_image_smooth_l1(preds["depth"], z_gt, mask))
    score = node.score(preds, targets)
    assert score["loss"] == pytest.approx(loss_depth.mean())
    assert StereoNet.metric == "depth_mae" and not StereoNet.higher_is_better


def test_training_on_random_dots_beats_a_constant_disparity_by_far():
    torch.set_num_threads(1)
    left, right, disp = random_dot_pairs(32, seed=0)
    tl, tr, tdisp = random_dot_pairs(8, seed=1)
    node = StereoNet(objective="disparity", max_disp=48, disp_step=4, refine=False, epochs=8, lr=3e-3,
                     batch_size=2)
    node.fit(stereo_inputs(left, right), {"disparity": disp}, seed=0)
    metrics = node.score(node.predict(stereo_inputs(tl, tr)), {"disparity": tdisp})
    constant = np.abs(tdisp - np.median(disp)).mean()        # the best constant (L1) predictor
    assert metrics["epe"] < 0.5 * constant, (metrics["epe"], constant)
    assert node.train_loss_[-1] < 0.5 * node.train_loss_[0]


def test_node_errors_name_the_node_and_the_problem(tiny):
    inputs, targets = tiny
    with pytest.raises(ValueError, match=r"StereoNet\(.*multiples of 16.*got 30x64"):
        StereoNet(**TINY).fit({k: (v[:, :30] if k in ("left", "right") else v) for k, v in inputs.items()},
                              {"disparity": targets["disparity"][:, :30]}, seed=0)
    with pytest.raises(ValueError, match="crop 48x64 is larger"):
        StereoNet(**dict(TINY, crop=[48, 64])).fit(inputs, targets, seed=0)
    with pytest.raises(ValueError, match="objective must be one of"):
        StereoNet(objective="disparities", **{k: v for k, v in TINY.items()}).fit(inputs, targets, seed=0)
    with pytest.raises(ValueError, match="input 'calib' must be P2 per image"):
        StereoNet(**TINY).fit(dict(inputs, calib=inputs["calib"][:, :, :3]), targets, seed=0)
    with pytest.raises(ValueError, match="input 'left' must be uint8"):
        StereoNet(**TINY).fit(dict(inputs, left=inputs["left"].astype(np.float32)), targets, seed=0)
    with pytest.raises(NotFittedError):
        StereoNet(**TINY).predict(inputs)


def test_nan_disparity_is_an_error_naming_node_and_sample(tiny):
    inputs, targets = tiny
    node = StereoNet(**TINY).fit(inputs, targets, seed=0)
    state = node.state_dict()
    state = {k: (v * float("nan") if k.endswith("heads.2.bias") else v) for k, v in state.items()}
    node.load_state_dict(state)
    with pytest.raises(NodeError, match=r"StereoNet\(.*NaN or infinite disparity for sample 0"):
        node.predict(inputs)


def test_crops_train_the_same_network_and_predict_full_images(tiny):
    inputs, targets = tiny
    node = StereoNet(**dict(TINY, crop=[16, 32])).fit(inputs, targets, seed=1)
    assert node.predict(inputs)["disparity"].shape == (6, 32, 64)


# -- oracle and classical stereo ----------------------------------------------------------------

def test_oracle_outputs_ground_truth_with_zero_loss(tiny):
    inputs, targets = tiny
    gt = targets["disparity"].copy()
    gt[:, :, :3] = 0                                  # invalid pixels stay invalid (depth 0)
    oracle_inputs = {"disparity_gt": gt, "calib": inputs["calib"], "baseline": inputs["baseline"]}
    for objective in ("disparity", "depth"):
        node = OracleStereo(objective=objective)
        preds = check_node(node, oracle_inputs, {"disparity": gt})
        np.testing.assert_array_equal(preds["disparity"], gt)
        assert (preds["depth"][:, :, :3] == 0).all()
        np.testing.assert_allclose(preds["depth"][:, :, 3:], FB / gt[:, :, 3:], rtol=1e-5)
        score = node.score(preds, {"disparity": gt})
        assert score["depth_mae"] == 0 and score["epe"] == 0 and score["loss"] == 0
    bad = gt.copy()
    bad[4, 5, 6] = np.inf
    with pytest.raises(NodeError, match=r"OracleStereo\(.*disparity for sample 4"):
        OracleStereo().fit(oracle_inputs, {}, seed=0).predict(dict(oracle_inputs, disparity_gt=bad))


@pytest.mark.parametrize("method", ["bm", "sgbm"])
def test_classical_stereo_node_wraps_opencv_matching(method):
    left, right, disp = random_dot_pairs(2, h=64, w=160, seed=5, max_disp=20)
    inputs = stereo_inputs(left, right)
    node = ClassicalStereo(method=method, params={"num_disparities": 32})
    preds = check_node(node, inputs, {"disparity": disp})
    score = node.score(preds, {"disparity": disp})
    assert score["epe"] < 0.5 * np.abs(disp - np.median(disp)).mean()
    holes = ClassicalStereo(method=method, params={"num_disparities": 32}, fill_holes=False)
    raw = holes.fit(inputs, {}, seed=0).predict(inputs)
    # OpenCV leaves the first num_disparities columns unmatched; filling takes them from the right
    assert (raw["disparity"][:, :, :32] == 0).all() and (raw["depth"][:, :, :32] == 0).all()
    assert (preds["disparity"][:, :, :32] > 0).mean() > 0.8
    assert holes.score(raw, {"disparity": disp})["density"] < score["density"]


# -- the disparity axis, the grid and the refinement --------------------------------------------

def test_half_pixel_volume_correlates_with_linearly_interpolated_right_features():
    """Candidate k of a 0.5-px volume: left at x against right at x - k/2 (linear between columns)."""
    from entangle.models.stereo_net import group_correlation_volume
    torch.manual_seed(0)
    left, right = torch.randn(1, 4, 3, 12), torch.randn(1, 4, 3, 12)
    volume = group_correlation_volume(left, right, 8, 2, step=0.5)        # (1, 2, 8, 3, 12)
    assert volume.shape == (1, 2, 8, 3, 12)
    lg, rg = left.view(1, 2, 2, 3, 12), right.view(1, 2, 2, 3, 12)
    for k in range(8):
        for x in range(k // 2 + 1, 12):
            shifted = rg[..., x - k // 2] if k % 2 == 0 else 0.5 * (rg[..., x - k // 2] + rg[..., x - k // 2 - 1])
            torch.testing.assert_close(volume[0, :, k, :, x], (lg[..., x] * shifted).mean(dim=2)[0])
        assert (volume[0, :, k, :, :k // 2] == 0).all()                     # off the image: zero


def test_soft_argmin_places_candidate_k_at_k_times_step_on_the_aligned_grid():
    from entangle.models.stereo_net import soft_argmin, upsample_aligned
    for step in (4, 2):
        score = torch.full((1, 64 // step, 2, 3), -50.0)
        score[0, 5] = 50.0                                  # all mass on candidate 5
        d = soft_argmin(score, 64, step, (8, 12))
        assert d.shape == (1, 8, 12)
        assert torch.allclose(d, torch.full_like(d, 5.0 * step), atol=1e-3)
    # feature column x is centred on image column 4x: a ramp over features is a ramp over pixels
    ramp = torch.arange(5, dtype=torch.float32).view(1, 1, 5).expand(1, 2, 5)
    up = upsample_aligned(ramp, (8, 20))
    np.testing.assert_allclose(up[0, 0, :17].numpy(), np.arange(17) / 4.0, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(disp_step=3), dict(max_disp=32, disp_step=1, head_kernel=2),
                                dict(refine_channels=0)])
def test_config_rejects_bad_disparity_steps_heads_and_refinement(kw):
    with pytest.raises(ValueError, match="StereoNetConfig"):
        StereoNetConfig(**kw)


def test_refinement_adds_a_fourth_full_resolution_output_weighted_one():
    torch.manual_seed(0)
    cfg = StereoNetConfig(max_disp=32, channels=8, groups=4, volume_channels=4, disp_step=2, refine=True)
    net = Net(cfg).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 48, 80), torch.randn(2, 3, 48, 80))
    assert cfg.num_outputs == 4 and out.shape == (4, 2, 48, 80)
    assert torch.all(out[3] >= 0) and not torch.equal(out[3], out[2])
    target, mask = torch.zeros(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool)
    outputs = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 0.0, 0.0, 0.5)])   # smooth-L1(.5) = .125
    assert stacked_smooth_l1(outputs, target, mask).item() == pytest.approx(0.125)


def test_refinement_trains_and_its_warp_reproduces_the_left_image():
    from entangle.models.stereo_net import warp_right
    left, right, disp = random_dot_pairs(1, h=32, w=64, seed=2, max_disp=12)
    to = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float()                     # noqa: E731
    warped = warp_right(to(right), torch.from_numpy(disp))
    inner = (slice(None), slice(None), slice(2, -2), slice(16, -2))
    assert (warped - to(left))[inner].abs().mean() < 0.25 * (to(right) - to(left))[inner].abs().mean()
    left, right, disp = random_dot_pairs(6, h=32, w=64, seed=3, max_disp=12)
    inputs, targets = stereo_inputs(left, right), {"disparity": disp}
    node = StereoNet(**dict(TINY, refine=True, disp_step=2))
    preds = check_node(node, inputs, targets)
    assert node.clone().fit(inputs, targets, seed=0).predict_stacked(inputs).shape == (4, 6, 32, 64)
    assert preds["disparity"].shape == (6, 32, 64)


def test_folding_batch_norm_keeps_the_function():
    from entangle.models.stereo_net import fused_for_inference
    torch.manual_seed(0)
    net = Net(StereoNetConfig(max_disp=16, channels=8, volume_channels=4, refine=True))
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 64), torch.randn(2, 3, 32, 64))      # batch statistics move
        net.eval()
        l, r = torch.randn(1, 3, 32, 64), torch.randn(1, 3, 32, 64)
        torch.testing.assert_close(fused_for_inference(net)(l, r), net(l, r), atol=1e-4, rtol=1e-4)


# -- warm starts and checkpoints ----------------------------------------------------------------

def test_warm_start_reproduces_the_source_before_any_step(tiny):
    inputs, targets = tiny
    source = StereoNet(**TINY).fit(inputs, targets, seed=0)
    expected = source.predict(inputs)["disparity"]
    still = StereoNet(**dict(TINY, epochs=0))
    still.init_from(source)
    assert still.fit(inputs, targets, seed=5) is still
    np.testing.assert_array_equal(still.predict(inputs)["disparity"], expected)
    frozen = StereoNet(**dict(TINY, lr=0.0))
    frozen.init_from(source)
    frozen.fit(inputs, targets, seed=5)
    # lr 0 leaves every weight as the source's (batch norm's running statistics follow the data)
    for (k, a), b in zip(source.module_.named_parameters(), frozen.module_.parameters()):
        torch.testing.assert_close(a, b, msg=k)
    # a random init is not the source: the warm start is what made them equal
    assert not np.array_equal(StereoNet(**dict(TINY, epochs=0)).fit(inputs, targets, seed=0)
                              .predict(inputs)["disparity"], expected)


def test_warm_start_refuses_another_network_naming_both_configs(tiny):
    inputs, targets = tiny
    source = StereoNet(**TINY).fit(inputs, targets, seed=0)
    other = StereoNet(**dict(TINY, disp_step=4))
    with pytest.raises(ValueError, match=r"disp_step=4.*disp_step=2"):
        other.init_from(source)
    with pytest.raises(NotFittedError):
        StereoNet(**TINY).init_from(StereoNet(**TINY))
    with pytest.raises(ValueError, match="StereoCheckpoint"):
        StereoNet(**TINY).init_from(OracleStereo())


def test_checkpoint_behaves_like_its_network_and_refuses_another_digest(tiny, tmp_path):
    from entangle.models.stereo import StereoCheckpoint, file_sha256, save_checkpoint
    inputs, targets = tiny
    source = StereoNet(**TINY).fit(inputs, targets, seed=0)
    path = tmp_path / "net.pt"
    digest = save_checkpoint(source, path, note="test")
    assert digest == file_sha256(path) and len(digest) == 64
    node = StereoCheckpoint(path=str(path), sha256=digest)
    preds = check_node(node, inputs, targets)
    np.testing.assert_array_equal(preds["disparity"], source.predict(inputs)["disparity"])
    loaded = node.clone().fit({}, {}, seed=0)
    assert loaded.meta_ == {"note": "test"} and loaded.network_config() == source.network_config()
    tuned = StereoNet(**dict(TINY, epochs=0))
    tuned.init_from(loaded)
    np.testing.assert_array_equal(tuned.fit(inputs, targets, seed=1).predict(inputs)["disparity"],
                                  preds["disparity"])
    with pytest.raises(ValueError, match=rf"{path.name}.*SHA-256 {digest}.*not the expected 00"):
        StereoCheckpoint(path=str(path), sha256="00" * 32).fit({}, {}, seed=0)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        StereoCheckpoint(path=str(tmp_path / "missing.pt"), sha256=digest).fit({}, {}, seed=0)


def test_pretraining_then_fine_tuning_beats_training_from_scratch():
    """The paper's schedule in miniature: many random-dot pairs, then a few steps on a few pairs."""
    torch.set_num_threads(1)
    kw = dict(max_disp=32, channels=8, groups=4, volume_channels=4, disp_step=4, refine=False,
              batch_size=4, lr=3e-3)
    many = random_dot_pairs(48, h=32, w=64, seed=10, max_disp=24)
    few = random_dot_pairs(4, h=32, w=64, seed=11, max_disp=24)
    test = random_dot_pairs(8, h=32, w=64, seed=12, max_disp=24)
    pre = StereoNet(**kw, epochs=4).fit(stereo_inputs(*many[:2]), {"disparity": many[2]}, seed=0)
    tuned = StereoNet(**kw, epochs=2)
    tuned.init_from(pre)
    tuned.fit(stereo_inputs(*few[:2]), {"disparity": few[2]}, seed=0)
    scratch = StereoNet(**kw, epochs=2).fit(stereo_inputs(*few[:2]), {"disparity": few[2]}, seed=0)
    epe = {name: node.score(node.predict(stereo_inputs(*test[:2])), {"disparity": test[2]})["epe"]
           for name, node in (("tuned", tuned), ("scratch", scratch))}
    assert epe["tuned"] < 0.85 * epe["scratch"], epe


def test_prediction_computes_only_the_last_output_and_it_is_the_stack_s_last(tiny):
    inputs, targets = tiny
    node = StereoNet(**dict(TINY, refine=True)).fit(inputs, targets, seed=0)
    stacked = node.predict_stacked(inputs)
    assert stacked.shape == (4, 6, 32, 64)
    np.testing.assert_allclose(node.predict(inputs)["disparity"], np.maximum(stacked[-1], 0), atol=1e-5)


def test_untrained_refinement_already_pulls_a_wrong_disparity_to_the_match():
    """Its local block-cost soft-argmin is a sub-pixel matcher before any training step."""
    from entangle.models.stereo_net import Refinement
    left, right, disp = random_dot_pairs(2, h=32, w=96, seed=4, max_disp=12)
    to = lambda a: (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255 - 0.45) / 0.25   # noqa: E731
    truth = torch.from_numpy(disp)
    refine = Refinement(8, 32).eval()
    with torch.no_grad():
        for err in (1.0, -0.7):
            out = refine(to(left), to(right), truth + err)
            inner = (slice(None), slice(4, -4), slice(20, -4))
            assert (out - truth)[inner].abs().median() < 0.5 * abs(err)


def test_training_after_prediction_in_the_same_process():
    """Prediction runs in inference mode; nothing it caches may break a later training step."""
    left, right, disp = random_dot_pairs(4, h=48, w=112, seed=6, max_disp=12)
    inputs = stereo_inputs(left, right)
    kw = dict(TINY, max_disp=32, disp_step=2)
    first = StereoNet(**kw, crop=[32, 64]).fit(inputs, {"disparity": disp}, seed=0)
    first.predict(inputs)                   # full-size upsampling matrices, made in inference mode
    StereoNet(**kw).fit(inputs, {"disparity": disp}, seed=1)      # and reused for training here
