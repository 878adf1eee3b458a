"""Exact posterior and marginal against Monte Carlo.

Statistical checks use fixed seeds and state their level: each assertion fails with
probability <= `LEVEL` (family-wise) when the implementation is right. Run once over 200 seeds
while writing (tests/test_posterior.py::test_false_alarm_rate_is_as_stated, marked slow).
"""
import numpy as np
import pytest
from scipy import stats
from hypothesis import given, settings
from hypothesis import strategies as st

import scoremc as smc
from scoremc.testing import (assert_cov_matches, assert_mean_matches, empirical_targets, gaussian_mixtures,
                             gaussian_mixture_product_var, points, processes, times)

LEVEL = 0.01  # 99% confidence bounds

CASES = [
    (smc.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [1.0, 1.0], [0.0, -2.5]], [0.3, 1.0, 0.6]), smc.VE(), 0.3),
    (smc.GaussianMixture([0.6, 0.4], [[1.0, 0.0, -1.0], [-1.0, 0.5, 0.0]], [[0.2, 1.0, 0.5], [1.5, 0.3, 0.8]]),
     smc.VP(), 0.5),
    (smc.GaussianMixture([0.5, 0.5], [[1.0, 1.0], [-1.0, 0.0]],
                         [[[1.0, 0.6], [0.6, 0.5]], [[0.4, -0.2], [-0.2, 0.9]]]), smc.Cosine(), 0.4),
    (smc.Empirical([[0.0, 0.0], [1.0, 0.0], [0.0, 1.5], [-1.0, -1.0]]), smc.EDM(), 0.7),
    (smc.GaussianMixture([0.3, 0.7], [[2.0], [-1.0]], [0.5, 0.2]), smc.SubVP(), 0.2),
]
IDS = ["iso-VE", "diag-VP", "full-Cosine", "empirical-EDM", "1d-SubVP"]


def _check_posterior_samples(dist, proc, t, seed, level=LEVEL, m=20_000):
    rng = np.random.default_rng(seed)
    x0 = smc.sample(dist, 2, rng)
    xt = proc.alpha(t) * x0 + proc.sigma(t) * rng.standard_normal(x0.shape)
    post = smc.posterior(dist, proc, t, xt)
    draws = post.sample(m, rng)
    mean, cov = post.mean(), post.cov()
    # two rows x (mean, cov): Bonferroni over the 4 checks keeps the stated family-wise level
    comp_covs = post.prior.dense_covs(post._post_var)
    for i in range(len(xt)):
        assert_mean_matches(draws[:, i], mean[i], cov[i], level / 4, f"posterior mean, row {i}")
        pvar = gaussian_mixture_product_var(post.weights[i], post.means[i], comp_covs, mean[i])
        assert_cov_matches(draws[:, i], cov[i], mean=mean[i], product_var=pvar, level=level / 4,
                           what=f"posterior cov, row {i}")


@pytest.mark.parametrize("dist, proc, t", CASES, ids=IDS)
def test_posterior_samples_have_the_exact_mean_and_cov(dist, proc, t):
    _check_posterior_samples(dist, proc, t, seed=1)


def _check_marginal(dist, proc, t, seed, level=LEVEL, m=40_000):
    rng = np.random.default_rng(seed)
    x0 = smc.sample(dist, m, rng)
    xt = proc.alpha(t) * x0 + proc.sigma(t) * rng.standard_normal(x0.shape)
    law = smc.marginal(dist, proc, t)
    assert_mean_matches(xt, law.mean(), law.cov(), level / 4, "noised sample mean")
    assert_cov_matches(xt, law.cov(), level=level / 4, what="noised sample covariance")
    # the whole law along two directions: Kolmogorov-Smirnov against the exact CDF of the
    # projected marginal, a 1-D mixture with means v.(alpha mu_k) and variances v^T C_k v
    covs = law.covs if law.cov_kind == "full" else np.stack([np.diag(np.broadcast_to(c, law.dim))
                                                             for c in law.covs])
    for v in (np.eye(law.dim)[0], np.ones(law.dim) / np.sqrt(law.dim)):
        loc, scale = law.means @ v, np.sqrt(np.einsum("i,kij,j->k", v, covs, v))
        cdf = lambda y: law.weights @ stats.norm.cdf((np.atleast_1d(y)[None] - loc[:, None]) / scale[:, None])
        p = stats.kstest(xt @ v, cdf).pvalue
        assert p > level / 4, f"KS test along {v}: p = {p:.3g}"


