"""Image corruptions at five severities in the style of ImageNet-C, written with OpenCV and numpy.

Hendrycks & Dietterich (2019) corrupt test images with 15 families at severities 1–5; D'Amour et
al. (2020) use them to show that models equal on i.i.d. data spread widely under stress. This
module implements the families a street-scene or digit pipeline needs — Gaussian noise, motion
and defocus blur, brightness, contrast, fog/haze, JPEG, pixelation — and one stereo-specific
corruption, a photometric mismatch between the left and right cameras.

Images are ``(N, H, W)`` or ``(N, H, W, C)`` arrays, float in ``[0, 1]`` or ``uint8``; the result
has the input's dtype and range. Severity constants follow ImageNet-C (noise, brightness,
contrast, JPEG, pixelation) or CIFAR-10-C (blur radii, in pixels of a 32-pixel image); blur radii
scale with the image's short side above 32 pixels and stay at CIFAR-10-C's values below it
(smaller blurs are sub-pixel and change nothing).

A stereo pair is corrupted *identically* where that is physical — one blur kernel (the rig moves
as one body), one fog field, one JPEG setting — and *independently* for sensor noise (each
camera has its own); ``stereo_mismatch`` changes only the right camera's gain, gamma and offset.

>>> import numpy as np
>>> img = np.full((2, 16, 16), 0.5, dtype=np.float32)
>>> corrupt(img, "contrast", 5).std() <= img.std() + 1e-6
True
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

SEVERITIES = (1, 2, 3, 4, 5)


class CorruptionError(ValueError):
    """An unknown corruption, a severity outside 1–5, or images of the wrong shape."""


@dataclass(frozen=True)
class Corruption:
    """One corruption family member: its function, its family and how it treats a stereo pair.

    ``fn(images, severity, rng) -> images`` works on float32 ``(N, H, W, C)`` in ``[0, 1]``;
    ``pair`` is ``"identical"`` (same random draws for both views), ``"independent"`` (fresh
    draws per view) or ``"right_only"`` (a stereo-only corruption of the right view).
    """

    name: str
    family: str
    fn: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
    pair: str = "identical"

    @property
    def stereo_only(self) -> bool:
        return self.pair == "right_only"


# -- helpers -----------------------------------------------------------------------------------

def _blur_scale(images: np.ndarray) -> float:
    """Pixels per CIFAR-10-C pixel: the short side over 32, at least 1."""
    return max(1.0, min(images.shape[1], images.shape[2]) / 32.0)


def _filter_each(images: np.ndarray, kernels: Sequence[np.ndarray]) -> np.ndarray:
    """Convolve image ``i`` with ``kernels[i]`` (reflected borders), channel by channel."""
    out = np.empty_like(images)
    for i, (img, k) in enumerate(zip(images, kernels)):
        res = cv2.filter2D(img, -1, k.astype(np.float32), borderType=cv2.BORDER_REFLECT)
        out[i] = res.reshape(img.shape)
    return out


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's defocus kernel: an aliased disk smoothed by a small Gaussian."""
    r = int(np.ceil(radius)) + 1
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    k = cv2.GaussianBlur(disk, (3, 3), sigmaX=alias_blur, borderType=cv2.BORDER_CONSTANT)
    return k / k.sum()


