"""The paper's illustrative experiments on the street-digits world: the splits, knobs and label
noise follow the paper's scheme; the ConvNet upstream keeps the node contract; every experiment
runs end to end (quick profile) and writes its report, figure and results table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from entangle.cli import run
from entangle.data.paper_digits import (COARSE_ONE, DIGITS, SETUPS, SLICES, PaperDigitsSource,
                                        difficulty, dirty_values, flip_labels)
from entangle.data.street_digits import ATTRIBUTE_NAMES
from entangle.analysis.paper_premises import check as premise_check
from entangle.models.convnet import ConvNet, ConvNetNode, LossAreaRankNode, augment, knn_error, training_rows
from entangle.models.resnet import ResNet18, ResNet18Node
from entangle.report.paper_toys import results_markdown
from entangle.stats import IDENTICAL, IMPROVED, WORSE, self_defeating
from entangle.study import ConfigError
from entangle.tasks.paper_toys import (NOT_PAPER_DEFAULT, PROTOCOL, apply_protocol, knob_values,
                                       protocol_from_config)
from entangle.testing import check_node

SPLITS = ("up_train", "up_test", "train", "large", "test")
SIZES = {"up_val": 20, "up_pool": 120, "up_test": 40, "train": 30, "large": 50, "test": 40}


def _source(setup: str, **kw) -> PaperDigitsSource:
    return PaperDigitsSource(setup=setup, sizes=SIZES, disk_cache=False, **kw)


@pytest.mark.parametrize("setup", SETUPS)
def test_splits_hold_the_setups_digits_sizes_and_validation_rows(setup):
    src = _source(setup)
    data = {s: src.load(s, 0) for s in SPLITS}
    up_digits, down_digits = DIGITS[setup]
    for s in SPLITS:
        assert set(np.unique(data[s]["digit"])) == set(up_digits if s.startswith("up_") else down_digits)
        assert data[s]["image"].shape[1:] == (32, 32, 3)
        assert set(data[s]) == set(src.output_kinds)
    up = data["up_train"]
    assert len(up["digit"]) == SIZES["up_val"] + SIZES["up_pool"]
    # the validation rows come first, then the pool; no other split holds validation rows
    assert up["holdout"].tolist() == [1] * SIZES["up_val"] + [0] * SIZES["up_pool"]
    assert all(data[s]["holdout"].sum() == 0 for s in SPLITS[1:])
    assert len(data["large"]["digit"]) == SIZES["large"]
    # every split is its own stream of the world: no image twice
    seen = [img.tobytes() for s in SPLITS for img in data[s]["image"]]
    assert len(seen) == len(set(seen))
    # study seeds are worlds of their own; a fixed data_seed pins the world
    assert not np.array_equal(src.load("test", 1)["image"], data["test"]["image"])
    fixed = _source(setup, data_seed=5)
    np.testing.assert_array_equal(fixed.load("test", 0)["image"], fixed.load("test", 3)["image"])
    assert fixed.uses_seed is False and src.uses_seed is True


def test_data_distribution_labels_are_the_papers_maps():
    d = _source("data_distribution").load("up_train", 0)
    np.testing.assert_array_equal(d["coarse"], np.isin(d["digit"], COARSE_ONE).astype(int))
    assert set(COARSE_ONE) == {6, 2, 3, 5, 8}
    down = _source("data_distribution").load("train", 0)
    np.testing.assert_array_equal(down["pair"], (down["digit"] == 7).astype(int))


def test_loss_function_dirty_slices_swap_exactly_half_of_each_pair():
    src = PaperDigitsSource(setup="loss_function", disk_cache=False,
                            sizes={**SIZES, "up_pool": 400})
    d = src.load("up_train", 3)
    pool = d["holdout"] == 0
    value, clean, digit = d["value"][pool], d["value_clean"][pool], d["digit"][pool]
    np.testing.assert_array_equal(d["value"][~pool], d["value_clean"][~pool])  # clean validation
    n = len(digit)
    for k in range(SLICES):
        rows = slice(k * n // SLICES, (k + 1) * n // SLICES)
        swapped = value[rows] != clean[rows]
        for a, b in ((1, 3), (7, 9)):
            members = np.isin(digit[rows], (a, b))
            expect = 0 if k == 0 else members.sum() // 2    # the first tenth is clean
            assert swapped[members].sum() == expect, (k, a, b)
            # a swap maps a to b and b to a: y -> a + b - y
            np.testing.assert_array_equal(value[rows][swapped & members], a + b - clean[rows][swapped & members])
    # the slices' swaps are drawn per slice: a longer pool adds slices, it never redraws one
    np.testing.assert_array_equal(dirty_values(digit, 3), value)
    for s in ("up_test", "train", "large", "test"):
        other = src.load(s, 3)
        np.testing.assert_array_equal(other["value"], other["value_clean"])
        assert set(np.unique(other["cls"])) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="multiple of 10"):
        PaperDigitsSource(setup="loss_function", sizes={**SIZES, "up_pool": 123})


def test_flip_labels_swaps_one_and_seven_in_the_fixed_order():
    digit = np.array([1, 7, 6, 1, 7, 6, 1, 7])
    order = np.array([0, 1, -1, 2, 3, -1, -1, 4])   # five ranked rows; -1 never swaps
    assert flip_labels(digit, order, noise=0.0, positive=1).tolist() == [1, 0, 0, 1, 0, 0, 1, 0]
    # noise 0.8 swaps int(0.5 * 0.8 * 5) = 2 rows: ranks 0 and 1
    assert flip_labels(digit, order, noise=0.8, positive=1).tolist() == [0, 1, 0, 1, 0, 0, 1, 0]
    assert flip_labels(digit, order, noise=0.8, positive=7).tolist() == [1, 0, 0, 0, 1, 0, 0, 1]
    # noise 1.0: int(2.5) = 2 rows, the paper's int(0.5 p n)
    assert flip_labels(digit, order, noise=1.0, positive=1).sum() == 3


def test_entanglement_order_ranks_the_pools_ones_and_sevens_by_difficulty():
    src = _source("entanglement")
    d = src.load("up_train", 0)
    pool = d["holdout"] == 0
    ranked = d["order"] >= 0
    np.testing.assert_array_equal(ranked, pool & np.isin(d["digit"], (1, 7)))
    assert sorted(d["order"][ranked].tolist()) == list(range(ranked.sum()))
    hard = difficulty(d["attributes"][ranked])
    by_order = hard[np.argsort(d["order"][ranked])]
    assert np.all(np.diff(by_order) <= 1e-12)          # hardest first
    # the hardest rows are the low-contrast, blurred, noisy ones
    contrast = d["attributes"][ranked][:, ATTRIBUTE_NAMES.index("contrast")]
    top = d["order"][ranked] < ranked.sum() // 2
    assert contrast[top].mean() < contrast[~top].mean()
    assert (src.load("test", 0)["order"] == -1).all()   # only the training pool is ever swapped
    # both upstreams' labels swap the same rows
    l1 = flip_labels(d["digit"], d["order"], noise=1.0, positive=1)
    l7 = flip_labels(d["digit"], d["order"], noise=1.0, positive=7)
    swapped = (l1 != (d["digit"] == 1))
    np.testing.assert_array_equal(swapped, l7 != (d["digit"] == 7))
    assert swapped.sum() == int(0.5 * ranked.sum())


def test_difficulty_orders_by_the_latents():
    table = np.zeros((3, len(ATTRIBUTE_NAMES)), np.float32)
    col = {n: ATTRIBUTE_NAMES.index(n) for n in ATTRIBUTE_NAMES}
    for i, (c, blur) in enumerate(((0.6, 0.2), (0.3, 0.8), (0.1, 1.4))):
        table[i, col["contrast"]], table[i, col["blur"]] = c, blur
        table[i, col["scale"]] = table[i, col["resolution"]] = 1.0 - 0.1 * i
        table[i, col["noise"]], table[i, col["jpeg_quality"]] = 0.01 * i, 90 - 20 * i
    assert np.argsort(-difficulty(table)).tolist() == [2, 1, 0]


def test_svhn_folder_is_a_drop_in(tmp_path):
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    for name, n in (("train", 2000), ("test", 400)):
        X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 10 is the digit 0
        savemat(tmp_path / f"{name}_32x32.mat", {"X": X, "y": y})
    src = PaperDigitsSource(setup="data_distribution", sizes=SIZES, svhn_root=str(tmp_path))
    data = {s: src.load(s, 0) for s in SPLITS}
    assert set(np.unique(data["train"]["digit"])) == {1, 7} and len(data["train"]["digit"]) == 30
    assert set(np.unique(data["up_train"]["digit"])) == set(range(10))
    train_rows = np.concatenate([data[s]["index"] for s in SPLITS if s != "test"])
    assert len(train_rows) == len(np.unique(train_rows))  # disjoint rows of the train file
    assert np.isnan(data["train"]["attributes"]).all()
    ent = PaperDigitsSource(setup="entanglement", sizes=SIZES, svhn_root=str(tmp_path)).load("up_train", 0)
    assert sorted(ent["order"][ent["order"] >= 0].tolist()) == list(range(int(np.isin(
        ent["digit"][ent["holdout"] == 0], (1, 7)).sum())))


def test_convnet_trunk_gives_the_papers_512_features():
    import torch
    net = ConvNet(10)
    out, feat = net(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10) and feat.shape == (2, 512) and net.feat_dim == 512
    deep = ConvNet(10, hidden=(512, 256, 128, 64))
    assert [m.out_features for m in deep.head.body if hasattr(m, "out_features")] == [512, 256, 128, 64]
    assert ConvNet(3, size=24).feat_dim == 32 * 3 * 3


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_convnet_node_keeps_the_contract(task):
    d = _source("loss_function").load("up_train", 0)
    y = d["digit"] if task == "classification" else d["value"]
    node = ConvNetNode(task=task, steps=6, evals=3, batch_size=16, device="cpu", subsample=0.5,
                       features=task == "classification")
    preds = check_node(node, {"image": d["image"], "holdout": d["holdout"]}, {"y": y},
                       eval_inputs={"image": d["image"][:30]}, eval_targets={"y": y[:30]})
    assert preds["pred"].shape == (30,)
    if task == "classification":
        assert preds["feat"].shape == (30, 512) and preds["feat"].dtype == np.float32
        assert set(node.clone().fit({"image": d["image"]}, {"y": y}, seed=0).classes_) == {1, 3, 7, 9}
    fitted = node.clone().fit({"image": d["image"], "holdout": d["holdout"]}, {"y": y}, seed=0)
    # the knob's share of the pool, in the source's order; validation rows are never trained on
    assert fitted.n_train_ == round(0.5 * SIZES["up_pool"])
    assert 0 <= fitted.best_epoch_ < 3


def test_resnet18_is_torchvisions_with_the_papers_512_features():
    import torch
    net = ResNet18(10)
    # torchvision.models.resnet18(num_classes=10) has 11,181,642 parameters (11,689,512 at 1,000
    # classes, less 512 x 990 + 990 for the narrower fc)
    assert sum(p.numel() for p in net.parameters()) == 11_181_642
    out, feat = net(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10) and feat.shape == (2, 512) and net.feat_dim == 512
    assert (feat >= 0).all()                          # pooled after the last block's ReLU
    deep = ResNet18(4, hidden=(512, 256))
    assert [m.out_features for m in deep.head.body if hasattr(m, "out_features")] == [512, 256]
    assert ResNet18(3)(torch.zeros(2, 3, 24, 24))[1].shape == (2, 512)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_resnet18_node_keeps_the_contract_without_channels(task):
    d = _source("loss_function").load("up_train", 0)
    y = d["digit"] if task == "classification" else d["value"]
    node = ResNet18Node(task=task, epochs=1, checkpoint="last", batch_size=32, device="cpu",
                        subsample=0.2, crop=4)
    assert "channels" not in node.get_params() and not hasattr(node, "channels")
    with pytest.raises(TypeError):
        ResNet18Node(channels=(8, 8))
    preds = check_node(node, {"image": d["image"], "holdout": d["holdout"]}, {"y": y},
                       eval_inputs={"image": d["image"][:20]}, eval_targets={"y": y[:20]})
    assert preds["pred"].shape == (20,) and preds["feat"].shape == (20, 512)
    fitted = node.clone().fit({"image": d["image"], "holdout": d["holdout"]}, {"y": y}, seed=0)
    assert fitted.n_train_ == round(0.2 * SIZES["up_pool"]) and fitted.best_epoch_ == -1


def test_resnet18_node_refuses_a_last_minibatch_of_one_before_training():
    # batch norm cannot train on one row at ResNet-18's 1x1 last stage: torch would fail at the
    # end of the first epoch with a message about channels; the node says why before any step
    images = np.random.default_rng(0).random((33, 32, 32, 3)).astype(np.float32)
    labels = np.arange(33) % 2
    node = ResNet18Node(epochs=1, checkpoint="last", batch_size=16, device="cpu")
    with pytest.raises(ValueError, match=r"33 training rows in minibatches of 16 .* batch_size or subsample"):
        node.fit({"image": images}, {"y": labels}, seed=0)
    held = np.zeros(33, bool)
    held[:2] = True                                # 31 training rows: the last minibatch has 15
    node.fit({"image": images, "holdout": held}, {"y": labels}, seed=0)
    assert node.n_train_ == 31


def test_knn_error_is_the_papers_nearest_neighbour_protocol():
    feat = np.array([[1.0, 0.0], [0.0, 1.0]] * 20)
    assert knn_error(feat, np.array([0, 1] * 20)) == 0.0       # labels follow the features
    assert knn_error(feat, np.array([0] * 20 + [1] * 20)) > 0.2  # labels unrelated to them


@pytest.mark.parametrize("name", ["loss_function", "data_distribution", "hypothesis_space", "entanglement"])
def test_each_experiment_runs_end_to_end_quick(compose_cfg, tmp_path, name):
    cfg = compose_cfg("experiment=paper_toys", "profile=quick", "seeds=[0,1]", f"run_experiments=[{name}]",
                      f"store.root={tmp_path / 'store'}", run_dir=tmp_path / "run")
    run(cfg)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (exp,) = report["experiments"]
    assert exp["name"] == name and len(exp["knob"]["values"]) == 2
    judged = exp["upstream"]["nodes"]
    for u in judged:
        assert len(exp["upstream"]["error"][u]) == 2 and all(len(e["per_seed"]) == 2
                                                            for e in exp["upstream"]["error"][u])
    assert all(0 <= e["mean"] <= 1 for e in exp["downstream"]["error"])
    assert exp["downstream"]["loss"] == "log loss"
    (change,) = exp["changes"]
    # the flag is the one rule applied to the changed upstream's and the downstream's verdicts
    ups = [change["upstream"][u]["verdict"] for u in exp["changed"]]
    assert change["self_defeating"] == self_defeating(ups, change["downstream"]["verdict"])
    assert set(ups + [change["downstream"]["verdict"]]) <= {IMPROVED, WORSE, "noise"}
    d = change["deltas"]
    assert d["total"]["mean"] == pytest.approx(
        d["upstream"]["mean"] + d["approximation"]["mean"] + d["estimation"]["mean"], abs=1e-9)
    assert change["dominant_term"] in d
    # a change alike on every seed is identical over seeds (a legitimate result), with no
    # smallest detectable effect; any spread gives a positive one
    det = change["detectable"]["downstream"]
    assert det["identical"] == (det["sd"] == 0)
    assert det["detectable"] is None if det["identical"] else det["detectable"] > 0
    for dec in exp["decomposition"]:
        t = dec["terms"]
        if name == "entanglement":   # two upstreams: each one's part and their compatibility
            assert t["upstream"]["mean"] == pytest.approx(
                t["upstream:up1"]["mean"] + t["upstream:up2"]["mean"] + t["compatibility"]["mean"])
    if name == "entanglement":
        assert exp["changed"] == ["up1"] and set(judged) == {"up1", "up2"}
        assert {"upstream:up1", "upstream:up2", "compatibility"} <= set(d)
        # upstream 2 is not retrained by the knob: the same fit at both knob values
        assert change["upstream"]["up2"]["old"] == change["upstream"]["up2"]["new"]
        assert set(exp["premise"]["per_knob"][0]) >= {"up1_error", "up2_error", "both_err", "independent",
                                                     "coincidence", "up1_fit", "up2_fit"}
    if name == "loss_function":
        assert set(exp["premise"]["per_knob"][0]["mean_output"]) == {"1", "3", "7", "9"}
    # the premise is judged, and said before any verdict
    assert exp["premise"]["met"] in (True, False) and exp["premise"]["statement"]
    if name in ("data_distribution", "hypothesis_space"):
        assert "knn_error" in exp["upstream"]["metrics"]["upstream"][0]
    assert (tmp_path / "run" / f"paper_toys_{name}.png").stat().st_size > 10_000
    table = (tmp_path / "run" / "RESULTS.md").read_text()
    assert "| Experiment (knob old → new) | Paper's claim |" in table and name.replace("_", " ") in table
    assert table.index("## Premises") < table.index("## Claims")
    assert "`downstream_data=upstream`" in table and "`augment=crop`" in table
    # how long each upstream trained is recorded and stated beside the paper's lengths (quick: 2
    # epochs; the loss-function regression keeps its best clean-validation epoch)
    checkpoint = "best" if name == "loss_function" else "last"
    assert exp["upstream"]["run"] == {u: f"2 epochs, {checkpoint} checkpoint" for u in judged}
    assert (f"The upstreams' run in this run: {name.replace('_', ' ')}: {judged[0]} 2 epochs, "
            f"{checkpoint} checkpoint") in table
    if not change["self_defeating"]:
        assert (f"| {IDENTICAL} |" if det["identical"] else f"| {det['detectable']:.3f} / ") in table
    # rendered from report.json, a change alike on every seed reads "identical over seeds"
    change["self_defeating"] = False
    det.update(identical=True, sd=0.0, detectable=None, seeds_for_observed=None)
    assert f"| {IDENTICAL} |" in results_markdown(report)


# -- the paper's protocol -------------------------------------------------------------------------
@pytest.mark.parametrize("setup", SETUPS)
def test_downstream_trains_on_the_upstreams_own_pool_images(setup):
    src = _source(setup, downstream_train="upstream")
    up, train = src.load("up_train", 0), src.load("train", 0)
    pool = up["holdout"] == 0
    down_digits = DIGITS[setup][1]
    expect = np.flatnonzero(pool)[np.isin(up["digit"][pool], down_digits)]
    # the pool rows of the downstream's digits, in the pool's order, with their pool positions
    np.testing.assert_array_equal(train["image"], up["image"][expect])
    np.testing.assert_array_equal(train["pool_pos"], up["pool_pos"][expect])
    assert train["pool_pos"].tolist() == (expect - SIZES["up_val"]).tolist()
    assert (up["pool_pos"][~pool] == -1).all() and set(np.unique(train["digit"])) == set(down_digits)
    # clean labels: the loss-function downstream's classes follow the digit, never a swapped value
    if setup == "loss_function":
        np.testing.assert_array_equal(train["value"], train["value_clean"])
    # the other splits stay unseen, and the old protocol keeps its own stream of `train` images
    assert (src.load("test", 0)["pool_pos"] == -1).all()
    sep = _source(setup).load("train", 0)
    assert len(sep["digit"]) == SIZES["train"] and (sep["pool_pos"] == -1).all()
    with pytest.raises(ValueError, match="downstream_train"):
        _source(setup, downstream_train="pool")


def test_epochs_run_whole_passes_and_keep_the_last_weights():
    d = _source("hypothesis_space").load("up_train", 0)
    seen = []
    node = ConvNetNode(epochs=3, checkpoint="last", batch_size=32, device="cpu", features=False)
    node._train(d["image"], d["digit"], np.flatnonzero(d["holdout"] == 0), np.flatnonzero(d["holdout"]), 0,
                record=lambda rows, losses: seen.append(rows))
    rows = np.concatenate(seen)
    # every training row exactly once per epoch, whatever the batch size
    assert np.bincount(rows).tolist() == [3] * SIZES["up_pool"]
    assert node.best_epoch_ == -1   # the last weights, not the best validation round's
    best = ConvNetNode(epochs=3, checkpoint="best", batch_size=32, device="cpu", features=False)
    best.fit({"image": d["image"], "holdout": d["holdout"]}, {"y": d["digit"]}, seed=0)
    assert 0 <= best.best_epoch_ < 3
    # more data, more steps: the pass count is fixed, not the step count
    sub = ConvNetNode(epochs=3, checkpoint="last", batch_size=32, device="cpu", subsample=0.25, features=False)
    sub.fit({"image": d["image"], "holdout": d["holdout"]}, {"y": d["digit"]}, seed=0)
    assert sub.n_train_ == training_rows(SIZES["up_pool"], 0.25) == 30
    with pytest.raises(ValueError, match="checkpoint"):
        ConvNetNode(checkpoint="first")


def test_augmentation_is_a_random_crop_of_the_padded_image_and_a_flip():
    import torch
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    same = augment(x, crop=0, flip=False, fill=fill, gen=gen)
    assert torch.equal(same, x)
    for _ in range(20):
        out = augment(x, crop=2, flip=False, fill=fill, gen=gen)
        padded = torch.stack([torch.nn.functional.pad(x[:, c], (2, 2, 2, 2), value=float(fill[c]))
                              for c in range(3)], dim=1)
        for b in range(2):   # each image is one 6x6 window of its padded self
            windows = [padded[b, :, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
            assert any(torch.equal(out[b], w) for w in windows)
    flips = [augment(x, crop=0, flip=True, fill=fill, gen=gen) for _ in range(20)]
    kinds = {(torch.equal(f[0], x[0]), torch.equal(f[0], x[0].flip(2))) for f in flips}
    assert kinds == {(True, False), (False, True)}   # left as it is, or mirrored, both drawn


def _two_colour_world(n: int = 96, noisy: int = 8):
    """Red images labelled 1, blue ones 7, and a few mislabelled ones: the hardest to fit."""
    rng = np.random.default_rng(0)
    y = np.array([1, 7] * (n // 2))
    images = rng.random((n, 16, 16, 3)).astype(np.float32) * 0.2
    images[y == 1, ..., 0] += 0.8
    images[y == 7, ..., 2] += 0.8
    flipped = np.arange(noisy) * (n // noisy)
    labels = y.copy()
    labels[flipped] = 8 - labels[flipped]
    return images, labels, flipped


def test_loss_area_rank_puts_mislabelled_rows_first_and_keeps_the_contract():
    images, labels, flipped = _two_colour_world()
    node = LossAreaRankNode(epochs=6, batch_size=16, lr=0.01, channels=(8, 8), device="cpu")
    preds = check_node(node, {"image": images}, {"y": labels},
                       eval_inputs={"image": images}, eval_targets={"y": labels})
    order = preds["order"]
    assert sorted(order.tolist()) == list(range(len(labels)))      # every 1 and 7 ranked once
    # a clean model's loss curve is highest on the rows whose label contradicts the colour
    assert set(np.flatnonzero(order < len(flipped))) == set(flipped.tolist())
    fitted = node.clone().fit({"image": images}, {"y": labels}, seed=0)
    np.testing.assert_array_equal(fitted.predict({"image": images})["order"], order)
    other = fitted.predict({"image": images[:5] + 0.01})["order"]   # images it never trained on
    assert (other == -1).all()
    sixes = LossAreaRankNode(epochs=2, batch_size=16, channels=(8, 8), device="cpu", rank_labels=[7])
    assert (sixes.fit({"image": images}, {"y": labels}, seed=0).predict({"image": images})["order"] >= 0).sum() \
        == int((labels == 7).sum())


def test_protocol_points_default_to_the_papers_and_each_is_one_override_away():
    from omegaconf import OmegaConf
    assert protocol_from_config(OmegaConf.create({})) == {k: v[0] for k, v in PROTOCOL.items()}
    # every default is the paper's but the network, whose paper value is the other one
    assert NOT_PAPER_DEFAULT == {"upstream_net": "paper"} and PROTOCOL["upstream_net"][0] == "convnet"
    assert protocol_from_config(OmegaConf.create({"protocol": {"augment": "none"}}))["augment"] == "none"
    with pytest.raises(ConfigError, match=r"protocol\.swap_order"):
        protocol_from_config(OmegaConf.create({"protocol": {"swap_order": "random"}}))
    with pytest.raises(ConfigError, match="unknown point"):
        protocol_from_config(OmegaConf.create({"protocol": {"epochs": 3}}))
    pipe = OmegaConf.to_container(OmegaConf.load("conf/pipeline/paper_entanglement.yaml"))
    paper = apply_protocol(pipe, protocol_from_config(OmegaConf.create({})))
    assert paper["nodes"]["data"]["downstream_train"] == "upstream"
    assert paper["nodes"]["labels1"]["inputs"]["order"] == "rank.order" and "rank" in paper["nodes"]
    assert paper["nodes"]["up1"]["crop"] == 4 and paper["nodes"]["up1"]["flip"] is False
    assert paper["nodes"]["up1"]["checkpoint"] == "last" and paper["nodes"]["up1"]["epochs"] >= 1
    old = apply_protocol(pipe, {"downstream_data": "separate", "upstream_run": "steps",
                                "swap_order": "latents", "augment": "none"})
    assert old["nodes"]["data"]["downstream_train"] == "separate" and "rank" not in old["nodes"]
    assert {old["nodes"][u]["inputs"]["order"] for u in ("labels1", "labels2")} == {"data.order"}
    assert old["nodes"]["up2"]["epochs"] is None and old["nodes"]["up2"]["checkpoint"] == "best"
    assert old["nodes"]["up2"]["crop"] == 0


def test_paper_network_is_resnet18_where_the_paper_ran_it_and_nowhere_else():
    from omegaconf import OmegaConf
    exps = OmegaConf.load("conf/experiment/paper_toys.yaml").experiments
    # the paper's scripts: resnet18 for lf, dd and both uu upstreams; its ConvNet for hs
    assert {n: list(e.get("paper_net") or []) for n, e in exps.items()} == {
        "loss_function": ["upstream"], "data_distribution": ["upstream"],
        "hypothesis_space": [], "entanglement": ["up1", "up2"]}
    pipe = OmegaConf.to_container(OmegaConf.load("conf/pipeline/paper_entanglement.yaml"))
    default = protocol_from_config(OmegaConf.create({}))
    paper = {**default, "upstream_net": "paper"}
    swapped = apply_protocol(pipe, paper, ["up1", "up2"])
    assert {swapped["nodes"][u]["_target_"] for u in ("up1", "up2")} == {"entangle.models.resnet.ResNet18Node"}
    assert "channels" not in swapped["nodes"]["up1"]
    assert swapped["nodes"]["rank"]["_target_"].endswith("LossAreaRankNode")   # the ranking stays
    assert swapped["nodes"]["up1"]["crop"] == 4 and swapped["nodes"]["up1"]["checkpoint"] == "last"
    kept = apply_protocol(pipe, default, ["up1", "up2"])
    assert kept["nodes"]["up1"]["_target_"] == "entangle.models.convnet.ConvNetNode"
    assert apply_protocol(pipe, {**paper, "upstream_run": "steps"}, ["up1"])["nodes"]["up1"]["epochs"] is None
    # a name that is no ConvNet of the pipeline is refused, by its config key, under any protocol
    for bad in (["up3"], ["rank"], ["down"]):
        with pytest.raises(ConfigError, match=rf"experiments\.entanglement\.paper_net: '{bad[0]}'"):
            apply_protocol(pipe, default, bad, "experiments.entanglement.paper_net")
    with pytest.raises(ConfigError, match=r"protocol\.upstream_net"):
        protocol_from_config(OmegaConf.create({"protocol": {"upstream_net": "resnet50"}}))


def test_a_grid_knob_is_every_combination_first_values_first():
    from omegaconf import OmegaConf
    knob = OmegaConf.create({"grid": {"a.x": [1.0, 0.5], "b.y": [1.0, 0.2, 0.1]}})
    paths, values, grid = knob_values(knob, "here")
    assert grid and paths == ["a.x", "b.y"] and values[0] == [1.0, 1.0] and len(values) == 6
    with pytest.raises(ConfigError, match=r"here\.knob"):
        knob_values(OmegaConf.create({"set": ["a.x"]}), "here")


class _Run:
    """A fitted run stand-in: values by (node, split)."""

    def __init__(self, values):
        self._v = values

    def values(self, node, split):
        return self._v[(node, split)]


def _entangled_runs(coincide: bool, seed: int):
    """Upstreams whose errors on the test 1s and 7s coincide (or are independent draws)."""
    rng = np.random.default_rng(seed)
    digit = np.repeat([1, 7, 6], 400)
    hard = rng.random(len(digit)) < 0.25
    other = rng.random(len(digit)) < 0.25
    is17 = np.isin(digit, (1, 7))
    e1 = hard & is17
    e2 = (hard if coincide else other) & is17
    p1 = np.where(e1, digit != 1, digit == 1).astype(int)
    p2 = np.where(e2, digit != 7, digit == 7).astype(int)
    up = np.repeat([1, 7, 6], 100)
    swapped = (np.arange(len(up)) % 4 == 0) & np.isin(up, (1, 7))
    lab1 = np.where(swapped, up != 1, up == 1).astype(int)
    lab7 = np.where(swapped, up != 7, up == 7).astype(int)
    return _Run({("data", "test"): {"digit": digit}, ("up1", "test"): {"pred": p1},
                 ("up2", "test"): {"pred": p2}, ("data", "up_train"): {"digit": up},
                 ("labels1", "up_train"): {"out": lab1}, ("labels2", "up_train"): {"out": lab7},
                 ("up1", "up_train"): {"pred": lab1}, ("up2", "up_train"): {"pred": lab7}})


@pytest.mark.parametrize("coincide", [True, False])
def test_entanglement_premise_needs_errors_that_coincide(coincide):
    seeds = [0, 1, 2]
    runs = [{s: _entangled_runs(coincide, s) for s in seeds}]
    got = premise_check("entanglement", runs, [None], seeds, judge_split="up_test", eval_split="test",
                        confidence=0.95)
    first = got["per_knob"][0]
    assert first["up1_fit"]["mean"] == 1.0 and got["fit_met"]
    # coinciding errors: both wrong 0.25 of the time against 0.0625 independent (4x); independent: ~1x
    assert got["met"] is coincide and got["coincidence_met"] is coincide
    assert (first["coincidence"]["mean"] > 3) is coincide


def _regression_runs(gap: float, seed: int):
    """A regression whose mean outputs for 1/3 and 7/9 lie ``gap`` apart (plus per-row noise)."""
    rng = np.random.default_rng(seed)
    digit = np.repeat([1, 3, 7, 9], 200)
    centre = np.where(digit < 5, 2.0, 8.0)
    pred = centre + np.where(np.isin(digit, (3, 9)), gap / 2, -gap / 2) + rng.normal(0, 0.3, len(digit))
    return _Run({("data", "up_test"): {"digit": digit}, ("upstream", "up_test"): {"pred": pred}})


@pytest.mark.parametrize("last_gap, met", [(0.2, True), (1.8, False)])
def test_loss_function_premise_is_the_merging_of_the_swapped_pairs(last_gap, met):
    seeds = [0, 1, 2]
    runs = [{s: _regression_runs(2.0, s) for s in seeds}, {s: _regression_runs(last_gap, s) for s in seeds}]
    got = premise_check("loss_function", runs, [None, None], seeds, judge_split="up_test", eval_split="test",
                        confidence=0.95)
    assert got["per_knob"][1]["pair_gap"]["mean"] == pytest.approx(last_gap, abs=0.15)
    assert got["met"] is met
