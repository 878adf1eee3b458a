"""The torch layer: score networks, the streamed STF target, training (and, later, sampling and
evaluation against the exact layer). Importing it imports torch; ``import scoremc`` never does.

Every formula here comes from the reference layer (one formula for NumPy and torch): the objectives
are :func:`scoremc.loss`'s, the preconditionings :mod:`scoremc.precond`'s, the processes
:mod:`scoremc.processes`'. This package adds what only a training loop needs.
"""
from __future__ import annotations

import importlib

import torch  # noqa: F401  (scoremc.nn is the one place that imports torch)

#: public name -> submodule (imported on first use, so one submodule's import cost is not paid by another)
_EXPORTS = {
    "SinusoidalEmbedding": "models",
    "ScoreMLP": "models",
    "Preconditioned": "models",
    "stf_target": "stf",
    "train": "train",
    "TrainConfig": "train",
    "load_checkpoint": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'scoremc.nn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
