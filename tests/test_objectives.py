"""Training objectives against independent derivations: TSM Eq. 6, FLAG-L1 (LCSS = DSM - const),
FLAG-L7 (the gamma-LCSS minimiser), SSM / FD-SSM (LCSS Eqs. 6-7) and FP-Diffusion Eq. 19."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate

import scoremc as smc
from scoremc.builtin import tsm_easy, tsm_hard_same_variance, tsm_unit_gaussian
from scoremc.identities import DSI, TSI
from scoremc.testing import empirical_targets, gaussian_mixtures, points, processes, times

GH = np.polynomial.hermite.hermgauss(60)


def _gh_expectation(objective, dist, proc, t, score_fn):
    """E_{x0 ~ p0, eps ~ N(0,1)} of the per-sample loss for a 1-D mixture, by Gauss-Hermite in
    (x0 | component, eps): exact for polynomials, spectrally accurate for the smooth exact score."""
    z, w = GH
    mu, var, pi = dist.means[:, 0], dist.covs, dist.weights
    x0 = mu[:, None, None] + np.sqrt(2 * var)[:, None, None] * z[None, :, None] + 0 * z[None, None, :]
    eps = np.sqrt(2) * z[None, None, :] + 0 * x0
    W = pi[:, None, None] * w[None, :, None] * w[None, None, :] / np.pi
    vals = smc.loss(objective, score_fn, dist, proc, t, x0.reshape(-1, 1), eps.reshape(-1, 1))
    return float((W.ravel() * vals).sum())


def _fisher_1d(weights, means, variances):
    """int p'(x)^2 / p(x) dx of a 1-D Gaussian mixture by adaptive quadrature (independent formulas)."""
    weights, means, variances = map(np.asarray, (weights, means, variances))

    def parts(x):
        c = weights * np.exp(-(x - means) ** 2 / (2 * variances)) / np.sqrt(2 * np.pi * variances)
        return c.sum(), (c * (means - x) / variances).sum()

    def f(x):
        p, dp = parts(x)
        return dp * dp / p if p > 1e-300 else 0.0

    lo, hi = means.min() - 12 * np.sqrt(variances.max()), means.max() + 12 * np.sqrt(variances.max())
    cuts = np.unique(np.concatenate([[lo, hi], np.clip(means, lo, hi)]))
    return sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-12, limit=400)[0] for a, b in zip(cuts[:-1], cuts[1:]))


