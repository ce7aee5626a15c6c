"""Tasks and attributes derived from the digits data, for multi-node digit pipelines.

``derived_labels`` turns the digit into the targets of downstream nodes (parity, ``>= 5``), so a
digit classifier can feed downstream classifiers as in the paper's SVHN toys; ``digit_attributes``
measures each image (ink, contrast, extent, slant, offset) so that stability and stress analyses
can say which kinds of digits are unstable, and carve shifted subpopulations out of a test split.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def derived_labels(y: np.ndarray) -> dict[str, np.ndarray]:
    """Downstream targets of a digit ``y``: ``parity`` (odd = 1) and ``large`` (``y >= 5``)."""
    y = np.asarray(y).astype(np.int64)
    return {"parity": y % 2, "large": (y >= 5).astype(np.int64)}


def digit_attributes(image: np.ndarray, y: np.ndarray | None = None, **_: Any) -> dict[str, np.ndarray]:
    """Per-image attributes of ``(N, H, W)`` grey digits in [0, 1].

    Returns ``digit`` (the label, when given), ``ink`` (mean intensity), ``contrast`` (intensity
    standard deviation), ``width``/``height`` (extent of pixels above 0.25, in pixels),
    ``slant`` (second-moment shear ``mu11 / mu02``) and ``offset`` (centroid distance from the
    image centre, in pixels). Extra keyword arguments (other source outputs) are ignored.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f"digit_attributes expects (N, H, W) images, got shape {img.shape}")
    n, h, w = img.shape
    on = img > 0.25
    cols, rows = on.any(axis=1), on.any(axis=2)           # (N, W), (N, H)

    def extent(mask: np.ndarray) -> np.ndarray:
        first = np.where(mask.any(axis=1), np.argmax(mask, axis=1), 0)
        last = np.where(mask.any(axis=1), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1), -1)
        return (last - first + 1).astype(np.float64)

    slant = np.zeros(n)
    offset = np.zeros(n)
    for i in range(n):
        m = cv2.moments(img[i])
        if m["m00"] > 0:
            slant[i] = m["mu11"] / m["mu02"] if m["mu02"] > 1e-9 else 0.0
            cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
            offset[i] = float(np.hypot(cx - (w - 1) / 2, cy - (h - 1) / 2))
    out = {
        "ink": img.reshape(n, -1).mean(axis=1).astype(np.float64),
        "contrast": img.reshape(n, -1).std(axis=1).astype(np.float64),
        "width": extent(cols),
        "height": extent(rows),
        "slant": slant,
        "offset": offset,
    }
    if y is not None:
        out = {"digit": np.asarray(y).astype(np.int64), **out}
    return out
