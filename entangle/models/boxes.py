"""Box geometry for 3D detection: BEV corners, exact rotated IoU, 3D IoU and projection to 2D.

Boxes follow KITTI's rectified camera frame (x right, y down, z forward, metres). A 3D box is
the 7 numbers ``(x, y, z, h, w, l, ry)``: ``(x, y, z)`` is the *bottom* centre, ``h`` the height
along -y, ``w`` the width and ``l`` the length in the ground plane, ``ry`` the yaw about the y
axis (0 = length along +x). These are columns ``1:8`` of both label and detection rows
(:mod:`entangle.data.labels`), so ``rows[:, 1:8]`` is a box array.

The rotated bird's-eye-view (BEV, the x-z plane) overlap is computed exactly: the intersection of
two convex quadrilaterals is the convex polygon spanned by the corners of each inside the other
and the crossings of their edges; its area follows from sorting those points by angle about their
mean and applying the shoelace formula. Everything is vectorised over box pairs, without shapely.
"""

from __future__ import annotations

import numpy as np

#: numerical slack of the inside and edge-crossing tests, in metres.
_EPS = 1e-9
#: box pairs handled per vectorised chunk (bounds memory at ~24 points per pair).
_CHUNK = 65536


def as_boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
    """Check and return ``boxes`` as a float64 ``(N, 7)`` array of ``(x, y, z, h, w, l, ry)``."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 1 and b.size == 0:
        b = b.reshape(0, 7)
    if b.ndim != 2 or b.shape[1] != 7:
        raise ValueError(f"{name} must have shape (N, 7) = (x, y, z, h, w, l, ry), got {b.shape}")
    if not np.all(np.isfinite(b)):
        bad = np.argwhere(~np.isfinite(b))[0]
        raise ValueError(f"{name} row {bad[0]} column {bad[1]} is not finite ({b[bad[0], bad[1]]})")
    return b


def bev_corners(boxes: np.ndarray) -> np.ndarray:
    """BEV corners ``(N, 4, 2)`` as ``(x, z)``, counter-clockwise in the x-z plane.

    KITTI's object frame has the length along x and the width along z; a yaw ``ry`` maps an
    object-frame point ``(u, v)`` to ``(x + u cos ry + v sin ry, z - u sin ry + v cos ry)``.
    """
    b = as_boxes(boxes)
    x, z, w, l, ry = b[:, 0], b[:, 2], b[:, 4], b[:, 5], b[:, 6]
    u = np.array([0.5, 0.5, -0.5, -0.5])[None, :] * l[:, None]   # (N, 4) along the length
    v = np.array([0.5, -0.5, -0.5, 0.5])[None, :] * w[:, None]   # (N, 4) along the width
    c, s = np.cos(ry)[:, None], np.sin(ry)[:, None]
    cx = x[:, None] + u * c + v * s
    cz = z[:, None] - u * s + v * c
    corners = np.stack([cx, cz], axis=-1)                          # (N, 4, 2)
    return _counter_clockwise(corners)


def _counter_clockwise(poly: np.ndarray) -> np.ndarray:
    """Reverse the vertex order of polygons whose signed area is negative."""
    area = _shoelace(poly)
    flip = area < 0
    if np.any(flip):
        poly = poly.copy()
        poly[flip] = poly[flip, ::-1]
    return poly


def _shoelace(poly: np.ndarray) -> np.ndarray:
    """Signed area of closed polygons ``(..., K, 2)`` (positive when counter-clockwise)."""
    x, y = poly[..., 0], poly[..., 1]
    return 0.5 * np.sum(x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y, axis=-1)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Whether each of ``points (P, K, 2)`` lies in (or on) the CCW convex ``poly (P, 4, 2)``."""
    edge = np.roll(poly, -1, axis=1) - poly                       # (P, 4, 2)
    rel = points[:, :, None, :] - poly[:, None, :, :]             # (P, K, 4, 2)
    return np.all(_cross(edge[:, None, :, :], rel) >= -_EPS, axis=-1)   # (P, K)


