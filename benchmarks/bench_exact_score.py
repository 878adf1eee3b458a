"""Benchmark: speed of scoremc's exact score (issue "exact score speed").

Compares, in one run and on the same inputs,

* ``full``: a full-covariance Gaussian mixture (default N=1e5 points, K=16 components, d=64,
  random well-conditioned covariances, fixed seed): ``smc.score`` / ``smc.logpdf`` (fast path)
  against a straightforward SciPy baseline -- per component
  ``scipy.stats.multivariate_normal(mean, cov).logpdf(x)``, ``scipy.special.logsumexp`` for the
  responsibilities, and ``scipy.linalg.cho_solve`` for the component scores Sigma_k^{-1}(mu_k - x),
  giving sum_k r_k Sigma_k^{-1}(mu_k - x);
* ``empirical``: an ``smc.Empirical`` of K=4096 points (d=64, and d=3072 with smaller N) noised
  by ``smc.marginal(emp, smc.VE(), t)`` (an isotropic mixture: the axis-aligned BLAS + Numba
  path), against ``scipy.spatial.distance.cdist(..., "sqeuclidean")`` + ``logsumexp`` / softmax
  + ``softmax @ points``.

Each timing is one warm-up call (reported separately as ``first_call_s``; it includes Numba
JIT compilation or cache loading), then ``--repeats`` timed calls, alternating scoremc and the
baseline so that a change of machine load hits both alike; medians are reported (all times and
minima are in the JSON, with the load average). Both results are checked to agree (max relative
error over rows, asserted < 1e-8).

Usage::

    python benchmarks/bench_exact_score.py            # full size, a few minutes on 2 cores
    python benchmarks/bench_exact_score.py --quick    # CI-sized, a few seconds
    python benchmarks/bench_exact_score.py --out results.json

Results go to ``benchmarks/results/exact_score.json`` (``exact_score_quick.json`` with
``--quick``, so a CI run never overwrites the recorded full-size numbers), written atomically,
and a Markdown table is printed.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.linalg
import scipy.special
import scipy.stats
from scipy.spatial.distance import cdist

import scoremc as smc

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "exact_score.json"
DEFAULT_OUT_QUICK = HERE / "results" / "exact_score_quick.json"
TOL = 1e-8
SEED = 20240601

#: (N, K, d) of each case; the Empirical cases are noised to VE time ``T_EMP``
SIZES = {
    "full": {"gmm": (100_000, 16, 64), "emp64": (10_000, 4096, 64), "emp3072": (1_000, 4096, 3072)},
    "quick": {"gmm": (2_000, 16, 64), "emp64": (200, 4096, 64), "emp3072": (32, 512, 3072)},
}
#: VE time for the Empirical cases: sigma(t) = 0.01 * 5000**t = 1.66 at t = 0.6
T_EMP = 0.6

FLOPS_DOC = {
    "gmm_score": "2*N*K*d^2 (one GEMM (x - m_k) P_k per component) [+ 6*N*K*d elementwise: x - m_k, "
                 "row dot, running rescale and axpy of the accumulator]",
    "gmm_logpdf": "2*N*K*d^2 (GEMM) [+ 3*N*K*d elementwise: x - m_k, row dot]",
    "emp_score": "4*N*K*d (two GEMMs: x @ means^T and (r_k p_k) @ means) [+ O(N*K) grid work]",
    "emp_logpdf": "2*N*K*d (one GEMM x @ means^T) [+ O(N*K) grid work]",
}


# ----------------------------------------------------------------------------- problem set-up

def make_gmm(N: int, K: int, d: int, seed: int = SEED):
    """Full-covariance mixture with eigenvalues in [0.5, 2] (condition number <= 4) and x ~ gm."""
    rng = np.random.default_rng(seed)
    Q, R = np.linalg.qr(rng.standard_normal((K, d, d)))
    Q = Q * np.sign(np.diagonal(R, axis1=1, axis2=2))[:, None, :]  # Haar-distributed rotations
    lam = rng.uniform(0.5, 2.0, size=(K, d))
    covs = np.einsum("kij,kj,klj->kil", Q, lam, Q)
    covs = 0.5 * (covs + covs.transpose(0, 2, 1))
    means = rng.normal(scale=0.5, size=(K, d))  # overlapping components: mixed responsibilities
    weights = rng.dirichlet(np.full(K, 5.0))
    gm = smc.GaussianMixture(weights, means, covs)
    x = smc.sample(gm, N, rng)
    return gm, x


def make_empirical(N: int, K: int, d: int, t: float = T_EMP, seed: int = SEED):
    """Standard-normal data set of K points noised by VE to time t, and N draws of x_t."""
    rng = np.random.default_rng(seed + d)
    emp = smc.Empirical(rng.standard_normal((K, d)))
    proc = smc.VE()
    mt = smc.marginal(emp, proc, t)
    x = smc.sample(mt, N, rng)
    alpha, sigma = float(proc.alpha(t)), float(proc.sigma(t))
    return emp, mt, x, alpha, sigma


# ----------------------------------------------------------------------------- baselines

def baseline_gmm_log_terms(gm, x):
    """(N, K) log pi_k + log N(x; mu_k, Sigma_k), one scipy.stats call per component."""
    L = np.empty((len(x), gm.n_components))
    for k in range(gm.n_components):
        L[:, k] = np.log(gm.weights[k]) + scipy.stats.multivariate_normal(gm.means[k], gm.covs[k]).logpdf(x)
    return L


def baseline_gmm_logpdf(gm, x):
    return scipy.special.logsumexp(baseline_gmm_log_terms(gm, x), axis=1)


def baseline_gmm_score(gm, x):
    """sum_k r_k(x) Sigma_k^{-1} (mu_k - x) with scipy.stats + logsumexp + cho_solve."""
    L = baseline_gmm_log_terms(gm, x)
    r = np.exp(L - scipy.special.logsumexp(L, axis=1, keepdims=True))
    out = np.zeros_like(x)
    for k in range(gm.n_components):
        factor = scipy.linalg.cho_factor(gm.covs[k])
        out += r[:, k:k + 1] * scipy.linalg.cho_solve(factor, (gm.means[k] - x).T).T
    return out


def baseline_emp_logits(points, alpha, sigma, x):
    return cdist(x, alpha * points, "sqeuclidean") * (-0.5 / sigma ** 2)


def baseline_emp_score(points, alpha, sigma, x):
    """(softmax_k(-|x - alpha p_k|^2 / 2 sigma^2) @ alpha P - x) / sigma^2."""
    r = scipy.special.softmax(baseline_emp_logits(points, alpha, sigma, x), axis=1)
    return (r @ (alpha * points) - x) / sigma ** 2


def baseline_emp_logpdf(points, alpha, sigma, x):
    K, d = points.shape
    return (scipy.special.logsumexp(baseline_emp_logits(points, alpha, sigma, x), axis=1)
            - np.log(K) - 0.5 * d * np.log(2.0 * np.pi * sigma ** 2))


# ----------------------------------------------------------------------------- timing helpers

def _stats(first, times):
    return {"first_call_s": first, "times_s": times, "median_s": statistics.median(times), "min_s": min(times)}


def time_calls(fn, repeats: int):
    """One warm-up call (timed separately), then ``repeats`` timed calls. Returns (result, stats)."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return result, _stats(first, times)


