"""The score Fokker-Planck equation (FP-Diffusion, SEEDS_SPEC §4.2-4.5).

For dx = f(x, t) dt + g(t) dw with linear drift f = f(t) x, the score s = grad log p_t satisfies
(FP-Diffusion Eqs. 7-8)

    d/dt s = grad_x L[s],   L[s] = 1/2 g^2 div s + 1/2 g^2 ||s||^2 - <f, s> - div f,

with div f = f(t) d. ``fpe_operator`` evaluates L[s] and ``fpe_residual`` the residual
eps[s] = d/dt s - grad_x L[s] (FP-Diffusion Eq. 9), which vanishes for the exact score.

Two paths, chosen by the type of the score:

* an :class:`~scoremc.noising.ExactScore` is evaluated in closed form (to round-off):
  grad_x L = 1/2 g^2 grad div s + g^2 H s - f(t) (s + H x), H = Jacobian of s, and the exact d/dt s;
* any other callable ``s(x, t)`` goes through the estimator of FP-Diffusion §5 / App. C:
  d/dt s by the non-uniform 3-point stencil (h_s = 1e-3 backward, h_d = 5e-4 forward, one-sided
  near the ends of the domain; FLAG-F2, :func:`time_derivative`), div s exactly (a ``divergence``
  or ``jacobian`` callable, or central differences) or by Hutchinson probes (``n_probes`` >= 1),
  and grad_x L by central differences of L with the probes held fixed.
"""
from __future__ import annotations

import numpy as np

from . import _dense, _fd
from ._validation import as_count, as_float_array, as_generator
from .noising import ExactScore, _check_process

__all__ = ["fpe_operator", "fpe_residual", "fpe_operator_gradient", "time_derivative"]

#: FP-Diffusion's finite-difference steps in t (App. C; FLAG-F2): backward h_s, forward h_d
H_S, H_D = 1e-3, 5e-4


def _require_exact(score_fn):
    if not isinstance(score_fn, ExactScore):
        raise TypeError("this function evaluates the score-FPE in closed form and needs the exact score "
                        f"from scoremc.exact_score(dist, proc); got {type(score_fn).__name__}")
    return score_fn


def _exact_operator(score_fn, proc, x, t):
    s_fn = _require_exact(score_fn)
    proc = _check_process(proc)

    def fn(G, xs, tj):
        T = _dense.terms(G, xs)
        div = _dense._divergence_parts(G, T)[1]
        g2, f = float(proc.g2(tj)), float(proc.drift_coef(tj))
        return 0.5 * g2 * (div + (T.s * T.s).sum(-1)) - f * (xs * T.s).sum(-1) - f * G.dim

    return s_fn._by_time(x, t, fn, ())


def _exact_residual(score_fn, proc, x, t):
    s_fn = _require_exact(score_fn)
    proc = _check_process(proc)
    d = s_fn.dist.dim
    dt = s_fn.dt(x, t)

    def fn(G, xs, tj):
        _, grad_div, Hs, Hx, s = _dense.grad_divergence(G, xs)
        g2, f = float(proc.g2(tj)), float(proc.drift_coef(tj))
        return 0.5 * g2 * grad_div + g2 * Hs - f * (s + Hx)

    return dt - s_fn._by_time(x, t, fn, (d,))


def fpe_operator_gradient(score_fn, proc, x, t, **options):
    """grad_x L[s](x, t), shape (..., d) (the right-hand side of the score-FPE)."""
    if _closed_form(score_fn, options):
        return score_fn.dt(x, t) - _exact_residual(score_fn, proc, x, t)
    return _Generic.build(score_fn, proc, x, t, options).grad_operator()


# -- generic callables ------------------------------------------------------------------------

_OPTIONS = ("divergence", "jacobian", "n_probes", "probes", "probe", "rng", "fd_step", "h_s", "h_d")


def _closed_form(score_fn, options) -> bool:
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; expected some of {_OPTIONS}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a callable s(x, t) -> (..., d), got {type(score_fn).__name__}")
    # the closed form is used for an ExactScore unless a derivative source is forced
    forced = options.get("divergence") is not None or options.get("jacobian") is not None \
        or options.get("n_probes", 0) or options.get("probes") is not None
    return isinstance(score_fn, ExactScore) and not forced


