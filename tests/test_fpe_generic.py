"""The score-FPE estimator for arbitrary callables (FP-Diffusion §5, App. C; FLAG-F2), conservativity
(FP-Diffusion §6.2) and the r_FP / r_DSM-like diagnostics (§3.1)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import scoremc as smc
from scoremc.derivatives import draw_probes
from scoremc.fpe import H_D, H_S, time_derivative
from scoremc.testing import gaussian_mixtures, points, processes, times

R2 = np.array([[0.0, -1.0], [1.0, 0.0]])
GM2 = smc.GaussianMixture([0.5, 0.5], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0])  # FP-Diffusion §6.1
GM2_FULL = smc.GaussianMixture([0.4, 0.6], [[1.0, -1.0], [-0.5, 0.5]],
                               [[[0.5, 0.3], [0.3, 0.4]], [[1.0, -0.6], [-0.6, 0.9]]])


def _polynomial_in_t(coefs):
    """s(x, t) = x * sum_k coefs[k] t^k (vectorised over rows)."""
    def fn(x, t):
        return x * np.polyval(coefs[::-1], np.asarray(t))[:, None]
    return fn


@pytest.mark.parametrize("proc,t,kind", [(smc.VE(), 0.5, "central"), (smc.VE(), 1e-5, "forward"),
                                         (smc.VE(), 1.0, "backward"), (smc.Cosine(), 0.9996, "backward"),
                                         (smc.EDM(), 1e-4, "forward"), (smc.VP(), 0.3, "central")])
def test_stencil_is_exact_for_quadratics_and_has_the_stated_cubic_error(proc, t, kind):
    # FP-Diffusion Lemma C.1: exact for quadratics; for f = t^3 (f''' = 6) the
    # error is h_s h_d (central), -2 h_d^2 (forward one-sided), -2 h_s^2 (backward one-sided)
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    quad = time_derivative(_polynomial_in_t([0.3, -1.2, 2.5]), proc, x, t)
    np.testing.assert_allclose(quad, x * (-1.2 + 5.0 * t), rtol=0, atol=1e-9 * np.abs(x).max())
    cubic = time_derivative(_polynomial_in_t([0.0, 0.0, 0.0, 1.0]), proc, x, t)
    err = {"central": H_S * H_D, "forward": -2 * H_D**2, "backward": -2 * H_S**2}[kind]
    np.testing.assert_allclose(cubic - x * 3 * t * t, x * err, rtol=1e-5, atol=1e-12)


def test_stencil_on_sin_matches_the_predicted_error():
    # FP-Diffusion App. C stencil: on sin(3t) at t = 0.4 the error is -8.16e-7, predicted h_s h_d f''' / 6 = -8.15e-7
    fn = lambda x, t: x * np.sin(3 * np.asarray(t))[:, None]  # noqa: E731
    got = time_derivative(fn, smc.VE(), np.ones((1, 1)), 0.4)[0, 0] - 3 * np.cos(1.2)
    np.testing.assert_allclose(got, H_S * H_D / 6 * (-27 * np.cos(1.2)), rtol=0.01)
    np.testing.assert_allclose(got, -8.16e-7, rtol=0.01)


def _noised_points(dist, proc, t, n, rng):
    return float(proc.alpha(t)) * smc.sample(dist, n, rng) + float(proc.sigma(t)) * rng.standard_normal((n, dist.dim))


@pytest.mark.parametrize("proc", smc.PROCESSES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("dist", [GM2, GM2_FULL], ids=["fp-gmm", "full"])
@pytest.mark.parametrize("div", ["fd", "exact", "jacobian", "hutchinson"])
def test_generic_residual_of_the_exact_score_is_only_the_stencil_error(proc, dist, div, rng):
    # treating s* as a black box: eps = (stencil - exact) d/dt s + (spatial finite-difference error), the
    # latter ~1e-8 relative; the whole residual is within the stencil's h_s h_d s''' / 6
    t = 0.3
    es = smc.exact_score(dist, proc)
    x = _noised_points(dist, proc, t, 16, rng)
    black_box = lambda y, tt: es(y, tt)  # noqa: E731
    # Hutchinson over the full Rademacher design {+-1}^2: (1/4) sum v v^T = I, so its average is the exact
    # trace and the residual must match as tightly (its unbiasedness for random probes is tested below)
    design = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    opts = {"fd": {}, "exact": dict(derivatives=smc.Divergence(es.divergence)),
            "jacobian": dict(derivatives=smc.Jacobian(es.hessian)),
            "hutchinson": dict(derivatives=smc.Hutchinson(probes=np.broadcast_to(design[:, None, :], (4,) + x.shape)))}[div]
    res = smc.fpe_residual(black_box, proc, x, t, **opts)
    stencil_error = time_derivative(black_box, proc, x, t) - es.dt(x, t)
    grad_L = smc.fpe.fpe_operator_gradient(es, proc, x, t)
    scale = max(np.abs(es.dt(x, t)).max(), np.abs(grad_L).max())
    np.testing.assert_allclose(res, stencil_error, rtol=0, atol=2e-7 * scale)
    assert np.abs(res).max() <= 1e-4 * scale
    # L[s] to the divergence's finite-difference error, relative to the terms of L
    sx = es(x, t)
    terms = 0.5 * float(proc.g2(t)) * (np.abs(es.divergence(x, t)) + (sx * sx).sum(-1)) \
        + abs(float(proc.drift_coef(t))) * (np.abs((x * sx).sum(-1)) + 2)
    np.testing.assert_allclose(smc.fpe_operator(black_box, proc, x, t, **opts), smc.fpe_operator(es, proc, x, t),
                               rtol=0, atol=1e-7 * terms.max())


@given(dist=gaussian_mixtures(d=2), proc=processes(), c0=st.floats(0.01, 0.5), data=st.data())
def test_rotational_perturbation_has_the_hand_computed_residual_operator_and_curl(dist, proc, c0, data):
    # s~ = s* + c(t) R x, c(t) = c0 (1 + t), R antisymmetric: div(Rx) = 0, <x, Rx> = 0, |Rx| = |x|, so
    #   L[s~] = L[s*] + g^2 c <s*, R x> + 1/2 g^2 c^2 |x|^2
    #   eps[s~] = eps[s*] + c0 R x - g^2 c (H R x - R s*) - g^2 c^2 x          (H = grad s*, symmetric)
    # and curl s~ = 2 c(t), ||(J - J^T)/2||_F = sqrt(2) |c| (curl s* = 0).
    t = data.draw(times(proc))
    x = data.draw(points(dist, proc, t))
    es = smc.exact_score(dist, proc)

    def s_tilde(y, tt):
        return es(y, tt) + c0 * (1 + np.asarray(tt))[..., None] * (y @ R2.T)

    c, g2 = c0 * (1 + t), float(proc.g2(t))
    H, s = es.hessian(x, t), es(x, t)
    hand = c0 * x @ R2.T - g2 * c * (np.einsum("nij,nj->ni", H, x @ R2.T) - s @ R2.T + c * x)
    # one level of central differences (exact divergence), step well below the length scale sigma^2 / distance
    opts = dict(derivatives=smc.Divergence(lambda y, tt: es.divergence(y, tt), step=1e-5))
    generic = smc.fpe_residual(s_tilde, proc, x, t, **opts)
    baseline = smc.fpe_residual(lambda y, tt: es(y, tt), proc, x, t, **opts)
    # natural units of grad L (they stay O(1) as x -> 0, where the finite differences' round-off lives)
    scale = np.abs(hand).max() + np.abs(smc.fpe.fpe_operator_gradient(es, proc, x, t)).max() \
        + np.abs(es.dt(x, t)).max() + g2 * np.abs(H).max() + abs(float(proc.drift_coef(t)))
    np.testing.assert_allclose(generic - baseline, hand, rtol=0, atol=1e-6 * scale)
    L_hand = smc.fpe_operator(es, proc, x, t) + g2 * c * (s * (x @ R2.T)).sum(-1) + 0.5 * g2 * c * c * (x * x).sum(-1)
    np.testing.assert_allclose(smc.fpe_operator(s_tilde, proc, x, t, derivatives=smc.CentralDifference(1e-5)),
                               L_hand, rtol=0,
                               atol=1e-7 * (np.abs(L_hand).max() + g2 * np.abs(H).max()))
    jac = lambda y, tt: es.hessian(y, tt) + c0 * (1 + np.asarray(tt))[..., None, None] * R2  # noqa: E731
    np.testing.assert_allclose(smc.curl(s_tilde, x, t, derivatives=smc.Jacobian(jac)), 2 * c, rtol=1e-10)
    # central differences with a step far below the score's length scale (sigma^2 / distance between modes)
    np.testing.assert_allclose(smc.curl(s_tilde, x, t, derivatives=smc.CentralDifference(1e-6)), 2 * c, rtol=0,
                               atol=1e-6 * (np.abs(H).max() + c) + 1e-9 * np.abs(s).max())
    np.testing.assert_allclose(smc.antisymmetric_norm(s_tilde, x, t, derivatives=smc.Jacobian(jac)), np.sqrt(2) * c,
                               rtol=1e-10)
    assert np.abs(smc.curl(es, x, t)).max() <= 1e-12 * np.abs(H).max()


def test_antisymmetric_norm_in_three_dimensions(rng):
    dist = smc.GaussianMixture([0.2, 0.8], [[0.0, 1.0, 0.0], [1.0, 0.0, -1.0]], [0.5, 1.5])
    proc, t = smc.VP(), 0.4
    es = smc.exact_score(dist, proc)
    W = np.array([[0.0, -0.3, 0.2], [0.3, 0.0, -0.1], [-0.2, 0.1, 0.0]])  # antisymmetric
    x = _noised_points(dist, proc, t, 10, rng)
    f = lambda y, tt: es(y, tt) + y @ W.T  # noqa: E731
    np.testing.assert_allclose(smc.antisymmetric_norm(f, x, t, proc=proc), np.sqrt((W * W).sum()), rtol=1e-6)
    assert smc.antisymmetric_norm(es, x, t).max() <= 1e-12 * np.abs(es.hessian(x, t)).max()
    with pytest.raises(ValueError, match="d = 2"):
        smc.curl(es, x, t)


@pytest.mark.parametrize("law", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased_with_the_stated_variance(law):
    # Hutchinson (FP-Diffusion §5; LCSS §2.1): v^T A v has mean tr A and variance 2 ||sym A||_F^2 (Gaussian)
    # or 2 (||sym A||_F^2 - sum_i A_ii^2) (Rademacher). 2e5 single-probe estimates; the mean is checked at
    # 5 standard errors, the variance to 3% (its standard error here is < 0.6%).
    rng = np.random.default_rng(3)
    A = np.array([[1.0, 0.4, -0.3], [0.0, -2.0, 0.5], [0.7, 0.1, 0.5]])
    n = 200_000
    x = rng.normal(size=(n, 3))
    probes = draw_probes(rng, 1, x.shape, law)
    source = smc.Hutchinson(probes=probes, jvp=smc.CentralDifference(1e-3))
    est = source.divergence(lambda y, tt: y @ A.T, x, np.zeros(n))
    sym = 0.5 * (A + A.T)
    var = 2 * (sym**2).sum() - (2 * (np.diag(A) ** 2).sum() if law == "rademacher" else 0.0)
    assert abs(est.mean() - np.trace(A)) <= 5 * np.sqrt(var / n)
    np.testing.assert_allclose(est.var(), var, rtol=0.03)


def test_diagnostics(rng):
    proc, t = smc.VE(), 0.3
    es = smc.exact_score(GM2, proc)
    dt_scale = np.abs(es.dt(_noised_points(GM2, proc, t, 64, rng), t)).max()
    assert smc.r_fp(es, GM2, proc, t, n=64, rng=rng) <= 1e-9 * dt_scale
    c0 = 0.1
    f = lambda y, tt: es(y, tt) + c0 * (1 + np.asarray(tt))[..., None] * (y @ R2.T)  # noqa: E731
    # r_FP of the perturbed score against the hand residual on the same draws
    x = _noised_points(GM2, proc, t, 64, np.random.default_rng(9))
    c, g2 = c0 * (1 + t), float(proc.g2(t))
    hand = c0 * x @ R2.T - g2 * c * (np.einsum("nij,nj->ni", es.hessian(x, t), x @ R2.T) - es(x, t) @ R2.T + c * x)
    got = smc.r_fp(f, GM2, proc, t, n=64, rng=np.random.default_rng(9), derivatives=smc.Divergence(es.divergence))
    np.testing.assert_allclose(got, np.linalg.norm(hand, axis=1).mean() / 2, rtol=1e-4)
    # r_DSM-like at the exact score, unit Gaussian in 1-D: s* - L_DSI ~ N(0, V), V = alpha^2 / (sigma^2 S),
    # so E|.| = sqrt(2 V / pi); 20000 draws, 5 standard errors (sd^2 = V (1 - 2/pi))
    unit, cos = smc.GaussianMixture([1.0], [[0.0]], [1.0]), smc.Cosine()
    a, s = float(cos.alpha(0.4)), float(cos.sigma(0.4))
    V = a * a / (s * s * (a * a + s * s))
    got = smc.r_dsm_like(smc.exact_score(unit, cos), unit, cos, 0.4, n=20000, rng=rng)
    assert abs(got - np.sqrt(2 * V / np.pi)) <= 5 * np.sqrt(V * (1 - 2 / np.pi) / 20000)
    ds = smc.fpe_diagnostics(f, GM2, proc, [0.2, 0.5], n=32, rng=rng, derivatives=smc.Divergence(es.divergence))
    assert set(ds.data_vars) == {"r_fp", "r_dsm_like", "antisym_norm", "curl_ms"}
    np.testing.assert_allclose(ds.curl_ms, (2 * c0 * (1 + ds.t)) ** 2, rtol=1e-5)
    np.testing.assert_allclose(ds.antisym_norm, np.sqrt(2) * c0 * (1 + ds.t), rtol=1e-5)
    exact_ds = smc.fpe_diagnostics(es, GM2, proc, [0.2, 0.5], n=32, rng=rng)
    assert (exact_ds.curl_ms <= 1e-20).all() and (exact_ds.r_fp <= 1e-8).all()


def test_invalid_input_is_refused(rng):
    proc, x = smc.VE(), np.zeros((3, 2))
    f = lambda y, t: -y  # noqa: E731
    with pytest.raises(TypeError, match="unexpected keyword"):
        smc.fpe_residual(f, proc, x, 0.5, h=1e-3)
    with pytest.raises(TypeError, match="score_fn"):
        smc.fpe_operator(np.zeros(2), proc, x, 0.5)
    with pytest.raises(ValueError, match="probes"):
        smc.fpe_operator(f, proc, x, 0.5, derivatives=smc.Hutchinson(probes=np.ones((1, 2, 2))))
    with pytest.raises(TypeError, match="rng"):
        smc.fpe_operator(f, proc, x, 0.5, derivatives=smc.Hutchinson(1))
    with pytest.raises(ValueError, match="does not fit"):
        smc.fpe_residual(f, proc, x, 0.5, h_s=0.6, h_d=0.6)
    with pytest.raises(ValueError, match="step must be positive"):
        smc.CentralDifference(0.0)
    with pytest.raises(ValueError, match="outside the domain"):
        smc.fpe_residual(f, proc, x, 1.5)
    with pytest.raises(TypeError, match="derivatives must be"):
        smc.fpe_operator(f, proc, x, 0.5, derivatives=3.0)
    with pytest.raises(TypeError, match="Divergence needs a callable"):
        smc.Divergence(3.0)
    with pytest.raises(TypeError, match="gives no Jacobian"):
        smc.curl(f, x, 0.5, derivatives=smc.Divergence(lambda y, t: 0 * y[:, 0]))
    with pytest.raises(TypeError, match="Autograd\\(\\) differentiates torch tensors"):
        smc.fpe_operator(f, proc, x, 0.5, derivatives=smc.Autograd())
    with pytest.raises(ValueError, match="must return shape"):
        smc.fpe_operator(lambda y, t: y[:, :1], proc, x, 0.5)


def test_central_difference_along_probes_has_the_documented_step():
    # CentralDifference().vjv steps h / sqrt(d) along unit-scale probes v (displacement ~ h). For the
    # cubic field s(x) = x^3 (elementwise) the central difference of J v is exact up to
    # h_eff^2 v^3, so v^T J v errs by exactly h_eff^2 sum_i v_i^4 with h_eff = h / sqrt(d)
    rng = np.random.default_rng(5)
    d, h = 4, 1e-2
    x, v = rng.normal(size=(3, d)), rng.normal(size=(2, 3, d))
    got = smc.CentralDifference(h).vjv(lambda y, t: y**3, x, np.zeros(3), v)
    exact = (v * 3 * x**2 * v).sum(-1)
    np.testing.assert_allclose(got - exact, (h * h / d) * (v**4).sum(-1), rtol=1e-6)
