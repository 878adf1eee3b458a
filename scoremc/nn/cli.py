"""The torch layer's commands, ``scoremc train`` and ``scoremc evaluate`` (their parsers live in
:mod:`scoremc.cli`, which imports this module only when one of them runs, so ``scoremc info`` never imports torch),
and their plots: :func:`plot_relative_error` (a training run) and :func:`plot_evaluation` (an evaluation)."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..builtin import TARGETS
from ..cli import PROCESS_NAMES
from ..plotting import ROUND_OFF_FLOOR, figure, panels, save_figure

__all__ = ["cmd_train", "cmd_evaluate", "cmd_ship", "plot_relative_error", "plot_evaluation", "end_to_end_summary"]


def _train_objective(name: str, n_ref: int):
    from ..derivatives import Autograd
    from ..fp_regularized import FPRegularized
    from ..identities import Kappa, KappaBar
    from ..objectives import DSM, TSM, MixSM, STFLoss

    return {"dsm": DSM, "tsm": TSM, "kappa": lambda: MixSM(Kappa()), "kappa_bar": lambda: MixSM(KappaBar()),
            "stf": lambda: STFLoss(n_ref), "fp": lambda: FPRegularized(derivatives=Autograd())}[name]()


def _train_weighting(name: str, objective: str, sigma_data: float):
    """``auto``: the weighting that gives the objective's regression target unit variance per noise level in its
    natural space (TSM §4.1 / App. D; Karras et al. 2022): TSM-optimal for TSM, DSM-optimal otherwise."""
    from ..weighting import DSMOptimal, Likelihood, SigmaSquared, TSMOptimal, Uniform

    if name == "auto":
        name = "tsm-optimal" if objective == "tsm" else "dsm-optimal"
    return {"dsm-optimal": DSMOptimal(sigma_data), "tsm-optimal": TSMOptimal(sigma_data), "song": SigmaSquared(),
            "likelihood": Likelihood(), "uniform": Uniform()}[name]


def _log_axes(ax, ylabel: str, logy: bool = True) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log" if logy else "linear")  # linear only for a panel with nothing positive (all exact zeros)
    ax.set_xlabel(r"$\sigma(t)$")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")


def plot_relative_error(ds, path, title: str | None = None) -> str:
    """Relative score error E|s - s*|^2 / E|s*|^2 against sigma(t), log-log, one line per evaluation step (the
    last one bold); ds as :func:`scoremc.nn.evaluate.relative_score_error` by ``step``. Returns the path."""
    fig, axes = figure(figsize=(6.4, 4.4))
    ax = axes[0, 0]
    steps = ds["step"].values
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        y = ds["rel_error"].sel(step=step).values
        ax.plot(ds["sigma"].values, y, marker="o" if last else None, markersize=3, linewidth=2.0 if last else 0.8,
                color="C0" if last else str(0.75 - 0.5 * i / max(len(steps) - 1, 1)), label=f"step {int(step)}")
    _log_axes(ax, r"$E\|s_\theta - \nabla\log p_t\|^2 \,/\, E\|\nabla\log p_t\|^2$")
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


#: the per-t panels of :func:`plot_evaluation`: (variable, y label); each with its ``_exact`` floor when present
_PANELS = (("rel_error", r"score: $E\|s_\theta-\nabla\log p_t\|^2/E\|\nabla\log p_t\|^2$"),
           ("tweedie_error", r"Tweedie: $E\|D_\theta-E[x_0|x_t]\|^2/E\,\mathrm{tr\,Cov}[x_0|x_t]$"),
           ("fpe_residual_rel", r"score-FPE: RMS$|\epsilon[s_\theta]|$ / RMS$|\partial_t\nabla\log p_t|$"),
           ("antisymmetric_rel", r"curl: RMS$\|(J-J^\top)/2\|_F$ / RMS$\|\nabla^2\log p_t\|_F$"))


def _positive(y):
    y = np.asarray(y, dtype=np.float64)
    return np.where(y > 0, y, np.nan)  # zeros (an exact floor) have no place on a log axis


def end_to_end_summary(ds) -> str:
    """One line of the end-to-end numbers of an evaluation Dataset (empty without them)."""
    parts = []
    for key, label in (("mmd", "MMD²"), ("sliced_wasserstein", "SW₂")):
        if key in ds:
            parts.append(f"{label} {float(ds[key]):.3g} (floor {float(ds[key + '_floor']):.3g})")
    if "kl" in ds:
        parts.append(f"KL {float(ds['kl']):.3g} ± {float(ds['kl_se']):.2g} (floor {float(ds['kl_floor']):.3g})")
    return ", ".join(parts)


def plot_evaluation(ds, path, title: str | None = None) -> str:
    """The evaluation of :func:`scoremc.nn.evaluate.evaluate` as a PNG: the per-t diagnostics against the noise
    level sigma(t) / alpha(t) on log axes (model, and the exact score's floor dashed where it is positive), with +-2 s.e. bands where the
    Dataset has them, the end-to-end numbers in the title, and for d = 2 a scatter of model against exact
    samples. Returns the path."""
    keys = [(k, label) for k, label in _PANELS if k in ds]
    scatter = "samples_model" in ds and ds.sizes.get("dim") == 2
    fig, axes = panels(len(keys) + scatter)
    sigma = ds["sigma"].values / ds["alpha"].values  # EDM's noise level: spans decades for every process
    for ax, (key, label) in zip(axes, keys):
        y = ds[key].values
        exact = ds[key + "_exact"].values if key + "_exact" in ds else np.zeros_like(y)
        logy = bool(np.any(y > 0) or np.any(exact > 0))
        ax.plot(sigma, _positive(y) if logy else y, marker="o", markersize=3, label="model")
        if key + "_se" in ds and logy:
            e = 2 * ds[key + "_se"].values
            ax.fill_between(sigma, _positive(y - e), _positive(y + e), alpha=0.2, linewidth=0)
        if np.any(exact > 0):
            ax.plot(sigma, _positive(exact), "k--", linewidth=0.8, label="exact score (floor)")
        _log_axes(ax, "", logy)
        ax.set_xlabel(r"$\sigma(t)/\alpha(t)$")
        ax.set_title(label, fontsize=8)
        if np.any(y > 0):
            # limits from the model's values, a decade at least (a constant error would give a 1e-16 wide axis);
            # the exact floor sits at round-off, 1e-30: below ROUND_OFF_FLOOR x the top it is off the scale
            top = np.nanmax(_positive(y))
            shown = np.concatenate([_positive(y), np.where(exact >= ROUND_OFF_FLOOR * top, exact, np.nan)])
            ax.set_ylim(np.nanmin(shown) / 3, top * 3)
        ax.legend(fontsize=7)
    if scatter:
        ax = axes[len(keys)]
        exact, model = ds["samples_exact"].values, ds["samples_model"].values
        ax.scatter(exact[:, 0], exact[:, 1], s=2, alpha=0.4, color="k", label="exact")
        ax.scatter(model[:, 0], model[:, 1], s=2, alpha=0.4, color="C3", label="model")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize=7, markerscale=4)
        ax.set_title("samples", fontsize=9)
    summary = end_to_end_summary(ds)
    fig.suptitle("\n".join(s for s in (title, summary) if s), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def cmd_train(args) -> int:
    """``scoremc train`` (see its ``--help``)."""
    from .data import ImportanceTimes, LogNormalSigmas, UniformTimes
    from .models import Preconditioned, ScoreMLP
    from .train import train  # from the submodule: the package binds the function, but be explicit

    target = TARGETS[args.target]()
    proc = PROCESS_NAMES[args.process]()
    objective = _train_objective(args.objective, args.n_ref)
    if objective.accepts_weighting:
        weighting = _train_weighting(args.weighting, args.objective, target.sigma_data)
    elif args.weighting != "auto" or args.times == "importance":
        raise SystemExit(f"scoremc train: --objective {args.objective} carries its own weighting; leave --weighting "
                         "auto and --times uniform or lognormal")
    else:
        weighting = None
    times = {"uniform": UniformTimes, "lognormal": LogNormalSigmas,
             "importance": lambda: ImportanceTimes(weighting)}[args.times]()
    with torch.random.fork_rng(devices=[]):  # the initial weights from the seed, without touching global state
        torch.manual_seed(args.seed)
        model = Preconditioned(ScoreMLP(target.dim), proc, None if args.precond == "none" else args.precond,
                               sigma_data=target.sigma_data)
    every = max(args.steps // 10, 1)
    result = train(model, objective, target, proc, out=args.out, device=args.device,
                   meta={"target": args.target, "command": "scoremc train " + " ".join(args.argv)},
                   steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema=args.ema, seed=args.seed,
                   weighting=weighting, times=times,
                   eval_every=every if args.eval_every is None else args.eval_every,
                   checkpoint_every=every if args.checkpoint_every is None else args.checkpoint_every,
                   eval_points=args.eval_points, stf_reference=args.stf_reference, progress=None)
    print(f"trained {objective!r} on {args.target} under {proc!r}: {result.step} steps, final loss "
          f"{np.mean(result.loss[-50:]):.4g} (mean of the last 50)")
    print(f"checkpoint  {os.path.join(args.out, 'checkpoint.json')}")
    if result.eval is not None:
        last = result.eval.isel(step=-1)
        print(f"eval        {os.path.join(args.out, 'eval.nc')}")
        png = plot_relative_error(result.eval, os.path.join(args.out, "eval.png"),
                                  f"{args.objective} on {args.target}, {proc!r}")
        print(f"plot        {png}")
        print(f"\n{'t':>10} {'sigma':>10} {'rel. error':>12}")
        for t, s, e in zip(last["t"].values, last["sigma"].values, last["rel_error"].values):
            print(f"{t:10.4g} {s:10.4g} {e:12.4g}")
    return 0


def _run_defaults(folder: str, target: str | None, process: str | None):
    """(target name, process) from the arguments, else from the folder: a run's config.json (``meta.target``,
    ``process``) or a shipped model's model.json (``target``, ``model_spec.process``)."""
    from .card import MODEL, read_model_spec
    from .checkpoint import CONFIG, build_process, read_config

    if os.path.exists(os.path.join(folder, MODEL)):
        spec = read_model_spec(folder)
        run = {"meta": {"target": spec["target"]}, "process": spec["model_spec"]["process"]}
    else:
        try:
            run = read_config(folder)
        except FileNotFoundError as exc:
            raise SystemExit(f"scoremc evaluate: {exc}") from None
    target = target or (run.get("meta") or {}).get("target")
    if target is None:
        raise SystemExit(f"scoremc evaluate: {folder!r} does not name its target (no meta.target in {CONFIG}); "
                         f"pass --target ({', '.join(sorted(TARGETS))})")
    if target not in TARGETS:
        raise SystemExit(f"scoremc evaluate: unknown target {target!r}; choose from {sorted(TARGETS)}")
    if process is not None:
        return target, PROCESS_NAMES[process]()
    if "process" not in run:
        raise SystemExit(f"scoremc evaluate: {folder!r} does not name its process; pass --process")
    return target, build_process(run["process"])


