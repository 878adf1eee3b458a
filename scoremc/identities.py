"""Score identities: integrands L(x0, x_t, t) whose posterior mean is the score (DESIGN.md).

    grad log p_t(x_t) = E_{x0 ~ p(x0 | x_t)} L(x0, x_t, t)

* ``DSI()``  denoising score identity, L = (alpha x0 - x_t) / sigma^2 (STF Eq. 3; TSM Eq. 2).
* ``TSI()``  target score identity, L = grad log p0(x0) / alpha (TSM Prop. 2.1, Cor. 2.4).
* ``Mix(w)`` w DSI + (1 - w) TSI (TSM §4.1), w a number, a callable of t, ``"kappa"``,
  ``"kappa_bar"`` or ``"optimal"`` (the pointwise variance-minimising weight).
* ``STF(n_ref)`` the self-normalised importance-sampling average of DSI over a reference batch
  (STF Eq. 5), whose first element is the posterior draw and the rest are draws from p0.

Each identity is a frozen dataclass; :func:`integrand_samples` and :func:`estimate` are the
generic verbs over them. The same objects define the regression targets of the training
objectives, so estimator, objective and variance curve cannot drift apart.
"""
from __future__ import annotations

import abc
import numbers
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from ._validation import as_count, as_generator, as_points
from .noising import _check_process, _scalar_time, posterior
from .processes import Process
from .targets import Empirical, _parts_of, sample, score

__all__ = ["Identity", "DSI", "TSI", "Mix", "STF", "integrand_samples", "estimate", "kappa", "kappa_bar",
           "sigma_data"]


class Identity(abc.ABC):
    """Abstract score identity; concrete identities are final frozen dataclasses."""

    #: short name used as the ``estimator`` coordinate of variance sweeps
    @property
    @abc.abstractmethod
    def name(self) -> str: ...


@dataclass(frozen=True)
class DSI(Identity):
    """Denoising score identity: L = grad_{x_t} log p(x_t | x0) = (alpha x0 - x_t) / sigma^2."""

    @property
    def name(self) -> str:
        return "dsi"

    @staticmethod
    def integrand(dist, proc: Process, t: float, x0, xt):
        """(alpha x0 - x_t) / sigma^2, broadcasting x0 (..., d) against x_t (..., d)."""
        a, s = float(proc.alpha(t)), float(proc.sigma(t))
        return (a * x0 - xt) / (s * s)


@dataclass(frozen=True)
class TSI(Identity):
    """Target score identity: L = grad log p0(x0) / alpha (needs a target with a score)."""

    @property
    def name(self) -> str:
        return "tsi"

    @staticmethod
    def integrand(dist, proc: Process, t: float, x0, xt=None):
        """grad log p0(x0) / alpha, shape of x0."""
        if isinstance(dist, Empirical):
            raise TypeError("TSI needs the target's score grad log p0, which an Empirical target does not have")
        return score(dist, x0) / float(proc.alpha(t))


def sigma_data(dist) -> float:
    """Data scale sigma_data = sqrt(tr Cov(p0) / d) (the total variance per dimension)."""
    return float(np.sqrt(np.trace(np.atleast_2d(dist.cov())) / dist.dim))


def kappa(dist, proc: Process, t) -> np.ndarray:
    """kappa_t = sigma^2 / (sigma^2 + alpha^2 sigma_data^2) (TSM §4.1): the zero-variance DSI
    weight for a Gaussian target N(0, sigma_data^2 I) (TSM App. C)."""
    a, s = np.asarray(proc.alpha(t)), np.asarray(proc.sigma(t))
    return s * s / (s * s + a * a * sigma_data(dist) ** 2)


