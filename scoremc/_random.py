"""Random draws from an explicit generator: a ``numpy.random.Generator`` gives NumPy arrays, a
``torch.Generator`` gives tensors on the generator's device. Nothing draws from global state.

:class:`RowStream` is the third kind, used inside chunked computations: a counter-based stream
whose every variate is a pure function of (key, call number, global row index, position within the
row), so that a computation split into row chunks of any size draws exactly the same numbers for
every row. Its key comes from the caller's generator (one draw), so results stay determined by it.
"""
from __future__ import annotations

import sys

import numpy as np

from ._array import default_float, np_xp

__all__ = ["generator_namespace", "normal", "uniform", "categorical", "rademacher", "RowStream"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z):
    """The SplitMix64 output function on uint64 arrays (wrapping arithmetic): mix(seed + n * golden)
    over n = 1, 2, ... is the SplitMix64 sequence (Steele et al. 2014), which passes BigCrush."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class RowStream:
    """Counter-based draws for the rows ``rows`` (global indices) of a chunked computation.

    A draw of ``shape`` names its row axis (``rows_axis``, of length ``len(rows)``); element
    (row r, position j within the row) of the c-th draw is mix(key_c + (r P + j + 1) golden),
    P = the number of elements per row, key_c = mix(key + (c + 1) golden). Uniforms are
    (bits >> 11 + 1/2) 2^-53 in (0, 1); normals their inverse normal CDF. Two chunks of the same
    computation make the same sequence of draws (same shapes but the row axis), so every row gets
    the same numbers however the rows are chunked. :meth:`expand` gives an independent stream over
    (row, inner draw) pairs, also independent of how the inner draws are blocked.
    """

    def __init__(self, key: int, rows):
        self.key = np.uint64(key)
        self.rows = np.asarray(rows, dtype=np.uint64)
        self.calls = 0

    @classmethod
    def from_generator(cls, rng: np.random.Generator, rows) -> "RowStream":
        return cls(int(rng.integers(0, 2**63)), rows)

    def expand(self, m: int, start: int, stop: int) -> "RowStream":
        """An independent stream over the composite rows (row, i), i in [start, stop) of m per row,
        ordered row-major: each inner draw i of each row gets numbers that depend on neither the
        blocking of the rows nor that of the inner draws."""
        rows = (self.rows[:, None] * np.uint64(m) + np.arange(start, stop, dtype=np.uint64)[None, :]).ravel()
        with np.errstate(over="ignore"):
            key = _mix(np.asarray(self.key ^ _M1, dtype=np.uint64))
        return RowStream(int(key), rows)

    def subset(self, start: int, stop: int) -> "RowStream":
        """The same stream (fresh call count) for rows[start:stop]: replaying the same calls on it gives
        exactly the numbers of those rows."""
        return RowStream(int(self.key), self.rows[start:stop])

    def uniform(self, shape, rows_axis: int = 0) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        rows_axis %= len(shape)
        if shape[rows_axis] != len(self.rows):
            raise ValueError(f"draw of shape {shape} has {shape[rows_axis]} rows on axis {rows_axis}, the stream "
                             f"{len(self.rows)}")
        self.calls += 1
        rest = shape[:rows_axis] + shape[rows_axis + 1:]
        per_row = int(np.prod(rest, dtype=np.int64))
        with np.errstate(over="ignore"):
            key = _mix(np.asarray(self.key + np.uint64(self.calls) * _GOLDEN, dtype=np.uint64))
            pos = self.rows[:, None] * np.uint64(per_row) + np.arange(1, per_row + 1, dtype=np.uint64)[None, :]
            bits = _mix(key + pos * _GOLDEN)
        u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        return np.moveaxis(u.reshape((len(self.rows),) + rest), 0, rows_axis)

    def normal(self, shape, rows_axis: int = 0) -> np.ndarray:
        from scipy.special import ndtri

        return ndtri(self.uniform(shape, rows_axis))


def _is_torch(rng) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(rng, torch.Generator)


def generator_namespace(rng):
    """The namespace whose arrays ``rng`` draws."""
    if _is_torch(rng):
        import array_api_compat.torch as xp

        return xp
    return np_xp


def _draw(rng, shape, dtype, torch_name: str, numpy_name: str, rows_axis: int = 0):
    """torch.<torch_name>(shape, generator=rng) on the generator's device, or rng.<numpy_name>(shape);
    a RowStream draws with its row axis ``rows_axis``."""
    shape = tuple(int(s) for s in shape)
    if isinstance(rng, RowStream):
        out = getattr(rng, "normal" if numpy_name == "standard_normal" else "uniform")(shape, rows_axis)
        return out if dtype is None else out.astype(dtype)
    if _is_torch(rng):
        import torch

        dtype = dtype if dtype is not None else default_float(generator_namespace(rng))
        return getattr(torch, torch_name)(shape, generator=rng, dtype=dtype, device=rng.device)
    out = getattr(rng, numpy_name)(shape)
    return out if dtype is None else out.astype(dtype)


def normal(rng, shape, dtype=None, rows_axis: int = 0):
    """Standard normal draws of ``shape`` (float64 for NumPy unless ``dtype``)."""
    return _draw(rng, shape, dtype, "randn", "standard_normal", rows_axis)


def uniform(rng, shape, dtype=None, rows_axis: int = 0):
    """U[0, 1) draws of ``shape``."""
    return _draw(rng, shape, dtype, "rand", "random", rows_axis)


def rademacher(rng, shape, dtype=None):
    """+-1 with probability 1/2 each."""
    u = uniform(rng, shape, dtype)
    xp = generator_namespace(rng)
    return 2.0 * xp.astype(u < 0.5, u.dtype) - 1.0


def categorical(rng, probs, shape, rows_axis: int = 0):
    """Independent indices of ``shape`` (an int n or a tuple) drawn with probabilities ``probs`` (K,)
    (NumPy or torch, like ``rng``; by inverse CDF for a RowStream)."""
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64))
    if isinstance(rng, RowStream):
        cdf = np.cumsum(np.asarray(probs, dtype=np.float64))
        k = np.searchsorted(cdf / cdf[-1], rng.uniform(shape, rows_axis), side="right")
        return np.minimum(k, len(cdf) - 1)
    if _is_torch(rng):
        import torch

        p = torch.as_tensor(np.asarray(probs, dtype=np.float64), device=rng.device)
        return torch.multinomial(p, n, replacement=True, generator=rng).reshape(shape)
    return rng.choice(len(probs), size=shape, p=np.asarray(probs, dtype=np.float64))