@pytest.mark.parametrize("make", [tsm_unit_gaussian, tsm_easy, tsm_hard_same_variance], ids=["unit", "easy", "hard"])
@pytest.mark.parametrize("proc", [smc.Cosine(), smc.VP(), smc.VE()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_dsm_and_tsm_at_the_exact_score_take_the_values_of_tsm_eq_6(make, proc, t):
    # at s*: DSM = E||D||^2 - F_t = 1/sigma^2 - F_t,  TSM = F_0/alpha^2 - F_t (d = 1), F the Fisher informations
    dist = make()
    es = smc.exact_score(dist, proc)
    a, s = float(proc.alpha(t)), float(proc.sigma(t))
    m = smc.marginal(dist, proc, t)
    f0 = _fisher_1d(dist.weights, dist.means[:, 0], dist.covs)
    ft = _fisher_1d(m.weights, m.means[:, 0], m.covs)
    dsm = _gh_expectation(smc.DSM(), dist, proc, t, es)
    tsm = _gh_expectation(smc.TSM(), dist, proc, t, es)
    # tolerances relative to the terms that cancel (E||L||^2 and F_t)
    np.testing.assert_allclose(dsm, 1 / s**2 - ft, rtol=0, atol=1e-7 / s**2)
    np.testing.assert_allclose(tsm, f0 / a**2 - ft, rtol=0, atol=1e-7 * f0 / a**2)
    np.testing.assert_allclose(tsm - dsm, f0 / a**2 - 1 / s**2, rtol=0, atol=1e-7 * (f0 / a**2 + 1 / s**2))  # Eq. 6
    if make is tsm_unit_gaussian:  # TSM App. C (FLAG-T1): d a^2 / (s^2 S) and d s^2 / (a^2 S), S = a^2 + s^2
        S = a * a + s * s
        np.testing.assert_allclose([dsm, tsm], [a * a / (s * s * S), s * s / (a * a * S)], rtol=1e-10)


@given(dist=gaussian_mixtures(), proc=processes(), data=st.data())
def test_tsm_minus_dsm_does_not_depend_on_the_score(dist, proc, data):
    # TSM Eq. 6: the difference is a constant, since E[TSI - DSI | x_t] = 0 (DSI = TSI). With common
    # noise, [TSM - DSM](s* + delta) - [TSM - DSM](s*) = -2 <delta, TSI - DSI> has mean 0; the bound is
    # 5 standard errors (false-alarm rate 6e-7 under the CLT).
    t = data.draw(times(proc))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    es = smc.exact_score(dist, proc)
    n = 4000
    x0, eps = smc.sample(dist, n, rng), rng.standard_normal((n, dist.dim))

    def perturbed(x, tt):
        return es(x, tt) + 0.3 * np.tanh(x)

    diff = [smc.loss(smc.TSM(), f, dist, proc, t, x0, eps) - smc.loss(smc.DSM(), f, dist, proc, t, x0, eps)
            for f in (perturbed, es)]
    z = diff[0] - diff[1]
    assert abs(z.mean()) <= 5 * z.std() / np.sqrt(n) + 1e-12 * np.abs(z).max()


@given(dist=st.one_of(gaussian_mixtures(), empirical_targets()), proc=processes(), gamma=st.floats(-2, 3),
       data=st.data())
def test_lcss_is_half_dsm_minus_a_score_free_term(dist, proc, gamma, data):
    # FLAG-L1 per sample: gamma=1 LCSS = 1/2 DSM - ||x_t - alpha x0||^2 / (2 sigma^4) for *any* score
    t = data.draw(times(proc))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    d = dist.dim
    A, b = rng.normal(size=(d, d)), rng.normal(size=d)

    def linear(x, tt):
        return x @ A.T + b * (1 + tt[:, None])

    x0, eps = smc.sample(dist, 64, rng), rng.standard_normal((64, d))
    s = float(proc.sigma(t))
    lcss = smc.loss(smc.LCSS(), linear, dist, proc, t, x0, eps)
    half_dsm = 0.5 * smc.loss(smc.DSM(), linear, dist, proc, t, x0, eps)
    shift = (eps * eps).sum(-1) / (2 * s * s)  # ||x_t - alpha x0||^2 / (2 sigma^4)
    scale = np.abs(half_dsm).max() + shift.max()
    np.testing.assert_allclose(lcss, half_dsm - shift, rtol=0, atol=1e-12 * scale)
    # gamma variant (LCSS Eq. 21): gamma <s, u> + 1/2 ||s||^2 = 1/2 ||s + gamma u||^2 - gamma^2 ||u||^2 / 2
    u = -DSI().integrand(dist, proc.at(t), x0, float(proc.alpha(t)) * x0 + s * eps)
    sv = linear(float(proc.alpha(t)) * x0 + s * eps, np.full(64, t))
    got = smc.loss(smc.LCSS(gamma), linear, dist, proc, t, x0, eps)
    expect = 0.5 * ((sv + gamma * u) ** 2).sum(-1) - 0.5 * gamma**2 * (u * u).sum(-1)
    scale = np.abs(expect).max() + gamma**2 * (u * u).sum(-1).max()
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-12 * scale)


def test_lcss_and_dsm_have_identical_per_sample_gradients_flag_l1(rng):
    # FLAG-L1: d/dtheta LCSS = d/dtheta (1/2 DSM) sample by sample, for s_theta(x) = A x + b. Both losses
    # are quadratic in theta, so central differences in theta are exact up to round-off.
    dist, proc, t, d = tsm_easy(), smc.SubVP(), 0.3, 1
    x0, eps = smc.sample(dist, 32, rng), rng.standard_normal((32, d))
    theta0 = rng.normal(size=d * d + d)

    def losses(theta):
        A, b = theta[:d * d].reshape(d, d), theta[d * d:]
        fn = lambda x, tt: x @ A.T + b  # noqa: E731
        return (smc.loss(smc.LCSS(), fn, dist, proc, t, x0, eps),
                0.5 * smc.loss(smc.DSM(), fn, dist, proc, t, x0, eps))

    h = 1e-3
    for j in range(len(theta0)):
        e = np.zeros_like(theta0)
        e[j] = h
        (lp, dp), (lm, dm) = losses(theta0 + e), losses(theta0 - e)
        g_lcss, g_dsm = (lp - lm) / (2 * h), (dp - dm) / (2 * h)
        np.testing.assert_allclose(g_lcss, g_dsm, rtol=0, atol=1e-9 * (1 + np.abs(g_dsm).max()))
    # and the shift has expectation d / (2 sigma^2): mean of ||eps||^2 / (2 sigma^2) over 1e5 draws
    # (chi^2_1 has standard deviation sqrt(2); bound 6 standard errors)
    s = float(proc.sigma(t))
    x0, eps = smc.sample(dist, 100_000, rng), rng.standard_normal((100_000, d))
    fn = lambda x, tt: np.sin(x)  # noqa: E731
    gap = smc.loss(smc.LCSS(), fn, dist, proc, t, x0, eps) - 0.5 * smc.loss(smc.DSM(), fn, dist, proc, t, x0, eps)
    assert abs(gap.mean() * 2 * s * s + d) <= 6 * np.sqrt(2 * d / 1e5)


@given(dist=gaussian_mixtures(), proc=processes(), gamma=st.floats(0.25, 4.0), data=st.data())
def test_gamma_lcss_minimiser_is_gamma_times_the_score(dist, proc, gamma, data):
    # FLAG-L7: E[loss | x_t] is linear in x0, so evaluating at x0 = E[x0 | x_t] gives the posterior
    # expectation exactly; it equals const + 1/2 ||s - gamma s*||^2, minimised at s = gamma s*.
    t = data.draw(times(proc))
    xt = data.draw(points(dist, proc, t))
    a, s = float(proc.alpha(t)), float(proc.sigma(t))
    es = smc.exact_score(dist, proc)
    x0 = smc.posterior(dist, proc, t, xt).mean()
    eps = (xt - a * x0) / s
    delta = np.random.default_rng(0).normal(size=xt.shape)
    best = smc.loss(smc.LCSS(gamma), lambda x, tt: gamma * es(x, tt), dist, proc, t, x0, eps)
    moved = smc.loss(smc.LCSS(gamma), lambda x, tt: gamma * es(x, tt) + delta, dist, proc, t, x0, eps)
    scale = gamma * np.abs(es(xt, t)).max() * (np.abs(delta).max() + 1) + (delta**2).sum(-1).max()
    np.testing.assert_allclose(moved - best, 0.5 * (delta**2).sum(-1), rtol=0, atol=1e-8 * scale)


def _rademacher(d, n):
    """All 2^d sign vectors for n rows: E[v v^T] = I exactly over the design."""
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=d)))
    return np.broadcast_to(signs[:, None, :], (len(signs), n, d)).copy()


