"""The one statistics module: intervals and paired deltas against scipy, the one self-defeating
rule, and the power figures the results tables quote."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from entangle.stats import (IDENTICAL, IMPROVED, NOISE, WORSE, detectable_effect, detectable_text, interval,
                            mean_sd, paired_delta, seeds_needed, self_defeating)


def test_interval_is_the_t_interval_of_the_mean():
    values = [1.0, 2.0, 3.5, 2.2]
    got = interval(values)
    ci = sps.t.interval(0.95, df=3, loc=np.mean(values), scale=sps.sem(values))
    assert got["ci"] == pytest.approx(list(ci), rel=1e-12)
    assert got["sd"] == pytest.approx(np.std(values, ddof=1)) and got["per_seed"] == values
    one = interval([1.0])
    assert one["mean"] == 1.0 and math.isnan(one["sd"]) and all(math.isnan(c) for c in one["ci"])
    with pytest.raises(ValueError, match="non-finite"):
        interval([1.0, float("nan")])
    assert mean_sd([2.0, 4.0]) == {"mean": 3.0, "sd": pytest.approx(math.sqrt(2)), "per_seed": [2.0, 4.0]}


def test_paired_delta_refuses_nan_instead_of_calling_it_noise():
    with pytest.raises(ValueError, match="finite"):
        paired_delta([0.5, float("nan"), 0.6], [0.4, 0.5, 0.5], higher_is_better=False)
    assert paired_delta([0.5, 0.6, 0.7], [0.4, 0.5, 0.6], higher_is_better=False).verdict == IMPROVED


def test_the_one_self_defeating_rule():
    assert self_defeating(IMPROVED, WORSE)
    assert not self_defeating(IMPROVED, NOISE) and not self_defeating(NOISE, WORSE)
    assert not self_defeating(WORSE, WORSE)
    assert self_defeating([IMPROVED, IMPROVED], WORSE) and not self_defeating([IMPROVED, NOISE], WORSE)
    assert not self_defeating([], WORSE)


def test_detectable_effect_matches_a_simulated_paired_t_test():
    sd, n = 1.0, 5
    effect = detectable_effect(sd, n)
    rng = np.random.default_rng(0)
    d = rng.normal(effect, sd, size=(20000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    power = np.mean(np.abs(t) > sps.t.ppf(0.975, n - 1))
    assert power == pytest.approx(0.8, abs=0.02)
    assert math.isnan(detectable_effect(sd, 1))
    need = seeds_needed(effect, sd)
    assert need == n or (need == n - 1 and detectable_effect(sd, n - 1) <= effect)
    assert seeds_needed(0.01, 1.0, most=50) is None


def test_a_zero_variance_paired_delta_is_identical_over_seeds_not_a_detectable_effect_of_zero():
    # every seed moved by 0.1 (up to float rounding of the subtraction): a deterministic change
    pd = paired_delta([0.1, 0.2, 0.3], [0.2, 0.3, 0.4], higher_is_better=True)
    assert pd.identical and pd.sd == 0.0 and pd.as_dict()["identical"]
    assert pd.ci == (pd.mean, pd.mean) and pd.mean == pytest.approx(0.1) and pd.verdict == IMPROVED
    assert math.isnan(detectable_effect(pd.sd, pd.n)) and seeds_needed(0.01, pd.sd) is None
    assert detectable_text(detectable_effect(pd.sd, pd.n), pd.identical) == IDENTICAL
    same = paired_delta([0.5, 0.6], [0.5, 0.6], higher_is_better=True)   # no change at all is noise
    assert same.identical and same.verdict == NOISE
    rounded = paired_delta([0.3, 0.6], [0.1 + 0.2, 0.2 + 0.4], higher_is_better=True)   # nor is rounding
    assert rounded.identical and rounded.mean == 0.0 and rounded.verdict == NOISE
    spread = paired_delta([0.1, 0.2, 0.3], [0.2, 0.25, 0.45], higher_is_better=True)
    assert not spread.identical and spread.sd > 0
    assert detectable_text(detectable_effect(spread.sd, spread.n), spread.identical) == \
        f"{detectable_effect(spread.sd, spread.n):.3f}"
    one = paired_delta([0.1], [0.2], higher_is_better=True)
    assert not one.identical and detectable_text(detectable_effect(one.sd, one.n), one.identical) == "–"


def test_seeds_needed_is_the_first_n_that_detects_the_effect():
    sd, effect = 1.0, 0.7
    first = next(n for n in range(2, 31) if detectable_effect(sd, n) <= effect)
    assert seeds_needed(effect, sd, most=30) == first and seeds_needed(-effect, sd, most=30) == first
    assert seeds_needed(effect, sd, most=first - 1) is None
