"""Fast path for the quantities on hot loops: log-density, responsibilities, score and
posterior mean of a mixture in normal form, for all rows of x at one time.

Axis-aligned components (isotropic, diagonal, ``Empirical``): every term is a BLAS product
over the (n, K) grid plus the Numba kernel of :mod:`._kernels` (exact refinement + log-sum-exp);
no (n, K, d) temporary is built. Full covariances: one GEMM per component (x - m_k) P_k, whose
rows give both the Mahalanobis term and the component score, accumulated with a running
log-sum-exp so memory stays O(n d). Results equal the plain NumPy path of :mod:`._dense` to
round-off (tests/test_paths.py).
"""
from __future__ import annotations

import numpy as np

from . import _kernels
from ._gaussians import Gaussians, by_row_chunks


def _grid_width(G):
    return 2 * G.n_components + 4 * G.dim


chunked = by_row_chunks(_grid_width)


def _axis_log_weights(G: Gaussians, x: np.ndarray, normalise: bool):
    prec = np.ascontiguousarray(1.0 / G.var)
    Mp = G.means * prec
    mmP = (G.means * Mp).sum(axis=1)
    xx = (x * x).sum(axis=1, keepdims=True) if G.var.shape[1] == 1 else (x * x) @ prec.T
    Q = x @ Mp.T
    lse = np.empty(len(x))
    _kernels.responsibilities(Q, xx, mmP, G.log_norm(), x, np.ascontiguousarray(G.means), prec, normalise, lse)
    return Q, lse


def _full_precisions(G: Gaussians) -> np.ndarray:
    return G.dense_covs(1.0 / G.var)


def _full_log_weights(G: Gaussians, x: np.ndarray, normalise: bool):
    P = _full_precisions(G)
    base = G.log_norm()
    L = np.empty((len(x), G.n_components))
    for k in range(G.n_components):
        D = x - G.means[k]
        L[:, k] = base[k] - 0.5 * np.einsum("nd,nd->n", D, D @ P[k])
    m = L.max(axis=1, keepdims=True)
    lse = np.log(np.exp(L - m).sum(axis=1)) + m[:, 0]
    L -= lse[:, None]
    return (np.exp(L, out=L) if normalise else L), lse


def _log_weights(G, x, normalise):
    return (_full_log_weights if G.basis is not None else _axis_log_weights)(G, x, normalise)


@chunked
def responsibilities(G, x):
    """Posterior component probabilities r_k(x), shape (n, K)."""
    return _log_weights(G, x, True)[0]


@chunked
def log_responsibilities(G, x):
    """log r_k(x), shape (n, K)."""
    L, lse = _log_weights(G, x, False)
    return L - lse[:, None] if G.basis is None else L


@chunked
def logpdf(G, x):
    """log p(x), shape (n,)."""
    if G.basis is not None:
        return _full_online(G, x, want_score=False)[0]
    return _log_weights(G, x, False)[1]


def _full_online(G, x, want_score):
    # running log-sum-exp over components (as in streaming softmax) so the per-component
    # scores never need to be stored together
    P = _full_precisions(G)
    base = G.log_norm()
    m = np.full(len(x), -np.inf)
    total = np.zeros(len(x))
    acc = np.zeros_like(x) if want_score else None
    for k in range(G.n_components):
        D = x - G.means[k]
        Y = D @ P[k]
        lk = base[k] - 0.5 * np.einsum("nd,nd->n", D, Y)
        new = np.maximum(m, lk)
        keep, e = np.exp(m - new), np.exp(lk - new)
        total = total * keep + e
        if want_score:
            acc *= keep[:, None]
            acc -= e[:, None] * Y
        m = new
    lse = m + np.log(total)
    return lse, (acc / total[:, None] if want_score else None)


@chunked
def score(G, x):
    """grad log p(x) = sum_k r_k P_k (m_k - x), shape (n, d)."""
    if G.basis is not None:
        return _full_online(G, x, want_score=True)[1]
    r, _ = _axis_log_weights(G, x, True)
    prec = 1.0 / G.var
    return r @ (G.means * prec) - x * (r @ prec)


@chunked
def posterior_mean(G, x, prior, alpha, sigma):
    """E[x0 | x_t = x] for ``prior`` noised into ``G`` (mean alpha, std sigma), shape (n, d).

    Per component: mean_k = mu_k sigma^2 / c_k + (alpha lam_k / c_k) x  (axis-aligned), or
    mu_k + alpha Sigma_k P_k (x - alpha mu_k) in general.
    """
    r, _ = _log_weights(G, x, True)
    if G.basis is None:
        prec = 1.0 / G.var
        return sigma * sigma * (r @ (prior.means * prec)) + alpha * x * (r @ (prior.var * prec))
    gain = G.dense_covs(prior.var / G.var)  # Sigma_k P_k, symmetric: same basis
    out = r @ prior.means
    for k in range(G.n_components):
        out += alpha * r[:, k:k + 1] * ((x - G.means[k]) @ gain[k])
    return out
