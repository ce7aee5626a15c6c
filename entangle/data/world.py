"""The synthetic stereo street world: scene parameters, a sampler, a ray-cast renderer, a writer.

A scene is a street seen by a rectified stereo rig with KITTI's geometry (focal length scaled to
the image width, baseline 0.54 m, camera 1.65 m above the ground): a textured road with lane
markings, sidewalks, building facades along both sides and across the far end, sky above them,
and cars and pedestrians as textured boxes (a car is a body and a cabin, a pedestrian legs,
torso and head). Both views are ray cast from the same :class:`SceneParams`, so the stereo pair
and the ground truth (disparity, depth, boxes, occlusion, truncation) are exact; the sky has no
depth and is marked invalid (disparity 0), as in KITTI.

Everything is vectorised numpy: each surface is intersected with the rays of the pixels its
projection can cover, a z-buffer keeps the nearest, and textures are sampled from band-limited
mip-maps with OpenCV's ``remap`` so far surfaces do not alias (aliasing would not be
stereo-consistent and would make matching artificially hard).

:class:`SceneParams` is the exact latent description of an image: it is stored with each scene
(``attributes/ID.json``) together with per-object attributes (distance, visible fraction,
contrast, lighting), so analyses can be graded against the truth.
"""

from __future__ import annotations

import colorsys
import functools
import json
import logging
import math
import multiprocessing as mp
import shutil
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import scipy.ndimage
from tqdm.auto import tqdm

from entangle.data.kitti import (Calib, Object3D, Sample, difficulty, disparity_to_depth,
                                 quantize_disparity, write_sample)

log = logging.getLogger(__name__)

#: bumped whenever rendering changes the pixels a given seed produces.
WORLD_VERSION = "1"
#: the sub-folders of ``training/`` that :func:`generate` writes.
WORLD_FOLDERS = ("image_2", "image_3", "calib", "label_2", "disp_occ_2", "disp_noc_2",
                 "instance_2", "attributes")
CLASSES = ("Car", "Pedestrian")


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CameraConfig:
    """Rig geometry: KITTI's camera 2/3 scaled to a smaller image (half of KITTI's f·B)."""

    height: int = 192                  # image rows
    width: int = 624                   # image columns (KITTI 1242×375 is 3.3:1; half its width)
    kitti_focal: float = 721.5377      # KITTI P2 focal length (px) at kitti_width
    kitti_width: int = 1242
    cx_frac: float = 0.4908            # principal point as a fraction of width/height (KITTI P2)
    cy_frac: float = 0.4609
    baseline: float = 0.54             # metres between cameras 2 and 3
    cam2_offset: float = 0.06          # camera 2 sits this far left of the reference camera 0
    mount_height: float = 1.65         # metres above the ground

    @property
    def focal(self) -> float:
        return self.kitti_focal * self.width / self.kitti_width


@dataclass(frozen=True)
class StreetConfig:
    """Street layout (metres): road, sidewalks, facades, the far wall."""

    road_width: tuple[float, float] = (7.0, 14.0)
    camera_margin: float = 1.5            # least distance of the camera from a road edge
    setback: tuple[float, float] = (2.0, 10.0)   # road edge to facade, per side
    block_length: tuple[float, float] = (8.0, 30.0)
    building_height: tuple[float, float] = (4.0, 25.0)
    end_wall_distance: tuple[float, float] = (80.0, 140.0)
    end_wall_height: tuple[float, float] = (6.0, 30.0)
    lane_width: float = 3.5
    window_spacing: tuple[float, float] = (2.0, 4.0)
    floor_height: tuple[float, float] = (2.8, 3.6)
    brightness: tuple[float, float] = (0.08, 0.6)   # facade/ground albedo
    texture_contrast: tuple[float, float] = (0.15, 0.45)


@dataclass(frozen=True)
class ObjectClassConfig:
    """Count, distance, size, placement and appearance distributions of one class."""

    count_mean: float = 4.0               # Poisson mean of objects per scene
    count_max: int = 12
    distance: tuple[float, float] = (4.0, 80.0)  # z range of the box centre (m)
    distance_beta: tuple[float, float] = (1.16, 2.52)  # z = lo + (hi - lo) * Beta(a, b)
    size_mean: tuple[float, float, float] = (1.53, 1.63, 3.88)  # h, w, l (KITTI means)
    size_std: tuple[float, float, float] = (0.10, 0.08, 0.35)
    placement: tuple[float, float, float] = (0.5, 0.4, 0.1)
    yaw_std: float = 0.08                 # radians around the street direction
    brightness: tuple[float, float] = (0.02, 0.7)   # albedo (luminance), log-uniform
    saturation: tuple[float, float] = (0.0, 0.7)
    texture_contrast: tuple[float, float] = (0.08, 0.35)
    margin: float = 0.5                   # least gap to other objects' footprints (m)


def _car_defaults() -> ObjectClassConfig:
    return ObjectClassConfig()


def _pedestrian_defaults() -> ObjectClassConfig:
    return ObjectClassConfig(count_mean=3.0, count_max=8, distance=(4.0, 50.0),
                             distance_beta=(1.5, 4.0), size_mean=(1.76, 0.66, 0.84),
                             size_std=(0.11, 0.08, 0.15), placement=(0.7, 0.3, 0.0),
                             yaw_std=math.pi, brightness=(0.02, 0.6), saturation=(0.0, 0.6),
                             texture_contrast=(0.08, 0.4), margin=0.2)


@dataclass(frozen=True)
class LightingConfig:
    exposure: tuple[float, float] = (0.6, 1.4)
    ambient: tuple[float, float] = (0.25, 0.6)
    sun_elevation_deg: tuple[float, float] = (15.0, 70.0)
    shadow_prob: float = 0.3              # chance an object stands in a building's shadow
    shadow_factor: tuple[float, float] = (0.3, 0.7)


@dataclass(frozen=True)
class SensorConfig:
    noise_std: tuple[float, float] = (0.5, 3.0)  # Gaussian noise in 8-bit steps, per scene
    right_gain_std: float = 0.03          # relative exposure difference of the right camera
    blur_sigma: float = 0.5               # optics blur (px)


@dataclass(frozen=True)
class TextureConfig:
    seed: int = 20211206                  # the texture bank is part of the world's definition
    count: int = 16
    size: int = 256


