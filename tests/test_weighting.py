"""Loss weightings and noise-level sampling (TSM §4.1; Karras et al. 2022; FLAG-T7, FLAG-T8, FLAG-L4)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import scoremc as smc
from scoremc.identities import Kappa
from scoremc.testing import processes, times
from scoremc.weighting import WEIGHTINGS, normalizing_constant

sigma_datas = st.floats(0.1, 3.0)


@pytest.mark.parametrize("t", [0.05, 0.4, 0.9])
def test_known_values_under_the_cosine_schedule(t):
    proc = smc.Cosine()
    a, s = np.cos(np.pi * t / 2), np.sin(np.pi * t / 2)
    sd = 0.7
    expect = {
        smc.Uniform(): 1.0,
        smc.SigmaSquared(): s**2,
        smc.InverseSigmaSquared(): 1 / s**2,
        smc.Likelihood(): np.pi * np.tan(np.pi * t / 2),  # g^2 of TSM §4.1
        smc.DSMOptimal(sd): s**2 * (s**2 + a**2 * sd**2) / (a**2 * sd**2),
        smc.DSMOptimal(sd, alpha_aware=False): s**2 / sd**2 * (s**2 + sd**2),
        smc.TSMOptimal(sd): a**2 * sd**2 / s**2 * (s**2 + a**2 * sd**2),
        smc.EDMWeighting(sd): (s**2 + a**2 * sd**2) / (s * sd) ** 2,
    }
    for w, value in expect.items():
        np.testing.assert_allclose(w(proc, t), value, rtol=1e-13, err_msg=w.name)


def test_edm_weighting_is_karras_table_1_at_alpha_one():
    # EDM: alpha = 1, sigma = t, lambda = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 in denoiser space
    sig = np.array([0.002, 0.5, 80.0])
    np.testing.assert_allclose(smc.EDMWeighting(0.5)(smc.EDM(), sig), (sig**2 + 0.25) / (sig * 0.5) ** 2, rtol=1e-14)
    assert smc.EDMWeighting().space == "x0" and smc.DSMOptimal().space == "score"


def test_likelihood_weighting_is_not_sigma_squared_for_ve():
    # FLAG-L4: g^2 = 2 ln(sigma_max/sigma_min) sigma^2, ~ 17.03 sigma^2 for (0.01, 50)
    ve, t = smc.VE(), np.linspace(0, 1, 5)
    np.testing.assert_allclose(smc.Likelihood()(ve, t) / smc.SigmaSquared()(ve, t), 2 * np.log(5000), rtol=1e-13)


@given(proc=processes(), sd=sigma_datas, data=st.data())
def test_edm_weighting_in_score_space_is_dsm_optimal(proc, sd, data):
    # x0-space lambda times (sigma^2 / alpha)^2 (since D - x0 = sigma^2/alpha (s - L_DSI)) is FLAG-T8's form
    t = data.draw(times(proc))
    np.testing.assert_allclose(smc.EDMWeighting(sd).score_space(proc, t), smc.DSMOptimal(sd)(proc, t), rtol=1e-12)


@given(proc=processes(), sd=sigma_datas, data=st.data())
def test_optimal_weightings_ratio_is_kappa_odds_squared(proc, sd, data):
    # TSM §4.1 (alpha-aware forms): DSM-opt / TSM-opt = sigma^4 / (alpha sigma_d)^4 = (kappa / (1 - kappa))^2
    t = data.draw(times(proc))
    k = float(Kappa()(smc.GaussianMixture([1.0], [[0.0]], [sd**2]), proc.at(t)))
    ratio = smc.DSMOptimal(sd)(proc, t) / smc.TSMOptimal(sd)(proc, t)
    np.testing.assert_allclose(ratio, (k / (1 - k)) ** 2, rtol=1e-10)


@pytest.mark.parametrize("proc", [smc.VE(), smc.EDM()], ids=["VE", "EDM"])
def test_printed_dsm_optimal_is_the_alpha_one_case(proc):
    t = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(smc.DSMOptimal(1.3, alpha_aware=False)(proc, t), smc.DSMOptimal(1.3)(proc, t),
                               rtol=1e-14)


def _cosine_antiderivatives():
    c = np.pi / 2
    return {
        "song": lambda t: t / 2 - np.sin(np.pi * t) / (2 * np.pi),                       # int sin^2
        "song-as-printed": lambda t: -np.cos(c * t) / np.sin(c * t) / c,                  # int 1/sin^2
        "dsm-optimal": lambda t: np.tan(c * t) / c - t,                                   # int tan^2
        "dsm-optimal-as-printed": lambda t: (3 * t / 8 - np.sin(np.pi * t) / (2 * np.pi)  # int sin^2 + sin^4
                                             + np.sin(2 * np.pi * t) / (16 * np.pi)) + t / 2
                                            - np.sin(np.pi * t) / (2 * np.pi),
        "tsm-optimal": lambda t: -np.cos(c * t) / np.sin(c * t) / c - t,                  # int cot^2
        "uniform": lambda t: t,
    }


@pytest.mark.parametrize("t_min", [1e-3, 1e-2])
def test_normalizing_constants_match_closed_forms(t_min):
    # sigma_data = 1 and alpha^2 + sigma^2 = 1 under the cosine schedule (FLAG-T7: needs t_min)
    proc = smc.Cosine()
    for name, F in _cosine_antiderivatives().items():
        expect = F(1 - t_min) - F(t_min)
        got = normalizing_constant(WEIGHTINGS[name], proc, t_min, 1 - t_min)
        np.testing.assert_allclose(got, expect, rtol=1e-10, err_msg=name)


def test_likelihood_normalizer_is_minus_two_log_cos():
    got = normalizing_constant(smc.Likelihood(), smc.Cosine(), 0.0, 0.9)
    np.testing.assert_allclose(got, -2 * np.log(np.cos(0.45 * np.pi)), rtol=1e-11)


def test_lognormal_sigmas_follow_edm_training_law():
    # ln sigma ~ N(-1.2, 1.2^2) (Karras et al. 2022); KS test at level 1e-3 with a fixed seed
    sig = smc.lognormal_sigmas(20000, np.random.default_rng(7))
    assert sig.shape == (20000,) and sig.dtype == np.float64 and (sig > 0).all()
    assert stats.kstest(np.log(sig), stats.norm(-1.2, 1.2).cdf).pvalue > 1e-3
    same = smc.lognormal_sigmas(5, np.random.default_rng(3), p_mean=0.0, p_std=1.0)
    np.testing.assert_array_equal(same, np.exp(np.random.default_rng(3).standard_normal(5)))


def test_uniform_times_and_karras_grid():
    t = smc.uniform_times(1000, np.random.default_rng(1), 1e-5, 1.0)
    assert t.min() >= 1e-5 and t.max() <= 1.0
    grid = smc.karras_sigmas(18)
    rho = 7.0
    expect = (80 ** (1 / rho) + np.arange(18) / 17 * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    np.testing.assert_allclose(grid, expect, rtol=1e-13)


def test_invalid_input_is_refused():
    with pytest.raises(ValueError, match="sigma_data"):
        smc.DSMOptimal(0.0)
    with pytest.raises(ValueError, match="sigma_data"):
        smc.TSMOptimal(-1.0)
    with pytest.raises(TypeError, match="alpha_aware"):
        smc.DSMOptimal(1.0, alpha_aware=1)
    with pytest.raises(TypeError, match="proc"):
        smc.Uniform()("cosine", 0.5)
    with pytest.raises(ValueError, match="t_min"):
        normalizing_constant(smc.Uniform(), smc.Cosine(), 0.5, 0.2)
    with pytest.raises(ValueError, match="outside the domain"):
        normalizing_constant(smc.Uniform(), smc.Cosine(), 0.0, 1.0)
    with pytest.raises(TypeError, match="weighting"):
        normalizing_constant("uniform", smc.Cosine(), 0.1, 0.2)
    with pytest.raises(TypeError, match="rng"):
        smc.lognormal_sigmas(3, None)
    with pytest.raises(ValueError, match="p_std"):
        smc.lognormal_sigmas(3, np.random.default_rng(0), p_std=0.0)
    with pytest.raises(TypeError, match="n"):
        smc.uniform_times(2.5, np.random.default_rng(0))
