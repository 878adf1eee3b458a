"""Conservativity of a score field: is s(., t) a gradient? (FP-Diffusion §6.2, Prop. 4.4)

A vector field is (locally) a gradient iff its Jacobian J = grad_x s is symmetric. Two measures:

* :func:`curl` (d = 2): d s_2 / d x_1 - d s_1 / d x_2 = J[1, 0] - J[0, 1], the quantity whose
  time-averaged mean square FP-Diffusion §6.2 reports (3.7e-13 for the closed-form GMM score);
* :func:`antisymmetric_norm` (any d): ||(J - J^T) / 2||_F, which in d = 2 equals |curl| / sqrt(2).

The Jacobian comes from a derivative source (:mod:`scoremc.derivatives`): by default the closed form
of an exact/analytic score (symmetric by construction) and central differences otherwise.
NumPy or torch.
"""
from __future__ import annotations

from ._array import namespace
from ._validation import as_array, check_process
from .derivatives import resolve

__all__ = ["jacobian", "curl", "antisymmetric_norm"]


def jacobian(score_fn, x, t, *, proc=None, derivatives=None):
    """J[..., i, j] = d s_i / d x_j at x (..., d), t broadcasting against x.shape[:-1]: (..., d, d).

    ``derivatives``: a derivative source (default Exact() for an exact/analytic score, else
    CentralDifference(), whose default step needs ``proc``).
    """
    source = resolve(derivatives, score_fn)
    xp = namespace(x, t)
    x = as_array(x, "x", xp, min_ndim=1)
    t = check_process(proc).check_t(as_array(t, "t", xp, like=x)) if proc is not None else as_array(t, "t", xp, like=x)
    t = xp.broadcast_to(t, tuple(x.shape[:-1]))
    return source.jacobian(score_fn, x, t, proc=proc)


def curl(score_fn, x, t, **options):
    """Scalar curl d s_2/d x_1 - d s_1/d x_2 of a 2-D field, shape x.shape[:-1] (FP-Diffusion §6.2).
    ``options`` as :func:`jacobian`."""
    x = as_array(x, "x", min_ndim=1)
    if x.shape[-1] != 2:
        raise ValueError(f"x: curl is defined for d = 2 (use antisymmetric_norm for any d), got shape {tuple(x.shape)}")
    J = jacobian(score_fn, x, t, **options)
    return J[..., 1, 0] - J[..., 0, 1]


def antisymmetric_norm(score_fn, x, t, **options):
    """||(J - J^T) / 2||_F, shape x.shape[:-1]; zero iff the field is locally conservative.
    ``options`` as :func:`jacobian`."""
    J = jacobian(score_fn, x, t, **options)
    xp = namespace(J)
    A = 0.5 * (J - xp.matrix_transpose(J))
    return xp.sqrt(xp.sum(A * A, axis=(-2, -1)))
