"""The contract of a forward noising process x_t = alpha(t) x0 + sigma(t) eps, and its coefficients
at given times.

:class:`Process` fixes the public, validated, vectorised verbs over a few private formulas that
each concrete process (:mod:`scoremc.processes`) fills in; :class:`Coefficients` bundles the
coefficients a formula needs at per-row times. Every method runs on NumPy (float64) and torch
(the tensor's dtype and device, differentiable).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ._array import namespace
from ._validation import as_array, check_result

__all__ = ["Process", "Coefficients", "out"]


def out(arr):
    """A NumPy 0-d result as a NumPy scalar (torch tensors unchanged)."""
    return arr[()] if isinstance(arr, np.ndarray) and arr.ndim == 0 else arr


def _finite(arr):
    """``out(arr)`` after checking it finite: a t inside the domain whose coefficient overflows float64
    (EDM's g^2 = 2t at t = 1e308) raises ValueError naming t instead of returning inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        return out(check_result(arr, "t", "a coefficient of the process"))


class Process(abc.ABC):
    """Abstract linear-Gaussian forward process; concrete subclasses are final frozen dataclasses.

    Subclasses implement the ``_``-prefixed formulas on validated arrays of the namespace ``xp``;
    the public methods validate ``t`` once and never clip it.
    """

    #: closed interval ``[t_min, t_max]`` of valid times (``t_max`` may be ``inf``)
    t_min: float = 0.0
    t_max_open: bool = False  # True when t_max itself is excluded (a singular endpoint)

    @property
    @abc.abstractmethod
    def t_max(self) -> float:
        """Largest valid time (excluded when ``t_max_open``)."""

    # -- formulas on validated arrays of namespace xp ----------------------------------------
    @abc.abstractmethod
    def _log_alpha(self, t, xp): ...

    @abc.abstractmethod
    def _dlog_alpha(self, t, xp):
        """f(t) = d log alpha / dt."""

    @abc.abstractmethod
    def _sigma(self, t, xp): ...

    @abc.abstractmethod
    def _dsigma(self, t, xp): ...

    @abc.abstractmethod
    def _g2(self, t, xp):
        """Closed form of g(t)^2 = d(sigma^2)/dt - 2 f sigma^2."""

    @abc.abstractmethod
    def _t_from_log_snr(self, lam, xp): ...

    def _t_from_sigma(self, s, xp):
        return self._t_from_log_snr(self._log_snr_from_sigma(s, xp), xp)

    def _log_snr_from_sigma(self, s, xp):  # pragma: no cover - every process overrides one of the two
        raise NotImplementedError

    # -- validation ---------------------------------------------------------------------------
    def inside(self, t):
        """Boolean mask of times inside the domain (no validation, any namespace)."""
        above = (t >= self.t_max) if self.t_max_open else (t > self.t_max)
        return (t >= self.t_min) & ~above

    def check_t(self, t, name: str = "t"):
        """``t`` as a validated array (float64 for NumPy), raising ``ValueError`` if any entry is
        outside the domain."""
        t = as_array(t, name)
        xp = namespace(t)
        bad = ~self.inside(t)
        if bool(xp.any(bad)):
            close = ")" if self.t_max_open else "]"
            raise ValueError(f"{name}={float(xp.reshape(t[bad], (-1,))[0])} is outside the domain of {self!r}: "
                             f"[{self.t_min}, {self.t_max}{close}")
        return t

    def _checked(self, t, name="t"):
        t = self.check_t(t, name)
        return t, namespace(t)

    # -- public, vectorised API ---------------------------------------------------------------
    def at(self, t) -> "Coefficients":
        """The coefficients at (validated) times ``t``, each shaped like ``t``."""
        return Coefficients(self, self.check_t(t))

    def alpha(self, t):
        """Mean coefficient alpha(t) of the kernel N(alpha x0, sigma^2 I)."""
        t, xp = self._checked(t)
        return _finite(xp.exp(self._log_alpha(t, xp)))

    def sigma(self, t):
        """Kernel standard deviation sigma(t)."""
        t, xp = self._checked(t)
        return _finite(self._sigma(t, xp))

    def dalpha(self, t):
        """Exact d alpha / dt."""
        t, xp = self._checked(t)
        return _finite(xp.exp(self._log_alpha(t, xp)) * self._dlog_alpha(t, xp))

    def dsigma(self, t):
        """Exact d sigma / dt (``inf`` where sigma vanishes like sqrt(t), e.g. VP at t=0)."""
        t, xp = self._checked(t)
        with np.errstate(divide="ignore", invalid="ignore"):
            return out(self._dsigma(t, xp))

    def log_snr(self, t):
        """log(alpha^2 / sigma^2), strictly decreasing in t for every process here."""
        t, xp = self._checked(t)
        with np.errstate(divide="ignore"):
            return out(2.0 * (self._log_alpha(t, xp) - xp.log(self._sigma(t, xp))))

    def drift_coef(self, t):
        """f(t) = d log alpha / dt; the drift is ``f(t) * x``."""
        t, xp = self._checked(t)
        return _finite(self._dlog_alpha(t, xp))

    def drift(self, x, t):
        """Drift f(x, t) = f(t) x of the forward SDE; ``t`` broadcasts against ``x.shape[:-1]``."""
        xp = namespace(x, t)
        x = as_array(x, "x", xp, min_ndim=1)
        f = self.drift_coef(as_array(t, "t", xp, like=x))
        with np.errstate(over="ignore", invalid="ignore"):
            return check_result(xp.asarray(f)[..., None] * x, "x", "the drift f(t) x")

    def g2(self, t):
        """Squared diffusion g(t)^2 = d(sigma^2)/dt - 2 f(t) sigma(t)^2 (closed form)."""
        t, xp = self._checked(t)
        return _finite(self._g2(t, xp))

    def diffusion(self, t):
        """Diffusion coefficient g(t) of the forward SDE ``dx = f x dt + g dw``."""
        t, xp = self._checked(t)
        return _finite(xp.sqrt(self._g2(t, xp)))

    def t_from_log_snr(self, log_snr):
        """Inverse of :meth:`log_snr`; raises ``ValueError`` for values no valid t attains."""
        lam = as_array(log_snr, "log_snr")
        xp = namespace(lam)
        with np.errstate(divide="ignore", over="ignore"):
            t = self._t_from_log_snr(lam, xp)
        return out(self._checked_inverse(t, lam, "log_snr", xp))

    def t_from_sigma(self, sigma):
        """Inverse of :meth:`sigma` (monotone for every process here)."""
        s = as_array(sigma, "sigma")
        xp = namespace(s)
        if bool(xp.any(s <= 0)):
            raise ValueError(f"sigma must be positive, got {float(xp.reshape(s[s <= 0], (-1,))[0])}")
        with np.errstate(divide="ignore", invalid="ignore"):
            t = self._t_from_sigma(s, xp)
        return out(self._checked_inverse(t, s, "sigma", xp))

    def _checked_inverse(self, t, value, name, xp):
        # the inverse of a value computed at a closed endpoint can land a few ulps outside it
        # (e.g. VE log_snr(0) round-trips to -6e-17): that is round-off, so it maps to the endpoint;
        # anything further out is an error, never clipped
        tol = 64 * float(xp.finfo(t.dtype).eps)
        t = xp.where((t < self.t_min) & (t >= self.t_min - tol), xp.full_like(t, self.t_min), t)
        if not self.t_max_open:
            top = self.t_max + tol * max(1.0, self.t_max)
            t = xp.where((t > self.t_max) & (t <= top), xp.full_like(t, self.t_max), t)
        bad = ~xp.isfinite(t) | ~self.inside(t)
        if bool(xp.any(bad)):
            raise ValueError(f"{name}={float(xp.reshape(value[bad], (-1,))[0])} is not attained by {self!r} "
                             "on its domain")
        return t


@dataclass(frozen=True, eq=False)
class Coefficients:
    """The coefficients of ``process`` at validated times ``t``, each an array shaped like ``t``
    (per-row (N, 1) in training formulas), computed on first use: ``alpha``, ``sigma``, ``g2``,
    ``f`` (drift coefficient), ``dalpha``, ``dsigma``, ``dvar`` = d(sigma^2)/dt. Namespace, dtype and
    device are those of ``t``."""

    process: Process
    t: object

    @property
    def xp(self):
        return namespace(self.t)

    @cached_property
    def alpha(self):
        return self.xp.exp(self.process._log_alpha(self.t, self.xp))

    @cached_property
    def sigma(self):
        return self.process._sigma(self.t, self.xp)

    @cached_property
    def g2(self):
        return self.process._g2(self.t, self.xp)

    @cached_property
    def f(self):
        return self.process._dlog_alpha(self.t, self.xp)

    @cached_property
    def dalpha(self):
        return self.alpha * self.f

    @cached_property
    def dsigma(self):
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.process._dsigma(self.t, self.xp)

    @cached_property
    def dvar(self):
        """d(sigma^2)/dt: 2 sigma sigma' where sigma > 0, else its limit g^2 + 2 f sigma^2 (finite at t = 0
        where sigma' is not, e.g. VP: beta_min)."""
        xp = self.xp
        with np.errstate(invalid="ignore", over="ignore"):
            return xp.where(self.sigma > 0, 2.0 * self.sigma * self.dsigma, self.g2 + 2.0 * self.f * self.sigma ** 2)
