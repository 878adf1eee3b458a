"""Finite, accurate results at the extremes: sigma from 1e-3 to 1e3, d up to 3072, K up to 4096."""
import numpy as np
import pytest

import scoremc as smc

SIGMAS = [1e-3, 1e-2, 1.0, 1e2, 1e3]


def _two_gaussians_closed_form(x, mu, var0, sigma):
    """STF App. C (alpha = 1): p_t = 1/2 N(+-mu, S I), S = var0 + sigma^2,
    score = (-x + (2 r - 1) mu) / S with r = sigmoid(2 x.mu / S), written with tanh for stability."""
    S = var0 + sigma**2
    return (-x + np.tanh(x @ mu / S)[:, None] * mu) / S


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("d", [2, 64, 3072])
def test_two_gaussians_score_matches_closed_form(sigma, d, rng):
    mu = np.full(d, 0.1)  # the STF two-Gaussians, with its tiny spread 1e-4
    gm = smc.GaussianMixture([0.5, 0.5], np.stack([mu, -mu]), [1e-8, 1e-8])
    # points on the data scale and far out: x = +-mu + sigma eps, and 50 sigma away
    x = np.concatenate([mu + sigma * rng.standard_normal((3, d)), -mu + sigma * rng.standard_normal((3, d)),
                        50 * sigma * rng.standard_normal((2, d))])
    expect = _two_gaussians_closed_form(x, mu, 1e-8, sigma)
    proc = smc.EDM()
    for method in ("fast", "reference"):
        s = smc.exact_score(gm, proc, method=method)(x, sigma)
        assert np.isfinite(s).all()
        err = np.linalg.norm(s - expect, axis=1) / np.linalg.norm(expect, axis=1)
        assert err.max() <= 1e-9, (method, err.max())
    lp = smc.exact_score(gm, proc).logpdf(x, sigma)
    assert np.isfinite(lp).all()


@pytest.mark.parametrize("sigma", SIGMAS)
def test_large_empirical_target(sigma):
    # an Empirical of K = 4096 points in d = 3072 (the CIFAR-10-4096 scale of STF §6.1)
    rng = np.random.default_rng(7)
    pts = rng.uniform(-1.0, 1.0, size=(4096, 3072))
    emp = smc.Empirical(pts)
    x = np.concatenate([pts[:3] + sigma * rng.standard_normal((3, 3072)), 3 * rng.standard_normal((1, 3072))])
    proc = smc.EDM()
    post = smc.posterior(emp, proc, sigma, x)
    w = post.weights
    assert np.isfinite(w).all() and np.allclose(w.sum(1), 1.0, atol=1e-12)
    if sigma <= 1e-2:  # noise far below the point spacing: the posterior sits on the source point
        np.testing.assert_allclose(w[np.arange(3), np.arange(3)], 1.0, atol=1e-12)
    # the fast path against the plain path, and Tweedie, on this scale
    mean = post.mean()
    exact = smc.posterior(emp, proc, sigma, x[:2], method="reference")
    np.testing.assert_allclose(w[:2], exact.weights, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(mean[:2], exact.mean(), rtol=1e-9, atol=1e-12)
    s = smc.exact_score(emp, proc)(x, sigma)
    assert np.isfinite(s).all()
    np.testing.assert_allclose(mean, x + sigma**2 * s, rtol=1e-9, atol=1e-9 * np.abs(x).max())


@pytest.mark.parametrize("cov", ["iso", "diag", "full"])
def test_thousands_of_components(cov, rng):
    K, d = 2048, 8
    means = rng.normal(size=(K, d)) * 3
    covs = {"iso": rng.uniform(0.1, 1.0, K), "diag": rng.uniform(0.1, 1.0, (K, d)),
            "full": np.einsum("kij,klj->kil", a := rng.normal(size=(K, d, d)), a) / d + 0.1 * np.eye(d)}[cov]
    gm = smc.GaussianMixture(np.full(K, 1.0 / K), means, covs)
    x = rng.normal(size=(20, d)) * 4
    for sigma in (1e-3, 1e3):
        law = smc.marginal(gm, smc.EDM(), sigma)
        np.testing.assert_allclose(smc.logpdf(law, x), smc.logpdf(law, x, method="reference"), rtol=1e-12)
        np.testing.assert_allclose(smc.score(law, x), smc.score(law, x, method="reference"), rtol=1e-9,
                                   atol=1e-12 * np.abs(smc.score(law, x)).max())


def test_far_from_all_mass_does_not_underflow():
    # every component density underflows to 0 in linear space; log-sum-exp keeps the score exact
    gm = smc.GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [1e-6, 1e-6])
    x = np.array([[1e3]])
    assert smc.logpdf(gm, x)[0] == pytest.approx(np.log(0.5) - 0.5 * np.log(2 * np.pi * 1e-6) - (999.0**2) / 2e-6,
                                                  rel=1e-12)
    assert smc.score(gm, x)[0, 0] == pytest.approx(-999.0 / 1e-6, rel=1e-12)


@pytest.mark.slow
def test_hundred_thousand_points():
    rng = np.random.default_rng(3)
    emp = smc.Empirical(rng.normal(size=(4096, 64)))
    x = rng.normal(size=(100_000, 64))
    s = smc.exact_score(emp, smc.VE())(x, 0.5)
    assert s.shape == (100_000, 64) and np.isfinite(s).all()
    np.testing.assert_allclose(s[:50], smc.exact_score(emp, smc.VE(), method="reference")(x[:50], 0.5), rtol=1e-9)
