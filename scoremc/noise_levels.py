"""Noise levels for training and sampling: EDM's log-normal training sigmas, Song et al.'s uniform
training times, and Karras' sampling grid.

The random draws take a ``numpy.random.Generator`` (NumPy float64 out) or a ``torch.Generator``
(tensor on the generator's device, ``dtype`` or torch's default).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import _random
from ._validation import as_count, as_generator

__all__ = ["karras_sigmas", "lognormal_sigmas", "uniform_times"]


def _finite(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def karras_sigmas(n, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) Eq. 5 sampling grid, decreasing from sigma_max to sigma_min:

        sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  i = 0..n-1

    (FLAG-S1: STF App. A prints the inner exponent as rho). Shape ``(n,)`` float64, no trailing zero.
    """
    from .processes import EDM

    n = as_count(n, "n", minimum=2)
    sigma_min, sigma_max, rho = (_finite(v, k) for v, k in ((sigma_min, "sigma_min"), (sigma_max, "sigma_max"),
                                                           (rho, "rho")))
    edm = EDM(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    try:
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            out = np.asarray(edm.karras_sigma(1.0 - np.arange(n) / (n - 1)))
    except OverflowError:  # Python's float ** raises instead of returning inf
        out = np.array([np.inf])
    # rho -> 0 sends sigma^(1/rho) out of float64 range: no silent inf/0, no bare OverflowError
    if not (np.isfinite(out).all() and (out > 0).all()):
        raise ValueError(f"rho={rho!r} is too small for this sigma range in float64: sigma^(1/rho) overflows")
    return out


def lognormal_sigmas(n, rng, p_mean: float = -1.2, p_std: float = 1.2, *, dtype=None):
    """EDM training noise levels: ln sigma ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1; STF §2).
    Shape ``(n,)``."""
    n = as_count(n, "n")
    rng = as_generator(rng)
    p_mean = _finite(p_mean, "p_mean")
    p_std = _finite(p_std, "p_std")
    if p_std <= 0:
        raise ValueError(f"p_std must be positive, got {p_std}")
    xp = _random.generator_namespace(rng)
    with np.errstate(over="ignore", under="ignore"):
        out = xp.exp(p_mean + p_std * _random.normal(rng, (n,), dtype))
    if not bool(xp.all(xp.isfinite(out) & (out > 0))):
        raise ValueError(f"p_mean={p_mean!r}, p_std={p_std!r}: exp(ln sigma) over- or underflows the dtype; "
                         "use a smaller p_mean/p_std")
    return out


def uniform_times(n, rng, t_min: float = 1e-5, t_max: float = 1.0, *, dtype=None):
    """t ~ U[t_min, t_max], shape ``(n,)`` (Song et al. 2021: t_min = 1e-5 for VE, 1e-3 for VP;
    STF App. D.2)."""
    n = as_count(n, "n")
    rng = as_generator(rng)
    t_min, t_max = _finite(t_min, "t_min"), _finite(t_max, "t_max")
    if not t_min < t_max:
        raise ValueError(f"need t_min < t_max, got {t_min}, {t_max}")
    return t_min + (t_max - t_min) * _random.uniform(rng, (n,), dtype)
