"""Built-in targets of the seed papers' experiments, each with its source.

Every function returns a fresh target with the exact parameters documented in its docstring.
"""
from __future__ import annotations

import numpy as np

from .distributions import Empirical, GaussianMixture

__all__ = ["two_gaussians", "fp_gmm", "ring8", "tsm_unit_gaussian", "tsm_easy", "tsm_hard_same_variance",
           "tsm_hard_different_variance", "digits", "TSM_TARGETS", "TARGETS"]


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


# TSM §4.1 gives no numeric parameters for its four 1-D targets, only that each has total
# variance sigma_data^2 = 1, that "hard" means well-separated modes, and that plots span
# [-2.5, 2.5]. We fix symmetric two-component mixtures (weights 1/2, means +-mu, zero mean) with
# mu^2 + mean component variance = 1 exactly.


def tsm_unit_gaussian() -> GaussianMixture:
    """TSM §4.1 "unit Gaussian": N(0, 1)."""
    return GaussianMixture([1.0], [[0.0]], [1.0])


def _symmetric_1d(var_minus: float, var_plus: float) -> GaussianMixture:
    mu = np.sqrt(1.0 - 0.5 * (var_minus + var_plus))
    return GaussianMixture([0.5, 0.5], [[-mu], [mu]], [var_minus, var_plus])


def tsm_easy() -> GaussianMixture:
    """TSM §4.1 "easy mixture": 1/2 N(-0.5, 0.75) + 1/2 N(0.5, 0.75) (total variance 1)."""
    return _symmetric_1d(0.75, 0.75)


def tsm_hard_same_variance() -> GaussianMixture:
    """TSM §4.1 "hard mixture, same variance": 1/2 N(-sqrt(0.99), 0.01) + 1/2 N(sqrt(0.99), 0.01)."""
    return _symmetric_1d(0.01, 0.01)


def tsm_hard_different_variance() -> GaussianMixture:
    """TSM §4.1 "hard mixture, different variance": 1/2 N(-mu, 0.05^2) + 1/2 N(mu, 0.2^2),
    mu = sqrt(1 - 0.02125) = 0.98932 (total variance 1)."""
    return _symmetric_1d(0.05**2, 0.2**2)


def digits() -> Empirical:
    """The 1797 8x8 images of ``sklearn.datasets.load_digits`` (64-d, 10 classes), pixel values
    0..16 mapped to [-1, 1], as an ``Empirical`` target: the real finite data set that stands in
    for STF's CIFAR-10-4096 (§6.1), since nothing can be downloaded. The data ship with
    scikit-learn."""
    from sklearn.datasets import load_digits

    return Empirical(load_digits().data / 8.0 - 1.0)


#: the four 1-D targets of TSM §4.1 / Figs. 1-4, in the paper's order
TSM_TARGETS = {"tsm-unit-gaussian": tsm_unit_gaussian, "tsm-easy": tsm_easy,
               "tsm-hard-same-variance": tsm_hard_same_variance,
               "tsm-hard-different-variance": tsm_hard_different_variance}

#: name -> constructor, for the command line and sweeps
TARGETS = {"two-gaussians": two_gaussians, "fp-gmm": fp_gmm, "ring8": ring8, "digits": digits, **TSM_TARGETS}
