"""Closed forms of the toy systems against Monte Carlo, and the toy sources and nodes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from entangle.data.toy_systems import (ClosedFormError, LinearGaussianSource, PCAEncoder,
                                       PolynomialRegression, closed_form_terms, closed_form_values,
                                       conditional_variance, effective_dim, gaussian_moment,
                                       ols_expected_excess, poly_expectation)
from entangle.executor import Run
from entangle.node import SklearnNode
from entangle.system import NodeSpec, System


def test_conditional_variance_matches_least_squares_on_a_large_sample():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 5))
    cov = A @ A.T + 0.5 * np.eye(5)                     # correlated latents
    a = rng.standard_normal(5)
    M = rng.standard_normal((5, 2))                     # a 2-D linear view of x
    x = rng.multivariate_normal(np.zeros(5), cov, size=400_000)
    y = x @ a + 0.7 * rng.standard_normal(len(x))
    z = x @ M
    resid = y - LinearRegression().fit(z, y).predict(z)
    assert conditional_variance(cov, a, M, 0.49) == pytest.approx(resid.var(), rel=0.01)
    # no information: the total variance; full information: the noise
    assert conditional_variance(cov, a, None, 0.49) == pytest.approx(a @ cov @ a + 0.49)
    assert conditional_variance(cov, a, np.eye(5), 0.49) == pytest.approx(0.49, abs=1e-9)
    # a duplicated column adds nothing and is handled by the pseudo-inverse
    assert conditional_variance(cov, a, np.hstack([M, M]), 0.49) == pytest.approx(
        conditional_variance(cov, a, M, 0.49), rel=1e-9)
    assert effective_dim(cov, np.hstack([M, M])) == 2


def batched_ols(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with intercept for a batch of training sets: (reps, n, d), (reps, n) -> (reps, d + 1)."""
    A = np.concatenate([np.ones(X.shape[:2] + (1,)), X], axis=2)
    return np.linalg.solve(A.transpose(0, 2, 1) @ A, (A.transpose(0, 2, 1) @ y[..., None]))[..., 0]


@pytest.mark.parametrize("d,n", [(1, 12), (3, 25), (6, 20)])
def test_ols_expected_excess_matches_simulation(d, n):
    rng = np.random.default_rng(d)
    reps, sigma2 = 20000, 0.6
    beta = rng.standard_normal(d)
    X = rng.standard_normal((reps, n, d)) * 2.0 + 1.0            # non-centred, non-unit features
    y = X @ beta + np.sqrt(sigma2) * rng.standard_normal((reps, n))
    theta = batched_ols(X, y)
    da, db = theta[:, 0], theta[:, 1:] - beta
    # the exact excess of each fit for x ~ N(1, 4 I): E[(x·(b̂−b) + (â−a))²]
    excess = 4.0 * (db ** 2).sum(axis=1) + (db.sum(axis=1) + da) ** 2
    assert sklearn_agrees(X[0], y[0], theta[0])
    se = excess.std() / np.sqrt(reps)
    assert abs(excess.mean() - ols_expected_excess(sigma2, d, n)) < 4 * se
    with pytest.raises(ClosedFormError, match="needs n >"):
        ols_expected_excess(1.0, 5, 7)


def sklearn_agrees(X: np.ndarray, y: np.ndarray, theta: np.ndarray) -> bool:
    fit = LinearRegression().fit(X, y)
    return bool(np.allclose(np.r_[fit.intercept_, fit.coef_], theta))


def test_gaussian_moments_and_polynomial_expectations():
    assert [gaussian_moment(k, 2.0) for k in range(7)] == [1.0, 0.0, 2.0, 0.0, 12.0, 0.0, 120.0]
    rng = np.random.default_rng(1)
    x = rng.normal(0, np.sqrt(0.5), 1_000_000)
    coef = np.array([0.3, -1.0, 0.5, 2.0, 0.1])
    mc = np.polynomial.polynomial.polyval(x, coef).mean()
    assert poly_expectation(coef, 0.5) == pytest.approx(mc, abs=0.01)


