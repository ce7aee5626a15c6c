"""Data with *planted* failures, so failure-discovery methods can be graded against the truth.

Two generators, both with exact attributes per sample:

- :class:`DigitWorldSource`: the scikit-learn digits re-rendered with known style parameters
  (stroke thickness, rotation, contrast) — a tiny simulator whose style vector is an exact latent
  — and an optional planted label bug: in the training split, digits of one class with one style
  (e.g. thick 7s) are labelled as another class, so a classifier trained on it fails on exactly
  that subpopulation and nowhere else by design.
- :func:`planted_detection_table`: an attribute table of detected objects (distance, visible
  fraction, contrast, lighting, size) with an embedding, where a detector misses objects by a
  known rule: a natural failure (far, occluded) plus a planted one (low contrast).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from entangle.data.toys import split_rng
from entangle.node import Source

log = logging.getLogger(__name__)

#: the exact style latents of a rendered digit, in column order.
STYLE = ("thickness", "angle", "contrast")
#: attributes measured on the rendered 8×8 image (image moments), in column order.
MEASURED = ("ink", "width", "height", "slant", "center_x", "center_y")
#: default prior of the style latents: uniform ranges.
DEFAULT_PRIOR = {"thickness": (0.0, 1.0), "angle": (-25.0, 25.0), "contrast": (0.35, 1.0)}

_UP = 32  # rendering resolution: strokes are thickened and rotated at 32×32, then downsampled


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def render_digits(base: np.ndarray, style: np.ndarray, *, noise: float = 0.0,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Render 8×8 digit images from base images and style latents ``(thickness, angle, contrast)``.

    The base image is upsampled and smoothed, its strokes are redrawn with a soft threshold
    whose level sets the thickness (0 thin … 1 thick), rotated by ``angle`` degrees, area-averaged
    back to 8×8 and scaled by ``contrast``; ``noise`` adds Gaussian pixel noise.

    Parameters
    ----------
    base : (N, 8, 8) images in [0, 1].
    style : (N, 3) thickness, angle (degrees), contrast.

    Returns
    -------
    (N, 8, 8) float32 images in [0, 1].
    """
    base = np.asarray(base, dtype=np.float32)
    style = np.asarray(style, dtype=np.float64)
    if base.ndim != 3 or base.shape[1:] != (8, 8):
        raise ValueError(f"render_digits: base must be (N, 8, 8), got {base.shape}")
    if style.shape != (len(base), len(STYLE)):
        raise ValueError(f"render_digits: style must be (N, {len(STYLE)}) = {STYLE}, got {style.shape}")
    out = np.empty((len(base), 8, 8), dtype=np.float32)
    centre = ((_UP - 1) / 2.0, (_UP - 1) / 2.0)
    for i in range(len(base)):
        up = cv2.resize(base[i], (_UP, _UP), interpolation=cv2.INTER_CUBIC)   # (32, 32)
        up = cv2.GaussianBlur(np.clip(up, 0, 1), (0, 0), 1.2)
        level = 0.55 - 0.42 * float(style[i, 0])           # lower level -> wider strokes
        ink = 1.0 / (1.0 + np.exp(-(up - level) / 0.05))
        rot = cv2.getRotationMatrix2D(centre, float(style[i, 1]), 1.0)
        ink = cv2.warpAffine(ink.astype(np.float32), rot, (_UP, _UP), flags=cv2.INTER_LINEAR,
                             borderValue=0.0)
        out[i] = cv2.resize(ink, (8, 8), interpolation=cv2.INTER_AREA) * float(style[i, 2])
    if noise > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        out += rng.normal(0.0, noise, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def measure_attributes(images: np.ndarray) -> np.ndarray:
    """Attributes measured on images (N, H, W) from image moments, columns as in :data:`MEASURED`.

    ``ink`` is the mean intensity, ``width``/``height`` the spread (2 standard deviations) of ink
    along each axis, ``slant`` the shear ``mu11 / mu02``, ``center_x``/``center_y`` the centroid
    relative to the image centre (pixels).
    """
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape
    out = np.zeros((n, len(MEASURED)), dtype=np.float64)
    for i in range(n):
        m = cv2.moments(images[i])
        mass = max(m["m00"], 1e-9)
        out[i, 0] = images[i].mean()
        out[i, 1] = 2.0 * np.sqrt(max(m["mu20"] / mass, 0.0))
        out[i, 2] = 2.0 * np.sqrt(max(m["mu02"] / mass, 0.0))
        out[i, 3] = m["mu11"] / max(m["mu02"], 1e-9)
        out[i, 4] = m["m10"] / mass - (w - 1) / 2.0
        out[i, 5] = m["m01"] / mass - (h - 1) / 2.0
    return out


@dataclass(frozen=True)
class PlantedBug:
    """A planted label bug: class ``digit`` with ``attribute`` above ``above`` is labelled ``relabel_to``."""

    digit: int
    attribute: str
    above: float
    relabel_to: int

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str = "planted") -> "PlantedBug":
        need = ("digit", "attribute", "above", "relabel_to")
        missing = [k for k in need if k not in spec]
        unknown = sorted(set(spec) - set(need))
        if missing or unknown:
            raise ValueError(f"{where}: needs keys {list(need)}; missing {missing}, unknown {unknown}")
        if spec["attribute"] not in STYLE:
            raise ValueError(f"{where}.attribute: {spec['attribute']!r} is not a style latent {STYLE}")
        if not (0 <= int(spec["digit"]) <= 9 and 0 <= int(spec["relabel_to"]) <= 9):
            raise ValueError(f"{where}: digit and relabel_to must be digits 0-9, got {dict(spec)}")
        if int(spec["digit"]) == int(spec["relabel_to"]):
            raise ValueError(f"{where}: relabel_to equals digit ({spec['digit']}): nothing is planted")
        return cls(int(spec["digit"]), str(spec["attribute"]), float(spec["above"]),
                   int(spec["relabel_to"]))

    def mask(self, y_true: np.ndarray, style: np.ndarray) -> np.ndarray:
        """Which samples lie in the planted subpopulation (whatever their split)."""
        col = STYLE.index(self.attribute)
        return (np.asarray(y_true) == self.digit) & (np.asarray(style)[:, col] > self.above)


