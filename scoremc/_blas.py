"""Matrix products whose bits do not depend on the BLAS thread count, with no global state touched.

Why: OpenBLAS splits a product among its threads and the split changes the round-off. Measured
here: ``A @ B`` for a (333, 3072) times (3072, 17) product differs in 1.5-3.6% of its entries between
1, 2, 3, 4, 8 and 16 BLAS threads; (64, 1797) x (1797, 1797) in 73%. A result that must be the same
bit for bit whatever the user's ``threadpool_limits``, the scheduler, the worker processes'
``OPENBLAS_NUM_THREADS`` or other threads (issue 13) needs single-threaded products, and OpenBLAS
built with pthreads (NumPy's wheels) has no per-thread thread count: ``openblas_set_num_threads_local``
is process-wide there. Limiting the process-wide count while we compute leaked into other threads
(a ``threadpool_limits`` context entered meanwhile restores our 1 on exit).

The way out without global state: OpenBLAS's batched GEMM (``cblas_dgemm_batch``, NumPy's bundled
OpenBLAS >= 0.3.30) computes each product of the batch on one thread, whatever the thread count,
and spreads the batch's products among the threads. So :func:`matmul` is ``a @ b`` through the
batched GEMM: the same bits as ``a @ b`` on one BLAS thread (checked at 1 to 16 threads by
tests/test_blas.py), as fast as one BLAS thread, and a stack of products still uses every BLAS
thread. Where the BLAS has no batched GEMM (another BLAS than OpenBLAS, or an older OpenBLAS), it is
plain ``np.matmul``, whose bits then follow the BLAS thread count (:func:`deterministic` says which).

Small products (m n k <= 100^3) do not go through the batched GEMM: OpenBLAS 0.3.31 (NumPy 2.4's)
crashes there in its DYNAMIC_ARCH builds (the small-matrix kernel is not resolved; fixed upstream by
OpenMathLib/OpenBLAS#5980). They are plain ``np.matmul`` calls cut into pieces that OpenBLAS runs on
one thread by its own size rules (GEMM: m n k <= 65536 * 4; GEMV: m n <= 2304 * 4; DOT: n <= 10000,
with the default GEMM_MULTITHREAD_THRESHOLD = 4), and ``np.einsum`` (no BLAS) for the rare piece that
cannot be cut so. The cut depends on the shape only, so the bits do too.
"""
from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

__all__ = ["matmul", "deterministic", "library"]

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


class _Batched:
    """ctypes entry points of one OpenBLAS's batched GEMM (float64 and float32)."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        self.path = path
        names = [(p, s) for p in ("scipy_", "") for s in ("64_", "")]
        for prefix, suffix in names:
            try:
                self.d = getattr(lib, f"{prefix}cblas_dgemm_batch{suffix}")
                self.s = getattr(lib, f"{prefix}cblas_sgemm_batch{suffix}")
                config = getattr(lib, f"{prefix}openblas_get_config{suffix}")
            except AttributeError:
                continue
            config.restype = ctypes.c_char_p
            # the BLAS integer: 64-bit in an ILP64 build (NumPy's wheels), else 32-bit
            self.int = np.int64 if b"USE64BITINT" in (config() or b"") else np.int32
            for f in (self.d, self.s):
                f.restype = None
            return
        raise LookupError(f"{path} has no cblas_dgemm_batch")

    def __call__(self, dtype, trans_a, trans_b, m, n, k, a_ptrs, lda, b_ptrs, ldb, c_ptrs, ldc):
        """One group of ``len(c_ptrs)`` products; the pointer arguments are sequences of addresses (int64)."""
        count = len(c_ptrs)
        ints = np.array([m, n, k, lda, ldb, ldc, count], dtype=self.int)
        if count == 1:  # (no address arrays to build: the per-call cost matters for many small products)
            ptrs = np.array([a_ptrs[0], b_ptrs[0], c_ptrs[0]], dtype=np.int64)
            pa = ptrs.ctypes.data
            pb, pc = pa + 8, pa + 16
        else:
            pa, pb, pc = a_ptrs.ctypes.data, b_ptrs.ctypes.data, c_ptrs.ctypes.data
        trans = np.array([trans_a, trans_b], dtype=np.intc)
        scalars = np.array([1.0, 0.0], dtype=dtype)
        step, tstep, sstep = ints.itemsize, trans.itemsize, scalars.itemsize
        i, t, s = ints.ctypes.data, trans.ctypes.data, scalars.ctypes.data
        f = self.d if dtype == np.float64 else self.s
        V = ctypes.c_void_p
        # group_count = 1 (passed by value), group_size = count
        f(ctypes.c_int(_ROW_MAJOR), V(t), V(t + tstep), V(i), V(i + step), V(i + 2 * step), V(s),
          V(pa), V(i + 3 * step), V(pb), V(i + 4 * step), V(s + sstep), V(pc), V(i + 5 * step),
          (ctypes.c_int64 if self.int == np.int64 else ctypes.c_int32)(1), V(i + 6 * step))


_lock = threading.Lock()
_batched: _Batched | None | bool = None


def _numpy_blas_path():
    """The file of the BLAS NumPy's matmul calls, if it is an OpenBLAS (threadpoolctl's view)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    libs = [lib for lib in ThreadpoolController().select(user_api="blas").lib_controllers
            if lib.internal_api == "openblas"]
    # NumPy's own copy (numpy.libs / numpy/.dylibs beside the package) before any other OpenBLAS
    libs.sort(key=lambda lib: not os.path.abspath(lib.filepath).startswith(os.path.join(root, "numpy")))
    return libs[0].filepath if libs else None


