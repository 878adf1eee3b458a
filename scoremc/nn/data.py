"""What one training step draws: minibatches of x0, noise levels t, and the STF reference batch.

* Data sources. :class:`ExactTarget` (a ``GaussianMixture``: x0 sampled on the fly with
  :func:`scoremc.sample` from a ``torch.Generator`` on the model's device) and :class:`FiniteData` (a
  tensor (M, d) or an ``Empirical``: minibatches by index, either ``"epochs"`` — every point once per
  epoch in the order of a seeded permutation per epoch, batches running across epoch boundaries — or
  ``"replacement"`` — independent uniform indices).
* Time samplers, each a frozen type returning per-row times t (N,) and the per-row factor that makes
  the batch mean an unbiased estimate of its objective: :class:`UniformTimes` (Song et al. 2021),
  :class:`LogNormalSigmas` (Karras et al. 2022, Table 1) and :class:`ImportanceTimes` (t drawn with
  density proportional to a :class:`scoremc.Weighting`, each loss divided by the density).
* :func:`reference_part`: the STF reference batch (STF Eq. 6; Algorithm 1), the one place that decides
  what ``loss(..., ref=)`` receives.

Every draw takes an explicit ``torch.Generator`` (no global RNG), so a step is a function of the
generators' states: the basis of bit-identical resume and of data-parallel sharding.
"""
from __future__ import annotations

import abc
import functools
import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .. import noise_levels
from .._validation import as_count
from ..distributions import Empirical, GaussianMixture, sample
from ..objectives import Objective, STFLoss
from ..processes import EDM, VE, Process
from ..weighting import Weighting

__all__ = ["DataSource", "ExactTarget", "FiniteData", "as_source", "TimeSampler", "UniformTimes", "LogNormalSigmas",
           "ImportanceTimes", "default_t_range", "check_t_range", "reference_part", "reference_size", "shard_sizes",
           "STF_REFERENCES", "stf_reference_form", "DATA_ORDERS", "stream_seed"]

DATA_ORDERS = ("epochs", "replacement")


def stream_seed(seed: int, *stream: int) -> int:
    """A 64-bit seed for the random stream ``stream`` (e.g. (kind, shard)) of the run ``seed``: independent
    streams from one integer, through NumPy's SeedSequence hashing."""
    return int(np.random.SeedSequence([int(seed), *(int(s) for s in stream)]).generate_state(1, np.uint64)[0])


# -- data sources ----------------------------------------------------------------------------------------------
class DataSource(abc.ABC):
    """Where x0 comes from. ``dist``: the target with exact laws (for TSM, the evaluation and STF reference
    draws), or None for a bare tensor of data."""

    dist: object
    dim: int

    @abc.abstractmethod
    def minibatch(self, step: int, shard: int, n: int, gen: torch.Generator, dtype) -> torch.Tensor:
        """Shard ``shard``'s n rows (n, d) of the global minibatch of ``step`` (shards are consecutive
        blocks of n rows), on ``gen``'s device."""

    @abc.abstractmethod
    def sample(self, n: int, gen: torch.Generator, dtype) -> torch.Tensor:
        """n independent draws (n, d) from the data law (the STF reference points)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for config.json."""

    @property
    def has_exact_laws(self) -> bool:
        return self.dist is not None


@dataclass(frozen=True, eq=False)
class ExactTarget(DataSource):
    """A ``GaussianMixture``, sampled on the fly (an infinite data set)."""

    dist: GaussianMixture

    @property
    def dim(self) -> int:
        return self.dist.dim

    def minibatch(self, step, shard, n, gen, dtype):
        return sample(self.dist, n, gen, dtype=dtype)

    def sample(self, n, gen, dtype):
        return sample(self.dist, n, gen, dtype=dtype)

    def describe(self) -> str:
        return repr(self.dist)


