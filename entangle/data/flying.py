"""Object-dense synthetic stereo for pretraining, in the spirit of SceneFlow's FlyingThings3D.

The paper's PSMNet was pretrained on SceneFlow before it was fine-tuned on KITTI: thousands
of random objects flying in front of random backgrounds teach a network to match anything,
at any depth, with sharp boundaries, before it sees a single street. This module renders such
a set with the street world's camera (the same focal length and baseline as
:class:`~entangle.data.world.CameraConfig`, so disparities mean the same depths), its texture
bank and its camera response:

* **backgrounds**: one or two large textured planes tilted at random, 15–150 m ahead (half the
  images also get a ground plane below the camera, as a street has), and behind everything a
  far plane at 225 m, so every pixel has a depth;
* **objects**: 8–24 primitives, each a box, an ellipsoid, a cylinder or a thin pole, rotated
  at random, with depths log-uniform from the nearest the network can represent (``f·B`` over
  the largest disparity, 3.1 m with the default 64 px) to beyond 80 m, and sizes drawn in
  image pixels (4–110 px across) so that near and far objects are as often large as small;
* **appearance**: a bank texture per surface at a random scale and contrast, a random colour,
  Lambert shading from a random sun; then the street camera's gamma, blur, noise and gain.

Both views are ray cast from the same parameters, so disparity ``f·B / Z`` is exact (float, not
quantised). Images are a window (``height`` x ``width``, default 96 x 320: the street network's
training crop) of the street camera's sensor at a random position, so the rays' directions
match what a crop of a street image sees. Image ``i`` depends only on ``(seed, i)``.

:class:`FlyingSource` serves the set as a data source with the same stereo outputs as
:class:`~entangle.data.world_source.WorldSource`, rendered once per configuration into
``datasets/generated/`` (in parallel) and memory-mapped from then on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
from tqdm.auto import tqdm

from entangle.data.world import CameraConfig, TextureConfig, camera_response, texture_atlas
from entangle.node import Source

log = logging.getLogger(__name__)

#: bumped whenever rendering changes the pixels a given seed produces.
FLYING_VERSION = "1"
#: the default place the rendered sets are written (git-ignored).
GENERATED = Path(__file__).resolve().parents[2] / "datasets" / "generated"
#: primitive kinds
BOX, ELLIPSOID, CYLINDER, POLE = range(4)


@dataclass(frozen=True)
class FlyingConfig:
    """What a flying-objects image is made of; every range is ``[low, high]``."""

    height: int = 96                          # rendered window of the street camera's sensor
    width: int = 320
    camera: CameraConfig = field(default_factory=CameraConfig)   # focal length, baseline, sensor
    texture: TextureConfig = field(default_factory=TextureConfig)
    max_disp: int = 64                        # nearest object: f·B / (max_disp - 1)
    far_depth: float = 100.0                  # farthest object centre (m)
    n_objects: tuple[int, int] = (8, 24)
    pixel_size: tuple[float, float] = (4.0, 110.0)   # object extent in the image, log-uniform
    kind_weights: tuple[float, float, float, float] = (0.35, 0.3, 0.2, 0.15)  # box, ellipsoid, cylinder, pole
    background_depth: tuple[float, float] = (15.0, 150.0)
    ground_prob: float = 0.5                  # a ground plane under the camera, as a street has
    brightness: tuple[float, float] = (0.03, 0.8)    # albedo, log-uniform
    texture_contrast: tuple[float, float] = (0.05, 0.6)
    texels_across: tuple[float, float] = (4.0, 200.0)  # texture repeats per object, log-uniform
    ambient: tuple[float, float] = (0.2, 0.6)
    exposure: tuple[float, float] = (0.6, 1.4)
    noise_std: tuple[float, float] = (0.5, 3.0)       # as the street world's sensor
    right_gain_std: float = 0.03
    blur_sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"FlyingConfig: height and width must be positive multiples of 16, "
                             f"got {self.height}x{self.width}")
        if self.height > self.camera.height or self.width > self.camera.width:
            raise ValueError(f"FlyingConfig: a {self.height}x{self.width} window does not fit the "
                             f"camera's {self.camera.height}x{self.camera.width} sensor")
        if self.max_disp < 2:
            raise ValueError(f"FlyingConfig.max_disp must be at least 2, got {self.max_disp}")

    @property
    def focal_baseline(self) -> float:
        return self.camera.focal * self.camera.baseline

    @property
    def near_depth(self) -> float:
        """The nearest object centre: its disparity is one pixel under ``max_disp``."""
        return self.focal_baseline / (self.max_disp - 1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "FlyingConfig":
        data = dict(data or {})
        for key, sub in (("camera", CameraConfig), ("texture", TextureConfig)):
            if key in data and isinstance(data[key], Mapping):
                data[key] = sub(**data[key])
        for k, v in list(data.items()):
            if isinstance(v, list):
                data[k] = tuple(v)
        return cls(**data)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# --------------------------------------------------------------------------------------------
# geometry: rays, primitives and their intersections
# --------------------------------------------------------------------------------------------

def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation (3, 3) (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@dataclass(frozen=True)
class Primitive:
    """One object: kind, centre (3,), rotation (3, 3: local axes as columns), half extents (3,).

    A box's half extents are its half sides; an ellipsoid's its radii; a cylinder's (or pole's)
    ``(radius, radius, half length)`` along its local z axis.
    """

    kind: int
    centre: np.ndarray
    rotation: np.ndarray
    half: np.ndarray
    texture: int
    texel: float
    albedo: tuple[float, float, float]
    contrast: float


def _intersect(p: Primitive, origin: np.ndarray, dirs: np.ndarray):
    """Ray parameter ``t`` (z along the ray: directions have z = 1) and the hit point (local).

    ``dirs`` (n, 3); returns ``t`` (n,) with inf for a miss, the local hit points (n, 3) and
    the local normals (n, 3).
    """
    R = p.rotation
    o = (origin - p.centre) @ R                   # ray origin in the local frame, (3,)
    d = dirs @ R                                  # directions in the local frame, (n, 3)
    n = len(d)
    t = np.full(n, np.inf)
    normal = np.zeros((n, 3))
    if p.kind == BOX:
        e = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1 = (-p.half - o) / e                    # (n, 3)
        t2 = (p.half - o) / e
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        t_in, t_out = tmin.max(axis=1), tmax.min(axis=1)
        hit = (t_in <= t_out) & (t_in > 1e-3)
        t = np.where(hit, t_in, np.inf)
        axis = tmin.argmax(axis=1)
        rows = np.arange(n)
        normal[rows, axis] = -np.sign(e[rows, axis])
    elif p.kind == ELLIPSOID:
        os_, ds = o / p.half, d / p.half          # the unit sphere's frame
        a = (ds * ds).sum(axis=1)
        b = 2 * (ds @ os_)
        c = float(os_ @ os_) - 1.0
        disc = b * b - 4 * a * c
        ok = disc >= 0
        root = np.sqrt(np.where(ok, disc, 0.0))
        t0 = (-b - root) / (2 * a)
        t = np.where(ok & (t0 > 1e-3), t0, np.inf)
        normal = (os_ + t[:, None] * ds) / p.half  # gradient of the quadric, (n, 3)
    else:                                         # capped cylinder along local z
        r, hz = p.half[0], p.half[2]
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = 2 * (o[0] * d[:, 0] + o[1] * d[:, 1])
        c = o[0] ** 2 + o[1] ** 2 - r * r
        disc = b * b - 4 * a * c
        ok = (disc >= 0) & (a > 1e-12)
        root = np.sqrt(np.where(ok, disc, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = np.where(ok, (-b - root) / (2 * np.where(a > 1e-12, a, 1.0)), np.inf)
        zs = o[2] + ts * d[:, 2]
        side = ok & (ts > 1e-3) & (np.abs(zs) <= hz)
        # caps: the planes z = ±hz, inside the radius
        dz = np.where(np.abs(d[:, 2]) < 1e-12, 1e-12, d[:, 2])
        tc = np.minimum((-hz - o[2]) / dz, (hz - o[2]) / dz)
        xc, yc = o[0] + tc * d[:, 0], o[1] + tc * d[:, 1]
        cap = (tc > 1e-3) & (xc * xc + yc * yc <= r * r)
        t_side = np.where(side, ts, np.inf)
        t_cap = np.where(cap, tc, np.inf)
        use_cap = t_cap < t_side
        t = np.minimum(t_side, t_cap)
        hitp = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
        normal = np.where(use_cap[:, None], np.stack([np.zeros(n), np.zeros(n), np.sign(hitp[:, 2])], 1),
                          np.stack([hitp[:, 0], hitp[:, 1], np.zeros(n)], 1))
    local = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    return t, local, normal


def _surface_coordinates(local: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Texture coordinates (metres) of local hit points: the two axes across the normal.

    Each face (or the part of a curved surface facing mostly along one axis) is textured by the
    two local coordinates orthogonal to its dominant normal axis, offset per axis so faces
    differ: a function of the surface point only, hence the same in both views.
    """
    axis = np.abs(normal).argmax(axis=1)
    u = np.where(axis == 0, local[:, 1], local[:, 0]) + axis * 3.1
    v = np.where(axis == 2, local[:, 1], local[:, 2])
    return u, v


