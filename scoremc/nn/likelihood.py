"""The probability-flow ODE log-likelihood of a score model (Song et al. 2021, App. D.2; Chen et al. 2018).

The PF-ODE dx/dt = v(x, t) = f(t) x - g(t)^2 / 2 s(x, t) carries p_{t_lo} to p_{t_hi} (for the exact score), and
along its solution the instantaneous change of variables gives d log p_t(x(t)) / dt = -div v(x(t), t). Hence

    log p_{t_lo}(x) = log pi(x(t_hi)) + int_{t_lo}^{t_hi} div v(x(t), t) dt,   div v = d f - g^2 / 2 div s,

with x(t_lo) = x and pi the law at t_hi. :func:`log_likelihood` integrates [x, the integral] forward with
torchdiffeq's adaptive solvers. What it returns is the model's log-density at t_lo, not at 0: the PF-ODE
stops at t_lo > 0 (the score is singular at 0), so for data p0 it differs from log p0 by log p_{t_lo} - log p0,
which is O(sigma(t_lo)^2) (e.g. ~1e-4 per unit curvature for VP at t_lo = 1e-3; tests measure it).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .._validation import as_real_in, check_process
from ..derivatives import Autograd, DerivativeSource, Exact, Hutchinson, resolve
from ..analytic import AnalyticScore
from ..distributions import GaussianMixture, logpdf
from .data import check_t_range, default_t_range
from .models import check_model_dtype
from .sample import pf_ode_drift, prior_variance

__all__ = ["log_likelihood", "EXACT_DIVERGENCE_MAX_DIM", "ADAPTIVE_METHODS"]

#: by default the divergence is exact (autograd, d backward passes) up to this dimension, Hutchinson above
EXACT_DIVERGENCE_MAX_DIM = 16
#: torchdiffeq's adaptive Runge-Kutta solvers: the ones that take ``step_t`` and ``first_step``
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def _divergence_source(divergence, model, dim):
    """The derivative source of div s: the default by dimension; Exact() means the closed form for an
    AnalyticScore (``exact_score``) and autograd for any other model."""
    if divergence is None:
        return Autograd() if dim <= EXACT_DIVERGENCE_MAX_DIM else \
            Hutchinson(1, "rademacher", jvp=Autograd())
    source = resolve(divergence, model, "divergence")
    if isinstance(source, Exact) and not isinstance(model, AnalyticScore):
        return Autograd()
    return source


class _Dynamics:
    """The augmented PF-ODE right-hand side (t, (x, l)) -> (v(x, t), div v(x, t)) for torchdiffeq. The score is
    evaluated once for v and once inside the derivative source (which owns how div s is obtained)."""

    def __init__(self, model, proc, source: DerivativeSource, probes):
        self.model, self.proc, self.source, self.probes = model, proc, source, probes

    def div_score(self, x, t):
        if self.probes is not None:  # FFJORD: the same probes all along the trajectory -> an unbiased integral
            return self.source.vjv(self.model, x, t, self.probes, proc=self.proc).mean(0)
        return self.source.divergence(self.model, x, t, proc=self.proc)

    def __call__(self, t, state):
        x, _ = state
        x = x.detach()
        tr = t.detach().to(x.dtype).expand(x.shape[0])
        c = self.proc.at(tr[:1])  # one time for all rows
        with torch.enable_grad():  # autograd divergences need a graph inside odeint's no-grad integration
            div_s = self.div_score(x, tr)
        return pf_ode_drift(self.model, self.proc, x, tr).detach(), \
            (x.shape[1] * c.f - 0.5 * c.g2 * div_s).detach()


def log_likelihood(model, proc, x, *, t_range=None, divergence: DerivativeSource | None = None,
                   prior: GaussianMixture | Callable | None = None, sigma_data: float = 1.0, rtol: float = 1e-5,
                   atol: float = 1e-5, method: str = "dopri5", generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """log p_{t_lo}(x) of the score model by the PF-ODE (module docstring), x (N, d) -> (N,), x's dtype and device.

    ``model(x, t)``: the score, x (N, d), t (N,) -> (N, d). ``t_range`` (t_lo, t_hi): default
    :func:`scoremc.nn.data.default_t_range`. ``prior``: the law at t_hi, a ``GaussianMixture`` with exact
    ``scoremc.logpdf`` (e.g. ``scoremc.marginal(dist, proc, t_hi)``, with which the exact score gives the exact
    log p_{t_lo}) or a callable log pi(x_T (N, d)) -> (N,); default
    N(0, (alpha(t_hi)^2 sigma_data^2 + sigma(t_hi)^2) I).

    ``divergence``: a derivative source of :mod:`scoremc.derivatives` for div s. Default: exact by autograd
    (``Autograd()``) for d <= :data:`EXACT_DIVERGENCE_MAX_DIM`, else ``Hutchinson(1, "rademacher",
    jvp=Autograd())``. ``Exact()``: the closed form of an ``exact_score``, autograd for any other model.
    ``Hutchinson(m, law)``: m probes per row drawn once from ``generator`` (required) and held fixed along the
    trajectory (FFJORD, Grathwohl et al. 2019), so the result is an unbiased estimate of the exact-divergence
    one, of variance O(1/m). ``CentralDifference()``, ``Jacobian(fn)``, ``Divergence(fn)`` work as well.

    ``rtol``, ``atol``, ``method``: torchdiffeq's ``odeint`` (adaptive Dormand-Prince by default), applied to
    the state [x, integral] of all rows at once; its error control is local and on the RMS over rows and
    components (torchdiffeq's norm), so the global error of a row can exceed the tolerances (tests find
    |error| <~ 10 (atol + rtol |log p|) on 2-D mixtures). Runs without building a graph for the parameters
    (not for training).
    """
    from torchdiffeq import odeint

    if not callable(model):
        raise TypeError(f"model must be a callable score s(x, t), got {type(model).__name__}")
    proc = check_process(proc)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor (N, d), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor of shape (N >= 1, d >= 1), got {tuple(x.shape)} {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite")
    check_model_dtype(model, x.dtype, "x")
    n, d = x.shape
    t_lo, t_hi = default_t_range(proc) if t_range is None else check_t_range(proc, t_range)
    if prior is not None and not (isinstance(prior, GaussianMixture) or callable(prior)):
        raise TypeError(f"prior must be a scoremc GaussianMixture (e.g. scoremc.marginal(dist, proc, t_hi)), a "
                        f"callable log pi(x) -> (N,) or None, got {type(prior).__name__}")
    if isinstance(prior, GaussianMixture) and prior.dim != d:
        raise ValueError(f"prior has dimension {prior.dim}, x has {d}")
    sigma_data = as_real_in(sigma_data, "sigma_data", 0, lo_open=True)
    rtol, atol = as_real_in(rtol, "rtol", 0, lo_open=True), as_real_in(atol, "atol", 0, lo_open=True)
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"method must be one of torchdiffeq's adaptive solvers {ADAPTIVE_METHODS}, got {method!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    source = _divergence_source(divergence, model, d)
    probes = None
    if isinstance(source, Hutchinson):
        if generator is None and source.probes is None:
            raise TypeError("divergence=Hutchinson(...) draws its probes from generator=: pass a torch.Generator")
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(f"generator is on {generator.device}, x on {x.device}")
        probes = source.probe_batch(x.detach(), generator)  # (m, N, d), once per x

    x = x.detach()
    ts = torch.tensor([t_lo, t_hi], dtype=x.dtype, device=x.device)
    state0 = (x, torch.zeros(n, dtype=x.dtype, device=x.device))
    with torch.no_grad():
        # torchdiffeq steps past the last time and interpolates, and its automatic first step evaluates the field
        # at a trial time that can lie far beyond t_hi (outside the domain, e.g. VE at t > 1): step_t makes the
        # step that crosses t_hi end on it, and a small first step (grown by the controller) replaces the trial
        options = {"step_t": ts[1:], "first_step": 1e-4 * (t_hi - t_lo)}
        xs, ls = odeint(_Dynamics(model, proc, source, probes), state0, ts, rtol=rtol, atol=atol, method=method,
                        options=options)
        x_T, integral = xs[-1], ls[-1]
        if prior is None:
            v = prior_variance(proc, t_hi, float(sigma_data))
            log_prior = -0.5 * (x_T * x_T).sum(-1) / v - 0.5 * d * math.log(2.0 * math.pi * v)
        else:
            log_prior = logpdf(prior, x_T) if isinstance(prior, GaussianMixture) else prior(x_T)
            if not isinstance(log_prior, torch.Tensor) or tuple(log_prior.shape) != (n,):
                raise ValueError(f"prior(x_T) must return a tensor of shape ({n},), got "
                                 f"{getattr(log_prior, 'shape', type(log_prior).__name__)}")
            log_prior = log_prior.to(x.dtype)
    return log_prior + integral
