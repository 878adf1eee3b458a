"""scoremc: score estimation in diffusion models with an exact reference.

The reference layer (NumPy + Numba, float64) gives exact marginals, posteriors and scores of
Gaussian mixtures and finite data sets under linear-Gaussian noising. ``scoremc.nn`` (torch) is
the only module that imports torch.
"""
from .conservativity import antisymmetric_norm, curl
from .diagnostics import fpe_diagnostics, r_dsm_like, r_fp
from .fpe import fpe_operator, fpe_residual
from .noising import ExactScore, Posterior, exact_score, marginal, posterior
from .objectives import DSM, TSM, FPRegularized, MixSM, Objective, STFLoss, loss
from .stein import FDSSM, LCSS, SSM
from .precond import (Precond, denoiser_from_eps, denoiser_from_score, edm_precond, eps_from_denoiser,
                      eps_from_score, score_from_denoiser, score_from_eps, tsm_precond)
from .processes import EDM, PROCESSES, VE, VP, Cosine, Process, SubVP, karras_sigmas
from .targets import (Empirical, GaussianMixture, divergence, hessian, logpdf, sample, score,
                      score_jacobian)
from .weighting import (DSMOptimal, EDMWeighting, InverseSigmaSquared, Likelihood, SigmaSquared, TSMOptimal,
                        Uniform, Weighting, lognormal_sigmas, uniform_times)

__version__ = "0.1.0"

__all__ = [
    "Process", "VE", "VP", "SubVP", "Cosine", "EDM", "PROCESSES", "karras_sigmas",
    "GaussianMixture", "Empirical", "logpdf", "score", "hessian", "score_jacobian", "divergence", "sample",
    "marginal", "posterior", "Posterior", "exact_score", "ExactScore",
    "fpe_operator", "fpe_residual",
    # weightings, preconditioning, objectives, score-FPE diagnostics
    "Weighting", "Uniform", "SigmaSquared", "InverseSigmaSquared", "Likelihood", "EDMWeighting", "DSMOptimal",
    "TSMOptimal", "lognormal_sigmas", "uniform_times",
    "Precond", "edm_precond", "tsm_precond", "denoiser_from_score", "score_from_denoiser", "eps_from_score",
    "score_from_eps", "eps_from_denoiser", "denoiser_from_eps",
    "Objective", "DSM", "TSM", "MixSM", "STFLoss", "LCSS", "SSM", "FDSSM", "FPRegularized", "loss",
    "curl", "antisymmetric_norm", "r_fp", "r_dsm_like", "fpe_diagnostics",
]
