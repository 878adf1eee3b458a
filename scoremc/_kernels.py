"""Numba kernels for the hot loop over N points x K components.

Axis-aligned components (:func:`axis_weights`): the quadratic form ||x - m_k||^2_P is first
formed by BLAS as ||x||^2_P - 2 x.P m + ||m||^2_P, which loses absolute precision
~ eps * (||x||^2_P + ||m||^2_P). That error only matters for components whose logit is near the
row maximum (others get weight < e^-window) and only when the magnitude is large (small sigma,
far from the origin), so the kernel recomputes exactly those entries from the coordinates. Far
from the data the set is empty and BLAS does all the work; close to the data (small sigma) only
the few nearby components are refined.

Full covariances (:func:`full_step`, :func:`full_logits`): BLAS forms Y = (x - m_k) P_k for a
block of rows; the kernel does everything else for that component in one pass over the block.

All kernels are serial and release the GIL: the caller runs row blocks on a thread pool, one
BLAS thread per block (``_blocks.map_row_blocks``). ``parallel=True`` did not pay on the
benchmark machine (2 shared cores; GMM score N = 1e5, K = 16, d = 64; medians of 7 alternating
runs at load ~3): a ``parallel=True`` full_step between 2-thread GEMMs took 8.8 s, a serial one
1.9 s, the thread pool with serial kernels 0.37 s. Numba's OpenMP workers and OpenBLAS's threads
spin-wait for each other's cores at every hand-over, and the pool has no hand-overs.
"""
from __future__ import annotations

import numba as nb
import numpy as np

#: log-weight window below the row maximum inside which entries are refined (e^-60 ~ 1e-26)
WINDOW = 60.0
#: absolute logit error tolerated from the BLAS expansion before an entry is refined
LOGIT_TOL = 1e-11
_EPS4 = 4.0 * np.finfo(np.float64).eps

#: ``mode`` of :func:`axis_weights`: log-weights / weights r_k / r_k p_k (isotropic only)
LOG, WEIGHTS, WEIGHTS_TIMES_PREC = 0, 1, 2


# ----------------------------------------------------------------------------- vectorisable row helpers
# libm's exp is a scalar call (~5 ns); the kernel spends most of its time in exp, max and sums
# over rows of K entries, so each is a separate loop that LLVM vectorises (AVX2: 4 lanes).
# Measured on the K = 4096, d = 64 benchmark rows: 2.3x faster than one fused scalar loop.

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that n * _LN2_HI is exact for |n| < 2^11
_LN2_LO = 1.90821492927058770002e-10
_SHIFT = 6755399441055744.0  # 1.5 * 2^52: x + _SHIFT rounds x to an integer kept in the low bits
_SHIFT_BITS = np.int64(np.float64(_SHIFT).view(np.int64))
_INV_FACT = tuple(1.0 / float(np.prod(np.arange(1, j + 1))) for j in range(14))  # 1/j!, j <= 13


@nb.njit(inline="always")
def _exp(x):  # pragma: no cover - compiled
    """exp(x) for x <= 0 (or NaN), branch-free so that loops over it vectorise.

    x = n ln2 + r with |r| <= ln2/2 (Cody-Waite), exp(r) by its degree-13 Taylor polynomial
    (truncation < 3e-17 relative), 2^n built from exponent bits in two factors so that results
    down to the smallest subnormal are right; below -745.2 the result is 0. Measured against
    libm on 2e6 arguments in [-760, 0]: at most 1 ulp apart (90% identical).
    """
    xc = x if not (x < -745.2) else -745.2  # keeps NaN
    t = xc * _LOG2E + _SHIFT
    n = t - _SHIFT
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    p = _INV_FACT[13]
    for j in range(12, -1, -1):
        p = p * r + _INV_FACT[j]
    ni = np.float64(t).view(np.int64) - _SHIFT_BITS
    h = ni >> 1
    return (p * np.int64((h + 1023) << 52).view(np.float64)
            * np.int64((ni - h + 1023) << 52).view(np.float64))


