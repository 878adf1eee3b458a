"""STF with a *local* reference batch on a finite data set (beyond the papers: STF §8 leaves it open).

Setting: an ``Empirical`` target, p0 uniform on the points y_1..y_M (indices are the atoms; duplicates are
distinct atoms), the kernel k_j = N(x_t; alpha y_j, sigma^2 I), g_j = (alpha y_j - x_t) / sigma^2 and the
posterior pi(j) = k_j / sum_l k_l. Plain STF draws its n - 1 other reference points uniformly; at small sigma
almost all of pi sits on a few neighbours of x_1, which a uniform draw rarely hits. :class:`LocalSTF` draws
them near x_1 through a k-nearest-neighbour graph N(c) (the k points closest to y_c, c itself included):

    q(j | c) = (1 - mix) 1[j in N(c)] / k + mix / M            local proposal around a centre c (defensive mix)
    qbar(j)  = (1 / M) sum_c q(j | c) = ((1 - mix) indeg(j) / k + mix) / M,   indeg(j) = #{c : j in N(c)} >= 1

1. x_1: the posterior draw (estimation) or the clean sample that made x_t (training);
2. a centre c ~ r(c | x_1) = q(x_1 | c) / (M qbar(x_1)): with probability (1 - mix) indeg / k / (M qbar) one of
   the indeg(x_1) points whose neighbourhood holds x_1 (its reverse neighbours), else a uniform index;
3. x_2..x_n iid q(. | c);
4. v = sum_i W_i g_i / sum_i W_i over the whole batch (x_1 included), W_i = k_i rho_i, rho_i = p0(i) / qbar(i).

Theorem (unbiased for every n, k and mix). E[v | x_t] = grad log p_t(x_t).
Proof (the symmetrisation of ``reference/ERRATA.md``, "STF Eq. 7 is unbiased", on an extended space). Let
I be uniform on {1..n}, x_I ~ pi, c ~ r(. | x_I), x_j ~ q(. | c) iid for j != I. Then
P(I = i | x_1..x_n, c) is proportional to pi(x_i) r(c | x_i) prod_{j != i} q(x_j | c)
= [p0(c) prod_j q(x_j | c) / p_t] k_i / (M qbar(x_i)), the bracket not depending on i; so P(I = i | batch, c)
= W_i / sum_l W_l and E[v] = E[sum_i P(I = i | .) g(x_i)] = E[g(x_I)] = E_pi g = grad log p_t. v is a
symmetric function of the batch and the law given I = i is the law given I = 1 with labels permuted, so
E[v | I = 1] = E[v]: drawing x_1 first (our steps 1-3) gives the same expectation. QED. The same argument
with q(. | c) = p0 (mix = 1, or k = M) is plain STF; n = 1 is DSI.

What it is not: consistent as n -> inf. Given (x_t, c) the batch is pi_c-target self-normalised importance
sampling, with pi_c(j) proportional to pi(j) q(j | c) / qbar(j), x_1 ~ pi_c given c (Bayes) and proposal
q(. | c); so v -> E_{pi_c} g as n -> inf, and c | x_t has law rho(c) = sum_j pi(j) q(j | c) / (M qbar(j)).
The mixture over c of pi_c is pi (hence unbiasedness again), and the variance of v has the floor

    V_inf(x_t) = sum_c rho(c) |E_{pi_c} g - grad log p_t|^2 = (alpha / sigma^2)^2 sum_c rho(c) |m_c - m|^2

(m_c, m: the pi_c and pi means of y), which :meth:`LocalSTF.variance_floor` computes exactly. It vanishes
for mix = 1 or k = M (plain STF), and more generally iff m_c = m for every c with rho(c) > 0.
Within this construction (a centre from x_1, iid points around it, the extended-target weights) the two
properties exclude each other: consistency given c needs weights proportional to p0 / q(. | c), and the
extended-target weights pi(x_i) r(c | x_i) / q(x_i | c) are of that form only if r(c | x) does not depend
on x, i.e. the centre is not local to x_1 (mix = 1 is that case). The obvious alternative, x_2..x_n ~ q(. | x_1)
with weights p0 / q(. | x_1), is consistent when mix > 0 but biased at every finite n (x_1 is not
exchangeable with the others); it is not implemented.

Cost: the graph is built once per data set (O(M^2 d), cached), a row costs O(n d) as plain STF. The
weighted average is computed here, not by :func:`scoremc.stf_target`, which has no per-point log-weights
(log rho); it uses explicit float64 differences alpha y_j - x_t, so it is accurate at every sigma.
"""
from __future__ import annotations

