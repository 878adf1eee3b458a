"""Exact noising of a target by a process: ``marginal``, ``posterior`` and ``exact_score``.

For a target sum_k pi_k N(mu_k, Sigma_k) (an ``Empirical`` has Sigma_k = 0) and the kernel
x_t = alpha x0 + sigma eps:

* the marginal p_t is sum_k pi_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I) (TSM §4.1);
* the posterior p(x0 | x_t) is the mixture of the Gaussian conditionals with responsibilities
  r_k(x_t) proportional to pi_k N(x_t; alpha mu_k, C_k) (TSM Eq. 17 in d dimensions);
* the score, its Jacobian, divergence and time derivative follow in closed form
  (:mod:`._reference`), and Tweedie's identity alpha E[x0 | x_t] = x_t + sigma^2 grad log p_t(x_t)
  holds exactly.

:class:`ExactScore` evaluates at per-row times on NumPy and torch (autograd flows through x and t);
the NumPy fast path serves the rows when they share one time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import _fast, _random, _reference
from ._array import is_numpy, matmul, namespace, np_xp, to_numpy
from ._gaussians import Gaussians
from ._validation import as_array, as_count, as_generator, as_points, check_process, check_result, scalar_time
from .analytic import AnalyticScore
from .distributions import Empirical, GaussianMixture, check_method, normal_form, sample
from .processes import Process

__all__ = ["marginal", "posterior", "Posterior", "exact_score", "ExactScore", "noised_sample"]


def _kind(dist) -> str:
    return "iso" if isinstance(dist, Empirical) else dist.cov_kind


def noised_parts(dist, proc: Process, t: float) -> Gaussians:
    """Normal form of the law of x_t at one validated time (NumPy, for the fast path)."""
    return normal_form(dist).noised(float(proc.alpha(t)), float(proc.sigma(t)), f" at t={t!r} for {proc!r}")


def noised_sample(dist, proc: Process, t: float, n: int, rng):
    """n joint draws (x0, x_t): x0 ~ p0 and x_t = alpha(t) x0 + sigma(t) eps, each (n, d).

    ``t`` is a scalar already in the domain; the draws consume ``rng`` as x0 first, then eps.
    """
    t = scalar_time(check_process(proc), t)
    x0 = sample(dist, n, rng)
    return x0, float(proc.alpha(t)) * x0 + float(proc.sigma(t)) * _random.normal(rng, x0.shape, x0.dtype)


def marginal(dist, proc: Process, t) -> GaussianMixture:
    """Exact law of x_t = alpha(t) x0 + sigma(t) eps as a :class:`GaussianMixture`.

    Means alpha mu_k, covariances alpha^2 Sigma_k + sigma^2 I, in the covariance kind of the
    target (an ``Empirical`` becomes an isotropic mixture). ``t`` is a scalar in the domain. The
    returned law evaluates on NumPy and torch input like any target.
    """
    proc = check_process(proc)
    t = scalar_time(proc, t)
    return GaussianMixture.from_normal_form(noised_parts(dist, proc, t), _kind(dist))


@dataclass(frozen=True, eq=False)
class Posterior:
    """Exact p(x0 | x_t) for each row of ``xt`` at one time t (NumPy, float64).

    Attributes: ``weights`` (N, K) responsibilities, ``means`` (N, K, d) component posterior means,
    ``covs`` the component posterior covariances (independent of x_t): (K,) isotropic,
    (K, d) diagonal or (K, d, d) full, like the target; ``coefficients`` the process's
    coefficients at t. Methods: ``mean()`` (N, d), ``cov()`` (N, d, d), ``trace_cov()`` (N,),
    ``sample(m, rng)`` (m, N, d). N is the number of rows of ``xt`` (its batch dimensions are
    flattened; ``batch_shape`` keeps them).
    """

    dist: object
    proc: Process
    t: float
    xt: np.ndarray
    batch_shape: tuple
    method: str = "fast"
    _cache: dict = field(default_factory=dict, repr=False)

    @cached_property
    def coefficients(self):
        return self.proc.at(np.float64(self.t))

    @property
    def alpha(self) -> float:
        return float(self.coefficients.alpha)

    @property
    def sigma(self) -> float:
        return float(self.coefficients.sigma)

    @property
    def prior(self) -> Gaussians:
        return normal_form(self.dist)

    @cached_property
    def noised(self) -> Gaussians:
        return noised_parts(self.dist, self.proc, self.t)

    @property
    def cov_kind(self) -> str:
        return _kind(self.dist)

    @property
    def weights(self) -> np.ndarray:
        if "weights" not in self._cache:
            if self.method == "fast":
                w = _fast.responsibilities(self.noised, self.xt)
            else:
                w = np.exp(_reference.log_responsibilities(self.prior, self.xt, self.alpha, self.sigma))
            self._cache["weights"] = w
        return self._cache["weights"]

    @cached_property
    def _post_var(self) -> np.ndarray:
        # posterior eigenvalues lam sigma^2 / (alpha^2 lam + sigma^2), in the component basis
        return self.prior.var * (self.sigma * self.sigma) / self.noised.var

    @property
    def means(self) -> np.ndarray:
        """Component posterior means, (N, K, d): mu_k + alpha Sigma_k C_k^{-1} (x_t - alpha mu_k)."""
        return _reference.posterior_terms(self.prior, self.xt, self.alpha, self.sigma)[1]

    @property
    def covs(self) -> np.ndarray:
        """Component posterior covariances Sigma_k - alpha^2 Sigma_k C_k^{-1} Sigma_k."""
        if self.cov_kind == "iso":
            return self._post_var[:, 0].copy()
        if self.cov_kind == "diag":
            return self._post_var.copy()
        return self.prior.dense_covs(self._post_var)

    def mean(self) -> np.ndarray:
        """E[x0 | x_t], shape (N, d) (ValueError naming xt where it overflows float64)."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if self.method == "fast":
                out = _fast.posterior_mean(self.noised, self.xt, self.prior, self.alpha, self.sigma)
            else:
                out = _reference.posterior_mean(self.prior, self.xt, self.alpha, self.sigma)
        return check_result(out, "xt", "the posterior mean")

    def cov(self) -> np.ndarray:
        """Cov[x0 | x_t] by the law of total covariance, shape (N, d, d) (rows in chunks; the only dense
        arrays are the (chunk, d, d) results)."""
        return _reference.posterior_cov(self.prior, self.xt, self.alpha, self.sigma)

    def trace_cov(self) -> np.ndarray:
        """tr Cov[x0 | x_t], shape (N,), without forming the (N, d, d) covariances."""
        return _reference.posterior_trace_cov(self.prior, self.xt, self.alpha, self.sigma)

    def sample(self, m, rng: np.random.Generator) -> np.ndarray:
        """m exact draws of x0 for every row, shape (m, N, d): a component from ``weights``, then
        the Gaussian conditional of that component. ``rng``: a NumPy Generator (or a RowStream over
        the rows, inside chunked computations)."""
        m = as_count(m, "m")
        rng = as_generator(rng)
        if _random.generator_namespace(rng) is not np_xp:
            raise TypeError("Posterior.sample draws NumPy arrays; pass a numpy.random.Generator")
        cdf = np.cumsum(self.weights, axis=1)
        cdf[:, -1] = 1.0  # the last bin absorbs the round-off of the cumulative sum
        u = _random.uniform(rng, (m, len(self.xt)), rows_axis=1)
        comp = np.empty(u.shape, dtype=np.intp)
        for i in range(len(self.xt)):  # searchsorted per row: O(m log K) memory-light
            comp[:, i] = np.searchsorted(cdf[i], u[:, i], side="right")
        np.minimum(comp, self.prior.n_components - 1, out=comp)
        z = _random.normal(rng, (m, len(self.xt), self.prior.dim), rows_axis=1)
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
            zk = matmul(self.xt[rows] - G.means[k], Q)
            out[sel] = P.means[k] + matmul(self.alpha * P.var[k] / G.var[k] * zk + post_sd[k] * z[sel], Q.T)
        return out


