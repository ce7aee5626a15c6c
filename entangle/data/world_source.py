"""A KITTI-layout folder (the synthetic world, or real KITTI) as a data source of a system.

The synthetic world is rendered on first use into a folder named by a digest of its config, so
a system's cache keys follow the data: a different world is a different folder and key. Real
KITTI is read from ``root`` unchanged; its key includes a digest of the folder's listing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from entangle.data.kitti import label_rows
from entangle.data.labels import LABEL_COLUMNS
from entangle.node import Ragged, Source

log = logging.getLogger(__name__)

#: per-object attribute columns (rows aligned with the label rows); NaN where unknown.
OBJECT_ATTRIBUTES = ("distance", "depth", "visible_fraction", "occlusion_fraction", "truncation",
                     "height_px", "contrast", "luminance", "lighting", "texture_contrast")

#: the default place generated data is written (git-ignored).
GENERATED = Path(__file__).resolve().parents[2] / "datasets" / "generated"


def attribute_rows(attributes: Mapping[str, Any] | None, n: int) -> np.ndarray:
    """Per-object attributes from a side file as (n, len(OBJECT_ATTRIBUTES)) float32, NaN if absent."""
    out = np.full((n, len(OBJECT_ATTRIBUTES)), np.nan, dtype=np.float32)
    objs = (attributes or {}).get("objects") or []
    for i, a in enumerate(objs[:n]):
        for j, name in enumerate(OBJECT_ATTRIBUTES):
            v = a.get(name)
            if isinstance(v, (int, float)) and v is not None:
                out[i, j] = v
    return out


#: per-pixel arrays: memory-mapped from the decoded cache (the rest is small and loaded whole)
MAPPED = ("left", "right", "disparity", "depth")


@lru_cache(maxsize=4)
def _load_split(root: str, split: str, limit: int | None) -> dict[str, Any]:
    """A split's arrays, decoded once into ``.npy`` files and memory-mapped from then on.

    The first load decodes the PNGs and writes every output (atomically, under
    ``datasets/generated/arrays/``); later loads map the per-pixel arrays read-only, so pages a
    node does not read stay on disk and the rest can be evicted under memory pressure, and the
    PNGs are not decoded again. The cache is named by the folder, split, limit and the split
    list's modification time (real data edited in place gets a new cache).
    """
    listing = Path(root) / "ImageSets" / f"{split}.txt"
    stamp = listing.stat().st_mtime_ns if listing.is_file() else 0
    ds_id = hashlib.sha256(f"{Path(root).resolve()}|{split}|{limit}|{stamp}".encode()).hexdigest()[:16]
    folder = GENERATED / "arrays" / ds_id
    if not (folder / "done").is_file():
        data = _decode_split(root, split, limit)
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, value in data.items():
            if isinstance(value, Ragged):
                np.save(tmp / f"{name}.values.npy", value.values)
                np.save(tmp / f"{name}.offsets.npy", value.offsets)
            else:
                np.save(tmp / f"{name}.npy", value)
        (tmp / "done").write_text(json.dumps({"root": str(root), "split": split, "limit": limit,
                                              "keys": sorted(data)}))
        try:
            tmp.rename(folder)
        except OSError:            # another process published the same cache first: use theirs
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        del data
    keys = json.loads((folder / "done").read_text())["keys"]
    out: dict[str, Any] = {}
    for name in keys:
        if (folder / f"{name}.npy").is_file():
            out[name] = np.load(folder / f"{name}.npy", mmap_mode="r" if name in MAPPED else None)
        else:
            out[name] = Ragged(np.load(folder / f"{name}.values.npy"), np.load(folder / f"{name}.offsets.npy"))
    return out


def _decode_split(root: str, split: str, limit: int | None) -> dict[str, Any]:
    from entangle.data.kitti import KittiDataset
    ds = KittiDataset(root, split)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise ValueError(f"split {split!r} of {root} holds no scenes")
    lefts, rights, p2, base, disp, depth, labels, attrs, ids = [], [], [], [], [], [], [], [], []
    for i in range(n):
        s = ds[i]
        lefts.append(s.left)
        rights.append(s.right)
        p2.append(s.calib.P2)
        base.append(s.calib.baseline)
        H = s.left.shape[0]
        if s.disparity is None:
            raise ValueError(f"scene {s.id} of {root} has no disparity: the case study needs "
                             "ground-truth disparity (KITTI's disp_occ or the world's)")
        disp.append(s.disparity)
        depth.append(s.depth)
        rows = label_rows(s.objects, H)
        labels.append(rows)
        attrs.append(attribute_rows(s.attributes, len(rows)))
        ids.append(s.id)
    shapes = {x.shape for x in lefts}
    if len(shapes) != 1:
        raise ValueError(f"images of split {split!r} in {root} differ in size: {sorted(shapes)}")
    return {
        "left": np.stack(lefts), "right": np.stack(rights),
        "calib": np.stack(p2).astype(np.float32), "baseline": np.asarray(base, np.float32),
        "disparity": np.stack(disp).astype(np.float32), "depth": np.stack(depth).astype(np.float32),
        "labels": Ragged.from_list(labels, width=len(LABEL_COLUMNS)),
        "object_attributes": Ragged.from_list(attrs, width=len(OBJECT_ATTRIBUTES)),
        "id": np.asarray([int(i) if i.isdigit() else k for k, i in enumerate(ids)], np.int64),
    }


class WorldSource(Source):
    """Stereo scenes with ground truth from a KITTI-layout folder, rendered first if need be.

    Parameters
    ----------
    root : a KITTI-layout folder; None renders the synthetic world under ``datasets/generated/``.
    n_scenes, seed, world : the world to render (``world`` overrides ``WorldConfig`` fields).
    limits : split -> at most this many scenes (the first ones), to train on a subset.
    aliases : split -> the ImageSets list it reads (e.g. ``large: train``: the whole train list,
        while ``train`` itself is limited — the decomposition's large sample).
    workers : rendering processes.
    """

    uses_seed = False  # the data are fixed; study seeds vary initialisation and order
    execution_params = ("workers",)  # rendering processes: the same scenes however many
    output_kinds = {"left": "image", "right": "image", "calib": "calib", "baseline": "scalar",
                    "disparity": "disparity", "depth": "depth", "labels": "labels",
                    "object_attributes": "table", "id": "array"}

    def __init__(self, *, root: str | None = None, n_scenes: int = 200, seed: int = 0,
                 world: Mapping[str, Any] | None = None, limits: Mapping[str, int] | None = None,
                 aliases: Mapping[str, str] | None = None, workers: int = 2):
        self.root = root
        self.n_scenes = n_scenes
        self.seed = seed
        self.world = world
        self.limits = limits
        self.aliases = aliases
        self.workers = workers

    def world_config(self):
        from entangle.data.world import WorldConfig
        return WorldConfig.from_dict(dict(self.world or {}))

    def generator(self) -> dict[str, Any]:
        """What defines a generated world: the renderer's code version and its full config.

        The renderer's code (``entangle.data.world`` and every module of the project it imports)
        and every field of the config, defaults included, so a change of either renders a new
        world into a new folder and gives every node below a new key.
        """
        from entangle.hashing import module_closure
        code = hashlib.sha256(json.dumps(module_closure("entangle.data.world")).encode()).hexdigest()[:16]
        return {"code": code, "config": self.world_config().to_dict(), "n_scenes": int(self.n_scenes),
                "seed": int(self.seed)}

    def folder(self) -> Path:
        """The data folder: ``root``, or the generated world's folder (named by its digest)."""
        if self.root is not None:
            return Path(self.root).expanduser()
        digest = hashlib.sha256(json.dumps(self.generator(), sort_keys=True).encode()).hexdigest()[:12]
        return GENERATED / f"world-{self.n_scenes}-s{self.seed}-{digest}"

    def ensure_generated(self) -> Path:
        """Render the world if its folder is not complete yet; returns the folder."""
        folder = self.folder()
        if self.root is not None:
            if not folder.is_dir():
                raise FileNotFoundError(f"data root {folder} does not exist")
            return folder
        if (folder / "world.json").is_file():
            return folder
        from entangle.data.world import write_world
        log.info("rendering %d scenes of the synthetic world into %s", self.n_scenes, folder)
        tmp = folder.with_name(folder.name + ".partial")
        if tmp.exists():
            import shutil
            shutil.rmtree(tmp)
        write_world(tmp, self.n_scenes, self.seed, self.world_config(), self.workers)
        tmp.rename(folder)
        return folder

    def data_fingerprint(self) -> Any:
        """What the data are: the generator (code and full config) of a generated world; for real
        data under ``root``, a digest of the folder's listing (names and sizes)."""
        if self.root is None:
            return {"generated": self.generator()}
        folder = self.folder()
        h = hashlib.sha256()
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix in (".txt", ".png", ".json"):
                h.update(f"{p.relative_to(folder)}:{p.stat().st_size}\n".encode())
        return h.hexdigest()[:16]

    def load(self, split: str, seed: int) -> dict[str, Any]:
        folder = self.ensure_generated()
        limit = (self.limits or {}).get(split)
        listed = (self.aliases or {}).get(split, split)
        return _load_split(str(folder), listed, None if limit is None else int(limit))
