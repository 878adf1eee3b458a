"""Exact score, its Jacobian, divergence and time derivative against finite differences."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import scoremc as smc
from scoremc.testing import empirical_targets, gaussian_mixtures, points, processes, times

targets = st.one_of(gaussian_mixtures(), empirical_targets())
#: processes with alpha(t) != 1 (VE and EDM have alpha = 1, which hides a dropped alpha)
scaled_processes = processes().filter(lambda p: not isinstance(p, (smc.VE, smc.EDM)))
full_mixtures = gaussian_mixtures(d=st.integers(2, 4), k=st.integers(2, 4), cov="full")


def _length_scale(dist, proc, t, x=None):
    """Scale on which the score varies: the smallest std of a component of p_t, shortened to
    1/sqrt(max |H|) where the Hessian is larger (between far-apart, narrow components the
    responsibilities switch over a length sigma^2 / distance)."""
    m = smc.marginal(dist, proc, t)
    var = np.linalg.eigvalsh(m.covs) if m.cov_kind == "full" else m.covs
    ell = float(np.sqrt(np.min(var)))
    if x is not None:
        ell = min(ell, 1.0 / np.sqrt(np.abs(smc.exact_score(dist, proc).hessian(x, t)).max()))
    return ell


def _grad_fd(f, x, h):
    """5-point central difference of a scalar field f: (n, d) -> (n,), error O(h^4)."""
    d = x.shape[-1]
    out = np.empty_like(x)
    for j in range(d):
        e = np.zeros(d)
        e[j] = h
        out[:, j] = (-f(x + 2 * e) + 8 * f(x + e) - 8 * f(x - e) + f(x - 2 * e)) / (12 * h)
    return out


@given(dist=targets, proc=processes(), data=st.data())
def test_score_is_gradient_of_logpdf(dist, proc, data):
    t = data.draw(times(proc))
    x = data.draw(points(dist, proc, t))
    es = smc.exact_score(dist, proc)
    ell = _length_scale(dist, proc, t, x)
    s = es(x, t)
    fd = _grad_fd(lambda y: es.logpdf(y, t), x, 1e-3 * ell)
    # relative to the natural scale of the score, 1/ell (the score can vanish at a mode)
    scale = np.maximum(np.linalg.norm(s, axis=-1), 1.0 / ell)[:, None]
    assert np.all(np.abs(s - fd) <= 1e-6 * scale)


@given(dist=targets, proc=processes(), data=st.data())
def test_hessian_is_jacobian_of_score_and_divergence_its_trace(dist, proc, data):
    t = data.draw(times(proc))
    x = data.draw(points(dist, proc, t))
    es = smc.exact_score(dist, proc)
    ell = _length_scale(dist, proc, t, x)
    H = es.hessian(x, t)
    np.testing.assert_allclose(H, H.transpose(0, 2, 1), rtol=0, atol=1e-12 / ell ** 2)
    d = dist.dim
    for i in range(d):
        fd = _grad_fd(lambda y: es(y, t)[:, i], x, 1e-3 * ell)
        assert np.all(np.abs(H[:, i, :] - fd) <= 1e-6 / ell ** 2)
    np.testing.assert_allclose(es.divergence(x, t), np.trace(H, axis1=1, axis2=2), rtol=1e-10,
                               atol=1e-10 / ell ** 2)
    gd = _grad_fd(lambda y: es.divergence(y, t), x, 1e-3 * ell)
    assert np.all(np.abs(es.grad_divergence(x, t) - gd) <= 1e-5 / ell ** 3)


@given(dist=targets, proc=processes(), data=st.data())
def test_time_derivative_matches_finite_difference_in_t(dist, proc, data):
    t = data.draw(times(proc, 0.05, 0.95))
    x = data.draw(points(dist, proc, t))
    es = smc.exact_score(dist, proc)
    # near t = 0, sigma(t) (VP, sub-VP, cosine) and so the score vary on the scale of t itself
    h = 1e-4 * (t if isinstance(proc, smc.EDM) else min(1.0, 10 * t))
    fd = (-es(x, t + 2 * h) + 8 * es(x, t + h) - 8 * es(x, t - h) + es(x, t - 2 * h)) / (12 * h)
    dt = es.dt(x, t)
    scale = max(np.abs(fd).max(), np.abs(dt).max())
    # absolute floor for points where d/dt s vanishes (e.g. midway between two symmetric
    # components): the round-off of the difference quotient, ~ eps * |u_k| / h, |u_k| <~ 1/ell
    floor = 1e4 * np.finfo(float).eps / (_length_scale(dist, proc, t, x) * h)
    assert np.abs(dt - fd).max() <= 1e-6 * scale + floor


@given(dist=targets, proc=processes(), data=st.data())
def test_tweedie_holds_to_round_off(dist, proc, data):
    t = data.draw(times(proc))
    x = data.draw(points(dist, proc, t))
    a, s2 = proc.alpha(t), proc.sigma(t) ** 2
    for method in ("fast", "reference"):
        post = smc.posterior(dist, proc, t, x, method=method)
        lhs = a * post.mean()
        rhs = x + s2 * smc.exact_score(dist, proc, method=method)(x, t)
        scale = np.abs(x).max() + np.abs(lhs).max() + 1.0
        assert np.abs(lhs - rhs).max() <= 1e-12 * scale
    # second order, every covariance kind: alpha^2 Cov[x0 | x_t] = sigma^2 (I + sigma^2 H)
    H = smc.exact_score(dist, proc).hessian(x, t)
    second = s2 * (np.eye(x.shape[-1]) + s2 * H)
    cov = smc.posterior(dist, proc, t, x).cov()
    np.testing.assert_allclose(a * a * cov, second, rtol=0, atol=1e-10 * (np.abs(second).max() + s2))


@given(dist=full_mixtures, proc=scaled_processes, data=st.data())
def test_tweedie_holds_for_full_covariances_with_alpha_below_one(dist, proc, data):
    # alpha E[x0 | x_t] = x_t + sigma^2 s at per-row times, both paths; and the second-order identity
    # alpha^2 Cov[x0 | x_t] = sigma^2 (I + sigma^2 H) (Tweedie; reference/derive.py derives both)
    t = data.draw(times(proc))
    x = data.draw(points(dist, proc, t, n=st.integers(2, 6)))
    a, s2 = proc.alpha(t), proc.sigma(t) ** 2
    assert a < 1.0
    for method in ("fast", "reference"):
        post = smc.posterior(dist, proc, t, x, method=method)
        rhs = x + s2 * smc.exact_score(dist, proc, method=method)(x, t)
        scale = np.abs(x).max() + np.abs(rhs).max() + 1.0
        assert np.abs(a * post.mean() - rhs).max() <= 1e-12 * scale
    H = smc.exact_score(dist, proc).hessian(x, t)
    cov = smc.posterior(dist, proc, t, x).cov()
    second = s2 * (np.eye(dist.dim) + s2 * H)
    np.testing.assert_allclose(a * a * cov, second, rtol=0, atol=1e-10 * (np.abs(second).max() + s2))
    # per-row times: each row against a call at its own time
    ts = np.linspace(0.2, 0.8, len(x))
    rows = smc.exact_score(dist, proc)(x, ts)
    for i, ti in enumerate(ts):
        np.testing.assert_allclose(rows[i], smc.exact_score(dist, proc)(x[i:i + 1], ti)[0], rtol=1e-12, atol=1e-12)


@given(dist=full_mixtures, proc=scaled_processes, data=st.data())
def test_fast_and_reference_paths_agree_for_full_covariances_with_alpha_below_one(dist, proc, data):
    t = data.draw(times(proc))
    x = data.draw(points(dist, proc, t, n=st.integers(1, 40)))
    es_fast, es_ref = smc.exact_score(dist, proc), smc.exact_score(dist, proc, method="reference")
    ell = _length_scale(dist, proc, t)
    np.testing.assert_allclose(es_fast.logpdf(x, t), es_ref.logpdf(x, t), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(es_fast(x, t), es_ref(x, t), rtol=1e-10, atol=1e-11 / ell)
    pf, pr = smc.posterior(dist, proc, t, x), smc.posterior(dist, proc, t, x, method="reference")
    np.testing.assert_allclose(pf.weights, pr.weights, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(pf.mean(), pr.mean(), rtol=1e-10, atol=1e-11)


@given(dist=targets, proc=processes(), data=st.data())
def test_fast_and_reference_paths_agree(dist, proc, data):
    t = data.draw(times(proc))
    x = data.draw(points(dist, proc, t, n=st.integers(1, 40)))
    m = smc.marginal(dist, proc, t)
    ell = _length_scale(dist, proc, t)
    np.testing.assert_allclose(smc.logpdf(m, x), smc.logpdf(m, x, method="reference"), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(smc.score(m, x), smc.score(m, x, method="reference"), rtol=1e-10, atol=1e-11 / ell)
    pf = smc.posterior(dist, proc, t, x)
    pn = smc.posterior(dist, proc, t, x, method="reference")
    np.testing.assert_allclose(pf.weights, pn.weights, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(pf.mean(), pn.mean(), rtol=1e-10, atol=1e-11)


def test_batch_shapes_and_per_row_times(rng):
    gm = smc.GaussianMixture([0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], [0.5, 1.5])
    es = smc.exact_score(gm, smc.VP())
    x = rng.normal(size=(4, 3, 2))
    t = np.linspace(0.1, 0.9, 3)  # broadcasts against the (4, 3) batch
    s = es(x, t)
    assert s.shape == (4, 3, 2)
    for j, tj in enumerate(t):
        np.testing.assert_allclose(s[:, j], es(x[:, j], tj), rtol=1e-14)
    assert es.logpdf(x, t).shape == (4, 3) and es.hessian(x, 0.5).shape == (4, 3, 2, 2)
    assert smc.score(gm, x[0, 0]).shape == (2,)


def test_single_gaussian_closed_form():
    # one component: s = (alpha mu - x) / (alpha^2 lam + sigma^2)
    gm = smc.GaussianMixture([1.0], [[1.0, -2.0, 0.5]], [[0.3, 2.0, 1.1]])
    proc, t = smc.Cosine(), 0.4
    x = np.array([[0.2, 0.1, -0.3]])
    a, s = proc.alpha(t), proc.sigma(t)
    expect = (a * gm.means[0] - x) / (a * a * gm.covs[0] + s * s)
    np.testing.assert_allclose(smc.exact_score(gm, proc)(x, t), expect, rtol=1e-14)


def test_float32_input_is_accepted_and_computed_in_float64():
    gm = smc.GaussianMixture(np.array([0.5, 0.5], np.float32), np.zeros((2, 2), np.float32),
                             np.array([1.0, 2.0], np.float32))
    s = smc.score(gm, np.ones((3, 2), np.float32))
    assert s.dtype == np.float64


@given(dist=gaussian_mixtures())
def test_mixture_covariance_is_the_law_of_total_covariance(dist):
    # sum_k w_k (C_k + mu_k mu_k^T) - mu mu^T with the dense C_k, against cov() (which keeps iso/diag
    # components diagonal and never forms the (K, d, d) covariances)
    C = dist.covs
    if dist.cov_kind == "iso":
        C = C[:, None, None] * np.eye(dist.dim)
    elif dist.cov_kind == "diag":
        C = C[:, :, None] * np.eye(dist.dim)
    mu = dist.weights @ dist.means
    second = np.einsum("k,kij->ij", dist.weights, C + dist.means[:, :, None] * dist.means[:, None, :])
    expected = second - np.outer(mu, mu)
    np.testing.assert_allclose(dist.cov(), expected, rtol=0, atol=1e-11 * (np.abs(second).max() + 1))
