"""Sampling from a score model: one driver, :func:`sample`, and one small frozen type per method.

* :class:`EulerMaruyama` — the reverse-time SDE dx = [f x - g^2 s] dt + g dw-bar (Anderson 1982; Song et al.
  2021, Eq. 6) on a uniform t grid; weak order 1.
* :class:`Heun` — EDM's 2nd-order sampler on the probability-flow ODE (Karras et al. 2022, Algorithms 1-2), on
  the Karras noise grid, with optional stochastic churn.
* :class:`PredictorCorrector` — Euler-Maruyama predictor + Langevin corrector with the signal-to-noise step
  rule (Song et al. 2021, Algorithms 4-5; ``sampling.py`` of their code).

A score model is any callable ``model(x, t)``, x (N, d), t (N,) -> (N, d), the score grad log p_t(x): an
``nn.Module`` such as ``Preconditioned(ScoreMLP(d), proc)`` or the exact ``scoremc.exact_score(dist, proc)``.
Every process here is linear-Gaussian, x_t = alpha x0 + sigma eps, with the forward SDE dx = f x dt + g dw;
the coefficients come from ``proc.at`` (float64, on the host: the time grid is float64 whatever the
sampling dtype). Every random draw takes an explicit ``torch.Generator``; the global RNG is never touched.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch

from ..noise_levels import karras_sigmas
from .._validation import as_count, as_real_in, check_process
from .data import check_t_range, default_t_range
from .models import check_model_dtype

__all__ = ["Sampler", "EulerMaruyama", "Heun", "PredictorCorrector", "sample", "pf_ode_drift", "prior_variance"]


def _coefficients(proc, ts):
    """alpha, sigma, g2, f at the float64 times ``ts`` (m,), as NumPy float64 arrays."""
    c = proc.at(np.asarray(ts, dtype=np.float64))
    return (np.asarray(v, dtype=np.float64) for v in (c.alpha, c.sigma, c.g2, c.f))


def prior_variance(proc, t_hi: float, sigma_data: float = 1.0) -> float:
    """alpha(t_hi)^2 sigma_data^2 + sigma(t_hi)^2: the per-dimension variance of x_t at t_hi for data of scale
    ``sigma_data`` (exact when p0 = N(0, sigma_data^2 I)); the default prior N(0, v I) of sampling and
    likelihood."""
    a, s = (float(v) for v in (proc.alpha(t_hi), proc.sigma(t_hi)))
    return a * a * sigma_data * sigma_data + s * s


def pf_ode_drift(model, proc, x, t):
    """The probability-flow ODE velocity dx/dt = f(t) x - g(t)^2 / 2 s(x, t) (Song et al. 2021, Eq. 13),
    x (N, d), t (N,) tensors of one dtype and device -> (N, d)."""
    c = proc.at(t.reshape(-1, 1))
    return c.f * x - 0.5 * c.g2 * model(x, t)


class _Score:
    """``model`` called at one float time for a block of rows, its output checked: (N, d) of x's dtype."""

    def __init__(self, model: Callable, dim: int):
        self.model, self.dim = model, dim

    def __call__(self, x, t: float):
        s = self.model(x, torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device))
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(x.shape):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"model(x, t) must return a tensor of shape {tuple(x.shape)}, got {got}")
        return s.to(x.dtype)


class Sampler(abc.ABC):
    """A sampling method: concrete samplers are frozen dataclasses, run by :func:`sample`.

    ``order``: the order of the method's error in the step size (weak order for the SDE samplers, with the
    exact score); ``stochastic``: whether it draws noise along the way.
    """

    name: ClassVar[str]
    order: ClassVar[int]
    stochastic: ClassVar[bool]
    steps: int

    @abc.abstractmethod
    def run(self, score: _Score, proc, x, t_range, gen: torch.Generator, tick: Callable[[], None]):
        """x at t_hi (N, d) -> x at t_lo (N, d); ``tick()`` once per step."""

    def _check_steps(self, minimum=1):
        as_count(self.steps, "steps", minimum=minimum)


def _em_grid(proc, steps, t_range):
    ts = np.linspace(t_range[1], t_range[0], steps + 1)
    ts[0], ts[-1] = t_range[1], t_range[0]
    return ts, *_coefficients(proc, ts)