class _Generic:
    """L[s] and eps[s] of an arbitrary callable at fixed rows x (N, d), times t (N,)."""

    def __init__(self, score_fn, proc, x, t, lead, div, fd_step, h_s, h_d):
        self.s, self.proc, self.x, self.t, self.lead, self.div = score_fn, proc, x, t, lead, div
        self.h, self.h_s, self.h_d = fd_step, h_s, h_d
        self.g2 = np.asarray(proc.g2(t), dtype=np.float64)
        self.f = np.asarray(proc.drift_coef(t), dtype=np.float64)

    @classmethod
    def build(cls, score_fn, proc, x, t, options):
        proc = _check_process(proc)
        x = as_float_array(x, "x", min_ndim=1)
        lead, d = x.shape[:-1], x.shape[-1]
        t = np.broadcast_to(proc.check_t(t), lead).reshape(-1)
        x = x.reshape(-1, d)
        fd_step = options.get("fd_step")
        h = _fd.default_step(proc, t) if fd_step is None else np.broadcast_to(
            as_float_array(fd_step, "fd_step"), lead).reshape(-1)
        if (h <= 0).any():
            raise ValueError(f"fd_step must be positive, got {h[h <= 0].flat[0]}")
        div = _divergence_source(score_fn, x, t, h, options)
        return cls(score_fn, proc, x, t, lead, div, h, options.get("h_s", H_S), options.get("h_d", H_D))

    def operator_at(self, xs):
        """L[s] at points xs (..., N, d) (leading stacking axes allowed), shape (...)."""
        s = _fd.call(self.s, xs, self.t)
        return 0.5 * self.g2 * (self.div(xs) + (s * s).sum(-1)) - self.f * (xs * s).sum(-1) \
            - self.f * xs.shape[-1]

    def operator(self):
        return self.operator_at(self.x).reshape(self.lead)

    def grad_operator(self):
        d = self.x.shape[-1]
        return _fd.gradient_fd(self.operator_at, self.x, self.h).reshape(self.lead + (d,))

    def dt(self):
        d = self.x.shape[-1]
        out = _fd.time_derivative(lambda tt: _fd.call(self.s, self.x, tt), self.t, self.proc, self.h_s, self.h_d)
        return out.reshape(self.lead + (d,))

    def residual(self):
        return self.dt() - self.grad_operator()


def _divergence_source(score_fn, x, t, h, options):
    """A function xs (..., N, d) -> div s (...), with the probes (if any) fixed per row."""
    jac = _fd.jacobian_hook(score_fn, options.get("jacobian"))
    exact = _fd.divergence_hook(score_fn, options.get("divergence"), options.get("jacobian"))
    probes = options.get("probes")
    n_probes = options.get("n_probes", 0)
    if probes is None and n_probes:
        n_probes = as_count(n_probes, "n_probes")
        rng = as_generator(options.get("rng"))
        probes = _fd.draw_probes(rng, n_probes, x.shape, options.get("probe", "gaussian"))
    if probes is not None:
        probes = as_float_array(probes, "probes")
        if probes.ndim == 2:
            probes = probes[None]
        if probes.shape[1:] != x.shape:
            raise ValueError(f"probes must have shape (M,) + {x.shape}, got {probes.shape}")
        return lambda xs: _fd.hutchinson_divergence(score_fn, xs, t, probes, h, jacobian=jac)
    if exact is not None:
        return lambda xs: _fd.call(exact, xs, t, tail=(), name="divergence")
    return lambda xs: _fd.divergence_fd(score_fn, xs, t, h)


def fpe_operator(score_fn, proc, x, t, **options):
    """L[s](x, t) = 1/2 g^2 (div s + ||s||^2) - f(t) <x, s> - f(t) d, shape (...).

    FP-Diffusion Eq. 7; SEEDS_SPEC §4.2. For the exact score this equals d/dt log p_t(x).
    ``x`` is (..., d); ``t`` broadcasts against ``x.shape[:-1]``. An ``ExactScore`` is evaluated in
    closed form; for any other callable ``s(x (P, d), t (P,)) -> (P, d)`` the divergence comes from
    (first match) ``probes`` (M, N, d) / ``n_probes`` (Hutchinson, with ``rng`` and
    ``probe`` in ``"gaussian" | "rademacher" | "sphere"``), ``divergence(x, t)``, ``jacobian(x, t)``,
    or central differences with step ``fd_step`` (default :func:`scoremc._fd.default_step`).
    """
    if _closed_form(score_fn, options):
        return _exact_operator(score_fn, proc, x, t)
    return _Generic.build(score_fn, proc, x, t, options).operator()


def fpe_residual(score_fn, proc, x, t, **options):
    """eps[s](x, t) = d/dt s - grad_x L[s] (FP-Diffusion Eq. 9), shape (..., d); zero for the
    exact score.

    An ``ExactScore`` is evaluated in closed form. For any other callable: d/dt s by
    :func:`time_derivative` (``h_s`` = 1e-3, ``h_d`` = 5e-4; error h_s h_d d^3s/dt^3 / 6), and
    grad_x L by central differences of :func:`fpe_operator` (same keyword options). ``proc`` may
    differ from the process the score belongs to (then the residual measures how far the score of
    one process is from solving the other's score-FPE).
    """
    if _closed_form(score_fn, options):
        return _exact_residual(score_fn, proc, x, t)
    return _Generic.build(score_fn, proc, x, t, options).residual()


def time_derivative(score_fn, proc, x, t, *, h_s: float = H_S, h_d: float = H_D):
    """d/dt s(x, t) at fixed x by the 3-point stencil of FP-Diffusion Lemma C.1 (FLAG-F2), one-sided
    where t - h_s or t + h_d leaves the domain of ``proc``; see :func:`scoremc._fd.time_derivative`.
    ``x`` (..., d), ``t`` broadcasting against ``x.shape[:-1]``; returns (..., d)."""
    proc = _check_process(proc)
    x = as_float_array(x, "x", min_ndim=1)
    t = np.broadcast_to(proc.check_t(t), x.shape[:-1])
    return _fd.time_derivative(lambda tt: _fd.call(score_fn, x, tt), t, proc, h_s, h_d)