def _cubic_system(n: int, degree: int, noise: float = 0.4):
    src = LinearGaussianSource(variances=[0.8], outputs={
        "t": {"weights": [1.0], "cubic": [0.7], "noise": 0.3},
        "y": {"weights": [1.5], "noise": noise}},
        sizes={"upstream": 3000, "train": n, "test": 200})
    return System({"data": src,
                   "up": NodeSpec(PolynomialRegression(degree=degree), inputs={"x": "data.x"},
                                  targets={"y": "data.t"}, fit_split="upstream"),
                   "v": NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"s": "up.pred"},
                                 targets={"y": "data.y"}, output=True)},
                  splits=("upstream", "train", "test"))


def test_polynomial_closed_forms_match_quadrature_and_simulation(store):
    """A cubic upstream of a 1-D latent: L_H(u) by Gauss–Hermite quadrature (exact for
    polynomials, independent of the moment formulas) and the first-order estimation term by
    simulating the downstream's training sets."""
    from numpy.polynomial.hermite_e import hermegauss
    n = 60
    system = _cubic_system(n, degree=3)
    run = Run(system, 0, store)
    cf = closed_form_values(run, "v", oracle={"up.pred": "data.x"})
    assert cf["exact"] is False and cf["L*(u)"] == pytest.approx(0.16)  # invertible: nothing lost
    coef = run.fitted("up").coef_
    nodes, weights = hermegauss(80)
    xq, wq = nodes * np.sqrt(0.8), weights / weights.sum()
    zq = np.polynomial.polynomial.polyval(xq, coef)

    def mean(f):
        return float(np.sum(wq * f))

    b1 = mean((zq - mean(zq)) * 1.5 * xq) / mean((zq - mean(zq)) ** 2)
    b0 = -b1 * mean(zq)
    l_h = mean((1.5 * xq - b0 - b1 * zq) ** 2) + 0.16
    assert cf["L_H(u)"] == pytest.approx(l_h, rel=1e-9)
    rng = np.random.default_rng(2)
    x = rng.normal(0, np.sqrt(0.8), (20000, n))                   # training sets, one per row
    z = np.polynomial.polynomial.polyval(x, coef)
    theta = batched_ols(z[..., None], 1.5 * x + 0.4 * rng.standard_normal(x.shape))
    pred = theta[:, :1] + theta[:, 1:] * zq                       # (reps, quadrature nodes)
    excess = ((pred - b0 - b1 * zq) ** 2) @ wq
    # the engine's value is itself a simulation (vectorised, its own random draws): both agree
    # within their combined standard errors
    se = np.hypot(excess.std() / np.sqrt(len(excess)), cf["estimation_se"])
    assert abs(excess.mean() - (cf["L(v̂∘u)"] - cf["L_H(u)"])) < 4 * se
    # the first-order sandwich formula is far off at n = 60 for this heavy-tailed feature, and
    # its relative error shrinks as n grows
    def rel_gap(values):
        return values["estimation_first_order"] / (values["L(v̂∘u)"] - values["L_H(u)"]) - 1

    big = closed_form_values(Run(_cubic_system(600, degree=3), 0, store), "v", oracle={"up.pred": "data.x"})
    assert rel_gap(cf) > 0.2 and 0 < rel_gap(big) < rel_gap(cf) / 2


def test_closed_form_values_of_a_linear_chain(store):
    src = LinearGaussianSource(cov=[[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]],
                               outputs={"view": {"weights": [[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]},
                                        "t": {"weights": [1.0, 1.0, 0.0], "noise": 0.2},
                                        "y": {"weights": [0.0, 1.0, 1.0], "noise": 0.3}},
                               sizes={"upstream": 500, "train": 30, "test": 50})
    system = System({"data": src,
                     "up": NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"v": "data.view"},
                                    targets={"y": "data.t"}, fit_split="upstream"),
                     "v": NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"s": "up.pred"},
                                   targets={"y": "data.y"}, output=True)},
                    splits=("upstream", "train", "test"))
    run = Run(system, 3, store)
    cf = closed_form_values(run, "v", oracle={"up.pred": "data.x"})
    est = run.fitted("up").estimator_
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]) @ est.coef_       # the chain x -> view -> up
    cov = src.latent_cov()
    assert cf["L*(u)"] == pytest.approx(conditional_variance(cov, np.array([0, 1.0, 1.0]), w[:, None], 0.09))
    assert cf["L*"] == pytest.approx(0.09)
    assert cf["L(v̂∘u)"] == pytest.approx(cf["L_H(u)"] * (1 + 1 / 30 + 31 / (30 * 27)))
    terms = closed_form_terms(cf)
    assert terms["approximation"] == 0.0 and terms["upstream"] > 0