def _em_step(score, x, i, ts, f, g2, gen, noise: bool):
    """One Euler-Maruyama step of the reverse SDE from ts[i] down to ts[i+1] (h > 0 the step length):
    x - h (f x - g^2 s) + g sqrt(h) z."""
    h = ts[i] - ts[i + 1]
    x = x - h * (f[i] * x - g2[i] * score(x, ts[i]))
    if noise:
        x = x + math.sqrt(g2[i] * h) * torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
    return x


@dataclass(frozen=True)
class EulerMaruyama(Sampler):
    """Euler-Maruyama on the reverse SDE dx = [f x - g^2 s(x, t)] dt + g dw-bar (Song et al. 2021, Eq. 6), from
    t_hi down to t_lo on ``steps`` uniform steps (weak order 1). The last step adds no noise: it returns the
    step's mean, the "denoising" step of Song et al.'s code (``predictor`` returns ``x_mean`` at the end), so
    the output is x_{t_lo} less the noise variance g^2(t) h of that one step."""

    steps: int = 1000
    name: ClassVar[str] = "euler_maruyama"
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True

    def __post_init__(self):
        self._check_steps()

    def run(self, score, proc, x, t_range, gen, tick):
        ts, _, _, g2, f = _em_grid(proc, self.steps, t_range)
        for i in range(self.steps):
            x = _em_step(score, x, i, ts, f, g2, gen, noise=i < self.steps - 1)
            tick()
        return x


