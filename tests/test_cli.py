import json

import pytest

from scoremc.cli import info_rows, main


def test_info_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "info.json"
    assert main(["info", "--process", "cosine", "--target", "fp-gmm", "--n-points", "32", "--n-times", "3",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fp-gmm under Cosine()" in text and "FPE resid." in text
    rows = json.loads(out.read_text())["cosine"]
    assert len(rows) == 3
    # the exact layer is self-consistent at every noise level of the table
    assert all(r["fpe_rel_residual"] < 1e-8 and r["tweedie_gap"] < 1e-10 for r in rows)


def test_effective_components_grow_with_noise():
    rows = info_rows("two-gaussians", "ve", n_points=64, n_times=4, seed=0)
    eff = [r["effective_components"] for r in rows]
    assert eff[0] == pytest.approx(1.0, abs=1e-6) and eff[-1] == pytest.approx(2.0, abs=1e-2)


@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and "usage" in capsys.readouterr().out


def test_bad_arguments_exit_with_usage_error(capsys):
    assert main(["info", "--n-points", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["info", "--process", "nope"])
