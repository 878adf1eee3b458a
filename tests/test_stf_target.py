"""The streamed STF target (scoremc/stf_target.py; STF Eqs. 5-7 with App. A's alpha-scaled kernel).

The reference here is written from the definition with explicit differences in float64, on the same
(float32-rounded) inputs, and never calls the code under test. Errors are measured per row relative
to the integrand's own scale, sqrt(sum_k w_k |alpha x_k - x_t|^2) / sigma^2.

The plain GEMM form (the previous ``identities.stf_target``: float32 logits
alpha x_k . x_t - alpha^2 |x_k|^2 / 2, float32 weighted sum) fails
``test_float32_matches_a_float64_reference``: planted once, it failed 7 of the 36 grid cases (NumPy
float32), all at sigma <= 0.01 (worst relative errors 1.9e-2 for clusters at sigma = 0.002, d = 3072;
6.4e-3 at sigma = 0.01, d = 3072; 2.2e-4 for spread points at sigma = 0.01, d = 2), and came within 1.4x
of the tolerance at sigma = 0.1, d = 3072 (7.2e-5); the streamed target errs by <= 5e-8 on the grid.
"""
import importlib
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import scoremc as smc
import scoremc.identities
from scoremc import stf_target

# the module (the attribute ``scoremc.stf_target`` is the re-exported function)
STF = importlib.import_module("scoremc.stf_target")
SIGMAS = [0.002, 0.01, 0.1, 1.0, 10.0, 80.0]
DIMS = [2, 64, 3072]
TOL32, TOL64 = 1e-4, 1e-12


