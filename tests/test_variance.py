"""Variance of the identities: closed forms (TSM App. C, FLAG-T1), exact vs nested Monte Carlo,
STF's 1/(n_ref - 1) law, the f-divergence of Theorem 2, and the sweep Dataset."""
import numpy as np
import pytest
from scipy import stats

import scoremc as smc
from scoremc import _blocks, builtin
from scoremc.identities import DSI, STF, TSI, Kappa, KappaBar, Mix, OptimalMix
from scoremc import variance
from scoremc._random import RowStream
from scoremc.variance_slice import f_stf, log_f_stf, variance_at


def _gaussian(sigma_tar, d):
    return smc.GaussianMixture([1.0], np.zeros((1, d)), [sigma_tar**2])


@pytest.mark.parametrize("proc", [smc.Cosine(), smc.VP(), smc.VE(), smc.EDM()], ids=lambda p: type(p).__name__)
def test_gaussian_target_matches_tsm_appendix_c(proc):
    # X ~ N(0, s_tar^2 I), Y = a X + s W, S = a^2 s_tar^2 + s^2 (TSM App. C):
    # Var_DSI = d a^2 (s_tar/s)^2 / S; Var_TSI = d s^2 / (a^2 s_tar^2 S) (corrected, FLAG-T1);
    # kappa = s^2 / S gives zero variance
    d, sigma_tar = 3, 0.7
    gm = _gaussian(sigma_tar, d)
    ts = np.array([0.1, 0.4, 0.8]) * (10.0 if isinstance(proc, smc.EDM) else 1.0)
    ds = variance([DSI(), TSI(), Mix(Kappa()), OptimalMix()], gm, proc, ts, n_outer=8, n_inner=4, progress=False)
    a, s = np.asarray(proc.alpha(ts)), np.asarray(proc.sigma(ts))
    S = a**2 * sigma_tar**2 + s**2
    v = ds["V"].isel(target=0)
    np.testing.assert_allclose(v.sel(estimator="dsi"), d * a**2 * (sigma_tar / s) ** 2 / S, rtol=1e-12)
    np.testing.assert_allclose(v.sel(estimator="tsi"), d * s**2 / (a**2 * sigma_tar**2 * S), rtol=1e-12)
    np.testing.assert_allclose(v.sel(estimator="kappa"), 0.0, atol=1e-12 * v.sel(estimator="dsi").values.max())
    np.testing.assert_allclose(v.sel(estimator="optimal"), 0.0, atol=1e-12 * v.sel(estimator="dsi").values.max())
    # the crossover of FLAG-T1: DSI <= TSI exactly when sigma^2 >= alpha^2 sigma_tar^2
    assert np.array_equal(v.sel(estimator="dsi").values <= v.sel(estimator="tsi").values, s**2 >= a**2 * sigma_tar**2)
    assert (ds["method"].values == "exact").all()


def test_two_gaussians_v_dsm_matches_the_corrected_stf_formula():
    # STF App. C corrected (FLAG-S2): V_DSM(x_t) = d s^2/(sigma^2 S) + 4 r (1 - r) |mu|^2 / S^2
    d, mu, spread = 4, 0.3, 0.2
    gm = builtin.two_gaussians(d=d, mu=mu, spread=spread)
    proc, t = smc.VE(), 0.5
    sig2 = proc.sigma(t) ** 2
    S = spread**2 + sig2
    rng = np.random.default_rng(4)
    out = variance_at([DSI()], gm, proc, t, n_outer=4000, n_inner=4, rng=rng, f_divergence=False)
    # redraw the same x_t (variance_at draws from a RowStream keyed by one draw of its rng)
    stream = RowStream.from_generator(np.random.default_rng(4), np.arange(4000))
    _, xt = smc.noised_sample(gm, proc, t, 4000, stream)
    m = np.full(d, mu)
    r = 1 / (1 + np.exp(-2 * xt @ m / S))
    closed = d * spread**2 / (sig2 * S) + 4 * r * (1 - r) * (m @ m) / S**2
    assert out["estimators"]["dsi"]["V"] == pytest.approx(closed.mean(), rel=1e-10)


