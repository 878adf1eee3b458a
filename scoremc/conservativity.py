"""Conservativity of a score field: is s(., t) a gradient? (FP-Diffusion §6.2, Prop. 4.4)

A vector field is (locally) a gradient iff its Jacobian J = grad_x s is symmetric. Two measures:

* :func:`curl` (d = 2): d s_2 / d x_1 - d s_1 / d x_2 = J[1, 0] - J[0, 1], the quantity whose
  time-averaged mean square FP-Diffusion §6.2 reports (3.7e-13 for the closed-form GMM score);
* :func:`antisymmetric_norm` (any d): ||(J - J^T) / 2||_F, which in d = 2 equals |curl| / sqrt(2).

The Jacobian is the closed form for an :class:`~scoremc.noising.ExactScore` (symmetric by
construction), a user ``jacobian(x, t)`` callable, or central differences.
"""
from __future__ import annotations

import numpy as np

from . import _fd
from ._validation import as_float_array
from .noising import _check_process

__all__ = ["jacobian", "curl", "antisymmetric_norm"]


def jacobian(score_fn, x, t, *, proc=None, jacobian=None, fd_step=None) -> np.ndarray:
    """J[..., i, j] = d s_i / d x_j at x (..., d), t broadcasting against x.shape[:-1]: (..., d, d).

    Central differences (when no closed form or callable is available) use ``fd_step``, or
    :func:`scoremc._fd.default_step` of ``proc`` when given, else 1e-4.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a callable s(x, t) -> (..., d), got {type(score_fn).__name__}")
    x = as_float_array(x, "x", min_ndim=1)
    t = _check_process(proc).check_t(t) if proc is not None else as_float_array(t, "t")
    t = np.broadcast_to(t, x.shape[:-1])
    d = x.shape[-1]
    hook = _fd.jacobian_hook(score_fn, jacobian)
    if hook is not None:
        return _fd.call(hook, x, t, tail=(d, d), name="jacobian")
    if fd_step is None:
        fd_step = _fd.default_step(proc, t) if proc is not None else 1e-4
    return _fd.jacobian_fd(score_fn, x, t, fd_step)


def curl(score_fn, x, t, **options) -> np.ndarray:
    """Scalar curl d s_2/d x_1 - d s_1/d x_2 of a 2-D field, shape x.shape[:-1] (FP-Diffusion §6.2).
    ``options`` as :func:`jacobian`."""
    x = as_float_array(x, "x", min_ndim=1)
    if x.shape[-1] != 2:
        raise ValueError(f"curl is defined for d = 2 (use antisymmetric_norm for any d), got shape {x.shape}")
    J = jacobian(score_fn, x, t, **options)
    return J[..., 1, 0] - J[..., 0, 1]


def antisymmetric_norm(score_fn, x, t, **options) -> np.ndarray:
    """||(J - J^T) / 2||_F, shape x.shape[:-1]; zero iff the field is locally conservative.
    ``options`` as :func:`jacobian`."""
    J = jacobian(score_fn, x, t, **options)
    A = 0.5 * (J - np.swapaxes(J, -1, -2))
    return np.sqrt((A * A).sum(axis=(-2, -1)))
