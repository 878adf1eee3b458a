"""Score fields that know their own derivatives in closed form.

:class:`AnalyticScore` is the contract the :class:`~scoremc.derivatives.Exact` derivative source and the
closed-form score Fokker-Planck residual rely on. :class:`scoremc.ExactScore` implements it for
mixtures; a user's analytic model (or a network with hand-derived derivatives) can implement it too
and then gets exact SSM / FP-regularised losses and exact FPE residuals instead of finite differences.
"""
from __future__ import annotations

import abc

from ._array import matvec, namespace

__all__ = ["AnalyticScore"]


class AnalyticScore(abc.ABC):
    """Abstract score field s(x, t) with closed-form derivatives in x and t.

    Every method takes x (..., d) and t broadcasting against ``x.shape[:-1]`` (NumPy or torch):
    ``__call__`` -> (..., d), ``hessian`` (the Jacobian d s_i / d x_j) -> (..., d, d),
    ``divergence`` -> (...), ``grad_divergence`` -> (..., d), ``dt`` (d/dt at fixed x) -> (..., d).
    """

    @abc.abstractmethod
    def __call__(self, x, t): ...

    @abc.abstractmethod
    def hessian(self, x, t): ...

    @abc.abstractmethod
    def divergence(self, x, t): ...

    @abc.abstractmethod
    def grad_divergence(self, x, t): ...

    @abc.abstractmethod
    def dt(self, x, t): ...

    def fpe_terms(self, x, t):
        """(div s, grad div s, J^T s, J^T x, s) at x's rows, J[i, j] = d s_i / d x_j: what the closed-form
        score-FPE residual needs (grad_x ||s||^2 = 2 J^T s, grad_x <x, s> = s + J^T x). A network's J
        is not symmetric; a score with a symmetric J (a Hessian) may compute these in one pass."""
        JT, s = namespace(x).matrix_transpose(self.hessian(x, t)), self(x, t)
        return self.divergence(x, t), self.grad_divergence(x, t), matvec(JT, s), matvec(JT, x), s
