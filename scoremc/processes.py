"""Forward noising processes ``x_t = alpha(t) x0 + sigma(t) eps`` (SEEDS_SPEC §0).

Every process is a frozen dataclass deriving from :class:`Process`, which fixes the contract:
``alpha``, ``sigma``, their exact t-derivatives, ``log_snr``, the SDE coefficients
``drift(x, t) = f(t) x`` and ``diffusion(t) = g(t)``, and the inverse maps from ``sigma`` and
log-SNR back to ``t``. The SDE ``dx = f x dt + g dw`` has exactly the perturbation kernel
``N(alpha x0, sigma^2 I)`` when

    f = d log(alpha)/dt,      g^2 = d(sigma^2)/dt - 2 f sigma^2,

which every process here satisfies (checked symbolically in ``reference/derive.py`` and
numerically in ``tests/test_processes.py``). All methods are vectorised over ``t`` and return
float64 arrays shaped like ``t`` (a NumPy scalar for scalar ``t``); ``t`` outside the process's
domain raises ``ValueError``.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import numpy as np

from ._validation import as_float_array, as_count

__all__ = ["Process", "VE", "VP", "SubVP", "Cosine", "EDM", "karras_sigmas", "PROCESSES"]


def _out(arr: np.ndarray):
    return arr[()] if arr.ndim == 0 else arr


class Process(abc.ABC):
    """Abstract linear-Gaussian forward process; concrete subclasses are final frozen dataclasses.

    Subclasses implement the ``_``-prefixed formulas on validated float64 arrays; the public
    methods validate ``t`` once and never clip it.
    """

    #: closed interval ``[t_min, t_max]`` of valid times (``t_max`` may be ``inf``)
    t_min: float = 0.0
    t_max_open: bool = False  # True when t_max itself is excluded (a singular endpoint)

    @property
    @abc.abstractmethod
    def t_max(self) -> float:
        """Largest valid time (excluded when ``t_max_open``)."""

    # -- formulas on validated arrays -------------------------------------------------------
    @abc.abstractmethod
    def _log_alpha(self, t): ...

    @abc.abstractmethod
    def _dlog_alpha(self, t):
        """f(t) = d log alpha / dt."""

    @abc.abstractmethod
    def _sigma(self, t): ...

    @abc.abstractmethod
    def _dsigma(self, t): ...

    @abc.abstractmethod
    def _g2(self, t):
        """Closed form of g(t)^2 = d(sigma^2)/dt - 2 f sigma^2."""

    @abc.abstractmethod
    def _t_from_log_snr(self, lam): ...

    # -- validation ---------------------------------------------------------------------------
    def check_t(self, t, name: str = "t") -> np.ndarray:
        """Return ``t`` as float64, raising ``ValueError`` if any entry is outside the domain."""
        t = as_float_array(t, name)
        above = (t >= self.t_max) if self.t_max_open else (t > self.t_max)
        bad = (t < self.t_min) | above
        if bad.any():
            close = ")" if self.t_max_open else "]"
            raise ValueError(f"{name}={t[bad].flat[0]} is outside the domain of {self!r}: "
                             f"[{self.t_min}, {self.t_max}{close}")
        return t

    # -- public, vectorised API ---------------------------------------------------------------
    def alpha(self, t):
        """Mean coefficient alpha(t) of the kernel N(alpha x0, sigma^2 I)."""
        return _out(np.exp(self._log_alpha(self.check_t(t))))

    def sigma(self, t):
        """Kernel standard deviation sigma(t)."""
        return _out(self._sigma(self.check_t(t)))

    def dalpha(self, t):
        """Exact d alpha / dt."""
        t = self.check_t(t)
        return _out(np.exp(self._log_alpha(t)) * self._dlog_alpha(t))

    def dsigma(self, t):
        """Exact d sigma / dt (``inf`` where sigma vanishes like sqrt(t), e.g. VP at t=0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return _out(self._dsigma(self.check_t(t)))

    def log_snr(self, t):
        """log(alpha^2 / sigma^2), strictly decreasing in t for every process here."""
        t = self.check_t(t)
        with np.errstate(divide="ignore"):
            return _out(2.0 * (self._log_alpha(t) - np.log(self._sigma(t))))

    def drift_coef(self, t):
        """f(t) = d log alpha / dt; the drift is ``f(t) * x``."""
        return _out(self._dlog_alpha(self.check_t(t)))

    def drift(self, x, t):
        """Drift f(x, t) = f(t) x of the forward SDE; ``t`` broadcasts against ``x.shape[:-1]``."""
        x = as_float_array(x, "x", min_ndim=1)
        return np.asarray(self.drift_coef(t))[..., None] * x

    def g2(self, t):
        """Squared diffusion g(t)^2 = d(sigma^2)/dt - 2 f(t) sigma(t)^2 (closed form)."""
        return _out(self._g2(self.check_t(t)))

    def diffusion(self, t):
        """Diffusion coefficient g(t) of the forward SDE ``dx = f x dt + g dw``."""
        return _out(np.sqrt(self._g2(self.check_t(t))))

    def t_from_log_snr(self, log_snr):
        """Inverse of :meth:`log_snr`; raises ``ValueError`` for values no valid t attains."""
        lam = as_float_array(log_snr, "log_snr")
        with np.errstate(divide="ignore", over="ignore"):
            t = self._t_from_log_snr(lam)
        return _out(self._checked_inverse(t, lam, "log_snr"))

    def t_from_sigma(self, sigma):
        """Inverse of :meth:`sigma` (monotone for every process here)."""
        s = as_float_array(sigma, "sigma")
        if (s <= 0).any():
            raise ValueError(f"sigma must be positive, got {s[s <= 0].flat[0]}")
        with np.errstate(divide="ignore", invalid="ignore"):
            t = self._t_from_sigma(s)
        return _out(self._checked_inverse(t, s, "sigma"))

    def _t_from_sigma(self, s):
        return self._t_from_log_snr(self._log_snr_from_sigma(s))

    def _log_snr_from_sigma(self, s):  # pragma: no cover - every process overrides one of the two
        raise NotImplementedError

    def _checked_inverse(self, t, value, name):
        # the inverse of a value computed at a closed endpoint can land a few ulps outside it
        # (e.g. VE log_snr(0) round-trips to -6e-17): that is round-off, so it maps to the endpoint;
        # anything further out is an error, never clipped
        tol = 64 * np.finfo(np.float64).eps
        t = np.where((t < self.t_min) & (t >= self.t_min - tol), self.t_min, t)
        if not self.t_max_open:
            t = np.where((t > self.t_max) & (t <= self.t_max + tol * max(1.0, self.t_max)), self.t_max, t)
        above = (t >= self.t_max) if self.t_max_open else (t > self.t_max)
        bad = ~np.isfinite(t) | (t < self.t_min) | above
        if bad.any():
            raise ValueError(f"{name}={value[bad].flat[0]} is not attained by {self!r} on its domain")
        return t


@dataclass(frozen=True)
class VE(Process):
    """Variance-exploding SDE (SMLD): alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    Uses sigma(t) itself as the kernel std, as the public code of Song et al. (2021) and the
    seed papers do (SEEDS_SPEC §0), so g^2 = d sigma^2/dt = 2 sigma^2 ln(sigma_max/sigma_min).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max < math.inf):
            raise ValueError(f"VE needs 0 < sigma_min < sigma_max < inf, got {self.sigma_min}, {self.sigma_max}")

    t_max = 1.0

    @property
    def _log_ratio(self):
        return math.log(self.sigma_max / self.sigma_min)

    def _log_alpha(self, t):
        return np.zeros_like(t)

    def _dlog_alpha(self, t):
        return np.zeros_like(t)

    def _sigma(self, t):
        return self.sigma_min * np.exp(t * self._log_ratio)

    def _dsigma(self, t):
        return self._sigma(t) * self._log_ratio

    def _g2(self, t):
        return 2.0 * self._log_ratio * self._sigma(t) ** 2

    def _t_from_sigma(self, s):
        return np.log(s / self.sigma_min) / self._log_ratio

    def _t_from_log_snr(self, lam):
        return self._t_from_sigma(np.exp(-0.5 * lam))


def _vp_t_from_minus_log_alpha(L, beta_min, beta_max):
    # Solves (beta_max-beta_min)/4 t^2 + beta_min/2 t = L in the cancellation-free form
    # t = 2L / (b + sqrt(b^2 + 4aL)), valid also when beta_max == beta_min.
    a = 0.25 * (beta_max - beta_min)
    b = 0.5 * beta_min
    return 2.0 * L / (b + np.sqrt(b * b + 4.0 * a * L))


class _LinearBeta(Process):
    """Shared alpha of VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min),
    alpha = exp(-t^2 (beta_max-beta_min)/4 - t beta_min/2), f = -beta/2."""

    beta_min: float
    beta_max: float

    def __post_init__(self):
        if not (0 < self.beta_min <= self.beta_max < math.inf):
            raise ValueError(f"{type(self).__name__} needs 0 < beta_min <= beta_max < inf, "
                             f"got {self.beta_min}, {self.beta_max}")

    t_max = 1.0

    def beta(self, t):
        """The SDE's beta(t) (not STF App. A's log-mean coefficient, FLAG-S10)."""
        return _out(self._beta(self.check_t(t)))

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t):
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _dlog_alpha(self, t):
        return -0.5 * self._beta(t)



@dataclass(frozen=True)
class VP(_LinearBeta):
    """Variance-preserving SDE (DDPM): alpha as :class:`_LinearBeta`, sigma = sqrt(1 - alpha^2),
    g^2 = beta (SEEDS_SPEC §0; Song et al. 2021)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def _sigma(self, t):
        # 1 - alpha^2 through expm1 so that small t keeps full relative precision
        return np.sqrt(-np.expm1(2.0 * self._log_alpha(t)))

    def _dsigma(self, t):
        return np.exp(2.0 * self._log_alpha(t)) * 0.5 * self._beta(t) / self._sigma(t)

    def _g2(self, t):
        return self._beta(t)

    def _log_snr_from_sigma(self, s):
        return np.log1p(-s * s) - 2.0 * np.log(s)

    def _t_from_log_snr(self, lam):
        # alpha^2 = sigmoid(lam)  =>  -log alpha = log1p(exp(-lam)) / 2
        L = 0.5 * np.logaddexp(0.0, -lam)
        return _vp_t_from_minus_log_alpha(L, self.beta_min, self.beta_max)


