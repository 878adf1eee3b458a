"""Score identities: unbiasedness of the Monte Carlo estimates, STF reductions, kappa weights."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scoremc as smc
from scoremc import builtin
from scoremc.identities import DSI, STF, TSI, Mix, estimate, integrand_samples, kappa, kappa_bar, sigma_data
from scoremc.testing import assert_mean_matches, gaussian_mixtures, points, processes, times

IDENTITIES = [DSI(), TSI(), Mix(0.3), Mix("kappa"), Mix("kappa_bar"), Mix("optimal"), Mix(lambda t: t)]


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
    np.testing.assert_allclose(STF.target(proc, t, xt[None], ref[None])[0], expect, rtol=1e-13)


def test_stf_is_consistent_as_n_ref_grows():
    # the O(1/n_ref) bias of s*_STF (Eq. 7) vanishes: large n_ref estimates the exact score
    gm = smc.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.3, 0.3])
    proc, t, x = smc.VE(), 0.5, np.array([[0.4]])
    s = smc.exact_score(gm, proc)(x, t)
    biases = []
    for n_ref in (2, 64):
        draws = integrand_samples(STF(n_ref), gm, proc, t, x, n=20_000, rng=np.random.default_rng(3))
        biases.append(abs(draws.mean() - s[0, 0]))
    assert biases[1] < biases[0]


def test_kappa_for_unit_gaussian_cosine_is_sigma_squared():
    # TSM §4.1: with sigma_data = 1 under the cosine schedule, kappa_t = sin^2(pi t / 2) = sigma_t^2
    gm = builtin.tsm_unit_gaussian()
    t = np.linspace(0.05, 0.95, 7)
    np.testing.assert_allclose(kappa(gm, smc.Cosine(), t), np.sin(np.pi * t / 2) ** 2, rtol=1e-13)
    np.testing.assert_allclose(kappa_bar(gm, smc.Cosine(), t), kappa(gm, smc.Cosine(), t), rtol=1e-13)
    assert sigma_data(builtin.tsm_easy()) == pytest.approx(1.0, rel=1e-13)
    # kappa-bar uses the mean component variance: 0.01 for the hard same-variance target
    hard = builtin.tsm_hard_same_variance()
    a, s = smc.Cosine().alpha(0.3), smc.Cosine().sigma(0.3)
    assert kappa_bar(hard, smc.Cosine(), 0.3) == pytest.approx(s**2 / (s**2 + 0.01 * a**2), rel=1e-13)


def test_invalid_identities():
    with pytest.raises(ValueError, match="w must be"):
        Mix("best")
    with pytest.raises(TypeError, match="w must be"):
        Mix(object())
    with pytest.raises(ValueError, match="n_ref must be >= 1"):
        STF(0)
    with pytest.raises(TypeError, match="Empirical"):
        integrand_samples(TSI(), smc.Empirical([[0.0], [1.0]]), smc.VE(), 0.5, [[0.2]], n=3,
                          rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="identity must be"):
        estimate("dsi", builtin.tsm_easy(), smc.VE(), 0.5, [[0.2]], n=3, rng=np.random.default_rng(0))


@pytest.mark.parametrize("proc", [smc.VE(), smc.SubVP(), smc.Cosine()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("identity", [DSI(), TSI(), Mix("kappa"), Mix("optimal")], ids=lambda i: i.name)
def test_identities_pass_the_toolkit_unbiasedness_check(identity, proc):
    # dogfooding scoremc.testing: family-wise false-alarm rate 1% per test
    from scoremc.testing import assert_estimator_unbiased

    gm = builtin.ring8()
    assert_estimator_unbiased(identity, gm, proc, level=0.01, ts=[0.2, 0.5, 0.8], n_points=3, n=1000, seed=2)
