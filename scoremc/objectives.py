"""Training objectives as types, evaluated per sample by one generic verb :func:`loss`.

Every objective sees the same batch: a score callable ``s(x, t)`` (x (N, d), t (N,) -> (N, d)),
clean samples x0 (N, d), noise eps (N, d) and per-row times t, with

    x_t = alpha(t) x0 + sigma(t) eps          (FLAG-L5: the kernel mean is alpha x0 for every process)

and returns the per-sample loss (N,), multiplied by an optional weighting lambda(t) (in score
space, :meth:`scoremc.weighting.Weighting.score_space`). Averaging over x0 ~ p0, eps ~ N(0, I),
t ~ q_t gives the objective. One formula, two array libraries: with NumPy arrays the loss is
float64 NumPy; with torch tensors (and a ``torch.nn.Module`` as the score) it is a differentiable
tensor on the input's device, from the same expressions (coefficients per row, shape (N, 1)).

Regressions onto a score identity's integrand L, value ||s(x_t, t) - L||^2 (TSM Eq. 3 / Eq. 19 and
STF Eq. 2 convention, no factor 1/2):

* ``DSM()``         L = DSI integrand = (alpha x0 - x_t) / sigma^2      (TSM Eq. 3; STF Eq. 1)
* ``TSM()``         L = TSI integrand = grad log p0(x0) / alpha         (TSM Prop. 2.3, Eq. 8)
* ``MixSM(w)``      L = Mix(w) integrand                                (TSM §4.1, Eq. 19)
* ``STFLoss(n)``    L = stf_target over {x0, n - 1 reference points}    (STF Eq. 6)

Objectives that are not regressions are their own types: ``LCSS`` (:mod:`scoremc.lcss`), ``SSM``
and ``FDSSM`` (:mod:`scoremc.sliced`), ``FPRegularized`` (:mod:`scoremc.fp_regularized`); those
that need derivatives carry a derivative source (:mod:`scoremc.derivatives`).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, ClassVar, Union

from ._array import namespace
from ._validation import as_array, as_count, call_score, check_process
from .distributions import normal_form
from .identities import DSI, STF, TSI, Mix, WeightRule, PointwiseIdentity
from .processes import Coefficients
from .weighting import Weighting

__all__ = ["Objective", "Batch", "Regression", "DSM", "TSM", "MixSM", "STFLoss", "loss"]


@dataclass(frozen=True, eq=False)
class Batch:
    """Validated inputs of one :func:`loss` call: per-row times ``t`` (N,), their coefficients
    ``coef`` (each (N, 1)), x0, eps and x_t (N, d), all in the namespace ``xp`` of the inputs."""

    score_fn: Callable
    dist: object
    proc: object
    t: object
    coef: Coefficients
    x0: object
    eps: object
    xt: object
    rng: object
    ref: object

    @property
    def xp(self):
        return namespace(self.x0)

    @cached_property
    def s(self):
        """s(x_t, t), (N, d), evaluated once per batch."""
        return call_score(self.score_fn, self.xt, self.t)

    @property
    def dim(self) -> int:
        return self.x0.shape[-1]


class Objective(abc.ABC):
    """Abstract training objective; concrete objectives are final frozen dataclasses."""

    name: ClassVar[str]
    #: whether :func:`loss` may multiply by a ``weighting`` (False for objectives with their own weights)
    accepts_weighting: ClassVar[bool] = True

    @abc.abstractmethod
    def per_sample(self, b: Batch):
        """Unweighted per-sample values (N,)."""


class Regression(Objective):
    """||s(x_t, t) - L(x0, x_t, t)||^2 for the integrand L of :attr:`identity` (TSM Eq. 19)."""

    identity: ClassVar[PointwiseIdentity]

    def regression_target(self, b: Batch):
        """The regression targets L (N, d): the identity's integrand at each row's own time."""
        return self.identity.integrand(b.dist, b.coef, b.x0, b.xt, b.rng)

    def per_sample(self, b: Batch):
        diff = b.s - self.regression_target(b)
        return b.xp.sum(diff * diff, axis=-1)


@dataclass(frozen=True)
class DSM(Regression):
    """Denoising score matching: regression onto DSI (TSM Eq. 3; STF Eq. 1-2; LCSS Eq. 8 without 1/2)."""

    name: ClassVar[str] = "dsm"
    identity: ClassVar[PointwiseIdentity] = DSI()


@dataclass(frozen=True)
class TSM(Regression):
    """Target score matching: regression onto TSI = grad log p0(x0) / alpha (TSM Prop. 2.3, Cor. 2.4,
    Eq. 8). Needs a target with a score (not an ``Empirical``). TSM Eq. 6: at a fixed t,
    TSM - DSM = E||grad log p0||^2 / alpha^2 - d / sigma^2 for every score function."""

    name: ClassVar[str] = "tsm"
    identity: ClassVar[PointwiseIdentity] = TSI()


@dataclass(frozen=True)
class MixSM(Regression):
    """Regression onto w DSI + (1 - w) TSI (TSM §4.1, Eq. 19); ``w`` as :class:`scoremc.Mix`: a number, a
    callable of t, ``Kappa()`` or ``KappaBar()``. ``Kappa()`` with the cosine schedule and
    sigma_data = 1 is the Phillips et al. target (TSM Eq. 9)."""

    w: Union[float, Callable, WeightRule]

    def __post_init__(self):
        Mix(self.w)  # validates w

    @property
    def identity(self) -> PointwiseIdentity:
        return Mix(self.w)

    @property
    def name(self) -> str:
        return f"mixsm({self.identity.name})"


@dataclass(frozen=True)
class STFLoss(Regression):
    """Stable target field loss (STF Eq. 6): regression onto the STF target over the reference batch
    {x0, x_2, ..., x_n}, n = ``n_ref``; x_t is made from x0, which stays in the batch. The other
    n - 1 points are ``ref`` of :func:`loss` ((N, n-1, d) per row or (n-1, d) shared; Algorithm 1) or
    fresh draws from p0 with ``rng``. ``n_ref = 1`` is DSM exactly."""

    n_ref: int = 2

    def __post_init__(self):
        as_count(self.n_ref, "n_ref")

    @property
    def identity(self) -> PointwiseIdentity:
        return STF(self.n_ref)

    @property
    def name(self) -> str:
        return f"stf({self.n_ref})"

    def regression_target(self, b: Batch):
        n, d = b.x0.shape
        k = self.n_ref - 1
        others = None
        if b.ref is not None:
            others = as_array(b.ref, "ref", b.xp, like=b.x0)
            if tuple(others.shape) not in ((k, d), (n, k, d)):
                raise ValueError(f"ref must have shape (n_ref-1, d)={(k, d)} or (N, n_ref-1, d)={(n, k, d)}, "
                                 f"got {tuple(others.shape)}")
        elif k and b.dist is None:
            raise ValueError("STFLoss needs dist (to draw the reference batch) or ref")
        return self.identity.integrand(b.dist, b.coef, b.x0, b.xt, b.rng, others=others)


def loss(objective: Objective, score_fn, dist, proc, t, x0, eps, *, rng=None, weighting: Weighting = None,
         ref=None):
    """Per-sample losses (N,) of ``objective`` for the score callable ``score_fn``.

    ``x0``, ``eps``: (N, d); ``t``: scalar or (N,) in the domain of ``proc``; x_t = alpha x0 + sigma eps.
    NumPy input gives float64 NumPy; torch input (score a ``torch.nn.Module`` or any torch callable)
    gives a differentiable tensor with x0's dtype and device. ``dist`` is the target (needed by
    TSM/MixSM, and by STFLoss without ``ref``; may be None otherwise). ``weighting`` multiplies by
    lambda(t) in score space (default 1); FPRegularized carries its own weights and refuses it.
    ``rng`` (a numpy Generator, or a torch.Generator for tensors) is needed only for random parts:
    STF reference draws and Hutchinson probes. ``ref`` is the STF reference batch.
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a scoremc Objective (DSM(), TSM(), ...), got {type(objective).__name__}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a callable s(x, t) -> (N, d), got {type(score_fn).__name__}")
    proc = check_process(proc)
    xp = namespace(x0, eps, t)
    x0 = as_array(x0, "x0", xp, ndim=2)
    eps = as_array(eps, "eps", xp, like=x0, ndim=2)
    if tuple(eps.shape) != tuple(x0.shape):
        raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}, got {tuple(eps.shape)}")
    if dist is not None and normal_form(dist).dim != x0.shape[1]:
        raise ValueError(f"x0 must have trailing dimension d={normal_form(dist).dim} of dist, got shape "
                         f"{tuple(x0.shape)}")
    t = proc.check_t(as_array(t, "t", xp, like=x0))
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x0.shape[0]):
        raise ValueError(f"t must be a scalar or have shape (N,)={(x0.shape[0],)}, got {tuple(t.shape)}")
    t = xp.broadcast_to(t, (x0.shape[0],))
    coef = Coefficients(proc, t[:, None])
    xt = coef.alpha * x0 + coef.sigma * eps
    if weighting is not None and not isinstance(weighting, Weighting):
        raise TypeError(f"weighting must be a scoremc Weighting or None, got {type(weighting).__name__}")
    if weighting is not None and not objective.accepts_weighting:
        raise ValueError(f"{type(objective).__name__} carries its own weights; pass weighting=None")
    out = objective.per_sample(Batch(score_fn, dist, proc, t, coef, x0, eps, xt, rng, ref))
    if weighting is not None:
        out = out * weighting.score_space(proc, t)
    return out