@dataclass(frozen=True)
class SubVP(_LinearBeta):
    """Sub-VP SDE (Song et al. 2021 §3.3): alpha as VP, sigma = 1 - alpha^2 (so the kernel
    variance is (1 - alpha^2)^2), f = -beta/2, g^2 = beta (1 - alpha^4)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def _sigma(self, t):
        return -np.expm1(2.0 * self._log_alpha(t))

    def _dsigma(self, t):
        return np.exp(2.0 * self._log_alpha(t)) * self._beta(t)

    def _g2(self, t):
        return self._beta(t) * -np.expm1(4.0 * self._log_alpha(t))

    def _t_from_sigma(self, s):
        # alpha^2 = 1 - sigma
        return _vp_t_from_minus_log_alpha(-0.5 * np.log1p(-s), self.beta_min, self.beta_max)

    def _t_from_log_snr(self, lam):
        # sigma = 1 - alpha^2 solves e^lam sigma^2 + sigma - 1 = 0; the positive root in the
        # form without cancellation is 2 / (1 + sqrt(1 + 4 e^lam))
        s = 2.0 / (1.0 + np.sqrt(1.0 + 4.0 * np.exp(lam)))
        return self._t_from_sigma(s)


@dataclass(frozen=True)
class Cosine(Process):
    """Cosine schedule of TSM §4.1: alpha = cos(pi t/2), sigma = sin(pi t/2),
    f = -(pi/2) tan(pi t/2), g^2 = pi tan(pi t/2). Domain [0, 1): alpha vanishes at t = 1."""

    t_max = 1.0
    t_max_open = True

    def _log_alpha(self, t):
        with np.errstate(divide="ignore"):
            return np.log(np.cos(0.5 * np.pi * t))

    def _dlog_alpha(self, t):
        return -0.5 * np.pi * np.tan(0.5 * np.pi * t)

    def _sigma(self, t):
        return np.sin(0.5 * np.pi * t)

    def _dsigma(self, t):
        return 0.5 * np.pi * np.cos(0.5 * np.pi * t)

    def _g2(self, t):
        return np.pi * np.tan(0.5 * np.pi * t)

    def _t_from_sigma(self, s):
        return np.arcsin(np.where(s <= 1.0, s, np.nan)) / (0.5 * np.pi)

    def _t_from_log_snr(self, lam):
        return np.arctan(np.exp(-0.5 * lam)) / (0.5 * np.pi)


@dataclass(frozen=True)
class EDM(Process):
    """EDM (Karras et al. 2022): alpha = 1, sigma(t) = t, so t *is* the noise level;
    f = 0, g^2 = 2t. Domain [0, inf).

    ``sigma_min``, ``sigma_max``, ``rho`` describe the Karras sampling grid (see
    :meth:`karras_sigma` and :func:`karras_sigmas`) and ``sigma_data`` the data scale used by the
    preconditioning; training draws ``ln sigma ~ N(P_mean, P_std^2)``.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max < math.inf) or self.rho <= 0 or self.sigma_data <= 0:
            raise ValueError(f"EDM needs 0 < sigma_min < sigma_max < inf, rho > 0, sigma_data > 0; got {self!r}")

    t_max = math.inf

    def _log_alpha(self, t):
        return np.zeros_like(t)

    def _dlog_alpha(self, t):
        return np.zeros_like(t)

    def _sigma(self, t):
        return t.copy()

    def _dsigma(self, t):
        return np.ones_like(t)

    def _g2(self, t):
        return 2.0 * t

    def _t_from_sigma(self, s):
        return s

    def _t_from_log_snr(self, lam):
        return np.exp(-0.5 * lam)

    def karras_sigma(self, u):
        """Karras' schedule on u in [0, 1]: (u sigma_max^(1/rho) + (1-u) sigma_min^(1/rho))^rho.

        This is the corrected form of STF App. A, which prints the inner exponent as rho
        instead of 1/rho (FLAG-S1; ``reference/ERRATA.md``). u=0 gives sigma_min, u=1 sigma_max.
        """
        u = as_float_array(u, "u")
        if ((u < 0) | (u > 1)).any():
            raise ValueError(f"u must lie in [0, 1], got {u[(u < 0) | (u > 1)].flat[0]}")
        a, b = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return _out((u * b + (1 - u) * a) ** self.rho)


def karras_sigmas(n, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) Eq. 5 sampling grid, decreasing from sigma_max to sigma_min.

    sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0..n-1 (FLAG-S1 for the exponent). Returns shape ``(n,)`` float64 (no trailing zero).
    """
    n = as_count(n, "n", minimum=2)
    edm = EDM(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    return np.asarray(edm.karras_sigma(1.0 - np.arange(n) / (n - 1)))


#: one default instance of each process, for parametrised tests and sweeps
PROCESSES = (VE(), VP(), SubVP(), Cosine(), EDM())
