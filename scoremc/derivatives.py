"""Derivative sources: how the x-derivatives of a score callable s(x, t) are obtained.

An objective or an FPE function that needs derivatives carries one of these objects (as diffrax
carries its step-size controller), e.g. ``SSM(divergence=Hutchinson(1))`` or
``fpe_residual(s, proc, x, t, derivatives=Autograd())``:

* :class:`Exact` — the closed forms of an :class:`~scoremc.analytic.AnalyticScore` (``exact_score``);
* :class:`Jacobian` / :class:`Divergence` — a user callable ``J(x, t)`` -> (P, d, d) with
  ``J[i, j] = d s_i / d x_j``, or ``div(x, t)`` -> (P,);
* :class:`CentralDifference` — central finite differences in x with a per-row step;
* :class:`Hutchinson` — the unbiased trace estimator v^T J v with E[v v^T] = I (FP-Diffusion §5,
  App. C; LCSS §2.1), J v from another source (central differences by default);
* :class:`Autograd` — torch autograd (exact; differentiable, so parameter gradients flow).

Every source works on NumPy and torch except :class:`Autograd` (torch only). Score callables are
evaluated on stacked batches (..., P, d) through one flattened call
(:func:`scoremc._validation.call_score`), so a network sees one large batch.
"""
from __future__ import annotations

import abc
import math
import sys
from dataclasses import dataclass
from typing import Callable, ClassVar

from . import _random
from ._array import device_of, is_numpy, matvec, namespace
from ._validation import as_array, as_count, as_generator, call_score, check_callable
from .analytic import AnalyticScore

__all__ = ["DerivativeSource", "Exact", "Jacobian", "Divergence", "CentralDifference", "Hutchinson", "Autograd",
           "default_step", "draw_probes", "PROBES", "resolve"]

#: probe laws, each scaled to E[v v^T] = I: Gaussian N(0, I) (FP-Diffusion code), Rademacher,
#: and uniform on the sphere of radius sqrt(d)
PROBES = ("gaussian", "rademacher", "sphere")


def default_step(proc, t, rel: float = 1e-4):
    """Spatial finite-difference step rel * sqrt(alpha^2 + sigma^2): the scale of x_t for unit-scale
    data. Central differences of first (second) derivatives then err by ~rel^2 (and round-off by
    ~eps/rel, eps/rel^2) relative to the field's own scale; pass a step for other data scales."""
    c = proc.at(t)
    return rel * (c.alpha * c.alpha + c.sigma * c.sigma) ** 0.5


def draw_probes(rng, m: int, shape: tuple, law: str = "gaussian", dtype=None):
    """m probe vectors per row, shape (m,) + shape, with E[v v^T] = I (see :data:`PROBES`)."""
    if law not in PROBES:
        raise ValueError(f"probe law must be one of {PROBES}, got {law!r}")
    full = (m,) + tuple(shape)
    if law == "rademacher":
        return _random.rademacher(rng, full, dtype)
    z = _random.normal(rng, full, dtype)
    if law == "sphere":
        xp = _random.generator_namespace(rng)
        z = z * (math.sqrt(shape[-1]) / xp.sqrt(xp.sum(z * z, axis=-1, keepdims=True)))
    return z


def _step_or_default(step, proc, t, rel=1e-4):
    if step is not None:
        return step
    if proc is None:
        raise TypeError("a finite-difference step is needed: pass proc= (for the default step) or a step")
    return default_step(proc, t, rel)


def _check_step(step):
    if step is not None:
        arr = as_array(step, "step")
        if bool(namespace(arr).any(arr <= 0)):
            raise ValueError(f"step must be positive, got {step!r}")


def _h(h, x):
    """A per-row step broadcast to x.shape[:-1], with a trailing axis."""
    xp = namespace(x)
    return xp.broadcast_to(xp.asarray(h, dtype=x.dtype, device=device_of(x)), tuple(x.shape[:-1]))[..., None]


