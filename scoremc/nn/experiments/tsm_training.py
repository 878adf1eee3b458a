"""TSM Fig. 5 (De Bortoli et al. 2024, §4.2) at CPU scale: score networks trained with DSM, TSM and the
kappa / kappa-bar mixtures (:class:`scoremc.MixSM`) on a 2-D mixture, and their regression loss by t.

The paper (its parameters are not given; SEEDS_SPEC §3.5): MLP of 3 x 128 units with a 128-d sinusoidal
embedding (:class:`~scoremc.nn.ScoreMLP`), Adam, uniform lambda; left panel the mean regression loss
||s_theta(x_t, t) - L||^2 against t ("DSM explodes at t -> 0 and TSM at t -> 1; only the kappa and
kappa-bar mixtures stay bounded"), right panel MMD over training ("kappa and kappa-bar converge faster").

Here: the cosine schedule of TSM §4.1 (alpha = cos(pi t / 2)), t uniform on its default training interval
[1e-3, 1 - 1e-3] (both ends are singular, FLAG-T14), the 2-D mixture 1/2 N((-5, -5), I) + 1/2 N((5, 5), I)
of :func:`scoremc.builtin.fp_gmm` (the 8-mode ring of ``ring8``, whose modes have std 0.1, is not learned by
this network within a CPU budget: its relative score error stays at the untrained model's, measured for DSM
with the DSM-optimal weighting over 1000 steps), the EDM preconditioning for every objective (the same network
and initial weights), Adam at lr 1e-3 (the paper's 1e-4 needs more steps than a CPU budget). Recorded per
objective:

* ``loss`` (objective, t): the trained (EMA) model's mean per-sample loss at each t of a grid geometric
  towards both ends, on the same draws for every objective (:func:`._common.per_t_loss`);
* ``loss_floor`` (objective, t): the same at the exact score, E||s* - L||^2 = V(t) of the variance engine
  (:func:`scoremc.variance`, the identity of each objective): the part no model can remove;
* ``rel_error``, ``mse`` (objective, step, t): the relative and absolute score errors over training
  (:func:`scoremc.nn.train.train`'s evaluation), and from them the excess loss int lambda E||s_theta - s*||^2 dt / T
  (``weight`` = lambda = 1), a second measure of convergence beside the MMD;
* ``mmd`` (objective, stage): the paper's right panel, MMD^2 (unbiased, RBF with the median heuristic,
  :func:`scoremc.nn.metrics.mmd`) between samples of the EMA model and exact samples of p_{t_lo}, every
  ``mmd_every`` steps; the model's samples come from :class:`~scoremc.nn.sample.Heun` started at exact draws of
  p_{t_hi} (so only the score's error shows), the same draws for every objective and stage; ``mmd_floor`` is
  the MMD^2 between two exact sample sets of the same size (its noise level);
* ``train_loss`` (objective, iteration): the minibatch loss of each step.
"""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from ...builtin import fp_gmm
from ...distributions import sample
from ...experiments import training_claims
from ...experiments.training import write_outputs
from ...identities import Kappa, KappaBar
from ...noising import marginal
from ...objectives import DSM, TSM, MixSM
from ...processes import Cosine
from ...variance import variance
from ..data import default_t_range, stream_seed
from ..metrics import mmd
from ..sample import Heun
from ..sample import sample as sample_model
from ._common import as_float64, one_thread, per_t_loss, train_in_stages

__all__ = ["OBJECTIVES", "SIZES", "experiment", "run"]

#: the four losses of TSM Fig. 5, by their name in the outputs
OBJECTIVES = {"dsm": DSM(), "tsm": TSM(), "kappa": MixSM(Kappa()), "kappa_bar": MixSM(KappaBar())}
#: per size: training steps, batch, EMA decay (its averaging horizon ~ steps / 10), evaluations, draws per t
#: for the loss, x_t per time for the floor and posterior draws per x_t, grid points per half of [t_lo, t_hi],
#: steps between MMD measurements and samples per measurement
SIZES = {"quick": {"steps": 200, "batch_size": 128, "ema": 0.98, "eval_every": 50, "eval_points": 256,
                   "n_loss": 1024, "n_outer": 100, "n_inner": 16, "n_half": 5, "mmd_every": 50, "n_mmd": 512},
         "default": {"steps": 3000, "batch_size": 256, "ema": 0.997, "eval_every": 150, "eval_points": 1024,
                     "n_loss": 4096, "n_outer": 1000, "n_inner": 64, "n_half": 8, "mmd_every": 300,
                     "n_mmd": 2048}}


def time_grid(t_range, n_half: int) -> np.ndarray:
    """2 n_half - 1 times from t_lo to t_hi through 1/2, geometric in t below 1/2 and in 1 - t above (the
    losses behave like 1/t^2 and 1/(1-t)^2 at the ends); t_lo and 1 - t_hi must agree (symmetric)."""
    lo, hi = t_range
    half = np.geomspace(lo, 0.5, n_half)
    return np.concatenate([half, 1.0 - np.geomspace(1.0 - hi, 0.5, n_half)[-2::-1]])


