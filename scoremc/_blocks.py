"""Canonical row blocks: the unit of computation and of randomness of the chunked engines.

Why not chunks sized by a memory budget: BLAS products are not row-local. A row of ``A @ B``
computed in a 64-row block and in a 4096-row block can differ in the last bit (OpenBLAS picks
different micro-kernels by shape; measured here for a (64, 1797) times (1797 columns) product at
every block size from 2 to 2048 rows). So a result that must not depend on the memory budget (or
the scheduler) has to be computed on row blocks that do not depend on it.

The blocks depend only on the problem: ``block_rows(per_row)`` rows of ``per_row`` floats each,
about ``BLOCK`` floats per array. Every product inside a block is computed on one BLAS thread by
:func:`._blas.matmul` (so its bits depend neither on the BLAS thread count nor on other threads),
and nothing here changes the process's BLAS thread count (issue 13: a scoped process-wide limit
leaked into other threads). The memory budget decides only how many blocks are in flight at once,
on a thread pool: peak memory ~ (blocks in flight) x (the block's few arrays of ``BLOCK`` floats),
and the numbers are the same bit for bit for every budget. Randomness is a :class:`._random.RowStream`
over the global row indices, so every row's draws are also independent of the blocking.

Why a pool of single-threaded blocks rather than multi-threaded BLAS on one block at a time: on 2
shared cores, alternating multi-threaded BLAS with the serial and Numba stages of a block was
1.3-7.7x slower (BLAS threads spin-wait on each other whenever another process holds a core, and
Numba's and OpenBLAS's thread pools fight over the cores at every hand-over; benchmarks/README.md).
The pool has no hand-overs, also spreads the elementwise and kernel work, and scales with cores
like BLAS itself. The user's BLAS thread count (OPENBLAS_NUM_THREADS, threadpoolctl) is read, never
set, as the pool's size.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from ._validation import as_count

__all__ = ["BLOCK", "block_rows", "map_blocks", "map_row_blocks", "in_flight", "workers"]

#: floats per array of one canonical block (8 MiB in float64). Changing it changes the numbers
#: (the BLAS round-off), so it is a constant, not a parameter.
BLOCK = 1 << 20

#: below this many flops in all (~1 ms on one core) a call runs serially: starting the pool costs ~0.2 ms
POOL_MIN_FLOPS = 3e7

#: the number of row blocks of :func:`map_row_blocks` is rounded up to a multiple of this (then capped
#: by ``min_rows``), so that 2 workers get equal shares (8 gave smaller GEMMs and made the quick
#: Empirical logpdf benchmark ~2x slower)
_BLOCK_MULTIPLE = 2

_blas = None


def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, built once (~3 ms); None without it."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a declared dependency, but optional here
            _blas = False
        else:
            _blas = ThreadpoolController().select(user_api="blas")
    return _blas or None


def workers() -> int:
    """Blocks computed at once without a budget: the BLAS thread count (read, never set), by default
    one per core; 1 when it cannot be read."""
    blas = _blas_controller()
    return max((lib.num_threads for lib in blas.lib_controllers), default=1) if blas else 1


def block_rows(per_row: int) -> int:
    """Rows of one canonical block for rows of ``per_row`` floats (at least one row)."""
    return max(1, BLOCK // max(1, int(per_row)))


def in_flight(budget, per_block: int) -> int:
    """Blocks computed at once under a budget of ``budget`` floats (None: :func:`workers`), for
    blocks of ``per_block`` floats per array."""
    cores = workers()
    if budget is None:
        return max(1, cores)
    budget = as_count(budget, "budget")
    return max(1, min(cores, budget // max(1, per_block)))


def _run(spans, call, n_workers: int) -> list:
    """``[call(i, j, scratch) for (i, j) in spans]`` in order, on up to ``n_workers`` threads; ``scratch``
    is a dict private to the worker (reusable buffers)."""
    if n_workers <= 1 or len(spans) <= 1:
        scratch: dict = {}
        return [call(i, j, scratch) for i, j in spans]
    results = [None] * len(spans)
    todo = iter(range(len(spans)))
    lock = threading.Lock()

    def worker():
        scratch: dict = {}
        while True:
            with lock:
                b = next(todo, None)
            if b is None:
                return
            results[b] = call(*spans[b], scratch)

    with ThreadPoolExecutor(n_workers) as pool:
        for f in [pool.submit(worker) for _ in range(min(n_workers, len(spans)))]:
            f.result()
    return results


def map_blocks(fn, n: int, per_row: int, budget=None) -> list:
    """``[fn(start, stop) for each canonical block of range(n)]``, in order.

    Up to :func:`in_flight` blocks run at once on threads; each computes the same way however many
    run at once. ``fn`` should release the GIL for most of its time (NumPy, BLAS and the Numba
    kernels do).
    """
    rows = block_rows(per_row)
    spans = [(i, min(n, i + rows)) for i in range(0, n, rows)]
    return _run(spans, lambda i, j, scratch: fn(i, j), in_flight(budget, rows * max(1, int(per_row))))


def _block_size(n: int, rows: int, min_rows: int) -> int:
    """Rows per block for n rows: about ``rows`` (fewer, so that the block count is a multiple of
    _BLOCK_MULTIPLE, or even, as long as each block keeps ``min_rows``). A function of (n, rows,
    min_rows) only -- never of the thread count or of other threads -- because BLAS round-off
    depends on the block shape (issue 13: rows differed by 1 ulp when another thread held a BLAS
    limit and the split followed the thread count)."""
    if n <= 0:
        return max(1, rows)
    base = -(-n // max(1, rows))
    n_blocks = -(-base // _BLOCK_MULTIPLE) * _BLOCK_MULTIPLE
    cap = max(1, n // max(1, min_rows))
    if n_blocks > cap:
        n_blocks = max(base, cap - cap % 2 if cap >= 2 else cap)
    return -(-n // n_blocks)


def map_row_blocks(n: int, rows: int, work, *, min_rows: int = 1, row_flops: float = 0.0) -> None:
    """Call ``work(start, stop, scratch)`` on consecutive row blocks covering ``range(n)`` (the NumPy
    fast path's blocks, :mod:`._fast`).

    ``rows`` is the block size wanted; the blocks are cut by :func:`_block_size`, from the problem
    only, so the result does not depend on the thread count or on other threads, bit for bit.
    ``scratch`` is a dict private to the calling worker (for reusable buffers). With at least
    POOL_MIN_FLOPS of work (``row_flops`` per row) the blocks run on up to :func:`workers` threads,
    as many as get a block of at least ``min_rows`` rows. ``work`` must release the GIL for most of
    its time (BLAS calls and ``nogil`` kernels do).
    """
    size = _block_size(n, rows, min_rows)
    spans = [(i, min(n, i + size)) for i in range(0, n, size)]
    _run(spans, work, workers() if n * row_flops >= POOL_MIN_FLOPS else 1)