def cmd_evaluate(args) -> int:
    """``scoremc evaluate`` (see its ``--help``)."""
    from ..variance import save_dataset
    from .card import load
    from .evaluate import evaluate

    name, proc = _run_defaults(args.dir, args.target, args.process)
    model = load(args.dir, device=args.device)
    target = TARGETS[name]()
    ds = evaluate(model, target, proc, n=args.n, n_samples=args.samples, n_likelihood=args.n_likelihood,
                  likelihood=not args.no_likelihood, prior=args.prior, seed=args.seed, device=args.device)
    ds.attrs["command"] = "scoremc evaluate " + " ".join(args.argv)
    out = args.out or args.dir
    nc = save_dataset(ds, os.path.join(out, "evaluation.nc"))
    png = plot_evaluation(ds, os.path.join(out, "evaluation.png"), f"{args.dir}: {name}, {proc!r}")
    print(f"evaluated {args.dir} on {name} under {proc!r} ({json.loads(ds.attrs['settings'])['n']} points per t)")
    print(f"\n{'t':>10} {'sigma':>10} {'rel. error':>11} {'Tweedie':>11} {'FPE resid.':>11} {'antisym.':>11}")
    for i in range(ds.sizes["t"]):
        r = ds.isel(t=i)
        print(f"{float(r.t):10.4g} {float(r.sigma):10.4g} {float(r.rel_error):11.4g} {float(r.tweedie_error):11.4g} "
              f"{float(r.fpe_residual_rel):11.4g} {float(r.antisymmetric_rel):11.4g}")
    print(f"\n{end_to_end_summary(ds)}")
    print(f"\nnetCDF      {nc}\nplot        {png}")
    return 0


