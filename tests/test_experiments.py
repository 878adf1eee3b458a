"""Reproductions at small scale (quick mode): files written and the papers' qualitative claims."""
import numpy as np
import pytest
import xarray as xr

from scoremc.cli import main
from scoremc.experiments import stf_variance, tsm_variance


@pytest.fixture(scope="module")
def stf_dsm(tmp_path_factory):
    out = tmp_path_factory.mktemp("stf-dsm")
    return out, stf_variance.dsm_variance_and_divergence(out, mode="quick", progress=False)


def test_stf_fig2b_files_and_claims(stf_dsm):
    out, ds = stf_dsm
    for name in ("stf_dsm.nc", "stf_dsm.png", "stf_dsm_sigma2.png", "stf_dsm.md", "stf_dsm_normalised.png"):
        assert (out / name).stat().st_size > 0
    with xr.open_dataset(out / "stf_dsm.nc") as back:
        np.testing.assert_array_equal(back["V"].values, ds["V"].values)
    t = ds["t"].values
    for target in ("two-gaussians", "digits"):
        sel = ds.sel(target=target, estimator="dsi")
        weighted = sel["V_weighted"].sel(weighting="sigma2").values
        assert 0 < int(np.argmax(weighted)) < len(t) - 1, "sigma^2 V_DSM peaks in Phase 2"
        assert sel["log_D"].values[0] > sel["log_D"].values[-1] + 3, "D(t) falls from t~0 to t=1"
    # FLAG-S3: the two-Gaussians' unweighted V_DSM is largest at the smallest t, not in Phase 2
    v = ds["V"].sel(target="two-gaussians", estimator="dsi").values
    assert int(np.argmax(v)) == 0
    # a finite data set has V_DSM -> 0 as t -> 0 (the posterior sits on one point)
    assert ds["V"].sel(target="digits", estimator="dsi").values[0] < 1e-6


def test_stf_fig3cd_variance_falls_with_n_ref(tmp_path):
    ds = stf_variance.stf_variance_by_reference_size(tmp_path, mode="quick", n_refs=(2, 16), progress=False)
    assert (tmp_path / "stf_nref_ratio.png").exists()
    late = ds["t"].values >= 0.8
    for target in ds["target"].values:
        v = ds["V"].sel(target=target)
        assert np.all(v.sel(estimator="stf(16)").values[late] < v.sel(estimator="stf(2)").values[late])
        assert np.all(v.sel(estimator="stf(2)").values[late] < v.sel(estimator="dsi").values[late])


def test_tsm_fig1_2_claims(tmp_path):
    ds = tsm_variance.tsm_estimator_variance(tmp_path, mode="quick", progress=False)
    assert (tmp_path / "tsm_kappa.png").exists() and (tmp_path / "tsm_variance.png").exists()
    with xr.open_dataset(tmp_path / "tsm_kappa.nc") as fig1:
        np.testing.assert_allclose(fig1["kappa"].sel(target="tsm-unit-gaussian"),
                                   fig1["kappa_bar"].sel(target="tsm-unit-gaussian"))
    v = ds["V"]
    unit = v.sel(target="tsm-unit-gaussian")
    # unit Gaussian: DSI blows up at t -> 0, TSI at t -> 1, kappa mixtures have zero variance
    assert unit.sel(estimator="dsi").values[0] > 10 * unit.sel(estimator="dsi").values[-1]
    assert unit.sel(estimator="tsi").values[-1] > 10 * unit.sel(estimator="tsi").values[0]
    assert np.all(unit.sel(estimator="kappa").values < 1e-12)
    for target in ds["target"].values:
        sel = v.sel(target=target)
        best = np.minimum(sel.sel(estimator="dsi").values, sel.sel(estimator="tsi").values)
        assert np.all(sel.sel(estimator="kappa_bar").values <= 4.0 * best), target


def test_report_quick_from_the_command_line(tmp_path, capsys):
    assert main(["report", "--quick", "--out", str(tmp_path)]) == 0
    index = (tmp_path / "index.md").read_text()
    assert "Claims of the seed papers" in index
    for sub in ("stf-dsm", "stf-nref", "tsm-variance"):
        assert any((tmp_path / sub).glob("*.nc"))


def test_variance_command(tmp_path, capsys):
    assert main(["variance", "--target", "tsm-easy", "--process", "cosine", "--estimators", "dsi,kappa_bar,stf",
                 "--n-ref", "4", "--n-times", "3", "--n-outer", "20", "--n-inner", "4", "--out", str(tmp_path)]) == 0
    with xr.open_dataset(tmp_path / "variance.nc") as ds:
        assert list(ds["estimator"].values) == ["dsi", "kappa_bar", "stf(4)"]
    for name in ("variance.png", "variance_sigma2.png", "variance_g2.png", "variance.md"):
        assert (tmp_path / name).exists()
