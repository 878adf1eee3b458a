"""The claims of the training experiments (:mod:`scoremc.experiments.training`), computed from their datasets,
and their plots. Torch-free: a claims table can be recomputed from a saved ``.nc`` file.

Thresholds come from the papers' wording and :mod:`.claims` (fixed before looking at the numbers): "blows up"
is a factor :data:`~.claims.BLOWUP` (10) between the loss at the end of the t grid and at the middle
(t = 1/2), "stays bounded" is a factor below it at both ends; "almost zero" is below
:data:`~.claims.NEGLIGIBLE` (1e-2) of the compared value; "lower variance" is a gap of :data:`~.claims.K_SE`
standard errors. Comparisons between trained models ("converges faster", "lowers the residual") are plain
comparisons on one seed: the seed-to-seed spread of a training run is not measured, which the evidence says.
"""
from __future__ import annotations

import numpy as np

from ..plotting import figure, save_figure
from .claims import BLOWUP, K_SE, NEGLIGIBLE, Claim

__all__ = [
    "REASONS",
    "early_error",
    "excess_loss",
    "fp_curl",
    "plot_fp_curl",
    "plot_stf_nref",
    "plot_tsm_fig5",
    "stf_nref",
    "tsm_fig5",
]

#: values below this are drawn at it on log axes (the exact score's curl is ~1e-30)
_LOG_FLOOR = 1e-20

#: what we understand of a claim that says NO on our runs (printed under the table only when it does)
_MMD_BUMP = ("the MMD of DSM's samples never leaves its untrained value (DSM does not learn under uniform lambda: its "
             "excess loss rises), while the mixtures' and TSM's first rise from it as the models start to move mass "
             "between the modes (at the default size, steps ~1200-2400) and then fall: the average over training "
             "penalises that transient. At the end of the default run the mixtures' samples are the closest to the "
             "exact ones (kappa 0.013, kappa-bar 0.024 vs TSM 0.07, DSM 0.05), as in the paper's panel")
REASONS = {
    "tsm-fig5-faster:kappa": _MMD_BUMP,
    "tsm-fig5-faster:kappa_bar": _MMD_BUMP,
    "stf-nref-early": "the first quarter of training is a plateau common to every n_ref (at the default size the "
                      "excess loss stays near 0.2 for ~800 steps, while the network has not yet resolved the two "
                      "modes); the lower target variance shows once the loss falls (steps ~800-1200), and the gap "
                      "persists to the end (stf-nref-late)",
    "fp-curl-lower:fp(0.003)": "at the quick size (150 steps) the alpha = 0.003 regulariser has barely acted: the "
                               "two curls differ by under 1%",
}


def _mid(ds) -> int:
    return int(np.argmin(np.abs(ds["t"].values - float(ds.attrs["t_mid"]))))


def tsm_fig5(ds) -> list[Claim]:
    """TSM Fig. 5: DSM's loss blows up as t -> 0, TSM's as t -> 1, the kappa and kappa-bar mixtures' stay bounded
    (left panel); the mixtures converge faster (right panel: by the MMD of samples, and by the excess loss)."""
    t, mid = ds["t"].values, _mid(ds)
    loss, floor = ds["loss"], ds["loss_floor"]

    def ends(name):
        v, f = loss.sel(objective=name).values, floor.sel(objective=name).values
        return v[0] / v[mid], v[-1] / v[mid], (f"loss(t={t[0]:.3g}, {t[mid]:.3g}, {t[-1]:.3g}) = {v[0]:.3g}, "
                                               f"{v[mid]:.3g}, {v[-1]:.3g} (exact-score floor {f[0]:.3g}, "
                                               f"{f[mid]:.3g}, {f[-1]:.3g})")

    lo, _, text = ends("dsm")
    out = [Claim("tsm-fig5-dsm-t0", "DSM's regression loss blows up as t -> 0 (TSM Fig. 5)", bool(lo >= BLOWUP),
                 f"ratio to t = {t[mid]:.3g}: {lo:.3g} (blow-up: >= {BLOWUP:g}); {text}")]
    _, hi, text = ends("tsm")
    out.append(Claim("tsm-fig5-tsm-t1", "TSM's regression loss blows up as t -> 1 (TSM Fig. 5)", bool(hi >= BLOWUP),
                     f"ratio to t = {t[mid]:.3g}: {hi:.3g} (blow-up: >= {BLOWUP:g}); {text}"))
    for name in ("kappa", "kappa_bar"):
        lo, hi, text = ends(name)
        out.append(Claim(f"tsm-fig5-bounded:{name}", f"the {name} mixture's loss stays bounded at both ends "
                         "(TSM Fig. 5)", bool(max(lo, hi) < BLOWUP),
                         f"ratios to t = {t[mid]:.3g}: {lo:.3g} (t -> 0), {hi:.3g} (t -> 1), bounded below "
                         f"{BLOWUP:g}; {text}"))
    # "converges faster": the lower area under the learning curve, by MMD (the paper's measure) and excess loss
    for key, curve, what in (("faster", ds["mmd"].mean("stage"), "MMD^2 of samples"),
                             ("faster-excess", excess_loss(ds).mean("step"), "excess loss")):
        base = min(float(curve.sel(objective="dsm")), float(curve.sel(objective="tsm")))
        for name in ("kappa", "kappa_bar"):
            a = float(curve.sel(objective=name))
            out.append(Claim(f"tsm-fig5-{key}:{name}", f"the {name} mixture converges faster than DSM and TSM "
                             f"(TSM Fig. 5 right), by the {what}", bool(a < base),
                             f"{what} averaged over training: {a:.3g} vs "
                             + ", ".join(f"{o} {float(curve.sel(objective=o)):.3g}" for o in ("dsm", "tsm"))
                             + " (one seed)"))
    return out


