"""The digits carved up for the paper's four illustrative experiments (Wu et al. 2021, §3).

The paper ran them on SVHN, which cannot be downloaded here; scikit-learn's digits ship offline
and stand in for it (a user with SVHN's ``.mat`` files can pass ``svhn_root``). Every setup
splits the pool per class into the upstream's data (``up_train``, ``up_test``) and the
downstream's (``train``, ``large`` for the decomposition's reference learners, ``test``):

- ``loss_function``: digits 1, 3, 7, 9. The upstream regresses the digit *value* (squared loss);
  ``up_train`` holds its clean 20 % first and then noisy samples in which half of the 1s and 3s
  swap labels (and half of the 7s and 9s), which a regression loss averages to 2 (and 8). The
  downstream classifies the four digits from the upstream's output (``cls``).
- ``data_distribution``: all digits; the upstream learns a coarse binary task (``coarse``:
  {1, 0, 7, 4, 9} vs {6, 2, 3, 5, 8}); the downstream separates 1 from 7 (``pair``), which the
  upstream lumps together, from its features. Downstream splits hold only 1s and 7s.
- ``hypothesis_space``: all digits, the upstream and the downstream both classify ``digit``.
- ``entanglement``: digits 1, 7, 6. Two one-vs-rest upstreams (1 vs rest, 7 vs rest) whose
  training labels swap 1 and 7 on the hardest samples (``rank``, see :func:`flip_labels`), so
  their errors are anti-correlated; the downstream tells {1, 7} from 6 (``target``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entangle.data.toys import split_rng
from entangle.node import Source

SETUPS = ("loss_function", "data_distribution", "hypothesis_space", "entanglement")

# the downstream trains on a small share and the decomposition's `large` split is 2.5x larger
_DOWN = {"up_train": 0.40, "up_test": 0.10, "train": 0.10, "large": 0.25, "test": 0.15}
#: per setup: kept classes, and split fractions per class (``None``: the default for all classes).
PLANS: dict[str, dict[str, Any]] = {
    "loss_function": {"classes": (1, 3, 7, 9), "fractions": {None: _DOWN}},
    "data_distribution": {"classes": tuple(range(10)), "fractions": {
        None: {"up_train": 0.80, "up_test": 0.20},
        1: {"up_train": 0.30, "up_test": 0.10, "train": 0.10, "large": 0.30, "test": 0.20},
        7: {"up_train": 0.30, "up_test": 0.10, "train": 0.10, "large": 0.30, "test": 0.20}}},
    "hypothesis_space": {"classes": tuple(range(10)), "fractions": {None: _DOWN}},
    "entanglement": {"classes": (1, 7, 6), "fractions": {None: _DOWN}},
}
SPLITS = ("up_train", "up_test", "train", "large", "test")
_CACHE: dict[tuple, dict[str, np.ndarray]] = {}
COARSE_ONE = (6, 2, 3, 5, 8)


def flip_labels(digit: np.ndarray, rank: np.ndarray, *, noise: float, positive: int) -> np.ndarray:
    """One-vs-rest labels (``digit == positive``) after swapping 1 and 7 on the hardest samples.

    ``rank`` orders the upstream's training 1s and 7s from hardest (0) to easiest (1) and is 2 on
    every other sample; the samples with ``rank < noise / 2`` swap 1 and 7 (the paper flips half
    of the ``noise`` share). ``noise=0`` gives the clean labels.
    """
    d = np.asarray(digit).astype(np.int64).copy()
    flip = (np.asarray(rank) < noise / 2.0) & np.isin(d, (1, 7))
    d[flip] = 8 - d[flip]
    return (d == int(positive)).astype(np.int64)


def _pool(svhn_root: str | None, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    if svhn_root is None:
        from entangle.data.digits import _digits
        images, labels = _digits()
        return images.reshape(len(images), -1).astype(np.float64), labels
    from entangle.data.digits import SVHNSource
    src = SVHNSource(root=svhn_root, limit=limit)
    parts = [src.load(s, 0) for s in ("train", "test")]
    return (np.concatenate([p["x"] for p in parts]).astype(np.float64),
            np.concatenate([p["y"] for p in parts]))


class PaperDigitsSource(Source):
    """Digits split for one of the paper's illustrative experiments (see the module docstring).

    Parameters
    ----------
    setup : one of :data:`SETUPS`.
    dirty_share : ``loss_function`` only: the share of ``up_train`` after its clean first 20 %
        whose labels are noisy (1 = all of it).
    data_seed : None resamples the partition with each study seed; an int fixes it.
    svhn_root : a folder with SVHN's ``train_32x32.mat``/``test_32x32.mat`` to use instead of digits.
    svhn_limit : read at most this many SVHN images per file.

    Outputs ``x`` (flattened image), ``digit``, and the targets of the setup.
    """

    def __init__(self, *, setup: str, dirty_share: float = 1.0, data_seed: int | None = None,
                 svhn_root: str | None = None, svhn_limit: int | None = None):
        self.setup = setup
        self.dirty_share = dirty_share
        self.data_seed = data_seed
        self.svhn_root = svhn_root
        self.svhn_limit = svhn_limit
        if setup not in SETUPS:
            raise ValueError(f"PaperDigitsSource setup must be one of {SETUPS}, got {setup!r}")
        if not 0.0 <= dirty_share <= 1.0:
            raise ValueError(f"PaperDigitsSource dirty_share must lie in [0, 1], got {dirty_share}")

    @property
    def output_kinds(self) -> dict[str, str]:  # type: ignore[override]
        extra = {"loss_function": ("value", "value_clean", "cls"),
                 "data_distribution": ("coarse", "pair"),
                 "hypothesis_space": (),
                 "entanglement": ("is1", "is7", "target", "rank")}[self.setup]
        return {"x": "array", "digit": "array", **{k: "array" for k in extra}}

    def _indices(self, seed: int) -> dict[str, np.ndarray]:
        """Per-class partition into the five splits; ``up_train`` keeps its shuffled order."""
        _, labels = _pool(self.svhn_root, self.svhn_limit)
        plan = PLANS[self.setup]
        rng = split_rng(seed if self.data_seed is None else self.data_seed, f"paper/{self.setup}")
        out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for c in plan["classes"]:
            idx = rng.permutation(np.flatnonzero(labels == c))
            fr = plan["fractions"].get(c, plan["fractions"][None])
            start = 0
            for split in SPLITS:
                k = int(round(fr.get(split, 0.0) * len(idx)))
                out[split].append(idx[start:start + k])
                start += k
        result = {}
        for split, parts in out.items():
            idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            result[split] = rng.permutation(idx) if split == "up_train" else np.sort(idx)
        return result

    def load(self, split: str, seed: int) -> dict[str, np.ndarray]:
        if split not in SPLITS:
            raise KeyError(f"PaperDigitsSource has no split {split!r} (splits: {list(SPLITS)})")
        key = (self.setup, float(self.dirty_share), seed if self.data_seed is None else self.data_seed,
               self.svhn_root, self.svhn_limit, split)
        if key not in _CACHE:   # derived systems reload the same split many times
            if len(_CACHE) > 64:
                _CACHE.clear()
            _CACHE[key] = self._load(split, seed)
        return {k: v.copy() for k, v in _CACHE[key].items()}

    def _load(self, split: str, seed: int) -> dict[str, np.ndarray]:
        x_all, labels = _pool(self.svhn_root, self.svhn_limit)
        rows = self._indices(seed)[split]
        digit = labels[rows].astype(np.int64)
        out: dict[str, np.ndarray] = {"x": x_all[rows], "digit": digit}
        if self.setup == "loss_function":
            value = digit.astype(np.float64)
            if split == "up_train":
                value = self._noisy_values(digit, seed)
            out.update(value=value, value_clean=digit.astype(np.float64),
                       cls=np.searchsorted(np.array([1, 3, 7, 9]), digit).astype(np.int64))
        elif self.setup == "data_distribution":
            out.update(coarse=np.isin(digit, COARSE_ONE).astype(np.int64),
                       pair=np.where(digit == 7, 1, np.where(digit == 1, 0, -1)).astype(np.int64))
        elif self.setup == "entanglement":
            out.update(is1=(digit == 1).astype(np.int64), is7=(digit == 7).astype(np.int64),
                       target=np.isin(digit, (1, 7)).astype(np.int64),
                       rank=self._hardness_rank(x_all[rows], digit) if split == "up_train"
                       else np.full(len(rows), 2.0))
        return out

    def _noisy_values(self, digit: np.ndarray, seed: int) -> np.ndarray:
        """The paper's dirty labels: after the clean first 20 %, half of 1/3 and of 7/9 swap."""
        value = digit.astype(np.float64).copy()
        n = len(digit)
        start = int(round(0.2 * n))
        stop = start + int(round(self.dirty_share * (n - start)))
        rng = split_rng(seed if self.data_seed is None else self.data_seed, "paper/dirty")
        dirty = np.arange(start, stop)
        for a, b in ((1, 3), (7, 9)):
            members = dirty[np.isin(digit[dirty], (a, b))]
            swap = rng.choice(members, size=len(members) // 2, replace=False) if len(members) else members
            value[swap] = a + b - value[swap]
        return value

    @staticmethod
    def _hardness_rank(x: np.ndarray, digit: np.ndarray) -> np.ndarray:
        """Rank of each training 1 or 7 by how close it lies to a 1-vs-7 linear boundary (0 = hardest).

        Stands in for the paper's ranking of hard examples; other digits get 2 (never flipped).
        """
        from sklearn.linear_model import LogisticRegression
        rank = np.full(len(digit), 2.0)
        pair = np.flatnonzero(np.isin(digit, (1, 7)))
        if len(pair) < 4 or len(np.unique(digit[pair])) < 2:
            return rank
        clf = LogisticRegression(C=0.1, max_iter=2000).fit(x[pair], digit[pair] == 7)
        margin = np.abs(clf.decision_function(x[pair]))
        order = np.argsort(margin, kind="stable")
        rank[pair[order]] = np.arange(len(pair)) / len(pair)
        return rank
