"""LocalSTF (scoremc/local_stf.py): the expectation over every reference batch, enumerated with probabilities
derived here from a brute-force neighbour graph, is the exact score (and is not without the importance
correction); the sampler draws that law (chi^2); Monte Carlo estimates are unbiased; the exact n -> inf floor;
the variance against plain STF; torch against NumPy; validation."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import scoremc as smc
from scoremc.local_stf import LocalSTF, LocalSTFLoss
from scoremc.testing import assert_mean_matches, empirical_targets, points, processes, times


def _setup(M=7, d=2, t=0.45, rows=3, seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.normal(size=(M, d))
    dist, proc = smc.Empirical(Y), smc.VE()
    xt = smc.noised_sample(dist, proc, t, rows, rng)[1]
    return Y, dist, proc, t, xt


def _proposal(neighbors, M, mix):
    """q[c, j] = (1 - mix) 1[j in N(c)] / k + mix / M and r[i, c] proportional to q[c, i] (p0 uniform)."""
    k = neighbors.shape[1]
    q = np.full((M, M), mix / M)
    for c in range(M):
        q[c, neighbors[c]] += (1.0 - mix) / k
    return q, q.T / q.T.sum(1, keepdims=True)


def _enumerate(ident, dist, proc, t, x, neighbors, importance=True):
    """E[v | x_t] over every (x_1, c, x_2..x_n) with the probabilities pi(x_1) r(c|x_1) prod q(x_j|c): v from the
    library (``batch=``); ``importance=False`` recomputes v with the kernel weights only (the planted bug)."""
    Y, M, n = dist.points, dist.n_components, ident.n_ref
    q, r = _proposal(neighbors, M, ident.mix)
    pi = smc.posterior(dist, proc, t, x[None]).weights[0]
    combos = np.array(list(itertools.product(range(M), repeat=n + 1)))  # columns: x_1, c, x_2..x_n
    prob = pi[combos[:, 0]] * r[combos[:, 0], combos[:, 1]] * np.prod(q[combos[:, 1:2], combos[:, 2:]], axis=1)
    batch = np.concatenate([combos[:, :1], combos[:, 2:]], axis=1)
    xt = np.broadcast_to(x, (len(batch), len(x)))
    coef = proc.at(np.float64(t))
    if importance:
        v = ident.integrand(dist, coef, Y[batch[:, 0]], xt, batch=batch)
    else:
        v = smc.stf_target(xt, coef.sigma, Y[batch], coef.alpha)
    return prob.sum(), prob @ v


def _brute_knn(Y, k):
    d2 = ((Y[:, None] - Y[None]) ** 2).sum(-1)
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("mix", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("n_ref", [2, 3])
def test_expectation_over_every_batch_is_the_score(n_ref, mix):
    # the theorem of the module docstring, exactly: enumeration of all M^(n+1) (x_1, c, others) with the
    # probabilities of a brute-force graph, against the exact score; the planted bug (no p0/qbar) is off by O(1)
    Y, dist, proc, t, xt = _setup()
    ident = LocalSTF(n_ref, k_neighbors=3, mix=mix)
    nb = _brute_knn(Y, 3)  # points in general position: the 3-NN sets are unique
    assert [set(r) for r in ident.graph(dist).neighbors] == [set(r) for r in nb]
    s = smc.exact_score(dist, proc)(xt, t)
    for i, x in enumerate(xt):
        total, mean = _enumerate(ident, dist, proc, t, x, nb)
        assert total == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(mean, s[i], rtol=1e-10, atol=1e-10 * np.abs(s[i]).max())
    if mix < 1.0:  # without the importance correction the expectation is not the score
        worst = max(np.abs(_enumerate(ident, dist, proc, t, x, nb, importance=False)[1] - s[i]).max()
                    / np.abs(s[i]).max() for i, x in enumerate(xt))
        assert worst > 1e-3


@settings(max_examples=20)
@given(dist=empirical_targets(d=st.integers(1, 3), k=st.integers(1, 6)), data=st.data())
def test_unbiased_on_random_data_sets(dist, data):
    # any data set (duplicates included: any fixed graph holding each point's own index), any k, mix, process
    M = dist.n_components
    ident = LocalSTF(2, k_neighbors=data.draw(st.integers(1, M)), mix=data.draw(st.sampled_from([0.0, 0.5, 1.0])))
    proc = data.draw(processes())
    t = data.draw(times(proc, 0.2, 0.9))
    x = data.draw(points(dist, proc, t, n=1))[0]
    nb = ident.graph(dist).neighbors
    assert all(c in row for c, row in enumerate(nb))
    s = smc.exact_score(dist, proc)(x[None], t)[0]
    total, mean = _enumerate(ident, dist, proc, t, x, nb)
    assert total == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(mean, s, rtol=1e-8, atol=1e-8 * max(1.0, np.abs(s).max()))


@pytest.mark.parametrize("mix", [0.0, 0.4])
def test_reference_batch_has_the_proposal_law(mix):
    # joint law of (x_2, x_3) given x_1 = y_i is sum_c r(c|i) q(.|c) q(.|c): chi^2 at level 1e-4
    Y, dist, *_ = _setup()
    ident, i, m = LocalSTF(3, 3, mix), 2, 40_000
    q, r = _proposal(_brute_knn(Y, 3), len(Y), mix)
    expected = np.einsum("c,cj,ck->jk", r[i], q, q).ravel() * m
    idx = ident.reference_batch(dist, np.repeat(Y[i:i + 1], m, axis=0), np.random.default_rng(3))
    assert idx.shape == (m, 3) and (idx[:, 0] == i).all()
    counts = np.bincount(idx[:, 1] * len(Y) + idx[:, 2], minlength=len(Y) ** 2)
    assert counts[expected == 0].sum() == 0
    keep = expected > 0
    stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert stat < stats.chi2.isf(1e-4, keep.sum() - 1)


def test_x1_index_is_uniform_among_duplicates():
    Y = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [3.0, -1.0]])
    dist = smc.Empirical(Y)
    idx = LocalSTF(2, 2).reference_batch(dist, np.zeros((20_000, 2)), np.random.default_rng(0))
    first = idx[:, 0]
    assert set(np.unique(first)) == {0, 1}
    assert stats.binomtest(int((first == 0).sum()), len(first)).pvalue > 1e-4


def test_monte_carlo_estimates_are_unbiased():
    # end to end through smc.estimate's draws (posterior draw, lookup, proposal, weights): chi^2 test of the mean
    # of 20000 draws per row at family-wise level 1e-4 (Bonferroni over 3 identities x 3 rows). Checked over 50
    # seeds when written: the largest statistic (21.98) is below this bound (22.8); one of the 450 row tests
    # exceeded the 1e-3 bound, as heavy-tailed draws make the chi^2 test with a sample covariance anticonservative
    Y, dist, proc, t, xt = _setup(M=9, t=0.5)
    s = smc.exact_score(dist, proc)(xt, t)
    for ident in (LocalSTF(4, 3), LocalSTF(4, 3, 0.3), LocalSTF(16, 5)):
        draws = smc.integrand_samples(ident, dist, proc, t, xt, n=20_000, rng=np.random.default_rng(7))
        for i in range(len(xt)):
            assert_mean_matches(draws[:, i], s[i], np.cov(draws[:, i].T), 1e-4 / 9, f"{ident.name}, row {i}")


def test_special_cases():
    Y, dist, proc, t, xt = _setup(M=6)
    coef = proc.at(np.float64(t))
    x0 = smc.posterior(dist, proc, t, xt).sample(5, np.random.default_rng(0))
    # n_ref = 1 is DSI
    np.testing.assert_array_equal(LocalSTF(1, 2).integrand(dist, coef, x0, xt), smc.DSI().integrand(dist, coef, x0, xt))
    # k = M or mix = 1: constant importance weights, so v on a given batch is plain STF's target on it
    for ident in (LocalSTF(4, 6), LocalSTF(4, 2, 1.0)):
        assert np.ptp(ident.log_rho(dist)) < 1e-12
        batch = ident.reference_batch(dist, x0, np.random.default_rng(1))
        np.testing.assert_allclose(ident.integrand(dist, coef, x0, xt, batch=batch),
                                   smc.stf_target(np.broadcast_to(xt, x0.shape), coef.sigma, Y[batch], coef.alpha),
                                   rtol=1e-12, atol=1e-12)


def test_variance_floor_is_the_exact_large_n_limit():
    # against sum_c rho(c) |E_{pi_c} g - s|^2 enumerated here, and the sample variance of LocalSTF(3000)
    Y, dist, proc, t, xt = _setup(M=10, t=0.6)
    post = smc.posterior(dist, proc, t, xt)
    a, sg = post.alpha, post.sigma
    for mix in (0.0, 0.3):
        ident = LocalSTF(3000, 3, mix)
        q, _ = _proposal(ident.graph(dist).neighbors, len(Y), mix)
        qbar = q.mean(0)
        floor = []
        for r, pi in enumerate(post.weights):
            s = (a * pi @ Y - xt[r]) / sg**2
            tilt = pi[None] * q / qbar  # row c: pi_c up to normalisation, sum = M rho(c)
            mc = (a * (tilt @ Y) / tilt.sum(1, keepdims=True) - xt[r]) / sg**2
            floor.append((tilt.sum(1) / len(Y) * ((mc - s) ** 2).sum(1)).sum())
        np.testing.assert_allclose(ident.variance_floor(post), floor, rtol=1e-10)
        draws = smc.integrand_samples(ident, dist, proc, t, xt, n=400, rng=np.random.default_rng(2))
        np.testing.assert_allclose(draws.var(0, ddof=1).sum(-1), floor, rtol=0.25)  # the 1/n term and MC error
    assert np.allclose(LocalSTF(3, 3, 1.0).variance_floor(post), 0.0, atol=1e-20)


def test_variance_against_plain_stf_where_the_posterior_is_local():
    # the computed claim of the experiment at one (t, n): on the clusters data set at t = 0.55 (sigma ~ 1.1, the
    # posterior spread over a few neighbours) LocalSTF(16, k=32) has a lower V than STF(16) by 3 s.e.
    from scoremc.experiments.local_stf import clusters

    ids = [smc.STF(16), LocalSTF(16, 32)]
    ds = smc.variance(ids, {"clusters": clusters()}, proc := smc.VE(), [0.55], n_outer=96, n_inner=8,
                      f_divergence=False, seed=1).sel(target="clusters", t=0.55)
    v, se = ds["V"].values, ds["V_se"].values
    assert v[1] + 3 * np.hypot(*se) < v[0], (v, se)
    assert (np.abs(ds["bias_sq"].values) <= 4 * ds["bias_sq_se"].values).all()
    assert proc.sigma(0.55) == pytest.approx(1.08, rel=0.01)


def test_torch_matches_numpy_and_trains():
    torch = pytest.importorskip("torch")
    Y, dist, proc, t, xt = _setup(M=8, rows=5)
    ident = LocalSTF(5, 3, 0.2)
    x0 = Y[[0, 3, 3, 7, 1]]
    batch = ident.reference_batch(dist, x0, np.random.default_rng(0))
    coef = proc.at(np.float64(t))
    ref = ident.integrand(dist, coef, x0, xt, batch=batch)
    tcoef = proc.at(torch.tensor(t, dtype=torch.float64))
    got = ident.integrand(dist, tcoef, torch.tensor(x0), torch.tensor(xt), batch=torch.tensor(batch))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(0)
    tb = ident.reference_batch(dist, torch.tensor(x0, dtype=torch.float32), gen)
    assert tb.dtype == torch.int64 and (tb[:, 0] == torch.tensor([0, 3, 3, 7, 1])).all()
    net = torch.nn.Linear(2, 2, dtype=torch.float32)
    x0t = torch.tensor(Y[[1, 2, 5, 6]], dtype=torch.float32)
    out = smc.loss(LocalSTFLoss(4, 3), lambda x, tt: net(x), dist, proc, torch.full((4,), 0.5), x0t,
                   torch.randn(4, 2, generator=gen), rng=gen)
    assert out.dtype == torch.float32 and out.shape == (4,) and torch.isfinite(out).all()
    out.sum().backward()
    assert net.weight.grad is not None


def test_validation_names_the_argument():
    dist = smc.Empirical(np.arange(8.0).reshape(4, 2))
    proc, coef = smc.VE(), smc.VE().at(np.float64(0.5))
    with pytest.raises(ValueError, match="n_ref"):
        LocalSTF(0)
    with pytest.raises(TypeError, match="k_neighbors"):
        LocalSTF(2, 2.5)
    with pytest.raises(ValueError, match="mix"):
        LocalSTF(2, 2, 1.5)
    with pytest.raises(TypeError, match="mix"):
        LocalSTF(2, 2, "uniform")
    with pytest.raises(ValueError, match="k_neighbors"):
        LocalSTF(2, 5).graph(dist)
    with pytest.raises(TypeError, match="dist must be an Empirical"):
        smc.estimate(LocalSTF(2, 2), smc.builtin.fp_gmm(), proc, 0.5, np.zeros((1, 2)), n=2,
                     rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="x0"):
        LocalSTF(2, 2).integrand(dist, coef, np.full((1, 2), 0.5), np.zeros((1, 2)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="ref"):
        smc.loss(LocalSTFLoss(2, 2), lambda x, t: x, dist, proc, 0.5, dist.points, np.zeros((4, 2)),
                 rng=np.random.default_rng(0), ref=dist.points)


@pytest.mark.slow
def test_experiment_quick_claims(tmp_path):
    # the experiment end to end at quick size (~25 s + ~25 s of training): files written, unbiasedness and the
    # floor claims hold, the "lower everywhere" claims come out NO as EXPECTED_NO says
    pytest.importorskip("torch")
    from scoremc.experiments import local_stf as exp
    from scoremc.nn.experiments import local_reference

    paths = local_reference.run(tmp_path, quick=True, progress=False)
    assert all((tmp_path / p).exists() for p in map(str, paths.values()))
    import xarray as xr

    found = {c.key: c for c in exp.claims(xr.open_dataset(paths["netcdf"]))}
    assert all(c.holds for k, c in found.items() if k.startswith(("local-unbiased", "local-floor")))
    assert not any(c.holds for k, c in found.items() if k.split(":")[0] in exp.EXPECTED_NO)
    assert "training on the LocalSTF target" in (tmp_path / "local_stf.md").read_text()