import math
import numbers
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import _random
from ._array import device_of, matmul, namespace
from ._blocks import block_rows
from ._validation import as_count, as_generator
from .distributions import Empirical
from .identities import DSI, PointwiseIdentity
from .objectives import Regression

__all__ = ["LocalSTF", "LocalSTFLoss", "NeighbourGraph", "neighbour_graph"]

_GRAPHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # dist -> {k: NeighbourGraph}
_LOCK = threading.Lock()  # the sampling engines call from a thread pool: build each graph once


@dataclass(frozen=True, eq=False)
class NeighbourGraph:
    """The k-nearest-neighbour graph of a data set (NumPy int64): ``neighbors`` (M, k), row c = N(c) with c in
    it; its reverse as CSR, ``reverse[reverse_ptr[j]:reverse_ptr[j + 1]]`` = {c : j in N(c)}; ``in_degree``
    (M,) >= 1; exact-duplicate classes of the points (``classes`` (M,), ``members`` sorted by class, with
    ``class_start``, ``class_size``) for finding the index of a given x0."""

    points: np.ndarray
    neighbors: np.ndarray
    reverse_ptr: np.ndarray
    reverse: np.ndarray
    in_degree: np.ndarray
    classes: np.ndarray
    members: np.ndarray
    class_start: np.ndarray
    class_size: np.ndarray
    _tables: dict = field(default_factory=dict, repr=False)

    @property
    def k(self) -> int:
        return self.neighbors.shape[1]

    def tables(self, xp, like) -> dict:
        """The graph as arrays of ``xp`` on ``like``'s device (cached): integer tables, float64 points and
        their squared norms, and the points in ``like``'s dtype."""
        key = (xp.__name__, str(device_of(like)), str(like.dtype))
        if key not in self._tables:
            dev = device_of(like)
            # a copy: the data set's arrays are read-only, which torch does not support
            as_ = lambda a, dtype=None: xp.asarray(np.array(a), device=dev, dtype=dtype)  # noqa: E731
            p64 = as_(self.points, xp.float64)
            self._tables[key] = dict(
                neighbors=as_(self.neighbors.reshape(-1)), reverse_ptr=as_(self.reverse_ptr),
                reverse=as_(self.reverse), in_degree=as_(self.in_degree), classes=as_(self.classes),
                members=as_(self.members), class_start=as_(self.class_start), class_size=as_(self.class_size),
                points64=p64, sq=xp.sum(p64 * p64, axis=1), points=xp.astype(p64, like.dtype))
        return self._tables[key]


def neighbour_graph(dist, k: int) -> NeighbourGraph:
    """The (cached) k-nearest-neighbour graph of the ``Empirical`` ``dist``; ties broken arbitrarily but fixed
    (the theorem of the module docstring holds for any fixed graph that contains each point's own index)."""
    if not isinstance(dist, Empirical):
        raise TypeError("LocalSTF draws its reference batch from a data set: dist must be an Empirical (a finite "
                        f"data set), got {type(dist).__name__}")
    M = dist.n_components
    if k > M:
        raise ValueError(f"k_neighbors must be <= the number of data points M={M}, got {k}")
    with _LOCK:
        cache = _GRAPHS.setdefault(dist, {})
        if k not in cache:
            cache[k] = _build(dist.points, k)
        return cache[k]