class DigitWorldSource(Source):
    """The digits re-rendered ``copies`` times each with random style latents, and a planted bug.

    Splits are drawn over the *base* digits (all copies of one base image fall in one split), so
    no split sees another's handwriting. Outputs per split:

    - ``image`` (N, 8, 8), ``x`` (N, 64): the rendered images;
    - ``y``: the labels as the labeller gave them — with the planted bug applied in
      ``planted_splits`` — and ``y_true`` the true digit;
    - ``style`` (N, 3): the exact latents (:data:`STYLE`), ``attrs`` (N, 9): style then measured
      attributes (:meth:`attribute_names`), ``planted`` (N,) bool: in the planted subpopulation;
    - ``base`` (N,): the row of the base image in the digits data set.

    Parameters
    ----------
    copies : renderings per base digit.
    fractions : split name -> share of the base digits.
    prior : style latent -> (low, high) of its uniform prior.
    planted : ``{digit, attribute, above, relabel_to}`` (see :class:`PlantedBug`) or None.
    planted_splits : splits whose labels carry the bug (the training data).
    noise : pixel noise standard deviation.
    data_seed : fixes the data across study seeds; None resamples with each seed.
    """

    uses_seed = True
    output_kinds = {"image": "image", "x": "array", "y": "array", "y_true": "array",
                    "style": "array", "attrs": "array", "planted": "array", "base": "array"}

    def __init__(self, *, copies: int = 4, fractions: Mapping[str, float] | None = None,
                 prior: Mapping[str, Sequence[float]] | None = None,
                 planted: Mapping[str, Any] | None = None,
                 planted_splits: Sequence[str] = ("train",), noise: float = 0.02,
                 data_seed: int | None = 0):
        self.copies = copies
        self.fractions = fractions
        self.prior = prior
        self.planted = planted
        self.planted_splits = planted_splits
        self.noise = noise
        self.data_seed = data_seed
        if int(copies) < 1:
            raise ValueError(f"DigitWorldSource copies must be >= 1, got {copies}")
        fr = self._fractions()
        if any(v < 0 for v in fr.values()) or sum(fr.values()) > 1.0 + 1e-9:
            raise ValueError(f"DigitWorldSource fractions must be non-negative and sum to at most 1: {fr}")
        for k, (lo, hi) in self._prior().items():
            if not lo <= hi:
                raise ValueError(f"DigitWorldSource prior.{k}: low {lo} > high {hi}")
        self.bug = PlantedBug.from_dict(planted, "DigitWorldSource planted") if planted else None

    # -- configuration helpers ----------------------------------------------------------------
    def _fractions(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in dict(self.fractions or {"train": 0.5, "val": 0.25,
                                                                      "test": 0.25}).items()}

    def _prior(self) -> dict[str, tuple[float, float]]:
        prior = dict(DEFAULT_PRIOR)
        for k, v in dict(self.prior or {}).items():
            if k not in STYLE:
                raise ValueError(f"DigitWorldSource prior: {k!r} is not a style latent {STYLE}")
            prior[k] = (float(v[0]), float(v[1]))
        return prior

    @staticmethod
    def attribute_names() -> list[str]:
        """Names of the ``attrs`` columns: the style latents, then the measured attributes."""
        return list(STYLE) + list(MEASURED)

    def _seed(self, seed: int) -> int:
        return int(seed if self.data_seed is None else self.data_seed)

    def bases(self, split: str, seed: int) -> np.ndarray:
        """Rows of the digits data set whose renderings form ``split``."""
        images, _ = _digits()
        order = split_rng(self._seed(seed), "digit-world").permutation(len(images))
        fr = self._fractions()
        start = 0
        for name in sorted(fr):
            n = int(round(fr[name] * len(images)))
            if name == split:
                return np.sort(order[start:start + n])
            start += n
        raise KeyError(f"DigitWorldSource has no split {split!r} (fractions: {sorted(fr)})")

    # -- the simulator ------------------------------------------------------------------------
    def sample_style(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3) style latents drawn from the prior."""
        prior = self._prior()
        return np.stack([rng.uniform(*prior[k], size=n) for k in STYLE], axis=1)

    def render(self, base: np.ndarray, style: np.ndarray, rng: np.random.Generator | None = None,
               split: str | None = None) -> dict[str, np.ndarray]:
        """All outputs for given base rows and style latents (the planted bug as in ``split``)."""
        images, labels = _digits()
        base = np.asarray(base, dtype=np.int64)
        img = render_digits(images[base], style, noise=self.noise, rng=rng)
        y_true = labels[base]
        planted = self.bug.mask(y_true, style) if self.bug else np.zeros(len(base), dtype=bool)
        y = y_true.copy()
        if self.bug is not None and split in tuple(self.planted_splits):
            y[planted] = self.bug.relabel_to
        attrs = np.concatenate([style, measure_attributes(img)], axis=1)
        return {"image": img, "x": img.reshape(len(img), -1), "y": y, "y_true": y_true,
                "style": style.astype(np.float64), "attrs": attrs, "planted": planted,
                "base": base}

    def load(self, split: str, seed: int) -> dict[str, np.ndarray]:
        import json

        from entangle.hashing import fingerprint
        key = (json.dumps(fingerprint(self.get_params()), sort_keys=True), split, self._seed(seed))
        if key not in _LOADED:
            rows = np.repeat(self.bases(split, seed), int(self.copies))
            rng = split_rng(self._seed(seed), f"digit-world/{split}")
            style = self.sample_style(len(rows), rng)
            if len(_LOADED) >= 8:  # renderings take seconds: keep the last few splits in memory
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[key] = self.render(rows, style, rng=rng, split=split)
        return {k: v.copy() for k, v in _LOADED[key].items()}


_LOADED: dict[tuple, dict[str, np.ndarray]] = {}


# --------------------------------------------------------------------------------------------
# a planted attribute table: a detector that misses objects under low contrast
# --------------------------------------------------------------------------------------------

#: attribute columns of :func:`planted_detection_table`.
DETECTION_ATTRIBUTES = ("distance", "visible_fraction", "contrast", "lighting", "height_px")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def detection_miss_probability(attrs: np.ndarray, *, contrast_below: float | None = 0.25,
                               planted_rate: float = 0.9, natural: float = 1.0) -> np.ndarray:
    """The known miss probability of the planted detector for attribute rows (N, 5).

    A natural failure (far and occluded objects are missed more, scaled by ``natural``) plus a
    planted one: objects with contrast below ``contrast_below`` are missed with probability
    ``planted_rate`` (None plants nothing).
    """
    a = np.asarray(attrs, dtype=np.float64)
    dist, vis = a[:, 0], a[:, 1]
    p = natural * _sigmoid(0.12 * (dist - 45.0) + 4.0 * (0.35 - vis))
    if contrast_below is not None:
        planted = a[:, 2] < contrast_below
        p = np.where(planted, np.maximum(p, planted_rate), p)
    return np.clip(p, 0.0, 1.0)


def sample_detection_attributes(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 5) object attributes from the table's prior (the exact latent of each object)."""
    dist = rng.uniform(4.0, 60.0, n)
    vis = rng.beta(4.0, 1.5, n)
    contrast = rng.uniform(0.0, 1.0, n)
    lighting = rng.uniform(0.2, 1.0, n)
    height = 1.75 * 380.0 / dist * rng.normal(1.0, 0.08, n)   # pixels, falls as 1/distance
    return np.stack([dist, vis, contrast, lighting, height], axis=1)


