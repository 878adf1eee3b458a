"""Two-sample distances between point clouds (torch tensors (m, d), (n, d)), for comparing model samples with
exact samples: :func:`mmd` (the unbiased MMD^2 with a Gaussian RBF kernel) and :func:`sliced_wasserstein`.

Precision policy: inputs of any real floating dtype are upcast to float64 on their device (an unbiased MMD^2 is
a difference of O(1) kernel means that is O(1/n) itself, so float32 sums would drown it); results are 0-d
float64 tensors on the inputs' device. Memory: nothing O(m n) is built at once; kernel values are summed in row
blocks of at most ``budget_bytes`` (default :data:`BUDGET_BYTES`) of float64 each, and sorted projections are
processed in blocks of directions under the same budget, so n = 20 000 needs tens of MiB, not 3 GiB.
"""
from __future__ import annotations

import math
import numbers

import torch

from .._validation import as_count

__all__ = ["mmd", "median_bandwidth", "sliced_wasserstein", "block_rows", "BUDGET_BYTES", "MEDIAN_POINTS"]

#: bytes of one float64 work block (kernel rows, or sorted projections); the peak is about twice this
BUDGET_BYTES = 64 * 2**20
#: the median heuristic uses at most this many pooled points (all pairs among them: ~2.1e6 distances)
MEDIAN_POINTS = 2048


def _samples(x, name: str, min_rows: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {tuple(x.shape)}")
    if not (x.dtype.is_floating_point and not x.dtype.is_complex):
        raise TypeError(f"{name} must hold real floating numbers, got {x.dtype}")
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} row(s) and one column, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite")
    return x.detach().to(torch.float64)


def _pair(x, y, min_rows: int):
    x, y = _samples(x, "x", min_rows), _samples(y, "y", min_rows)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension d, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on one device, got {x.device} and {y.device}")
    # centre on the pooled mean: distances are translation invariant, and the GEMM form |a|^2 + |b|^2 - 2 a.b
    # loses digits to |a|^2 when the cloud sits far from the origin
    centre = torch.cat([x, y]).mean(0)
    return x - centre, y - centre


def _budget(budget_bytes) -> int:
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, numbers.Integral) or budget_bytes < 8:
        raise ValueError(f"budget_bytes must be an integer >= 8, got {budget_bytes!r}")
    return int(budget_bytes)


