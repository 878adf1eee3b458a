"""Peak memory of the reference layer (benchmarks/bench_memory.py): every case at its CI size in the
default run, with a budget between the chunked peak and what an unchunked implementation needs at that
size; the README's full sizes under ``pytest -m slow``."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"
_spec = importlib.util.spec_from_file_location("bench_memory", _PATH)
bench_memory = sys.modules["bench_memory"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_memory)

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                                reason="peak-RSS counters of Linux's /proc needed")


@pytest.mark.parametrize("case", sorted(bench_memory.CASES))
def test_peak_memory_at_ci_size(case):
    r = bench_memory.run_case(case, "quick")
    assert r["within_budget"], r


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(bench_memory.CASES))
def test_peak_memory_at_the_promised_size(case):
    r = bench_memory.run_case(case, "full")
    assert r["within_budget"], r


def test_a_case_over_budget_is_reported(monkeypatch):
    # the verdict is computed: the same case with a budget below its measured peak says no
    case = bench_memory.CASES["sample"]
    tight = bench_memory.Size(case.quick.params, peak_budget=1)
    monkeypatch.setitem(bench_memory.CASES, "sample", bench_memory.Case(case.setup, case.call, case.full, tight))
    assert not bench_memory.run_case("sample", "quick")["within_budget"]
