"""Command line: ``scoremc report`` (the default sweep of the seed experiments), ``scoremc variance``
(a variance sweep), ``scoremc info`` (exact scores of a built-in target across noise levels) and
the individual reproductions. Every command has ``--help``."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import __version__
from ._io import write_text
from .builtin import TARGETS
from .fpe import fpe_residual
from .noising import exact_score, noised_sample, posterior
from .processes import EDM, VE, VP, Cosine, SubVP
from .weighting import Likelihood, SigmaSquared

PROCESS_NAMES = {"ve": VE, "vp": VP, "subvp": SubVP, "cosine": Cosine, "edm": EDM}


def _times(proc, n):
    if isinstance(proc, EDM):  # t is sigma: a log grid over the Karras range
        return np.geomspace(proc.sigma_min, proc.sigma_max, n)
    hi = 0.98 if isinstance(proc, Cosine) else 1.0
    return np.linspace(0.02, hi, n)


def info_rows(target: str, process: str, n_points: int, n_times: int, seed: int):
    """Exact quantities of ``target`` noised by ``process`` at ``n_times`` noise levels.

    For each t, on ``n_points`` draws of x_t: mean |grad log p_t|, the posterior's effective number
    of components exp(entropy), the Tweedie gap |alpha E[x0|xt] - xt - sigma^2 s| and the
    score-FPE residual relative to |d/dt s|. Returns a list of dicts.
    """
    dist = TARGETS[target]()
    proc = PROCESS_NAMES[process]()
    rng = np.random.default_rng(seed)
    es = exact_score(dist, proc)
    rows = []
    for t in _times(proc, n_times):
        a, s = float(proc.alpha(t)), float(proc.sigma(t))
        _, xt = noised_sample(dist, proc, t, n_points, rng)
        score = es(xt, t)
        post = posterior(dist, proc, t, xt)
        w = post.weights
        entropy = -(w * np.log(np.where(w > 0, w, 1.0))).sum(1)
        tweedie = np.abs(a * post.mean() - xt - s * s * score).max()
        dt = es.dt(xt[:32], t)
        res = np.linalg.norm(fpe_residual(es, proc, xt[:32], t)) / max(np.linalg.norm(dt), 1e-300)
        rows.append(dict(t=float(t), sigma=s, alpha=a, log_snr=float(proc.log_snr(t)),
                         score_norm=float(np.linalg.norm(score, axis=1).mean()),
                         effective_components=float(np.exp(entropy).mean()),
                         tweedie_gap=float(tweedie), fpe_rel_residual=float(res)))
    return rows


def _cmd_info(args) -> int:
    procs = list(PROCESS_NAMES) if args.process == "all" else [args.process]
    report = {}
    for name in procs:
        rows = info_rows(args.target, name, args.n_points, args.n_times, args.seed)
        report[name] = rows
        print(f"\n{args.target} under {PROCESS_NAMES[name]()!r}")
        print(f"{'t':>9} {'sigma':>10} {'alpha':>9} {'E|score|':>11} {'eff. comps':>10} "
              f"{'Tweedie gap':>12} {'FPE resid.':>11}")
        for r in rows:
            print(f"{r['t']:9.4g} {r['sigma']:10.4g} {r['alpha']:9.4g} {r['score_norm']:11.4g} "
                  f"{r['effective_components']:10.3f} {r['tweedie_gap']:12.2e} {r['fpe_rel_residual']:11.2e}")
    if args.json:
        write_text(args.json, json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")
    return 0


def _identities(estimators: str, n_refs: str):
    from .identities import DSI, STF, TSI, Kappa, KappaBar, Mix, OptimalMix

    names = [e.strip() for e in estimators.split(",") if e.strip()]
    table = {"dsi": [DSI()], "tsi": [TSI()], "kappa": [Mix(Kappa())], "kappa_bar": [Mix(KappaBar())],
             "optimal": [OptimalMix()]}
    out = []
    for name in names:
        if name == "stf":
            out += [STF(int(n)) for n in n_refs.split(",") if n.strip()]
        elif name in table:
            out += table[name]
        else:
            raise SystemExit(f"scoremc: unknown estimator {name!r}; choose from {sorted(table) + ['stf']}")
    return out


def _times_arg(text: str, proc):
    lo, hi, n = (float(v) for v in text.split(":"))
    return np.linspace(lo, hi, int(n))


def _cmd_variance(args) -> int:
    from .experiments._common import write_sweep
    from .variance import variance

    proc = PROCESS_NAMES[args.process]()
    targets = {name: TARGETS[name]() for name in args.target.split(",")}
    ts = _times_arg(args.times, proc) if args.times else _times(proc, args.n_times)
    ds = variance(_identities(args.estimators, args.n_ref), targets, proc, ts, n_outer=args.n_outer,
                  n_inner=args.n_inner, n_samples=args.n_samples, seed=args.seed, scheduler=args.scheduler,
                  num_workers=args.workers)
    files = write_sweep(ds, args.out, "variance", f"V(t) under {proc!r}",
                        weightings=(None, SigmaSquared().name, Likelihood().name))
    for kind, path in files.items():
        print(f"{kind:10s} {path}")
    return 0


def _cmd_report(args) -> int:
    from .experiments.report import run_report

    run_report(args.out, mode="quick" if args.quick else "report", seed=args.seed, scheduler=args.scheduler)
    return 0


#: ``scoremc train --objective`` names
TRAIN_OBJECTIVES = ("dsm", "tsm", "kappa", "kappa_bar", "stf", "fp")


def _torch_command(name: str):
    """The command ``name`` of :mod:`scoremc.nn.cli`, imported when it runs (the torch layer is imported only by
    its own commands)."""
    def run(args) -> int:
        from .nn import cli as nn_cli

        return getattr(nn_cli, name)(args)
    return run


def _add_train_parser(sub) -> None:
    tr = sub.add_parser("train", help="train a neural score (Preconditioned ScoreMLP) on a built-in target, with "
                        "checkpoints, resume and evaluation against the exact score", description=(
                            "Trains Preconditioned(ScoreMLP(d), process, precond, sigma_data=target.sigma_data) with "
                            "Adam and an EMA of the weights. Writes OUT/config.json, OUT/checkpoint.json and "
                            "OUT/step-*/ (model.safetensors, ema.safetensors, state.pt), OUT/eval.nc and OUT/eval.png "
                            "(relative score error of the EMA model by noise level). Rerunning the same command on "
                            "an existing OUT resumes it. Needs the torch extra."))
    tr.add_argument("--target", choices=sorted(TARGETS), default="fp-gmm")
    tr.add_argument("--objective", choices=TRAIN_OBJECTIVES, default="dsm",
                    help="dsm, tsm, kappa / kappa_bar (TSM §4.1 mixtures), stf, fp (FP-Diffusion Eq. 19 with the "
                    "paper's synthetic-data recipe (alpha, beta, lambda_FP, m) = (0.0015, 0, 1, 1), its own g^2 "
                    "weighting, exact divergence by autograd) (default %(default)s)")
    tr.add_argument("--n-ref", type=int, default=256, help="STF reference batch size n_ref (default %(default)s)")
    tr.add_argument("--stf-reference", choices=("auto", "algorithm1", "independent"), default="auto",
                    help="STF reference batch: Algorithm 1's batch holding the minibatch, or n_ref - 1 points shared "
                    "by the minibatch (auto: Algorithm 1 when n_ref >= batch size)")
    tr.add_argument("--process", choices=sorted(PROCESS_NAMES), default="ve")
    tr.add_argument("--precond", choices=("edm", "tsm", "none"), default="edm")
    tr.add_argument("--weighting", choices=("auto", "dsm-optimal", "tsm-optimal", "song", "likelihood", "uniform"),
                    default="auto", help="loss weighting (auto: tsm-optimal for tsm, dsm-optimal otherwise)")
    tr.add_argument("--times", choices=("uniform", "lognormal", "importance"), default="uniform",
                    help="noise-level sampling: uniform in t, EDM log-normal in sigma, or t drawn proportional to "
                    "the weighting (default %(default)s)")
    tr.add_argument("--steps", type=int, default=2000)
    tr.add_argument("--batch-size", type=int, default=256)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--ema", type=float, default=0.999, help="EMA decay per step (default %(default)s)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default cpu)")
    tr.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default steps/10)")
    tr.add_argument("--eval-points", type=int, default=2048, help="x_t draws per noise level in the evaluation "
                    "(default %(default)s)")
    tr.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default steps/10)")
    tr.add_argument("--out", required=True, help="run folder (resumed if it holds a checkpoint)")
    tr.set_defaults(run=_torch_command("cmd_train"))


def _add_measurement_options(parser, *, n: int, samples: int, n_likelihood: int) -> None:
    """The sizes and seed of a measurement against the exact layer (``scoremc evaluate`` and ``scoremc ship``)."""
    parser.add_argument("--n", type=int, default=n, help="exact x_t draws per noise level (default %(default)s)")
    parser.add_argument("--samples", type=int, default=samples, help="model and exact samples for MMD / sliced "
                        "Wasserstein (default %(default)s)")
    parser.add_argument("--n-likelihood", type=int, default=n_likelihood, help="points of the KL estimate "
                        "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)


def _add_ship_parser(sub) -> None:
    sh = sub.add_parser("ship", help="make a model folder (models/NAME) from a `scoremc train` run: weights, recipe "
                        "and a card of measured errors", description=(
                            "Copies the run's EMA weights to OUT/model.safetensors, writes OUT/model.json, "
                            "OUT/recipe.sh (the run's training command and this command), and measures the card: "
                            "OUT/card.json, OUT/card.md, OUT/card.png (relative score error at 12 times over "
                            "[0.05, 1], and the end-to-end metrics of scoremc.nn.evaluate). Needs the torch extra."))
    sh.add_argument("run_dir", metavar="RUN", help="a `scoremc train --target NAME` run folder")
    sh.add_argument("out", metavar="OUT", help="the model folder to write (e.g. models/dsm-fp-gmm)")
    _add_measurement_options(sh, n=4096, samples=4000, n_likelihood=500)
    sh.set_defaults(run=_torch_command("cmd_ship"))


def _add_evaluate_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="evaluate a trained score model (a `scoremc train` run folder) against the "
                        "exact truth of its target: netCDF + PNG", description=(
                            "Loads the EMA model of the run folder DIR and runs scoremc.nn.evaluate: relative score "
                            "error, score-FPE residual, antisymmetric Jacobian and Tweedie error by noise level (each "
                            "with the exact score's floor), MMD and sliced Wasserstein of model samples against exact "
                            "samples (with their noise floors) and KL(p0 || p_theta) by the PF-ODE likelihood. Writes "
                            "OUT/evaluation.nc and OUT/evaluation.png. Needs the torch extra."))
    ev.add_argument("dir", metavar="DIR", help="run folder of `scoremc train` (config.json + checkpoint)")
    ev.add_argument("--target", choices=sorted(TARGETS), default=None, help="default: the run's target")
    ev.add_argument("--process", choices=sorted(PROCESS_NAMES), default=None,
                    help="default: the run's process (with its parameters)")
    _add_measurement_options(ev, n=2048, samples=2048, n_likelihood=256)
    ev.add_argument("--no-likelihood", action="store_true", help="skip the PF-ODE likelihood (KL)")
    ev.add_argument("--prior", choices=("exact", "gaussian"), default="exact", help="start the sampler (and end the "
                    "likelihood) at the exact p_T (the score's error alone) or the Gaussian prior (default %(default)s)")
    ev.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default cpu)")
    ev.add_argument("--out", default=None, help="output folder (default DIR)")
    ev.set_defaults(run=_torch_command("cmd_evaluate"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoremc", description="Exact scores and score estimators for "
                                     "diffusion models (see README.md).")
    parser.add_argument("--version", action="version", version=f"scoremc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="exact score, posterior and score-FPE check of a built-in target "
                          "across noise levels", description=info_rows.__doc__)
    info.add_argument("--target", choices=sorted(TARGETS), default="two-gaussians")
    info.add_argument("--process", choices=sorted(PROCESS_NAMES) + ["all"], default="all")
    info.add_argument("--n-points", type=int, default=512, help="noised points per noise level (default 512)")
    info.add_argument("--n-times", type=int, default=8, help="noise levels per process (default 8)")
    info.add_argument("--seed", type=int, default=0)
    info.add_argument("--json", metavar="PATH", help="also write the table as JSON (atomically)")
    info.set_defaults(run=_cmd_info)

    report = sub.add_parser("report", help="run the built-in sweeps of the seed experiments (STF Fig. 2(b)/3, "
                            "TSM Figs. 1-4) and write netCDF, PNG and Markdown", description=(
                                "Writes OUT/index.md and, per experiment, OUT/<name>/*.nc, *.png, *.md. Takes "
                                "under 3 minutes on 2 CPU cores."))
    report.add_argument("--out", default="scoremc-report", help="output directory (default ./scoremc-report)")
    report.add_argument("--quick", action="store_true", help="a seconds-long smoke version")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--scheduler", default=None, help="dask scheduler: synchronous (default), threads, "
                        "processes, or a dask.distributed address tcp://host:port")
    report.set_defaults(run=_cmd_report)

    var = sub.add_parser("variance", help="variance of score estimators by noise level (netCDF + PNG + Markdown)",
                         description="Sweep V(t) = E_{p_t} tr Cov_post L(x0, x_t, t) (STF Eq. 4) over t for "
                         "several estimators and targets; writes OUT/variance.nc, OUT/variance*.png, OUT/variance.md.")
    var.add_argument("--target", default="two-gaussians",
                     help=f"comma-separated built-in targets: {', '.join(sorted(TARGETS))}")
    var.add_argument("--process", choices=sorted(PROCESS_NAMES), default="ve")
    var.add_argument("--estimators", default="dsi,tsi,kappa,kappa_bar,stf",
                     help="comma-separated: dsi, tsi, kappa, kappa_bar, optimal, stf (default %(default)s); "
                     "tsi and the mixtures need a GaussianMixture target")
    var.add_argument("--n-ref", default="2,16,256", help="reference sizes for stf (default %(default)s)")
    var.add_argument("--times", help="lo:hi:n grid of t (default: --n-times points over the domain)")
    var.add_argument("--n-times", type=int, default=16)
    var.add_argument("--n-outer", type=int, default=500, help="x_t samples per time (default 500)")
    var.add_argument("--n-inner", type=int, default=64, help="posterior samples per x_t (default 64)")
    var.add_argument("--n-samples", type=int, default=100, help="estimator sample count for V/n (default 100)")
    var.add_argument("--seed", type=int, default=0)
    var.add_argument("--scheduler", default=None, help="dask scheduler (see `scoremc report --help`)")
    var.add_argument("--workers", type=int, default=None, help="workers of a threads/processes scheduler")
    var.add_argument("--out", required=True, help="output directory")
    var.set_defaults(run=_cmd_variance)

    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_ship_parser(sub)

    from .experiments import tsm_weightings  # the TSM Figs. 3-4 reproduction registers its own subcommand

    tsm_weightings.add_parser(sub)
    from .experiments import training  # `scoremc experiments`: torch is imported only when it runs

    training.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)[1:]
    if getattr(args, "n_points", 1) < 1 or getattr(args, "n_times", 2) < 1:
        print("scoremc: --n-points and --n-times must be >= 1", file=sys.stderr)
        return 2
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
