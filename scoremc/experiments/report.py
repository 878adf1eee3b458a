"""``scoremc report``: the built-in default sweep of the seed experiments.

Runs, into one output folder (default ``./scoremc-report``):

* ``stf-dsm/``  STF Fig. 2(b)/3(a): V_DSM(t) and D(t) on two-Gaussians and digits;
* ``stf-nref/`` STF Fig. 3(c,d): V_STF(t) for n_ref = 2, 4, 16, 64, 256;
* ``tsm-variance/`` TSM Figs. 1-2: kappa, kappa-bar and the DSI / TSI / kappa / kappa-bar /
  optimal estimator variances on the four 1-D targets;
* ``tsm-weightings/`` TSM Figs. 3-4: the loss weightings and the distributions of the four
  losses x weightings x targets at the true score (:mod:`.tsm_weightings`);

each as netCDF + PNG + Markdown, and ``index.md`` with the paper's qualitative claims checked
against the numbers just computed.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from . import stf_variance, tsm_variance, tsm_weightings
from ._common import write_text
from .claims import EXPECTED_NO, claims

__all__ = ["run_report"]


def _tsm_weightings(out, *, mode, seed, scheduler, progress):
    show = sys.stderr.isatty() if progress is None else bool(progress)
    return tsm_weightings.run(out, quick=(mode == "quick"), seed=seed, progress=show)


def run_report(out_dir="scoremc-report", *, mode: str = "report", seed: int = 0, scheduler=None,
               progress=None) -> Path:
    """Run the reproductions and write ``out_dir/index.md`` with the claims table; returns the folder."""
    out = Path(out_dir)
    timings = {}
    results = {}
    jobs = [("stf-dsm", stf_variance.dsm_variance_and_divergence),
            ("stf-nref", stf_variance.stf_variance_by_reference_size),
            ("tsm-variance", tsm_variance.tsm_estimator_variance),
            ("tsm-weightings", _tsm_weightings)]
    for name, job in jobs:
        start = time.perf_counter()
        print(f"[scoremc report] {name} ...", flush=True)
        results[name] = job(out / name, mode=mode, seed=seed, scheduler=scheduler, progress=progress)
        timings[name] = time.perf_counter() - start
        print(f"[scoremc report] {name} done in {timings[name]:.1f} s -> {out / name}", flush=True)
    rows = claims(results["stf-dsm"], results["stf-nref"], results["tsm-variance"])
    lines = ["# scoremc report", "", f"Mode `{mode}`, seed {seed}. Each folder holds netCDF (xarray), PNG and "
             "Markdown; open the `.nc` files with `xarray.open_dataset`.", "",
             "| experiment | folder | seconds |", "|---|---|---|"]
    lines += [f"| {name} | `{name}/` | {timings[name]:.1f} |" for name, _ in jobs]
    lines += ["", "## Claims of the seed papers, checked on these numbers", "",
              "Each claim is a computed comparison (tolerances in `scoremc/experiments/claims.py`); an expected NO "
              "is one our exact computation contradicts, with the reason below.", "",
              "| claim | holds | evidence |", "|---|---|---|"]
    lines += [f"| {c.text} | {'yes' if c.holds else 'NO'}{'' if c.expected else ' (unexpected)'} | {c.evidence} |"
              for c in rows]
    notes = [f"- `{c.key}`: {EXPECTED_NO[c.key]}" for c in rows if c.key in EXPECTED_NO]
    if notes:
        lines += ["", "Expected NO:", ""] + notes
    write_text(out / "index.md", "\n".join(lines) + "\n")
    print(f"[scoremc report] wrote {out / 'index.md'}")
    return out
