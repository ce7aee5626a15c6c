"""Render the synthetic stereo world into a KITTI-layout folder and summarise what was written.

``python -m entangle experiment=make_world data.root=DIR data.n_scenes=N seed=S`` writes the
layout described in ``datasets/world.md``; the report holds object counts per class and
difficulty, the split sizes and the throughput, and a figure of sample scenes read back through
:class:`~entangle.data.kitti.KittiDataset` (so the figure also checks the round trip).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from entangle.data.kitti import KittiDataset, split_ids
from entangle.data.world import WorldConfig, world_summary, write_world
from entangle.study import ConfigError
from entangle.tasks import output_dir

log = logging.getLogger(__name__)


def world_config(cfg: DictConfig) -> WorldConfig:
    """The :class:`WorldConfig` of ``cfg.data.world`` (errors name the offending key)."""
    data = cfg.get("data")
    if data is None or data.get("world") is None:
        raise ConfigError("no data.world config: add `- /data: world` to the experiment defaults")
    try:
        return WorldConfig.from_dict(data.world)
    except ValueError as err:
        raise ConfigError(f"conf/data/world.yaml: {err}") from err


def run(cfg: DictConfig) -> dict:
    """Generate ``data.n_scenes`` scenes (the profile's by default) with ``seed`` into ``data.root``."""
    wcfg = world_config(cfg)
    n_scenes = cfg.data.get("n_scenes")
    if not n_scenes or int(n_scenes) < 1:
        raise ConfigError(f"data.n_scenes must be a positive int, got {n_scenes!r}")
    root = Path(str(cfg.data.root))
    seed = int(cfg.get("seed", 0))
    workers = int(cfg.data.get("workers", 2))
    start = time.perf_counter()
    summaries = write_world(root, int(n_scenes), seed, wcfg, workers=workers)
    elapsed = time.perf_counter() - start
    report = {"root": str(root), "seed": seed, "n_scenes": int(n_scenes), "workers": workers,
              "seconds": round(elapsed, 3), "scenes_per_second": round(n_scenes / elapsed, 2),
              "splits": {s: len(split_ids(root, s)) for s in ("train", "val", "test")}}
    report.update(world_summary(summaries))
    n_fig = int(cfg.get("figure_scenes", 4))
    if n_fig > 0:
        from entangle.data.preview import sample_grid
        ds = KittiDataset(root, split="all")
        path = sample_grid([ds[i] for i in range(min(n_fig, len(ds)))],
                           output_dir(cfg) / "world_samples.png")
        report["figure"] = path.name
    log.info("wrote %d scenes to %s at %.1f scenes/s", n_scenes, root, n_scenes / elapsed)
    return report