def kappa_bar(dist, proc: Process, t) -> np.ndarray:
    """kappa-bar_t = sigma^2 / (sigma^2 + alpha^2 sigma_mode^2), sigma_mode^2 = sum_k pi_k tr(Sigma_k)/d,
    the mixture-averaged component variance (TSM §4.1); 1 (pure DSI) for an ``Empirical``."""
    G = _parts_of(dist)
    mode_var = float(np.exp(G.log_weights) @ (G.sum_dims(G.var) / G.dim))
    a, s = np.asarray(proc.alpha(t)), np.asarray(proc.sigma(t))
    return s * s / (s * s + a * a * mode_var)


_NAMED_WEIGHTS = {"kappa": kappa, "kappa_bar": kappa_bar}


@dataclass(frozen=True)
class Mix(Identity):
    """w DSI + (1 - w) TSI; ``w`` is the weight on DSI (TSM §4.1).

    ``w``: a number in [0, 1], a callable ``w(t)``, ``"kappa"``, ``"kappa_bar"`` or ``"optimal"``.
    ``"optimal"`` picks, for each x_t, the w minimising the posterior trace-variance of the
    mixture, w* = -tr Cov(T, D - T) / tr Var(D - T) with D = DSI, T = TSI; :func:`estimate`
    computes it from an independent pilot batch of posterior samples so that the estimate stays
    unbiased (neither seed paper gives this weight).
    """

    w: Union[float, str, Callable] = "kappa"

    def __post_init__(self):
        w = self.w
        if isinstance(w, str):
            if w not in (*_NAMED_WEIGHTS, "optimal"):
                raise ValueError(f"w must be a number, a callable of t, 'kappa', 'kappa_bar' or 'optimal'; got {w!r}")
        elif isinstance(w, numbers.Real) and not isinstance(w, bool):
            if not np.isfinite(w):
                raise ValueError(f"w must be finite, got {w}")
        elif not callable(w):
            raise TypeError(f"w must be a number, a callable of t or a name, got {type(w).__name__}")

    @property
    def name(self) -> str:
        if isinstance(self.w, str):
            return self.w
        if callable(self.w):
            return f"mix({getattr(self.w, '__name__', 'w(t)')})"
        return f"mix({self.w:g})"

    def weight(self, dist, proc: Process, t: float) -> float:
        """The DSI weight at time t (not defined for ``"optimal"``, which is pointwise)."""
        if self.w == "optimal":
            raise ValueError("the optimal weight depends on x_t; it is computed inside estimate()")
        if isinstance(self.w, str):
            return float(_NAMED_WEIGHTS[self.w](dist, proc, t))
        return float(self.w(t)) if callable(self.w) else float(self.w)

    def integrand(self, dist, proc: Process, t: float, x0, xt):
        w = self.weight(dist, proc, t)
        return w * DSI.integrand(dist, proc, t, x0, xt) + (1.0 - w) * TSI.integrand(dist, proc, t, x0)


@dataclass(frozen=True)
class STF(Identity):
    """Stable target field (STF Eq. 5-7): the self-normalised IS average of DSI over a reference
    batch {x_1, ..., x_n} with x_1 ~ p(x0 | x_t) and x_2..x_n ~ p0,

        v(x_t) = sum_i w_i (alpha x_i - x_t) / sigma^2,  w_i = softmax_i(-|x_t - alpha x_i|^2 / (2 sigma^2)),

    for any process (STF App. A: the alpha-scaled kernel). ``n_ref = 1`` is DSI exactly.
    """

    n_ref: int = 2

    def __post_init__(self):
        as_count(self.n_ref, "n_ref")

    @property
    def name(self) -> str:
        return f"stf({self.n_ref})"

    @staticmethod
    def target(proc: Process, t: float, xt, ref):
        """v(x_t) for reference batches ``ref`` (..., n_ref, d) and x_t (..., d) -> (..., d)."""
        a, s = float(proc.alpha(t)), float(proc.sigma(t))
        # the logits' |x_t|^2 term is common to a row and cancels in the softmax, so only the
        # cross term and |alpha x_i|^2 are formed: no (..., n_ref, d) difference array
        logits = (a * np.einsum("...id,...d->...i", ref, xt) - 0.5 * a * a * np.einsum("...id,...id->...i", ref, ref))
        logits /= s * s
        logits -= logits.max(-1, keepdims=True)
        w = np.exp(logits)
        w /= w.sum(-1, keepdims=True)
        return (a * np.einsum("...i,...id->...d", w, ref) - xt) / (s * s)