def _axis_steps(x, h):
    """x +- h e_j stacked on a new leading axis: (2d, ..., d) (first the + steps, then the -)."""
    xp = namespace(x)
    d = x.shape[-1]
    e = xp.eye(d, dtype=x.dtype, device=device_of(x)) * _h(h, x)[..., None]  # (..., d, d): row j is h e_j
    both = xp.concat([x[..., None, :] + e, x[..., None, :] - e], axis=-2)
    return xp.moveaxis(both, -2, 0)


def gradient_fd(field, x, h):
    """grad of a scalar field by central differences; ``field(xs)`` maps (2d, ..., d) -> (2d, ...)."""
    xp = namespace(x)
    d = x.shape[-1]
    vals = field(_axis_steps(x, h))
    return xp.moveaxis((vals[:d] - vals[d:]) / (2.0 * _h(h, x)[..., 0]), 0, -1)


def _probes_like(probes, x):
    """Probes (M, ..., d) aligned for broadcasting against x (..., d) with extra leading axes."""
    xp = namespace(x)
    extra = x.ndim - (probes.ndim - 1)
    return xp.reshape(probes, (probes.shape[0],) + (1,) * extra + tuple(probes.shape[1:]))


class DerivativeSource(abc.ABC):
    """Abstract source of x-derivatives of a score callable; concrete sources are frozen dataclasses.

    Methods take the score ``fn``, points x (..., d), times t broadcasting against x.shape[:-1], the
    process (for default steps) and a generator (for random probes). A source that cannot provide a
    quantity raises ``TypeError`` saying which source can.
    """

    def jacobian(self, fn, x, t, *, proc=None, rng=None):
        """J[..., i, j] = d s_i / d x_j, shape (..., d, d)."""
        raise TypeError(f"{type(self).__name__} gives no Jacobian; use Exact(), Jacobian(fn), CentralDifference() "
                        "or Autograd()")

    def divergence(self, fn, x, t, *, proc=None, rng=None):
        """div s = tr J, shape (...)."""
        return _trace(self.jacobian(fn, x, t, proc=proc, rng=rng))

    def vjv(self, fn, x, t, v, *, proc=None):
        """v^T J v for probes v (M, ..., d), shape (M, ...)."""
        J = self.jacobian(fn, x, t, proc=proc)
        v = _probes_like(v, x)
        return namespace(x).sum(v * matvec(J, v), axis=-1)

    def spatial_step(self, proc, t):
        """The step of central differences of other quantities (e.g. grad_x L[s] in the score-FPE)."""
        return _step_or_default(None, proc, t)


def _trace(J):
    xp = namespace(J)
    return xp.sum(xp.linalg.diagonal(J), axis=-1)


@dataclass(frozen=True)
class Exact(DerivativeSource):
    """The closed forms of an :class:`~scoremc.analytic.AnalyticScore` (e.g. ``exact_score(dist, proc)``)."""

    @staticmethod
    def _analytic(fn):
        if not isinstance(fn, AnalyticScore):
            raise TypeError("Exact() needs a score with closed-form derivatives (scoremc.exact_score or an "
                            f"AnalyticScore); got {type(fn).__name__}: use CentralDifference(), Hutchinson() or "
                            "Autograd()")
        return fn

    def jacobian(self, fn, x, t, *, proc=None, rng=None):
        return self._analytic(fn).hessian(x, t)

    def divergence(self, fn, x, t, *, proc=None, rng=None):
        return self._analytic(fn).divergence(x, t)


@dataclass(frozen=True)
class _UserCallable(DerivativeSource):
    """A derivative the user computes: ``fn(x (P, d), t (P,))`` -> ``returns``. ``step``: the
    central-difference step of the quantities it does not give (grad_x L[s] in the score-FPE)."""

    fn: Callable
    step: object = None
    returns: ClassVar[str] = ""

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"{type(self).__name__} needs a callable (x, t) -> {self.returns}, got "
                            f"{type(self.fn).__name__}")
        _check_step(self.step)

    def spatial_step(self, proc, t):
        return _step_or_default(self.step, proc, t)


