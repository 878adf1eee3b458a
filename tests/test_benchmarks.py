"""CI-sized smoke run of every benchmark in benchmarks/ (issue 12). Never asserts a timing: only that each
case runs, its contenders agree, and the results files and tables come out."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

torch = pytest.importorskip("torch")


def test_side_by_side_quick(tmp_path):
    import bench_side_by_side

    out = tmp_path / "sbs.json"
    res = bench_side_by_side.main(["--quick", "--repeats", "1", "--out", str(out)])
    names = {c["case"] for c in res["cases"]}
    assert {"gmm-score", "empirical-score", "train-step-stf", "train-step-fp"} <= names
    assert any(n.startswith("stf-target-n") for n in names)
    for c in res["cases"]:
        assert all(np.isfinite(v["median_s"]) for v in c["timings"].values())
        for k, err in c.get("max_rel_diff", {}).items():  # the contenders compute the same thing
            assert err < (1e-5 if ("f32" in k or c["case"].startswith("stf")) else 1e-9), (c["case"], k, err)
    assert res["stf_memory"]["rows"] and json.loads(out.read_text())["machine"]["cpu_count"]


def test_variance_quick(tmp_path):
    import bench_variance
    import xarray as xr

    res = bench_variance.main(["--quick", "--outdir", str(tmp_path)])
    ds = xr.open_dataset(tmp_path / "variance_map_quick.nc")
    assert set(ds.process.values) == {"VE", "VP", "SubVP", "Cosine", "EDM"}
    assert {"dsi", "tsi", "optimal", "stf(2)", "stf(16)"} <= set(ds.estimator.values)
    assert any(e.startswith("local_stf") for e in ds.estimator.values)
    assert (tmp_path / "winners_quick.png").stat().st_size > 0
    assert "| process | target |" in res["winners_markdown"]
    assert {r["scheduler"] for r in res["cost"]["dask"]["rows"]} >= {"synchronous", "threads"}
    ds.close()


def test_readme_blocks_fill():
    import run_all

    text = (BENCH / "README.md").read_text()
    for name in ("machine", "side_by_side", "winners", "stf_large", "cost"):
        assert run_all.fill(text, name, "X").count(f"<!-- BEGIN {name} -->\nX\n<!-- END {name} -->") == 1


def test_pytest_benchmark_harness_runs():
    """The pytest-benchmark harness over the same cases, at CI size, each benchmark called once
    (``--benchmark-disable``: no timing is taken, let alone asserted)."""
    pytest.importorskip("pytest_benchmark")
    r = subprocess.run([sys.executable, "-m", "pytest", str(BENCH / "test_harness.py"), "-q", "--benchmark-disable",
                        "-p", "no:cacheprovider"], capture_output=True, text=True,
                       env={**os.environ, "BENCH_SIZE": "quick"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "15 passed" in r.stdout
