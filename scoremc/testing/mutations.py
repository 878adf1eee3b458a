"""Deliberately broken scores, for mutation-testing the checks (and your own test suite).

Each function returns a score callable ``s(x, t)`` close to a correct one but wrong in one
specific way that a user's learned model can be wrong in.
"""
from __future__ import annotations

import numpy as np

from ..noising import exact_score
from ..distributions import GaussianMixture

__all__ = ["scaled", "missing_component", "rotational", "wrong_time", "anisotropic", "rotated_output"]


def scaled(score, factor: float = 1.1):
    """factor * s(x, t): a miscalibrated output scale (still conservative)."""
    return lambda x, t: factor * np.asarray(score(x, t))


def missing_component(dist: GaussianMixture, proc, k: int = 0):
    """The exact score of ``dist`` with component k dropped (a mode the model never learned)."""
    keep = np.arange(dist.n_components) != k
    if not keep.any():
        raise ValueError("dist must have at least two components to drop one")
    w = dist.weights[keep] / dist.weights[keep].sum()
    return exact_score(GaussianMixture(w, dist.means[keep], dist.covs[keep]), proc)


def _antisymmetric(d: int) -> np.ndarray:
    if d < 2:
        raise ValueError("a rotational field needs d >= 2")
    A = np.zeros((d, d))
    A[0, 1], A[1, 0] = 1.0, -1.0
    return A


def rotational(score, eps: float = 0.5):
    """s(x, t) + eps * A x with A antisymmetric: a divergence-free, non-gradient perturbation."""
    def fn(x, t):
        x = np.asarray(x, dtype=np.float64)
        return np.asarray(score(x, t)) + eps * x @ _antisymmetric(x.shape[-1]).T
    return fn


def wrong_time(score, proc):
    """The time convention mixed up: the model is queried at the t whose sigma equals the given t
    (a network trained on sigma, called with t). Needs t in the range of sigma(t)."""
    return lambda x, t: np.asarray(score(x, proc.t_from_sigma(np.asarray(t))))


def anisotropic(score, factors=(1.0, 1.3)):
    """s * f per dimension (f padded with ones): its Jacobian diag(f) H is not symmetric."""
    def fn(x, t):
        out = np.asarray(score(x, t))
        f = np.ones(out.shape[-1])
        f[:len(factors)] = factors[:out.shape[-1]]
        return out * f
    return fn


def rotated_output(score, angle: float = 0.3):
    """R s(x, t) with R a rotation in the first two coordinates: R H is not symmetric."""
    def fn(x, t):
        out = np.asarray(score(x, t))
        R = np.eye(out.shape[-1])
        c, s = np.cos(angle), np.sin(angle)
        R[:2, :2] = [[c, -s], [s, c]]
        return out @ R.T
    return fn
