"""The score Fokker-Planck equation (FP-Diffusion, SEEDS_SPEC §4.2).

For dx = f(x, t) dt + g(t) dw with linear drift f = f(t) x, the score s = grad log p_t satisfies

    d/dt s = grad_x L[s],   L[s] = 1/2 g^2 div s + 1/2 g^2 ||s||^2 - <f, s> - div f,

with div f = f(t) d. ``fpe_operator`` evaluates L[s] and ``fpe_residual`` the residual
eps[s] = d/dt s - grad_x L[s], which vanishes for the exact score (up to round-off).
For the exact mixture score everything is in closed form:

    grad_x L = 1/2 g^2 grad div s + g^2 H s - f(t) (s + H x),   H = Jacobian of s.
"""
from __future__ import annotations

import numpy as np

from . import _dense
from .noising import ExactScore, _check_process, noised_parts

__all__ = ["fpe_operator", "fpe_residual"]


def _require_exact(score_fn):
    if not isinstance(score_fn, ExactScore):
        raise TypeError("this function evaluates the score-FPE in closed form and needs the exact score "
                        f"from scoremc.exact_score(dist, proc); got {type(score_fn).__name__}")
    return score_fn


def fpe_operator(score_fn, proc, x, t):
    """L[s](x, t) = 1/2 g^2 (div s + ||s||^2) - f(t) <x, s> - f(t) d, shape (...).

    FP-Diffusion Eq. (score FPE); SEEDS_SPEC §4.2. For the exact score this equals
    d/dt log p_t(x).
    """
    s_fn = _require_exact(score_fn)
    proc = _check_process(proc)

    def fn(G, xs, tj):
        T = _dense.terms(G, xs)
        div = _dense._divergence_parts(G, T)[1]
        g2, f = float(proc.g2(tj)), float(proc.drift_coef(tj))
        return 0.5 * g2 * (div + (T.s * T.s).sum(-1)) - f * (xs * T.s).sum(-1) - f * G.dim

    return s_fn._by_time(x, t, fn, ())


def fpe_residual(score_fn, proc, x, t):
    """eps[s](x, t) = d/dt s - grad_x L[s], shape (..., d); zero for the exact score.

    ``proc`` may differ from the process of ``score_fn`` (then the residual measures how far the
    exact score of one process is from solving the other's score-FPE).
    """
    s_fn = _require_exact(score_fn)
    proc = _check_process(proc)
    d = s_fn.dist.dim
    dt = s_fn.dt(x, t)

    def fn(G, xs, tj):
        _, grad_div, Hs, Hx, s = _dense.grad_divergence(G, xs)
        g2, f = float(proc.g2(tj)), float(proc.drift_coef(tj))
        return 0.5 * g2 * grad_div + g2 * Hs - f * (s + Hx)

    return dt - s_fn._by_time(x, t, fn, (d,))


def fpe_operator_gradient(score_fn, proc, x, t):
    """grad_x L[s](x, t), shape (..., d) (the right-hand side of the score-FPE)."""
    return score_fn.dt(x, t) - fpe_residual(score_fn, proc, x, t)
