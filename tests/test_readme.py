"""Every Python block of README.md runs as written, each in a fresh namespace (as a user would paste it)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(code, tmp_path, monkeypatch):
    if "import torch" in code:
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(README.parent / "models")  # blocks run from the repository root, as the README says
    exec(compile(code, "README.md block", "exec"), {"__name__": "readme"})