# --------------------------------------------------------------------------------------------
# sampling and rendering
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FlyingScene:
    """Everything one image pair is rendered from (window, planes, primitives, light, sensor)."""

    cx: float                                     # principal point inside the window (px)
    cy: float
    planes: tuple[tuple[np.ndarray, float, int, float, tuple, float], ...]  # normal, offset, material
    primitives: tuple[Primitive, ...]
    sun: np.ndarray
    ambient: float
    exposure: float
    noise_std: float
    right_gain: float
    noise_seed: int


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _colour(rng: np.random.Generator, cfg: FlyingConfig) -> tuple[float, float, float]:
    lum = _log_uniform(rng, *cfg.brightness)
    rgb = rng.uniform(0.3, 1.0, size=3)
    rgb = rgb * lum / float(0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2])
    return tuple(float(min(1.0, c)) for c in rgb)


def sample_flying_scene(rng: np.random.Generator, cfg: FlyingConfig) -> FlyingScene:
    """Draw one scene (all randomness comes from ``rng``)."""
    cam = cfg.camera
    f, H, W = cam.focal, cfg.height, cfg.width
    # the window's place on the sensor: the principal point relative to the window
    full_cx, full_cy = cam.cx_frac * cam.width, cam.cy_frac * cam.height
    x0 = int(rng.integers(0, cam.width - W + 1))
    y0 = int(rng.integers(0, cam.height - H + 1))
    cx, cy = full_cx - x0, full_cy - y0
    n_tex = cfg.texture.count

    planes = []
    far = cfg.background_depth[1] * 1.5
    # behind everything: a fronto-parallel far plane (normal (0, 0, -1), z = far)
    planes.append((np.array([0.0, 0.0, -1.0]), -far, int(rng.integers(n_tex)),
                   far / _log_uniform(rng, 20, 400), _colour(rng, cfg), float(rng.uniform(*cfg.texture_contrast))))
    if rng.uniform() < cfg.ground_prob:
        h = float(rng.uniform(1.0, 2.5))           # the ground y = h below the camera
        planes.append((np.array([0.0, -1.0, 0.0]), -h, int(rng.integers(n_tex)),
                       float(rng.uniform(0.02, 0.2)), _colour(rng, cfg), float(rng.uniform(*cfg.texture_contrast))))
    for _ in range(int(rng.integers(1, 3))):
        # a tilted plane through a point straight ahead, facing the camera
        z = _log_uniform(rng, *cfg.background_depth)
        tilt = rng.normal(0, 0.6, size=2)
        normal = np.array([tilt[0], tilt[1], -1.0])
        normal /= np.linalg.norm(normal)
        point = np.array([rng.uniform(-0.3, 0.3) * z, rng.uniform(-0.2, 0.2) * z, z])
        planes.append((normal, float(normal @ point), int(rng.integers(n_tex)),
                       z / _log_uniform(rng, 30, 600), _colour(rng, cfg), float(rng.uniform(*cfg.texture_contrast))))

    prims = []
    z_near, z_far = cfg.near_depth, cfg.far_depth
    for _ in range(int(rng.integers(cfg.n_objects[0], cfg.n_objects[1] + 1))):
        kind = int(rng.choice(4, p=np.asarray(cfg.kind_weights) / sum(cfg.kind_weights)))
        z = _log_uniform(rng, z_near, z_far)
        # anywhere the window sees, a little beyond its borders
        u = rng.uniform(-0.1 * W, 1.1 * W)
        v = rng.uniform(-0.1 * H, 1.1 * H)
        centre = np.array([(u - cx) * z / f, (v - cy) * z / f, z])
        extent = _log_uniform(rng, *cfg.pixel_size) * z / f          # metres across
        if kind == POLE:
            half = np.array([extent * rng.uniform(0.02, 0.08), 0.0, extent * rng.uniform(0.5, 1.5)])
            half[1] = half[0]
        elif kind == CYLINDER:
            r = extent * rng.uniform(0.15, 0.5)
            half = np.array([r, r, extent * rng.uniform(0.2, 0.8)])
        else:
            half = extent * rng.uniform(0.15, 0.6, size=3)
        # keep the whole object in front of the nearest depth the network represents
        reach = float(np.linalg.norm(half))
        if centre[2] - reach < z_near:
            centre = centre * ((z_near + reach) / centre[2])
        texel = 2 * float(half.max()) / _log_uniform(rng, *cfg.texels_across)
        prims.append(Primitive(kind=kind, centre=centre, rotation=_rotation(rng), half=half,
                               texture=int(rng.integers(n_tex)), texel=texel, albedo=_colour(rng, cfg),
                               contrast=float(rng.uniform(*cfg.texture_contrast))))
    elev = rng.uniform(0.2, 1.3)
    azim = rng.uniform(-math.pi, math.pi)
    sun = np.array([math.cos(elev) * math.sin(azim), -math.sin(elev), math.cos(elev) * math.cos(azim)])
    return FlyingScene(cx=cx, cy=cy, planes=tuple(planes), primitives=tuple(prims), sun=sun,
                       ambient=float(rng.uniform(*cfg.ambient)), exposure=float(rng.uniform(*cfg.exposure)),
                       noise_std=float(rng.uniform(*cfg.noise_std)),
                       right_gain=float(1.0 + rng.normal(0, cfg.right_gain_std)),
                       noise_seed=int(rng.integers(2 ** 31)))


