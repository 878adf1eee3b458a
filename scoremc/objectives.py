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
* ``STFLoss(n)``    L = stf_target over n reference points containing x0 (STF Eq. 6, Algorithm 1)

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
from .stf_target import stf_target
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
    """Stable target field loss (STF Eq. 6): regression onto the STF target v(x_t) (STF Eq. 5,
    :func:`scoremc.stf_target`) over a reference batch of n = ``n_ref`` points that contains the clean
    sample x0 each x_t was made from. ``ref`` of :func:`loss` gives the batch in one of these forms:

    * ``(n_ref, d)``: the whole reference batch B_L of STF Algorithm 1 (Xu, Tong & Jaakkola 2023),
      shared by every row, holding the minibatch as a block of consecutive rows: ``ref[o:o+N]`` must
      equal ``x0`` exactly for some o (found by comparison; o = 0 if the minibatch is B_L's first N
      rows, a random subset of a random batch as Algorithm 1's B in B_L; with a batch gathered from
      shards or ranks, o is the shard's offset). Every row sees the same n_ref points, its own x0 among
      them. Memory O(N n_ref): no (N, n_ref, d) array.
    * ``(n_ref - 1, d)``: the other n_ref - 1 points, shared; each row adds its own x0. O(N n_ref).
    * ``(N, n_ref - 1, d)``: other points per row; each row adds its own x0 (without concatenating).
    * ``None``: the other points drawn fresh from p0 (``dist``) for every row with ``rng``.

    ``n_ref = 1`` is DSM exactly."""

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
        if b.ref is None:
            if k and b.dist is None:
                raise ValueError("STFLoss needs dist (to draw the reference batch) or ref")
            return self.identity.integrand(b.dist, b.coef, b.x0, b.xt, b.rng)
        ref = as_array(b.ref, "ref", b.xp, like=b.x0)
        shape = tuple(ref.shape)
        if shape == (self.n_ref, d):  # STF Algorithm 1: the whole batch, holding the minibatch
            self._check_minibatch_inside(b.xp, ref, b.x0)
            return stf_target(b.xt, b.coef.sigma, ref, b.coef.alpha)
        if shape not in ((k, d), (n, k, d)):
            raise ValueError(f"ref must have shape (n_ref, d)={(self.n_ref, d)} (STF Algorithm 1's whole reference "
                             f"batch, holding the minibatch x0), (n_ref-1, d)={(k, d)} (the other points, "
                             f"shared) or (N, n_ref-1, d)={(n, k, d)} (per row), got {shape}")
        if k == 0:  # the batch is x0 alone: DSM
            return self.identity.integrand(b.dist, b.coef, b.x0, b.xt)
        return stf_target(b.xt, b.coef.sigma, ref, b.coef.alpha, x0=b.x0)

    def _check_minibatch_inside(self, xp, ref, x0):
        """Find the minibatch as a block of rows of ``ref`` by exact comparison: the rows equal to x0[0]
        (one pass over ref, in blocks), then the block from each. Raises ValueError if there is none."""
        n, d = x0.shape
        whole = (f"ref of shape (n_ref, d)={tuple(ref.shape)} is STF Algorithm 1's whole reference batch and must "
                 "hold the minibatch x0 as a block of consecutive rows (ref[o:o+N] == x0 exactly for some o), ")
        if n > self.n_ref:
            raise ValueError(whole + f"but x0 has N={n} > n_ref={self.n_ref} rows")
        if n == 0:
            return
        step = max(1, (1 << 20) // d)
        found = [xp.nonzero(xp.all(ref[j:j + step] == x0[0], axis=1))[0] + j for j in range(0, self.n_ref, step)]
        starts = [int(o) for o in xp.concat(found)]
        if any(o + n <= self.n_ref and bool(xp.all(ref[o:o + n] == x0)) for o in starts):
            return
        where = f"the rows from x0[0] (row {starts[0]} of ref) differ from x0" if starts else "no row equals x0[0]"
        raise ValueError(whole + f"but {where}; pass the other points as (n_ref-1, d) to add each row's x0")


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
    Objectives regressing onto a DSI part (DSM, MixSM, STFLoss) raise ValueError naming t where
    sigma(t) = 0: their target divides by sigma(t)^2.
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
    if isinstance(objective, Regression) and objective.identity.needs_noise and bool(xp.any(coef.sigma == 0)):
        bad = float(xp.reshape(t[xp.reshape(coef.sigma == 0, (-1,))], (-1,))[0])
        raise ValueError(f"t={bad!r} has sigma(t) = 0 under {proc!r}: the {objective.name} target divides by "
                         "sigma(t)^2 there; use t > 0")
    xt = coef.alpha * x0 + coef.sigma * eps
    if weighting is not None and not isinstance(weighting, Weighting):
        raise TypeError(f"weighting must be a scoremc Weighting or None, got {type(weighting).__name__}")
    if weighting is not None and not objective.accepts_weighting:
        raise ValueError(f"{type(objective).__name__} carries its own weights; pass weighting=None")
    out = objective.per_sample(Batch(score_fn, dist, proc, t, coef, x0, eps, xt, rng, ref))
    if weighting is not None:
        out = out * weighting.score_space(proc, t)
    return out