def embed_detection_attributes(attrs: np.ndarray, *, dim: int = 32, noise: float = 0.3,
                               rng: np.random.Generator | None = None, embed_seed: int = 0) -> np.ndarray:
    """A detector-like embedding (N, dim): a fixed random two-layer map of the attributes plus noise.

    The map is fixed by ``embed_seed`` (the "detector" is the same for every sample); the noise
    (from ``rng``) stands for everything in an object's appearance the attributes do not describe.
    """
    a = np.asarray(attrs, dtype=np.float64)
    scaled = np.stack([a[:, 0] / 30.0, a[:, 1] * 2.0, a[:, 2] * 2.0, a[:, 3] * 2.0,
                       np.log(a[:, 4]) / 2.0], axis=1)                                  # (N, 5)
    wrng = np.random.default_rng(embed_seed)
    w1 = wrng.normal(0, 1.0, (scaled.shape[1], 64))
    b1 = wrng.normal(0, 1.0, 64)
    w2 = wrng.normal(0, 1.0 / 8.0, (64, dim))
    hidden = np.tanh(scaled @ w1 + b1)                                                  # (N, 64)
    emb = hidden @ w2                                                                   # (N, dim)
    rng = rng if rng is not None else np.random.default_rng(1)
    return emb + rng.normal(0, noise * emb.std(), emb.shape)


