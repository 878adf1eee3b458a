"""Speed and memory side by side (issue 12, part 2): scoremc against what a user would pick instead.

Every case of ``cases.py`` runs its contenders alternating call by call (one warm-up call each, then
``--repeats`` rounds), so that a change of load on a shared machine hits all of them alike; the results
are medians and ratios to the case's reference contender. Each case also records the load average
before and after, and a check that the contenders agree. Peak memory of the STF target (streamed vs the
official broadcast formulation) is measured in fresh processes (``bench_memory.run_case``), and from it
the bytes per (B n) or (B n d) element and the largest n each handles within 8 GB at B = 128.

    python benchmarks/bench_side_by_side.py            # full sizes (2-4 minutes on 2 cores)
    python benchmarks/bench_side_by_side.py --quick    # CI sizes (seconds)

Writes ``results/side_by_side.json`` (``side_by_side_quick.json`` with ``--quick``) with machine info.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_memory  # noqa: E402
import cases  # noqa: E402
import numpy as np  # noqa: E402
from bench_exact_score import _loadavg, dgemm_reference, machine_info, write_json_atomic  # noqa: E402

GB = 1 << 30
SQUARE = "square-dgemm"  # a square float64 GEMM timed in every round of a flop-counted case


def time_alternating(contenders: dict, repeats: int) -> dict:
    """Warm-up call of each, then ``repeats`` rounds (more for cheap cases) calling each once in turn, in
    alternating order; per contender the list of times, median and minimum."""
    first = {}
    for k, f in contenders.items():
        t0 = time.perf_counter()
        f()
        first[k] = time.perf_counter() - t0
    # cheap cases get more rounds (up to 15, ~3 s in all): three calls of 0.1 s say little on a shared machine
    repeats = max(repeats, min(15, int(3.0 / max(sum(first.values()), 1e-3))))
    times = {k: [] for k in contenders}
    for r in range(repeats):
        order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]  # no contender always first
        for k in order:
            t0 = time.perf_counter()
            contenders[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: {"first_call_s": first[k], "times_s": v, "median_s": statistics.median(v), "min_s": min(v)}
            for k, v in times.items()}


def run_case(case: cases.Case, repeats: int, gemm_n: int) -> dict:
    load0 = _loadavg()
    contenders = dict(case.contenders)
    if case.flops:  # the machine's GEMM rate, measured in the same rounds (load changes hit it alike)
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((gemm_n, gemm_n)), rng.standard_normal((gemm_n, gemm_n))
        contenders[SQUARE] = lambda: a @ b
    t = time_alternating(contenders, repeats)
    gemm_gflops = 2.0 * gemm_n ** 3 / t[SQUARE]["median_s"] / 1e9 if case.flops else None
    t.pop(SQUARE, None)
    ref = t[case.reference]["median_s"]
    res = {"case": case.name, "params": case.params, "reference": case.reference, "notes": case.notes,
           "loadavg_before": load0, "timings": t,
           "ratio_over_reference": {k: v["median_s"] / ref for k, v in t.items()}}
    if case.flops:
        res["flops"] = case.flops
        res["gflops"] = {k: case.flops / v["median_s"] / 1e9 for k, v in t.items()}
        res["square_dgemm_gflops"] = gemm_gflops
        res["fraction_of_square_dgemm"] = {k: g / gemm_gflops for k, g in res["gflops"].items()}
    if case.check:
        res["max_rel_diff"] = case.check()
    res["loadavg_after"] = _loadavg()
    return res


# ----------------------------------------------------------------------------- STF memory

_STF_SETUP = ("import torch\nimport sys\nsys.path.insert(0, {here!r})\nfrom cases import stf_inputs, stf_broadcast\n"
              "xt, sigma, ref = stf_inputs(B, n, d)")


def stf_memory(B: int, d: int, ns, limit=8 * GB, B_limit=128) -> dict:
    """Peak rise of one no-grad call of each formulation in a fresh process, and the largest n within
    ``limit`` at batch ``B_limit``: the broadcast form from its bytes per (B n d) element, the streamed
    form from its bytes per (B n) element above its fixed blocks (fitted over the n's)."""
    setup = _STF_SETUP.format(here=str(HERE))
    calls = {"scoremc": "with torch.no_grad(): smc.stf_target(xt, sigma, ref)",
             "broadcast": "with torch.no_grad(): stf_broadcast(xt, sigma, ref)"}
    rows = []
    for n in ns:
        for name, call in calls.items():
            key = f"stf-mem-{name}"
            bench_memory.CASES[key] = bench_memory.Case(setup, call, bench_memory.Size(dict(B=B, n=n, d=d)),
                                                      bench_memory.Size(dict(B=B, n=n, d=d)))
            r = bench_memory.run_case(key, "full")
            rows.append({"formulation": name, "B": B, "n": n, "d": d, "peak_rise_bytes": r["peak_rise_bytes"],
                         "wall_s": r["wall_s"]})
            del bench_memory.CASES[key]
    out = {"rows": rows, "limit_bytes": limit, "B_limit": B_limit}
    big = max(ns)
    bc = [r for r in rows if r["formulation"] == "broadcast" and r["n"] == big][0]
    per_bnd = bc["peak_rise_bytes"] / (B * big * d)
    out["broadcast_bytes_per_Bnd"] = per_bnd
    # at CI sizes the arrays sit below the mmap threshold and no rise is seen: no extrapolation then
    out["broadcast_max_n"] = int(limit / (per_bnd * B_limit * d)) if per_bnd > 0 else None
    st = [r for r in rows if r["formulation"] == "scoremc"]
    x = np.array([B * r["n"] for r in st], float)
    y = np.array([r["peak_rise_bytes"] for r in st], float)
    slope, icpt = np.polyfit(x, y, 1) if len(x) > 1 else (y[0] / x[0], 0.0)
    slope = max(slope, 8.0)  # at least one float64 logit per (B n): never claim less than that
    out["scoremc_bytes_per_Bn"], out["scoremc_fixed_bytes"] = float(slope), float(icpt)
    out["scoremc_max_n"] = int((limit - max(icpt, 0.0)) / (slope * B_limit))
    return out


def markdown(results: dict) -> str:
    lines = []
    for c in results["cases"]:
        gem = f"; square DGEMM in the same rounds {c['square_dgemm_gflops']:.1f} GFLOP/s" if "flops" in c else ""
        lines.append(f"**{c['case']}** ({', '.join(f'{k}={v}' for k, v in c['params'].items())}; "
                     f"load {c['loadavg_before'][0]:.1f} -> {c['loadavg_after'][0]:.1f}{gem})\n")
        hdr = "| contender | median (s) | min (s) | time / " + c["reference"] + " |"
        extra = "flops" in c
        if extra:
            hdr += " GFLOP/s | of square DGEMM |"
        if "max_rel_diff" in c:
            hdr += " max rel diff |"
        lines += [hdr, "|" + "---|" * hdr.count("|")[:-1] if False else "|" + "---|" * (hdr.count("|") - 1)]
        for k, v in c["timings"].items():
            row = f"| {k} | {v['median_s']:.4g} | {v['min_s']:.4g} | {c['ratio_over_reference'][k]:.2f} |"
            if extra:
                row += f" {c['gflops'][k]:.1f} | {100 * c['fraction_of_square_dgemm'][k]:.0f}% |"
            if "max_rel_diff" in c:
                dv = c["max_rel_diff"].get(k)
                row += " - |" if dv is None else f" {dv:.1e} |"
            lines.append(row)
        lines.append("")
    m = results.get("stf_memory")
    if m:
        lines += ["**STF target peak memory** (one no-grad call, fresh process)\n",
                  "| formulation | B | n | d | peak rise (MB) | wall (s) |", "|---|---|---|---|---|---|"]
        for r in m["rows"]:
            lines.append(f"| {r['formulation']} | {r['B']} | {r['n']} | {r['d']} | "
                         f"{r['peak_rise_bytes'] / 2**20:.0f} | {r['wall_s']:.3g} |")
        lines.append(f"\nLargest n within {m['limit_bytes'] / GB:.0f} GB at B = {m['B_limit']}: broadcast "
                     f"{m['broadcast_max_n']} ({m['broadcast_bytes_per_Bnd']:.1f} bytes per (B n d) element), "
                     f"scoremc {m['scoremc_max_n']} ({m['scoremc_bytes_per_Bn']:.0f} bytes per (B n) element "
                     f"+ {m['scoremc_fixed_bytes'] / 2**20:.0f} MB).")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None, help="rounds after the warm-up (default 3, 2 quick)")
    ap.add_argument("--only", action="append", help="case name prefixes to run (default: all)")
    ap.add_argument("--no-memory", action="store_true", help="skip the STF memory subprocesses")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    size = "quick" if args.quick else "full"
    repeats = args.repeats or (2 if args.quick else 3)
    t_start = time.perf_counter()
    import torch
    results = {"benchmark": "side_by_side", "size": size, "repeats": repeats, "loadavg_start": _loadavg(),
               "torch_threads": torch.get_num_threads()}
    results["dgemm_reference"] = dgemm_reference(512 if args.quick else 2048)
    gemm = results["dgemm_reference"]["gflops"]
    print(f"square DGEMM: {gemm:.1f} GFLOP/s", flush=True)
    results["cases"] = []
    builders = [cases.gmm_case, cases.empirical_case, cases.stf_cases, cases.train_cases]
    for build in builders:
        built = build(size)
        for case in built if isinstance(built, list) else [built]:
            if args.only and not any(case.name.startswith(p) for p in args.only):
                continue
            r = run_case(case, repeats, 512 if args.quick else 2048)
            results["cases"].append(r)
            print(f"{case.name}: " + ", ".join(f"{k} {v['median_s']:.3g} s ({r['ratio_over_reference'][k]:.2f}x)"
                                              for k, v in r["timings"].items()), flush=True)
    if not args.no_memory:
        p = cases.SIZES[size]["stf"]
        results["stf_memory"] = stf_memory(p["B"], p["d"], p["ns"])
    results["loadavg_end"] = _loadavg()
    results["wall_s"] = time.perf_counter() - t_start
    results["machine"] = machine_info()
    results["machine"]["torch"] = torch.__version__
    results["machine"]["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    results["markdown"] = markdown(results)
    print(results["markdown"])
    out = args.out or HERE / "results" / ("side_by_side_quick.json" if args.quick else "side_by_side.json")
    write_json_atomic(out, results)
    print(f"wrote {out} ({results['wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
