"""Turn KITTI samples (:class:`~entangle.data.kitti.Sample`) into the arrays the detectors read.

Detector nodes exchange plain arrays: left images ``(N, H, W, 3)`` uint8, depth ``(N, H, W)``
float32 (0 = invalid), P2 matrices ``(N, 3, 4)`` and labels as a :class:`~entangle.node.Ragged`
of :data:`~entangle.models.layout.LABEL_COLUMNS` rows. The ``difficulty`` column is the KITTI
devkit's (a 2D height strictly above the scaled minimum; see
:func:`entangle.models.kitti_eval.difficulty_of`).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from entangle.models.kitti_eval import difficulty_of
from entangle.models.layout import CLASS_IDS, L, LABEL_COLUMNS
from entangle.node import Ragged


def label_rows(objects: Sequence[Any], image_height: int) -> np.ndarray:
    """Label rows ``(n, 15)`` float32 of KITTI objects (anything with Object3D's fields)."""
    rows = np.zeros((len(objects), len(LABEL_COLUMNS)), dtype=np.float64)
    for i, o in enumerate(objects):
        if o.type not in CLASS_IDS:
            raise ValueError(f"object {i} has class {o.type!r}, not one of {sorted(CLASS_IDS)}")
        h, w, l = o.dimensions
        rows[i, L["cls"]] = CLASS_IDS[o.type]
        rows[i, L["x"]:L["z"] + 1] = o.location
        rows[i, L["h"]], rows[i, L["w"]], rows[i, L["l"]] = h, w, l
        rows[i, L["ry"]] = o.rotation_y
        rows[i, L["x1"]:L["y2"] + 1] = o.bbox
        rows[i, L["truncated"]] = o.truncated
        rows[i, L["occluded"]] = o.occluded
    if len(rows):
        rows[:, L["difficulty"]] = difficulty_of(rows, image_height)
        rows[rows[:, L["cls"]] == CLASS_IDS["DontCare"], L["difficulty"]] = -1
    return rows.astype(np.float32)


def detection_batch(samples: Iterable[Any]) -> dict[str, Any]:
    """``image``, ``depth``, ``calib`` (P2) and ``labels`` of samples, stacked for the detectors.

    Samples without depth raise a ``ValueError`` naming the sample: the oracle upstream needs it.
    """
    images, depths, calibs, labels = [], [], [], []
    for s in samples:
        if s.depth is None:
            raise ValueError(f"sample {s.id} has no depth (no disparity map in its folder)")
        images.append(np.asarray(s.left, dtype=np.uint8))
        depths.append(np.asarray(s.depth, dtype=np.float32))
        calibs.append(np.asarray(s.calib.P2, dtype=np.float32))
        labels.append(label_rows(s.objects, s.left.shape[0]))
    if not images:
        raise ValueError("no samples")
    return {"image": np.stack(images), "depth": np.stack(depths), "calib": np.stack(calibs),
            "labels": Ragged.from_list(labels, width=len(LABEL_COLUMNS))}