def excess_loss(ds):
    """The reducible part of the training objective at each evaluation, (1/T) int lambda(t) E||s_theta - s*||^2 dt
    over the evaluation grid (trapezoid; T its length), from the datasets' ``mse`` (by step and t) and ``weight``
    (lambda(t) in score space). Unlike a plain average of the relative error over t, it weighs each noise level as
    training does (where lambda is small the model is unconstrained and its relative error can grow without bound)."""
    t = ds["t"].values
    return (ds["weight"] * ds["mse"]).integrate("t") / (t[-1] - t[0])


def fp_curl(ds) -> list[Claim]:
    """FP-Diffusion §6.2: FP regularisation lowers the time-averaged curl MSE and score-FPE residual r_FP of a
    DSM model; the exact score's are zero up to round-off."""
    curl, res = ds["curl_ms"].mean("t"), ds["r_fp"].mean("t")
    models = [m for m in ds["model"].values if m != "exact"]
    fp = [m for m in models if m != "dsm"]
    out = []
    for m in fp:
        c, r = float(curl.sel(model=m)), float(res.sel(model=m))
        c0, r0 = float(curl.sel(model="dsm")), float(res.sel(model="dsm"))
        out.append(Claim(f"fp-curl-lower:{m}", f"{m} has a lower time-averaged curl MSE than DSM (FP-Diffusion §6.2)",
                         bool(c < c0), f"curl MSE {c:.3g} vs DSM {c0:.3g} (one seed)"))
        out.append(Claim(f"fp-residual-lower:{m}", f"{m} has a lower time-averaged score-FPE residual r_FP than DSM "
                         "(FP-Diffusion §6.2, Table 4)", bool(r < r0),
                         f"mean r_FP {r:.3g} vs DSM {r0:.3g} (one seed)"))
    ce, re = float(curl.sel(model="exact")), float(res.sel(model="exact"))
    cm, rm = min(float(curl.sel(model=m)) for m in models), min(float(res.sel(model=m)) for m in models)
    out.append(Claim("fp-exact-zero", "the exact score's curl MSE and r_FP are zero up to round-off (FP-Diffusion "
                     "§6.2: 3.7e-13)", bool(ce <= NEGLIGIBLE * cm and re <= NEGLIGIBLE * rm),
                     f"exact: curl MSE {ce:.3g}, mean r_FP {re:.3g}; smallest of the models: {cm:.3g}, {rm:.3g} "
                     f"(almost zero: below {NEGLIGIBLE:g} of them)"))
    return out


def early_error(ds, late: bool = False):
    """The excess loss (:func:`excess_loss`) averaged over the evaluations at steps <= early_fraction * steps (or,
    with ``late``, at steps > (1 - early_fraction) * steps)."""
    f, steps = float(ds.attrs["early_fraction"]), ds["step"].values
    keep = steps > (1 - f) * ds.sizes["iteration"] if late else steps <= f * ds.sizes["iteration"]
    return excess_loss(ds).isel(step=np.flatnonzero(keep)).mean("step")


def stf_nref(ds) -> list[Claim]:
    """STF Fig. 5 direction: a larger reference batch n_ref gives a lower-variance target (the variance engine's
    time-averaged V), a lower excess loss early in training and at its end."""
    n = [int(v) for v in ds["n_ref"].values]
    v = ds["V"].mean("t").values
    se = np.sqrt((ds["V_se"] ** 2).sum("t").values) / ds.sizes["t"]
    gaps = [(v[i] - v[i + 1]) / np.hypot(se[i], se[i + 1]) for i in range(len(n) - 1)]
    out = [Claim("stf-nref-variance", "a larger n_ref gives a lower-variance target (STF §5, Fig. 3)",
                 bool(all(g > K_SE for g in gaps)), "time-mean V: " + ", ".join(f"n_ref={k}: {x:.3g}"
                                                                                for k, x in zip(n, v))
                 + "; drops in s.e.: " + ", ".join(f"{g:.3g}" for g in gaps) + f" (lower: > {K_SE:g})")]
    loss = ds["train_loss"].mean("iteration").values
    out.append(Claim("stf-nref-train-loss", "a larger n_ref gives a lower training loss (the minibatch loss carries "
                     "the target's variance; STF §5)", bool(np.all(np.diff(loss) < 0)),
                     "mean minibatch loss over training: " + ", ".join(f"n_ref={k}: {x:.3g}" for k, x in zip(n, loss))))
    frac = f"{float(ds.attrs['early_fraction']):.0%}"
    for key, late, text, when in (("early", False, "converges faster early in training", f"the first {frac}"),
                                  ("late", True, "ends training with a lower excess loss (the paper: better FID)",
                                   f"the last {frac}")):
        e = early_error(ds, late=late).values
        out.append(Claim(f"stf-nref-{key}", f"a larger n_ref {text} (STF Fig. 5)", bool(np.all(np.diff(e) < 0)),
                         f"excess loss over {when} of training: " + ", ".join(f"n_ref={k}: {x:.3g}"
                                                                              for k, x in zip(n, e)) + " (one seed)"))
    return out


