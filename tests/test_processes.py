"""Forward processes: derivatives, SDE coefficients, inverse maps and domains."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import scoremc as smc
from scoremc.testing import processes, times


def _fd(fn, t, h):
    # 4th-order central difference
    return (-fn(t + 2 * h) + 8 * fn(t + h) - 8 * fn(t - h) + fn(t - 2 * h)) / (12 * h)


@given(proc=processes(), data=st.data())
def test_derivatives_match_finite_differences(proc, data):
    t = data.draw(times(proc))
    h = 1e-4 * max(t, 1e-2) if isinstance(proc, smc.EDM) else 1e-4
    for exact, fn in ((proc.dalpha, proc.alpha), (proc.dsigma, proc.sigma)):
        fd = _fd(fn, t, h)
        assert exact(t) == pytest.approx(fd, rel=1e-7, abs=1e-9)


@given(proc=processes(), data=st.data())
def test_g2_is_consistent_with_the_kernel(proc, data):
    # g^2 = d(sigma^2)/dt - 2 f sigma^2 and f = d log(alpha)/dt make N(alpha x0, sigma^2) the
    # exact transition law of dx = f x dt + g dw
    t = data.draw(times(proc))
    s, ds = proc.sigma(t), proc.dsigma(t)
    f = proc.drift_coef(t)
    assert f == pytest.approx(proc.dalpha(t) / proc.alpha(t), rel=1e-12, abs=1e-14)
    assert proc.g2(t) == pytest.approx(2 * s * ds - 2 * f * s * s, rel=1e-10)
    assert proc.diffusion(t) == pytest.approx(math.sqrt(proc.g2(t)), rel=1e-14)


@given(proc=processes(), data=st.data())
def test_inverse_maps_round_trip(proc, data):
    t = data.draw(times(proc, 0.01, 0.99))
    assert proc.t_from_sigma(proc.sigma(t)) == pytest.approx(t, rel=1e-9)
    assert proc.t_from_log_snr(proc.log_snr(t)) == pytest.approx(t, rel=1e-9)


@pytest.mark.parametrize("proc", smc.PROCESSES, ids=lambda p: type(p).__name__)
def test_log_snr_decreases_and_methods_vectorise(proc):
    t = np.linspace(0.01, 0.99, 50) * (10.0 if isinstance(proc, smc.EDM) else 1.0)
    lam = proc.log_snr(t)
    assert lam.shape == t.shape and np.all(np.diff(lam) < 0)
    x = np.ones((50, 3))
    assert proc.drift(x, t).shape == (50, 3)
    np.testing.assert_allclose(proc.drift(x, t)[:, 0], proc.drift_coef(t))
    assert isinstance(proc.sigma(0.5), np.floating)


def test_known_values():
    # Song et al. 2021 / LCSS §3.2 (FLAG-L4): sqrt(2 ln 5000) = 4.1273 for VE(0.01, 50); VP alpha(1) = e^-5.025
    ve = smc.VE()
    assert ve.diffusion(0.0) / ve.sigma(0.0) == pytest.approx(4.1273, abs=1e-4)
    assert smc.VP().alpha(1.0) == pytest.approx(math.exp(-5.025), rel=1e-14)
    assert smc.SubVP().sigma(0.5) == pytest.approx(1 - smc.VP().alpha(0.5) ** 2, rel=1e-14)
    assert smc.Cosine().g2(0.5) == pytest.approx(math.pi, rel=1e-14)
    assert smc.EDM().sigma(3.0) == 3.0


def test_small_t_keeps_relative_precision():
    # sigma ~ sqrt(beta_min t) near 0: computed through expm1, not 1 - alpha^2
    vp = smc.VP()
    t = 1e-12
    assert vp.sigma(t) == pytest.approx(math.sqrt(0.1 * t), rel=1e-6)
    assert smc.SubVP().sigma(t) == pytest.approx(0.1 * t, rel=1e-6)


def test_karras_schedule_is_the_corrected_formula():
    # FLAG-S1: (u smax^(1/rho) + (1-u) smin^(1/rho))^rho hits sigma_min at u=0 and sigma_max at
    # u=1; the printed (.)^rho-inside form would give sigma_min^(rho^2) at u = 0
    edm = smc.EDM()
    assert edm.karras_sigma(0.0) == pytest.approx(0.002, rel=1e-13)
    assert edm.karras_sigma(1.0) == pytest.approx(80.0, rel=1e-13)
    grid = smc.karras_sigmas(18)
    assert grid[0] == pytest.approx(80.0) and grid[-1] == pytest.approx(0.002)
    assert np.all(np.diff(grid) < 0)
    # geometric interpolation in sigma^(1/rho): midpoint check
    mid = ((80.0 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert edm.karras_sigma(0.5) == pytest.approx(mid, rel=1e-13)


@pytest.mark.parametrize("proc, bad", [(smc.VE(), 1.5), (smc.VP(), -0.1), (smc.Cosine(), 1.0),
                                       (smc.EDM(), -1.0), (smc.SubVP(), float("nan"))])
def test_t_outside_domain_raises(proc, bad):
    with pytest.raises(ValueError, match="t"):
        proc.sigma(bad)


def test_invalid_parameters_raise():
    with pytest.raises(ValueError, match="sigma_min"):
        smc.VE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="beta_min"):
        smc.VP(beta_min=-1.0)
    with pytest.raises(ValueError, match="sigma"):
        smc.VP().t_from_sigma(2.0)
    with pytest.raises(ValueError, match="sigma must be positive"):
        smc.VE().t_from_sigma(0.0)
    with pytest.raises(TypeError, match="n must be an integer"):
        smc.karras_sigmas(3.5)