def _build(Y: np.ndarray, k: int) -> NeighbourGraph:
    M = len(Y)
    sq = (Y * Y).sum(1)
    nb = np.empty((M, k), dtype=np.int64)
    rows = block_rows(M)
    for i in range(0, M, rows):  # blocks of rows of the (M, M) distance matrix
        j = min(M, i + rows)
        d2 = sq[i:j, None] - 2.0 * matmul(Y[i:j], Y.T) + sq[None, :]
        d2[np.arange(j - i), np.arange(i, j)] = -np.inf  # each point is its own first neighbour
        nb[i:j] = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < M else np.arange(M)
    flat = nb.reshape(-1)
    order = np.argsort(flat, kind="stable")
    indeg = np.bincount(flat, minlength=M)
    _, classes = np.unique(Y, axis=0, return_inverse=True)
    classes = classes.reshape(-1).astype(np.int64)
    size = np.bincount(classes)
    return NeighbourGraph(Y, nb, np.concatenate([[0], np.cumsum(indeg)]).astype(np.int64),
                          np.repeat(np.arange(M), k)[order].astype(np.int64), indeg.astype(np.int64), classes,
                          np.argsort(classes, kind="stable").astype(np.int64),
                          (np.cumsum(size) - size).astype(np.int64), size.astype(np.int64))


def _gather(xp, table, idx):
    """table[idx] for an integer array idx of any shape (the array API's take is 1-D)."""
    out = xp.take(table, xp.reshape(idx, (-1,)), axis=0)
    return xp.reshape(out, tuple(idx.shape) + tuple(table.shape[1:]))


def _pick(xp, u, count):
    """floor(u * count) as int64, kept below count (u in (0, 1) float64; count an int or an int array >= 1):
    a uniform index in [0, count)."""
    i = xp.astype(xp.floor(u * (count if isinstance(count, int) else xp.astype(count, xp.float64))), xp.int64)
    return xp.minimum(i, count - 1)


