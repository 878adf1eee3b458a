"""The torch layer: score networks, the streamed STF target, training, sampling, likelihood and
evaluation against the exact layer. Importing it imports torch; ``import scoremc`` never does.

Every formula here comes from the reference layer (one formula for NumPy and torch): the objectives
are :func:`scoremc.loss`'s, the preconditionings :mod:`scoremc.precond`'s, the processes
:mod:`scoremc.processes`'. This package adds what only a training loop needs.

The names are bound eagerly: a submodule that shares a function's name (``train``) would otherwise be
bound on the package by its own import and shadow the function (torch dominates the import time).
"""
from __future__ import annotations

from .models import Preconditioned, ScoreMLP, SinusoidalEmbedding
from .stf import stf_target
from .train import TrainConfig, load_checkpoint, train

__all__ = ["SinusoidalEmbedding", "ScoreMLP", "Preconditioned", "stf_target", "train", "TrainConfig",
           "load_checkpoint"]
