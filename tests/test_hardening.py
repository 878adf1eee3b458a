"""Issue 13: every bad input answered with a ValueError/TypeError naming the argument, every edge
finite (or refused), no silent NaN. Each test here failed before its fix."""
import math

import numpy as np
import pytest

import scoremc as smc
from scoremc.testing import (
    assert_conservative,
    assert_estimator_unbiased,
    assert_fpe_consistent,
    assert_score_close,
    assert_tweedie,
)


@pytest.fixture
def gm():
    return smc.GaussianMixture([.3, .7], [[0, 1], [2, -1]], [1, .5])


X = np.ones((4, 2))


# ---------------------------------------------------------------- endpoints: finite limit or ValueError naming t

def test_dt_at_vp_t0_is_the_finite_limit(gm):
    """d/dt s at t = 0 under VP: sigma' is infinite there but d(sigma^2)/dt -> beta_min, so the limit is
    finite; it equals the one-sided difference quotient of the exact score (independent of dt)."""
    es = smc.exact_score(gm, smc.VP())
    at0 = es.dt(X, 0.0)
    assert np.isfinite(at0).all()
    h = 1e-6
    fd = (-3 * es(X, 0.0) + 4 * es(X, h) - es(X, 2 * h)) / (2 * h)  # second-order one-sided
    np.testing.assert_allclose(at0, fd, rtol=1e-5, atol=1e-6)
    # continuity from the right
    np.testing.assert_allclose(at0, es.dt(X, 1e-9), rtol=1e-6)


@pytest.mark.parametrize("proc", [smc.VP(), smc.SubVP(), smc.Cosine(), smc.EDM()], ids=repr)
def test_fpe_residual_of_exact_score_vanishes_at_t0(gm, proc):
    es = smc.exact_score(gm, proc)
    res = smc.fpe_residual(es, proc, X, 0.0)
    assert np.isfinite(res).all()
    np.testing.assert_allclose(res, 0.0, atol=1e-9)


@pytest.mark.parametrize("proc", [smc.VP(), smc.EDM()], ids=repr)
@pytest.mark.parametrize("identity", [smc.DSI(), smc.Mix(0.5), smc.STF(4), smc.OptimalMix()], ids=lambda i: i.name)
def test_estimate_at_sigma_zero_names_t(gm, proc, identity):
    with pytest.raises(ValueError, match=r"t=0\.0 has sigma\(t\) = 0"):
        smc.estimate(identity, gm, proc, 0.0, X, n=2, rng=np.random.default_rng(0))


def test_tsi_estimate_at_t0_is_the_target_score(gm):
    """TSI needs no noise: at t = 0 the posterior is the point x_t, so the estimate is grad log p0(x_t)."""
    est = smc.estimate(smc.TSI(), gm, smc.VP(), 0.0, X, n=3, rng=np.random.default_rng(0))
    np.testing.assert_allclose(est, smc.score(gm, X), rtol=1e-12)


@pytest.mark.parametrize("proc", [smc.VP(), smc.EDM()], ids=repr)
@pytest.mark.parametrize("objective", [smc.DSM(), smc.MixSM(0.5)], ids=lambda o: o.name)
def test_loss_at_sigma_zero_names_t(gm, proc, objective):
    es = smc.exact_score(gm, proc)
    with pytest.raises(ValueError, match=r"t=0\.0 has sigma\(t\) = 0"):
        smc.loss(objective, es, gm, proc, np.array([0.3, 0.0, 0.5, 0.2]), X, X)


@pytest.mark.parametrize("proc", [smc.VP(), smc.EDM()], ids=repr)
@pytest.mark.parametrize("identity", [smc.DSI(), smc.TSI(), smc.STF(4), smc.Mix(0.5)], ids=lambda i: i.name)
def test_variance_at_sigma_zero_names_ts(gm, proc, identity):
    with pytest.raises(ValueError, match=r"ts=0\.0 has sigma\(t\) = 0"):
        smc.variance(identity, gm, proc, [0.5, 0.0], n_outer=4, n_inner=4)


def test_variance_of_empty_ts_raises(gm):
    with pytest.raises(ValueError, match="ts"):
        smc.variance(smc.DSI(), gm, smc.VP(), [], n_outer=4, n_inner=4)