def _hyvarinen(es, x, t):
    """J^s_SM = tr(grad s) + 1/2 ||s||^2 (LCSS Eq. 4), from the exact Hessian."""
    s = es(x, t)
    return np.trace(es.hessian(x, t), axis1=-2, axis2=-1) + 0.5 * (s * s).sum(-1)


@given(dist=gaussian_mixtures(d=st.integers(1, 3)), proc=processes(), data=st.data())
def test_ssm_is_unbiased_for_hyvarinen_over_the_probes(dist, proc, data):
    # LCSS Eq. 6: E_v SSM = J_SM / d, exact under the full Rademacher design; also through central
    # differences for a plain callable (no Jacobian): agreement to the finite-difference error
    t = data.draw(times(proc))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    es = smc.exact_score(dist, proc)
    x0, noise = smc.sample(dist, 5, rng), rng.standard_normal((5, dist.dim))
    xt = float(proc.alpha(t)) * x0 + float(proc.sigma(t)) * noise
    probes = _rademacher(dist.dim, 5)
    got = smc.loss(smc.SSM(divergence=smc.Hutchinson(probes=probes, jvp=smc.Exact())), es, dist, proc, t, x0, noise)
    expect = _hyvarinen(es, xt, t) / dist.dim
    scale = np.abs(np.trace(es.hessian(xt, t), axis1=-2, axis2=-1)).max() + (es(xt, t) ** 2).sum(-1).max()
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-12 * scale)
    # the exact divergence gives the Hyvarinen objective itself (the limit SSM is unbiased for)
    exact = smc.loss(smc.SSM(divergence=smc.Exact()), es, dist, proc, t, x0, noise)
    np.testing.assert_allclose(exact, expect, rtol=0, atol=1e-12 * scale)
    step = 1e-5 * float(np.sqrt(proc.alpha(t) ** 2 + proc.sigma(t) ** 2))
    fd = smc.Hutchinson(probes=probes, jvp=smc.CentralDifference(step))
    plain = smc.loss(smc.SSM(divergence=fd), lambda x, tt: es(x, tt), dist, proc, t, x0, noise)
    np.testing.assert_allclose(plain, expect, rtol=0, atol=1e-5 * scale)


