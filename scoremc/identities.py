"""Score identities: integrands L(x0, x_t, t) whose posterior mean is the score.

    grad log p_t(x_t) = E_{x0 ~ p(x0 | x_t)} L(x0, x_t, t)

* ``DSI()``  denoising score identity, L = (alpha x0 - x_t) / sigma^2 (STF Eq. 3; TSM Eq. 2).
* ``TSI()``  target score identity, L = grad log p0(x0) / alpha (TSM Prop. 2.1, Cor. 2.4).
* ``Mix(w)`` w DSI + (1 - w) TSI (TSM §4.1): w a number, a callable of t, ``Kappa()`` or ``KappaBar()``.
* ``OptimalMix()`` the mixture with the pointwise variance-minimising weight (not in the papers).
* ``STF(n_ref)`` the self-normalised importance-sampling average of DSI over a reference batch
  (STF Eq. 5), whose first element is the posterior draw and the rest are draws from p0. Its
  expectation is the score exactly, for every n_ref (not only as n_ref -> inf; see :class:`STF`).

Each identity is a frozen dataclass that declares its whole contract (equinox's abstract/final
rule): :meth:`Identity.draws` (how it draws its integrand from the exact posterior) and
:meth:`Identity.trace_cov` (its closed-form posterior trace-covariance, or None). The generic verbs
:func:`integrand_samples` and :func:`estimate` and the variance engine only call these. Pointwise
identities (:class:`PointwiseIdentity`) also define the integrand itself, written once for NumPy
and torch on per-row coefficients: the same objects are the regression targets of the training
objectives, so estimator, objective and variance curve cannot drift apart.
"""
from __future__ import annotations

import abc
import math
import numbers
from dataclasses import dataclass
from typing import Callable, ClassVar, Union

import numpy as np

from ._array import namespace
from ._validation import (as_array, as_count, as_generator, as_points, check_process, check_result,
                          scalar_time)
from . import _random
from ._blocks import block_rows, map_blocks
from .distributions import normal_form, sample_parts, score
from .noising import Posterior, posterior
from .mixture_weights import Kappa, KappaBar, WeightRule
from .stf_target import stf_target  # re-exported: the streamed, float32-accurate STF target

__all__ = ["Identity", "PointwiseIdentity", "DSI", "TSI", "Mix", "WeightRule", "Kappa", "KappaBar", "OptimalMix",
           "STF", "stf_target", "integrand_samples", "estimate"]


class Identity(abc.ABC):
    """Abstract score identity; concrete identities are final frozen dataclasses.

    ``name`` is the ``estimator`` coordinate of variance sweeps; ``n_ref`` the reference-batch size
    (0 except for STF).
    """

    name: ClassVar[str]
    n_ref: ClassVar[int] = 0
    #: whether the integrand divides by sigma(t) (every identity with a DSI part): then t with
    #: sigma(t) = 0 (VP/EDM at t = 0) raises ValueError naming t, as a point-mass kernel has no DSI
    needs_noise: ClassVar[bool] = True

    @abc.abstractmethod
    def draws(self, post: Posterior, n: int, rng) -> np.ndarray:
        """n independent draws of the integrand per row of ``post.xt``, shape (n, N, d), using exact
        posterior draws ``post.sample`` (and whatever else the identity needs)."""

    @abc.abstractmethod
    def trace_cov(self, post: Posterior):
        """tr Cov_{x0 ~ p(x0|x_t)} L per row, shape (N,), in closed form; None where none exists."""


class PointwiseIdentity(Identity):
    """An identity with an integrand L(x0, x_t, t) evaluated pointwise: its draws are L at posterior
    draws, and it is a regression target (DSM, TSM, mixtures, STF loss)."""

    @abc.abstractmethod
    def integrand(self, dist, coef, x0, xt, rng=None):
        """L at x0 (..., N, d) for rows x_t (N, d); ``coef`` holds alpha, sigma broadcasting against
        the rows ((N, 1) per row, or scalars). NumPy or torch, like x0."""

    def draws(self, post, n, rng):
        return self.integrand(post.dist, post.coefficients, post.sample(n, rng), post.xt, rng)


