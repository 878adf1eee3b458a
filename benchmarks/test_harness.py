"""The side-by-side cases of ``cases.py`` under pytest-benchmark: one benchmark group per case, one test per
contender, so that ``pytest benchmarks/test_harness.py --benchmark-group-by=group`` prints each case's
contenders together with the harness's statistics, ``--benchmark-autosave`` / ``--benchmark-compare`` track
them across commits, and ``--benchmark-json`` exports everything.

    pytest benchmarks/test_harness.py -p no:randomly                 # full sizes (minutes)
    BENCH_SIZE=quick pytest benchmarks/test_harness.py                # CI sizes
    pytest benchmarks/test_harness.py -k gmm --benchmark-min-rounds=5

The recorded numbers of the README come from ``bench_side_by_side.py`` instead, which alternates the
contenders call by call (pytest-benchmark runs each test's rounds back to back, so on a shared machine a
change of load between two tests lands on one contender only). Not collected by the default test run
(``testpaths = ["tests"]``); tests/test_benchmarks.py smoke-runs the same cases.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")
pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases  # noqa: E402

SIZE = os.environ.get("BENCH_SIZE", "full")
_BUILT: dict = {}


def _case(builder_name, index=0):
    key = (builder_name, index)
    if key not in _BUILT:
        built = getattr(cases, builder_name)(SIZE)
        for i, c in enumerate(built if isinstance(built, list) else [built]):
            _BUILT[(builder_name, i)] = c
    return _BUILT[key]


def _params():
    out = []
    specs = [("gmm_case", 0, ("scoremc", "torch-f64", "torch-f32", "scipy")),
             ("empirical_case", 0, ("scoremc", "torch-f64", "torch-f32", "gemm-bound-f64"))]
    specs += [("stf_cases", i, ("scoremc", "broadcast")) for i in range(len(cases.SIZES[SIZE]["stf"]["ns"]))]
    n_ref = cases.SIZES[SIZE]["train"]["n_ref"]
    specs += [("train_cases", 0, ("DSM", f"STF(n_ref={n_ref})", "STF target alone")),
              ("train_cases", 1, ("DSM", "FP-regularised"))]
    for builder, i, names in specs:
        out += [pytest.param(builder, i, name, id=f"{builder}[{i}]-{name}") for name in names]
    return out


@pytest.mark.parametrize("builder, index, contender", _params())
def test_case(benchmark, builder, index, contender):
    case = _case(builder, index)
    benchmark.group = case.name
    benchmark.extra_info.update(case.params)
    benchmark.pedantic(case.contenders[contender], rounds=3, warmup_rounds=1, iterations=1)