def test_ssm_with_random_gaussian_probes_is_unbiased(rng):
    # mean of 20000 independent probe draws against J_SM / d at each of 4 points, 5 standard errors
    dist, proc, t = smc.GaussianMixture([0.3, 0.7], [[1.0, -1.0], [-0.5, 0.5]], [[0.4, 0.9], [1.2, 0.3]]), smc.VP(), 0.2
    es = smc.exact_score(dist, proc)
    x0, noise = smc.sample(dist, 4, rng), rng.standard_normal((4, 2))
    xt = float(proc.alpha(t)) * x0 + float(proc.sigma(t)) * noise
    m = 20000  # one probe per row, rows repeated: the per-probe values of each point
    ssm = smc.SSM(divergence=smc.Hutchinson(1, "gaussian", jvp=smc.Exact()))
    vals = smc.loss(ssm, es, dist, proc, t, np.tile(x0, (m, 1)), np.tile(noise, (m, 1)), rng=rng).reshape(m, 4)
    expect = _hyvarinen(es, xt, t) / 2
    assert np.all(np.abs(vals.mean(0) - expect) <= 5 * vals.std(0) / np.sqrt(len(vals)))


def test_fd_ssm_is_unbiased_to_second_order(rng):
    # LCSS Eq. 7: E_v FD-SSM - J_SM / d = O(eps^2); exact Rademacher expectation, halving eps divides
    # the bias by ~4. A linear score has no bias at any eps.
    dist, proc, t = smc.GaussianMixture([0.5, 0.5], [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.6]), smc.Cosine(), 0.3
    es = smc.exact_score(dist, proc)
    x0, noise = smc.sample(dist, 6, rng), rng.standard_normal((6, 2))
    xt = float(proc.alpha(t)) * x0 + float(proc.sigma(t)) * noise
    target = _hyvarinen(es, xt, t) / 2
    bias = {}
    for eps in (0.2, 0.1, 0.05):
        got = smc.loss(smc.FDSSM(eps=eps, probes=smc.Hutchinson(probes=_rademacher(2, 6))), es, dist, proc, t, x0,
                       noise)
        bias[eps] = got - target
    ratio = bias[0.1] / bias[0.05]
    assert np.all((ratio > 3.7) & (ratio < 4.3)), ratio
    assert np.all(np.abs(bias[0.05]) < 0.05 * np.abs(target).max())
    A = rng.normal(size=(2, 2))
    lin = lambda x, tt: x @ A.T + 1.0  # noqa: E731
    fd = smc.loss(smc.FDSSM(eps=0.7, probes=smc.Hutchinson(probes=_rademacher(2, 6))), lin, dist, proc, t, x0, noise)
    exact = (np.trace(A) + 0.5 * ((xt @ A.T + 1.0) ** 2).sum(-1)) / 2
    np.testing.assert_allclose(fd, exact, rtol=1e-12)