def _render_view(scene: FlyingScene, cfg: FlyingConfig, cam_x: float):
    """Linear RGB (H, W, 3) and depth (H, W) of one camera at ``(cam_x, 0, 0)``.

    A z-buffer over flat pixel arrays: the background planes are intersected with every ray at
    once (the nearest plane wins), then each primitive on the window rectangle its bounding
    sphere projects to; shading reads a per-pixel material index at the end.
    """
    H, W, f = cfg.height, cfg.width, cfg.camera.focal
    atlas = texture_atlas(cfg.texture.seed, cfg.texture.count, cfg.texture.size)
    us = (np.arange(W) - scene.cx) / f
    vs = (np.arange(H) - scene.cy) / f
    dirs = np.stack([np.tile(us, H), np.repeat(vs, W), np.ones(H * W)], axis=1)   # (H*W, 3)
    norm = np.linalg.norm(dirs, axis=1)                                           # (H*W,)
    origin = np.array([cam_x, 0.0, 0.0])
    # materials: planes first, then primitives: (texture, texel, albedo, contrast)
    mats = [(pl[2], pl[3], pl[4], pl[5]) for pl in scene.planes]
    mats += [(p.texture, p.texel, p.albedo, p.contrast) for p in scene.primitives]

    # background planes n·P = offset, normals facing the camera: one pass over every pixel
    normals = np.array([pl[0] for pl in scene.planes])                            # (P, 3)
    offsets = np.array([pl[1] for pl in scene.planes])                            # (P,)
    denom = normals @ dirs.T                                                      # (P, H*W)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_all = (offsets - normals @ origin)[:, None] / denom
    t_all = np.where((denom < -1e-9) & (t_all > 1e-3), t_all, np.inf)
    mat = t_all.argmin(axis=0)                                                    # (H*W,)
    cols = np.arange(H * W)
    depth = t_all[mat, cols]
    hitp = origin + np.where(np.isfinite(depth), depth, 0.0)[:, None] * dirs      # (H*W, 3)
    # in-plane coordinates: two axes orthogonal to each plane's normal
    ax_a = np.cross(normals, np.where(np.abs(normals[:, 1:2]) < 0.9, [[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]]))
    ax_a /= np.linalg.norm(ax_a, axis=1, keepdims=True)
    ax_b = np.cross(normals, ax_a)
    tu = (hitp * ax_a[mat]).sum(axis=1)
    tv = (hitp * ax_b[mat]).sum(axis=1)
    cos = np.abs(denom[mat, cols]) / norm
    plane_light = scene.ambient + (1 - scene.ambient) * np.maximum(0.0, normals @ scene.sun)  # (P,)
    light = plane_light[mat]
    # texture footprint of a pixel on the surface (metres), as the street renderer's
    foot = depth * norm / (f * np.sqrt(np.maximum(cos, 0.02)))

    for k, prim in enumerate(scene.primitives):
        # the window rectangle the primitive can cover: project its bounding sphere
        reach = float(np.linalg.norm(prim.half))
        c = prim.centre - origin
        if c[2] - reach <= 0.05:
            continue
        r_px = reach * f / (c[2] - reach)
        u_c, v_c = c[0] / c[2] * f + scene.cx, c[1] / c[2] * f + scene.cy
        u0, u1 = max(0, int(u_c - r_px) - 1), min(W - 1, int(u_c + r_px) + 1)
        v0, v1 = max(0, int(v_c - r_px) - 1), min(H - 1, int(v_c + r_px) + 1)
        if u0 > u1 or v0 > v1:
            continue
        idx = (np.arange(v0, v1 + 1)[:, None] * W + np.arange(u0, u1 + 1)[None, :]).ravel()
        t, local, nrm = _intersect(prim, origin, dirs[idx])
        near = t < depth[idx]
        if not near.any():
            continue
        idx, t, local, nrm = idx[near], t[near], local[near], nrm[near]
        nrm = nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        nrm_world = nrm @ prim.rotation.T                                         # (m, 3)
        cos_k = np.abs((dirs[idx] * nrm_world).sum(axis=1)) / norm[idx]
        u, v = _surface_coordinates(local, nrm)
        depth[idx], tu[idx], tv[idx], mat[idx] = t, u, v, len(scene.planes) + k
        foot[idx] = t * norm[idx] / (f * np.sqrt(np.maximum(cos_k, 0.02)))
        light[idx] = scene.ambient + (1 - scene.ambient) * np.maximum(0.0, nrm_world @ scene.sun)

    tex = np.array([m[0] for m in mats], dtype=np.int64)[mat]
    texel = np.array([m[1] for m in mats])[mat]
    albedo = np.array([m[2] for m in mats], dtype=np.float32)[mat]                # (H*W, 3)
    contrast = np.array([m[3] for m in mats])[mat]
    level = np.log2(np.maximum(foot / texel, 1e-6))
    pattern = atlas.sample(tex, (tu / texel).astype(np.float32), (tv / texel).astype(np.float32),
                           level.astype(np.float32))
    shade = (scene.exposure * light * np.maximum(1.0 + contrast * pattern, 0.05)).astype(np.float32)
    rgb = (albedo * shade[:, None]).reshape(H, W, 3)
    return rgb, depth.reshape(H, W)


