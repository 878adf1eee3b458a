"""One command for the whole benchmark suite (issue 12): speed and memory side by side, estimator variance by
noise level, and the cost of variance sweeps; then the README's tables are regenerated from the results.

    python benchmarks/run_all.py            # default sizes: under 15 minutes on 2 cores (README states the run)
    python benchmarks/run_all.py --quick    # CI sizes (tests/test_benchmarks.py runs the parts)

Writes ``results/side_by_side.json``, ``results/variance.json``, ``results/variance_map.nc``,
``results/variance_stf.nc``, ``results/winners.png`` and ``results/run_all.json`` (machine info, load average,
wall time of each part), and rewrites the blocks between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in
``benchmarks/README.md`` (full size only; ``--quick`` writes ``*_quick`` files and leaves the README alone).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_side_by_side  # noqa: E402
import bench_variance  # noqa: E402
from bench_exact_score import _loadavg, machine_info, write_json_atomic  # noqa: E402

README = HERE / "README.md"


def machine_line(m: dict, load0, load1, wall) -> str:
    return (f"Machine: {m.get('cpu_model') or m.get('platform')}, {m.get('cpus') or m.get('cpu_count')} cores; "
            f"Python {m.get('python')}, NumPy {m.get('numpy')}, torch {m.get('torch', '-')}, "
            f"GPU {m.get('gpu') or 'none'}; load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end; "
            f"total wall {wall / 60:.1f} min; {m.get('date', '')}.")


def fill(text: str, name: str, body: str) -> str:
    pat = re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(\n<!-- END {re.escape(name)} -->)", re.S)
    if not pat.search(text):
        raise KeyError(f"README has no block {name}")
    return pat.sub(lambda mt: mt.group(1) + body + mt.group(2), text)


def update_readme(summary: dict, sbs: dict, var: dict) -> None:
    text = README.read_text()
    text = fill(text, "machine", summary["machine_line"])
    text = fill(text, "side_by_side", sbs["markdown"])
    text = fill(text, "winners", var["winners_markdown"])
    stf = ["| target | estimator | nested V (median over t) | Theorem-2 leading term | split-half bias^2 |",
           "|---|---|---|---|---|"]
    stf += [f"| {r['target']} | {r['estimator']} | {r['V_median']:.3g} | {r['stf_leading_median']:.3g} | "
            f"{r['bias_sq_median']:.3g} |" for r in var["stf_rows"]]
    text = fill(text, "stf_large", "\n".join(stf))
    if "cost_markdown" in var:
        text = fill(text, "cost", var["cost_markdown"])
    README.write_text(text)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    q = ["--quick"] if args.quick else []
    load0, t0 = _loadavg(), time.perf_counter()
    parts = {}
    t = time.perf_counter()
    sbs = bench_side_by_side.main(q)
    parts["side_by_side_s"] = time.perf_counter() - t
    t = time.perf_counter()
    var = bench_variance.main(q)
    parts["variance_s"] = time.perf_counter() - t
    wall = time.perf_counter() - t0
    m = machine_info()
    m["torch"] = sbs["machine"].get("torch")
    m["gpu"] = sbs["machine"].get("gpu")
    summary = {"size": "quick" if args.quick else "full", "wall_s": wall, "parts": parts, "loadavg_start": load0,
               "loadavg_end": _loadavg(), "machine": m}
    summary["machine_line"] = machine_line(m, load0, summary["loadavg_end"], wall)
    write_json_atomic(HERE / "results" / ("run_all_quick.json" if args.quick else "run_all.json"), summary)
    if not args.quick:
        update_readme(summary, sbs, var)
    print(summary["machine_line"])
    return summary


if __name__ == "__main__":
    main()
