"""KITTI layout I/O: calib, labels, disparity PNGs, difficulty, and the reader on three layouts."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch.utils.data

from entangle.data.kitti import (Calib, KittiDataset, KittiFormatError, Object3D,
                                 decode_disparity, difficulty, difficulty_of, disparity_to_depth,
                                 encode_disparity, label_rows, read_calib, read_disparity,
                                 read_label, write_calib, write_disparity, write_label,
                                 write_sample)
from entangle.data.labels import CLASS_IDS, L
from entangle.data.world import WorldConfig, make_calib, render_scene, sample_scene, scene_rng

# training/calib/000000.txt of KITTI object (the devkit's first frame).
KITTI_CALIB = """\
P0: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 0.000000000000e+00 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P1: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 -3.875744000000e+02 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P2: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 4.485728000000e+01 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 2.163791000000e-01 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 2.745884000000e-03
P3: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 -3.395242000000e+02 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 2.199936000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 2.729905000000e-03
R0_rect: 9.999239000000e-01 9.837760000000e-03 -7.445048000000e-03 -9.869795000000e-03 9.999421000000e-01 -4.278459000000e-03 7.402527000000e-03 4.351614000000e-03 9.999631000000e-01
Tr_velo_to_cam: 7.533745000000e-03 -9.999714000000e-01 -6.166020000000e-04 -4.069766000000e-03 1.480249000000e-02 7.280733000000e-04 -9.998902000000e-01 -7.631618000000e-02 9.998621000000e-01 7.523790000000e-03 1.480755000000e-02 -2.717806000000e-01
Tr_imu_to_velo: 9.999976000000e-01 7.553071000000e-04 -2.035826000000e-03 -8.086759000000e-01 -7.854027000000e-04 9.998898000000e-01 -1.482298000000e-02 3.195559000000e-01 2.024406000000e-03 1.482454000000e-02 9.998881000000e-01 -7.997231000000e-01

