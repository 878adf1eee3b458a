"""Statistical assertions with a stated false-alarm rate.

Each check is a test of a null hypothesis that holds for a correct implementation, at a
family-wise level ``level`` (the probability of failing when nothing is wrong), using the
central limit theorem with moments estimated from the samples themselves.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["mean_chi2_statistic", "assert_mean_matches", "assert_cov_matches", "gaussian_mixture_product_var"]


def _round_off_scale(samples, mean) -> float:
    """Size below which a difference of means is round-off, not evidence: a sum of m terms
    accumulated in order (numpy along a strided axis) errs by up to ~m eps |x|."""
    m = np.asarray(samples).shape[0]
    rel = max(1e-12, 4.0 * m * np.finfo(np.float64).eps)
    return rel * max(1.0, float(np.abs(samples).max()), float(np.abs(mean).max()))


def mean_chi2_statistic(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """m (xbar - mean)^T cov^{-1} (xbar - mean), ~ chi^2_d under the null. samples (m, d).

    The covariance is floored at the round-off scale of the data, so that (near-)point masses,
    e.g. posteriors of a finite data set at small sigma, are compared to round-off.
    """
    m, d = samples.shape
    diff = samples.mean(axis=0) - mean
    lam, Q = np.linalg.eigh(np.atleast_2d(cov))
    lam = np.maximum(lam, _round_off_scale(samples, mean) ** 2)
    return float(m * ((Q.T @ diff) ** 2 / lam).sum())


def assert_mean_matches(samples, mean, cov, level: float = 0.01, what: str = "sample mean"):
    """Fail if the sample mean is outside the (1 - level) chi^2 ellipsoid around ``mean``.

    ``cov`` is the exact covariance of one sample (d, d).
    """
    samples = np.asarray(samples, dtype=np.float64)
    stat = mean_chi2_statistic(samples, np.asarray(mean), np.asarray(cov))
    bound = stats.chi2.ppf(1.0 - level, df=samples.shape[1])
    if not stat <= bound:
        raise AssertionError(f"{what}: chi^2 statistic {stat:.4g} exceeds the {100 * (1 - level):.4g}% "
                             f"bound {bound:.4g} (d={samples.shape[1]}, m={samples.shape[0]})")


def assert_cov_matches(samples, cov, mean=None, product_var=None, level: float = 0.01,
                       what: str = "sample covariance"):
    """Fail if any entry of the sample covariance differs from ``cov`` by more than the
    Bonferroni-corrected normal quantile times its standard error, at family-wise level
    ``level`` over the d(d+1)/2 distinct entries.

    The standard error is sqrt(Var(c_i c_j) / m) with c = x - mean. Pass the exact ``mean`` and
    ``product_var`` (d, d) = Var(c_i c_j) when known (see :func:`gaussian_mixture_product_var`):
    estimated from the samples it misses rare components that the sample never drew.
    """
    x = np.asarray(samples, dtype=np.float64)
    m, d = x.shape
    c = x - (x.mean(axis=0) if mean is None else np.asarray(mean))
    prods = c[:, :, None] * c[:, None, :]
    est = prods.mean(axis=0)
    var = prods.var(axis=0, ddof=1) if product_var is None else np.asarray(product_var)
    se = np.maximum(np.sqrt(np.maximum(var, 0.0) / m), _round_off_scale(x, cov) ** 2)
    iu = np.triu_indices(d)
    z = np.abs(est - np.asarray(cov))[iu] / se[iu]
    bound = stats.norm.ppf(1.0 - level / (2 * len(iu[0])))
    if not (z <= bound).all():
        j = int(np.argmax(z))
        raise AssertionError(f"{what}: entry {(int(iu[0][j]), int(iu[1][j]))} is {z[j]:.3g} standard errors "
                             f"from the exact value (bound {bound:.3g} at level {level})")


def gaussian_mixture_product_var(weights, means, covs, mean=None) -> np.ndarray:
    """Exact Var(c_i c_j), c = x - mean, for x ~ sum_k w_k N(means_k, covs_k); shape (d, d).

    Isserlis' theorem per component, with a = mean_k - mean:
    E[c_i^2 c_j^2] = a_i^2 a_j^2 + a_i^2 S_jj + a_j^2 S_ii + 4 a_i a_j S_ij + S_ii S_jj + 2 S_ij^2.
    ``weights`` (K,), ``means`` (K, d), ``covs`` (K, d, d).
    """
    w, mu, S = np.asarray(weights), np.asarray(means), np.asarray(covs)
    mean = w @ mu if mean is None else np.asarray(mean)
    a = mu - mean
    D = np.diagonal(S, axis1=1, axis2=2)
    second = np.einsum("k,kij->ij", w, S + a[:, :, None] * a[:, None, :])
    fourth = ((a**2)[:, :, None] * (a**2)[:, None, :] + (a**2)[:, :, None] * D[:, None, :]
              + D[:, :, None] * (a**2)[:, None, :] + 4 * a[:, :, None] * a[:, None, :] * S
              + D[:, :, None] * D[:, None, :] + 2 * S**2)
    return np.einsum("k,kij->ij", w, fourth) - second**2
