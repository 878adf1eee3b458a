"""TSM Figs. 3 and 4: the loss weightings against t, and the distributions of the four losses under
each weighting at the true score, for the four 1-D targets of TSM §4.1 (cosine schedule,
sigma_data^2 = 1).

Outputs in ``out_dir`` (netCDF written atomically):

* ``weightings.nc`` / ``weightings.png`` (Fig. 3): each weighting lambda(t), normalised to integrate
  to 1 over [t_min, 1 - t_min] (t_min = 1e-3: 1/sigma^2 and the TSM-optimal weighting are not
  integrable at t = 0, the alpha-aware DSM-optimal one not at t = 1; FLAG-T7, FLAG-T14);
* ``losses.nc`` / ``losses.png`` (Fig. 4): 4 targets x 4 losses (DSM, TSM, kappa- and
  kappa-bar-mixture) x the weightings; each loss is estimated ``n_estimates`` times (10,000 in full
  mode), each estimate the mean of ``n_per_estimate`` (100) terms
  (1 - 2 t_min) lambda(t) ||s*(x_t, t) - L(x0, x_t, t)||^2 with t ~ U[t_min, 1 - t_min],
  x0 ~ p0, x_t = alpha x0 + sigma eps, an unbiased estimate of int lambda(t) E||s* - L||^2 dt;
* ``summary.md``.

Two choices, both stated in the outputs. (1) t is drawn uniformly and evaluated at the midpoint of
its cell of a fine grid (``n_cells`` cells, clustered at both ends), because the exact layer
evaluates one time per call; ``mean_exact`` is the exact mean under that discrete law and
``mean_continuous`` under the continuous one (their gap is the grid's bias). (2) All weightings
and losses share the same draws (common random numbers). Besides the paper's four weightings
(Song with lambda = sigma^2 as corrected by FLAG-T7, DSM-optimal with the alpha of FLAG-T8,
TSM-optimal, uniform) the outputs carry the printed forms ``song-as-printed`` (1/sigma^2) and
``dsm-optimal-as-printed``.

Exact means: E||s* - L||^2 = E||L||^2 - E||s*||^2 with E||w DSI + (1 - w) TSI||^2
= w^2 d / sigma^2 + (1 - w)^2 F_0 / alpha^2 (the cross term vanishes: eps is independent of x0),
F_0 and F_t the Fisher informations of p0 and p_t by Gauss-Hermite quadrature per component.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from .._io import write_text
from ..builtin import TSM_TARGETS
from ..distributions import sample, score
from ..identities import Kappa, KappaBar
from ..noising import exact_score, marginal
from ..objectives import DSM, TSM, MixSM, loss
from ..plotting import figure, save_figure
from ..processes import Cosine
from ..variance import save_dataset
from ..weighting import WEIGHTINGS, normalizing_constant

__all__ = ["run", "add_parser", "LOSSES", "T_MIN"]

#: the four losses of TSM Fig. 4, by the name used in the outputs
LOSSES = {"dsm": DSM(), "tsm": TSM(), "kappa": MixSM(Kappa()), "kappa_bar": MixSM(KappaBar())}
#: both ends of the cosine schedule are singular; TSM does not state its cut-off (FLAG-T7, T14)
T_MIN = 1e-3
SIZES = {"full": dict(n_estimates=10_000, n_per_estimate=100, n_cells=2000, n_plot=2001),
         "quick": dict(n_estimates=200, n_per_estimate=20, n_cells=64, n_plot=201)}
_GH = np.polynomial.hermite.hermgauss(160)


def _cell_edges(n: int, t_min: float) -> np.ndarray:
    """n (even) cells on [t_min, 1 - t_min], geometric in t up to 1/2 and in 1 - t beyond: a constant
    relative width where the weighted integrands behave like 1/t^2 (or 1/(1-t)^2)."""
    half = np.geomspace(t_min, 0.5, n // 2 + 1)
    return np.concatenate([half, 1.0 - half[-2::-1]])


def _fisher(mixture) -> float:
    """E ||grad log p||^2 of a 1-D isotropic mixture, Gauss-Hermite per component."""
    z, w = _GH
    x = mixture.means[:, 0, None] + np.sqrt(2 * mixture.covs)[:, None] * z[None, :]  # (K, n)
    s2 = score(mixture, x.reshape(-1, 1), method="reference")[:, 0].reshape(x.shape) ** 2
    return float(mixture.weights @ (s2 @ w) / np.sqrt(np.pi))


def expected_losses(dist, proc, t) -> dict:
    """V_L(t) = E_{x0, x_t} ||s*(x_t, t) - L||^2 for each loss of :data:`LOSSES` at the times ``t`` (n,):
    w^2 d / sigma^2 + (1 - w)^2 F_0 / alpha^2 - F_t with w the DSI weight (see the module docstring)."""
    t = np.asarray(t, dtype=np.float64)
    a, s = np.asarray(proc.alpha(t)), np.asarray(proc.sigma(t))
    f0 = _fisher(dist)
    ft = np.array([_fisher(marginal(dist, proc, tj)) for tj in t])
    c = proc.at(t)
    weights = {"dsm": 1.0, "tsm": 0.0, "kappa": Kappa()(dist, c), "kappa_bar": KappaBar()(dist, c)}
    return {k: w * w * dist.dim / s**2 + (1 - w) ** 2 * f0 / a**2 - ft for k, w in weights.items()}


def _quadrature(t_min: float, n_gl: int = 16):
    """Composite Gauss-Legendre nodes and weights on [t_min, 1 - t_min], segments graded
    geometrically towards both ends (the weighted integrands behave like 1/t^2 there)."""
    width = 1 - 2 * t_min
    frac = np.concatenate([[0.0], np.geomspace(1e-6, 0.5, 20)])
    cuts = np.unique(np.concatenate([t_min + frac * width, 1 - t_min - frac * width]))
    z, w = np.polynomial.legendre.leggauss(n_gl)
    a, b = cuts[:-1, None], cuts[1:, None]
    return (0.5 * (b - a) * z + 0.5 * (a + b)).ravel(), (0.5 * (b - a) * w).ravel()


def weightings_dataset(proc, t_min: float, n_plot: int) -> xr.Dataset:
    """TSM Fig. 3: lambda(t) of each weighting, raw and normalised on [t_min, 1 - t_min]."""
    t = _cell_edges(n_plot - 1, t_min)
    names = list(WEIGHTINGS)
    raw = np.stack([WEIGHTINGS[k].score_space(proc, t) for k in names])
    Z = np.array([normalizing_constant(WEIGHTINGS[k], proc, t_min, 1 - t_min) for k in names])
    ds = xr.Dataset({"weight": (("weighting", "t"), raw / Z[:, None]), "weight_raw": (("weighting", "t"), raw),
                     "normalizer": ("weighting", Z)}, coords={"weighting": names, "t": t})
    ds.attrs.update(figure="TSM Fig. 3", schedule="cosine: alpha=cos(pi t/2), sigma=sin(pi t/2)", sigma_data=1.0,
                    t_min=t_min, t_max=1 - t_min, normalisation="int_{t_min}^{1-t_min} weight dt = 1",
                    errata="song = sigma^2 (FLAG-T7; printed 1/sigma^2 is song-as-printed); dsm-optimal has "
                           "the alpha of FLAG-T8 (printed form: dsm-optimal-as-printed)")
    return ds


def losses_dataset(proc, t_min: float, n_estimates: int, n_per_estimate: int, n_cells: int, seed: int,
                   progress: bool) -> xr.Dataset:
    """TSM Fig. 4: the loss estimates at the true score, with their exact means."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    edges = _cell_edges(n_cells, t_min)
    mids = 0.5 * (edges[1:] + edges[:-1])
    prob = np.diff(edges) / (1 - 2 * t_min)
    wnames, lnames, tnames = list(WEIGHTINGS), list(LOSSES), list(TSM_TARGETS)
    Z = np.array([normalizing_constant(WEIGHTINGS[k], proc, t_min, 1 - t_min) for k in wnames])
    lam = np.stack([WEIGHTINGS[k].score_space(proc, mids) for k in wnames]) / Z[:, None]  # (W, cells)
    nodes, qw = _quadrature(t_min)
    lam_quad = np.stack([WEIGHTINGS[k].score_space(proc, nodes) for k in wnames]) / Z[:, None]
    n = n_estimates * n_per_estimate
    est = np.empty((len(tnames), len(lnames), len(wnames), n_estimates))
    exact = np.empty((len(tnames), len(lnames), len(wnames)))
    cont = np.empty_like(exact)
    V = np.empty((len(tnames), len(lnames), n_cells))
    bar = tqdm(total=len(tnames) * len(lnames), desc="TSM Fig. 4", disable=not (progress and sys.stderr.isatty()))
    for i, tname in enumerate(tnames):
        dist = TSM_TARGETS[tname]()
        es = exact_score(dist, proc)
        cell = np.searchsorted(edges, t_min + (1 - 2 * t_min) * rng.random(n), side="right") - 1
        cell = np.clip(cell, 0, n_cells - 1)  # u = 1 - 2^-53 lands on the last edge
        x0 = sample(dist, n, rng)
        eps = rng.standard_normal((n, dist.dim))
        err = np.empty((len(lnames), n))
        for k, lname in enumerate(lnames):  # every row at its own cell midpoint: per-row coefficients
            err[k] = loss(LOSSES[lname], es, dist, proc, mids[cell], x0, eps)
            bar.update()
        terms = (1 - 2 * t_min) * lam[None, :, cell] * err[:, None, :]  # (L, W, n)
        est[i] = terms.reshape(len(lnames), len(wnames), n_estimates, n_per_estimate).mean(-1)
        V_mid = expected_losses(dist, proc, mids)
        V_quad = expected_losses(dist, proc, nodes)
        for k, lname in enumerate(lnames):
            V[i, k] = V_mid[lname]
            exact[i, k] = (1 - 2 * t_min) * (lam * prob * V_mid[lname]).sum(-1)
            cont[i, k] = (lam_quad * qw * V_quad[lname]).sum(-1)
    bar.close()
    dims = ("target", "loss", "weighting")
    ds = xr.Dataset({"loss_estimate": (dims + ("repeat",), est), "mean_exact": (dims, exact),
                     "mean_continuous": (dims, cont), "expected_loss": (("target", "loss", "t"), V),
                     "cell_probability": ("t", prob)},
                    coords={"target": tnames, "loss": lnames, "weighting": wnames, "t": mids,
                            "repeat": np.arange(n_estimates)})
    ds.attrs.update(figure="TSM Fig. 4", schedule="cosine", sigma_data=1.0, t_min=t_min, seed=seed,
                    n_estimates=n_estimates, n_per_estimate=n_per_estimate, n_cells=n_cells,
                    estimate="mean of n_per_estimate terms (1-2 t_min) weight(t) ||s*(x_t,t) - L||^2, "
                             "t ~ U[t_min, 1-t_min] evaluated at its cell midpoint, x0 ~ p0, x_t = alpha x0 "
                             "+ sigma eps; common random numbers across losses and weightings",
                    mean_exact="exact mean of one estimate under the cell-midpoint law of t",
                    mean_continuous="int weight(t) E||s* - L||^2 dt by composite Gauss-Legendre quadrature "
                                    "(continuous t)",
                    expected_loss="E||s*(x_t,t) - L||^2 at the cell midpoints")
    return ds


