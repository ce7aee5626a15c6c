"""Property-based fuzzing of the KITTI label, calib and disparity parsers.

Any input either parses or raises :class:`KittiFormatError` naming the file (and line/field
where there is one) — never another exception, never a silent wrong value. Valid objects and
calibrations round-trip through the writers exactly (up to KITTI's printed precision).
Run ``pytest tests/test_fuzz_parsers.py --hypothesis-show-statistics`` for the counts.
"""

from __future__ import annotations

import re
import string
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from entangle.data.kitti import (CALIB_KEYS, Calib, KittiFormatError, Object3D, decode_disparity,
                                 encode_disparity, read_calib, read_disparity, read_label,
                                 write_calib, write_disparity)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKENS = st.one_of(
    st.sampled_from(["Car", "Pedestrian", "DontCare", "Van", "Cyclist", "car", "nan", "inf", "-inf",
                     "1e309", "0x1", "", "-", "1.5.2", "Person_sitting"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**6, 10**6).map(str),
    st.text(alphabet=string.printable.replace("\n", "").replace("\r", ""), max_size=8),
)


def _write(text: str, name: str) -> Path:
    folder = Path(tempfile.mkdtemp())
    path = folder / name
    path.write_text(text)
    return path


@FUZZ
@given(st.lists(st.lists(TOKENS, min_size=0, max_size=18).map(" ".join), min_size=0, max_size=6))
def test_label_parser_never_fails_unclearly(lines):
    path = _write("\n".join(lines), "000001.txt")
    try:
        objects = read_label(path)
    except KittiFormatError as err:
        assert re.match(rf"{re.escape(str(path))}:\d+: ", str(err)), str(err)  # file and line
        return
    for obj in objects:
        assert np.all(np.isfinite(obj.bbox)) and np.all(np.isfinite(obj.location))


finite = st.floats(-1000, 1000, allow_nan=False).map(lambda v: round(v, 2))


@st.composite
def objects(draw):
    kind = draw(st.sampled_from(["Car", "Pedestrian", "Van", "Cyclist", "Person_sitting"]))
    return Object3D(type=kind, truncated=draw(st.floats(0, 1).map(lambda v: round(v, 2))),
                    occluded=draw(st.integers(0, 3)), alpha=draw(finite),
                    bbox=[draw(finite) for _ in range(4)], dimensions=[draw(finite) for _ in range(3)],
                    location=[draw(finite) for _ in range(3)], rotation_y=draw(finite),
                    score=draw(st.one_of(st.none(), st.floats(0, 1).map(lambda v: round(v, 6)))))


@FUZZ
@given(objects())
def test_label_lines_round_trip(obj):
    assert Object3D.from_line(obj.to_line()) == obj


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(list(CALIB_KEYS) + ["P4", "R_rect", "Tr", "", "P2 "]),
                          st.lists(TOKENS, max_size=14)), max_size=9))
def test_calib_parser_never_fails_unclearly(entries):
    path = _write("\n".join(f"{k}: {' '.join(v)}" for k, v in entries), "calib.txt")
    try:
        calib = read_calib(path)
    except KittiFormatError as err:
        assert str(path) in str(err)
        return
    assert np.all(np.isfinite(calib.P2))


@FUZZ
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=12 * 4 + 9 + 12 * 2,
                max_size=12 * 4 + 9 + 12 * 2))
def test_calib_round_trip(values):
    vals = np.asarray(values)
    parts, i = {}, 0
    for key, shape in CALIB_KEYS.items():
        n = shape[0] * shape[1]
        parts[key] = vals[i:i + n].reshape(shape)
        i += n
    calib = Calib(**parts)
    path = Path(tempfile.mkdtemp()) / "c.txt"
    write_calib(path, calib)
    back = read_calib(path)
    for key in CALIB_KEYS:
        np.testing.assert_allclose(getattr(back, key), getattr(calib, key), rtol=1e-11, atol=1e-300)


@FUZZ
@given(arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12)),
              elements=st.floats(0, 255.5, width=32, allow_subnormal=False)))
def test_disparity_png_round_trip_within_quantisation(disp):
    path = Path(tempfile.mkdtemp()) / "d.png"
    write_disparity(path, disp)
    back = read_disparity(path)
    valid = disp > 0
    assert np.array_equal(back > 0, valid)  # validity is exact: no valid value becomes invalid
    # value/256 rounding; a tiny valid disparity is kept valid at the smallest code, 1/256
    expected = np.maximum(np.rint(disp[valid].astype(np.float64) * 256), 1) / 256
    np.testing.assert_allclose(back[valid], expected, atol=1e-6)


@FUZZ
@given(arrays(np.float64, st.integers(1, 20), elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_disparity_encoder_rejects_or_encodes(values):
    try:
        code = encode_disparity(values)
    except ValueError as err:
        assert "disparity" in str(err)
        return
    decoded = decode_disparity(code)
    ok = np.isfinite(values) & (values > 0)
    assert np.all(decoded[~ok] == 0) and np.all(decoded[ok] > 0)


@FUZZ
@given(st.binary(max_size=200))
def test_disparity_reader_rejects_garbage_files(blob):
    path = Path(tempfile.mkdtemp()) / "000001.png"
    path.write_bytes(blob)
    try:
        read_disparity(path)
    except KittiFormatError as err:
        assert str(path) in str(err)
