"""KITTI object and stereo layouts: calibration, labels, disparity PNGs, a lazy reader and a writer.

The synthetic world is written in exactly this layout, so the same reader serves real KITTI
where a user has it. Conventions are KITTI's:

- ``calib/ID.txt``: ``P0:`` … ``P3:`` (3×4, P2 = left colour camera, P3 = right), ``R0_rect:``
  (3×3), ``Tr_velo_to_cam:`` and ``Tr_imu_to_velo:`` (3×4), row-major. Stereo 2015's
  ``calib_cam_to_cam/ID.txt`` (``P_rect_0k``, ``R_rect_00``) is read too.
- ``label_2/ID.txt``: 15 fields per object (16 with a detection ``score``); locations are the
  bottom centre of the box in the rectified reference-camera frame (x right, y down, z forward).
- Disparity PNGs (stereo 2015 encoding): uint16, disparity = value / 256, 0 = invalid.

Everything that reads a file raises :class:`KittiFormatError` naming file, line and field, so a
checker can report one problem per bad file and go on (see :mod:`entangle.data.checks`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from entangle.data.labels import CLASS_IDS, CLASS_NAMES, DONTCARE, LABEL_COLUMNS, L

log = logging.getLogger(__name__)

#: KITTI's calibration keys in the object layout, with their shapes.
CALIB_KEYS = {"P0": (3, 4), "P1": (3, 4), "P2": (3, 4), "P3": (3, 4), "R0_rect": (3, 3),
              "Tr_velo_to_cam": (3, 4), "Tr_imu_to_velo": (3, 4)}
#: other spellings of the same keys (the tracking benchmark writes these).
CALIB_ALIASES = {"R_rect": "R0_rect", "Tr_velo_cam": "Tr_velo_to_cam",
                 "Tr_imu_velo": "Tr_imu_to_velo"}
#: KITTI class names a label may hold (the label schema's classes).
KITTI_CLASSES = CLASS_NAMES
#: image height the KITTI difficulty thresholds are defined for.
KITTI_IMAGE_HEIGHT = 375
#: the devkit's limits per difficulty, easy/moderate/hard: (minimum 2D height in pixels at 375
#: rows, exceeded strictly; max occlusion level; max truncation). Each level's limits contain
#: the easier ones', so a level's evaluation counts the objects of that level and easier.
DIFFICULTY_RULES = ((40.0, 0, 0.15), (25.0, 1, 0.30), (25.0, 2, 0.50))
DIFFICULTY_NAMES = ("easy", "moderate", "hard")
#: disparity folders looked for, in order: the world's, then stereo 2015's (frame 10).
DISPARITY_DIRS = ("disp_occ_2", "disp_occ_0")
#: the world's disparity of pixels also visible in the right image (stereo 2015: disp_noc_0).
DISPARITY_NOC_DIRS = ("disp_noc_2", "disp_noc_0")
INSTANCE_DIR = "instance_2"
ATTRIBUTES_DIR = "attributes"
#: largest disparity a uint16 PNG can hold.
MAX_PNG_DISPARITY = 65535 / 256.0


class KittiFormatError(ValueError):
    """A KITTI file is missing or malformed; ``path``, ``line`` (1-based) and ``field`` say where."""

    def __init__(self, path: str | Path, message: str, line: int | None = None,
                 field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path + (f":{line}" if line is not None else "")
        what = f" field {field!r}" if field else ""
        super().__init__(f"{where}:{what} {message}")


def read_text(path: str | Path, what: str) -> str:
    """A KITTI text file as UTF-8; :class:`KittiFormatError` naming the file (and the line of the
    first bad byte) when it cannot be read or is not text."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise KittiFormatError(path, f"cannot read {what} ({err.strerror})") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise KittiFormatError(path, f"{what} is not UTF-8 text (byte 0x{data[err.start]:02x} at "
                                     f"offset {err.start})", line=line) from err


#: a frame id: a plain file stem (``000123``, ``000000_10``), never a path
_FRAME_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")