@dataclass(frozen=True)
class LocalSTF(PointwiseIdentity):
    """STF with a local reference batch (module docstring): x_1 plus n_ref - 1 points drawn around a centre
    c ~ r(. | x_1) among the ``k_neighbors`` nearest neighbours of y_c in the data set (a fraction ``mix`` of
    them uniform over the data set instead), weighted by the kernel times p0 / qbar. Unbiased for every n_ref
    (proof in the module docstring), not consistent as n_ref -> inf (:meth:`variance_floor`). Needs an
    ``Empirical`` target; ``mix = 1`` or ``k_neighbors = M`` is plain :class:`scoremc.STF` in law."""

    n_ref: int = 2
    k_neighbors: int = 16
    mix: float = 0.0

    def __post_init__(self):
        as_count(self.n_ref, "n_ref")
        as_count(self.k_neighbors, "k_neighbors")
        if isinstance(self.mix, bool) or not isinstance(self.mix, numbers.Real):
            raise TypeError(f"mix must be a number in [0, 1], got {type(self.mix).__name__} {self.mix!r}")
        if not (math.isfinite(self.mix) and 0.0 <= self.mix <= 1.0):
            raise ValueError(f"mix must be in [0, 1] (the uniform fraction of the proposal), got {self.mix}")

    @property
    def name(self) -> str:
        return f"local_stf({self.n_ref},k={self.k_neighbors},mix={self.mix:g})"

    def graph(self, dist) -> NeighbourGraph:
        return neighbour_graph(dist, self.k_neighbors)

    def log_rho(self, dist) -> np.ndarray:
        """log p0(j) / qbar(j) = -log((1 - mix) indeg(j) / k + mix), shape (M,): the importance correction."""
        g = self.graph(dist)
        return -np.log((1.0 - self.mix) * g.in_degree / g.k + self.mix)

    def integrand(self, dist, coef, x0, xt, rng=None, *, batch=None):
        """v for x_1 = x0 (..., N, d), which must be points of ``dist``, at rows x_t (N, d); ``coef.alpha``,
        ``coef.sigma`` scalars or (N, 1). ``batch`` (..., N, n_ref) int: the reference indices (x_1's first),
        instead of drawing them with ``rng`` (:meth:`reference_batch`). NumPy or torch (a torch.Generator for
        tensors); the weights are computed in float64, the result is in the dtype of x0 and xt. Reference points
        are gathered in blocks of about 2^20 floats."""
        graph = self.graph(dist)
        if self.n_ref == 1 and batch is None:
            return DSI().integrand(dist, coef, x0, xt)
        xp = namespace(x0, xt)
        d, lead = x0.shape[-1], tuple(x0.shape[:-1])
        R, n, dev = math.prod(lead), self.n_ref, device_of(x0)
        T = graph.tables(xp, x0)
        batch = self.reference_batch(dist, x0, rng) if batch is None else xp.asarray(batch, device=dev)
        batch = xp.reshape(batch, (R, n))
        flat = lambda v, w: xp.reshape(xp.broadcast_to(xp.astype(v, xp.float64), lead + (w,)), (R, w))  # noqa: E731
        XT = flat(xt, d)
        S, A = (flat(xp.asarray(v, dtype=xp.float64, device=dev), 1) for v in (coef.sigma, coef.alpha))
        log_rho = xp.asarray(self.log_rho(dist), device=dev)
        out, step = [], block_rows(n * d)
        for a in range(0, R, step):
            b, idx = min(R, a + step), batch[a:a + step]
            out.append(_weighted_target(xp, XT[a:b], S[a:b], A[a:b], _gather(xp, T["points64"], idx),
                                        _gather(xp, log_rho, idx)))
        v = xp.concat(out, axis=0) if out else xp.zeros((0, d), dtype=xp.float64, device=dev)
        return xp.astype(xp.reshape(v, lead + (d,)), xp.result_type(x0, xt))

    def reference_batch(self, dist, x0, rng):
        """Reference indices (..., n_ref) int64 into ``dist.points`` for x_1 = x0 (..., d) (points of ``dist``):
        x_1's own index first (uniform among exact duplicates), then n_ref - 1 points around a centre
        c ~ r(. | x_1) (module docstring, steps 2-3). ``rng``: a numpy Generator (or a RowStream over the rows
        of axis -2 of x0), or a torch.Generator for tensors (on x0's device). 2 n_ref + 1 uniforms per row."""
        graph = self.graph(dist)
        xp = namespace(x0)
        d, lead, n = x0.shape[-1], tuple(x0.shape[:-1]), self.n_ref
        R, T = math.prod(lead), graph.tables(xp, x0)
        u = _random.uniform(as_generator(rng), lead + (2 * n + 1,), xp.float64, rows_axis=max(0, len(lead) - 1))
        u = xp.reshape(xp.asarray(u, device=device_of(x0)), (R, 2 * n + 1))
        X0, out, step = xp.reshape(x0, (R, d)), [], block_rows(graph.points.shape[0])
        for a in range(0, R, step):  # blocks of about 2^20 floats of distances to the data set
            i1 = self._index_of(xp, T, X0[a:a + step], u[a:a + step, 0])
            out.append(self._draw(xp, T, i1, u[a:a + step, 1:], graph))
        idx = xp.concat(out, axis=0) if out else xp.zeros((0, n), dtype=xp.int64, device=device_of(x0))
        return xp.reshape(idx, lead + (n,))

    @staticmethod
    def _index_of(xp, T, X, u):
        """The index of each row of X (p, d) in the data set, uniform among exact duplicates (so that an x_1 of
        law pi over points has law pi over indices). Nearest point by float64 GEMM, then an exact check."""
        X64 = xp.astype(X, xp.float64)
        j = xp.argmin(T["sq"][None, :] - 2.0 * matmul(X64, xp.matrix_transpose(T["points64"])), axis=1)
        found = xp.all(_gather(xp, T["points"], j) == X, axis=1)
        if not bool(xp.all(found)):
            bad = int(xp.argmin(xp.astype(found, xp.int64)))
            raise ValueError(f"x0 must hold points of the data set dist (LocalSTF proposes around x_1's index); "
                             f"row {bad} is not one of its points")
        cls = xp.take(T["classes"], j, axis=0)
        size = xp.take(T["class_size"], cls, axis=0)
        return xp.take(T["members"], xp.take(T["class_start"], cls, axis=0) + _pick(xp, u, size), axis=0)

    def _draw(self, xp, T, i1, u, graph):
        """Reference indices (p, n) from x_1's indices i1 (p,) and uniforms u (p, 2n): the centre c ~ r(. | x_1)
        from u[:, :2], then n - 1 points iid q(. | c) from the pairs u[:, 2 + 2j : 4 + 2j]."""
        M, k, eps = graph.points.shape[0], graph.k, float(self.mix)
        deg = xp.take(T["in_degree"], i1, axis=0)
        local = (1.0 - eps) * xp.astype(deg, xp.float64) / k
        reverse = xp.take(T["reverse"], xp.take(T["reverse_ptr"], i1, axis=0) + _pick(xp, u[:, 1], deg), axis=0)
        c = xp.where(u[:, 0] * (local + eps) < local, reverse, _pick(xp, u[:, 1], M))
        branch, pick = u[:, 2::2], u[:, 3::2]
        near = _gather(xp, T["neighbors"], c[:, None] * k + _pick(xp, pick, k))
        others = xp.where(branch >= eps, near, _pick(xp, pick, M))
        return xp.concat([i1[:, None], others], axis=1)

    def variance_floor(self, post):
        """The exact n_ref -> inf limit of tr Cov(v | x_t) per row (N,) (module docstring: V_inf), float64 NumPy:
        (alpha / sigma^2)^2 sum_c rho(c) |m_c - m|^2. O(N M k d) time; rows in blocks of about 2^20 floats
        of (rows, M, k) gathers."""
        graph = self.graph(post.dist)
        M, k, eps = graph.points.shape[0], graph.k, float(self.mix)
        Y, weights = graph.points, post.weights  # (M, d), (N, M)
        p0_over_qbar = np.exp(self.log_rho(post.dist))

        def apply_q(f):
            """sum_j q(j | c) f(j) for every centre c: f (rows, M) -> (rows, M)."""
            return (1.0 - eps) / k * f[:, graph.neighbors].sum(2) + eps / M * f.sum(1, keepdims=True)

        out, step = np.zeros(len(weights)), block_rows(M * k)
        for i in range(0, len(weights), step):
            pi = weights[i:i + step]
            ratio = pi * p0_over_qbar  # pi(j) p0(j) / qbar(j)
            rho = apply_q(ratio)  # (rows, M): the law of the centre c given x_t
            safe = np.where(rho > 0, rho, 1.0)
            m = matmul(pi, Y)
            for a in range(Y.shape[1]):  # one coordinate at a time: m_c[a] = sum_j q(j|c) ratio_j y_ja / rho(c)
                out[i:i + step] += (rho * (apply_q(ratio * Y[None, :, a]) / safe - m[:, a:a + 1]) ** 2).sum(1)
        return (post.alpha / post.sigma**2) ** 2 * out

    def trace_cov(self, post):
        return None


