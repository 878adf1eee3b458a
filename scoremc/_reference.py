"""The reference path: every exact mixture quantity from per-(point, component) terms, written once
for NumPy and torch, with per-row noise coefficients.

For a prior in normal form ``P`` (mixture of N(mu_k, Q_k diag(lam_k) Q_k^T)) and rows x_n noised with
their own (alpha_n, sigma_n) (shape (n, 1); Python floats for one shared time, alpha = 1, sigma = 0
for the prior's own law), component k of the law of x_n has mean alpha_n mu_k and eigenvalues
c_nk = alpha_n^2 lam_k + sigma_n^2 in the basis Q_k. Notation: z = Q^T (x - alpha mu_k),
p = 1/c, w = -z p, u_k = Q w = P_k (alpha mu_k - x), r_k the responsibilities, s = sum_k r_k u_k.

This path builds ``(rows, K, d)`` temporaries, chunked over rows under a fixed budget
(:func:`map_rows`), so it is the simplest correct implementation: the NumPy fast path
(:mod:`._fast`, one shared time) is tested against it, and the derivatives that are not on a hot
loop (Hessian, divergence, its gradient, the time derivative, posterior moments) exist only here.
Autograd flows through every function on torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from ._array import LOG_2PI, device_of, logsumexp, matmul, namespace, outer_sum
from ._gaussians import Gaussians, no_density_message

__all__ = ["terms", "map_rows", "logpdf", "log_responsibilities", "score", "hessian", "divergence",
           "grad_divergence", "dt_score", "posterior_terms", "posterior_cov", "posterior_trace_cov"]

#: floats of (rows, K, d) temporaries per chunk (32 MiB in float64)
BUDGET = 1 << 22


def _c3(c, xp):
    """A coefficient as a scalar or an (n, 1, 1) array that broadcasts against (n, K, d)."""
    if isinstance(c, (int, float)) or getattr(c, "ndim", 1) == 0:
        return c
    return xp.reshape(c, (-1, 1, 1))


@dataclass(frozen=True, eq=False)
class Terms:
    """Per-point, per-component terms of a chunk of rows (shapes (n,K,d) / (n|1,K,1|d) / (n,K) / (n,d))."""

    z: object
    prec: object
    var: object
    logits: object
    lse: object
    r: object
    w: object
    u: object
    s: object


def terms(P: Gaussians, x, alpha=1.0, sigma=0.0) -> Terms:
    """:class:`Terms` for rows ``x`` (n, d) of the law of alpha X + sigma eps, X ~ P."""
    xp = namespace(x)
    a, s = _c3(alpha, xp), _c3(sigma, xp)
    var = a * a * P.var + s * s
    if not bool(xp.all(var > 0)):
        raise ValueError(no_density_message())
    z = P.rotate(x[:, None, :] - a * P.means)
    prec = 1.0 / var
    log_norm = P.log_weights - 0.5 * P.sum_dims(LOG_2PI + xp.log(var))
    logits = log_norm - 0.5 * xp.sum(z * z * prec, axis=-1)
    lse = logsumexp(logits)
    r = xp.exp(logits - lse[:, None])
    w = -z * prec
    u = P.unrotate(w)
    return Terms(z, prec, var, logits, lse, r, w, u, xp.sum(r[..., None] * u, axis=1))


def _slice(a, i, j, n):
    return a[i:j] if getattr(a, "ndim", 0) and a.shape[0] == n else a


def map_rows(fn, P: Gaussians, x, *per_row, width: int = 1):
    """``fn(P, x_chunk, *per_row_chunks)`` over row chunks of x (n, d), results concatenated (tuples
    elementwise). Arguments with n rows are chunked with x; scalars and (1, ...) arrays are shared.
    A chunk holds about BUDGET floats of (rows, K, d * width) temporaries."""
    n = x.shape[0]
    step = max(1, BUDGET // max(1, P.n_components * P.dim * width))
    if n <= step:
        return fn(P, x, *per_row)
    xp = namespace(x)
    parts = [fn(P, x[i:i + step], *(_slice(a, i, i + step, n) for a in per_row)) for i in range(0, n, step)]
    if isinstance(parts[0], tuple):
        return tuple(xp.concat(list(p), axis=0) for p in zip(*parts))
    return xp.concat(parts, axis=0)


def _logpdf(P, x, a, s):
    return terms(P, x, a, s).lse


def logpdf(P, x, alpha=1.0, sigma=0.0):
    """log p(x), shape (n,)."""
    return map_rows(_logpdf, P, x, alpha, sigma)


def _log_resp(P, x, a, s):
    T = terms(P, x, a, s)
    return T.logits - T.lse[:, None]


def log_responsibilities(P, x, alpha=1.0, sigma=0.0):
    """log r_k(x), shape (n, K)."""
    return map_rows(_log_resp, P, x, alpha, sigma)


def _score(P, x, a, s):
    return terms(P, x, a, s).s


def score(P, x, alpha=1.0, sigma=0.0):
    """grad log p(x) = sum_k r_k P_k (alpha mu_k - x), shape (n, d)."""
    return map_rows(_score, P, x, alpha, sigma)


def _hess_times(P, T, v):
    """H v for per-row vectors v (n, d), with H = sum_k r_k (u_k u_k^T - P_k) - s s^T."""
    xp = namespace(v)
    Pv = P.unrotate(T.prec * P.rotate(xp.broadcast_to(v[:, None, :], T.u.shape)))
    uv = xp.sum(T.u * v[:, None, :], axis=-1)
    return (xp.sum(T.r[..., None] * (T.u * uv[..., None] - Pv), axis=1)
            - T.s * xp.sum(T.s * v, axis=-1)[:, None])


def _weighted_precision(P, T):
    """sum_k r_k P_k, shape (n, d, d)."""
    xp = namespace(T.r)
    rp = T.r[..., None] * T.prec  # (n, K, 1|d)
    if P.basis is None:
        diag = xp.sum(xp.broadcast_to(rp, T.u.shape), axis=1)  # (n, d)
        return xp.eye(P.dim, dtype=T.u.dtype, device=device_of(T.u)) * diag[:, None, :]
    return xp.sum(matmul(P.basis * rp[:, :, None, :], xp.matrix_transpose(P.basis)), axis=1)


def _hessian(P, x, a, s):
    T = terms(P, x, a, s)
    return outer_sum(T.r, T.u) - _weighted_precision(P, T) - T.s[:, :, None] * T.s[:, None, :]


def hessian(P, x, alpha=1.0, sigma=0.0):
    """Hessian of log p (the score Jacobian, symmetric), shape (n, d, d)."""
    return map_rows(_hessian, P, x, alpha, sigma, width=1 + (P.dim if P.basis is not None else 0))


def _divergence_parts(P, T):
    xp = namespace(T.u)
    a = xp.sum(T.u * T.u, axis=-1) - P.sum_dims(T.prec)  # ||u_k||^2 - tr P_k, (n, K)
    return a, xp.sum(T.r * a, axis=-1) - xp.sum(T.s * T.s, axis=-1)


def _divergence(P, x, a, s):
    return _divergence_parts(P, terms(P, x, a, s))[1]


def divergence(P, x, alpha=1.0, sigma=0.0):
    """Laplacian of log p = tr H, shape (n,)."""
    return map_rows(_divergence, P, x, alpha, sigma)


def _grad_divergence(P, x, a, s):
    xp = namespace(x)
    T = terms(P, x, a, s)
    ra, div = _divergence_parts(P, T)
    Pu = P.unrotate(T.prec * T.w)
    Hs = _hess_times(P, T, T.s)
    ss = xp.sum(T.s * T.s, axis=-1)[:, None]
    # sum_k r_k (u_k - s) a_k = sum r a u - s (div + ||s||^2), since sum r a = div + ||s||^2
    grad = (xp.sum((T.r * ra)[..., None] * T.u, axis=1) - T.s * div[:, None] - T.s * ss
            - 2.0 * xp.sum(T.r[..., None] * Pu, axis=1) - 2.0 * Hs)
    return div, grad, Hs, _hess_times(P, T, x), T.s


def grad_divergence(P, x, alpha=1.0, sigma=0.0):
    """Returns (div s (n,), grad div s (n, d), H s (n, d), H x (n, d), s (n, d)).

    grad div s = sum_k r_k (u_k - s) a_k - 2 sum_k r_k P_k u_k - 2 H s, a_k = ||u_k||^2 - tr P_k,
    from grad r_k = r_k (u_k - s) and grad ||u_k||^2 = -2 P_k u_k.
    """
    return map_rows(_grad_divergence, P, x, alpha, sigma)


def _dt_score(P, x, a, s, da, dv):
    xp = namespace(x)
    T = terms(P, x, a, s)
    a3, da3, dv3 = (_c3(c, xp) for c in (a, da, dv))
    mr = P.rotate(da3 * P.means)  # d(alpha mu_k)/dt in the component basis, (K, d) or (n, K, d)
    var_dot = 2.0 * a3 * da3 * P.var + dv3  # dc_k/dt, (n|1, K, 1|d)
    dl = (-0.5 * P.sum_dims(var_dot * T.prec) - xp.sum(T.w * mr, axis=-1)
          + 0.5 * xp.sum(var_dot * T.w * T.w, axis=-1))
    dw = var_dot * T.prec * T.prec * T.z + T.prec * mr
    dl_centred = dl - xp.sum(T.r * dl, axis=-1, keepdims=True)
    return xp.sum(T.r[..., None] * (P.unrotate(dw) + dl_centred[..., None] * T.u), axis=1)


def dt_score(P, x, alpha, sigma, dalpha, dvar):
    """d/dt of the score at fixed x, shape (n, d), for the law of alpha(t) X + sigma(t) eps.

    With l_k = log pi_k + log N(x; m_k, C_k), m_k = alpha mu_k, C_k = Q diag(c_k) Q^T:
    dl_k/dt = -1/2 tr(P dC) - u.dm + 1/2 u^T dC u (since grad_m l_k = -u_k), and in the component
    basis dw/dt = dc z / c^2 + (Q^T dm) / c, so ds/dt = sum_k r_k [Q dw_k + (dl_k - sum_j r_j dl_j) u_k],
    dm = alpha' mu_k, dc = 2 alpha alpha' lam_k + dvar, with ``dvar`` = d(sigma^2)/dt (finite where
    sigma = 0 although sigma' may be infinite there, e.g. VP at t = 0: 2 sigma sigma' -> beta_min).
    """
    return map_rows(_dt_score, P, x, alpha, sigma, dalpha, dvar)


def _component_means(P, T, a, xp):
    """Posterior means mu_k + Q (alpha lam_k / c_k * z) of each component, (n, K, d) (TSM Eq. 17 in d dims)."""
    return P.means + P.unrotate(_c3(a, xp) * P.var * T.prec * T.z)


def _posterior_terms(P, x, a, s):
    xp = namespace(x)
    T = terms(P, x, a, s)
    return T.r, _component_means(P, T, a, xp)


def posterior_terms(P, x, alpha, sigma):
    """Posterior of x0 given x_t = x: (weights (n, K), component means (n, K, d))."""
    return map_rows(_posterior_terms, P, x, alpha, sigma)


def _posterior_mean(P, x, a, s):
    r, m = _posterior_terms(P, x, a, s)
    return namespace(x).sum(r[..., None] * m, axis=1)


def posterior_mean(P, x, alpha, sigma):
    """E[x0 | x_t = x], shape (n, d)."""
    return map_rows(_posterior_mean, P, x, alpha, sigma)


def _posterior_trace_cov(P, x, a, s):
    xp = namespace(x)
    T = terms(P, x, a, s)
    m = _component_means(P, T, a, xp)
    c = m - xp.sum(T.r[..., None] * m, axis=1)[:, None, :]
    post_var = P.var * _c3(s, xp) ** 2 * T.prec  # eigenvalues of the component posterior covariances
    post_var = xp.broadcast_to(post_var, T.r.shape + (P.var.shape[-1],))
    return xp.sum(T.r * P.sum_dims(post_var), axis=-1) \
        + xp.sum(T.r * xp.sum(c * c, axis=-1), axis=-1)


def _posterior_cov(P, x, a, s):
    xp = namespace(x)
    T = terms(P, x, a, s)
    m = _component_means(P, T, a, xp)
    c = m - xp.sum(T.r[..., None] * m, axis=1)[:, None, :]
    rg = T.r[..., None] * (P.var * _c3(s, xp) ** 2 * T.prec)  # r_k times the posterior eigenvalues, (n, K, 1|d)
    between = matmul(xp.matrix_transpose(T.r[..., None] * c), c)  # sum_k r_k c_k c_k^T as one batched GEMM
    if P.basis is None:
        diag = xp.sum(xp.broadcast_to(rg, c.shape), axis=1)
        return between + xp.eye(P.dim, dtype=c.dtype, device=device_of(c)) * diag[:, None, :]
    return between + xp.sum(matmul(P.basis * rg[:, :, None, :], xp.matrix_transpose(P.basis)), axis=1)


def posterior_cov(P, x, alpha, sigma):
    """Cov[x0 | x_t = x], shape (n, d, d), by the law of total covariance in the centred form
    sum_k r_k (Gamma_k + c_k c_k^T), c_k = m_k - mean; no dense (K, d, d) array for iso/diag components."""
    return map_rows(_posterior_cov, P, x, alpha, sigma, width=1 + P.dim)


def posterior_trace_cov(P, x, alpha, sigma):
    """tr Cov[x0 | x_t = x], shape (n,), in the centred form sum_k r_k (tr Gamma_k + |m_k - mean|^2)
    (no cancellation when the posterior concentrates on one component)."""
    return map_rows(_posterior_trace_cov, P, x, alpha, sigma)