def test_regression_objectives_reuse_the_identities(rng):
    dist, proc, t = smc.GaussianMixture([0.4, 0.6], [[0.0, 1.0], [1.0, -1.0]], [0.5, 0.2]), smc.VP(), 0.45
    es = smc.exact_score(dist, proc)
    x0, eps = smc.sample(dist, 50, rng), rng.standard_normal((50, 2))
    f = lambda x, tt: es(x, tt) + 0.1  # noqa: E731
    dsm = smc.loss(smc.DSM(), f, dist, proc, t, x0, eps)
    tsm = smc.loss(smc.TSM(), f, dist, proc, t, x0, eps)
    np.testing.assert_array_equal(smc.loss(smc.MixSM(1.0), f, dist, proc, t, x0, eps), dsm)
    np.testing.assert_array_equal(smc.loss(smc.MixSM(0.0), f, dist, proc, t, x0, eps), tsm)
    np.testing.assert_array_equal(smc.loss(smc.STFLoss(1), f, dist, proc, t, x0, eps), dsm)
    xt = float(proc.alpha(t)) * x0 + float(proc.sigma(t)) * eps
    np.testing.assert_allclose(tsm, ((f(xt, t) - TSI().integrand(dist, proc.at(t), x0)) ** 2).sum(-1), rtol=1e-14)
    w = smc.TSMOptimal(1.2)
    np.testing.assert_allclose(smc.loss(smc.TSM(), f, dist, proc, t, x0, eps, weighting=w), tsm * w(proc, t),
                               rtol=1e-14)
    # per-row times give the same values as one call per time
    tt = rng.choice([0.2, 0.45, 0.7], size=50)
    rows = smc.loss(smc.MixSM(smc.KappaBar()), f, dist, proc, tt, x0, eps)
    for tj in np.unique(tt):
        sel = tt == tj
        np.testing.assert_allclose(rows[sel], smc.loss(smc.MixSM(smc.KappaBar()), f, dist, proc, tj, x0[sel], eps[sel]),
                                   rtol=1e-13)


def test_stf_loss_regresses_onto_the_self_normalised_target(rng):
    # STF Eq. 5-6 written out independently: softmax over {x0, ref} of -|x_t - alpha x_i|^2 / (2 sigma^2)
    dist, proc, t = smc.Empirical(rng.normal(size=(10, 2))), smc.VE(), 0.4
    a, s = float(proc.alpha(t)), float(proc.sigma(t))
    x0, eps, ref = smc.sample(dist, 8, rng), rng.standard_normal((8, 2)), rng.normal(size=(3, 2))
    xt = a * x0 + s * eps
    batch = np.concatenate([np.broadcast_to(x0[:, None], (8, 1, 2)), np.broadcast_to(ref, (8, 3, 2))], axis=1)
    logit = -((xt[:, None] - a * batch) ** 2).sum(-1) / (2 * s * s)
    wts = np.exp(logit - logit.max(1, keepdims=True))
    wts /= wts.sum(1, keepdims=True)
    v = (wts[:, :, None] * (a * batch - xt[:, None])).sum(1) / s**2
    f = lambda x, tt: -x / (1 + s * s)  # noqa: E731
    got = smc.loss(smc.STFLoss(4), f, dist, proc, t, x0, eps, ref=ref)
    np.testing.assert_allclose(got, ((f(xt, t) - v) ** 2).sum(-1), rtol=1e-12)
    drawn = [smc.loss(smc.STFLoss(4), f, dist, proc, t, x0, eps, rng=np.random.default_rng(5)) for _ in range(2)]
    np.testing.assert_array_equal(drawn[0], drawn[1])


def _rotated(es, c0):
    """s* + c(t) R x with R the 2-D rotation generator and c(t) = c0 (1 + t)."""
    R = np.array([[0.0, -1.0], [1.0, 0.0]])
    return (lambda x, t: es(x, t) + c0 * (1 + np.asarray(t))[..., None] * (x @ R.T)), R


def test_fp_regularised_loss(rng):
    dist, proc, t = smc.GaussianMixture([0.5, 0.5], [[-1.0, -1.0], [1.0, 1.0]], [0.5, 0.5]), smc.VE(), 0.3
    es = smc.exact_score(dist, proc)
    x0, eps = smc.sample(dist, 20, rng), rng.standard_normal((20, 2))
    xt = x0 + float(proc.sigma(t)) * eps
    half_g2_dsm = 0.5 * proc.g2(t) * smc.loss(smc.DSM(), es, dist, proc, t, x0, eps)
    # alpha = beta = 0 is vanilla DSM with lambda = g^2 and FP-Diffusion's 1/2 (Eq. 19)
    np.testing.assert_allclose(smc.loss(smc.FPRegularized(alpha=0.0, beta=0.0), es, dist, proc, t, x0, eps),
                               half_g2_dsm, rtol=1e-14)
    # the exact score has zero residual; |L[s*]| = |d/dt log p_t| (finite differences of the exact logpdf)
    got = smc.loss(smc.FPRegularized(alpha=1.0, beta=0.1, m=2), es, dist, proc, t, x0, eps)
    h = 1e-5
    dlogp = (es.logpdf(xt, t + h) - es.logpdf(xt, t - h)) / (2 * h)
    np.testing.assert_allclose(got, half_g2_dsm + 0.1 * np.abs(dlogp), rtol=1e-6)
    # a rotational perturbation: residual by hand (see test_fpe_generic) enters as alpha/d^m lambda_FP ||eps||^m
    c0 = 0.05
    f, R = _rotated(es, c0)
    c, g2 = c0 * (1 + t), float(proc.g2(t))
    H, s = es.hessian(xt, t), es(xt, t)
    hand = c0 * xt @ R.T - g2 * c * (np.einsum("nij,nj->ni", H, xt @ R.T) - s @ R.T + c * xt)
    obj = smc.FPRegularized(alpha=0.3, beta=0.0, m=2, lambda_fp=smc.Likelihood())
    dsm_f = 0.5 * g2 * smc.loss(smc.DSM(), f, dist, proc, t, x0, eps)
    expect = dsm_f + 0.3 / 2**2 * g2 * (hand**2).sum(-1)
    np.testing.assert_allclose(smc.loss(obj, f, dist, proc, t, x0, eps), expect, rtol=1e-4)


