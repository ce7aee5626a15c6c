"""Pseudo-LiDAR: back-project a depth map through the camera into a 3D point cloud.

Every valid pixel ``(u, v)`` with depth ``d`` becomes the point ``(X, Y, Z)`` of KITTI's
rectified reference-camera frame (x right, y down, z forward), the frame of the labels, by
inverting the left colour camera's projection ``P2 [X Y Z 1]^T = d [u v 1]^T``::

    Z = d - t3,    X = (d u - t1 - cu Z) / fu,    Y = (d v - t2 - cv Z) / fv,    t = P2[:, 3]

which is the pseudo-LiDAR code's ``project_image_to_rect`` (``X = (u - cu) Z / fu + bx`` with
``bx = -t1 / fu``) plus KITTI's millimetre-sized ``t3``. Filtering, all documented:

* pixels with depth ``<= 0`` are invalid (the KITTI convention, 0 = no depth) and are skipped;
* points farther than ``max_depth`` are dropped (the BEV detectors do not look that far);
* points higher than ``max_height`` above the sensor are dropped: the paper keeps LiDAR-frame
  points with ``z < 1 m``; the camera frame's height above the sensor is ``-Y``, so this keeps
  ``-Y < max_height`` (sky, trees, building tops carry no object evidence);
* NaN or infinite depth is an error (:class:`DepthError`, naming the sample and pixel), never
  silently dropped: it means the upstream model is broken.

An image whose depth leaves no point in range gives an empty cloud, which is a valid value; the
detectors report such images in their scores.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from entangle.node import BaseNode, Ragged

log = logging.getLogger(__name__)

#: default limits (metres).
MAX_HEIGHT = 1.0
MAX_DEPTH = 80.0


class DepthError(ValueError):
    """Depth that cannot be turned into points (NaN, inf, wrong shape); names the sample."""


def _projection(calib: Any) -> np.ndarray:
    """The 3x4 P2 of a calib object (``.P2``), a (3, 4) array or a flat 12-vector."""
    P = getattr(calib, "P2", calib)
    P = np.asarray(P, dtype=np.float64)
    if P.size != 12:
        raise ValueError(f"calib must be a 3x4 projection matrix P2 (or have .P2), got shape {P.shape}")
    return P.reshape(3, 4)


def depth_to_points(depth: np.ndarray, calib: Any, max_height: float = MAX_HEIGHT,
                    max_depth: float = MAX_DEPTH, stride: int = 1, *,
                    sample: int | str | None = None) -> np.ndarray:
    """Point cloud ``(n, 3)`` float32 of one depth map ``(H, W)`` in the rectified camera frame.

    Parameters
    ----------
    depth : (H, W) array
        Depth in metres along the optical axis; ``<= 0`` marks invalid pixels.
    calib : Calib or (3, 4) array
        The left camera's projection ``P2`` (or an object with a ``P2`` attribute).
    max_height : float
        Drop points more than this many metres above the sensor (``-Y > max_height``).
    max_depth : float
        Drop points farther than this (``Z > max_depth``).
    stride : int
        Keep every ``stride``-th pixel along both axes (a cheap, uniform subsampling).
    sample : int or str, optional
        Name of the sample, used in error messages.

    Raises
    ------
    DepthError
        If ``depth`` is not 2-D or holds NaN or infinite values.
    """
    where = f"sample {sample}" if sample is not None else "depth map"
    d = np.asarray(depth)
    if d.ndim != 2:
        raise DepthError(f"{where}: depth must be (H, W), got shape {d.shape}")
    bad = ~np.isfinite(d)
    if np.any(bad):
        v, u = np.argwhere(bad)[0]
        raise DepthError(f"{where}: {int(bad.sum())} non-finite depth values (first at row {v}, "
                         f"column {u}: {d[v, u]}); the upstream depth is broken")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    P = _projection(calib)
    if P[0, 1] != 0 or P[1, 0] != 0 or np.any(P[2, :3] != [0, 0, 1]):
        raise ValueError(f"P2 must be a rectified projection [[fu, 0, cu, t1], [0, fv, cv, t2], "
                         f"[0, 0, 1, t3]], got {P.tolist()}")
    fu, fv, cu, cv = P[0, 0], P[1, 1], P[0, 2], P[1, 2]
    t1, t2, t3 = P[:, 3]
    d = d[::stride, ::stride].astype(np.float64)
    vs, us = np.meshgrid(np.arange(0, depth.shape[0], stride), np.arange(0, depth.shape[1], stride),
                         indexing="ij")
    keep = (d > 0)
    dk = d[keep]
    z = dk - t3
    x = (dk * us[keep] - t1 - cu * z) / fu
    y = (dk * vs[keep] - t2 - cv * z) / fv
    high = (-y < max_height) & (z <= max_depth)
    return np.stack([x[high], y[high], z[high]], axis=1).astype(np.float32)


def depth_to_points_batch(depth: np.ndarray, calib: Any, max_height: float = MAX_HEIGHT,
                          max_depth: float = MAX_DEPTH, stride: int = 1) -> Ragged:
    """Point clouds of a batch of depth maps ``(N, H, W)``: a :class:`Ragged` of ``(n_i, 3)`` rows.

    ``calib`` is one P2 for all images, or one per image (``(N, 3, 4)`` or a list of calibs).
    """
    d = np.asarray(depth)
    if d.ndim != 3:
        raise DepthError(f"depth batch must be (N, H, W), got shape {d.shape}")
    if isinstance(calib, (list, tuple)):
        calibs = list(calib)
    else:
        P = np.asarray(getattr(calib, "P2", calib), dtype=np.float64)
        calibs = list(P.reshape(-1, 3, 4)) if P.size != 12 else [P] * len(d)
    if len(calibs) != len(d):
        raise ValueError(f"{len(d)} depth maps but {len(calibs)} calibrations")
    clouds = [depth_to_points(d[i], calibs[i], max_height, max_depth, stride, sample=i)
              for i in range(len(d))]
    return Ragged.from_list(clouds, width=3)


class PseudoLidar(BaseNode):
    """The non-learned node depth map + calib -> pseudo-LiDAR point cloud (see module docstring).

    Outputs ``points`` (a Ragged of ``(n, 3)`` float32 rows per image, camera frame) and
    ``n_points`` (points per image), so that images left with no points are visible downstream.
    """

    input_kinds = {"depth": "depth", "calib": "calib"}
    output_kinds = {"points": "points", "n_points": "array"}
    metric = "n_points"
    higher_is_better = True
    version = "1"
    #: cheap and deterministic: recomputed where needed rather than stored (clouds are large:
    #: ~50k points per image), and the same for every seed.
    stores_predictions = False
    uses_seed = False

    def __init__(self, *, max_height: float = MAX_HEIGHT, max_depth: float = MAX_DEPTH, stride: int = 1):
        self.max_height = max_height
        self.max_depth = max_depth
        self.stride = stride

    def fit(self, inputs: Mapping[str, Any], targets: Mapping[str, Any], *, seed: int) -> "PseudoLidar":
        self.fitted_ = True
        return self

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        pts = depth_to_points_batch(inputs["depth"], inputs["calib"], self.max_height,
                                    self.max_depth, self.stride)
        n = pts.lengths()
        if np.any(n == 0):
            log.warning("%d of %d depth maps gave no point in range", int((n == 0).sum()), len(n))
        return {"points": pts, "n_points": n}

    def loss(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> np.ndarray:
        """No objective of its own: zero per sample."""
        return np.zeros(len(predictions["points"]))

    def score(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, float]:
        n = np.asarray(predictions["n_points"])
        return {"n_points": float(n.mean()) if len(n) else 0.0,
                "empty_clouds": float((n == 0).sum())}

    def state_dict(self) -> dict[str, Any]:
        return {"fitted_": np.array(True)}

    def load_state_dict(self, state: Mapping[str, Any]) -> "PseudoLidar":
        self.fitted_ = True
        return self
