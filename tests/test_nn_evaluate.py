"""scoremc.nn.evaluate: a score model against exact truth.

Expected values are derived here, not taken from the code under test. For the Gaussian target p0 = N(0, v I_d) under
x_t = alpha x0 + sigma eps, p_t = N(0, S I) with S = alpha^2 v + sigma^2 and the exact score s* = -x / S. With the
forward SDE dx = f x dt + g dw (f = alpha'/alpha, g^2 = (sigma^2)' - 2 f sigma^2), S' = 2 f S + g^2.

* The scaled score c s* (scoremc.testing.mutations.scaled): rel_error = (c-1)^2 exactly (same points in both
  means). Score-FPE (FP-Diffusion Eq. 9): L[c s*] = g^2/2 (-c d / S + c^2 |x|^2 / S^2) + f c |x|^2 / S - f d, so
  grad L = (g^2 c^2 / S^2 + 2 f c / S) x, d/dt (c s*) = c S' x / S^2 and eps = c (1 - c) g^2 x / S^2: the ratio
  RMS|eps| / RMS|d/dt s*| = c |c - 1| g^2 / |S'| exactly. Tweedie: D - E[x0|x_t] = sigma^2 (c - 1) s* / alpha and
  tr Cov[x0|x_t] = d v sigma^2 / S, so tweedie_error = (c-1)^2 sigma^2 E|x|^2 / (alpha^2 d v S), E|x|^2 = d S.
* The rotational field s* + eps A x, A = [[0, 1], [-1, 0]] (mutations.rotational): J - J^T = 2 eps A, so
  ||(J - J^T)/2||_F = eps sqrt(2) at every point and curl = J[1,0] - J[0,1] = -2 eps; ||grad^2 log p_t||_F =
  sqrt(2) / S, so antisymmetric_rel = eps S; rel_error = eps^2 S^2 exactly (|Ax| = |x|).
"""
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import scoremc as smc  # noqa: E402
from scoremc.nn.evaluate import (end_to_end, evaluate, relative_score_error, score_diagnostics)  # noqa: E402
from scoremc.nn.metrics import median_bandwidth, mmd, sliced_wasserstein  # noqa: E402
from scoremc.testing.mutations import missing_component  # noqa: E402

F64 = torch.float64
V = 0.5
GAUSS = smc.GaussianMixture([1.0], [[0.0, 0.0]], [V])
VP = smc.VP()
TS = np.array([0.05, 0.4, 0.9])


class Scaled(torch.nn.Module):
    """torch twin of scoremc.testing.mutations.scaled (those are NumPy callables)."""

    def __init__(self, score, c):
        super().__init__()
        self.score, self.c = score, c

    def forward(self, x, t):
        return self.c * self.score(x, t)


class Rotational(Scaled):
    """torch twin of scoremc.testing.mutations.rotational: s + eps A x, A = [[0, 1], [-1, 0]] (x A^T)."""

    def forward(self, x, t):
        return self.score(x, t) + self.c * torch.stack([x[:, 1], -x[:, 0]], dim=-1)


def _coefficients(proc, ts):
    c = proc.at(np.asarray(ts, dtype=np.float64))
    a, s, da, ds = (np.asarray(v, dtype=np.float64) for v in (c.alpha, c.sigma, c.dalpha, c.dsigma))
    return a, s, a * a * V + s * s, 2 * a * da * V + 2 * s * ds, np.asarray(c.g2, dtype=np.float64)


def fpe_term_scale(target, proc, t, n=512):
    """RMS over x_t ~ p_t of the sum of the magnitudes of the terms of the score-FPE residual, d/dt s -
    (g^2/2 grad div s + g^2 J^T s - f (s + J^T x)), from the exact layer's closed forms: a float64 evaluation of the
    residual errs by a small multiple of u times this (the terms cancel, the rounding of each does not)."""
    exact = smc.exact_score(target, proc)
    x = smc.sample(smc.marginal(target, proc, t), n, np.random.default_rng(1))
    _, grad_div, JTs, JTx, s = exact.fpe_terms(x, t)
    c = proc.at(np.float64(t))
    norm = lambda v: np.linalg.norm(v, axis=-1)  # noqa: E731
    terms = (0.5 * float(c.g2) * norm(grad_div) + float(c.g2) * norm(JTs) + abs(float(c.f)) * (norm(s) + norm(JTx))
             + norm(exact.dt(x, t)))
    return float(np.sqrt(np.mean(terms**2)))