def test_invalid_input_is_refused(rng):
    dist, proc = tsm_easy(), smc.Cosine()
    es = smc.exact_score(dist, proc)
    x0, eps = np.zeros((3, 1)), np.zeros((3, 1))
    with pytest.raises(TypeError, match="objective"):
        smc.loss("dsm", es, dist, proc, 0.5, x0, eps)
    with pytest.raises(TypeError, match="score_fn"):
        smc.loss(smc.DSM(), None, dist, proc, 0.5, x0, eps)
    with pytest.raises(ValueError, match="eps"):
        smc.loss(smc.DSM(), es, dist, proc, 0.5, x0, np.zeros((2, 1)))
    with pytest.raises(ValueError, match="x0"):
        smc.loss(smc.DSM(), es, dist, proc, 0.5, np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="t must"):
        smc.loss(smc.DSM(), es, dist, proc, np.array([0.5, 0.5]), x0, eps)
    with pytest.raises(ValueError, match="outside the domain"):
        smc.loss(smc.DSM(), es, dist, proc, 1.0, x0, eps)
    with pytest.raises(ValueError, match="weighting=None"):
        smc.loss(smc.FPRegularized(), es, dist, proc, 0.5, x0, eps, weighting=smc.Uniform())
    with pytest.raises(TypeError, match="weighting"):
        smc.loss(smc.DSM(), es, dist, proc, 0.5, x0, eps, weighting="song")
    with pytest.raises(TypeError, match="rng"):
        smc.loss(smc.SSM(), es, dist, proc, 0.5, x0, eps)
    with pytest.raises(TypeError, match="Empirical"):
        smc.loss(smc.TSM(), lambda x, t: x, smc.Empirical([[0.0]]), proc, 0.5, x0, eps)
    with pytest.raises(TypeError, match="w must be"):
        smc.MixSM("kappa")
    with pytest.raises(ValueError, match="law must be one of"):
        smc.Hutchinson(law="normal")
    with pytest.raises(TypeError, match="divergence must be a derivative source"):
        smc.SSM(divergence="hutchinson")
    with pytest.raises(TypeError, match="Exact\\(\\) needs"):
        smc.loss(smc.SSM(divergence=smc.Exact()), lambda x, t: -x, dist, proc, 0.5, x0, eps)
    with pytest.raises(ValueError, match="probes must have shape"):
        smc.loss(smc.SSM(divergence=smc.Hutchinson(probes=np.ones((2, 5, 1)))), es, dist, proc, 0.5, x0, eps)
    with pytest.raises(ValueError, match="gamma"):
        smc.LCSS(gamma=float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        smc.FPRegularized(alpha=-1.0)
    with pytest.raises(TypeError, match="lambda_fp"):
        smc.FPRegularized(lambda_fp="g2")
    with pytest.raises(ValueError, match="ref"):
        smc.loss(smc.STFLoss(3), es, dist, proc, 0.5, x0, eps, ref=np.zeros((5, 1)))
    with pytest.raises(TypeError, match="derivatives must be"):
        smc.FPRegularized(derivatives="fd")
    with pytest.raises(ValueError, match="must return shape"):
        smc.loss(smc.DSM(), lambda x, t: x[:, :0], dist, proc, 0.5, x0, eps)
