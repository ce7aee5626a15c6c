"""Car and pedestrian detector nodes: the node contract and tiny training runs on easy scenes.

The scenes are hand-made: boxes on a ground plane seen by a small pinhole camera, with depth by
exact ray casting and flat-coloured objects, so a few seconds of training must already beat a
trivial detector by a wide margin.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from entangle.models import boxes as bx
from entangle.models.car_detector import BEVGrid, CarDetector
from entangle.data.kitti import difficulty_of
from entangle.data.labels import BOX_COLUMNS, CAR, L, PEDESTRIAN, class_rows
from entangle.models.pedestrian_detector import PedestrianDetector, PedestrianImageDetector
from entangle.models.pseudo_lidar import depth_to_points_batch
from entangle.node import Ragged
from entangle.testing import check_node

H, W, F, CAM_H = 64, 208, 120.0, 1.65
P2 = np.array([[F, 0, W / 2, 0], [0, F, H / 2, 0], [0, 0, 1, 0]], dtype=np.float32)
GRID = dict(x_min=-16.0, x_max=16.0, z_min=0.0, z_max=32.0, image_shape=(H, W))


def _ray_cast(objs):
    """Depth (H, W) and object index per pixel (-1 = ground/sky) of boxes on the ground."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    dx, dy = (u - W / 2) / F, (v - H / 2) / F
    depth = np.where(dy > 1e-6, np.minimum(CAM_H / np.maximum(dy, 1e-6), 60.0), 60.0)
    oid = np.full((H, W), -1)
    for k, (_, x, y, z, h, w, l, ry) in enumerate(objs):
        c, s = np.cos(ry), np.sin(ry)
        o = -np.array([x, y - h / 2, z])                  # the camera in the box's frame
        origin = (c * o[0] - s * o[2], o[1], s * o[0] + c * o[2])
        direction = (c * dx - s, dy, s * dx + c)
        t0, t1 = np.full((H, W), -np.inf), np.full((H, W), np.inf)
        for oo, dd, half in zip(origin, direction, (l / 2, h / 2, w / 2)):
            dd = np.where(np.abs(dd) < 1e-12, 1e-12, dd)
            a, b = (-half - oo) / dd, (half - oo) / dd
            t0, t1 = np.maximum(t0, np.minimum(a, b)), np.minimum(t1, np.maximum(a, b))
        hit = (t1 >= t0) & (t0 > 0) & (t0 < depth)
        depth[hit], oid[hit] = t0[hit], k
    return depth.astype(np.float32), oid


def make_scenes(n, seed, cars=(1, 2), peds=(1, 2)):
    """Images, depth, calib and labels of ``n`` easy scenes: near, apart, flat colours."""
    rng = np.random.default_rng(seed)
    images, depths, labels = [], [], []
    for _ in range(n):
        objs = []
        for cls, (lo, hi) in ((CAR, cars), (PEDESTRIAN, peds)):
            for _ in range(rng.integers(lo, hi + 1)):
                for _ in range(30):
                    if cls == CAR:
                        z, (h, w, l) = rng.uniform(6, 22), rng.normal([1.5, 1.6, 3.9], 0.05)
                    else:
                        z, (h, w, l) = rng.uniform(4, 14), rng.normal([1.75, 0.6, 0.8], 0.03)
                    x, ry = rng.uniform(-0.5, 0.5) * z, rng.uniform(-np.pi, np.pi)
                    if cls == CAR:                 # cars drive along the street (z), as in the world
                        ry = rng.choice([-1, 1]) * np.pi / 2 + rng.normal(0, 0.1)
                    if all(np.hypot(o[1] - x, o[3] - z) > 5.0 for o in objs):
                        objs.append((cls, x, CAM_H, z, h, w, l, ry))
                        break
        depth, oid = _ray_cast(objs)
        img = np.empty((H, W, 3))
        img[:] = 0.4 + 0.05 * rng.standard_normal((H, W, 1))
        img[depth >= 59.9] = (0.6, 0.7, 0.9)
        for k, o in enumerate(objs):
            img[oid == k] = (0.2, 0.3, 0.8) if o[0] == CAR else (0.9, 0.3, 0.1)
        images.append(np.clip(img * 255, 0, 255).astype(np.uint8))
        depths.append(depth)
        rows = []
        for o in objs:
            box2d = bx.project_boxes(np.array([o[1:]]), P2, (H, W))[0]
            rows.append([o[0], *o[1:], *box2d, 0.0, 0, 0])
        r = np.array(rows, dtype=np.float32).reshape(-1, 15)
        if len(r):
            r[:, L["difficulty"]] = difficulty_of(r, H)
        labels.append(r)
    return {"image": np.stack(images), "depth": np.stack(depths), "calib": np.repeat(P2[None], n, 0),
            "labels": Ragged.from_list(labels, width=15)}


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    train, test = make_scenes(96, seed=1), make_scenes(24, seed=2)
    for d in (train, test):
        d["points"] = depth_to_points_batch(d["depth"], d["calib"])
    return train, test


