"""FP-Diffusion §6.2 (Lai et al. 2023) at CPU scale: the curl (antisymmetric Jacobian) and the score-FPE residual
of a DSM model and of FP-regularised models, against the exact score's (zero).

The paper's curl study (SEEDS_SPEC §4.7-4.8): a 2-D GMM under VE(0.01, 50), the regulariser R_FP with
(alpha, beta, lambda_FP, m) = (0.003, 0, 1, 1) and (0.01, 0, 1, 1), time-averaged curl MSE
(d s_2/d x_1 - d s_1/d x_2)^2: DSM x.22 (leading digit lost), alpha = 0.003: 1.89, alpha = 0.01: 0.60,
ground truth 3.7e-13. Here: the GMM of :func:`scoremc.builtin.fp_gmm` (FP-Diffusion §6.1), VE(0.01, 50),
t uniform on [1e-5, 1]; the baseline is ``FPRegularized(alpha=0)`` — FP-Diffusion's own DSM (1/2, lambda = g^2)
— so that the two differ only by the regulariser; the regularised models use the exact divergence
(``derivatives=Autograd()``; the paper's Hutchinson M = 1 estimates the same quantity with more noise) and
FP-Diffusion's finite-difference stencil in t. Every model starts from the same weights and draws.

Measured by :func:`scoremc.fpe_diagnostics` on the same x_t for every model, at t = 1e-5, 0.1, ..., 1 (the
grid of FP-Diffusion Table 4): ``r_fp``, ``r_dsm_like``, ``antisym_norm``, ``curl_ms`` by (model, t), the
trained models in float64 with central differences in x and t, the exact score by its closed forms. The
time average of ``curl_ms`` over this uniform grid is the paper's curl MSE. Also ``rel_error``
(model, step, t_eval), the relative score error over training.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ...builtin import fp_gmm
from ...derivatives import Autograd
from ...diagnostics import fpe_diagnostics
from ...experiments import training_claims
from ...experiments.training import write_outputs
from ...fp_regularized import FPRegularized
from ...noising import exact_score
from ...processes import VE
from ...testing.assertions import numpy_score
from ..data import default_t_range
from ._common import as_float64, one_thread, train_model

__all__ = ["ALPHAS", "SIZES", "experiment", "run"]

#: the regularisation strengths of the paper's curl study (beta = 0, lambda_FP = 1, m = 1)
ALPHAS = (0.003, 0.01)
SIZES = {"quick": {"steps": 150, "batch_size": 128, "ema": 0.98, "eval_every": 50, "eval_points": 256,
                   "n_diag": 128},
         "default": {"steps": 2000, "batch_size": 256, "ema": 0.997, "eval_every": 200, "eval_points": 1024,
                     "n_diag": 512}}


def objectives() -> dict:
    """name -> objective: the unregularised baseline and one FP-regularised objective per alpha of :data:`ALPHAS`."""
    out = {"dsm": FPRegularized(alpha=0.0, beta=0.0)}
    out.update({f"fp({a:g})": FPRegularized(alpha=a, beta=0.0, m=1.0, derivatives=Autograd()) for a in ALPHAS})
    return out


def experiment(*, quick: bool = False, seed: int = 0, progress=None) -> xr.Dataset:
    """Train the models and measure them with the exact score; the Dataset described in the module docstring."""
    size = SIZES["quick" if quick else "default"]
    dist, proc = fp_gmm(), VE()
    t_range = default_t_range(proc)
    ts = np.linspace(0.0, 1.0, 11)
    ts[0] = t_range[0]
    settings = {"steps": size["steps"], "batch_size": size["batch_size"], "ema": size["ema"], "lr": 1e-3,
                "eval_every": size["eval_every"], "eval_points": size["eval_points"], "t_range": t_range}

    def diagnose(score_fn):  # the same x_t for every model: a fresh generator from the same seed
        return fpe_diagnostics(score_fn, dist, proc, ts, n=size["n_diag"], rng=np.random.default_rng(seed))

    rows, evals = {"exact": diagnose(exact_score(dist, proc))}, {}
    for name, objective in objectives().items():
        result = train_model(objective, dist, proc, seed=seed, progress=progress, **settings)
        rows[name] = diagnose(numpy_score(as_float64(result.model)))
        evals[name] = result.eval
    ds = xr.concat(list(rows.values()), dim="model").assign_coords(model=list(rows))
    ev = xr.concat(list(evals.values()), dim="model").assign_coords(model=list(evals)).rename(t="t_eval")
    ds["rel_error"] = ev["rel_error"].reindex(model=ds["model"].values)  # NaN for the exact score
    ds["rel_error_se"] = ev["rel_error_se"].reindex(model=ds["model"].values)
    ds.attrs = {"experiment": "fp-curl", "source": "FP-Diffusion (Lai et al. 2023) §6.2 curl study, Table 4",
                "target": "fp-gmm", "process": repr(proc), "seed": seed, "mode": "quick" if quick else "default",
                "objectives": repr(list(objectives().values())),
                **{f"setting_{k}": v for k, v in size.items()}}
    return ds


def run(out_dir, *, quick: bool = False, seed: int = 0, progress=None) -> dict:
    """Write ``fp-curl.nc``, ``fp-curl.png`` and ``fp-curl.md`` (claims from the numbers) into out_dir."""
    with one_thread():
        ds = experiment(quick=quick, seed=seed, progress=progress)
    curl = ds["curl_ms"].mean("t")
    notes = (f"{ds.attrs['mode']} run, seed {seed}: fp-gmm under {ds.attrs['process']}. Time-averaged curl MSE "
             "(mean of curl_ms over t = 1e-5, 0.1, ..., 1): "
             + ", ".join(f"{m}: {float(curl.sel(model=m)):.3g}" for m in ds["model"].values)
             + ". The paper's (its own net and budget): DSM x.22, alpha = 0.003: 1.89, alpha = 0.01: 0.60, "
             "ground truth 3.7e-13.")
    return write_outputs(ds, training_claims.fp_curl(ds), out_dir, "fp-curl", "FP-Diffusion §6.2: curl and "
                         "score-FPE residual of DSM vs FP-regularised models", notes, training_claims.plot_fp_curl)
