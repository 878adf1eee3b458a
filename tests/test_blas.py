"""scoremc._blas.matmul: NumPy's matmul semantics, every product on one BLAS thread (issue 13)."""
import ast
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoremc import _blas

threadpoolctl = pytest.importorskip("threadpoolctl")

ROOT = pathlib.Path(__file__).resolve().parents[1] / "scoremc"


@pytest.fixture(autouse=True)
def _restore_blas_counts():
    with threadpoolctl.threadpool_limits(limits=None):
        yield


def _openblas_with_batched_gemm() -> bool:
    for lib in threadpoolctl.threadpool_info():
        if lib.get("internal_api") == "openblas":
            version = tuple(int(p) for p in lib["version"].split(".")[:3])
            return version >= (0, 3, 30)
    return False


def test_numpys_openblas_is_used_through_its_batched_gemm():
    """NumPy's wheels ship OpenBLAS >= 0.3.30: then the deterministic path must be found (a wrong
    symbol name or integer width would silently fall back to np.matmul)."""
    if not _openblas_with_batched_gemm():
        pytest.skip("NumPy's BLAS is not an OpenBLAS with a batched GEMM")
    assert _blas.deterministic() and _blas.library()


def _operand(draw, shape, dtype):
    """An array of ``shape``, drawn as C-ordered, Fortran-ordered, or a strided view."""
    layout = draw(st.sampled_from(["c", "f", "view", "reversed"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if layout == "view" and len(shape) >= 1:
        big = rng.standard_normal(shape[:-1] + (2 * shape[-1] + 1,)).astype(dtype)
        return big[..., 1::2]
    a = rng.standard_normal(shape).astype(dtype)
    if layout == "f":
        return np.asfortranarray(a)
    if layout == "reversed" and len(shape) >= 1:
        return a[..., ::-1]
    return a


@st.composite
def products(draw, max_dim=40):
    dims = st.integers(0, max_dim)
    m, k, n = draw(dims), draw(dims), draw(dims)
    batch = draw(st.lists(st.integers(1, 3), max_size=2))
    a_batch = [draw(st.sampled_from([b, 1])) for b in batch]
    b_batch = [draw(st.sampled_from([b, 1])) for b in batch][draw(st.integers(0, len(batch))):]
    a_shape = (k,) if draw(st.booleans()) and not batch else tuple(a_batch) + (m, k)
    b_shape = (k,) if draw(st.booleans()) and not batch else tuple(b_batch) + (k, n)
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    return _operand(draw, a_shape, dtype), _operand(draw, b_shape, dtype)


@settings(max_examples=300, deadline=None)
@given(products())
def test_matmul_has_numpys_semantics(ab):
    """Shapes (1-D operands, broadcast batch dims), dtype and values as np.matmul (to round-off: the
    small-product pieces may be computed by another kernel)."""
    a, b = ab
    want = np.matmul(a, b)
    got = _blas.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 1e-12 if want.dtype == np.float64 else 1e-4
    scale = (np.abs(a).max(initial=0) * np.abs(b).max(initial=0) * max(1, a.shape[-1]))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(scale, 1e-300))


@st.composite
def large_products(draw):
    """Products above the small-product bound (the batched GEMM) and around it (the pieces)."""
    m = draw(st.integers(1, 400))
    k = draw(st.sampled_from([1, 7, 64, 300, 784, 1797, 3072]))
    n = draw(st.integers(1, 600))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((n, k)).T if draw(st.booleans()) else rng.standard_normal((k, n))
    return a, b


@settings(max_examples=60, deadline=None)
@given(large_products())
def test_bits_do_not_depend_on_the_blas_thread_count(ab):
    """The same bits at 1, 3 and 7 BLAS threads, for products below, around and above the bound;
    above it (and with m, n > 1) they are np.matmul's one-thread bits."""
    a, b = ab
    runs = []
    for n in (1, 3, 7):
        with threadpoolctl.threadpool_limits(n):
            runs.append(_blas.matmul(a, b))
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    if _blas.deterministic() and m * k * n > _blas._SMALL and min(m, n) > 1:  # (np.matmul: a GEMV if m or n is 1)
        with threadpoolctl.threadpool_limits(1):
            np.testing.assert_array_equal(runs[0], a @ b)


def test_a_stack_of_products_is_deterministic_too():
    """A stack goes to the batched GEMM as one call (its products spread over the BLAS threads, each
    on one): the same bits at every thread count, equal to the one-thread products."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((6, 64, 784)), rng.standard_normal((784, 512))
    with threadpoolctl.threadpool_limits(1):
        want = np.stack([x @ b for x in a])
    for n in (1, 3, 7):
        with threadpoolctl.threadpool_limits(n):
            np.testing.assert_array_equal(_blas.matmul(a, b), want)


def test_out_argument():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 100))
    want = _blas.matmul(a, b)
    out = np.empty((300, 100))
    assert _blas.matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, want)
    big = np.zeros((400, 100))
    _blas.matmul(a, b, out=big[50:350])  # a C-contiguous row slice: written in place
    np.testing.assert_array_equal(big[50:350], want)
    assert not big[:50].any() and not big[350:].any()
    fortran = np.zeros((300, 100), order="F")  # not C-contiguous: computed aside, then copied
    _blas.matmul(a, b, out=fortran)
    np.testing.assert_array_equal(fortran, want)
    sq = rng.standard_normal((200, 200))
    expect = _blas.matmul(sq, sq)
    _blas.matmul(sq, sq.copy(), out=sq)  # out aliases an operand
    np.testing.assert_array_equal(sq, expect)
    with pytest.raises(ValueError, match="out must have shape"):
        _blas.matmul(a, b, out=np.empty((300, 99)))
    with pytest.raises(ValueError, match="inner dimensions"):
        _blas.matmul(a, b.T)


def test_other_dtypes_go_to_numpy():
    a = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(_blas.matmul(a, a.T), a @ a.T)
    c = a + 1j
    np.testing.assert_array_equal(_blas.matmul(c, c.T), c @ c.T)
    assert _blas.matmul(np.ones((2, 0)), np.ones((0, 3))).tolist() == [[0.0] * 3] * 2


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.MatMult):
            yield node.lineno, "@"
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            if owner in {"np", "numpy"} and name in {"matmul", "dot", "tensordot", "inner", "vdot", "vecdot"}:
                yield node.lineno, f"np.{name}"
            if name == "einsum" and any(k.arg == "optimize" for k in node.keywords):
                yield node.lineno, "einsum(optimize=...)"
            if name in {"threadpool_limits", "set_num_threads", "openblas_set_num_threads"}:
                yield node.lineno, name


def test_the_reference_layer_writes_its_products_with_matmul():
    """Every matrix product of the reference layer goes through _array.matmul / _blas.matmul, and no
    module sets a BLAS thread count. Out of scope: the torch layer (nn/), the experiments, the
    testing helpers (they check users' models, on the user's BLAS) and _blas itself."""
    skip = {"nn", "experiments", "testing"}
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in skip or rel.name == "_blas.py":
            continue
        found += [f"{rel}:{line} {what}" for line, what in _calls(ast.parse(path.read_text()))]
    assert not found, "products outside scoremc._blas.matmul:\n" + "\n".join(found)
