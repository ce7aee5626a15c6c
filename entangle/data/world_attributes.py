"""Attributes of world scenes for stability and stress analyses: per image, and per detector object.

A detector's per-sample losses are per ground-truth object of its class, in label-row order
(:func:`~entangle.data.labels.class_rows`), so its items get their own attribute block
(distance, occlusion, contrast, lighting, ...) under the detector node's name; per-image
attributes (brightness as a proxy for night, object counts) serve image-level nodes such as the
stereo network. See :func:`entangle.analysis.stability.node_attributes`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from entangle.data.labels import L, LABEL_COLUMNS, class_rows
from entangle.node import Ragged


def world_attributes(left: np.ndarray, labels: Ragged, object_attributes: Ragged | None = None, *,
                     nodes: Mapping[str, str] | None = None, **_: Any) -> dict[str, Any]:
    """Per-image attributes, and per-object ones for each detector node.

    Parameters
    ----------
    left : ``(N, H, W[, 3])`` left images (uint8 or floats in [0, 1]).
    labels : Ragged label rows (``entangle.data.labels.LABEL_COLUMNS``).
    object_attributes : Ragged rows aligned with ``labels``
        (``entangle.data.world_source.OBJECT_ATTRIBUTES``); NaN where unknown.
    nodes : detector node name -> class name (default ``{"car": "Car", "pedestrian": "Pedestrian"}``).

    Returns per image ``brightness`` (mean left-image intensity in [0, 1]: low is night-like),
    ``n_objects``, ``n_<class>``; and under each detector node its objects' attributes:
    the world's object attributes, ``occluded``, ``truncated``, ``difficulty`` and the
    ``brightness`` of the image the object is in.
    """
    from entangle.data.world_source import OBJECT_ATTRIBUTES

    img = np.asarray(left)
    scale = 255.0 if img.dtype == np.uint8 else 1.0
    n = len(img)
    brightness = img.reshape(n, -1).astype(np.float64).mean(axis=1) / scale
    rows = np.asarray(labels.values, dtype=np.float64).reshape(-1, len(LABEL_COLUMNS))
    image_of_row = np.repeat(np.arange(len(labels)), labels.lengths())
    out: dict[str, Any] = {"brightness": brightness, "n_objects": labels.lengths().astype(np.float64)}
    table = None
    if object_attributes is not None:
        table = np.asarray(object_attributes.values, dtype=np.float64).reshape(-1, len(OBJECT_ATTRIBUTES))
        if len(table) != len(rows):
            raise ValueError(f"object_attributes has {len(table)} rows for {len(rows)} label rows")
    for node, cls in (nodes or {"car": "Car", "pedestrian": "Pedestrian"}).items():
        idx = class_rows(labels, cls)
        out[f"n_{str(cls).lower()}"] = np.bincount(image_of_row[idx], minlength=n).astype(np.float64)
        block = {"occluded": rows[idx, L["occluded"]], "truncated": rows[idx, L["truncated"]],
                 "difficulty": rows[idx, L["difficulty"]], "depth_z": rows[idx, L["z"]],
                 "brightness": brightness[image_of_row[idx]]}
        if table is not None:
            block.update({name: table[idx, j] for j, name in enumerate(OBJECT_ATTRIBUTES)})
        out[node] = block
    return out
