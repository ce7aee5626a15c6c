"""The decomposition engine: estimators against closed forms on systems other than the
experiment's (other dimensions, noise levels and sample sizes), the store contract (nothing
retrained after a study), the compatibility split, and the configuration errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, Ridge

from entangle.compare import compare
from entangle.data.toy_systems import LinearGaussianSource, closed_form_terms, closed_form_values
from entangle.decompose import (DecompositionError, Estimators, decompose, decompose_change,
                                dominant_term, explain)
from entangle.executor import Run
from entangle.models.mlp_node import MLPNode
from entangle.node import SklearnNode
from entangle.system import NodeSpec, System

SPLITS = ("upstream", "train", "large", "test")


def ols() -> SklearnNode:
    return SklearnNode(estimator=LinearRegression())


def small_reference() -> MLPNode:
    return MLPNode(hidden=(32, 32), epochs=30, patience=5)


def chain_system(alpha: float, *, n: int = 30, large: int = 4000, test: int = 4000) -> System:
    """Three correlated latents; a ridge upstream reads a 2-D view; a linear downstream reads it."""
    src = LinearGaussianSource(
        cov=[[1.5, 0.4, 0.0], [0.4, 1.0, -0.3], [0.0, -0.3, 2.0]],
        outputs={"view": {"weights": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]},
                 "t": {"weights": [0.2, 1.0, 1.0], "noise": 0.4},
                 "y": {"weights": [1.5, 0.0, 0.0], "noise": 0.7}},
        sizes={"upstream": 400, "train": n, "large": large, "test": test})
    return System({"data": src,
                   "up": NodeSpec(SklearnNode(estimator=Ridge(alpha=alpha)), inputs={"v": "data.view"},
                                  targets={"y": "data.t"}, fit_split="upstream"),
                   "v": NodeSpec(ols(), inputs={"s": "up.pred"}, targets={"y": "data.y"}, output=True)},
                  splits=SPLITS)


def test_estimators_match_closed_forms_on_another_linear_system(store):
    """L*, L*(u), L_H(u) per seed, and the estimation term's mean over many seeds."""
    system = chain_system(alpha=50.0)
    est = Estimators(reference=small_reference(), oracle={"up.pred": "data.x"})
    d = decompose(system, "v", [0, 1], store, estimators=est)
    for i, seed in enumerate(d.seeds):
        cf = closed_form_values(Run(system, seed, store), "v", oracle={"up.pred": "data.x"})
        scale = cf["L(v̂∘u)"]
        # the large-sample fits are within test-set noise (4000 samples) of the population values
        for key in ("L*", "L*(u)", "L_H(u)"):
            assert d.values[key][i] == pytest.approx(cf[key], abs=0.06 * scale), key
    # the reference alone (no clipping) is a high-capacity learner on a 1-D input: close as well
    assert d.values["reference(u)"] == pytest.approx(d.values["L_H(u)"], abs=0.03)
    # the estimation term is an expectation over training sets: average it over many seeds with a
    # cheap reference (the same class as v, which the report must flag)
    many = list(range(2, 26))
    cheap = Estimators(reference=ols(), l_star="source")
    d2 = decompose(system, "v", many, store, estimators=cheap)
    cf_est = np.array([closed_form_terms(closed_form_values(Run(system, s, store), "v"))["estimation"]
                       for s in many])
    gap = d2.terms["estimation"] - cf_est
    assert abs(gap.mean()) < 3 * gap.std(ddof=1) / np.sqrt(len(gap)) + 0.002
    assert any("own class with the same parameters" in w for w in d2.report["warnings"])
    assert d2.report["estimators"]["L*"].startswith("closed form")


