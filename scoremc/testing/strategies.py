"""Hypothesis strategies for targets, processes, times and points.

Parameters are drawn from bounded, well-conditioned ranges (component variances in
[0.05, 4], means in [-3, 3], full covariances with condition number <= ~100) but otherwise
varied; every number comes from a hypothesis strategy, so failures shrink towards small,
readable examples (few components, round numbers).
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..processes import EDM, VE, VP, Cosine, SubVP
from ..distributions import Empirical, GaussianMixture

__all__ = ["gaussian_mixtures", "empirical_targets", "processes", "times", "points"]

_finite = dict(allow_nan=False, allow_infinity=False)


def _array(shape, lo, hi):
    return hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, **_finite))


@st.composite
def gaussian_mixtures(draw, d=st.integers(1, 4), k=st.integers(1, 4), cov=st.sampled_from(["iso", "diag", "full"])):
    """Random ``GaussianMixture``; ``d``, ``k``, ``cov`` are values or strategies.

    ``cov`` is "iso", "diag" or "full". Weights are bounded away from zero (>= ~0.02 each).
    """
    d = draw(d) if isinstance(d, st.SearchStrategy) else d
    k = draw(k) if isinstance(k, st.SearchStrategy) else k
    cov = draw(cov) if isinstance(cov, st.SearchStrategy) else cov
    raw = draw(_array(k, 0.1, 1.0))
    weights = raw / raw.sum()
    means = draw(_array((k, d), -3.0, 3.0))
    if cov == "iso":
        covs = draw(_array(k, 0.05, 4.0))
    elif cov == "diag":
        covs = draw(_array((k, d), 0.05, 4.0))
    elif cov == "full":
        # A A^T / d + 0.05 I with |A_ij| <= 1.5: eigenvalues in [0.05, ~2.3 d / d + 0.05]
        A = draw(_array((k, d, d), -1.5, 1.5))
        covs = A @ A.transpose(0, 2, 1) / d + 0.05 * np.eye(d)
    else:
        raise ValueError(f"cov must be 'iso', 'diag' or 'full', got {cov!r}")
    return GaussianMixture(weights, means, covs, cov_kind=cov)


@st.composite
def empirical_targets(draw, d=st.integers(1, 4), k=st.integers(1, 8)):
    """Random ``Empirical`` target with points in [-3, 3]^d."""
    d = draw(d) if isinstance(d, st.SearchStrategy) else d
    k = draw(k) if isinstance(k, st.SearchStrategy) else k
    return Empirical(draw(_array((k, d), -3.0, 3.0)))


def processes():
    """One of the five processes, with defaults or varied parameters."""
    return st.one_of(
        st.builds(VE, sigma_min=st.sampled_from([0.01, 0.1]), sigma_max=st.sampled_from([10.0, 50.0])),
        st.builds(VP, beta_min=st.sampled_from([0.1, 0.5]), beta_max=st.sampled_from([10.0, 20.0])),
        st.builds(SubVP, beta_min=st.sampled_from([0.1, 0.5]), beta_max=st.sampled_from([10.0, 20.0])),
        st.just(Cosine()),
        st.just(EDM()),
    )


def times(proc, lo: float = 0.02, hi: float = 0.98):
    """Times inside the process's domain, away from singular endpoints by default.

    For ``EDM`` (t = sigma) the same fraction is mapped onto sigma in [1e-2, 1e2] log-uniformly.
    """
    frac = st.floats(lo, hi, **_finite)
    if isinstance(proc, EDM):
        return frac.map(lambda u: float(10.0 ** (4.0 * u - 2.0)))
    return frac


@st.composite
def points(draw, dist, proc=None, t=None, n=st.integers(1, 5), spread: float = 3.0):
    """Points (n, d) where the law of x_t has mass: alpha(t) * (data range) + noise-scale jitter."""
    n = draw(n) if isinstance(n, st.SearchStrategy) else n
    d = dist.dim
    base = draw(_array((n, d), -1.0, 1.0))
    if proc is None:
        scale, alpha = 1.0, 1.0
    else:
        alpha, scale = float(proc.alpha(t)), float(proc.sigma(t))
    centre = alpha * np.asarray(dist.mean())
    spread_x = alpha * np.sqrt(np.trace(np.atleast_2d(dist.cov())) / d) + scale
    return centre + spread * spread_x * base