@pytest.mark.parametrize("dist, proc, t", CASES, ids=IDS)
def test_marginal_matches_monte_carlo_noising(dist, proc, t):
    _check_marginal(dist, proc, t, seed=2)


@settings(max_examples=15)
@given(dist=st.one_of(gaussian_mixtures(d=st.integers(1, 3)), empirical_targets(d=st.integers(1, 3))),
       proc=processes(), data=st.data())
def test_posterior_sampling_property(dist, proc, data):
    # property version over random targets: family-wise level 1e-4 per example, so the chance of
    # a false alarm over all examples stays below 0.2%
    t = data.draw(times(proc))
    _check_posterior_samples(dist, proc, t, seed=data.draw(st.integers(0, 2**31)), level=1e-4, m=4000)


@given(dist=st.one_of(gaussian_mixtures(), empirical_targets()), proc=processes(), data=st.data())
def test_posterior_weights_are_a_probability_vector(dist, proc, data):
    t = data.draw(times(proc))
    x = data.draw(points(dist, proc, t))
    w = smc.posterior(dist, proc, t, x).weights
    assert np.all(w >= 0) and np.allclose(w.sum(1), 1.0, rtol=0, atol=1e-13)


def test_component_means_and_covs_are_the_gaussian_conditionals():
    # one full-covariance component: p(x0|xt) = N(mu + a S C^-1 (x - a mu), S - a^2 S C^-1 S)
    S = np.array([[1.0, 0.4], [0.4, 0.6]])
    gm = smc.GaussianMixture([1.0], [[0.5, -1.0]], S[None])
    proc, t = smc.VP(), 0.3
    a, s = proc.alpha(t), proc.sigma(t)
    C = a * a * S + s * s * np.eye(2)
    x = np.array([[0.2, 0.3]])
    post = smc.posterior(gm, proc, t, x)
    gain = a * S @ np.linalg.inv(C)
    np.testing.assert_allclose(post.means[0, 0], gm.means[0] + gain @ (x[0] - a * gm.means[0]), rtol=1e-13)
    np.testing.assert_allclose(post.covs[0], S - a * gain @ S, rtol=1e-12)
    np.testing.assert_allclose(post.cov()[0], S - a * gain @ S, rtol=1e-12)


def test_empirical_posterior_is_a_softmax_over_points(rng):
    pts = rng.normal(size=(6, 3))
    emp = smc.Empirical(pts)
    proc, t = smc.VE(), 0.4
    x = rng.normal(size=(5, 3))
    post = smc.posterior(emp, proc, t, x)
    logits = -((x[:, None] - pts[None]) ** 2).sum(-1) / (2 * proc.sigma(t) ** 2)
    expect = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(post.weights, expect / expect.sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_array_equal(post.covs, np.zeros(6))
    assert set(map(tuple, post.sample(50, rng).reshape(-1, 3))) <= set(map(tuple, pts))


@pytest.mark.slow
@pytest.mark.parametrize("dist, proc, t", CASES, ids=IDS)
def test_false_alarm_rate_is_as_stated(dist, proc, t):
    # over 200 seeds, a check at level 1% should fail ~2 times; 9 or more failures has
    # probability < 1e-4 under Binomial(200, 0.01)
    fails = 0
    for seed in range(200):
        try:
            _check_posterior_samples(dist, proc, t, seed, m=5000)
        except AssertionError:
            fails += 1
    assert fails <= 8, f"{fails}/200 false alarms at level {LEVEL}"