@dataclass(frozen=True)
class LabelConfig:
    dontcare_below_px: float = 5.0        # visible objects with a lower 2D box become DontCare
    occlusion_thresholds: tuple[float, float] = (0.1, 0.5)  # hidden share -> occluded 1, 2


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines the world's distributions (``conf/data/world.yaml``).

    ``car.placement`` is (driving in a lane, parked at the kerb, random yaw on the road);
    ``pedestrian.placement`` is (sidewalk, road, unused). ``splits`` are the train/val/test
    fractions :func:`generate` writes to ``ImageSets``.
    """

    camera: CameraConfig = field(default_factory=CameraConfig)
    street: StreetConfig = field(default_factory=StreetConfig)
    car: ObjectClassConfig = field(default_factory=_car_defaults)
    pedestrian: ObjectClassConfig = field(default_factory=_pedestrian_defaults)
    lighting: LightingConfig = field(default_factory=LightingConfig)
    sensor: SensorConfig = field(default_factory=SensorConfig)
    texture: TextureConfig = field(default_factory=TextureConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    splits: tuple[float, float, float] = (0.45, 0.10, 0.45)

    def __post_init__(self) -> None:
        _validate(self, "world")
        if abs(sum(self.splits) - 1.0) > 1e-6 or min(self.splits) < 0:
            raise ValueError(f"world.splits must be 3 non-negative fractions summing to 1, "
                             f"got {self.splits}")
        for name in ("car", "pedestrian"):
            p = getattr(self, name).placement
            if abs(sum(p) - 1.0) > 1e-6 or min(p) < 0:
                raise ValueError(f"world.{name}.placement must sum to 1, got {p}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "WorldConfig":
        """Build from a (Hydra) mapping; unknown keys raise naming their full path."""
        if data is not None and not isinstance(data, Mapping):
            from omegaconf import OmegaConf
            data = OmegaConf.to_container(data, resolve=True)
        return _build(cls, dict(data or {}), "world")

    def to_dict(self) -> dict:
        return _plain(self)


def _validate(obj: Any, where: str) -> None:
    """Ranges must be ordered: every 2-tuple field named like a range has lo <= hi."""
    for f in fields(obj):
        v = getattr(obj, f.name)
        if is_dataclass(v):
            _validate(v, f"{where}.{f.name}")
        elif (isinstance(v, tuple) and len(v) == 2 and f.name not in ("distance_beta",)
              and v[0] > v[1]):
            raise ValueError(f"{where}.{f.name} must be [low, high] with low <= high, got {list(v)}")


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {names}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        value, hint, key = data[name], hints[name], f"{where}.{name}"
        try:
            if is_dataclass(hint):
                if not isinstance(value, Mapping):
                    raise TypeError(f"expected a mapping, got {value!r}")
                kwargs[name] = _build(hint, dict(value), key)
            elif typing.get_origin(hint) is tuple:
                args = typing.get_args(hint)
                if len(value) != len(args):
                    raise TypeError(f"expected {len(args)} values, got {list(value)}")
                kwargs[name] = tuple(a(v) for a, v in zip(args, value))
            else:
                kwargs[name] = hint(value)
        except (TypeError, ValueError) as err:
            if isinstance(err, ValueError) and str(err).startswith(key):
                raise
            raise ValueError(f"{key}: {err}") from err
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# scene parameters: the exact latent description of an image
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Material:
    """A textured surface: bank texture, metres per texel, offset, linear RGB albedo, contrast."""

    texture: int
    texel: float
    offset: tuple[float, float]
    albedo: tuple[float, float, float]
    contrast: float


@dataclass(frozen=True)
class Block:
    """A building along one side between ``z0`` and ``z1`` (the far wall has z0 == z1)."""

    z0: float
    z1: float
    height: float
    material: Material
    window_spacing: float
    floor_height: float


@dataclass(frozen=True)
class ObjectParams:
    """One object: class, bottom centre (x, z) on the ground, size h/w/l, yaw, appearance.

    ``materials`` are per part (car: body, windows; pedestrian: legs, torso, head); ``shade``
    is the share of sunlight reaching the object (1 in the sun, lower in a building's shadow).
    """

    cls: str
    x: float
    z: float
    h: float
    w: float
    l: float
    ry: float
    materials: tuple[Material, ...]
    shade: float


@dataclass(frozen=True)
class SceneParams:
    """The exact latent description of one scene (everything the renderer reads).

    Coordinates are the rectified reference-camera frame (x right, y down, z forward, metres);
    the ground is the plane ``y = mount_height``.
    """

    road: tuple[float, float]            # x of the road's left and right edges
    facades: tuple[float, float]         # x of the left and right facade planes
    left_blocks: tuple[Block, ...]
    right_blocks: tuple[Block, ...]
    end_wall: Block
    road_material: Material
    sidewalk_material: Material
    lane_lines: tuple[float, ...]        # x of dashed lane separators
    sun: tuple[float, float, float]      # unit vector towards the sun
    ambient: float
    exposure: float
    sky: tuple[float, float, float]
    right_gain: float
    noise_std: float
    noise_seed: int
    objects: tuple[ObjectParams, ...]

    def to_dict(self) -> dict:
        """JSON-ready nested dict (tuples become lists)."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SceneParams":
        """Inverse of :meth:`to_dict` (reads the ``scene`` entry of a side file)."""
        return _scene_from(cls, data)


def _plain(value: Any) -> Any:
    """Dataclasses to dicts and tuples to lists, recursively (``asdict`` is 10x slower)."""
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _scene_from(tp: Any, value: Any) -> Any:
    if is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _scene_from(hints[f.name], value[f.name]) for f in fields(tp)})
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_scene_from(args[0], v) for v in value)
        return tuple(_scene_from(a, v) for a, v in zip(args, value))
    return tp(value)


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------

def _uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def _log_uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(r[0]), math.log(r[1]))))


def _material(rng: np.random.Generator, cfg: WorldConfig, texel: float,
              brightness: tuple[float, float], saturation: tuple[float, float],
              contrast: tuple[float, float], log_brightness: bool = False) -> Material:
    lum = _log_uniform(rng, brightness) if log_brightness else _uniform(rng, brightness)
    r, g, b = colorsys.hsv_to_rgb(float(rng.uniform()), _uniform(rng, saturation), 1.0)
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    albedo = tuple(float(min(1.0, c * lum / y)) for c in (r, g, b))
    return Material(texture=int(rng.integers(cfg.texture.count)), texel=texel,
                    offset=(float(rng.uniform(0, 100)), float(rng.uniform(0, 100))),
                    albedo=albedo, contrast=_uniform(rng, contrast))


def _blocks(rng: np.random.Generator, cfg: WorldConfig, z_end: float) -> tuple[Block, ...]:
    st = cfg.street
    blocks, z = [], 0.0
    while z < z_end:
        z1 = min(z_end, z + _uniform(rng, st.block_length))
        mat = _material(rng, cfg, 0.06, st.brightness, (0.0, 0.35), st.texture_contrast)
        blocks.append(Block(z0=z, z1=z1, height=_uniform(rng, st.building_height), material=mat,
                            window_spacing=_uniform(rng, st.window_spacing),
                            floor_height=_uniform(rng, st.floor_height)))
        z = z1
    return tuple(blocks)


def _footprint(x: float, z: float, w: float, l: float, ry: float, margin: float):
    """BEV rotated rectangle in (x, z) for OpenCV, grown by ``margin`` on each side."""
    return ((x, z), (l + 2 * margin, w + 2 * margin), math.degrees(-ry))


def _overlaps(rect, others) -> bool:
    for other in others:
        kind, _ = cv2.rotatedRectangleIntersection(rect, other)
        if kind != cv2.INTERSECT_NONE:
            return True
    return False


