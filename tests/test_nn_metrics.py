"""scoremc.nn.metrics: MMD^2_u and sliced Wasserstein against closed forms derived here, exact small cases,
invariances (hypothesis), blocking, validation.

Closed forms used (derived in the docstrings below, independent of the code under test):

* Gaussian kernel mean. For z ~ N(mu, v I_d) and k = exp(-|z|^2 / (2 h^2)), completing the square per coordinate,
  E k = (h^2 / (h^2 + v))^(d/2) exp(-|mu|^2 / (2 (h^2 + v))). With x ~ N(m1, s1^2 I), y ~ N(m2, s2^2 I):
  MMD^2 = K(0, 2 s1^2) + K(0, 2 s2^2) - 2 K(m1 - m2, s1^2 + s2^2).
* 1-D W2 between Gaussians: W2^2(N(mu1, s1^2), N(mu2, s2^2)) = (mu1 - mu2)^2 + (s1 - s2)^2 (the quantile maps are
  affine). Projected on a unit theta, N(m, I) becomes N(theta.m, 1), so W2^2 = (theta.(m - m'))^2, and for theta
  uniform on the sphere E (theta.D)^2 = |D|^2 / d, Var (theta.D)^2 = |D|^4 (3 / (d (d + 2)) - 1 / d^2).
"""
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

torch = pytest.importorskip("torch")

from scoremc.nn.metrics import block_rows, median_bandwidth, mmd, sliced_wasserstein  # noqa: E402

F64 = torch.float64


def gaussian_kernel_mean(mu, v, h, d):
    """E exp(-|z|^2 / (2 h^2)) for z ~ N(mu, v I_d) (module docstring)."""
    return (h * h / (h * h + v)) ** (d / 2) * math.exp(-float(np.sum(np.square(mu))) / (2 * (h * h + v)))


def gauss(gen, n, mean, sd):
    mean = torch.as_tensor(mean, dtype=F64)
    return mean + sd * torch.randn((n, len(mean)), generator=gen, dtype=F64)


def test_mmd_of_a_tiny_sample_by_hand():
    # x = {0, 1}, y = {0, 2}, h = 1: k(0,1) = e^-1/2, k(0,2) = e^-2, k(1,2) = e^-1/2, k(0,0) = 1
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    a, b = math.exp(-0.5), math.exp(-2.0)
    want = (2 * a) / 2 + (2 * b) / 2 - 2 * (1 + b + a + a) / 4
    assert float(mmd(x, y, bandwidth=1.0)) == pytest.approx(want, rel=1e-14)
    # median heuristic: pooled {0, 1, 0, 2}; distances 1, 0, 2, 1, 1, 2 -> lower median 1
    assert float(median_bandwidth(x, y)) == 1.0
    assert float(mmd(x, y)) == pytest.approx(want, rel=1e-14)


def test_mmd_matches_the_gaussian_closed_form():
    """R = 30 independent U-statistics at m = n = 400; their mean is within the t-interval of level 1e-3 of the
    closed form (the U-statistic is unbiased for every m)."""
    d, h, R, n = 3, 1.5, 30, 400
    m1, m2, s1, s2 = np.array([0.3, 0.0, -0.2]), np.array([-0.2, 0.4, 0.1]), 1.0, 0.8
    want = (gaussian_kernel_mean(0, 2 * s1**2, h, d) + gaussian_kernel_mean(0, 2 * s2**2, h, d)
            - 2 * gaussian_kernel_mean(m1 - m2, s1**2 + s2**2, h, d))
    gen = torch.Generator().manual_seed(11)
    vals = np.array([float(mmd(gauss(gen, n, m1, s1), gauss(gen, n, m2, s2), bandwidth=h)) for _ in range(R)])
    tstat = (vals.mean() - want) / (vals.std(ddof=1) / math.sqrt(R))
    assert abs(tstat) < stats.t.ppf(1 - 1e-3 / 2, R - 1), (vals.mean(), want, tstat)
    assert want > 0.05  # the alternative is far from 0, so the check is not vacuous