def _single_gaussian(dist) -> bool:
    """A target whose normal form is one Gaussian with a density (where L is affine in x0)."""
    G = normal_form(dist)
    return G.n_components == 1 and bool((G.var > 0).all())


def _affine_parts(post: Posterior):
    """(u, v, post_var) per eigen-direction of a one-component Gaussian target (TSM App. C): there
    L = w DSI + (1 - w) TSI is affine in x0 with coefficient a_j(w) = w u_j - v_j,
    u = alpha / sigma^2 + 1 / (alpha lam), v = 1 / (alpha lam), and the posterior variance is
    lam sigma^2 / (alpha^2 lam + sigma^2)."""
    G = normal_form(post.dist)
    lam = np.broadcast_to(G.var[0], (G.dim,))
    a, s = post.alpha, post.sigma
    post_var = lam * s * s / (a * a * lam + s * s)
    return a / (s * s) + 1.0 / (a * lam), 1.0 / (a * lam), post_var


def _affine_trace_cov(post: Posterior, w):
    """tr Cov = sum_j a_j(w)^2 lam_j sigma^2 / c_j on a one-component Gaussian target, else None.
    DSI: alpha^2/sigma^2 sum lam/c; TSI: the corrected sigma^2 / (alpha^2 lam S) of FLAG-T1."""
    if not _single_gaussian(post.dist):
        return None
    u, v, pv = _affine_parts(post)
    w = optimal_affine_weight(post) if w is None else float(w)
    return np.full(len(post.xt), float((((w * u - v) ** 2) * pv).sum()))


def optimal_affine_weight(post: Posterior) -> float:
    """The DSI weight minimising sum_j (w u_j - v_j)^2 post_j (one-component Gaussian target)."""
    u, v, pv = _affine_parts(post)
    return float((u * v * pv).sum() / (u * u * pv).sum())


@dataclass(frozen=True)
class DSI(PointwiseIdentity):
    """Denoising score identity: L = grad_{x_t} log p(x_t | x0) = (alpha x0 - x_t) / sigma^2."""

    name: ClassVar[str] = "dsi"

    def integrand(self, dist, coef, x0, xt, rng=None):
        return (coef.alpha * x0 - xt) / (coef.sigma * coef.sigma)

    def trace_cov(self, post):
        # L is affine in x0 with coefficient alpha / sigma^2 for every target (Rao-Blackwellised)
        return (post.alpha / post.sigma**2) ** 2 * post.trace_cov()


@dataclass(frozen=True)
class TSI(PointwiseIdentity):
    """Target score identity: L = grad log p0(x0) / alpha (needs a target with a score, not an
    ``Empirical``)."""

    name: ClassVar[str] = "tsi"
    needs_noise: ClassVar[bool] = False  # grad log p0(x0) / alpha: finite at sigma = 0 (the posterior is x_t)

    def integrand(self, dist, coef, x0, xt=None, rng=None):
        return score(dist, x0) / coef.alpha

    def trace_cov(self, post):
        return _affine_trace_cov(post, 0.0)