def render_flying(scene: FlyingScene, cfg: FlyingConfig) -> dict[str, np.ndarray]:
    """Render one pair: ``left``, ``right`` (H, W, 3) uint8, ``disparity`` and ``depth`` (H, W).

    Disparity is the left view's ``f·B / Z``, exact (float32); every pixel is valid.
    ``principal_point`` (2,) is where the camera's axis meets the window (px).
    """
    cam = cfg.camera
    rng = np.random.default_rng(scene.noise_seed)
    lin_l, depth = _render_view(scene, cfg, 0.0)
    lin_r, _ = _render_view(scene, cfg, cam.baseline)
    left = camera_response(lin_l, 1.0, scene.noise_std, cfg.blur_sigma, rng)
    right = camera_response(lin_r, scene.right_gain, scene.noise_std, cfg.blur_sigma, rng)
    disparity = (cfg.focal_baseline / depth).astype(np.float32)
    return {"left": left, "right": right, "disparity": disparity, "depth": depth.astype(np.float32),
            "principal_point": np.array([scene.cx, scene.cy], dtype=np.float32)}


def flying_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: independent of how many images and workers there are."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(index,)))


def render_index(cfg: FlyingConfig, seed: int, index: int) -> dict[str, np.ndarray]:
    """Image ``index`` of the set with ``seed`` (a function of ``(seed, index)`` only)."""
    return render_flying(sample_flying_scene(flying_rng(seed, index), cfg), cfg)


