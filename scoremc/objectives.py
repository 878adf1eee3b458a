"""Training objectives as types, evaluated per sample by one generic verb :func:`loss`.

Every objective sees the same batch: a score callable ``s(x, t)`` (x (N, d), t (N,) -> (N, d)),
clean samples x0 (N, d), noise eps (N, d) and times t (scalar or (N,)), with

    x_t = alpha(t) x0 + sigma(t) eps          (FLAG-L5: the kernel mean is alpha x0 for every process)

and returns the per-sample loss (N,), multiplied by an optional weighting lambda(t) (in score
space, :meth:`scoremc.weighting.Weighting.score_space`). Averaging over x0 ~ p0, eps ~ N(0, I),
t ~ q_t gives the objective.

Regressions onto a score identity's integrand L (DESIGN.md), value ||s(x_t, t) - L||^2
(TSM Eq. 3 / Eq. 19 and STF Eq. 2 convention, no factor 1/2):

* ``DSM()``         L = DSI.integrand = (alpha x0 - x_t) / sigma^2      (TSM Eq. 3; STF Eq. 1)
* ``TSM()``         L = TSI.integrand = grad log p0(x0) / alpha         (TSM Prop. 2.3, Eq. 8)
* ``MixSM(w)``      L = Mix(w).integrand                                (TSM §4.1, Eq. 19)
* ``STFLoss(n)``    L = STF.target over {x0, n - 1 reference points}    (STF Eq. 6)

Objectives that are not regressions (their own types; LCSS, SSM and FD-SSM live in
:mod:`scoremc.stein`):

* ``LCSS(gamma)``   gamma <s, (x_t - alpha x0)/sigma^2> + 1/2 ||s||^2     (LCSS Eqs. 19, 21)
* ``SSM()``         (1/eps^2) v^T (grad s) v + ||s||^2 / (2d)             (LCSS Eq. 6)
* ``FDSSM(eps)``    the finite-difference form of SSM                      (LCSS Eq. 7)
* ``FPRegularized(alpha, beta, m)``  1/2 g^2 ||s - L_DSI||^2 + alpha/d^m lambda_FP ||eps[s]||^m + beta |L[s]|
                                                                          (FP-Diffusion Eq. 19)

Derivatives (SSM, FP) come from ``jacobian`` / ``divergence`` callables when given, from the closed
forms of an :class:`~scoremc.noising.ExactScore`, and otherwise from central differences or
Hutchinson probes (:mod:`scoremc._fd`).
"""
from __future__ import annotations

import abc
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from . import _fd
from ._validation import as_count, as_float_array, as_generator
from .fpe import H_D, H_S, fpe_operator, fpe_residual
from .identities import DSI, STF, TSI, Identity, Mix
from .noising import _check_process
from .targets import _parts_of, sample
from .weighting import Likelihood, Uniform, Weighting

__all__ = ["Objective", "DSM", "TSM", "MixSM", "STFLoss", "FPRegularized", "loss"]


@dataclass(frozen=True, eq=False)
class Batch:
    """Validated inputs of one :func:`loss` call (t is per row)."""

    score_fn: Callable
    dist: object
    proc: object
    t: np.ndarray
    x0: np.ndarray
    eps: np.ndarray
    xt: np.ndarray
    rng: object
    jacobian: object
    divergence: object
    probes: object
    ref: object
    fd_step: object
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def s(self) -> np.ndarray:
        """s(x_t, t), (N, d), evaluated once per batch."""
        if "s" not in self._cache:
            self._cache["s"] = _fd.call(self.score_fn, self.xt, self.t)
        return self._cache["s"]

    @property
    def dim(self) -> int:
        return self.x0.shape[-1]

    def step(self):
        return _fd.default_step(self.proc, self.t) if self.fd_step is None else self.fd_step

    def probe_batch(self, n_probes: int, law: str, scale: float) -> np.ndarray:
        """Probes v (M, N, d) with E[v v^T] = scale^2 I / d: the given ``probes`` or fresh draws."""
        if self.probes is not None:
            p = as_float_array(self.probes, "probes")
            p = p[None] if p.ndim == 2 else p
            if p.shape[1:] != self.x0.shape:
                raise ValueError(f"probes must have shape (M,) + {self.x0.shape}, got {p.shape}")
            return p
        rng = as_generator(self.rng)
        return _fd.draw_probes(rng, n_probes, self.x0.shape, law) * (scale / math.sqrt(self.dim))


def _by_time(t: np.ndarray, fn, n: int, tail: tuple) -> np.ndarray:
    """out[rows] = fn(t_j, rows) for each distinct time t_j (rows found by sorting, O(N log N))."""
    times, inverse = np.unique(t, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(times) + 1))
    out = np.empty((n,) + tail)
    for j, tj in enumerate(times):
        rows = order[bounds[j]:bounds[j + 1]]
        out[rows] = fn(float(tj), rows)
    return out


class Objective(abc.ABC):
    """Abstract training objective; concrete objectives are final frozen dataclasses."""

    @property
    @abc.abstractmethod
    def name(self) -> str: ...

    @abc.abstractmethod
    def per_sample(self, b: Batch) -> np.ndarray:
        """Unweighted per-sample values (N,)."""