def _place(rng: np.random.Generator, cls: str, cc: ObjectClassConfig, road, facades,
           lanes_x: list[float]) -> tuple[float, float]:
    """Sample (x, ry) for one object of ``cls`` given the street."""
    kind = int(rng.choice(3, p=np.asarray(cc.placement)))
    if cls == "Car":
        if kind == 0 and lanes_x:          # driving in a lane, either direction
            x = float(rng.choice(lanes_x)) + float(rng.normal(0, 0.3))
            ry = math.copysign(math.pi / 2, rng.uniform(-1, 1)) + float(rng.normal(0, cc.yaw_std))
        elif kind <= 1:                    # parked at either kerb
            left = rng.uniform() < 0.5
            x = road[0] + 1.0 if left else road[1] - 1.0
            ry = math.copysign(math.pi / 2, rng.uniform(-1, 1)) + float(rng.normal(0, cc.yaw_std))
        else:                              # anywhere on the road, any heading
            x, ry = float(rng.uniform(road[0] + 1, road[1] - 1)), float(rng.uniform(-math.pi, math.pi))
    else:
        if kind == 0:                      # on a sidewalk
            left = rng.uniform() < 0.5
            lo, hi = (facades[0] + 0.5, road[0] - 0.3) if left else (road[1] + 0.3, facades[1] - 0.5)
            x = float(rng.uniform(lo, max(lo, hi)))
        else:                              # crossing or walking on the road
            x = float(rng.uniform(road[0] + 0.5, road[1] - 0.5))
        ry = float(rng.uniform(-math.pi, math.pi))
    ry = math.atan2(math.sin(ry), math.cos(ry))
    return x, ry


def _sample_objects(rng: np.random.Generator, cfg: WorldConfig, road, facades,
                    lanes_x: list[float], lighting: LightingConfig) -> tuple[ObjectParams, ...]:
    objects: list[ObjectParams] = []
    rects: list = []
    for cls, cc in (("Car", cfg.car), ("Pedestrian", cfg.pedestrian)):
        n = min(int(rng.poisson(cc.count_mean)), cc.count_max)
        for _ in range(n):
            for _attempt in range(20):
                size = np.asarray(cc.size_mean) + np.asarray(cc.size_std) * np.clip(
                    rng.standard_normal(3), -2, 2)
                h, w, l = (float(s) for s in size)
                z = cc.distance[0] + (cc.distance[1] - cc.distance[0]) * float(
                    rng.beta(*cc.distance_beta))
                x, ry = _place(rng, cls, cc, road, facades, lanes_x)
                if cls == "Car" and abs(abs(ry) - math.pi / 2) < 0.5:
                    # parked cars keep their kerb-side flank at the kerb
                    x = min(max(x, road[0] + w / 2 + 0.2), road[1] - w / 2 - 0.2)
                rect = _footprint(x, z, w, l, ry, cc.margin)
                corners = cv2.boxPoints(_footprint(x, z, w, l, ry, 0.0))
                inside = (corners[:, 0].min() > facades[0] + 0.1
                          and corners[:, 0].max() < facades[1] - 0.1
                          and corners[:, 1].min() > 2.0)
                if inside and not _overlaps(rect, rects):
                    break
            else:
                continue  # no free spot: the scene gets one object fewer
            rects.append(rect)
            if cls == "Car":
                mats = (_material(rng, cfg, 0.03, cc.brightness, cc.saturation, cc.texture_contrast,
                                  log_brightness=True),
                        _material(rng, cfg, 0.03, (0.02, 0.12), (0.0, 0.25), (0.05, 0.2)))
            else:
                skin = _material(rng, cfg, 0.02, (0.1, 0.5), (0.25, 0.5), (0.05, 0.15))
                mats = (_material(rng, cfg, 0.02, cc.brightness, cc.saturation, cc.texture_contrast,
                                  log_brightness=True),
                        _material(rng, cfg, 0.02, cc.brightness, cc.saturation, cc.texture_contrast,
                                  log_brightness=True),
                        replace(skin, albedo=(skin.albedo[0], skin.albedo[0] * 0.8,
                                              skin.albedo[0] * 0.65)))
            shade = (_uniform(rng, lighting.shadow_factor)
                     if rng.uniform() < lighting.shadow_prob else 1.0)
            objects.append(ObjectParams(cls=cls, x=x, z=z, h=h, w=w, l=l, ry=ry,
                                        materials=mats, shade=shade))
    return tuple(objects)