def test_upstream_error_of_an_improvement_on_another_system(store):
    """Relaxing the ridge lowers the upstream's loss; the delta of each term matches its closed form."""
    old, new = chain_system(alpha=2000.0, n=40), chain_system(alpha=0.1, n=40)
    est = Estimators(reference=small_reference(), oracle={"up.pred": "data.x"})
    ch = decompose_change(old, new, "v", [0, 1], store, changed="up", estimators=est)
    cf_delta = []
    for s in (0, 1):
        t_old = closed_form_terms(closed_form_values(Run(old, s, store), "v", oracle={"up.pred": "data.x"}))
        t_new = closed_form_terms(closed_form_values(Run(new, s, store), "v", oracle={"up.pred": "data.x"}))
        cf_delta.append(t_new["upstream"] - t_old["upstream"])
    assert ch.deltas["upstream"] == pytest.approx(cf_delta, abs=0.05)
    assert abs(ch.deltas["approximation"]).max() < 0.03
    report = ch.report
    # one self-defeating rule, in the improvement study: the decomposition explains, never flags
    assert not {"self_defeating", "upstream_verdicts", "downstream_verdict"} & set(report)
    assert report["deltas"]["total"]["mean"] == pytest.approx(
        sum(report["deltas"][k]["mean"] for k in ("upstream", "approximation", "estimation")))
    assert report["loss"] == "squared error" and report["sentence"].startswith("Improving 'up'")


def two_upstreams(new1: bool, new2: bool) -> System:
    """Two sensors of s per upstream: old ones with opposite errors, new ones with a shared error."""
    src = LinearGaussianSource(variances=[1.0, 1.0, 1.0, 1.0], outputs={
        "s": {"weights": [1.0, 0.0, 0.0, 0.0]},
        "f1": {"weights": [1.0, 0.8, 0.0, 0.0]}, "f2": {"weights": [1.0, -0.8, 0.0, 0.0]},
        "g1": {"weights": [1.0, 0.3, 0.1, 0.0]}, "g2": {"weights": [1.0, 0.3, 0.0, 0.1]},
        "t": {"weights": [1.0, 0.0, 0.0, 0.0], "noise": 0.2},
        "y": {"weights": [2.0, 0.0, 0.0, 0.0], "noise": 0.3}},
        sizes={"upstream": 300, "train": 25, "large": 3000, "test": 3000})
    return System({"data": src,
                   "u1": NodeSpec(ols(), inputs={"f": "data.g1" if new1 else "data.f1"}, targets={"y": "data.t"},
                                  fit_split="upstream"),
                   "u2": NodeSpec(ols(), inputs={"f": "data.g2" if new2 else "data.f2"}, targets={"y": "data.t"},
                                  fit_split="upstream"),
                   "v": NodeSpec(ols(), inputs={"p": "u1.pred", "q": "u2.pred"}, targets={"y": "data.y"},
                                 output=True)}, splits=SPLITS)


def _level_deltas(old: System, new: System, seed: int, store, oracle) -> dict[str, float]:
    """Every term's closed-form delta, new level minus old level."""
    cf = [closed_form_terms(closed_form_values(Run(s, seed, store), "v", oracle=oracle)) for s in (old, new)]
    return {k: cf[1][k] - cf[0][k] for k in cf[0]}


def test_compatibility_split_adds_up_and_matches_closed_forms(store):
    old, new = two_upstreams(False, False), two_upstreams(True, True)
    oracle = {"u1.pred": "data.s", "u2.pred": "data.s"}
    est = Estimators(reference=ols(), oracle=oracle)       # linear truth: OLS is the Bayes class
    ch = decompose_change(old, new, "v", [0], store, changed=["u1", "u2"], estimators=est)
    d = ch.deltas
    assert d["upstream"] == pytest.approx(d["upstream:u1"] + d["upstream:u2"] + d["compatibility"])
    assert d["total"] == pytest.approx(d["upstream"] + d["approximation"] + d["estimation"])
    cf = _level_deltas(old, new, 0, store, oracle)
    for k in ("upstream", "upstream:u1", "upstream:u2", "compatibility"):
        assert d[k][0] == pytest.approx(cf[k], abs=0.03), k
    # the oracle s determines y: each upstream's own part is 0 by construction, compatibility is all
    assert cf["upstream:u1"] == pytest.approx(0.0, abs=1e-9) and cf["compatibility"] > 0.2
    assert ch.report["dominant"] == "compatibility"
    t = ch.new.terms
    assert t["upstream"] == pytest.approx(t["upstream:u1"] + t["upstream:u2"] + t["compatibility"])


