"""The score Fokker-Planck equation (FP-Diffusion Eqs. 7-9).

For dx = f(x, t) dt + g(t) dw with linear drift f = f(t) x, the score s = grad log p_t satisfies

    d/dt s = grad_x L[s],   L[s] = 1/2 g^2 div s + 1/2 g^2 ||s||^2 - <f, s> - div f,

with div f = f(t) d. ``fpe_operator`` evaluates L[s] and ``fpe_residual`` the residual
eps[s] = d/dt s - grad_x L[s], which vanishes for the exact score. The derivatives come from the
``derivatives`` source (:mod:`scoremc.derivatives`; default: closed forms for an
:class:`~scoremc.analytic.AnalyticScore` such as ``exact_score``, central differences otherwise):

* :class:`~scoremc.derivatives.Exact`: grad_x L = 1/2 g^2 grad div s + g^2 J^T s - f(t) (s + J^T x) and
  the exact d/dt s, to round-off;
* :class:`~scoremc.derivatives.Autograd` (torch): div s, grad_x L and d/dt s by autograd, exact;
* any other source (the estimator of FP-Diffusion §5 / App. C): div s from the source (Hutchinson
  probes held fixed per row), grad_x L by central differences of L, and d/dt s by the non-uniform
  3-point stencil (h_s = 1e-3 backward, h_d = 5e-4 forward, one-sided near the ends of the domain;
  FLAG-F2, :func:`time_derivative`).

Everything runs on NumPy and torch; ``t`` broadcasts against ``x.shape[:-1]``.
"""
from __future__ import annotations

from ._array import namespace
from ._validation import as_array, call_score, check_process
from .derivatives import Autograd, Exact, Hutchinson, gradient_fd, resolve

__all__ = ["fpe_operator", "fpe_residual", "fpe_operator_gradient", "time_derivative", "H_S", "H_D"]

#: FP-Diffusion's finite-difference steps in t (App. C; FLAG-F2): backward h_s, forward h_d
H_S, H_D = 1e-3, 5e-4


def _rows(proc, x, t):
    """Validated (proc, x (..., d), t broadcast to x's rows, g^2 and f per row)."""
    proc = check_process(proc)
    xp = namespace(x, t)
    x = as_array(x, "x", xp, min_ndim=1)
    t = proc.check_t(as_array(t, "t", xp, like=x))
    try:
        t = xp.broadcast_to(t, tuple(x.shape[:-1]))
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"t of shape {tuple(t.shape)} does not broadcast against x's rows "
                         f"{tuple(x.shape[:-1])}") from exc
    c = proc.at(t)
    return proc, x, t, c.g2, c.f


def _operator(s, div, x, g2, f):
    xp = namespace(x)
    return 0.5 * g2 * (div + xp.sum(s * s, axis=-1)) - f * xp.sum(x * s, axis=-1) - f * x.shape[-1]


class _Generic:
    """L[s] and its x-gradient for any derivative source but Exact/Autograd, at rows x (..., d)."""

    def __init__(self, fn, source, proc, x, t, g2, f, rng):
        self.fn, self.source, self.proc, self.x, self.t, self.g2, self.f = fn, source, proc, x, t, g2, f
        # Hutchinson probes are drawn once per row and held fixed at the shifted points
        self.probes = source.probe_batch(x, rng) if isinstance(source, Hutchinson) else None
        self.rng = rng

    def divergence(self, xs):
        if self.probes is not None:
            return namespace(xs).mean(self.source.vjv(self.fn, xs, self.t, self.probes, proc=self.proc), axis=0)
        return self.source.divergence(self.fn, xs, self.t, proc=self.proc, rng=self.rng)

    def operator_at(self, xs):
        """L[s] at xs (..., d) (leading stacking axes allowed)."""
        return _operator(call_score(self.fn, xs, self.t), self.divergence(xs), xs, self.g2, self.f)

    def grad_operator(self):
        return gradient_fd(self.operator_at, self.x, self.source.spatial_step(self.proc, self.t))


def _exact_gradient(fn, x, t, g2, f):
    """grad_x L = 1/2 g^2 grad div s + g^2 J^T s - f (s + J^T x) from the closed forms (``fpe_terms``)."""
    _, grad_div, JTs, JTx, s = Exact._analytic(fn).fpe_terms(x, t)
    return 0.5 * g2[..., None] * grad_div + g2[..., None] * JTs - f[..., None] * (s + JTx)


def _autograd_parts(fn, x, t, g2, f, with_dt: bool):
    """(L, grad_x L, d/dt s or None) by torch autograd, differentiable for the parameters of fn."""
    import torch

    d = x.shape[-1]
    with torch.enable_grad():
        xl = Autograd.leaf(x)
        tl = t if t.requires_grad else t.detach().clone().requires_grad_(True)
        s = call_score(fn, xl, tl)
        div = sum(torch.autograd.grad(s[..., i].sum(), xl, create_graph=True)[0][..., i] for i in range(d))
        L = _operator(s, div, xl, g2, f)
        grad_L = torch.autograd.grad(L.sum(), xl, create_graph=True)[0]
        dt = None
        if with_dt:
            dt = torch.stack([torch.autograd.grad(s[..., i].sum(), tl, create_graph=True)[0] for i in range(d)], -1)
    return L, grad_L, dt


