"""Toy systems whose error-decomposition terms have closed forms, one per mechanism.

The data are Gaussian: a latent vector ``x ~ N(0, cov)`` and named outputs
``out = x @ W + sum_j cubic_j * x_j**3 + N(0, noise**2)``. Upstream models here are linear (or a
polynomial of a one-dimensional latent), so every downstream input is an exactly known function
of ``x`` once the upstream is fitted, and the terms follow from Gaussian algebra:

- ``L*`` (oracle input) and ``L*(u)`` are conditional variances ``Var(y | ·)``;
- ``L_H(u)`` is the risk of the best linear predictor (with intercept) on ``u``'s output;
- ``E L(v̂∘u)`` adds ordinary least squares' expected excess risk on ``n`` training samples.

The closed forms take the *fitted* upstream from a run, so they are exact for the upstream that
was actually trained (no large-sample idealisation of the upstream).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.polynomial import polynomial as P

from entangle.data.toys import split_rng
from entangle.node import BaseNode, NotFittedError, SklearnNode, Source, _one_target, _stack_inputs
from entangle.system import NodeSpec, System, parse_ref

log = logging.getLogger(__name__)


class ClosedFormError(ValueError):
    """The system is outside the family the closed forms cover; the message says why."""


# -- the source ---------------------------------------------------------------------------------
class LinearGaussianSource(Source):
    """Latent ``x ~ N(0, cov)`` and named outputs that are linear (plus cubic) in ``x`` with noise.

    Parameters
    ----------
    variances : per-latent variance (a diagonal covariance); or give ``cov``.
    cov : full latent covariance (overrides ``variances``).
    outputs : output name -> ``{weights: vector, (latent, k) matrix or sparse {index: weight},
        cubic: vector or null, noise: standard deviation}``. The latent itself is always output
        as ``x``.
    sizes : split name -> number of samples (a decomposition wants a ``large`` split).
    data_seed : None resamples the data with each study seed (the closed forms are expectations
        over training sets, so toys should resample); an int fixes it.
    """

    def __init__(self, *, variances: Sequence[float] | None = (1.0,),
                 cov: Sequence[Sequence[float]] | None = None,
                 outputs: Mapping[str, Mapping[str, Any]] | None = None,
                 sizes: Mapping[str, int] | None = None, data_seed: int | None = None):
        self.variances = variances
        self.cov = cov
        self.outputs = outputs
        self.sizes = sizes
        self.data_seed = data_seed
        p = self.latent_cov().shape[0]
        for name, spec in (outputs or {}).items():
            where = f"LinearGaussianSource output {name!r}"
            if name == "x":
                raise ValueError(f"{where}: 'x' is reserved for the latent vector")
            unknown = set(spec) - {"weights", "cubic", "noise"}
            if unknown:
                raise ValueError(f"{where}: unknown fields {sorted(unknown)} (weights, cubic, noise)")
            w = self.weights(name) if _sparse_ok(spec.get("weights"), p, where) else None
            if w is not None and w.shape[0] != p:
                raise ValueError(f"{where}, field 'weights': {w.shape[0]} rows for {p} latents")
            if spec.get("cubic") is not None and len(spec["cubic"]) != p:
                raise ValueError(f"{where}, field 'cubic': {len(spec['cubic'])} entries for {p} latents")
            if float(spec.get("noise", 0.0)) < 0:
                raise ValueError(f"{where}, field 'noise': must be >= 0")

    @property
    def output_kinds(self) -> dict[str, str]:  # type: ignore[override]
        return {"x": "array", **{name: "array" for name in (self.outputs or {})}}

    # -- model of the data ---------------------------------------------------------------------
    def latent_cov(self) -> np.ndarray:
        """The latent covariance matrix, shape (latent, latent)."""
        if self.cov is not None:
            c = np.asarray(self.cov, dtype=np.float64)
            if c.ndim != 2 or c.shape[0] != c.shape[1]:
                raise ValueError(f"LinearGaussianSource cov must be square, got shape {c.shape}")
            return c
        return np.diag(np.asarray(self.variances, dtype=np.float64))

    def _spec(self, name: str) -> Mapping[str, Any]:
        if name != "x" and name not in (self.outputs or {}):
            raise KeyError(f"LinearGaussianSource has no output {name!r} (it has {sorted(self.output_kinds)})")
        return {} if name == "x" else self.outputs[name]

    def weights(self, name: str) -> np.ndarray:
        """The linear part of an output as a (latent, k) matrix (identity for ``x``)."""
        p = self.latent_cov().shape[0]
        if name == "x":
            return np.eye(p)
        raw = self._spec(name).get("weights")
        if isinstance(raw, Mapping):
            w = np.zeros(p)
            for i, value in raw.items():
                w[int(i)] = float(value)
            return w.reshape(p, 1)
        w = np.asarray(np.zeros(p) if raw is None else raw, dtype=np.float64)
        if w.shape[0] != p:
            raise ValueError(f"LinearGaussianSource output {name!r}, field 'weights': {w.shape[0]} rows "
                             f"for {p} latents")
        return w.reshape(p, -1)

    def cubic(self, name: str) -> np.ndarray | None:
        """The cubic coefficients of an output (per latent), or None when it is linear."""
        c = self._spec(name).get("cubic")
        return None if c is None else np.asarray(c, dtype=np.float64)

    def noise(self, name: str) -> float:
        """Standard deviation of an output's own noise."""
        return float(self._spec(name).get("noise", 0.0))

    def bayes_risk(self, name: str) -> float:
        """Var(output | x): the squared-loss Bayes risk of predicting it from the full latent."""
        return self.noise(name) ** 2

    # -- sampling --------------------------------------------------------------------------------

    def load(self, split: str, seed: int) -> dict[str, np.ndarray]:
        sizes = dict(self.sizes or {"train": 1000, "test": 1000})
        if split not in sizes:
            raise KeyError(f"LinearGaussianSource has no split {split!r} (sizes: {sorted(sizes)})")
        rng = split_rng(seed if self.data_seed is None else self.data_seed, split)
        chol = np.linalg.cholesky(self.latent_cov() + 1e-12 * np.eye(self.latent_cov().shape[0]))
        x = rng.standard_normal((int(sizes[split]), chol.shape[0])) @ chol.T   # (n, latent)
        out = {"x": x}
        for name in sorted(self.outputs or {}):
            w = self.weights(name)
            value = x @ w                                                   # (n, k)
            c = self.cubic(name)
            if c is not None:
                value = value + (x ** 3 @ c)[:, None]
            value = value + rng.standard_normal(value.shape) * self.noise(name)
            out[name] = value[:, 0] if value.shape[1] == 1 else value
        return out


