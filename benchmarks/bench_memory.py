"""Benchmark: peak memory of the reference layer at the sizes the README promises (issue "bounded memory").

Each case runs in its own Python process: the inputs are built, the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``), the call runs once, and the case reports the rise of the peak resident set
above the resident set just before the call (``VmHWM`` - ``VmRSS``, from ``/proc/self/status``), with the
wall time. A case passes when its peak rise is below its stated budget (and its time below its time
budget, where it has one). Linux only (the counters are Linux's).

| case | call | full size | budget |
|---|---|---|---|
| ``variance`` | ``variance(DSI(), two_gaussians(), VE(), [0.44], n_outer=N)`` (f-divergence on) | N = 1e5 | 2 GB |
| ``stf`` | ``estimate(STF(4096), Empirical(4096 x 3072), EDM(), 1.0, xt (N x 3072), n=1)`` | N = 128 | 2 GB |
| ``sample`` | ``sample`` of a d = 256, K = 8 full-covariance mixture | n = 20 000 | 0.5 GB |
| ``hessian`` | ``hessian`` of ``marginal(Empirical(4096 x 3072), VE(), 0.5)`` at one point | 1 point | 1 GB |
| ``dsi-estimate`` | ``estimate(DSI(), two_gaussians(), VE(), 0.44, xt (N x 64), n=1000)`` | N = 1000 | 0.5 GB |
| ``stf-loss`` | ``loss(STFLoss(4096), s, Empirical(4096 x 3072), EDM(), 1.0, x0, eps)`` | N = 128 | 2 GB |
| ``kappa`` | ``estimate(Mix(Kappa()), K = 2048, d = 512 isotropic mixture, ..., 16 rows, n=4)`` | | 1 s |

``--quick`` runs every case at a CI size (a few seconds in all); the default suite runs it
(``tests/test_memory.py``), and the full sizes under ``pytest -m slow``.

Usage::

    python benchmarks/bench_memory.py             # full sizes, about a minute on 2 cores
    python benchmarks/bench_memory.py --quick
    python benchmarks/bench_memory.py --case stf --out results.json

Results go to ``benchmarks/results/memory.json`` (``memory_quick.json`` with ``--quick``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MB = 1 << 20

_PRELUDE = """
import time
import numpy as np
import scoremc as smc
from scoremc import builtin
from scoremc.identities import DSI, STF, Mix, Kappa
rng = np.random.default_rng(0)
"""

@dataclass(frozen=True)
class Size:
    """One size of a case: the values of its variables, and its budgets (peak rise in bytes, wall s)."""

    params: dict
    peak_budget: float | None = None
    time_budget: float | None = None


@dataclass(frozen=True)
class Case:
    """Setup code (not measured) and the measured call, at a full size and a CI size. The CI budgets
    are set between the chunked peak and what an unchunked implementation needs at that size, so the
    CI run still tells bounded from unbounded memory."""

    setup: str
    call: str
    full: Size
    quick: Size


CASES = {
    # unchunked: ~0.25 MB per outer point (1 GB at N = 4000)
    "variance": Case(
        "gm = builtin.two_gaussians(); proc = smc.VE()",
        "smc.variance(DSI(), gm, proc, [0.44], n_outer=N, progress=False)",
        Size(dict(N=100_000), 2000 * MB), Size(dict(N=4_000), 400 * MB)),
    # unchunked: ~190 MB per row at K = 4096 (~24 MB at K = 512: 770 MB at N = 32)
    "stf": Case(
        "emp = smc.Empirical(rng.standard_normal((K, 3072)))\n"
        "xt = rng.standard_normal((N, 3072))",
        "smc.estimate(STF(K), emp, smc.EDM(), 1.0, xt, n=1, rng=rng)",
        Size(dict(N=128, K=4096), 2000 * MB), Size(dict(N=32, K=512), 300 * MB)),
    # all n draws of every row at once: 2.6 GB at N = 1000, n = 1000 (260 MB at N = 100)
    "dsi-estimate": Case(
        "gm = builtin.two_gaussians()\n"
        "xt = rng.standard_normal((N, 64))",
        "smc.estimate(DSI(), gm, smc.VE(), 0.44, xt, n=1000, rng=rng)",
        Size(dict(N=1000), 500 * MB), Size(dict(N=100), 150 * MB)),
    # the official broadcast formulation: ~37 GB at N = 128; the reference batch per row is 100 MB
    "stf-loss": Case(
        "emp = smc.Empirical(rng.standard_normal((K, 3072)))\n"
        "x0 = emp.points[:N]; eps = rng.standard_normal((N, 3072))\n"
        "net = lambda x, t: -x",
        "smc.loss(smc.STFLoss(K), net, emp, smc.EDM(), 1.0, x0, eps, rng=rng)",
        Size(dict(N=128, K=4096), 2000 * MB), Size(dict(N=32, K=512), 300 * MB)),
    # the STF target alone, float32, one shared batch, sigma over EDM's range (issue 10): the broadcast
    # formulation holds three (B, n, d) arrays, 19 GB at B = 128, n = 4096, d = 3072 (600 MB at the CI size)
    "stf-target": Case(
        "ref = rng.uniform(-1, 1, (n, d)).astype(np.float32)\n"
        "sigma = np.geomspace(0.002, 80, B).astype(np.float32)[:, None]\n"
        "xt = (ref[rng.integers(0, n, B)] + sigma * rng.standard_normal((B, d))).astype(np.float32)",
        "smc.stf_target(xt, sigma, ref)",
        Size(dict(B=128, n=4096, d=3072), 250 * MB), Size(dict(B=32, n=512, d=3072), 100 * MB)),
    # the same through torch (no autograd), as the training layer calls it
    "stf-target-torch": Case(
        "import torch\n"
        "ref = rng.uniform(-1, 1, (n, d)).astype(np.float32)\n"
        "sigma = np.geomspace(0.002, 80, B).astype(np.float32)[:, None]\n"
        "xt = (ref[rng.integers(0, n, B)] + sigma * rng.standard_normal((B, d))).astype(np.float32)\n"
        "xt, sigma, ref = (torch.from_numpy(v) for v in (xt, sigma, ref))",
        "with torch.no_grad(): smc.stf_target(xt, sigma, ref)",
        Size(dict(B=128, n=4096, d=3072), 250 * MB), Size(dict(B=32, n=512, d=3072), 100 * MB)),
    # an (n, d, d) gather of the factors: 1 GB at n = 2000
    "sample": Case(
        "Q = np.linalg.qr(rng.standard_normal((8, d, d)))[0]\n"
        "covs = Q @ (rng.uniform(0.5, 2, (8, d))[..., None] * np.swapaxes(Q, 1, 2))\n"
        "gm = smc.GaussianMixture(np.full(8, 1 / 8), rng.standard_normal((8, d)), covs)",
        "smc.sample(gm, N, rng)",
        Size(dict(N=20_000, d=256), 500 * MB), Size(dict(N=2_000, d=256), 100 * MB)),
    # dense (K, d, d) precisions: 38 GB at K = 512
    "hessian": Case(
        "nd = smc.marginal(smc.Empirical(rng.standard_normal((K, 3072))), smc.VE(), 0.5)\n"
        "x = rng.standard_normal((1, 3072))",
        "smc.hessian(nd, x)",
        Size(dict(K=4096), 1000 * MB), Size(dict(K=512), 500 * MB)),
    # a dense (K, d, d) covariance for sigma_data: 4.3 GB and 11 s
    "kappa": Case(
        "gm = smc.GaussianMixture(np.full(K, 1 / K), rng.standard_normal((K, d)), np.full(K, 0.5))\n"
        "xt = rng.standard_normal((16, d))",
        "smc.estimate(Mix(Kappa()), gm, smc.VP(), 0.5, xt, n=4, rng=rng)",
        Size(dict(K=2048, d=512), 500 * MB, 1.0), Size(dict(K=2048, d=512), 500 * MB, 1.0)),
}

_RUNNER = """
{prelude}
{sizes}
{setup}
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
{call}  # warm-up: Numba kernels and imports are loaded outside the measured call
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark to the current RSS
before = status("VmRSS:")
t0 = time.perf_counter()
{call}
wall = time.perf_counter() - t0
print("RESULT", status("VmHWM:") - before, wall)
"""


def run_case(name: str, size: str = "full") -> dict:
    """Run one case in a fresh process; returns its peak rise (bytes), wall time and verdict."""
    case = CASES[name]
    sz = getattr(case, size)
    params, peak_budget, time_budget = sz.params, sz.peak_budget, sz.time_budget
    code = _RUNNER.format(prelude=_PRELUDE, sizes="\n".join(f"{k} = {v!r}" for k, v in params.items()),
                          setup=case.setup, call=case.call)
    # a fixed mmap threshold: glibc otherwise raises it to the size of each freed large block, so the warm-up's
    # buffers would stay resident and the measured call reuse them unseen (torch's CPU tensors showed 0 MB)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"case {name} failed:\n{proc.stderr}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    peak, wall = int(line.split()[1]), float(line.split()[2])
    ok = (peak_budget is None or peak < peak_budget) and (time_budget is None or wall < time_budget)
    return {"case": name, "size": size, "params": params, "peak_rise_bytes": peak, "wall_s": wall,
            "peak_budget_bytes": peak_budget, "time_budget_s": time_budget, "within_budget": bool(ok)}


def machine() -> dict:
    import numpy as np

    import scoremc

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "scoremc": scoremc.__version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _table(rows) -> str:
    lines = ["| case | sizes | peak rise (MB) | budget (MB) | wall (s) | within budget |", "|---|---|---|---|---|---|"]
    for r in rows:
        budget = "-" if r["peak_budget_bytes"] is None else f"{r['peak_budget_bytes'] / MB:.0f}"
        if r["time_budget_s"] is not None:
            budget += f" / {r['time_budget_s']:g} s"
        sizes = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"| {r['case']} | {sizes} | {r['peak_rise_bytes'] / MB:.0f} | {budget} | {r['wall_s']:.2f} | "
                     f"{'yes' if r['within_budget'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI sizes")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only these cases")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    size = "quick" if args.quick else "full"
    rows = [run_case(name, size) for name in (args.case or CASES)]
    print(_table(rows))
    out = args.out or HERE / "results" / ("memory_quick.json" if args.quick else "memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        json.dump({"machine": machine(), "results": rows}, f, indent=2)
    os.replace(f.name, out)
    return 0 if all(r["within_budget"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
