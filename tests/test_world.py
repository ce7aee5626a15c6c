"""The synthetic world: config, determinism, exact geometry of labels and disparity, generation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from entangle.cli import run as run_experiment
from entangle.data.kitti import KittiDataset
from entangle.data.world import (ObjectParams, SceneParams, WorldConfig, generate, make_calib,
                                 render_scene, sample_scene, scene_rng)

REPO = Path(__file__).resolve().parent.parent


def test_world_yaml_is_the_dataclass_default_and_unknown_keys_fail():
    data = yaml.safe_load((REPO / "conf" / "data" / "world.yaml").read_text())
    assert WorldConfig.from_dict(data["world"]) == WorldConfig()
    bad = json.loads(json.dumps(data["world"]))
    bad["car"]["colour"] = 1
    with pytest.raises(ValueError, match=r"world\.car: unknown key\(s\) \['colour'\]"):
        WorldConfig.from_dict(bad)
    with pytest.raises(ValueError, match=r"world\.car\.distance"):
        WorldConfig.from_dict({"car": {"distance": [60, 5]}})
    with pytest.raises(ValueError, match="splits"):
        WorldConfig.from_dict({"splits": [0.5, 0.5, 0.5]})


def test_camera_keeps_half_of_kittis_depth_resolution_and_its_field_of_view():
    """f·B is what turns a disparity error into metres: 195.8 px·m here, 389.6 on KITTI."""
    cam = WorldConfig().camera
    calib = make_calib(cam)
    assert (cam.height, cam.width) == (192, 624)
    assert calib.P2[0, 0] == pytest.approx(721.5377 * 624 / 1242, rel=1e-9)
    assert calib.fb == pytest.approx(721.5377 * 624 / 1242 * 0.54, rel=1e-6)   # 195.8 px·m
    # KITTI's horizontal field of view: the principal point at the same share of the width
    assert math.atan(calib.P2[0, 2] / calib.P2[0, 0]) == pytest.approx(math.atan(609.5593 / 721.5377), abs=2e-3)


def test_scene_sampling_and_rendering_are_deterministic():
    cfg = WorldConfig()
    a, b = sample_scene(scene_rng(3, 5), cfg), sample_scene(scene_rng(3, 5), cfg)
    assert a == b and a != sample_scene(scene_rng(3, 6), cfg)
    assert SceneParams.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert render_scene(a, cfg) == render_scene(b, cfg)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Six scenes generated with two workers and read back: what the geometry tests inspect."""
    root = generate(tmp_path_factory.mktemp("w") / "world", 6, seed=7, workers=2)
    return root, list(KittiDataset(root, "all"))


def test_depth_is_f_times_baseline_over_disparity_and_sky_is_invalid(world):
    _, samples = world
    for s in samples:
        valid = s.disparity > 0
        assert 0.5 < valid.mean() < 1.0  # sky exists and is invalid
        np.testing.assert_allclose(s.depth[valid] * s.disparity[valid], s.calib.fb, rtol=1e-6)
        assert (s.depth[~valid] == 0).all()
        # the sky is above the horizon: no invalid pixel below the principal point row + 2
        assert not (~valid[int(s.calib.cy) + 2:]).any()
        # pixels seen by both cameras are a subset of all valid pixels
        noc = s.disparity_noc > 0
        assert (noc <= valid).all() and noc.mean() > 0.8 * valid.mean()
        np.testing.assert_array_equal(s.disparity_noc[noc], s.disparity[noc])


def test_projected_3d_boxes_lie_inside_their_2d_boxes(world):
    _, samples = world
    n = 0
    for s in samples:
        H, W = s.left.shape[:2]
        for o in s.objects:
            if o.type == "DontCare":
                continue
            uv = s.calib.project(o.corners())
            uv = np.clip(uv, [0, 0], [W - 1, H - 1])
            x1, y1, x2, y2 = o.bbox
            assert (uv[:, 0] >= x1 - 0.01).all() and (uv[:, 0] <= x2 + 0.01).all()
            assert (uv[:, 1] >= y1 - 0.01).all() and (uv[:, 1] <= y2 + 0.01).all()
            n += 1
    assert n >= 10


