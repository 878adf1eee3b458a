"""Forward noising processes ``x_t = alpha(t) x0 + sigma(t) eps`` (Song et al. 2021; the kernels
of all four seed papers).

Every process is a frozen dataclass deriving from :class:`Process`, which fixes the contract:
``alpha``, ``sigma``, their exact t-derivatives, ``log_snr``, the SDE coefficients
``drift(x, t) = f(t) x`` and ``diffusion(t) = g(t)``, and the inverse maps from ``sigma`` and
log-SNR back to ``t``. The SDE ``dx = f x dt + g dw`` has exactly the perturbation kernel
``N(alpha x0, sigma^2 I)`` when

    f = d log(alpha)/dt,      g^2 = d(sigma^2)/dt - 2 f sigma^2,

which every process here satisfies (checked symbolically in ``reference/derive.py`` and
numerically in ``tests/test_processes.py``).

One formula, two array libraries: every method takes ``t`` as a NumPy array (computed in float64)
or a torch tensor (its dtype and device; autograd flows through) and returns the same kind,
shaped like ``t`` (a NumPy scalar for scalar NumPy ``t``). ``proc.at(t)`` bundles the coefficients
a formula needs as :class:`Coefficients`; training formulas take them per row, shape (N, 1).
``t`` outside the process's domain raises ``ValueError``; nothing is clipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._array import namespace
from ._validation import as_array, as_real
from .forward_process import Coefficients, Process
from .forward_process import out as _out

__all__ = ["Process", "Coefficients", "VE", "VP", "SubVP", "Cosine", "EDM", "PROCESSES"]


def _real_fields(proc, *names):
    """Each named constant of a process as a finite float (TypeError for strings and booleans,
    ValueError for NaN/inf, naming the field), stored back on the frozen instance."""
    for name in names:
        object.__setattr__(proc, name, as_real(getattr(proc, name), f"{type(proc).__name__}.{name}"))


@dataclass(frozen=True)
class VE(Process):
    """Variance-exploding SDE (SMLD): alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    Uses sigma(t) itself as the kernel std, as the public code of Song et al. (2021) and the
    seed papers do, so g^2 = d sigma^2/dt = 2 sigma^2 ln(sigma_max/sigma_min).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self):
        _real_fields(self, "sigma_min", "sigma_max")
        if not (0 < self.sigma_min < self.sigma_max < math.inf):
            raise ValueError(f"VE needs 0 < sigma_min < sigma_max < inf, got {self.sigma_min}, {self.sigma_max}")

    t_max = 1.0

    @property
    def _log_ratio(self):
        return math.log(self.sigma_max / self.sigma_min)

    def _log_alpha(self, t, xp):
        return xp.zeros_like(t)

    def _dlog_alpha(self, t, xp):
        return xp.zeros_like(t)

    def _sigma(self, t, xp):
        return self.sigma_min * xp.exp(t * self._log_ratio)

    def _dsigma(self, t, xp):
        return self._sigma(t, xp) * self._log_ratio

    def _g2(self, t, xp):
        return 2.0 * self._log_ratio * self._sigma(t, xp) ** 2

    def _t_from_sigma(self, s, xp):
        return xp.log(s / self.sigma_min) / self._log_ratio

    def _t_from_log_snr(self, lam, xp):
        return self._t_from_sigma(xp.exp(-0.5 * lam), xp)


def _vp_t_from_minus_log_alpha(L, beta_min, beta_max, xp):
    # Solves (beta_max-beta_min)/4 t^2 + beta_min/2 t = L in the cancellation-free form
    # t = 2L / (b + sqrt(b^2 + 4aL)), valid also when beta_max == beta_min.
    a = 0.25 * (beta_max - beta_min)
    b = 0.5 * beta_min
    return 2.0 * L / (b + xp.sqrt(b * b + 4.0 * a * L))


class _LinearBeta(Process):
    """Shared alpha of VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min),
    alpha = exp(-t^2 (beta_max-beta_min)/4 - t beta_min/2), f = -beta/2."""

    beta_min: float
    beta_max: float

    def __post_init__(self):
        _real_fields(self, "beta_min", "beta_max")
        if not (0 < self.beta_min <= self.beta_max < math.inf):
            raise ValueError(f"{type(self).__name__} needs 0 < beta_min <= beta_max < inf, "
                             f"got {self.beta_min}, {self.beta_max}")

    t_max = 1.0

    def beta(self, t):
        """The SDE's beta(t) (not STF App. A's log-mean coefficient, FLAG-S10)."""
        t, xp = self._checked(t)
        return _out(self._beta(t))

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t, xp):
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _dlog_alpha(self, t, xp):
        return -0.5 * self._beta(t)