@nb.njit(nogil=True, cache=True, fastmath={"contract"})
def _exp_shifted(q, mx, out):  # pragma: no cover - compiled
    for k in range(q.shape[0]):
        out[k] = _exp(q[k] - mx)


@nb.njit(nogil=True, cache=True, fastmath={"contract"})
def _exp_shifted_inplace(q, mx):  # pragma: no cover - compiled
    # separate from _exp_shifted: with out aliasing q, LLVM's overlap check picks the scalar loop
    for k in range(q.shape[0]):
        q[k] = _exp(q[k] - mx)


@nb.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _sum(a):  # pragma: no cover - compiled
    # reassociation = several partial sums: vectorised, and more accurate than one running sum
    s = 0.0
    for k in range(a.shape[0]):
        s += a[k]
    return s


@nb.njit(nogil=True, cache=True)
def _max(a):  # pragma: no cover - compiled
    """max of a row ignoring NaN (as ``if v > m``), with four independent running maxima."""
    m0 = m1 = m2 = m3 = -np.inf
    K = a.shape[0]
    k = 0
    while k + 4 <= K:
        m0 = a[k] if a[k] > m0 else m0
        m1 = a[k + 1] if a[k + 1] > m1 else m1
        m2 = a[k + 2] if a[k + 2] > m2 else m2
        m3 = a[k + 3] if a[k + 3] > m3 else m3
        k += 4
    for j in range(k, K):
        m0 = a[j] if a[j] > m0 else m0
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    return m2 if m2 > m0 else m0


@nb.njit(nogil=True, cache=True)
def _logits(q, xx, xxr, mm, base, p, iso):  # pragma: no cover - compiled
    if iso:
        for k in range(q.shape[0]):
            q[k] = base[k] - 0.5 * p[k] * (xx - 2.0 * q[k] + mm[k])
    else:
        for k in range(q.shape[0]):
            q[k] = base[k] - 0.5 * (xxr[k] - 2.0 * q[k] + mm[k])


@nb.njit(nogil=True, cache=True)
def _needs_refining(q, xx, xxr, mm, p, iso, floor, k):  # pragma: no cover - compiled
    bound = p[k] * (xx + mm[k]) if iso else xxr[k] + mm[k]
    return bound * _EPS4 > LOGIT_TOL and q[k] > floor


@nb.njit(nogil=True, cache=True)
def _count_refining(q, xx, xxr, mm, p, iso, floor):  # pragma: no cover - compiled
    # branch-free count (vectorised): the refinement loop itself runs only when it is > 0
    c = 0
    if iso:
        for k in range(q.shape[0]):
            c += (p[k] * (xx + mm[k]) * _EPS4 > LOGIT_TOL) & (q[k] > floor)
    else:
        for k in range(q.shape[0]):
            c += ((xxr[k] + mm[k]) * _EPS4 > LOGIT_TOL) & (q[k] > floor)
    return c


@nb.njit(nogil=True, cache=True)
def _scale(q, s, p, by_p):  # pragma: no cover - compiled
    if by_p:
        for k in range(q.shape[0]):
            q[k] = q[k] * s * p[k]
    else:
        for k in range(q.shape[0]):
            q[k] *= s