def _car_inputs(d):
    return {"points": d["points"], "calib": d["calib"]}


def _ped_inputs(d):
    return {"points": d["points"], "calib": d["calib"], "image": d["image"]}


def _trivial(d, cls, train_labels):
    """One box per image at the mean training box of the class, score 1: the bar to beat."""
    lv = train_labels.values
    mean = lv[lv[:, L["cls"]] == cls][:, 1:8].mean(axis=0)
    row = np.zeros((1, len(BOX_COLUMNS)), dtype=np.float32)
    row[0, 0], row[0, 1:8], row[0, 12] = cls, mean, 1.0
    row[0, 8:12] = bx.project_boxes(mean[None], P2, (H, W))[0]
    n = len(d["labels"])
    return {"boxes": Ragged.from_list([row] * n, width=len(BOX_COLUMNS)),
            "image_size": np.tile([H, W], (n, 1)), "n_points": np.ones(n)}


def test_car_detector_contract(data):
    train, _ = data
    small = {k: (v[:8] if k != "labels" and k != "points" else v.take(np.arange(8))) for k, v in train.items()}
    node = CarDetector(**GRID, width=8, epochs=1, batch_size=4)
    preds = check_node(node, _car_inputs(small), {"labels": small["labels"]})
    assert preds["boxes"].values.shape[1] == len(BOX_COLUMNS)


def test_pedestrian_detector_contract(data):
    train, _ = data
    small = {k: (v[:8] if k != "labels" and k != "points" else v.take(np.arange(8))) for k, v in train.items()}
    node = PedestrianDetector(width_2d=8, epochs_2d=1, width_3d=8, epochs_3d=1, batch_size_2d=4,
                              score_threshold=0.0)
    preds = check_node(node, _ped_inputs(small), {"labels": small["labels"]})
    assert preds["boxes"].values.shape[1] == len(BOX_COLUMNS)


def test_car_detector_learns_easy_scenes(data):
    train, test = data
    node = CarDetector(**GRID, width=16, epochs=12, batch_size=4, lr=4e-3)
    node.fit(_car_inputs(train), {"labels": train["labels"]}, seed=0)
    assert node.train_loss_[-1] < 0.5 * node.train_loss_[0]
    preds = node.predict(_car_inputs(test))
    score = node.score(preds, {"labels": test["labels"]})
    trivial = node.score(_trivial(test, CAR, train["labels"]), {"labels": test["labels"]})
    assert score["bev_ap40_loose_moderate"] > 0.5 and trivial["bev_ap40_loose_moderate"] < 0.1
    assert score["mean_object_loss"] < trivial["mean_object_loss"]
    # every predicted 2D box is the projection of its 3D box
    v = preds["boxes"].values
    np.testing.assert_allclose(v[:, 8:12], bx.project_boxes(v[:, 1:8], P2, (H, W)), atol=1e-3)


def test_pedestrian_detector_learns_easy_scenes(data):
    train, test = data
    node = PedestrianDetector(width_2d=16, epochs_2d=10, lr_2d=4e-3, batch_size_2d=4, width_3d=16,
                              epochs_3d=12, copies_per_object=3)
    node.fit(_ped_inputs(train), {"labels": train["labels"]}, seed=0)
    preds = node.predict(_ped_inputs(test))
    score = node.score(preds, {"labels": test["labels"]})
    trivial = node.score(_trivial(test, PEDESTRIAN, train["labels"]), {"labels": test["labels"]})
    assert score["bev_ap40_loose_moderate"] > 0.5 and trivial["bev_ap40_loose_moderate"] < 0.1
    assert score["mean_object_loss"] < trivial["mean_object_loss"]


