"""Turn KITTI samples (:class:`~entangle.data.kitti.Sample`) into the arrays the detectors read.

Detector nodes exchange plain arrays: left images ``(N, H, W, 3)`` uint8, depth ``(N, H, W)``
float32 (0 = invalid), P2 matrices ``(N, 3, 4)`` and labels as a :class:`~entangle.node.Ragged`
of :data:`~entangle.data.labels.LABEL_COLUMNS` rows (:func:`entangle.data.kitti.label_rows`). The
``difficulty`` column is the KITTI devkit's (a 2D height strictly above the scaled minimum; see
:func:`entangle.data.kitti.difficulty`).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from entangle.data.kitti import label_rows
from entangle.data.labels import LABEL_COLUMNS
from entangle.node import Ragged


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
