"""What the car and pedestrian detector nodes share: per-object losses, KITTI scores, checks.

A detector's samples for per-sample analysis are its *objects*: ``loss`` returns one number per
ground-truth row of the detector's class (in label-row order; :func:`~entangle.data.labels.
class_rows` gives their row indices), ``1 - max_j IoU_bev(object, det_j) * score_j``: 0 for a
confident exact box, 1 for an object no detection overlaps. False positives belong to no object,
so they show in ``score`` (AP), not in the per-object loss.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Mapping

import numpy as np

from entangle.data.labels import BOX_COLUMNS, CLASS_NAMES, LABEL_COLUMNS, class_rows
from entangle.models import kitti_eval
from entangle.node import BaseNode, NotFittedError, Ragged

log = logging.getLogger(__name__)


def check_labels(labels: Any, n_images: int | None = None, name: str = "labels") -> Ragged:
    """Return ``labels`` as a Ragged of LABEL_COLUMNS rows, or raise naming what is wrong."""
    if not isinstance(labels, Ragged):
        raise TypeError(f"{name} must be a Ragged of rows with columns {LABEL_COLUMNS}, "
                        f"got {type(labels).__name__}")
    v = np.asarray(labels.values)
    if len(v) and (v.ndim != 2 or v.shape[1] != len(LABEL_COLUMNS)):
        raise ValueError(f"{name} rows must have {len(LABEL_COLUMNS)} columns {LABEL_COLUMNS}, got {v.shape}")
    if n_images is not None and len(labels) != n_images:
        raise ValueError(f"{name} has {len(labels)} images but the inputs have {n_images}")
    return labels


def check_points(points: Any, name: str = "points") -> Ragged:
    """Return ``points`` as a Ragged of ``(n, 3)`` finite rows, or raise naming the image."""
    if not isinstance(points, Ragged):
        raise TypeError(f"{name} must be a Ragged of (n, 3) camera-frame points per image, "
                        f"got {type(points).__name__}")
    v = np.asarray(points.values)
    if len(v) and (v.ndim != 2 or v.shape[1] != 3):
        raise ValueError(f"{name} rows must be (x, y, z), got shape {v.shape}")
    if len(v):
        bad = ~np.all(np.isfinite(v), axis=1)
        if np.any(bad):
            row = int(np.flatnonzero(bad)[0])
            image = int(np.searchsorted(points.offsets, row, side="right") - 1)
            raise ValueError(f"{name}: image {image} has {int(bad[points.offsets[image]:points.offsets[image + 1]].sum())}"
                             f" non-finite points (first: row {row - points.offsets[image]}, {v[row]})")
    return points


def check_calib(calib: Any, n_images: int) -> np.ndarray:
    """Per-image P2 matrices ``(N, 3, 4)`` float64 from a ``(N, 3, 4)`` array (or one ``(3, 4)``)."""
    P = np.asarray(calib, dtype=np.float64)
    if P.shape == (3, 4):
        P = np.broadcast_to(P, (n_images, 3, 4))
    if P.shape != (n_images, 3, 4):
        raise ValueError(f"calib must be (N, 3, 4) P2 matrices for {n_images} images, got {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError(f"calib of image {int(np.argwhere(~np.isfinite(P))[0, 0])} is not finite")
    return P


class DetectorNode(BaseNode):
    """Base of the detector nodes: per-object loss, KITTI AP scores, fitted check.

    Subclasses set ``object_class`` and implement ``fit``/``predict``; ``predict`` returns
    ``boxes`` (Ragged of BOX_COLUMNS rows), ``image_size`` ((N, 2) image height and width, which
    scale the KITTI difficulty heights) and ``n_points`` (points per image in the detector's range;
    images with none are counted in ``score`` as ``empty_point_clouds``).
    """

    object_class: ClassVar[int]
    target_kinds = {"labels": "labels"}
    metric = "bev_ap_moderate"
    higher_is_better = True

    def _require_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit first")

    def check_is_fitted(self) -> None:
        self._require_fitted()

    def loss(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> np.ndarray:
        """One loss per ground-truth object of the node's class: ``1 - max IoU_bev x score``."""
        boxes = predictions["boxes"]
        labels = check_labels(targets["labels"], len(boxes))
        m = kitti_eval.match_objects(labels, boxes, self.object_class, metric="bev")
        return 1.0 - m["quality"]

    def loss_items(self, targets: Mapping[str, Any]) -> int:
        """The per-object loss covers every ground-truth object of the node's class."""
        return int(len(class_rows(targets["labels"], self.object_class)))

    def detected(self, predictions: Mapping[str, Any], targets: Mapping[str, Any],
                 min_overlap: float) -> np.ndarray:
        """Per ground-truth object (the loss's items, in order): found by a detection at BEV IoU
        ``>= min_overlap`` in the devkit's matching (the outcome churn and flips read)."""
        boxes = predictions["boxes"]
        labels = check_labels(targets["labels"], len(boxes))
        return kitti_eval.match_objects(labels, boxes, self.object_class, metric="bev",
                                        min_overlap=float(min_overlap))["matched"]

    def score(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, float]:
        """KITTI APs of the node's class (flat keys) with ``bev_ap_moderate`` (BEV AP|R40, strict IoU)."""
        boxes = predictions["boxes"]
        labels = check_labels(targets["labels"], len(boxes))
        size = np.asarray(predictions["image_size"]).reshape(-1, 2)
        heights = np.unique(size[:, 0])
        if len(heights) > 1:
            raise ValueError(f"images of different heights {heights.tolist()}: the KITTI "
                             "difficulty heights need one image height per evaluation")
        result = kitti_eval.evaluate(labels, boxes, int(heights[0]) if len(heights) else 1,
                                     classes=(self.object_class,))
        flat = kitti_eval.flat_metrics(result, self.object_class)
        out = {"bev_ap_moderate": flat["bev_ap40_strict_moderate"]}
        out.update(flat)
        per_object = self.loss(predictions, targets)
        out["mean_object_loss"] = float(per_object.mean()) if len(per_object) else float("nan")
        n_points = np.asarray(predictions.get("n_points", np.ones(len(boxes))))
        out["empty_point_clouds"] = float((n_points == 0).sum())
        return out

    @staticmethod
    def _rows(cls: int, box7: np.ndarray, box2d: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Detection rows (BOX_COLUMNS) from boxes ``(n, 7)``, 2D boxes ``(n, 4)`` and scores."""
        n = len(box7)
        out = np.zeros((n, len(BOX_COLUMNS)), dtype=np.float32)
        out[:, 0] = cls
        out[:, 1:8] = box7
        out[:, 8:12] = box2d
        out[:, 12] = score
        return out

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.object_class]
