"""Column layouts of the ragged arrays that carry labels and detections between nodes.

Ground-truth objects and detections travel as :class:`~entangle.node.Ragged` rows (one row per
object, rows grouped by image) so that they store as plain arrays. Coordinates are KITTI's
rectified camera frame: x right, y down, z forward, metres; ``(x, y, z)`` is the bottom centre of
the box, ``ry`` the yaw about the y axis; 2D boxes are left-image pixels.
"""

from __future__ import annotations

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