def time_pair(ours, base, repeats: int):
    """Like :func:`time_calls` for two functions, alternating their timed calls so that a change
    of machine load (a shared machine) hits both alike. Returns (a, b, stats_a, stats_b)."""
    out, first = [], []
    for fn in (ours, base):
        t0 = time.perf_counter()
        out.append(fn())
        first.append(time.perf_counter() - t0)
    times = ([], [])
    for _ in range(repeats):
        for fn, acc in zip((ours, base), times):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return out[0], out[1], _stats(first[0], times[0]), _stats(first[1], times[1])


def rel_err_rows(a, b):
    """max over rows of ||a - b|| / ||b|| (vectors) or |a - b| / max(1, |b|) (scalars)."""
    if a.ndim == 1:
        return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))
    den = np.linalg.norm(b, axis=1)
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.maximum(den, np.finfo(float).tiny)))


def dgemm_reference(n: int, repeats: int = 3) -> dict:
    """GFLOP/s of one square DGEMM, the machine's practical BLAS peak (for scale)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    _, st = time_calls(lambda: a @ b, repeats)
    return {"n": n, "median_s": st["median_s"], "gflops": 2.0 * n ** 3 / st["median_s"] / 1e9}


#: Numba kernels of the fast path whose cache statistics are reported
KERNELS = ("axis_weights", "full_step", "full_logits")


def numba_cold_compile_s() -> dict | None:
    """First-call time minus second-call time, in a fresh interpreter with an empty Numba cache,
    of a tiny ``smc.score`` on each path: JIT compilation of ``scoremc._kernels.axis_weights``
    (isotropic mixture) and of ``scoremc._kernels.full_step`` (full covariances)."""
    code = textwrap.dedent("""
        import json, time, numpy as np, scoremc as smc
        emp = smc.Empirical(np.random.default_rng(0).standard_normal((8, 3)))
        g = smc.marginal(emp, smc.VE(), 0.5)
        gm = smc.GaussianMixture([0.5, 0.5], np.zeros((2, 3)), np.stack([np.eye(3), 2 * np.eye(3)]))
        x = np.zeros((4, 3)); out = {}
        for name, d in (("axis_weights", g), ("full_step", gm)):
            t = time.perf_counter(); smc.score(d, x); a = time.perf_counter() - t
            t = time.perf_counter(); smc.score(d, x); b = time.perf_counter() - t
            out[name] = a - b
        print(json.dumps(out))
    """)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        try:
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                 timeout=600, check=True)
            return json.loads(out.stdout.strip().splitlines()[-1])
        except (subprocess.SubprocessError, ValueError, IndexError):
            return None


# ----------------------------------------------------------------------------- machine info

def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _openblas_runtime() -> list[dict]:
    """Config, core type and thread count of every OpenBLAS loaded in this process (ctypes)."""
    libs = set()
    try:
        with open("/proc/self/maps") as fh:
            libs = {line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    found = []
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        info = {"library": path}
        for key, stem, restype in (("config", "get_config", ctypes.c_char_p),
                                   ("corename", "get_corename", ctypes.c_char_p),
                                   ("num_threads", "get_num_threads", ctypes.c_int)):
            for prefix in ("openblas_", "scipy_openblas_"):
                for suffix in ("", "64_"):
                    fn = getattr(lib, prefix + stem + suffix, None)
                    if fn is None:
                        continue
                    fn.restype, fn.argtypes = restype, []
                    value = fn()
                    info[key] = value.decode() if isinstance(value, bytes) else value
                    break
                if key in info:
                    break
        found.append(info)
    return found


def _blas_info() -> dict:
    info = {}
    try:
        cfg = np.show_config(mode="dicts")
        info["numpy_build"] = cfg.get("Build Dependencies", {}).get("blas")
        info["numpy_simd"] = cfg.get("SIMD Extensions")
    except Exception as exc:  # pragma: no cover - depends on the numpy version
        info["numpy_build"] = f"unavailable: {exc}"
    try:
        import threadpoolctl
        info["threadpoolctl"] = threadpoolctl.threadpool_info()
    except ImportError:
        info["threadpoolctl"] = None
    info["openblas_runtime"] = _openblas_runtime()
    return info


def machine_info() -> dict:
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel function has run yet
        layer = None
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "numba_num_threads": numba.config.NUMBA_NUM_THREADS,
        "numba_threading_layer": layer,
        "scoremc": smc.__version__,
        "scoremc_git": _git_info(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                      "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")},
        "blas": _blas_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _git_info() -> dict:
    """Commit of the checkout holding scoremc, and which files of scoremc/ differ from it."""
    root = Path(smc.__file__).resolve().parent.parent

    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=30, check=True).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", "scoremc")
    return {"commit": commit,
            "scoremc_changed_files": None if status is None else [ln[3:] for ln in status.splitlines()]}


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# ----------------------------------------------------------------------------- cases

def _case(name, op, shape, extra, ours, base, flops_dominant, flops_total, err, flops_doc):
    N, K, d = shape
    return {
        "case": name, "op": op, "N": N, "K": K, "d": d, **extra,
        "scoremc": ours, "baseline": base,
        "ratio_baseline_over_scoremc": base["median_s"] / ours["median_s"],
        "ratio_of_minima": base["min_s"] / ours["min_s"],
        "gflop_dominant": flops_dominant / 1e9, "gflop_total": flops_total / 1e9, "flop_count": flops_doc,
        "gflops_scoremc": flops_dominant / ours["median_s"] / 1e9,
        "gflops_scoremc_total": flops_total / ours["median_s"] / 1e9,
        "gflops_baseline_same_count": flops_dominant / base["median_s"] / 1e9,
        "max_rel_err": err,
    }


def run_gmm(shape, repeats, log):
    N, K, d = shape
    gm, x = make_gmm(N, K, d)
    cases = []
    for op, ours_fn, base_fn, dom, tot, doc in (
            ("score", lambda: smc.score(gm, x), lambda: baseline_gmm_score(gm, x),
             2 * N * K * d * d, 2 * N * K * d * d + 6 * N * K * d, FLOPS_DOC["gmm_score"]),
            ("logpdf", lambda: smc.logpdf(gm, x), lambda: baseline_gmm_logpdf(gm, x),
             2 * N * K * d * d, 2 * N * K * d * d + 3 * N * K * d, FLOPS_DOC["gmm_logpdf"])):
        load = _loadavg()
        a, b, ours, base = time_pair(ours_fn, base_fn, repeats)
        err = rel_err_rows(a, b)
        cases.append(_case("gmm-full", op, shape, {"cov": "full", "loadavg_before": load},
                           ours, base, dom, tot, err, doc))
        log(cases[-1])
    return cases


def run_empirical(name, shape, repeats, log):
    N, K, d = shape
    emp, mt, x, alpha, sigma = make_empirical(N, K, d)
    pts = emp.points
    cases = []
    for op, ours_fn, base_fn, dom, doc in (
            ("score", lambda: smc.score(mt, x), lambda: baseline_emp_score(pts, alpha, sigma, x),
             4 * N * K * d, FLOPS_DOC["emp_score"]),
            ("logpdf", lambda: smc.logpdf(mt, x), lambda: baseline_emp_logpdf(pts, alpha, sigma, x),
             2 * N * K * d, FLOPS_DOC["emp_logpdf"])):
        load = _loadavg()
        a, b, ours, base = time_pair(ours_fn, base_fn, repeats)
        err = rel_err_rows(a, b)
        cases.append(_case(name, op, shape, {"process": "VE", "t": T_EMP, "sigma": sigma, "alpha": alpha,
                                             "loadavg_before": load},
                           ours, base, dom, dom, err, doc))
        log(cases[-1])
    return cases


# ----------------------------------------------------------------------------- output

def markdown_table(results: dict) -> str:
    rows = ["| case | op | N | K | d | scoremc median (s) | first call (s) | baseline median (s) "
            "| baseline / scoremc | scoremc GFLOP/s | max rel err |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in results["cases"]:
        rows.append(f"| {c['case']} | {c['op']} | {c['N']} | {c['K']} | {c['d']} "
                    f"| {c['scoremc']['median_s']:.4g} | {c['scoremc']['first_call_s']:.4g} "
                    f"| {c['baseline']['median_s']:.4g} | {c['ratio_baseline_over_scoremc']:.2f} "
                    f"| {c['gflops_scoremc']:.1f} | {c['max_rel_err']:.1e} |")
    return "\n".join(rows)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized problems (a few seconds)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 5, 3 quick)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"JSON output (default {DEFAULT_OUT.relative_to(HERE.parent)}, "
                         f"or {DEFAULT_OUT_QUICK.relative_to(HERE.parent)} with --quick)")
    ap.add_argument("--compile-probe", action=argparse.BooleanOptionalAction, default=None,
                    help="measure cold Numba compilation in a subprocess with an empty cache "
                         "(default: on, off with --quick)")
    ap.add_argument("--note", default=None, help="free text stored in the JSON (e.g. other load on the machine)")
    args = ap.parse_args(argv)
    size = "quick" if args.quick else "full"
    repeats = args.repeats or (3 if args.quick else 5)
    out = args.out or (DEFAULT_OUT_QUICK if args.quick else DEFAULT_OUT)
    probe = (not args.quick) if args.compile_probe is None else args.compile_probe

    def log(c):
        print(f"  {c['case']:>12} {c['op']:<6}: scoremc {c['scoremc']['median_s']:.4g} s "
              f"(first {c['scoremc']['first_call_s']:.4g} s), baseline {c['baseline']['median_s']:.4g} s, "
              f"ratio {c['ratio_baseline_over_scoremc']:.2f}, {c['gflops_scoremc']:.1f} GFLOP/s, "
              f"max rel err {c['max_rel_err']:.2e}", flush=True)

    print(f"exact score benchmark ({size}, {repeats} repeats after one warm-up call)", flush=True)
    t_start = time.perf_counter()
    results = {"benchmark": "exact_score", "size": size, "repeats": repeats, "seed": SEED,
               "tolerance": TOL, "note": args.note, "loadavg_start": _loadavg(), "cases": []}
    sizes = SIZES[size]
    # the axis-aligned cases first: their first call is where the Numba kernel is compiled or loaded
    results["cases"] += run_empirical("empirical-d64", sizes["emp64"], repeats, log)
    results["cases"] += run_empirical("empirical-d3072", sizes["emp3072"], repeats, log)
    results["cases"] += run_gmm(sizes["gmm"], repeats, log)
    from scoremc import _kernels
    stats = {name: getattr(_kernels, name).stats for name in KERNELS}
    hits = sum(sum(st.cache_hits.values()) for st in stats.values())
    results["numba"] = {
        "kernels": [f"scoremc._kernels.{name}" for name in KERNELS],
        "cache_hits": {name: {str(k): v for k, v in st.cache_hits.items()} for name, st in stats.items()},
        "cache_misses": {name: {str(k): v for k, v in st.cache_misses.items()} for name, st in stats.items()},
        "first_call_includes": "cache load" if hits else "JIT compilation",
        "cold_compile_s": numba_cold_compile_s() if probe else None,
    }
    results["dgemm_reference"] = dgemm_reference(512 if args.quick else 2048)
    results["flop_counts"] = FLOPS_DOC
    results["loadavg_end"] = _loadavg()
    results["wall_s"] = time.perf_counter() - t_start
    results["machine"] = machine_info()

    print()
    print(markdown_table(results))
    print()
    print("GFLOP/s count the dominant flops: " + "; ".join(f"{k}: {v}" for k, v in FLOPS_DOC.items()))
    cold = results["numba"]["cold_compile_s"]
    print(f"reference square DGEMM n={results['dgemm_reference']['n']}: "
          f"{results['dgemm_reference']['gflops']:.1f} GFLOP/s; Numba kernel first call: "
          f"{results['numba']['first_call_includes']}, cold compile "
          f"{'not measured' if cold is None else ', '.join(f'{k} {v:.2f} s' for k, v in cold.items())}; "
          f"loadavg start {results['loadavg_start']}, end {results['loadavg_end']}")
    bad = [f"{c['case']} {c['op']}: {c['max_rel_err']:.3g}" for c in results["cases"] if not c["max_rel_err"] < TOL]
    assert not bad, f"scoremc and the baseline disagree (max rel err >= {TOL}): {bad}"
    write_json_atomic(out, results)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
