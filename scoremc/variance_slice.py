"""Variance of the score identities at one noise level (STF Eq. 4, Theorem 2; TSM App. C): the engine
of the sweep :func:`scoremc.variance`.

For an identity with integrand L and a time t,

    V(t) = E_{x_t ~ p_t} tr Cov_{x0 ~ p(x0 | x_t)} L(x0, x_t, t)          (STF Eq. 4)

is the average posterior trace-covariance: the variance per posterior sample of the Monte Carlo
score estimator, and the irreducible part of the regression loss. :func:`variance_at` computes it
on a batch of x_t ~ p_t (outer Monte Carlo, with a standard error) with the inner expectation

* exact where the identity has a closed-form posterior trace-covariance
  (:meth:`scoremc.Identity.trace_cov`: DSI always, Rao-Blackwellised from the posterior's moments;
  TSI and the mixtures on a one-component Gaussian target, the setting of TSM App. C);
* by nested Monte Carlo otherwise (:meth:`scoremc.Identity.draws`), with the unbiased sample
  trace-variance of ``n_inner`` draws per x_t.

It also returns the f-divergence D(t) of STF §6.1 in Theorem 2's argument order (FLAG-S6), the
corrected leading term of Theorem 2 (FLAG-S4/S5) for identities with a reference batch
(``n_ref > 1``) and, for every estimator computed by nested Monte Carlo, an unbiased split-half
estimate of its squared bias |E L - grad log p_t(x_t)|^2, a check that is zero within its standard
error for every identity here (STF included: its Eq. 7 minimiser is the score, ``reference/ERRATA.md``).
"""
from __future__ import annotations

import numpy as np

from . import _fast, _random
from ._blocks import map_blocks
from .distributions import normal_form
from .identities import DSI
from .noising import noised_sample, posterior

__all__ = ["variance_at", "f_stf", "log_f_stf"]


def log_f_stf(log_y: np.ndarray) -> np.ndarray:
    """log f(y) for Theorem 2's convex f: f(y) = (1/y - 1)^2 for y < 1.5, 8y/27 - 1/3 for y >= 1.5.

    Evaluated from log y so that posterior/prior ratios of 1e+-300 and beyond stay finite.
    """
    ly = np.asarray(log_y, dtype=np.float64)
    out = np.empty_like(ly)
    big = ly >= np.log(1.5)
    # y < 1.5: |1/y - 1| = |expm1(-log y)|, and log expm1(z) = z + log1p(-e^-z) for z > 0
    z = -ly[~big]
    small_abs = np.empty_like(z)
    pos = z > 0
    with np.errstate(divide="ignore"):  # y = 1 exactly gives f = 0, log f = -inf
        small_abs[pos] = z[pos] + np.log1p(-np.exp(-z[pos]))
        small_abs[~pos] = np.log(-np.expm1(z[~pos]))
    out[~big] = 2.0 * small_abs
    out[big] = ly[big] + np.log(8.0 / 27.0 - np.exp(-ly[big]) / 3.0)
    return out


def f_stf(y):
    """Theorem 2's f(y) (STF §5), the smallest convex majorant of (1/y - 1)^2 (tangent at 1.5)."""
    return np.exp(log_f_stf(np.log(np.asarray(y, dtype=np.float64))))


def _mean_se(values: np.ndarray):
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def _trace_var(draws: np.ndarray) -> np.ndarray:
    """Unbiased trace of the sample covariance over the first axis: (m, N, d) -> (N,)."""
    c = draws - draws.mean(axis=0)
    return (c * c).sum(axis=(0, 2)) / (draws.shape[0] - 1)