@dataclass(frozen=True)
class Mix(PointwiseIdentity):
    """w DSI + (1 - w) TSI; ``w`` is the weight on DSI (TSM §4.1, Eq. 19).

    Any finite real ``w`` is valid, inside [0, 1] or not: both integrands have the score as posterior
    mean, so w is a control-variate coefficient and the combination is unbiased for every w (the
    pointwise variance-optimal weight can lie outside [0, 1]). NaN/inf raise ValueError, booleans
    and other types TypeError.

    ``w``: a number, a callable ``w(t)`` of the per-row times, or a :class:`WeightRule`
    (``Kappa()``, ``KappaBar()``). The pointwise variance-optimal weight is :class:`OptimalMix`.
    """

    w: Union[float, Callable, WeightRule] = Kappa()

    def __post_init__(self):
        w = self.w
        if isinstance(w, WeightRule):
            return
        if isinstance(w, numbers.Real) and not isinstance(w, bool):
            if not math.isfinite(w):
                raise ValueError(f"w must be finite, got {w}")
        elif not callable(w):
            raise TypeError(f"w must be a number, a callable of t or a WeightRule (Kappa(), KappaBar()); "
                            f"got {type(w).__name__} {w!r}")

    @property
    def name(self) -> str:
        if isinstance(self.w, WeightRule):
            return self.w.name
        if callable(self.w):
            return f"mix({getattr(self.w, '__name__', 'w(t)')})"
        return f"mix({self.w:g})"

    def weight(self, dist, coef):
        """The DSI weight at the coefficients' times, shaped like ``coef.alpha`` (or a float)."""
        if isinstance(self.w, WeightRule):
            return self.w(dist, coef)
        if callable(self.w):
            w = as_array(self.w(coef.t), "w(t)", namespace(coef.t), like=coef.t)
            if w.ndim and tuple(w.shape) != tuple(coef.t.shape):
                raise ValueError(f"w(t) must return a scalar or an array shaped like t {tuple(coef.t.shape)}, "
                                 f"got shape {tuple(w.shape)}")
            return w
        return float(self.w)

    def integrand(self, dist, coef, x0, xt, rng=None):
        w = self.weight(dist, coef)
        return w * DSI().integrand(dist, coef, x0, xt) + (1.0 - w) * TSI().integrand(dist, coef, x0)

    def trace_cov(self, post):
        if not _single_gaussian(post.dist):
            return None
        return _affine_trace_cov(post, float(np.asarray(self.weight(post.dist, post.coefficients))))


@dataclass(frozen=True)
class OptimalMix(Identity):
    """w* DSI + (1 - w*) TSI with the pointwise variance-minimising weight (neither seed paper gives it):

        w*(x_t) = -tr Cov(T, D - T) / tr Var(D - T),   D = DSI, T = TSI under p(x0 | x_t).

    :meth:`draws` computes w* from an independent pilot batch of posterior draws, so that the
    estimate stays unbiased (over the pilot: the n draws share the estimated weight, so they are not
    independent given x_t); on a one-component Gaussian target the trace covariance is exact.
    Not a regression target (w* depends on x_t through the posterior).
    """

    name: ClassVar[str] = "optimal"

    def draws(self, post, n, rng):
        coef = post.coefficients
        x0 = post.sample(n, rng)
        D, T = DSI().integrand(post.dist, coef, x0, post.xt), TSI().integrand(post.dist, coef, x0)
        w = self.weight(post, post.sample(max(n, 2), rng))
        return T + w[None, :, None] * (D - T)

    def weight(self, post, x0_pilot) -> np.ndarray:
        """Per-row DSI weight minimising tr Var(w D + (1 - w) T) over pilot posterior draws (m, N, d)."""
        coef = post.coefficients
        D = DSI().integrand(post.dist, coef, x0_pilot, post.xt)
        T = TSI().integrand(post.dist, coef, x0_pilot)
        E = D - T
        Ec, Tc = E - E.mean(0), T - T.mean(0)
        var_e = (Ec * Ec).sum(-1).mean(0)
        cov_te = (Tc * Ec).sum(-1).mean(0)
        # where D and T coincide on the pilot (var_e = 0) any weight is optimal: take DSI
        return np.where(var_e > 0, -cov_te / np.where(var_e > 0, var_e, 1.0), 1.0)

    def trace_cov(self, post):
        return _affine_trace_cov(post, None)


