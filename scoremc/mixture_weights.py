"""The named weight rules of the DSI/TSI mixtures (TSM §4.1): w_t = sigma^2 / (sigma^2 + alpha^2 v) with v the
target's variance per dimension (``Kappa``) or its mixture-averaged component variance (``KappaBar``). Used by
:class:`scoremc.Mix` (estimation) and :class:`scoremc.MixSM` (training) alike."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ._array import matmul
from .distributions import normal_form

__all__ = ["WeightRule", "Kappa", "KappaBar"]


class WeightRule(abc.ABC):
    """A named rule for the DSI weight w_t of a mixture (TSM §4.1), pure arithmetic of the target and
    (alpha, sigma)."""

    name: ClassVar[str]

    @abc.abstractmethod
    def __call__(self, dist, coef):
        """w at the coefficients ``coef`` (arrays shaped like ``coef.alpha``)."""


@dataclass(frozen=True)
class Kappa(WeightRule):
    """kappa_t = sigma^2 / (sigma^2 + alpha^2 sigma_data^2) (TSM §4.1), sigma_data^2 = tr Cov(p0) / d:
    the zero-variance DSI weight for a Gaussian target N(0, sigma_data^2 I) (TSM App. C). With the
    cosine schedule and sigma_data = 1 it is sigma_t^2 (the Phillips et al. mixture, TSM Eq. 9)."""

    name: ClassVar[str] = "kappa"

    def __call__(self, dist, coef):
        s2 = coef.sigma * coef.sigma
        return s2 / (s2 + coef.alpha * coef.alpha * dist.sigma_data**2)


@dataclass(frozen=True)
class KappaBar(WeightRule):
    """kappa-bar_t = sigma^2 / (sigma^2 + alpha^2 sigma_mode^2), sigma_mode^2 = sum_k pi_k tr(Sigma_k) / d,
    the mixture-averaged component variance (TSM §4.1); 1 (pure DSI) for an ``Empirical``."""

    name: ClassVar[str] = "kappa_bar"

    def __call__(self, dist, coef):
        G = normal_form(dist)
        mode_var = float(matmul(np.exp(G.log_weights), G.sum_dims(G.var) / G.dim))
        s2 = coef.sigma * coef.sigma
        return s2 / (s2 + coef.alpha * coef.alpha * mode_var)