def block_rows(n_cols: int, budget_bytes: int = BUDGET_BYTES, width: int = 1) -> int:
    """Rows of a float64 block of ``n_cols`` x ``width`` values that fit ``budget_bytes`` (at least 1)."""
    return max(1, int(budget_bytes) // (8 * max(int(n_cols), 1) * max(int(width), 1)))


def median_bandwidth(x, y) -> torch.Tensor:
    """The median heuristic (Gretton et al. 2012, JMLR 13, §8): h = the median Euclidean distance |a - b| over
    the distinct pairs of the pooled sample x u y ((m, d), (n, d) tensors); the lower median (torch.median) of
    the m' (m' - 1) / 2 distances. Above :data:`MEDIAN_POINTS` pooled points, the pairs among evenly spaced
    rows of x and of y (in proportion to m and n) are used: deterministic, no generator. Returns a 0-d float64
    tensor; raises ValueError when it is 0 (more than half the pairs coincide)."""
    x, y = _pair(x, y, 1)
    m, n = len(x), len(y)
    if m + n > MEDIAN_POINTS:
        kx = max(1, round(MEDIAN_POINTS * m / (m + n)))
        ix = torch.linspace(0, m - 1, kx, device=x.device).round().long()
        iy = torch.linspace(0, n - 1, MEDIAN_POINTS - kx, device=y.device).round().long()
        x, y = x[ix], y[iy]
    h = torch.median(torch.pdist(torch.cat([x, y])))
    if not bool(h > 0):
        raise ValueError("the median heuristic gives bandwidth 0 (most pooled points coincide); pass bandwidth=")
    return h


def _kernel_sum(a, b, gamma: float, budget: int, same: bool) -> torch.Tensor:
    """sum_{i, j} exp(-gamma |a_i - b_j|^2) over row blocks of a (i != j when ``same``: a is b)."""
    bb = (b * b).sum(-1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    rows = block_rows(len(b), budget)
    for r0 in range(0, len(a), rows):
        ab = a[r0:r0 + rows]
        k = ab @ b.T  # one (rows, n) block, then in place: |a|^2 + |b|^2 - 2 a.b, clamped, to the kernel
        k.mul_(-2.0).add_((ab * ab).sum(-1)[:, None]).add_(bb[None]).clamp_(min=0.0).mul_(-gamma).exp_()
        if same:
            torch.diagonal(k, offset=r0).zero_()  # the i == j terms: a U-statistic leaves them out
        total += k.sum()
    return total


def mmd(x, y, *, bandwidth=None, budget_bytes: int = BUDGET_BYTES) -> torch.Tensor:
    """Unbiased squared maximum mean discrepancy MMD^2_u between the samples x (m, d) and y (n, d), m, n >= 2
    (Gretton et al. 2012, JMLR 13, Lemma 6, the U-statistic):

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
                  - 2 sum_{i, j} k(x_i, y_j) / (m n),      k(a, b) = exp(-|a - b|^2 / (2 h^2)).

    Its expectation is MMD^2(P, Q) exactly (0 when the laws agree), so a single value may be negative.
    ``bandwidth`` h > 0, or None for :func:`median_bandwidth` of the pooled sample. Float64 on the inputs'
    device (see the module docstring); returns a 0-d float64 tensor. ``budget_bytes``: the size of each block.
    """
    budget = _budget(budget_bytes)
    x, y = _pair(x, y, 2)
    if bandwidth is None:
        h = float(median_bandwidth(x, y))
    else:
        h = float(bandwidth) if isinstance(bandwidth, (numbers.Real, torch.Tensor)) and not isinstance(
            bandwidth, bool) else math.nan
        if not (math.isfinite(h) and h > 0):
            raise ValueError(f"bandwidth must be a positive finite number or None, got {bandwidth!r}")
    gamma = 0.5 / (h * h)
    m, n = len(x), len(y)
    kxx = _kernel_sum(x, x, gamma, budget, True) / (m * (m - 1))
    kyy = _kernel_sum(y, y, gamma, budget, True) / (n * (n - 1))
    kxy = _kernel_sum(x, y, gamma, budget, False) / (m * n)
    return kxx + kyy - 2.0 * kxy


def _directions(d: int, n_projections, generator, directions, device) -> torch.Tensor:
    if directions is not None:
        if not isinstance(directions, torch.Tensor) or directions.ndim != 2 or directions.shape[1] != d:
            raise ValueError(f"directions must be a tensor of shape (P, {d}), got "
                             f"{tuple(directions.shape) if isinstance(directions, torch.Tensor) else directions!r}")
        theta = directions.detach().to(device=device, dtype=torch.float64)
    else:
        n_projections = as_count(n_projections, "n_projections")
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(0)
        elif not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator.device != device:
            raise ValueError(f"generator is on {generator.device}, the samples on {device}")
        # a standard normal vector normalised is uniform on the sphere
        theta = torch.randn((int(n_projections), d), generator=generator, dtype=torch.float64, device=device)
    norm = theta.norm(dim=1, keepdim=True)
    if not bool(torch.isfinite(theta).all() and (norm > 0).all()):
        raise ValueError("directions must be finite and non-zero")
    return theta / norm


def sliced_wasserstein(x, y, *, n_projections: int = 256, p: float = 2.0, generator=None, directions=None,
                       budget_bytes: int = BUDGET_BYTES) -> torch.Tensor:
    """Sliced Wasserstein distance SW_p(x, y) = (mean_theta W_p^p(theta.x, theta.y))^(1/p) between the empirical
    laws of x (m, d) and y (n, d) (Bonneel et al. 2015; Kolouri et al. 2019), over ``n_projections`` directions
    theta uniform on the unit sphere drawn from ``generator`` (a torch.Generator on the samples' device; None:
    one seeded with 0), or over the given ``directions`` (P, d), normalised to unit length.

    Each 1-D W_p^p is exact for the two empirical laws: int_0^1 |F^-1(u) - G^-1(u)|^p du with the sorted
    projections as quantile functions, integrated over the merged breakpoints {i/m} u {j/n} (integers, no
    interpolation error); for m = n it is the mean of |x_(i) - y_(i)|^p. ``p`` >= 1. Float64; returns a 0-d
    float64 tensor. Directions are processed in blocks of ``budget_bytes``.
    """
    budget = _budget(budget_bytes)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    x, y = _pair(x, y, 1)
    m, n = len(x), len(y)
    theta = _directions(x.shape[1], n_projections, generator, directions, x.device)
    if m == n:  # the quantile functions share their breakpoints i / n
        ix = iy = None
    else:
        # merged breakpoints u_k = v_k / (m n) of both quantile functions; on (u_{k-1}, u_k] the quantile functions
        # are x_(ceil(u m)) and y_(ceil(u n)), i.e. 0-based indices ceil(v / n) - 1 and ceil(v / m) - 1
        v = torch.sort(torch.cat([torch.arange(1, m + 1, device=x.device) * n,
                                  torch.arange(1, n + 1, device=x.device) * m])).values
        width = torch.diff(v, prepend=v.new_zeros(1)).to(torch.float64) / (m * n)
        ix, iy = (v + n - 1) // n - 1, (v + m - 1) // m - 1
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    step = block_rows(m + n, budget, width=3)  # per direction: the sorted x and y, the merged differences
    for j in range(0, len(theta), step):
        th = theta[j:j + step]
        px = torch.sort(th @ x.T, dim=1).values  # (P, m): rows contiguous, sorted along them
        py = torch.sort(th @ y.T, dim=1).values
        if ix is None:
            total += (px - py).abs().pow(p).sum() / n
        else:
            total += ((px[:, ix] - py[:, iy]).abs().pow(p) @ width).sum()
    return (total / len(theta)).pow(1.0 / p)