def posterior(dist, proc: Process, t, xt, *, method: str = "fast") -> Posterior:
    """Exact posterior p(x0 | x_t) at scalar time ``t`` for every row of ``xt`` (..., d) (NumPy).

    Needs a density at x_t: for an ``Empirical`` target sigma(t) must be positive.
    """
    proc = check_process(proc)
    t = scalar_time(proc, t)
    prior = normal_form(dist)
    x = as_points(to_numpy(xt) if not is_numpy(namespace(xt)) else xt, prior.dim, "xt")
    flat = np.ascontiguousarray(x.reshape(-1, prior.dim))
    post = Posterior(dist, proc, t, flat, x.shape[:-1], check_method(method))
    post.noised  # noqa: B018 - fails early, naming t, where the law at t has no density
    return post


def _check_result(out, x, t):
    """No silent NaN: finite x and t whose result overflows float64 (|x|^2 or sigma(t)^2 beyond ~1e308,
    e.g. x = 1e160 or EDM at t = 1e155) raise ``ValueError`` naming x and t; nothing is clipped."""
    parts = out if isinstance(out, tuple) else (out,)
    xp = namespace(x)
    for p in parts:
        bad = ~xp.isfinite(p)
        if bool(xp.any(bad)):
            rows = xp.reshape(xp.any(xp.reshape(bad, (p.shape[0], -1)), axis=1), (-1,))
            i = int(xp.nonzero(rows)[0][0])
            raise ValueError(f"x and t too large for float{xp.finfo(x.dtype).bits}: the result at row {i} "
                             f"(max |x| = {float(xp.max(xp.abs(x[i])))}, t = {float(t[i])}) overflows; rescale x "
                             "or pick a smaller t")


