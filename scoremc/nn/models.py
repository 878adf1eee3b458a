"""Score networks and their preconditioning.

* :class:`SinusoidalEmbedding` — the Transformer/DDPM sinusoidal features of a scalar noise
  condition (Vaswani et al. 2017; Ho et al. 2020), as in TSM §4.2's toy networks.
* :class:`ScoreMLP` — TSM §4.2's network: the input concatenated with the embedding of the noise
  condition, 3 hidden layers of 128 SiLU units, embedding size 128. Its forward is ``F(x, c_noise)``:
  a raw network, to be wrapped.
* :class:`Preconditioned` — ``s(x, t)``: the score callable every objective, the trainer and
  :mod:`scoremc.testing` take. It applies c_in, c_noise, c_skip, c_out of the shared
  :func:`scoremc.edm_precond` / :func:`scoremc.tsm_precond` at the per-row coefficients of the process,
  and converts what the network predicts (a denoiser, a score or eps) to the score with the shared
  conversions of :mod:`scoremc.precond`. Any ``nn.Module`` with the forward ``F(x, c_noise)`` fits.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import precond as _precond
from .._validation import as_count, check_process

__all__ = ["SinusoidalEmbedding", "ScoreMLP", "Preconditioned"]

#: what a network's (preconditioned) output predicts -> the shared conversion to the score
_TO_SCORE = {
    "score": lambda out, x, coef: out,
    "denoiser": lambda out, x, coef: _precond.score_from_denoiser(out, x, coef.alpha, coef.sigma),
    "eps": lambda out, x, coef: _precond.score_from_eps(out, coef.sigma),
}
#: preconditioning name -> (shared function, what its output predicts)
_PRECONDS = {"edm": "denoiser", "tsm": "score"}



def check_model_dtype(model, dtype, name: str) -> None:
    """Inputs of ``dtype`` for a torch module: its floating parameters must have that dtype (else torch
    raises a RuntimeError deep in the forward pass); TypeError naming ``name`` otherwise. Callables
    without parameters (exact scores) take any dtype."""
    params = getattr(model, "parameters", None)
    if not callable(params):
        return
    for p in params():
        if p.is_floating_point():
            if p.dtype != dtype:
                raise TypeError(f"{name} has dtype {dtype} but the model's parameters are {p.dtype}: convert "
                                f"one of them (e.g. {name}.to({p.dtype}) or model.to({dtype}))")
            return

class SinusoidalEmbedding(nn.Module):
    """Features [cos(w_j c), sin(w_j c)] of a scalar condition c, w_j = max_freq^(-j / half),
    j = 0..half-1 (half = dim / 2): (N,) or (N, 1) -> (N, dim). ``max_freq`` 10^4 as in Vaswani et al.;
    c is expected O(1) (c_noise = ln(sigma) / 4 is, for sigma in [1e-3, 1e3])."""

    def __init__(self, dim: int = 128, max_freq: float = 1e4):
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even integer >= 2, got {dim!r}")
        if not (isinstance(max_freq, (int, float)) and math.isfinite(max_freq) and max_freq > 1):
            raise ValueError(f"max_freq must be a finite number > 1, got {max_freq!r}")
        half = dim // 2
        self.dim = dim
        self.register_buffer("freqs", max_freq ** (-torch.arange(half, dtype=torch.float64) / half), persistent=False)

    def forward(self, c):
        c = c.reshape(-1, 1)
        arg = c * self.freqs.to(c.dtype)
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)


class ScoreMLP(nn.Module):
    """F(x, c): an MLP on [x, embedding(c)] (TSM §4.2: ``depth`` = 3 hidden layers of ``hidden`` = 128
    SiLU units, sinusoidal embedding of size ``embedding`` = 128), x (N, d), c (N,) or (N, 1) -> (N, d).
    The last layer starts at zero, so a preconditioned model starts at F = 0 (its c_skip part: the
    optimum for a Gaussian target of scale sigma_data, Karras et al. 2022 App. B.6)."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, embedding: int = 128):
        super().__init__()
        dim, hidden, depth = (as_count(v, name) for v, name in ((dim, "dim"), (hidden, "hidden"), (depth, "depth")))
        self.dim = dim
        self.embed = SinusoidalEmbedding(embedding)
        layers, width = [], dim + embedding
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x, c):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), got {tuple(x.shape)}")
        h = torch.cat([x, self.embed(c).to(x.dtype)], dim=-1)
        return self.head(self.body(h))


class Preconditioned(nn.Module):
    """The score s(x, t) of a network F under a process: x (N, d), t (N,) -> (N, d).

    ``precond``: ``"edm"`` (:func:`scoremc.edm_precond`, F predicts the denoiser through c_skip/c_out),
    ``"tsm"`` (:func:`scoremc.tsm_precond`, in score space), or None (F sees x and c_noise = ln(sigma/alpha)/4
    unscaled and predicts ``output``: ``"score"``, ``"denoiser"`` or ``"eps"``). ``sigma_data``: the data
    scale the preconditioning is built around (a target's ``dist.sigma_data``). The network is called
    as ``net(c_in x, c_noise)`` with c_noise of shape (N,).
    """

    def __init__(self, net: nn.Module, proc, precond: str | None = "edm", *, sigma_data: float = 1.0,
                 output: str | None = None):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be a callable module F(x, c_noise), got {type(net).__name__}")
        self.net = net
        self.proc = check_process(proc)
        if precond is not None and precond not in _PRECONDS:
            raise ValueError(f"precond must be 'edm', 'tsm' or None, got {precond!r}")
        if precond is not None and output is not None and output != _PRECONDS[precond]:
            raise ValueError(f"precond={precond!r} predicts the {_PRECONDS[precond]}; output={output!r} contradicts it")
        output = _PRECONDS[precond] if precond is not None else (output or "score")
        if output not in _TO_SCORE:
            raise ValueError(f"output must be 'score', 'denoiser' or 'eps', got {output!r}")
        if not (isinstance(sigma_data, (int, float)) and not isinstance(sigma_data, bool)
                and math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive finite number, got {sigma_data!r}")
        self.precond, self.output, self.sigma_data = precond, output, float(sigma_data)

    def extra_repr(self) -> str:
        return f"proc={self.proc!r}, precond={self.precond!r}, output={self.output!r}, sigma_data={self.sigma_data:g}"

    def coefficients(self, t, like):
        """Per-row process coefficients at t (N,) as (N, 1) tensors of ``like``'s dtype and device."""
        if isinstance(t, torch.Tensor):  # .to keeps the autograd link to t (d/dt by autograd)
            t = t.to(dtype=like.dtype, device=like.device)
        else:
            t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
        t = t.reshape(-1, 1)
        return self.proc.at(t)

    def forward(self, x, t):
        coef = self.coefficients(t, x)
        if self.precond is None:
            F = self.net(x, (0.25 * torch.log(coef.sigma / coef.alpha)).reshape(-1))
            return _TO_SCORE[self.output](F, x, coef)
        make = _precond.edm_precond if self.precond == "edm" else _precond.tsm_precond
        pc = make(coef.sigma, self.sigma_data, alpha=coef.alpha) if self.precond == "edm" else \
            make(coef.sigma, coef.alpha, self.sigma_data)
        F = self.net(pc.network_input(x), pc.c_noise.reshape(-1))
        return _TO_SCORE[self.output](pc.output(F, x), x, coef)
