"""Loss weightings lambda(t) (TSM §4.1; Karras et al. 2022; Song et al. 2021; FP-Diffusion Eq. 3).

A weighting is a frozen dataclass; its formula is pure arithmetic of (alpha, sigma, g^2)
(:meth:`Weighting.formula`), so the same expression runs on NumPy and on torch. Every weighting
states the *space* its loss is written in:

* ``"score"``:  lambda ||s - target||^2,
* ``"x0"``:     lambda ||D - x0||^2 with the denoiser D = (x_t + sigma^2 s) / alpha,
* ``"eps"``:    lambda ||eps_hat - eps||^2 with eps_hat = -sigma s.

Since D - x0 = (sigma^2 / alpha)(s - L_DSI) and eps_hat - eps = -sigma (s - L_DSI), the same loss in
score space carries lambda sigma^4 / alpha^2 (x0) or lambda sigma^2 (eps);
:meth:`Weighting.score_space` returns that score-space weight, which :func:`scoremc.loss` uses.

Weightings (each with its source):

=========================  ======  ==========================================================
``SigmaSquared()``         score   sigma^2: Song et al. (2021); STF Eq. 1 (FLAG-T7 correction)
``InverseSigmaSquared()``  score   1 / sigma^2: TSM §4.1 as printed for "Song et al." (FLAG-T7)
``Likelihood()``           score   g^2: FP-Diffusion Eq. 3, LCSS §3.2 (FLAG-L4)
``EDMWeighting(s_d)``      x0      (sigma^2 + alpha^2 s_d^2) / (sigma s_d)^2: Karras et al. (2022)
                                   Table 1, (sigma^2 + s_d^2)/(sigma s_d)^2 at alpha = 1
``DSMOptimal(s_d)``        score   sigma^2 (sigma^2 + alpha^2 s_d^2) / (alpha^2 s_d^2): TSM §4.1
                                   with the alpha of FLAG-T8 (``alpha_aware=False``: as printed)
``TSMOptimal(s_d)``        score   alpha^2 s_d^2 (sigma^2 + alpha^2 s_d^2) / sigma^2: TSM §4.1, App. D
``Uniform()``              score   1
=========================  ======  ==========================================================

Noise levels to train and sample at are in :mod:`scoremc.noise_levels`.
"""
from __future__ import annotations

import abc
import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ._array import namespace
from ._validation import as_array, check_process
from .precond import EDM_SIGMA_DATA
from .processes import Process

__all__ = ["Weighting", "Uniform", "SigmaSquared", "InverseSigmaSquared", "Likelihood", "EDMWeighting",
           "DSMOptimal", "TSMOptimal", "WEIGHTINGS", "normalizing_constant"]

SPACES = ("score", "x0", "eps")


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (0 < value < math.inf):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return float(value)


class Weighting(abc.ABC):
    """Abstract weighting lambda(t); concrete weightings are final frozen dataclasses."""

    name: ClassVar[str]
    #: the space the weighted loss is written in: "score", "x0" or "eps"
    space: ClassVar[str] = "score"

    @abc.abstractmethod
    def formula(self, alpha, sigma, g2):
        """lambda as pure arithmetic of alpha(t), sigma(t), g(t)^2 (NumPy arrays or torch tensors)."""

    def __call__(self, proc: Process, t):
        """lambda(t) in this weighting's own space, shaped like ``t`` (NumPy float64 or torch)."""
        c = check_process(proc).at(as_array(t, "t", namespace(t)))
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.formula(c.alpha, c.sigma, c.g2)

    def score_space(self, proc: Process, t):
        """The equivalent weight of the same loss written in score space (see module docstring)."""
        c = check_process(proc).at(as_array(t, "t", namespace(t)))
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = self.formula(c.alpha, c.sigma, c.g2)
            if self.space == "score":
                return lam
            return lam * c.sigma**4 / c.alpha**2 if self.space == "x0" else lam * c.sigma**2


@dataclass(frozen=True)
class Uniform(Weighting):
    """lambda = 1 (TSM §4.1 "uniform"; TSM Fig. 5 trains with it)."""

    name: ClassVar[str] = "uniform"

    def formula(self, alpha, sigma, g2):
        return 0.0 * sigma + 1.0


@dataclass(frozen=True)
class SigmaSquared(Weighting):
    """lambda = sigma^2 (Song et al. 2021; STF Eq. 1): proportional to 1 / E||grad log p(x_t|x0)||^2.

    This is the corrected reading of TSM §4.1's "Song et al." weighting (FLAG-T7).
    """

    name: ClassVar[str] = "song"

    def formula(self, alpha, sigma, g2):
        return sigma * sigma


@dataclass(frozen=True)
class InverseSigmaSquared(Weighting):
    """lambda = 1 / sigma^2, as TSM §4.1 prints the "Song et al." weighting (FLAG-T7: likely
    inverted; not integrable at t = 0 under the cosine schedule, so normalising it needs t_min)."""

    name: ClassVar[str] = "song-as-printed"

    def formula(self, alpha, sigma, g2):
        return 1.0 / (sigma * sigma)


