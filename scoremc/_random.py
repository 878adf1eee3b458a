"""Random draws from an explicit generator: a ``numpy.random.Generator`` gives NumPy arrays, a
``torch.Generator`` gives tensors on the generator's device. Nothing draws from global state."""
from __future__ import annotations

import sys

import numpy as np

from ._array import default_float, np_xp

__all__ = ["generator_namespace", "normal", "uniform", "categorical", "rademacher"]


def _is_torch(rng) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(rng, torch.Generator)


def generator_namespace(rng):
    """The namespace whose arrays ``rng`` draws."""
    if _is_torch(rng):
        import array_api_compat.torch as xp

        return xp
    return np_xp


def _draw(rng, shape, dtype, torch_name: str, numpy_name: str):
    """torch.<torch_name>(shape, generator=rng) on the generator's device, or rng.<numpy_name>(shape)."""
    shape = tuple(int(s) for s in shape)
    if _is_torch(rng):
        import torch

        dtype = dtype if dtype is not None else default_float(generator_namespace(rng))
        return getattr(torch, torch_name)(shape, generator=rng, dtype=dtype, device=rng.device)
    out = getattr(rng, numpy_name)(shape)
    return out if dtype is None else out.astype(dtype)


def normal(rng, shape, dtype=None):
    """Standard normal draws of ``shape`` (float64 for NumPy unless ``dtype``)."""
    return _draw(rng, shape, dtype, "randn", "standard_normal")


def uniform(rng, shape, dtype=None):
    """U[0, 1) draws of ``shape``."""
    return _draw(rng, shape, dtype, "rand", "random")


def rademacher(rng, shape, dtype=None):
    """+-1 with probability 1/2 each."""
    u = uniform(rng, shape, dtype)
    xp = generator_namespace(rng)
    return 2.0 * xp.astype(u < 0.5, u.dtype) - 1.0


def categorical(rng, probs, n: int):
    """n independent indices drawn with probabilities ``probs`` (K,) (NumPy or torch, like ``rng``)."""
    if _is_torch(rng):
        import torch

        p = torch.as_tensor(np.asarray(probs, dtype=np.float64), device=rng.device)
        return torch.multinomial(p, int(n), replacement=True, generator=rng)
    return rng.choice(len(probs), size=int(n), p=np.asarray(probs, dtype=np.float64))
