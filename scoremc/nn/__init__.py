"""The torch layer: score networks, the streamed STF target, training, sampling, likelihood and
evaluation against the exact layer, and shipped models. Importing it imports torch; ``import scoremc``
never does.

Every formula here comes from the reference layer (one formula for NumPy and torch): the objectives
are :func:`scoremc.loss`'s, the preconditionings :mod:`scoremc.precond`'s, the processes
:mod:`scoremc.processes`'. This package adds what only a training loop, a sampler or an evaluation needs.

The names are bound eagerly: a submodule that shares a function's name (``train``, ``sample``) would
otherwise be bound on the package by its own import and shadow the function (torch dominates the
import time anyway).
"""
from __future__ import annotations

# models and the STF target
from .models import Preconditioned, ScoreMLP, SinusoidalEmbedding
from .stf import stf_target
# training
from .train import TrainConfig, load_checkpoint, train
from .data import ImportanceTimes, LogNormalSigmas, UniformTimes
# sampling and likelihood
from .sample import EulerMaruyama, Heun, PredictorCorrector, Sampler, sample
from .likelihood import log_likelihood
# evaluation against the exact layer
from .evaluate import end_to_end, evaluate, relative_score_error, score_diagnostics
from .metrics import median_bandwidth, mmd, sliced_wasserstein
# shipped models
from .card import load, read_card

__all__ = [
    "SinusoidalEmbedding", "ScoreMLP", "Preconditioned", "stf_target",
    "train", "TrainConfig", "load_checkpoint", "UniformTimes", "LogNormalSigmas", "ImportanceTimes",
    "Sampler", "EulerMaruyama", "Heun", "PredictorCorrector", "sample", "log_likelihood",
    "evaluate", "relative_score_error", "score_diagnostics", "end_to_end", "mmd", "sliced_wasserstein",
    "median_bandwidth",
    "load", "read_card",
]