def test_object_pixels_back_project_into_their_3d_box(world):
    """Depth from the stored disparity puts every visible pixel of an object inside its box.

    The tolerance is the PNG quantisation (half of 1/256 px, i.e. Z² / (512 f B) in depth) plus
    the labels' 0.01 m rounding.
    """
    _, samples = world
    checked = 0
    for s in samples:
        for k, o in enumerate(s.objects):
            if o.type == "DontCare":
                continue
            v, u = np.nonzero(s.instances == k + 1)
            assert u.size > 0
            depth = s.depth[v, u]
            pts = s.calib.image_to_rect(u, v, depth)  # (n, 3)
            c, sn = math.cos(o.rotation_y), math.sin(o.rotation_y)
            R = np.array([[c, 0, sn], [0, 1, 0], [-sn, 0, c]])
            local = (pts - o.location) @ R  # box frame: x along l, y down, z along w
            h, w, l = o.dimensions
            tol = depth ** 2 / (512 * s.calib.fb) * 1.5 + 0.02
            assert (np.abs(local[:, 0]) <= l / 2 + tol).all()
            assert (np.abs(local[:, 2]) <= w / 2 + tol).all()
            assert (local[:, 1] <= tol).all() and (local[:, 1] >= -h - tol).all()
            # the visible surface is the near side: no nearer than z - half the box diagonal
            assert depth.min() >= o.location[2] - math.hypot(l, w) / 2 - tol.max()
            checked += 1
    assert checked >= 10


def test_attributes_are_indexed_like_the_label_lines(world):
    _, samples = world
    for s in samples:
        attrs = s.attributes["objects"]
        assert len(attrs) == len(s.objects)
        scene = SceneParams.from_dict(s.attributes["scene"])
        for o, a in zip(s.objects, attrs):
            src = scene.objects[a["scene_index"]]
            assert a["class"] == src.cls
            if o.type != "DontCare":
                assert o.type == src.cls and o.location[2] == pytest.approx(src.z, abs=0.005)
            assert 0 < a["visible_fraction"] <= 1 and a["visible_pixels"] > 0
            assert a["distance"] > 0 and a["lighting"] > 0
            assert a["contrast"] is None or 0 <= a["contrast"] <= 1


def _hand_scene(objects: list[ObjectParams]) -> SceneParams:
    base = sample_scene(scene_rng(0, 0), WorldConfig())
    return dataclasses.replace(base, road=(-10.0, 10.0), facades=(-15.0, 15.0),
                               objects=tuple(objects))


def _object(cls, x, z, ry=-math.pi / 2):
    base = sample_scene(scene_rng(0, 0), WorldConfig())
    car = next(o for o in base.objects if o.cls == "Car")
    ped = next(o for o in base.objects if o.cls == "Pedestrian")
    proto = car if cls == "Car" else ped
    dims = dict(h=1.53, w=1.63, l=3.88) if cls == "Car" else dict(h=1.76, w=0.66, l=0.84)
    return dataclasses.replace(proto, x=x, z=z, ry=ry, shade=1.0, **dims)


def test_occlusion_and_truncation_levels_from_a_hand_built_scene():
    cfg = WorldConfig()
    # a car in front, a pedestrian right behind it, a car cut by the left border, and a
    # pedestrian hidden entirely behind the first car
    front = _object("Car", 0.0, 15.0)
    behind = _object("Pedestrian", 0.0, 25.0)
    cut_x = -(cfg.camera.cx_frac * cfg.camera.width) / cfg.camera.focal * 8.0 - 0.06
    cut = _object("Car", cut_x, 8.0)
    hidden = dataclasses.replace(_object("Pedestrian", 0.0, 17.5), h=1.0)
    s = render_scene(_hand_scene([front, behind, cut, hidden]), cfg)
    by_index = {a["scene_index"]: (o, a) for o, a in zip(s.objects, s.attributes["objects"])}
    assert 3 not in by_index  # fully hidden: in the scene parameters, not in the labels
    o, a = by_index[0]
    assert o.occluded == 0 and o.truncated == 0 and a["visible_fraction"] > 0.95
    o, a = by_index[1]
    assert o.occluded == 2 and a["occlusion_fraction"] > 0.5
    o, a = by_index[2]
    assert 0.3 < o.truncated < 0.7 and o.bbox[0] == 0.0
    assert a["visible_fraction"] < 1 - o.truncated + 0.05


