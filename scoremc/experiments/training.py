"""``scoremc experiments NAME``: the training experiments of the seed papers at CPU scale.

Each experiment trains small score networks (:mod:`scoremc.nn`, torch) and writes into ``--out``
(default ``results/<name>``) ``<name>.nc`` (an ``xarray.Dataset``, atomically), ``<name>.png`` and
``<name>.md``, whose claims table is computed from the numbers in the ``.nc`` file by
:mod:`.training_claims` (a claim that does not hold says "NO"). The registry :data:`EXPERIMENTS`
names, for each experiment, the module that runs it:

* ``tsm-fig5``  TSM Fig. 5: regression loss by t of DSM, TSM, kappa and kappa-bar models on a 2-D mixture;
* ``fp-curl``   FP-Diffusion §6.2: curl and score-FPE residual of DSM vs FP-regularised models;
* ``stf-nref``  STF Fig. 5 direction: target variance and early convergence against n_ref;
* ``local-ref`` STF §8 (beyond the papers): a local reference batch against plain STF, by the variance
  engine (:mod:`scoremc.experiments.local_stf`) and in training (:mod:`scoremc.nn.experiments.local_reference`).

This module does not import torch (the command imports it when it runs); ``scoremc experiments
all`` runs every experiment.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from .._io import write_text
from ..variance import save_dataset
from .training_claims import REASONS

__all__ = ["EXPERIMENTS", "Experiment", "add_parser", "write_outputs"]


@dataclass(frozen=True)
class Experiment:
    """A registry entry: ``module`` (its full name) defines ``run(out_dir, *, quick=False, seed=0, progress=None)
    -> dict`` of the written paths. Modules that use torch live under :mod:`scoremc.nn.experiments`."""

    module: str
    title: str


#: name -> experiment; the one place a new training experiment is registered
EXPERIMENTS = {
    "tsm-fig5": Experiment("scoremc.nn.experiments.tsm_training",
                           "TSM Fig. 5: regression loss by t for DSM, TSM, kappa, kappa-bar"),
    "fp-curl": Experiment("scoremc.nn.experiments.fp_training",
                          "FP-Diffusion §6.2: curl and score-FPE residual, DSM vs FP-regularised"),
    "stf-nref": Experiment("scoremc.nn.experiments.stf_training",
                           "STF Fig. 5 direction: target variance and convergence by n_ref"),
    "local-ref": Experiment("scoremc.nn.experiments.local_reference",
                            "STF §8: a local reference batch, against plain STF"),
}


def write_outputs(ds, claims, out_dir, stem: str, title: str, notes: str, plot) -> dict:
    """Write ``stem.nc`` (atomic), ``stem.png`` (``plot(ds, path)``) and ``stem.md`` (title, notes, the claims
    table computed from ``ds``) into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"netcdf": save_dataset(ds, out / f"{stem}.nc"), "png": plot(ds, out / f"{stem}.png")}
    lines = [f"# {title}", "", notes, "", "| claim | holds | evidence |", "|---|---|---|"]
    lines += [f"| {c.text} | {'yes' if c.holds else 'NO'} | {c.evidence} |" for c in claims]
    reasons = [f"- `{c.key}`: {REASONS[c.key]}" for c in claims if not c.holds and c.key in REASONS]
    if reasons:
        lines += ["", "Why NO, where we understand it:", ""] + reasons
    settings = ", ".join(f"{k} = {v}" for k, v in ds.attrs.items() if k.startswith("setting_"))
    lines += ["", f"Settings: {settings.replace('setting_', '')}." if settings else ""]
    paths["markdown"] = write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    return {k: str(v) for k, v in paths.items()}


def _cmd(args) -> int:
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    from ..nn import experiments  # imports torch: only when the command runs (tests/test_nn_cli.py)

    for name in names:
        out = Path(args.out) / name if (args.out and args.name == "all") else Path(args.out or f"results/{name}")
        start = time.perf_counter()
        print(f"[scoremc experiments] {name}: {EXPERIMENTS[name].title}", flush=True)
        paths = experiments.run(name, out, quick=args.quick, seed=args.seed)
        for kind, path in paths.items():
            print(f"  {kind:9s} {path}")
        print(f"[scoremc experiments] {name} done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``experiments`` on an argparse subparsers object (no torch import)."""
    p = subparsers.add_parser("experiments", help="the training experiments of the seed papers at CPU scale "
                              "(TSM Fig. 5, FP-Diffusion §6.2, STF n_ref): netCDF + PNG + Markdown with claims",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=[*EXPERIMENTS, "all"], help="which experiment (all: every one)")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default results/NAME; with all, "
                   "DIR/NAME for each)")
    p.add_argument("--quick", action="store_true", help="a CI-sized run (seconds) instead of the default (minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, draws and evaluation (default 0)")
    p.set_defaults(run=_cmd)
    return p