@dataclass(frozen=True)
class STF(PointwiseIdentity):
    """Stable target field (STF Eq. 5-7): the self-normalised IS average of DSI over a reference
    batch {x_1, ..., x_n} with x_1 the draw x0 (posterior draw for estimation; the clean sample that
    made x_t for training) and x_2..x_n ~ p0 (:func:`stf_target`, for any process: STF App. A's
    alpha-scaled kernel). ``n_ref = 1`` is DSI exactly.

    Unbiased for every n_ref (corrects STF §4-5, which call the minimiser s*_STF of Eq. 7 biased
    for finite n): given x_t the reference batch has the law prod_j p0(x_j) k(x_t | x_1) / p_t(x_t),
    and v is symmetric in the x_j, so k(x_t | x_1) may be replaced by the average of the k(x_t | x_j);
    then E[v | x_t] = (1 / p_t) int p0(x) k(x_t | x) grad log k(x_t | x) dx = grad log p_t(x_t)
    (``reference/ERRATA.md``, "STF Eq. 7 is unbiased"). Its variance has no closed form.
    """

    n_ref: int = 2

    def __post_init__(self):
        as_count(self.n_ref, "n_ref")

    @property
    def name(self) -> str:
        return f"stf({self.n_ref})"

    def integrand(self, dist, coef, x0, xt, rng=None, *, others=None):
        """v over {x0, others}: x0 (..., N, d); ``others`` (n_ref - 1, d) shared or (..., N, n_ref - 1, d),
        else drawn from p0 with ``rng`` in canonical blocks of inner draws and rows (:mod:`._blocks`; a
        NumPy generator through a RowStream, so each row's numbers do not depend on the other rows)."""
        xp = namespace(x0, xt)
        k = self.n_ref - 1
        if others is not None or k == 0:
            if others is None:
                ref = x0[..., None, :]
            else:
                others = xp.broadcast_to(others, tuple(x0.shape[:-1]) + (k, x0.shape[-1]))
                ref = xp.concat([x0[..., None, :], others], axis=-2)
            return stf_target(xt, coef.sigma, ref, coef.alpha)
        rng = as_generator(rng)
        stack = x0 if x0.ndim == 3 else x0[None]
        m, N, d = stack.shape
        G = normal_form(dist)
        if isinstance(rng, np.random.Generator):
            rng = _random.RowStream.from_generator(rng, np.arange(N))
        # blocks of inner draws and of rows, both of about BLOCK floats of reference points
        block = min(m, block_rows(k * d))
        rows = block_rows(block * k * d)
        out = []
        for i in range(0, N, rows):
            j = min(N, i + rows)
            sub = rng.subset(i, j) if isinstance(rng, _random.RowStream) else rng
            s_i = coef.sigma[i:j] if getattr(coef.sigma, "ndim", 0) == 2 else coef.sigma
            a_i = coef.alpha[i:j] if getattr(coef.alpha, "ndim", 0) == 2 else coef.alpha
            part = []
            for a in range(0, m, block):
                mb = min(m, a + block) - a
                if isinstance(sub, _random.RowStream):  # one composite row per (row, inner draw)
                    drawn = sample_parts(G, ((j - i) * mb, k), sub.expand(m, a, a + mb), stack.dtype)
                    drawn = xp.permute_dims(xp.reshape(drawn, (j - i, mb, k, d)), (1, 0, 2, 3))
                else:
                    drawn = sample_parts(G, (mb, j - i, k), sub, stack.dtype)
                ref = xp.concat([stack[a:a + mb, i:j, None, :], drawn], axis=-2)
                part.append(stf_target(xt[i:j], s_i, ref, a_i))
            out.append(xp.concat(part, axis=0))
        out = xp.concat(out, axis=1)
        return out if x0.ndim == 3 else out[0]

    def trace_cov(self, post):
        return None


