"""Bad input raises ValueError/TypeError naming the argument and what was expected."""
import numpy as np
import pytest

import scoremc as smc

GOOD_W, GOOD_M = [0.4, 0.6], [[0.0, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize("weights, match", [
    ([0.5, 0.6], "weights must sum to one"),
    ([1.2, -0.2], "weights must be non-negative"),
    ([0.5, 0.25, 0.25], "one entry per component"),
    ([[0.4, 0.6]], "weights must have 1 dimension"),
    ([np.nan, 1.0], "weights must be finite"),
    (["a", "b"], "weights must hold real numbers"),
])
def test_bad_weights(weights, match):
    with pytest.raises((ValueError, TypeError), match=match):
        smc.GaussianMixture(weights, GOOD_M, [1.0, 1.0])


@pytest.mark.parametrize("covs, match", [
    ([1.0, 0.0], r"covs\[1\] must be positive"),
    ([[1.0, 1.0], [1.0, -2.0]], r"covs\[1, 1\] must be positive"),
    ([[[1.0, 2.0], [2.0, 1.0]], np.eye(2)], r"covs\[0\] must be positive definite"),
    ([[[1.0, 0.5], [0.0, 1.0]], np.eye(2)], r"covs\[0\] must be symmetric"),
    ([1.0, 1.0, 1.0], "covs must have shape"),
    (np.ones((2, 3)), "covs must have shape"),
    ([1.0, np.inf], "covs must be finite"),
])
def test_bad_covariances(covs, match):
    with pytest.raises(ValueError, match=match):
        smc.GaussianMixture(GOOD_W, GOOD_M, covs)


def test_bad_means_and_points():
    with pytest.raises(ValueError, match="means must have 2 dimension"):
        smc.GaussianMixture(GOOD_W, [0.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="means must be finite"):
        smc.GaussianMixture(GOOD_W, [[0.0, np.nan], [1.0, 1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="points must be finite"):
        smc.Empirical([[0.0, np.inf]])
    with pytest.raises(ValueError, match="points must have shape"):
        smc.Empirical(np.zeros((0, 3)))
    with pytest.raises(TypeError, match="points must hold real numbers"):
        smc.Empirical([[1 + 2j, 0]])


def test_mismatched_dimension_and_nan_points():
    gm = smc.GaussianMixture(GOOD_W, GOOD_M, [1.0, 1.0])
    with pytest.raises(ValueError, match="x must have trailing dimension d=2"):
        smc.score(gm, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="x must be finite"):
        smc.logpdf(gm, [[np.nan, 0.0]])
    with pytest.raises(ValueError, match="xt must have trailing dimension"):
        smc.posterior(gm, smc.VP(), 0.5, np.zeros(3))
    with pytest.raises(ValueError, match="x must have trailing dimension"):
        smc.exact_score(gm, smc.VE())(np.zeros((1, 5)), 0.5)


def test_time_outside_domain():
    gm = smc.GaussianMixture(GOOD_W, GOOD_M, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"t=1\.5 is outside the domain of VP"):
        smc.marginal(gm, smc.VP(), 1.5)
    with pytest.raises(ValueError, match="outside the domain of Cosine"):
        smc.exact_score(gm, smc.Cosine())(np.zeros((2, 2)), [0.5, 1.0])
    with pytest.raises(ValueError, match="t must be a scalar"):
        smc.posterior(gm, smc.VE(), [0.1, 0.2], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="t must be finite"):
        smc.marginal(gm, smc.VE(), np.nan)


def test_empirical_needs_noise_for_a_density():
    emp = smc.Empirical([[0.0], [1.0]])
    with pytest.raises(ValueError, match="no density at t=0.0"):
        smc.marginal(emp, smc.VP(), 0.0)
    with pytest.raises(TypeError, match="has no density"):
        smc.logpdf(emp, [[0.0]])
    with pytest.raises(TypeError, match="has no density"):
        smc.score(emp, [[0.0]])


@pytest.mark.parametrize("n", [2.0, 2.5, "3", True, None])
def test_non_integer_sample_counts(n, rng):
    gm = smc.GaussianMixture(GOOD_W, GOOD_M, [1.0, 1.0])
    with pytest.raises(TypeError, match="n must be an integer"):
        smc.sample(gm, n, rng)
    with pytest.raises(TypeError, match="m must be an integer"):
        smc.posterior(gm, smc.VE(), 0.5, np.zeros((1, 2))).sample(n, rng)


def test_counts_and_generators(rng):
    gm = smc.GaussianMixture(GOOD_W, GOOD_M, [1.0, 1.0])
    with pytest.raises(ValueError, match="n must be >= 1"):
        smc.sample(gm, 0, rng)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        smc.sample(gm, 3, 0)
    assert smc.sample(gm, np.int64(3), rng).shape == (3, 2)


def test_wrong_argument_types():
    gm = smc.GaussianMixture(GOOD_W, GOOD_M, [1.0, 1.0])
    with pytest.raises(TypeError, match="proc must be a scoremc Process"):
        smc.marginal(gm, "VE", 0.5)
    with pytest.raises(TypeError, match="dist must be a GaussianMixture or Empirical"):
        smc.posterior(object(), smc.VE(), 0.5, np.zeros((1, 2)))
    with pytest.raises(TypeError, match="logpdf is not defined"):
        smc.logpdf(object(), np.zeros(2))
    with pytest.raises(ValueError, match="method must be one of"):
        smc.score(gm, np.zeros(2), method="gpu")


def test_arrays_are_immutable():
    gm = smc.GaussianMixture(GOOD_W, GOOD_M, [1.0, 1.0])
    with pytest.raises(ValueError, match="read-only"):
        gm.means[0, 0] = 5.0
    with pytest.raises(AttributeError):
        gm.weights = np.array([0.5, 0.5])
