"""Assertions that check a score model against exact truth, noise level by noise level.

Each assertion takes any score callable ``model(x, t)`` (NumPy, or torch: a ``torch.nn.Module``
is called with tensors of its parameters' dtype and device; a plain torch function can be
wrapped with :func:`torch_score`), draws points x_t ~ p_t of a target with exact laws at
several times, and fails with a table by noise level (t, sigma, the measured quantity, the
tolerance) instead of a bare boolean.

Arguments are validated before anything runs, so that no check passes without checking: ``ts``
must be non-empty and in the process's domain, ``rtol`` finite and > 0, ``level`` in (0, 1) (a
rate of 0 would pass any estimator), ``n``/``n_points`` positive integers; else ValueError/TypeError
naming the argument.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .._validation import as_count, as_float_array, as_real, call_score, check_process
from ..identities import Identity, integrand_samples
from ..noising import exact_score, noised_sample
from ..processes import EDM, Process

__all__ = ["assert_score_close", "assert_tweedie", "assert_estimator_unbiased", "assert_fpe_consistent",
           "assert_conservative", "default_times", "call_model", "torch_score", "CheckReport"]


def default_times(proc: Process, n: int = 8) -> np.ndarray:
    """n times spread over the process's domain, away from singular ends (EDM: sigma grid)."""
    if isinstance(proc, EDM):
        return np.geomspace(0.01, 50.0, n)
    return np.linspace(0.05, 0.95, n)


@dataclass(frozen=True)
class torch_score:
    """Adapter: call a torch function ``fn(x, t)`` with tensors and return float64 NumPy arrays."""

    fn: object
    dtype: str = "float32"
    device: str = "cpu"

    def __call__(self, x, t):
        import torch

        dtype = getattr(torch, self.dtype)
        xt = torch.as_tensor(np.asarray(x), dtype=dtype, device=self.device)
        tt = torch.as_tensor(np.broadcast_to(t, np.shape(x)[:-1]).copy(), dtype=dtype, device=self.device)
        with torch.no_grad():
            return self.fn(xt, tt).detach().cpu().double().numpy()


