"""The scikit-learn digits data set (1,797 8×8 images, ships offline) as a data source.

Stands in for SVHN in the paper's illustrative experiments; a user with SVHN's ``.mat`` files
can point :class:`SVHNSource` at a local folder instead.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Mapping

import numpy as np

from entangle.data.toys import split_rng
from entangle.node import Source


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


class DigitsSource(Source):
    """Digits split into named parts by fractions, shuffled by ``data_seed`` (or the study seed).

    Outputs ``image`` (N, 8, 8) float32 in [0, 1], ``x`` (N, 64) the flattened image, ``y`` the
    digit (int), and ``index`` the row in the full data set (so analyses can join attributes).
    ``label_noise`` replaces that fraction of *training* labels by random digits.
    """

    uses_seed = True
    output_kinds = {"image": "image", "x": "array", "y": "array", "index": "array"}

    def __init__(self, *, fractions: Mapping[str, float] | None = None, data_seed: int | None = 0,
                 label_noise: float = 0.0, noisy_splits: tuple[str, ...] = ("train",)):
        self.fractions = fractions
        self.data_seed = data_seed
        self.label_noise = label_noise
        self.noisy_splits = noisy_splits
        fr = dict(fractions or {"train": 0.6, "test": 0.4})
        if any(v < 0 for v in fr.values()) or sum(fr.values()) > 1.0 + 1e-9:
            raise ValueError(f"DigitsSource fractions must be non-negative and sum to at most 1: {fr}")
        if not 0.0 <= label_noise <= 1.0:
            raise ValueError(f"label_noise must lie in [0, 1], got {label_noise}")

    def _indices(self, seed: int) -> dict[str, np.ndarray]:
        images, _ = _digits()
        order = split_rng(seed if self.data_seed is None else self.data_seed, "digits").permutation(len(images))
        fr = dict(self.fractions or {"train": 0.6, "test": 0.4})
        out, start = {}, 0
        for name in sorted(fr):
            n = int(round(fr[name] * len(images)))
            out[name] = np.sort(order[start:start + n])
            start += n
        return out

    def load(self, split: str, seed: int) -> dict[str, np.ndarray]:
        idx = self._indices(seed)
        if split not in idx:
            raise KeyError(f"DigitsSource has no split {split!r} (fractions: {sorted(idx)})")
        images, labels = _digits()
        rows = idx[split]
        y = labels[rows].copy()
        if self.label_noise > 0 and split in self.noisy_splits:
            rng = split_rng(seed, f"noise/{split}")
            flip = rng.random(len(y)) < self.label_noise
            y[flip] = rng.integers(0, 10, flip.sum())
        img = images[rows]
        return {"image": img, "x": img.reshape(len(rows), -1), "y": y, "index": rows}


class SVHNSource(Source):
    """SVHN from a local folder holding ``train_32x32.mat`` and ``test_32x32.mat`` (not downloaded).

    Outputs ``image`` (N, 32, 32, 3) float32 in [0, 1], ``x`` flattened grey values, ``y`` in 0–9.
    """

    output_kinds = {"image": "image", "x": "array", "y": "array", "index": "array"}
    uses_seed = False

    def __init__(self, *, root: str, limit: int | None = None):
        self.root = root
        self.limit = limit

    def load(self, split: str, seed: int) -> dict[str, np.ndarray]:
        from scipy.io import loadmat
        path = Path(self.root) / f"{'train' if split == 'train' else 'test'}_32x32.mat"
        if not path.is_file():
            raise FileNotFoundError(f"SVHN file {path} not found: SVHN is not downloaded by entangle; "
                                    "place train_32x32.mat/test_32x32.mat in that folder")
        mat = loadmat(path)
        img = np.moveaxis(mat["X"], -1, 0).astype(np.float32) / 255.0
        y = mat["y"].ravel().astype(np.int64) % 10  # SVHN labels '0' as 10
        if self.limit:
            img, y = img[: self.limit], y[: self.limit]
        grey = img.mean(axis=-1)
        return {"image": img, "x": grey.reshape(len(grey), -1), "y": y, "index": np.arange(len(y))}
