"""Box geometry: exact rotated BEV IoU, 3D IoU, projection, NMS."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entangle.models import boxes as bx

CAR = [0.0, 1.65, 10.0, 1.5, 1.6, 4.0, 0.0]   # x, y, z, h, w, l, ry


def _box(**change) -> np.ndarray:
    b = dict(zip(("x", "y", "z", "h", "w", "l", "ry"), CAR))
    b.update(change)
    return np.array([[b[k] for k in ("x", "y", "z", "h", "w", "l", "ry")]])


def _clip_polygon(subject: list, clip: list) -> list:
    """Sutherland-Hodgman clipping of a polygon by a convex CCW polygon, in plain Python."""
    def inside(p, a, b):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) >= 0

    def cross_point(p, q, a, b):
        x1, y1, x2, y2 = *p, *q
        x3, y3, x4, y4 = *a, *b
        den = (x1 - x2) * (y3 - y4) - (y1 - y2) * (x3 - x4)
        t = ((x1 - x3) * (y3 - y4) - (y1 - y3) * (x3 - x4)) / den
        return (x1 + t * (x2 - x1), y1 + t * (y2 - y1))

    out = subject
    for i in range(len(clip)):
        a, b = clip[i], clip[(i + 1) % len(clip)]
        inp, out = out, []
        for j in range(len(inp)):
            p, q = inp[j - 1], inp[j]
            if inside(q, a, b):
                if not inside(p, a, b):
                    out.append(cross_point(p, q, a, b))
                out.append(q)
            elif inside(p, a, b):
                out.append(cross_point(p, q, a, b))
        if not out:
            return []
    return out


def _area(poly: list) -> float:
    return 0.5 * abs(sum(poly[i - 1][0] * poly[i][1] - poly[i][0] * poly[i - 1][1] for i in range(len(poly))))


def test_identical_boxes_have_iou_one_and_yaw_by_pi_is_the_same_box():
    a = _box()
    assert bx.bev_iou(a, a)[0, 0] == pytest.approx(1.0)
    assert bx.iou_3d(a, a)[0, 0] == pytest.approx(1.0)
    assert bx.bev_iou(a, _box(ry=math.pi))[0, 0] == pytest.approx(1.0)


def test_hand_computed_overlaps():
    a = _box()
    # shifted 1 m along the length: intersection 3 x 1.6 over union 2 * 6.4 - 4.8
    assert bx.bev_iou(a, _box(x=1.0))[0, 0] == pytest.approx(4.8 / 8.0)
    # turned 90 degrees about the same centre: the 1.6 x 1.6 square in the middle
    assert bx.bev_iou(a, _box(ry=math.pi / 2))[0, 0] == pytest.approx(2.56 / (12.8 - 2.56))
    # turned 45 degrees: a hexagon/octagon -- check against the independent clipper below
    # no overlap at all
    assert bx.bev_iou(a, _box(z=20.0))[0, 0] == 0.0
    # 3D: same footprint, raised by half the height -> 0.5 overlap of the heights
    assert bx.iou_3d(a, _box(y=1.65 - 0.75))[0, 0] == pytest.approx(0.75 / 2.25)
    # BEV ignores height entirely
    assert bx.bev_iou(a, _box(y=-5.0))[0, 0] == pytest.approx(1.0)
    assert bx.iou_3d(a, _box(y=-5.0))[0, 0] == 0.0


def test_small_rotation_lowers_iou_monotonically():
    a = _box()
    ious = [bx.bev_iou(a, _box(ry=r))[0, 0] for r in np.linspace(0, math.pi / 2, 10)]
    assert all(x > y for x, y in zip(ious, ious[1:]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=2, max_size=2), st.floats(0.3, 5), st.floats(0.3, 5),
       st.floats(0.3, 5), st.floats(0.3, 5), st.floats(-4, 4), st.floats(-4, 4))
def test_rotated_intersection_matches_polygon_clipping(offset, w1, l1, w2, l2, r1, r2):
    a = np.array([[0.0, 0.0, 0.0, 1.0, w1, l1, r1]])
    b = np.array([[offset[0], 0.0, offset[1], 1.0, w2, l2, r2]])
    ca, cb = bx.bev_corners(a)[0], bx.bev_corners(b)[0]
    expected = _area(_clip_polygon([tuple(p) for p in ca], [tuple(p) for p in cb]))
    got = bx.bev_intersection(a, b)[0, 0]
    assert got == pytest.approx(expected, abs=1e-7)
    # symmetric, and the pairwise form agrees with the matrix form
    assert bx.bev_intersection(b, a)[0, 0] == pytest.approx(got, abs=1e-7)
    assert bx.bev_intersection(a, b, pairwise=True)[0] == pytest.approx(got, abs=1e-7)


def test_matrix_form_is_symmetric_with_unit_diagonal():
    rng = np.random.default_rng(0)
    n = 40
    b = np.column_stack([rng.uniform(-5, 5, n), np.zeros(n), rng.uniform(0, 10, n), np.ones(n),
                         rng.uniform(0.5, 2, n), rng.uniform(1, 4, n), rng.uniform(-3, 3, n)])
    m = bx.bev_iou(b, b)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    np.testing.assert_allclose(m, m.T, atol=1e-9)
    assert np.all((m >= 0) & (m <= 1 + 1e-9))


def test_corners_and_projection():
    b = _box(ry=0.3)
    c = bx.corners_3d(b)[0]
    assert c.shape == (8, 3)
    np.testing.assert_allclose(c[:4, 1], 1.65)            # bottom face on the ground
    np.testing.assert_allclose(c[4:, 1], 1.65 - 1.5)      # top face 1.5 m higher (y down)
    np.testing.assert_allclose(c[:, [0, 2]].mean(axis=0), [0.0, 10.0], atol=1e-12)
    P = np.array([[200.0, 0, 100, 0], [0, 200.0, 50, 0], [0, 0, 1, 0]])
    box2d = bx.project_boxes(b, P)[0]
    uv = bx.project_points(c, P)
    np.testing.assert_allclose(box2d, [uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
    # a point on the optical axis projects to the principal point
    np.testing.assert_allclose(bx.project_points(np.array([[0.0, 0.0, 7.0]]), P), [[100.0, 50.0]])
    clipped = bx.project_boxes(_box(z=3.0), P, image_shape=(100, 200))[0]
    assert clipped[0] >= 0 and clipped[2] <= 199 and clipped[3] <= 99


def test_2d_overlap_criteria():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10]])
    assert bx.box2d_overlap(a, b)[0, 0] == pytest.approx(50 / 150)
    assert bx.box2d_overlap(a, b, criterion="a")[0, 0] == pytest.approx(0.5)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.concatenate([_box(), _box(x=0.2), _box(z=20.0)])
    keep = bx.bev_nms(boxes, np.array([0.5, 0.9, 0.7]), iou_threshold=0.3)
    assert keep.tolist() == [1, 2]


def test_bad_boxes_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        bx.bev_iou(np.zeros((2, 6)), np.zeros((2, 7)))
    bad = _box()
    bad[0, 2] = np.nan
    with pytest.raises(ValueError, match="row 0 column 2"):
        bx.bev_iou(bad, _box())