@pytest.mark.parametrize("bandwidth", [None, 0.7])
def test_mmd_is_unbiased_for_identical_laws(bandwidth):
    """Mean 0 for identical laws (t-interval of level 1e-3 over R = 40 replicates at m = 150, n = 200). A biased
    V-statistic is off by (1 - E k(x, x')) (1/m + 1/n) > 0, many standard errors here."""
    R, gen = 40, torch.Generator().manual_seed(5)
    vals = np.array([float(mmd(gauss(gen, 150, [0.0, 1.0], 1.0), gauss(gen, 200, [0.0, 1.0], 1.0),
                               bandwidth=bandwidth)) for _ in range(R)])
    tstat = vals.mean() / (vals.std(ddof=1) / math.sqrt(R))
    assert abs(tstat) < stats.t.ppf(1 - 1e-3 / 2, R - 1), (vals.mean(), tstat)
    assert (vals < 0).any()  # a U-statistic of equal laws is negative about half of the time


def test_sliced_wasserstein_1d_gaussians_closed_form():
    """Deterministic quantile clouds x_i = mu + s Phi^-1((i - 1/2) / n): their W2 converges to the Gaussians' at
    O(log n / n) in W2^2 (tail quantiles); at n = 20000 |W2^2 - want| < 2e-3."""
    n = 20000
    u = stats.norm.ppf((np.arange(n) + 0.5) / n)
    for (mu1, s1), (mu2, s2) in [((0.0, 1.0), (1.0, 2.0)), ((0.5, 0.3), (0.5, 1.1)), ((-2.0, 1.0), (1.0, 1.0))]:
        x = torch.tensor(mu1 + s1 * u)[:, None]
        y = torch.tensor(mu2 + s2 * u[::-1].copy())[:, None]  # order must not matter
        want2 = (mu1 - mu2) ** 2 + (s1 - s2) ** 2
        got = sliced_wasserstein(x, y, directions=torch.ones(1, 1, dtype=F64))
        assert abs(float(got) ** 2 - want2) < 2e-3, (float(got) ** 2, want2)


def test_sliced_wasserstein_average_over_random_directions():
    """A cloud x and its translate x + D: every projected W2 is |theta.D| exactly, so SW_2^2 is the direction
    average of (theta.D)^2, |D|^2 / d within 4 sd = 4 |D|^2 sqrt(3/(d(d+2)) - 1/d^2) / sqrt(P) (P = 4000, d = 3)."""
    d, P = 3, 4000
    D = torch.tensor([1.0, -0.5, 0.8], dtype=F64)
    gen = torch.Generator().manual_seed(3)
    x = gauss(gen, 300, np.zeros(d), 1.0)
    got = float(sliced_wasserstein(x, x[torch.randperm(300, generator=gen)] + D, n_projections=P, generator=gen)) ** 2
    D2 = float(D @ D)
    sd = D2 * math.sqrt(3 / (d * (d + 2)) - 1 / d**2) / math.sqrt(P)
    assert abs(got - D2 / d) < 4 * sd, (got, D2 / d, sd)


def test_sliced_wasserstein_of_gaussian_samples():
    """x ~ N(D, I), y ~ N(0, I) independent, n = 20000 each, 50 fixed directions: per direction W2^2 =
    (theta.D)^2 for the laws. The samples add (i) 2 (theta.D)(theta.xi), xi = mean(x) - mean(y) - D ~ N(0, 2/n I),
    whose direction average 2 xi.v (v = mean_theta (theta.D) theta) has sd 2 |v| sqrt(2 / n); (ii) a positive bias,
    the W2^2 between two n-samples of N(0, 1) less its mean part: 3.7e-4 on average, at most 1.1e-3 in 200 NumPy
    simulations at n = 20000; allowed 2e-3. Tolerance: 4 sd + 2e-3."""
    d, n = 3, 20000
    D = torch.tensor([1.0, -0.5, 0.8], dtype=F64)
    gen = torch.Generator().manual_seed(4)
    th = torch.randn(50, d, generator=gen, dtype=F64)
    th = th / th.norm(dim=1, keepdim=True)
    x, y = gauss(gen, n, D, 1.0), gauss(gen, n, np.zeros(d), 1.0)
    got = float(sliced_wasserstein(x, y, directions=th)) ** 2
    proj = th @ D
    v = (proj[:, None] * th).mean(0)
    sd = 2 * float(v.norm()) * math.sqrt(2 / n)
    assert abs(got - float((proj**2).mean())) < 4 * sd + 2e-3, (got, float((proj**2).mean()), sd)