def cmd_ship(args) -> int:
    """``scoremc ship`` (see its ``--help``)."""
    import shlex

    from .card import ship
    from .checkpoint import read_config

    try:
        command = (read_config(args.run_dir).get("meta") or {}).get("command")
    except FileNotFoundError as exc:
        raise SystemExit(f"scoremc ship: {exc}") from None
    if not command:
        raise SystemExit(f"scoremc ship: {args.run_dir!r} was not made by `scoremc train` (no command in its config)")
    recipe = "export OMP_NUM_THREADS=1  # one thread: the same float reductions, so the same weights bit for bit\n" \
        f"{command}\nscoremc ship {shlex.join(args.argv)}"
    name = os.path.basename(os.path.normpath(args.out))
    e2e = {"n_samples": args.samples, "n_likelihood": args.n_likelihood, "seed": args.seed}
    card = ship(args.run_dir, args.out, name=name, recipe=recipe, n=args.n, seed=args.seed, end_to_end=e2e)
    print(f"shipped {args.run_dir} as {args.out}: {card['objective']} on {card['target']} ({card['process']}), "
          f"mean relative score error {card['rel_score_error_mean']:.4g} over t in [0.05, 1]")
    for key, value in card["end_to_end"].items():
        print(f"  {key:28s} {value:.4g}")
    return 0