def test_image_stage_as_its_own_node_gives_the_same_boxes(data):
    """Wiring a PedestrianImageDetector's boxes_2d in is the built-in image stage (2D boxes pass
    through float32 storage, hence the tolerance)."""
    train, test = data
    small = {k: (v[:16] if k not in ("labels", "points") else v.take(np.arange(16))) for k, v in train.items()}
    kw2d = dict(width_2d=8, epochs_2d=2, batch_size_2d=4, score_threshold=0.0)
    whole = PedestrianDetector(**kw2d, width_3d=8, epochs_3d=2)
    whole.fit(_ped_inputs(small), {"labels": small["labels"]}, seed=3)
    stage = check_node(PedestrianImageDetector(**kw2d), {"image": small["image"]}, {"labels": small["labels"]})
    assert isinstance(stage["boxes_2d"], Ragged)
    image = PedestrianImageDetector(**kw2d).fit({"image": small["image"]}, {"labels": small["labels"]}, seed=3)
    frustum = PedestrianDetector(**kw2d, width_3d=8, epochs_3d=2)
    frustum.fit({**_ped_inputs(small), "boxes_2d": image.predict({"image": small["image"]})["boxes_2d"]},
                {"labels": small["labels"]}, seed=3)
    assert frustum.image_stage_ is None and not any(k.startswith("net.") for k in frustum.state_dict())
    split = frustum.predict({**_ped_inputs(test), "boxes_2d": image.predict({"image": test["image"]})["boxes_2d"]})
    joined = whole.predict(_ped_inputs(test))["boxes"]
    assert len(split["boxes"].values) == len(joined.values) > 0
    np.testing.assert_allclose(split["boxes"].values, joined.values, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="wire 'boxes_2d'"):
        frustum.predict(_ped_inputs(test))
    # the 2D node's own loss: one number per ground-truth pedestrian, in [0, 1]
    loss = image.loss(image.predict({"image": test["image"]}), {"labels": test["labels"]})
    lv = test["labels"].values
    assert loss.shape == (int((lv[:, L["cls"]] == PEDESTRIAN).sum()),) and np.all((loss >= 0) & (loss <= 1))


def test_per_object_loss_follows_the_label_rows():
    labels = make_scenes(6, seed=3)["labels"]
    node = CarDetector(**GRID)
    perfect = labels.values[:, :13].copy()
    perfect[:, 12] = 1.0
    exact = {"boxes": Ragged(perfect, labels.offsets), "image_size": np.tile([H, W], (6, 1))}
    loss = node.loss(exact, {"labels": labels})
    assert len(loss) == len(class_rows(labels, CAR)) and np.allclose(loss, 0.0)
    none = {"boxes": Ragged.from_list([np.zeros((0, 13))] * 6, width=13), "image_size": exact["image_size"]}
    np.testing.assert_array_equal(node.loss(none, {"labels": labels}), 1.0)
    assert node.score(exact, {"labels": labels})["bev_ap_moderate"] == pytest.approx(1.0)


def test_empty_clouds_are_counted_and_bad_points_are_errors(data):
    train, _ = data
    node = CarDetector(**GRID, width=8, epochs=1).fit(_car_inputs(train), {"labels": train["labels"]}, seed=0)
    clouds = [train["points"][i] for i in range(4)]
    clouds[2] = np.zeros((0, 3), dtype=np.float32)
    pts = Ragged.from_list(clouds, width=3)
    preds = node.predict({"points": pts, "calib": train["calib"][:4]})
    assert len(preds["boxes"][2]) == 0 and preds["n_points"][2] == 0
    score = node.score(preds, {"labels": train["labels"].take(np.arange(4))})
    assert score["empty_point_clouds"] == 1.0
    clouds[1] = clouds[1].copy()
    clouds[1][5, 2] = np.nan
    with pytest.raises(ValueError, match="image 1 has 1 non-finite points"):
        node.predict({"points": Ragged.from_list(clouds, width=3), "calib": train["calib"][:4]})
    with pytest.raises(ValueError, match="principal point"):
        node.set_params(image_shape=(16, 16)).predict(_car_inputs(train))
    # a stale size that still holds the principal point (another camera's) is refused too
    with pytest.raises(ValueError, match="not near the centre"):
        node.set_params(image_shape=(H * 3 // 2, W * 3 // 2)).predict(_car_inputs(train))


def test_bev_grid_rasterises_heights():
    grid = BEVGrid(-2.0, 2.0, 0.0, 4.0, 1.0)
    pts = np.array([[0.5, 1.65, 1.5], [0.5, 0.15, 1.5], [-1.5, 1.0, 3.5], [5.0, 0.0, 1.0]])
    g = grid.rasterize(pts)
    assert g.shape == (5, 4, 4)
    assert g[0].sum() == 2                     # two occupied cells; the point at x = 5 is outside
    assert g[0, 1, 2] == 1 and g[1, 1, 2] > g[1, 3, 0]   # two points vs one
    assert g[2, 1, 2] > g[4, 1, 2]             # max height above min height in the shared cell