@pytest.mark.parametrize("dist, proc, t", [
    (builtin.tsm_easy(), smc.Cosine(), 0.3),
    (builtin.ring8(), smc.VP(), 0.2),
    (smc.GaussianMixture([0.4, 0.6], [[1.0, -1.0], [-0.5, 0.5]],
                         [[[0.5, 0.3], [0.3, 0.4]], [[1.0, -0.6], [-0.6, 0.9]]]), smc.VE(), 0.4),
    (smc.Empirical(np.random.default_rng(0).normal(size=(30, 3))), smc.EDM(), 0.8),
], ids=["tsm-easy", "ring8", "full-cov", "empirical"])
def test_exact_variance_equals_nested_monte_carlo(dist, proc, t):
    # same outer points (same seed), exact inner expectation vs nested MC: the paired per-point
    # differences have mean zero; two-sided z-test at the 99% level
    kw = dict(n_outer=400, n_inner=64, f_divergence=False)
    exact = variance_at([DSI()], dist, proc, t, rng=np.random.default_rng(9), exact=True, **kw)["estimators"]["dsi"]
    nested = variance_at([DSI()], dist, proc, t, rng=np.random.default_rng(9), exact=False, **kw)["estimators"]["dsi"]
    assert exact["method"] == "exact" and nested["method"] == "nested"
    z = (nested["V"] - exact["V"]) / np.hypot(nested["V_se"], exact["V_se"])
    assert abs(z) < stats.norm.ppf(0.995), (exact, nested)


def test_stf_variance_falls_like_one_over_n_ref_minus_one_in_the_far_field():
    # Phase 3 (t -> 1 under VE): the posterior is the prior and the kernel weights are flat, so
    # v is the plain average of n_ref iid DSI draws and V_STF = V_DSM / n_ref, which is
    # V_DSM / (n_ref - 1) to leading order in 1/n_ref (STF §5), and below the corrected
    # Theorem-2 leading term E_post[(post/p0)|g - s|^2] / (n_ref - 1) = V_DSM / (n_ref - 1)
    gm = builtin.fp_gmm()
    ds = variance([DSI(), STF(2), STF(5), STF(17)], gm, smc.VE(), [0.95], n_outer=300, n_inner=64, seed=1,
                  progress=False)
    v = ds["V"].isel(target=0, t=0)
    v_dsm = float(v.sel(estimator="dsi"))
    for n in (2, 5, 17):
        v_stf = float(v.sel(estimator=f"stf({n})"))
        assert n * v_stf / v_dsm == pytest.approx(1.0, abs=0.15), n
        lead = float(ds["stf_leading"].isel(target=0, t=0).sel(estimator=f"stf({n})"))
        assert lead == pytest.approx(v_dsm / (n - 1), rel=0.15)
        assert v_stf <= 1.1 * lead


def test_split_half_bias_is_consistent_with_zero_for_every_nested_estimator():
    # every identity here is unbiased (STF too, for every n_ref: reference/ERRATA.md), so the split-half
    # estimate of |E L - s|^2 averages to zero: |bias_sq| <= 4 standard errors (two-sided 6e-5 per entry).
    # Exact (Rao-Blackwellised) estimators draw no integrands: NaN.
    gm = builtin.tsm_hard_same_variance()
    ids = [DSI(), TSI(), Mix(KappaBar()), OptimalMix(), STF(2), STF(32)]
    ds = variance(ids, gm, smc.Cosine(), [0.3, 0.6], n_outer=300, n_inner=64, seed=2, progress=False)
    b, se = ds["bias_sq"].isel(target=0), ds["bias_sq_se"].isel(target=0)
    assert np.isnan(b.sel(estimator="dsi")).all()
    nested = [i.name for i in ids[1:]]
    assert np.all(np.abs(b.sel(estimator=nested)) <= 4 * se.sel(estimator=nested)), b.sel(estimator=nested).values
    # a biased estimator is flagged: the same bias check on draws shifted by a constant
    from scoremc.variance_slice import _split_bias_sq
    draws = np.random.default_rng(0).normal(size=(64, 300, 1))
    shifted = _split_bias_sq(draws + 0.5, np.zeros((300, 1)))
    assert shifted.mean() > 0.2