def sample_scene(rng: np.random.Generator, cfg: WorldConfig) -> SceneParams:
    """Draw one scene from the world's distributions (all randomness comes from ``rng``)."""
    st, li = cfg.street, cfg.lighting
    width = _uniform(rng, st.road_width)
    cam = _uniform(rng, (st.camera_margin, max(st.camera_margin, width - st.camera_margin)))
    road = (-cam, width - cam)
    facades = (road[0] - _uniform(rng, st.setback), road[1] + _uniform(rng, st.setback))
    n_lanes = max(1, int(width // st.lane_width))
    lane_w = width / n_lanes
    lane_lines = tuple(road[0] + k * lane_w for k in range(1, n_lanes))
    lanes_x = [road[0] + (k + 0.5) * lane_w for k in range(n_lanes)]
    z_end = _uniform(rng, st.end_wall_distance)
    left, right = _blocks(rng, cfg, z_end), _blocks(rng, cfg, z_end)
    end_wall = Block(z0=z_end, z1=z_end, height=_uniform(rng, st.end_wall_height),
                     material=_material(rng, cfg, 0.06, st.brightness, (0.0, 0.35),
                                        st.texture_contrast),
                     window_spacing=_uniform(rng, st.window_spacing),
                     floor_height=_uniform(rng, st.floor_height))
    road_mat = _material(rng, cfg, 0.04, (0.04, 0.2), (0.0, 0.1), st.texture_contrast)
    side_mat = _material(rng, cfg, 0.04, st.brightness, (0.0, 0.2), st.texture_contrast)
    elev = math.radians(_uniform(rng, li.sun_elevation_deg))
    azim = float(rng.uniform(-math.pi, math.pi))
    sun = (math.cos(elev) * math.sin(azim), -math.sin(elev), math.cos(elev) * math.cos(azim))
    exposure = _uniform(rng, li.exposure)
    sky_b = float(rng.uniform(0.5, 1.0))
    sky = (0.75 * sky_b, 0.85 * sky_b, sky_b)
    objects = _sample_objects(rng, cfg, road, facades, lanes_x, li)
    return SceneParams(
        road=road, facades=facades, left_blocks=left, right_blocks=right, end_wall=end_wall,
        road_material=road_mat, sidewalk_material=side_mat, lane_lines=lane_lines, sun=sun,
        ambient=_uniform(rng, li.ambient), exposure=exposure, sky=sky,
        right_gain=float(1.0 + rng.normal(0, cfg.sensor.right_gain_std)),
        noise_std=_uniform(rng, cfg.sensor.noise_std), noise_seed=int(rng.integers(2 ** 31)),
        objects=objects)


# --------------------------------------------------------------------------------------------
# textures
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def texture_bank(seed: int, count: int, size: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """Tileable band-limited noise textures, each as a mip pyramid (level k is size/2^k).

    Spectral synthesis (power law with random exponent and anisotropy) gives periodic textures;
    each coarser level is the exact low-pass of the finer one (its Fourier spectrum cropped), so
    sampling the level that matches a pixel's footprint never aliases. Level 0 has unit std.
    """
    rng = np.random.default_rng(seed)
    freqs = np.fft.fftfreq(size) * size  # cycles per tile
    ky, kx = np.meshgrid(freqs, freqs, indexing="ij")
    bank = []
    for _ in range(count):
        beta = rng.uniform(0.7, 1.6)
        ax, ay = np.exp(rng.uniform(-0.7, 0.7, size=2))
        k = np.sqrt((kx * ax) ** 2 + (ky * ay) ** 2)
        k[0, 0] = np.inf
        amp = k ** (-beta)
        spec = np.fft.fft2(rng.standard_normal((size, size))) * amp
        base = np.real(np.fft.ifft2(spec))
        base /= base.std()
        spec = np.fft.fftshift(np.fft.fft2(base))
        levels, n = [], size
        while n >= 8:
            c0 = (size - n) // 2
            crop = np.fft.ifftshift(spec[c0:c0 + n, c0:c0 + n])
            levels.append(np.ascontiguousarray(
                np.real(np.fft.ifft2(crop)) * (n / size) ** 2, dtype=np.float32))
            n //= 2
        bank.append(tuple(levels))
    return tuple(bank)


class TextureAtlas:
    """All textures and mip levels packed in one image, each tile with a 1-texel wrap border.

    Packing lets one ``cv2.remap`` call sample every pixel of a view at its own texture and
    level (two calls for trilinear filtering) instead of one call per texture and level.
    """

    def __init__(self, bank: tuple[tuple[np.ndarray, ...], ...]) -> None:
        count, n_levels = len(bank), len(bank[0])
        sizes = [bank[0][k].shape[0] for k in range(n_levels)]
        self.sizes = np.array(sizes, dtype=np.float32)
        self.inv_scale = np.exp2(-np.arange(n_levels)).astype(np.float32)
        self.y0 = np.concatenate([[0], np.cumsum([n + 2 for n in sizes])[:-1]]).astype(np.float32)
        self.x0 = np.array([[j * (n + 2) for n in sizes] for j in range(count)], dtype=np.float32)
        self.top = n_levels - 1
        atlas = np.zeros((int(sum(n + 2 for n in sizes)), count * (sizes[0] + 2)), np.float32)
        for j, pyramid in enumerate(bank):
            for k, img in enumerate(pyramid):
                n = img.shape[0]
                y, x = int(self.y0[k]), int(self.x0[j, k])
                atlas[y:y + n + 2, x:x + n + 2] = np.pad(img, 1, mode="wrap")
        self.image = atlas

    def sample(self, texture: np.ndarray, cu: np.ndarray, cv: np.ndarray,
               level: np.ndarray) -> np.ndarray:
        """Trilinear samples at base-texel coordinates (cu, cv) and fractional mip ``level``."""
        level = np.clip(level, 0.0, self.top).astype(np.float32)
        lo = level.astype(np.int32)  # floor: level >= 0
        n_levels = self.top + 1
        x0 = self.x0.ravel()
        out = []
        for k in (lo, np.minimum(lo + 1, self.top)):
            n = np.take(self.sizes, k)
            inv = np.take(self.inv_scale, k)
            mu = _wrap((cu + 0.5) * inv - 0.5, n) + np.take(x0, texture * n_levels + k) + 1.0
            mv = _wrap((cv + 0.5) * inv - 0.5, n) + np.take(self.y0, k) + 1.0
            out.append(_remap_flat(self.image, mu, mv))
        frac = level - lo
        return out[0] + frac * (out[1] - out[0])


def _wrap(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``x mod n`` into [0, n) (faster than ``np.mod`` for float32)."""
    return x - np.floor(x / n) * n


def _remap_flat(image: np.ndarray, mu: np.ndarray, mv: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at N points (maps folded to rows of 256: remap caps rows)."""
    n = mu.size
    pad = (-n) % 256
    maps = [np.concatenate([a.astype(np.float32), np.zeros(pad, np.float32)]).reshape(-1, 256)
            for a in (mu, mv)]
    return cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR).ravel()[:n]


@functools.lru_cache(maxsize=4)
def texture_atlas(seed: int, count: int, size: int) -> TextureAtlas:
    """The packed :func:`texture_bank` (cached per process)."""
    return TextureAtlas(texture_bank(seed, count, size))


def _pulse_coverage(x: np.ndarray, period: float, width: float, footprint: np.ndarray) -> np.ndarray:
    """Box-filtered periodic pulse: share of [x - fp/2, x + fp/2] inside pulses [kP, kP + width).

    Exact anti-aliasing of windows and lane dashes for any pixel footprint.
    """
    fp = np.maximum(footprint, 1e-4)

    def integral(t):
        k = np.floor(t / period)
        return k * width + np.clip(t - k * period, 0.0, width)

    return (integral(x + fp / 2) - integral(x - fp / 2)) / fp


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

#: material kinds: plain, road (lane markings), facade (windows)
_PLAIN, _ROAD, _FACADE = 0, 1, 2


def _yaw_matrix(ry: float) -> np.ndarray:
    c, s = math.cos(ry), math.sin(ry)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def object_parts(obj: ObjectParams, ground_y: float) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """The boxes an object is drawn with: (centre (3,), half extents (3,), material index).

    Local axes follow KITTI: x along the length, y down, z along the width. Every part lies
    inside the object's label box.
    """
    h, w, l = obj.h, obj.w, obj.l
    R = _yaw_matrix(obj.ry)
    if obj.cls == "Car":
        # (x offset, bottom, top, length, width) as fractions of l/h/w
        spec = [(0.0, 0.0, 0.55, 1.0, 1.0, 0), (-0.06, 0.55, 1.0, 0.55, 0.86, 1)]
    else:
        spec = [(0.0, 0.0, 0.48, 0.8, 0.55, 0), (0.0, 0.48, 0.86, 0.45, 1.0, 1),
                (0.0, 0.87, 1.0, 0.3, 0.34, 2)]
    parts = []
    for dx, b, t, fl, fw, m in spec:
        local = np.array([dx * l, -(b + t) / 2 * h, 0.0])
        centre = np.array([obj.x, ground_y, obj.z]) + R @ local
        half = np.array([fl * l / 2, (t - b) * h / 2, fw * w / 2])
        parts.append((centre, half, m))
    return parts


class _Materials:
    """Per-scene material table as arrays indexed by material id."""

    def __init__(self) -> None:
        self.items: list[tuple[Material, int, float, float]] = []
        self._arrays: dict[str, np.ndarray] | None = None

    def add(self, m: Material, kind: int = _PLAIN, spacing: float = 1.0, floor: float = 1.0) -> int:
        self.items.append((m, kind, spacing, floor))
        return len(self.items) - 1

    def arrays(self) -> dict[str, np.ndarray]:
        # a last, flat dummy entry is what sky pixels read
        items = self.items + [(Material(0, 1.0, (0.0, 0.0), (0.0, 0.0, 0.0), 0.0), _PLAIN, 1.0, 1.0)]
        ms = [it[0] for it in items]
        f32 = np.float32
        return {
            "texture": np.array([m.texture for m in ms], dtype=np.int64),
            "texel": np.array([m.texel for m in ms], f32),
            "offset_u": np.array([m.offset[0] for m in ms], f32),
            "offset_v": np.array([m.offset[1] for m in ms], f32),
            "albedo": np.array([m.albedo for m in ms], f32),
            "contrast": np.array([m.contrast for m in ms], f32),
            "kind": np.array([it[1] for it in items], dtype=np.int64),
            "spacing": np.array([it[2] for it in items], f32),
            "floor": np.array([it[3] for it in items], f32),
        }


@functools.lru_cache(maxsize=8)
def _ray_directions(cam: CameraConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ray slopes (x/z, y/z), flat (H*W,): the same for both cameras of the rig."""
    H, W = cam.height, cam.width
    u = (np.arange(W) - cam.cx_frac * W) / cam.focal
    v = (np.arange(H) - cam.cy_frac * H) / cam.focal
    dx, dy = np.tile(u, H), np.repeat(v, W)
    dx.setflags(write=False)
    dy.setflags(write=False)
    return dx, dy


class _View:
    """Z-buffer and per-pixel surface data of one camera (flat arrays of H*W pixels)."""

    def __init__(self, cam: CameraConfig, cam_x: float) -> None:
        H, W = cam.height, cam.width
        self.H, self.W, self.f = H, W, cam.focal
        self.cx, self.cy = cam.cx_frac * W, cam.cy_frac * H
        self.C = np.array([cam_x, 0.0, 0.0])
        n = H * W
        self.depth = np.full(n, np.inf)
        self.mat = np.full(n, -1, dtype=np.int64)
        self.obj = np.full(n, -1, dtype=np.int64)
        self.tu = np.zeros(n, np.float32)
        self.tv = np.zeros(n, np.float32)
        self.fpu = np.ones(n, np.float32)
        self.fpv = np.ones(n, np.float32)
        self.light = np.zeros(n, np.float32)
        self.dx, self.dy = _ray_directions(cam)

    def write(self, idx: np.ndarray, t: np.ndarray, mat, tu, tv, fpu, fpv, light, obj=-1) -> None:
        """Keep the candidate hits (pixel ``idx`` at depth ``t``) that are nearer."""
        near = t < self.depth[idx]
        if not np.any(near):
            return
        i = idx[near]
        self.depth[i] = t[near]
        for buf, val in ((self.mat, mat), (self.tu, tu), (self.tv, tv), (self.fpu, fpu),
                         (self.fpv, fpv), (self.light, light), (self.obj, obj)):
            buf[i] = val[near] if isinstance(val, np.ndarray) else val


def _lambert(normal: np.ndarray, sun: np.ndarray, ambient: float) -> np.ndarray:
    return ambient + (1.0 - ambient) * np.maximum(0.0, normal @ sun)


def _render_static(view: _View, scene: SceneParams, cam: CameraConfig, ids: dict) -> None:
    """Ground, side facades and the far wall, intersected with every pixel's ray.

    Each surface is computed only on the image rectangle it can cover (ground: rows below the
    horizon; a facade: columns on its side; the far wall: its projection) and its candidates
    replace farther ones with masked copies, which beats gathering pixel indices here.
    """
    sun, amb, hgt = np.asarray(scene.sun), scene.ambient, cam.mount_height
    f, Cx, H, W = view.f, view.C[0], view.H, view.W
    dx2, dy2 = view.dx.reshape(H, W), view.dy.reshape(H, W)
    bufs = [b.reshape(H, W) for b in (view.depth, view.mat, view.tu, view.tv, view.fpu,
                                      view.fpv, view.light)]
    z_end = scene.end_wall.z0
    inf = np.inf

    def put(rows: slice, cols: slice, t, *values) -> None:
        depth = bufs[0][rows, cols]
        near = t < depth
        np.copyto(depth, t, where=near)
        for buf, val in zip(bufs[1:], values):
            np.copyto(buf[rows, cols], val, where=near, casting="same_kind")

    # ground plane y = h: t = h / dy for rays going down (rows below the horizon)
    r0 = max(0, int(math.floor(view.cy)) + 1)
    rows, cols = slice(r0, H), slice(0, W)
    dx, dy = dx2[rows, cols], dy2[rows, cols]
    with np.errstate(divide="ignore"):
        t = hgt / dy
    t[t >= z_end] = inf
    x = Cx + t * dx
    on_road = (x >= scene.road[0]) & (x <= scene.road[1])
    put(rows, cols, t, np.where(on_road, ids["road"], ids["sidewalk"]), x, t, t / f,
        t * t / (f * hgt), _lambert(np.array([0.0, -1.0, 0.0]), sun, amb))
    # side facades x = X: t = (X - Cx) / dx, between the ground and the block's top
    c0 = int(math.floor(view.cx))
    for side, blocks, sign in ((0, scene.left_blocks, -1.0), (1, scene.right_blocks, 1.0)):
        cols = slice(0, c0 + 1) if side == 0 else slice(c0, W)
        rows = slice(0, H)
        dx, dy = dx2[rows, cols], dy2[rows, cols]
        X = scene.facades[side]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(sign * dx > 1e-9, (X - Cx) / dx, inf)
        z1 = np.array([b.z1 for b in blocks])
        tops = hgt - np.array([b.height for b in blocks])
        k = np.minimum(np.searchsorted(z1, np.minimum(t, 1e9)), len(blocks) - 1)
        y = t * dy
        t[~((t < z_end) & (y <= hgt) & (y >= tops[k]))] = inf
        put(rows, cols, t, ids["left" if side == 0 else "right"][k], t, y,
            t * t / (f * abs(X - Cx)), t / f, _lambert(np.array([-sign, 0.0, 0.0]), sun, amb))
    # the far wall z = z_end between the facades, on its projected rectangle
    u0 = view.cx + f * (scene.facades[0] - Cx) / z_end
    u1 = view.cx + f * (scene.facades[1] - Cx) / z_end
    v0 = view.cy + f * (hgt - scene.end_wall.height) / z_end
    v1 = view.cy + f * hgt / z_end
    cols = slice(max(0, int(math.floor(u0)) - 1), min(W, int(math.ceil(u1)) + 2))
    rows = slice(max(0, int(math.floor(v0)) - 1), min(H, int(math.ceil(v1)) + 2))
    dx, dy = dx2[rows, cols], dy2[rows, cols]
    if dx.size:
        x = Cx + z_end * dx
        y = z_end * dy
        ok = ((x >= scene.facades[0]) & (x <= scene.facades[1]) & (y <= hgt)
              & (y >= hgt - scene.end_wall.height))
        put(rows, cols, np.where(ok, z_end, inf), ids["end"], x, y, z_end / f, z_end / f,
            _lambert(np.array([0.0, 0.0, -1.0]), sun, amb))


def _render_objects(view: _View, scene: SceneParams, cam: CameraConfig, ids: dict,
                    amodal: np.ndarray | None) -> None:
    """Ray-box (slab) intersection of every object's parts, on the object's projected box.

    All parts of an object share its yaw, so their slab tests run as one (parts, pixels, 3)
    array; each pixel keeps its nearest part. ``amodal`` receives, per object, the number of
    pixels it covers when nothing occludes it.
    """
    sun, amb, f = np.asarray(scene.sun), scene.ambient, view.f
    H, W = view.H, view.W
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    for oi, obj in enumerate(scene.objects):
        R = _yaw_matrix(obj.ry)
        parts = object_parts(obj, cam.mount_height)
        centres = np.array([p[0] for p in parts])                 # (P, 3)
        halves = np.array([p[1] for p in parts])                  # (P, 3)
        mat_ids = np.array([ids["objects"][oi][p[2]] for p in parts])
        # region of interest: the projection of the parts' corners in this view
        corners = (centres[:, None, :] + (signs[None] * halves[:, None, :]) @ R.T
                   - view.C).reshape(-1, 3)                       # (P*8, 3)
        if corners[:, 2].min() <= 0.05:
            continue  # the renderer assumes objects fully in front of the camera
        us = corners[:, 0] / corners[:, 2] * f + view.cx
        vs = corners[:, 1] / corners[:, 2] * f + view.cy
        u0, u1 = max(0, int(math.floor(us.min()))), min(W - 1, int(math.ceil(us.max())))
        v0, v1 = max(0, int(math.floor(vs.min()))), min(H - 1, int(math.ceil(vs.max())))
        if u0 > u1 or v0 > v1:
            continue
        idx = (np.arange(v0, v1 + 1)[:, None] * W + np.arange(u0, u1 + 1)[None, :]).ravel()
        d = np.stack([view.dx[idx], view.dy[idx], np.ones(idx.size)], axis=1)  # (n, 3)
        o = (view.C - centres) @ R                # ray origins in the parts' frames, (P, 3)
        e = d @ R                                 # ray directions in the object frame, (n, 3)
        e = np.where(np.abs(e) < 1e-12, 1e-12, e)
        t1 = (-halves[:, None, :] - o[:, None, :]) / e[None]     # (P, n, 3)
        t2 = (halves[:, None, :] - o[:, None, :]) / e[None]
        tmin = np.minimum(t1, t2)
        t_in = tmin.max(axis=2)                                   # (P, n)
        t_out = np.maximum(t1, t2).min(axis=2)
        t_in = np.where((t_in <= t_out) & (t_in > 1e-3), t_in, np.inf)
        best = t_in.argmin(axis=0)                                # nearest part per pixel
        cols = np.arange(idx.size)
        t = t_in[best, cols]
        hit = np.isfinite(t)
        if amodal is not None:
            amodal[oi] = int(np.count_nonzero(hit))
        if not hit.any():
            continue
        best, cols, t, e = best[hit], cols[hit], t[hit], e[hit]
        axis = tmin[best, cols].argmax(axis=1)                    # the face the ray enters
        p = o[best] + t[:, None] * e                              # hit points, part frames
        rows = np.arange(t.size)
        n_local = np.zeros_like(p)
        n_local[rows, axis] = -np.sign(e[rows, axis])
        light = obj.shade * _lambert(n_local @ R.T, sun, amb)
        # texture coordinates: the two in-face axes, offset per face
        tu = np.where(axis == 0, p[:, 2], p[:, 0]) + axis * 3.1
        tv = np.where(axis == 1, p[:, 2], p[:, 1])
        norm = np.linalg.norm(d[hit], axis=1)
        cos = np.abs(e[rows, axis]) / norm
        fp = t * norm / (f * np.sqrt(np.maximum(cos, 0.02)))
        view.write(idx[hit], t, mat_ids[best], tu, tv, fp, fp, light, obj=oi)


def _shade(view: _View, scene: SceneParams, m: dict, atlas: TextureAtlas) -> np.ndarray:
    """Linear RGB (H, W, 3) from the z-buffer: textures, markings, windows, lighting, sky."""
    H, W = view.H, view.W
    # sky pixels (material -1) read the last row of the tables: a dummy flat material
    mat = np.where(view.mat >= 0, view.mat, len(m["texel"]) - 1)

    def per(name: str) -> np.ndarray:
        return np.take(m[name], mat)

    texel = per("texel")
    cu = (view.tu + per("offset_u")) / texel
    cv = (view.tv + per("offset_v")) / texel
    level = np.log2(np.maximum(np.sqrt(view.fpu * view.fpv) / texel, 1e-6))
    tex = atlas.sample(per("texture"), cu, cv, level)
    albedo = [np.take(m["albedo"][:, c], mat) for c in range(3)]
    kind = per("kind")
    # lane markings: dashed separators (3 m of every 9 m) and solid edge lines, 0.15 m wide
    road = np.nonzero(kind == _ROAD)[0]
    if road.size:
        x, z = view.tu[road], view.tv[road]
        fpx, fpz = view.fpu[road], view.fpv[road]
        cover = np.zeros(road.size, np.float32)
        for xl in scene.lane_lines:
            cover += (_pulse_coverage(x - xl + 0.075, 1e6, 0.15, fpx)
                      * _pulse_coverage(z, 9.0, 3.0, fpz))
        for xl in (scene.road[0] + 0.2, scene.road[1] - 0.2):
            cover += _pulse_coverage(x - xl + 0.075, 1e6, 0.15, fpx)
        cover = np.clip(cover, 0, 1)
        for a in albedo:
            a[road] = a[road] * (1 - cover) + 0.6 * cover
    # facade windows: dark glass on a grid of floors and bays
    fac = np.nonzero(kind == _FACADE)[0]
    if fac.size:
        mf = mat[fac]
        sp, fl = np.take(m["spacing"], mf), np.take(m["floor"], mf)
        cover = (_pulse_coverage(view.tu[fac] / sp, 1.0, 0.5, view.fpu[fac] / sp)
                 * _pulse_coverage(view.tv[fac] / fl, 1.0, 0.45, view.fpv[fac] / fl))
        for a in albedo:
            a[fac] *= 1 - 0.7 * cover
    shade = np.float32(scene.exposure) * view.light * np.maximum(1.0 + per("contrast") * tex, 0.05)
    # sky: brighter towards the horizon, no texture, no depth
    sky = np.nonzero(view.mat < 0)[0]
    if sky.size:
        shade[sky] = scene.exposure * (0.75 + 0.35 * np.clip((sky // W) / max(1.0, view.cy), 0, 1))
        for a, c in zip(albedo, scene.sky):
            a[sky] = c
    return np.stack([a * shade for a in albedo], axis=-1).reshape(H, W, 3).astype(np.float32)


def camera_response(linear: np.ndarray, gain: float, noise_std: float, blur: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Camera response: gamma, optics blur, gain, Gaussian noise, 8-bit quantisation.

    Linear RGB (H, W, 3) in [0, 1] to uint8 (H, W, 3); shared with the pretraining renderer
    (:mod:`entangle.data.flying`) so both data sets come out of the same camera.
    """
    img = np.float32(255.0) * cv2.pow(np.clip(linear.astype(np.float32), 0.0, 1.0), 1 / 2.2)
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img = img * np.float32(gain) + np.float32(noise_std) * rng.standard_normal(
        img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_calib(cam: CameraConfig) -> Calib:
    """KITTI-style calibration of the rig; values canonicalised to their ``%.12e`` text."""
    f, cx, cy = cam.focal, cam.cx_frac * cam.width, cam.cy_frac * cam.height
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])

    def P(cam_x: float) -> np.ndarray:
        return K @ np.concatenate([np.eye(3), np.array([[-cam_x], [0.0], [0.0]])], axis=1)

    x2 = -cam.cam2_offset
    # velodyne: x forward, y left, z up, mounted 0.08 m above and 0.27 m behind camera 0
    velo = np.array([[0, -1, 0, 0], [0, 0, -1, -0.08], [1, 0, 0, -0.27]], dtype=np.float64)
    imu = np.array([[1, 0, 0, -0.81], [0, 1, 0, 0.32], [0, 0, 1, -0.80]], dtype=np.float64)
    mats = dict(P0=P(0.0), P1=P(cam.baseline), P2=P(x2), P3=P(x2 + cam.baseline),
                R0_rect=np.eye(3), Tr_velo_to_cam=velo, Tr_imu_to_velo=imu)
    canon = {k: np.array([float(f"{v:.12e}") for v in a.ravel()]) for k, a in mats.items()}
    return Calib(**canon)


def _r2(v: float) -> float:
    """Round as the label file does, so rendered labels equal what is read back."""
    return float(f"{v:.2f}")


def render_scene(params: SceneParams, cfg: WorldConfig, *, sample_id: str = "000000") -> Sample:
    """Render a scene into a :class:`Sample` with exact labels, disparity and attributes.

    Disparity is quantised as the PNG stores it (1/256 px) and depth derived from it, and label
    values are rounded as the label file writes them, so writing and reading the sample back
    gives an equal :class:`Sample`. Sky pixels have disparity 0 (invalid).
    """
    cam = cfg.camera
    H, W = cam.height, cam.width
    calib = make_calib(cam)
    atlas = texture_atlas(cfg.texture.seed, cfg.texture.count, cfg.texture.size)
    for mat in _all_materials(params):
        if not 0 <= mat.texture < cfg.texture.count:
            raise ValueError(f"scene uses texture {mat.texture} but the bank has "
                             f"{cfg.texture.count}")
    mats = _Materials()
    ids = {"road": mats.add(params.road_material, _ROAD),
           "sidewalk": mats.add(params.sidewalk_material)}
    for side, blocks in (("left", params.left_blocks), ("right", params.right_blocks)):
        ids[side] = np.array([mats.add(b.material, _FACADE, b.window_spacing, b.floor_height)
                              for b in blocks])
    e = params.end_wall
    ids["end"] = mats.add(e.material, _FACADE, e.window_spacing, e.floor_height)
    ids["objects"] = [[mats.add(m) for m in o.materials] for o in params.objects]
    m = mats.arrays()

    x2 = -cam.cam2_offset
    views = []
    amodal = np.zeros(len(params.objects), dtype=np.int64)
    for cam_x, am in ((x2, amodal), (x2 + cam.baseline, None)):
        view = _View(cam, cam_x)
        _render_static(view, params, cam, ids)
        _render_objects(view, params, cam, ids, am)
        views.append(view)
    rng = np.random.default_rng(params.noise_seed)
    blur = cfg.sensor.blur_sigma
    left = camera_response(_shade(views[0], params, m, atlas), 1.0, params.noise_std, blur, rng)
    right = camera_response(_shade(views[1], params, m, atlas), params.right_gain, params.noise_std,
                      blur, rng)

    fb = calib.fb
    depth_l = views[0].depth.reshape(H, W)
    valid = np.isfinite(depth_l)
    disp = np.zeros((H, W), dtype=np.float64)
    disp[valid] = fb / depth_l[valid]
    disparity = quantize_disparity(disp)
    depth = disparity_to_depth(disparity, fb)
    # non-occluded: the right view sees the same surface point at u - d
    depth_r = views[1].depth.reshape(H, W)
    disp_r = np.where(np.isfinite(depth_r), fb / depth_r, 0.0)
    vv, uu = np.nonzero(valid)
    ur = np.rint(uu - disp[vv, uu]).astype(np.int64)
    inside = (ur >= 0) & (ur < W)
    seen = np.zeros(vv.shape, dtype=bool)
    seen[inside] = np.abs(disp_r[vv[inside], ur[inside]] - disp[vv[inside], uu[inside]]) < 1.0
    noc = np.zeros((H, W), dtype=np.float32)
    noc[vv[seen], uu[seen]] = disparity[vv[seen], uu[seen]]

    objects, attrs, instances = _labels(params, cfg, calib, views[0], amodal, left)
    attributes = {"id": sample_id, "world_version": WORLD_VERSION, "objects": attrs,
                  "scene": params.to_dict()}
    return Sample(id=sample_id, left=left, right=right, calib=calib, objects=objects,
                  disparity=disparity, depth=depth, attributes=attributes, disparity_noc=noc,
                  instances=instances)


def _all_materials(p: SceneParams) -> list[Material]:
    out = [p.road_material, p.sidewalk_material, p.end_wall.material]
    out += [b.material for b in p.left_blocks + p.right_blocks]
    out += [m for o in p.objects for m in o.materials]
    return out


def _truncation(corners_px: np.ndarray, W: int, H: int) -> float:
    """Share of the projected box's hull that lies outside the image."""
    hull = cv2.convexHull(corners_px.astype(np.float32))
    area = cv2.contourArea(hull)
    if area <= 0:
        return 0.0
    frame = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]],
                     dtype=np.float32)
    inter, _ = cv2.intersectConvexConvex(hull.reshape(-1, 2), frame)
    return float(np.clip(1.0 - inter / area, 0.0, 1.0))