@dataclass(frozen=True)
class Likelihood(Weighting):
    """lambda = g(t)^2, the likelihood weighting (FP-Diffusion Eq. 3; LCSS §3.2; Song et al. 2021).

    Not sigma^2: for VE, g^2 = 2 ln(sigma_max/sigma_min) sigma^2 (FLAG-L4).
    """

    name: ClassVar[str] = "likelihood"

    def formula(self, alpha, sigma, g2):
        return g2 * 1.0


@dataclass(frozen=True)
class EDMWeighting(Weighting):
    """EDM loss weight in denoiser (x0) space (Karras et al. 2022, Table 1):
    lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 at alpha = 1, and for a general kernel
    x_t = alpha x0 + sigma eps (effective noise level sigma / alpha)
    lambda = (sigma^2 + alpha^2 sigma_data^2) / (sigma sigma_data)^2. In score space it equals
    :class:`DSMOptimal` (TSM §4.1 / App. D; FLAG-T8).
    """

    sigma_data: float = EDM_SIGMA_DATA
    space: ClassVar[str] = "x0"

    def __post_init__(self):
        _positive(self.sigma_data, "sigma_data")

    name: ClassVar[str] = "edm"

    def formula(self, alpha, sigma, g2):
        sd2 = self.sigma_data**2
        return (sigma * sigma + alpha * alpha * sd2) / (sigma * sigma * sd2)


@dataclass(frozen=True)
class DSMOptimal(Weighting):
    """DSM-optimal weighting in score space: Karras' weighting for data alpha X (std alpha sigma_data),
    lambda = sigma^2 (sigma^2 + alpha^2 sigma_data^2) / (alpha^2 sigma_data^2) (FLAG-T8).

    TSM §4.1 prints (sigma^2 / sigma_data^2)(sigma^2 + sigma_data^2), the alpha = 1 case; pass
    ``alpha_aware=False`` for that printed form.
    """

    sigma_data: float = 1.0
    alpha_aware: bool = True

    def __post_init__(self):
        _positive(self.sigma_data, "sigma_data")
        if not isinstance(self.alpha_aware, bool):
            raise TypeError(f"alpha_aware must be a bool, got {type(self.alpha_aware).__name__}")

    @property
    def name(self) -> str:  # noqa: D102 - two names, one per form
        return "dsm-optimal" if self.alpha_aware else "dsm-optimal-as-printed"

    def formula(self, alpha, sigma, g2):
        sd2 = self.sigma_data**2
        if not self.alpha_aware:
            return sigma * sigma * (sigma * sigma + sd2) / sd2
        return sigma * sigma * (sigma * sigma + alpha * alpha * sd2) / (alpha * alpha * sd2)


@dataclass(frozen=True)
class TSMOptimal(Weighting):
    """TSM-optimal weighting (TSM §4.1; App. D): lambda = alpha^2 sigma_data^2 (sigma^2 + alpha^2 sigma_data^2)
    / sigma^2 = 1 / c_out^2 of :func:`scoremc.tsm_precond`. DSM-optimal / TSM-optimal =
    sigma^4 / (alpha^4 sigma_data^4) = (kappa / (1 - kappa))^2."""

    sigma_data: float = 1.0

    def __post_init__(self):
        _positive(self.sigma_data, "sigma_data")

    name: ClassVar[str] = "tsm-optimal"

    def formula(self, alpha, sigma, g2):
        a2sd2 = alpha * alpha * self.sigma_data**2
        return a2sd2 * (sigma * sigma + a2sd2) / (sigma * sigma)


#: the weightings of TSM Figs. 3-4 (sigma_data = 1; Song and DSM-optimal as corrected by
#: FLAG-T7/T8), plus the printed variants
WEIGHTINGS = {w.name: w for w in (SigmaSquared(), InverseSigmaSquared(), DSMOptimal(1.0),
                                   DSMOptimal(1.0, alpha_aware=False), TSMOptimal(1.0), Uniform())}


def normalizing_constant(weighting: Weighting, proc: Process, t_min: float, t_max: float) -> float:
    """Z = int_{t_min}^{t_max} lambda(t) dt by adaptive quadrature (score-space lambda).

    TSM §4.1 normalises each weighting to integrate to 1; under the cosine schedule 1/sigma^2 and the
    TSM-optimal weighting diverge at t = 0 and the alpha-aware DSM-optimal one at t = 1, so the
    interval must stop short of both ends (FLAG-T7, FLAG-T14). The interval is split geometrically
    towards both ends so that the quadrature resolves the 1/t^2-type endpoint behaviour.
    """
    from scipy import integrate

    if not isinstance(weighting, Weighting):
        raise TypeError(f"weighting must be a scoremc Weighting, got {type(weighting).__name__}")
    proc = check_process(proc)
    if not (t_min < t_max):
        raise ValueError(f"t_min must be < t_max, got {t_min}, {t_max}")
    proc.check_t(np.array([t_min, t_max]), "t_min/t_max")
    width = t_max - t_min
    frac = np.concatenate([[0.0], np.geomspace(1e-6, 0.5, 24)])
    cuts = np.unique(np.concatenate([t_min + frac * width, t_max - frac * width]))

    def f(t):
        return float(weighting.score_space(proc, t))

    total = 0.0
    for a, b in zip(cuts[:-1], cuts[1:]):
        val, _ = integrate.quad(f, a, b, epsabs=0.0, epsrel=1e-12, limit=200)
        total += val
    return total