@dataclass(frozen=True, eq=False)
class FiniteData(DataSource):
    """A finite data set ``points`` (M, d), minibatches by index. ``order="epochs"``: the global batch of
    step k holds the positions [kB, (k+1)B) of the infinite sequence perm_0, perm_1, ... where perm_e is
    the permutation of epoch e, drawn from its own generator seeded by (seed, e): a pure function of
    (seed, step), so nothing needs saving to resume. ``order="replacement"``: uniform indices from the
    shard's generator. ``dist``: the ``Empirical`` of the points when given as one (exact laws), else None."""

    points: torch.Tensor
    order: str
    seed: int
    batch_size: int
    dist: Empirical | None = None

    def __post_init__(self):
        if self.order not in DATA_ORDERS:
            raise ValueError(f"data_order must be one of {DATA_ORDERS}, got {self.order!r}")
        object.__setattr__(self, "_perms", {})

    @property
    def dim(self) -> int:
        return int(self.points.shape[1])

    def _perm(self, epoch: int) -> torch.Tensor:
        perms = self._perms
        if epoch not in perms:
            if len(perms) > 2:  # a small cache: a batch usually straddles at most two epochs
                perms.pop(min(perms))
            gen = torch.Generator(device=self.points.device).manual_seed(stream_seed(self.seed, 3, epoch))
            perms[epoch] = torch.randperm(len(self.points), generator=gen, device=self.points.device)
        return perms[epoch]

    def minibatch(self, step, shard, n, gen, dtype):
        m = len(self.points)
        if self.order == "replacement":
            idx = torch.randint(m, (n,), generator=gen, device=self.points.device)
        else:
            start = step * self.batch_size + shard * n
            pos = torch.arange(start, start + n, device=self.points.device)
            epochs = pos // m
            idx = torch.empty_like(pos)
            for e in torch.unique(epochs).tolist():
                sel = epochs == e
                idx[sel] = self._perm(int(e))[pos[sel] % m]
        return self.points[idx].to(dtype)

    def sample(self, n, gen, dtype):
        idx = torch.randint(len(self.points), (n,), generator=gen, device=self.points.device)
        return self.points[idx].to(dtype)

    def describe(self) -> str:
        return repr(self.dist) if self.dist is not None else f"data tensor (M={len(self.points)}, d={self.dim})"


def as_source(data, *, device, dtype, order: str, seed: int, batch_size: int) -> DataSource:
    """``data`` (a ``GaussianMixture``, an ``Empirical`` or a tensor / array (M, d)) as a data source on
    ``device``."""
    if isinstance(data, GaussianMixture):
        return ExactTarget(data)
    if isinstance(data, Empirical):
        pts = torch.as_tensor(np.array(data.points), dtype=dtype, device=device)
        return FiniteData(pts, order, seed, batch_size, dist=data)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        pts = torch.as_tensor(data, dtype=dtype, device=device) if isinstance(data, np.ndarray) else \
            data.detach().to(device=device, dtype=dtype)
        if pts.ndim != 2 or pts.shape[0] < 1 or pts.shape[1] < 1:
            raise ValueError(f"data must have shape (M >= 1, d >= 1), got {tuple(pts.shape)}")
        if not bool(torch.isfinite(pts).all()):
            raise ValueError("data must be finite")
        return FiniteData(pts, order, seed, batch_size)
    raise TypeError(f"data must be a GaussianMixture, an Empirical or a tensor (M, d), got {type(data).__name__}")


# -- noise levels ----------------------------------------------------------------------------------------------
def default_t_range(proc: Process, eps: float | None = None) -> tuple[float, float]:
    """The training interval [t_lo, t_hi]: the process's domain less ``eps`` at its singular ends (Song et al.
    2021: eps = 1e-5 for VE, 1e-3 otherwise, the default): [t_min + eps, t_max] (t_max - eps when t_max is
    excluded, e.g. the cosine schedule's alpha = 0). EDM's t is sigma: its sampling range [sigma_min,
    sigma_max]."""
    if isinstance(proc, EDM):
        return float(proc.sigma_min), float(proc.sigma_max)
    if eps is None:
        eps = 1e-5 if isinstance(proc, VE) else 1e-3
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps < 0.5 * (proc.t_max - proc.t_min):
        raise ValueError(f"t_eps must be a number in [0, (t_max - t_min) / 2), got {eps!r}")
    return float(proc.t_min + eps), float(proc.t_max - eps if proc.t_max_open else proc.t_max)


