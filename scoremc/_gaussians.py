"""Normal form shared by every mixture computation: ``sum_k pi_k N(mean_k, Q_k diag(var_k) Q_k^T)``.

Isotropic and diagonal covariances are axis-aligned (``basis is None``, ``var`` of shape
``(K, 1)`` or ``(K, d)``); a full covariance is stored by its eigendecomposition. Noising keeps
the basis: ``alpha^2 Sigma_k + sigma^2 I = Q_k diag(alpha^2 lam_k + sigma^2) Q_k^T``, so every
time-dependent quantity (precisions, posterior covariances, d/dt of the marginal covariance) is
elementwise in the component's own basis. This is why one code path serves all three covariance
types, the exact posterior and the exact time derivatives.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._array import LOG_2PI, device_of, is_numpy, matmul, namespace


@dataclass(frozen=True, eq=False)
class Gaussians:
    """Mixture in normal form. Shapes: log_weights (K,), means (K,d), var (K,1)|(K,d),
    basis None | (K,d,d) whose columns are the eigenvectors of component k.

    The canonical instance holds float64 NumPy arrays; :meth:`to` gives (and caches) the same form
    in another namespace, dtype and device, so that the reference path runs where its input lives.
    """

    log_weights: object
    means: object
    var: object
    basis: object = None
    _copies: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def isotropic(self) -> bool:
        return self.basis is None and self.var.shape[1] == 1

    def to(self, xp, like=None) -> "Gaussians":
        """This form in the namespace ``xp`` with the dtype and device of ``like`` (NumPy: itself)."""
        if is_numpy(xp):
            return self
        dtype, device = like.dtype, device_of(like)
        key = (xp.__name__, str(dtype), str(device))
        if key not in self._copies:
            # np.array copies: the canonical arrays are read-only, which torch.asarray warns about
            conv = [None if a is None else xp.asarray(np.array(a), dtype=dtype, device=device)
                    for a in (self.log_weights, self.means, self.var, self.basis)]
            self._copies[key] = Gaussians(*conv)
        return self._copies[key]

    def sum_dims(self, a):
        """Sum a per-dimension array of shape (..., K, 1|d) over d, honouring isotropic storage."""
        xp = namespace(a)
        s = xp.sum(a, axis=-1)
        return s * self.dim if a.shape[-1] == 1 else s

    def log_norm(self) -> np.ndarray:
        """log pi_k - (1/2) log det(2 pi C_k), shape (K,)."""
        return self.log_weights - 0.5 * self.sum_dims(LOG_2PI + np.log(self.var))

    def noised(self, alpha: float, sigma: float, where: str = "") -> "Gaussians":
        """Law of alpha X + sigma eps: means alpha mu_k, eigenvalues alpha^2 lam + sigma^2 (NumPy, one time)."""
        var = alpha * alpha * self.var + sigma * sigma
        if not (var > 0).all():
            raise ValueError(no_density_message(where))
        return Gaussians(self.log_weights, alpha * self.means, var, self.basis)

    def dense_covs(self, var: np.ndarray | None = None) -> np.ndarray:
        """Covariance matrices ``Q diag(var) Q^T``, shape (K,d,d) (``var`` defaults to ``self.var``; NumPy)."""
        var = self.var if var is None else var
        full = np.broadcast_to(var, (self.n_components, self.dim))
        if self.basis is None:
            out = np.zeros((self.n_components, self.dim, self.dim))
            idx = np.arange(self.dim)
            out[:, idx, idx] = full
            return out
        return np.einsum("kij,kj,klj->kil", self.basis, full, self.basis)

    def rotate(self, v):
        """Vectors (..., K, d) in the standard basis -> component bases, ``Q_k^T v_k`` (any namespace)."""
        return v if self.basis is None else matmul(v[..., None, :], self.basis)[..., 0, :]

    def unrotate(self, w):
        """Inverse of :meth:`rotate`: ``Q_k w_k``."""
        return w if self.basis is None else matmul(self.basis, w[..., None])[..., 0]


def no_density_message(where: str = "") -> str:
    return ("the noised law has no density" + where + ": sigma(t) = 0 and a component has zero covariance "
            "(an Empirical target needs sigma(t) > 0)")