def _sparse_ok(raw: Any, p: int, where: str) -> bool:
    """Validate a sparse ``{index: weight}`` mapping (True when the weights can be built)."""
    if isinstance(raw, Mapping):
        for i in raw:
            if not 0 <= int(i) < p:
                raise ValueError(f"{where}, field 'weights': latent index {i} is outside 0..{p - 1}")
    return True


# -- upstream nodes with an exactly known fitted map --------------------------------------------
class PolynomialRegression(BaseNode):
    """Least squares on the powers ``1..degree`` of a one-dimensional input (with intercept).

    Degree 1 is ordinary linear regression; a higher degree is the "more expressive upstream" of
    the approximation toy. Output ``pred``; per-sample loss: squared error.
    """

    output_kinds = {"pred": "array"}
    target_kinds = {"y": "any"}
    metric = "mse"
    version = "1"

    def __init__(self, *, degree: int = 1, alpha: float = 0.0):
        self.degree = degree
        self.alpha = alpha
        if int(degree) < 1:
            raise ValueError(f"PolynomialRegression degree must be >= 1, got {degree}")

    def _features(self, inputs) -> np.ndarray:
        x = _stack_inputs(inputs)
        if x.shape[1] != 1:
            raise ValueError(f"PolynomialRegression reads one input column, got {x.shape[1]}")
        return np.hstack([x ** k for k in range(1, int(self.degree) + 1)])  # (n, degree)

    def fit(self, inputs, targets, *, seed):
        F = self._features(inputs)
        y = np.asarray(_one_target(targets, type(self).__name__), dtype=np.float64)
        A = np.hstack([np.ones((len(F), 1)), F])
        reg = float(self.alpha) * np.diag([0.0] + [1.0] * F.shape[1])
        self.coef_ = np.linalg.solve(A.T @ A + reg, A.T @ y)   # (degree + 1,) lowest power first
        return self

    def predict(self, inputs):
        if not hasattr(self, "coef_"):
            raise NotFittedError("PolynomialRegression is not fitted")
        F = self._features(inputs)
        return {"pred": self.coef_[0] + F @ self.coef_[1:]}

    def loss(self, predictions, targets):
        y = np.asarray(_one_target(targets, type(self).__name__), dtype=np.float64)
        return (np.asarray(predictions["pred"], dtype=np.float64) - y) ** 2

    def score(self, predictions, targets):
        return {"mse": float(np.mean(self.loss(predictions, targets)))}

    def state_dict(self):
        return {"coef_": self.coef_}

    def load_state_dict(self, state):
        self.coef_ = np.asarray(state["coef_"], dtype=np.float64)
        return self

    def linear_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` with ``pred = input @ W + b`` (degree 1 only)."""
        if int(self.degree) != 1:
            raise ClosedFormError(f"PolynomialRegression of degree {self.degree} is not linear")
        return self.coef_[1:].reshape(1, 1), self.coef_[:1]


class PCAEncoder(BaseNode):
    """Principal-component encoder: outputs ``z`` (the scores); its own loss is reconstruction.

    The upstream of the estimation toy: more components reconstruct the input better (a lower
    own loss) but hand the downstream a wider representation to fit.
    """

    output_kinds = {"z": "array"}
    target_kinds = {"x": "any"}
    metric = "mse"
    version = "1"

    def __init__(self, *, n_components: int = 2):
        self.n_components = n_components

    def fit(self, inputs, targets, *, seed):
        from sklearn.decomposition import PCA
        X = _stack_inputs(inputs)
        if not 1 <= int(self.n_components) <= X.shape[1]:
            raise ValueError(f"PCAEncoder n_components={self.n_components} must lie in [1, {X.shape[1]}]")
        pca = PCA(n_components=int(self.n_components), svd_solver="full").fit(X)
        self.components_ = pca.components_            # (k, d)
        self.mean_ = pca.mean_                        # (d,)
        return self

    def predict(self, inputs):
        if not hasattr(self, "components_"):
            raise NotFittedError("PCAEncoder is not fitted")
        return {"z": (_stack_inputs(inputs) - self.mean_) @ self.components_.T}

    def loss(self, predictions, targets):
        x = np.asarray(_one_target(targets, type(self).__name__), dtype=np.float64)
        x = x.reshape(len(x), -1)
        recon = np.asarray(predictions["z"]) @ self.components_ + self.mean_
        return ((x - recon) ** 2).sum(axis=1)

    def score(self, predictions, targets):
        return {"mse": float(np.mean(self.loss(predictions, targets)))}

    def state_dict(self):
        return {"components_": self.components_, "mean_": self.mean_}

    def load_state_dict(self, state):
        self.components_ = np.asarray(state["components_"], dtype=np.float64)
        self.mean_ = np.asarray(state["mean_"], dtype=np.float64)
        return self

    def linear_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` with ``z = input @ W + b``."""
        W = self.components_.T
        return W, -self.mean_ @ W


def fitted_linear_map(node: BaseNode) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` of a fitted linear node: ``output = stacked_inputs @ W + b``.

    Covers :class:`~entangle.node.SklearnNode` around a linear regressor (``coef_``,
    ``intercept_``) and any node with a ``linear_map()`` method.
    """
    if hasattr(node, "linear_map"):
        return node.linear_map()
    if isinstance(node, SklearnNode) and hasattr(node, "estimator_"):
        est = node.estimator_
        if hasattr(est, "coef_") and not node.is_classifier:
            coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))   # (k, d)
            intercept = np.atleast_1d(np.asarray(getattr(est, "intercept_", 0.0), dtype=np.float64))
            return coef.T, np.broadcast_to(intercept, (coef.shape[0],)).copy()
    raise ClosedFormError(f"{type(node).__name__} has no known linear map (closed forms need a "
                          "linear regressor or a node with linear_map())")