@pytest.mark.parametrize("target,proc", [(smc.builtin.fp_gmm(), smc.VE()), (smc.builtin.ring8(), VP),
                                         (GAUSS, smc.EDM())])
def test_the_exact_score_scores_zero(target, proc):
    """Round-off bounds (float64, u = 1.1e-16), each with a margin of 1000 u: rel_error is exactly 0 (the same
    float64 evaluation in both means); the FPE residual by autograd, mean |eps| <= 1000 u x the RMS size of its
    terms (:func:`fpe_term_scale`: they cancel to 0, their rounding does not; at VP t = 0.9 they are 1e4 x
    |d/dt s|, so a bound relative to |d/dt s| would not hold); the antisymmetric part of the autograd Jacobian,
    relative to ||grad^2 log p_t||_F, < 1000 u; the Tweedie error, a squared relative error of x + sigma^2 s whose
    cancellation at large sigma costs u sigma / (posterior scale) <= 1e-13 (sigma <= 80, posterior scales >= 0.05
    here), < 1e-24."""
    ts = np.array([0.05, 3.0, 40.0]) if isinstance(proc, smc.EDM) else TS
    exact = smc.exact_score(target, proc)
    assert np.all(relative_score_error(exact, target, proc, ts, n=128)["rel_error"].values == 0)
    ds = score_diagnostics(exact, target, proc, ts, n=128, n_derivatives=32)
    u, d = np.finfo(np.float64).eps / 2, 2
    scale = np.array([fpe_term_scale(target, proc, t) for t in ts])
    assert np.all(ds["fpe_residual"].values * d <= 1e3 * u * scale), (ds["fpe_residual"].values * d, scale)
    assert np.all(ds["tweedie_error"].values < 1e-24)
    assert np.all(ds["antisymmetric_rel"].values < 1e3 * u)
    for k in ("tweedie_error", "fpe_residual", "antisymmetric_norm", "curl_ms"):  # the exact twin: the same numbers
        np.testing.assert_array_equal(ds[k].values, ds[k + "_exact"].values)


def test_scaled_score_against_its_closed_forms():
    c = 1.1
    model = Scaled(smc.exact_score(GAUSS, VP), c)
    a, s, S, dS, g2 = _coefficients(VP, TS)
    err = relative_score_error(model, GAUSS, VP, TS, n=2048)
    np.testing.assert_allclose(err["rel_error"].values, (c - 1) ** 2, rtol=1e-12)
    ds = score_diagnostics(model, GAUSS, VP, TS, n=2048, n_derivatives=64)
    np.testing.assert_allclose(ds["fpe_residual_rel"].values, c * (c - 1) * g2 / np.abs(dS), rtol=1e-9)
    # tweedie: the only random factor is mean |x|^2 / (d S), a mean of 2048 chi^2_2 / 2: relative sd 1/sqrt(2048);
    # 4 sd = 8.8 %
    np.testing.assert_allclose(ds["tweedie_error"].values, (c - 1) ** 2 * s**2 / (a**2 * V), rtol=4 / math.sqrt(2048))
    assert np.all(ds["antisymmetric_rel"].values < 1e-13)  # still a gradient field


def test_rotational_field_against_its_closed_forms():
    eps = 0.3
    model = Rotational(smc.exact_score(GAUSS, VP), eps)
    _, _, S, _, _ = _coefficients(VP, TS)
    np.testing.assert_allclose(relative_score_error(model, GAUSS, VP, TS, n=256)["rel_error"].values,
                               eps**2 * S**2, rtol=1e-12)
    ds = score_diagnostics(model, GAUSS, VP, TS, n=256, n_derivatives=32)
    np.testing.assert_allclose(ds["antisymmetric_norm"].values, eps * math.sqrt(2), rtol=1e-12)
    np.testing.assert_allclose(ds["curl_ms"].values, 4 * eps**2, rtol=1e-12)
    np.testing.assert_allclose(ds["antisymmetric_rel"].values, eps * S, rtol=1e-12)
    assert np.all(ds["fpe_residual_rel"].values > 1e-3) and np.all(ds["tweedie_error"].values > 1e-4)


