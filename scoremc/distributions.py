"""Distributions with exact laws (the targets p0 of the package), and the generic verbs
``logpdf``, ``score``, ``hessian``, ``divergence``, ``sample``.

A target is a frozen dataclass holding validated, read-only float64 arrays. Verbs dispatch on the
target's type (``functools.singledispatch``, in the spirit of Distributions.jl), so a later target
type adds methods without touching the verbs. Every verb evaluates on NumPy (float64) and on torch
tensors (their dtype and device, differentiable); ``method="fast"`` (default) uses the BLAS + Numba
path for NumPy input, ``method="reference"`` the namespace-generic reference path, which the fast
path is tested against.

``GaussianMixture(weights, means, covs)``: covs of shape (K,) isotropic, (K, d) diagonal or
(K, d, d) full. ``Empirical(points)``: the uniform mixture of Dirac masses at the rows of
``points`` (a finite data set); it has no density, but every noised law with sigma(t) > 0 does.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from . import _fast, _random, _reference
from ._array import default_float, device_of, is_numpy, matmul, namespace, to_numpy
from ._gaussians import Gaussians
from ._validation import as_count, as_float_array, as_generator, as_points, check_result

__all__ = ["GaussianMixture", "Empirical", "logpdf", "score", "hessian", "divergence", "sample", "normal_form",
           "check_method", "METHODS"]

#: computation paths: "fast" (BLAS + Numba, NumPy input only) and "reference" (namespace-generic,
#: the test oracle; the only path for torch input)
METHODS = ("fast", "reference")


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64, copy=True)
    a.setflags(write=False)
    return a


def _check_weights(weights, k: int) -> np.ndarray:
    w = as_float_array(weights, "weights", ndim=1)
    raw = np.asarray(weights)
    if len(w) != k:
        raise ValueError(f"weights must have one entry per component (K={k}, the rows of means), "
                         f"got shape {w.shape}")
    if (w < 0).any():
        raise ValueError(f"weights must be non-negative, got {w[w < 0][0]}")
    # Round-off tolerance at the precision the weights were made in. Weights often pass through
    # float32 (a data file, a network) before reaching float64, so float64 input is held to float32
    # precision too: K float32-rounded probabilities sum to 1 within K eps32 (the same verdict for a
    # float32 array and its float64 upcast). float16 is coarser; 1e-3 bounds the tolerance so that
    # no sum visibly off one (1.05, 0.99) is ever renormalised.
    low = np.issubdtype(raw.dtype, np.floating) and np.finfo(raw.dtype).eps > np.finfo(np.float32).eps
    eps = float(np.finfo(raw.dtype if low else np.float32).eps)
    total = w.sum()
    tol = min(max(k, 1) * eps, 1e-3)
    if abs(total - 1.0) > tol:
        raise ValueError(f"weights must sum to one (within {tol:.3g}, round-off of K={k} weights at "
                         f"{'float16' if low else 'float32'} precision), got sum {total!r}")
    return w / total  # removes only round-off, bounded above


def _covariance_parts(covs: np.ndarray, k: int, d: int, kind: str | None = None):
    """Return (var, basis, kind) of the normal form, validating shape and definiteness.

    Variances below float64's smallest normal number (~2.2e-308) are refused: their precision
    1/var overflows to inf and every density, score and posterior would be NaN. With K == d >= 2 a
    2-D ``covs`` that is a symmetric positive-definite matrix is ambiguous (K diagonals, or one shared
    (d, d) matrix) and raises unless ``kind`` says which.
    """
    tiny = np.finfo(np.float64).tiny
    if kind is not None:
        if kind not in _COV_NDIM:
            raise ValueError(f"cov_kind must be one of {tuple(_COV_NDIM)} or None, got {kind!r}")
        if covs.ndim != _COV_NDIM[kind]:
            raise ValueError(f"covs must have {_COV_NDIM[kind]} dimension(s) for cov_kind={kind!r}, got shape "
                             f"{covs.shape}")
    elif covs.ndim == 2 and k == d >= 2 and _is_covariance_matrix(covs):
        raise ValueError(f"covs of shape {covs.shape} is ambiguous with K == d == {d}: K diagonal covariances or "
                         "one shared (d, d) matrix? Pass cov_kind='diag' for diagonals, or a shared matrix C as "
                         "np.broadcast_to(C, (K, d, d))")
    if covs.ndim <= 2 and covs.size and ((covs > 0) & (covs < tiny)).any():
        idx = tuple(int(i) for i in np.argwhere((covs > 0) & (covs < tiny))[0])
        raise ValueError(f"covs{list(idx)} = {float(covs[idx])!r} is below the smallest normal float64 "
                         f"({tiny:.3g}): its "
                         "precision 1/var overflows")
    if covs.shape == (k,):
        if (covs <= 0).any():
            i = int(np.argmax(covs <= 0))
            raise ValueError(f"covs[{i}] must be positive (isotropic variance), got {covs[i]}")
        return covs[:, None], None, "iso"
    if covs.shape == (k, d):
        if (covs <= 0).any():
            i, j = (int(v) for v in np.argwhere(covs <= 0)[0])
            raise ValueError(f"covs[{i}, {j}] must be positive (diagonal variance), got {covs[i, j]}")
        return covs, None, "diag"
    if covs.shape == (k, d, d):
        asym = np.abs(covs - covs.transpose(0, 2, 1)).max(axis=(1, 2))
        scale = np.abs(covs).max(axis=(1, 2))
        if (asym > 1e-10 * scale).any():
            i = int(np.argmax(asym > 1e-10 * scale))
            raise ValueError(f"covs[{i}] must be symmetric (max |C - C^T| = {asym[i]:.3g})")
        lam, Q = np.linalg.eigh(0.5 * (covs + covs.transpose(0, 2, 1)))
        # below d * eps * lambda_max an eigenvalue is indistinguishable from zero
        bad = (lam[:, 0] <= d * np.finfo(np.float64).eps * lam[:, -1].clip(min=0)) | (lam[:, 0] < tiny)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"covs[{i}] must be positive definite (smallest eigenvalue {lam[i, 0]:.3g})")
        return lam, Q, "full"
    raise ValueError(f"covs must have shape (K,)={(k,)}, (K, d)={(k, d)} or (K, d, d)={(k, d, d)} "
                     "(K, d from means), "
                     f"got {covs.shape}")


_COV_NDIM = {"iso": 1, "diag": 2, "full": 3}


def _is_covariance_matrix(a: np.ndarray) -> bool:
    """Whether a square array could be one shared covariance: symmetric and positive definite."""
    if not np.array_equal(a, a.T):
        return False
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return False
    return True


class _Target:
    """Shared read-only views of a target through its normal form ``_parts``."""

    @property
    def n_components(self) -> int:
        return self._parts.n_components

    @property
    def dim(self) -> int:
        return self._parts.dim

    @property
    def sigma_data(self) -> float:
        """Data scale sqrt(tr Cov(p0) / d), the total standard deviation per dimension: the one source of
        the sigma_data that kappa (TSM §4.1) and the preconditionings are built around."""
        G = self._parts
        w = np.exp(G.log_weights)
        centred = G.means - matmul(w, G.means)
        total = matmul(w, G.sum_dims(G.var) + (centred * centred).sum(-1))  # law of total variance, traced
        return float(np.sqrt(total / self.dim))


@dataclass(frozen=True, eq=False)
class GaussianMixture(_Target):
    """sum_k weights[k] N(means[k], C_k), C_k from ``covs`` (K,) | (K, d) | (K, d, d).

    All arrays are validated (finite, matching K and d, weights a probability vector summing to one
    within float32 round-off, covariances positive definite with variances >= float64's smallest
    normal number) and stored read-only in float64. ``cov_kind`` ("iso", "diag", "full") is read
    from the shape of ``covs``; with K == d >= 2 a 2-D ``covs`` that is itself a symmetric positive
    definite matrix is ambiguous (K diagonals, or one shared covariance?) and raises unless
    ``cov_kind="diag"`` is passed (a shared (d, d) matrix C is ``np.broadcast_to(C, (K, d, d))``).
    """

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray
    _parts: Gaussians = field(init=False, repr=False, compare=False)
    cov_kind: str | None = field(default=None, compare=False)

    def __post_init__(self):
        means = as_float_array(self.means, "means", ndim=2)
        k, d = means.shape
        if k == 0 or d == 0:
            raise ValueError(f"means must have K >= 1 components of dimension d >= 1, got shape {means.shape}")
        weights = _check_weights(self.weights, k)
        covs = as_float_array(self.covs, "covs")
        var, basis, kind = _covariance_parts(covs, k, d, self.cov_kind)
        self._set(weights, means, covs, Gaussians(_log(weights), means, var, basis), kind)

    def _set(self, weights, means, covs, parts, kind):
        for name, value in (("weights", weights), ("means", means), ("covs", covs)):
            object.__setattr__(self, name, _frozen(value))
        object.__setattr__(self, "_parts", parts)
        object.__setattr__(self, "cov_kind", kind)

    @classmethod
    def from_normal_form(cls, parts: Gaussians, kind: str) -> "GaussianMixture":
        """Build from an already valid normal form (``marginal`` does; skips re-validation)."""
        self = object.__new__(cls)
        if kind == "iso":
            covs = parts.var[:, 0]
        elif kind == "diag":
            covs = parts.var
        else:
            covs = parts.dense_covs()
        self._set(np.exp(parts.log_weights), parts.means, covs, parts, kind)
        return self

    def mean(self) -> np.ndarray:
        """Mean of the mixture, shape (d,)."""
        return matmul(self.weights, self.means)

    def cov(self) -> np.ndarray:
        """Covariance of the mixture (law of total covariance), shape (d, d)."""
        G = self._parts
        centred = self.means - self.mean()
        between = matmul(centred.T, self.weights[:, None] * centred)
        wvar = self.weights[:, None] * np.broadcast_to(G.var, (self.n_components, self.dim))
        if G.basis is None:  # iso/diag: the within part is diagonal; no (K, d, d) array
            return between + np.diag(wvar.sum(0))
        # sum_k Q_k diag(w_k var_k) Q_k^T as one (d, K d) x (K d, d) product
        d = self.dim
        left = (G.basis * wvar[:, None, :]).transpose(1, 0, 2).reshape(d, -1)
        return between + matmul(left, G.basis.transpose(0, 2, 1).reshape(-1, d))

    def __repr__(self):
        return f"GaussianMixture(K={self.n_components}, d={self.dim}, covs={self.cov_kind!r})"


def _log(w):
    with np.errstate(divide="ignore"):
        return np.log(w)


@dataclass(frozen=True, eq=False)
class Empirical(_Target):
    """Uniform mixture of Dirac masses at the rows of ``points`` (K, d): a finite data set.

    Its noised laws are isotropic Gaussian mixtures with covariance sigma(t)^2 I around
    alpha(t) points[k], so posteriors p(x0 | xt) are exact softmaxes over the points.
    """

    points: np.ndarray
    _parts: Gaussians = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        pts = as_float_array(self.points, "points", ndim=2)
        if pts.shape[0] == 0 or pts.shape[1] == 0:
            raise ValueError(f"points must have shape (K >= 1, d >= 1), got {pts.shape}")
        object.__setattr__(self, "points", _frozen(pts))
        k = pts.shape[0]
        object.__setattr__(self, "_parts", Gaussians(np.full(k, -np.log(k)), self.points, np.zeros((k, 1))))

    cov_kind = "iso"

    @property
    def weights(self) -> np.ndarray:
        return np.full(self.n_components, 1.0 / self.n_components)

    def mean(self) -> np.ndarray:
        return self.points.mean(axis=0)

    def cov(self) -> np.ndarray:
        centred = self.points - self.mean()
        return matmul(centred.T, centred) / self.n_components

    def __repr__(self):
        return f"Empirical(K={self.n_components}, d={self.dim})"


@functools.singledispatch
def normal_form(dist) -> Gaussians:
    """The mixture normal form of a target (a registered verb: a new target type registers its own)."""
    raise TypeError(f"dist must be a GaussianMixture or Empirical, got {type(dist).__name__}")


@normal_form.register
def _(dist: GaussianMixture) -> Gaussians:
    return dist._parts


@normal_form.register
def _(dist: Empirical) -> Gaussians:
    return dist._parts


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def evaluate(G: Gaussians, x, what: str, method: str = "fast", tail: tuple = ()):
    """A per-row quantity of the mixture ``G`` (its own law) at points x (..., d), keeping batch dims.

    ``what`` names a function of :mod:`._fast` (NumPy, ``method="fast"``) or :mod:`._reference`;
    ``tail`` is its per-row shape (``()`` for logpdf, ``(d,)`` for score, ``(d, d)`` for the Hessian).
    """
    check_method(method)
    xp = namespace(x)
    x = as_points(x, G.dim, xp=xp)
    lead = tuple(x.shape[:-1])
    flat = xp.reshape(x, (-1, G.dim))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if is_numpy(xp) and method == "fast" and hasattr(_fast, what):
            out = getattr(_fast, what)(G, np.ascontiguousarray(flat))
        else:
            out = getattr(_reference, what)(G.to(xp, like=x), flat)
    check_result(out, "x", f"the {what}")  # finite x whose |x|^2 overflows (|x| ~ 1e155 and up)
    return xp.reshape(out, lead + tail)


def _no_density(dist):
    raise TypeError(f"{dist!r} has no density (a mixture of Dirac masses); use marginal(dist, proc, t) "
                    f"at a time with sigma(t) > 0, or exact_score(dist, proc)")


@functools.singledispatch
def logpdf(dist, x, *, method: str = "fast"):
    """Log-density of ``dist`` at x (..., d) -> (...)."""
    raise TypeError(f"logpdf is not defined for {type(dist).__name__}")


@functools.singledispatch
def score(dist, x, *, method: str = "fast"):
    """Score grad_x log p(x) at x (..., d) -> (..., d)."""
    raise TypeError(f"score is not defined for {type(dist).__name__}")


@functools.singledispatch
def hessian(dist, x, *, method: str = "reference"):
    """Hessian of log p (= Jacobian of the score, symmetric) at x (..., d) -> (..., d, d)."""
    raise TypeError(f"hessian is not defined for {type(dist).__name__}")


@functools.singledispatch
def divergence(dist, x, *, method: str = "reference"):
    """Divergence of the score (Laplacian of log p) at x (..., d) -> (...)."""
    raise TypeError(f"divergence is not defined for {type(dist).__name__}")


@logpdf.register
def _(dist: GaussianMixture, x, *, method="fast"):
    return evaluate(dist._parts, x, "logpdf", method)


@score.register
def _(dist: GaussianMixture, x, *, method="fast"):
    return evaluate(dist._parts, x, "score", method, (dist.dim,))


@hessian.register
def _(dist: GaussianMixture, x, *, method="reference"):
    return evaluate(dist._parts, x, "hessian", method, (dist.dim, dist.dim))


@divergence.register
def _(dist: GaussianMixture, x, *, method="reference"):
    return evaluate(dist._parts, x, "divergence", method)


for _verb in (logpdf, score, hessian, divergence):
    _verb.register(Empirical, lambda dist, x, *, method="fast": _no_density(dist))


def sample_parts(G: Gaussians, shape, rng, dtype=None, rows_axis: int = 0):
    """Draws from the normal form G of batch ``shape`` (an int n or a tuple), shape ``shape + (d,)``: NumPy
    for a NumPy Generator (or a RowStream, whose row axis is ``rows_axis``), a tensor on the generator's
    device for a torch.Generator. Point masses (an Empirical) draw only their indices; full covariances
    are drawn component by component through their factor Q_k diag(sqrt(lam_k)), so memory stays O(n d)."""
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64))
    xp = _random.generator_namespace(rng)
    w = np.exp(G.log_weights - np.logaddexp.reduce(G.log_weights))
    k = xp.reshape(_random.categorical(rng, w, shape, rows_axis), (n,))
    like = xp.asarray(np.zeros(0), dtype=dtype if dtype is not None else default_float(xp),
                      device=None if is_numpy(xp) else rng.device)
    H = G.to(xp, like=like)
    if not bool(np.any(G.var > 0)):  # point masses: no noise to draw
        return xp.reshape(xp.take(H.means, k, axis=0), shape + (G.dim,))
    z = xp.reshape(_random.normal(rng, shape + (G.dim,), like.dtype, rows_axis), (n, G.dim))
    z = z * xp.take(xp.sqrt(H.var), k, axis=0)
    if G.basis is not None:
        # group rows by component: one (n_k, d) @ (d, d) product each instead of an (n, d, d) gather
        k_np = np.asarray(to_numpy(k), dtype=np.int64)
        order = np.argsort(k_np, kind="stable")
        bounds = np.searchsorted(k_np[order], np.arange(G.n_components + 1))
        idx = xp.asarray(order, device=device_of(z))
        zs = z[idx]
        blocks = [matmul(zs[bounds[j]:bounds[j + 1]], xp.matrix_transpose(H.basis[j]))
                  for j in range(G.n_components) if bounds[j + 1] > bounds[j]]
        z = xp.concat(blocks, axis=0)[xp.asarray(np.argsort(order), device=device_of(z))]
    return xp.reshape(z + xp.take(H.means, k, axis=0), shape + (G.dim,))


def sample(dist, n, rng, *, dtype=None):
    """Draw ``n`` independent samples, shape (n, d), with an explicit generator: a
    ``numpy.random.Generator`` gives float64 NumPy, a ``torch.Generator`` a tensor on its device
    (``dtype``, default torch's default dtype)."""
    n = as_count(n, "n")
    rng = as_generator(rng)
    return sample_parts(normal_form(dist), n, rng, dtype)
