"""``scoremc train``: a tiny run writes the whole run folder, resumes when rerun, and the CLI imports torch only
inside the command."""
import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from scoremc.cli import main  # noqa: E402

TINY = ["--steps", "6", "--batch-size", "16", "--eval-every", "3", "--checkpoint-every", "3", "--seed", "1",
        "--eval-points", "64"]


@pytest.mark.parametrize("objective", ["dsm", "stf"])
def test_train_writes_the_run_folder(objective, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--target", "fp-gmm", "--objective", objective, "--n-ref", "8", "--process", "ve", *TINY,
            "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "rel. error" in text and "eval.png" in text
    latest = json.loads((out / "checkpoint.json").read_text())
    assert latest == {"step": 6, "folder": "step-00000006"}
    assert sorted(p.name for p in (out / latest["folder"]).iterdir()) == ["ema.safetensors", "model.safetensors",
                                                                          "state.pt"]
    run = json.loads((out / "config.json").read_text())
    assert run["meta"]["target"] == "fp-gmm" and run["settings"]["steps"] == 6
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import xarray as xr

    with xr.open_dataset(out / "eval.nc") as ds:
        assert list(ds["step"].values) == [3, 6] and ds.sizes["t"] == 12
    # rerunning with more steps resumes from step 6
    assert main([*argv[:argv.index("--steps")], "--steps", "9", *TINY[2:], "--out", str(out)]) == 0
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 9


def test_train_precond_none_and_tsm_weighting(tmp_path):
    assert main(["train", "--objective", "tsm", "--precond", "none", "--process", "vp", "--times", "importance",
                 *TINY, "--out", str(tmp_path)]) == 0
    run = json.loads((tmp_path / "config.json").read_text())
    assert run["settings"]["weighting"].startswith("TSMOptimal") and run["model_spec"]["precond"] is None


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0 and "--n-ref" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--objective", "nope", "--out", "x"])
    with pytest.raises(SystemExit):
        main(["train", "--steps", "5"])  # --out is required


def test_cli_imports_torch_only_in_the_train_command():
    code = ("import sys; from scoremc.cli import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, 'scoremc.cli imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