@functools.lru_cache(maxsize=1024)
def _motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A line kernel of ``length`` pixels at ``angle_deg`` (sub-pixel ends weighted by coverage)."""
    half = length / 2.0
    size = 2 * int(np.ceil(half)) + 1
    c = size // 2
    k = np.zeros((size, size), dtype=np.float32)
    t = np.linspace(-half, half, max(2, int(np.ceil(length * 8))))
    th = np.deg2rad(angle_deg)
    xs, ys = c + t * np.cos(th), c + t * np.sin(th)
    # bilinear splatting of the sampled line
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = np.clip(x0 + dx, 0, size - 1), np.clip(y0 + dy, 0, size - 1)
        np.add.at(k, (yi, xi), w)
    return k / k.sum()


def _smooth_field(rng: np.random.Generator, h: int, w: int, decay: float) -> np.ndarray:
    """A fog-like random field in [0, 1]: octaves of upsampled noise, amplitude × ``1/decay`` each."""
    field = np.zeros((h, w), dtype=np.float32)
    amp, cells = 1.0, 2
    while cells <= max(h, w) * 2:
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        field += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        amp /= decay
        cells *= 2
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


# -- the corruptions (float32 (N, H, W, C) in [0, 1]) -------------------------------------------

def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, sigma 0.08 … 0.38 (ImageNet-C)."""
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return np.clip(x + sigma * rng.standard_normal(x.shape, dtype=np.float32), 0.0, 1.0)


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur of 2 … 6 px (at 32 px) in a random direction per image."""
    length = (2.0, 3.0, 4.0, 5.0, 6.0)[severity - 1] * _blur_scale(x)
    angles = np.round(rng.uniform(-45.0, 45.0, len(x)))  # whole degrees: kernels are cached
    return np.clip(_filter_each(x, [_motion_kernel(length, float(a)) for a in angles]), 0.0, 1.0)


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Defocus: an aliased disk of radius 0.3 … 1.5 px at 32 px (CIFAR-10-C)."""
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))[severity - 1]
    k = _disk(radius * _blur_scale(x), alias)
    return np.clip(_filter_each(x, [k] * len(x)), 0.0, 1.0)


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Brightness: value (HSV) raised by 0.1 … 0.5 (ImageNet-C)."""
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    if x.shape[-1] != 3:
        return np.clip(x + c, 0.0, 1.0)
    out = np.empty_like(x)
    for i, img in enumerate(x):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0.0, 1.0)
        out[i] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.clip(out, 0.0, 1.0)


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Contrast: deviations from each image's mean scaled by 0.4 … 0.05 (ImageNet-C)."""
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip((x - mean) * c + mean, 0.0, 1.0)


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Fog/haze: a smooth random field added, then rescaled (ImageNet-C's fog constants)."""
    strength, decay = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[severity - 1]
    h, w = x.shape[1:3]
    out = np.empty_like(x)
    for i, img in enumerate(x):
        peak = float(img.max())
        haze = strength * _smooth_field(rng, h, w, decay)[..., None]
        out[i] = (img + haze) * peak / (peak + strength)
    return np.clip(out, 0.0, 1.0)


def jpeg(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG compression at quality 25 … 7 (ImageNet-C), encoded and decoded with OpenCV."""
    quality = (25, 18, 15, 10, 7)[severity - 1]
    u8 = np.round(x * 255.0).astype(np.uint8)
    out = np.empty_like(x)
    for i, img in enumerate(u8):
        src = img[..., 0] if img.shape[-1] == 1 else img
        ok, buf = cv2.imencode(".jpg", src, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise CorruptionError(f"OpenCV could not JPEG-encode image {i} of shape {img.shape}")
        dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        out[i] = dec.reshape(img.shape).astype(np.float32) / 255.0
    return out


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Pixelation: area-downsampled by 0.6 … 0.25 and blown up again (ImageNet-C)."""
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = x.shape[1:3]
    small = (max(1, int(round(w * c))), max(1, int(round(h * c))))
    out = np.empty_like(x)
    for i, img in enumerate(x):
        down = cv2.resize(img, small, interpolation=cv2.INTER_AREA)
        out[i] = cv2.resize(down, (w, h), interpolation=cv2.INTER_NEAREST).reshape(img.shape)
    return out


def stereo_mismatch(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Right-camera photometric mismatch: gain 0.95 … 0.7, gamma 1.05 … 1.5, offset 0.02 … 0.1."""
    gain, gamma, offset = ((0.95, 1.05, 0.02), (0.9, 1.1, 0.04), (0.85, 1.2, 0.06),
                           (0.8, 1.3, 0.08), (0.7, 1.5, 0.10))[severity - 1]
    return np.clip(gain * np.power(x, gamma) + offset, 0.0, 1.0).astype(np.float32)


#: every corruption by name; ``family`` groups them as ImageNet-C does (plus ``stereo``).
CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("gaussian_noise", "noise", gaussian_noise, pair="independent"),
    Corruption("motion_blur", "blur", motion_blur),
    Corruption("defocus_blur", "blur", defocus_blur),
    Corruption("brightness", "weather", brightness),
    Corruption("fog", "weather", fog),
    Corruption("contrast", "digital", contrast),
    Corruption("jpeg", "digital", jpeg),
    Corruption("pixelate", "digital", pixelate),
    Corruption("stereo_mismatch", "stereo", stereo_mismatch, pair="right_only"),
)}


def get(name: str, option: str = "corruptions") -> Corruption:
    """The corruption called ``name``; the error names the option and the known names."""
    if name not in CORRUPTIONS:
        import difflib
        close = difflib.get_close_matches(str(name), list(CORRUPTIONS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CorruptionError(f"unknown corruption {name!r} in option {option!r}{hint}; "
                              f"known: {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name]


def check_severity(severity: object, option: str = "severities") -> int:
    """``severity`` as an int in 1–5, or a :class:`CorruptionError` naming the option."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) \
            or not 1 <= int(severity) <= 5:
        raise CorruptionError(f"severity must be an integer from 1 to 5 (option {option!r}), "
                              f"got {severity!r}")
    return int(severity)


def check_names(names: Iterable[str], option: str = "corruptions") -> list[str]:
    """Validate a list of corruption names (every unknown name reported together)."""
    names = list(names)
    bad = [n for n in names if n not in CORRUPTIONS]
    if bad:
        raise CorruptionError(f"unknown corruption(s) {bad} in option {option!r}; "
                              f"known: {', '.join(CORRUPTIONS)}")
    return names


def _to_float(images: np.ndarray, what: str) -> tuple[np.ndarray, object, bool]:
    """``(N, H, W, C)`` float32 in [0, 1], the input dtype, and whether a channel axis was added."""
    a = np.asarray(images)
    if a.ndim not in (3, 4) or a.shape[0] == 0:
        raise CorruptionError(f"{what} must be (N, H, W) or (N, H, W, C) images, got shape {a.shape}")
    squeeze = a.ndim == 3
    if squeeze:
        a = a[..., None]
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif a.dtype.kind == "f":
        f = a.astype(np.float32)
        lo, hi = float(np.nanmin(f)), float(np.nanmax(f))
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise CorruptionError(f"{what} are floats in [{lo:.3g}, {hi:.3g}]; corruptions expect "
                                  "[0, 1] floats or uint8 images")
        f = np.clip(f, 0.0, 1.0)
    else:
        raise CorruptionError(f"{what} have dtype {a.dtype}; expected uint8 or float in [0, 1]")
    return np.ascontiguousarray(f), a.dtype, squeeze


def _from_float(f: np.ndarray, dtype, squeeze: bool) -> np.ndarray:
    f = np.clip(f, 0.0, 1.0)
    out = np.round(f * 255.0).astype(np.uint8) if dtype == np.uint8 else f.astype(dtype)
    return out[..., 0] if squeeze else out


def _rng(seed: int, name: str, severity: int) -> np.random.Generator:
    import zlib
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(severity)])


def corrupt(images: np.ndarray, name: str, severity: int, *, seed: int = 0) -> np.ndarray:
    """``images`` corrupted by ``name`` at ``severity`` (1–5); same seed, same corruption.

    Raises :class:`CorruptionError` for an unknown name, a severity outside 1–5, a
    stereo-only corruption (use :func:`corrupt_pair`) or images of the wrong shape.
    """
    c = get(name, "corruption")
    sev = check_severity(severity, "severity")
    if c.stereo_only:
        raise CorruptionError(f"corruption {name!r} needs a stereo pair: use corrupt_pair(left, right, ...)")
    f, dtype, squeeze = _to_float(images, "images")
    return _from_float(c.fn(f, sev, _rng(seed, name, sev)), dtype, squeeze)


def corrupt_pair(left: np.ndarray, right: np.ndarray, name: str, severity: int, *,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stereo pair corrupted consistently: identical draws where physical, per camera for noise."""
    c = get(name, "corruption")
    sev = check_severity(severity, "severity")
    if np.shape(left) != np.shape(right):
        raise CorruptionError(f"left and right views differ in shape: {np.shape(left)} vs {np.shape(right)}")
    fl, dtype_l, sq = _to_float(left, "left images")
    fr, dtype_r, _ = _to_float(right, "right images")
    if c.pair == "right_only":
        return _from_float(fl, dtype_l, sq), _from_float(c.fn(fr, sev, _rng(seed, name, sev)), dtype_r, sq)
    if c.pair == "independent":
        out_l = c.fn(fl, sev, _rng(seed, name + "/left", sev))
        out_r = c.fn(fr, sev, _rng(seed, name + "/right", sev))
    else:  # identical: the same generator state for both views
        out_l = c.fn(fl, sev, _rng(seed, name, sev))
        out_r = c.fn(fr, sev, _rng(seed, name, sev))
    return _from_float(out_l, dtype_l, sq), _from_float(out_r, dtype_r, sq)
