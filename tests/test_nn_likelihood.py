"""The PF-ODE log-likelihood against the exact layer.

With the exact score and the exact law at t_hi as prior, the PF-ODE carries p_{t_lo} exactly onto p_{t_hi}, so
the result must equal the exact log p_{t_lo} = ``scoremc.logpdf(scoremc.marginal(dist, proc, t_lo), x)`` up to
the ODE solver's error. Tolerance rule (measured, stated): torchdiffeq's dopri5 controls the local error per
step to atol + rtol |y|; over the trajectory the global error of log p was found <= ~10 (atol + rtol |log p|) on
2-D mixtures for every process, so the tests allow 20 (atol + rtol |log p|) and also check that it shrinks with
the tolerance (1e-5 -> 1e-8). Hutchinson: unbiased, checked by a t-test over repeated independent probe draws
at family-wise level 1% (Bonferroni over the points).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import scoremc as smc
from scoremc.nn import Preconditioned, ScoreMLP
from scoremc.nn.data import default_t_range
from scoremc.nn.likelihood import log_likelihood
from scoremc.testing.strategies import gaussian_mixtures

F64 = torch.float64
SEED = 20261205
MIX = smc.GaussianMixture([0.3, 0.7], [[1.0, -1.0], [-1.0, 0.5]],
                          [[[0.5, 0.2], [0.2, 0.4]], [[0.3, -0.1], [-0.1, 0.6]]])


def _points(dist, n, seed):
    return smc.sample(dist, n, torch.Generator().manual_seed(seed), dtype=F64)


def _exact(dist, proc, t, x):
    return smc.logpdf(smc.marginal(dist, proc, t), x)


def _bound(exact, rtol, atol, k=20.0):
    return k * (atol + rtol * exact.abs())


@pytest.mark.parametrize("proc, divergence", [(smc.VE(), smc.Exact()), (smc.VP(), smc.Exact()),
                                              (smc.VP(), smc.Autograd())], ids=["VE-exact", "VP-exact", "VP-autograd"])
def test_exact_score_gives_exact_log_density(proc, divergence):
    lo, hi = default_t_range(proc)
    score = smc.exact_score(MIX, proc)
    x = _points(MIX, 12, 1)
    exact = _exact(MIX, proc, lo, x)
    for tol in (1e-5, 1e-8):
        ll = log_likelihood(score, proc, x, prior=smc.marginal(MIX, proc, hi), divergence=divergence,
                            rtol=tol, atol=tol)
        assert ll.shape == (12,) and ll.dtype == F64
        err = (ll - exact).abs()
        assert (err <= _bound(exact, tol, tol)).all(), (tol, err.max())


@pytest.mark.parametrize("proc", [smc.SubVP(), smc.Cosine(), smc.EDM()], ids=["SubVP", "Cosine", "EDM"])
def test_exact_score_other_processes(proc):
    lo, hi = default_t_range(proc)
    x = _points(MIX, 8, 2)
    exact = _exact(MIX, proc, lo, x)
    p_hi = smc.marginal(MIX, proc, hi)
    ll = log_likelihood(smc.exact_score(MIX, proc), proc, x, prior=lambda z: smc.logpdf(p_hi, z))  # a callable prior
    assert ((ll - exact).abs() <= _bound(exact, 1e-5, 1e-5)).all()


@settings(max_examples=8)
@given(dist=gaussian_mixtures(d=st.integers(1, 3), k=st.integers(1, 3)),
       proc=st.sampled_from([smc.VE(), smc.VP(), smc.SubVP(), smc.Cosine(), smc.EDM()]),
       seed=st.integers(0, 2**31 - 1))
def test_exact_score_random_mixtures(dist, proc, seed):
    lo, hi = default_t_range(proc)
    x = _points(dist, 4, seed)
    exact = _exact(dist, proc, lo, x)
    ll = log_likelihood(smc.exact_score(dist, proc), proc, x, prior=smc.marginal(dist, proc, hi),
                        divergence=smc.Exact(), rtol=1e-6, atol=1e-6)
    assert ((ll - exact).abs() <= _bound(exact, 1e-6, 1e-6)).all()


def test_t_lo_bias_against_log_p0():
    """log p_{t_lo} is not log p0: the PF-ODE result differs from log p0 by exactly the noising bias, which for
    VP at t_lo = 1e-3 (sigma^2 ~ 1e-4) is ~1e-4 - 1e-3 nats here, and shrinks ~ t_lo (sigma^2 ~ beta_min t)."""
    proc = smc.VP()
    x = _points(MIX, 12, 3)
    log_p0 = smc.logpdf(MIX, x)
    biases = []
    for lo in (1e-3, 1e-4):
        exact = _exact(MIX, proc, lo, x)
        ll = log_likelihood(smc.exact_score(MIX, proc), proc, x, t_range=(lo, 1.0), prior=smc.marginal(MIX, proc, 1.0),
                            divergence=smc.Exact(), rtol=1e-8, atol=1e-8)
        assert ((ll - log_p0) - (exact - log_p0)).abs().max() < 1e-6
        biases.append(float((exact - log_p0).abs().max()))
    assert 1e-5 < biases[0] < 5e-3
    assert 5 < biases[0] / biases[1] < 20  # ~ linear in t_lo


def test_default_prior_and_network_float32():
    """An untrained EDM-preconditioned network is exactly the score of N(0, sigma_data^2 I) (F = 0), for which the
    default prior N(0, (alpha^2 sigma_data^2 + sigma^2) I) is the exact law at t_hi: float32 end to end."""
    proc, sd = smc.VP(), 0.7
    net = Preconditioned(ScoreMLP(2, hidden=16, depth=1, embedding=8), proc, "edm", sigma_data=sd)
    gauss = smc.GaussianMixture([1.0], [[0.0, 0.0]], [sd * sd])
    x = _points(gauss, 6, 4).to(torch.float32)
    lo, _ = default_t_range(proc)
    ll = log_likelihood(net, proc, x, sigma_data=sd, rtol=1e-4, atol=1e-4)
    assert ll.dtype == torch.float32 and ll.shape == (6,)
    exact = _exact(gauss, proc, lo, x.double())
    assert ((ll.double() - exact).abs() <= _bound(exact, 1e-4, 1e-4) + 1e-4).all()


@pytest.mark.parametrize("law", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(law):
    """R independent draws of the estimate per point (one solve over N R rows, m = 8 probes each): the mean
    differs from the exact value by a t-statistic within the Bonferroni bound at family-wise level 1%. m = 8
    because a single Gaussian probe gives a chi^2-like skewed estimate (v^T M v) for which this t-test's false
    alarms rise to ~8% (simulated); at m = 8 they are ~1.5%. At tolerances 1e-7 the solver error (<~1e-6) is far
    below the standard error. Then the variance law: 4 times fewer probes (m = 2), twice the standard deviation."""
    proc = smc.VP()
    lo, hi = default_t_range(proc)
    n, reps = 6, 48
    x = _points(MIX, n, 5).repeat(reps, 1)
    exact = _exact(MIX, proc, lo, x[:n])
    gen = torch.Generator().manual_seed(SEED)

    def estimates(m):  # J v from the closed-form Hessian: the estimator, not autograd, is under test here
        return log_likelihood(smc.exact_score(MIX, proc), proc, x, prior=smc.marginal(MIX, proc, hi),
                              divergence=smc.Hutchinson(m, law, jvp=smc.Exact()), generator=gen, rtol=1e-7,
                              atol=1e-7).reshape(reps, n)

    ll = estimates(8)
    se = ll.std(0) / math.sqrt(reps)
    assert (se > 1e-4).all()  # the estimator is random, and its noise dominates the solver's error
    tstat = ((ll.mean(0) - exact) / se).abs()
    assert (tstat <= stats.t.ppf(1 - 0.01 / (2 * n), reps - 1)).all(), tstat
    ratio = float((estimates(2).std(0) / ll.std(0)).median())
    assert 1.4 < ratio < 2.8, ratio


def test_hutchinson_reproducible_from_generator():
    proc = smc.VP()
    x = _points(MIX, 5, 6)
    div = smc.Hutchinson(2)
    a, b = (log_likelihood(smc.exact_score(MIX, proc), proc, x, divergence=div,
                           generator=torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b)
    state = torch.get_rng_state()
    log_likelihood(smc.exact_score(MIX, proc), proc, x, divergence=div, generator=torch.Generator().manual_seed(4))
    assert torch.equal(state, torch.get_rng_state())


def test_validation():
    proc = smc.VP()
    s = smc.exact_score(MIX, proc)
    x = _points(MIX, 3, 7)
    with pytest.raises(TypeError, match="model"):
        log_likelihood(None, proc, x)
    with pytest.raises(TypeError, match="proc"):
        log_likelihood(s, "VP", x)
    with pytest.raises(TypeError, match="x must be a torch tensor"):
        log_likelihood(s, proc, x.numpy())
    with pytest.raises(ValueError, match="x must be"):
        log_likelihood(s, proc, x[0])
    with pytest.raises(ValueError, match="x must be finite"):
        log_likelihood(s, proc, x * float("nan"))
    with pytest.raises(ValueError, match="t_range"):
        log_likelihood(s, proc, x, t_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="rtol"):
        log_likelihood(s, proc, x, rtol=0.0)
    with pytest.raises(ValueError, match="method"):
        log_likelihood(s, proc, x, method="rk4")
    with pytest.raises(TypeError, match="prior"):
        log_likelihood(s, proc, x, prior="normal")
    with pytest.raises(ValueError, match="prior"):
        log_likelihood(s, proc, x, prior=lambda z: z)
    with pytest.raises(ValueError, match="prior"):
        log_likelihood(s, proc, x, prior=smc.GaussianMixture([1.0], [[0.0]], [1.0]))
    with pytest.raises(TypeError, match="divergence"):
        log_likelihood(s, proc, x, divergence="exact")
    with pytest.raises(TypeError, match="generator"):
        log_likelihood(s, proc, x, divergence=smc.Hutchinson(1))
    with pytest.raises(ValueError, match="sigma_data"):
        log_likelihood(s, proc, x, sigma_data=-1.0)
