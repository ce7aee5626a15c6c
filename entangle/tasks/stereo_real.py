"""Stereo methods on real data (Middlebury motorcycle) and on the synthetic world, side by side.

Every method in ``cfg.stereo`` (a callable ``(left, right, calib=None, **params) -> float32
disparity``, NaN = invalid) runs on scikit-image's Middlebury motorcycle pair (offline, with
ground truth; inf there marks invalid pixels) and on freshly rendered world scenes. The report
holds end-point error, bad-pixel rates and D1 (after KITTI's background interpolation of
invalid predictions) and, for the world, the same per true-depth bin; figures show left image,
ground truth, prediction and error. Learned stereo joins by adding an entry to ``stereo``.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from typing import Any, Callable

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from entangle.data.world import WorldConfig, render_scene, sample_scene, scene_rng
from entangle.models.classical_stereo import fill_invalid, metrics_by_distance, stereo_metrics
from entangle.study import ConfigError
from entangle.tasks import output_dir

log = logging.getLogger(__name__)


def stereo_methods(cfg: DictConfig) -> dict[str, Callable[..., np.ndarray]]:
    """The callables of ``cfg.stereo`` by name (Hydra ``_target_`` with ``_partial_: true``)."""
    methods = cfg.get("stereo")
    if not methods:
        raise ConfigError("stereo_real needs a `stereo` mapping of name -> stereo callable")
    out = {}
    for name, spec in methods.items():
        fn = instantiate(spec)
        if not callable(fn):
            raise ConfigError(f"stereo.{name} does not build a callable (add `_partial_: true`)")
        out[str(name)] = fn
    return out


def _call(fn: Callable, left, right, calib, params: dict[str, Any]) -> np.ndarray:
    """Call a stereo method with the dataset's params it accepts (others are dropped)."""
    try:
        sig = inspect.signature(fn)
        takes_all = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        kwargs = params if takes_all else {k: v for k, v in params.items() if k in sig.parameters}
    except (TypeError, ValueError):
        kwargs = {}
    disp = np.asarray(fn(left, right, calib, **kwargs), dtype=np.float32)
    if disp.shape != np.asarray(left).shape[:disp.ndim]:
        raise ValueError(f"stereo method returned shape {disp.shape} for images {np.shape(left)}")
    return disp


def _rounded(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in d.items()}


def run_middlebury(methods: dict, params: dict) -> tuple[dict, dict]:
    """Metrics per method on the motorcycle pair; also returns the predictions for figures."""
    from skimage import data as skdata
    left, right, gt = skdata.stereo_motorcycle()
    gt = np.where(np.isfinite(gt), gt, 0).astype(np.float32)  # inf marks invalid pixels
    results, preds = {}, {}
    for name, fn in methods.items():
        start = time.perf_counter()
        pred = _call(fn, left, right, None, params)
        seconds = time.perf_counter() - start
        results[name] = _rounded({**stereo_metrics(pred, gt), "seconds": seconds})
        preds[name] = pred
        log.info("Middlebury motorcycle, %s: EPE %.3f px, bad-3 %.2f%%", name,
                 results[name]["epe"], 100 * results[name]["bad3"])
    return {"image_size": list(left.shape[:2]), "valid_gt_share": float((gt > 0).mean()),
            "methods": results}, {"left": left, "gt": gt, "preds": preds}