"""
KITTI_LABEL = "Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01\n"

# stereo 2015 training/calib_cam_to_cam/000000.txt (abridged to the keys the reader uses).
CAM_TO_CAM = """\
calib_time: 09-Jan-2012 13:57:47
P_rect_00: 7.215377e+02 0.000000e+00 6.095593e+02 0.000000e+00 0.000000e+00 7.215377e+02 1.728540e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
R_rect_00: 9.999239e-01 9.837760e-03 -7.445048e-03 -9.869795e-03 9.999421e-01 -4.278459e-03 7.402527e-03 4.351614e-03 9.999631e-01
P_rect_01: 7.215377e+02 0.000000e+00 6.095593e+02 -3.875744e+02 0.000000e+00 7.215377e+02 1.728540e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
P_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03
P_rect_03: 7.215377e+02 0.000000e+00 6.095593e+02 -3.395242e+02 0.000000e+00 7.215377e+02 1.728540e+02 2.199936e+00 0.000000e+00 0.000000e+00 1.000000e+00 2.729905e-03
"""
VELO_TO_CAM = """\
calib_time: 15-Mar-2012 11:37:16
R: 7.533745e-03 -9.999714e-01 -6.166020e-04 1.480249e-02 7.280733e-04 -9.998902e-01 9.998621e-01 7.523790e-03 1.480755e-02
T: -4.069766e-03 -7.631618e-02 -2.717806e-01
"""


def test_real_kitti_calib_parses_with_kitti_geometry(tmp_path):
    p = tmp_path / "000000.txt"
    p.write_text(KITTI_CALIB)
    calib = read_calib(p)
    assert calib.f == pytest.approx(721.5377)
    assert (calib.cx, calib.cy) == pytest.approx((609.5593, 172.854))
    # KITTI's colour cameras are 0.54 m apart (0.5327 m in this calibration)
    assert calib.baseline == pytest.approx((44.85728 + 339.5242) / 721.5377)
    assert calib.Tr_velo_to_cam[2, 3] == pytest.approx(-0.2717806)
    write_calib(tmp_path / "again.txt", calib)
    assert read_calib(tmp_path / "again.txt") == calib


def test_calib_missing_key_and_bad_value_name_the_field(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("\n".join(ln for ln in KITTI_CALIB.splitlines() if not ln.startswith("R0_rect")))
    with pytest.raises(KittiFormatError, match="R0_rect") as err:
        read_calib(p)
    assert err.value.field == "R0_rect"
    p.write_text(KITTI_CALIB.replace("4.485728000000e+01", "4.4857x"))
    with pytest.raises(KittiFormatError, match="non-numeric") as err:
        read_calib(p)
    assert (err.value.line, err.value.field) == (3, "P2")


def test_stereo2015_cam_to_cam_calib_reads_into_the_same_calib(tmp_path):
    (tmp_path / "calib_cam_to_cam").mkdir()
    (tmp_path / "calib_velo_to_cam").mkdir()
    (tmp_path / "calib_cam_to_cam" / "000000.txt").write_text(CAM_TO_CAM)
    (tmp_path / "calib_velo_to_cam" / "000000.txt").write_text(VELO_TO_CAM)
    object_calib = tmp_path / "object.txt"
    object_calib.write_text(KITTI_CALIB)
    calib = read_calib(tmp_path / "calib_cam_to_cam" / "000000.txt")
    ref = read_calib(object_calib)
    for key in ("P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam"):
        np.testing.assert_allclose(getattr(calib, key), getattr(ref, key), rtol=1e-6)
    assert np.isnan(calib.Tr_imu_to_velo).all()  # no calib_imu_to_velo folder: unknown


def test_label_line_parses_and_writes_back_identically(tmp_path):
    obj = Object3D.from_line(KITTI_LABEL)
    assert obj.type == "Pedestrian" and obj.occluded == 0
    np.testing.assert_array_equal(obj.bbox, [712.40, 143.00, 810.73, 307.92])
    np.testing.assert_array_equal(obj.dimensions, [1.89, 0.48, 1.20])
    np.testing.assert_array_equal(obj.location, [1.84, 1.47, 8.41])
    assert obj.to_line() + "\n" == KITTI_LABEL
    dontcare = "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10"
    scored = "Car 0.00 0 1.55 614.24 181.78 727.31 284.77 1.57 1.73 4.15 1.00 1.75 13.22 1.62 0.912345"
    p = tmp_path / "l.txt"
    p.write_text(KITTI_LABEL + dontcare + "\n\n" + scored + "\n")
    objs = read_label(p)
    assert [o.type for o in objs] == ["Pedestrian", "DontCare", "Car"]
    assert objs[2].score == pytest.approx(0.912345) and objs[0].score is None
    write_label(tmp_path / "m.txt", objs)
    assert read_label(tmp_path / "m.txt") == objs
    assert (tmp_path / "m.txt").read_text() == KITTI_LABEL + dontcare + "\n" + scored + "\n"


@pytest.mark.parametrize("line, field, match", [
    ("Car 0.00 0 1.55 614.24 181.78", None, "expected 15 or 16 fields, got 6"),
    ("Car 0.00 0 1.55 614.24 181.78 727.31 284.77 abc 1.73 4.15 1.00 1.75 13.22 1.62", "h",
     "non-numeric"),
    ("Bus 0.00 0 1.55 614.24 181.78 727.31 284.77 1.57 1.73 4.15 1.00 1.75 13.22 1.62", "type",
     "unknown class"),
    ("Car 0.00 0.5 1.55 614.24 181.78 727.31 284.77 1.57 1.73 4.15 1.00 1.75 13.22 1.62",
     "occluded", "integer"),
])
def test_bad_label_lines_name_file_line_and_field(tmp_path, line, field, match):
    p = tmp_path / "007.txt"
    p.write_text(KITTI_LABEL + line + "\n")
    with pytest.raises(KittiFormatError, match=match) as err:
        read_label(p)
    assert err.value.line == 2 and err.value.field == field
    assert "007.txt:2" in str(err.value)


def _obj(height, occluded=0, truncated=0.0, kind="Car"):
    return Object3D(kind, truncated, occluded, 0.0, [10, 100, 50, 100 + height], [1.5, 1.6, 3.9],
                    [0, 1.65, 10], 0.0)


@pytest.mark.parametrize("height, occ, trunc, image_height, expected", [
    (40.1, 0, 0.0, 375, 0), (39.9, 0, 0.0, 375, 1), (40, 1, 0.0, 375, 1), (40, 0, 0.2, 375, 1),
    (25.1, 2, 0.0, 375, 2), (25.1, 2, 0.5, 375, 2), (24.9, 0, 0.0, 375, -1), (60, 3, 0.0, 375, -1),
    (60, 0, 0.51, 375, -1),
    # the devkit's limits are strict: a box exactly 40 (25) px high is not easy (not hard)
    (40, 0, 0.0, 375, 1), (25, 2, 0.0, 375, -1),
    # heights scale with the image: 40 px at 375 rows is 13.65 px at 128 rows
    (13.7, 0, 0.0, 128, 0), (13.6, 0, 0.0, 128, 1), (8.6, 0, 0.0, 128, 1), (8.5, 0, 0.0, 128, -1),
])
def test_difficulty_follows_kitti_rules(height, occ, trunc, image_height, expected):
    assert difficulty(_obj(height, occ, trunc), image_height) == expected


def test_dontcare_has_no_difficulty():
    assert difficulty(_obj(100, kind="DontCare")) == -1


def test_label_rows_carry_the_per_object_difficulty():
    rng = np.random.default_rng(0)
    objs = [_obj(rng.choice([8.5, 8.533, 8.6, 13.6, 13.7, 30.0]), int(rng.integers(0, 4)),
                 float(rng.choice([0.0, 0.15, 0.3, 0.5, 0.6])), str(rng.choice(["Car", "DontCare"])))
            for _ in range(200)]
    rows = label_rows(objs, 128)
    per_object = [difficulty(o, 128) for o in objs]
    assert rows[:, L["difficulty"]].tolist() == per_object == difficulty_of(rows, 128).tolist()
    assert rows[:, L["cls"]].tolist() == [CLASS_IDS[o.type] for o in objs]
    assert set(per_object) == {-1, 0, 1, 2}


def test_disparity_png_encoding_round_trips_and_marks_invalid(tmp_path):
    d = np.array([[0.0, np.nan, 1 / 256, 1e-4], [10.5, 255.99, 3.14159, 100.0]], np.float32)
    code = encode_disparity(d)
    assert code.dtype == np.uint16
    np.testing.assert_array_equal(code[0], [0, 0, 1, 1])  # a tiny valid value stays valid
    assert code[1, 0] == 2688
    write_disparity(tmp_path / "d.png", d)
    back = read_disparity(tmp_path / "d.png")
    np.testing.assert_array_equal(back, decode_disparity(code))
    assert np.abs(back[1] - d[1]).max() <= 0.5 / 256 + 1e-6
    write_disparity(tmp_path / "e.png", back)  # quantised values survive a second round trip
    np.testing.assert_array_equal(read_disparity(tmp_path / "e.png"), back)
    with pytest.raises(ValueError, match=">= 0"):
        encode_disparity(np.array([[-1.0]]))
    with pytest.raises(ValueError, match="exceeds"):
        encode_disparity(np.array([[300.0]]))
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(KittiFormatError, match="uint16"):
        read_disparity(tmp_path / "rgb.png")
    depth = disparity_to_depth(back, fb=100.0)
    assert depth[0, 0] == 0 and depth[1, 0] == pytest.approx(100 / 10.5)


def test_image_to_rect_inverts_projection_with_kitti_offsets(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text(KITTI_CALIB)
    calib = read_calib(p)
    pts = np.array([[1.84, 1.47, 8.41], [-10.0, 0.5, 40.0], [3.0, -1.0, 5.0]])
    uv = calib.project(pts)
    depth = pts[:, 2] + calib.P2[2, 3]
    np.testing.assert_allclose(calib.image_to_rect(uv[:, 0], uv[:, 1], depth), pts, atol=1e-9)


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    """Two rendered scenes written with write_sample, plus the samples themselves."""
    cfg = WorldConfig()
    root = tmp_path_factory.mktemp("world")
    samples = [render_scene(sample_scene(scene_rng(11, i), cfg), cfg, sample_id=f"{i:06d}")
               for i in range(2)]
    for s in samples:
        write_sample(root / "training", s)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000001\n000000\n")
    return root, samples


def test_writer_and_reader_round_trip_exactly(world_root):
    root, samples = world_root
    ds = KittiDataset(root, "train")
    assert ds.ids == ["000001", "000000"]
    back = ds[1]
    assert back == samples[0]  # images, calib, labels, disparity, depth, attributes, instances
    cam = WorldConfig().camera
    assert back.left.dtype == np.uint8 and back.left.shape == (cam.height, cam.width, 3)
    assert back.disparity.dtype == np.float32 and back.depth.dtype == np.float32
    assert [s.id for s in ds] == ["000001", "000000"]


def test_dataset_works_with_a_torch_dataloader(world_root):
    root, _ = world_root
    loader = torch.utils.data.DataLoader(KittiDataset(root, "train"), batch_size=2,
                                         collate_fn=list)
    (batch,) = list(loader)
    assert [s.id for s in batch] == ["000001", "000000"]


def test_reader_loads_a_real_kitti_object_layout(tmp_path):
    t = tmp_path / "training"
    for sub in ("image_2", "image_3", "calib", "label_2"):
        (t / sub).mkdir(parents=True)
    img = np.random.default_rng(0).integers(0, 255, (375, 1242, 3), dtype=np.uint8)
    cv2.imwrite(str(t / "image_2" / "000000.png"), img)
    cv2.imwrite(str(t / "image_3" / "000000.png"), img[:, ::-1])
    (t / "calib" / "000000.txt").write_text(KITTI_CALIB)
    (t / "label_2" / "000000.txt").write_text(KITTI_LABEL)
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "val.txt").write_text("000000\n")
    s = KittiDataset(tmp_path, "val")[0]
    np.testing.assert_array_equal(s.left, img[:, :, ::-1])  # RGB
    assert s.calib.f == pytest.approx(721.5377)
    assert s.objects == [Object3D.from_line(KITTI_LABEL)]
    assert s.disparity is None and s.depth is None and s.attributes is None
    assert difficulty(s.objects[0], s.left.shape[0]) == 0
    with pytest.raises(FileNotFoundError, match="ImageSets/train.txt"):
        KittiDataset(tmp_path, "train")


def test_reader_loads_a_stereo2015_layout_with_disparity(tmp_path):
    t = tmp_path / "training"
    for sub in ("image_2", "image_3", "disp_occ_0", "calib_cam_to_cam"):
        (t / sub).mkdir(parents=True)
    img = np.full((20, 60, 3), 90, np.uint8)
    for frame in ("10", "11"):
        cv2.imwrite(str(t / "image_2" / f"000000_{frame}.png"), img)
        cv2.imwrite(str(t / "image_3" / f"000000_{frame}.png"), img)
    disp = np.zeros((20, 60), np.float32)
    disp[5:10, 10:40] = 32.25
    write_disparity(t / "disp_occ_0" / "000000_10.png", disp)
    (t / "calib_cam_to_cam" / "000000.txt").write_text(CAM_TO_CAM)
    ds = KittiDataset(tmp_path, "all")
    assert ds.ids == ["000000_10", "000000_11"]
    s10, s11 = ds[0], ds[1]
    np.testing.assert_array_equal(s10.disparity, disp)
    fb = 721.5377 * s10.calib.baseline
    assert s10.depth[6, 20] == pytest.approx(fb / 32.25, rel=1e-6) and s10.depth[0, 0] == 0
    assert s11.disparity is None and s10.objects == []
    assert math.isclose(s10.calib.baseline, 0.5327, abs_tol=1e-3)


def test_reader_rejects_right_image_of_another_size(world_root, tmp_path):
    root, samples = world_root
    t = tmp_path / "training"
    write_sample(t, samples[0])
    cv2.imwrite(str(t / "image_3" / "000000.png"), np.zeros((100, 416, 3), np.uint8))
    with pytest.raises(KittiFormatError, match="right image"):
        KittiDataset(tmp_path, "all")[0]


def test_world_calib_is_kitti_like():
    calib = make_calib(WorldConfig().camera)
    assert calib.f == pytest.approx(721.5377 * WorldConfig().camera.width / 1242)
    assert calib.baseline == pytest.approx(0.54)
    # camera 2 sits 6 cm left of the reference camera, as in KITTI (P2[0, 3] > 0)
    assert calib.P2[0, 3] / calib.f == pytest.approx(0.06)
    assert isinstance(calib, Calib)
