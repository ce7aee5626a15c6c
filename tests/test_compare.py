"""Paired statistics against scipy, verdicts and self-defeating flags on a hand-made study."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LinearRegression, Ridge

from entangle.compare import compare, infer_changed, paired_delta
from entangle.data.toys import GaussianSource
from entangle.node import SklearnNode
from entangle.system import NodeSpec, System


@pytest.mark.parametrize("old,new", [
    ([1.0, 2.0, 3.0], [1.5, 2.2, 3.9]),
    ([0.3, 0.1, 0.7, 0.2, 0.9], [0.31, 0.05, 0.9, 0.25, 0.95]),
    (list(np.linspace(0, 1, 10)), list(np.linspace(0, 1, 10) + np.sin(np.arange(10)))),
])
def test_paired_interval_matches_scipy_ttest_rel(old, new):
    pd = paired_delta(old, new, higher_is_better=True)
    ci = stats.ttest_rel(new, old).confidence_interval(0.95)
    assert pd.ci == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert pd.mean == pytest.approx(np.mean(np.subtract(new, old)))


def test_verdicts_follow_direction_and_noise():
    assert paired_delta([1, 2, 3], [2, 3, 4.1], higher_is_better=True).verdict == "improved"
    assert paired_delta([1, 2, 3], [2, 3, 4.1], higher_is_better=False).verdict == "worse"
    assert paired_delta([1, 2, 3], [1.5, 1.5, 3.1], higher_is_better=True).verdict == "noise"
    one = paired_delta([1.0], [2.0], higher_is_better=True)
    assert one.verdict == "noise" and np.isnan(one.ci[0])
    flat = paired_delta([1.0, 2.0], [1.5, 2.5], higher_is_better=True)
    assert flat.ci == (0.5, 0.5) and flat.verdict == "improved"
    with pytest.raises(ValueError, match="paired"):
        paired_delta([1, 2], [1, 2, 3], higher_is_better=True)


def ridge_system(alpha: float) -> System:
    data = GaussianSource(variances=[9.0, 1.0], weights={"s": [1.0, 3.0], "a": [1.0, 0.0], "b": [1.0, 3.0]},
                          noise={"s": 1.0, "a": 0.1, "b": 0.5}, sizes={"train": 400, "test": 800})
    return System({
        "data": data,
        "up": NodeSpec(SklearnNode(estimator=Ridge(alpha=alpha)), inputs={"x": "data.x"}, targets={"y": "data.s"}),
        "a": NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"u": "up.pred"}, targets={"y": "data.a"},
                      output=True),
        "b": NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"u": "up.pred"}, targets={"y": "data.b"},
                      output=True),
    })


def test_study_flags_the_self_defeating_pair_and_reuses_the_store(store):
    old, new = ridge_system(1000.0), ridge_system(0.1)
    assert infer_changed(old, new) == ["up"]
    report = compare(old, new, [0, 1, 2], store).report
    assert report["changed"] == "up" and report["seeds"] == [0, 1, 2]
    assert report["nodes"]["up"]["verdict"] == "improved"
    assert report["nodes"]["a"]["verdict"] == "worse"
    assert report["nodes"]["b"]["verdict"] == "improved"
    assert report["self_defeating"] == [{"upstream": "up", "downstream": "a"}]
    assert report["store"]["misses"] == 18 and report["store"]["hits"] == 0
    again = compare(old, new, [0, 1, 2], store).report
    assert again["store"] == {**again["store"], "hits": 18, "misses": 0}
    assert again["nodes"] == report["nodes"]  # determinism: same seeds, same numbers