def plot_weightings(ds: xr.Dataset, path: Path) -> None:
    fig, ax = figure(figsize=(6.5, 4.2))
    ax = ax[0, 0]
    for name in ds.weighting.values:
        style = "--" if name.endswith("as-printed") else "-"
        ax.semilogy(ds.t, ds.weight.sel(weighting=name), style, label=name)
    ax.set(xlabel="t", ylabel="normalised weighting", ylim=(1e-9, 1e4),
           title=f"TSM Fig. 3: weightings (cosine, σ_data²=1, t∈[{ds.t_min:g}, 1−{ds.t_min:g}])")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_losses(ds: xr.Dataset, path: Path) -> None:
    nt, nw = ds.sizes["target"], ds.sizes["weighting"]
    fig, axes = figure(nt, nw, figsize=(3.0 * nw, 2.4 * nt), sharex=True)
    floor = 1e-12  # display only: the kappa-mixture on the unit Gaussian is exactly 0 up to round-off
    bins = np.linspace(-12, 8, 81)
    for i, tname in enumerate(ds.target.values):
        for w, wname in enumerate(ds.weighting.values):
            ax = axes[i, w]
            for k, lname in enumerate(ds.loss.values):
                v = np.log10(np.maximum(ds.loss_estimate.values[i, k, w], floor))
                ax.hist(v, bins=bins, histtype="step", color=f"C{k}", label=lname)
                ax.axvline(np.log10(max(float(ds.mean_exact.values[i, k, w]), floor)), color=f"C{k}", ls=":", lw=0.8)
            if i == 0:
                ax.set_title(wname, fontsize=9)
            if w == 0:
                ax.set_ylabel(tname.replace("tsm-", ""), fontsize=8)
            if i == nt - 1:
                ax.set_xlabel("log10 loss estimate", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"TSM Fig. 4: loss estimates at the true score ({ds.n_estimates} × {ds.n_per_estimate} samples; "
                 "dotted: exact mean; values below 1e-12 shown at 1e-12)", fontsize=10)
    save_figure(fig, path)


