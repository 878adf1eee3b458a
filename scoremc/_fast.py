"""Fast path for the quantities on hot loops: log-density, responsibilities, score and
posterior mean of a mixture in normal form, for all rows of x at one time.

Axis-aligned components (isotropic, diagonal, ``Empirical``): every term is a BLAS product
over a (rows, K) block plus the Numba kernel :func:`._kernels.axis_weights` (exact refinement +
log-sum-exp); no (n, K, d) temporary is built. Full covariances: one GEMM per component
(x - m_k) P_k, whose rows give both the Mahalanobis term and the component score, accumulated
with a running log-sum-exp (:func:`._kernels.full_step`) so memory stays O(n d).

Everything that depends only on the mixture (precisions, scaled means, norms) is computed once
per call, not per row block. Rows are processed in blocks by :func:`._blocks.map_row_blocks`
(a thread pool; every product on one BLAS thread, by :func:`._blas.matmul`). Results equal
the plain NumPy path of :mod:`._dense` to round-off (tests/test_scores.py).
"""
from __future__ import annotations

import numpy as np

from . import _kernels as _k
from ._blas import matmul
from ._blocks import map_row_blocks
from ._gaussians import Gaussians

#: float64 temporaries of one axis-path block (32 MiB; each worker of the pool holds one)
_AXIS_BUDGET = 1 << 22
#: float64 entries of one (rows, d) buffer of the full-covariance path (1 MiB): the block's
#: D = x - m_k, Y = D P_k and the accumulator stay in cache between the GEMM and the kernel,
#: instead of ~9 passes over 14k-row chunks in memory. d = 64: 2048 rows; 1024 was as fast,
#: 512 and 4096 ~10% slower (benchmarks/README.md)
_FULL_BUDGET = 1 << 17


