"""Column layouts of the ragged arrays that carry labels and detections between nodes.

Ground-truth objects and detections travel as :class:`~entangle.node.Ragged` rows (one row per
object, rows grouped by image) so that they store as plain arrays. Coordinates are KITTI's
rectified camera frame: x right, y down, z forward, metres; ``(x, y, z)`` is the bottom centre of
the box, ``ry`` the yaw about the y axis; 2D boxes are left-image pixels. Data sources write
these rows and models read them, so the schema lives here, below both; it imports nothing from
the project, so the renderer's code version (which covers what it imports) stays small.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: class ids shared by labels and detections (KITTI names in ``CLASS_NAMES``).
CAR, PEDESTRIAN, DONTCARE, VAN, PERSON_SITTING, CYCLIST, TRUCK, TRAM, MISC = range(9)
CLASS_NAMES = ("Car", "Pedestrian", "DontCare", "Van", "Person_sitting", "Cyclist", "Truck",
               "Tram", "Misc")
CLASS_IDS = {name: i for i, name in enumerate(CLASS_NAMES)}

#: columns of a ground-truth object row (kind ``"labels"``).
LABEL_COLUMNS = ("cls", "x", "y", "z", "h", "w", "l", "ry", "x1", "y1", "x2", "y2",
                 "truncated", "occluded", "difficulty")
#: columns of a detection row (kind ``"boxes"``); ``score`` is the confidence.
BOX_COLUMNS = ("cls", "x", "y", "z", "h", "w", "l", "ry", "x1", "y1", "x2", "y2", "score")

L = {name: i for i, name in enumerate(LABEL_COLUMNS)}
B = {name: i for i, name in enumerate(BOX_COLUMNS)}


def class_id(cls: int | str) -> int:
    """The id of a class given by KITTI name or id; ``ValueError`` for an unknown one."""
    if isinstance(cls, str):
        if cls not in CLASS_IDS:
            raise ValueError(f"unknown class {cls!r}; known: {CLASS_NAMES}")
        return CLASS_IDS[cls]
    cid = int(cls)
    if not 0 <= cid < len(CLASS_NAMES):
        raise ValueError(f"unknown class id {cls!r}; known: 0..{len(CLASS_NAMES) - 1} {CLASS_NAMES}")
    return cid


def class_rows(labels: Any, cls: int | str) -> np.ndarray:
    """Indices into ``labels.values`` (a :class:`~entangle.node.Ragged` of label rows) of the rows
    of class ``cls``: the objects a per-object loss covers."""
    cid = class_id(cls)
    v = np.asarray(labels.values).reshape(-1, len(LABEL_COLUMNS))
    return np.flatnonzero(v[:, L["cls"]].astype(np.int64) == cid)