@nb.njit(nogil=True, cache=True)
def axis_weights(Q, XX, mm, base, X, M, prec, mode, lse, rowsum):  # pragma: no cover - compiled
    """Log-weights or weights of every (point, component) pair of a row block, in place in Q.

    Isotropic (prec (K, 1)): on entry Q (n, K) holds x.m_k, XX (n, 1) ||x||^2, mm (K,) ||m_k||^2,
    and the logit is base_k - p_k/2 (||x||^2 - 2 x.m_k + ||m_k||^2).
    Diagonal (prec (K, d)): Q holds x.P_k m_k, XX (n, K) ||x||^2_{P_k}, mm (K,) ||m_k||^2_{P_k}.
    ``base`` (K,) is log pi_k - 1/2 log det(2 pi C_k); X (n, d), M (K, d) serve the exact
    recomputation. On exit Q holds the logits (``mode`` LOG), r_k (WEIGHTS) or r_k p_k
    (WEIGHTS_TIMES_PREC, isotropic; ``rowsum`` (n,) then receives sum_k r_k p_k, so the score
    is (r p) @ M - x * rowsum with no (n, K) pass of its own). ``lse`` (n,) receives
    log sum_k exp(logit).
    """
    n, K = Q.shape
    d = X.shape[1]
    iso = prec.shape[1] == 1
    p = np.ascontiguousarray(prec[:, 0]) if iso else np.empty(0)
    e = np.empty(K)
    for i in range(n):
        q, xx, xxr = Q[i], XX[i, 0], XX[i]
        _logits(q, xx, xxr, mm, base, p, iso)
        mx = _max(q)
        if _count_refining(q, xx, xxr, mm, p, iso, mx - WINDOW) > 0:
            floor = mx - WINDOW
            for k in range(K):
                if _needs_refining(q, xx, xxr, mm, p, iso, floor, k):
                    acc = 0.0
                    if iso:
                        for j in range(d):
                            diff = X[i, j] - M[k, j]
                            acc += diff * diff
                        acc *= p[k]
                    else:
                        for j in range(d):
                            diff = X[i, j] - M[k, j]
                            acc += diff * diff * prec[k, j]
                    q[k] = base[k] - 0.5 * acc
            mx = _max(q)
        if mode == LOG:
            _exp_shifted(q, mx, e)
            total = _sum(e)
        else:
            _exp_shifted_inplace(q, mx)
            total = _sum(q)
            _scale(q, 1.0 / total, p, mode == WEIGHTS_TIMES_PREC)
            if mode == WEIGHTS_TIMES_PREC:
                rowsum[i] = _sum(q)
        lse[i] = mx + np.log(total)


@nb.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _row_dot(a, b, i):  # pragma: no cover - compiled
    # reassociation lets LLVM vectorise the reduction (a strict left-to-right sum is one long
    # dependency chain); the result differs from NumPy's pairwise einsum by round-off only
    s = 0.0
    for j in range(a.shape[1]):
        s += a[i, j] * b[i, j]
    return s


@nb.njit(nogil=True, cache=True)
def full_logits(D, Y, base_k, out):  # pragma: no cover - compiled
    """out[i] = base_k - 1/2 D_i . Y_i, the log-weight of one component (Y = D P_k)."""
    for i in range(D.shape[0]):
        out[i] = base_k - 0.5 * _row_dot(D, Y, i)


@nb.njit(nogil=True, cache=True)
def full_step(D, Y, V, shift, scale, base_k, m, total, acc, X, m_next):  # pragma: no cover - compiled
    """Add component k to the running log-sum-exp of a row block (streaming softmax).

    D = x - m_k and Y = D P_k give the logit l = base_k - 1/2 D.Y; the per-component vector is
    shift + scale V (score: V = Y, shift 0, scale -1; posterior mean: V = D G_k, shift mu_k).
    m (n,) is the running maximum, total (n,) sum exp(l - m), acc (n, d) sum exp(l - m) vector;
    they are rescaled only when the maximum changes. ``acc`` with no rows: log-sum-exp only.
    Once row i is used, D[i] is overwritten with X[i] - m_next (the next component's D) while it
    is in L1, which saves the separate subtraction pass (unless m_next is empty).
    """
    n, d = D.shape
    want = acc.shape[0] > 0
    shift_next = m_next.shape[0] > 0
    for i in range(n):
        lk = base_k - 0.5 * _row_dot(D, Y, i)
        if shift_next:
            for j in range(d):
                D[i, j] = X[i, j] - m_next[j]
        mi = m[i]
        if lk > mi:
            keep = np.exp(mi - lk)  # 0 for the first finite logit (mi = -inf)
            total[i] = total[i] * keep + 1.0
            m[i] = lk
            if want:
                for j in range(d):
                    acc[i, j] = acc[i, j] * keep + (shift[j] + scale * V[i, j])
        elif lk > -np.inf:  # a zero-weight component (lk = -inf) adds nothing, not exp(nan)
            e = np.exp(lk - mi)
            total[i] += e
            if want:
                for j in range(d):
                    acc[i, j] += e * (shift[j] + scale * V[i, j])
