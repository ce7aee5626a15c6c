"""The street-digits world: determinism, latents and their ranges, balance, the source and SVHN."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, RidgeClassifier

from entangle.data import street_digits as sd
from entangle.data.street_digits import (ATTRIBUTE_NAMES, BACKGROUNDS, FONTS, StreetDigitsConfig,
                                         StreetDigitsSource, render, sample_latents)
from entangle.executor import LocalExecutor
from entangle.hashing import fingerprint
from entangle.node import SklearnNode
from entangle.store import Store
from entangle.system import NodeSpec, System


def test_image_depends_only_on_seed_and_index():
    whole, lat = render(300, seed=7)  # two internal batches (256 + 44)
    tail, lat_tail = render(163, seed=7, start=137)  # one batch, other neighbours
    np.testing.assert_array_equal(whole[137:], tail)
    for name in ATTRIBUTE_NAMES:
        np.testing.assert_array_equal(lat[name][137:], lat_tail[name], err_msg=name)
    again, _ = render(300, seed=7)
    np.testing.assert_array_equal(whole, again)
    other, _ = render(60, seed=8)
    assert np.mean(other != whole[:60]) > 0.5  # another seed is another world
    # the latents alone are the same as the rendered ones
    alone = sample_latents(163, seed=7, start=137)
    for name in ATTRIBUTE_NAMES:
        np.testing.assert_array_equal(alone[name], lat_tail[name], err_msg=name)


def test_latents_do_not_depend_on_the_batch_or_on_what_ran_before():
    # the colour basis is a constant of the module: orthonormal and of zero luma
    w = sd._LUMA.astype(np.float64)
    for v in (sd._CHROMA_A, sd._CHROMA_B):
        assert abs(float(np.sum(v * w))) < 1e-12 and abs(float(np.sum(v * v)) - 1.0) < 1e-12
    assert abs(float(np.sum(sd._CHROMA_A * sd._CHROMA_B))) < 1e-12
    reference = sample_latents(600, seed=7)
    # change what other code can change in this process: torch and BLAS threads, heap layout
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(1)
    _ = torch.randn(300, 300) @ torch.randn(300, 300)
    junk = [np.empty(int(k) * 997, np.uint8) for k in range(1, 40)]
    with threadpool_limits(limits=1):
        windows = [(0, 600), (1, 599), (137, 163), (255, 3), (256, 344), (511, 89)]
        for start, n in windows:
            part = sample_latents(n, seed=7, start=start)
            for name in ATTRIBUTE_NAMES:
                np.testing.assert_array_equal(part[name], reference[name][start:start + n],
                                              err_msg=f"{name} at {start}+{n}")
    del junk
    # the recorded contrast is the luma difference of the recorded colours, in float64
    fg = np.stack([reference[f"fg_{c}"] for c in "rgb"], axis=1).astype(np.float64)
    bg = np.stack([reference[f"bg_{c}"] for c in "rgb"], axis=1).astype(np.float64)
    np.testing.assert_allclose(reference["contrast"], np.abs((fg - bg) @ w), rtol=1e-6, atol=1e-7)


def test_execution_parameters_stay_out_of_the_cache_key():
    assert set(StreetDigitsSource.execution_params) == {"workers", "disk_cache"}

    def key(**kw):
        src = StreetDigitsSource(sizes={"train": 10, "test": 10}, **kw)
        system = System({"data": src,
                         "clf": NodeSpec(SklearnNode(estimator=LogisticRegression()),
                                         inputs={"x": "data.x"}, targets={"y": "data.y"}, output=True)})
        return system.keys(0)

    assert key(workers=1, disk_cache=False) == key(workers=2, disk_cache=True)
    assert key(data_seed=1) != key(data_seed=2)


def test_worker_processes_give_the_same_pixels():
    one, lat1 = render(40, seed=3, start=5)
    two, lat2 = render(40, seed=3, start=5, workers=2, chunk=15)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(lat1["digit"], lat2["digit"])


def test_same_seed_same_images_other_seed_other_images():
    # every size path: supersampled, not supersampled, and crops of other sizes
    for cfg in (StreetDigitsConfig(), StreetDigitsConfig(size=28, supersample=1),
                StreetDigitsConfig(size=20, supersample=3, digits=(1, 3, 7, 9))):
        a, lat_a = render(120, seed=11, start=40, config=cfg)
        b, lat_b = render(120, seed=11, start=40, config=cfg)
        np.testing.assert_array_equal(a, b)
        for name in ATTRIBUTE_NAMES:
            np.testing.assert_array_equal(lat_a[name], lat_b[name], err_msg=name)
        c, _ = render(120, seed=12, start=40, config=cfg)
        assert np.mean(c != a) > 0.5


def test_image_streams_are_numpys_default_generators():
    # the renderer re-seeds one generator instead of building default_rng([seed, i, tag]) per
    # image; it must be in the very same state, for one- and two-word seeds and indices
    for seed in (0, 7, 2 ** 32 + 3, 2 ** 64 - 1, sd.split_seed(3, "train")):
        indices = np.array([0, 1, 999, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 17], np.uint64)
        for tag in (0, 1):
            for i, rng in zip(indices.tolist(), sd._streams(seed, indices, tag)):
                ref = np.random.default_rng([seed, i, tag])
                assert rng.bit_generator.state == ref.bit_generator.state, (seed, i, tag)
                np.testing.assert_array_equal(rng.standard_normal(5, dtype=np.float32),
                                              ref.standard_normal(5, dtype=np.float32))


def test_draws_follow_the_documented_order_of_each_image_stream():
    cfg = StreetDigitsConfig()
    n, seed, start = 30, 5, 1234
    lat, extra = sd._draw(n, seed, start, cfg)
    sides = np.round(lat["resolution"] * cfg.size).astype(int)
    for j in range(n):
        rng = np.random.default_rng([seed, start + j, 0])
        u = rng.random(sd._N_U)
        np.testing.assert_array_equal(extra["geom"][j], u[[sd._U_DIR, sd._U_SIGN, sd._U_PERIOD,
                                                            sd._U_PHASE_X, sd._U_PHASE_Y,
                                                            sd._U_MARGIN]])
        np.testing.assert_array_equal(extra["field"][j],
                                      rng.standard_normal((sd._FIELD, sd._FIELD), np.float32))
        np.testing.assert_array_equal(extra["tones"][j],
                                      rng.random((sd._TONES, sd._TONES), np.float32))
        noise = rng.standard_normal((cfg.size, cfg.size), np.float32)
        k = sides[j]  # the photo's side: the rows of noise it reads are the stream's
        np.testing.assert_array_equal(extra["noise"][j, :k, :k], noise[:k, :k])


def test_shapes_dtypes_and_every_latent_in_its_documented_range():
    cfg = StreetDigitsConfig(size=24)
    images, lat = render(400, seed=1, config=cfg)
    assert images.shape == (400, 24, 24, 3) and images.dtype == np.uint8
    assert images.std() > 20  # not blank
    assert set(lat) == set(ATTRIBUTE_NAMES)
    for name in ATTRIBUTE_NAMES:
        assert lat[name].shape == (400,), name
        assert np.all(np.isfinite(lat[name])), name

    def within(name, lo, hi):
        assert lat[name].min() >= lo - 1e-6 and lat[name].max() <= hi + 1e-6, \
            (name, lat[name].min(), lat[name].max(), lo, hi)

    within("digit", 0, 9)
    within("font", 0, len(FONTS) - 1)
    within("background", 0, len(BACKGROUNDS) - 1)
    for name in ("italic", "polarity", "distractor_left", "distractor_right"):
        assert set(np.unique(lat[name])) == {0, 1}, name
    for name in ("scale", "aspect", "rotation", "shear", "gap", "blur", "noise", "jpeg_quality",
                 "resolution"):
        within(name, *getattr(cfg, name))
    within("stroke", cfg.stroke[0] - 1 / 32, cfg.stroke[1] + 1 / 32)  # rounded to sixteenths
    within("shift_x", cfg.shift[0] * 24, cfg.shift[1] * 24)
    within("shift_y", cfg.shift[0] * 24, cfg.shift[1] * 24)
    within("contrast", 0.0, cfg.contrast[1])  # realised after clipping: at most the drawn one
    assert np.median(lat["contrast"]) > cfg.contrast[0]
    for name in ("fg_r", "fg_g", "fg_b", "bg_r", "bg_g", "bg_b"):
        within(name, 0.0, 1.0)
    within("texture", 0.0, cfg.texture[1])
    assert np.all(lat["texture"][lat["background"] == 0] == 0)  # flat grounds have no pattern
    for side in ("left", "right"):
        present = lat[f"distractor_{side}"] == 1
        assert np.all(lat[f"{side}_digit"][~present] == -1)
        assert set(np.unique(lat[f"{side}_digit"][present])) == set(range(10))
        shown = lat[f"{side}_visible"]
        within(f"{side}_visible", 0.0, 1.0)
        assert np.all(shown[~present] == 0)
        assert 0.05 < np.mean(shown[present] == 0) < 0.6 and np.mean(shown[present] > 0.3) > 0.1
    assert len(np.unique(lat["jpeg_quality"])) > 30 and lat["jpeg_quality"].dtype == np.int64
    # stroke weights are whole sixteenths and resolutions whole pixels, as rendered
    np.testing.assert_allclose(lat["stroke"] * 16, np.round(lat["stroke"] * 16), atol=1e-5)
    np.testing.assert_allclose(lat["resolution"] * 24, np.round(lat["resolution"] * 24), atol=1e-4)


def test_visible_share_says_whether_a_neighbour_is_in_the_crop():
    cfg = StreetDigitsConfig()
    lat = sample_latents(150, seed=2, config=cfg)
    table = {k: v.tolist() for k, v in lat.items()}
    checked = {"hidden": 0, "shown": 0}
    for j in range(150):
        for side in ("left", "right"):
            share = table[f"{side}_visible"][j]
            if not table[f"distractor_{side}"][j] or 0 < share < 0.2:
                continue
            without = {k: list(v) for k, v in table.items()}
            without[f"distractor_{side}"][j] = 0
            # the neighbour's ink in the digit layer, in pixels' worth (private helper: the
            # layer before colours and camera)
            ink = np.abs(sd._layers(table, j, 0.5, cfg)[0].astype(int)
                         - sd._layers(without, j, 0.5, cfg)[0]).sum() / 255
            if share == 0:
                assert ink < 2, (j, side, ink)  # at most an interpolation fringe at the edge
            else:
                assert ink > 5, (j, side, share, ink)
            checked["hidden" if share == 0 else "shown"] += 1
    assert min(checked.values()) > 5


def test_a_subset_of_digits_is_balanced_in_any_slice():
    cfg = StreetDigitsConfig(digits=(1, 3, 7, 9))
    lat = sample_latents(402, seed=0, start=3, config=cfg)
    values, counts = np.unique(lat["digit"], return_counts=True)
    assert values.tolist() == [1, 3, 7, 9]
    assert counts.max() - counts.min() <= 2
    weighted = sample_latents(2000, seed=0, config=StreetDigitsConfig(digits=(1, 7),
                                                                        class_weights=(3.0, 1.0)))
    assert 0.7 < np.mean(weighted["digit"] == 1) < 0.8


def test_config_round_trips_and_rejects_unknown_keys_naming_them():
    cfg = StreetDigitsConfig.from_dict({"blur": [0.0, 2.0], "digits": [1, 7, 6]})
    assert cfg.blur == (0.0, 2.0) and cfg.digits == (1, 7, 6)
    assert StreetDigitsConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="blurr"):
        StreetDigitsConfig.from_dict({"blurr": [0.0, 1.0]})
    with pytest.raises(ValueError, match="rotation"):
        StreetDigitsConfig(rotation=(10.0, -10.0))
    with pytest.raises(ValueError, match="digits"):
        StreetDigitsConfig(digits=(1, 1, 12))
    with pytest.raises(ValueError, match="fonts"):
        StreetDigitsConfig(fonts=("comic",))


def test_source_splits_have_their_sizes_and_share_no_image():
    src = StreetDigitsSource(sizes={"train": 300, "test": 100}, digits=(1, 7, 6), disk_cache=False,
                             workers=1)
    train, test = src.load("train", seed=0), src.load("test", seed=0)
    assert set(train) == set(StreetDigitsSource.output_kinds)
    assert train["image"].shape == (300, 32, 32, 3) and train["image"].dtype == np.float32
    assert 0.0 <= train["image"].min() and train["image"].max() <= 1.0
    assert train["x"].shape == (300, 1024) and train["x"].dtype == np.float32
    np.testing.assert_allclose(train["x"], (train["image"] @ np.float32([0.299, 0.587, 0.114]))
                               .reshape(300, -1), atol=1e-6)
    assert train["y"].dtype == np.int64 and set(np.unique(train["y"])) == {1, 6, 7}
    np.testing.assert_array_equal(train["index"], np.arange(300))
    assert train["attributes"].shape == (300, len(ATTRIBUTE_NAMES))
    digit_column = train["attributes"][:, ATTRIBUTE_NAMES.index("digit")]
    np.testing.assert_array_equal(digit_column, train["y"])
    assert test["image"].shape[0] == 100
    seen = {img.tobytes() for img in train["image"]}
    assert not any(img.tobytes() in seen for img in test["image"])
    # a split's images do not move when another split grows
    bigger = StreetDigitsSource(sizes={"train": 500, "test": 100}, digits=(1, 7, 6),
                                disk_cache=False, workers=1)
    np.testing.assert_array_equal(bigger.load("test", seed=0)["image"], test["image"])
    # data are fixed by data_seed, not by the study seed; outputs are the caller's to modify
    np.testing.assert_array_equal(src.load("test", seed=5)["image"], test["image"])
    test["y"][:] = -1
    assert src.load("test", seed=0)["y"].min() >= 0
    with pytest.raises(KeyError, match="large"):
        src.load("large", seed=0)
    with pytest.raises(ValueError, match="size"):
        StreetDigitsSource(world={"size": 64}).config()


def test_source_keeps_rendered_splits_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(sd, "CACHE_ROOT", tmp_path)
    src = StreetDigitsSource(sizes={"test": 50}, data_seed=4, workers=1, world={"blur": [0, 0.5]})
    first = src.load("test", seed=0)
    (folder,) = [p for p in tmp_path.iterdir()]
    assert sorted(p.name for p in folder.iterdir()) == ["attributes.npy", "done", "images.npy"]
    sd._rendered_split.cache_clear()
    again = src.load("test", seed=0)  # read back from the files
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["attributes"], again["attributes"])


def _fake_svhn(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A tiny SVHN file's arrays: X (32, 32, 3, n) uint8 and labels 1..10 (10: the digit 0)."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)
    return X, y


def test_svhn_folder_is_a_drop_in(tmp_path):
    from scipy.io import savemat
    files = {}
    for name, n, seed in (("train", 60, 0), ("test", 30, 1)):
        files[name] = _fake_svhn(n, seed)
        savemat(tmp_path / f"{name}_32x32.mat", {"X": files[name][0], "y": files[name][1]})
    src = StreetDigitsSource(svhn_root=str(tmp_path), digits=(0, 1),
                             sizes={"train": 6, "large": 4, "test": 4})
    out = {s: src.load(s, seed=0) for s in ("train", "large", "test")}
    assert set(out["train"]) == set(StreetDigitsSource.output_kinds)
    for s, o in out.items():
        assert o["image"].shape == (src._sizes()[s], 32, 32, 3) and o["image"].dtype == np.float32
        assert np.isnan(o["attributes"]).all() and o["attributes"].shape[1] == len(ATTRIBUTE_NAMES)
        # interleaved class by class: balanced, and '10' read as the digit 0
        assert o["y"].tolist() == [0, 1] * (len(o["y"]) // 2)
        X, y = files["test" if s == "test" else "train"]
        np.testing.assert_allclose(o["image"], np.moveaxis(X, -1, 0)[o["index"]] / 255.0, atol=1e-6)
        np.testing.assert_array_equal(o["y"], y.ravel()[o["index"]] % 10)
    # `large` < `train` by name: large takes the first train rows, train the next, no overlap
    assert out["large"]["index"].tolist() == [9, 0, 19, 10]
    assert not set(out["large"]["index"]) & set(out["train"]["index"])
    with pytest.raises(ValueError, match="balanced images"):
        StreetDigitsSource(svhn_root=str(tmp_path), digits=(0, 1),
                           sizes={"train": 50}).load("train", 0)
    with pytest.raises(FileNotFoundError, match="not downloaded"):
        StreetDigitsSource(svhn_root=str(tmp_path / "none"), sizes={"test": 2}).load("test", 0)


def _features(images: np.ndarray) -> np.ndarray:
    """Polarity-free grey features: |luma - its median| at 16x16, per image standardised."""
    g = images.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
    n, h, w = g.shape
    g = g.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4)).reshape(n, -1)
    g = (g - np.median(g, axis=1, keepdims=True)) / (g.std(axis=1, keepdims=True) + 1e-3)
    return np.abs(g)


def _accuracy(cfg: StreetDigitsConfig) -> float:
    train, lat_train = render(1500, seed=0, config=cfg)
    test, lat_test = render(600, seed=1, config=cfg)
    clf = RidgeClassifier(alpha=1000.0).fit(_features(train), lat_train["digit"])
    return float(np.mean(clf.predict(_features(test)) == lat_test["digit"]))


def test_images_carry_the_digit_and_nuisances_make_it_harder():
    default = _accuracy(StreetDigitsConfig())
    hard = _accuracy(StreetDigitsConfig(blur=(2.0, 2.0), noise=(0.12, 0.12), contrast=(0.1, 0.2)))
    assert default > 0.5  # ten classes: chance is 0.1
    assert hard < default - 0.15


def test_source_runs_in_a_system(tmp_path):
    # dark digits on light grounds, well contrasted: a linear model on raw grey values can learn
    src = StreetDigitsSource(sizes={"train": 400, "test": 200}, digits=(1, 7), data_seed=2,
                             world={"light_on_dark_prob": 0.0, "contrast": [0.4, 0.7]},
                             disk_cache=False, workers=1)
    params = fingerprint(src.get_params())
    assert fingerprint(src.clone().get_params()) == params
    system = System({
        "data": src,
        "clf": NodeSpec(SklearnNode(estimator=LogisticRegression(C=0.01, max_iter=300)),
                        inputs={"x": "data.x"}, targets={"y": "data.y"}, output=True),
    })
    run = LocalExecutor().run(system, [0], Store(tmp_path / "store"))[0]
    assert run.metrics("clf")["accuracy"] > 0.6  # two classes
    assert fingerprint(src.get_params()) == params  # loading leaves the parameters alone
