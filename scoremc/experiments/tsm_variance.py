"""TSM (De Bortoli et al. 2024) §4.1 on CPU: Fig. 1 (targets, kappa_t and kappa-bar_t) and Fig. 2
(variance of the DSI, TSI, kappa- and kappa-bar-mixture estimators through time) on the four 1-D
targets of :data:`scoremc.builtin.TSM_TARGETS` under the cosine schedule.

Fig. 2 of the paper uses 10,000 points x_t per time and 100 posterior samples each (``full``).
The variances are per posterior sample (V(t)); an estimator averaging n samples has V / n.
We add the pointwise variance-optimal mixture (``optimal``), which the paper does not give.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ..builtin import TSM_TARGETS
from ..distributions import logpdf
from ..identities import DSI, TSI, Kappa, KappaBar, Mix, OptimalMix
from ..plotting import panels, save_figure
from ..processes import Cosine
from ..variance import save_dataset, variance
from ._common import write_sweep

__all__ = ["tsm_estimator_variance", "SETTINGS", "ESTIMATORS"]

#: (n_times, n_outer, n_inner) per mode
SETTINGS = {"quick": (8, 200, 16), "report": (24, 2000, 64), "full": (40, 10_000, 100)}
ESTIMATORS = (DSI(), TSI(), Mix(Kappa()), Mix(KappaBar()), OptimalMix())


def tsm_estimator_variance(out_dir, *, mode: str = "report", seed: int = 0, scheduler=None,
                           progress=None) -> xr.Dataset:
    """Writes ``tsm_kappa.nc/.png`` (Fig. 1) and ``tsm_variance.nc/.png/.md`` (Fig. 2) in out_dir."""
    n_t, n_outer, n_inner = SETTINGS[mode]
    proc = Cosine()
    targets = {name: make() for name, make in TSM_TARGETS.items()}
    # both ends are singular (sigma_0 = 0 for DSI, alpha_1 = 0 for TSI; FLAG-T14): stay inside
    ts = np.linspace(0.02, 0.98, n_t)
    _figure1(targets, proc, Path(out_dir))
    ds = variance(list(ESTIMATORS), targets, proc, ts, n_outer=n_outer, n_inner=n_inner, seed=seed,
                  scheduler=scheduler, progress=progress)
    notes = ("Cosine schedule. TSI's exact variance for the unit Gaussian is the corrected "
             "d sigma^2 / (alpha^2 sigma_tar^2 S) of FLAG-T1; kappa-mixtures have zero variance there.")
    write_sweep(ds, out_dir, "tsm_variance", "TSM Fig. 2: estimator variance V(t), cosine schedule", notes=notes)
    return ds


def _figure1(targets, proc, out: Path):
    t = np.linspace(0.0, 0.99, 100)
    grid = np.linspace(-2.5, 2.5, 401)
    ds = xr.Dataset(
        {"kappa": (("target", "t"), np.stack([Kappa()(d, proc.at(t)) for d in targets.values()])),
         "kappa_bar": (("target", "t"), np.stack([KappaBar()(d, proc.at(t)) for d in targets.values()])),
         "density": (("target", "x"), np.stack([np.exp(logpdf(d, grid[:, None])) for d in targets.values()]))},
        coords={"target": list(targets), "t": t, "x": grid}, attrs={"process": repr(proc)})
    save_dataset(ds, out / "tsm_kappa.nc")
    fig, axes = panels(2 * len(targets), width=3.4, height=2.8)
    axes = list(axes)
    for i, name in enumerate(targets):
        top, bottom = axes[i], axes[i + len(targets)]
        top.plot(grid, ds["density"].sel(target=name))
        top.set_title(name, fontsize=9)
        bottom.plot(t, ds["kappa"].sel(target=name), label=r"$\kappa_t$")
        bottom.plot(t, ds["kappa_bar"].sel(target=name), "--", label=r"$\bar\kappa_t$")
        bottom.set_xlabel("t")
    axes[len(targets)].legend(fontsize=8)
    save_figure(fig, out / "tsm_kappa.png")
