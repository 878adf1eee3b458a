"""The STF target for the torch layer (STF Eqs. 5-7; Algorithm 1's shared reference batch).

``stf_target(xt, sigma, ref, alpha=1.0, *, x0=None)`` *is* the shared, namespace-generic
:func:`scoremc.stf_target` (one formula for NumPy and torch): streamed over blocks of the reference
batch, extra memory O(B n) rather than the official code's B x n x d broadcast, accurate in float32 at
every sigma (float64 GEMM-form logits with a rigorous error bound, and explicit float64 differences for
the candidates that bound cannot separate; :mod:`scoremc.stf_target`), differentiable by autograd.
Tensors keep their dtype and device and are never converted to NumPy.

No torch-only kernel: on the CPU the shared function already runs 27-31x faster than the broadcast
formulation at 1/12 to 1/64 of its peak memory (B = 16, n = 256-4096, d = 3072, float32;
``benchmarks/bench_side_by_side.py``, results in ``benchmarks/README.md``), and its time goes to float64
GEMMs and elementwise passes that a torch rewrite would issue the same way.
"""
from __future__ import annotations

from ..stf_target import stf_target

__all__ = ["stf_target"]