def test_sliced_wasserstein_of_equal_sizes_is_the_sorted_mean():
    rng = np.random.default_rng(0)
    x, y, th = rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 0.3, rng.normal(size=(7, 4))
    th /= np.linalg.norm(th, axis=1, keepdims=True)
    for p in (1.0, 2.0, 3.5):
        w = [np.mean(np.abs(np.sort(x @ t) - np.sort(y @ t)) ** p) for t in th]
        want = np.mean(w) ** (1 / p)
        got = sliced_wasserstein(torch.tensor(x), torch.tensor(y), directions=torch.tensor(th), p=p)
        assert float(got) == pytest.approx(want, rel=1e-13)


finite = st.floats(-3, 3, allow_nan=False, width=64)


def clouds(max_rows=12, d=2):
    return st.tuples(arrays(np.float64, st.tuples(st.integers(2, max_rows), st.just(d)), elements=finite),
                     arrays(np.float64, st.tuples(st.integers(2, max_rows), st.just(d)), elements=finite))


@settings(max_examples=30)
@given(clouds(), st.integers(0, 2**31 - 1))
def test_unequal_sizes_equal_the_replicated_equal_size_law(xy, seed):
    # the empirical law of x is that of x with each point repeated k times: sizes made equal by replication
    x, y = (torch.tensor(a) for a in xy)
    m, n = len(x), len(y)
    g = math.lcm(m, n)
    th = torch.randn(5, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    for p in (1.0, 2.0):
        a = sliced_wasserstein(x, y, directions=th, p=p)
        b = sliced_wasserstein(x.repeat_interleave(g // m, 0), y.repeat_interleave(g // n, 0), directions=th, p=p)
        assert float(a) == pytest.approx(float(b), rel=1e-12, abs=1e-12)


@settings(max_examples=30)
@given(clouds(), st.integers(0, 2**31 - 1), st.floats(-50, 50), st.floats(0.1, 10))
def test_invariances(xy, seed, shift, scale):
    x, y = (torch.tensor(a) for a in xy)
    gen = torch.Generator().manual_seed(seed)
    px, py = torch.randperm(len(x), generator=gen), torch.randperm(len(y), generator=gen)
    th = torch.randn(4, 2, generator=gen, dtype=F64)
    sw = float(sliced_wasserstein(x, y, directions=th))
    # sorted projections do not depend on the order (the pooled mean subtracted first does, in its last bit)
    assert float(sliced_wasserstein(x[px], y[py], directions=th)) == pytest.approx(sw, rel=1e-14, abs=1e-14)
    assert float(sliced_wasserstein(y, x, directions=th)) == pytest.approx(sw, rel=1e-12, abs=1e-12)
    assert float(sliced_wasserstein(x + shift, y + shift, directions=th)) == pytest.approx(sw, rel=1e-9, abs=1e-9)
    assert float(sliced_wasserstein(scale * x, scale * y, directions=th)) == pytest.approx(scale * sw, rel=1e-12,
                                                                                            abs=1e-12)
    assert float(sliced_wasserstein(x, x, directions=th)) == 0.0
    med = float(torch.median(torch.pdist(torch.cat([x, y]))))
    if med == 0:  # the median heuristic refuses coinciding clouds
        with pytest.raises(ValueError, match="bandwidth"):
            mmd(x, y)
    assume(med > 1e-3)  # not a bandwidth lost to round-off (e.g. 5e-132 next to 1)
    k = float(mmd(x, y))
    tol = dict(rel=1e-9, abs=1e-12)
    assert float(mmd(x[px], y[py])) == pytest.approx(k, **tol)
    assert float(mmd(y, x)) == pytest.approx(k, **tol)
    assert float(mmd(x + shift, y + shift)) == pytest.approx(k, **tol)
    assert float(mmd(scale * x, scale * y)) == pytest.approx(k, **tol)  # the median bandwidth scales along
    assert float(mmd(scale * x, scale * y, bandwidth=scale * 0.8)) == pytest.approx(float(mmd(x, y, bandwidth=0.8)),
                                                                                   **tol)


def test_blocks_change_nothing_but_the_order_of_sums():
    gen = torch.Generator().manual_seed(1)
    x, y = gauss(gen, 300, [0.0, 0.0, 0.0], 1.0), gauss(gen, 257, [0.2, 0.0, 0.0], 1.3)
    small = 8 * 257 * 7  # 7 rows per kernel block, 2 directions per projection block
    assert block_rows(257, small) == 7 and block_rows(300 + 257, 8 * 557 * 3 * 2, width=3) == 2
    assert float(mmd(x, y, budget_bytes=small)) == pytest.approx(float(mmd(x, y)), rel=1e-12)
    th = torch.randn(9, 3, generator=gen, dtype=F64)
    assert float(sliced_wasserstein(x, y, directions=th, budget_bytes=8 * 557 * 3 * 2)) == pytest.approx(
        float(sliced_wasserstein(x, y, directions=th)), rel=1e-13)


def test_random_directions_come_from_the_generator():
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    x, y = torch.randn(40, 3, generator=gen(), dtype=F64), torch.randn(30, 3, generator=gen(), dtype=F64) + 1
    a = sliced_wasserstein(x, y, n_projections=16, generator=gen())
    assert float(a) == float(sliced_wasserstein(x, y, n_projections=16, generator=gen()))
    th = torch.randn(16, 3, generator=gen(), dtype=F64)
    assert float(a) == float(sliced_wasserstein(x, y, directions=th))
    zero = sliced_wasserstein(x, y, n_projections=16, generator=torch.Generator().manual_seed(0))
    assert float(sliced_wasserstein(x, y, n_projections=16)) == float(zero)  # None: a generator seeded with 0
    state = torch.random.get_rng_state()
    sliced_wasserstein(x, y, n_projections=4)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is never touched


def test_float32_input_is_computed_in_float64():
    gen = torch.Generator().manual_seed(2)
    x, y = gauss(gen, 100, [0.0, 0.0], 1.0), gauss(gen, 100, [0.1, 0.0], 1.0)
    a = mmd(x.float(), y.float(), bandwidth=1.0)
    assert a.dtype == F64 and float(a) == pytest.approx(float(mmd(x.float().double(), y.float().double(),
                                                                      bandwidth=1.0)), rel=1e-12)
    assert sliced_wasserstein(x.float(), y.float()).dtype == F64


@pytest.mark.parametrize("call,error,match", [
    (lambda x: mmd(x.numpy(), x), TypeError, "x must be a torch.Tensor"),
    (lambda x: mmd(x, x[:, :1]), ValueError, "same dimension"),
    (lambda x: mmd(x[:1], x), ValueError, "at least 2 row"),
    (lambda x: mmd(x, x[0]), ValueError, r"y must have shape \(n, d\)"),
    (lambda x: mmd(x, x.long()), TypeError, "real floating"),
    (lambda x: mmd(x, x * float("nan")), ValueError, "y must be finite"),
    (lambda x: mmd(x, x, bandwidth=0.0), ValueError, "bandwidth"),
    (lambda x: mmd(x, x, bandwidth="1"), ValueError, "bandwidth"),
    (lambda x: mmd(x, x, budget_bytes=0), ValueError, "budget_bytes"),
    (lambda x: sliced_wasserstein(x, x, p=0.5), ValueError, "p must be"),
    (lambda x: sliced_wasserstein(x, x, n_projections=0), ValueError, "n_projections"),
    (lambda x: sliced_wasserstein(x, x, generator=0), TypeError, "generator"),
    (lambda x: sliced_wasserstein(x, x, directions=torch.zeros(2, 3)), ValueError, "non-zero"),
    (lambda x: sliced_wasserstein(x, x, directions=torch.ones(2, 2)), ValueError, "directions must be"),
])
def test_validation(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64))


@pytest.mark.slow
def test_twenty_thousand_points_in_bounded_memory():
    """n = 20000 per sample in d = 2: a dense 40000 x 40000 float64 kernel would take 12.8 GB and one 20000 x 20000
    block 3.2 GB; the peak resident memory of a fresh process stays below 1 GB."""
    code = ("import resource, torch; from scoremc.nn.metrics import mmd, sliced_wasserstein\n"
            "g = torch.Generator().manual_seed(0)\n"
            "x, y = torch.randn(20000, 2, generator=g, dtype=torch.float64), torch.randn(20000, 2, generator=g, "
            "dtype=torch.float64)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "v = float(mmd(x, y)); w = float(sliced_wasserstein(x, y, n_projections=64, generator=g))\n"
            "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, v, w)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    before, after, v, w = int(out[0]), int(out[1]), float(out[2]), float(out[3])
    assert (after - before) * 1024 < 1e9, (before, after)  # ru_maxrss is in KiB on Linux
    assert abs(v) < 1e-3 and w < 0.05