def run_world(methods: dict, params: dict, wcfg: WorldConfig, n_scenes: int, seed: int,
              bins: list[float]) -> tuple[dict, dict]:
    """Metrics per method on ``n_scenes`` rendered scenes: all, non-occluded, objects, per bin."""
    samples = [render_scene(sample_scene(scene_rng(seed, i), wcfg), wcfg, sample_id=f"{i:06d}")
               for i in range(n_scenes)]
    gt = np.stack([s.disparity for s in samples])
    noc = np.stack([s.disparity_noc for s in samples])
    objects = np.stack([s.instances > 0 for s in samples])
    fb = samples[0].calib.fb
    results, preds = {}, {}
    for name, fn in methods.items():
        start = time.perf_counter()
        pred = np.stack([_call(fn, s.left, s.right, s.calib, params) for s in samples])
        seconds = time.perf_counter() - start
        results[name] = {
            "all": _rounded(stereo_metrics(pred, gt)),
            "noc": _rounded(stereo_metrics(pred, noc)),
            "objects": _rounded(stereo_metrics(pred, gt, objects)),
            "by_distance": [_rounded(r) for r in metrics_by_distance(pred, gt, fb, bins)],
            "seconds_per_pair": round(seconds / n_scenes, 4)}
        preds[name] = pred[0]
        log.info("world (%d scenes), %s: EPE %.3f px, bad-3 %.2f%%", n_scenes, name,
                 results[name]["all"]["epe"], 100 * results[name]["all"]["bad3"])
    return {"n_scenes": n_scenes, "seed": seed, "methods": results}, {
        "left": samples[0].left, "gt": gt[0], "preds": preds}


def _figure(shown: dict, path, title: str, vmax: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(shown["preds"])
    h, w = shown["gt"].shape
    fig, axes = plt.subplots(len(names), 4, figsize=(13, len(names) * 13 / 4 * h / w + 0.6),
                             squeeze=False)
    gt = np.where(shown["gt"] > 0, shown["gt"], np.nan)
    for row, name in zip(axes, names):
        pred = shown["preds"][name]
        err = np.where(np.isfinite(gt), np.abs(fill_invalid(pred) - shown["gt"]), np.nan)
        row[0].imshow(shown["left"])
        row[0].set_title("left image", fontsize=8)
        row[1].imshow(gt, cmap="magma", vmin=0, vmax=vmax)
        row[1].set_title("ground truth", fontsize=8)
        row[2].imshow(pred, cmap="magma", vmin=0, vmax=vmax)
        row[2].set_title(f"{name} (white: invalid)", fontsize=8)
        im = row[3].imshow(err, cmap="inferno", vmin=0, vmax=5)
        row[3].set_title(f"{name} |error| px (filled, clipped at 5)", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes[:, 3].tolist(), shrink=0.7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def _bins_figure(world: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for name, res in world["methods"].items():
        rows = [r for r in res["by_distance"] if r["n_pixels"]]
        mids = [(r["depth_lo"] + min(r["depth_hi"], r["depth_lo"] + 40)) / 2 for r in rows]
        for ax, key in zip(axes, ("epe", "bad3", "depth_mae")):
            ax.plot(mids, [r[key] for r in rows], marker="o", label=name)
    for ax, label in zip(axes, ("end-point error (px)", "bad-3 rate", "depth MAE (m)")):
        ax.set_xlabel("true depth (m, bin centre)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(cfg: DictConfig) -> dict:
    """Run every stereo method on Middlebury and the world; write figures; return the report."""
    methods = stereo_methods(cfg)
    out = output_dir(cfg)
    mb_params = OmegaConf.to_container(cfg.get("middlebury", {}).get("params", {}) or {})
    world_cfg = cfg.get("world_eval", {}) or {}
    w_params = OmegaConf.to_container(world_cfg.get("params", {}) or {})
    bins = [math.inf if b is None else float(b) for b in world_cfg.get("bins", [0, 10, 20, 30, 40, 60, None])]
    report: dict[str, Any] = {}
    middlebury, shown = run_middlebury(methods, mb_params)
    report["middlebury"] = middlebury
    _figure(shown, out / "stereo_middlebury.png", "Middlebury motorcycle (scikit-image)",
            float(np.nanmax(shown["gt"])))
    n_world = int(cfg.get("world_scenes") or 0)
    if n_world > 0:
        wcfg = WorldConfig.from_dict(cfg.data.world) if cfg.get("data") else WorldConfig()
        world, shown = run_world(methods, w_params, wcfg, n_world, int(cfg.get("seed", 0)), bins)
        report["world"] = world
        _figure(shown, out / "stereo_world.png", "synthetic world, scene 0",
                float(np.nanmax(shown["gt"])))
        _bins_figure(world, out / "stereo_world_bins.png")
    return report