def _summary(wds: xr.Dataset, lds: xr.Dataset, seconds: float, mode: str) -> str:
    lines = [f"# TSM Figs. 3-4 reproduction ({mode} mode, seed {lds.seed}, {seconds:.1f} s)", "",
             f"Cosine schedule, sigma_data^2 = 1, t in [{lds.t_min:g}, {1 - lds.t_min:g}] (the paper does not state "
             "its cut-off; FLAG-T7/T14). Weightings normalised to integrate to 1 there: "
             + ", ".join(f"{k}: Z = {float(z):.6g}" for k, z in zip(wds.weighting.values, wds.normalizer.values)) + ".",
             f"Each loss estimate averages {lds.n_per_estimate} samples, {lds.n_estimates} estimates per combination; "
             f"t uses the midpoints of {lds.n_cells} cells. `song` is lambda = sigma^2 (FLAG-T7), "
             "`dsm-optimal` carries alpha (FLAG-T8); the `as-printed` columns are the paper's printed forms.", "",
             "Mean of the estimates / exact mean (cell-midpoint law of t). The relative grid bias "
             "|exact - continuous| / continuous is at most "
             f"{_grid_bias(lds):.2e} (over the combinations whose continuous mean exceeds 1e-10; the kappa-mixture "
             "on the unit Gaussian has zero variance, so its loss is 0 up to round-off).",
             ""]
    for i, tname in enumerate(lds.target.values):
        lines += [f"## {tname}", "", "| loss | " + " | ".join(lds.weighting.values) + " |",
                  "|---|" + "---|" * lds.sizes["weighting"]]
        for k, lname in enumerate(lds.loss.values):
            cells = [f"{lds.loss_estimate.values[i, k, w].mean():.4g} / {lds.mean_exact.values[i, k, w]:.4g}"
                     for w in range(lds.sizes["weighting"])]
            lines.append(f"| {lname} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _grid_bias(lds: xr.Dataset) -> float:
    cont, exact = lds.mean_continuous.values, lds.mean_exact.values
    keep = np.abs(cont) > 1e-10
    return float(np.max(np.abs(exact - cont)[keep] / np.abs(cont[keep])))


def run(out_dir, *, quick: bool = False, seed: int = 0, progress: bool = True, t_min: float = T_MIN) -> dict:
    """Write weightings.nc/.png, losses.nc/.png and summary.md to ``out_dir``; return their paths."""
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if quick else "full"
    size = SIZES[mode]
    proc = Cosine()
    wds = weightings_dataset(proc, t_min, size["n_plot"])
    lds = losses_dataset(proc, t_min, size["n_estimates"], size["n_per_estimate"], size["n_cells"], seed, progress)
    paths = {"weightings": out / "weightings.nc", "losses": out / "losses.nc",
             "weightings_png": out / "weightings.png", "losses_png": out / "losses.png", "summary": out / "summary.md"}
    save_dataset(wds, paths["weightings"])
    save_dataset(lds, paths["losses"])
    plot_weightings(wds, paths["weightings_png"])
    plot_losses(lds, paths["losses_png"])
    text = _summary(wds, lds, time.perf_counter() - start, mode)
    write_text(paths["summary"], text)
    return paths


def _cmd(args) -> int:
    paths = run(args.out, quick=args.quick, seed=args.seed)
    for p in paths.values():
        print(f"wrote {p}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tsm-weightings`` on an argparse subparsers object."""
    p = subparsers.add_parser("tsm-weightings", help="reproduce TSM Fig. 3 (weightings) and Fig. 4 (loss "
                              "distributions at the true score)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", metavar="DIR", default="results/tsm-weightings", help="output folder "
                   "(default results/tsm-weightings)")
    p.add_argument("--quick", action="store_true", help="CI-sized run (seconds instead of minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the numpy Generator (default 0)")
    p.set_defaults(run=_cmd)
    return p