def two_sensors(improved: bool) -> System:
    """Two sensors of one latent s: the old sensor 1's noise is the negative of sensor 2's (their
    average is s); the improved sensor 1 is less noisy but independent of sensor 2."""
    src = LinearGaussianSource(variances=[1.0, 1.0, 1.0], outputs={
        "s": {"weights": [1.0, 0.0, 0.0]},
        "f1": {"weights": [1.0, 0.8, 0.0]}, "g1": {"weights": [1.0, 0.0, 0.5]},
        "f2": {"weights": [1.0, -0.8, 0.0]},
        "t": {"weights": [1.0, 0.0, 0.0], "noise": 0.2},
        "y": {"weights": [2.0, 0.0, 0.0], "noise": 0.3}},
        sizes={"upstream": 300, "train": 40, "large": 3000, "test": 3000})
    return System({"data": src,
                   "u1": NodeSpec(ols(), inputs={"f": "data.g1" if improved else "data.f1"},
                                  targets={"y": "data.t"}, fit_split="upstream"),
                   "u2": NodeSpec(ols(), inputs={"f": "data.f2"}, targets={"y": "data.t"}, fit_split="upstream"),
                   "v": NodeSpec(ols(), inputs={"p": "u1.pred", "q": "u2.pred"}, targets={"y": "data.y"},
                                 output=True)}, splits=SPLITS)


def test_one_changed_upstream_of_two_is_split_into_parts_and_compatibility(store):
    """The paper's fourth error type with one changed upstream: its own part does not move, the
    compatibility term carries the whole change, and the sentence names it as the table does."""
    old, new = two_sensors(False), two_sensors(True)
    oracle = {"u1.pred": "data.s", "u2.pred": "data.s"}
    seeds = [0, 1, 2]
    ch = decompose_change(old, new, "v", seeds, store, estimators=Estimators(reference=ols(), oracle=oracle))
    assert ch.report["changed"] == ["u1"]
    d = ch.deltas
    assert {"upstream:u1", "upstream:u2", "compatibility"} <= set(d)
    for i, seed in enumerate(seeds):
        cf = _level_deltas(old, new, seed, store, oracle)
        for k in ("upstream", "upstream:u1", "upstream:u2", "compatibility"):
            assert d[k][i] == pytest.approx(cf[k], abs=0.05), (k, seed)
    # closed form: 4·Var(s | s + 0.5a, s − 0.8b) = 4 / (1 + 4 + 1.5625) ≈ 0.61 more risk, all compatibility
    assert np.mean(d["compatibility"]) == pytest.approx(4 / (1 + 1 / 0.25 + 1 / 0.64), abs=0.06)
    assert d["upstream"] == pytest.approx(d["upstream:u1"] + d["upstream:u2"] + d["compatibility"])
    rep = ch.report
    assert rep["dominant_term"] == "compatibility" and rep["dominant"] == "compatibility"
    assert "compatibility error" in rep["sentence"] and "no longer complement" in rep["sentence"]
    assert "carries less of the information" not in rep["sentence"]
    assert set(rep["deltas"]) == set(d)


def test_decomposition_after_a_study_retrains_nothing(store):
    old, new = chain_system(alpha=2000.0, large=600, test=600), chain_system(alpha=0.1, large=600, test=600)
    est = {"v": Estimators(reference=small_reference(), oracle={"up.pred": "data.x"})}
    study = compare(old, new, [0, 1, 2], store, changed="up", decomposition=est)
    keys = {k for s in (0, 1, 2) for sys_ in (old, new) for k in sys_.keys(s).values()}
    flags = study.report["self_defeating"]
    assert flags and flags[0]["dominant"] == "upstream" and "upstream error" in flags[0]["explanation"]
    assert study.report["decomposition"]["v"]["store"]["misses"] > 0   # the derived fits, once
    # the derived fits never refit a node the study trained
    derived_misses = set(store.stats.miss_keys[-study.report["decomposition"]["v"]["store"]["misses"]:])
    assert not derived_misses & keys
    before = store.stats.misses
    again = decompose_change(old, new, "v", [0, 1, 2], store, changed="up", estimators=est["v"])
    assert store.stats.misses == before and again.report["store"]["misses"] == 0
    assert again.report["deltas"] == study.report["decomposition"]["v"]["deltas"]


