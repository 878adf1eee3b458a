"""Canonical row blocks: the unit of computation and of randomness of the chunked engines.

Why not chunks sized by a memory budget: BLAS products are not row-local. A row of ``A @ B``
computed in a 64-row block and in a 4096-row block can differ in the last bit (OpenBLAS picks
different micro-kernels and thread splits by shape; measured here for a (64, 1797) times
(1797 columns) product at every block size from 2 to 2048 rows). So a result that must not depend
on the memory budget (or the scheduler) has to be computed on row blocks that do not depend on it.

The blocks depend only on the problem: ``block_rows(per_row)`` rows of ``per_row`` floats each,
about ``BLOCK`` floats per array. Each block is computed by one call with BLAS limited to one
thread (so neither the block's own split into BLAS row blocks nor the BLAS kernels depend on the
thread count). The memory budget decides only how many blocks are in flight at once, on a thread
pool: peak memory ~ (blocks in flight) x (the block's few arrays of ``BLOCK`` floats), and the
numbers are the same bit for bit for every budget. Randomness is a :class:`._random.RowStream`
over the global row indices, so every row's draws are also independent of the blocking.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ._gaussians import _blas_controller, _blas_threads, _single_threaded_blas
from ._validation import as_count

__all__ = ["BLOCK", "block_rows", "map_blocks", "in_flight"]

#: floats per array of one canonical block (8 MiB in float64). Changing it changes the numbers
#: (the BLAS round-off), so it is a constant, not a parameter.
BLOCK = 1 << 20


def block_rows(per_row: int) -> int:
    """Rows of one canonical block for rows of ``per_row`` floats (at least one row)."""
    return max(1, BLOCK // max(1, int(per_row)))


def in_flight(budget, per_block: int) -> int:
    """Blocks computed at once under a budget of ``budget`` floats (None: one per BLAS thread, i.e.
    per core unless the user limited BLAS), for blocks of ``per_block`` floats per array."""
    cores = _blas_threads(_blas_controller())
    if budget is None:
        return max(1, cores)
    budget = as_count(budget, "budget")
    return max(1, min(cores, budget // max(1, per_block)))


def map_blocks(fn, n: int, per_row: int, budget=None) -> list:
    """``[fn(start, stop) for each canonical block of range(n)]``, in order.

    Up to :func:`in_flight` blocks run at once on threads; BLAS is single-threaded throughout (a
    scoped, shared limit), so every block is computed the same way however many run at once.
    ``fn`` should release the GIL for most of its time (NumPy, BLAS and the Numba kernels do).
    """
    rows = block_rows(per_row)
    spans = [(i, min(n, i + rows)) for i in range(0, n, rows)]
    workers = min(len(spans), in_flight(budget, rows * max(1, int(per_row))))
    blas = _blas_controller()
    if blas is None:  # no threadpoolctl: BLAS thread counts cannot be fixed; compute serially
        return [fn(i, j) for i, j in spans]
    with _single_threaded_blas(blas):
        if workers <= 1:
            return [fn(i, j) for i, j in spans]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda span: fn(*span), spans))