def test_a_float32_preconditioned_module_is_evaluated_in_its_dtype():
    # the untrained EDM model is the exact score of N(0, sigma_data^2 I) (tests/test_nn_models.py): float32 round-off
    from scoremc.nn import Preconditioned, ScoreMLP

    model = Preconditioned(ScoreMLP(2), VP, "edm", sigma_data=math.sqrt(V))
    ds = score_diagnostics(model, GAUSS, VP, TS, n=256, n_derivatives=32)
    assert np.all(ds["tweedie_error"].values < 1e-10) and np.all(ds["antisymmetric_rel"].values < 1e-6)
    assert np.all(ds["fpe_residual_rel"].values < 1e-3)  # float32 autograd of d/dt: relative ~1e-5 seen
    assert np.all(relative_score_error(model, GAUSS, VP, TS, n=256)["rel_error"].values < 1e-10)


# -- end to end ------------------------------------------------------------------------------------------------
FP, VE = smc.builtin.fp_gmm(), smc.VE()
N_E2E = 256
CASES = {"gauss-vp": (GAUSS, VP), "fp-gmm-ve": (FP, VE)}


def null_band(target, proc, n, reps=100, seed=123):
    """(mean, sd) of MMD^2_u and SW_2 between an exact p0 sample and an independent exact p_{t_lo} sample of size n,
    built as end_to_end builds its floor (median bandwidth of the two, 256 random directions): the null law of the
    model's numbers when its samples are exact."""
    from scoremc.nn.data import default_t_range

    gen = torch.Generator().manual_seed(seed)
    lo = smc.marginal(target, proc, default_t_range(proc)[0])
    m, w = [], []
    for _ in range(reps):
        a, b = smc.sample(target, n, gen, dtype=F64), smc.sample(lo, n, gen, dtype=F64)
        m.append(float(mmd(b, a, bandwidth=median_bandwidth(a, b))))
        w.append(float(sliced_wasserstein(b, a, n_projections=256, generator=gen)))
    return (np.mean(m), np.std(m, ddof=1)), (np.mean(w), np.std(w, ddof=1))


@pytest.fixture(scope="module")
def bands():
    return {name: null_band(*case, N_E2E) for name, case in CASES.items()}


#: the decision rule "at the noise floor": a metric at most K null sd above the null mean. Distribution-free
#: (Cantelli's inequality: P(X - mu >= K sd) <= 1 / (1 + K^2) = 1.5 % for any law), which matters here: MMD^2_u's
#: null law is a weighted sum of centred chi-squares (on fp-gmm the mode-weight imbalance alone is a chi^2_1 term),
#: and a normal 4-sd rule gave 3 false alarms in 50 seeds there
K = 8.0


def at_floor(value, band):
    mean, sd = band
    return value <= mean + K * sd


@pytest.mark.parametrize("case", CASES)
def test_exact_score_end_to_end_is_at_the_noise_floor(case, bands):
    """The exact score through Heun (18 steps, from exact draws of p_{t_hi}): MMD^2 and SW at the noise floor (the
    rule K above; null law from 100 replicates; false alarms over 50 seeds: test_end_to_end_false_alarm_rate)."""
    target, proc = CASES[case]
    r = end_to_end(smc.exact_score(target, proc), target, proc, n_samples=N_E2E, likelihood=False, seed=0)
    assert at_floor(r["mmd"], bands[case][0]) and at_floor(r["sliced_wasserstein"], bands[case][1]), (r, bands[case])
    assert at_floor(r["mmd_floor"], bands[case][0]) and at_floor(r["sliced_wasserstein_floor"], bands[case][1])


