"""Statistics over seeds, in one place: intervals, paired deltas, verdicts, the self-defeating rule.

Every claim of the lab is a statement about a family of seeds. Seeds are the unit: a value per
seed, its mean, its seed-to-seed spread (sd) and the t interval of the mean; a change is a
*paired* difference (seed ``s`` of the new system minus seed ``s`` of the old, which share data
sampling and initialisation) with the paired t interval (that of ``scipy.stats.ttest_rel``).
A verdict is *improved* or *worse* only when that interval excludes zero; with one seed there is
no interval and the verdict is *noise*; with zero spread the interval collapses to the mean
(a deterministic difference is not noise) and the delta is *identical over seeds*: it has no
smallest detectable effect, and reports say so (:func:`detectable_text`).

An improvement of ``u`` is **self-defeating** for a descendant ``v`` when ``u`` improves on its own
metric beyond noise and ``v``, retrained on ``u``'s new outputs, gets worse on its own metric
beyond noise (:func:`self_defeating`). Every part of the lab that flags a pair uses that rule;
the decomposition explains a flag, it never makes one.

>>> paired_delta([1.0, 2.0, 3.0], [2.0, 3.1, 4.2], higher_is_better=True).verdict
'improved'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

IMPROVED, WORSE, NOISE = "improved", "worse", "noise"

#: how reports name the test behind every interval
TEST = "paired t interval over seeds, as scipy.stats.ttest_rel"
#: how reports name a paired delta with no seed-to-seed spread (every seed moved by the same amount)
IDENTICAL = "identical over seeds"
#: a paired sd below this times the values' magnitude is float rounding, not seed-to-seed spread
ROUNDING = 1e-12


def _half_width(sd: float, n: int, confidence: float) -> float:
    return float(stats.t.ppf(0.5 + confidence / 2, df=n - 1) * sd / math.sqrt(n))


def interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, seed spread (sd) and the t interval of the mean over seeds.

    With one value there is no spread and no interval: ``sd`` is NaN and ``ci`` is
    ``[NaN, NaN]`` (JSON null). NaN values are an error: a seed without a value is a bug upstream.
    """
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError(f"interval over seeds of non-finite values: {a.tolist()}")
    mean = float(a.mean()) if a.size else float("nan")
    if a.size < 2:
        return {"mean": mean, "sd": float("nan"), "ci": [float("nan"), float("nan")], "per_seed": a.tolist()}
    sd = float(a.std(ddof=1))
    half = _half_width(sd, a.size, confidence)
    return {"mean": mean, "sd": sd, "ci": [mean - half, mean + half], "per_seed": a.tolist()}


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """Mean and seed spread of values over seeds (sd NaN for one seed), with the values."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    return {"mean": float(a.mean()) if a.size else float("nan"),
            "sd": float(a.std(ddof=1)) if a.size > 1 else float("nan"), "per_seed": a.tolist()}


@dataclass(frozen=True)
class PairedDelta:
    """Paired difference new − old over seeds: mean, the (1 − alpha) t interval, the verdict,
    and the seed-to-seed sd of the differences (NaN for one seed, 0 when identical over seeds)."""

    mean: float
    ci: tuple[float, float]
    verdict: str
    n: int
    sd: float = float("nan")

    @property
    def identical(self) -> bool:
        """Whether every seed's difference is the same (two or more seeds, no spread)."""
        return self.n >= 2 and self.sd == 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"delta_mean": self.mean, "delta_ci": list(self.ci), "verdict": self.verdict,
                "identical": self.identical}


def verdict(lo: float, hi: float, *, higher_is_better: bool) -> str:
    """The verdict of an interval of new − old: improved or worse when it excludes zero."""
    if lo > 0:
        return IMPROVED if higher_is_better else WORSE
    if hi < 0:
        return WORSE if higher_is_better else IMPROVED
    return NOISE


def paired_delta(old: Sequence[float], new: Sequence[float], *, higher_is_better: bool,
                 confidence: float = 0.95) -> PairedDelta:
    """Paired t interval of ``new - old``; the verdict says whether it excludes zero, and which way.

    Raises ``ValueError`` when the sequences are not paired or hold non-finite values (a NaN
    metric must never turn into a "noise" verdict).
    """
    a = np.asarray(old, dtype=np.float64)
    b = np.asarray(new, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"old and new must be paired 1-D sequences, got shapes {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"paired values must be finite, got old {a.tolist()} and new {b.tolist()}")
    d = b - a
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return PairedDelta(mean, (float("nan"), float("nan")), NOISE, n)
    sd = float(d.std(ddof=1))
    rounding = ROUNDING * max(1.0, float(np.abs(a).max()), float(np.abs(b).max()))
    if sd <= rounding:   # the same difference on every seed, up to the float path that computed it
        sd = 0.0
        mean = 0.0 if abs(mean) <= rounding else mean   # and no difference is no difference
    lo = hi = mean
    if sd > 0.0:
        half = _half_width(sd, n, confidence)
        lo, hi = mean - half, mean + half
    return PairedDelta(mean, (float(lo), float(hi)), verdict(lo, hi, higher_is_better=higher_is_better), n, sd)


def self_defeating(upstream_verdicts: str | Sequence[str], downstream_verdict: str) -> bool:
    """The one rule: every changed node improved on its own metric beyond noise, and the
    descendant, retrained, got worse on its own metric beyond noise."""
    ups = [upstream_verdicts] if isinstance(upstream_verdicts, str) else list(upstream_verdicts)
    return bool(ups) and all(v == IMPROVED for v in ups) and downstream_verdict == WORSE


def detectable_effect(sd: float, n: int, confidence: float = 0.95, power: float = 0.8) -> float:
    """The smallest true mean paired difference ``n`` seeds detect with the given power (t test).

    ``sd`` is the seed-to-seed sd of the paired differences (:attr:`PairedDelta.sd`). Solved with
    the noncentral t distribution; NaN below two seeds and when ``sd`` is 0 (identical over seeds:
    there is no noise to detect an effect against, so no smallest effect; see :func:`detectable_text`).
    """
    if n < 2 or not math.isfinite(sd) or sd <= 0:
        return float("nan")
    df = n - 1
    t_crit = stats.t.ppf(0.5 + confidence / 2, df)
    lo, hi = 0.0, 50.0
    for _ in range(80):   # bisect the noncentrality giving the wanted power
        mid = 0.5 * (lo + hi)
        achieved = stats.nct.sf(t_crit, df, mid) + stats.nct.cdf(-t_crit, df, mid)
        lo, hi = (mid, hi) if achieved < power else (lo, mid)
    return float(hi * sd / math.sqrt(n))


def seeds_needed(effect: float, sd: float, confidence: float = 0.95, power: float = 0.8,
                 most: int = 1000) -> int | None:
    """The fewest seeds whose paired test detects a true mean difference ``effect`` (None: > most,
    or no spread to size seeds by: ``sd`` 0 or NaN). Bisects ``n``: the detectable effect falls with n."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0 or sd <= 0:
        return None
    if detectable_effect(sd, most, confidence, power) > abs(effect):
        return None
    lo, hi = 1, most   # detectable at hi, not at lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if detectable_effect(sd, mid, confidence, power) <= abs(effect) else (mid, hi)
    return hi


def detectable_text(effect: float | None, identical: bool | None, spec: str = ".3f") -> str:
    """A smallest detectable effect for a report: :data:`IDENTICAL` for a delta with no spread
    over seeds (not an effect of 0), "–" where there is none (one seed), else the number."""
    if identical:
        return IDENTICAL
    if effect is None or not math.isfinite(effect):
        return "–"
    return format(effect, spec)
