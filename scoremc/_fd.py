"""Derivatives of arbitrary score callables: hooks, finite differences and Hutchinson probes.

A score callable is ``s(x, t)`` with x (P, d) and t (P,) -> (P, d). Everything here evaluates
it on stacked batches ``(..., P, d)`` through :func:`call`, which flattens the leading axes into
one call (so a network sees one large batch) and checks the returned shape.

Derivative sources, in order of preference: a user-supplied callable (``jacobian(x, t)`` ->
(P, d, d) with ``J[i, j] = d s_i / d x_j``, ``divergence(x, t)`` -> (P,)), the closed forms of an
:class:`~scoremc.noising.ExactScore`, then central finite differences (or Hutchinson probes).
"""
from __future__ import annotations

import numpy as np

from .noising import ExactScore
from .processes import Process

__all__ = ["call", "jacobian_hook", "divergence_hook", "default_step", "directional_derivative",
           "jacobian_fd", "divergence_fd", "hutchinson_divergence", "gradient_fd", "draw_probes",
           "time_derivative", "PROBES"]

#: probe laws, each scaled to E[v v^T] = I: Gaussian N(0, I) (FP-Diffusion code), Rademacher,
#: and uniform on the sphere of radius sqrt(d)
PROBES = ("gaussian", "rademacher", "sphere")


def call(fn, x, t, tail=None, name="score_fn"):
    """fn on x (..., d) with t broadcast to x.shape[:-1]; result reshaped to x.shape[:-1] + tail.

    ``tail`` defaults to (d,) (a vector field); pass () for scalar fields, (d, d) for Jacobians.
    """
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    tail = (d,) if tail is None else tuple(tail)
    lead = x.shape[:-1]
    tt = np.ascontiguousarray(np.broadcast_to(np.asarray(t, dtype=np.float64), lead).reshape(-1))
    out = np.asarray(fn(np.ascontiguousarray(x.reshape(-1, d)), tt), dtype=np.float64)
    want = (tt.size,) + tail
    if out.shape != want:
        raise ValueError(f"{name}(x, t) must return shape {want} for x of shape {(tt.size, d)}, got {out.shape}")
    return out.reshape(lead + tail)


def _check_callable(fn, name):
    if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be a callable (x, t) -> array, got {type(fn).__name__}")
    return fn


def jacobian_hook(score_fn, jacobian=None):
    """The exact Jacobian callable if one is known (user-supplied, or ExactScore.hessian), else None."""
    if _check_callable(jacobian, "jacobian") is not None:
        return jacobian
    return score_fn.hessian if isinstance(score_fn, ExactScore) else None


def divergence_hook(score_fn, divergence=None, jacobian=None):
    """The exact divergence callable if one is known, else None."""
    if _check_callable(divergence, "divergence") is not None:
        return divergence
    if _check_callable(jacobian, "jacobian") is not None:
        return lambda x, t: np.trace(np.asarray(jacobian(x, t)), axis1=-2, axis2=-1)
    return score_fn.divergence if isinstance(score_fn, ExactScore) else None


def default_step(proc: Process, t, rel: float = 1e-4):
    """Spatial finite-difference step rel * sqrt(alpha^2 + sigma^2): the scale of x_t for unit-scale
    data. Central differences of first (second) derivatives then err by ~rel^2 (and round-off by
    ~eps/rel, eps/rel^2) relative to the field's own scale; pass ``fd_step`` for other data scales."""
    a, s = np.asarray(proc.alpha(t)), np.asarray(proc.sigma(t))
    return rel * np.sqrt(a * a + s * s)


def _h(h, lead):
    return np.broadcast_to(np.asarray(h, dtype=np.float64), lead)[..., None]


def directional_derivative(fn, x, t, v, h):
    """J v by central differences, (s(x + h v) - s(x - h v)) / (2h); x, v broadcast to (..., d)."""
    x, v = np.broadcast_arrays(x, v)
    hh = _h(h, x.shape[:-1])
    both = call(fn, np.stack([x + hh * v, x - hh * v]), t)
    return (both[0] - both[1]) / (2.0 * hh)


def _axis_steps(x, h):
    """x +- h e_j stacked on a new leading axis: (2d, ..., d) (first the + steps, then the -)."""
    d = x.shape[-1]
    e = np.eye(d) * _h(h, x.shape[:-1])[..., None]  # (..., d, d): row j is h e_j
    return np.moveaxis(np.concatenate([x[..., None, :] + e, x[..., None, :] - e], axis=-2), -2, 0)


def jacobian_fd(fn, x, t, h):
    """J[..., i, j] = d s_i / d x_j by central differences (one stacked call, 2d points per row)."""
    d = x.shape[-1]
    vals = call(fn, _axis_steps(x, h), t)  # (2d, ..., d)
    diff = (vals[:d] - vals[d:]) / (2.0 * _h(h, x.shape[:-1]))  # (j, ..., i)
    return np.moveaxis(diff, 0, -1)


