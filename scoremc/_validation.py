"""Input checks shared by the whole package (the names here are public to the package's modules).

Every public entry point converts its arguments here, so that bad input fails at the boundary with
a message naming the argument and what was expected. Nothing is clipped: a value outside its
domain is an error, never silently moved inside it. Checks are namespace-aware: NumPy input is
converted to float64 (the reference precision); a torch tensor keeps its dtype and device and is
never converted to NumPy (a check costs one reduction on its device).
"""
from __future__ import annotations

import math
import numbers
import re

import array_api_compat as aac
import numpy as np

from ._array import default_float, device_of, is_numpy, namespace

__all__ = ["as_float_array", "as_array", "as_points", "as_count", "as_real", "as_real_in", "check_finite", "as_generator",
           "check_process", "scalar_time", "call_score", "check_callable", "as_coefficient", "check_result", "named",
           "mentions"]


def _numeric_numpy(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - numpy raises many types here
        raise TypeError(f"{name} must be array-like of real numbers, got {type(value).__name__}") from exc
    if arr.dtype == bool:  # True/False are not numbers here: a mask passed by mistake, never 1.0/0.0
        raise TypeError(f"{name} must hold real numbers, got booleans (dtype bool)")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def _check_ndim(shape, name, ndim, min_ndim):
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(shape)}")
    if len(shape) < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(shape)}")


class _Named:
    """Re-raise a ValueError/TypeError (NumPy's, torch's) whose message does not name the argument
    with the name in front, so that every conversion failure says which argument it was."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is not None and issubclass(kind, (ValueError, TypeError)) and not mentions(str(exc), self.name):
            raise (TypeError if issubclass(kind, TypeError) else ValueError)(f"{self.name}: {exc}") from exc
        return False


def mentions(message: str, name: str) -> bool:
    """Whether ``message`` names ``name`` as a word (``t`` in "t=0.5", not in "must")."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


def named(name: str):
    """Context manager: ValueError/TypeError raised inside name ``name`` (see :class:`_Named`)."""
    return _Named(name)


def check_result(out, name: str, what: str = "the result"):
    """ValueError naming ``name`` when finite input gave a non-finite result (an overflow of float64,
    e.g. |x|^2 for |x| ~ 1e300): no silent NaN/inf."""
    xp = namespace(out)
    if not bool(xp.all(xp.isfinite(out))):
        raise ValueError(f"{name} is too large or too small for float64 here: {what} overflows (non-finite); "
                         "rescale it")
    return out


def as_float_array(value, name: str, *, ndim: int | None = None, min_ndim: int = 0) -> np.ndarray:
    """Return ``value`` as a float64 NumPy array, refusing non-numeric, complex and non-finite input."""
    with named(name):
        arr = _numeric_numpy(value, name).astype(np.float64, copy=False)
    _check_ndim(arr.shape, name, ndim, min_ndim)
    check_finite(arr, name)
    return arr


def check_finite(arr, name: str) -> None:
    """Raise ``ValueError`` if ``arr`` (any namespace) holds NaN or infinity, saying where."""
    xp = namespace(arr)
    bad = ~xp.isfinite(arr)
    if bool(xp.any(bad)):
        where = tuple(int(i[0]) for i in xp.nonzero(bad)) if arr.ndim else ()
        raise ValueError(f"{name} must be finite; found {float(arr[where])} at index {where}")


def as_array(value, name: str, xp=None, *, like=None, ndim: int | None = None, min_ndim: int = 0):
    """``value`` as a real floating array of the namespace ``xp`` (default: its own), checked finite.

    NumPy: float64 (``like`` is ignored). torch: a floating tensor keeps its dtype and device unless
    ``like`` is given; anything else (integers, lists, NumPy arrays, scalars) takes the dtype and
    device of ``like`` (else torch's defaults).
    """
    with named(name):
        return _as_array(value, name, xp, like, ndim, min_ndim)


def _as_array(value, name, xp, like, ndim, min_ndim):
    xp = namespace(value) if xp is None else xp
    if is_numpy(xp):  # ``like`` plays no part: the reference precision is float64
        return as_float_array(value, name, ndim=ndim, min_ndim=min_ndim)
    native = namespace(value) is xp
    if native and (xp.isdtype(value.dtype, "complex floating") or xp.isdtype(value.dtype, "bool")):
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    if native and xp.isdtype(value.dtype, "real floating") and like is None:
        arr = value
    elif native:  # a tensor of another dtype or device: a differentiable cast
        dtype = like.dtype if like is not None else default_float(xp)
        arr = aac.to_device(xp.astype(value, dtype), device_of(like if like is not None else value))
    else:
        dtype = like.dtype if like is not None else default_float(xp)
        device = device_of(like) if like is not None else None
        arr = xp.asarray(_numeric_numpy(value, name), dtype=dtype, device=device)
    _check_ndim(arr.shape, name, ndim, min_ndim)
    check_finite(arr, name)
    return arr


def as_points(x, d: int, name: str = "x", xp=None, like=None):
    """Points of shape ``(..., d)`` in the namespace ``xp``, checking the trailing dimension."""
    arr = as_array(x, name, xp, like=like, min_ndim=1)
    if arr.shape[-1] != d:
        raise ValueError(f"{name} must have trailing dimension d={d}, got shape {tuple(arr.shape)}")
    return arr


