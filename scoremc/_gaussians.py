"""Normal form shared by every mixture computation: ``sum_k pi_k N(mean_k, Q_k diag(var_k) Q_k^T)``.

Isotropic and diagonal covariances are axis-aligned (``basis is None``, ``var`` of shape
``(K, 1)`` or ``(K, d)``); a full covariance is stored by its eigendecomposition. Noising keeps
the basis: ``alpha^2 Sigma_k + sigma^2 I = Q_k diag(alpha^2 lam_k + sigma^2) Q_k^T``, so every
time-dependent quantity (precisions, posterior covariances, d/dt of the marginal covariance) is
elementwise in the component's own basis. This is why one code path serves all three covariance
types, the exact posterior and the exact time derivatives.

The row-block helper at the end (:func:`map_row_blocks`) bounds the memory of the NumPy fast path
and runs its blocks on a thread pool.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ._array import LOG_2PI, device_of, is_numpy, namespace


@dataclass(frozen=True, eq=False)
class Gaussians:
    """Mixture in normal form. Shapes: log_weights (K,), means (K,d), var (K,1)|(K,d),
    basis None | (K,d,d) whose columns are the eigenvectors of component k.

    The canonical instance holds float64 NumPy arrays; :meth:`to` gives (and caches) the same form
    in another namespace, dtype and device, so that the reference path runs where its input lives.
    """

    log_weights: object
    means: object
    var: object
    basis: object = None
    _copies: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def isotropic(self) -> bool:
        return self.basis is None and self.var.shape[1] == 1

    def to(self, xp, like=None) -> "Gaussians":
        """This form in the namespace ``xp`` with the dtype and device of ``like`` (NumPy: itself)."""
        if is_numpy(xp):
            return self
        dtype, device = like.dtype, device_of(like)
        key = (xp.__name__, str(dtype), str(device))
        if key not in self._copies:
            # np.array copies: the canonical arrays are read-only, which torch.asarray warns about
            conv = [None if a is None else xp.asarray(np.array(a), dtype=dtype, device=device)
                    for a in (self.log_weights, self.means, self.var, self.basis)]
            self._copies[key] = Gaussians(*conv)
        return self._copies[key]

    def sum_dims(self, a):
        """Sum a per-dimension array of shape (..., K, 1|d) over d, honouring isotropic storage."""
        xp = namespace(a)
        s = xp.sum(a, axis=-1)
        return s * self.dim if a.shape[-1] == 1 else s

    def log_norm(self) -> np.ndarray:
        """log pi_k - (1/2) log det(2 pi C_k), shape (K,)."""
        return self.log_weights - 0.5 * self.sum_dims(LOG_2PI + np.log(self.var))

    def noised(self, alpha: float, sigma: float, where: str = "") -> "Gaussians":
        """Law of alpha X + sigma eps: means alpha mu_k, eigenvalues alpha^2 lam + sigma^2 (NumPy, one time)."""
        var = alpha * alpha * self.var + sigma * sigma
        if not (var > 0).all():
            raise ValueError(no_density_message(where))
        return Gaussians(self.log_weights, alpha * self.means, var, self.basis)

    def dense_covs(self, var: np.ndarray | None = None) -> np.ndarray:
        """Covariance matrices ``Q diag(var) Q^T``, shape (K,d,d) (``var`` defaults to ``self.var``; NumPy)."""
        var = self.var if var is None else var
        full = np.broadcast_to(var, (self.n_components, self.dim))
        if self.basis is None:
            out = np.zeros((self.n_components, self.dim, self.dim))
            idx = np.arange(self.dim)
            out[:, idx, idx] = full
            return out
        return np.einsum("kij,kj,klj->kil", self.basis, full, self.basis)

    def rotate(self, v):
        """Vectors (..., K, d) in the standard basis -> component bases, ``Q_k^T v_k`` (any namespace)."""
        return v if self.basis is None else (v[..., None, :] @ self.basis)[..., 0, :]

    def unrotate(self, w):
        """Inverse of :meth:`rotate`: ``Q_k w_k``."""
        return w if self.basis is None else (self.basis @ w[..., None])[..., 0]


def no_density_message(where: str = "") -> str:
    return ("the noised law has no density" + where + ": sigma(t) = 0 and a component has zero covariance "
            "(an Empirical target needs sigma(t) > 0)")


_blas = None


def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, built once (building it costs ~3 ms;
    a limit through it ~0.07 ms). None without threadpoolctl: then blocks run serially."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a declared dependency, but optional here
            _blas = False
        else:
            _blas = ThreadpoolController().select(user_api="blas")
    return _blas or None


def _blas_threads(blas) -> int:
    return max((lib.num_threads for lib in blas.lib_controllers), default=1) if blas else 1


_limit_lock = threading.Lock()
_limit_users = 0
_restore: list | None = None  # per BLAS library, the count to restore when the last user leaves


def _reassert(blas):
    """(Under ``_limit_lock``.) Put every BLAS library back at 1 thread; a count found different from
    1 was set by someone else meanwhile (another thread leaving its own ``threadpool_limits``), so it
    becomes the count to restore."""
    for i, lib in enumerate(blas.lib_controllers):
        n = lib.num_threads
        if n != 1:
            _restore[i] = n
            lib.set_num_threads(1)


def hold_single_thread(blas):
    """Re-assert the shared 1-thread limit (cheap: one query per library); called before each block
    so that every block runs on single-threaded BLAS even if another thread changed the count."""
    with _limit_lock:
        if _limit_users:
            _reassert(blas)


@contextmanager
def _single_threaded_blas(blas):
    """BLAS at 1 thread while any scoremc call needs it, shared by overlapping calls from several
    threads: the first one in records the counts, the last one out restores them.

    OpenBLAS (pthreads) has no per-thread count (``openblas_set_num_threads_local`` is process-wide
    there), so the limit is process-wide: other threads calling BLAS meanwhile run single-threaded.
    What it guards against: a count changed by another thread while the limit is held is re-set to 1
    before each block (so every block runs single-threaded, and the result is the same bit for bit),
    and that count, not the stale one, is restored at the end. What it cannot guard against: a
    ``threadpool_limits`` context another thread *enters* while the limit is held records 1 as the
    count to restore on its exit (threadpoolctl's own bookkeeping)."""
    global _limit_users, _restore
    with _limit_lock:
        if _limit_users == 0:
            _restore = [lib.num_threads for lib in blas.lib_controllers]
        _limit_users += 1
        _reassert(blas)
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                for lib, n in zip(blas.lib_controllers, _restore):
                    if lib.num_threads != n:
                        lib.set_num_threads(n)
                _restore = None


#: below this many flops in all (~1 ms on one core) a call runs serially: starting the pool and
#: limiting BLAS costs ~0.2 ms
POOL_MIN_FLOPS = 3e7


#: below this many flops in all, every BLAS call of the call is below OpenBLAS's own threshold for
#: threading (GEMM: M N K <= 65536 * 4; GEMV: M N <= 2304 * 4, with the default
#: GEMM_MULTITHREAD_THRESHOLD), so it is single-threaded without a limit, and setting one (~15 us)
#: would dominate a call on a few rows
TINY_FLOPS = 1e5

#: the number of row blocks is rounded up to a multiple of this (then capped by ``min_rows``), so that
#: 2 workers get equal shares (the split a 2-core pool had before; 8 gave smaller GEMMs and made the
#: quick Empirical logpdf benchmark ~2x slower)
_BLOCK_MULTIPLE = 2


def _block_size(n: int, rows: int, min_rows: int) -> int:
    """Rows per block for n rows: about ``rows`` (fewer, so that the block count is a multiple of
    _BLOCK_MULTIPLE, or even, as long as each block keeps ``min_rows``). A function of (n, rows,
    min_rows) only -- never of the BLAS thread count or of other threads -- because BLAS round-off
    depends on the block shape: the serial and pooled paths must cut the same blocks to give the
    same bits (issue 13: rows differed by 1 ulp when another thread held a BLAS limit)."""
    if n <= 0:
        return max(1, rows)
    base = -(-n // max(1, rows))
    n_blocks = -(-base // _BLOCK_MULTIPLE) * _BLOCK_MULTIPLE
    cap = max(1, n // max(1, min_rows))
    if n_blocks > cap:
        n_blocks = max(base, cap - cap % 2 if cap >= 2 else cap)
    return -(-n // n_blocks)


def map_row_blocks(n: int, rows: int, work, *, min_rows: int = 1, row_flops: float = 0.0) -> None:
    """Call ``work(start, stop, scratch)`` on consecutive row blocks covering ``range(n)``.

    ``rows`` is the block size wanted (the blocks are cut by :func:`_block_size`, the same whichever
    path runs, so the result does not depend on the thread count or on other threads, bit for bit);
    ``scratch`` is a dict private to the calling worker (for reusable buffers). With W > 1 BLAS
    threads configured (by default one per core) and at least POOL_MIN_FLOPS of work (``row_flops``
    per row), the blocks run on up to W Python threads, as many as get a block of at least ``min_rows`` rows. BLAS is single-threaded for every block, on
    the serial path too (:func:`_single_threaded_blas`: shared, scoped, restored on return), since
    its round-off depends on its thread count: so the result does not depend on which path runs or
    on what other threads do. ``work`` must release the GIL for most of its time
    (BLAS calls and ``nogil`` kernels do).

    Why: on 2 shared cores, alternating multi-threaded BLAS with the other (serial or Numba
    OpenMP) stages of a block was 1.3-7.7x slower than this: BLAS threads spin-wait on each other
    whenever another process holds a core, and Numba's and OpenBLAS's thread pools fight over
    the cores at every hand-over (benchmarks/README.md). The pool has no hand-overs, also spreads
    the elementwise and kernel work, and scales with cores like BLAS itself. A user limit on BLAS
    threads (OPENBLAS_NUM_THREADS, threadpoolctl) is honoured as W. The limit is process-wide:
    other threads calling BLAS meanwhile also run single-threaded (see :func:`_single_threaded_blas`
    for what can and cannot leak).
    """
    rows = _block_size(n, rows, min_rows)
    blas = _blas_controller()
    if blas is None or n * row_flops < TINY_FLOPS:  # no threadpoolctl, or BLAS single-threaded anyway
        scratch: dict = {}
        for start in range(0, n, rows):
            work(start, min(n, start + rows), scratch)
        return
    workers = min(_blas_threads(blas), -(-n // rows))
    with _single_threaded_blas(blas):
        _map_blocks_held(n, rows, work, blas, workers if n * row_flops >= POOL_MIN_FLOPS else 1)


def _map_blocks_held(n, rows, work, blas, workers):
    if workers <= 1:
        scratch: dict = {}
        for start in range(0, n, rows):
            hold_single_thread(blas)
            work(start, min(n, start + rows), scratch)
        return
    starts = iter(range(0, n, rows))
    lock = threading.Lock()

    def worker():
        scratch: dict = {}
        while True:
            with lock:
                start = next(starts, None)
            if start is None:
                return
            hold_single_thread(blas)
            work(start, min(n, start + rows), scratch)

    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(worker) for _ in range(workers)]:
            f.result()
