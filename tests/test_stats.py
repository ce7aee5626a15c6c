"""The one statistics module: intervals and paired deltas against scipy, the one self-defeating
rule, and the power figures the results tables quote."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from entangle.stats import (IMPROVED, NOISE, WORSE, detectable_effect, interval, mean_sd, paired_delta,
                            seeds_needed, self_defeating)


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