@dataclass(frozen=True)
class Jacobian(_UserCallable):
    """A user Jacobian ``fn(x, t)`` -> (P, d, d), ``J[i, j] = d s_i / d x_j`` (x (P, d), t (P,))."""

    returns: ClassVar[str] = "(P, d, d)"

    def jacobian(self, fn, x, t, *, proc=None, rng=None):
        return call_score(self.fn, x, t, tail=(x.shape[-1],) * 2, name="jacobian")


@dataclass(frozen=True)
class Divergence(_UserCallable):
    """A user divergence ``fn(x, t)`` -> (P,) (x (P, d), t (P,)); gives no Jacobian or J v."""

    returns: ClassVar[str] = "(P,)"

    def divergence(self, fn, x, t, *, proc=None, rng=None):
        return call_score(self.fn, x, t, tail=(), name="divergence")


@dataclass(frozen=True)
class CentralDifference(DerivativeSource):
    """Central finite differences in x. ``step``: an absolute step (scalar or per row), or None for
    :func:`default_step` of the process, ``rel`` * sqrt(alpha^2 + sigma^2)."""

    step: object = None
    rel: float = 1e-4

    def __post_init__(self):
        _check_step(self.step)
        if not (isinstance(self.rel, (int, float)) and self.rel > 0):
            raise ValueError(f"rel must be a positive number, got {self.rel!r}")

    def spatial_step(self, proc, t):
        return _step_or_default(self.step, proc, t, self.rel)

    def jacobian(self, fn, x, t, *, proc=None, rng=None):
        xp = namespace(x)
        d = x.shape[-1]
        h = self.spatial_step(proc, t)
        vals = call_score(fn, _axis_steps(x, h), t)  # (2d, ..., d)
        return xp.moveaxis((vals[:d] - vals[d:]) / (2.0 * _h(h, x)), 0, -1)

    def divergence(self, fn, x, t, *, proc=None, rng=None):
        xp = namespace(x)
        d = x.shape[-1]
        h = self.spatial_step(proc, t)
        vals = call_score(fn, _axis_steps(x, h), t)  # (2d, ..., d)
        diag = sum(vals[j, ..., j] - vals[d + j, ..., j] for j in range(d))
        return diag / (2.0 * xp.broadcast_to(xp.asarray(h, dtype=x.dtype, device=device_of(x)), x.shape[:-1]))

    def vjv(self, fn, x, t, v, *, proc=None):
        """v^T (s(x + h v) - s(x - h v)) / (2h), the step along v scaled to h / sqrt(d) so that the
        displacement |h v| is about h for E[v v^T] = I."""
        xp = namespace(x)
        v = _probes_like(v, x)
        xs = xp.broadcast_to(x[None], (v.shape[0],) + tuple(x.shape))
        vs = xp.broadcast_to(v, xs.shape)
        h = _h(self.spatial_step(proc, t), x) / math.sqrt(x.shape[-1])
        both = call_score(fn, xp.stack([xs + h * vs, xs - h * vs]), t)
        return xp.sum(vs * (both[0] - both[1]) / (2.0 * h), axis=-1)