def _render_job(job: tuple[FlyingConfig, int, int]) -> dict[str, np.ndarray]:
    cfg, seed, index = job
    return render_index(cfg, seed, index)


def _init_worker() -> None:
    cv2.setNumThreads(1)       # one thread per worker process: the workers already use every core


def render_range(cfg: FlyingConfig, seed: int, start: int, stop: int, workers: int = 2,
                 desc: str = "rendering flying objects") -> dict[str, np.ndarray]:
    """Images ``start .. stop-1`` stacked: left, right (N, H, W, 3) uint8, disparity, depth
    (N, H, W) float32 and principal_point (N, 2)."""
    jobs = [(cfg, seed, i) for i in range(start, stop)]
    workers = max(1, min(int(workers), len(jobs)))
    bar = dict(total=len(jobs), desc=desc, unit="image", disable=None)
    if workers == 1:
        _init_worker()
        items = [r for r in tqdm(map(_render_job, jobs), **bar)]
    else:
        # spawn, not fork: a forked child can deadlock in OpenCV's thread pool
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            items = list(tqdm(pool.imap(_render_job, jobs, chunksize=8), **bar))
    if not items:
        raise ValueError(f"no images to render: range {start}..{stop}")
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


# --------------------------------------------------------------------------------------------
# the data source
# --------------------------------------------------------------------------------------------

