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


def test_fp_objective_and_stf_reference_options(tmp_path, capsys):
    assert main(["train", "--objective", "fp", *TINY, "--out", str(tmp_path / "fp")]) == 0
    run = json.loads((tmp_path / "fp" / "config.json").read_text())
    assert run["objective"].startswith("FPRegularized(alpha=0.0015, beta=0.0, m=1")
    assert run["settings"]["weighting"] is None  # the objective carries its own g^2 weighting
    with pytest.raises(SystemExit, match="its own weighting"):
        main(["train", "--objective", "fp", "--weighting", "song", *TINY, "--out", str(tmp_path / "bad")])
    assert main(["train", "--objective", "stf", "--n-ref", "32", "--stf-reference", "algorithm1", *TINY,
                 "--out", str(tmp_path / "stf")]) == 0
    assert json.loads((tmp_path / "stf" / "config.json").read_text())["settings"]["stf_reference"] == "algorithm1"


def test_ship_makes_a_model_folder_that_loads_and_rechecks(tmp_path, capsys):
    from scoremc.nn import load
    from scoremc.nn.card import EVAL_TIMES, read_card, recheck

    run, out = tmp_path / "run", tmp_path / "models" / "tiny-dsm"
    assert main(["train", "--target", "fp-gmm", *TINY, "--out", str(run)]) == 0
    assert main(["ship", str(run), str(out), "--n", "128", "--samples", "128", "--n-likelihood", "8"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "card.md", "card.png", "model.json",
                                                     "model.safetensors", "recipe.sh"]
    card = read_card(out)
    assert card["name"] == "tiny-dsm" and card["target"] == "fp-gmm" and card["process"] == "ve"
    assert len(card["rel_score_error"]) == len(EVAL_TIMES) and {"mmd", "kl"} <= set(card["end_to_end"])
    recipe = (out / "recipe.sh").read_text()
    assert "scoremc train --target fp-gmm" in recipe and f"scoremc ship {run} {out}" in recipe
    # the shipped weights are the run's EMA weights; the folder loads; the card re-measures to round-off
    x, t = torch.randn(16, 2), torch.full((16,), 0.5)
    assert torch.equal(load(out)(x, t), load(run)(x, t))
    card, measured = recheck(out, end_to_end=False)
    for key, value in card["rel_score_error"].items():
        assert measured["rel_score_error"][key] == pytest.approx(value, rel=1e-6)
    # scoremc evaluate opens a shipped folder too (target and process from model.json)
    assert main(["evaluate", str(out), "--no-likelihood", "--n", "64", "--samples", "64",
                 "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "evaluation.nc").exists()
