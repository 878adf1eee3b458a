"""The exact mixture score solves the score Fokker-Planck equation (FP-Diffusion Eqs. 7-9)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import scoremc as smc
from scoremc.testing import empirical_targets, gaussian_mixtures, points, processes, times

TARGETS = [
    smc.GaussianMixture([0.5, 0.5], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0]),  # FP-Diffusion §6.1
    smc.GaussianMixture([0.2, 0.3, 0.5], [[1.0, 0.0, -1.0], [0.0, 2.0, 0.5], [-1.5, -1.0, 0.0]],
                        [[0.3, 1.0, 0.5], [1.2, 0.2, 0.7], [0.6, 0.6, 0.1]]),
    smc.GaussianMixture([0.4, 0.6], [[1.0, -1.0], [-0.5, 0.5]],
                        [[[0.5, 0.3], [0.3, 0.4]], [[1.0, -0.6], [-0.6, 0.9]]]),
    smc.Empirical(np.array([[0.0, 0.0], [1.0, 0.5], [-1.0, 2.0], [0.3, -1.2]])),
]


def _rel_residual(es, proc, x, t):
    res = smc.fpe_residual(es, proc, x, t)
    return np.linalg.norm(res, axis=-1).max() / np.linalg.norm(es.dt(x, t), axis=-1).max()


@pytest.mark.parametrize("proc", smc.PROCESSES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("dist", TARGETS, ids=["fp-gmm", "diag", "full", "empirical"])
@pytest.mark.parametrize("t", [0.05, 0.3, 0.7])
def test_exact_score_has_zero_fpe_residual(dist, proc, t, rng):
    # EDM's time is sigma itself: the same three numbers are noise levels there
    x = proc.alpha(t) * smc.sample(dist, 64, rng) + proc.sigma(t) * rng.standard_normal((64, dist.dim))
    assert _rel_residual(smc.exact_score(dist, proc), proc, x, t) <= 1e-8


@given(dist=st.one_of(gaussian_mixtures(), empirical_targets()), proc=processes(), data=st.data())
def test_fpe_residual_property(dist, proc, data):
    t = data.draw(times(proc))
    x = data.draw(points(dist, proc, t))
    es = smc.exact_score(dist, proc)
    res = np.abs(smc.fpe_residual(es, proc, x, t)).max()
    # relative to the largest term of the equation, so that points where d/dt s happens to
    # vanish are still judged on the scale of the terms that cancel
    grad_L = np.abs(smc.fpe.fpe_operator_gradient(es, proc, x, t)).max()
    assert res <= 1e-8 * max(np.abs(es.dt(x, t)).max(), grad_L, 1e-300) + 1e-300


def test_operator_is_time_derivative_of_log_density(rng):
    # for the exact score L[s] = d/dt log p_t (FP-Diffusion Eq. 7)
    dist, proc, t = TARGETS[1], smc.VP(), 0.4
    es = smc.exact_score(dist, proc)
    x = rng.normal(size=(5, 3))
    h = 1e-5
    fd = (es.logpdf(x, t + h) - es.logpdf(x, t - h)) / (2 * h)
    np.testing.assert_allclose(smc.fpe_operator(es, proc, x, t), fd, rtol=1e-7, atol=1e-9)


def test_gaussian_closed_form_of_the_operator():
    # s = grad log N(0, v_t I) under VE, v_t = v0 + sigma(t)^2: L[s] = 1/2 g^2 (-D/v + |x|^2/v^2)
    v0, proc, t = 0.7, smc.VE(), 0.35
    dist = smc.GaussianMixture([1.0], [[0.0, 0.0, 0.0]], [v0])
    x = np.array([[0.3, -1.0, 2.0]])
    v = v0 + proc.sigma(t) ** 2
    expect = 0.5 * proc.g2(t) * (-3 / v + (x**2).sum() / v**2)
    np.testing.assert_allclose(smc.fpe_operator(smc.exact_score(dist, proc), proc, x, t), [expect], rtol=1e-13)


def test_wrong_process_gives_a_nonzero_residual(rng):
    # the VE score does not solve the VP score-FPE: the residual is a real diagnostic
    dist = TARGETS[0]
    x = rng.normal(size=(8, 2)) * 3
    assert _rel_residual(smc.exact_score(dist, smc.VE()), smc.VP(), x, 0.3) > 1e-2


def test_non_callable_scores_are_refused():
    # plain callables go through the finite-difference estimator (tests/test_fpe_generic.py)
    with pytest.raises(TypeError, match="score_fn"):
        smc.fpe_residual("score", smc.VE(), np.zeros((1, 2)), 0.5)
    assert smc.fpe_residual(lambda x, t: -x, smc.VE(), np.zeros((1, 2)), 0.5).shape == (1, 2)