def _labels(params: SceneParams, cfg: WorldConfig, calib: Calib, view: _View,
            amodal: np.ndarray, left: np.ndarray):
    """KITTI labels, per-object attributes and the instance map of the left view."""
    cam = cfg.camera
    H, W = cam.height, cam.width
    obj_map = view.obj.reshape(H, W)
    visible = np.bincount(view.obj[view.obj >= 0], minlength=len(params.objects))
    gray = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY).astype(np.float64)
    th = cfg.labels.occlusion_thresholds
    objects, attrs = [], []
    instances = np.zeros((H, W), dtype=np.uint16)
    kernel = np.ones((3, 3), np.uint8)
    # the pixel rectangle of each object in one pass (object i has label i + 1 here)
    extents = scipy.ndimage.find_objects(obj_map + 1, max_label=len(params.objects))
    for oi, o in enumerate(params.objects):
        if visible[oi] == 0:
            continue  # hidden or outside the image: in the scene, not in the labels
        loc = np.array([o.x, cam.mount_height, o.z])
        # the 2D box is the projection of the 3D box as the label file stores it (rounded)
        box = Object3D(o.cls, 0.0, 0, 0.0, [0, 0, 0, 0], [_r2(o.h), _r2(o.w), _r2(o.l)],
                       [_r2(v) for v in loc], _r2(o.ry))
        px = calib.project(box.corners(), camera=2)
        bbox = np.array([np.clip(px[:, 0].min(), 0, W - 1), np.clip(px[:, 1].min(), 0, H - 1),
                         np.clip(px[:, 0].max(), 0, W - 1), np.clip(px[:, 1].max(), 0, H - 1)])
        trunc = _truncation(px, W, H)
        hidden = 1.0 - visible[oi] / max(int(amodal[oi]), 1)
        occluded = 0 if hidden <= th[0] else 1 if hidden <= th[1] else 2
        rows, cols = extents[oi]
        ys, xs = np.nonzero(obj_map[rows, cols] == oi)
        ys, xs = ys + rows.start, xs + cols.start
        alpha = math.atan2(math.sin(o.ry - math.atan2(o.x, o.z)), math.cos(o.ry - math.atan2(o.x, o.z)))
        if bbox[3] - bbox[1] < cfg.labels.dontcare_below_px:
            vis_box = [xs.min(), ys.min(), xs.max(), ys.max()]
            label = Object3D("DontCare", -1, -1, -10, [_r2(v) for v in vis_box], [-1, -1, -1],
                             [-1000, -1000, -1000], -10)
        else:
            label = Object3D(o.cls, _r2(trunc), occluded, _r2(alpha), [_r2(v) for v in bbox],
                             [_r2(o.h), _r2(o.w), _r2(o.l)], [_r2(v) for v in loc], _r2(o.ry))
        # contrast: Michelson contrast of the object against a 2-px ring around it
        y0, y1 = max(0, ys.min() - 3), min(H, ys.max() + 4)
        x0, x1 = max(0, xs.min() - 3), min(W, xs.max() + 4)
        sub = (obj_map[y0:y1, x0:x1] == oi).astype(np.uint8)
        ring = (cv2.dilate(sub, kernel, iterations=2) > 0) & (sub == 0)
        mo = float(gray[y0:y1, x0:x1][sub > 0].mean())
        mr = float(gray[y0:y1, x0:x1][ring].mean()) if ring.any() else float("nan")
        contrast = abs(mo - mr) / (mo + mr) if mo + mr > 0 and math.isfinite(mr) else None
        total = max(int(amodal[oi]), 1) / max(1e-9, 1.0 - trunc)
        instances[ys, xs] = len(objects) + 1
        objects.append(label)
        attrs.append({
            "scene_index": oi, "class": o.cls, "difficulty": difficulty(label, H),
            "distance": float(np.linalg.norm(loc - np.array([0.0, o.h / 2, 0.0]))),  # to centre
            "depth": o.z, "visible_pixels": int(visible[oi]), "amodal_pixels": int(amodal[oi]),
            "visible_fraction": float(min(1.0, visible[oi] / total)),
            "occlusion_fraction": float(hidden), "truncation": trunc,
            "height_px": float(bbox[3] - bbox[1]), "contrast": contrast,
            "luminance": mo / 255.0, "lighting": float(params.exposure * o.shade),
            "shade": o.shade, "albedo": list(o.materials[0].albedo),
            "texture_contrast": o.materials[0].contrast,
        })
    return objects, attrs, instances


