"""STF (Xu et al. 2023) variance experiments on CPU: Fig. 2(b)/3(a) and Fig. 3(c,d).

* :func:`dsm_variance_and_divergence` — V_DSM(t) (STF Eq. 4) and D(t) (§6.1, in Theorem 2's
  argument order, FLAG-S6) on the two-Gaussians (d = 64, mu = 0.1 1, sigma-hat = 1e-4) and on
  the digits data set (standing in for CIFAR-10-4096), VE(0.01, 50), all normalised to max = 1
  as in the paper. Both the unweighted V_DSM and sigma_t^2 V_DSM are written: FLAG-S3 shows the
  published curve's shape is that of the weighted one.
* :func:`stf_variance_by_reference_size` — V_STF(t) for several reference-batch sizes n_ref
  against V_DSM(t) / (n_ref - 1) and the corrected Theorem-2 leading term (FLAG-S4/S5).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ..builtin import digits, two_gaussians
from ..identities import DSI, STF
from ..plotting import panels, save_figure
from ..processes import VE
from ..variance import variance
from ..weighting import SigmaSquared
from ._common import write_sweep

__all__ = ["dsm_variance_and_divergence", "stf_variance_by_reference_size", "SETTINGS_DSM", "SETTINGS_NREF"]

#: (n_times, n_outer, n_inner) per mode; "full" follows the paper (1k points; 200 perturbations)
SETTINGS_DSM = {"quick": (8, 64, 16), "report": (20, 256, 32), "full": (40, 1000, 200)}
#: V_STF needs n_outer * n_inner * n_ref reference draws per time: fewer inner draws per point
SETTINGS_NREF = {"quick": (6, 48, 4), "report": (12, 128, 8), "full": (24, 1000, 32)}


def _targets():
    return {"two-gaussians": two_gaussians(), "digits": digits()}


def dsm_variance_and_divergence(out_dir, *, mode: str = "report", seed: int = 0, scheduler=None,
                                progress=None) -> xr.Dataset:
    """STF Fig. 2(b)/3(a): writes ``stf_dsm.nc/.png/.md`` and ``stf_dsm_normalised.png`` in out_dir."""
    n_t, n_outer, n_inner = SETTINGS_DSM[mode]
    ts = np.linspace(0.0, 1.0, n_t + 1)[1:]
    ds = variance(DSI(), _targets(), VE(), ts, n_outer=n_outer, n_inner=n_inner, seed=seed,
                  scheduler=scheduler, progress=progress)
    notes = ("V_DSM is exact per x_t (Rao-Blackwellised); D(t) = E_{p_t} D_f(p0 || p(x0|x_t)) by nested Monte "
             "Carlo. FLAG-S3: unweighted V_DSM of the two-Gaussians peaks at t -> 0 (d sigma-hat^2 / (sigma^2 S) "
             "-> 64), so the published Phase-2 peak is the shape of sigma_t^2 V_DSM (see stf_dsm_normalised.png).")
    write_sweep(ds, out_dir, "stf_dsm", "STF Fig. 2(b)/3(a): V_DSM(t), VE(0.01, 50)", weightings=(None, SigmaSquared.name),
                notes=notes)
    _plot_normalised(ds, Path(out_dir) / "stf_dsm_normalised.png")
    return ds


def _normalise(y):
    y = np.asarray(y, dtype=float)
    return y / np.nanmax(y) if np.isfinite(y).any() and np.nanmax(y) > 0 else y


def _plot_normalised(ds, path):
    fig, axes = panels(ds.sizes["target"])
    t = ds["t"].values
    for ax, target in zip(axes, ds["target"].values):
        sel = ds.sel(target=target, estimator="dsi")
        ax.plot(t, _normalise(sel["V"]), label="V_DSM")
        ax.plot(t, _normalise(sel["V_weighted"].sel(weighting=SigmaSquared.name)), label=r"$\sigma_t^2$ V_DSM")
        # D spans hundreds of orders of magnitude at small t: normalise in log space
        logd = sel["log_D"].values
        ax.plot(t, np.exp(logd - np.nanmax(logd)), label="D(t)")
        ax.set_xlabel("t")
        ax.set_title(f"{target} (normalised to max 1)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def stf_variance_by_reference_size(out_dir, *, mode: str = "report", n_refs=None, seed: int = 0, scheduler=None,
                                   progress=None) -> xr.Dataset:
    """STF Fig. 3(c,d): V_STF(t) for n_ref in ``n_refs`` (default 2, 4, 16, 64, 256; n_ref = 1 is DSI),
    writes ``stf_nref.nc/.png/.md`` and ``stf_nref_ratio.png`` ((n_ref - 1) V_STF / V_DSM)."""
    n_t, n_outer, n_inner = SETTINGS_NREF[mode]
    if n_refs is None:
        n_refs = (2, 16) if mode == "quick" else (2, 4, 16, 64, 256)
    ts = np.linspace(0.0, 1.0, n_t + 1)[1:]
    ids = [DSI()] + [STF(int(n)) for n in n_refs]
    ds = variance(ids, _targets(), VE(), ts, n_outer=n_outer, n_inner=n_inner, seed=seed,
                  scheduler=scheduler, progress=progress)
    notes = ("n_ref = 1 is DSI. stf_leading is the corrected Theorem-2 leading term "
             "E_{p_t} E_post[(p(x0|x_t)/p0(x0)) |g - s|^2] / (n_ref - 1) (FLAG-S4/S5); where the posterior "
             "is close to the prior it equals V_DSM / (n_ref - 1).")
    write_sweep(ds, out_dir, "stf_nref", "STF Fig. 3(c,d): V_STF(t) by reference size, VE(0.01, 50)", notes=notes)
    _plot_ratio(ds, Path(out_dir) / "stf_nref_ratio.png")
    return ds


def _plot_ratio(ds, path):
    fig, axes = panels(ds.sizes["target"])
    t = ds["t"].values
    for ax, target in zip(axes, ds["target"].values):
        v_dsm = ds["V"].sel(target=target, estimator="dsi").values
        for est in ds["estimator"].values[1:]:
            n = int(ds["n_ref"].sel(estimator=est))
            v = ds["V"].sel(target=target, estimator=est).values
            ratio = np.divide((n - 1) * v, v_dsm, out=np.full_like(v, np.nan), where=v_dsm > 0)
            ax.plot(t, ratio, label=f"n_ref={n}")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_ylabel(r"$(n-1)\,V_{STF} / V_{DSM}$")
        ax.set_title(str(target), fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)