@dataclass(frozen=True, eq=False)
class Hutchinson(DerivativeSource):
    """Hutchinson's estimator div s ~ (1/M) sum_m v_m^T J v_m with E[v v^T] = I (unbiased; variance
    2 ||sym J||_F^2 for Gaussian probes). ``n_probes`` fresh probes of ``law`` per row and call (from
    the ``rng`` of the call), or fixed ``probes`` (M, ..., d); J v from ``jvp`` (default central
    differences; Exact(), Jacobian(fn) or Autograd() for exact products)."""

    n_probes: int = 1
    law: str = "gaussian"
    probes: object = None
    jvp: DerivativeSource = CentralDifference()

    def __post_init__(self):
        as_count(self.n_probes, "n_probes")
        if self.law not in PROBES:
            raise ValueError(f"law must be one of {PROBES}, got {self.law!r}")
        if not isinstance(self.jvp, DerivativeSource) or isinstance(self.jvp, (Hutchinson, Divergence)):
            raise TypeError("jvp must be a source of J v: Exact(), Jacobian(fn), CentralDifference() or Autograd()")

    def probe_batch(self, x, rng):
        """Probes (M, ..., d) for points x: the fixed ``probes`` (checked and converted), or fresh draws."""
        xp = namespace(x)
        if self.probes is not None:
            p = as_array(self.probes, "probes", xp, like=x)
            p = p[None] if p.ndim == x.ndim else p
            if tuple(p.shape[1:]) != tuple(x.shape):
                raise ValueError(f"probes must have shape (M,) + {tuple(x.shape)}, got {tuple(p.shape)}")
            return p
        if rng is None:
            raise TypeError("rng must be a numpy.random.Generator or torch.Generator to draw Hutchinson probes "
                            "(or fix them with Hutchinson(probes=...))")
        return draw_probes(as_generator(rng), self.n_probes, tuple(x.shape), self.law,
                           None if is_numpy(xp) else x.dtype)

    def divergence(self, fn, x, t, *, proc=None, rng=None):
        v = self.probe_batch(x, rng)
        return namespace(x).mean(self.jvp.vjv(fn, x, t, v, proc=proc), axis=0)

    def vjv(self, fn, x, t, v, *, proc=None):
        return self.jvp.vjv(fn, x, t, v, proc=proc)

    def spatial_step(self, proc, t):
        return self.jvp.spatial_step(proc, t)


@dataclass(frozen=True)
class Autograd(DerivativeSource):
    """torch autograd, exact: J by d backward passes, v^T J v by one vector-Jacobian product per probe,
    all with ``create_graph=True`` so that a loss built on them back-propagates to the parameters.
    Assumes the score treats rows independently (no batch-norm across rows)."""

    @staticmethod
    def _torch(x):
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(x, torch.Tensor):
            raise TypeError("Autograd() differentiates torch tensors; NumPy input needs Exact(), Jacobian(fn), "
                            "CentralDifference() or Hutchinson()")
        return torch

    @classmethod
    def leaf(cls, x):
        """x itself when it is already part of a graph, else a detached copy that requires grad."""
        cls._torch(x)
        return x if x.requires_grad else x.detach().requires_grad_(True)

    def jacobian(self, fn, x, t, *, proc=None, rng=None):
        torch = self._torch(x)
        with torch.enable_grad():
            xl = self.leaf(x)
            s = call_score(fn, xl, t)
            rows = [torch.autograd.grad(s[..., i].sum(), xl, create_graph=True)[0] for i in range(x.shape[-1])]
        return torch.stack(rows, dim=-2)

    def divergence(self, fn, x, t, *, proc=None, rng=None):
        torch = self._torch(x)
        with torch.enable_grad():
            xl = self.leaf(x)
            s = call_score(fn, xl, t)
            return sum(torch.autograd.grad(s[..., i].sum(), xl, create_graph=True)[0][..., i]
                       for i in range(x.shape[-1]))

    def vjv(self, fn, x, t, v, *, proc=None):
        torch = self._torch(x)
        v = _probes_like(v, x)
        with torch.enable_grad():
            xl = self.leaf(x)
            s = call_score(fn, xl, t)
            out = []
            for m in range(v.shape[0]):
                vm = torch.broadcast_to(v[m], s.shape)
                jtv = torch.autograd.grad((s * vm).sum(), xl, create_graph=True)[0]  # J^T v
                out.append((vm * jtv).sum(-1))
        return torch.stack(out)


def resolve(derivatives, fn, name: str = "derivatives") -> DerivativeSource:
    """The source to use: ``derivatives`` itself, or by default Exact() for an AnalyticScore and
    CentralDifference() otherwise."""
    check_callable(fn, "score_fn")
    if fn is None:
        raise TypeError("score_fn must be a callable s(x, t) -> (..., d), got None")
    if derivatives is None:
        return Exact() if isinstance(fn, AnalyticScore) else CentralDifference()
    if not isinstance(derivatives, DerivativeSource):
        raise TypeError(f"{name} must be a scoremc derivative source (Exact(), Jacobian(fn), Divergence(fn), "
                        f"CentralDifference(), Hutchinson(), Autograd()), got {type(derivatives).__name__}")
    return derivatives
