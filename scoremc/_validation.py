"""Input checks shared by the reference layer.

Every public entry point converts its arguments here, so that bad input fails at the boundary
with a message naming the argument and what was expected (DESIGN.md, "Conventions").
Nothing is clipped: a value outside its domain is an error, never silently moved inside it.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["as_float_array", "as_points", "as_count", "check_finite"]


def as_float_array(value, name: str, *, ndim: int | None = None, min_ndim: int = 0) -> np.ndarray:
    """Return ``value`` as a float64 array, refusing non-numeric, complex and non-finite input."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - numpy raises many types here
        raise TypeError(f"{name} must be array-like of real numbers, got {type(value).__name__}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
                                   or arr.dtype == bool):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {arr.shape}")
    check_finite(arr, name)
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` if ``arr`` holds NaN or infinity, saying where the first one is."""
    bad = ~np.isfinite(arr)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite; found {arr[where]} at index {where}")


def as_points(x, d: int, name: str = "x") -> np.ndarray:
    """Return points of shape ``(..., d)`` as float64, checking the trailing dimension."""
    arr = as_float_array(x, name, min_ndim=1)
    if arr.shape[-1] != d:
        raise ValueError(f"{name} must have trailing dimension d={d}, got shape {arr.shape}")
    return arr


def as_count(n, name: str, *, minimum: int = 1) -> int:
    """Return ``n`` as a Python int, refusing floats, bools and values below ``minimum``."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(n).__name__} {n!r}")
    n = int(n)
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def as_generator(rng, name: str = "rng") -> np.random.Generator:
    """Demand an explicit ``numpy.random.Generator``: randomness never comes from global state."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name} must be a numpy.random.Generator (e.g. numpy.random.default_rng(0)), "
                        f"got {type(rng).__name__}")
    return rng
