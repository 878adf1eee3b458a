"""reference/derive.py (sympy re-derivations of every closed form, independent of scoremc) runs and
reports no failure."""
import subprocess
import sys
from pathlib import Path

import pytest

DERIVE = Path(__file__).resolve().parents[1] / "reference" / "derive.py"


def test_symbolic_derivations_hold():
    pytest.importorskip("sympy")
    run = subprocess.run([sys.executable, str(DERIVE)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [ln for ln in run.stdout.splitlines() if ln.strip().startswith("[")]
    assert len(lines) >= 40 and all(ln.strip().startswith("[ok]") for ln in lines), run.stdout[-3000:]
