"""Street digits: a synthetic stand-in for SVHN's cropped house-number digits, with exact latents.

SVHN cannot be downloaded here, and no real data set says *why* a digit is hard. This world
renders SVHN-like colour crops (a centred digit, neighbouring digits cut at the edges, painted
walls, plates and bricks, blur, sensor noise, JPEG) from a frozen :class:`StreetDigitsConfig`,
and returns every nuisance factor of every image, so failure analyses can be graded on them.

Image ``i`` of a stream depends only on ``(seed, i)``: any slice renders on its own, in any
number of processes, and the stream never ends. :func:`render` is the function API;
:class:`StreetDigitsSource` is the data source of a system (and reads a local SVHN folder
instead when given one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np

from entangle.node import Source

log = logging.getLogger(__name__)

#: bump when a change alters the pixels or latents of an existing (config, seed, index).
VERSION = "2"

#: typefaces, indexed by the ``font`` latent. "sans" and "uni" are OpenCV's: its font engine's
#: two built-in faces on OpenCV 5, the Hershey duplex and triplex faces on OpenCV 4 (see
#: _draw_text); "stroke" is drawn here with polylines, in the manner of Hershey's simplex.
FONTS = ("sans", "uni", "stroke")
#: background kinds, indexed by the ``background`` latent.
BACKGROUNDS = ("flat", "gradient", "texture", "bricks", "plate")

#: the per-image latents, in the column order of the source's ``attributes`` table.
ATTRIBUTE_NAMES = (
    "digit", "font", "italic", "stroke", "scale", "aspect", "rotation", "shear", "shift_x",
    "shift_y", "distractor_left", "distractor_right", "left_digit", "right_digit", "gap",
    "left_visible", "right_visible",
    "contrast", "polarity", "fg_r", "fg_g", "fg_b", "bg_r", "bg_g", "bg_b", "background",
    "texture", "blur", "resolution", "noise", "jpeg_quality",
)
_INT_LATENTS = frozenset({"digit", "font", "italic", "distractor_left", "distractor_right",
                          "left_digit", "right_digit", "polarity", "background", "jpeg_quality"})

# Rec. 601 luma weights: the "luminance" of contrast, and the grey of the `x` output.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Glyphs are drawn once at this ink height (px) and cached; every image warps them from there.
_GLYPH_HEIGHT = 48
# The stroke latent is quantised to 1/_WEIGHT_STEPS so that the glyph cache stays small.
_WEIGHT_STEPS = 16
# SeedSequence keys [seed, i, tag]: one stream for an image's nuisances, one for digit blocks.
_IMAGE_STREAM, _DIGIT_STREAM = 0, 1


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreetDigitsConfig:
    """The distribution of every nuisance factor; defaults chosen to look like SVHN's crops.

    Ranges are ``(low, high)`` and drawn uniformly; probabilities are per image. Lengths are
    relative (to the image size or the digit's height) so a config means the same at any size.
    """

    size: int = 32                                   # output height and width, px
    supersample: int = 2                             # warp at size·supersample, then average
    digits: tuple[int, ...] = tuple(range(10))       # the classes drawn (balanced, see render)
    class_weights: tuple[float, ...] | None = None   # per entry of `digits`: i.i.d. draws instead
    fonts: tuple[str, ...] = FONTS                   # typefaces drawn from (names in FONTS)
    italic_prob: float = 0.25
    stroke: tuple[float, float] = (0.125, 0.875)     # weight: 0 thin ... 1 black; 1/16 steps
    scale: tuple[float, float] = (0.6, 0.9)          # digit ink height / image height
    aspect: tuple[float, float] = (0.8, 1.25)        # horizontal stretch of the glyphs
    rotation: tuple[float, float] = (-12.0, 12.0)    # degrees, counter-clockwise
    shear: tuple[float, float] = (-0.2, 0.2)         # x shear; positive leans right
    shift: tuple[float, float] = (-0.08, 0.08)       # centre offset / size, in x and in y
    distractor_prob: float = 0.65                    # a neighbouring digit, per side
    gap: tuple[float, float] = (0.08, 0.4)           # ink gap between digits / digit height
    contrast: tuple[float, float] = (0.12, 0.7)      # luma of lighter minus darker colour
    light_on_dark_prob: float = 0.45                 # polarity: light digit on a dark ground
    saturation: tuple[float, float] = (0.0, 0.3)     # chroma per colour; low + (high-low)·u²
    background_weights: tuple[float, ...] = (0.2, 0.25, 0.25, 0.1, 0.2)  # per BACKGROUNDS
    texture: tuple[float, float] = (0.03, 0.15)      # amplitude of the background pattern
    blur: tuple[float, float] = (0.2, 1.4)           # Gaussian sigma, output px
    resolution: tuple[float, float] = (0.5, 1.0)     # the photo's crop size / output size
    noise: tuple[float, float] = (0.0, 0.05)         # sensor noise sigma, [0, 1] units
    jpeg_quality: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type.startswith("tuple[float, float]") or f.type.startswith("tuple[int, int]"):
                if len(v) != 2 or v[0] > v[1]:
                    problems.append(f"{f.name} must be [low, high] with low <= high, got {list(v)}")
        if self.size < 8 or self.supersample < 1 or self.supersample > 4:
            problems.append(f"size must be >= 8 and supersample in 1..4, "
                            f"got {self.size} and {self.supersample}")
        if not self.digits or len(set(self.digits)) != len(self.digits) or \
                not all(0 <= d <= 9 for d in self.digits):
            problems.append(f"digits must be distinct values in 0..9, got {list(self.digits)}")
        if self.class_weights is not None and (len(self.class_weights) != len(self.digits)
                                               or min(self.class_weights) < 0
                                               or sum(self.class_weights) <= 0):
            problems.append(f"class_weights needs one non-negative weight per digit "
                            f"({len(self.digits)}), not all zero, got {list(self.class_weights)}")
        unknown_fonts = sorted(set(self.fonts) - set(FONTS))
        if not self.fonts or unknown_fonts:
            problems.append(f"fonts must be a non-empty subset of {list(FONTS)}, "
                            f"got {list(self.fonts)}")
        if len(self.background_weights) != len(BACKGROUNDS) or min(self.background_weights) < 0 \
                or sum(self.background_weights) <= 0:
            problems.append(f"background_weights needs {len(BACKGROUNDS)} non-negative weights "
                            f"({', '.join(BACKGROUNDS)}), got {list(self.background_weights)}")
        for name in ("italic_prob", "distractor_prob", "light_on_dark_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        # gap >= 0 keeps glyph boxes apart (they are copied, not blended, onto the canvas)
        for name, lo, hi in (("stroke", 0, 1), ("scale", 0.05, 2), ("aspect", 0.2, 5),
                             ("contrast", 0, 1), ("saturation", 0, 1), ("texture", 0, 1),
                             ("blur", 0, 10), ("resolution", 0.05, 1), ("noise", 0, 1),
                             ("jpeg_quality", 1, 100), ("gap", 0, 5)):
            v = getattr(self, name)
            if v[0] < lo or v[1] > hi:
                problems.append(f"{name} must lie within [{lo}, {hi}], got {list(v)}")
        if problems:
            raise ValueError("invalid StreetDigitsConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "StreetDigitsConfig":
        """Build from a plain or Hydra mapping; an unknown key raises naming it."""
        if data is not None and not isinstance(data, Mapping):
            from omegaconf import OmegaConf
            data = OmegaConf.to_container(data, resolve=True)
        data = dict(data or {})
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"StreetDigitsConfig: unknown key(s) {unknown}; valid keys: {names}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            try:
                if value is None:
                    if "None" not in f.type:
                        raise TypeError("None is not allowed here")
                    kwargs[f.name] = None
                elif f.type in ("int", "float"):
                    kwargs[f.name] = (int if f.type == "int" else float)(value)
                elif "str" in f.type:
                    kwargs[f.name] = tuple(str(v) for v in value)
                elif f.type.startswith("tuple[int"):
                    kwargs[f.name] = tuple(int(v) for v in value)
                else:
                    kwargs[f.name] = tuple(float(v) for v in value)
            except (TypeError, ValueError) as err:
                raise ValueError(f"StreetDigitsConfig.{f.name}: cannot read {value!r}: {err}") \
                    from err
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples as lists); ``from_dict(to_dict())`` is the same config."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self)}


# --------------------------------------------------------------------------------------------
# glyphs: each (font, italic, weight, digit) is drawn once per process at _GLYPH_HEIGHT
# --------------------------------------------------------------------------------------------

def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> list:
    """``n`` points of an elliptic arc from angle ``a0`` to ``a1`` (degrees, y down)."""
    angles = (math.radians(a0 + (a1 - a0) * k / (n - 1)) for k in range(n))
    return [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in angles]


def _stroke_font() -> dict[int, list[list[tuple[float, float]]]]:
    """Polyline skeletons of the ten digits in a box 0.6 wide, y = 0 (top) to 1 (baseline)."""
    six = [_arc(0.34, 0.56, 0.31, 0.54, -75, -180, 14) + _arc(0.31, 0.7, 0.28, 0.3, 180, 540, 40)]
    nine = [[(0.6 - x, 1.0 - y) for x, y in six[0]]]
    return {
        0: [_arc(0.3, 0.5, 0.28, 0.5, 0, 360, 48)],
        1: [[(0.1, 0.2), (0.34, 0.0), (0.34, 1.0)]],
        2: [_arc(0.3, 0.27, 0.27, 0.27, -165, 30, 20) + [(0.03, 1.0), (0.58, 1.0)]],
        3: [_arc(0.3, 0.25, 0.25, 0.24, -155, 90, 22) + _arc(0.3, 0.73, 0.28, 0.27, -90, 155, 24)],
        4: [[(0.44, 1.0), (0.44, 0.0), (0.02, 0.68), (0.6, 0.68)]],
        5: [[(0.54, 0.0), (0.1, 0.0), (0.06, 0.45)] + _arc(0.3, 0.67, 0.27, 0.33, -140, 150, 26)],
        6: six,
        7: [[(0.02, 0.0), (0.58, 0.0), (0.2, 1.0)]],
        8: [_arc(0.3, 0.24, 0.22, 0.24, 90, 450, 36), _arc(0.3, 0.74, 0.27, 0.26, -90, 270, 40)],
        9: nine,
    }


_STROKE_FONT = _stroke_font()


@lru_cache(maxsize=1)
def _face_sizes() -> dict[str, int]:
    """Font size per built-in face that gives a '0' of ink height _GLYPH_HEIGHT (OpenCV 5)."""
    out = {}
    for name in ("sans", "italic", "uni"):
        canvas = np.zeros((300, 300), np.uint8)
        cv2.putText(canvas, "0", (50, 250), 255, cv2.FontFace(name), 200, 400)
        _, _, _, h = cv2.boundingRect(canvas)
        out[name] = int(round(200.0 * _GLYPH_HEIGHT / h))  # putText takes whole pixels
    return out


def _draw_text(canvas: np.ndarray, digit: int, origin: tuple[int, int], font: str, italic: bool,
               weight: float) -> bool:
    """Draw one digit with OpenCV's fonts; True when the face drew a true italic.

    OpenCV 5 renders with its font engine: "sans" (an italic face, and a weight axis) and
    "uni" (neither). OpenCV 4 has the Hershey faces: duplex for "sans" (no italic) and triplex
    for "uni" (with FONT_ITALIC). Faces without an italic are slanted by the caller.
    """
    if hasattr(cv2, "FontFace"):
        face = "italic" if (font == "sans" and italic) else font
        cv2.putText(canvas, str(digit), origin, 255, cv2.FontFace(face), _face_sizes()[face],
                    int(round(150 + 750 * weight)))
        return face == "italic"
    hershey = cv2.FONT_HERSHEY_DUPLEX if font == "sans" else cv2.FONT_HERSHEY_TRIPLEX
    true_italic = italic and font == "uni"
    if true_italic:
        hershey |= cv2.FONT_ITALIC
    thickness = max(1, int(round((0.03 + 0.15 * weight) * _GLYPH_HEIGHT)))
    scale = cv2.getFontScaleFromHeight(hershey, _GLYPH_HEIGHT, thickness)
    cv2.putText(canvas, str(digit), origin, hershey, scale, 255, thickness, cv2.LINE_AA)
    return true_italic


@lru_cache(maxsize=None)
def _glyph(font: int, italic: bool, weight_step: int, digit: int) -> tuple[np.ndarray, int, int]:
    """One digit's ink bitmap (uint8) cropped to its ink, and the crop's offset from the pen.

    The pen sits on the baseline at the glyph's left; glyphs of one image share a baseline.
    """
    name, weight, H = FONTS[font], weight_step / _WEIGHT_STEPS, _GLYPH_HEIGHT
    canvas = np.zeros((3 * H, 3 * H), np.uint8)
    pen = (H, 2 * H)
    slanted = False  # whether the face drew an italic itself
    if name == "stroke":
        thickness = max(1, int(round((0.05 + 0.17 * weight) * H)))
        shift = 4  # sub-pixel vertices: cv2 takes fixed-point coordinates with this many bits
        for line in _STROKE_FONT[digit]:
            pts = np.array([(pen[0] + x * H, pen[1] - H + y * H) for x, y in line])
            cv2.polylines(canvas, [np.round(pts * (1 << shift)).astype(np.int32)], False, 255,
                          thickness, cv2.LINE_AA, shift)
    else:
        slanted = _draw_text(canvas, digit, pen, name, italic, weight)
        if name == "uni" and hasattr(cv2, "FontFace"):
            # OpenCV 5's "uni" has no weight axis: thin or embolden its strokes instead
            radius = int(round((weight - 0.35) * 0.12 * H))
            if radius:
                kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(radius) + 1,) * 2)
                canvas = (cv2.dilate if radius > 0 else cv2.erode)(canvas, kernel)
    if italic and not slanted:
        # an oblique for faces without an italic: lean the glyph about its baseline
        m = np.array([[1.0, -0.2, 0.2 * pen[1]], [0.0, 1.0, 0.0]])
        canvas = cv2.warpAffine(canvas, m, canvas.shape[::-1], flags=cv2.INTER_LINEAR)
    x, y, w, h = cv2.boundingRect(canvas)
    bitmap = canvas[y:y + h, x:x + w].copy()
    bitmap.flags.writeable = False
    return bitmap, x - pen[0], y - pen[1]


@lru_cache(maxsize=None)
def _ink(font: int, italic: bool, weight_step: int, digit: int) -> np.ndarray:
    """A glyph's ink as weighted points (3, k): x, y in its bitmap, and the ink there.

    Taken at half the glyph's resolution (about 280 points, the centres of 2x2 cells): the
    share of a neighbour's ink the crop shows comes out within 0.01 of a warp's on average
    (0.03 at the 95th percentile), without warping the neighbour on its own.
    """
    bitmap = _glyph(font, italic, weight_step, digit)[0]
    cells = cv2.resize(bitmap, ((bitmap.shape[1] + 1) // 2, (bitmap.shape[0] + 1) // 2),
                       interpolation=cv2.INTER_AREA)
    ys, xs = np.nonzero(cells)
    return np.stack([2 * xs + 0.5, 2 * ys + 0.5, cells[ys, xs].astype(np.float64)])


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

# Slots of the per-image uniform vector: the order is part of the determinism contract.
(_U_FONT, _U_ITALIC, _U_STROKE, _U_SCALE, _U_ASPECT, _U_ROT, _U_SHEAR, _U_SX, _U_SY, _U_DL,
 _U_DR, _U_LD, _U_RD, _U_GAP, _U_CONTRAST, _U_POLARITY, _U_LUMA, _U_FG_SAT, _U_FG_HUE,
 _U_BG_SAT, _U_BG_HUE, _U_BACKGROUND, _U_TEXTURE, _U_BLUR, _U_NOISE, _U_JPEG, _U_DIR,
 _U_SIGN, _U_PERIOD, _U_PHASE_X, _U_PHASE_Y, _U_MARGIN, _U_CLASS, _U_RES) = range(34)
_N_U = 40  # a few spare slots, so that a new latent need not move the others
_FIELD = 6  # the coarse texture is a _FIELD x _FIELD grid of normals, upsampled
_TONES = 8  # brick shades repeat every _TONES rows and columns of bricks


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of RGB values (last axis), as a fixed sum: a matmul's rounding may vary."""
    return rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2]


