"""reference/ERRATA.md cites the tests that show each correction: every cited test exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ERRATA = (ROOT / "reference" / "ERRATA.md").read_text()


def _cited():
    """(file, test) pairs: `tests/x.py::name` sets the file; a following `::name` reuses it."""
    current, out = None, []
    for m in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)`|`(tests/[\w/]+\.py)`", ERRATA):
        if m.group(3):
            current = m.group(3)
        else:
            current = m.group(1) or current
            out.append((current, m.group(2)))
    return out


def test_every_cited_test_exists():
    cited = _cited()
    assert len(cited) >= 30
    missing = [(f, name) for f, name in cited
               if f is None or not re.search(rf"^def {name}\(", (ROOT / f).read_text(), flags=re.M)]
    assert not missing, missing


def test_every_cited_file_exists():
    for path in set(re.findall(r"`((?:tests|scoremc|reference)/[\w/.]+\.(?:py|md))", ERRATA)):
        assert (ROOT / path).exists(), path
