"""Dataset validation: each kind of damage is reported with file/line/field; the rest still loads."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from entangle.cli import TaskFailed, run as run_experiment
from entangle.data.checks import check_layout
from entangle.data.kitti import KittiDataset, difficulty, write_sample
from entangle.data.world import WorldConfig, render_scene, sample_scene, scene_rng


@pytest.fixture(scope="module")
def samples():
    cfg = WorldConfig()
    return [render_scene(sample_scene(scene_rng(21, i), cfg), cfg, sample_id=f"{i:06d}")
            for i in range(6)]


@pytest.fixture
def damaged(tmp_path, samples):
    """Six frames, five of them damaged in a different way; frame 000005 is intact."""
    t = tmp_path / "training"
    for s in samples:
        write_sample(t, s)
    label0 = t / "label_2" / "000000.txt"
    label0.write_text(label0.read_text() + "Car 0.00 0 1.55 614.24\n")          # field count
    label1 = t / "label_2" / "000001.txt"
    lines = label1.read_text().splitlines()
    parts = lines[0].split()
    parts[8] = "tall"                                                           # non-numeric h
    label1.write_text("\n".join([" ".join(parts)] + lines[1:]) + "\n")
    calib2 = t / "calib" / "000002.txt"
    calib2.write_text("".join(ln + "\n" for ln in calib2.read_text().splitlines()
                              if not ln.startswith("P2:")))                    # missing key
    cv2.imwrite(str(t / "image_3" / "000003.png"), np.zeros((64, 416, 3), np.uint8))  # size
    (t / "image_3" / "000004.png").unlink()                                    # no right image
    return tmp_path, lines


def test_each_problem_is_reported_once_with_file_line_and_field(damaged, samples):
    root, lines1 = damaged
    report = check_layout(root)
    assert report.n_frames == 6 and report.valid_ids == ["000005"]
    found = {(p.file, p.line, p.field): p.message for p in report.problems}
    n0 = len(samples[0].objects) + 1
    assert found[("training/label_2/000000.txt", n0, None)] == "expected 15 or 16 fields, got 5"
    assert "non-numeric value 'tall'" in found[("training/label_2/000001.txt", 1, "h")]
    assert found[("training/calib/000002.txt", None, "P2")] == "missing calib key 'P2'"
    assert "different sizes" in found[("training/image_3/000003.png", None, None)]
    assert found[("training/image_3/000004.png", None, None)] == "missing right image"
    assert len(report.problems) == 5
    # counts come from the good frame only
    expected: dict[str, dict[str, int]] = {}
    for o in samples[5].objects:
        level = difficulty(o, samples[5].left.shape[0])
        name = ("easy", "moderate", "hard")[level] if level >= 0 else "none"
        expected.setdefault(o.type, {"easy": 0, "moderate": 0, "hard": 0, "none": 0})[name] += 1
    assert report.counts == expected
    # the good frames still load
    ds = KittiDataset(root, ids=report.valid_ids)
    assert ds[0] == samples[5]


def test_semantic_label_errors_and_orphan_labels_are_reported(tmp_path, samples):
    t = tmp_path / "training"
    write_sample(t, samples[0])
    lab = t / "label_2" / "000000.txt"
    first = lab.read_text().splitlines()[0].split()
    first[1], first[2] = "1.7", "5"             # truncated > 1, occluded not in 0..3
    first[4], first[6] = "300", "100"           # left > right
    lab.write_text(" ".join(first) + "\n")
    (t / "label_2" / "000009.txt").write_text("")  # a label with no image or calib
    report = check_layout(tmp_path)
    fields = sorted((p.file, p.line, p.field) for p in report.problems)
    assert ("training/label_2/000000.txt", 1, "truncated") in fields
    assert ("training/label_2/000000.txt", 1, "occluded") in fields
    assert ("training/label_2/000000.txt", 1, "left") in fields
    assert ("training/image_2/000009.png", None, None) in fields
    assert report.valid_ids == []


def test_a_clean_world_has_no_problems_and_split_ids_are_honoured(tmp_path, samples):
    t = tmp_path / "training"
    for s in samples[:3]:
        write_sample(t, s)
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "val.txt").write_text("000002\n")
    assert check_layout(tmp_path).ok
    report = check_layout(tmp_path, split="val")
    assert report.valid_ids == ["000002"] and report.n_frames == 1
    missing = check_layout(tmp_path, split="test")
    assert not missing.ok and missing.problems[0].file == "ImageSets/test.txt"


def test_check_dataset_experiment_writes_the_report(damaged, compose_cfg, tmp_path):
    root, _ = damaged
    cfg = compose_cfg("experiment=check_dataset", f"data.root={root}")
    with pytest.raises(TaskFailed, match="5 problem"):   # written whole, then a non-zero exit
        run_experiment(cfg)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["n_problems"] == 5 == report["n_problems"]
    assert on_disk["n_valid"] == 1
    assert {p["file"] for p in on_disk["problems"]} >= {"training/image_3/000004.png",
                                                        "training/calib/000002.txt"}
