"""Plain NumPy path: every exact mixture quantity from per-(point, component) terms.

This path builds ``(rows, K, d)`` temporaries (chunked over rows by ``by_row_chunks``), so it is the
simplest correct implementation: the tests compare the fast BLAS/Numba path against it, and
derivative quantities that are not on a hot loop (Hessian, divergence, its gradient, the time
derivative of the score, posterior component moments) are computed only here.

Notation for one component k of the law at time t, with basis Q_k and eigenvalues c_k:
z = Q^T (x - m_k), P_k = Q diag(1/c_k) Q^T, u_k = P_k (m_k - x) = Q w with w = -z / c_k,
r_k(x) = posterior responsibility, and the score s = sum_k r_k u_k.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._gaussians import Gaussians, by_row_chunks, logsumexp_rows


@dataclass(frozen=True, eq=False)
class Terms:
    """Per-point, per-component terms of a chunk of rows (shapes (n,K,d) / (n,K) / (n,d))."""

    z: np.ndarray
    prec: np.ndarray
    logits: np.ndarray
    lse: np.ndarray
    r: np.ndarray
    w: np.ndarray
    u: np.ndarray
    s: np.ndarray


def terms(G: Gaussians, x: np.ndarray) -> Terms:
    """Compute :class:`Terms` for rows ``x`` of shape (n, d)."""
    z = G.rotate(x[:, None, :] - G.means)
    prec = 1.0 / G.var
    logits = G.log_norm() - 0.5 * (z * z * prec).sum(axis=-1)
    lse = logsumexp_rows(logits)
    r = np.exp(logits - lse[:, None])
    w = -z * prec
    u = G.unrotate(w)
    s = np.einsum("nk,nkd->nd", r, u)
    return Terms(z, prec, logits, lse, r, w, u, s)


def _dense_row_width(G):
    return G.n_components * G.dim


chunked = by_row_chunks(_dense_row_width)


@chunked
def logpdf(G, x):
    """log p(x), shape (n,)."""
    return terms(G, x).lse


@chunked
def log_responsibilities(G, x):
    """log r_k(x), shape (n, K)."""
    T = terms(G, x)
    return T.logits - T.lse[:, None]


@chunked
def score(G, x):
    """grad log p(x) = sum_k r_k P_k (m_k - x), shape (n, d)."""
    return terms(G, x).s


def _hess_times(G, T, v):
    """H v for per-row vectors v (n, d), with H = sum_k r_k (u_k u_k^T - P_k) - s s^T."""
    Pv = G.unrotate(T.prec * G.rotate(np.broadcast_to(v[:, None, :], T.u.shape)))
    uv = np.einsum("nkd,nd->nk", T.u, v)
    return (np.einsum("nk,nkd->nd", T.r, T.u * uv[..., None] - Pv)
            - T.s * np.einsum("nd,nd->n", T.s, v)[:, None])


@chunked
def hessian(G, x):
    """Hessian of log p (the score Jacobian, symmetric), shape (n, d, d)."""
    T = terms(G, x)
    P = G.dense_covs(np.broadcast_to(T.prec, G.var.shape))
    return (np.einsum("nk,nki,nkj->nij", T.r, T.u, T.u) - np.einsum("nk,kij->nij", T.r, P)
            - T.s[:, :, None] * T.s[:, None, :])


def _divergence_parts(G, T):
    a = (T.u * T.u).sum(axis=-1) - G.sum_dims(T.prec)  # ||u_k||^2 - tr P_k, (n, K)
    return a, (T.r * a).sum(axis=-1) - (T.s * T.s).sum(axis=-1)


@chunked
def divergence(G, x):
    """Laplacian of log p = tr H, shape (n,)."""
    return _divergence_parts(G, terms(G, x))[1]


@chunked
def grad_divergence(G, x):
    """Returns (div s (n,), grad div s (n, d), H s (n, d), H x (n, d), s (n, d)).

    grad div s = sum_k r_k (u_k - s) a_k - 2 sum_k r_k P_k u_k - 2 H s, a_k = ||u_k||^2 - tr P_k,
    from grad r_k = r_k (u_k - s) and grad ||u_k||^2 = -2 P_k u_k.
    """
    T = terms(G, x)
    a, div = _divergence_parts(G, T)
    Pu = G.unrotate(T.prec * T.w)
    Hs = _hess_times(G, T, T.s)
    grad = (np.einsum("nk,nkd->nd", T.r * a, T.u) - T.s * div[:, None] - T.s * (T.s * T.s).sum(-1)[:, None]
            - 2.0 * np.einsum("nk,nkd->nd", T.r, Pu) - 2.0 * Hs)
    # sum_k r_k (u_k - s) a_k = sum r a u - s (div + ||s||^2) since sum r a = div + ||s||^2
    return div, grad, Hs, _hess_times(G, T, x), T.s


@chunked
def dt_score(G, x, mean_dot, var_dot):
    """d/dt of the score at fixed x, shape (n, d).

    ``mean_dot`` (K, d): dm_k/dt; ``var_dot`` (K, 1|d): dc_k/dt in the component basis.
    With l_k = log pi_k + log N(x; m_k, C_k):
    dl_k/dt = -1/2 tr(P dC) - u.dm + 1/2 u^T dC u (since grad_m l_k = -u_k), and in the component basis
    dw/dt = dc z / c^2 + (Q^T dm) / c, so ds/dt = sum_k r_k [Q dw_k + (dl_k - sum_j r_j dl_j) u_k].
    """
    T = terms(G, x)
    mr = G.rotate(mean_dot)
    dl = (-0.5 * G.sum_dims(var_dot * T.prec) - (T.w * mr).sum(-1)
          + 0.5 * (np.broadcast_to(var_dot, T.w.shape) * T.w * T.w).sum(-1))
    dw = var_dot * T.prec * T.prec * T.z + T.prec * mr
    dl_centred = dl - (T.r * dl).sum(-1, keepdims=True)
    return np.einsum("nk,nkd->nd", T.r, G.unrotate(dw) + dl_centred[..., None] * T.u)


@chunked
def posterior_terms(G, x, prior, alpha):
    """Posterior of x0 given x_t = x, for the ``prior`` (a :class:`Gaussians`) noised into ``G``.

    Returns (weights (n, K), component means (n, K, d)) with
    mean_k = mu_k + Q (alpha lam_k / c_k * Q^T (x - alpha mu_k)), the Gaussian conditioning formula
    in the component basis (TSM Eq. 17 for d = 1).
    """
    T = terms(G, x)
    return T.r, _component_means(G, T, prior, alpha)


def _component_means(G, T, prior, alpha):
    return prior.means + G.unrotate(alpha * prior.var / G.var * T.z)


@chunked
def posterior_trace_cov(G, x, prior, alpha, post_var):
    """tr Cov[x0 | x_t = x], shape (n,), in the centred form sum_k r_k (tr Gamma_k + |m_k - mean|^2)
    (no cancellation when the posterior concentrates on one component). ``post_var`` (K, 1|d):
    eigenvalues of the component posterior covariances Gamma_k."""
    T = terms(G, x)
    m = _component_means(G, T, prior, alpha)
    c = m - np.einsum("nk,nkd->nd", T.r, m)[:, None, :]
    return T.r @ G.sum_dims(post_var) + (T.r * (c * c).sum(-1)).sum(-1)
