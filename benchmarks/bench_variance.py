"""Estimator variance by noise level (issue 12, part 1), and the cost of variance sweeps (part 3).

Part 1, through ``smc.variance`` (xarray; written as netCDF):

* ``map``: every built-in target (``scoremc.builtin.TARGETS``) under every process (``smc.PROCESSES``) on a
  t-grid of ``--n-times`` (default 50) points, for DSI, TSI, Mix(Kappa()), Mix(KappaBar()), OptimalMix,
  STF(2), STF(16) and, for the Empirical target (digits, which has no density: no TSI or mixture),
  LocalSTF(2) and LocalSTF(16). Per cell: V(t), its standard error, the variance at a fixed budget of
  ``n_samples`` = 100 posterior draws (``estimator_variance`` = V / 100), the STF bias (``bias_sq``, split-half)
  and Theorem 2's corrected leading term ``stf_leading``, which predicts STF's V at any n_ref.
* ``stf``: STF(256) and STF(4096) by nested Monte Carlo (their cost grows with n_ref: 4096 draws per inner
  sample) on a coarser grid under VE, every target, fewer outer/inner points; set
  beside the Theorem-2 prediction ``stf_leading`` (for that n_ref) and the split-half bias^2.
* ``winners.png``: per process, target x t coloured by the estimator of least V, shaded by its margin
  log10(V_second / V_best); the same as a Markdown table of the best estimator by t band in ``variance.json``.

Part 3 (``--no-cost`` skips it): seconds and peak memory (fresh processes) of ``scoremc report`` and of a
50-point sweep per estimator (two-gaussians, VE); time and peak memory against n_outer (linear, flat); time
with dask schedulers (synchronous, threads, processes; 2 workers).

    python benchmarks/bench_variance.py            # default sizes (~3-4 minutes on 2 cores)
    python benchmarks/bench_variance.py --quick    # CI sizes (seconds)

Writes ``results/variance_map.nc``, ``variance_stf.nc``, ``winners.png``, ``variance.json`` (``*_quick.*`` with
``--quick``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_memory  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from bench_exact_score import _loadavg, machine_info, write_json_atomic  # noqa: E402

import scoremc as smc  # noqa: E402
from scoremc import builtin  # noqa: E402

SIZES = {
    "full": dict(n_times=50, n_outer=64, n_inner=16, stf_times=10, stf_outer=32, stf_inner=8, stf_nrefs=(256, 4096),
                 report=True, cost_times=50, cost_outer=16,
                 cost_estimators=("DSI()", "TSI()", "Mix(Kappa())", "Mix(KappaBar())", "OptimalMix()", "STF(2)",
                                  "STF(16)"),
                 n_outer_scaling=(1_000, 3_000, 9_000), dask_times=20,
                 schedulers=(("synchronous", None), ("threads", 2), ("processes", 2))),
    # CI: every code path once, no `scoremc report` (its own tests run it) and no process pool (spawn costs)
    "quick": dict(n_times=4, n_outer=8, n_inner=4, stf_times=2, stf_outer=4, stf_inner=2, stf_nrefs=(32,),
                  report=False, cost_times=4, cost_outer=8, cost_estimators=("DSI()",), n_outer_scaling=(200,),
                  dask_times=2, schedulers=(("synchronous", None), ("threads", 2))),
}
N_SAMPLES = 100  # the fixed sample budget of the Monte Carlo estimator


def times_for(proc, n):
    """n times over the process's useful range (as ``scoremc variance``): EDM's sigma log-spaced over its
    Karras range, otherwise t in [0.02, 1] ([0.02, 0.98] for Cosine, singular at 1)."""
    if isinstance(proc, smc.EDM):
        return np.geomspace(proc.sigma_min, proc.sigma_max, n)
    return np.linspace(0.02, 0.98 if isinstance(proc, smc.Cosine) else 1.0, n)


def identities_for(target):
    if isinstance(target, smc.Empirical):  # no density: no TSI (nor mixtures with it)
        return [smc.DSI(), smc.STF(2), smc.STF(16), smc.LocalSTF(2), smc.LocalSTF(16)]
    return [smc.DSI(), smc.TSI(), smc.Mix(smc.Kappa()), smc.Mix(smc.KappaBar()), smc.OptimalMix(),
            smc.STF(2), smc.STF(16)]


def _pname(proc):
    return type(proc).__name__


def run_map(sz, seed=0):
    """One Dataset (process, target, estimator, t-index) of the variance quantities; the t values per
    process are the coordinate ``time`` (process, t_index)."""
    per_proc = []
    for proc in smc.PROCESSES:
        ts = times_for(proc, sz["n_times"])
        per_target = []
        for name, make in builtin.TARGETS.items():
            target = make()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = smc.variance(identities_for(target), {name: target}, proc, ts, n_outer=sz["n_outer"],
                                  n_inner=sz["n_inner"], n_samples=N_SAMPLES, seed=seed, progress=False)
            keep = [v for v in ("V", "V_se", "estimator_variance", "bias_sq", "bias_sq_se", "stf_leading",
                                "stf_leading_se", "D") if v in ds]
            ds = ds[keep]
            per_target.append(ds.assign_coords(t_index=("t", np.arange(len(ts)))).swap_dims(t="t_index")
                              .reset_coords([c for c in ds.coords if c not in ("target", "estimator")], drop=True))
        merged = xr.concat(per_target, dim="target", join="outer", coords="different", compat="equals")
        merged = merged.assign_coords(time=("t_index", ts))
        per_proc.append(merged.expand_dims(process=[_pname(proc)]))
    out = xr.concat(per_proc, dim="process", join="outer", coords="different", compat="equals")
    out.attrs.update(n_outer=sz["n_outer"], n_inner=sz["n_inner"], n_samples=N_SAMPLES, seed=seed,
                     description="smc.variance per (process, target, estimator, t_index); time(process, t_index) "
                                 "holds t (sigma for EDM); NaN where an estimator does not apply (TSI and "
                                 "mixtures on the Empirical target, LocalSTF on mixtures)")
    return out


def run_stf(sz, seed=0):
    proc = smc.VE()
    ts = times_for(proc, sz["stf_times"])
    parts = []
    for name, make in builtin.TARGETS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = smc.variance([smc.STF(n) for n in sz["stf_nrefs"]], {name: make()}, proc, ts,
                              n_outer=sz["stf_outer"], n_inner=sz["stf_inner"], n_samples=N_SAMPLES, seed=seed,
                              progress=False)
        parts.append(ds[["V", "V_se", "bias_sq", "bias_sq_se", "stf_leading"]])
    out = xr.concat(parts, dim="target", join="outer", coords="different", compat="equals")
    out.attrs.update(n_outer=sz["stf_outer"], n_inner=sz["stf_inner"], process="VE")
    return out


# ----------------------------------------------------------------------------- winners map

def winners(ds):
    """(best estimator index, margin log10(V_second / V_best)) per (process, target, t_index)."""
    V = ds["V"].where(np.isfinite(ds["V"]) & (ds["V"] > 0))
    Vs = V.fillna(np.inf)
    best = Vs.argmin("estimator")
    srt = np.sort(Vs.values, axis=list(Vs.dims).index("estimator"))
    ax = list(Vs.dims).index("estimator")
    v1, v2 = np.take(srt, 0, axis=ax), np.take(srt, 1, axis=ax)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.log10(v2 / v1)
    margin = np.where(np.isfinite(margin), margin, np.nan)
    dims = [d for d in Vs.dims if d != "estimator"]
    return best, xr.DataArray(margin, dims=dims, coords={d: Vs[d] for d in dims})


def plot_winners(ds, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    best, margin = winners(ds)
    est = list(ds.estimator.values)
    cmap = plt.get_cmap("tab10")
    procs = list(ds.process.values)
    fig, axes = plt.subplots(len(procs), 1, figsize=(11, 2.0 + 0.45 * len(ds.target) * len(procs)), squeeze=False)
    for ax, p in zip(axes[:, 0], procs):
        b = best.sel(process=p).values  # (target, t_index)
        m = np.nan_to_num(margin.sel(process=p).values, nan=0.0)
        shade = np.clip(m / 1.0, 0.15, 1.0)[..., None]  # margin of 1 decade or more: full colour
        rgb = np.array([[to_rgb(cmap(int(k) % 10)) for k in row] for row in b])
        img = 1.0 - shade * (1.0 - rgb)
        ax.imshow(img, aspect="auto", interpolation="nearest")
        tt = ds.time.sel(process=p).values
        ticks = np.linspace(0, len(tt) - 1, min(6, len(tt))).astype(int)
        ax.set_xticks(ticks, [f"{tt[i]:.3g}" for i in ticks])
        ax.set_yticks(range(len(ds.target)), list(ds.target.values), fontsize=8)
        ax.set_title(f"{p}: estimator of least V(t) (pale: within 10^0.15 of the runner-up; full colour: "
                     f">= 10x)", fontsize=9)
        ax.set_xlabel("sigma" if p == "EDM" else "t", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i % 10)) for i in range(len(est))]
    fig.legend(handles, est, loc="lower center", ncol=min(len(est), 9), fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def winners_table(ds, bands=5) -> str:
    """Markdown: per (process, target), the best estimator (and margin, decades) in ``bands`` t bands."""
    best, margin = winners(ds)
    est = list(ds.estimator.values)
    n = ds.sizes["t_index"]
    bands = min(bands, n)
    edges = np.linspace(0, n, bands + 1).astype(int)
    hdr = "| process | target | " + " | ".join(f"t band {i + 1}" for i in range(bands)) + " |"
    lines = [hdr, "|" + "---|" * (bands + 2)]
    for p in ds.process.values:
        for tg in ds.target.values:
            cells = []
            for a, b in zip(edges[:-1], edges[1:]):
                bb = best.sel(process=p, target=tg).values[a:b]
                mm = margin.sel(process=p, target=tg).values[a:b]
                k = np.bincount(bb, minlength=len(est)).argmax()
                mg = np.nanmedian(mm[bb == k]) if np.isfinite(mm[bb == k]).any() else np.nan
                cells.append(f"{est[k]} ({'>= 10' if mg >= 10 else f'{mg:.1f}'})")
            lines.append(f"| {p} | {tg} | " + " | ".join(cells) + " |")
    ranges = "; ".join(f"{p}: " + ", ".join(f"[{ds.time.sel(process=p).values[a]:.3g}, "
                                            f"{ds.time.sel(process=p).values[b - 1]:.3g}]"
                                            for a, b in zip(edges[:-1], edges[1:])) for p in ds.process.values)
    return "\n".join(lines) + f"\n\nt bands: {ranges}. Cell: the estimator of least V in most points of the band " \
                              "(median margin over the runner-up, in decades)."


# ----------------------------------------------------------------------------- cost (part 3)

_PRE = "import warnings; warnings.simplefilter('ignore')\nfrom scoremc.identities import *\n"


def _sub(call, setup=""):
    key = "_variance_cost"
    bench_memory.CASES[key] = bench_memory.Case(_PRE + setup, call, bench_memory.Size({}), bench_memory.Size({}))
    try:
        r = bench_memory.run_case(key, "full")
    finally:
        del bench_memory.CASES[key]
    return {"peak_rise_bytes": r["peak_rise_bytes"], "wall_s": r["wall_s"]}


def run_cost(sz, quick):
    out = {}
    # scoremc report: the whole command in a fresh process (peak RSS of the child, wall time)
    if sz["report"]:
        import tempfile
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:  # the child reports its own peak RSS (not other children's)
            r = subprocess.run([sys.executable, "-c", "import resource; from scoremc.cli import main; "
                                f"rc = main(['report', '--out', {tmp!r}]); "
                                "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                               check=True, capture_output=True, text=True)
        peak = int([ln for ln in r.stdout.splitlines() if ln.startswith("PEAK")][-1].split()[1]) * 1024
        out["report"] = {"command": "scoremc report", "wall_s": time.perf_counter() - t0, "peak_rss_bytes": peak}
    # a 50-point sweep per estimator (two-gaussians, VE): the call alone, after a warm-up
    setup = (f"gm = builtin.two_gaussians(); proc = smc.VE(); ts = np.linspace(0.02, 1.0, {sz['cost_times']})")
    per = {}
    for ident in sz["cost_estimators"]:
        per[ident] = _sub(f"smc.variance({ident}, gm, proc, ts, n_outer={sz['cost_outer']}, n_inner=16, "
                          f"progress=False)", setup)
    out["sweep_per_estimator"] = {"target": "two-gaussians", "process": "VE", "n_times": sz["cost_times"],
                                  "n_outer": sz["cost_outer"], "n_inner": 16, "rows": per}
    # n_outer scaling: DSI (exact inner) and STF(16) (nested) at one t
    rows = []
    for n in sz["n_outer_scaling"]:
        for ident in ("DSI()", "STF(16)"):
            r = _sub(f"smc.variance({ident}, gm, proc, [0.44], n_outer={n}, n_inner=16, progress=False)",
                     "gm = builtin.two_gaussians(); proc = smc.VE()")
            rows.append({"estimator": ident, "n_outer": n, **r})
    out["n_outer_scaling"] = rows
    # dask schedulers: the map's sweep for one process (VP) and the GMM targets
    ts = times_for(smc.VP(), sz["dask_times"])
    targets = {k: f() for k, f in builtin.TARGETS.items() if k != "digits"}
    ids = identities_for(builtin.two_gaussians())
    sched = []
    for scheduler, workers in sz["schedulers"]:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            smc.variance(ids, targets, smc.VP(), ts, n_outer=sz["n_outer"], n_inner=sz["n_inner"],
                         scheduler=scheduler, num_workers=workers, progress=False)
        sched.append({"scheduler": scheduler, "num_workers": workers, "wall_s": time.perf_counter() - t0})
    out["dask"] = {"targets": list(targets), "n_times": len(ts), "estimators": [i.name for i in ids], "rows": sched}
    return out


def cost_markdown(c) -> str:
    MB = 2 ** 20
    rep = c.get("report")
    sw = c["sweep_per_estimator"]
    L = [f"`{rep['command']}`: {rep['wall_s']:.1f} s, peak RSS {rep['peak_rss_bytes'] / MB:.0f} MB"
         if rep else "`scoremc report`: not run at this size",
         "", f"{sw['n_times']}-point sweep per estimator ({sw['target']}, VE, n_outer = "
         f"{c['sweep_per_estimator']['n_outer']}, n_inner = 16; fresh process, after a warm-up):", "",
         "| estimator | wall (s) | peak rise (MB) |", "|---|---|---|"]
    L += [f"| {k} | {v['wall_s']:.2f} | {v['peak_rise_bytes'] / MB:.0f} |"
          for k, v in c["sweep_per_estimator"]["rows"].items()]
    L += ["", "n_outer scaling (one t):", "", "| estimator | n_outer | wall (s) | s per 1000 outer points | "
          "peak rise (MB) |", "|---|---|---|---|---|"]
    L += [f"| {r['estimator']} | {r['n_outer']} | {r['wall_s']:.2f} | {1000 * r['wall_s'] / r['n_outer']:.3f} | "
          f"{r['peak_rise_bytes'] / MB:.0f} |" for r in c["n_outer_scaling"]]
    L += ["", f"dask schedulers ({len(c['dask']['targets'])} targets x {len(c['dask']['estimators'])} estimators x "
          f"{c['dask']['n_times']} t, VP):", "", "| scheduler | workers | wall (s) |", "|---|---|---|"]
    L += [f"| {r['scheduler']} | {r['num_workers'] or 1} | {r['wall_s']:.2f} |" for r in c["dask"]["rows"]]
    return "\n".join(L)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-cost", action="store_true", help="skip part 3 (sweep cost and scaling)")
    ap.add_argument("--outdir", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    size = "quick" if args.quick else "full"
    sz = SIZES[size]
    sfx = "_quick" if args.quick else ""
    args.outdir.mkdir(parents=True, exist_ok=True)
    res = {"benchmark": "variance", "size": size, "sizes": sz, "loadavg_start": _loadavg()}
    t0 = time.perf_counter()
    ds = run_map(sz)
    res["map_wall_s"] = time.perf_counter() - t0
    print(f"map: {res['map_wall_s']:.1f} s", flush=True)
    smc.save_dataset(ds, args.outdir / f"variance_map{sfx}.nc")
    plot_winners(ds, args.outdir / f"winners{sfx}.png")
    res["winners_markdown"] = winners_table(ds)
    t0 = time.perf_counter()
    st = run_stf(sz)
    res["stf_wall_s"] = time.perf_counter() - t0
    print(f"stf: {res['stf_wall_s']:.1f} s", flush=True)
    smc.save_dataset(st, args.outdir / f"variance_stf{sfx}.nc")
    # STF bias and the Theorem-2 prediction beside the nested estimate
    rows = []
    for tg in st.target.values:
        for e in st.estimator.values:
            v = st["V"].sel(target=tg, estimator=e).values
            lead = st["stf_leading"].sel(target=tg).values if "estimator" not in st["stf_leading"].dims else \
                st["stf_leading"].sel(target=tg, estimator=e).values
            rows.append({"target": str(tg), "estimator": str(e), "V_median": float(np.nanmedian(v)),
                         "stf_leading_median": float(np.nanmedian(lead)),
                         "bias_sq_median": float(np.nanmedian(st["bias_sq"].sel(target=tg, estimator=e).values))})
    res["stf_rows"] = rows
    if not args.no_cost:
        t0 = time.perf_counter()
        res["cost"] = run_cost(sz, args.quick)
        res["cost_wall_s"] = time.perf_counter() - t0
        res["cost_markdown"] = cost_markdown(res["cost"])
        print(res["cost_markdown"], flush=True)
    res["loadavg_end"] = _loadavg()
    res["machine"] = machine_info()
    write_json_atomic(args.outdir / f"variance{sfx}.json", res)
    print(res["winners_markdown"])
    return res


if __name__ == "__main__":
    main()