def _full_rows(d):
    return min(2048, max(256, _FULL_BUDGET // d))  # >= 256 rows keeps the GEMM efficient


# a pool worker's block is at least this many rows (else the block's GEMMs are too small and the
# per-call overheads dominate); the axis path's GEMMs are over K >> d columns, so fewer rows do
_AXIS_MIN_ROWS, _FULL_MIN_ROWS = 32, 256


# ----------------------------------------------------------------------------- axis-aligned

def _axis_setup(G: Gaussians):
    """Per-call constants: (M, mm, prec, base) for :func:`._kernels.axis_weights`.

    Isotropic: M = means, mm = ||m_k||^2 (the kernel scales by p_k). Diagonal: M = P_k m_k and
    mm = ||m_k||^2_{P_k}, so that x @ M.T is the cross term.
    """
    prec = np.ascontiguousarray(1.0 / G.var)
    means = np.ascontiguousarray(G.means)
    M = means if G.isotropic else means * prec
    mm = np.einsum("kd,kd->k", means, M)
    return M, mm, prec, np.ascontiguousarray(G.log_norm())


def _axis_rows(G):
    return max(1, _AXIS_BUDGET // (2 * G.n_components + 4 * G.dim))


def _axis_map(G, x, setup, mode, finish, grid=None):
    """Run the axis kernel over row blocks; ``finish(rows, W, lse, rowsum, xb)`` consumes each
    block's (rows, K) result W. With ``grid`` (n, K), W is written there in place."""
    M, mm, prec, base = setup
    iso = G.isotropic
    means = np.ascontiguousarray(G.means)

    def work(start, stop, scratch):
        xb = x[start:stop]
        W = matmul(xb, M.T, out=None if grid is None else grid[start:stop])
        xx = np.einsum("nd,nd->n", xb, xb)[:, None] if iso else matmul(xb * xb, prec.T)
        lse, rowsum = np.empty(len(xb)), np.empty(len(xb))
        _k.axis_weights(W, xx, mm, base, xb, means, prec, mode, lse, rowsum)
        finish(slice(start, stop), W, lse, rowsum, xb)

    K, d = G.n_components, G.dim
    map_row_blocks(len(x), _axis_rows(G), work, min_rows=_AXIS_MIN_ROWS, row_flops=K * (4 * d + 20))


# ----------------------------------------------------------------------------- full covariance

def _full_precisions(G: Gaussians) -> np.ndarray:
    """P_k = Q_k diag(1/var_k) Q_k^T, shape (K, d, d), as one batched GEMM."""
    Q = G.basis
    return matmul(Q * (1.0 / G.var)[:, None, :], Q.transpose(0, 2, 1))


def _buffers(scratch, c, d, names):
    """Views of c rows of per-worker (rows, d) buffers, allocated on first use."""
    if scratch.get("rows", 0) < c:
        scratch.clear()
        scratch["rows"] = c
    for nm in names:
        if nm not in scratch:
            scratch[nm] = np.empty((scratch["rows"], d))
    return [scratch[nm][:c] for nm in names]


def _full_online(G, x, want, prior=None, alpha=0.0):
    """Streaming log-sum-exp over components, per block of rows.

    Returns (lse (n,), vec (n, d) or None): ``want`` None -> log p only; "score" -> sum_k r_k
    P_k (m_k - x); "mean" -> sum_k r_k (mu_k + alpha Sigma_k P_k (x - m_k)), the posterior mean
    for ``prior`` noised into G.
    """
    n, d = x.shape
    P = _full_precisions(G)
    base = G.log_norm()
    means = G.means
    if want == "mean":
        gain = alpha * G.dense_covs(prior.var / G.var)  # alpha Sigma_k P_k, symmetric: same basis
        shift, scale = np.ascontiguousarray(prior.means), 1.0
    else:
        gain, shift, scale = None, np.zeros_like(means), -1.0
    lse = np.empty(n)
    vec = np.empty((n, d)) if want else None
    K, none = len(means), np.empty(0)

    def work(start, stop, scratch):
        xb = x[start:stop]
        c = len(xb)
        D, Y, V, acc = _buffers(scratch, c, d, ("D", "Y", "V" if gain is not None else "Y", "acc"))
        m, total = np.full(c, -np.inf), np.zeros(c)
        acc = acc if want else acc[:0]
        acc[...] = 0.0
        np.subtract(xb, means[0], out=D)
        for k in range(K):
            matmul(D, P[k], out=Y)
            if gain is not None:
                matmul(D, gain[k], out=V)
            # full_step leaves D = x - m_{k+1} for the next GEMM (one pass over the block fewer)
            _k.full_step(D, Y, V, shift[k], scale, base[k], m, total, acc, xb, means[k + 1] if k + 1 < K else none)
        np.log(total, out=lse[start:stop])
        lse[start:stop] += m
        if want:
            np.divide(acc, total[:, None], out=vec[start:stop])

    map_row_blocks(n, _full_rows(d), work, min_rows=_FULL_MIN_ROWS, row_flops=K * 2 * d * d)
    return lse, vec


def _full_log_weights(G, x, normalise):
    """(log r_k or r_k, lse) for full covariances: (n, K) logits block by block."""
    n, d = x.shape
    P = _full_precisions(G)
    base = G.log_norm()
    L = np.empty((n, G.n_components))
    lse = np.empty(n)

    def work(start, stop, scratch):
        xb, Lb = x[start:stop], L[start:stop]
        D, Y = _buffers(scratch, len(xb), d, ("D", "Y"))
        for k in range(G.n_components):
            np.subtract(xb, G.means[k], out=D)
            matmul(D, P[k], out=Y)
            _k.full_logits(D, Y, base[k], Lb[:, k])
        m = Lb.max(axis=1, keepdims=True)
        lse[start:stop] = np.log(np.exp(Lb - m).sum(axis=1)) + m[:, 0]
        Lb -= lse[start:stop, None]
        if normalise:
            np.exp(Lb, out=Lb)

    map_row_blocks(n, _full_rows(d), work, min_rows=_FULL_MIN_ROWS, row_flops=G.n_components * 2 * d * d)
    return L, lse


# ----------------------------------------------------------------------------- public functions

def _nothing(*args):
    pass


def responsibilities(G, x):
    """Posterior component probabilities r_k(x), shape (n, K)."""
    if G.basis is not None:
        return _full_log_weights(G, x, True)[0]
    out = np.empty((len(x), G.n_components))
    _axis_map(G, x, _axis_setup(G), _k.WEIGHTS, _nothing, grid=out)
    return out


def log_responsibilities(G, x):
    """log r_k(x), shape (n, K)."""
    if G.basis is not None:
        return _full_log_weights(G, x, False)[0]
    out = np.empty((len(x), G.n_components))

    def finish(rows, W, lse, rowsum, xb):
        W -= lse[:, None]

    _axis_map(G, x, _axis_setup(G), _k.LOG, finish, grid=out)
    return out


def logpdf(G, x):
    """log p(x), shape (n,)."""
    if G.basis is not None:
        return _full_online(G, x, None)[0]
    out = np.empty(len(x))

    def finish(rows, W, lse, rowsum, xb):
        out[rows] = lse

    _axis_map(G, x, _axis_setup(G), _k.LOG, finish)
    return out


def score(G, x):
    """grad log p(x) = sum_k r_k P_k (m_k - x), shape (n, d)."""
    if G.basis is not None:
        return _full_online(G, x, "score")[1]
    out = np.empty(x.shape)
    setup = M, _, prec, _ = _axis_setup(G)
    if G.isotropic:  # sum_k r_k p_k (m_k - x) = (r p) @ M - x sum_k r_k p_k: no pass for r @ p
        def finish(rows, W, lse, rowsum, xb):
            o = matmul(W, M, out=out[rows])
            o -= xb * rowsum[:, None]
        mode = _k.WEIGHTS_TIMES_PREC
    else:  # diagonal: sum_k r_k P_k m_k - x * sum_k r_k p_k, M = P_k m_k
        def finish(rows, W, lse, rowsum, xb):
            o = matmul(W, M, out=out[rows])
            o -= xb * matmul(W, prec)
        mode = _k.WEIGHTS
    _axis_map(G, x, setup, mode, finish)
    return out


def posterior_mean(G, x, prior, alpha, sigma):
    """E[x0 | x_t = x] for ``prior`` noised into ``G`` (mean alpha, std sigma), shape (n, d).

    Per component: mean_k = mu_k sigma^2 / c_k + (alpha lam_k / c_k) x  (axis-aligned), or
    mu_k + alpha Sigma_k P_k (x - alpha mu_k) in general.
    """
    if G.basis is not None:
        return _full_online(G, x, "mean", prior, alpha)[1]
    setup = _axis_setup(G)
    prec = setup[2]
    mu_p = sigma * sigma * (prior.means * prec)  # sigma^2 P_k mu_k
    lam_p = alpha * (prior.var * prec)  # alpha lam_k p_k
    out = np.empty(x.shape)

    def finish(rows, W, lse, rowsum, xb):
        o = matmul(W, mu_p, out=out[rows])
        o += xb * matmul(W, lam_p)

    _axis_map(G, x, setup, _k.WEIGHTS, finish)
    return out
