"""Street digits carved up for the paper's four illustrative experiments (Wu et al. 2021, §3).

The paper ran them on SVHN with its own splits, label maps and noise (facebookresearch/
self_defeating_improvements, ``svhn_based_exp``); SVHN cannot be downloaded here, so the
street-digits world (:mod:`entangle.data.street_digits`) renders the images, and a local SVHN
folder (``svhn_root``) is a drop-in replacement. Every setup has the splits

- ``up_train``: the upstream's validation rows first (``holdout`` = 1, clean labels; the
  upstream keeps the epoch that is best on them), then its training *pool* in the order in which
  a "more data" knob takes it (``subsample`` of :class:`~entangle.models.convnet.ConvNetNode`);
- ``up_test``: the upstream's own test split (its own loss is judged there);
- ``train``, ``large``, ``test``: the downstream's training split, the decomposition's large
  split, and the system's eval split.

Where the downstream trains (``downstream_train``): ``"upstream"`` (the paper's protocol,
``train_svhn.py`` reads the same training set for both) makes ``train`` the upstream's pool,
restricted to the downstream's digits, with clean labels: the downstream reads the upstream's
outputs on the very images the upstream was trained on (all of them when the upstream trained
on the whole pool). ``"separate"``: ``train`` is its own stream of ``sizes["train"]`` unseen
images. ``pool_pos`` is a row's position in the upstream's pool (−1 for rows not in it), so an
analysis can tell the rows an upstream trained on (the first ``subsample`` share) from the rest.

The setups, as in the paper's code:

- ``loss_function``: digits 1, 3, 7, 9, balanced. The upstream regresses the digit's value
  (``value``). The pool is cut into ten equal slices; the first is clean, and in each later
  slice exactly half (rounded down) of the 1s and 3s swap labels (y → 4 − y) and half of the 7s
  and 9s (y → 16 − y). Training on the first r/10 + 0.1 of the pool is the paper's knob r.
  The downstream classifies the four digits (``cls``) from the upstream's output.
- ``data_distribution``: the upstream learns {1, 0, 7, 4, 9} vs {6, 2, 3, 5, 8} (``coarse``)
  on all ten digits; the downstream's splits hold only 1s and 7s, which it separates
  (``pair``: 1 → 0, 7 → 1) from the upstream's features.
- ``hypothesis_space``: all ten digits; upstream and downstream both classify ``digit``
  (``onehot`` is the oracle input of the decomposition).
- ``entanglement``: digits 1, 7, 6, balanced. ``order`` ranks the pool's 1s and 7s from the
  hardest (0) by their latents (:func:`difficulty`; −1 elsewhere); :func:`flip_labels` swaps 1
  and 7 on the first ``int(0.5 · p · n)`` of them, as the paper swaps them in its fixed order of
  difficulty. Upstream 1 learns 1 vs {6, 7}, upstream 2 learns 7 vs {1, 6}; the downstream
  tells {1, 7} (``target`` 1) from 6.

Every split also carries ``image``, ``digit``, ``holdout``, ``index`` and ``attributes`` (the
latents, NaN for SVHN).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np

from entangle.data.street_digits import ATTRIBUTE_NAMES, StreetDigitsSource
from entangle.node import Source

log = logging.getLogger(__name__)

SETUPS = ("loss_function", "data_distribution", "hypothesis_space", "entanglement")
#: the splits every setup serves
SPLITS = ("up_train", "up_test", "train", "large", "test")
#: where the downstream's training split comes from (see the module docstring)
DOWNSTREAM_TRAIN = ("upstream", "separate")
#: the sizes a setup needs: the upstream's validation rows and pool, and one per other split
SIZE_KEYS = ("up_val", "up_pool", "up_test", "train", "large", "test")
ALL_DIGITS = tuple(range(10))
#: per setup: the digits of the upstream's splits and of the downstream's
DIGITS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "loss_function": ((1, 3, 7, 9), (1, 3, 7, 9)),
    "data_distribution": (ALL_DIGITS, (1, 7)),
    "hypothesis_space": (ALL_DIGITS, ALL_DIGITS),
    "entanglement": ((1, 7, 6), (1, 7, 6)),
}
#: the loss-function setup's dirty pairs: swapping within a pair maps y to its sum minus y
PAIRS = ((1, 3), (7, 9))
#: the data-distribution upstream's class 1 (the paper's label map; the rest is class 0)
COARSE_ONE = (6, 2, 3, 5, 8)
#: slices of the loss-function pool: the first clean, each later one half swapped
SLICES = 10
#: latents that make a digit hard (+1: the larger the harder), for the entanglement order
HARDNESS = {"contrast": -1, "scale": -1, "blur": +1, "noise": +1, "jpeg_quality": -1, "resolution": -1}

_CACHE: dict[tuple, dict[str, np.ndarray]] = {}
_CACHE_SIZE = 12


def flip_labels(digit: np.ndarray, order: np.ndarray, *, noise: float, positive: int) -> np.ndarray:
    """One-vs-rest labels (``digit == positive``) after swapping 1 and 7 on the hardest rows.

    ``order`` ranks the rows that may swap from the hardest (0) and is −1 on every other row;
    the first ``int(0.5 · noise · n)`` of the ``n`` ranked rows swap 1 and 7 (the paper swaps
    that share of its training set in its fixed order of difficulty). ``noise=0``: clean labels.
    """
    d = np.asarray(digit).astype(np.int64).copy()
    order = np.asarray(order)
    n = int(np.sum(order >= 0))
    k = int(math.floor(0.5 * float(noise) * n + 1e-9))
    flip = (order >= 0) & (order < k) & np.isin(d, (1, 7))
    d[flip] = 8 - d[flip]
    return (d == int(positive)).astype(np.int64)


def difficulty(attributes: np.ndarray) -> np.ndarray:
    """How hard each image is, from its exact latents: the mean percentile rank of the
    :data:`HARDNESS` latents, each oriented so that larger is harder (n,), in [0, 1]."""
    ranks = []
    for name, sign in HARDNESS.items():
        col = sign * np.asarray(attributes[:, ATTRIBUTE_NAMES.index(name)], dtype=np.float64)
        ranks.append(np.argsort(np.argsort(col, kind="stable"), kind="stable") / max(len(col) - 1, 1))
    return np.mean(ranks, axis=0)


def margin_difficulty(x: np.ndarray, digit: np.ndarray) -> np.ndarray:
    """Without latents (SVHN): closeness to a 1-vs-7 logistic boundary on grey pixels (n,)."""
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(x, digit == 7)
    return -np.abs(clf.decision_function(x))


def dirty_values(digit: np.ndarray, seed: int, slices: int = SLICES) -> np.ndarray:
    """The loss-function pool's labels: the digit's value, except in slices 2..``slices`` of the
    pool where exactly half (rounded down) of each pair's members swap within the pair."""
    value = digit.astype(np.float64).copy()
    n = len(digit)
    bounds = [k * n // slices for k in range(slices + 1)]
    for k in range(1, slices):
        rows = np.arange(bounds[k], bounds[k + 1])
        rng = np.random.default_rng([int(seed), k, 0xD1])
        for a, b in PAIRS:
            members = rows[np.isin(digit[rows], (a, b))]
            swap = rng.choice(members, size=len(members) // 2, replace=False) if len(members) else members
            value[swap] = a + b - value[swap]
    return value


class PaperDigitsSource(Source):
    """The splits of one of the paper's illustrative experiments (see the module docstring).

    Parameters
    ----------
    setup : one of :data:`SETUPS`.
    sizes : images per part: ``up_val`` (the upstream's validation rows), ``up_pool`` (its
        training pool; a multiple of 10 for ``loss_function``), ``up_test``, ``train``,
        ``large``, ``test``.
    data_seed : the world's seed; None: the study seed (every seed is a new world, so seeds
        replicate data as well as initialisation).
    size : image side in pixels.
    world : overrides of :class:`~entangle.data.street_digits.StreetDigitsConfig` fields.
    svhn_root : a folder with SVHN's ``train_32x32.mat`` and ``test_32x32.mat`` to read
        instead of rendering (``test`` from the test file, the other splits from disjoint rows
        of the train file, the same images for every seed); the entanglement order then comes
        from :func:`margin_difficulty`.
    downstream_train : ``"separate"`` (its own images, ``sizes["train"]`` of them) or
        ``"upstream"`` (the upstream's pool rows of the downstream's digits; ``sizes["train"]``
        is then unused).
    workers, disk_cache : rendering processes, and whether rendered splits are kept on disk
        (:class:`~entangle.data.street_digits.StreetDigitsSource`); neither changes the data.
    """

    execution_params = ("workers", "disk_cache")

    def __init__(self, *, setup: str, sizes: Mapping[str, int], data_seed: int | None = None,
                 size: int = 32, world: Mapping[str, Any] | None = None,
                 svhn_root: str | None = None, downstream_train: str = "separate",
                 workers: int = 1, disk_cache: bool = True):
        self.setup = setup
        self.downstream_train = downstream_train
        self.sizes = sizes
        self.data_seed = data_seed
        self.size = size
        self.world = world
        self.svhn_root = svhn_root
        self.workers = workers
        self.disk_cache = disk_cache
        if setup not in SETUPS:
            raise ValueError(f"PaperDigitsSource setup must be one of {SETUPS}, got {setup!r}")
        missing = sorted(set(SIZE_KEYS) - set(dict(sizes)))
        unknown = sorted(set(dict(sizes)) - set(SIZE_KEYS))
        if missing or unknown:
            raise ValueError(f"PaperDigitsSource sizes needs exactly {list(SIZE_KEYS)}; "
                             f"missing {missing}, unknown {unknown}")
        if downstream_train not in DOWNSTREAM_TRAIN:
            raise ValueError(f"PaperDigitsSource downstream_train must be one of {DOWNSTREAM_TRAIN}, "
                             f"got {downstream_train!r}")
        if setup == "loss_function" and int(sizes["up_pool"]) % SLICES:
            raise ValueError(f"PaperDigitsSource(loss_function): up_pool must be a multiple of "
                             f"{SLICES} (its slices), got {sizes['up_pool']}")


    @property
    def output_kinds(self) -> dict[str, str]:  # type: ignore[override]
        extra = {"loss_function": ("value", "value_clean", "cls"),
                 "data_distribution": ("coarse", "pair"),
                 "hypothesis_space": ("onehot",),
                 "entanglement": ("order", "is1", "is7", "target")}[self.setup]
        return {"image": "image", "digit": "array", "holdout": "array", "index": "array", "pool_pos": "array",
                "attributes": "table", **{k: "array" for k in extra}}

    # -- raw parts ----------------------------------------------------------------------------
    def _part(self, part: str, world_seed: int) -> dict[str, np.ndarray]:
        """One part (a size key) of the world: image, digit, index, attributes."""
        sizes = {k: int(v) for k, v in dict(self.sizes).items()}
        up, down = DIGITS[self.setup]
        digits = up if part.startswith("up_") else down
        if self.svhn_root is None:
            src = StreetDigitsSource(sizes={part: sizes[part]}, digits=digits, data_seed=world_seed,
                                     size=self.size, world=self.world, workers=self.workers,
                                     disk_cache=self.disk_cache)
            got = src.load(part, 0)
            return {"image": got["image"], "digit": got["y"], "index": got["index"],
                    "attributes": got["attributes"]}
        # SVHN: one all-digit source over every part, so the parts' rows never overlap; each
        # part keeps its digits (the file's rows are interleaved class by class)
        need = {k: int(math.ceil(v * 10 / len(DIGITS[self.setup][0 if k.startswith("up_") else 1]))) + 10
                for k, v in sizes.items()}
        src = StreetDigitsSource(sizes=need, digits=None, size=self.size, svhn_root=self.svhn_root)
        got = src.load(part, 0)
        keep = np.flatnonzero(np.isin(got["y"], digits))[:sizes[part]]
        return {"image": got["image"][keep], "digit": got["y"][keep], "index": got["index"][keep],
                "attributes": got["attributes"][keep]}

    # -- splits -------------------------------------------------------------------------------
    def load(self, split: str, seed: int) -> dict[str, np.ndarray]:
        if split not in SPLITS:
            raise KeyError(f"PaperDigitsSource has no split {split!r} (splits: {list(SPLITS)})")
        world_seed = int(seed if self.data_seed is None else self.data_seed)
        key = (self.setup, repr(sorted(dict(self.sizes).items())), world_seed, self.size,
               repr(sorted(dict(self.world or {}).items())), self.svhn_root, self.downstream_train, split)
        if key not in _CACHE:   # derived systems reload the same split many times
            while len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = self._load(split, world_seed)
        return {k: v.copy() for k, v in _CACHE[key].items()}

    def _load(self, split: str, world_seed: int) -> dict[str, np.ndarray]:
        if split == "up_train":   # validation rows first, then the pool in the knob's order
            val, pool = self._part("up_val", world_seed), self._part("up_pool", world_seed)
            out = {k: np.concatenate([val[k], pool[k]]) for k in val}
            out["holdout"] = np.concatenate([np.ones(len(val["digit"]), np.int64),
                                             np.zeros(len(pool["digit"]), np.int64)])
            out["pool_pos"] = np.concatenate([np.full(len(val["digit"]), -1, np.int64),
                                              np.arange(len(pool["digit"]), dtype=np.int64)])
        elif split == "train" and self.downstream_train == "upstream":
            pool = self._part("up_pool", world_seed)
            keep = np.flatnonzero(np.isin(pool["digit"], DIGITS[self.setup][1]))
            out = {k: v[keep] for k, v in pool.items()}
            out["holdout"] = np.zeros(len(keep), np.int64)
            out["pool_pos"] = keep.astype(np.int64)
        else:
            out = self._part(split, world_seed)
            out["holdout"] = np.zeros(len(out["digit"]), np.int64)
            out["pool_pos"] = np.full(len(out["digit"]), -1, np.int64)
        digit = out["digit"].astype(np.int64)
        out["digit"] = digit
        pool = (out["holdout"] == 0) if split == "up_train" else np.zeros(len(digit), bool)
        if self.setup == "loss_function":
            value = digit.astype(np.float64)
            if split == "up_train":
                value[pool] = dirty_values(digit[pool], world_seed)
            out.update(value=value, value_clean=digit.astype(np.float64),
                       cls=np.searchsorted(np.array([1, 3, 7, 9]), digit).astype(np.int64))
        elif self.setup == "data_distribution":
            out.update(coarse=np.isin(digit, COARSE_ONE).astype(np.int64),
                       pair=np.where(digit == 7, 1, np.where(digit == 1, 0, -1)).astype(np.int64))
        elif self.setup == "hypothesis_space":
            out["onehot"] = np.eye(10)[digit]
        else:
            order = np.full(len(digit), -1, np.int64)
            ranked = np.flatnonzero(pool & np.isin(digit, (1, 7)))
            if len(ranked):
                attrs = out["attributes"][ranked]
                hard = (difficulty(attrs) if np.all(np.isfinite(attrs)) else
                        margin_difficulty(_grey(out["image"][ranked]), digit[ranked]))
                order[ranked[np.argsort(-hard, kind="stable")]] = np.arange(len(ranked))
            out.update(order=order, is1=(digit == 1).astype(np.int64), is7=(digit == 7).astype(np.int64),
                       target=np.isin(digit, (1, 7)).astype(np.int64))
        return out


def _grey(images: np.ndarray) -> np.ndarray:
    """Flattened grey values (n, H·W) of colour images (n, H, W, 3)."""
    g = images[..., 0] * 0.299 + images[..., 1] * 0.587 + images[..., 2] * 0.114
    return g.reshape(len(g), -1).astype(np.float64)
