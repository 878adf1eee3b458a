"""Built-in targets of the seed papers' experiments, each with its source.

Every function returns a fresh target with the exact parameters documented in its docstring.
"""
from __future__ import annotations

import numpy as np

from .targets import GaussianMixture

__all__ = ["two_gaussians", "fp_gmm", "ring8", "TARGETS"]


def two_gaussians(d: int = 64, mu: float = 0.1, spread: float = 1e-4) -> GaussianMixture:
    """STF §6.1 / App. C: 1/2 N(mu 1, spread^2 I) + 1/2 N(-mu 1, spread^2 I), d = 64, mu = 0.1,
    spread (sigma-hat) = 1e-4, used with VE(0.01, 50)."""
    m = np.full(d, mu)
    return GaussianMixture([0.5, 0.5], np.stack([m, -m]), [spread**2, spread**2])


def fp_gmm() -> GaussianMixture:
    """FP-Diffusion §6.1 (App. B.1): 1/2 N((-5, -5), I) + 1/2 N((5, 5), I) in 2-D, with VE(0.01, 50)."""
    return GaussianMixture([0.5, 0.5], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0])


def ring8(radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """FP-Diffusion App. D Listing 3: 8 equal-weight components at (sin th_k, cos th_k),
    th_k = 2 pi k / 8, radius 1, per-dimension std 0.1."""
    th = 2 * np.pi * np.arange(8) / 8
    return GaussianMixture(np.full(8, 1 / 8), radius * np.stack([np.sin(th), np.cos(th)], 1), np.full(8, std**2))


#: name -> constructor, for the command line and sweeps
TARGETS = {"two-gaussians": two_gaussians, "fp-gmm": fp_gmm, "ring8": ring8}