def convex_intersection_area(poly_a: np.ndarray, poly_b: np.ndarray) -> np.ndarray:
    """Area of the intersection of paired counter-clockwise convex quadrilaterals ``(P, 4, 2)``.

    The intersection of two convex polygons is convex, and its vertices are among the corners of
    each polygon that lie inside the other and the crossings of their edges. Every such point lies
    on the intersection's boundary, so ordering them by angle about their mean gives the boundary
    in order (points on an edge or repeated points add no area).
    """
    a = np.asarray(poly_a, dtype=np.float64)
    b = np.asarray(poly_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1:] != (4, 2):
        raise ValueError(f"polygons must be paired (P, 4, 2) arrays, got {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        return np.zeros(0)
    out = np.empty(n)
    for start in range(0, n, _CHUNK):
        sl = slice(start, start + _CHUNK)
        out[sl] = _intersection_area_chunk(a[sl], b[sl])
    return out


def _intersection_area_chunk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    p = len(a)
    # corners of each polygon inside the other
    a_in_b = _inside(a, b)                                        # (P, 4)
    b_in_a = _inside(b, a)                                        # (P, 4)
    # crossings of edge i of a with edge j of b: a_i + t da_i = b_j + u db_j
    da = np.roll(a, -1, axis=1) - a                               # (P, 4, 2)
    db = np.roll(b, -1, axis=1) - b
    a0, dA = a[:, :, None, :], da[:, :, None, :]                  # (P, 4, 1, 2)
    b0, dB = b[:, None, :, :], db[:, None, :, :]                  # (P, 1, 4, 2)
    denom = _cross(dA, dB)                                        # (P, 4, 4)
    diff = b0 - a0                                                # (P, 4, 4, 2)
    ok = np.abs(denom) > 1e-12
    safe = np.where(ok, denom, 1.0)
    t = _cross(diff, dB) / safe
    u = _cross(diff, dA) / safe
    hit = ok & (t >= -_EPS) & (t <= 1 + _EPS) & (u >= -_EPS) & (u <= 1 + _EPS)
    cross_pts = (a0 + t[..., None] * dA).reshape(p, 16, 2)        # (P, 16, 2)
    pts = np.concatenate([a, b, cross_pts], axis=1)               # (P, 24, 2)
    valid = np.concatenate([a_in_b, b_in_a, hit.reshape(p, 16)], axis=1)   # (P, 24)
    count = valid.sum(axis=1)
    # order valid points by angle about their mean; invalid ones go last as copies of the first
    centre = (pts * valid[..., None]).sum(axis=1) / np.maximum(count, 1)[:, None]
    rel = pts - centre[:, None, :]
    angle = np.where(valid, np.arctan2(rel[..., 1], rel[..., 0]), np.inf)
    order = np.argsort(angle, axis=1, kind="stable")
    pts = np.take_along_axis(pts, order[..., None], axis=1)
    valid = np.take_along_axis(valid, order, axis=1)
    pts = np.where(valid[..., None], pts, pts[:, :1, :])
    area = np.abs(_shoelace(pts))
    return np.where(count >= 3, area, 0.0)


def _pair_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    ii, jj = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    return ii.ravel(), jj.ravel()


def bev_intersection(a: np.ndarray, b: np.ndarray, *, pairwise: bool = False) -> np.ndarray:
    """BEV intersection area of every box of ``a`` with every box of ``b`` (``(N, M)``).

    With ``pairwise=True``, ``a`` and ``b`` have the same length and row ``i`` is compared with
    row ``i`` only (``(N,)``).
    """
    a, b = as_boxes(a, "a"), as_boxes(b, "b")
    if pairwise:
        if len(a) != len(b):
            raise ValueError(f"pairwise needs equal lengths, got {len(a)} and {len(b)}")
        return convex_intersection_area(bev_corners(a), bev_corners(b))
    n, m = len(a), len(b)
    out = np.zeros((n, m))
    if n == 0 or m == 0:
        return out
    ii, jj = _pair_grid(n, m)
    # a cheap circumscribed-circle test skips pairs that cannot overlap
    ra = 0.5 * np.hypot(a[:, 4], a[:, 5])
    rb = 0.5 * np.hypot(b[:, 4], b[:, 5])
    d = np.hypot(a[ii, 0] - b[jj, 0], a[ii, 2] - b[jj, 2])
    near = d < ra[ii] + rb[jj]
    ca, cb = bev_corners(a), bev_corners(b)
    inter = convex_intersection_area(ca[ii[near]], cb[jj[near]])
    out[ii[near], jj[near]] = inter
    return out


def bev_iou(a: np.ndarray, b: np.ndarray, *, pairwise: bool = False) -> np.ndarray:
    """Rotated BEV IoU of boxes ``a`` and ``b`` (``(N, M)``, or ``(N,)`` with ``pairwise``)."""
    a, b = as_boxes(a, "a"), as_boxes(b, "b")
    inter = bev_intersection(a, b, pairwise=pairwise)
    area_a = a[:, 4] * a[:, 5]
    area_b = b[:, 4] * b[:, 5]
    union = (area_a + area_b - inter) if pairwise else (area_a[:, None] + area_b[None, :] - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def height_overlap(a: np.ndarray, b: np.ndarray, *, pairwise: bool = False) -> np.ndarray:
    """Overlap of the vertical extents ``[y - h, y]`` (y points down, ``y`` is the bottom)."""
    a, b = as_boxes(a, "a"), as_boxes(b, "b")
    if pairwise:
        top = np.maximum(a[:, 1] - a[:, 3], b[:, 1] - b[:, 3])
        bottom = np.minimum(a[:, 1], b[:, 1])
    else:
        top = np.maximum((a[:, 1] - a[:, 3])[:, None], (b[:, 1] - b[:, 3])[None, :])
        bottom = np.minimum(a[:, 1][:, None], b[:, 1][None, :])
    return np.maximum(bottom - top, 0.0)


def iou_3d(a: np.ndarray, b: np.ndarray, *, pairwise: bool = False) -> np.ndarray:
    """3D IoU: BEV intersection times height overlap over the union of volumes."""
    a, b = as_boxes(a, "a"), as_boxes(b, "b")
    inter = bev_intersection(a, b, pairwise=pairwise) * height_overlap(a, b, pairwise=pairwise)
    vol_a = a[:, 3] * a[:, 4] * a[:, 5]
    vol_b = b[:, 3] * b[:, 4] * b[:, 5]
    union = (vol_a + vol_b - inter) if pairwise else (vol_a[:, None] + vol_b[None, :] - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def corners_3d(boxes: np.ndarray) -> np.ndarray:
    """The 8 corners ``(N, 8, 3)`` of each box: the 4 bottom corners, then the 4 top ones."""
    b = as_boxes(boxes)
    bev = bev_corners(b)                                          # (N, 4, 2)
    y_bottom = np.repeat(b[:, 1:2], 4, axis=1)                    # (N, 4)
    y_top = y_bottom - b[:, 3:4]
    bottom = np.stack([bev[..., 0], y_bottom, bev[..., 1]], axis=-1)
    top = np.stack([bev[..., 0], y_top, bev[..., 1]], axis=-1)
    return np.concatenate([bottom, top], axis=1)


def project_points(points: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Project camera-frame points ``(..., 3)`` with a 3x4 matrix to pixels ``(..., 2)``."""
    pts = np.asarray(points, dtype=np.float64)
    P = np.asarray(P, dtype=np.float64).reshape(3, 4)
    hom = pts @ P[:, :3].T + P[:, 3]
    return hom[..., :2] / hom[..., 2:3]


def project_boxes(boxes: np.ndarray, P: np.ndarray, image_shape: tuple[int, int] | None = None,
                  min_depth: float = 0.1) -> np.ndarray:
    """2D boxes ``(N, 4)`` = ``(x1, y1, x2, y2)`` enclosing the projected 3D boxes.

    Corners closer than ``min_depth`` to the camera plane are moved onto it so boxes that cross
    the image plane still project to a finite box; with ``image_shape = (H, W)`` the result is
    clipped to the image, as in KITTI's labels.
    """
    c = corners_3d(boxes)                                         # (N, 8, 3)
    if len(c) == 0:
        return np.zeros((0, 4))
    c[..., 2] = np.maximum(c[..., 2], min_depth)
    uv = project_points(c, P)                                     # (N, 8, 2)
    out = np.concatenate([uv.min(axis=1), uv.max(axis=1)], axis=1)
    if image_shape is not None:
        h, w = image_shape
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w - 1)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h - 1)
    return out


def box2d_overlap(a: np.ndarray, b: np.ndarray, criterion: str = "iou") -> np.ndarray:
    """Overlap matrix ``(N, M)`` of 2D boxes ``(x1, y1, x2, y2)``.

    ``criterion`` is ``"iou"`` (intersection over union) or ``"a"`` (intersection over the area
    of the box of ``a``: the KITTI devkit's test of a detection against a DontCare region).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    if criterion == "iou":
        denom = area_a[:, None] + area_b[None, :] - inter
    elif criterion == "a":
        denom = np.broadcast_to(area_a[:, None], inter.shape)
    else:
        raise ValueError(f"criterion must be 'iou' or 'a', got {criterion!r}")
    return np.where(denom > 0, inter / np.where(denom > 0, denom, 1.0), 0.0)


def bev_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
            max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression in BEV: indices of kept boxes, best score first."""
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    if len(order) == 0:
        return order
    iou = bev_iou(b[order], b[order])
    keep: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        suppressed |= iou[i] > iou_threshold
    return order[np.array(keep, dtype=np.int64)]