def _get() -> _Batched | None:
    global _batched
    if _batched is None:
        with _lock:
            if _batched is None:
                path, found = _numpy_blas_path(), False
                if path is not None and os.environ.get("SCOREMC_PLAIN_MATMUL", "") in ("", "0"):
                    try:
                        found = _Batched(path)
                    except (OSError, LookupError):
                        found = False
                _batched = found
                if found and not _self_check():
                    _batched = False
    return _batched or None


def _self_check() -> bool:
    """The batched GEMM reproduces exact integer-valued products above the small-product bound
    (guards against an ABI read wrongly: the wrong integer width or argument order)."""
    a = (np.arange(130 * 120.0).reshape(130, 120) % 7) - 3.0
    b = (np.arange(120 * 110.0).reshape(120, 110) % 5) - 2.0
    exact = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.float64)
    return bool(np.array_equal(matmul(a, b), exact) and np.array_equal(matmul(b.T, a.T), exact.T)
                and np.array_equal(matmul(a.astype(np.float32), b.astype(np.float32)), exact.astype(np.float32)))


#: the batched GEMM is used above this m n k (see the module docstring)
_SMALL = 100 ** 3
#: OpenBLAS runs these on one thread: GEMM with m n k at most, GEMV with m n at most, DOT with n at most
_GEMM_SERIAL, _GEMV_SERIAL, _DOT_SERIAL = 65536 * 4, 2304 * 4, 10000


def _serial(m: int, k: int, n: int) -> bool:
    """Whether ``np.matmul`` of an (m, k) by (k, n) product is one OpenBLAS call on one thread."""
    if m == 1 and n == 1:
        return k <= _DOT_SERIAL
    if m == 1 or n == 1:
        return max(m, n) * k <= _GEMV_SERIAL
    return m * k * n <= _GEMM_SERIAL


def _pieces(size: int, step: int):
    return [(i, min(size, i + step)) for i in range(0, size, step)]


