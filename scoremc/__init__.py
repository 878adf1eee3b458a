"""scoremc: score estimation in diffusion models with an exact reference.

The reference layer (NumPy + Numba, float64) gives exact marginals, posteriors and scores of
Gaussian mixtures and finite data sets under linear-Gaussian noising. ``scoremc.nn`` (torch) is
the only module that imports torch.
"""
from .fpe import fpe_operator, fpe_residual
from .noising import ExactScore, Posterior, exact_score, marginal, posterior
from .processes import EDM, PROCESSES, VE, VP, Cosine, Process, SubVP, karras_sigmas
from .targets import (Empirical, GaussianMixture, divergence, hessian, logpdf, sample, score,
                      score_jacobian)

__version__ = "0.1.0"

__all__ = [
    "Process", "VE", "VP", "SubVP", "Cosine", "EDM", "PROCESSES", "karras_sigmas",
    "GaussianMixture", "Empirical", "logpdf", "score", "hessian", "score_jacobian", "divergence", "sample",
    "marginal", "posterior", "Posterior", "exact_score", "ExactScore",
    "fpe_operator", "fpe_residual",
]