def test_closed_forms_refuse_what_they_do_not_cover(store):
    src = LinearGaussianSource(variances=[1.0, 1.0], outputs={"t": {"weights": [1.0, 0.0], "noise": 0.5},
                                                              "y": {"weights": [0.0, 1.0], "noise": 0.1}},
                               sizes={"train": 20, "test": 20})
    system = System({"data": src,
                     "v": NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"t": "data.t"},
                                   targets={"y": "data.y"}, output=True)})
    with pytest.raises(ClosedFormError, match="noise"):
        closed_form_values(Run(system, 0, store), "v")


def test_source_is_seeded_and_validates_its_config():
    src = LinearGaussianSource(variances=[4.0, 1.0], outputs={
        "t": {"weights": {1: 2.0}, "noise": 0.1}, "c": {"weights": [1.0, 0.0], "cubic": [0.5, 0.0]}},
        sizes={"train": 7, "test": 5})
    a, b = src.load("train", 1), src.load("train", 1)
    assert np.array_equal(a["t"], b["t"]) and a["x"].shape == (7, 2)
    assert not np.array_equal(a["x"], src.load("train", 2)["x"])
    assert not np.array_equal(a["x"][:5], src.load("test", 1)["x"])      # splits are independent
    assert np.allclose(a["c"], a["x"][:, 0] + 0.5 * a["x"][:, 0] ** 3)
    fixed = LinearGaussianSource(variances=[1.0], sizes={"train": 4}, data_seed=9)
    assert np.array_equal(fixed.load("train", 0)["x"], fixed.load("train", 5)["x"])
    assert src.bayes_risk("t") == pytest.approx(0.01)
    with pytest.raises(ValueError, match="3 rows for 2 latents"):
        LinearGaussianSource(variances=[1.0, 1.0], outputs={"y": {"weights": [1, 2, 3]}})
    with pytest.raises(ValueError, match="unknown fields"):
        LinearGaussianSource(variances=[1.0], outputs={"y": {"weight": [1]}})
    with pytest.raises(ValueError, match="outside 0..1"):
        LinearGaussianSource(variances=[1.0, 1.0], outputs={"y": {"weights": {2: 1.0}}})
    with pytest.raises(KeyError, match="no split 'large'"):
        src.load("large", 0)


def test_toy_nodes_expose_their_exact_linear_maps():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)) * np.arange(1, 7)
    enc = PCAEncoder(n_components=3).fit({"x": x}, {"x": x}, seed=0)
    W, b = enc.linear_map()
    assert np.allclose(enc.predict({"x": x})["z"], x @ W + b)
    loss3 = enc.loss(enc.predict({"x": x}), {"x": x}).mean()
    enc5 = PCAEncoder(n_components=5).fit({"x": x}, {"x": x}, seed=0)
    assert enc5.loss(enc5.predict({"x": x}), {"x": x}).mean() < loss3  # more components, better own loss
    restored = PCAEncoder(n_components=3).load_state_dict(enc.state_dict())
    assert np.allclose(restored.predict({"x": x})["z"], enc.predict({"x": x})["z"])
    s = rng.standard_normal(200)
    poly = PolynomialRegression(degree=1).fit({"s": s}, {"y": 2 * s + 1}, seed=0)
    W, b = poly.linear_map()
    assert W[0, 0] == pytest.approx(2.0) and b[0] == pytest.approx(1.0)
    cubic = PolynomialRegression(degree=3).fit({"s": s}, {"y": s ** 3 - s}, seed=0)
    assert np.allclose(cubic.coef_, [0, -1, 0, 1], atol=1e-8)
    with pytest.raises(ClosedFormError):
        cubic.linear_map()