def _pick(u: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Categorical draws from uniforms ``u`` with the given (unnormalised) weights."""
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    return np.minimum(np.searchsorted(cdf / cdf[-1], u, side="right"), len(cdf) - 1)


def _lerp(u: np.ndarray, lohi: Sequence[float]) -> np.ndarray:
    return lohi[0] + (lohi[1] - lohi[0]) * u


def _chroma_basis() -> tuple[np.ndarray, np.ndarray]:
    """Two orthonormal RGB directions (3,) of zero luma, computed once in pure Python.

    Fixed-order scalar arithmetic (``math.fsum``, ``math.sqrt``) rather than BLAS dot products
    and norms: the basis is then the same bits in every process, whatever library state
    (thread counts, kernels) other code has set, and so is every colour drawn from it.
    """
    w = [float(v) for v in _LUMA]  # the float32 weights, exactly
    a = [1.0, -1.0, 0.0]
    k = math.fsum(x * y for x, y in zip(a, w)) / math.fsum(x * x for x in w)
    a = [x - k * y for x, y in zip(a, w)]
    norm = math.sqrt(math.fsum(x * x for x in a))
    a = [x / norm for x in a]
    b = [w[1] * a[2] - w[2] * a[1], w[2] * a[0] - w[0] * a[2], w[0] * a[1] - w[1] * a[0]]
    norm = math.sqrt(math.fsum(x * x for x in b))
    return np.array(a), np.array([x / norm for x in b])


_CHROMA_A, _CHROMA_B = _chroma_basis()


def _colours(luma: np.ndarray, sat: np.ndarray, hue: np.ndarray) -> np.ndarray:
    """RGB colours (n, 3) of the given luma, with a chroma of length ``sat`` at angle ``hue``.

    The chroma lies in the plane of zero luma, so only clipping to [0, 1] changes the luma.
    Every operation is elementwise and correctly rounded (no reduction, no vectorised
    transcendental), so a colour depends on its own draws only, never on its batch.
    """
    # trigonometry per value with `math`: numpy's vectorised cos/sin may round differently at
    # different positions of an array, and image i must not depend on its neighbours
    cos = np.array([math.cos(h) for h in hue.tolist()])  # (n,)
    sin = np.array([math.sin(h) for h in hue.tolist()])  # (n,)
    chroma = cos[:, None] * _CHROMA_A + sin[:, None] * _CHROMA_B  # (n, 3)
    return np.clip(luma[:, None] + sat[:, None] * chroma, 0.0, 1.0).astype(np.float32)


def _realised_contrast(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """|luma(fg) − luma(bg)| (n,) of float32 colours (n, 3), in float64, rounded once to float32.

    A fixed-order sum of elementwise products: the same bits for an image in any batch.
    """
    d = fg.astype(np.float64) - bg.astype(np.float64)  # (n, 3)
    w = [float(v) for v in _LUMA]
    return np.abs(d[:, 0] * w[0] + d[:, 1] * w[1] + d[:, 2] * w[2]).astype(np.float32)


# numpy's SeedSequence (pool of 4 words) and PCG64 seeding, for _stream_states: see there
_SS_INIT_A, _SS_MULT_A, _SS_INIT_B, _SS_MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_SS_MIX_L, _SS_MIX_R, _SS_SHIFT, _SS_POOL = 0xCA01F9DD, 0x4973F715, 16, 4
_PCG_MULT = (2549297995355413924 << 64) | 4865540595714422341  # PCG64's 128-bit multiplier
_MASK32, _MASK128 = (1 << 32) - 1, (1 << 128) - 1


def _words(x: int) -> list[int]:
    """The 32-bit words of a non-negative int, least significant first ([0] for 0)."""
    out = [x & _MASK32]
    while x := x >> 32:
        out.append(x & _MASK32)
    return out


def _stream_states(seed: int, indices: np.ndarray, tag: int) -> list[tuple[int, int]]:
    """PCG64 (state, inc) of ``default_rng([seed, i, tag])`` for every ``i``, vectorised.

    Building a generator per image costs ~40 us, most of it in SeedSequence's hashing; this
    runs the same hash on arrays of images at once (uint32 arithmetic wraps as the hash's
    does). :func:`_streams` checks it against numpy once per process before using it.
    """
    idx = np.asarray(indices, dtype=np.uint64)
    if idx.size and int(idx.max()) > _MASK32:  # indices of two words: rare, one at a time
        return [_stream_states_words(_words(seed) + _words(i) + _words(tag), 1)[0]
                for i in idx.tolist()]
    return _stream_states_words(_words(seed) + [idx.astype(np.uint32)] + _words(tag), len(idx))


def _stream_states_words(entropy: Sequence[Any], n: int) -> list[tuple[int, int]]:
    """PCG64 (state, inc) seeded from SeedSequence(entropy), for ``n`` streams at once.

    ``entropy`` holds 32-bit words, each an int (shared) or an (n,) array (one per stream).
    """
    entropy = [np.broadcast_to(np.asarray(w, np.uint32), (n,)) for w in entropy]
    const = _SS_INIT_A

    def hashmix(v: np.ndarray) -> np.ndarray:
        nonlocal const
        v = v ^ np.uint32(const)
        const = (const * _SS_MULT_A) & _MASK32
        v = v * np.uint32(const)
        return v ^ (v >> np.uint32(_SS_SHIFT))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = np.uint32(_SS_MIX_L) * x - np.uint32(_SS_MIX_R) * y
        return r ^ (r >> np.uint32(_SS_SHIFT))

    zero = np.zeros(n, np.uint32)
    pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_SS_POOL)]
    for src in range(_SS_POOL):
        for dst in range(_SS_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_SS_POOL, len(entropy)):
        for dst in range(_SS_POOL):
            pool[dst] = mix(pool[dst], hashmix(entropy[src]))
    const, state = _SS_INIT_B, []
    for k in range(8):
        v = pool[k % _SS_POOL] ^ np.uint32(const)
        const = (const * _SS_MULT_B) & _MASK32
        v = v * np.uint32(const)
        state.append((v ^ (v >> np.uint32(_SS_SHIFT))).tolist())
    out = []
    for w in zip(*state):  # four uint64 from eight words: seed high, seed low, inc high, low
        initstate = (w[0] | w[1] << 32) << 64 | w[2] | w[3] << 32
        inc = (((w[4] | w[5] << 32) << 64 | w[6] | w[7] << 32) << 1 | 1) & _MASK128
        out.append((((inc + initstate) * _PCG_MULT + inc) & _MASK128, inc))
    return out


@lru_cache(maxsize=1)
def _fast_streams_agree() -> bool:
    """Whether :func:`_stream_states` gives numpy's own generators in this process."""
    for seed, i, tag in ((0, 0, 0), (7, 123456, 1), (2 ** 64 - 1, 2 ** 32 - 1, 0), (5, 2 ** 40, 0)):
        ref = np.random.default_rng([seed, i, tag]).bit_generator.state
        (state, inc), = _stream_states(seed, np.array([i], np.uint64), tag)
        if ref["state"] != {"state": state, "inc": inc} or ref["has_uint32"] or ref["uinteger"]:
            log.warning("street digits: fast stream seeding disagrees with numpy; using numpy's")
            return False
    return True


def _streams(seed: int, indices: Sequence[int] | np.ndarray,
             tag: int) -> Iterator[np.random.Generator]:
    """Yield, for each ``i``, a generator in the state of ``np.random.default_rng([seed, i, tag])``.

    One generator is reused (re-seeded before each yield): use it before the next ``next``.
    """
    indices = np.asarray(indices, dtype=np.uint64)
    if not _fast_streams_agree():
        for i in indices.tolist():
            yield np.random.default_rng([seed, i, tag])
        return
    gen = np.random.Generator(np.random.PCG64(0))
    bits = gen.bit_generator
    inner = {"state": 0, "inc": 0}
    value = {"bit_generator": "PCG64", "state": inner, "has_uint32": 0, "uinteger": 0}
    for state, inc in _stream_states(seed, indices, tag):
        inner["state"], inner["inc"] = state, inc
        bits.state = value
        yield gen


def _digit_column(seed: int, start: int, n: int, cfg: StreetDigitsConfig,
                  u_class: np.ndarray) -> np.ndarray:
    """The class of each image: balanced by blocks unless ``class_weights`` are given.

    Images ``b·k .. b·k+k-1`` (``k = len(digits)``) hold each digit once, in an order drawn
    from ``(seed, b)``: every slice is balanced to within two images per class, and image
    ``i`` still depends only on ``(seed, i)``.
    """
    digits = np.asarray(cfg.digits, dtype=np.int64)
    if cfg.class_weights is not None:
        return digits[_pick(u_class, cfg.class_weights)]
    k = len(digits)
    out = np.empty(n, dtype=np.int64)
    blocks = range(start // k, (start + n - 1) // k + 1) if n else range(0)
    for block, rng in zip(blocks, _streams(seed, blocks, _DIGIT_STREAM)):
        order = rng.permutation(k)
        lo, hi = max(block * k, start), min(block * k + k, start + n)  # this block's images
        out[lo - start:hi - start] = digits[order[np.arange(lo, hi) % k]]
    return out


def _latents_from_uniforms(u: np.ndarray, seed: int, start: int,
                           cfg: StreetDigitsConfig) -> dict[str, np.ndarray]:
    """Map the per-image uniforms (n, _N_U) to the named latents, vectorised over images."""
    lat: dict[str, np.ndarray] = {}
    lat["digit"] = _digit_column(seed, start, len(u), cfg, u[:, _U_CLASS])
    allowed = np.array([FONTS.index(f) for f in cfg.fonts])
    lat["font"] = allowed[np.minimum((u[:, _U_FONT] * len(allowed)).astype(int), len(allowed) - 1)]
    lat["italic"] = u[:, _U_ITALIC] < cfg.italic_prob
    lat["stroke"] = np.round(_lerp(u[:, _U_STROKE], cfg.stroke) * _WEIGHT_STEPS) / _WEIGHT_STEPS
    for name, slot in (("scale", _U_SCALE), ("aspect", _U_ASPECT), ("rotation", _U_ROT),
                       ("shear", _U_SHEAR), ("gap", _U_GAP), ("blur", _U_BLUR),
                       ("noise", _U_NOISE)):
        lat[name] = _lerp(u[:, slot], getattr(cfg, name))
    lat["shift_x"] = _lerp(u[:, _U_SX], cfg.shift) * cfg.size  # output px
    lat["shift_y"] = _lerp(u[:, _U_SY], cfg.shift) * cfg.size
    lat["distractor_left"] = u[:, _U_DL] < cfg.distractor_prob
    lat["distractor_right"] = u[:, _U_DR] < cfg.distractor_prob
    # neighbours are any digit: house numbers hold every digit whatever the classes studied
    lat["left_digit"] = np.where(lat["distractor_left"], np.floor(u[:, _U_LD] * 10), -1)
    lat["right_digit"] = np.where(lat["distractor_right"], np.floor(u[:, _U_RD] * 10), -1)
    # colours: a darker and a lighter luma `contrast` apart; the digit takes one by polarity
    c = _lerp(u[:, _U_CONTRAST], cfg.contrast)
    dark = 0.03 + (0.94 - c) * u[:, _U_LUMA]
    polarity = u[:, _U_POLARITY] < cfg.light_on_dark_prob
    # saturation ~ u²: most walls, plates and paints are greyish, a few strongly coloured
    fg_sat, bg_sat = u[:, _U_FG_SAT] * u[:, _U_FG_SAT], u[:, _U_BG_SAT] * u[:, _U_BG_SAT]
    fg = _colours(np.where(polarity, dark + c, dark), _lerp(fg_sat, cfg.saturation),
                  2 * np.pi * u[:, _U_FG_HUE])
    bg = _colours(np.where(polarity, dark, dark + c), _lerp(bg_sat, cfg.saturation),
                  2 * np.pi * u[:, _U_BG_HUE])
    lat["contrast"] = _realised_contrast(fg, bg)  # as realised, after clipping the colours
    lat["polarity"] = polarity
    for k, ch in enumerate("rgb"):
        lat[f"fg_{ch}"] = fg[:, k]
        lat[f"bg_{ch}"] = bg[:, k]
    lat["background"] = _pick(u[:, _U_BACKGROUND], cfg.background_weights)
    lat["texture"] = np.where(lat["background"] == 0, 0.0, _lerp(u[:, _U_TEXTURE], cfg.texture))
    # the crop's side in the photo, whole pixels: resolution is that side / size
    lat["resolution"] = np.clip(np.round(_lerp(u[:, _U_RES], cfg.resolution) * cfg.size), 4,
                                cfg.size) / cfg.size
    q0, q1 = cfg.jpeg_quality
    lat["jpeg_quality"] = np.minimum(np.floor(q0 + (q1 - q0 + 1) * u[:, _U_JPEG]), q1)
    out = {name: np.asarray(lat[name]).astype(np.int64 if name in _INT_LATENTS else np.float32)
           for name in ATTRIBUTE_NAMES if name in lat}
    # how much of each neighbour the crop shows: a neighbour may lie wholly outside it
    out["left_visible"], out["right_visible"] = _visible(out, cfg.size, cfg.supersample)
    return {name: out[name] for name in ATTRIBUTE_NAMES}


def _draw(n: int, seed: int, start: int, cfg: StreetDigitsConfig,
          fields_too: bool = True) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every random number of images ``start .. start+n-1``, each from its own generator.

    Image ``i`` draws, in this order, from ``default_rng([seed, i, 0])``: its uniforms (latents
    and background geometry), its coarse texture field, its brick shades and its sensor noise.
    The noise comes last and a photo of side k reads only its first k rows, so rows past the
    side are not drawn (they stay zero): the rows drawn are the same numbers either way.
    """
    if seed < 0 or start < 0 or n < 0:
        raise ValueError(f"seed, start and n must be non-negative, got {seed}, {start}, {n}")
    S = cfg.size
    u = np.empty((n, _N_U))
    extra = {"field": np.empty((n, _FIELD, _FIELD), np.float32),
             "tones": np.empty((n, _TONES, _TONES), np.float32),
             "noise": np.zeros((n, S, S), np.float32)} if fields_too else {}
    lo, hi = cfg.resolution
    for j, rng in enumerate(_streams(seed, np.arange(start, start + n), _IMAGE_STREAM)):
        rng.random(out=u[j])
        if fields_too:
            rng.standard_normal(out=extra["field"][j], dtype=np.float32)
            rng.random(out=extra["tones"][j], dtype=np.float32)
            # >= the photo's side, round(resolution·S) in [4, S] (see _latents_from_uniforms)
            rows = min(S, max(4, int((lo + (hi - lo) * u[j, _U_RES]) * S) + 2))
            rng.standard_normal(out=extra["noise"][j, :rows], dtype=np.float32)
    extra["geom"] = u[:, [_U_DIR, _U_SIGN, _U_PERIOD, _U_PHASE_X, _U_PHASE_Y, _U_MARGIN]]
    return _latents_from_uniforms(u, seed, start, cfg), extra


def sample_latents(n: int, seed: int, start: int = 0,
                   config: StreetDigitsConfig | None = None) -> dict[str, np.ndarray]:
    """The latents of images ``start .. start+n-1`` without their pixels (the same as render's)."""
    cfg, step = config or StreetDigitsConfig(), 4096
    parts = [_draw(min(step, n - b), seed, start + b, cfg, fields_too=False)[0]
             for b in range(0, n, step)] or [_draw(0, seed, start, cfg, fields_too=False)[0]]
    return {k: np.concatenate([p[k] for p in parts]) for k in ATTRIBUTE_NAMES}


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy / size, xx / size  # (size, size) each, in units of the image size


def _place(canvas: np.ndarray, bitmap: np.ndarray, x0: int, y0: int) -> None:
    """Copy a glyph's bitmap onto the canvas with its top-left at (x0, y0), clipped at the borders.

    A plain copy, not a maximum: the glyphs' ink boxes never overlap (gaps are >= 0).
    """
    h, w = bitmap.shape
    if x0 >= 0 and y0 >= 0 and x0 + w <= canvas.shape[1] and y0 + h <= canvas.shape[0]:
        canvas[y0:y0 + h, x0:x0 + w] = bitmap  # wholly on the canvas: most glyphs
        return
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + w, canvas.shape[1]), min(y0 + h, canvas.shape[0])
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] = bitmap[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]


# the text canvas, (rows, cols) at the glyph resolution: room for the neighbours' inner halves
_CANVAS = (2 * _GLYPH_HEIGHT, 5 * _GLYPH_HEIGHT)
# the latents that place an image's glyphs (see _layouts)
_LAYOUT_LATENTS = ("digit", "font", "italic", "stroke", "scale", "aspect", "rotation", "shear",
                   "shift_x", "shift_y", "distractor_left", "distractor_right", "left_digit",
                   "right_digit", "gap")


@lru_cache(maxsize=None)
def _glyph_key(code: int) -> tuple[int, bool, int, int]:
    """The (font, italic, weight step, digit) of a glyph code of :func:`_layouts`."""
    rest, digit = divmod(code, 10)
    rest, step = divmod(rest, _WEIGHT_STEPS + 1)
    font, italic = divmod(rest, 2)
    return font, bool(italic), step, digit


def _glyph_box(code: int) -> tuple[int, int, int, int]:
    """Height, width and pen offsets (x, y) of a glyph's bitmap; zeros for no glyph (-1)."""
    if code < 0:
        return 0, 0, 0, 0
    bitmap, ox, oy = _glyph(*_glyph_key(code))
    return bitmap.shape[0], bitmap.shape[1], ox, oy


def _layouts(lat: Mapping[str, Any], size: int, ss: int) -> dict[str, np.ndarray]:
    """Every image's glyphs on the text canvas, and the canvas's map to its crop, vectorised.

    The centre digit's ink box is centred on the canvas; neighbours sit on its baseline, their
    ink boxes ``gap`` digit heights away (boxes never overlap, so glyphs are copied, not
    blended). The map to the supersampled crop (size·ss square) has the linear part
    scale · R(rotation) · [[1, -shear], [0, 1]] · diag(aspect, 1), and takes the canvas centre
    to the (shifted) crop centre.

    Returns ``code`` (n, 3) int: the glyph of the centre, left and right digit (-1: none; see
    :func:`_glyph_key`), ``x0``, ``y0``, ``w``, ``h`` (n, 3) int: its bitmap's box on the
    canvas, and ``m`` (n, 2, 3) the map. Each value is computed elementwise in float64 in a
    fixed order (angles with ``math``, see _colours), so an image's layout is its own.
    """
    font = np.asarray(lat["font"], np.int64)
    italic = np.asarray(lat["italic"], np.int64)
    step = np.rint(np.asarray(lat["stroke"], np.float64) * _WEIGHT_STEPS).astype(np.int64)
    digit = np.stack([np.asarray(lat["digit"], np.int64),
                      np.where(np.asarray(lat["distractor_left"]) != 0,
                               np.asarray(lat["left_digit"], np.int64), -1),
                      np.where(np.asarray(lat["distractor_right"]) != 0,
                               np.asarray(lat["right_digit"], np.int64), -1)], axis=1)  # (n, 3)
    code = ((font * 2 + italic) * (_WEIGHT_STEPS + 1) + step)[:, None] * 10 + digit
    code = np.where(digit < 0, -1, code)
    uniq, inv = np.unique(code, return_inverse=True)
    boxes = [_glyph_box(c) for c in uniq.tolist()]
    boxes = np.array(boxes, np.int64).reshape(-1, 4)  # (unique codes, 4)
    h, w, ox, oy = np.moveaxis(boxes[inv.reshape(code.shape)], -1, 0)  # (n, 3) each
    ch, cw = h[:, 0], w[:, 0]  # the centre digit's ink box
    pen_x = _CANVAS[1] / 2 - cw / 2 - ox[:, 0]
    pen_y = _CANVAS[0] / 2 - ch / 2 - oy[:, 0]
    gap = np.asarray(lat["gap"], np.float64) * _GLYPH_HEIGHT
    inner = pen_x + ox[:, 0]  # the left edge of the centre's ink
    pens = np.stack([pen_x, inner - gap - w[:, 1] - ox[:, 1], inner + cw + gap - ox[:, 2]], 1)
    x0 = np.rint(pens).astype(np.int64) + ox
    y0 = np.rint(pen_y).astype(np.int64)[:, None] + oy

    s = np.asarray(lat["scale"], np.float64) * size * ss / ch
    theta = [math.radians(r) for r in np.asarray(lat["rotation"], np.float64).tolist()]
    cos = s * np.array([math.cos(t) for t in theta], np.float64)
    sin = s * np.array([math.sin(t) for t in theta], np.float64)
    sh, asp = -np.asarray(lat["shear"], np.float64), np.asarray(lat["aspect"], np.float64)
    a, b, c, d = cos * asp, cos * sh + sin, -sin * asp, -sin * sh + cos
    cx, cy = _CANVAS[1] / 2, _CANVAS[0] / 2
    tx = (size / 2 + np.asarray(lat["shift_x"], np.float64)) * ss
    ty = (size / 2 + np.asarray(lat["shift_y"], np.float64)) * ss
    m = np.stack([a, b, tx - a * cx - b * cy, c, d, ty - c * cx - d * cy], 1).reshape(-1, 2, 3)
    return {"code": code, "x0": x0, "y0": y0, "w": w, "h": h, "m": m}


def _visible(lat: Mapping[str, Any], size: int, ss: int) -> tuple[np.ndarray, np.ndarray]:
    """The share of each neighbour's ink that falls inside the crop: (left, right), each (n,).

    0 where there is no neighbour. A neighbour whose mapped box lies wholly inside or outside
    the crop counts 1 or 0; the others' ink points (:func:`_ink`) are mapped all at once, and
    each image's sums run over its own points in a fixed order, so an image's shares do not
    depend on the batch it is in.
    """
    lay = _layouts(lat, size, ss)
    lo, hi = -0.5, size * ss - 0.5  # pixel centres sit at integer coordinates in OpenCV's warp
    a, b, c, d, e, f = (lay["m"][:, k // 3, k % 3, None] for k in range(6))  # (n, 1) each
    x0, y0 = lay["x0"][:, 1:], lay["y0"][:, 1:]  # (n, 2): the left and right neighbour
    x1, y1 = x0 + lay["w"][:, 1:], y0 + lay["h"][:, 1:]
    us = [a * x + b * y + c for x in (x0, x1) for y in (y0, y1)]  # the box's corners
    vs = [d * x + e * y + f for x in (x0, x1) for y in (y0, y1)]
    umin, umax = np.minimum.reduce(us), np.maximum.reduce(us)
    vmin, vmax = np.minimum.reduce(vs), np.maximum.reduce(vs)
    present = lay["code"][:, 1:] >= 0
    outside = (umax < lo) | (umin >= hi) | (vmax < lo) | (vmin >= hi)
    inside = (umin >= lo) & (umax < hi) & (vmin >= lo) & (vmax < hi)
    share = np.where(present & inside, 1.0, 0.0).ravel()  # (2n,): left, right of each image
    rows, sides = np.nonzero(present & ~inside & ~outside)
    if len(rows):
        points = [_ink(*_glyph_key(k)) for k in lay["code"][rows, sides + 1].tolist()]
        # x, y in each glyph's bitmap, and the ink there: (3, points of all neighbours)
        px, py, pw = np.concatenate(points, axis=1)
        which = np.repeat(np.arange(len(rows)), [p.shape[1] for p in points])  # its neighbour
        gx, gy = x0[rows, sides], y0[rows, sides]
        # the map of each glyph's own coordinates: the canvas map after its offset
        a, b, c, d, e, f = (v[rows, 0] for v in (a, b, c, d, e, f))
        pa, pb, pc, pd, pe, pf = np.stack([a, b, a * gx + b * gy + c,
                                           d, e, d * gx + e * gy + f])[:, which]  # per point
        u = pa * px + pb * py + pc
        v = pd * px + pe * py + pf
        inside_pt = (u >= lo) & (u < hi) & (v >= lo) & (v < hi)
        # per neighbour, sums over its own points in their order: the same in any batch
        shown = np.bincount(which, weights=pw * inside_pt, minlength=len(rows))
        total = np.bincount(which, weights=pw, minlength=len(rows))
        mapped = total > 0
        share[(2 * rows + sides)[mapped]] = shown[mapped] / total[mapped]
    return share[0::2].astype(np.float32), share[1::2].astype(np.float32)


def _warp(layer: np.ndarray, m: np.ndarray, size: int, ss: int) -> np.ndarray:
    """A canvas layer (uint8) warped by ``m`` to the supersampled crop, area-averaged to size."""
    warped = cv2.warpAffine(layer, m, (size * ss, size * ss), flags=cv2.INTER_LINEAR,
                            borderValue=0)
    return cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA) if ss > 1 else warped


def _coverage(code: Sequence[int], x0: Sequence[int], y0: Sequence[int], m: np.ndarray,
              plate_margin: float | None,
              cfg: StreetDigitsConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Digit coverage (size, size) uint8 of one image laid out by :func:`_layouts`.

    ``code``, ``x0``, ``y0`` are the image's rows of the layout (centre, left, right glyph) and
    ``m`` its map. With ``plate_margin`` (a uniform) also the coverage of the plate the digits are fixed to:
    a band around their row, warped with them as a second channel of the canvas (OpenCV's
    two-channel warp rounds differently from its one-channel one: the channels stay together).
    """
    S, ss = cfg.size, cfg.supersample
    canvas = np.zeros(_CANVAS if plate_margin is None else (*_CANVAS, 2), np.uint8)
    ink = canvas if plate_margin is None else canvas[..., 0]
    for r in (2, 1, 0):  # the centre last: rounding can't cut it
        if code[r] >= 0:
            _place(ink, _glyph(*_glyph_key(code[r]))[0], x0[r], y0[r])
    if plate_margin is not None:
        ch = _glyph_box(code[0])[0]  # the centre digit's ink height
        margin = int(round((0.1 + 0.35 * plate_margin) * ch))
        top = int(round(_CANVAS[0] / 2 - ch / 2)) - margin
        canvas[max(top, 0):top + ch + 2 * margin, :, 1] = 255
    warped = _warp(canvas, m, S, ss)
    return (warped, None) if plate_margin is None else (warped[..., 0], warped[..., 1])


def _layers(lat: Mapping[str, Sequence], j: int, margin_u: float,
            cfg: StreetDigitsConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Digit coverage (size, size) uint8 of image ``j`` of a latent table, and its plate's if any.

    The glyphs are laid out on a canvas at the glyph resolution (:func:`_layouts`), warped by
    one affine to the supersampled crop, then area-averaged to the output.
    """
    one = {k: lat[k][j:j + 1] for k in _LAYOUT_LATENTS}
    plate = lat["background"][j] == BACKGROUNDS.index("plate")
    lay = _layouts(one, cfg.size, cfg.supersample)
    return _coverage(lay["code"][0].tolist(), lay["x0"][0].tolist(), lay["y0"][0].tolist(),
                     lay["m"][0], margin_u if plate else None, cfg)


def _upsample(stack: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    """Resize (n, h, w) float32 maps to (n, size, size), one image per call.

    Stacking images as channels of one call would be faster, but OpenCV's code path (and so
    its rounding) depends on the channel count, which would tie an image to its batch.
    """
    return np.stack([cv2.resize(m, (size, size), interpolation=interpolation) for m in stack])


def _render_batch(lat: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray],
                  cfg: StreetDigitsConfig) -> np.ndarray:
    """Pixels (n, size, size, 3) uint8 RGB of a batch of drawn images.

    Ground and digits are composed in colour planes (3, n, S, S), so that numpy's loops run
    over whole images rather than three channels at a time; the camera then works per image in
    OpenCV's (S, S, 3) layout. Every step is elementwise or per image: an image is its own.
    """
    n, S = len(lat["digit"]), cfg.size
    L = {k: v.tolist() for k, v in lat.items()}  # python scalars: cheap to index per image
    geom = extra["geom"].astype(np.float32)
    lay = _layouts(lat, S, cfg.supersample)
    margins = [float(v) for v in geom[:, 5]]
    codes, xs, ys = lay["code"].tolist(), lay["x0"].tolist(), lay["y0"].tolist()
    plate_kind = BACKGROUNDS.index("plate")
    mask = np.empty((n, S, S), np.uint8)
    plate = np.full((n, S, S), 255, np.uint8)
    for j in range(n):
        margin = margins[j] if L["background"][j] == plate_kind else None
        mask[j], p = _coverage(codes[j], xs[j], ys[j], lay["m"][j], margin, cfg)
        if p is not None:
            plate[j] = p
    mask = mask.astype(np.float32) * np.float32(1 / 255)

    # -- the ground: its colour with the pattern of its kind (vectorised per kind)
    kind = lat["background"]
    amp = lat["texture"][:, None, None]
    sign = np.where(geom[:, 1] < 0.5, 1.0, -1.0).astype(np.float32)[:, None, None]
    yy, xx = _grid(S)
    offset = np.zeros((n, S, S), np.float32)  # luma added to the ground colour
    sel = kind == BACKGROUNDS.index("texture")
    if sel.any():
        # stucco, wood, dirt: smooth noise at two scales
        coarse = _upsample(extra["field"][sel], S, cv2.INTER_CUBIC)
        fine = _upsample(extra["tones"][sel] - 0.5, S, cv2.INTER_LINEAR) * 2.0
        offset[sel] = amp[sel] * (0.7 * coarse + 0.5 * fine)
    sel = kind == BACKGROUNDS.index("bricks")
    if sel.any():
        period = 0.18 + 0.2 * geom[sel, 2, None, None]  # brick height / image size
        rows = (yy + geom[sel, 4, None, None]) / period
        row = np.floor(rows)
        cols = (xx + geom[sel, 3, None, None] + 1.1 * period * (row % 2)) / (2.2 * period)
        col = np.floor(cols)
        mortar = ((rows - row) < 0.1) | ((cols - col) * 2.2 < 0.1)  # joints: 0.1 brick height
        brick = ((row % _TONES) * _TONES + col % _TONES).astype(np.intp).reshape(len(row), -1)
        tone = np.take_along_axis(extra["tones"][sel].reshape(len(row), -1), brick, axis=1)
        offset[sel] = np.where(mortar, 2.0 * sign[sel] * amp[sel],
                               amp[sel] * (tone.reshape(row.shape) - 0.5))
    # composed in BGR, the channel order of OpenCV's JPEG codec (its luma needs the order)
    bgc = np.stack([lat["bg_b"], lat["bg_g"], lat["bg_r"]])[:, :, None, None]  # (3, n, 1, 1)
    fg = np.stack([lat["fg_b"], lat["fg_g"], lat["fg_r"]])[:, :, None, None]
    img = bgc + offset  # (3, n, S, S): the ground
    sel = kind == plate_kind
    if sel.any():
        # around the plate, the wall: lighter or darker than the plate by 0.1 + texture
        p = plate[sel].astype(np.float32) * np.float32(1 / 255)
        wall = bgc[:, sel] + sign[sel] * (0.1 + amp[sel])
        img[:, sel] = img[:, sel] * p + wall * (1.0 - p)
    ink = np.subtract(fg, img)
    ink *= mask
    img += ink  # the digits over the ground: img + (fg - img) * mask
    del ink
    sel = kind == BACKGROUNDS.index("gradient")
    if sel.any():
        # uneven light (a shadow edge, a lamp): shades digit and ground alike
        a = [2 * math.pi * float(v) for v in geom[sel, 0]]  # math: see _colours
        cos = np.array([math.cos(v) for v in a], np.float32)[:, None, None]
        sin = np.array([math.sin(v) for v in a], np.float32)[:, None, None]
        t = (cos * (xx - 0.5) + sin * (yy - 0.5)) * np.float32(math.sqrt(2))
        img[:, sel] *= 1.0 + 2.0 * amp[sel] * t
    # (n, S, S, 3) for OpenCV: merging the planes of a stack of images is a plain copy
    img = cv2.merge([plane.reshape(n * S, S) for plane in img]).reshape(n, S, S, 3)

    # -- the camera, as SVHN's crops were made: a photo (optics blur, sensor noise in luma,
    # 8 bits, JPEG) at the crop's own resolution, then resized to the output size
    # (OpenCV writes each image straight into its slot of a batch array: dst=)
    blur, q = L["blur"], L["jpeg_quality"]
    shot = np.empty_like(img)
    for j in range(n):
        if blur[j] > 0:
            cv2.GaussianBlur(img[j], (0, 0), blur[j], dst=shot[j])
        else:
            shot[j] = img[j]
    side = np.round(lat["resolution"] * S).astype(int)  # the photo's crop, whole pixels
    out = np.empty((n, S, S, 3), np.uint8)
    for k in np.unique(side).tolist():  # images of one crop size together: vectorised noise
        idx = np.flatnonzero(side == k)
        if k == S:
            photo = shot[idx]
        else:
            photo = np.empty((len(idx), k, k, 3), np.float32)
            for t, j in enumerate(idx.tolist()):
                cv2.resize(shot[j], (k, k), dst=photo[t], interpolation=cv2.INTER_AREA)
        grain = lat["noise"][idx, None, None] * extra["noise"][idx, :k, :k]  # (m, k, k)
        for c in range(3):  # one channel at a time: numpy broadcasts over 3 channels slowly
            photo[..., c] += grain
        photo *= 255.0
        photo += 0.5
        photo = np.clip(photo, 0, 255, out=photo).astype(np.uint8)  # (m, k, k, 3)
        for t, j in enumerate(idx.tolist()):
            im = photo[t]
            if q[j] < 100:
                _, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, q[j]])
                im = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            if k == S:
                out[j] = im
            else:
                cv2.resize(im, (S, S), dst=out[j], interpolation=cv2.INTER_LINEAR)
    # to RGB: a channel swap of the whole stack at once (a plain copy)
    return cv2.cvtColor(out.reshape(n * S, S, 3), cv2.COLOR_BGR2RGB).reshape(n, S, S, 3)


def _render_chunk(n: int, seed: int, start: int,
                  cfg: StreetDigitsConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render images ``start .. start+n-1`` in one process, a few hundred at a time."""
    images = np.empty((n, cfg.size, cfg.size, 3), np.uint8)
    parts = []
    batch = max(16, 2 ** 18 // (cfg.size * cfg.size))  # float arrays of ~3 MB per batch
    for b in range(0, n, batch):
        lat, extra = _draw(min(batch, n - b), seed, start + b, cfg)
        images[b:b + len(lat["digit"])] = _render_batch(lat, extra, cfg)
        parts.append(lat)
    latents = {k: np.concatenate([p[k] for p in parts]) if parts else
               np.zeros(0, np.int64 if k in _INT_LATENTS else np.float32) for k in ATTRIBUTE_NAMES}
    return images, latents


def _init_worker() -> None:
    # one process per core: OpenCV's own threads would only contend with the other workers
    cv2.setNumThreads(1)


def render(n: int, seed: int, start: int = 0, config: StreetDigitsConfig | None = None,
           workers: int = 1, chunk: int = 2500) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render images ``start .. start+n-1`` of the stream ``seed``, with their latents.

    Returns ``images`` (n, size, size, 3) uint8 RGB and a dict of latent arrays, one ``(n,)``
    array per name in :data:`ATTRIBUTE_NAMES` (``digit`` is the label). Image ``i`` depends
    only on ``(seed, i)`` and the config, so slices agree with the whole and the result is the
    same for any ``workers`` and ``chunk``.

    The work is cut into tasks of ``chunk`` images, spread over up to ``workers`` spawned
    processes (``n <= chunk`` stays in this process: starting one costs about half a second).
    A script calling this with ``workers > 1`` needs the ``if __name__ == "__main__":`` guard.
    """
    cfg = config or StreetDigitsConfig()
    if n < 0 or seed < 0 or start < 0 or chunk < 1:
        raise ValueError(f"n, seed, start must be >= 0 and chunk >= 1, "
                         f"got {n}, {seed}, {start}, {chunk}")
    starts = list(range(start, start + n, int(chunk)))
    workers = max(1, min(int(workers), len(starts)))
    if workers == 1:
        return _render_chunk(n, seed, start, cfg)
    import multiprocessing as mp
    sizes = [min(int(chunk), start + n - s) for s in starts]
    # spawn, not fork: a forked child can deadlock in OpenCV if the parent used its thread pool
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker) as pool:
        parts = list(pool.map(_render_chunk, sizes, [seed] * len(starts), starts,
                              [cfg] * len(starts)))
    images = np.concatenate([p[0] for p in parts])
    latents = {k: np.concatenate([p[1][k] for p in parts]) for k in ATTRIBUTE_NAMES}
    return images, latents


def attribute_table(latents: Mapping[str, np.ndarray]) -> np.ndarray:
    """Latent arrays -> an (n, len(ATTRIBUTE_NAMES)) float32 table in that column order."""
    return np.stack([np.asarray(latents[k], dtype=np.float32) for k in ATTRIBUTE_NAMES], axis=1)


# --------------------------------------------------------------------------------------------
# the data source
# --------------------------------------------------------------------------------------------

#: where rendered splits are kept between runs (git-ignored), one folder per digest.
CACHE_ROOT = Path(__file__).resolve().parents[2] / "datasets" / "generated" / "street_digits"
#: the splits a source without ``sizes`` serves.
DEFAULT_SIZES = {"train": 20000, "test": 5000}


def split_seed(data_seed: int, split: str) -> int:
    """The stream seed of one split of a world: distinct per (data_seed, split name).

    Splits draw from separate streams rather than index ranges of one, so a split's images do
    not change when another split grows, and no image is shared between splits.
    """
    if data_seed < 0:
        raise ValueError(f"data_seed must be non-negative, got {data_seed}")
    state = np.random.SeedSequence([int(data_seed), zlib.crc32(split.encode())]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


def _digest(config_json: str, seed: int, n: int) -> str:
    # the pixels depend on OpenCV's font engine and codecs: its version is part of the name
    key = json.dumps({"version": VERSION, "opencv": cv2.__version__,
                      "config": json.loads(config_json), "seed": seed, "n": n}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@lru_cache(maxsize=8)
def _rendered_split(config_json: str, seed: int, n: int, workers: int,
                    cache_root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, H, W, 3) uint8 and the attribute table of one stream, rendered once.

    With ``cache_root`` the arrays are also kept on disk as ``.npy`` files (written into a
    temporary folder, then renamed, so a reader never sees half a split) and memory-mapped.
    Returned arrays are read-only: they are shared by every caller.
    """
    folder = Path(cache_root) / _digest(config_json, seed, n) if cache_root else None
    if folder is not None and (folder / "done").is_file():
        images = np.load(folder / "images.npy", mmap_mode="r")
        table = np.load(folder / "attributes.npy")
    else:
        cfg = StreetDigitsConfig.from_dict(json.loads(config_json))
        log.info("rendering %d street-digit images (stream %d)", n, seed)
        images, latents = render(n, seed, config=cfg, workers=workers)
        table = attribute_table(latents)
        if folder is not None:
            tmp = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
            tmp.mkdir(parents=True, exist_ok=True)
            np.save(tmp / "images.npy", images)
            np.save(tmp / "attributes.npy", table)
            (tmp / "done").write_text(json.dumps({"config": json.loads(config_json), "seed": seed,
                                                  "n": n, "version": VERSION,
                                                  "opencv": cv2.__version__,
                                                  "attributes": list(ATTRIBUTE_NAMES)}))
            try:
                tmp.rename(folder)
            except OSError:  # another process published the same split first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
    images.flags.writeable = False
    table.flags.writeable = False
    return images, table


@lru_cache(maxsize=2)
def _svhn_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN ``.mat`` file as images (N, 32, 32, 3) uint8 and labels 0-9."""
    from scipy.io import loadmat
    if not Path(path).is_file():
        raise FileNotFoundError(f"SVHN file {path} not found: SVHN is not downloaded by entangle; "
                                "place train_32x32.mat and test_32x32.mat in that folder")
    mat = loadmat(path)
    images = np.ascontiguousarray(np.moveaxis(mat["X"], -1, 0)).astype(np.uint8)
    labels = mat["y"].ravel().astype(np.int64) % 10  # SVHN labels '0' as 10
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def balanced_order(labels: np.ndarray, digits: Sequence[int]) -> np.ndarray:
    """Rows of ``labels`` restricted to ``digits``, the j-th row of each class in turn.

    Every prefix is then balanced to within one image per class, as the synthetic world is;
    rows past the rarest class's count are left out.
    """
    rows = [np.flatnonzero(labels == d) for d in digits]
    m = min(len(r) for r in rows)
    return np.stack([r[:m] for r in rows], axis=1).ravel()


class StreetDigitsSource(Source):
    """SVHN-like digit crops with their nuisance latents, per split (or real SVHN from a folder).

    Parameters
    ----------
    sizes : split name -> number of images (default ``DEFAULT_SIZES``).
    digits : the classes, balanced (e.g. ``(1, 3, 7, 9)``); None: all ten.
    data_seed : the world's seed; each split draws from its own stream (:func:`split_seed`).
    size : output height and width in pixels.
    world : overrides of :class:`StreetDigitsConfig` fields (not ``size`` or ``digits``).
    svhn_root : a folder holding SVHN's ``train_32x32.mat`` and ``test_32x32.mat`` to read
        instead: ``test`` takes the first images of the test file, every other split (sorted
        by name) a disjoint range of the train file, restricted to ``digits`` and interleaved
        class by class (:func:`balanced_order`); ``attributes`` are NaN.
    workers : rendering processes.
    disk_cache : keep rendered splits under ``datasets/generated/street_digits/``.

    Outputs ``image`` (N, size, size, 3) float32 in [0, 1] (as the other digit sources; the
    caches hold uint8), ``x`` (N, size·size) float32 grey (Rec. 601 luma), ``y`` the digit
    (int64), ``index`` (int64: the image's index in its split's stream, or its row in SVHN's
    file) and ``attributes`` (N, len(ATTRIBUTE_NAMES)) float32, the latents.
    """

    uses_seed = False  # the data are fixed by data_seed; study seeds vary init and order
    # rendering processes and the disk cache change how the splits are made, not what they hold
    execution_params = ("workers", "disk_cache")
    output_kinds = {"image": "image", "x": "array", "y": "array", "index": "array",
                    "attributes": "table"}

    def __init__(self, *, sizes: Mapping[str, int] | None = None,
                 digits: Sequence[int] | None = None, data_seed: int = 0, size: int = 32,
                 world: Mapping[str, Any] | None = None, svhn_root: str | None = None,
                 workers: int = 2, disk_cache: bool = True):
        self.sizes = sizes
        self.digits = digits
        self.data_seed = data_seed
        self.size = size
        self.world = world
        self.svhn_root = svhn_root
        self.workers = workers
        self.disk_cache = disk_cache

    def config(self) -> StreetDigitsConfig:
        """The world's config: ``world`` overrides with this source's ``size`` and ``digits``."""
        world = dict(self.world or {})
        clash = sorted({"size", "digits"} & set(world))
        if clash:
            raise ValueError(f"StreetDigitsSource: give {clash} as the source's own parameters, "
                             "not inside `world`")
        if self.digits is not None:
            world["digits"] = [int(d) for d in self.digits]
        return StreetDigitsConfig.from_dict({**world, "size": int(self.size)})

    def _sizes(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in dict(self.sizes or DEFAULT_SIZES).items()}

    def load(self, split: str, seed: int) -> dict[str, np.ndarray]:
        sizes = self._sizes()
        if split not in sizes:
            raise KeyError(f"StreetDigitsSource has no split {split!r} (sizes: {sorted(sizes)})")
        n = sizes[split]
        if self.svhn_root is not None:
            images, y, index = self._svhn(split, sizes)
            table = np.full((len(y), len(ATTRIBUTE_NAMES)), np.nan, np.float32)
        else:
            cfg = self.config()
            images, table = _rendered_split(json.dumps(cfg.to_dict(), sort_keys=True),
                                            split_seed(int(self.data_seed), split), n,
                                            int(self.workers),
                                            str(CACHE_ROOT) if self.disk_cache else None)
            y = table[:, ATTRIBUTE_NAMES.index("digit")].astype(np.int64)
            index = np.arange(n, dtype=np.int64)
            table = np.array(table)  # a private copy: callers may write to their outputs
        image = images.astype(np.float32) * np.float32(1 / 255)  # (N, H, W, 3)
        grey = _luma(image)  # (N, H, W)
        return {"image": image, "x": grey.reshape(len(grey), -1), "y": y, "index": index,
                "attributes": table}

    def _svhn(self, split: str,
              sizes: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images (uint8), labels and file rows of one split read from the SVHN folder."""
        if int(self.size) != 32:
            raise ValueError(f"SVHN's crops are 32x32: size must be 32 with svhn_root, "
                             f"got {self.size}")
        file = "test" if split == "test" else "train"
        images, labels = _svhn_file(str(Path(self.svhn_root).expanduser() / f"{file}_32x32.mat"))
        order = balanced_order(labels, tuple(self.digits) if self.digits is not None else range(10))
        start = 0
        if file == "train":  # the splits other than test share the train file, in name order
            start = sum(sizes[s] for s in sorted(sizes) if s != "test" and s < split)
        stop = start + sizes[split]
        if stop > len(order):
            raise ValueError(f"SVHN's {file} file holds {len(order)} balanced images of digits "
                             f"{self.digits or 'all'}; split {split!r} needs rows {start}..{stop}")
        rows = order[start:stop]
        return images[rows], labels[rows], rows.astype(np.int64)


def sample_grid(path: str | Path, *, rows: int = 8, cols: int = 12, seed: int = 0,
                config: StreetDigitsConfig | None = None, dpi: int = 80) -> Path:
    """A figure of ``rows × cols`` images of the stream ``seed``, each titled with its digit."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, lat = render(rows * cols, seed, config=config)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.95, rows * 1.1), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.imshow(images[k], interpolation="nearest")
        ax.set_title(str(lat["digit"][k]), fontsize=9, pad=2)
        ax.set_axis_off()
    fig.tight_layout(pad=0.3, h_pad=0.4, w_pad=0.2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
