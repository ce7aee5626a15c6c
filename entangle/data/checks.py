"""Validation of a KITTI-layout folder: one problem per bad file/line, counts for the rest.

Every frame is checked on its own (left and right image present, readable and of equal size;
calib keys present and numeric; every label line with 15/16 fields, a known class, numbers in
range; disparity PNG uint16 and image-sized). A frame with any problem is reported and skipped;
the others are counted per class and difficulty and listed in ``valid_ids`` so that
``KittiDataset(root, ids=report.valid_ids)`` loads what is good.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import cv2

from entangle.data.kitti import (DIFFICULTY_NAMES, DISPARITY_DIRS, KittiFormatError, Object3D,
                                 image_folder, difficulty, read_calib, read_text, split_ids)
from entangle.progress import progress

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """One thing wrong: the file (relative to the checked root), line (1-based) and field."""

    file: str
    message: str
    line: int | None = None
    field: str | None = None


@dataclass
class CheckReport:
    """Result of :func:`check_layout`: counts over valid frames and every problem found."""

    root: str
    n_frames: int = 0
    valid_ids: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    image_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"root": self.root, "n_frames": self.n_frames, "n_valid": len(self.valid_ids),
                "n_problems": len(self.problems), "counts": self.counts,
                "image_sizes": self.image_sizes,
                "problems": [asdict(p) for p in self.problems], "valid_ids": self.valid_ids}


def _check_label(path: Path, rel: str) -> tuple[list[Problem], list[Object3D]]:
    problems, objects = [], []
    try:
        text = read_text(path, "label file")
    except KittiFormatError as err:
        return [Problem(rel, err.reason, err.line)], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = Object3D.from_line(line, rel, lineno)
        except KittiFormatError as err:
            problems.append(Problem(rel, err.reason, lineno, err.field))
            continue
        if obj.type != "DontCare":
            if not 0.0 <= obj.truncated <= 1.0:
                problems.append(Problem(rel, f"truncated {obj.truncated} outside [0, 1]", lineno,
                                        "truncated"))
            if obj.occluded not in (0, 1, 2, 3):
                problems.append(Problem(rel, f"occluded {obj.occluded} not in 0..3", lineno,
                                        "occluded"))
            if (obj.dimensions <= 0).any():
                problems.append(Problem(rel, f"dimensions {obj.dimensions.tolist()} must be > 0",
                                        lineno, "h"))
        if obj.bbox[2] < obj.bbox[0] or obj.bbox[3] < obj.bbox[1]:
            problems.append(Problem(rel, f"2D box {obj.bbox.tolist()} has right < left or "
                                         "bottom < top", lineno, "left"))
        objects.append(obj)
    return problems, objects


def check_frame(folder: Path, sid: str, root: Path) -> tuple[list[Problem], list[Object3D], tuple | None]:
    """Problems of one frame, its objects and its image size (H, W) when readable."""
    problems: list[Problem] = []

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    shapes = []
    for cam in ("image_2", "image_3"):
        p = folder / cam / f"{sid}.png"
        if not p.exists():
            side = "left" if cam == "image_2" else "right"
            problems.append(Problem(rel(p), f"missing {side} image"))
            continue
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            problems.append(Problem(rel(p), "unreadable image"))
            continue
        shapes.append((cam, img.shape[:2]))
    if len(shapes) == 2 and shapes[0][1] != shapes[1][1]:
        problems.append(Problem(rel(folder / "image_3" / f"{sid}.png"),
                                f"image pair of different sizes: left {shapes[0][1]}, "
                                f"right {shapes[1][1]}"))
    size = shapes[0][1] if shapes and shapes[0][0] == "image_2" else None
    calib = folder / "calib" / f"{sid}.txt"
    if not calib.exists() and (folder / "calib_cam_to_cam").is_dir():
        calib = folder / "calib_cam_to_cam" / f"{sid.split('_')[0]}.txt"
    if not calib.exists():
        problems.append(Problem(rel(calib), "missing calib file"))
    else:
        try:
            read_calib(calib)
        except KittiFormatError as err:
            problems.append(Problem(rel(calib), err.reason, err.line, err.field))
    objects: list[Object3D] = []
    if (folder / "label_2").is_dir():
        label = folder / "label_2" / f"{sid}.txt"
        if not label.exists():
            problems.append(Problem(rel(label), "missing label file"))
        else:
            found, objects = _check_label(label, rel(label))
            problems += found
    for name in DISPARITY_DIRS:
        p = folder / name / f"{sid}.png"
        if p.exists():
            code = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            if code is None or code.dtype.name != "uint16" or code.ndim != 2:
                problems.append(Problem(rel(p), "disparity PNG must be single-channel uint16"))
            elif size is not None and code.shape != size:
                problems.append(Problem(rel(p), f"disparity is {code.shape}, image is {size}"))
    return problems, objects, size


def check_layout(root: str | Path, split: str | None = None,
                 ids: Sequence[str] | None = None) -> CheckReport:
    """Validate a KITTI object/stereo folder; bad frames are reported and skipped.

    Frames are ``ids``, else those of ``ImageSets/SPLIT.txt``, else every id that has a left
    image, label or calib file (so a label without its image is reported too).
    """
    root = Path(root)
    report = CheckReport(root=str(root))
    try:
        folder = image_folder(root)
    except FileNotFoundError as err:
        report.problems.append(Problem(".", str(err)))
        return report
    if ids is None:
        if split is not None:
            try:
                ids = split_ids(root, split)
            except FileNotFoundError as err:
                report.problems.append(Problem(f"ImageSets/{split}.txt", str(err)))
                return report
            except KittiFormatError as err:
                report.problems.append(Problem(f"ImageSets/{split}.txt", err.reason, err.line))
                return report
        else:
            stems = set()
            for sub, ext in (("image_2", ".png"), ("label_2", ".txt"), ("calib", ".txt")):
                stems |= {p.stem for p in (folder / sub).glob(f"*{ext}")}
            ids = sorted(stems)
    counts: dict[str, dict[str, int]] = {}
    sizes: dict[str, int] = {}
    for sid in progress(ids, desc="checking frames", unit="frame"):
        problems, objects, size = check_frame(folder, sid, root)
        report.n_frames += 1
        if problems:
            report.problems += problems
            continue
        report.valid_ids.append(sid)
        if size is not None:
            key = f"{size[0]}x{size[1]}"
            sizes[key] = sizes.get(key, 0) + 1
        for obj in objects:
            level = difficulty(obj, size[0]) if size else -1
            name = DIFFICULTY_NAMES[level] if level >= 0 else "none"
            per = counts.setdefault(obj.type, {n: 0 for n in (*DIFFICULTY_NAMES, "none")})
            per[name] += 1
    report.counts = dict(sorted(counts.items()))
    report.image_sizes = sizes
    log.info("%s: %d frames, %d valid, %d problems", root, report.n_frames,
             len(report.valid_ids), len(report.problems))
    return report