class Regression(Objective):
    """||s(x_t, t) - L(x0, x_t, t)||^2 for the integrand L of :attr:`identity` (TSM Eq. 19)."""

    @property
    @abc.abstractmethod
    def identity(self) -> Identity: ...

    def target(self, b: Batch) -> np.ndarray:
        """The regression targets L (N, d), the identity's integrand at each row's time."""
        ident = self.identity
        return _by_time(b.t, lambda tj, r: ident.integrand(b.dist, b.proc, tj, b.x0[r], b.xt[r]),
                        len(b.t), (b.dim,))

    def per_sample(self, b: Batch) -> np.ndarray:
        diff = b.s - self.target(b)
        return (diff * diff).sum(-1)


@dataclass(frozen=True)
class DSM(Regression):
    """Denoising score matching: regression onto DSI (TSM Eq. 3; STF Eq. 1-2; LCSS Eq. 8 without 1/2)."""

    @property
    def identity(self) -> Identity:
        return DSI()

    @property
    def name(self) -> str:
        return "dsm"


@dataclass(frozen=True)
class TSM(Regression):
    """Target score matching: regression onto TSI = grad log p0(x0) / alpha (TSM Prop. 2.3, Cor. 2.4,
    Eq. 8). Needs a target with a score (not an ``Empirical``). TSM Eq. 6: at a fixed t,
    TSM - DSM = E||grad log p0||^2 / alpha^2 - d / sigma^2 for every score function."""

    @property
    def identity(self) -> Identity:
        return TSI()

    @property
    def name(self) -> str:
        return "tsm"


@dataclass(frozen=True)
class MixSM(Regression):
    """Regression onto w DSI + (1 - w) TSI (TSM §4.1, Eq. 19); ``w`` as :class:`scoremc.identities.Mix`
    (a number, a callable of t, ``"kappa"`` or ``"kappa_bar"``). ``"kappa"`` with the cosine schedule
    and sigma_data = 1 is the Phillips et al. target (TSM Eq. 9)."""

    w: Union[float, str, Callable] = "kappa"

    def __post_init__(self):
        if isinstance(self.w, str) and self.w == "optimal":
            raise ValueError("w='optimal' depends on x_t through the posterior and is not a regression target; "
                             "use a number, a callable of t, 'kappa' or 'kappa_bar'")
        Mix(self.w)  # validates w

    @property
    def identity(self) -> Identity:
        return Mix(self.w)

    @property
    def name(self) -> str:
        return f"mixsm({self.identity.name})"


@dataclass(frozen=True)
class STFLoss(Regression):
    """Stable target field loss (STF Eq. 6): regression onto STF.target over the reference batch
    {x0, x_2, ..., x_n}, n = ``n_ref``; x_t is made from x0, which stays in the batch. The other
    n - 1 points are ``ref`` ((N, n-1, d) per row or (n-1, d) shared; Algorithm 1) or fresh draws
    from p0 with ``rng``. ``n_ref = 1`` is DSM exactly."""

    n_ref: int = 2

    def __post_init__(self):
        as_count(self.n_ref, "n_ref")

    @property
    def identity(self) -> Identity:
        return STF(self.n_ref)

    @property
    def name(self) -> str:
        return f"stf({self.n_ref})"

    def target(self, b: Batch) -> np.ndarray:
        n, d = b.x0.shape
        k = self.n_ref - 1
        if b.ref is not None:
            others = as_float_array(b.ref, "ref")
            if others.shape == (k, d):
                others = np.broadcast_to(others, (n, k, d))
            if others.shape != (n, k, d):
                raise ValueError(f"ref must have shape (n_ref-1, d)={(k, d)} or (N, n_ref-1, d)={(n, k, d)}, "
                                 f"got {others.shape}")
        elif k:
            if b.dist is None:
                raise ValueError("STFLoss needs dist (to draw the reference batch) or ref")
            others = sample(b.dist, n * k, as_generator(b.rng)).reshape(n, k, d)
        else:
            others = np.empty((n, 0, d))
        ref = np.concatenate([b.x0[:, None, :], others], axis=1)
        return _by_time(b.t, lambda tj, r: STF.target(b.proc, tj, b.xt[r], ref[r]), n, (d,))


