"""Sliced score matching (Song et al. 2019; Pang et al. 2020, as LCSS Eqs. 6-7 print them): SSM and
its finite-difference form FD-SSM. Evaluated by :func:`scoremc.loss` like every objective.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ._validation import call_score
from .derivatives import DerivativeSource, Hutchinson, resolve
from .objectives import Batch, Objective

__all__ = ["SSM", "FDSSM"]


@dataclass(frozen=True)
class SSM(Objective):
    """Sliced score matching as LCSS Eq. 6 prints it (Pang et al. 2020 scaling):

        (1/eps^2) v^T (grad_x s) v + ||s||^2 / (2d),   E[v v^T] = eps^2 I / d,

    which, with v = eps u / sqrt(d) and unit probes E[u u^T] = I, is div_est(s) / d + ||s||^2 / (2d)
    for any eps: the Hutchinson estimate of the divergence. ``divergence`` is that estimate's source:
    ``Hutchinson(M, law)`` (default, one Gaussian probe; J v by central differences, or pass
    ``Hutchinson(1, jvp=Autograd())`` on torch), or an exact source (``Exact()``, ``Jacobian(fn)``,
    ``Autograd()``), which gives the Hyvarinen objective J_SM / d = (tr grad s + 1/2 ||s||^2) / d
    (LCSS Eqs. 3-4) that SSM is unbiased for.
    """

    name: ClassVar[str] = "ssm"
    divergence: DerivativeSource = Hutchinson(1)

    def __post_init__(self):
        if not isinstance(self.divergence, DerivativeSource):
            raise TypeError(f"divergence must be a derivative source (Hutchinson(), Exact(), ...), got "
                            f"{type(self.divergence).__name__}")

    def per_sample(self, b: Batch):
        source = resolve(self.divergence, b.score_fn)
        div = source.divergence(b.score_fn, b.xt, b.t, proc=b.proc, rng=b.rng)
        return div / b.dim + b.xp.sum(b.s * b.s, axis=-1) / (2 * b.dim)


@dataclass(frozen=True)
class FDSSM(Objective):
    """Finite-difference sliced score matching (LCSS Eq. 7; Pang et al. 2020):

        (1/(2 eps^2)) (v^T s(x + v) - v^T s(x - v)) + ||s(x + v) + s(x - v)||^2 / (8d),

    E[v v^T] = eps^2 I / d, averaged over the probes of ``probes`` (a :class:`Hutchinson` design: its
    ``n_probes``/``law``, or fixed unit probes, scaled by eps / sqrt(d)); equal to :class:`SSM` in
    expectation up to O(eps^2). ``eps`` is not given in LCSS; 0.01 is scoremc's choice.
    """

    name: ClassVar[str] = "fdssm"
    eps: float = 0.01
    probes: Hutchinson = Hutchinson(1)

    def __post_init__(self):
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a positive number, got {self.eps!r}")
        if not isinstance(self.probes, Hutchinson):
            raise TypeError(f"probes must be a Hutchinson probe design, got {type(self.probes).__name__}")

    def per_sample(self, b: Batch):
        xp = b.xp
        v = self.probes.probe_batch(b.xt, b.rng) * (self.eps / math.sqrt(b.dim))
        x = xp.broadcast_to(b.xt[None], tuple(v.shape))
        both = call_score(b.score_fn, xp.stack([x + v, x - v]), b.t)
        plus, minus = both[0], both[1]
        first = xp.sum(v * (plus - minus), axis=-1) / (2 * self.eps**2)
        second = xp.sum((plus + minus) ** 2, axis=-1) / (8 * b.dim)
        return xp.mean(first + second, axis=0)