def test_small_objects_become_dontcare():
    cfg = dataclasses.replace(WorldConfig(),
                              labels=dataclasses.replace(WorldConfig().labels, dontcare_below_px=1e4))
    s = render_scene(sample_scene(scene_rng(1, 2), cfg), cfg)
    assert s.objects and all(o.type == "DontCare" for o in s.objects)
    assert all(o.to_line().endswith("-1 -1 -1 -1000 -1000 -1000 -10") for o in s.objects)


def test_sampled_distributions_follow_the_config():
    cfg = WorldConfig()
    scenes = [sample_scene(scene_rng(5, i), cfg) for i in range(150)]
    cars = [o for s in scenes for o in s.objects if o.cls == "Car"]
    peds = [o for s in scenes for o in s.objects if o.cls == "Pedestrian"]
    assert all(4.0 <= o.z <= 80.0 for o in cars) and all(4.0 <= o.z <= 50.0 for o in peds)
    assert np.mean([o.z for o in peds]) < np.mean([o.z for o in cars])
    assert max(o.z for o in cars) > 60 and min(o.z for o in cars) < 8
    # KITTI's object depth statistics (mean 28.0 m, sd 16.3 m) within sampling error
    car_z = np.array([o.z for o in cars])
    assert abs(car_z.mean() - 28.0) < 2.5 and abs(car_z.std() - 16.3) < 2.5
    h = np.array([o.h for o in cars])
    assert (np.abs(h - 1.53) <= 2 * 0.10 + 1e-9).all()
    assert all(o.h > 1.8 * o.w for o in peds)  # thin and tall
    # Poisson means 4 and 3, thinned a little where a spot is taken
    assert 3.0 < len(cars) / len(scenes) <= 4.5 and 2.2 < len(peds) / len(scenes) <= 3.5
    near = dataclasses.replace(cfg, car=dataclasses.replace(cfg.car, distance=(20.0, 30.0)))
    zs = [o.z for i in range(30) for o in sample_scene(scene_rng(5, i), near).objects
          if o.cls == "Car"]
    assert zs and all(20.0 <= z <= 30.0 for z in zs)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_for_any_worker_count(world, tmp_path):
    root, _ = world
    again = generate(tmp_path / "again", 6, seed=7, workers=1)
    assert _digest(again) == _digest(root)
    other = generate(tmp_path / "other", 2, seed=8, workers=1)
    assert _digest(other)["training/image_2/000000.png"] != _digest(root)["training/image_2/000000.png"]
    # a scene does not depend on how many scenes are generated
    assert _digest(other)["training/calib/000000.txt"] == _digest(root)["training/calib/000000.txt"]
    splits = {n: (root / "ImageSets" / f"{n}.txt").read_text().split() for n in ("train", "val", "test")}
    assert sorted(sum(splits.values(), [])) == [f"{i:06d}" for i in range(6)]


def test_make_world_experiment_writes_the_layout_and_a_report(compose_cfg, tmp_path):
    cfg = compose_cfg("experiment=make_world", "profile=quick", f"data.root={tmp_path / 'd'}",
                      "data.n_scenes=3", "seed=4", "data.workers=1")
    report = run_experiment(cfg)
    root = tmp_path / "d"
    for sub in ("image_2", "image_3", "calib", "label_2", "disp_occ_2", "disp_noc_2",
                "instance_2", "attributes"):
        assert len(list((root / "training" / sub).iterdir())) == 3, sub
    assert report["n_scenes"] == 3 and sum(report["splits"].values()) == 3
    assert json.loads((tmp_path / "run" / "report.json").read_text())["seed"] == 4
    assert (tmp_path / "run" / "world_samples.png").stat().st_size > 1000
    assert json.loads((root / "world.json").read_text())["config"] == WorldConfig().to_dict()