# ---------------------------------------------------------------- no silent NaN inside the domain

def test_exact_score_overflow_raises_instead_of_nan(gm):
    with pytest.raises(ValueError, match="x and t too large"):
        smc.exact_score(gm, smc.EDM())(X, 1e155)
    with pytest.raises(ValueError, match="x and t too large"):
        smc.exact_score(gm, smc.VP())([[1e160, 0.0]], 0.3)
    with pytest.raises(ValueError, match="x and t too large"):  # the reference path too
        smc.exact_score(gm, smc.VP(), method="reference")([[1e160, 0.0]], 0.3)
    with pytest.raises(ValueError, match="x and t too large"):  # per-row times (reference path)
        smc.exact_score(gm, smc.EDM()).logpdf(X, np.array([1.0, 1e155, 1.0, 1.0]))
    # large but representable stays finite and correct: for EDM s ~ -(x - mean)/t^2 as t -> inf
    s = smc.exact_score(gm, smc.EDM())(X, 1e100)
    np.testing.assert_allclose(s, -(X - gm.weights @ gm.means) / 1e200, rtol=1e-12)


@pytest.mark.parametrize("covs", [[1e-320, 1.0], [[1e-320, 1.0], [1.0, 1.0]],
                                  [np.diag([1e-320, 1.0]), np.eye(2)]], ids=["iso", "diag", "full"])
def test_subnormal_covariance_is_refused(covs):
    kw = {"cov_kind": "diag"} if np.ndim(covs) == 2 else {}
    with pytest.raises(ValueError, match="covs"):
        smc.GaussianMixture([.3, .7], [[0, 1], [2, -1]], covs, **kw)


def test_smallest_normal_covariance_is_finite():
    tiny = np.finfo(np.float64).tiny
    g = smc.GaussianMixture([.3, .7], [[0, 1], [2, -1]], [4 * tiny, 1.0])
    assert np.isfinite(smc.score(g, X)).all() and np.isfinite(smc.logpdf(g, X)).all()


# ---------------------------------------------------------------- checks that pass without checking

@pytest.mark.parametrize("check", [
    lambda gm, f: assert_score_close(f, gm, smc.VP(), ts=[]),
    lambda gm, f: assert_tweedie(f, f, smc.VP(), gm, ts=[]),
    lambda gm, f: assert_conservative(f, smc.VP(), gm, ts=[]),
    lambda gm, f: assert_fpe_consistent(f, smc.VP(), gm, ts=[]),
    lambda gm, f: assert_estimator_unbiased(smc.DSI(), gm, smc.VP(), ts=[]),
], ids=["score_close", "tweedie", "conservative", "fpe", "unbiased"])
def test_assertions_refuse_empty_ts(gm, check):
    with pytest.raises(ValueError, match="ts must hold at least one time"):
        check(gm, lambda x, t: x * 0 + 1e9)


@pytest.mark.parametrize("rtol", [0.0, -1.0, math.nan, math.inf, "0.1", True])
def test_assertions_validate_rtol(gm, rtol):
    with pytest.raises((ValueError, TypeError), match="rtol"):
        assert_score_close(smc.exact_score(gm, smc.VP()), gm, smc.VP(), rtol=rtol, ts=[0.5])


@pytest.mark.parametrize("level", [0, 0.0, 1.0, -0.1, math.nan])
def test_unbiased_validates_level(gm, level):
    with pytest.raises(ValueError, match="level"):
        assert_estimator_unbiased(smc.DSI(), gm, smc.VP(), level=level, ts=[0.5], n=50)


# ---------------------------------------------------------------- errors that name the argument

