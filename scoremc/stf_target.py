"""The stable target field of STF (Xu, Tong & Jaakkola 2023, Eqs. 5-7), streamed and accurate in float32.

    v(x_t) = sum_k w_k (alpha x_k - x_t) / sigma^2,   w_k = softmax_k(-|x_t - alpha x_k|^2 / (2 sigma^2))

(the alpha-scaled kernel of STF App. A) over a reference batch {x_k}: one batch ``ref`` (n, d) shared by
every row (STF Algorithm 1, where the batch contains the minibatch), or one per row (..., n, d) (the
estimator :class:`scoremc.STF`). One implementation for NumPy and torch (``array_api_compat``).

Why neither textbook form. The official code broadcasts x_t - alpha x_k into B x n x d arrays (19 GB in
float32 at B = 128, n = 4096, d = 3072). The GEMM form of the logits, alpha x_k . x_t - alpha^2 |x_k|^2 / 2
(the row's |x_t|^2 cancels in the softmax), needs only B x n, but it forms a small distance as a
difference of large numbers: in float32 an absolute error ~1e-4 in |x_t - alpha x_k|^2 for images in
[-1, 1]^3072 is an error ~10 in a logit at sigma = 0.002, which scrambles the weights of near-duplicates.

The remedy, per row (memory O(B n) plus blocks of ``CHUNK`` floats; never B x n x d):

1. GEMM-form logits in float64, on blocks of the reference batch cast to float64 (exact for float32
   input), each with a rigorous bound M_k on its error (:func:`_error_factor`).
2. Candidates: the points whose logit can lie within ``DROP + log n`` of the row's largest,
   l_k + M_k >= max_j (l_j - M_j) - DROP - log n. The others have true weight below e^-DROP / n
   relative to the largest, so together they move v by a relative e^-42 ~ 6e-19: they are dropped.
3. A row whose candidates all have M_k <= tau (``TAU_ULPS`` ulps of the output dtype) keeps its
   float64 GEMM logits: its weights err by a relative 2 tau at most. Any other row (small sigma, or
   float64 output) recomputes its candidates' logits from explicit float64 differences x_t - alpha x_k
   (no cancellation; exact products for float32 input), streamed over blocks of candidates with an
   online softmax, and sums sum_k w_k (alpha x_k - x_t) from the same differences.

Why float64 for step 1, not the input dtype: the same bound in float32 (d u |x_k| |x_t|, u = 2^-24) is
~0.2 in a distance of images at d = 3072, so it could certify no row below sigma ~ 300, and every row
with many candidates (sigma >~ 5 for images) would need the elementwise pass; a float64 GEMM costs ~2x a float32
one on the CPU, and it is immune to TF32 matmuls on GPUs, which would void a float32 bound.

Far from the data and at large sigma BLAS does all the work; at small sigma the candidates are the few
near-duplicates of the nearest point. Float64 output asks for tau ~ 4e-15, so it takes the exact path
almost everywhere (its cost is then that of one elementwise pass over the candidates).

Note: ``scoremc.stf_target`` is this function (re-exported), which shadows this module's name on the
package; import the module's other names with ``from scoremc.stf_target import ...``.
"""
from __future__ import annotations

import math
import numbers

import array_api_compat as aac
import numpy as np

from ._array import device_of, is_numpy, matmul, namespace
from ._validation import check_finite, named

__all__ = ["stf_target"]

#: floats per temporary block (16 MiB in float64). Chunk boundaries depend only on d (and a group's
#: largest candidate count), so a row's result does not depend on the other rows of its call.
CHUNK = 1 << 21
#: a row keeps its float64 GEMM logits when all its candidates' error bounds are below this many ulps of
#: the output dtype (the weights then err by a relative 2 * TAU_ULPS ulps at most)
TAU_ULPS = 16
#: points whose weight is provably below e^-DROP / n of the row's largest are dropped
DROP = 42.0
_U64 = 2.0 ** -53  # unit round-off of float64