def fpe_operator(score_fn, proc, x, t, *, derivatives=None, rng=None):
    """L[s](x, t) = 1/2 g^2 (div s + ||s||^2) - f(t) <x, s> - f(t) d, shape (...) (FP-Diffusion Eq. 7).

    For the exact score this equals d/dt log p_t(x). ``x`` is (..., d); ``t`` broadcasts against
    ``x.shape[:-1]``; ``derivatives`` gives div s (see the module docstring); ``rng`` draws
    Hutchinson probes.
    """
    source = resolve(derivatives, score_fn)
    proc, x, t, g2, f = _rows(proc, x, t)
    if isinstance(source, (Exact, Autograd)):
        s = call_score(score_fn, x, t)
        return _operator(s, source.divergence(score_fn, x, t, proc=proc), x, g2, f)
    return _Generic(score_fn, source, proc, x, t, g2, f, rng).operator_at(x)


def fpe_operator_gradient(score_fn, proc, x, t, *, derivatives=None, rng=None):
    """grad_x L[s](x, t), shape (..., d) (the right-hand side of the score-FPE)."""
    source = resolve(derivatives, score_fn)
    proc, x, t, g2, f = _rows(proc, x, t)
    if isinstance(source, Exact):
        return _exact_gradient(score_fn, x, t, g2, f)
    if isinstance(source, Autograd):
        return _autograd_parts(score_fn, x, t, g2, f, with_dt=False)[1]
    return _Generic(score_fn, source, proc, x, t, g2, f, rng).grad_operator()


def fpe_residual(score_fn, proc, x, t, *, derivatives=None, rng=None, h_s: float = H_S, h_d: float = H_D):
    """eps[s](x, t) = d/dt s - grad_x L[s] (FP-Diffusion Eq. 9), shape (..., d); zero for the exact score.

    With the default/Exact source on an ``exact_score`` the residual is evaluated in closed form;
    with Autograd() exactly by autograd; otherwise d/dt s by :func:`time_derivative` (``h_s``, ``h_d``;
    error h_s h_d d^3s/dt^3 / 6) and grad_x L by central differences of L. ``proc`` may differ from the
    process the score belongs to (then the residual measures how far the score of one process is
    from solving the other's score-FPE).
    """
    source = resolve(derivatives, score_fn)
    proc, x, t, g2, f = _rows(proc, x, t)
    if isinstance(source, Exact):
        return Exact._analytic(score_fn).dt(x, t) - _exact_gradient(score_fn, x, t, g2, f)
    if isinstance(source, Autograd):
        _, grad_L, dt = _autograd_parts(score_fn, x, t, g2, f, with_dt=True)
        return dt - grad_L
    dt = time_derivative(score_fn, proc, x, t, h_s=h_s, h_d=h_d)
    return dt - _Generic(score_fn, source, proc, x, t, g2, f, rng).grad_operator()


def time_derivative(score_fn, proc, x, t, *, h_s: float = H_S, h_d: float = H_D):
    """d/dt s(x, t) at fixed x by the non-uniform 3-point stencil of FP-Diffusion Lemma C.1 (Fornberg),
    with the reconstruction of FLAG-F2:

        f'(t) ~ [h_s^2 f(t + h_d) + (h_d^2 - h_s^2) f(t) - h_d^2 f(t - h_s)] / [h_s h_d (h_s + h_d)],

    error h_s h_d f'''(t) / 6 (exact for quadratics). Where t - h_s leaves the process's domain
    (t < h_s: training starts at t ~ 1e-5), the one-sided forward stencil
    [-3 f(t) + 4 f(t + h_d) - f(t + 2 h_d)] / (2 h_d) (error -h_d^2 f''' / 3) is used; where t + h_d
    leaves it, the backward one [3 f(t) - 4 f(t - h_s) + f(t - 2 h_s)] / (2 h_s) (error -h_s^2 f'''/3).
    ``x`` (..., d), ``t`` broadcasting against ``x.shape[:-1]``; returns (..., d).
    """
    if not (h_s > 0 and h_d > 0):
        raise ValueError(f"h_s and h_d must be positive, got {h_s}, {h_d}")
    proc, x, t, _, _ = _rows(proc, x, t)
    xp = namespace(x)
    central = proc.inside(t - h_s) & proc.inside(t + h_d)
    forward = ~central & proc.inside(t + 2 * h_d)
    backward = ~central & ~forward & proc.inside(t - 2 * h_s)
    fits = central | forward | backward
    if not bool(xp.all(fits)):
        bad = float(xp.reshape(t[~fits], (-1,))[0])
        raise ValueError(f"t={bad}: the time stencil (h_s={h_s}, h_d={h_d}) does not fit in the domain of {proc!r}")
    D = h_s * h_d * (h_s + h_d)

    def pick(c, fw, bw):
        return xp.where(central, xp.full_like(t, c), xp.where(forward, xp.full_like(t, fw), xp.full_like(t, bw)))

    o1, o2 = pick(h_d, h_d, -h_s), pick(-h_s, 2 * h_d, -2 * h_s)
    c0 = pick((h_d**2 - h_s**2) / D, -1.5 / h_d, 1.5 / h_s)
    c1 = pick(h_s**2 / D, 2.0 / h_d, -2.0 / h_s)
    c2 = pick(-h_d**2 / D, -0.5 / h_d, 0.5 / h_s)
    f0, f1, f2 = call_score(score_fn, x, t), call_score(score_fn, x, t + o1), call_score(score_fn, x, t + o2)
    return c0[..., None] * f0 + c1[..., None] * f1 + c2[..., None] * f2