class FlyingSource(Source):
    """Flying-objects stereo pairs with exact disparity: a pretraining source for stereo nodes.

    Its outputs are the stereo outputs of :class:`~entangle.data.world_source.WorldSource`
    (``left``, ``right``, ``calib``, ``baseline``, ``disparity``, ``depth``), so a
    :class:`~entangle.models.stereo.StereoNet` can be wired to either.

    Parameters
    ----------
    n_train, n_val : int
        Images of the ``train`` split (indices ``0 .. n_train-1``) and of the ``val`` split
        (the next ``n_val``; ``test`` reads the same images as ``val``).
    seed : int
        The data seed: image ``i`` is a function of ``(seed, i)``.
    config : mapping, optional
        Overrides of :class:`FlyingConfig` fields (image size, depth range, object counts...).
    workers : int
        Rendering processes.
    cache : bool
        Write the rendered arrays under ``datasets/generated/`` (named by a digest of the
        config, seed and sizes) and memory-map them from then on; otherwise render in memory.
    """

    uses_seed = False           # the data are fixed; study seeds vary initialisation and order
    execution_params = ("workers", "cache")
    output_kinds = {"left": "image", "right": "image", "calib": "calib", "baseline": "scalar",
                    "disparity": "disparity", "depth": "depth"}

    def __init__(self, *, n_train: int = 2000, n_val: int = 64, seed: int = 0,
                 config: Mapping[str, Any] | None = None, workers: int = 2, cache: bool = True):
        self.n_train = n_train
        self.n_val = n_val
        self.seed = seed
        self.config = config
        self.workers = workers
        self.cache = cache

    def flying_config(self) -> FlyingConfig:
        return FlyingConfig.from_dict(self.config)

    def _range(self, split: str) -> tuple[int, int]:
        if split == "train":
            return 0, int(self.n_train)
        if split in ("val", "test"):
            return int(self.n_train), int(self.n_train) + int(self.n_val)
        raise ValueError(f"{type(self).__name__}: unknown split {split!r} (train, val or test)")

    def folder(self, split: str) -> Path:
        """Where a split's arrays are cached (named by a digest of what defines them)."""
        start, stop = self._range(split)
        key = json.dumps({"version": FLYING_VERSION, "config": self.flying_config().to_dict(),
                          "seed": int(self.seed), "range": [start, stop]}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return GENERATED / f"flying-s{self.seed}-{start}-{stop}-{digest}"

    def load(self, split: str, seed: int) -> dict[str, Any]:
        cfg = self.flying_config()
        start, stop = self._range(split)
        folder = self.folder(split)
        names = ("left", "right", "disparity", "depth", "principal_point")
        if self.cache and (folder / "done").is_file():
            arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in names}
        else:
            arrays = render_range(cfg, int(self.seed), start, stop, self.workers,
                                  desc=f"rendering flying objects ({split})")
            if self.cache:
                tmp = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
                tmp.mkdir(parents=True, exist_ok=True)
                for k in names:
                    np.save(tmp / f"{k}.npy", arrays[k])
                (tmp / "done").write_text(json.dumps({"n": stop - start}))
                try:
                    tmp.rename(folder)
                except OSError:         # another process published it first: use theirs
                    shutil.rmtree(tmp, ignore_errors=True)
        n = stop - start
        cam = cfg.camera
        # P2 of each window: the street camera's focal length and where its axis meets the window
        P2 = np.zeros((n, 3, 4), dtype=np.float32)
        P2[:, 0, 0] = P2[:, 1, 1] = cam.focal
        P2[:, :2, 2] = arrays["principal_point"]
        P2[:, 2, 2] = 1.0
        out = {k: arrays[k] for k in names[:4]}
        return {**out, "calib": P2, "baseline": np.full(n, cam.baseline, dtype=np.float32)}