def check_frame_id(sid: str, path: str | Path, line: int) -> str:
    """``sid`` if it is a plain frame id; :class:`KittiFormatError` otherwise (ids that are paths,
    such as ``../../etc/passwd``, would read files outside the data folder)."""
    if not _FRAME_ID.match(sid):
        raise KittiFormatError(path, f"frame id {sid!r} is not a plain name (letters, digits, '_', "
                                     "'-'; no paths)", line=line)
    return sid


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------

def _matrix(value: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    a = np.array(value, dtype=np.float64)
    if a.size != shape[0] * shape[1]:
        raise ValueError(f"Calib.{name} needs {shape[0] * shape[1]} values, got {a.size}")
    a = a.reshape(shape)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Calib:
    """KITTI calibration of one frame: projection matrices of the four rectified cameras.

    Coordinates are the rectified reference-camera (camera 0) frame; ``P2``/``P3`` project them
    into the left/right colour images. ``f``, ``cx``, ``cy`` are camera 2's intrinsics and
    ``baseline`` the distance between cameras 2 and 3, so disparity ``d`` and depth ``Z``
    relate by ``Z = f * baseline / d``.
    """

    P0: np.ndarray
    P1: np.ndarray
    P2: np.ndarray
    P3: np.ndarray
    R0_rect: np.ndarray
    Tr_velo_to_cam: np.ndarray
    Tr_imu_to_velo: np.ndarray

    def __post_init__(self) -> None:
        for name, shape in CALIB_KEYS.items():
            object.__setattr__(self, name, _matrix(getattr(self, name), shape, name))

    @property
    def f(self) -> float:
        return float(self.P2[0, 0])

    @property
    def cx(self) -> float:
        return float(self.P2[0, 2])

    @property
    def cy(self) -> float:
        return float(self.P2[1, 2])

    @property
    def baseline(self) -> float:
        return float((self.P2[0, 3] - self.P3[0, 3]) / self.P2[0, 0])

    @property
    def fb(self) -> float:
        """``f * baseline`` (px·m): depth = fb / disparity."""
        return self.f * self.baseline

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Calib):
            return NotImplemented
        return all(np.array_equal(getattr(self, k), getattr(other, k)) for k in CALIB_KEYS)

    __hash__ = None  # type: ignore[assignment]

    def project(self, points: np.ndarray, camera: int = 2) -> np.ndarray:
        """Project (N,3) rectified points into image ``camera`` (2 or 3): (N,2) pixels."""
        P = self.P2 if camera == 2 else self.P3 if camera == 3 else None
        if P is None:
            raise ValueError(f"camera must be 2 or 3, got {camera}")
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        h = pts @ P[:, :3].T + P[:, 3]  # (N, 3)
        return h[:, :2] / h[:, 2:3]

    def image_to_rect(self, u: np.ndarray, v: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Back-project left-image pixels with camera-2 depth into rectified points (..., 3).

        Exact inverse of :meth:`project` for camera 2: ``P2 @ [X, 1] = depth * [u, v, 1]``
        (KITTI's P2 has a small z offset ``P2[2, 3]``, so depth = Z + P2[2, 3]).
        """
        u, v, depth = np.broadcast_arrays(np.asarray(u, np.float64), np.asarray(v, np.float64),
                                          np.asarray(depth, np.float64))
        K, t = self.P2[:, :3], self.P2[:, 3]
        rhs = np.stack([depth * u, depth * v, depth], axis=-1) - t  # (..., 3)
        return np.linalg.solve(K, rhs.reshape(-1, 3).T).T.reshape(rhs.shape)

    def to_lines(self) -> list[str]:
        """The calib file's lines, KITTI's ``%.12e`` formatting."""
        return [f"{k}: " + " ".join(f"{x:.12e}" for x in getattr(self, k).ravel())
                for k in CALIB_KEYS]


def _parse_key_values(path: Path) -> dict[str, tuple[int, list[str]]]:
    """``key: v v v`` lines -> {key: (line number, tokens)}; blank lines are skipped."""
    out: dict[str, tuple[int, list[str]]] = {}
    text = read_text(path, "calib file")
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if ":" not in raw:
            raise KittiFormatError(path, "calib line has no 'key:'", line=lineno)
        key, _, rest = raw.partition(":")
        out[key.strip()] = (lineno, rest.split())
    return out


def _floats(path: Path, key: str, lineno: int, tokens: list[str], count: int) -> list[float]:
    if len(tokens) != count:
        raise KittiFormatError(path, f"expected {count} numbers, got {len(tokens)}",
                               line=lineno, field=key)
    try:
        return [float(t) for t in tokens]
    except ValueError as err:
        raise KittiFormatError(path, f"non-numeric value ({err})", line=lineno, field=key) from err


def read_calib(path: str | Path) -> Calib:
    """Read a KITTI calib file: the object layout, or stereo 2015's ``calib_cam_to_cam``.

    For ``calib_cam_to_cam`` files the velodyne and IMU transforms come from the sibling
    ``calib_velo_to_cam``/``calib_imu_to_velo`` folders when present, else they are NaN.
    """
    path = Path(path)
    entries = _parse_key_values(path)
    entries = {CALIB_ALIASES.get(k, k): v for k, v in entries.items()}
    if "P_rect_02" in entries and "P2" not in entries:
        return _read_cam_to_cam(path, entries)
    values = {}
    for key, shape in CALIB_KEYS.items():
        if key not in entries:
            raise KittiFormatError(path, f"missing calib key {key!r}", field=key)
        lineno, tokens = entries[key]
        values[key] = _floats(path, key, lineno, tokens, shape[0] * shape[1])
    return Calib(**values)


def _read_rt(path: Path) -> np.ndarray:
    """A raw-data ``R:``/``T:`` file as a 3×4 matrix."""
    entries = _parse_key_values(path)
    for key in ("R", "T"):
        if key not in entries:
            raise KittiFormatError(path, f"missing calib key {key!r}", field=key)
    R = _floats(path, "R", *entries["R"], 9)
    T = _floats(path, "T", *entries["T"], 3)
    return np.concatenate([np.reshape(R, (3, 3)), np.reshape(T, (3, 1))], axis=1)


def _read_cam_to_cam(path: Path, entries: dict) -> Calib:
    values = {}
    for k in range(4):
        key = f"P_rect_0{k}"
        if key not in entries:
            raise KittiFormatError(path, f"missing calib key {key!r}", field=key)
        values[f"P{k}"] = _floats(path, key, *entries[key], 12)
    if "R_rect_00" not in entries:
        raise KittiFormatError(path, "missing calib key 'R_rect_00'", field="R_rect_00")
    values["R0_rect"] = _floats(path, "R_rect_00", *entries["R_rect_00"], 9)
    nan = np.full((3, 4), np.nan)
    for key, folder in (("Tr_velo_to_cam", "calib_velo_to_cam"),
                        ("Tr_imu_to_velo", "calib_imu_to_velo")):
        sibling = path.parent.parent / folder / path.name
        values[key] = _read_rt(sibling) if sibling.exists() else nan
    return Calib(**values)


def write_calib(path: str | Path, calib: Calib) -> None:
    """Write ``calib`` in the object layout (``%.12e``, as KITTI does)."""
    Path(path).write_text("\n".join(calib.to_lines()) + "\n")


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------

LABEL_FIELDS = ("type", "truncated", "occluded", "alpha", "left", "top", "right", "bottom",
                "h", "w", "l", "x", "y", "z", "rotation_y", "score")


@dataclass(eq=False)
class Object3D:
    """One KITTI label line: class, truncation, occlusion, 2D box and 3D box (camera frame).

    ``bbox`` is (left, top, right, bottom) in left-image pixels, ``dimensions`` (h, w, l) in
    metres, ``location`` the bottom centre (x, y, z) in the rectified reference frame,
    ``rotation_y`` the yaw about the camera y axis (0: the length axis points along +x).
    """

    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: np.ndarray
    dimensions: np.ndarray
    location: np.ndarray
    rotation_y: float
    score: float | None = None

    def __post_init__(self) -> None:
        self.bbox = np.asarray(self.bbox, dtype=np.float64).reshape(4)
        self.dimensions = np.asarray(self.dimensions, dtype=np.float64).reshape(3)
        self.location = np.asarray(self.location, dtype=np.float64).reshape(3)
        self.truncated = float(self.truncated)
        self.occluded = int(self.occluded)
        self.alpha = float(self.alpha)
        self.rotation_y = float(self.rotation_y)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Object3D):
            return NotImplemented
        return (self.type == other.type and self.truncated == other.truncated
                and self.occluded == other.occluded and self.alpha == other.alpha
                and np.array_equal(self.bbox, other.bbox)
                and np.array_equal(self.dimensions, other.dimensions)
                and np.array_equal(self.location, other.location)
                and self.rotation_y == other.rotation_y and self.score == other.score)

    __hash__ = None  # type: ignore[assignment]

    @property
    def height_px(self) -> float:
        """Height of the 2D box in pixels (what KITTI's difficulty rules read)."""
        return float(self.bbox[3] - self.bbox[1])

    def corners(self) -> np.ndarray:
        """The 8 corners of the 3D box, (8, 3), KITTI's order (bottom face first)."""
        h, w, l = self.dimensions
        x = np.array([l, l, -l, -l, l, l, -l, -l]) / 2
        y = np.array([0, 0, 0, 0, -h, -h, -h, -h], dtype=np.float64)
        z = np.array([w, -w, -w, w, w, -w, -w, w]) / 2
        c, s = math.cos(self.rotation_y), math.sin(self.rotation_y)
        R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        return (R @ np.stack([x, y, z])).T + self.location

    def to_line(self) -> str:
        """The label line, KITTI's formatting (``%.2f``; score ``%.6f``; DontCare's -1/-10/-1000)."""
        b, d, loc = self.bbox, self.dimensions, self.location
        if self.type == "DontCare":  # KITTI writes the placeholder fields as integers
            return (f"DontCare -1 -1 -10 {b[0]:.2f} {b[1]:.2f} {b[2]:.2f} {b[3]:.2f} "
                    "-1 -1 -1 -1000 -1000 -1000 -10")
        line = (f"{self.type} {self.truncated:.2f} {self.occluded:d} {self.alpha:.2f} "
                f"{b[0]:.2f} {b[1]:.2f} {b[2]:.2f} {b[3]:.2f} {d[0]:.2f} {d[1]:.2f} {d[2]:.2f} "
                f"{loc[0]:.2f} {loc[1]:.2f} {loc[2]:.2f} {self.rotation_y:.2f}")
        if self.score is not None:
            line += f" {self.score:.6f}"
        return line

    @classmethod
    def from_line(cls, line: str, path: str | Path = "<string>", lineno: int | None = None
                  ) -> "Object3D":
        """Parse one label line; errors name the file, line and field."""
        tokens = line.split()
        if len(tokens) not in (15, 16):
            raise KittiFormatError(path, f"expected 15 or 16 fields, got {len(tokens)}",
                                   line=lineno)
        kind = tokens[0]
        if kind not in KITTI_CLASSES:
            raise KittiFormatError(path, f"unknown class {kind!r}", line=lineno, field="type")
        values = []
        for name, tok in zip(LABEL_FIELDS[1:], tokens[1:]):
            try:
                v = float(tok)
            except ValueError:
                raise KittiFormatError(path, f"non-numeric value {tok!r}", line=lineno,
                                       field=name) from None
            if not math.isfinite(v):
                raise KittiFormatError(path, f"non-finite value {tok!r}", line=lineno, field=name)
            values.append(v)
        occluded = values[1]
        if occluded != int(occluded):
            raise KittiFormatError(path, f"occluded must be an integer, got {tokens[2]!r}",
                                   line=lineno, field="occluded")
        return cls(type=kind, truncated=values[0], occluded=int(occluded), alpha=values[2],
                   bbox=values[3:7], dimensions=values[7:10], location=values[10:13],
                   rotation_y=values[13], score=values[14] if len(values) == 15 else None)


def read_label(path: str | Path) -> list[Object3D]:
    """Read a ``label_2`` file (blank lines skipped); raises :class:`KittiFormatError`."""
    path = Path(path)
    text = read_text(path, "label file")
    return [Object3D.from_line(line, path, i) for i, line in enumerate(text.splitlines(), 1)
            if line.strip()]


def write_label(path: str | Path, objects: Sequence[Object3D]) -> None:
    """Write a ``label_2`` file, one line per object."""
    Path(path).write_text("".join(o.to_line() + "\n" for o in objects))


def min_heights(image_height: float) -> np.ndarray:
    """The minimum 2D box heights (easy, moderate, hard) scaled to ``image_height`` rows."""
    if image_height <= 0:
        raise ValueError(f"image_height must be positive, got {image_height}")
    return np.asarray([r[0] for r in DIFFICULTY_RULES]) * (float(image_height) / KITTI_IMAGE_HEIGHT)


def _difficulty_levels(height_px: Any, occluded: Any, truncated: Any, image_height: float) -> np.ndarray:
    """The rule itself, on arrays: the easiest level whose limits an object passes, else -1."""
    h, occ, trunc = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (height_px, occluded, truncated))
    out = np.full(np.broadcast(h, occ, trunc).shape, -1, dtype=np.int64)
    mh = min_heights(image_height)
    for level in reversed(range(len(DIFFICULTY_RULES))):
        _, max_occ, max_trunc = DIFFICULTY_RULES[level]
        # label rows are float32: a truncation of 0.3 stored so must still pass the 0.3 limit,
        # as it does for the devkit reading the text, hence the limit at float32 precision
        out[(h > mh[level]) & (occ <= max_occ) & (trunc <= float(np.float32(max_trunc)))] = level
    return out


def difficulty_of(labels: np.ndarray, image_height: float) -> np.ndarray:
    """KITTI difficulty of label rows (:data:`~entangle.data.labels.LABEL_COLUMNS`), as
    :func:`difficulty` gives it per object: 0 easy, 1 moderate, 2 hard, -1 none or DontCare."""
    lab = np.asarray(labels, dtype=np.float64).reshape(-1, len(LABEL_COLUMNS))
    out = _difficulty_levels(lab[:, L["y2"]] - lab[:, L["y1"]], lab[:, L["occluded"]],
                             lab[:, L["truncated"]], image_height)
    out[lab[:, L["cls"]] == DONTCARE] = -1
    return out


def difficulty(obj: Object3D, image_height: float = KITTI_IMAGE_HEIGHT) -> int:
    """KITTI difficulty: 0 easy, 1 moderate, 2 hard, -1 none (heights scaled to the image).

    An object is of the easiest difficulty whose limits (:data:`DIFFICULTY_RULES`) it passes;
    as in the devkit, its 2D box must be strictly higher than the scaled minimum.

    >>> o = Object3D("Car", 0.0, 0, 0.0, [0, 0, 10, 60], [1.5, 1.6, 3.9], [0, 1.65, 10], 0.0)
    >>> difficulty(o), difficulty(o, image_height=750), difficulty(o, image_height=1000)
    (0, 1, -1)
    """
    if obj.type == "DontCare":
        return -1
    return int(_difficulty_levels(obj.height_px, obj.occluded, obj.truncated, image_height)[0])


def label_rows(objects: Sequence[Object3D], image_height: float) -> np.ndarray:
    """Label rows ``(n, len(LABEL_COLUMNS))`` float32 of KITTI objects, difficulty scaled to the image."""
    rows = np.zeros((len(objects), len(LABEL_COLUMNS)), dtype=np.float64)
    for i, o in enumerate(objects):
        if o.type not in CLASS_IDS:
            raise ValueError(f"object {i} has class {o.type!r}, not one of {sorted(CLASS_IDS)}")
        rows[i, L["cls"]] = CLASS_IDS[o.type]
        rows[i, L["x"]:L["z"] + 1] = o.location
        rows[i, L["h"]:L["l"] + 1] = o.dimensions
        rows[i, L["ry"]] = o.rotation_y
        rows[i, L["x1"]:L["y2"] + 1] = o.bbox
        rows[i, L["truncated"]] = o.truncated
        rows[i, L["occluded"]] = o.occluded
    rows[:, L["difficulty"]] = difficulty_of(rows, image_height)
    return rows.astype(np.float32)


# --------------------------------------------------------------------------------------------
# disparity and images
# --------------------------------------------------------------------------------------------

def encode_disparity(disp: np.ndarray) -> np.ndarray:
    """Float disparity (0 or NaN = invalid) -> KITTI's uint16 code (value = round(256 d))."""
    d = np.asarray(disp, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    if np.any(d[np.isfinite(d)] < 0):
        raise ValueError("disparity must be >= 0 (0 or NaN marks invalid pixels)")
    if np.any(d[valid] > MAX_PNG_DISPARITY):
        raise ValueError(f"disparity {d[valid].max():.2f} exceeds the PNG range "
                         f"({MAX_PNG_DISPARITY:.2f})")
    code = np.zeros(d.shape, dtype=np.uint16)
    # a tiny valid disparity must not round to the invalid code 0
    code[valid] = np.clip(np.rint(d[valid] * 256.0), 1, 65535).astype(np.uint16)
    return code


def decode_disparity(code: np.ndarray) -> np.ndarray:
    """KITTI's uint16 code -> float32 disparity, 0 = invalid."""
    return (np.asarray(code, dtype=np.float32) / np.float32(256.0)).astype(np.float32)


def quantize_disparity(disp: np.ndarray) -> np.ndarray:
    """The disparity a PNG round trip gives (float32, 0 = invalid)."""
    return decode_disparity(encode_disparity(disp))


def write_disparity(path: str | Path, disp: np.ndarray) -> None:
    """Write a disparity map as a KITTI uint16 PNG (0 or NaN = invalid)."""
    if not cv2.imwrite(str(path), encode_disparity(disp)):
        raise OSError(f"could not write {path}")


def read_disparity(path: str | Path) -> np.ndarray:
    """Read a KITTI disparity PNG as float32 (H, W), 0 = invalid."""
    code = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if code is None:
        raise KittiFormatError(path, "missing or unreadable disparity PNG")
    if code.dtype != np.uint16 or code.ndim != 2:
        raise KittiFormatError(path, f"disparity PNG must be single-channel uint16, "
                                     f"got {code.dtype} with shape {code.shape}")
    return decode_disparity(code)


def disparity_to_depth(disp: np.ndarray, fb: float) -> np.ndarray:
    """Depth ``fb / d`` (float32), 0 where the disparity is invalid (0 or NaN)."""
    d = np.asarray(disp, dtype=np.float32)
    valid = np.isfinite(d) & (d > 0)
    depth = np.zeros(d.shape, dtype=np.float32)
    depth[valid] = np.float32(fb) / d[valid]
    return depth


def read_image(path: str | Path) -> np.ndarray:
    """Read a PNG as (H, W, 3) uint8 RGB (grayscale images are repeated on 3 channels)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise KittiFormatError(path, "missing or unreadable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image as PNG."""
    if not cv2.imwrite(str(path), cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


# --------------------------------------------------------------------------------------------
# samples, the reader and the writer
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Sample:
    """One stereo frame with its ground truth (the reader's item and the renderer's output).

    ``disparity`` is float32 with 0 = invalid (None when the layout has none); ``depth`` is
    ``f·B/disparity`` with 0 where invalid. ``disparity_noc`` keeps only pixels also visible in
    the right image; ``instances`` maps each pixel to its label line + 1 (0 = none); both are
    written by the synthetic world and None for real KITTI. ``attributes`` is the side file.
    """

    id: str
    left: np.ndarray
    right: np.ndarray
    calib: Calib
    objects: list[Object3D]
    disparity: np.ndarray | None = None
    depth: np.ndarray | None = None
    attributes: dict | None = None
    disparity_noc: np.ndarray | None = None
    instances: np.ndarray | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented

        def same(a, b):
            if a is None or b is None:
                return a is None and b is None
            return np.array_equal(a, b)

        return (self.id == other.id and same(self.left, other.left)
                and same(self.right, other.right) and self.calib == other.calib
                and self.objects == other.objects and same(self.disparity, other.disparity)
                and same(self.depth, other.depth) and self.attributes == other.attributes
                and same(self.disparity_noc, other.disparity_noc)
                and same(self.instances, other.instances))

    __hash__ = None  # type: ignore[assignment]


def write_sample(folder: str | Path, sample: Sample, *, disparity_dir: str = DISPARITY_DIRS[0]
                 ) -> None:
    """Write one sample into a KITTI image folder (``training/``), creating sub-folders.

    Writes image_2/3 (PNG), calib, label_2, and, when present, disparity (``disparity_dir``),
    ``disp_noc_2``, ``instance_2`` (uint16 PNG, label line + 1) and ``attributes/ID.json``.
    """
    folder = Path(folder)
    sid = sample.id

    def target(sub: str, ext: str) -> Path:
        d = folder / sub
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{sid}{ext}"

    write_image(target("image_2", ".png"), sample.left)
    write_image(target("image_3", ".png"), sample.right)
    write_calib(target("calib", ".txt"), sample.calib)
    write_label(target("label_2", ".txt"), sample.objects)
    if sample.disparity is not None:
        write_disparity(target(disparity_dir, ".png"), sample.disparity)
    if sample.disparity_noc is not None:
        write_disparity(target(DISPARITY_NOC_DIRS[0], ".png"), sample.disparity_noc)
    if sample.instances is not None:
        if not cv2.imwrite(str(target(INSTANCE_DIR, ".png")),
                           np.asarray(sample.instances).astype(np.uint16)):
            raise OSError(f"could not write instance map of {sid}")
    if sample.attributes is not None:
        target(ATTRIBUTES_DIR, ".json").write_text(
            json.dumps(sample.attributes, sort_keys=True, indent=1) + "\n")


def image_folder(root: Path) -> Path:
    """The folder holding image_2/: ``root/training`` (KITTI) or ``root`` itself."""
    if (root / "training" / "image_2").is_dir():
        return root / "training"
    if (root / "image_2").is_dir():
        return root
    raise FileNotFoundError(f"{root} holds neither training/image_2/ nor image_2/: "
                            "not a KITTI object or stereo layout")


def split_ids(root: str | Path, split: str = "train") -> list[str]:
    """Frame ids of a split: ``ImageSets/SPLIT.txt``, or every left image when split='all'."""
    root = Path(root)
    if split == "all":
        return sorted(p.stem for p in (image_folder(root) / "image_2").glob("*.png"))
    for base in (root, image_folder(root).parent):
        lst = base / "ImageSets" / f"{split}.txt"
        if lst.exists():
            lines = read_text(lst, "split list").splitlines()
            return [check_frame_id(ln.strip(), lst, i) for i, ln in enumerate(lines, 1) if ln.strip()]
    raise FileNotFoundError(f"{root}/ImageSets/{split}.txt does not exist; use split='all' to "
                            "read every image, or pass ids=[...]")


def __getattr__(name: str) -> Any:
    # KittiDataset lives in kitti_dataset.py because it subclasses torch's Dataset and torch
    # takes seconds to import: rendering workers and the checker only need the file I/O here.
    if name == "KittiDataset":
        from entangle.data.kitti_dataset import KittiDataset
        return KittiDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
