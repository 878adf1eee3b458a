"""What the training experiments share: a seeded model, its training, and per-t losses at fixed draws."""
from __future__ import annotations

import contextlib
import copy
import tempfile

import numpy as np
import torch

from ...distributions import normal_form, sample
from ...objectives import loss
from ..data import stream_seed
from ..models import Preconditioned, ScoreMLP
from ..train import train

__all__ = ["as_float64", "one_thread", "per_t_loss", "seeded_model", "train_in_stages", "train_model"]


@contextlib.contextmanager
def one_thread():
    """Run the block with one torch intra-op thread, then restore the setting. The networks are tiny (d = 2,
    128 units, batches of 128-256 rows): threading costs more than it gains (measured: 200 DSM steps took 5 s
    on one thread and 31 s on two threads of two busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seeded_model(dist, proc, seed: int, precond: str = "edm") -> Preconditioned:
    """``Preconditioned(ScoreMLP(d), proc, precond, sigma_data=dist.sigma_data)`` with initial weights from
    ``seed`` (global torch RNG state untouched), the same for every objective of an experiment."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Preconditioned(ScoreMLP(normal_form(dist).dim), proc, precond, sigma_data=dist.sigma_data)


def train_model(objective, dist, proc, *, seed: int, progress=None, **settings):
    """:func:`scoremc.nn.train.train` of a fresh :func:`seeded_model` (same weights and draws for every
    objective given the same seed); ``settings`` as :class:`~scoremc.nn.train.TrainConfig`."""
    return train(seeded_model(dist, proc, seed), objective, dist, proc, seed=seed, progress=progress, **settings)


def train_in_stages(objective, dist, proc, stages, at_stage, *, seed: int, progress=None, **settings):
    """:func:`train_model` stopped at each step count of ``stages`` (increasing) and resumed from a temporary run
    folder, which :func:`~scoremc.nn.train.train` continues bit for bit as one run would; ``at_stage(step,
    ema_model)`` after each stage (e.g. to draw samples). Returns the last stage's TrainResult (whole history)."""
    with tempfile.TemporaryDirectory() as folder:
        for steps in stages:
            result = train(seeded_model(dist, proc, seed), objective, dist, proc, out=folder, seed=seed,
                           progress=progress, **{**settings, "steps": int(steps)})
            at_stage(int(steps), result.model)
    return result


def as_float64(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``model`` in eval mode: evaluated on float64 draws, and differentiable by central
    differences in x and t without float32 round-off (FP-Diffusion's residual needs second derivatives)."""
    return copy.deepcopy(model).to(torch.float64).eval()


def per_t_loss(score_fn, objective, dist, proc, ts, *, n: int, seed: int, weighting=None):
    """The per-sample loss of ``objective`` at each time of ``ts`` (T,): mean, standard error and standard
    deviation over n draws (x0 ~ p0, eps ~ N(0, I), float64), each (T,).

    The draws at the i-th time come from a generator seeded by (``seed``, 3, i): every objective and score
    is compared on the same x0 and eps (common random numbers). ``score_fn``: a float64 model
    (:func:`as_float64`) or the exact score."""
    out = np.empty((3, len(ts)))
    for i, t in enumerate(np.asarray(ts, dtype=np.float64)):
        gen = torch.Generator().manual_seed(stream_seed(seed, 3, i))
        x0 = sample(dist, n, gen, dtype=torch.float64)
        eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            values = loss(objective, score_fn, dist, proc, float(t), x0, eps, rng=gen, weighting=weighting)
        values = values.numpy()
        std = values.std(ddof=1)
        out[:, i] = values.mean(), std / np.sqrt(n), std
    return out[0], out[1], out[2]