@dataclass(frozen=True)
class PredictorCorrector(Sampler):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 4-5): at each time t_i of the uniform grid of
    :class:`EulerMaruyama`, ``corrector_steps`` Langevin steps x <- x + eps s(x, t_i) + sqrt(2 eps) z, then one
    Euler-Maruyama predictor step to t_{i+1} (the last one without noise, as there).

    Step rule (Alg. 5): eps = 2 a_i (snr ||z|| / ||s||)^2 with the norms averaged over the block of rows (as
    in their code), a_i = alpha(t_i)^2 / alpha(t_{i+1})^2 (their 1 - beta_i for VP, 1 for VE). The step thus
    depends on the block: results are reproducible for a given ``batch_size``. ULA's bias with the exact score
    is O(eps): for p_t = N(m, C) its stationary law has variance lam / (1 - eps / (2 lam)) along each
    eigenvalue lam of C, relatively ~snr^2 for isotropic C.
    """

    steps: int = 1000
    corrector_steps: int = 1
    snr: float = 0.16
    name: ClassVar[str] = "predictor_corrector"
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True

    def __post_init__(self):
        self._check_steps()
        as_count(self.corrector_steps, "corrector_steps", minimum=0)
        as_real_in(self.snr, "snr", 0, lo_open=True)

    def run(self, score, proc, x, t_range, gen, tick):
        ts, alpha, _, g2, f = _em_grid(proc, self.steps, t_range)
        for i in range(self.steps):
            a = (alpha[i] / alpha[i + 1]) ** 2
            for _ in range(self.corrector_steps):
                s = score(x, ts[i])
                z = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
                # batch-mean norms (Song et al.'s code); the floor only guards a score that vanishes on every row
                ratio = z.norm(dim=-1).mean() / s.norm(dim=-1).mean().clamp_min(torch.finfo(x.dtype).tiny)
                eps = 2.0 * a * (self.snr * ratio) ** 2
                x = x + eps * s + torch.sqrt(2.0 * eps) * z
            x = _em_step(score, x, i, ts, f, g2, gen, noise=i < self.steps - 1)
            tick()
        return x


@dataclass(frozen=True)
class Heun(Sampler):
    """EDM's sampler (Karras et al. 2022, Alg. 1 deterministic, Alg. 2 with churn), for every process.

    Every process here is EDM's in scaled variables: x~ = x / alpha and sigma~ = sigma / alpha follow
    x~ = x0 + sigma~ eps, and the probability-flow ODE dx/dt = f x - g^2/2 s becomes (with
    d(sigma~^2)/dt = g^2 / alpha^2) dx~/dsigma~ = -alpha sigma~ s(alpha x~, t(sigma~)), i.e. EDM's
    (x~ - D(x~; sigma~)) / sigma~ (Karras et al. Eq. 4 with s(t) = alpha, sigma(t) = sigma~). Heun's method runs
    on it over the Karras grid sigma~_i of ``steps + 1`` levels from sigma~(t_hi) to sigma~(t_lo)
    (:func:`scoremc.karras_sigmas`, ``rho``), mapped to times by the process's exact ``t_from_log_snr``
    (log-SNR = -2 ln sigma~; for EDM and VE, sigma~ is sigma and this is ``t_from_sigma``). The grid ends at
    sigma~(t_lo) > 0, so every step is a 2nd-order Heun step (no final Euler step to sigma = 0).

    Churn (Alg. 2), in the scaled variable, so for every alpha: where s_tmin <= sigma~_i <= s_tmax,
    gamma = min(churn / steps, sqrt(2) - 1), sigma^ = sigma~_i (1 + gamma), and
    x~ += sqrt(sigma^2 - sigma~_i^2) s_noise z before the step from sigma^; sigma^ is lowered to the
    process's largest noise level where the domain is closed (e.g. VE at t = 1). churn = 0: deterministic.
    """

    steps: int = 18
    rho: float = 7.0
    churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    name: ClassVar[str] = "heun"
    order: ClassVar[int] = 2

    def __post_init__(self):
        self._check_steps()
        as_real_in(self.rho, "rho", 0, lo_open=True)
        as_real_in(self.churn, "churn", 0)
        as_real_in(self.s_tmin, "s_tmin", 0)
        as_real_in(self.s_tmax, "s_tmax", 0, lo_open=True, allow_inf=True)
        as_real_in(self.s_noise, "s_noise", 0)

    @property
    def stochastic(self) -> bool:
        return self.churn > 0

    @staticmethod
    def _sigma_tilde(proc, t):
        a, s = (float(v) for v in (proc.alpha(t), proc.sigma(t)))
        return s / a

    @staticmethod
    def _time(proc, sig):
        return float(proc.t_from_log_snr(-2.0 * np.log(np.float64(sig))))

    def grid(self, proc, t_range):
        """(sigma~ (steps+1,), t (steps+1,)): the Karras grid, decreasing, and its times (float64 NumPy)."""
        lo, hi = self._sigma_tilde(proc, t_range[0]), self._sigma_tilde(proc, t_range[1])
        sig = karras_sigmas(self.steps + 1, sigma_min=lo, sigma_max=hi, rho=self.rho)
        sig[0], sig[-1] = hi, lo
        ts = np.asarray(proc.t_from_log_snr(-2.0 * np.log(sig)), dtype=np.float64)
        ts[0], ts[-1] = t_range[1], t_range[0]  # the endpoints exactly, not their round trip
        return sig, ts

    def run(self, score, proc, x, t_range, gen, tick):
        sig, ts = self.grid(proc, t_range)
        alpha = np.asarray(proc.alpha(ts), dtype=np.float64)
        closed = not (proc.t_max_open or math.isinf(proc.t_max))
        sig_cap = self._sigma_tilde(proc, proc.t_max) if closed else math.inf

        def velocity(y, s_, t_, a_):  # dx~/dsigma~ = -alpha sigma~ s(alpha x~, t)
            return -a_ * s_ * score(a_ * y, t_)

        y = x / alpha[0]
        gamma = min(self.churn / self.steps, math.sqrt(2.0) - 1.0)
        for i in range(self.steps):
            s_i, t_i, a_i = sig[i], ts[i], alpha[i]
            if self.churn > 0 and self.s_tmin <= s_i <= self.s_tmax and gamma > 0:
                s_hat = min(s_i * (1.0 + gamma), sig_cap)
                if s_hat > s_i:
                    t_i = self._time(proc, s_hat)
                    a_i = float(proc.alpha(t_i))
                    z = torch.randn(y.shape, generator=gen, dtype=y.dtype, device=y.device)
                    y = y + math.sqrt(s_hat * s_hat - s_i * s_i) * self.s_noise * z
                    s_i = s_hat
            d = velocity(y, s_i, t_i, a_i)
            h = sig[i + 1] - s_i
            y_euler = y + h * d
            d_next = velocity(y_euler, sig[i + 1], ts[i + 1], alpha[i + 1])
            y = y + h * 0.5 * (d + d_next)
            tick()
        return alpha[-1] * y


def _device_and_dtype(x_T, n, dim, generator, device, dtype):
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor):
            raise TypeError(f"x_T must be a torch tensor (N, d), got {type(x_T).__name__}")
        if x_T.ndim != 2 or x_T.shape[0] < 1 or x_T.shape[1] < 1:
            raise ValueError(f"x_T must have shape (N >= 1, d >= 1), got {tuple(x_T.shape)}")
        if not x_T.is_floating_point():
            raise TypeError(f"x_T must be a floating tensor, got dtype {x_T.dtype}")
        if not bool(torch.isfinite(x_T).all()):
            raise ValueError("x_T must be finite")
        if n is not None and as_count(n, "n") != x_T.shape[0]:
            raise ValueError(f"n={n} contradicts x_T with {x_T.shape[0]} rows")
        if dim is not None and as_count(dim, "dim") != x_T.shape[1]:
            raise ValueError(f"dim={dim} contradicts x_T of dimension {x_T.shape[1]}")
        n, dim = x_T.shape
        device = x_T.device if device is None else torch.device(device)
        dtype = x_T.dtype if dtype is None else dtype
    else:
        if n is None or dim is None:
            raise TypeError("pass x_T, or both n and dim (and sigma_data) to draw it")
        n, dim = as_count(n, "n"), as_count(dim, "dim")
        device = torch.device(device) if device is not None else \
            generator.device if generator is not None else torch.device("cpu")
        dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype, got {dtype!r}")
    return int(n), int(dim), device, dtype


def sample(model, proc, sampler: Sampler | None = Heun(), *, n: int | None = None, x_T=None, dim: int | None = None,
           sigma_data: float = 1.0, t_range=None, generator: torch.Generator | None = None, device=None,
           dtype=None, batch_size: int | None = None, progress: bool | None = None) -> torch.Tensor:
    """Samples x_{t_lo} (n, d) from a score model by ``sampler`` (default ``Heun()``; None means it too), run from
    t_hi to t_lo.

    ``model(x, t)``: the score, x (N, d), t (N,) -> (N, d). ``proc``: the process it was trained for.
    ``t_range`` (t_lo, t_hi): default :func:`scoremc.nn.data.default_t_range` (the training interval).
    ``x_T`` (N, d): the start at t_hi (e.g. exact draws of p_{t_hi}); else n rows of dimension ``dim`` are drawn
    from N(0, (alpha(t_hi)^2 sigma_data^2 + sigma(t_hi)^2) I), exact for data N(0, sigma_data^2 I).
    Random draws come from ``generator`` (a ``torch.Generator`` on the sampling device; None: a fresh one with
    a nondeterministic seed), block by block of ``batch_size`` rows (default: all at once): the output is a
    function of the generator's state and ``batch_size``. Dtype and device follow ``x_T`` (or ``dtype``,
    ``device``; default torch's default dtype on the generator's device). ``progress``: a tqdm bar over the
    steps (None: only on a terminal). Runs under ``torch.no_grad()``; the model's train/eval mode is left
    as it is.
    """
    sampler = Heun() if sampler is None else sampler
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be a Sampler (EulerMaruyama(), Heun(), PredictorCorrector()), got "
                        f"{type(sampler).__name__}")
    if not callable(model):
        raise TypeError(f"model must be a callable score s(x, t), got {type(model).__name__}")
    proc = check_process(proc)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    sigma_data = as_real_in(sigma_data, "sigma_data", 0, lo_open=True)
    t_range = default_t_range(proc) if t_range is None else check_t_range(proc, t_range)
    n, dim, device, dtype = _device_and_dtype(x_T, n, dim, generator, device, dtype)
    check_model_dtype(model, dtype, "x_T" if x_T is not None else "dtype")
    if generator is None:
        generator = torch.Generator(device=device)
        generator.seed()  # its own nondeterministic seed: the global RNG stays untouched
    elif generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device}, the samples on {device}")
    batch_size = n if batch_size is None else as_count(batch_size, "batch_size")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")

    from tqdm.auto import tqdm

    blocks = range(0, n, batch_size)
    bar = tqdm(total=len(blocks) * sampler.steps, desc=sampler.name, unit="step", dynamic_ncols=True,
               disable=None if progress is None else not progress)
    score, std = _Score(model, dim), math.sqrt(prior_variance(proc, t_range[1], sigma_data))
    out = []
    try:
        with torch.no_grad():
            for start in blocks:
                m = min(batch_size, n - start)
                if x_T is None:
                    x = std * torch.randn((m, dim), generator=generator, dtype=dtype, device=device)
                else:
                    x = x_T[start:start + m].detach().to(device=device, dtype=dtype)
                out.append(sampler.run(score, proc, x, t_range, generator, bar.update))
    finally:
        bar.close()
    return torch.cat(out)