def test_theorem2_f_is_the_tangent_convex_majorant():
    y = np.array([0.01, 0.5, 1.0, 1.2, 1.5, 3.0, 1e6])
    expect = np.where(y < 1.5, (1 / y - 1) ** 2, 8 * y / 27 - 1 / 3)
    np.testing.assert_allclose(f_stf(y), expect, rtol=1e-12, atol=1e-300)
    # continuous with slope 8/27 at 1.5; finite from log y far outside float range
    assert f_stf(1.5 - 1e-9) == pytest.approx(f_stf(1.5 + 1e-9), abs=1e-8)
    assert np.isfinite(log_f_stf(np.array([-1e4, 1e4]))).all()
    assert log_f_stf(np.array([-1e4]))[0] == pytest.approx(2e4)


def test_divergence_for_a_finite_data_set_is_exact_at_small_noise():
    # posterior on one point of K: D = f(p0/post) = f(1/K) = (K - 1)^2
    emp = smc.Empirical(np.arange(5.0)[:, None] * 10)
    out = variance_at([DSI()], emp, smc.VE(), 0.05, n_outer=50, n_inner=8, rng=np.random.default_rng(0))
    assert out["D"] == pytest.approx(16.0, rel=1e-9)


def test_dataset_layout_and_weightings(tmp_path):
    proc = smc.VP()
    ts = np.array([0.2, 0.6])
    ds = variance([DSI(), STF(4)], {"a": builtin.fp_gmm(), "b": builtin.ring8()}, proc, ts, n_outer=20, n_inner=8,
                  n_samples=50, progress=False)
    assert ds["V"].dims == ("target", "estimator", "t")
    assert list(ds["estimator"].values) == ["dsi", "stf(4)"] and list(ds["n_ref"].values) == [0, 4]
    assert list(ds["weighting"].values) == ["uniform", "song", "likelihood"]
    np.testing.assert_allclose(ds["V_weighted"].sel(weighting="likelihood"), ds["V"] * proc.g2(ts))
    np.testing.assert_allclose(ds["V_weighted"].sel(weighting="song"), ds["V"] * proc.sigma(ts) ** 2)
    np.testing.assert_allclose(ds["V_weighted"].sel(weighting="uniform"), ds["V"])
    # any Weighting object, in score space (EDM's x0-space weight times sigma^4 / alpha^2)
    edm = variance([DSI()], builtin.fp_gmm(), proc, ts, n_outer=20, n_inner=8, weightings=[smc.EDMWeighting(0.5)],
                   progress=False)
    a, sg = proc.alpha(ts), proc.sigma(ts)
    lam = (sg**2 + a**2 * 0.25) / (sg**2 * 0.25) * sg**4 / a**2
    np.testing.assert_allclose(edm["V_weighted"].sel(weighting="edm").isel(target=0, estimator=0),
                               lam * edm["V"].isel(target=0, estimator=0), rtol=1e-12)
    np.testing.assert_allclose(ds["estimator_variance"], ds["V"] / 50)
    np.testing.assert_allclose(ds["sigma"], proc.sigma(ts))
    path = smc.save_dataset(ds, tmp_path / "v.nc")
    import xarray as xr
    with xr.open_dataset(path) as back:
        np.testing.assert_array_equal(back["V"].values, ds["V"].values)
        assert back.attrs["process"] == repr(proc)


def test_bad_sweep_arguments():
    gm = builtin.fp_gmm()
    with pytest.raises(ValueError, match="outside the domain"):
        variance(DSI(), gm, smc.VP(), [0.5, 1.5])
    with pytest.raises(ValueError, match="distinct"):
        variance([DSI(), DSI()], gm, smc.VP(), [0.5])
    with pytest.raises(TypeError, match="n_outer must be an integer"):
        variance(DSI(), gm, smc.VP(), [0.5], n_outer=10.0)
    with pytest.raises(TypeError, match="weightings must be scoremc Weighting"):
        variance(DSI(), gm, smc.VP(), [0.5], weightings=["sigma2"])
    with pytest.raises(TypeError, match="identity must be"):
        variance("dsi", gm, smc.VP(), [0.5])


def test_dask_workers_give_bit_identical_results():
    ids = [DSI(), Mix(KappaBar()), STF(4)]
    targets = {"easy": builtin.tsm_easy(), "hard": builtin.tsm_hard_different_variance()}
    kw = dict(n_outer=60, n_inner=16, seed=3, progress=False)
    ts = np.linspace(0.1, 0.9, 4)
    ref = variance(ids, targets, smc.Cosine(), ts, **kw)
    for scheduler in ("threads", "processes"):
        other = variance(ids, targets, smc.Cosine(), ts, scheduler=scheduler, num_workers=2, **kw)
        for name, var in ref.data_vars.items():
            np.testing.assert_array_equal(var.values, other[name].values, err_msg=f"{scheduler}: {name}")


