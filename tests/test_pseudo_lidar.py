"""Pseudo-LiDAR: analytic depth maps back-project to the right points; bad depth is an error."""

from __future__ import annotations

import numpy as np
import pytest

from entangle.models import boxes as bx
from entangle.models.pseudo_lidar import DepthError, PseudoLidar, depth_to_points, depth_to_points_batch
from entangle.node import Ragged

H, W, F = 32, 64, 50.0
P2 = np.array([[F, 0, W / 2, F * 0.06], [0, F, H / 2, 0], [0, 0, 1, 0]])   # camera 2 sits 6 cm left


def test_a_wall_back_projects_to_a_plane_and_projects_back_to_its_pixels():
    depth = np.full((H, W), 10.0, dtype=np.float32)
    pts = depth_to_points(depth, P2, max_height=100.0)
    assert pts.shape == (H * W, 3) and pts.dtype == np.float32
    np.testing.assert_allclose(pts[:, 2], 10.0)
    v, u = np.mgrid[0:H, 0:W]
    np.testing.assert_allclose(bx.project_points(pts, P2), np.stack([u.ravel(), v.ravel()], 1), atol=1e-3)
    # the principal point's ray lies 6 cm right of camera 2's... i.e. at x = -0.06 m
    centre = pts[(H // 2) * W + W // 2]
    np.testing.assert_allclose(centre, [-0.06, 0.0, 10.0], atol=1e-5)


def test_ground_plane_points_lie_on_the_ground_and_high_points_are_dropped():
    cam_h = 1.65
    v = np.arange(H)[:, None] * np.ones((1, W))
    dy = (v - H / 2) / F
    depth = np.where(dy > 0, cam_h / np.maximum(dy, 1e-9), 30.0).astype(np.float32)   # ground, then a wall
    pts = depth_to_points(depth, P2, max_height=1.0, max_depth=1000.0)
    ground = pts[pts[:, 1] > 0.1]
    np.testing.assert_allclose(ground[:, 1], cam_h, rtol=1e-5)
    assert np.all(-pts[:, 1] < 1.0)              # nothing more than 1 m above the sensor
    wall = depth_to_points(depth, P2, max_height=100.0)
    assert len(wall) > len(pts)                  # the filter did drop the high wall points


def test_invalid_pixels_range_and_stride():
    depth = np.full((H, W), 10.0, dtype=np.float32)
    depth[:5] = 0.0                              # invalid (KITTI's 0)
    depth[5:10] = 90.0                           # beyond max_depth
    pts = depth_to_points(depth, P2, max_height=100.0, max_depth=80.0)
    assert len(pts) == (H - 10) * W
    assert len(depth_to_points(depth, P2, max_height=100.0, stride=2)) == len(range(10, H, 2)) * len(range(0, W, 2))


def test_nan_or_inf_depth_names_the_sample_and_pixel():
    depth = np.full((2, H, W), 10.0, dtype=np.float32)
    depth[1, 3, 4] = np.nan
    with pytest.raises(DepthError, match=r"sample 1: 1 non-finite .* row 3, column 4"):
        depth_to_points_batch(depth, P2)
    depth[1, 3, 4] = np.inf
    with pytest.raises(DepthError, match="sample 1"):
        depth_to_points_batch(depth, np.stack([P2, P2]))


def test_batch_and_node_report_empty_clouds():
    depth = np.full((3, H, W), 10.0, dtype=np.float32)
    depth[1] = 0.0                               # no valid pixel: an empty cloud, not an error
    clouds = depth_to_points_batch(depth, P2)
    assert isinstance(clouds, Ragged) and clouds.lengths().tolist()[1] == 0
    node = PseudoLidar().fit({}, {}, seed=0)
    out = node.predict({"depth": depth, "calib": np.stack([P2] * 3)})
    assert out["n_points"].tolist() == clouds.lengths().tolist()
    assert node.score(out, {})["empty_clouds"] == 1.0