# --------------------------------------------------------------------------------------------
# writing a dataset
# --------------------------------------------------------------------------------------------

def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index``: independent of how many scenes and workers there are."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(index,)))


def _render_and_write(job: tuple[int, int, WorldConfig, str]) -> dict:
    index, seed, cfg, folder = job
    sid = f"{index:06d}"
    sample = render_scene(sample_scene(scene_rng(seed, index), cfg), cfg, sample_id=sid)
    write_sample(folder, sample)
    counts: dict[str, int] = {}
    for o, a in zip(sample.objects, sample.attributes["objects"]):
        key = f"{o.type}/{['easy', 'moderate', 'hard'][a['difficulty']] if a['difficulty'] >= 0 else 'none'}"
        counts[key] = counts.get(key, 0) + 1
    return {"id": sid, "counts": counts,
            "valid_disparity": float(np.count_nonzero(sample.disparity) / sample.disparity.size)}


def _init_worker() -> None:
    # one thread per worker process: the workers already use every core
    cv2.setNumThreads(1)


def split_assignment(n_scenes: int, seed: int, fractions: tuple[float, float, float]
                     ) -> dict[str, list[str]]:
    """Seeded train/val/test split of scene ids (sorted within each split)."""
    perm = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(2 ** 31,))
                                 ).permutation(n_scenes)
    n_train = int(round(fractions[0] * n_scenes))
    n_val = int(round(fractions[1] * n_scenes))
    parts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val],
             "test": perm[n_train + n_val:]}
    return {k: [f"{i:06d}" for i in sorted(v)] for k, v in parts.items()}


