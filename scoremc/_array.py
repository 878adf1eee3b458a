"""One formula, two array libraries: the array namespace of the inputs (``array_api_compat``).

Every formula a training loop needs is written once against the array API standard and runs on
NumPy (float64, the reference) and on torch (float32/float64, CPU or CUDA, differentiable). The
namespace is read from the inputs, as scipy does: torch's when any input is a torch tensor, else
NumPy's. Python scalars, lists and NumPy arrays mixed with torch tensors are converted to the
tensors' dtype and device. Nothing here imports torch; ``array_api_compat`` only looks at
modules already imported.
"""
from __future__ import annotations

import math

import array_api_compat as aac
import array_api_compat.numpy as np_xp
import numpy as np

from . import _blas

__all__ = ["namespace", "is_numpy", "device_of", "default_float", "logsumexp", "matmul", "matvec", "outer_sum",
           "to_numpy", "np_xp"]


def namespace(*values):
    """The compat namespace of the array inputs: torch's when any input is a torch tensor (or another
    non-NumPy array), else NumPy's. Scalars, lists and None are ignored."""
    arrays = [v for v in values if v is not None and aac.is_array_api_obj(v) and not aac.is_numpy_array(v)]
    return aac.array_namespace(*arrays) if arrays else np_xp


def is_numpy(xp) -> bool:
    return xp is np_xp


def device_of(x):
    return aac.device(x)


def default_float(xp):
    """The library's default real floating dtype (float64 for NumPy, ``torch.get_default_dtype()``)."""
    if is_numpy(xp):
        return np.float64
    return xp.__array_namespace_info__().default_dtypes()["real floating"]


def logsumexp(a, axis: int = -1):
    """log sum exp a along ``axis`` (max-shifted: finite for entries of any size; -inf rows stay -inf)."""
    xp = namespace(a)
    m = xp.max(a, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    return xp.log(xp.sum(xp.exp(a - m), axis=axis)) + xp.squeeze(m, axis=axis)


def matmul(a, b):
    """``a @ b`` in the inputs' namespace. On NumPy it is :func:`._blas.matmul`: every product on one
    BLAS thread, so the bits do not depend on the BLAS thread count or on other threads (issue 13);
    the reference layer writes its products with this, never with ``@``."""
    if aac.is_numpy_array(a) and aac.is_numpy_array(b):
        return _blas.matmul(a, b)
    return namespace(a, b).matmul(a, b)


def matvec(A, v):
    """A v over leading batch dims: A (..., i, j), v (..., j) -> (..., i) (einsum-free, as the array
    API has no einsum)."""
    return matmul(A, v[..., None])[..., 0]


def outer_sum(r, u, v=None):
    """sum_k r_k u_k v_k^T: r (..., K), u, v (..., K, d) -> (..., d, d)."""
    v = u if v is None else v
    xp = namespace(u)
    return matmul(xp.matrix_transpose(r[..., None] * u), v)


def to_numpy(x) -> np.ndarray:
    """float64 NumPy copy of an array of any namespace (detached from autograd, moved to the CPU)."""
    if aac.is_torch_array(x):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


LOG_2PI = math.log(2.0 * math.pi)
