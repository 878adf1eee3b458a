"""The Numba kernels' hand-written exp (branch-free, so the softmax loops vectorise) against libm."""
import numpy as np

from scoremc import _kernels


def _exp(x):
    out = np.empty_like(x)
    _kernels._exp_shifted(np.ascontiguousarray(x), 0.0, out)
    return out


def test_exp_matches_libm_to_two_ulp_over_the_normal_range():
    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.uniform(0, 708, 200_000), -rng.uniform(0, 1e-6, 1000), [0.0, -1e-300, -np.log(2.0)]])
    ref = np.exp(x)
    ulps = np.abs(_exp(x) - ref) / np.spacing(ref)
    assert ulps.max() <= 2


def test_exp_underflow_and_nan():
    x = np.array([-720.0, -744.0, -745.1, -746.0, -1e4, -np.inf, np.nan])
    got = _exp(x)
    ref = np.exp(x)
    # subnormal results: absolute error within one subnormal step; far below: (near) zero
    assert np.all(np.abs(got[:5] - ref[:5]) <= 2 * np.spacing(0.0) + 2 * np.spacing(ref[:5]))
    assert got[5] <= np.spacing(0.0) and np.isnan(got[6])
