"""Training a score network with any objective of :func:`scoremc.loss`: :func:`train`, :class:`TrainConfig`,
:func:`load_checkpoint`, and the evaluation against the exact score :func:`relative_score_error`.

One step: the global minibatch (``batch_size`` rows) is made of ``shards`` equal blocks; each block draws its
x0, times, noise and share of the STF reference batch from its own ``torch.Generator`` (seeded from
(seed, shard)), the per-row losses come from :func:`scoremc.loss` times the time sampler's factor, and Adam
steps on their mean; an EMA of the weights (``torch.optim.swa_utils.AveragedModel``) follows. Under
``torch.distributed`` (DDP, launched by torchrun) each rank computes its blocks and the STF reference parts
are all-gathered, so a run on W ranks equals a one-process run with ``shards=W`` up to the order of
floating-point reductions. Everything random comes from generators whose states are checkpointed: resuming
continues bit for bit (on CPU) to the weights of an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .. import __version__
from .._validation import as_count, as_real_in, check_process
from ..objectives import Objective, loss
from ..weighting import Weighting
from . import checkpoint as ckpt
from .checkpoint import load_checkpoint
from .data import (DATA_ORDERS, STF_REFERENCES, DataSource, ImportanceTimes, TimeSampler, UniformTimes, as_source,
                   check_t_range, default_t_range, reference_part, reference_size, shard_sizes, stf_reference_form,
                   stream_seed)
from .distributed import gather_dicts, gather_reference, mean_over_ranks, world_and_rank
from .evaluate import default_eval_times, relative_score_error

__all__ = ["TrainConfig", "TrainResult", "LossEstimator", "train", "load_checkpoint", "relative_score_error"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: settings that change neither the trajectory nor the result, so a resumed run may change them
_RESUMABLE = ("steps", "eval_every", "checkpoint_every")


def _int(value, name, minimum):
    return as_count(value, name, minimum=minimum)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train` (every one validated; a bad value raises naming it).

    * ``steps``, ``batch_size`` (the global minibatch), ``lr`` (Adam), ``lr_ref_steps`` (None: constant lr; else
      the inverse-square-root decay lr / sqrt(max(k / lr_ref_steps, 1)) at step k of Karras et al. 2024 (EDM2),
      a function of the step only, so a resumed run may still change ``steps``), ``grad_clip`` (max global
      gradient norm, None: off), ``ema`` (EMA decay per step, as Karras et al. 2022 evaluate EMA weights).
    * ``times``: the noise-level sampler, :class:`~scoremc.nn.data.UniformTimes` (default),
      :class:`~scoremc.nn.data.LogNormalSigmas` (EDM) or :class:`~scoremc.nn.data.ImportanceTimes`.
      ``weighting``: lambda(t) of :func:`scoremc.loss` (None: 1; with ImportanceTimes, None means its weighting,
      so that the weighting moves from the loss into the sampling of t).
    * ``t_range`` (t_lo, t_hi): the training interval, default the process's domain less ``t_eps`` at its
      singular ends (:func:`~scoremc.nn.data.default_t_range`; EDM: [sigma_min, sigma_max]).
    * ``seed``; ``dtype`` ("float32" default, or "float64"); ``data_order`` for finite data sets ("epochs" or
      "replacement", :class:`~scoremc.nn.data.FiniteData`); ``shards`` (blocks per minibatch, default: the
      number of ranks).
    * ``stf_reference``: how an STFLoss draws its reference batch, "auto" (default), "algorithm1" (STF
      Algorithm 1: the minibatch inside a batch of n_ref points) or "independent" (n_ref - 1 points shared by
      the minibatch, each row adding its x0); :data:`~scoremc.nn.data.STF_REFERENCES`.
    * ``eval_every`` (0: only at the end), ``eval_times`` (default: 12 times over ``t_range``, log-spaced for
      EDM), ``eval_points`` (x_t per time); ``checkpoint_every`` (0: only at the end; needs ``out``).
    """

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    lr_ref_steps: int | None = None
    ema: float = 0.999
    grad_clip: float | None = None
    times: TimeSampler = UniformTimes()
    weighting: Weighting | None = None
    t_range: tuple | None = None
    t_eps: float | None = None
    seed: int = 0
    dtype: str = "float32"
    data_order: str = "epochs"
    shards: int | None = None
    stf_reference: str = "auto"
    eval_every: int = 0
    eval_times: tuple | None = None
    eval_points: int = 2048
    checkpoint_every: int = 0

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - normalising a frozen instance
        _int(self.steps, "steps", 1)
        _int(self.batch_size, "batch_size", 1)
        as_real_in(self.lr, "lr", 0, lo_open=True)
        if self.lr_ref_steps is not None:
            _int(self.lr_ref_steps, "lr_ref_steps", 1)
        as_real_in(self.ema, "ema", 0, 1, hi_open=True)
        as_real_in(self.grad_clip, "grad_clip", 0, lo_open=True, optional=True)
        if not isinstance(self.times, TimeSampler):
            raise TypeError(f"times must be a TimeSampler (UniformTimes(), LogNormalSigmas(), ImportanceTimes(w)), "
                            f"got {type(self.times).__name__}")
        if self.weighting is not None and not isinstance(self.weighting, Weighting):
            raise TypeError(f"weighting must be a scoremc Weighting or None, got {type(self.weighting).__name__}")
        if self.weighting is None and isinstance(self.times, ImportanceTimes):
            set_("weighting", self.times.weighting)
        if self.t_range is not None:
            if self.t_eps is not None:
                raise ValueError("give t_range or t_eps, not both")
            try:
                set_("t_range", tuple(float(v) for v in self.t_range))
            except (TypeError, ValueError):
                raise TypeError(f"t_range must be a pair of numbers, got {self.t_range!r}") from None
            if len(self.t_range) != 2:
                raise ValueError(f"t_range must be a pair (t_lo, t_hi), got {self.t_range!r}")
        as_real_in(self.t_eps, "t_eps", 0, optional=True)
        _int(self.seed, "seed", 0)
        dtype = {v: k for k, v in _DTYPES.items()}.get(self.dtype, self.dtype)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64' (or the torch dtype), got {self.dtype!r}")
        set_("dtype", dtype)
        if self.data_order not in DATA_ORDERS:
            raise ValueError(f"data_order must be one of {DATA_ORDERS}, got {self.data_order!r}")
        if self.shards is not None:
            _int(self.shards, "shards", 1)
        if self.stf_reference not in STF_REFERENCES:
            raise ValueError(f"stf_reference must be one of {STF_REFERENCES}, got {self.stf_reference!r}")
        _int(self.eval_every, "eval_every", 0)
        _int(self.checkpoint_every, "checkpoint_every", 0)
        _int(self.eval_points, "eval_points", 2)
        if self.eval_times is not None:
            ts = np.asarray(self.eval_times, dtype=np.float64).reshape(-1)
            if ts.size == 0 or not np.all(np.isfinite(ts)):
                raise ValueError(f"eval_times must be a non-empty sequence of finite times, got {self.eval_times!r}")
            set_("eval_times", tuple(float(t) for t in ts))

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based)."""
        if self.lr_ref_steps is None:
            return self.lr
        return self.lr / math.sqrt(max((step + 1) / self.lr_ref_steps, 1.0))

    def as_json(self) -> dict:
        """The settings as JSON values (objects by their repr)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v if v is None or isinstance(v, (int, float, str)) \
                else repr(v)
        return out


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What :func:`train` returns. ``model``: the EMA model, a score callable s(x (N, d), t (N,)) in eval mode;
    ``raw_model``: the trained (non-averaged) weights, the module passed in; ``loss``: (steps,) float64, the
    global minibatch mean of the per-row loss estimates at each step; ``eval``: the evaluation
    (:func:`relative_score_error` by ``step`` and ``t``) or None without exact laws; ``out``: the run folder."""

    model: nn.Module
    raw_model: nn.Module
    loss: np.ndarray
    eval: object
    step: int
    out: str | None


@dataclass(frozen=True, eq=False)
class ShardBatch:
    """One shard's draws: x0, eps (n, d), t (n,), factor (n,) or None, its STF reference part, and its
    generator (which then draws the objective's own randomness: STF without ref, Hutchinson probes)."""

    x0: torch.Tensor
    eps: torch.Tensor
    t: torch.Tensor
    factor: torch.Tensor | None
    ref: torch.Tensor | None
    gen: torch.Generator


@dataclass(frozen=True, eq=False)
class LossEstimator:
    """The per-row estimates whose minibatch mean the training loop minimises: for each row,
    factor(t) * loss(objective, ...)(t) with t from ``times``; their expectation is the training objective
    (:class:`~scoremc.nn.data.TimeSampler`). ``reference``: the STF reference form
    (:func:`~scoremc.nn.data.stf_reference_form`, None without one). :meth:`estimates` draws a one-shard batch
    (for checks)."""

    objective: Objective
    source: DataSource
    proc: object
    times: TimeSampler
    t_range: tuple
    weighting: Weighting | None
    dtype: torch.dtype
    reference: str | None = None

    def draw(self, step: int, shard: int, n: int, gen: torch.Generator, ref_size: int) -> ShardBatch:
        x0 = self.source.minibatch(step, shard, n, gen, self.dtype)
        ref = reference_part(self.reference, self.source, x0, gen, ref_size, self.dtype)
        t, factor = self.times.draw(n, gen, self.proc, self.t_range, self.dtype)
        eps = torch.randn(x0.shape, generator=gen, dtype=self.dtype, device=x0.device)
        return ShardBatch(x0, eps, t, factor, ref, gen)

    def loss(self, model, b: ShardBatch, ref) -> torch.Tensor:
        try:
            out = loss(self.objective, model, self.source.dist, self.proc, b.t, b.x0, b.eps, rng=b.gen,
                       weighting=self.weighting, ref=ref)
        except TypeError as exc:
            if self.source.dist is None:
                raise TypeError(f"{self.objective!r} needs the target's law or score, which a bare data tensor does "
                                "not have: pass an Empirical (or a GaussianMixture) as data") from exc
            raise
        return out if b.factor is None else out * b.factor

    def estimates(self, model, n: int, gen: torch.Generator, *, ref_size: int | None = None) -> torch.Tensor:
        """n per-row estimates (n,) of one shard holding the whole reference batch."""
        k = reference_size(self.objective, n, self.reference) if ref_size is None else ref_size
        b = self.draw(0, 0, n, gen, k)
        return self.loss(model, b, b.ref)


class _StepLoss(nn.Module):
    """The per-row losses of a rank's shards in one forward call: the module DDP wraps (a DDP module expects
    one forward per backward; objectives call the score several times)."""

    def __init__(self, model, estimator: LossEstimator):
        super().__init__()
        self.model, self.estimator = model, estimator

    def forward(self, batches, ref):
        return torch.cat([self.estimator.loss(self.model, b, ref) for b in batches])


# -- the loop --------------------------------------------------------------------------------------------------
def _config(config, options) -> TrainConfig:
    if config is None:
        return TrainConfig(**options)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    return dataclasses.replace(config, **options) if options else config


def train(model, objective, data, proc, *, config: TrainConfig | None = None, out=None, device=None, progress=None,
          resume: bool | None = None, meta: dict | None = None, **options) -> TrainResult:
    """Train the score model ``model`` (an ``nn.Module`` s(x (N, d), t (N,)) -> (N, d), e.g.
    ``Preconditioned(ScoreMLP(d), proc)``) on ``objective`` (any objective of :func:`scoremc.loss`: DSM, TSM,
    MixSM, STFLoss, LCSS, SSM, FDSSM, FPRegularized) for ``data`` under ``proc``.

    ``data``: a ``GaussianMixture`` (exact laws; x0 drawn on the fly), an ``Empirical`` (a finite data set with
    exact laws) or a tensor (M, d) (a finite data set; no evaluation, and objectives needing a target score or
    law fail). Settings: ``config`` (a :class:`TrainConfig`) and/or its fields as keyword arguments. The model is
    moved (in place) to ``device`` (default: where it is) and the config's dtype (float32 default).

    ``out``: the run folder (:mod:`scoremc.nn.checkpoint`): config, checkpoints every ``checkpoint_every`` steps
    and at the end, ``eval.nc``. ``resume``: None resumes when ``out`` holds a checkpoint, True demands one,
    False refuses an ``out`` that holds one. A resumed run continues bit for bit (CPU) to the weights of an
    uninterrupted one. ``progress``: a tqdm bar (None: only on a terminal). ``meta``: extra JSON for config.json.

    Under torch.distributed (DDP; gloo on CPU, NCCL on CUDA) call it on every rank; rank 0 evaluates and writes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (e.g. Preconditioned(ScoreMLP(d), proc)), got "
                        f"{type(model).__name__}")
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a scoremc Objective (DSM(), TSM(), STFLoss(n), ...), got "
                        f"{type(objective).__name__}")
    proc = check_process(proc)
    cfg = _config(config, options)
    if resume not in (None, True, False):
        raise TypeError(f"resume must be None, True or False, got {resume!r}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
    world, rank = world_and_rank()
    shards = cfg.shards or world
    if shards % world:
        raise ValueError(f"shards={shards} must be a multiple of the number of ranks {world}")
    if cfg.batch_size % shards:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of shards={shards}")
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device=device, dtype=cfg.torch_dtype).train()
    source = as_source(data, device=device, dtype=cfg.torch_dtype, order=cfg.data_order, seed=cfg.seed,
                       batch_size=cfg.batch_size)
    t_range = check_t_range(proc, cfg.t_range if cfg.t_range is not None else default_t_range(proc, cfg.t_eps))
    form = stf_reference_form(cfg.stf_reference, objective, cfg.batch_size)
    est = LossEstimator(objective, source, proc, cfg.times, t_range, cfg.weighting, cfg.torch_dtype, form)
    eval_times = np.asarray(cfg.eval_times) if cfg.eval_times is not None else default_eval_times(proc, t_range)
    proc.check_t(eval_times, "eval_times")

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))
    mine = range(rank * shards // world, (rank + 1) * shards // world)
    gens = {s: torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, 1, s)) for s in mine}
    ref_sizes = shard_sizes(reference_size(objective, cfg.batch_size, form), shards)
    run = {"versions": {"scoremc": __version__, "torch": torch.__version__}, "objective": repr(objective),
           "process": ckpt.process_spec(proc), "data": source.describe(), "model": repr(model),
           "model_spec": ckpt.model_spec(model), "t_range": list(t_range), "shards": shards,
           "settings": cfg.as_json(), "meta": meta or {}}

    start, history, evals = 0, [], []
    if out is not None:
        out = os.fspath(out)
        os.makedirs(out, exist_ok=True)
        exists = ckpt.has_checkpoint(out)
        if resume is True and not exists:
            raise FileNotFoundError(f"resume=True but out={out!r} holds no checkpoint")
        if resume is False and exists:
            raise FileExistsError(f"out={out!r} already holds a checkpoint; pass resume=True (or None) to continue "
                                  "it, or use another folder")
        if exists:
            ckpt.check_resume(ckpt.read_config(out), run, out, _RESUMABLE)
            state = ckpt.load_state(out)
            model.load_state_dict(state["model"])
            ema.module.load_state_dict(state["ema"])
            ema.n_averaged.copy_(state["ema_n_averaged"])
            optimizer.load_state_dict(state["optimizer"])
            for s in mine:
                gens[s].set_state(state["generators"][s])
            start, history = int(state["step"]), state["loss"].tolist()
            evals = ckpt.load_evals(out, start)
        elif rank == 0:
            ckpt.write_config(out, run)

    step_loss = _StepLoss(model, est)
    net = step_loss
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(step_loss, device_ids=[device] if device.type == "cuda" else None,
                                      broadcast_buffers=False)
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=True if (progress is False or rank) else None if progress is None else False)
    for step in range(start, cfg.steps):
        batches = [est.draw(step, s, cfg.batch_size // shards, gens[s], ref_sizes[s]) for s in mine]
        ref = gather_reference([b.ref for b in batches], world)
        value = net(batches, ref).mean()
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        ema.update_parameters(model)
        history.append(mean_over_ranks(value.detach(), world))
        if not math.isfinite(history[-1]):
            raise FloatingPointError(f"the loss is {history[-1]} at step {step}: lower lr, set grad_clip, or check the "
                                     "weighting and t_range (a weight that explodes at an end of the interval)")
        done = step + 1
        bar.update(1)
        if done % 50 == 0 or done == cfg.steps:
            bar.set_postfix(loss=f"{np.mean(history[-50:]):.4g}", refresh=False)
        if source.has_exact_laws and rank == 0 and ((cfg.eval_every and done % cfg.eval_every == 0)
                                                    or done == cfg.steps):
            ds = relative_score_error(ema.module, source.dist, proc, eval_times, n=cfg.eval_points, seed=cfg.seed,
                                      device=device)
            evals.append(ds.expand_dims(step=[done]))
            if out is not None:
                ckpt.save_evals(out, evals)
        if out is not None and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps):
            _checkpoint(out, done, model, ema, optimizer, gens, history, shards, world, rank)
    bar.close()
    ema.module.eval()
    return TrainResult(model=ema.module, raw_model=model, loss=np.asarray(history, dtype=np.float64),
                       eval=ckpt.concat_evals(evals), step=len(history), out=out)


def _checkpoint(out, step, model, ema, optimizer, gens, history, shards, world, rank):
    states = gather_dicts({s: g.get_state() for s, g in gens.items()}, world)
    if rank == 0:
        state = {"step": step, "optimizer": optimizer.state_dict(), "ema_n_averaged": ema.n_averaged.detach().cpu(),
                 "generators": [states[s] for s in range(shards)],
                 "loss": torch.tensor(history, dtype=torch.float64)}
        ckpt.save_checkpoint(out, step, model, ema.module, state)
    if world > 1:
        torch.distributed.barrier()