@pytest.mark.parametrize("case,broken", [
    ("gauss-vp", lambda: Scaled(smc.exact_score(GAUSS, VP), 1.2)),
    ("fp-gmm-ve", lambda: missing_component(FP, VE, 0)),  # a mode never learned
])
def test_broken_scores_leave_the_noise_floor(case, broken, bands):
    """Both metrics above the floor (A rotational field is not here: on an isotropic law its PF-ODE rotation
    preserves the law, and on fp-gmm / ring8 it stayed within the noise floor at n = 512: the end-to-end metrics
    cannot see it; the antisymmetric Jacobian above does.)"""
    target, proc = CASES[case]
    r = end_to_end(broken(), target, proc, n_samples=N_E2E, likelihood=False, seed=0)
    assert not at_floor(r["mmd"], bands[case][0]) and not at_floor(r["sliced_wasserstein"], bands[case][1]), \
        (r, bands[case])


@pytest.mark.parametrize("case", CASES)
def test_kl_of_the_exact_score_is_its_floor(case):
    """With the exact score and the exact prior, log p_theta is the exact log p_{t_lo} up to the PF-ODE solver, so
    kl - kl_floor is the mean solver error on the same points. The solver controls the local error of the state
    [x, int div v] at rtol = atol = 1e-5, and the integral is ~d ln(sigma_max / sigma_min) = 17 under VE(0.01, 50):
    1e-5 of it is 1.7e-4; allowed 3e-4 (over 50 seeds the largest |kl - kl_floor| was 1.1e-4 on fp-gmm / VE, 7e-6
    on the Gaussian / VP). kl_floor = E_{p0} log p0 / p_{t_lo} against its closed form
    for the Gaussian, d/2 (v/S - 1 - ln(v/S)), within 4 sd of the mean of n draws of the quadratic integrand
    -|x|^2 (1/v - 1/S) / 2 - d/2 ln(v/S), sd = sqrt(d/2) v |1/v - 1/S| / sqrt(n)."""
    from scoremc.nn.data import default_t_range

    target, proc = CASES[case]
    n = 32
    r = end_to_end(smc.exact_score(target, proc), target, proc, n_samples=64, n_likelihood=n, seed=1)
    assert abs(r["kl"] - r["kl_floor"]) < 3e-4, r
    if target is GAUSS:
        _, _, S, _, _ = _coefficients(proc, [default_t_range(proc)[0]])
        want = (V / S[0] - 1 - math.log(V / S[0]))
        assert abs(r["kl_floor"] - want) <= 4 * V * abs(1 / V - 1 / S[0]) / math.sqrt(n), (r, want)


def test_kl_of_a_scaled_score_against_its_closed_form():
    """c s* on the Gaussian: the PF-ODE dx/dt = (f + g^2 c / (2 S)) x is linear, so from the exact prior N(0, S_hi I)
    the model's law at t_lo is N(0, v' I), v' = S_hi exp(-2 int_{t_lo}^{t_hi} (f + g^2 c / (2 S)) dt) (quadrature of
    the process's coefficients; c = 1 gives S_lo), and KL(N(0, v I) || N(0, v' I)) = d/2 (v/v' - 1 - ln(v/v')).
    The estimate is within 4 kl_se + 1e-4 (solver) of it."""
    from scipy.integrate import quad

    from scoremc.nn.data import default_t_range

    c, (lo, hi) = 1.1, default_t_range(VP)

    def rate(t):
        k = VP.at(np.float64(t))
        S = float(k.alpha) ** 2 * V + float(k.sigma) ** 2
        return float(k.f) + 0.5 * float(k.g2) * c / S

    S_hi = float(VP.alpha(hi)) ** 2 * V + float(VP.sigma(hi)) ** 2
    v_model = S_hi * math.exp(-2 * quad(rate, lo, hi, epsabs=1e-12, epsrel=1e-12, limit=200)[0])
    want = V / v_model - 1 - math.log(V / v_model)  # d/2 (...) with d = 2
    r = end_to_end(Scaled(smc.exact_score(GAUSS, VP), c), GAUSS, VP, n_samples=64, n_likelihood=64, seed=1)
    assert abs(r["kl"] - want) <= 4 * r["kl_se"] + 1e-4 and want > 0.1, (r, want)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_end_to_end_false_alarm_rate(case, bands):
    """The exact-score check over 50 seeds, printing its false-alarm count; allowed <= 3 of 50 (1.5 % per metric)."""
    target, proc = CASES[case]
    exact = smc.exact_score(target, proc)
    results = [end_to_end(exact, target, proc, n_samples=N_E2E, likelihood=False, seed=seed) for seed in range(50)]
    alarms = [seed for seed, r in enumerate(results) if not (at_floor(r["mmd"], bands[case][0])
                                                            and at_floor(r["sliced_wasserstein"], bands[case][1]))]
    print(f"{case}: false alarms {len(alarms)} of 50: {alarms}")
    assert len(alarms) <= 3, alarms