def test_raw_errors_now_name_the_argument(gm):
    with pytest.raises(TypeError, match="VE.sigma_min"):
        smc.VE("a", 1)
    with pytest.raises(ValueError, match="sigma.*alpha"):
        smc.tsm_precond([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="sigma_data"):
        smc.edm_precond(1., [.5, .6])
    with pytest.raises(ValueError, match="^t "):
        smc.exact_score(gm, smc.VP())(X, [.1, .2])


# ---------------------------------------------------------------- bad values that were accepted

@pytest.mark.parametrize("make", [
    lambda: smc.VE(True, 50), lambda: smc.VP(True, 20), lambda: smc.SubVP(0.1, True),
    lambda: smc.EDM(rho=True), lambda: smc.EDM(sigma_min=np.bool_(True)),
], ids=["VE", "VP", "SubVP", "EDM.rho", "EDM.np_bool"])
def test_boolean_process_parameters_are_refused(make):
    with pytest.raises(TypeError, match="must be a real number"):
        make()


@pytest.mark.parametrize("make", [lambda: smc.EDM(rho=math.nan), lambda: smc.VP(math.nan, 20),
                                  lambda: smc.VE(0.01, math.inf)])
def test_non_finite_process_parameters_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_process_parameters_are_stored_as_floats():
    assert smc.VE(1, 50) == smc.VE(1.0, 50.0) and isinstance(smc.VE(1, 50).sigma_min, float)


def test_booleans_as_weights_and_times_are_refused(gm):
    with pytest.raises(TypeError, match="weights"):
        smc.GaussianMixture([True], [[0, 1]], [1])
    with pytest.raises(TypeError, match="^t must hold real numbers"):
        smc.exact_score(gm, smc.VP())(X, True)
    with pytest.raises(TypeError, match="^t must hold real numbers"):
        smc.VP().alpha(np.array([True, False]))
    with pytest.raises(TypeError, match="^x must hold real numbers"):
        smc.score(gm, np.ones((2, 2), dtype=bool))


def test_booleans_as_torch_tensors_are_refused(gm):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="^t must hold real numbers"):
        smc.exact_score(gm, smc.VP())(torch.ones(4, 2, dtype=torch.float64), torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("sigma", [0.0, np.array([[1.0], [0.0], [1.0], [1.0]]), -1.0])
def test_score_from_denoiser_refuses_sigma_zero(sigma):
    with pytest.raises(ValueError, match="sigma must be positive"):
        smc.score_from_denoiser(X, X, 1.0, sigma)
    with pytest.raises(ValueError, match="sigma must be positive"):
        smc.eps_from_denoiser(X, X, 1.0, sigma)


def test_denoiser_from_score_refuses_alpha_zero():
    with pytest.raises(ValueError, match="alpha must be positive"):
        smc.denoiser_from_score(X, X, 0.0, 1.0)


def test_weight_tolerance_is_the_same_for_float32_and_its_upcast():
    k = 1000
    w32 = np.full(k, 1 / k, dtype=np.float32)
    off = abs(w32.astype(np.float64).sum() - 1)
    assert 1e-9 < off < 1e-6  # float32 round-off, far above float64's
    means, covs = np.zeros((k, 2)), np.ones(k)
    a = smc.GaussianMixture(w32, means, covs)
    b = smc.GaussianMixture(w32.astype(np.float64), means, covs)  # was rejected
    np.testing.assert_array_equal(a.weights, b.weights)
    assert abs(a.weights.sum() - 1) < 1e-15


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_weights_visibly_off_one_are_refused_at_every_precision(dtype):
    k = 1000
    w = np.full(k, 1.05 / k).astype(dtype)  # sum 1.05: accepted for float32 before (tolerance 0.12)
    with pytest.raises(ValueError, match="weights must sum to one"):
        smc.GaussianMixture(w, np.zeros((k, 2)), np.ones(k))
    with pytest.raises(ValueError, match="weights must sum to one"):
        smc.GaussianMixture(np.array([0.5, 0.5 + 2e-3], dtype), np.zeros((2, 2)), np.ones(2))


def test_square_2d_covs_with_k_equal_d_is_ambiguous():
    C = [[1.0, 0.2], [0.2, 1.0]]
    with pytest.raises(ValueError, match="ambiguous"):
        smc.GaussianMixture([.5, .5], [[0, 1], [2, -1]], C)
    diag = smc.GaussianMixture([.5, .5], [[0, 1], [2, -1]], C, cov_kind="diag")
    full = smc.GaussianMixture([.5, .5], [[0, 1], [2, -1]], [np.diag(c) for c in np.asarray(C)])
    np.testing.assert_allclose(smc.score(diag, X), smc.score(full, X), rtol=1e-13)
    shared = smc.GaussianMixture([.5, .5], [[0, 1], [2, -1]], np.broadcast_to(C, (2, 2, 2)))
    assert shared.cov_kind == "full"
    # per-component diagonals that are no covariance matrix (asymmetric, or singular) are unambiguous
    assert smc.GaussianMixture([.5, .5], [[0, 1], [2, -1]], [[0.3, 0.6], [0.5, 0.2]]).cov_kind == "diag"
    assert smc.GaussianMixture([.5, .5], [[0, 1], [2, -1]], np.ones((2, 2))).cov_kind == "diag"
    # per-component diagonals that are no covariance matrix (asymmetric, or singular) are unambiguous
    assert smc.GaussianMixture([.5, .5], [[0, 1], [2, -1]], [[0.3, 0.6], [0.5, 0.2]]).cov_kind == "diag"
    assert smc.GaussianMixture([.5, .5], [[0, 1], [2, -1]], np.ones((2, 2))).cov_kind == "diag"
    # d = 1 (K = d = 1) and K != d stay unambiguous
    assert smc.GaussianMixture([1.0], [[0.0]], [[2.0]]).cov_kind == "diag"
    assert smc.GaussianMixture([.5, .5], [[0, 1, 2], [2, -1, 0]], np.ones((2, 3))).cov_kind == "diag"
    with pytest.raises(ValueError, match="cov_kind"):
        smc.GaussianMixture([.5, .5], [[0, 1], [2, -1]], C, cov_kind="full")


def test_mix_weight_outside_unit_interval_is_a_valid_control_variate(gm):
    """w is the DSI weight of the combination w DSI + (1 - w) TSI; both integrands have the score as
    posterior mean, so any finite w (a control-variate coefficient, possibly outside [0, 1], where
    the variance-optimal weight can lie) is unbiased. Checked exactly: with w = 2 and w = -1 the
    estimate equals 2 DSI - TSI and -DSI + 2 TSI of the same posterior draws."""
    rng = lambda: np.random.default_rng(3)
    d = smc.estimate(smc.DSI(), gm, smc.VP(), 0.4, X, n=5, rng=rng())
    t = smc.estimate(smc.TSI(), gm, smc.VP(), 0.4, X, n=5, rng=rng())
    np.testing.assert_allclose(smc.estimate(smc.Mix(2.0), gm, smc.VP(), 0.4, X, n=5, rng=rng()), 2 * d - t,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(smc.estimate(smc.Mix(-1.0), gm, smc.VP(), 0.4, X, n=5, rng=rng()), -d + 2 * t,
                               rtol=1e-12, atol=1e-12)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="w must be finite"):
            smc.Mix(bad)
    with pytest.raises(TypeError, match="^w must be"):
        smc.Mix(True)


# ---------------------------------------------------------------- empty input: empty results of the right shape

@pytest.mark.parametrize("method", ["__call__", "logpdf", "hessian", "divergence", "dt", "grad_divergence"])
def test_exact_score_methods_on_empty_rows(gm, method):
    es = smc.exact_score(gm, smc.VP())
    out = getattr(es, method)(np.zeros((0, 2)), 0.3)
    assert out.shape[0] == 0


def test_fpe_and_loss_on_empty_rows(gm):
    es = smc.exact_score(gm, smc.VP())
    z = np.zeros((0, 2))
    assert smc.fpe_residual(es, smc.VP(), z, 0.3).shape == (0, 2)
    assert smc.fpe_operator(es, smc.VP(), z, 0.3).shape == (0,)  # the scalar operator L[s], per row
    assert smc.loss(smc.DSM(), es, gm, smc.VP(), 0.3, z, z).shape == (0,)
    assert smc.estimate(smc.DSI(), gm, smc.VP(), 0.3, z, n=2, rng=np.random.default_rng(0)).shape == (0, 2)


def test_process_coefficient_overflow_names_t():
    with pytest.raises(ValueError, match="^t is too large"):
        smc.EDM().g2(1e308)
    with pytest.raises(ValueError, match="x"):
        smc.SubVP().drift(np.array([[1e308, 0.5]]), 0.5)


def test_overflowing_integrand_names_w():
    gm = smc.GaussianMixture([.3, .7], [[0, 1], [2, -1]], [1, .5])
    with pytest.raises(ValueError, match=r"w\(t\)"):
        smc.estimate(smc.Mix(lambda t: np.full_like(t, 1e308)), gm, smc.VP(), 0.3, X, n=2,
                     rng=np.random.default_rng(0))