def numpy_score(model):
    """``model`` as a NumPy callable (x (N, d), t (N,)) -> float64 array: a ``torch.nn.Module`` is
    called with tensors of its parameters' dtype and device (float64 when it has none), and
    torch outputs of plain callables are converted."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        kind = str(p.dtype).removeprefix("torch.") if p is not None else "float64"
        return torch_score(model, kind, str(p.device) if p is not None else "cpu")

    def fn(x, t):
        out = model(x, t)
        if torch is not None and isinstance(out, torch.Tensor):
            out = out.detach().cpu().double().numpy()
        return out

    return fn


def call_model(model, x: np.ndarray, t) -> np.ndarray:
    """Evaluate ``model(x, t)`` with per-row times (the shape contract of the package's score
    callables: x (P, d), t (P,) -> (P, d)), returning float64 NumPy of shape x.shape."""
    return call_score(numpy_score(model), np.asarray(x, dtype=np.float64), t, name="model")


@dataclass(frozen=True)
class CheckReport:
    """Rows (t, sigma, value, tolerance, ok) of one check; ``str()`` is the failure table."""

    title: str
    quantity: str
    rows: tuple

    @property
    def ok(self) -> bool:
        return all(r[-1] for r in self.rows)

    def __str__(self):
        lines = [self.title, f"{'t':>10} {'sigma':>10} {self.quantity:>16} {'tolerance':>11}  status"]
        for t, s, v, tol, ok in self.rows:
            lines.append(f"{t:10.4g} {s:10.4g} {v:16.4g} {tol:11.4g}  {'ok' if ok else 'FAIL'}")
        return "\n".join(lines)

    def check(self):
        if not self.ok:
            raise AssertionError("\n" + str(self))
        return self


def _times(proc, ts) -> np.ndarray:
    """The checked times: ``default_times(proc)``, or ``ts`` validated (1-D, non-empty, in the domain).
    An empty ``ts`` raises: a check over no times would pass without checking anything."""
    if ts is None:
        return default_times(proc)
    ts = as_float_array(ts, "ts")
    if ts.ndim > 1:
        raise ValueError(f"ts must be a scalar or 1-D, got shape {ts.shape}")
    ts = np.atleast_1d(ts)
    if ts.size == 0:
        raise ValueError("ts must hold at least one time; an empty ts would check nothing")
    proc.check_t(ts, "ts")
    return ts


def _tolerance(value, name: str, *, upper: float = np.inf) -> float:
    """A tolerance or false-alarm rate: a finite real number in (0, upper); 0 or a negative value would
    fail (or, for a rate, pass) every check whatever the model does."""
    value = as_real(value, name)
    if not 0.0 < value < upper:
        raise ValueError(f"{name} must lie in (0, {upper:g}), got {value!r}")
    return value


def _noised_points(dist, proc, t, n, rng):
    return noised_sample(dist, proc, float(t), n, rng)[1]


def _rel_rms(err, ref):
    return float(np.sqrt(np.mean(np.sum(err**2, -1))) / max(np.sqrt(np.mean(np.sum(ref**2, -1))), 1e-300))


def assert_score_close(model, dist, proc: Process, *, rtol: float = 0.05, ts=None, n: int = 256,
                       seed: int = 0) -> CheckReport:
    """The model's score is within ``rtol`` of the exact score at every t, in relative RMS over
    x_t ~ p_t: sqrt(E|model - s|^2) / sqrt(E|s|^2) <= rtol."""
    proc = check_process(proc)
    times = _times(proc, ts)
    rtol = _tolerance(rtol, "rtol")
    n = as_count(n, "n")
    seed = as_count(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    truth = exact_score(dist, proc)
    rows = []
    for t in times:
        x = _noised_points(dist, proc, t, n, rng)
        err = _rel_rms(call_model(model, x, t) - truth(x, t), truth(x, t))
        rows.append((float(t), float(proc.sigma(t)), err, rtol, err <= rtol))
    return CheckReport(f"score vs exact score of {dist!r} under {proc!r}", "rel. RMS error", tuple(rows)).check()


def assert_tweedie(denoiser, score, proc: Process, dist, *, rtol: float = 0.05, ts=None, n: int = 256,
                   seed: int = 0) -> CheckReport:
    """Tweedie's identity alpha D(x, t) = x + sigma^2 s(x, t) between a denoiser (x0-prediction)
    and a score model, on x_t ~ p_t of ``dist``: relative RMS gap, normalised by |sigma^2 s|."""
    proc = check_process(proc)
    times = _times(proc, ts)
    rtol = _tolerance(rtol, "rtol")
    n = as_count(n, "n")
    seed = as_count(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    rows = []
    for t in times:
        a, s2 = float(proc.alpha(t)), float(proc.sigma(t)) ** 2
        x = _noised_points(dist, proc, t, n, rng)
        s_term = s2 * call_model(score, x, t)
        err = _rel_rms(a * call_model(denoiser, x, t) - x - s_term, s_term)
        rows.append((float(t), float(np.sqrt(s2)), err, rtol, err <= rtol))
    return CheckReport(f"Tweedie: alpha D = x + sigma^2 s under {proc!r}", "rel. RMS gap", tuple(rows)).check()


def assert_estimator_unbiased(identity: Identity, dist, proc: Process, *, level: float = 1e-3, ts=None,
                              n_points: int = 4, n: int = 2000, seed: int = 0) -> CheckReport:
    """Statistical: the identity's Monte Carlo estimate has mean equal to the exact score.

    At each t and each of ``n_points`` x_t ~ p_t, Hotelling's T^2 test of the mean of n integrand
    draws (covariance estimated from the draws; exact F law for Gaussian draws, asymptotically
    valid otherwise) against the exact score. The tests are
    Bonferroni-combined, so a correct estimator fails with probability <= ``level`` (the stated
    false-alarm rate; measured in tests/test_testing.py). The draws must be independent given x_t:
    ``OptimalMix``'s share one pilot weight, so test its estimates' spread instead. The table shows the smallest p-value
    per t against its per-test threshold.
    """
    proc = check_process(proc)
    times = _times(proc, ts)
    level = _tolerance(level, "level", upper=1.0)
    n_points = as_count(n_points, "n_points")
    n = as_count(n, "n", minimum=2)
    seed = as_count(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    per_test = level / (len(times) * n_points)
    truth = exact_score(dist, proc)
    rows = []
    for t in times:
        x = _noised_points(dist, proc, t, n_points, rng)
        draws = integrand_samples(identity, dist, proc, t, x, n=n, rng=rng)
        s = truth(x, t)
        pmin = 1.0
        for i in range(n_points):
            d = draws[:, i]
            diff = d.mean(0) - s[i]
            cov = np.atleast_2d(np.cov(d.T)) / n
            lam, Q = np.linalg.eigh(cov)
            keep = lam > 1e-12 * max(lam.max(), 1e-300)
            t2 = float((((Q.T @ diff)[keep]) ** 2 / lam[keep]).sum())
            exact_zero = np.all(np.abs(Q.T @ diff)[~keep] <= 1e-9 * (np.abs(s[i]).max() + 1.0))
            k = max(int(keep.sum()), 1)
            # T^2 (n - k) / (k (n - 1)) ~ F(k, n - k)
            p = float(stats.f.sf(t2 * (n - k) / (k * (n - 1)), k, n - k)) if exact_zero else 0.0
            pmin = min(pmin, p)
        rows.append((float(t), float(proc.sigma(t)), pmin, per_test, pmin >= per_test))
    return CheckReport(f"{identity.name} estimator unbiased for {dist!r} under {proc!r} (false-alarm rate "
                       f"{level:g})", "min p-value", tuple(rows)).check()


def assert_fpe_consistent(model, proc: Process, dist, *, rtol: float = 0.05, ts=None, n: int = 64, seed: int = 0,
                          derivatives=None) -> CheckReport:
    """The model solves the score Fokker-Planck equation (FP-Diffusion Eq. 9): RMS |eps[s]| /
    RMS |d/dt s| <= rtol at every t, on x_t ~ p_t of ``dist``; the residual by finite differences
    unless a ``derivatives`` source is given (see :func:`scoremc.fpe_residual`)."""
    from ..fpe import fpe_residual, time_derivative

    fn = numpy_score(model)
    proc = check_process(proc)
    times = _times(proc, ts)
    rtol = _tolerance(rtol, "rtol")
    n = as_count(n, "n")
    seed = as_count(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    rows = []
    for t in times:
        x = _noised_points(dist, proc, t, n, rng)
        res = fpe_residual(fn, proc, x, t, derivatives=derivatives, rng=rng)
        dt = time_derivative(fn, proc, x, t)
        err = _rel_rms(res, dt)
        rows.append((float(t), float(proc.sigma(t)), err, rtol, err <= rtol))
    return CheckReport(f"score-FPE residual relative to d/dt s under {proc!r}", "rel. RMS residual",
                       tuple(rows)).check()


def assert_conservative(model, proc: Process, dist, *, rtol: float = 1e-3, ts=None, n: int = 64, seed: int = 0,
                        derivatives=None) -> CheckReport:
    """The model is a gradient field: |J - J^T|_F / |J|_F <= rtol (RMS over x_t ~ p_t), J the
    Jacobian in x (FP-Diffusion §6.2's curl, for any d)."""
    from ..conservativity import jacobian

    fn = numpy_score(model)
    proc = check_process(proc)
    times = _times(proc, ts)
    rtol = _tolerance(rtol, "rtol")
    n = as_count(n, "n")
    seed = as_count(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    rows = []
    for t in times:
        x = _noised_points(dist, proc, t, n, rng)
        J = jacobian(fn, x, t, proc=proc, derivatives=derivatives)
        anti = 0.5 * (J - np.swapaxes(J, -1, -2))
        err = float(np.sqrt(np.mean(np.sum(anti**2, (-1, -2)))) / max(np.sqrt(np.mean(np.sum(J**2, (-1, -2)))),
                                                                        1e-300))
        rows.append((float(t), float(proc.sigma(t)), err, rtol, err <= rtol))
    return CheckReport(f"conservativity (antisymmetric part of the Jacobian) under {proc!r}", "rel. |J - J^T|/2",
                       tuple(rows)).check()
