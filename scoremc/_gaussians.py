"""Normal form shared by every mixture computation: ``sum_k pi_k N(mean_k, Q_k diag(var_k) Q_k^T)``.

Isotropic and diagonal covariances are axis-aligned (``basis is None``, ``var`` of shape
``(K, 1)`` or ``(K, d)``); a full covariance is stored by its eigendecomposition. Noising keeps
the basis: ``alpha^2 Sigma_k + sigma^2 I = Q_k diag(alpha^2 lam_k + sigma^2) Q_k^T``, so every
time-dependent quantity (precisions, posterior covariances, d/dt of the marginal covariance) is
elementwise in the component's own basis. This is why one code path serves all three covariance
types, the exact posterior and the exact time derivatives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True, eq=False)
class Gaussians:
    """Mixture in normal form. Shapes: log_weights (K,), means (K,d), var (K,1)|(K,d),
    basis None | (K,d,d) whose columns are the eigenvectors of component k."""

    log_weights: np.ndarray
    means: np.ndarray
    var: np.ndarray
    basis: np.ndarray | None = None

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def isotropic(self) -> bool:
        return self.basis is None and self.var.shape[1] == 1

    def sum_dims(self, a: np.ndarray) -> np.ndarray:
        """Sum a per-dimension array of shape (..., K, 1|d) over d, honouring isotropic storage."""
        s = a.sum(axis=-1)
        return s * self.dim if a.shape[-1] == 1 else s

    def log_norm(self) -> np.ndarray:
        """log pi_k - (1/2) log det(2 pi C_k), shape (K,)."""
        return self.log_weights - 0.5 * self.sum_dims(LOG_2PI + np.log(self.var))

    def noised(self, alpha: float, sigma: float, where: str = "") -> "Gaussians":
        """Law of alpha X + sigma eps: means alpha mu_k, eigenvalues alpha^2 lam + sigma^2."""
        var = alpha * alpha * self.var + sigma * sigma
        if not (var > 0).all():
            raise ValueError("the noised law has no density" + where + ": sigma(t) = 0 and a component "
                             "has zero covariance (an Empirical target needs sigma(t) > 0)")
        return Gaussians(self.log_weights, alpha * self.means, var, self.basis)

    def dense_covs(self, var: np.ndarray | None = None) -> np.ndarray:
        """Covariance matrices ``Q diag(var) Q^T``, shape (K,d,d) (``var`` defaults to ``self.var``)."""
        var = self.var if var is None else var
        full = np.broadcast_to(var, (self.n_components, self.dim))
        if self.basis is None:
            out = np.zeros((self.n_components, self.dim, self.dim))
            idx = np.arange(self.dim)
            out[:, idx, idx] = full
            return out
        return np.einsum("kij,kj,klj->kil", self.basis, full, self.basis)

    def rotate(self, v: np.ndarray) -> np.ndarray:
        """Vectors (..., K, d) in the standard basis -> component bases, ``Q_k^T v_k``."""
        return v if self.basis is None else np.einsum("kji,...kj->...ki", self.basis, v)

    def unrotate(self, w: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`rotate`: ``Q_k w_k``."""
        return w if self.basis is None else np.einsum("kij,...kj->...ki", self.basis, w)


def logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """log sum_k exp a[..., k], stable for entries of any size (max-shifted)."""
    m = a.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.log(np.exp(a - m).sum(axis=-1)) + m[..., 0]


def by_row_chunks(row_width, budget: int = 1 << 22):
    """Decorator: apply ``fn(G, x_chunk, *args)`` over row chunks of x (n, d) and stack results.

    ``row_width(G)`` is the number of float64 temporaries one row needs, so each chunk holds
    about ``budget`` of them (32 MiB) whatever n, K and d are.
    """

    def wrap(fn):
        def run(G: Gaussians, x: np.ndarray, *args):
            step = max(1, budget // max(1, row_width(G)))
            if len(x) <= step:
                return fn(G, x, *args)
            parts = [fn(G, x[i:i + step], *args) for i in range(0, len(x), step)]
            if isinstance(parts[0], tuple):
                return tuple(np.concatenate(p) for p in zip(*parts))
            return np.concatenate(parts)

        run.__name__, run.__qualname__, run.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        return run

    return wrap
