"""EDM and TSM preconditioning (Karras et al. 2022; TSM App. D, FLAG-T2, FLAG-T12) and the
score / denoiser / eps conversions."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import scoremc as smc
from scoremc.identities import DSI
from scoremc.testing import gaussian_mixtures, points, processes, times

sigmas = st.floats(1e-3, 1e3)
alphas = st.floats(1e-2, 1.0)
sigma_datas = st.floats(0.05, 5.0)


def test_edm_known_values():
    # Karras Table 1 at sigma_data = 0.5, sigma = 1: S = 1.25
    p = smc.edm_precond(1.0)
    np.testing.assert_allclose([p.c_skip, p.c_out, p.c_in, p.c_noise, p.weight],
                               [0.2, 0.5 / np.sqrt(1.25), 1 / np.sqrt(1.25), 0.0, 5.0], rtol=1e-15)
    assert p.space == "x0"
    sig = np.array([0.002, 0.3, 80.0])
    p = smc.edm_precond(sig, 0.5)
    np.testing.assert_allclose(p.c_noise, np.log(sig) / 4, rtol=1e-15)
    np.testing.assert_allclose(p.c_skip, 0.25 / (sig**2 + 0.25), rtol=1e-15)


def test_tsm_app_d_numeric_example():
    # TSM App. D at alpha = 0.6, sigma = 0.8, sigma_tar = 1 (S = 1): lambda = 0.5625, c_o = -4/3, c_s = -1, c_i = 1
    p = smc.tsm_precond(0.8, 0.6, 1.0)
    np.testing.assert_allclose([p.weight, p.c_out, p.c_skip, p.c_in], [0.5625, -4 / 3, -1.0, 1.0], rtol=1e-14)
    assert p.space == "score"


def _gaussian_coefficients(p, kind, sigma, alpha, sd):
    """Network input c_in x_t and effective target (target - c_skip x_t)/c_out as a X + b eps, with
    X ~ N(0, sd^2), eps ~ N(0, 1) independent; target = X (EDM) or -X/(alpha sd^2) (TSM)."""
    t_coef = 1.0 if kind == "edm" else -1.0 / (alpha * sd**2)
    eff = ((t_coef - p.c_skip * alpha) / p.c_out, -p.c_skip * sigma / p.c_out)
    inp = (p.c_in * alpha, p.c_in * sigma)
    return inp, eff, t_coef


@given(sigma=sigmas, alpha=alphas, sd=sigma_datas, kind=st.sampled_from(["edm", "tsm"]))
def test_karras_principles_hold_exactly(sigma, alpha, sd, kind):
    p = smc.edm_precond(sigma, sd, alpha=alpha) if kind == "edm" else smc.tsm_precond(sigma, alpha, sd)
    (ia, ib), (ea, eb), t_coef = _gaussian_coefficients(p, kind, sigma, alpha, sd)
    np.testing.assert_allclose(ia**2 * sd**2 + ib**2, 1.0, rtol=1e-12)  # (i) unit-variance input
    np.testing.assert_allclose(ea**2 * sd**2 + eb**2, 1.0, rtol=1e-9)   # (ii) unit-variance target
    np.testing.assert_allclose(p.weight * p.c_out**2, 1.0, rtol=1e-12)  # (iii) lambda c_out^2 = 1
    # (iv) c_skip = Cov(target, x_t) / Var(x_t), the value minimising |c_out|
    np.testing.assert_allclose(p.c_skip, t_coef * alpha * sd**2 / (alpha**2 * sd**2 + sigma**2), rtol=1e-12)


@pytest.mark.parametrize("kind", ["edm", "tsm"])
@pytest.mark.parametrize("sigma,alpha", [(0.002, 1.0), (0.3, 0.9), (2.0, 0.4), (80.0, 1.0)])
def test_unit_variances_by_monte_carlo(kind, sigma, alpha):
    # Gaussian target N(0, sd^2 I), F = 0: sample variances of the input and of the effective target are
    # 1, and the preconditioned loss per dimension is 1 (FLAG-T12). 2e5 draws x 4 dims: the standard error
    # of a unit variance is sqrt(2/n) = 1.6e-3; the bound 6 SE has false-alarm rate < 1e-8 per check.
    rng = np.random.default_rng(11)
    sd, n, d = 0.5 if kind == "edm" else 1.3, 200_000, 4
    X = sd * rng.standard_normal((n, d))
    eps = rng.standard_normal((n, d))
    x = alpha * X + sigma * eps
    p = smc.edm_precond(sigma, sd, alpha=alpha) if kind == "edm" else smc.tsm_precond(sigma, alpha, sd)
    target = X if kind == "edm" else -X / (alpha * sd**2)  # TSI target alpha^-1 grad log p0(X)
    bound = 6 * np.sqrt(2 / (n * d))
    assert abs(np.mean(p.network_input(x) ** 2) - 1) < bound
    assert abs(np.mean(p.effective_target(target, x) ** 2) - 1) < bound
    loss_f0 = p.weight * np.mean((p.output(np.zeros_like(x), x) - target) ** 2)
    assert abs(loss_f0 - 1) < bound


@given(sigma=sigmas, alpha=alphas, sd=sigma_datas)
def test_tsm_eq_27_relates_tsm_and_edm_constants(sigma, alpha, sd):
    # the alpha-EDM denoiser of X, rescaled to predict alpha X (c' = alpha c, lambda' = lambda / alpha^2),
    # gives the TSM constants through TSM Eq. 27
    e, t = smc.edm_precond(sigma, sd, alpha=alpha), smc.tsm_precond(sigma, alpha, sd)
    a2 = (alpha * sd) ** 2
    np.testing.assert_allclose(t.weight, e.weight / alpha**2 * a2**2, rtol=1e-11)
    np.testing.assert_allclose(t.c_out, -alpha * e.c_out / a2, rtol=1e-11)
    np.testing.assert_allclose(t.c_skip, -alpha * e.c_skip / a2, rtol=1e-11)
    np.testing.assert_allclose(t.c_in, e.c_in, rtol=1e-14)


@pytest.mark.parametrize("proc", [smc.Cosine(), smc.VP(), smc.SubVP()], ids=lambda p: type(p).__name__)
def test_preconditioned_models_at_f_zero_are_exact_for_the_gaussian_target(proc, rng):
    # FLAG-T2: with c_skip y = -y / S, the TSM model at F = 0 *is* the score of N(0, sd^2 I) noised;
    # the printed alpha^2 y / S is not (for alpha != 1). The EDM model at F = 0 is E[x0 | x_t].
    sd, t = 0.8, 0.35
    dist = smc.GaussianMixture([1.0], [[0.0, 0.0, 0.0]], [sd**2])
    a, s = float(proc.alpha(t)), float(proc.sigma(t))
    y = rng.normal(size=(6, 3))
    exact = smc.exact_score(dist, proc)(y, t)
    tsm = smc.tsm_precond(s, a, sd)
    np.testing.assert_allclose(tsm.output(np.zeros_like(y), y), exact, rtol=1e-12)
    S = s**2 + a**2 * sd**2
    F = np.ones_like(y)
    printed = -(1 / a) * (s * F / (sd * np.sqrt(S)) + a**2 * y / S)
    corrected = -(1 / a) * (s * F / (sd * np.sqrt(S)) + a * y / S)
    np.testing.assert_allclose(tsm.output(F, y), corrected, rtol=1e-12)
    assert np.abs(tsm.output(F, y) - printed).max() > 1e-3
    edm = smc.edm_precond(s, sd, alpha=a)
    np.testing.assert_allclose(edm.output(np.zeros_like(y), y), smc.posterior(dist, proc, t, y).mean(), rtol=1e-12)


@given(dist=gaussian_mixtures(), proc=processes(), data=st.data())
def test_conversions_follow_tweedie(dist, proc, data):
    t = data.draw(times(proc))
    x = data.draw(points(dist, proc, t))
    a, s = float(proc.alpha(t)), float(proc.sigma(t))
    score = smc.exact_score(dist, proc)(x, t)
    mean = smc.posterior(dist, proc, t, x).mean()
    scale = np.abs(x).max() + np.abs(mean).max() * a + 1.0
    D = smc.denoiser_from_score(score, x, a, s)
    np.testing.assert_allclose(a * D, a * mean, atol=1e-9 * scale)       # Tweedie, up to the fast path's error
    eps_hat = smc.eps_from_score(score, s)
    np.testing.assert_allclose(s * eps_hat, x - a * mean, atol=1e-9 * scale)  # E[eps | x_t]
    np.testing.assert_allclose(smc.score_from_denoiser(D, x, a, s), score, rtol=1e-9, atol=1e-9 * scale / s**2)
    np.testing.assert_allclose(smc.score_from_eps(eps_hat, s), score, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(smc.eps_from_denoiser(D, x, a, s), eps_hat, rtol=1e-9, atol=1e-9 * scale / s)
    np.testing.assert_allclose(smc.denoiser_from_eps(eps_hat, x, a, s), D, rtol=1e-9, atol=1e-9 * scale / a)


def test_loss_spaces_are_related_by_the_weighting_factors(rng):
    # ||D - x0||^2 = sigma^4/alpha^2 ||s - L_DSI||^2 and ||eps_hat - eps||^2 = sigma^2 ||s - L_DSI||^2,
    # the factors of Weighting.score_space
    proc, t, dist = smc.VP(), 0.4, smc.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    a, s = float(proc.alpha(t)), float(proc.sigma(t))
    x0, eps, sc = rng.normal(size=(3, 5, 2))
    xt = a * x0 + s * eps
    score_err = ((sc - DSI().integrand(dist, proc.at(t), x0, xt)) ** 2).sum(-1)
    x0_err = ((smc.denoiser_from_score(sc, xt, a, s) - x0) ** 2).sum(-1)
    eps_err = ((smc.eps_from_score(sc, s) - eps) ** 2).sum(-1)
    np.testing.assert_allclose(x0_err, s**4 / a**2 * score_err, rtol=1e-12)
    np.testing.assert_allclose(eps_err, s**2 * score_err, rtol=1e-12)
    w = smc.EDMWeighting(1.0)
    np.testing.assert_allclose(w(proc, t) * x0_err, w.score_space(proc, t) * score_err, rtol=1e-12)


def test_broadcasting_and_validation():
    # per-row coefficients (N, 1) broadcast against (N, d) rows without reshaping
    sig, alp = np.array([[0.1], [1.0]]), np.array([[0.5], [0.9]])
    p = smc.tsm_precond(sig, alp, 1.0)
    assert p.c_out.shape == (2, 1) and p.output(np.zeros((2, 4)), np.ones((2, 4))).shape == (2, 4)
    np.testing.assert_allclose(p.output(np.zeros((2, 4)), np.ones((2, 4)))[:, 0], -1 / (sig**2 + alp**2)[:, 0])
    np.testing.assert_allclose(smc.denoiser_from_score(np.ones((2, 4)), np.zeros((2, 4)), alp, sig)[:, 0],
                               (sig**2 / alp)[:, 0])
    # (N,) against (N, d) would broadcast along d: refused, naming the argument
    with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
        smc.score_from_eps(np.ones((4, 4)), np.ones(4))
    with pytest.raises(ValueError, match="alpha must be a scalar or have shape"):
        smc.denoiser_from_score(np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 2)), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        smc.edm_precond(0.0)
    with pytest.raises(ValueError, match="sigma_data"):
        smc.edm_precond(1.0, sigma_data=-0.5)
    with pytest.raises(ValueError, match="alpha"):
        smc.tsm_precond(1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        smc.tsm_precond(np.nan, 0.5, 1.0)
    with pytest.raises(TypeError, match="sigma"):
        smc.edm_precond("1.0")