class _SampleDistance:
    """MMD^2 of a model's samples against exact samples of p_{t_lo}, on the same draws at every call."""

    def __init__(self, dist, proc, t_range, n: int, seed: int):
        gen = torch.Generator().manual_seed(stream_seed(seed, 4))
        self.proc, self.t_range = proc, t_range
        self.x_T = sample(marginal(dist, proc, t_range[1]), n, gen, dtype=torch.float64)
        self.exact = sample(marginal(dist, proc, t_range[0]), n, gen, dtype=torch.float64)
        self.floor = float(mmd(self.exact, sample(marginal(dist, proc, t_range[0]), n, gen, dtype=torch.float64)))
        self.values = []

    def __call__(self, step: int, model) -> None:
        x = sample_model(as_float64(model), self.proc, Heun(), x_T=self.x_T, t_range=self.t_range, progress=False)
        self.values.append(float(mmd(x, self.exact)))


def experiment(*, quick: bool = False, seed: int = 0, progress=None) -> xr.Dataset:
    """Train the four models and measure them; the Dataset described in the module docstring."""
    size = SIZES["quick" if quick else "default"]
    dist, proc = fp_gmm(), Cosine()
    t_range = default_t_range(proc)
    ts = time_grid(t_range, size["n_half"])
    settings = {"steps": size["steps"], "batch_size": size["batch_size"], "ema": size["ema"], "lr": 1e-3,
                "eval_every": size["eval_every"], "eval_points": size["eval_points"], "eval_times": tuple(ts),
                "t_range": t_range}
    names = list(OBJECTIVES)
    stages = np.arange(size["mmd_every"], size["steps"] + 1, size["mmd_every"])
    cols = {k: [] for k in ("loss", "loss_se", "loss_std", "rel_error", "rel_error_se", "mse", "train_loss", "mmd")}
    for name in names:
        distance = _SampleDistance(dist, proc, t_range, size["n_mmd"], seed)
        result = train_in_stages(OBJECTIVES[name], dist, proc, stages, distance, seed=seed, progress=progress,
                                 **settings)
        cols["mmd"].append(np.array(distance.values))
        mean, se, std = per_t_loss(as_float64(result.model), OBJECTIVES[name], dist, proc, ts, n=size["n_loss"],
                                   seed=seed)
        for k, v in (("loss", mean), ("loss_se", se), ("loss_std", std), ("train_loss", result.loss),
                     ("rel_error", result.eval["rel_error"].values),
                     ("rel_error_se", result.eval["rel_error_se"].values), ("mse", result.eval["mse"].values)):
            cols[k].append(v)
        steps = result.eval["step"].values
    floor = variance([o.identity for o in OBJECTIVES.values()], dist, proc, ts, n_outer=size["n_outer"],
                     n_inner=size["n_inner"], seed=seed, f_divergence=False, progress=progress).isel(target=0)
    dims = {"loss": ("objective", "t"), "loss_se": ("objective", "t"), "loss_std": ("objective", "t"),
            "rel_error": ("objective", "step", "t"), "rel_error_se": ("objective", "step", "t"),
            "mse": ("objective", "step", "t"), "mmd": ("objective", "stage"),
            "train_loss": ("objective", "iteration")}
    data = {k: (dims[k], np.stack(v)) for k, v in cols.items()}
    data["loss_floor"] = (("objective", "t"), floor["V"].values)
    data["loss_floor_se"] = (("objective", "t"), floor["V_se"].values)
    data["weight"] = ("t", np.ones_like(ts))  # uniform lambda
    data["mmd_floor"] = ((), distance.floor)
    coords = {"objective": names, "t": ts, "step": steps, "stage": stages, "iteration": np.arange(1, size["steps"] + 1),
              "sigma": ("t", np.asarray(proc.sigma(ts))), "alpha": ("t", np.asarray(proc.alpha(ts)))}
    attrs = {"experiment": "tsm-fig5", "source": "TSM (De Bortoli et al. 2024) Fig. 5, §4.2", "target": "fp-gmm",
             "process": repr(proc), "seed": seed, "t_mid": 0.5, "mode": "quick" if quick else "default",
             "loss": "||s(x_t, t) - L(x0, x_t, t)||^2, uniform lambda", "objectives": repr(list(OBJECTIVES.values())),
             **{f"setting_{k}": v for k, v in size.items()}}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def run(out_dir, *, quick: bool = False, seed: int = 0, progress=None) -> dict:
    """Write ``tsm-fig5.nc``, ``tsm-fig5.png`` and ``tsm-fig5.md`` (claims from the numbers) into out_dir."""
    with one_thread():
        ds = experiment(quick=quick, seed=seed, progress=progress)
    notes = (f"{ds.attrs['mode']} run, seed {seed}: fp-gmm under {ds.attrs['process']}, uniform lambda, t in "
             f"[{ds.t.values[0]:g}, {ds.t.values[-1]:g}]. `loss` is the trained EMA model's mean per-sample "
             "regression loss, `loss_floor` the exact score's (the variance engine's V(t)); `mmd` the MMD^2 of "
             "Heun samples of the EMA model against exact samples over training (two exact sets: "
             f"{float(ds.mmd_floor):.2g}); the excess loss int E||s_theta - s*||^2 dt / T over training.")
    return write_outputs(ds, training_claims.tsm_fig5(ds), out_dir, "tsm-fig5", "TSM Fig. 5: regression loss by t "
                         "of DSM, TSM, kappa and kappa-bar models", notes, training_claims.plot_tsm_fig5)