@dataclass(frozen=True, eq=False)
class ExactScore(AnalyticScore):
    """The exact score s(x, t) = grad_x log p_t(x) of ``dist`` noised by ``proc``, as a callable.

    ``x`` is (..., d) and ``t`` broadcasts against ``x.shape[:-1]`` (each row its own time; NumPy
    or torch, dtype and device follow x, differentiable in x and t). Besides ``__call__``:
    ``logpdf``, ``hessian`` (..., d, d), ``divergence`` (...), ``dt`` (the exact partial derivative in
    t at fixed x, (..., d)) and ``grad_divergence``. ``method="fast"`` serves NumPy rows that share
    one time through the BLAS + Numba path; everything else takes the reference path.

    Edges: ``dt`` at sigma(t) = 0 is the finite limit (d(sigma^2)/dt -> g^2 + 2 f sigma^2, e.g.
    beta_min for VP at t = 0); a result that overflows float64 for finite input (|x| ~ 1e160, EDM
    at t ~ 1e155) raises ValueError naming x and t rather than returning NaN.
    """

    dist: object
    proc: Process
    method: str = "fast"

    def __post_init__(self):
        normal_form(self.dist)
        check_process(self.proc)
        check_method(self.method)

    @property
    def dim(self) -> int:
        return normal_form(self.dist).dim

    def _evaluate(self, x, t, what: str, fast: bool = False):
        """``what`` (a function of :mod:`._reference`, or of :mod:`._fast` when ``fast``) at the rows of x,
        each at its own time; outputs keep x's batch dims (a tuple output, each of its parts)."""
        xp = namespace(x, t)
        d = self.dim
        x = as_points(x, d, xp=xp)
        lead = tuple(x.shape[:-1])
        t = self.proc.check_t(as_array(t, "t", xp, like=x))
        try:
            t = xp.broadcast_to(t, lead)
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"t of shape {tuple(t.shape)} does not broadcast against x's rows {lead}") from exc
        flat_x, flat_t = xp.reshape(x, (-1, d)), xp.reshape(t, (-1,))
        if is_numpy(xp) and flat_t.size and bool(np.all(flat_t == flat_t[0])):
            # one shared time: scalar coefficients, and the fast path where it exists
            t0 = float(flat_t[0])
            if fast and self.method == "fast":
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    out = getattr(_fast, what)(noised_parts(self.dist, self.proc, t0), np.ascontiguousarray(flat_x))
                _check_result(out, flat_x, flat_t)
                return out.reshape(lead + out.shape[1:])
            c = self.proc.at(np.float64(t0))
            coefs = tuple(float(v) for v in (c.alpha, c.sigma, c.dalpha, c.dvar))
        else:
            c = self.proc.at(flat_t[:, None])
            coefs = (c.alpha, c.sigma, c.dalpha, c.dvar)
        args = coefs if what == "dt_score" else coefs[:2]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out = getattr(_reference, what)(normal_form(self.dist).to(xp, like=flat_x), flat_x, *args)
        _check_result(out, flat_x, flat_t)
        if isinstance(out, tuple):
            return tuple(xp.reshape(p, lead + tuple(p.shape[1:])) for p in out)
        return xp.reshape(out, lead + tuple(out.shape[1:]))

    def __call__(self, x, t):
        return self._evaluate(x, t, "score", fast=True)

    def logpdf(self, x, t):
        """log p_t(x), shape (...)."""
        return self._evaluate(x, t, "logpdf", fast=True)

    def hessian(self, x, t):
        """Jacobian of the score (Hessian of log p_t), shape (..., d, d)."""
        return self._evaluate(x, t, "hessian")

    def divergence(self, x, t):
        """div_x s(x, t), shape (...)."""
        return self._evaluate(x, t, "divergence")

    def grad_divergence(self, x, t):
        """grad_x div_x s(x, t), shape (..., d)."""
        return self._evaluate(x, t, "grad_divergence")[1]

    def dt(self, x, t):
        """Exact partial derivative d/dt s(x, t) at fixed x, shape (..., d).

        d/dt of the marginal: means alpha' mu_k, eigenvalues 2 alpha alpha' lam_k + 2 sigma sigma'.
        """
        return self._evaluate(x, t, "dt_score")

    def fpe_terms(self, x, t):
        """(div s, grad div s, H s, H x, s) in one pass over x's rows, for the closed-form score-FPE (the
        Hessian H is symmetric, so H s = J^T s)."""
        return self._evaluate(x, t, "grad_divergence")


def exact_score(dist, proc: Process, *, method: str = "fast") -> ExactScore:
    """Exact score s(x, t) = grad log p_t(x) of ``dist`` under ``proc`` (see :class:`ExactScore`)."""
    return ExactScore(dist, proc, method)
