"""STF Fig. 5 direction (Xu, Tong & Jaakkola 2023) at CPU scale: a larger reference batch n_ref gives a lower-variance
regression target and faster early convergence on a multi-mode target.

The paper (SEEDS_SPEC §1.4-1.5): "faster convergence and better FID as n grows" (Fig. 5, CIFAR-10); V_STF
decreases with n (Fig. 3(c,d), Theorem 2). Here: the two-mode 2-D mixture of :func:`scoremc.builtin.fp_gmm`
(its posterior is bimodal at intermediate noise levels, where STF's average over the reference batch helps; the
8-mode ``ring8`` is not learned by this network within a CPU budget, see :mod:`.tsm_training`) under
VE(0.01, 50) (STF's VE setting), lambda(t) = sigma_t^2 (STF §2, Song et al.), t uniform on [1e-5, 1],
STFLoss(n_ref) for n_ref = 1 (DSM exactly), 16 and 256, minibatches of 128 (n_ref = 256 is STF Algorithm 1:
the minibatch inside a reference batch of 256; n_ref = 16 shares 15 fresh points; :class:`TrainConfig`'s
``stf_reference="auto"``), the same initial weights, draws and budget for every n_ref. The EMA horizon
(1 / (1 - ema)) is short against the "early" window so that the evaluated weights follow the trajectory.

Recorded: ``V`` (n_ref, t), the target variance in the loss's own scale, sigma_t^2 V(t) with
V(t) = E_{p_t} tr Cov(target | x_t) from the variance engine (:func:`scoremc.variance`, ``STF(n)`` identities;
exact for DSI, nested Monte Carlo for STF), with ``V_se``; ``rel_error`` and ``mse`` (n_ref, step, t), the
relative and absolute score errors over training; ``weight`` (t) = lambda(t); ``train_loss`` (n_ref,
iteration). The convergence claim compares the excess loss int lambda E||s_theta - s*||^2 dt / T averaged over
the evaluations in the first ``early_fraction`` = 1/4 of the steps (a plain average of the relative error over
t is dominated by t -> 0, where lambda = sigma^2 leaves the model unconstrained and its relative error grows
past 100 while training proceeds).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ...builtin import fp_gmm
from ...experiments import training_claims
from ...experiments.training import write_outputs
from ...identities import DSI, STF
from ...objectives import STFLoss
from ...processes import VE
from ...variance import variance
from ...weighting import SigmaSquared
from ..data import default_t_range
from ..evaluate import default_eval_times
from ._common import one_thread, train_model

__all__ = ["EARLY_FRACTION", "N_REFS", "SIZES", "experiment", "run"]

N_REFS = (1, 16, 256)
#: the part of training whose errors the early-convergence claim averages
EARLY_FRACTION = 0.25
SIZES = {"quick": {"steps": 120, "batch_size": 128, "ema": 0.9, "eval_every": 10, "eval_points": 256, "n_times": 8,
                   "n_outer": 48, "n_inner": 4},
         "default": {"steps": 1600, "batch_size": 128, "ema": 0.98, "eval_every": 50, "eval_points": 1024,
                     "n_times": 12, "n_outer": 256, "n_inner": 16}}


def experiment(*, quick: bool = False, seed: int = 0, progress=None) -> xr.Dataset:
    """Train one model per n_ref of :data:`N_REFS` and measure the target variance; the Dataset of the module
    docstring."""
    size = SIZES["quick" if quick else "default"]
    dist, proc, weighting = fp_gmm(), VE(), SigmaSquared()
    t_range = default_t_range(proc)
    ts = default_eval_times(proc, t_range, size["n_times"])
    settings = {"steps": size["steps"], "batch_size": size["batch_size"], "ema": size["ema"], "lr": 1e-3,
                "weighting": weighting, "eval_every": size["eval_every"], "eval_points": size["eval_points"],
                "eval_times": tuple(ts), "t_range": t_range}
    rel, rel_se, mse, history = [], [], [], []
    for n in N_REFS:
        result = train_model(STFLoss(n), dist, proc, seed=seed, progress=progress, **settings)
        rel.append(result.eval["rel_error"].values)
        rel_se.append(result.eval["rel_error_se"].values)
        mse.append(result.eval["mse"].values)
        history.append(result.loss)
        steps = result.eval["step"].values
    ids = [DSI() if n == 1 else STF(n) for n in N_REFS]  # STF(1) is DSI; the engine's closed form is DSI's
    v = variance(ids, dist, proc, ts, n_outer=size["n_outer"], n_inner=size["n_inner"], seed=seed,
                 f_divergence=False, weightings=(weighting,), progress=progress).isel(target=0)
    lam = np.asarray(weighting.score_space(proc, ts), dtype=np.float64)
    data = {"V": (("n_ref", "t"), v["V_weighted"].sel(weighting=weighting.name).values),
            "V_se": (("n_ref", "t"), lam * v["V_se"].values),
            "V_unweighted": (("n_ref", "t"), v["V"].values),
            "rel_error": (("n_ref", "step", "t"), np.stack(rel)),
            "rel_error_se": (("n_ref", "step", "t"), np.stack(rel_se)),
            "mse": (("n_ref", "step", "t"), np.stack(mse)), "weight": ("t", lam),
            "train_loss": (("n_ref", "iteration"), np.stack(history))}
    coords = {"n_ref": list(N_REFS), "t": ts, "step": steps, "iteration": np.arange(1, size["steps"] + 1),
              "sigma": ("t", np.asarray(proc.sigma(ts)))}
    attrs = {"experiment": "stf-nref", "source": "STF (Xu et al. 2023) Fig. 5 direction; Fig. 3(c,d), Theorem 2",
             "target": "fp-gmm", "process": repr(proc), "weighting": repr(weighting), "seed": seed,
             "early_fraction": EARLY_FRACTION, "mode": "quick" if quick else "default",
             "V": "sigma_t^2 E_{p_t} tr Cov(target | x_t), the target variance in the loss's scale",
             **{f"setting_{k}": v for k, v in size.items()}}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def run(out_dir, *, quick: bool = False, seed: int = 0, progress=None) -> dict:
    """Write ``stf-nref.nc``, ``stf-nref.png`` and ``stf-nref.md`` (claims from the numbers) into out_dir."""
    with one_thread():
        ds = experiment(quick=quick, seed=seed, progress=progress)
    notes = (f"{ds.attrs['mode']} run, seed {seed}: fp-gmm under {ds.attrs['process']}, lambda = sigma^2, minibatch "
             f"{ds.attrs['setting_batch_size']}, n_ref = {', '.join(str(int(n)) for n in ds['n_ref'].values)} "
             "(1 is DSM). V is the variance engine's sigma^2-weighted target variance.")
    return write_outputs(ds, training_claims.stf_nref(ds), out_dir, "stf-nref", "STF: target variance and early "
                         "convergence against the reference batch size", notes, training_claims.plot_stf_nref)
