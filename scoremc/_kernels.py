"""Numba kernels for the hot loop over N points x K components.

The quadratic form ||x - m_k||^2_P is first formed by BLAS as ||x||^2_P - 2 x.P m + ||m||^2_P,
which loses absolute precision ~ eps * (||x||^2_P + ||m||^2_P). That error only matters for
components whose logit is near the row maximum (others get weight < e^-window) and only when
the magnitude is large (small sigma, far from the origin), so the kernel recomputes exactly
those entries from the coordinates. Far from the data the set is empty and BLAS does all the
work; close to the data (small sigma) only the few nearby components are refined.
"""
from __future__ import annotations

import numba as nb
import numpy as np

#: log-weight window below the row maximum inside which entries are refined (e^-60 ~ 1e-26)
WINDOW = 60.0
#: absolute logit error tolerated from the BLAS expansion before an entry is refined
LOGIT_TOL = 1e-11
_EPS4 = 4.0 * np.finfo(np.float64).eps


@nb.njit(parallel=True, cache=True)
def responsibilities(Q, XX, mmP, base, X, M, prec, normalise, lse):  # pragma: no cover - compiled
    """Log-weights (or weights if ``normalise``) of every (point, component) pair, in place.

    On entry Q (n, K) holds the BLAS cross term x.P m_k; XX is (n, 1) with ||x||^2 when prec is
    isotropic (K, 1) (scaled by prec[k] here), else (n, K) with ||x||^2_{P_k}; mmP (K,) is ||m_k||^2_{P_k}; ``base``
    (K,) is log pi_k - 1/2 log det(2 pi C_k). X (n, d), M (K, d), prec (K, 1|d) serve the exact
    recomputation. ``lse`` (n,) receives log sum_k exp(logit).
    """
    n, K = Q.shape
    d = X.shape[1]
    iso = prec.shape[1] == 1
    for i in nb.prange(n):
        mx = -np.inf
        for k in range(K):
            xx = XX[i, 0] * prec[k, 0] if iso else XX[i, k]
            v = base[k] - 0.5 * (xx - 2.0 * Q[i, k] + mmP[k])
            Q[i, k] = v
            if v > mx:
                mx = v
        refined = False
        for k in range(K):
            xx = XX[i, 0] * prec[k, 0] if iso else XX[i, k]
            if (xx + mmP[k]) * _EPS4 > LOGIT_TOL and Q[i, k] > mx - WINDOW:
                acc = 0.0
                if iso:
                    for j in range(d):
                        diff = X[i, j] - M[k, j]
                        acc += diff * diff
                    acc *= prec[k, 0]
                else:
                    for j in range(d):
                        diff = X[i, j] - M[k, j]
                        acc += diff * diff * prec[k, j]
                Q[i, k] = base[k] - 0.5 * acc
                refined = True
        if refined:
            mx = -np.inf
            for k in range(K):
                if Q[i, k] > mx:
                    mx = Q[i, k]
        total = 0.0
        if normalise:
            for k in range(K):
                e = np.exp(Q[i, k] - mx)
                Q[i, k] = e
                total += e
            inv = 1.0 / total
            for k in range(K):
                Q[i, k] *= inv
        else:
            for k in range(K):
                total += np.exp(Q[i, k] - mx)
        lse[i] = mx + np.log(total)