def _small(a, b, c):
    """c[...] = a @ b for a small product (m n k <= _SMALL) in pieces OpenBLAS runs on one thread."""
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if np.may_share_memory(a, b):  # A @ A.T would be a SYRK, whose threading has rules of its own
        b = b.copy()
    if _serial(m, k, n):
        np.matmul(a, b, out=c)
        return
    rows = _pieces(m, max(2, _GEMM_SERIAL // max(1, k * n)))
    cols = _pieces(n, max(2, _GEMM_SERIAL // max(1, k * m)))
    for spans, cut in ((rows, "rows"), (cols, "cols")):
        shapes = [(j - i, k, n) if cut == "rows" else (m, k, j - i) for i, j in spans]
        if all(_serial(*s) for s in shapes):
            for i, j in spans:
                if cut == "rows":
                    np.matmul(a[..., i:j, :], b, out=c[..., i:j, :])
                else:
                    np.matmul(a, b[..., :, i:j], out=c[..., :, i:j])
            return
    np.einsum("...ij,...jk->...ik", a, b, out=c)  # no BLAS: a long dot or GEMV that cannot be cut


def deterministic() -> bool:
    """Whether :func:`matmul`'s bits are independent of the BLAS thread count (a batched GEMM found)."""
    return _get() is not None


def library() -> str | None:
    """The BLAS file whose batched GEMM :func:`matmul` calls (None: plain ``np.matmul``)."""
    b = _get()
    return b.path if b else None


def _layout(m2, w):
    """(trans, ld) for a matrix view m2 (r, c) the BLAS can read in place, or None (copy it first)."""
    r, c = m2.shape[-2:]
    s0, s1 = m2.strides[-2:]
    if (c == 1 or s1 == w) and (r == 1 or (s0 > 0 and s0 % w == 0 and s0 // w >= c)):
        return _NO_TRANS, (max(1, c) if r == 1 else s0 // w)
    if (r == 1 or s0 == w) and (c == 1 or (s1 > 0 and s1 % w == 0 and s1 // w >= r)):
        return _TRANS, (max(1, r) if c == 1 else s1 // w)
    return None


def _addresses(arr, batch):
    """Start addresses of the matrices of ``arr`` (batch + (r, c)), flattened in C order (int64)."""
    offsets = np.zeros(batch, dtype=np.int64)
    for axis, (size, stride) in enumerate(zip(batch, arr.strides[:len(batch)])):
        shape = [1] * len(batch)
        shape[axis] = size
        offsets = offsets + (np.arange(size, dtype=np.int64) * stride).reshape(shape)
    return offsets.reshape(-1) + arr.ctypes.data


def matmul(a, b, out=None):
    """``a @ b`` (NumPy matmul semantics: broadcast batch dims, 1-D operands promoted and squeezed),
    computed so that every product runs on one BLAS thread: the bits do not depend on the BLAS thread
    count or on other threads (see the module docstring; :func:`deterministic`).

    a : (..., m, k) or (k,); b : (..., k, n) or (k,). float64/float32 operands use the batched GEMM;
    other dtypes (integers, complex, float16) go to ``np.matmul``. out : optional array of the result's
    shape and dtype. Returns the product, a new array unless ``out`` is given.
    """
    a, b = np.asarray(a), np.asarray(b)
    dtype = np.result_type(a, b)
    batched = _get() if dtype in (np.float64, np.float32) else None
    if batched is None or a.ndim == 0 or b.ndim == 0:
        return np.matmul(a, b) if out is None else np.matmul(a, b, out=out)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul: the inner dimensions differ: a is {a.shape}, b is {b.shape}")
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    shape = batch + (m, n)
    squeeze = ((-2,) if a.ndim == 1 else ()) + ((-1,) if b.ndim == 1 else ())
    final = tuple(s for i, s in enumerate(shape) if i - len(shape) not in squeeze)
    if out is not None and (out.shape != final or out.dtype != dtype):
        raise ValueError(f"matmul: out must have shape {final} and dtype {dtype}, got {out.shape} {out.dtype}")
    if m == 0 or n == 0 or k == 0 or 0 in batch:
        res = np.zeros(final, dtype=dtype)
        if out is None:
            return res
        out[...] = res
        return out
    w = np.dtype(dtype).itemsize
    small = m * k * n <= _SMALL
    ops = []
    for x in (a2, b2):  # the batched GEMM reads each matrix in place when its layout allows
        x = x.astype(dtype, copy=False)
        if not small and (not x.flags.aligned or _layout(x, w) is None):
            x = np.ascontiguousarray(x)
        ops.append(np.broadcast_to(x, batch + x.shape[-2:]))
    # write into out in place when it is C-contiguous (then reshape is a view) and not an operand
    direct = (out is not None and out.flags.c_contiguous
              and not np.may_share_memory(out, a) and not np.may_share_memory(out, b))
    c = out.reshape(shape) if direct else np.empty(shape, dtype=dtype)
    if small:
        _small(ops[0], ops[1], c)
    else:
        (ta, lda), (tb, ldb) = _layout(ops[0], w), _layout(ops[1], w)
        if batch:
            pa, pb, pc = (_addresses(x, batch) for x in (ops[0], ops[1], c))
        else:
            pa, pb, pc = (ops[0].ctypes.data,), (ops[1].ctypes.data,), (c.ctypes.data,)
        batched(dtype, ta, tb, m, n, k, pa, lda, pb, ldb, pc, max(1, n))
    res = c.reshape(final) if squeeze else c
    if out is None:
        return res
    if not direct:
        out[...] = res
    return out
