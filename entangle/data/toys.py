"""Synthetic Gaussian data sources for toy systems (seconds on CPU, known ground truth)."""

from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import numpy as np

from entangle.node import Source


def split_rng(seed: int, split: str) -> np.random.Generator:
    """A generator fixed by (seed, split name), so splits are independent and reproducible."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode())])


class GaussianSource(Source):
    """Features ``x ~ N(0, diag(variances))`` and linear targets ``t = x·w_t + N(0, noise_t²)``.

    Parameters
    ----------
    variances : per-feature variance; unequal variances make shrinkage change directions.
    weights : target name -> weight vector (one weight per feature).
    noise : target name -> noise standard deviation (0 when absent).
    sizes : split name -> number of samples.
    data_seed : fixes the data across study seeds; None resamples the data with each seed.
    """

    def __init__(self, *, variances: Sequence[float] = (1.0, 1.0),
                 weights: Mapping[str, Sequence[float]] | None = None,
                 noise: Mapping[str, float] | None = None,
                 sizes: Mapping[str, int] | None = None, data_seed: int | None = None):
        self.variances = variances
        self.weights = weights
        self.noise = noise
        self.sizes = sizes
        self.data_seed = data_seed
        for name, w in (weights or {}).items():
            if len(w) != len(variances):
                raise ValueError(f"target {name!r} has {len(w)} weights for {len(variances)} features")

    @property
    def output_kinds(self) -> dict[str, str]:  # type: ignore[override]
        return {"x": "array", **{t: "array" for t in (self.weights or {})}}


    def load(self, split: str, seed: int) -> dict[str, np.ndarray]:
        sizes = dict(self.sizes or {"train": 1000, "test": 1000})
        if split not in sizes:
            raise KeyError(f"GaussianSource has no split {split!r} (sizes: {sorted(sizes)})")
        rng = split_rng(seed if self.data_seed is None else self.data_seed, split)
        sd = np.sqrt(np.asarray(self.variances, dtype=np.float64))
        x = rng.standard_normal((int(sizes[split]), len(sd))) * sd
        out = {"x": x}
        for name in sorted(self.weights or {}):
            w = np.asarray(self.weights[name], dtype=np.float64)
            eps = rng.standard_normal(len(x)) * float((self.noise or {}).get(name, 0.0))
            out[name] = x @ w + eps
        return out
