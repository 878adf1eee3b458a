"""Exact noising of a target by a process: ``marginal``, ``posterior`` and ``exact_score``.

For a target sum_k pi_k N(mu_k, Sigma_k) (an ``Empirical`` has Sigma_k = 0) and the kernel
x_t = alpha x0 + sigma eps:

* the marginal p_t is sum_k pi_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I) (TSM §4.1);
* the posterior p(x0 | x_t) is the mixture of the Gaussian conditionals with responsibilities
  r_k(x_t) proportional to pi_k N(x_t; alpha mu_k, C_k) (TSM Eq. 17 in d dimensions);
* the score, its Jacobian, divergence and time derivative follow in closed form (:mod:`._dense`),
  and Tweedie's identity alpha E[x0 | x_t] = x_t + sigma^2 grad log p_t(x_t) holds exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import _dense, _fast
from ._gaussians import Gaussians
from ._validation import as_count, as_generator, as_points
from .processes import Process
from .targets import Empirical, GaussianMixture, _parts_of, check_method, evaluate, sample

__all__ = ["marginal", "posterior", "Posterior", "exact_score", "ExactScore", "noised_sample"]


def _check_process(proc) -> Process:
    if not isinstance(proc, Process):
        raise TypeError(f"proc must be a scoremc Process (VE, VP, SubVP, Cosine, EDM), got {type(proc).__name__}")
    return proc


def _scalar_time(proc: Process, t) -> float:
    t = proc.check_t(t)
    if t.ndim != 0:
        raise ValueError(f"t must be a scalar here, got shape {t.shape}; use exact_score for per-row times")
    return float(t)


def noised_parts(dist, proc: Process, t: float) -> Gaussians:
    """Normal form of the law of x_t (t already validated)."""
    return _parts_of(dist).noised(float(proc.alpha(t)), float(proc.sigma(t)), f" at t={t!r} for {proc!r}")


def noised_sample(dist, proc: Process, t: float, n: int, rng: np.random.Generator):
    """n joint draws (x0, x_t): x0 ~ p0 and x_t = alpha(t) x0 + sigma(t) eps, each (n, d).

    ``t`` is a scalar already in the domain; the draws consume ``rng`` as x0 first, then eps.
    """
    x0 = sample(dist, n, rng)
    return x0, float(proc.alpha(t)) * x0 + float(proc.sigma(t)) * rng.standard_normal(x0.shape)


def marginal(dist, proc: Process, t) -> GaussianMixture:
    """Exact law of x_t = alpha(t) x0 + sigma(t) eps as a :class:`GaussianMixture`.

    Means alpha mu_k, covariances alpha^2 Sigma_k + sigma^2 I, in the covariance kind of the
    target (an ``Empirical`` becomes an isotropic mixture). ``t`` is a scalar in the domain.
    """
    proc = _check_process(proc)
    t = _scalar_time(proc, t)
    kind = "iso" if isinstance(dist, Empirical) else dist.cov_kind
    return GaussianMixture._from_parts(noised_parts(dist, proc, t), kind)


@dataclass(frozen=True, eq=False)
class Posterior:
    """Exact p(x0 | x_t) for each row of ``xt`` at one time t.

    Attributes: ``weights`` (N, K) responsibilities, ``means`` (N, K, d) component posterior means,
    ``covs`` the component posterior covariances (independent of x_t): (K,) isotropic,
    (K, d) diagonal or (K, d, d) full, like the target. Methods: ``mean()`` (N, d),
    ``cov()`` (N, d, d), ``sample(m, rng)`` (m, N, d). N is the number of rows of ``xt``
    (its batch dimensions are flattened; ``batch_shape`` keeps them).
    """

    prior: Gaussians
    noised: Gaussians
    alpha: float
    sigma: float
    xt: np.ndarray
    batch_shape: tuple
    cov_kind: str
    method: str = "fast"
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def weights(self) -> np.ndarray:
        if "weights" not in self._cache:
            module = _fast if self.method == "fast" else _dense
            fn = module.responsibilities if module is _fast else (
                lambda G, x: np.exp(_dense.log_responsibilities(G, x)))
            self._cache["weights"] = fn(self.noised, self.xt)
        return self._cache["weights"]

    @cached_property
    def _post_var(self) -> np.ndarray:
        # posterior eigenvalues lam sigma^2 / (alpha^2 lam + sigma^2), in the component basis
        return self.prior.var * (self.sigma * self.sigma) / self.noised.var

    @property
    def means(self) -> np.ndarray:
        """Component posterior means, (N, K, d): mu_k + alpha Sigma_k C_k^{-1} (x_t - alpha mu_k)."""
        return _dense.posterior_terms(self.noised, self.xt, self.prior, self.alpha)[1]

    @property
    def covs(self) -> np.ndarray:
        """Component posterior covariances Sigma_k - alpha^2 Sigma_k C_k^{-1} Sigma_k."""
        if self.cov_kind == "iso":
            return self._post_var[:, 0].copy()
        if self.cov_kind == "diag":
            return self._post_var.copy()
        return self.prior.dense_covs(self._post_var)

    def mean(self) -> np.ndarray:
        """E[x0 | x_t], shape (N, d)."""
        if self.method == "fast":
            return _fast.posterior_mean(self.noised, self.xt, self.prior, self.alpha, self.sigma)
        r, m = _dense.posterior_terms(self.noised, self.xt, self.prior, self.alpha)
        return np.einsum("nk,nkd->nd", r, m)

    def cov(self) -> np.ndarray:
        """Cov[x0 | x_t] by the law of total covariance, shape (N, d, d)."""
        r, m = _dense.posterior_terms(self.noised, self.xt, self.prior, self.alpha)
        mean = np.einsum("nk,nkd->nd", r, m)
        c = m - mean[:, None, :]
        within = np.einsum("nk,kij->nij", r, self.prior.dense_covs(self._post_var))
        return within + np.einsum("nk,nki,nkj->nij", r, c, c)

    def sample(self, m, rng: np.random.Generator) -> np.ndarray:
        """m exact draws of x0 for every row, shape (m, N, d): a component from ``weights``, then
        the Gaussian conditional of that component."""
        m = as_count(m, "m")
        rng = as_generator(rng)
        cdf = np.cumsum(self.weights, axis=1)
        cdf[:, -1] = 1.0  # the last bin absorbs the round-off of the cumulative sum
        u = rng.random((m, len(self.xt)))
        comp = np.empty(u.shape, dtype=np.intp)
        for i in range(len(self.xt)):  # searchsorted per row: O(m log K) memory-light
            comp[:, i] = np.searchsorted(cdf[i], u[:, i], side="right")
        np.minimum(comp, self.prior.n_components - 1, out=comp)
        z = rng.standard_normal((m, len(self.xt), self.prior.dim))
        return self._draw(comp, z)

    def _draw(self, comp, z):
        G, P = self.noised, self.prior
        post_sd = np.sqrt(np.broadcast_to(self._post_var, (P.n_components, P.dim)))
        if G.basis is None:
            gain = self.alpha * np.broadcast_to(P.var / G.var, (P.n_components, P.dim))
            x = self.xt[None]
            return P.means[comp] + gain[comp] * (x - G.means[comp]) + post_sd[comp] * z
        out = np.empty_like(z)
        for k in np.unique(comp):
            sel = comp == k
            rows = np.nonzero(sel)[1]
            Q = G.basis[k]
            zk = (self.xt[rows] - G.means[k]) @ Q
            out[sel] = P.means[k] + (self.alpha * P.var[k] / G.var[k] * zk + post_sd[k] * z[sel]) @ Q.T
        return out


def posterior(dist, proc: Process, t, xt, *, method: str = "fast") -> Posterior:
    """Exact posterior p(x0 | x_t) at scalar time ``t`` for every row of ``xt`` (..., d).

    Needs a density at x_t: for an ``Empirical`` target sigma(t) must be positive.
    """
    proc = _check_process(proc)
    t = _scalar_time(proc, t)
    prior = _parts_of(dist)
    x = as_points(xt, prior.dim, "xt")
    flat = np.ascontiguousarray(x.reshape(-1, prior.dim))
    kind = "iso" if isinstance(dist, Empirical) else dist.cov_kind
    return Posterior(prior, noised_parts(dist, proc, t), float(proc.alpha(t)), float(proc.sigma(t)),
                     flat, x.shape[:-1], kind, check_method(method))


@dataclass(frozen=True, eq=False)
class ExactScore:
    """The exact score s(x, t) = grad_x log p_t(x) of ``dist`` noised by ``proc``, as a callable.

    ``x`` is (..., d) and ``t`` broadcasts against ``x.shape[:-1]`` (rows sharing a time are
    computed together). Besides ``__call__``: ``logpdf``, ``hessian`` (..., d, d), ``divergence``
    (...), ``dt`` (the exact partial derivative in t at fixed x, (..., d)) and ``grad_divergence``.
    """

    dist: object
    proc: Process
    method: str = "fast"

    def __post_init__(self):
        _parts_of(self.dist)
        _check_process(self.proc)
        check_method(self.method)

    @property
    def dim(self) -> int:
        return _parts_of(self.dist).dim

    def _by_time(self, x, t, fn, tail):
        d = _parts_of(self.dist).dim
        x = as_points(x, d)
        t = np.broadcast_to(self.proc.check_t(t), x.shape[:-1])
        flat_x = np.ascontiguousarray(x.reshape(-1, d))
        times, group = np.unique(t.reshape(-1), return_inverse=True)
        # rows sorted by time once, so each distinct time costs O(its rows), not O(N)
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(len(times) + 1))
        out = None
        for j, tj in enumerate(times):
            rows = order[bounds[j]:bounds[j + 1]]
            value = fn(noised_parts(self.dist, self.proc, float(tj)), flat_x[rows], float(tj))
            if out is None:
                out = np.empty((len(flat_x),) + value.shape[1:])
            out[rows] = value
        return out.reshape(x.shape[:-1] + tail)

    def __call__(self, x, t):
        return self._by_time(x, t, lambda G, xs, _: evaluate(G, xs, "score", self.method, (G.dim,)),
                             (self.dim,))

    def logpdf(self, x, t):
        """log p_t(x), shape (...)."""
        return self._by_time(x, t, lambda G, xs, _: evaluate(G, xs, "logpdf", self.method), ())

    def hessian(self, x, t):
        """Jacobian of the score (Hessian of log p_t), shape (..., d, d)."""
        d = self.dim
        return self._by_time(x, t, lambda G, xs, _: _dense.hessian(G, xs), (d, d))

    def divergence(self, x, t):
        """div_x s(x, t), shape (...)."""
        return self._by_time(x, t, lambda G, xs, _: _dense.divergence(G, xs), ())

    def grad_divergence(self, x, t):
        """grad_x div_x s(x, t), shape (..., d)."""
        return self._by_time(x, t, lambda G, xs, _: _dense.grad_divergence(G, xs)[1], (self.dim,))

    def dt(self, x, t):
        """Exact partial derivative d/dt s(x, t) at fixed x, shape (..., d).

        d/dt of the marginal: means alpha' mu_k, eigenvalues 2 alpha alpha' lam_k + 2 sigma sigma'.
        """
        prior = _parts_of(self.dist)

        def fn(G, xs, tj):
            a, da = float(self.proc.alpha(tj)), float(self.proc.dalpha(tj))
            s, ds = float(self.proc.sigma(tj)), float(self.proc.dsigma(tj))
            return _dense.dt_score(G, xs, da * prior.means, 2 * a * da * prior.var + 2 * s * ds)

        return self._by_time(x, t, fn, (self.dim,))


def exact_score(dist, proc: Process, *, method: str = "fast") -> ExactScore:
    """Exact score s(x, t) = grad log p_t(x) of ``dist`` under ``proc`` (see :class:`ExactScore`)."""
    return ExactScore(dist, proc, method)