def as_coefficient(value, name: str, like, xp=None):
    """A per-row coefficient (alpha, sigma, ...) for arrays shaped like ``like`` (..., d): a scalar, or an
    array with ``like.ndim`` dimensions and a trailing 1 (e.g. (N, 1) for (N, d)) — the shape that
    broadcasts row by row. Refuses (N,) against (N, d), which would broadcast along d."""
    xp = namespace(value, like) if xp is None else xp
    arr = as_array(value, name, xp, like=like)
    if arr.ndim and (arr.ndim != like.ndim or arr.shape[-1] != 1):
        raise ValueError(f"{name} must be a scalar or have shape (..., 1) with {like.ndim} dimensions to broadcast "
                         f"row by row against shape {tuple(like.shape)}, got {tuple(arr.shape)} "
                         "(per-row coefficients are (N, 1))")
    return arr


def as_real(value, name: str) -> float:
    """A real scalar parameter (a process constant, a tolerance) as a finite Python float; refuses
    booleans, strings, arrays and NaN/inf with a message naming ``name``."""
    zero_d = isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)) and not zero_d:
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def as_real_in(value, name: str, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
               optional: bool = False, allow_inf: bool = False):
    """A real setting (a learning rate, a tolerance, a sampler constant) as a Python float inside the interval
    from ``lo`` to ``hi`` (either end None: unbounded; ``lo_open``/``hi_open``: excluded). A non-number, a
    boolean, NaN or an infinity (+inf too unless ``allow_inf``) raises TypeError; a value outside the interval
    ValueError; both name ``name``. ``optional``: None passes through."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    try:  # any real: NumPy scalars, Fractions, Decimals, ints beyond float range (-> +-inf)
        f = float(value)
    except OverflowError:
        f = math.inf if value > 0 else -math.inf
    if math.isnan(f) or (math.isinf(f) and not (allow_inf and f > 0)):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if (lo is not None and (f <= lo if lo_open else f < lo)) or \
            (hi is not None and (f >= hi if hi_open else f > hi)):
        raise ValueError(f"{name} must lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, "
                         f"got {value!r}")
    return f


def as_count(n, name: str, *, minimum: int = 1) -> int:
    """Return ``n`` as a Python int, refusing floats, bools and values below ``minimum``."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(n).__name__} {n!r}")
    n = int(n)
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    if n > 2**53:  # beyond any array size (and than int64 arithmetic of sizes stays exact)
        raise ValueError(f"{name} must be <= 2**53, got {n}")
    return n


def as_generator(rng, name: str = "rng"):
    """Demand an explicit ``numpy.random.Generator`` or ``torch.Generator``: randomness never comes
    from global state."""
    from ._random import RowStream

    if isinstance(rng, (np.random.Generator, RowStream)):
        return rng
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(rng, torch.Generator):
        return rng
    raise TypeError(f"{name} must be a numpy.random.Generator (e.g. numpy.random.default_rng(0)) or a "
                    f"torch.Generator, got {type(rng).__name__}")


def check_process(proc):
    from .processes import Process

    if not isinstance(proc, Process):
        raise TypeError(f"proc must be a scoremc Process (VE, VP, SubVP, Cosine, EDM), got {type(proc).__name__}")
    return proc


def scalar_time(proc, t) -> float:
    """One validated time as a Python float (for functions defined at a single time)."""
    xp = namespace(t)
    t = proc.check_t(as_array(t, "t", xp))
    if t.ndim != 0:
        raise ValueError(f"t must be a scalar here, got shape {tuple(t.shape)}; use exact_score or loss for "
                         "per-row times")
    return float(t)


def check_callable(fn, name: str):
    if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be a callable (x, t) -> array, got {type(fn).__name__}")
    return fn


def call_score(fn, x, t, tail=None, name: str = "score_fn"):
    """``fn`` on x (..., d) with t broadcast to ``x.shape[:-1]``, flattened into one call of shape
    (P, d), (P,) (so a network sees one large batch); the result is checked to be (P,) + tail and
    reshaped to x.shape[:-1] + tail. ``tail`` defaults to (d,) (a vector field); () for scalar fields,
    (d, d) for Jacobians. NumPy in, float64 NumPy out; torch in, torch out (no conversion)."""
    xp = namespace(x, t)
    d = x.shape[-1]
    tail = (d,) if tail is None else tuple(tail)
    lead = tuple(x.shape[:-1])
    size = int(np.prod(lead, dtype=np.int64))
    if not is_numpy(xp) and namespace(t) is xp:
        # a tensor t: a differentiable cast (torch.asarray of a tensor that requires grad detaches it on
        # torch < 2.13, which breaks d/dt by autograd)
        tt = aac.to_device(xp.astype(t, x.dtype), device_of(x))
    else:
        tt = xp.asarray(t, dtype=x.dtype, device=device_of(x))
    try:
        tt = xp.reshape(xp.broadcast_to(tt, lead), (size,))
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"t of shape {tuple(tt.shape)} does not broadcast against x's rows {lead}") from exc
    out = fn(xp.reshape(x, (size, d)), tt)
    if is_numpy(xp):
        out = np.asarray(out, dtype=np.float64)
    want = (size,) + tail
    if tuple(out.shape) != want:
        raise ValueError(f"{name}(x, t) must return shape {want} for x of shape {(size, d)}, got {tuple(out.shape)}")
    return xp.reshape(out, lead + tail)