@dataclass(frozen=True)
class FPRegularized(Objective):
    """Score-FPE-regularised DSM (FP-Diffusion Eq. 19 with R_FP of §5):

        1/2 lambda(t) ||s - L_DSI||^2 + (alpha / d^m) lambda_FP(t) ||eps[s](x_t, t)||_2^m + beta |L[s](x_t, t)|,

    lambda = ``dsm_weighting`` (g^2 in the paper), eps[s] and L[s] from :func:`scoremc.fpe_residual`
    / :func:`scoremc.fpe_operator` evaluated at the perturbed x_t. alpha = beta = 0 is vanilla DSM
    (with FP-Diffusion's 1/2). Defaults are the paper's synthetic-data recipe
    (alpha, beta, lambda_FP, m) = (0.0015, 0, 1, 1); CIFAR used (0.15, 0.01, g^2, 2). The 1/d^m
    normalisation is an OCR reconstruction matching the public code. ``n_probes`` = 0 takes div s
    exactly (closed form / callable / central differences), >= 1 by Hutchinson (the paper: M = 1).
    """

    alpha: float = 0.0015
    beta: float = 0.0
    m: float = 1.0
    lambda_fp: Weighting = Uniform()
    dsm_weighting: Weighting = Likelihood()
    n_probes: int = 0
    h_s: float = H_S
    h_d: float = H_D

    def __post_init__(self):
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (isinstance(self.m, numbers.Real) and self.m > 0):
            raise ValueError(f"m must be positive, got {self.m!r}")
        for name in ("lambda_fp", "dsm_weighting"):
            if not isinstance(getattr(self, name), Weighting):
                raise TypeError(f"{name} must be a scoremc Weighting, got {type(getattr(self, name)).__name__}")
        if isinstance(self.n_probes, bool) or not isinstance(self.n_probes, numbers.Integral) or self.n_probes < 0:
            raise ValueError(f"n_probes must be an integer >= 0, got {self.n_probes!r}")

    @property
    def name(self) -> str:
        return f"fp({self.alpha:g},{self.beta:g},{self.m:g})"

    def per_sample(self, b: Batch) -> np.ndarray:
        out = 0.5 * self.dsm_weighting.score_space(b.proc, b.t) * DSM().per_sample(b)
        opts = dict(divergence=b.divergence, jacobian=b.jacobian, fd_step=b.fd_step, h_s=self.h_s, h_d=self.h_d)
        if b.probes is not None:
            opts.update(probes=b.probes)
        elif self.n_probes:
            opts.update(n_probes=self.n_probes, rng=as_generator(b.rng))
        if self.alpha:
            res = fpe_residual(b.score_fn, b.proc, b.xt, b.t, **opts)
            norm = np.linalg.norm(res, axis=-1)
            out = out + self.alpha / b.dim**self.m * self.lambda_fp.score_space(b.proc, b.t) * norm**self.m
        if self.beta:
            out = out + self.beta * np.abs(fpe_operator(b.score_fn, b.proc, b.xt, b.t, **opts))
        return out


def loss(objective: Objective, score_fn, dist, proc, t, x0, eps, *, rng=None, weighting: Weighting = None,
         jacobian=None, divergence=None, probes=None, ref=None, fd_step=None) -> np.ndarray:
    """Per-sample losses (N,) of ``objective`` for the score callable ``score_fn`` (float64).

    ``x0``, ``eps``: (N, d); ``t``: scalar or (N,) in the domain of ``proc``; x_t = alpha x0 + sigma eps.
    ``dist`` is the target (needed by TSM/MixSM, and by STFLoss without ``ref``; may be None
    otherwise). ``weighting`` multiplies by lambda(t) in score space (default 1); FPRegularized
    carries its own weights and refuses it. ``rng`` (a numpy Generator) is needed only for random
    parts: STF reference draws, SSM/FD-SSM probes, Hutchinson. ``jacobian(x, t)`` -> (N, d, d) and
    ``divergence(x, t)`` -> (N,) replace finite differences; ``probes`` (M, N, d) fixes the probe
    vectors (the v of LCSS Eqs. 6-7, or Hutchinson probes with E[v v^T] = I for FPRegularized);
    ``ref`` is the STF reference batch; ``fd_step`` the spatial finite-difference step.
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a scoremc Objective (DSM(), TSM(), ...), got {type(objective).__name__}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a callable s(x, t) -> (N, d), got {type(score_fn).__name__}")
    proc = _check_process(proc)
    x0 = as_float_array(x0, "x0", ndim=2)
    eps = as_float_array(eps, "eps", ndim=2)
    if eps.shape != x0.shape:
        raise ValueError(f"eps must have the shape of x0 {x0.shape}, got {eps.shape}")
    if dist is not None and _parts_of(dist).dim != x0.shape[1]:
        raise ValueError(f"x0 must have trailing dimension d={_parts_of(dist).dim} of dist, got shape {x0.shape}")
    t = proc.check_t(t)
    if t.ndim > 1 or (t.ndim == 1 and len(t) != len(x0)):
        raise ValueError(f"t must be a scalar or have shape (N,)={(len(x0),)}, got {t.shape}")
    t = np.broadcast_to(t, (len(x0),)).copy()
    xt = np.asarray(proc.alpha(t))[:, None] * x0 + np.asarray(proc.sigma(t))[:, None] * eps
    if weighting is not None and not isinstance(weighting, Weighting):
        raise TypeError(f"weighting must be a scoremc Weighting or None, got {type(weighting).__name__}")
    if weighting is not None and isinstance(objective, FPRegularized):
        raise ValueError("FPRegularized carries its own weights (dsm_weighting, lambda_fp); pass weighting=None")
    b = Batch(score_fn, dist, proc, t, x0, eps, xt, rng, jacobian, divergence, probes, ref, fd_step)
    out = objective.per_sample(b)
    if weighting is not None:
        out = out * weighting.score_space(proc, t)
    return out
