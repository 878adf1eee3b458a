"""Noise-level diagnostics of a score model against the exact layer (FP-Diffusion §3.1, §6.2).

At each t, on x_t = alpha x0 + sigma eps with x0 ~ p0 (FP-Diffusion's ``fp_dist='pert'``):

* r_FP(t) = (1/d) E ||eps[s](x_t, t)||_2, the score-FPE residual (FP-Diffusion §3.1, Fig. 1);
* r_DSM-like(t) = (1/d) E ||s(x_t, t) - grad log p(x_t | x0)||_2 (same section; l2 norm, not
  squared, no lambda(t)); the conditional score is ``DSI.integrand``;
* for d = 2, the mean square curl, FP-Diffusion §6.2 (its time average is the paper's curl MSE);
  for any d, the mean antisymmetric-Jacobian norm (:mod:`scoremc.conservativity`).

:func:`fpe_diagnostics` returns them as an ``xarray.Dataset`` over ``t``.
"""
from __future__ import annotations

import numpy as np

from ._validation import as_count, as_float_array, as_generator, call_score, check_process, scalar_time
from .conservativity import antisymmetric_norm, curl
from .distributions import normal_form
from .fpe import fpe_residual
from .identities import DSI
from .noising import noised_sample

__all__ = ["r_fp", "r_dsm_like", "fpe_diagnostics"]


def r_fp(score_fn, dist, proc, t, *, n: int, rng: np.random.Generator, derivatives=None) -> float:
    """r_FP(t) = (1/d) E ||eps[s](x_t, t)||_2 over n draws of x_t (FP-Diffusion §3.1), the residual by
    :func:`scoremc.fpe_residual` with the ``derivatives`` source."""
    proc = check_process(proc)
    t = scalar_time(proc, t)
    rng = as_generator(rng)
    _, xt = noised_sample(dist, proc, t, as_count(n, "n"), rng)
    res = fpe_residual(score_fn, proc, xt, t, derivatives=derivatives, rng=rng)
    return float(np.linalg.norm(res, axis=-1).mean() / normal_form(dist).dim)


def r_dsm_like(score_fn, dist, proc, t, *, n: int, rng: np.random.Generator) -> float:
    """r_DSM-like(t) = (1/d) E ||s(x_t, t) - DSI.integrand(x0, x_t)||_2 (FP-Diffusion §3.1)."""
    proc = check_process(proc)
    t = scalar_time(proc, t)
    rng = as_generator(rng)
    x0, xt = noised_sample(dist, proc, t, as_count(n, "n"), rng)
    s = call_score(score_fn, xt, np.full(len(xt), t))
    diff = s - DSI().integrand(dist, proc.at(np.float64(t)), x0, xt)
    return float(np.linalg.norm(diff, axis=-1).mean() / normal_form(dist).dim)


def fpe_diagnostics(score_fn, dist, proc, ts, *, n: int, rng: np.random.Generator, derivatives=None,
                    jacobian=None):
    """r_FP, r_DSM-like and the conservativity measures at each t in ``ts``, as a Dataset over t.

    Variables: ``r_fp``, ``r_dsm_like``, ``antisym_norm`` (mean ||(J - J^T)/2||_F) and, for d = 2,
    ``curl_ms`` (mean square curl; ``curl_ms.mean()`` over a uniform t grid is FP-Diffusion §6.2's
    time-averaged curl MSE). ``derivatives`` is the derivative source of the residual, ``jacobian`` that
    of the Jacobian (both default to closed forms for an exact score, else central differences).
    """
    import xarray as xr  # only here: ``import scoremc`` stays light

    proc = check_process(proc)
    rng = as_generator(rng)
    n = as_count(n, "n")
    ts = as_float_array(ts, "ts", ndim=1)
    d = normal_form(dist).dim
    jac_opts = dict(proc=proc, derivatives=jacobian)
    out = {k: [] for k in ("r_fp", "r_dsm_like", "antisym_norm", "curl_ms")}
    for t in ts:
        out["r_fp"].append(r_fp(score_fn, dist, proc, t, n=n, rng=rng, derivatives=derivatives))
        out["r_dsm_like"].append(r_dsm_like(score_fn, dist, proc, t, n=n, rng=rng))
        _, xt = noised_sample(dist, proc, float(t), n, rng)
        out["antisym_norm"].append(float(antisymmetric_norm(score_fn, xt, t, **jac_opts).mean()))
        if d == 2:
            out["curl_ms"].append(float((curl(score_fn, xt, t, **jac_opts) ** 2).mean()))
    data = {k: ("t", np.asarray(v)) for k, v in out.items() if v}
    ds = xr.Dataset(data, coords={"t": ts})
    ds.attrs.update(process=repr(proc), n=n, d=d,
                    source="FP-Diffusion §3.1 (r_FP, r_DSM-like), §6.2 (curl)")
    return ds