# -- the Dataset, the plot, validation -------------------------------------------------------------------------
def test_evaluate_dataset_layout_and_files(tmp_path):
    from scoremc.nn.cli import plot_evaluation

    # (on the Gaussian under VP: a rotational field under VE, where g^2 reaches 4e4, makes the PF-ODE stiff)
    model = Rotational(smc.exact_score(GAUSS, VP), 0.2)
    ds = evaluate(model, GAUSS, VP, ts=[0.1, 0.5], n=64, n_derivatives=16, n_samples=64, n_likelihood=8, seed=3)
    assert ds.sizes == {"t": 2, "sample": 64, "dim": 2}
    for k in ("rel_error", "rel_error_se", "tweedie_error", "fpe_residual", "fpe_residual_rel", "antisymmetric_norm",
              "antisymmetric_rel", "curl_ms", "tweedie_error_exact", "antisymmetric_rel_exact"):
        assert ds[k].dims == ("t",), k
    for k in ("mmd", "mmd_floor", "mmd_bandwidth", "sliced_wasserstein", "sliced_wasserstein_floor", "kl", "kl_se",
              "kl_floor"):
        assert ds[k].dims == () and math.isfinite(float(ds[k])), k
    settings = json.loads(ds.attrs["settings"])
    assert settings["n"] == 64 and settings["likelihood"] is True and ds.attrs["target"] == repr(GAUSS)
    smc.save_dataset(ds, tmp_path / "e.nc")
    import xarray as xr

    with xr.open_dataset(tmp_path / "e.nc") as back:
        np.testing.assert_array_equal(back["rel_error"].values, ds["rel_error"].values)
    assert plot_evaluation(ds, tmp_path / "e.png", "title") == str(tmp_path / "e.png")
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same seed gives the same numbers; the points at a time do not depend on the other times
    again = evaluate(model, GAUSS, VP, ts=[0.5], n=64, n_derivatives=16, n_samples=64, likelihood=False, seed=3)
    assert float(again["tweedie_error"][0]) == float(ds["tweedie_error"][1])
    assert float(again["mmd"]) == float(ds["mmd"])


@pytest.mark.parametrize("call,error,match", [
    (lambda m: score_diagnostics(m, FP, VE, TS, n=1), ValueError, "n must be"),
    (lambda m: score_diagnostics(m, FP, VE, TS, derivatives="autograd"), TypeError, "derivatives"),
    (lambda m: score_diagnostics(m, FP, "ve", TS), TypeError, "proc"),
    (lambda m: score_diagnostics(m, FP, VE, [2.0]), ValueError, "ts"),
    (lambda m: score_diagnostics("model", FP, VE, TS), TypeError, "model"),
    (lambda m: end_to_end(m, FP, VE, prior="flat"), ValueError, "prior"),
    (lambda m: end_to_end(m, FP, VE, n_samples=1.5), TypeError, "n_samples"),
    (lambda m: evaluate(m, FP, VE, t_range=(0.5, 0.1)), ValueError, "t_range"),
])
def test_validation(call, error, match):
    with pytest.raises(error, match=match):
        call(smc.exact_score(FP, VE))