def _split_bias_sq(draws: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Unbiased per-row estimate of |E L - target|^2 from two independent halves of the draws."""
    h = draws.shape[0] // 2
    return ((draws[:h].mean(0) - target) * (draws[h:2 * h].mean(0) - target)).sum(-1)


def _chunk(identities, dist, proc, t, rows: int, n_inner: int, stream, exact: bool, need_post: bool,
           f_divergence: bool) -> dict:
    """Per-point quantities of one block of outer points (arrays over its rows)."""
    _, xt = noised_sample(dist, proc, t, rows, stream)
    post = posterior(dist, proc, t, xt)
    a, s = post.alpha, post.sigma
    score = _fast.score(post.noised, xt)
    out = {}
    if need_post:
        x0_post = post.sample(n_inner, stream)  # (n_inner, rows, d)
        dsi = DSI().integrand(dist, post.coefficients, x0_post, xt)
        # log of the prior/posterior ratio p0(x0)/p(x0|x_t) = p_t(x_t) / N(x_t; a x0, s^2 I) (Bayes)
        log_kernel = (-0.5 * ((xt - a * x0_post) ** 2).sum(-1) / (s * s)
                      - 0.5 * xt.shape[-1] * np.log(2 * np.pi * s * s))
        log_y = _fast.logpdf(post.noised, xt)[None, :] - log_kernel
        if f_divergence:
            out["log_f"] = np.logaddexp.reduce(log_f_stf(log_y), axis=0) - np.log(n_inner)
        # corrected Theorem-2 leading term without the 1/(n-1): E_post[(post/p0) |g - s|^2]
        out["lead"] = (np.exp(-log_y) * ((dsi - score) ** 2).sum(-1)).mean(0)
    for identity in identities:
        trace_cov = identity.trace_cov(post) if exact else None
        if trace_cov is not None:
            out[identity.name] = (np.asarray(trace_cov, dtype=np.float64), None)
        else:
            draws = identity.draws(post, n_inner, stream)
            out[identity.name] = (_trace_var(draws), _split_bias_sq(draws, score))
    return out


def variance_at(identities, dist, proc, t: float, *, n_outer: int, n_inner: int, rng: np.random.Generator,
                exact: bool = True, f_divergence: bool = True, budget=None) -> dict:
    """All variance quantities at one time t, sharing one batch of x_t ~ p_t across identities.

    Returns ``{"estimators": {name: {...}}, "D": ..., ...}``; per estimator: ``V``, ``V_se``,
    ``method`` ("exact" | "nested"), ``bias_sq``, ``bias_sq_se`` (nested estimators, else NaN) and
    ``stf_leading`` (the corrected Theorem-2 leading term, identities with ``n_ref > 1`` only).
    The outer points are processed in canonical blocks (:mod:`._blocks`: (n_inner, rows, d) arrays
    of about ``_blocks.BLOCK`` floats), as many at once as ``budget`` floats allow (None: one per
    core); all randomness comes from a RowStream keyed from ``rng``. The result is the same bit for
    bit whatever the budget.
    """
    d = normal_form(dist).dim
    stream = _random.RowStream.from_generator(rng, np.arange(n_outer))
    need_post = f_divergence or any(i.n_ref > 1 for i in identities)
    parts = map_blocks(lambda i, j: _chunk(identities, dist, proc, t, j - i, n_inner, stream.subset(i, j), exact,
                                           need_post, f_divergence), n_outer, n_inner * d, budget)
    out = {"estimators": {}}
    if f_divergence:
        # D(t) = E_{p_t} D_f(p0 || p(.|x_t)) = E_{p_t} E_post f(p0 / post)  (Theorem 2 order, FLAG-S6)
        per_point = np.concatenate([p["log_f"] for p in parts])
        out["log_D"] = float(np.logaddexp.reduce(per_point) - np.log(n_outer))
        out["D"], out["D_se"] = _mean_se(np.exp(per_point))
    if need_post:
        out["stf_leading_unscaled"], out["stf_leading_unscaled_se"] = _mean_se(np.concatenate([p["lead"] for p in
                                                                                              parts]))
    for identity in identities:
        res = {"bias_sq": np.nan, "bias_sq_se": np.nan, "stf_leading": np.nan, "stf_leading_se": np.nan}
        nested = parts[0][identity.name][1] is not None
        res["method"] = "nested" if nested else "exact"
        res["V"], res["V_se"] = _mean_se(np.concatenate([p[identity.name][0] for p in parts]))
        if nested:
            res["bias_sq"], res["bias_sq_se"] = _mean_se(np.concatenate([p[identity.name][1] for p in parts]))
        if identity.n_ref > 1 and need_post:
            k = 1.0 / (identity.n_ref - 1)
            res["stf_leading"] = k * out["stf_leading_unscaled"]
            res["stf_leading_se"] = k * out["stf_leading_unscaled_se"]
        out["estimators"][identity.name] = res
    return out