def test_dask_distributed_cluster_gives_bit_identical_results():
    distributed = pytest.importorskip("distributed")
    ids = [DSI(), STF(4)]
    kw = dict(n_outer=40, n_inner=8, seed=5, progress=False)
    ts = np.array([0.2, 0.7])
    ref = variance(ids, builtin.tsm_easy(), smc.Cosine(), ts, **kw)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        other = variance(ids, builtin.tsm_easy(), smc.Cosine(), ts, scheduler=cl.scheduler_address, **kw)
    for name, var in ref.data_vars.items():
        np.testing.assert_array_equal(var.values, other[name].values, err_msg=name)


class _ShiftedDSI(smc.PointwiseIdentity):
    """DSI plus a constant c: an estimator with known bias c (E L = s + c)."""

    name = "dsi+c"

    def __init__(self, c):
        self.c = np.asarray(c, dtype=float)

    def integrand(self, dist, coef, x0, xt, rng=None):
        return DSI().integrand(dist, coef, x0, xt) + self.c

    def trace_cov(self, post):
        return None


def test_bias_sq_measures_a_known_bias():
    # the split-half estimate of |E L - s|^2 against the exact score s: |c|^2 for L = DSI + c (same
    # variance as DSI), within 4 standard errors; and V is unchanged by the shift
    c = np.array([0.3, -0.4])
    ds = variance([DSI(), _ShiftedDSI(c)], builtin.fp_gmm(), smc.VP(), [0.3, 0.7], n_outer=400, n_inner=32,
                  exact=False, seed=3, progress=False)
    b, se = ds["bias_sq"].isel(target=0), ds["bias_sq_se"].isel(target=0)
    assert np.all(np.abs(b.sel(estimator="dsi+c") - (c**2).sum()) <= 4 * se.sel(estimator="dsi+c"))
    np.testing.assert_array_less(np.abs(b.sel(estimator="dsi")), 4 * se.sel(estimator="dsi"))


@pytest.mark.parametrize("exact", [True, False])
def test_variance_does_not_depend_on_the_budget(exact, monkeypatch):
    # blocks of 2 outer points; every output of variance_at (V, bias, D, Theorem-2 terms) is bit-identical
    # for one block at a time, two on threads, one per core; so is the sweep; and it equals the
    # unchunked reference (one block) to round-off
    ids = [DSI(), TSI(), Mix(Kappa()), OptimalMix(), STF(3)]
    gm = builtin.ring8()
    kw = dict(n_outer=11, n_inner=6, exact=exact, f_divergence=True)
    whole = variance_at(ids, gm, smc.VP(), 0.3, rng=np.random.default_rng(9), **kw)
    monkeypatch.setattr(_blocks, "BLOCK", 2 * 6 * 2)
    runs = [variance_at(ids, gm, smc.VP(), 0.3, rng=np.random.default_rng(9), budget=b, **kw)
            for b in (1, 2 * 2 * 6 * 2, None)]
    flat = [_flatten(r) for r in runs]
    for other in flat[1:]:
        assert other.keys() == flat[0].keys()
        for key in flat[0]:
            np.testing.assert_array_equal(other[key], flat[0][key], err_msg=key)
    ref = _flatten(whole)
    for key, value in flat[0].items():
        if not isinstance(value, str):
            np.testing.assert_allclose(value, ref[key], rtol=1e-10, err_msg=key)
    assert np.isfinite(whole["D"]) and all(np.isfinite(e["V"]) for e in whole["estimators"].values())
    a = variance(ids, gm, smc.VP(), [0.3, 0.7], n_outer=11, n_inner=6, seed=1, budget=1, progress=False)
    b = variance(ids, gm, smc.VP(), [0.3, 0.7], n_outer=11, n_inner=6, seed=1, progress=False)
    assert a.drop_attrs().identical(b.drop_attrs())


def _flatten(out, prefix=""):
    flat = {}
    for key, value in out.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