# -- trained models: scoremc.testing unchanged, the CLI ----------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    """A Preconditioned float32 MLP trained 30 DSM steps on GAUSS (it starts at the exact score, c_skip; training
    moves it by ~1e-4 in relative score error)."""
    from scoremc.nn import Preconditioned, ScoreMLP, train

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Preconditioned(ScoreMLP(2, hidden=32), VP, "edm", sigma_data=math.sqrt(V))
    return train(model, smc.DSM(), GAUSS, VP, steps=30, batch_size=64, progress=False, eval_points=64,
                 eval_times=(0.5,)).model


def test_scoremc_testing_accepts_a_trained_model(trained):
    import copy

    from scoremc.derivatives import CentralDifference
    from scoremc.testing import assert_conservative, assert_fpe_consistent, assert_score_close

    assert assert_score_close(trained, GAUSS, VP, rtol=0.05).ok
    assert assert_conservative(trained, VP, GAUSS, rtol=1e-3).ok
    with pytest.raises(AssertionError, match="rel. RMS error"):  # and it fails with its table against another target
        assert_score_close(trained, smc.builtin.ring8(), VP)
    # the score-FPE residual of the trained model is real (0.17 of |d/dt s| at t = 0.05, where its relative score
    # error is only 1e-4): autograd on the float32 model, and central differences on a float64 copy (whose truncation
    # error is ~1e-8 relative) agree on it to 1 %
    ts = [0.05, 0.5]
    auto = score_diagnostics(trained, GAUSS, VP, ts, n=128, n_derivatives=64)["fpe_residual_rel"].values
    fd = score_diagnostics(copy.deepcopy(trained).double(), GAUSS, VP, ts, n=128, n_derivatives=64,
                           derivatives=CentralDifference())["fpe_residual_rel"].values
    np.testing.assert_allclose(auto, fd, rtol=1e-2)
    assert auto[0] > 0.05 and auto[1] < 0.01
    assert assert_fpe_consistent(copy.deepcopy(trained).double(), VP, GAUSS, ts=[0.5, 0.9]).ok


def test_cli_evaluate_a_run_folder(tmp_path, capsys):
    import xarray as xr

    from scoremc.cli import main

    out = tmp_path / "run"
    assert main(["train", "--target", "fp-gmm", "--process", "ve", "--steps", "4", "--batch-size", "16",
                 "--eval-points", "16", "--out", str(out)]) == 0
    capsys.readouterr()
    # target and process from the run's config.json
    assert main(["evaluate", str(out), "--n", "32", "--samples", "64", "--n-likelihood", "8", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert "fp-gmm" in text and "MMD²" in text and "KL" in text and "evaluation.png" in text and "rel. error" in text
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with xr.open_dataset(out / "evaluation.nc") as ds:
        assert ds.sizes["t"] == 12 and ds.attrs["target"] == repr(FP) and "evaluate" in ds.attrs["command"]
        assert json.loads(ds.attrs["settings"])["seed"] == 2 and ds.sizes["sample"] == 64 and "kl" in ds
    # an explicit target and process, and another output folder
    assert main(["evaluate", str(out), "--target", "ring8", "--process", "vp", "--n", "16", "--samples", "32",
                 "--no-likelihood", "--out", str(tmp_path / "other")]) == 0
    with xr.open_dataset(tmp_path / "other" / "evaluation.nc") as ds:
        assert ds.attrs["target"] == repr(smc.builtin.ring8()) and "kl" not in ds
    with pytest.raises(SystemExit, match="config.json"):
        main(["evaluate", str(tmp_path / "nothing"), "--target", "fp-gmm", "--process", "ve"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_evaluate_on_cuda_matches_the_cpu_layout():
    from scoremc.nn import Preconditioned, ScoreMLP

    model = Preconditioned(ScoreMLP(2, hidden=16), VP, "edm", sigma_data=math.sqrt(V)).cuda()
    ds = evaluate(model, GAUSS, VP, ts=[0.3], n=64, n_derivatives=16, n_samples=64, n_likelihood=8)
    assert np.all(ds["tweedie_error"].values < 1e-8) and math.isfinite(float(ds["kl"]))
