"""The lazy reader of a KITTI layout as a torch ``Dataset`` (re-exported by :mod:`.kitti`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import torch.utils.data

from entangle.data.kitti import (ATTRIBUTES_DIR, DISPARITY_DIRS, DISPARITY_NOC_DIRS,
                                 INSTANCE_DIR, KittiFormatError, Sample, disparity_to_depth,
                                 image_folder, read_calib, read_disparity, read_image,
                                 read_label, split_ids)

log = logging.getLogger(__name__)


class KittiDataset(torch.utils.data.Dataset):
    """Lazy reader of a KITTI object (or stereo 2015) layout: item ``i`` is a :class:`Sample`.

    ``root`` holds ``ImageSets/`` and ``training/`` (or is the image folder itself). Ids come
    from ``ImageSets/SPLIT.txt``, or ``ids``; ``split='all'`` reads every left image. An id is
    looked up in ``training/`` and then ``testing/``. Labels, disparity and the side files are
    optional: absent folders give ``[]``/None. Iterating yields samples in order; with a torch
    ``DataLoader`` pass ``collate_fn=list``.
    """

    def __init__(self, root: str | Path, split: str = "train", *, ids: Sequence[str] | None = None,
                 load_disparity: bool = True, disparity_dir: str | None = None,
                 load_attributes: bool = True):
        self.root = Path(root)
        self.split = split
        self.folder = image_folder(self.root)
        self.ids = list(ids) if ids is not None else split_ids(self.root, split)
        self.load_disparity = load_disparity
        self.disparity_dir = disparity_dir
        self.load_attributes = load_attributes

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def _frame_folder(self, sid: str) -> Path:
        if (self.folder / "image_2" / f"{sid}.png").exists():
            return self.folder
        testing = self.folder.parent / "testing"
        if (testing / "image_2" / f"{sid}.png").exists():
            return testing
        return self.folder  # the missing image is reported by read_image

    def calib_path(self, sid: str) -> Path:
        folder = self._frame_folder(sid)
        p = folder / "calib" / f"{sid}.txt"
        if not p.exists() and (folder / "calib_cam_to_cam").is_dir():
            # stereo 2015: frames ``000000_10``/``_11`` share ``calib_cam_to_cam/000000.txt``
            return folder / "calib_cam_to_cam" / f"{sid.split('_')[0]}.txt"
        return p

    def _disparity_path(self, folder: Path, sid: str, names: Sequence[str]) -> Path | None:
        for name in names:
            p = folder / name / f"{sid}.png"
            if p.exists():
                return p
        return None

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        sid = self.ids[i]
        folder = self._frame_folder(sid)
        left = read_image(folder / "image_2" / f"{sid}.png")
        right = read_image(folder / "image_3" / f"{sid}.png")
        if left.shape != right.shape:
            raise KittiFormatError(folder / "image_3" / f"{sid}.png",
                                   f"right image is {right.shape[:2]}, left is {left.shape[:2]}")
        calib = read_calib(self.calib_path(sid))
        label = folder / "label_2" / f"{sid}.txt"
        objects = read_label(label) if (folder / "label_2").is_dir() else []
        disparity = depth = noc = instances = attributes = None
        if self.load_disparity:
            names = [self.disparity_dir] if self.disparity_dir else list(DISPARITY_DIRS)
            p = self._disparity_path(folder, sid, names)
            if p is not None:
                disparity = read_disparity(p)
                depth = disparity_to_depth(disparity, calib.fb)
            p = self._disparity_path(folder, sid, DISPARITY_NOC_DIRS)
            if p is not None:
                noc = read_disparity(p)
            p = folder / INSTANCE_DIR / f"{sid}.png"
            if p.exists():
                instances = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if self.load_attributes:
            p = folder / ATTRIBUTES_DIR / f"{sid}.json"
            if p.exists():
                try:
                    attributes = json.loads(p.read_text())
                except json.JSONDecodeError as err:
                    raise KittiFormatError(p, f"invalid JSON ({err.msg})", line=err.lineno) from err
        return Sample(id=sid, left=left, right=right, calib=calib, objects=objects,
                      disparity=disparity, depth=depth, attributes=attributes,
                      disparity_noc=noc, instances=instances)