def _weighted_target(xp, xt, sigma, alpha, ref, log_rho):
    """sum_j w_j (alpha y_j - x_t) / sigma^2 with w = softmax_j(-|x_t - alpha y_j|^2 / (2 sigma^2) + log_rho_j),
    all float64: xt (p, d), sigma, alpha (p, 1), ref (p, n, d), log_rho (p, n). Explicit differences (no GEMM
    cancellation), max-shifted softmax (no overflow at any sigma)."""
    diff = alpha[:, :, None] * ref - xt[:, None, :]
    s2 = sigma * sigma
    logit = -xp.sum(diff * diff, axis=-1) / (2.0 * s2) + log_rho
    w = xp.exp(logit - xp.max(logit, axis=1, keepdims=True))
    w = w / xp.sum(w, axis=1, keepdims=True)
    return xp.sum(w[:, :, None] * diff, axis=1) / s2


@dataclass(frozen=True)
class LocalSTFLoss(Regression):
    """Regression onto the :class:`LocalSTF` target: ||s(x_t, t) - v||^2 with v over a local reference batch
    that the objective draws itself around each row's x0 from the data set ``dist`` (an ``Empirical``; x0 must
    be its points), with ``rng`` (a torch.Generator for tensors). Its minimiser is the score (LocalSTF is
    unbiased). Takes no ``ref``; in :func:`scoremc.nn.train` it needs the data as an ``Empirical``."""

    n_ref: int = 2
    k_neighbors: int = 16
    mix: float = 0.0

    def __post_init__(self):
        self.identity  # noqa: B018 - validates the parameters

    @property
    def identity(self) -> LocalSTF:
        return LocalSTF(self.n_ref, self.k_neighbors, self.mix)

    @property
    def name(self) -> str:
        return self.identity.name

    def regression_target(self, b):
        if b.ref is not None:
            raise ValueError("LocalSTFLoss draws its own local reference batch from dist; pass ref=None")
        if b.dist is None:
            raise ValueError("LocalSTFLoss needs dist, the data set (an Empirical) x0 is drawn from")
        return self.identity.integrand(b.dist, b.coef, b.x0, b.xt, b.rng)