def generate(root: str | Path, n_scenes: int, seed: int, cfg: WorldConfig | None = None,
             workers: int = 2) -> Path:
    """Render ``n_scenes`` scenes into ``root`` in the KITTI object layout; returns ``root``.

    See :func:`write_world`, which also returns a summary per scene.
    """
    write_world(root, n_scenes, seed, cfg, workers)
    return Path(root)


def write_world(root: str | Path, n_scenes: int, seed: int, cfg: WorldConfig | None = None,
                workers: int = 2) -> list[dict]:
    """Render ``n_scenes`` scenes into ``root`` in the KITTI layout; returns per-scene summaries.

    Writes ``training/{image_2,image_3,calib,label_2,disp_occ_2,disp_noc_2,instance_2,
    attributes}/``, ``ImageSets/{train,val,test}.txt`` and ``world.json`` (config, seed,
    version). Scene ``i`` depends only on (seed, i), so the same seed gives byte-identical
    files for any number of workers. Workers are spawned processes: a script that calls this
    with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
    """
    cfg = cfg or WorldConfig()
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    root = Path(root)
    folder = root / "training"
    if (root / "world.json").exists():
        # a world written before: drop its frames so no stale scene survives a smaller run
        for sub in WORLD_FOLDERS:
            if (folder / sub).is_dir():
                shutil.rmtree(folder / sub)
    elif folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} holds files but no world.json: not overwriting what may "
                              "be real data; choose an empty data.root")
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, cfg, str(folder)) for i in range(n_scenes)]
    summaries: list[dict] = []
    workers = max(1, min(int(workers), n_scenes))
    bar = dict(total=n_scenes, desc="rendering scenes", unit="scene", disable=None)
    if workers == 1:
        _init_worker()
        summaries = [s for s in tqdm(map(_render_and_write, jobs), **bar)]
    else:
        # spawn, not fork: a forked child deadlocks in OpenCV when the parent has already run
        # OpenCV's thread pool (e.g. a benchmark or a test rendered before generating)
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            chunk = max(1, min(16, n_scenes // (4 * workers)))
            summaries = list(tqdm(pool.imap(_render_and_write, jobs, chunksize=chunk), **bar))
    sets = root / "ImageSets"
    sets.mkdir(exist_ok=True)
    for name, ids in split_assignment(n_scenes, seed, cfg.splits).items():
        (sets / f"{name}.txt").write_text("".join(i + "\n" for i in ids))
    (root / "world.json").write_text(json.dumps(
        {"world_version": WORLD_VERSION, "seed": seed, "n_scenes": n_scenes,
         "config": cfg.to_dict()}, sort_keys=True, indent=1) + "\n")
    return summaries


def world_summary(summaries: list[dict]) -> dict:
    """Object counts per class/difficulty and the valid-disparity share over scenes."""
    counts: dict[str, int] = {}
    for s in summaries:
        for k, v in s["counts"].items():
            counts[k] = counts.get(k, 0) + v
    valid = [s["valid_disparity"] for s in summaries]
    return {"objects": dict(sorted(counts.items())),
            "valid_disparity_mean": float(np.mean(valid)) if valid else None}