# -- plots -----------------------------------------------------------------------------------------------------
def plot_tsm_fig5(ds, path) -> str:
    fig, axes = figure(1, 4, figsize=(20, 4.2))
    ax = axes[0, 0]
    for i, name in enumerate(ds["objective"].values):
        ax.plot(ds["t"], ds["loss"].sel(objective=name), "o-", ms=3, color=f"C{i}", label=name)
        ax.plot(ds["t"], ds["loss_floor"].sel(objective=name), "--", color=f"C{i}", lw=0.8)
    # a zero-variance floor (kappa-bar on equal-variance modes) is ~1e-31: keep the axis on the models' range
    ax.set(yscale="log", ylim=(0.1 * float(ds["loss"].min()), None), xscale="logit", xlabel="t",
           ylabel=r"$E\|s_\theta - L\|^2$", title="regression loss (dashed: exact score)")
    ax = axes[0, 1]
    for name in ds["objective"].values:
        ax.plot(ds["stage"], ds["mmd"].sel(objective=name), "o-", ms=3, label=name)
    ax.axhline(abs(float(ds["mmd_floor"])), color="k", lw=0.6, ls=":")
    ax.set(xlabel="step", title="MMD$^2$ of samples vs exact (dotted: two exact sets)")
    ax.set_yscale("symlog", linthresh=max(abs(float(ds["mmd_floor"])), 1e-6))  # MMD^2_u can be < 0
    ax = axes[0, 2]
    excess = excess_loss(ds)
    for name in ds["objective"].values:
        ax.plot(ds["step"], excess.sel(objective=name), "o-", ms=3, label=name)
    ax.set(yscale="log", xlabel="step", title=r"excess loss $\int\lambda E\|s_\theta - s^*\|^2 dt / T$ over training")
    ax = axes[0, 3]
    for name in ds["objective"].values:
        ax.plot(ds["t"], ds["rel_error"].sel(objective=name).isel(step=-1), "o-", ms=3, label=name)
    ax.set(yscale="log", xscale="logit", xlabel="t", title="relative score error at the end of training")
    for ax in axes[0]:
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"TSM Fig. 5 at CPU scale: {ds.attrs['target']}, {ds.attrs['process']}", fontsize=10)
    return save_figure(fig, path)


def plot_fp_curl(ds, path) -> str:
    fig, axes = figure(1, 3, figsize=(15, 4.2))
    for ax, var, label in zip(axes[0], ("r_fp", "curl_ms", "r_dsm_like"),
                              ("score-FPE residual r_FP(t)", "mean square curl", "r_DSM-like(t)")):
        for name in ds["model"].values:
            ax.plot(ds["t"], np.maximum(ds[var].sel(model=name), _LOG_FLOOR), "o-", ms=3, label=name)
        ax.set(yscale="log", xlabel="t", title=label)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"FP-Diffusion §6.2 at CPU scale: {ds.attrs['target']}, {ds.attrs['process']} "
                 f"(values below {_LOG_FLOOR:g} drawn at it)", fontsize=10)
    return save_figure(fig, path)


def plot_stf_nref(ds, path) -> str:
    fig, axes = figure(1, 3, figsize=(15, 4.2))
    excess = excess_loss(ds)
    for k in ds["n_ref"].values:
        axes[0, 0].plot(ds["t"], ds["V"].sel(n_ref=k), "o-", ms=3, label=f"n_ref={k}")
        axes[0, 1].plot(ds["step"], excess.sel(n_ref=k), "o-", ms=3, label=f"n_ref={k}")
        loss = ds["train_loss"].sel(n_ref=k).values
        w = max(len(loss) // 50, 1)  # a running mean over 2% of training, for legibility
        axes[0, 2].plot(ds["iteration"].values[w - 1:], np.convolve(loss, np.ones(w) / w, "valid"), lw=0.8,
                        label=f"n_ref={k}")
    axes[0, 0].set(yscale="log", xlabel="t", title="target variance V(t) (variance engine)")
    axes[0, 1].axvline(float(ds.attrs["early_fraction"]) * ds.sizes["iteration"], color="k", lw=0.6, ls=":")
    axes[0, 1].set(yscale="log", xlabel="step", title="excess loss over training; dotted: end of 'early'")
    axes[0, 2].set(yscale="log", xlabel="step", title="training loss (running mean)")
    for ax in axes[0]:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"STF n_ref at CPU scale: {ds.attrs['target']}, {ds.attrs['process']}", fontsize=10)
    return save_figure(fig, path)
