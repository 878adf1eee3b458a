"""Testing toolkit: hypothesis strategies and statistical assertions built on the exact layer.

Needs the ``test`` extra (hypothesis); ``import scoremc`` never imports this package.
"""
from .assertions import (CheckReport, assert_conservative, assert_estimator_unbiased, assert_fpe_consistent,
                         assert_score_close, assert_tweedie, call_model, default_times, torch_score)
from .stats import assert_cov_matches, assert_mean_matches, gaussian_mixture_product_var, mean_chi2_statistic
from .strategies import gaussian_mixtures, empirical_targets, processes, times, points

__all__ = ["assert_score_close", "assert_tweedie", "assert_estimator_unbiased", "assert_fpe_consistent",
           "assert_conservative", "CheckReport", "call_model", "default_times", "torch_score",
           "gaussian_mixtures", "empirical_targets", "processes", "times", "points",
           "assert_mean_matches", "assert_cov_matches", "mean_chi2_statistic",
           "gaussian_mixture_product_var"]