@dataclass(frozen=True)
class VP(_LinearBeta):
    """Variance-preserving SDE (DDPM): alpha as :class:`_LinearBeta`, sigma = sqrt(1 - alpha^2),
    g^2 = beta (Song et al. 2021)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def _sigma(self, t, xp):
        # 1 - alpha^2 through expm1 so that small t keeps full relative precision
        return xp.sqrt(-xp.expm1(2.0 * self._log_alpha(t, xp)))

    def _dsigma(self, t, xp):
        return xp.exp(2.0 * self._log_alpha(t, xp)) * 0.5 * self._beta(t) / self._sigma(t, xp)

    def _g2(self, t, xp):
        return self._beta(t)

    def _log_snr_from_sigma(self, s, xp):
        return xp.log1p(-s * s) - 2.0 * xp.log(s)

    def _t_from_log_snr(self, lam, xp):
        # alpha^2 = sigmoid(lam)  =>  -log alpha = log1p(exp(-lam)) / 2
        L = 0.5 * xp.logaddexp(xp.zeros_like(lam), -lam)
        return _vp_t_from_minus_log_alpha(L, self.beta_min, self.beta_max, xp)


@dataclass(frozen=True)
class SubVP(_LinearBeta):
    """Sub-VP SDE (Song et al. 2021 §3.3): alpha as VP, sigma = 1 - alpha^2 (so the kernel
    variance is (1 - alpha^2)^2), f = -beta/2, g^2 = beta (1 - alpha^4)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def _sigma(self, t, xp):
        return -xp.expm1(2.0 * self._log_alpha(t, xp))

    def _dsigma(self, t, xp):
        return xp.exp(2.0 * self._log_alpha(t, xp)) * self._beta(t)

    def _g2(self, t, xp):
        return self._beta(t) * -xp.expm1(4.0 * self._log_alpha(t, xp))

    def _t_from_sigma(self, s, xp):
        # alpha^2 = 1 - sigma
        return _vp_t_from_minus_log_alpha(-0.5 * xp.log1p(-s), self.beta_min, self.beta_max, xp)

    def _t_from_log_snr(self, lam, xp):
        # sigma = 1 - alpha^2 solves e^lam sigma^2 + sigma - 1 = 0; the positive root in the
        # form without cancellation is 2 / (1 + sqrt(1 + 4 e^lam))
        s = 2.0 / (1.0 + xp.sqrt(1.0 + 4.0 * xp.exp(lam)))
        return self._t_from_sigma(s, xp)


@dataclass(frozen=True)
class Cosine(Process):
    """Cosine schedule of TSM §4.1: alpha = cos(pi t/2), sigma = sin(pi t/2),
    f = -(pi/2) tan(pi t/2), g^2 = pi tan(pi t/2). Domain [0, 1): alpha vanishes at t = 1."""

    t_max = 1.0
    t_max_open = True

    def _log_alpha(self, t, xp):
        with np.errstate(divide="ignore"):
            return xp.log(xp.cos(0.5 * math.pi * t))

    def _dlog_alpha(self, t, xp):
        return -0.5 * math.pi * xp.tan(0.5 * math.pi * t)

    def _sigma(self, t, xp):
        return xp.sin(0.5 * math.pi * t)

    def _dsigma(self, t, xp):
        return 0.5 * math.pi * xp.cos(0.5 * math.pi * t)

    def _g2(self, t, xp):
        return math.pi * xp.tan(0.5 * math.pi * t)

    def _t_from_sigma(self, s, xp):
        return xp.asin(xp.where(s <= 1.0, s, xp.full_like(s, math.nan))) / (0.5 * math.pi)

    def _t_from_log_snr(self, lam, xp):
        return xp.atan(xp.exp(-0.5 * lam)) / (0.5 * math.pi)


@dataclass(frozen=True)
class EDM(Process):
    """EDM (Karras et al. 2022): alpha = 1, sigma(t) = t, so t *is* the noise level;
    f = 0, g^2 = 2t. Domain [0, inf).

    ``sigma_min``, ``sigma_max`` and ``rho`` describe the Karras sampling grid
    (:meth:`karras_sigma`, :func:`scoremc.karras_sigmas`); training draws ln sigma ~ N(P_mean, P_std^2)
    (:func:`scoremc.lognormal_sigmas`).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self):
        _real_fields(self, "sigma_min", "sigma_max", "rho")
        if not (0 < self.sigma_min < self.sigma_max < math.inf) or not self.rho > 0:
            raise ValueError(f"EDM needs 0 < sigma_min < sigma_max < inf and rho > 0; got {self!r}")

    t_max = math.inf

    def _log_alpha(self, t, xp):
        return xp.zeros_like(t)

    def _dlog_alpha(self, t, xp):
        return xp.zeros_like(t)

    def _sigma(self, t, xp):
        return 1.0 * t

    def _dsigma(self, t, xp):
        return xp.ones_like(t)

    def _g2(self, t, xp):
        return 2.0 * t

    def _t_from_sigma(self, s, xp):
        return 1.0 * s

    def _t_from_log_snr(self, lam, xp):
        return xp.exp(-0.5 * lam)

    def karras_sigma(self, u):
        """Karras' schedule on u in [0, 1]: (u sigma_max^(1/rho) + (1-u) sigma_min^(1/rho))^rho.

        This is the corrected form of STF App. A, which prints the inner exponent as rho
        instead of 1/rho (FLAG-S1; ``reference/ERRATA.md``). u=0 gives sigma_min, u=1 sigma_max.
        """
        u = as_array(u, "u")
        xp = namespace(u)
        if bool(xp.any((u < 0) | (u > 1))):
            raise ValueError(f"u must lie in [0, 1], got {float(xp.reshape(u[(u < 0) | (u > 1)], (-1,))[0])}")
        a, b = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return _out((u * b + (1 - u) * a) ** self.rho)


#: one default instance of each process, for parametrised tests and sweeps
PROCESSES = (VE(), VP(), SubVP(), Cosine(), EDM())