def _check_identity(identity) -> Identity:
    if not isinstance(identity, Identity):
        raise TypeError("identity must be a scoremc Identity (DSI(), TSI(), Mix(w), OptimalMix(), STF(n_ref)), "
                        f"got {type(identity).__name__}")
    return identity


def _blockwise(identity, dist, proc, t, xt, n, rng, budget, reduce):
    """``reduce(draws)`` of the (n, rows, d) integrand draws of each canonical row block of x_t
    (:mod:`._blocks`, about BLOCK floats of draws), concatenated along the rows. The randomness is a
    RowStream keyed from ``rng``, so every row's draws do not depend on the blocking; ``budget`` floats
    bound the blocks in flight (None: one per core) and do not change the numbers."""
    identity = _check_identity(identity)
    proc = check_process(proc)
    t = scalar_time(proc, t)
    require_noise(identity, proc, t, "t")
    n = as_count(n, "n")
    rng = as_generator(rng)
    d = normal_form(dist).dim
    xt = as_points(xt, d, "xt").reshape(-1, d)
    stream = rng if isinstance(rng, _random.RowStream) else _random.RowStream.from_generator(rng, np.arange(len(xt)))

    def block(i, j):
        return reduce(identity.draws(posterior(dist, proc, t, xt[i:j]), n, stream.subset(i, j)))

    with np.errstate(over="ignore", invalid="ignore"):
        parts = map_blocks(block, len(xt), n * d, budget)
    out = np.concatenate(parts, axis=-2) if parts else reduce(np.empty((n, 0, d)))
    # no silent inf/NaN: a huge x_t or mixture weight (Mix(1e308)) overflows the integrand
    return check_result(out, "xt, w or w(t)", f"the {identity.name} integrand")


def require_noise(identity, proc, t, name: str = "t"):
    """ValueError naming ``name`` where the identity divides by sigma(t) and sigma(t) = 0 (t = 0 of VP,
    sub-VP, Cosine and EDM): the DSI integrand (alpha x0 - x_t) / sigma^2 is 0/0 there, so no estimate,
    loss or variance exists; TSI has none of this."""
    if identity.needs_noise and float(proc.sigma(t)) == 0.0:
        raise ValueError(f"{name}={t!r} has sigma(t) = 0 under {proc!r}: the {identity.name} integrand divides by "
                         "sigma(t)^2 there; use t > 0")


def integrand_samples(identity: Identity, dist, proc, t, xt, *, n: int, rng: np.random.Generator, budget=None):
    """n independent draws of the identity's integrand per row of x_t: shape (n, N, d) (NumPy).

    x0 comes from the exact posterior p(x0 | x_t) at the scalar time ``t``; what else is drawn is
    the identity's business (:meth:`Identity.draws`). Averaging over the first axis gives
    :func:`estimate`. Rows go in canonical blocks (``budget``: floats in flight, None for one block
    per core; the numbers do not depend on it).
    """
    return _blockwise(identity, dist, proc, t, xt, n, rng, budget, lambda draws: draws)


def estimate(identity: Identity, dist, proc, t, xt, *, n: int, rng: np.random.Generator, budget=None) -> np.ndarray:
    """Monte Carlo score estimate (TSM Eq. 18): the mean of n integrand draws per row, shape of xt.

    Unbiased for grad log p_t(x_t) for every identity here, STF included (for every n_ref; see
    :class:`STF`). Streams over canonical row blocks, so memory stays bounded for any number of rows
    (``budget`` as in :func:`integrand_samples`); the result equals ``integrand_samples(...).mean(0)``
    bit for bit.

    Raises ValueError naming t where sigma(t) = 0 (t = 0 of VP, sub-VP, Cosine, EDM) for identities
    with a DSI part (``needs_noise``; TSI gives the target score there), and naming xt/w where the
    integrand overflows float64.
    """
    return _blockwise(identity, dist, proc, t, xt, n, rng, budget, lambda draws: draws.mean(axis=0)).reshape(
        np.shape(xt))