def check_t_range(proc: Process, t_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in t_range)
    except (TypeError, ValueError):
        raise TypeError(f"t_range must be a pair of numbers (t_lo, t_hi), got {t_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"t_range must be finite with t_lo < t_hi, got {t_range!r}")
    proc.check_t(np.array([lo, hi]), "t_range")
    return lo, hi


class TimeSampler(abc.ABC):
    """Draws per-row times. :meth:`draw` returns (t (n,), factor (n,) or None): with factor f (None = 1), the
    batch mean of f(t) lambda(t) l(t) is an unbiased estimate of the sampler's objective."""

    name: ClassVar[str]

    @abc.abstractmethod
    def draw(self, n: int, gen: torch.Generator, proc: Process, t_range: tuple[float, float], dtype):
        """(t, factor), t of ``dtype`` on ``gen``'s device."""


@dataclass(frozen=True)
class UniformTimes(TimeSampler):
    """t ~ U[t_lo, t_hi] (Song et al. 2021): the objective E_t[lambda(t) E l(t)] = (1/T) int lambda E l dt,
    T = t_hi - t_lo."""

    name: ClassVar[str] = "uniform"

    def draw(self, n, gen, proc, t_range, dtype):
        return noise_levels.uniform_times(n, gen, *t_range, dtype=dtype), None


@dataclass(frozen=True)
class LogNormalSigmas(TimeSampler):
    """EDM's noise levels (Karras et al. 2022, Table 1): ln sigma ~ N(p_mean, p_std^2) for the effective noise
    level sigma = sigma(t) / alpha(t) (for EDM, t = sigma), restricted to the training range by rejection (a
    truncated log-normal: for EDM's default [0.002, 80] the removed mass is 1.4e-5), mapped to t through
    the process's exact inverse of its log-SNR. The objective is E_sigma[lambda E l]."""

    p_mean: float = -1.2
    p_std: float = 1.2
    name: ClassVar[str] = "lognormal"

    def __post_init__(self):
        noise_levels.lognormal_sigmas(1, np.random.default_rng(0), self.p_mean, self.p_std)  # validates

    def draw(self, n, gen, proc, t_range, dtype):
        lo, hi = (float(proc.sigma(t) / proc.alpha(t)) for t in t_range)
        kept, total = [], 0
        for _ in range(100):  # a deterministic function of the generator's state
            s = noise_levels.lognormal_sigmas(n, gen, self.p_mean, self.p_std, dtype=torch.float64)
            s = s[(s >= lo) & (s <= hi)]
            kept.append(s)
            total += len(s)
            if total >= n:
                break
        else:
            raise ValueError(f"LogNormalSigmas(p_mean={self.p_mean}, p_std={self.p_std}) puts almost no mass in the "
                             f"noise range [{lo:.3g}, {hi:.3g}] of t_range={t_range}")
        s = torch.cat(kept)[:n]
        t = proc.t_from_log_snr(-2.0 * torch.log(s))
        return t.to(dtype), None


@functools.lru_cache(maxsize=32)
def _importance_table(weighting: Weighting, proc: Process, lo: float, hi: float, n_cells: int):
    """Nodes t_0 < ... < t_m of [lo, hi] and the CDF C_j of the piecewise-constant proposal density
    q(t) = p_i / h_i on cell i (h_i its width, p_i its probability), float64 NumPy."""
    half = n_cells // 2
    lam_lo, lam_hi = float(proc.log_snr(lo)), float(proc.log_snr(hi))
    # nodes uniform in t and uniform in log-SNR: weightings vary as powers of sigma, so either resolves them
    by_snr = np.asarray(proc.t_from_log_snr(np.linspace(lam_lo, lam_hi, half + 1)[1:-1]), dtype=np.float64)
    nodes = np.unique(np.concatenate([np.linspace(lo, hi, half + 1), by_snr]))
    nodes = nodes[(nodes >= lo) & (nodes <= hi)]
    with np.errstate(all="ignore"):
        lam = np.asarray(weighting.score_space(proc, nodes), dtype=np.float64)
    if not (np.all(np.isfinite(lam)) and np.all(lam > 0)):
        bad = nodes[~(np.isfinite(lam) & (lam > 0))][0]
        raise ValueError(f"ImportanceTimes needs a weighting positive and finite on t_range=[{lo}, {hi}]; "
                         f"{weighting!r} is {weighting.score_space(proc, bad)} at t={bad}")
    # cell probability from the larger end value: then lambda(t) / q(t) <= Z within every cell where lambda is
    # monotone, so the importance weights stay bounded; any positive masses keep the estimate unbiased
    mass = np.diff(nodes) * np.maximum(lam[:-1], lam[1:])
    cdf = np.concatenate([[0.0], np.cumsum(mass)])
    return nodes, cdf / cdf[-1]


@dataclass(frozen=True)
class ImportanceTimes(TimeSampler):
    """t with density q(t) proportional to ``weighting``'s lambda(t) (score space) on [t_lo, t_hi], each loss
    multiplied by 1 / (q(t) T), T = t_hi - t_lo: an unbiased estimate of the same objective as
    :class:`UniformTimes`, (1/T) int lambda(t) E l(t) dt, since E_q[lambda l / (q T)] = (1/T) int lambda l dt.

    q is piecewise constant on ``n_cells`` cells (uniform in t and in log-SNR); the per-row factor divides by
    that exact q, so the estimate is unbiased whatever the grid (the grid's fit to lambda sets only the
    variance: lambda / (q T) is nearly the constant Z / T, Z = int lambda dt). With the loss weighted by the
    same lambda, this moves the weighting from the loss into the sampling of t (Song et al. 2021's
    importance sampling of the likelihood weighting; Kingma et al. 2021).
    """

    weighting: Weighting
    n_cells: int = 2048
    name: ClassVar[str] = "importance"

    def __post_init__(self):
        if not isinstance(self.weighting, Weighting):
            raise TypeError(f"weighting must be a scoremc Weighting, got {type(self.weighting).__name__}")
        if as_count(self.n_cells, "n_cells", minimum=2) % 2:
            raise ValueError(f"n_cells must be even, got {self.n_cells}")

    def table(self, proc: Process, t_range):
        return _importance_table(self.weighting, proc, float(t_range[0]), float(t_range[1]), self.n_cells)

    def density(self, proc: Process, t_range, t):
        """q(t), the proposal's density at t (NumPy float64), for checks."""
        nodes, cdf = self.table(proc, t_range)
        i = np.clip(np.searchsorted(nodes, np.asarray(t, dtype=np.float64), side="right") - 1, 0, len(nodes) - 2)
        return np.diff(cdf)[i] / np.diff(nodes)[i]

    def draw(self, n, gen, proc, t_range, dtype):
        nodes, cdf = self.table(proc, t_range)
        dev = gen.device
        nodes_t = torch.as_tensor(nodes, device=dev)
        cdf_t = torch.as_tensor(cdf, device=dev)
        u = noise_levels.uniform_times(n, gen, 0.0, 1.0, dtype=torch.float64)
        i = (torch.searchsorted(cdf_t, u, right=True) - 1).clamp(0, len(nodes) - 2)
        p, h = cdf_t[i + 1] - cdf_t[i], nodes_t[i + 1] - nodes_t[i]
        t = nodes_t[i] + (u - cdf_t[i]) / p * h   # inverse of the piecewise-linear CDF
        factor = h / (p * (t_range[1] - t_range[0]))  # 1 / (q(t) T), q = p / h on the cell
        return t.to(dtype), factor.to(dtype)


# -- the STF reference batch ------------------------------------------------------------------------------------
def shard_sizes(total: int, n_shards: int) -> list[int]:
    """``total`` rows split over ``n_shards`` as evenly as possible, larger parts first."""
    q, r = divmod(total, n_shards)
    return [q + (s < r) for s in range(n_shards)]


#: How the STF reference batch is formed (``TrainConfig.stf_reference``). "algorithm1": STF Algorithm 1's whole
#: reference batch B_L of n_ref points holding the minibatch (``ref`` (n_ref, d) of :func:`scoremc.loss`; every
#: shard contributes its x0 followed by its share of the n_ref - batch_size extra points drawn from the data law).
#: "independent": n_ref - 1 points drawn from the data law and shared by the minibatch (``ref`` (n_ref - 1, d);
#: each row adds its own x0). In both, the other points of a row's batch are iid draws from p0 independent of
#: its x0 (in Algorithm 1 they are the other rows' x0 and the extra points), so both are STF Eq. 6 with an
#: unbiased target (reference/ERRATA.md); Algorithm 1 draws batch_size - 1 fewer points per step. "auto":
#: Algorithm 1 when n_ref >= batch_size (it needs the minibatch inside B_L), else "independent".
STF_REFERENCES = ("auto", "algorithm1", "independent")


def stf_reference_form(mode: str, objective: Objective, batch_size: int) -> str | None:
    """The form ("algorithm1" or "independent") the run uses for ``objective``, None if it has no reference
    batch (not an STFLoss, or n_ref = 1: DSM)."""
    if mode not in STF_REFERENCES:
        raise ValueError(f"stf_reference must be one of {STF_REFERENCES}, got {mode!r}")
    if not isinstance(objective, STFLoss) or objective.n_ref == 1:
        return None
    if mode == "auto":
        return "algorithm1" if objective.n_ref >= batch_size else "independent"
    if mode == "algorithm1" and objective.n_ref < batch_size:
        raise ValueError(f"stf_reference='algorithm1' needs n_ref >= batch_size (the minibatch lies inside the "
                         f"reference batch), got n_ref={objective.n_ref}, batch_size={batch_size}; use "
                         "stf_reference='independent' or 'auto'")
    return mode


def reference_size(objective: Objective, batch_size: int, form: str | None) -> int:
    """How many extra points the whole minibatch draws for the STF reference batch in ``form``
    (:func:`stf_reference_form`; 0 without a reference batch)."""
    if form is None:
        return 0
    return objective.n_ref - 1 if form == "independent" else objective.n_ref - batch_size


def reference_part(form: str | None, source: DataSource, x0: torch.Tensor, gen: torch.Generator, size: int, dtype):
    """This shard's part of the STF reference batch (None without one): ``size`` extra points drawn iid from the
    data law, preceded by the shard's x0 in the "algorithm1" form. The parts of all shards, concatenated in shard
    order (all-gathered across ranks), are the ``ref`` of ``loss``."""
    if form is None:
        return None
    # a shard may have no share of the extra points (Algorithm 1 with n_ref = batch_size, or fewer extra points than
    # shards): it draws nothing, so its generator stays where a run with other shard counts would leave it
    extra = source.sample(size, gen, dtype) if size else x0.new_zeros((0,) + tuple(x0.shape[1:]), dtype=dtype)
    return torch.cat([x0.to(dtype), extra]) if form == "algorithm1" else extra