# ---------------------------------------------------------------------------------------------- reference
def reference(xt, sigma, ref, alpha):
    """v and its scale per row from the definition, in float64: xt (B, d), sigma, alpha (B, 1), ref
    (n, d) or (B, n, d), explicit differences alpha x_k - x_t (no expanded squares)."""
    xt, sigma, ref, alpha = (np.asarray(v, dtype=np.float64) for v in (xt, sigma, ref, alpha))
    diff = alpha[:, :, None] * ref - xt[:, None, :]  # (B, n, d)
    sq = np.sum(diff * diff, axis=-1)
    logit = -sq / (2 * sigma * sigma)
    w = np.exp(logit - logit.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    s2 = sigma * sigma
    return np.sum(w[:, :, None] * diff, axis=1) / s2, np.sqrt(np.sum(w * sq, axis=1)) / s2[:, 0]


def rel_error(got, xt, sigma, ref, alpha):
    """Per-row |v - v_ref| / scale, the reference evaluated on the inputs as given (already rounded)."""
    v, scale = reference(xt, sigma, ref, alpha)
    return np.linalg.norm(np.asarray(got, dtype=np.float64) - v, axis=1) / scale


def case(sigma, d, kind, dtype, seed=0):
    """Inputs on the scale of images in [-1, 1]^d, rounded to ``dtype``. ``kind``: "spread" (uniform
    points) or "clusters" (near-duplicates: members at distance ~sigma sqrt(2) of each other, so their
    logits lie O(1) apart). Rows alternate alpha = 1 (VE/EDM) and alpha = 1 / sqrt(1 + sigma^2) (VP-like),
    and x_t near a reference point (x_t = alpha x_k + sigma eps, as in training) and far from the data.
    Returns xt, sigma, ref, alpha and the points x_k the rows were made from."""
    rng = np.random.default_rng([seed, d, int(sigma * 1000), kind == "clusters"])
    n, B = (48, 6) if d == 3072 else (256, 16)
    if kind == "spread":
        ref = rng.uniform(-1, 1, (n, d))
    else:
        centres = rng.uniform(-0.9, 0.9, (n // 16, 1, d))
        ref = (centres + sigma * rng.standard_normal((n // 16, 16, d)) / math.sqrt(d)).reshape(n, d)
    alpha = np.where(np.arange(B) % 2 == 0, 1.0, 1.0 / math.sqrt(1.0 + sigma * sigma))[:, None]
    k = rng.integers(0, n, B)
    eps = rng.standard_normal((B, d))
    far = (np.arange(B) // 2) % 2 == 1
    xt = alpha * ref[k] + sigma * eps * np.where(far, 4.0, 1.0)[:, None] + far[:, None] * rng.uniform(-2, 2, (B, d))
    sigma = np.full((B, 1), sigma)
    return tuple(v.astype(dtype) for v in (xt, sigma, ref, alpha, ref[k]))


GRID = [(s, d, kind) for s in SIGMAS for d in DIMS for kind in ("spread", "clusters")]


@pytest.fixture
def paths(monkeypatch):
    """Counts the rows that took each path (float64 GEMM logits / exact differences)."""
    seen = {"gemm": 0, "exact": 0}

    def counting(name, fn):
        def wrapper(p, rows, *args):
            seen[name] += int(rows.shape[0])
            return fn(p, rows, *args)
        return wrapper

    monkeypatch.setattr(STF, "_from_gemm_logits", counting("gemm", STF._from_gemm_logits))
    monkeypatch.setattr(STF, "_exact", counting("exact", STF._exact))
    return seen


# ---------------------------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("sigma,d,kind", GRID)
def test_float32_matches_a_float64_reference(sigma, d, kind):
    xt, s, ref, a, x0 = case(sigma, d, kind, np.float32)
    got = stf_target(xt, s, ref, a)
    assert got.dtype == np.float32 and got.shape == xt.shape
    err = rel_error(got, xt, s, ref, a)
    assert err.max() <= TOL32, (sigma, d, kind, err)
    if d > 2:  # per-row batches (..., n, d), and x0 per row, take other code paths in each stage
        rows = np.ascontiguousarray(np.broadcast_to(ref, (len(xt),) + ref.shape))
        assert rel_error(stf_target(xt, s, rows, a), xt, s, ref, a).max() <= TOL32
        assert rel_error(stf_target(xt, s, ref, a, x0=x0), xt, s, with_x0(x0, ref), a).max() <= TOL32


def with_x0(x0, ref):
    """Per-row batches {x0_i} + ref: (B, 1 + n, d)."""
    return np.concatenate([x0[:, None, :], np.broadcast_to(ref, (len(x0),) + ref.shape)], axis=1)


def test_the_grid_exercises_both_paths(paths):
    # the float32 grid goes through both: exact differences at small sigma, float64 GEMM logits above
    for sigma in (0.002, 80.0):
        stf_target(*case(sigma, 3072, "clusters", np.float32)[:4])
        assert paths["exact" if sigma < 0.01 else "gemm"] > 0, (sigma, paths)


@pytest.mark.parametrize("sigma,d,kind", GRID)
def test_float64_matches_the_reference_to_1e_12(sigma, d, kind):
    xt, s, ref, a, x0 = case(sigma, d, kind, np.float64)
    got = stf_target(xt, s, ref, a)
    assert got.dtype == np.float64
    assert rel_error(got, xt, s, ref, a).max() <= TOL64
    assert rel_error(stf_target(xt, s, ref, a, x0=x0), xt, s, with_x0(x0, ref), a).max() <= TOL64


@pytest.mark.parametrize("sigma", [0.002, 1.0, 80.0])
def test_both_paths_and_every_chunking_agree(sigma, monkeypatch):
    # forcing every row onto the exact path, and blocks of 3 points (chunk boundaries inside the
    # candidates and the reference batch), must not change the float32 result beyond round-off
    xt, s, ref, a, _ = case(sigma, 64, "clusters", np.float32)
    default = stf_target(xt, s, ref, a)
    monkeypatch.setattr(STF, "TAU_ULPS", 0)
    exact = stf_target(xt, s, ref, a)
    monkeypatch.setattr(STF, "CHUNK", 3 * 64)
    chunked = stf_target(xt, s, ref, a)
    rows = stf_target(xt, s, np.ascontiguousarray(np.broadcast_to(ref, (len(xt),) + ref.shape)), a)
    _, scale = reference(xt, s, ref, a)
    for other in (exact, chunked, rows):
        assert (np.linalg.norm(other.astype(float) - default, axis=1) / scale).max() <= 1e-6


def test_chunked_float64_equals_the_reference(monkeypatch):
    # chunk boundaries inside each row's candidates, with and without x0: still the definition to 1e-12
    monkeypatch.setattr(STF, "CHUNK", 5 * 64)
    for sigma in (0.01, 10.0):
        xt, s, ref, a, x0 = case(sigma, 64, "clusters", np.float64)
        assert rel_error(stf_target(xt, s, ref, a), xt, s, ref, a).max() <= TOL64
        got = stf_target(xt, s, ref, a, x0=x0)
        assert rel_error(got, xt, s, with_x0(x0, ref), a).max() <= TOL64


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="needs an extended-precision long double")
@pytest.mark.parametrize("d", DIMS)
def test_the_error_bound_covers_the_float64_gemm_logits(d):
    # the bound M_k that decides both the candidates and the path, against the GEMM-form logits evaluated
    # in 64-bit-mantissa long double; worst cases for the summation: signed and all-positive coordinates
    rng = np.random.default_rng(d)
    for ref in (rng.uniform(-1, 1, (64, d)), 1 + 1e-3 * rng.random((64, d))):
        xt, s, a = 0.9 * ref[:8] + 0.01 * rng.standard_normal((8, d)), np.full((8, 1), 0.01), np.full((8, 1), 0.9)
        logits, bound = STF._gemm_logits(STF._Problem(xt, s, ref, a, None))
        X, R, al, s2 = (v.astype(np.longdouble) for v in (xt, ref, a, s * s))
        exact = (al * (X @ R.T) - 0.5 * al * al * np.sum(R * R, axis=1)) / s2
        ratio = np.abs(logits.astype(np.longdouble) - exact) / bound
        assert ratio.max() <= 1, ratio.max()


def test_data_far_from_the_origin(monkeypatch, paths):
    # |x| ~ 1e8: the float64 GEMM logits err by ~100, every point is a candidate and they come in an order
    # unrelated to their true logits, in blocks of 2, so the online softmax must rescale as it goes
    monkeypatch.setattr(STF, "CHUNK", 2 * 4)
    rng = np.random.default_rng(5)
    ref = 1e8 + rng.normal(size=(40, 4))
    xt = ref[:3] + rng.normal(size=(3, 4))
    s, a = np.ones((3, 1)), np.ones((3, 1))
    assert rel_error(stf_target(xt, s, ref, a), xt, s, ref, a).max() <= TOL64
    assert paths == {"gemm": 0, "exact": 3}


# ---------------------------------------------------------------------------------------------- identities
finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw, max_n=12):
    d, n, B = draw(st.integers(1, 5)), draw(st.integers(1, max_n)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    sigma = np.exp(rng.uniform(math.log(0.05), math.log(20.0), (B, 1)))
    alpha = rng.uniform(0.2, 1.5, (B, 1))
    ref = rng.uniform(-2, 2, (n, d))
    xt = alpha * ref[rng.integers(0, n, B)] + sigma * rng.standard_normal((B, d))
    return xt, sigma, ref, alpha


@given(problems(), st.lists(st.floats(-3, 3, **finite), min_size=5, max_size=5))
def test_a_common_shift_of_x_t_and_alpha_x_k_leaves_v_unchanged(prob, shift):
    xt, s, ref, a = prob
    c = np.asarray(shift[:xt.shape[1]])
    v, scale = reference(xt, s, ref, a)
    # alpha x_k + c = alpha (x_k + c / alpha): one shared batch per alpha, so per row
    for i in range(len(xt)):
        got = stf_target(xt[i] + c, s[i, 0], ref + c / a[i, 0], a[i, 0])
        assert np.linalg.norm(got - v[i]) <= 1e-9 * scale[i]


@given(problems(), st.randoms(use_true_random=False))
def test_v_does_not_depend_on_the_order_of_the_reference_batch(prob, random):
    xt, s, ref, a = prob
    perm = list(range(len(ref)))
    random.shuffle(perm)
    _, scale = reference(xt, s, ref, a)
    diff = stf_target(xt, s, ref[perm], a) - stf_target(xt, s, ref, a)
    assert (np.linalg.norm(diff, axis=1) <= 1e-13 * scale).all()


@given(problems(max_n=1))
def test_one_reference_point_is_the_dsi_target(prob):
    xt, s, ref, a = prob
    np.testing.assert_array_equal(stf_target(xt, s, ref, a), (a * ref[0] - xt) / (s * s))
    # float32: the DSI target of the rounded inputs, to float32's own rounding
    xt, s, ref, a = (v.astype(np.float32) for v in prob)
    dsi = (a.astype(float) * ref[0] - xt) / (s.astype(float) ** 2)
    np.testing.assert_allclose(stf_target(xt, s, ref, a), dsi, rtol=2 ** -23, atol=0)


@given(problems())
def test_shared_per_row_and_x0_forms_agree(prob):
    xt, s, ref, a = prob
    shared = stf_target(xt, s, ref, a)
    rows = stf_target(xt, s, np.broadcast_to(ref, (len(xt),) + ref.shape), a)
    _, scale = reference(xt, s, ref, a)
    forms = [rows, stf_target(xt, s, ref[1:], a, x0=ref[0])] if len(ref) > 1 else [rows]
    for other in forms:
        assert (np.linalg.norm(other - shared, axis=1) <= 1e-13 * scale).all()
    # a row's value does not depend on the other rows of the call
    for i in range(len(xt)):
        np.testing.assert_allclose(stf_target(xt[i], s[i], ref, a[i]), shared[i], rtol=0, atol=1e-13 * scale[i])


@given(problems(), st.integers(-20, 20))
def test_scaling_everything_by_a_power_of_two_scales_v_exactly(prob, j):
    # x_t, alpha x_k, sigma -> 2^j (x_t, alpha x_k, sigma): the logits are unchanged and v -> 2^-j v, exactly
    xt, s, ref, a = prob
    c = 2.0 ** j
    np.testing.assert_array_equal(stf_target(c * xt, c * s, c * ref, a), stf_target(xt, s, ref, a) / c)


def test_leading_dimensions_broadcast():
    # STF.integrand's layout: x0 stacks (m, N, n, d) against rows x_t (N, d) and sigma (N, 1)
    rng = np.random.default_rng(1)
    xt, sigma, ref = rng.normal(size=(3, 2)), np.array([[0.5], [1.0], [2.0]]), rng.normal(size=(4, 3, 5, 2))
    got = stf_target(xt, sigma, ref, 0.8)
    assert got.shape == (4, 3, 2)
    for m in range(4):
        np.testing.assert_allclose(got[m], reference(xt, sigma, ref[m], np.full((3, 1), 0.8))[0], rtol=1e-13)
    assert stf_target(np.zeros((0, 2)), 1.0, ref[0, 0]).shape == (0, 2)


def test_bad_input_raises_naming_the_argument():
    x, r = np.zeros((3, 2)), np.ones((4, 2))
    bad = [(dict(xt=x, sigma=0.0, ref=r), ValueError, "sigma must be positive"),
           (dict(xt=x, sigma=np.ones((3, 2)), ref=r), ValueError, "sigma must be a scalar or have shape"),
           (dict(xt=x, sigma=1.0, ref=r, alpha=np.ones(3)), ValueError, "alpha must be a scalar or have shape"),
           (dict(xt=x, sigma=1.0, ref=np.ones((4, 3))), ValueError, "ref must have trailing dimension d=2"),
           (dict(xt=x, sigma=1.0, ref=np.ones((0, 2))), ValueError, "ref must hold at least one"),
           (dict(xt=x, sigma=1.0, ref=np.ones(2)), ValueError, "ref must have at least 2"),
           (dict(xt=x, sigma=1.0, ref=np.ones((2, 4, 2))), ValueError, "must broadcast"),
           (dict(xt=x, sigma=1.0, ref=r, x0=np.ones((3, 3))), ValueError, "x0 must have trailing dimension"),
           (dict(xt=x + np.nan, sigma=1.0, ref=r), ValueError, "xt must be finite"),
           (dict(xt=x, sigma=float("inf"), ref=r), ValueError, "sigma must be finite"),
           (dict(xt=x, sigma=1.0, ref=np.where(r > 0, np.inf, r)), ValueError, "ref must be finite"),
           (dict(xt=x.astype(complex), sigma=1.0, ref=r), TypeError, "xt must hold real numbers"),
           (dict(xt="x", sigma=1.0, ref=r), TypeError, "xt must be a real array")]
    for kwargs, exc, match in bad:
        with pytest.raises(exc, match=match):
            stf_target(**kwargs)


def test_public_names_are_the_streamed_function():
    assert smc.stf_target is scoremc.identities.stf_target is STF.stf_target


# ---------------------------------------------------------------------------------------------- STFLoss
def _loss_forms(xp_array, dtype, offset=0):
    """The STF loss of one minibatch in STF Algorithm 1's form (the whole batch, the minibatch its rows
    offset..offset+N) and in the per-row form (each row: its x0 plus the batch without it)."""
    rng = np.random.default_rng(3)
    n_ref, N, d = 9, 4, 3
    batch = rng.uniform(-1, 1, (n_ref, d))
    x0, eps = batch[offset:offset + N], rng.standard_normal((N, d))
    others = np.stack([np.delete(batch, offset + i, axis=0) for i in range(N)])
    t = np.array([0.1, 0.4, 0.6, 0.9])
    net = lambda x, tt: -x / (1 + tt[:, None])
    args = [xp_array(v, dtype) for v in (t, x0, eps)]
    alg1 = smc.loss(smc.STFLoss(n_ref), net, None, smc.VP(), *args, ref=xp_array(batch, dtype))
    rows = smc.loss(smc.STFLoss(n_ref), net, None, smc.VP(), *args, ref=xp_array(others, dtype))
    return alg1, rows


@pytest.mark.parametrize("offset", [0, 2, 5])
def test_stf_loss_algorithm_1_form_equals_the_per_row_form(offset):
    alg1, rows = _loss_forms(lambda v, dtype: np.asarray(v, dtype=dtype), np.float64, offset)
    np.testing.assert_allclose(alg1, rows, rtol=0, atol=1e-12 * np.abs(rows).max())


def test_stf_loss_refuses_a_batch_that_does_not_hold_the_minibatch():
    rng = np.random.default_rng(0)
    batch, eps = rng.normal(size=(5, 2)), rng.normal(size=(3, 2))
    net = lambda x, t: -x

    def refused(x0, ref, match):
        with pytest.raises(ValueError, match=match):
            smc.loss(smc.STFLoss(len(ref)), net, None, smc.VE(), 0.3, x0, eps, ref=ref)

    refused(batch[[1, 3, 2]], batch, "as a block of consecutive rows .* rows from x0\\[0\\] \\(row 1 of ref\\) differ")
    refused(batch[2:5] + 1e-12, batch, "no row equals x0\\[0\\]")
    refused(batch[[0, 1, 4]], batch, "differ")  # all but the last row in place
    refused(batch[3:5].repeat(2, 0)[:3], batch, "differ")  # x0[0] found at row 3, but the block runs past the end
    refused(batch[:3], batch[:2], "N=3 > n_ref=2")
    with pytest.raises(ValueError, match="ref must have shape \\(n_ref, d\\)"):
        smc.loss(smc.STFLoss(5), net, None, smc.VE(), 0.3, batch[:3], eps, ref=batch[:3])


# ---------------------------------------------------------------------------------------------- memory
_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_memory", _BENCH)
    module = sys.modules["bench_memory"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak(bench, monkeypatch, **params):
    case = bench.CASES["stf-target"]
    monkeypatch.setitem(bench.CASES, "stf-target", bench.Case(case.setup, case.call, case.full, bench.Size(params)))
    return bench.run_case("stf-target", "quick")["peak_rise_bytes"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak-RSS counters of Linux's /proc needed")
def test_peak_memory_is_flat_in_d(bench, monkeypatch):
    # the broadcast formulation holds B x n x d floats (3 arrays of 805 MB here at d = 3072, 4x less at
    # d = 768); the streamed target holds O(B n) plus blocks of CHUNK floats, whatever d
    B, n = 32, 2048
    big = _peak(bench, monkeypatch, B=B, n=n, d=3072)
    small = _peak(bench, monkeypatch, B=B, n=n, d=768)
    assert big < 0.1 * B * n * 3072 * 4, big
    assert big < 1.5 * small + 8 * 2**20, (big, small)
