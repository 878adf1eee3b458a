"""Score identities: unbiasedness of the Monte Carlo estimates, STF against an independent quadrature of
its Eq. 5, the optimal mixture against DSI/TSI on every built-in target, kappa weights."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import scoremc as smc
from scoremc import _blocks
from scoremc import builtin
from scoremc.identities import DSI, STF, TSI, Kappa, KappaBar, Mix, OptimalMix, estimate, integrand_samples
from scoremc.testing import assert_mean_matches, gaussian_mixtures, points, processes, times

IDENTITIES = [DSI(), TSI(), Mix(0.3), Mix(Kappa()), Mix(KappaBar()), OptimalMix(), Mix(lambda t: t)]


@settings(max_examples=25)
@given(dist=gaussian_mixtures(d=st.integers(1, 3)), proc=processes(), data=st.data())
def test_estimates_are_unbiased(dist, proc, data):
    # each identity's integrand has the exact score as posterior mean: chi^2 test of the sample
    # mean of n draws per point, family-wise level 1e-4 per example (7 identities x points rows)
    t = data.draw(times(proc, 0.05, 0.95))
    x = data.draw(points(dist, proc, t, n=2))
    s = smc.exact_score(dist, proc)(x, t)
    seed = data.draw(st.integers(0, 2**31))
    level = 1e-4 / (len(IDENTITIES) * len(x))
    for identity in IDENTITIES:
        draws = integrand_samples(identity, dist, proc, t, x, n=3000, rng=np.random.default_rng(seed))
        for i in range(len(x)):
            cov = np.cov(draws[:, i].T).reshape(dist.dim, dist.dim)
            assert_mean_matches(draws[:, i], s[i], cov, level, f"{identity.name}, row {i}")


@pytest.mark.parametrize("proc", smc.PROCESSES, ids=lambda p: type(p).__name__)
def test_estimates_are_unbiased_at_99_percent(proc):
    # fixed example at the stated 99% level (Bonferroni over identities)
    gm = smc.GaussianMixture([0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], [[0.5, 1.0], [1.5, 0.2]])
    t = 0.4
    x = np.array([[0.5, 0.2]])
    s = smc.exact_score(gm, proc)(x, t)
    for identity in IDENTITIES + [STF(1)]:
        draws = integrand_samples(identity, gm, proc, t, x, n=20_000, rng=np.random.default_rng(11))[:, 0]
        assert_mean_matches(draws, s[0], np.cov(draws.T), 0.01 / 8, identity.name)
        assert estimate(identity, gm, proc, t, x, n=10, rng=np.random.default_rng(0)).shape == x.shape


def test_stf_with_one_reference_point_is_dsi_sample_by_sample():
    gm = smc.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [0.2, 0.4])
    x = np.array([[0.1, 0.2], [2.0, -1.0]])
    for proc in smc.PROCESSES:
        a = integrand_samples(STF(1), gm, proc, 0.3, x, n=7, rng=np.random.default_rng(5))
        b = integrand_samples(DSI(), gm, proc, 0.3, x, n=7, rng=np.random.default_rng(5))
        np.testing.assert_array_equal(a, b)


def test_stf_target_is_the_self_normalised_average():
    # STF Eq. 5 written out for 3 reference points, VP kernel (alpha-scaled, STF App. A)
    proc, t = smc.VP(), 0.5
    a, s = proc.alpha(t), proc.sigma(t)
    ref = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, -1.0]])
    xt = np.array([0.3, 0.1])
    k = np.exp(-((xt - a * ref) ** 2).sum(1) / (2 * s * s))
    expect = (k[:, None] * (a * ref - xt) / s**2).sum(0) / k.sum()
    np.testing.assert_allclose(smc.stf_target(xt[None], s, ref[None], a)[0], expect, rtol=1e-13)
    # one shared reference batch for several rows, per-row coefficients (N, 1)
    xs = np.array([[0.3, 0.1], [-0.2, 0.5]])
    sig, alp = np.array([[s], [2 * s]]), np.array([[a], [0.5 * a]])
    shared = smc.stf_target(xs, sig, ref, alp)
    for i in range(2):
        np.testing.assert_allclose(shared[i], smc.stf_target(xs[i:i + 1], sig[i, 0], ref[None], alp[i, 0])[0],
                                   rtol=1e-13)


# -- STF Eq. 5 by quadrature (independent of scoremc): E[v(x_t)] with x_1 ~ p(x0 | x_t), x_2.. ~ p0 ----------

GH = np.polynomial.hermite.hermgauss(40)


def _posterior_1d(w, mu, lam, a, s, xt):
    """Posterior mixture of x0 | x_t for a 1-D Gaussian-mixture prior (completing the square by hand)."""
    c = a * a * lam + s * s
    logr = np.log(w) - 0.5 * np.log(2 * np.pi * c) - (xt - a * mu) ** 2 / (2 * c)
    r = np.exp(logr - logr.max())
    return r / r.sum(), mu + a * lam / c * (xt - a * mu), lam * s * s / c


def _nodes(w, mu, var):
    """Tensor of Gauss-Hermite nodes/weights for a 1-D Gaussian mixture: E f = sum_j W_j f(X_j)."""
    z, gw = GH
    X = (mu[:, None] + np.sqrt(2 * var)[:, None] * z[None]).ravel()
    W = (w[:, None] * gw[None] / np.sqrt(np.pi)).ravel()
    return X, W


def _stf_expectation_by_quadrature(dist, proc, t, xt, n_ref, first_from_posterior=True):
    """E[v(x_t)] of STF Eq. 5 by tensor Gauss-Hermite quadrature over the reference batch: x_1 from the
    exact posterior (or, the planted bug, from p0) and x_2..x_n from p0."""
    w, mu, lam = dist.weights, dist.means[:, 0], np.asarray(dist.covs, dtype=float)
    a, s = float(proc.alpha(t)), float(proc.sigma(t))
    first = _posterior_1d(w, mu, lam, a, s, xt) if first_from_posterior else (w, mu, lam)
    nodes = [_nodes(*first)] + [_nodes(w, mu, lam)] * (n_ref - 1)
    grids = np.meshgrid(*[X for X, _ in nodes], indexing="ij")
    weight = np.prod(np.meshgrid(*[W for _, W in nodes], indexing="ij"), axis=0)
    xs = np.stack(grids, axis=-1)  # (..., n_ref)
    logit = -(xt - a * xs) ** 2 / (2 * s * s)
    k = np.exp(logit - logit.max(-1, keepdims=True))
    v = (k * (a * xs - xt)).sum(-1) / (k.sum(-1) * s * s)
    return float((weight * v).sum())


STF_CASES = [(builtin.tsm_hard_same_variance, smc.Cosine(), 0.5, 0.6),
             (builtin.tsm_easy, smc.VP(), 0.3, -0.4),
             (builtin.tsm_hard_different_variance, smc.VE(), 0.6, 1.5)]


@pytest.mark.parametrize("make, proc, t, xt", STF_CASES, ids=["hard-same-Cosine", "easy-VP", "hard-diff-VE"])
def test_stf_eq_5_expectation_is_the_score_and_the_estimate_matches_it(make, proc, t, xt):
    # The expectation of the STF target over its reference batch (x_1 from the posterior, the rest from
    # p0; STF Eq. 7) is the exact score for every n_ref: the target is symmetric in the x_j, so the
    # posterior factor k(x_t|x_1) / p_t may be averaged over j (reference/ERRATA.md). Quadrature checks
    # this independently of scoremc; without x_1 from the posterior (the bug of issue 8) the expectation
    # is off by O(1). The Monte Carlo estimate matches it (20000 draws, two-sided z-test at level 1e-3).
    dist = make()
    exact = float(smc.exact_score(dist, proc)([[xt]], t)[0, 0])
    quad = _stf_expectation_by_quadrature(dist, proc, t, xt, 2)
    np.testing.assert_allclose(quad, exact, rtol=1e-9, atol=1e-9)
    draws = integrand_samples(STF(2), dist, proc, t, [[xt]], n=20_000, rng=np.random.default_rng(4))[:, 0, 0]
    se = draws.std(ddof=1) / np.sqrt(len(draws))
    assert abs(draws.mean() - quad) < stats.norm.ppf(1 - 5e-4) * se, (draws.mean(), quad)
    wrong = _stf_expectation_by_quadrature(dist, proc, t, xt, 2, first_from_posterior=False)
    assert abs(wrong - exact) > 20 * se, "the planted bug would not be caught at this point"


def test_stf_with_three_reference_points_matches_quadrature():
    global GH
    dist, proc, t, xt = builtin.tsm_hard_same_variance(), smc.Cosine(), 0.45, -0.3
    saved, GH = GH, np.polynomial.hermite.hermgauss(24)
    try:
        quad = _stf_expectation_by_quadrature(dist, proc, t, xt, 3)
    finally:
        GH = saved
    np.testing.assert_allclose(quad, smc.exact_score(dist, proc)([[xt]], t)[0, 0], rtol=1e-8)
    draws = integrand_samples(STF(3), dist, proc, t, [[xt]], n=20_000, rng=np.random.default_rng(8))[:, 0, 0]
    z = (draws.mean() - quad) / (draws.std(ddof=1) / np.sqrt(len(draws)))
    assert abs(z) < stats.norm.ppf(1 - 5e-4), (draws.mean(), quad)


@settings(max_examples=15)
@given(dist=gaussian_mixtures(d=st.integers(1, 3)), proc=processes(), n_ref=st.sampled_from([2, 5, 32]),
       data=st.data())
def test_stf_estimates_are_unbiased_for_every_n_ref(dist, proc, n_ref, data):
    # chi^2 test of the mean of 4000 STF draws per point against the exact score, family-wise level
    # 1e-4 per example: an O(1/n_ref) bias, as STF §5 states, would show at this sample size
    t = data.draw(times(proc, 0.05, 0.95))
    x = data.draw(points(dist, proc, t, n=2))
    s = smc.exact_score(dist, proc)(x, t)
    draws = integrand_samples(STF(n_ref), dist, proc, t, x, n=4000,
                              rng=np.random.default_rng(data.draw(st.integers(0, 2**31))))
    for i in range(len(x)):
        cov = np.cov(draws[:, i].T).reshape(dist.dim, dist.dim)
        assert_mean_matches(draws[:, i], s[i], cov, 1e-4 / len(x), f"stf({n_ref}), row {i}")


# -- the optimal mixture on every built-in target with a score --------------------------------------------

BUILTIN_WITH_SCORE = [(name, proc) for name, proc in [
    ("two-gaussians", smc.VE()), ("fp-gmm", smc.VE()), ("ring8", smc.VP()), ("tsm-unit-gaussian", smc.Cosine()),
    ("tsm-easy", smc.Cosine()), ("tsm-hard-same-variance", smc.Cosine()),
    ("tsm-hard-different-variance", smc.Cosine())]]


def test_builtin_list_covers_every_target_with_a_score():
    # digits is an Empirical target: it has no score, so TSI and the mixtures are undefined there
    assert {n for n, _ in BUILTIN_WITH_SCORE} == set(builtin.TARGETS) - {"digits"}


@pytest.mark.parametrize("name, proc", BUILTIN_WITH_SCORE, ids=[n for n, _ in BUILTIN_WITH_SCORE])
def test_optimal_mixture_variance_is_at_most_the_better_of_dsi_and_tsi(name, proc):
    # V(w) is quadratic in the DSI weight w, V_DSI = V(1), V_TSI = V(0), so the pointwise optimum is at most
    # min(V_DSI, V_TSI). The estimator uses a weight from m = n_inner pilot draws; its excess is
    # ~ V(w*) / m (delta method, scoremc.experiments.claims.PILOT_EXCESS allows 4 / m), plus 3 standard
    # errors. A weight of the wrong sign makes V orders of magnitude larger.
    from scoremc.experiments.claims import PILOT_EXCESS

    ts = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    n_inner = 64
    ds = smc.variance([DSI(), TSI(), OptimalMix()], builtin.TARGETS[name](), proc, ts, n_outer=200, n_inner=n_inner,
                      f_divergence=False, seed=1, progress=False)
    V, se = ds["V"].isel(target=0), ds["V_se"].isel(target=0)
    best = np.minimum(V.sel(estimator="dsi").values, V.sel(estimator="tsi").values)
    se_best = np.where(V.sel(estimator="dsi").values <= V.sel(estimator="tsi").values, se.sel(estimator="dsi").values,
                       se.sel(estimator="tsi").values)
    opt, se_opt = V.sel(estimator="optimal").values, se.sel(estimator="optimal").values
    bound = (1 + PILOT_EXCESS / n_inner) * best + 3 * np.hypot(se_opt, se_best) + 1e-12 * V.values.max()
    assert np.all(opt <= bound), (opt, best)


# -- kappa weights ----------------------------------------------------------------------------------------

def test_kappa_for_unit_gaussian_cosine_is_sigma_squared():
    # TSM §4.1: with sigma_data = 1 under the cosine schedule, kappa_t = sin^2(pi t / 2) = sigma_t^2
    gm = builtin.tsm_unit_gaussian()
    t = np.linspace(0.05, 0.95, 7)
    c = smc.Cosine().at(t)
    np.testing.assert_allclose(Kappa()(gm, c), np.sin(np.pi * t / 2) ** 2, rtol=1e-13)
    np.testing.assert_allclose(KappaBar()(gm, c), Kappa()(gm, c), rtol=1e-13)
    assert builtin.tsm_easy().sigma_data == pytest.approx(1.0, rel=1e-13)
    # kappa-bar uses the mean component variance: 0.01 for the hard same-variance target
    hard = builtin.tsm_hard_same_variance()
    a, s = smc.Cosine().alpha(0.3), smc.Cosine().sigma(0.3)
    assert KappaBar()(hard, smc.Cosine().at(0.3)) == pytest.approx(s**2 / (s**2 + 0.01 * a**2), rel=1e-13)


def test_sigma_data_is_the_total_standard_deviation_per_dimension(rng):
    # sqrt(tr Cov / d) by the law of total variance, against the sample covariance of 2e5 draws
    gm = smc.GaussianMixture([0.2, 0.8], [[1.0, -2.0, 0.0], [0.0, 1.0, 3.0]],
                             [[[1.0, 0.2, 0.0], [0.2, 0.5, 0.1], [0.0, 0.1, 2.0]], np.eye(3) * 0.3])
    np.testing.assert_allclose(gm.sigma_data, np.sqrt(np.trace(gm.cov()) / 3), rtol=1e-13)
    draws = smc.sample(gm, 200_000, rng)
    assert gm.sigma_data == pytest.approx(np.sqrt(draws.var(0).sum() / 3), rel=0.01)
    emp = smc.Empirical(rng.normal(size=(50, 4)))
    np.testing.assert_allclose(emp.sigma_data, np.sqrt(emp.points.var(0).sum() / 4), rtol=1e-13)


def test_invalid_identities():
    with pytest.raises(TypeError, match="w must be"):
        Mix("kappa")
    with pytest.raises(TypeError, match="w must be"):
        Mix(object())
    with pytest.raises(ValueError, match="w must be finite"):
        Mix(float("inf"))
    with pytest.raises(ValueError, match="n_ref must be >= 1"):
        STF(0)
    with pytest.raises(TypeError, match="Empirical"):
        integrand_samples(TSI(), smc.Empirical([[0.0], [1.0]]), smc.VE(), 0.5, [[0.2]], n=3,
                          rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="identity must be"):
        estimate("dsi", builtin.tsm_easy(), smc.VE(), 0.5, [[0.2]], n=3, rng=np.random.default_rng(0))


@pytest.mark.parametrize("proc", [smc.VE(), smc.SubVP(), smc.Cosine()], ids=lambda p: type(p).__name__)
def test_optimal_mixture_estimates_are_unbiased_over_their_pilots(proc):
    # OptimalMix's n draws share one pilot weight, so they are not iid given x_t and a test on the draws'
    # own spread is mis-specified (at small noise D and T have huge variance and their optimal blend
    # almost none). Unbiasedness is over the pilot too: the mean of 400 independent estimates (n = 50
    # each, own pilot) against the exact score, two-sided z-test on their spread, family level 1e-3 over
    # 3 times x 3 points x 2 dims (0 failures in 40 seeds x 3 processes).
    # Times with sigma >= 0.3 (3 ring stds): below about one std the pilot's w* is noisy enough that
    # the estimates are heavy-tailed (excess kurtosis 50-400 at VE sigma = 0.05-0.13, ~0 here) and a
    # z-test on 400 of them is mis-calibrated.
    gm = builtin.ring8()
    for t in ((0.4, 0.6, 0.8) if isinstance(proc, smc.VE) else (0.2, 0.5, 0.8)):
        _, x = smc.noised_sample(gm, proc, t, 3, np.random.default_rng(11))
        s = smc.exact_score(gm, proc)(x, t)
        est = np.stack([estimate(OptimalMix(), gm, proc, t, x, n=50, rng=np.random.default_rng(seed))
                        for seed in range(400)])
        z = (est.mean(0) - s) / (est.std(0, ddof=1) / np.sqrt(len(est)) + 1e-12 * np.abs(s).max())
        assert np.all(np.abs(z) < stats.norm.ppf(1 - 1e-3 / 36)), (t, z)


@pytest.mark.parametrize("proc", [smc.VE(), smc.SubVP(), smc.Cosine()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("identity", [DSI(), TSI(), Mix(Kappa())], ids=lambda i: i.name)
def test_identities_pass_the_toolkit_unbiasedness_check(identity, proc):
    # dogfooding scoremc.testing: family-wise false-alarm rate 1% per test
    from scoremc.testing import assert_estimator_unbiased

    gm = builtin.ring8()
    assert_estimator_unbiased(identity, gm, proc, level=0.01, ts=[0.2, 0.5, 0.8], n_points=3, n=1000, seed=2)


CHUNKED = [DSI(), TSI(), Mix(Kappa()), OptimalMix(), STF(5)]


@pytest.mark.parametrize("identity", CHUNKED, ids=lambda i: i.name)
def test_estimates_do_not_depend_on_the_budget(identity, monkeypatch):
    # canonical blocks of 2 rows (and 1-2 inner draws for STF): the budget only sets how many run at
    # once (1, 2 on threads, one per core), which must not change a bit; estimate is the mean of
    # integrand_samples bit for bit. Against the unchunked reference (one block of all rows): the same
    # draws, so equal to round-off (BLAS products are not row-local: see scoremc._blocks).
    gm = builtin.ring8()
    proc, t = smc.VP(), 0.4
    _, xt = smc.noised_sample(gm, proc, t, 7, np.random.default_rng(3))
    n = 6
    whole = integrand_samples(identity, gm, proc, t, xt, n=n, rng=np.random.default_rng(5))
    monkeypatch.setattr(_blocks, "BLOCK", 2 * n * 2)
    first = None
    for budget in (1, 2 * n * 2 * 2, None, 1 << 30):
        draws = integrand_samples(identity, gm, proc, t, xt, n=n, rng=np.random.default_rng(5), budget=budget)
        est = estimate(identity, gm, proc, t, xt, n=n, rng=np.random.default_rng(5), budget=budget)
        first = draws if first is None else first
        np.testing.assert_array_equal(draws, first)
        np.testing.assert_array_equal(est, draws.mean(0))
    np.testing.assert_allclose(first, whole, rtol=1e-12, atol=1e-12 * np.abs(whole).max())
    assert whole.shape == (n, 7, 2) and np.isfinite(whole).all()


def test_dsi_draws_are_the_posterior_draws_of_the_row_stream():
    # the unchunked reference written out: x0 ~ p(x0 | x_t) from the RowStream keyed by one draw of the
    # caller's generator, DSI integrand (alpha x0 - x_t) / sigma^2 (TSM Eq. 15)
    from scoremc._random import RowStream

    gm = builtin.ring8()
    proc, t = smc.Cosine(), 0.5
    _, xt = smc.noised_sample(gm, proc, t, 9, np.random.default_rng(8))
    got = integrand_samples(DSI(), gm, proc, t, xt, n=4, rng=np.random.default_rng(2), budget=8)
    stream = RowStream.from_generator(np.random.default_rng(2), np.arange(9))
    x0 = smc.posterior(gm, proc, t, xt).sample(4, stream)
    a, s = proc.alpha(t), proc.sigma(t)
    np.testing.assert_allclose(got, (a * x0 - xt) / s**2, rtol=1e-13, atol=1e-13)


def test_row_stream_gives_every_row_its_numbers_whatever_the_chunking():
    from scoremc._random import RowStream

    s = RowStream(12345, np.arange(10))
    whole = [s.normal((3, 10, 2), rows_axis=1), s.uniform((10, 4)), s.expand(5, 0, 5).normal((50,))]
    for i, j in ((0, 3), (3, 4), (4, 10)):
        sub = s.subset(i, j)
        part = [sub.normal((3, j - i, 2), rows_axis=1), sub.uniform((j - i, 4)),
                np.concatenate([sub.expand(5, 0, 2).normal((2 * (j - i),)).reshape(-1, 2),
                                sub.expand(5, 2, 5).normal((3 * (j - i),)).reshape(-1, 3)], axis=1).ravel()]
        np.testing.assert_array_equal(part[0], whole[0][:, i:j])
        np.testing.assert_array_equal(part[1], whole[1][i:j])
        np.testing.assert_array_equal(part[2], whole[2][5 * i:5 * j])
    # and they are standard normal / uniform: KS at level 1e-4 on 10^5 draws, and independent across
    # calls, positions and expanded streams (correlation within 5 standard errors)
    big = RowStream(7, np.arange(50_000))
    z, u, c = big.normal((50_000, 2)), big.uniform((50_000,)), big.expand(1, 0, 1).normal((50_000,))
    assert stats.kstest(z.ravel(), "norm").pvalue > 1e-4
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    for a, b in ((z[:, 0], z[:, 1]), (z[:, 0], c), (z[:, 1], stats.norm.ppf(u))):
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(50_000)