def integrand_samples(identity: Identity, dist, proc: Process, t, xt, *, n: int, rng: np.random.Generator):
    """n independent draws of the identity's integrand per row of x_t: shape (n, N, d).

    x0 comes from the exact posterior p(x0 | x_t) (and, for STF, the other n_ref - 1 reference
    points from p0). Averaging over the first axis gives :func:`estimate`.
    """
    if not isinstance(identity, Identity):
        raise TypeError(f"identity must be DSI(), TSI(), Mix(w) or STF(n_ref), got {type(identity).__name__}")
    proc = _check_process(proc)
    t = _scalar_time(proc, t)
    n = as_count(n, "n")
    rng = as_generator(rng)
    d = _parts_of(dist).dim
    xt = as_points(xt, d, "xt").reshape(-1, d)
    post = posterior(dist, proc, t, xt)
    x0 = post.sample(n, rng)  # (n, N, d)
    if isinstance(identity, STF):
        return _stf_samples(identity, dist, proc, t, xt, x0, rng)
    if isinstance(identity, Mix) and identity.w == "optimal":
        D, T = DSI.integrand(dist, proc, t, x0, xt), TSI.integrand(dist, proc, t, x0)
        w = optimal_weight(dist, proc, t, xt, post.sample(max(n, 2), rng))
        return T + w[None, :, None] * (D - T)
    return identity.integrand(dist, proc, t, x0, xt)


def _stf_samples(identity, dist, proc, t, xt, x0, rng, budget: int = 1 << 22):
    """STF targets for posterior draws x0 (n, N, d), drawing the other n_ref - 1 reference points
    from p0 in blocks of inner draws so that a block's (rows, N, n_ref, d) batch stays ~budget."""
    n, N, d = x0.shape
    block = max(1, budget // max(1, N * identity.n_ref * d))
    out = np.empty_like(x0)
    for i in range(0, n, block):
        ref = x0[i:i + block, :, None, :]
        if identity.n_ref > 1:
            m = ref.shape[0]
            others = sample(dist, m * N * (identity.n_ref - 1), rng).reshape(m, N, identity.n_ref - 1, d)
            ref = np.concatenate([ref, others], axis=2)
        out[i:i + block] = STF.target(proc, t, xt, ref)
    return out


def optimal_weight(dist, proc: Process, t: float, xt, x0_pilot) -> np.ndarray:
    """Per-row DSI weight minimising tr Var(w D + (1 - w) T) over posterior samples (m, N, d)."""
    D = DSI.integrand(dist, proc, t, x0_pilot, xt)
    T = TSI.integrand(dist, proc, t, x0_pilot)
    E = D - T
    Ec, Tc = E - E.mean(0), T - T.mean(0)
    var_e = (Ec * Ec).sum(-1).mean(0)
    cov_te = (Tc * Ec).sum(-1).mean(0)
    # where D and T coincide on the pilot (var_e = 0) any weight is optimal: take DSI
    return np.where(var_e > 0, -cov_te / np.where(var_e > 0, var_e, 1.0), 1.0)


def estimate(identity: Identity, dist, proc: Process, t, xt, *, n: int, rng: np.random.Generator) -> np.ndarray:
    """Monte Carlo score estimate (TSM Eq. 18): the mean of n integrand draws per row, (N, d).

    Unbiased for grad log p_t(x_t) for DSI, TSI and Mix; STF estimates its own minimiser s*_STF
    (STF Eq. 7), which has an O(1/n_ref) bias.
    """
    xt_arr = np.asarray(xt)
    out = integrand_samples(identity, dist, proc, t, xt, n=n, rng=rng).mean(axis=0)
    return out.reshape(xt_arr.shape)