def stf_target(xt, sigma, ref, alpha=1.0, *, x0=None):
    """The STF target v(x_t) (STF Eq. 5 with the Gaussian kernel; App. A's alpha-scaled kernel).

    Parameters
    ----------
    xt : (..., d) array, the noised points; NumPy or torch, any real floating dtype.
    sigma, alpha : scalars or per-row arrays (..., 1): the kernel N(alpha x, sigma^2 I); sigma > 0.
    ref : (n, d) one reference batch shared by every row (STF Algorithm 1), or (..., n, d) one batch per
        row (leading dimensions broadcast against those of ``xt``).
    x0 : optional (..., d), one more reference point per row, added to that row's batch: the clean
        sample each x_t was made from (STF's x_1), without forming a (..., n + 1, d) array.

    Returns
    -------
    (..., d) array in the promoted dtype of the array inputs (Python scalars do not promote), on their
    device; differentiable in torch (w.r.t. xt, ref, x0, sigma, alpha). The error relative to the row's
    scale sqrt(sum_k w_k |alpha x_k - x_t|^2) / sigma^2 is a few ulps of that dtype plus 2 ``TAU_ULPS``
    ulps from the weights (module docstring), for every sigma. Extra memory O(rows x n) plus a few
    blocks of ``CHUNK`` floats (under torch autograd the blocks of the exact path are kept for backward).
    """
    p = _Problem(xt, sigma, ref, alpha, x0)
    if p.rows == 0:
        return p.finish(p.xp.zeros((0, p.d), dtype=p.xp.float64, device=p.device))
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite ref is reported by _gemm_logits
        logits, bound = _gemm_logits(p)
    upper = logits + bound
    # the largest true logit is at least max_j(l_j - M_j); see the module docstring, step 2
    threshold = p.xp.max(logits - bound, axis=1) - (DROP + math.log(p.m))
    candidate = upper >= threshold[:, None]
    worst = p.xp.max(p.xp.where(candidate, bound, p.xp.zeros_like(bound)), axis=1)
    exact = worst > TAU_ULPS * float(p.xp.finfo(p.dtype).eps)
    count = p.xp.sum(p.xp.astype(candidate, p.xp.int64), axis=1)
    parts, order = [], []
    gemm_rows, exact_rows = p.xp.nonzero(~exact)[0], p.xp.nonzero(exact)[0]
    if gemm_rows.shape[0]:
        parts.append(_from_gemm_logits(p, gemm_rows, p.xp.take(logits, gemm_rows, axis=0)))
        order.append(gemm_rows)
    if exact_rows.shape[0]:
        for rows, k in _groups(p, exact_rows, p.xp.take(count, exact_rows, axis=0)):
            parts.append(_exact(p, rows, k, p.xp.take(upper, rows, axis=0), p.xp.take(threshold, rows, axis=0)))
            order.append(rows)
    if exact_rows.shape[0] == 0:  # one part, rows in order
        return p.finish(parts[0])
    out = p.xp.take(p.xp.concat(parts, axis=0), p.xp.argsort(p.xp.concat(order)), axis=0)  # the input's row order
    return p.finish(out)


def _error_factor(d: int) -> float:
    """g with |l~_k - l_k| <= M_k = g (|alpha| |x_k| |x_t| + alpha^2 |x_k|^2 / 2) / sigma^2 for the float64
    GEMM-form logit l~_k = (alpha x_k . x_t - alpha^2 |x_k|^2 / 2) / sigma^2 (|x_t|^2 / (2 sigma^2) is
    left out of both; it is the same for every k of a row and cancels in the softmax).

    A float64 dot product of length d, in any summation order, with or without FMA (BLAS, numpy's
    pairwise sums), errs by at most gamma_d sum_i |a_i b_i| <= gamma_d |a| |b|, gamma_k = k u / (1 - k u),
    u = 2^-53 (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., Eq. 3.5); so do
    x_k . x_t and |x_k|^2. The products with alpha and alpha^2 / 2 (two roundings for the second), the
    subtraction, the square sigma^2 and the division by it add at most five: gamma_{d+5} (Lemma 3.3).
    Inputs of lower precision convert to float64 exactly. The norms in M_k are computed in floating point
    (relative error below gamma_{d+4}); the factor 2 in g = 2 gamma_{d+5} covers that with room to spare.
    """
    k = (d + 5) * _U64
    return 2.0 * k / (1.0 - k)