def divergence_fd(fn, x, t, h):
    """div s = sum_j d s_j / d x_j by central differences (the exact trace, 2d points per row)."""
    d = x.shape[-1]
    vals = call(fn, _axis_steps(x, h), t)  # (2d, ..., d)
    j = np.arange(d)
    diag = vals[j, ..., j] - vals[d + j, ..., j]  # (d, ...)
    return diag.sum(0) / (2.0 * np.broadcast_to(np.asarray(h, dtype=np.float64), x.shape[:-1]))


def _probes_like(probes, x):
    """Probes (M, ..., d) aligned for broadcasting against x (..., d) with extra leading axes."""
    extra = x.ndim - (probes.ndim - 1)
    return probes.reshape((probes.shape[0],) + (1,) * extra + probes.shape[1:])


def hutchinson_divergence(fn, x, t, probes, h, jacobian=None):
    """(1/M) sum_m v_m^T J v_m for probes (M, N, d) with E[v v^T] = I (FP-Diffusion §5, App. C;
    LCSS §2.1): unbiased for div s. J v from the exact ``jacobian`` if given, else by central
    differences. ``x`` is (..., N, d) (leading stacking axes allowed)."""
    v = _probes_like(probes, x)
    if jacobian is not None:
        J = call(jacobian, x, t, tail=(x.shape[-1],) * 2, name="jacobian")
        return np.einsum("m...i,...ij,m...j->...", v, J, v) / len(probes)
    xs, vs = np.broadcast_arrays(x[None], v)
    Jv = directional_derivative(fn, xs, t, vs, h)
    return (vs * Jv).sum(-1).mean(0)


def gradient_fd(field, x, h):
    """grad of a scalar field by central differences; ``field(xs)`` maps (2d, ..., d) -> (2d, ...)."""
    d = x.shape[-1]
    vals = field(_axis_steps(x, h))
    diff = (vals[:d] - vals[d:]) / (2.0 * np.broadcast_to(np.asarray(h, dtype=np.float64), x.shape[:-1]))
    return np.moveaxis(diff, 0, -1)


def draw_probes(rng: np.random.Generator, m: int, shape: tuple, law: str = "gaussian") -> np.ndarray:
    """m probe vectors per row, shape (m,) + shape, with E[v v^T] = I (see :data:`PROBES`)."""
    if law not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {law!r}")
    if law == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(m,) + tuple(shape))
    z = rng.standard_normal((m,) + tuple(shape))
    if law == "sphere":
        z *= np.sqrt(shape[-1]) / np.linalg.norm(z, axis=-1, keepdims=True)
    return z


def time_derivative(fn, t, proc: Process, h_s: float = 1e-3, h_d: float = 5e-4):
    """d/dt fn(t) by the non-uniform 3-point stencil of FP-Diffusion Lemma C.1 (Fornberg),
    with the reconstruction of FLAG-F2:

        f'(t) ~ [h_s^2 f(t + h_d) + (h_d^2 - h_s^2) f(t) - h_d^2 f(t - h_s)] / [h_s h_d (h_s + h_d)],

    error h_s h_d f'''(t) / 6 (exact for quadratics). Where t - h_s leaves the process's domain
    (t < h_s: training starts at t ~ 1e-5), the one-sided forward stencil
    [-3 f(t) + 4 f(t + h_d) - f(t + 2 h_d)] / (2 h_d) (error -h_d^2 f''' / 3) is used; where t + h_d
    leaves it, the backward one [3 f(t) - 4 f(t - h_s) + f(t - 2 h_s)] / (2 h_s) (error -h_s^2 f'''/3).

    ``fn(tt)`` takes per-row times shaped like ``t`` and returns (...) + tail; ``t`` is per row.
    """
    if not (h_s > 0 and h_d > 0):
        raise ValueError(f"h_s and h_d must be positive, got {h_s}, {h_d}")
    t = np.asarray(t, dtype=np.float64)

    def inside(tt):
        above = (tt >= proc.t_max) if proc.t_max_open else (tt > proc.t_max)
        return (tt >= proc.t_min) & ~above

    central = inside(t - h_s) & inside(t + h_d)
    forward = ~central & inside(t + 2 * h_d)
    backward = ~central & ~forward & inside(t - 2 * h_s)
    if not (central | forward | backward).all():
        bad = t[~(central | forward | backward)].flat[0]
        raise ValueError(f"t={bad}: the time stencil (h_s={h_s}, h_d={h_d}) does not fit in the domain of {proc!r}")
    D = h_s * h_d * (h_s + h_d)
    o1 = np.select([central, forward], [h_d, h_d], -h_s)
    o2 = np.select([central, forward], [-h_s, 2 * h_d], -2 * h_s)
    c0 = np.select([central, forward], [(h_d**2 - h_s**2) / D, -1.5 / h_d], 1.5 / h_s)
    c1 = np.select([central, forward], [h_s**2 / D, 2.0 / h_d], -2.0 / h_s)
    c2 = np.select([central, forward], [-h_d**2 / D, -0.5 / h_d], 0.5 / h_s)
    f0, f1, f2 = fn(t), fn(t + o1), fn(t + o2)
    extra = (slice(None),) * t.ndim + (None,) * (np.ndim(f0) - t.ndim)
    return c0[extra] * f0 + c1[extra] * f1 + c2[extra] * f2
