"""The TSM Figs. 3-4 reproduction (quick mode by default; the full run is marked slow)."""
import argparse

import numpy as np
import pytest
import xarray as xr
from scipy import integrate

import scoremc as smc
from scoremc.experiments import tsm_weightings as tw
from scoremc.weighting import WEIGHTINGS, normalizing_constant

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("tsm-weightings")
    paths = tw.run(out, quick=True, seed=0, progress=False)
    with xr.open_dataset(paths["weightings"], engine="netcdf4") as w, \
            xr.open_dataset(paths["losses"], engine="netcdf4") as l:
        yield paths, w.load(), l.load()


def test_outputs_are_written(quick):
    paths, _, _ = quick
    for key in ("weightings_png", "losses_png"):
        assert paths[key].read_bytes()[:8] == PNG
    text = paths["summary"].read_text()
    assert "FLAG-T7" in text and "FLAG-T8" in text and "tsm-hard-different-variance" in text
    assert not list(paths["summary"].parent.glob("*.tmp"))  # atomic writes leave no temporaries


def test_weightings_are_normalised(quick):
    _, w, _ = quick
    assert list(w.weighting.values) == list(WEIGHTINGS)
    assert w.t.min() == w.t_min and abs(w.t.max() - (1 - w.t_min)) < 1e-15
    proc = smc.Cosine()
    for name in w.weighting.values:
        np.testing.assert_allclose(w.normalizer.sel(weighting=name),
                                   normalizing_constant(WEIGHTINGS[name], proc, w.t_min, 1 - w.t_min), rtol=1e-12)
        # trapezoid on the plotting grid (graded towards both ends) integrates to 1 within its own error
        np.testing.assert_allclose(integrate.trapezoid(w.weight.sel(weighting=name), w.t), 1.0, rtol=1e-2)


def test_loss_estimates_have_their_exact_means(quick):
    _, _, l = quick
    assert l.loss_estimate.dims == ("target", "loss", "weighting", "repeat")
    assert l.loss_estimate.shape == (4, 4, len(WEIGHTINGS), 200)
    assert np.isfinite(l.loss_estimate).all() and (l.loss_estimate >= 0).all()
    # kappa-mixture on the unit Gaussian: the integrand is the score itself (TSM App. C), loss 0 up to round-off
    assert float(l.loss_estimate.sel(target="tsm-unit-gaussian", loss="kappa").max()) < 1e-20
    # light-tailed combinations: mean of 200 estimates within 5 standard errors of the exact mean
    for target, loss, weighting in [(t, "dsm", "song") for t in l.target.values] + [
            ("tsm-unit-gaussian", "dsm", "dsm-optimal"), ("tsm-unit-gaussian", "tsm", "tsm-optimal")]:
        est = l.loss_estimate.sel(target=target, loss=loss, weighting=weighting).values
        exact = float(l.mean_exact.sel(target=target, loss=loss, weighting=weighting))
        assert abs(est.mean() - exact) <= 5 * est.std() / np.sqrt(len(est)), (target, loss, weighting)
    # quick grid: 64 geometric cells, midpoint bias a few per cent of the continuous mean
    keep = np.abs(l.mean_continuous) > 1e-10
    assert float((np.abs(l.mean_exact - l.mean_continuous) / np.abs(l.mean_continuous)).where(keep).max()) < 0.05


def test_expected_loss_closed_forms_for_the_unit_gaussian(quick):
    # TSM App. C with sigma_tar = 1 and alpha^2 + sigma^2 = 1: DSI variance alpha^2/sigma^2, TSI sigma^2/alpha^2
    _, _, l = quick
    t = l.t.values
    a, s = np.cos(np.pi * t / 2), np.sin(np.pi * t / 2)
    V = l.expected_loss.sel(target="tsm-unit-gaussian")
    np.testing.assert_allclose(V.sel(loss="dsm"), a**2 / s**2, rtol=1e-9)
    np.testing.assert_allclose(V.sel(loss="tsm"), s**2 / a**2, rtol=1e-9)
    assert np.abs(V.sel(loss="kappa")).max() < 1e-9 * (1 / s**2).max()
    np.testing.assert_allclose(l.cell_probability.sum(), 1.0, rtol=1e-12)


def test_command_line_registration(monkeypatch, tmp_path):
    parser = argparse.ArgumentParser(prog="scoremc")
    sub = parser.add_subparsers(dest="command", required=True)
    tw.add_parser(sub)
    args = parser.parse_args(["tsm-weightings", "--quick", "--out", str(tmp_path), "--seed", "3"])
    assert args.quick and args.seed == 3 and args.out == str(tmp_path)
    calls = []
    monkeypatch.setattr(tw, "run", lambda out, **kw: calls.append((out, kw)) or {"summary": tmp_path / "summary.md"})
    assert args.run(args) == 0
    assert calls == [(str(tmp_path), {"quick": True, "seed": 3})]
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["tsm-weightings", "--help"])
    assert exc.value.code == 0


@pytest.mark.slow
def test_full_mode(tmp_path):
    # the paper's sizes: 10,000 estimates x 100 samples; grid bias below 1e-4 of the continuous mean
    paths = tw.run(tmp_path, quick=False, seed=1, progress=False)
    with xr.open_dataset(paths["losses"], engine="netcdf4") as l:
        assert l.loss_estimate.shape[-1] == 10_000
        keep = np.abs(l.mean_continuous) > 1e-10
        assert float((np.abs(l.mean_exact - l.mean_continuous) / np.abs(l.mean_continuous)).where(keep).max()) < 1e-4
        for target in l.target.values:
            est = l.loss_estimate.sel(target=target, loss="dsm", weighting="song").values
            exact = float(l.mean_exact.sel(target=target, loss="dsm", weighting="song"))
            assert abs(est.mean() - exact) <= 5 * est.std() / np.sqrt(len(est))