class _Problem:
    """Validated inputs, flattened to rows: X (R, d), s2 = sigma^2 and a = alpha (R, 1), x0 (R, d) or
    None, all float64; the reference points in their own dtype, (n, d) shared or (P * n, d) with the
    row -> batch map ``batch`` (R,) (None when shared)."""

    def __init__(self, xt, sigma, ref, alpha, x0):
        xp = self.xp = namespace(xt, ref, sigma, alpha, x0)
        native = [v for v in (xt, ref, x0, sigma, alpha) if aac.is_array_api_obj(v) and namespace(v) is xp]
        floats = [v for v in native if xp.isdtype(v.dtype, "real floating")]
        self.device = device_of(native[0]) if native else None
        # NumPy arrays mixed with tensors take the tensors' device and floating dtype (as in _array)
        like = (self.device, xp.result_type(*floats) if floats else None)
        xt = _operand(xp, xt, "xt", 1, like)
        # ref's finiteness is checked on its squared norms (:func:`_gemm_logits`): a pass less over n x d
        ref = _operand(xp, ref, "ref", 2, like, check=False)
        x0 = None if x0 is None else _operand(xp, x0, "x0", 1, like)
        sigma, alpha = _operand(xp, sigma, "sigma", 0, like), _operand(xp, alpha, "alpha", 0, like)
        self.dtype = xp.result_type(*(v for v in (xt, ref, x0, sigma, alpha)
                                      if v is not None and not isinstance(v, float)))
        d = self.d = xt.shape[-1]
        for name, v in (("ref", ref), ("x0", x0)):
            if v is not None and v.shape[-1] != d:
                raise ValueError(f"{name} must have trailing dimension d={d} of xt, got shape {tuple(v.shape)}")
        self.n, self.ref_input = ref.shape[-2], ref
        if self.n < 1:
            raise ValueError(f"ref must hold at least one reference point, got shape {tuple(ref.shape)}")
        sigma, alpha = (self._coefficient(v, name) for v, name in ((sigma, "sigma"), (alpha, "alpha")))
        if bool(xp.any(sigma <= 0)):
            raise ValueError(f"sigma must be positive, got min {float(xp.min(sigma))}")
        lead = {"xt": xt.shape[:-1], "ref": ref.shape[:-2], "sigma": sigma.shape[:-1], "alpha": alpha.shape[:-1]}
        if x0 is not None:
            lead["x0"] = x0.shape[:-1]
        try:
            shape = self.shape = tuple(np.broadcast_shapes(*(tuple(s) for s in lead.values())))
        except ValueError:
            raise ValueError("the leading (row) dimensions of xt (..., d), ref (..., n, d), sigma and alpha "
                             f"(..., 1) and x0 (..., d) must broadcast; got {lead}") from None
        R = self.rows = math.prod(shape)
        self.m = self.n + (x0 is not None)
        f64 = xp.float64
        self.X = self._flat(xp.astype(xt, f64), d)
        self.s2 = self._flat(xp.astype(sigma, f64), 1) ** 2
        self.a = self._flat(xp.astype(alpha, f64), 1)
        self.own = None if x0 is None else self._flat(xp.astype(x0, f64), d)
        if ref.ndim == 2:
            self.ref, self.batch = ref, None
        else:  # row r of the flattened rows uses batch[r] of the P = prod(ref.shape[:-2]) batches
            P = math.prod(ref.shape[:-2])
            ids = xp.reshape(xp.arange(P, device=self.device), ref.shape[:-2])
            self.batch = xp.reshape(xp.broadcast_to(ids, shape), (R,))
            self.ref = xp.reshape(ref, (P * self.n, d))

    def _coefficient(self, v, name):
        xp = self.xp
        v = xp.asarray(v, dtype=self.dtype, device=self.device) if isinstance(v, float) else v
        if v.ndim and v.shape[-1] != 1:
            raise ValueError(f"{name} must be a scalar or have shape (..., 1) (per-row coefficients), got "
                             f"{tuple(v.shape)}")
        return xp.astype(v, self.dtype) if v.dtype != self.dtype else v  # rounded as the formula would be

    def _flat(self, v, width):
        return self.xp.reshape(self.xp.broadcast_to(v, self.shape + (width,)), (self.rows, width))

    def check_ref(self):
        check_finite(self.ref_input, "ref")

    def finish(self, out):
        """(R, d) float64 -> (..., d) in the output dtype."""
        return self.xp.reshape(self.xp.astype(out, self.dtype, copy=False), self.shape + (self.d,))

    def blocks(self, rows):
        """The reference points of ``rows`` (index array) as float64 blocks of at most CHUNK floats:
        yields (row slice into ``rows``, column slice, block (c, d) shared or (r, c, d) per row)."""
        xp, n, d = self.xp, self.n, self.d
        c = max(1, min(n, CHUNK // d))
        if self.batch is None:
            for j in range(0, n, c):
                yield slice(None), slice(j, min(n, j + c)), xp.astype(self.ref[j:j + c], xp.float64, copy=False)
            return
        batch = xp.take(self.batch, rows, axis=0)
        step = max(1, CHUNK // (c * d))
        for i in range(0, rows.shape[0], step):
            first = batch[i:i + step] * n
            for j in range(0, n, c):
                cols = xp.arange(j, min(n, j + c), device=self.device)
                yield slice(i, i + step), slice(j, j + cols.shape[0]), self.gather(first, cols[None, :])

    def gather(self, first, cols):
        """Float64 reference points ref_flat[first[:, None] + cols] (r, c, d) (``first`` None: shared)."""
        xp = self.xp
        flat = cols if first is None else first[:, None] + cols
        pts = xp.take(self.ref, xp.reshape(flat, (-1,)), axis=0)
        return xp.astype(xp.reshape(pts, tuple(flat.shape) + (self.d,)), xp.float64, copy=False)


def _operand(xp, v, name, min_ndim, like, check=True):
    """``v`` as a real floating array of namespace ``xp`` (Python reals stay floats: weak in promotion),
    checked finite; never converts a tensor to NumPy. ``like``: (device, dtype) for foreign arrays.
    Any conversion error (a ragged list, a string or object array handed to torch) names ``name``."""
    with named(name):
        return _operand_checked(xp, v, name, min_ndim, like, check)


def _operand_checked(xp, v, name, min_ndim, like, check):
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and min_ndim == 0:
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
        return float(v)
    if not aac.is_array_api_obj(v):
        arr = np.asarray(v)
        if arr.dtype == object or arr.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be a real array, got {type(v).__name__} of dtype {arr.dtype}")
        v = arr.astype(np.float64) if arr.dtype.kind != "f" else arr
    if namespace(v) is not xp:  # NumPy arrays mixed with tensors: to the tensors' namespace
        v = np.asarray(v)
        v = xp.asarray(v, device=like[0], dtype=like[1] if v.dtype.kind == "f" else None)
    if xp.isdtype(v.dtype, "complex floating") or not xp.isdtype(v.dtype, ("real floating", "integral", "bool")):
        raise TypeError(f"{name} must hold real numbers, got dtype {v.dtype}")
    if not xp.isdtype(v.dtype, "real floating"):
        v = xp.astype(v, xp.float64 if is_numpy(xp) else xp.__array_namespace_info__().default_dtypes()[
            "real floating"])
    if v.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(v.shape)}")
    if check:
        check_finite(v, name)
    return v


def _gemm_logits(p):
    """Float64 GEMM-form logits (R, m) and their error bounds M (R, m) (:func:`_error_factor`)."""
    xp = p.xp
    g, a, s2 = _error_factor(p.d), p.a, p.s2
    xnorm = xp.sqrt(xp.sum(p.X * p.X, axis=1, keepdims=True))

    def logit_and_bound(a, s2, dots, sq, xnorm):
        half = 0.5 * (a * a) * sq
        return (a * dots - half) / s2, g * (xp.abs(a) * xp.sqrt(sq) * xnorm + half) / s2

    everything = xp.arange(p.rows, device=p.device)
    blocks, part = [], []
    for r, c, blk in p.blocks(everything):
        if part and c.start == 0:  # a new row block (per-row batches): close the previous one
            blocks.append(part)
            part = []
        X = p.X[r]
        dots = matmul(X, xp.matrix_transpose(blk)) if blk.ndim == 2 else matmul(blk, X[:, :, None])[..., 0]
        part.append(logit_and_bound(a[r], s2[r], dots, xp.sum(blk * blk, axis=-1), xnorm[r]))
    blocks.append(part)
    if p.own is not None:  # x0: one more column per row
        own = logit_and_bound(a, s2, xp.sum(p.X * p.own, axis=1, keepdims=True),
                              xp.sum(p.own * p.own, axis=1, keepdims=True), xnorm)
    out = []
    for i in (0, 1):
        full = xp.concat([xp.concat([b[i] for b in part], axis=1) for part in blocks], axis=0)
        out.append(full if p.own is None else xp.concat([full, own[i]], axis=1))
    if not bool(xp.all(xp.isfinite(out[1]))):  # a NaN or infinity in ref reaches its squared norm
        p.check_ref()
        raise ValueError("the squared norms |alpha x_k| |x_t| / sigma^2 overflow float64; rescale the inputs "
                         "(xt, ref, sigma)")
    return tuple(out)


def _from_gemm_logits(p, rows, logits):
    """Rows whose float64 GEMM logits are accurate enough: softmax, then sum_k w_k alpha x_k by GEMM."""
    xp = p.xp
    w = xp.exp(logits - xp.max(logits, axis=1, keepdims=True))
    w = w / xp.sum(w, axis=1, keepdims=True)
    pieces = []
    for r, c, blk in p.blocks(rows):
        wc = w[r, c]
        pieces.append((r, matmul(wc, blk) if blk.ndim == 2 else matmul(wc[:, None, :], blk)[:, 0, :]))
    if p.batch is None:
        total = pieces[0][1]
        for _, s in pieces[1:]:
            total = total + s
    else:  # per-row blocks: sum over the column blocks of each row block, then stack the row blocks
        sums = {}
        for r, s in pieces:
            sums[r.start] = s if r.start not in sums else sums[r.start] + s
        total = xp.concat([sums[k] for k in sorted(sums)], axis=0)
    if p.own is not None:
        total = total + w[:, p.n:] * xp.take(p.own, rows, axis=0)
    a, X, s2 = (xp.take(v, rows, axis=0) for v in (p.a, p.X, p.s2))
    return (a * total - X) / s2


def _groups(p, rows, count):
    """Exact-path rows in groups of similar candidate counts (largest first): yields (rows, k), k the
    group's largest count, with (group rows) x min(k, block) x d <= CHUNK floats per block. One host
    read per group (the tensors are never converted to NumPy)."""
    xp = p.xp
    order = xp.argsort(count, descending=True)
    rows, count = xp.take(rows, order, axis=0), xp.take(count, order, axis=0)
    block = max(1, CHUNK // p.d)
    i = 0
    while i < rows.shape[0]:
        k = int(count[i])
        size = max(1, CHUNK // (min(k, block) * p.d))
        yield rows[i:i + size], k
        i += size


def _exact(p, rows, k, upper, threshold):
    """v for ``rows`` from explicit float64 differences over each row's candidates (the k largest upper
    bounds l_k + M_k; fewer for some rows, the rest masked), in blocks of CHUNK // d candidates with an
    online softmax (running maximum, normaliser and weighted sum, as in streamed attention)."""
    xp = p.xp
    cols = xp.argsort(upper, axis=1, descending=True)[:, :k]
    valid = xp.take_along_axis(upper, cols, axis=1) >= threshold[:, None]
    a, X, s2 = (xp.take(v, rows, axis=0) for v in (p.a, p.X, p.s2))
    first = None if p.batch is None else xp.take(p.batch, rows, axis=0) * p.n
    own = None if p.own is None else xp.take(p.own, rows, axis=0)
    block = max(1, CHUNK // p.d)
    top = total = acc = None
    for j in range(0, k, block):
        c = cols[:, j:j + block]
        if own is None:
            pts = p.gather(first, c)
        else:  # column n is the row's own x0
            is_own = c == p.n
            pts = p.gather(first, xp.where(is_own, xp.zeros_like(c), c))
            pts = xp.where(is_own[:, :, None], own[:, None, :], pts)
        diff = a[:, :, None] * pts - X[:, None, :]  # alpha x_k - x_t: exact products for float32 input
        logit = -xp.sum(diff * diff, axis=-1) / (2.0 * s2)
        logit = xp.where(valid[:, j:j + block], logit, xp.full_like(logit, -math.inf))
        # the first block holds each row's largest upper bound, a candidate: ``top`` is finite from it on
        new_top = xp.max(logit, axis=1, keepdims=True)
        if top is not None:
            new_top = xp.maximum(top, new_top)
        e = xp.exp(logit - new_top)
        step = matmul(e[:, None, :], diff)[:, 0, :]
        if top is None:
            total, acc = xp.sum(e, axis=1, keepdims=True), step
        else:
            scale = xp.exp(top - new_top)
            total, acc = total * scale + xp.sum(e, axis=1, keepdims=True), acc * scale + step
        top = new_top
    return acc / (total * s2)