def test_dominant_term_and_sentence():
    deltas = {"total": 0.3, "upstream": 0.02, "approximation": 0.25, "estimation": 0.03}
    assert dominant_term(deltas, 0.3) == "approximation"
    assert dominant_term({"total": -0.4, "upstream": -0.5, "approximation": 0.1, "estimation": 0.0}, -0.4) == "upstream"
    multi = {"total": 0.2, "upstream": 0.2, "upstream:a": 0.01, "upstream:b": 0.02, "compatibility": 0.17,
             "approximation": 0.0, "estimation": 0.0}
    assert dominant_term(multi, 0.2) == "compatibility"   # the total upstream delta is split, not a rival
    report = {"changed": ["a", "b"], "downstream": "v", "loss": "log loss", "self_defeating": True,
              "dominant_term": "compatibility",
              "deltas": {k: {"mean": v, "ci": [v - 0.01, v + 0.01]} for k, v in multi.items()}}
    sentence = explain(report)
    assert sentence.startswith("Improving 'a' and 'b' made 'v' worse: its log loss rose by +0.2")
    assert "compatibility error (+0.17" in sentence and "no longer complement" in sentence


def test_configuration_errors_name_the_field(store):
    system = chain_system(alpha=1.0)
    no_large = System(dict(system.specs), splits=("upstream", "train", "test"))
    with pytest.raises(DecompositionError, match="'large' is not a split.*add it to the pipeline's `splits`"):
        decompose(no_large, "v", [0], store)
    with pytest.raises(DecompositionError, match="oracle.up.feat.*does not read"):
        decompose(system, "v", [0], store, estimators=Estimators(oracle={"up.feat": "data.x"}))
    with pytest.raises(DecompositionError, match="scores 'accuracy'.*scores 'mse'"):
        decompose(system, "v", [0], store, estimators=Estimators(reference=MLPNode(task="classification")))
    with pytest.raises(DecompositionError, match="no targets"):
        decompose(system, "data", [0], store)
    with pytest.raises(DecompositionError, match="l_star"):
        Estimators(l_star="magic")
    with pytest.raises(DecompositionError, match=r"unknown field\(s\) \['refrence'\]"):
        Estimators.from_config({"refrence": {}})
    built = Estimators.from_config({"reference": {"_target_": "entangle.models.mlp_node.MLPNode",
                                                  "hidden": [8]}, "oracle": {"up.pred": "data.x"}})
    assert isinstance(built.reference, MLPNode) and built.reference.hidden == [8]


def test_a_large_split_that_is_the_training_data_is_said_aloud(store):
    """Estimation error is 0 by construction when L_H(u) is fitted on v's own training data."""
    from entangle.data.toy_systems import LinearGaussianSource

    class Aliased(LinearGaussianSource):
        """A source whose ``large`` split reads the ``train`` split's data (as WorldSource's aliases)."""

        aliases = {"large": "train"}

        def load(self, split, seed):
            return super().load(self.aliases.get(split, split), seed)

    base = chain_system(alpha=50.0, n=200)
    src = base["data"]
    aliased = base.replace("data", Aliased(**src.get_params()))
    est = Estimators(reference="own", l_star="source", oracle=None)
    d = decompose(aliased, "v", [0, 1], store, estimators=est)
    assert any("holds the same samples as 'v''s training split" in w for w in d.report["warnings"])
    assert d.terms["estimation"] == pytest.approx([0.0, 0.0], abs=1e-9)
    plain = decompose(base, "v", [0, 1], store, estimators=est)
    assert not any("same samples" in w for w in plain.report["warnings"])
