"""scoremc: score estimation in diffusion models with an exact reference.

Every public type and verb is importable from here (``smc.DSI()``, ``smc.variance(...)``); the
submodules are where the code lives. One formula, two array libraries: the formulas run on NumPy
(float64, with a private Numba fast path) and on torch tensors (dtype and device of the input,
differentiable). ``scoremc.nn`` is the only module that imports torch; ``import scoremc`` does not.
"""
from . import builtin
# forward processes and noise levels
from .processes import EDM, PROCESSES, VE, VP, Coefficients, Cosine, Process, SubVP
from .noise_levels import karras_sigmas, lognormal_sigmas, uniform_times
# targets with exact laws, and their exact noising
from .distributions import Empirical, GaussianMixture, divergence, hessian, logpdf, sample, score
from .noising import ExactScore, Posterior, exact_score, marginal, noised_sample, posterior
from .analytic import AnalyticScore
# score identities, Monte Carlo estimates and their variance by noise level
from .mixture_weights import Kappa, KappaBar, WeightRule
from .identities import (DSI, STF, TSI, Identity, Mix, OptimalMix, PointwiseIdentity, estimate, integrand_samples,
                         stf_target)
from .variance import save_dataset, variance
# derivative sources
from .derivatives import Autograd, CentralDifference, DerivativeSource, Divergence, Exact, Hutchinson, Jacobian
# weightings, preconditioning, training objectives
from .weighting import (DSMOptimal, EDMWeighting, InverseSigmaSquared, Likelihood, SigmaSquared, TSMOptimal,
                        Uniform, Weighting)
from .precond import (Precond, denoiser_from_eps, denoiser_from_score, edm_precond, eps_from_denoiser,
                      eps_from_score, score_from_denoiser, score_from_eps, tsm_precond)
from .objectives import DSM, TSM, MixSM, Objective, STFLoss, loss
from .lcss import LCSS
from .sliced import FDSSM, SSM
from .fp_regularized import FPRegularized
from .local_stf import LocalSTF, LocalSTFLoss  # STF with a local reference batch (beyond the papers)
# the score Fokker-Planck equation and conservativity diagnostics
from .fpe import fpe_operator, fpe_residual
from .conservativity import antisymmetric_norm, curl
from .diagnostics import fpe_diagnostics, r_dsm_like, r_fp

__version__ = "1.0.0"

__all__ = [
    "builtin",
    # processes, noise levels
    "Process", "Coefficients", "VE", "VP", "SubVP", "Cosine", "EDM", "PROCESSES",
    "karras_sigmas", "lognormal_sigmas", "uniform_times",
    # targets, noising
    "GaussianMixture", "Empirical", "logpdf", "score", "hessian", "divergence", "sample",
    "marginal", "posterior", "Posterior", "exact_score", "ExactScore", "noised_sample", "AnalyticScore",
    # identities, estimates, variance
    "Identity", "PointwiseIdentity", "DSI", "TSI", "Mix", "WeightRule", "Kappa", "KappaBar", "OptimalMix", "STF",
    "stf_target", "integrand_samples", "estimate", "variance", "save_dataset",
    # derivative sources
    "DerivativeSource", "Exact", "Jacobian", "Divergence", "CentralDifference", "Hutchinson", "Autograd",
    # weightings, preconditioning, objectives
    "Weighting", "Uniform", "SigmaSquared", "InverseSigmaSquared", "Likelihood", "EDMWeighting", "DSMOptimal",
    "TSMOptimal",
    "Precond", "edm_precond", "tsm_precond", "denoiser_from_score", "score_from_denoiser", "eps_from_score",
    "score_from_eps", "eps_from_denoiser", "denoiser_from_eps",
    "Objective", "DSM", "TSM", "MixSM", "STFLoss", "LCSS", "SSM", "FDSSM", "FPRegularized", "loss",
    "LocalSTF", "LocalSTFLoss",
    # score-FPE and conservativity
    "fpe_operator", "fpe_residual", "curl", "antisymmetric_norm", "r_fp", "r_dsm_like", "fpe_diagnostics",
]