def planted_detection_table(n: int, seed: int, *, contrast_below: float | None = 0.25,
                            planted_rate: float = 0.9, natural: float = 1.0, dim: int = 32,
                            noise: float = 0.3) -> dict[str, np.ndarray]:
    """A table of ``n`` objects: ``attrs`` (n, 5), ``features`` (n, dim), ``miss`` and ``planted``.

    ``planted`` marks objects in the planted region (contrast below ``contrast_below``); ``miss``
    is drawn from :func:`detection_miss_probability`. The grader asks whether a failure-discovery
    method fitted to ``miss`` on ``features`` recovers ``planted``.
    """
    rng = np.random.default_rng([int(seed), 8])
    attrs = sample_detection_attributes(n, rng)
    p = detection_miss_probability(attrs, contrast_below=contrast_below,
                                   planted_rate=planted_rate, natural=natural)
    miss = rng.random(n) < p
    planted = attrs[:, 2] < contrast_below if contrast_below is not None else np.zeros(n, bool)
    feats = embed_detection_attributes(attrs, dim=dim, noise=noise, rng=rng)
    return {"attrs": attrs, "features": feats, "miss": miss, "planted": planted,
            "names": np.asarray(DETECTION_ATTRIBUTES)}


def one_vs_rest(y: np.ndarray, *, digit: int) -> np.ndarray:
    """Binary target of a one-class detector: 1 where ``y == digit`` (a FunctionNode body)."""
    return (np.asarray(y) == int(digit)).astype(np.int64)