# -- Gaussian algebra ---------------------------------------------------------------------------
def conditional_variance(cov: np.ndarray, a: np.ndarray, M: np.ndarray | None,
                         noise_var: float = 0.0) -> float:
    """``Var(x·a + ε | x @ M)`` for ``x ~ N(0, cov)`` and independent ``ε`` of variance ``noise_var``.

    ``M`` may be rank-deficient (a pseudo-inverse is used) or None (no information).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    total = float(a @ cov @ a) + float(noise_var)
    if M is None or np.size(M) == 0:
        return total
    M = np.asarray(M, dtype=np.float64).reshape(cov.shape[0], -1)
    c = M.T @ cov @ a                                   # Cov(z, y), (d,)
    C = M.T @ cov @ M                                   # Cov(z), (d, d)
    return max(total - float(c @ np.linalg.pinv(C, rcond=1e-10, hermitian=True) @ c), float(noise_var))


def effective_dim(cov: np.ndarray, M: np.ndarray, rtol: float = 1e-9) -> int:
    """Rank of ``Cov(x @ M)``: the number of features least squares really estimates."""
    C = np.atleast_2d(M.T @ cov @ M)
    s = np.linalg.svd(C, compute_uv=False)
    return int(np.sum(s > rtol * max(s.max(), 1e-300)))


def ols_expected_excess(risk: float, d: int, n: int) -> float:
    """Expected excess risk of least squares with intercept on ``d`` Gaussian features, ``n`` samples.

    ``E[L(v̂)] − L_H = σ² (1/n + (n+1) d / (n (n − d − 2)))`` for a well-specified linear model with
    residual variance ``σ² = risk`` (the intercept adds ``σ²/n``; the slope part is the inverse
    Wishart mean). Needs ``n > d + 2``.
    """
    if n <= d + 2:
        raise ClosedFormError(f"least squares with intercept on {d} features needs n > {d + 2}, got n={n}")
    return float(risk) * (1.0 / n + (n + 1) * d / (n * (n - d - 2)))


def gaussian_moment(k: int, var: float) -> float:
    """``E[x**k]`` for ``x ~ N(0, var)``: zero for odd k, ``(k-1)!! var**(k/2)`` for even k."""
    if k % 2:
        return 0.0
    return float(np.prod(np.arange(k - 1, 0, -2))) * var ** (k // 2) if k else 1.0


def poly_expectation(coef: np.ndarray, var: float) -> float:
    """``E[p(x)]`` for a polynomial (coefficients lowest power first) of ``x ~ N(0, var)``."""
    return float(sum(c * gaussian_moment(k, var) for k, c in enumerate(np.asarray(coef))))


def _is_strictly_monotone(coef: np.ndarray) -> bool:
    """Whether a real polynomial is strictly monotone on the whole line (derivative keeps its sign)."""
    d = P.polyder(np.asarray(coef, dtype=np.float64))
    d = np.trim_zeros(d, "b")
    if len(d) == 0:
        return False
    if len(d) == 1:
        return d[0] != 0
    roots = P.polyroots(d)
    real = roots[np.abs(roots.imag) < 1e-9].real
    # a derivative that touches zero without crossing keeps the map strictly monotone
    return all(np.sign(P.polyval(r - 1e-6, d)) == np.sign(P.polyval(r + 1e-6, d)) for r in real)


# -- closed forms of a run ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Chain:
    """A node value as a function of the latent: ``x @ M + b``, or ``poly(x)`` for a 1-D latent."""

    M: np.ndarray | None
    b: np.ndarray | None = None
    poly: np.ndarray | None = None   # value = poly(x), coefficients lowest power first


def _source_of(system, downstream: str) -> tuple[str, LinearGaussianSource]:
    sources = [n for n in system.ancestors(downstream) if system.specs[n].node.is_source]
    if len(sources) != 1 or not isinstance(system.specs[sources[0]].node, LinearGaussianSource):
        raise ClosedFormError(f"closed forms need exactly one LinearGaussianSource above {downstream!r}, "
                              f"found {sources}")
    return sources[0], system.specs[sources[0]].node


def _chain(run, ref: str, source_name: str, src: LinearGaussianSource) -> _Chain:
    """The value ``ref`` as a function of the latent, following fitted nodes back to the source."""
    name, out = parse_ref(ref)
    spec = run.system.specs[name]
    if name == source_name:
        if src.noise(out) > 0:
            raise ClosedFormError(f"{ref} carries its own noise; closed forms need noise-free inputs")
        w = src.weights(out)
        if src.cubic(out) is not None:
            if w.shape != (1, 1):
                raise ClosedFormError(f"{ref} is cubic in a multi-dimensional latent")
            return _Chain(None, poly=np.array([0.0, w[0, 0], 0.0, src.cubic(out)[0]]))
        return _Chain(w, np.zeros(w.shape[1]))
    node = run.fitted(name)
    ins = [_chain(run, spec.inputs[arg], source_name, src) for arg in sorted(spec.inputs)]
    if isinstance(node, PolynomialRegression) and int(node.degree) > 1:
        if len(ins) != 1 or ins[0].M is None or ins[0].M.shape != (1, 1):
            raise ClosedFormError(f"{name}: a polynomial upstream needs a one-dimensional linear input")
        # pred = sum_k c_k (m x + b)^k, expanded in powers of x
        inner = np.array([float(ins[0].b[0]), float(ins[0].M[0, 0])])
        coef = np.zeros(1)
        for k, c in enumerate(node.coef_):
            coef = P.polyadd(coef, c * P.polypow(inner, k))
        return _Chain(None, poly=coef)
    if any(c.M is None for c in ins):
        raise ClosedFormError(f"{name}: reads a non-linear value; closed forms cover linear chains")
    W, b = fitted_linear_map(node)
    M_in = np.hstack([c.M for c in ins])
    b_in = np.concatenate([c.b for c in ins])
    return _Chain(M_in @ W, b_in @ W + b)


def _target_of(system, downstream: str, source_name: str, src: LinearGaussianSource) -> tuple[np.ndarray, float]:
    spec = system.specs[downstream]
    if len(spec.targets) != 1:
        raise ClosedFormError(f"{downstream!r} must have exactly one target")
    name, out = parse_ref(next(iter(spec.targets.values())))
    if name != source_name:
        raise ClosedFormError(f"{downstream!r}'s target must come from the source")
    if src.cubic(out) is not None:
        raise ClosedFormError(f"{downstream!r}'s target {out!r} must be linear in the latent")
    w = src.weights(out)
    if w.shape[1] != 1:
        raise ClosedFormError(f"{downstream!r}'s target {out!r} must be one-dimensional")
    return w[:, 0], src.noise(out) ** 2


def _fit_size(system, downstream: str, src: LinearGaussianSource) -> int:
    split = system.specs[downstream].fit_split
    return int(dict(src.sizes or {})[split])


def closed_form_values(run, downstream: str, *, oracle: Mapping[str, str] | None = None,
                       upstreams: Sequence[str] | None = None) -> dict[str, Any]:
    """Exact ``L*``, ``L*(u)``, ``L_H(u)`` and ``E L(v̂∘u)`` of ``downstream`` in a run.

    ``oracle`` maps upstream outputs (``"up.pred"``) to the source outputs that replace them for
    ``L*``; with several upstreams, ``L*(u_i)`` (only ``u_i`` real, the others oracles) is also
    returned under ``"L*(only NAME)"``. The downstream must be a least-squares linear model
    (SklearnNode around LinearRegression or an equivalent) reading linear (or, for a
    one-dimensional latent, polynomial) functions of the latent; ``E L(v̂∘u)`` is a closed form
    for a well-specified linear downstream and a simulated expectation otherwise
    (:func:`ols_excess_by_simulation`, standard error under ``"estimation_se"``).
    """
    system = run.system
    source_name, src = _source_of(system, downstream)
    cov = src.latent_cov()
    a, noise_var = _target_of(system, downstream, source_name, src)
    spec = system.specs[downstream]
    oracle = dict(oracle or {})
    ups = list(upstreams) if upstreams is not None else sorted(
        {parse_ref(r)[0] for r in spec.inputs.values()} - {source_name})
    n = _fit_size(system, downstream, src)

    def chains(real: set[str]) -> list[_Chain]:
        out = []
        for arg in sorted(spec.inputs):
            ref = spec.inputs[arg]
            up = parse_ref(ref)[0]
            if up in ups and up not in real:
                if ref not in oracle:
                    raise ClosedFormError(f"no oracle for {ref!r} (give oracle={{{ref!r}: 'source.output'}})")
                ref = oracle[ref]
            out.append(_chain(run, ref, source_name, src))
        return out

    def linear_risk(cs: list[_Chain]) -> float:
        return conditional_variance(cov, a, np.hstack([c.M for c in cs]), noise_var)

    result: dict[str, Any] = {}
    real_chains = chains(set(ups))
    if all(c.M is not None for c in real_chains):
        M = np.hstack([c.M for c in real_chains])
        l_u = linear_risk(real_chains)
        d = effective_dim(cov, M)
        result.update({"L*(u)": l_u, "L_H(u)": l_u, "L(v̂∘u)": l_u + ols_expected_excess(l_u, d, n),
                       "n": n, "d": d, "exact": True})
    else:
        result.update(_polynomial_values(cov, a, noise_var, real_chains, n))
    if oracle:
        result["L*"] = _oracle_risk(chains(set()), cov, a, noise_var, linear_risk)
        if len(ups) > 1:
            for u in ups:
                result[f"L*(only {u})"] = _oracle_risk(chains({u}), cov, a, noise_var, linear_risk)
    else:
        result["L*"] = noise_var
    return result


def _oracle_risk(cs, cov, a, noise_var, linear_risk) -> float:
    if all(c.M is not None for c in cs):
        return linear_risk(cs)
    raise ClosedFormError("oracle inputs must be linear in the latent")


def _polynomial_values(cov: np.ndarray, a: np.ndarray, noise_var: float, cs: list[_Chain],
                       n: int) -> dict[str, Any]:
    """Closed forms for one polynomial feature ``z = p(x)`` of a one-dimensional latent."""
    if cov.shape != (1, 1) or len(cs) != 1:
        raise ClosedFormError("non-linear closed forms cover one polynomial input of a 1-D latent")
    v = float(cov[0, 0])
    p = np.asarray(cs[0].poly, dtype=np.float64)
    q = np.array([0.0, float(a[0])])                     # E[y | x] = a x
    mean_p = poly_expectation(p, v)
    pc = p.copy()
    pc[0] -= mean_p                                      # centred feature
    var_p = poly_expectation(P.polymul(pc, pc), v)
    cov_qp = poly_expectation(P.polymul(q, pc), v)
    var_q = poly_expectation(P.polymul(q, q), v)
    l_h = var_q + noise_var - cov_qp ** 2 / var_p
    if not _is_strictly_monotone(p):
        raise ClosedFormError("the upstream polynomial is not invertible; L*(u) has no closed form here")
    l_u = noise_var                                      # an invertible map loses nothing
    beta1 = cov_qp / var_p
    beta0 = poly_expectation(q, v) - beta1 * mean_p
    excess, se = ols_excess_by_simulation(p, q, v, noise_var, n, beta0, beta1)
    return {"L*(u)": l_u, "L_H(u)": l_h, "L(v̂∘u)": l_h + excess, "n": n, "d": 1, "exact": False,
            "estimation_se": se,
            "estimation_first_order": sandwich_excess(p, q, v, noise_var, n, beta0, beta1)}


def sandwich_excess(p: np.ndarray, q: np.ndarray, v: float, noise_var: float, n: int,
                    beta0: float, beta1: float) -> float:
    """First-order (sandwich) expected excess risk of least squares with intercept on ``z = p(x)``.

    ``(1/n) tr(A⁻¹B)`` with ``A = E[x̃x̃ᵀ]``, ``B = E[e² x̃x̃ᵀ]``, ``x̃ = (1, z)`` and ``e`` the
    residual of the best linear predictor; exact only as ``n → ∞`` (heavy-tailed ``z`` converge slowly).
    """
    r = P.polysub(q, P.polyadd([beta0], beta1 * np.asarray(p)))   # misfit of the best linear predictor
    feats = [np.array([1.0]), np.asarray(p)]
    A = np.array([[poly_expectation(P.polymul(f, g), v) for g in feats] for f in feats])
    r2 = P.polymul(r, r)
    B = np.array([[poly_expectation(P.polymul(r2, P.polymul(f, g)), v) for g in feats] for f in feats])
    return float(np.trace(np.linalg.solve(A, B + noise_var * A))) / n


def ols_excess_by_simulation(p: np.ndarray, q: np.ndarray, v: float, noise_var: float, n: int,
                             beta0: float, beta1: float, reps: int = 20000,
                             seed: int = 0) -> tuple[float, float]:
    """Expected excess risk of least squares with intercept on ``z = p(x)`` and its standard error.

    A misspecified fit (``E[y|z]`` not linear in ``z``) has no closed-form finite-sample risk, so
    the toys take the expectation over ``reps`` simulated training sets of size ``n``; each
    set's excess risk is exact (the population moments of ``z`` are closed forms), so the only
    error is the reported Monte Carlo standard error. Deterministic (fixed ``seed``).
    """
    rng = np.random.default_rng(seed)
    m1, m2 = poly_expectation(p, v), poly_expectation(P.polymul(p, p), v)
    chunk = max(1, 2_000_000 // n)
    parts = []
    for start in range(0, reps, chunk):
        k = min(chunk, reps - start)
        x = rng.standard_normal((k, n)) * np.sqrt(v)                    # (k, n) training sets
        z = P.polyval(x, np.asarray(p))
        y = P.polyval(x, np.asarray(q)) + rng.standard_normal((k, n)) * np.sqrt(noise_var)
        zc = z - z.mean(axis=1, keepdims=True)
        b1 = (zc * (y - y.mean(axis=1, keepdims=True))).sum(axis=1) / (zc ** 2).sum(axis=1)
        b0 = y.mean(axis=1) - b1 * z.mean(axis=1)
        d0, d1 = b0 - beta0, b1 - beta1
        parts.append(d0 ** 2 + 2 * d0 * d1 * m1 + d1 ** 2 * m2)          # E_x[(d0 + d1 z)²], (k,)
    excess = np.concatenate(parts)
    return float(excess.mean()), float(excess.std(ddof=1) / np.sqrt(reps))


def closed_form_terms(values: Mapping[str, Any]) -> dict[str, float]:
    """The decomposition terms (upstream, approximation, estimation, and per-upstream/compatibility
    parts where ``L*(only NAME)`` values are present) from closed-form values."""
    terms = {"upstream": values["L*(u)"] - values["L*"],
             "approximation": values["L_H(u)"] - values["L*(u)"],
             "estimation": values["L(v̂∘u)"] - values["L_H(u)"]}
    parts = {k[len("L*(only "):-1]: v - values["L*"] for k, v in values.items() if k.startswith("L*(only ")}
    if parts:
        for u, part in parts.items():
            terms[f"upstream:{u}"] = part
        terms["compatibility"] = terms["upstream"] - sum(parts.values())
    return terms


def ridge_chain(alpha: float) -> System:
    """A tiny two-node system: a ridge upstream (penalty ``alpha``) feeding a linear downstream,
    for benchmarks and tests of the machinery around a study (executors, pools, stores)."""
    from sklearn.linear_model import LinearRegression, Ridge
    src = LinearGaussianSource(variances=[1.0, 1.0], outputs={
        "view": {"weights": [[1.0, 0.0], [0.3, 1.0]]}, "t": {"weights": [1.0, 0.5], "noise": 0.3},
        "y": {"weights": [1.5, 0.0], "noise": 0.5}},
        sizes={"upstream": 100, "train": 30, "large": 200, "test": 200})
    return System({"data": src,
                   "up": NodeSpec(SklearnNode(estimator=Ridge(alpha=alpha)), inputs={"v": "data.view"},
                                  targets={"y": "data.t"}, fit_split="upstream"),
                   "v": NodeSpec(SklearnNode(estimator=LinearRegression()), inputs={"s": "up.pred"},
                                 targets={"y": "data.y"}, output=True)},
                  splits=("upstream", "train", "large", "test"))
