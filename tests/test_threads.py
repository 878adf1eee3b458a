"""Issue 13: the reference layer never changes the process's BLAS thread count, and its bits do not
depend on that count, on the thread it runs on, or on what other threads do."""
import threading

import numpy as np
import pytest

import scoremc as smc
from scoremc import _blas, _blocks

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture(autouse=True)
def _restore_blas_counts():
    """The tests below set counts themselves (threadpool_limits); later files start with the counts found."""
    with threadpoolctl.threadpool_limits(limits=None):
        yield


def _in_thread(fn):
    """``fn()`` on a fresh thread."""
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("value", fn()))
    th.start()
    th.join()
    return out["value"]


def _blas_threads():
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(7)
    K, d = 8, 24
    A = rng.standard_normal((K, d, d)) / np.sqrt(d)
    full = smc.GaussianMixture(np.full(K, 1 / K), rng.standard_normal((K, d)), A @ A.transpose(0, 2, 1) + 0.3 * np.eye(d))
    # large enough for the thread pool on the full and the axis-aligned paths; the d = 784 set has
    # products whose bits under plain np.matmul change with the BLAS thread count (1 vs 3 vs 7)
    return [(smc.exact_score(full, smc.VP()), rng.standard_normal((6000, d)), 0.3),
            (smc.exact_score(smc.Empirical(rng.standard_normal((3000, 16))), smc.VE()), rng.standard_normal((1500, 16)), 0.4),
            (smc.exact_score(smc.Empirical(rng.standard_normal((500, 784))), smc.VE()), rng.standard_normal((700, 784)), 0.6)]


def _all(cases):
    return [(es(x, t), es.logpdf(x, t)) for es, x, t in cases]


def _assert_same(got, want):
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_array_equal(a, b)


def test_plain_matmul_would_depend_on_the_thread_count():
    """The premise of the fix, on this machine's BLAS: a product of the d = 784 case changes its bits
    with the BLAS thread count under np.matmul, and not under scoremc's matmul."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 784)), rng.standard_normal((784, 1024))
    plain, ours = [], []
    for n in (1, 3, 7):
        with threadpoolctl.threadpool_limits(n):
            plain.append(a @ b)
            ours.append(_blas.matmul(a, b))
    if all(np.array_equal(plain[0], p) for p in plain[1:]):
        pytest.skip("this BLAS gives the same bits at 1, 3 and 7 threads for this product")
    assert _blas.deterministic()
    for o in ours[1:]:
        np.testing.assert_array_equal(o, ours[0])
    np.testing.assert_array_equal(ours[0], plain[0])  # the one-thread bits of np.matmul


def test_bits_do_not_depend_on_the_blas_thread_count(cases):
    """Scores and log-densities (full and axis-aligned paths, thread pool and serial) and an STF
    estimate at d = 784: bit-identical at 1, 3 and 7 BLAS threads. Fails when one product of the fast
    path goes back to np.matmul (planted: the axis path's cross term)."""
    with threadpoolctl.threadpool_limits(1):
        want = _all(cases)
    for n in (3, 7):
        with threadpoolctl.threadpool_limits(n):
            _assert_same(_all(cases), want)


def test_stf_estimate_bits_do_not_depend_on_the_blas_thread_count():
    rng = np.random.default_rng(3)
    emp = smc.Empirical(rng.standard_normal((1024, 784)))
    xt = rng.standard_normal((64, 784))
    runs = []
    for n in (1, 3, 7):
        with threadpoolctl.threadpool_limits(n):
            runs.append(smc.estimate(smc.STF(), emp, smc.VE(), 0.5, xt, n=512, rng=np.random.default_rng(1)))
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])


def test_block_size_depends_on_the_problem_only():
    for n, rows, min_rows in [(200, 496, 32), (2000, 2048, 256), (20000, 2048, 256), (7, 3, 1), (0, 5, 1)]:
        size = _blocks._block_size(n, rows, min_rows)
        assert size >= 1 and (n == 0 or size >= min(min_rows, n))
    # equal shares for 2 workers where the rows allow it
    assert -(-2000 // _blocks._block_size(2000, 2048, 256)) % 2 == 0


def test_same_bits_with_and_without_a_blas_limit(cases):
    """With the caller's limit the serial path runs, else the pool: the same blocks, so the same bits."""
    free = _all(cases)
    with threadpoolctl.threadpool_limits(1):
        limited = _all(cases)
    _assert_same(limited, free)


@pytest.mark.parametrize("holder_enters", ["before", "during"])
def test_concurrent_callers_and_a_limit_holder(cases, holder_enters):
    """Threads calling exact_score while another thread enters threadpool_limits(1) -- before the
    callers start, or while they run (the case a process-wide limit of ours could not survive: the
    holder recorded our 1 and restored it on exit) -- and leaves while they run: bit-identical
    results, and the BLAS thread count is what it was before. (One holder at a time: two overlapping
    threadpool_limits in two threads can leave the count changed by themselves.)"""
    before = _blas_threads()
    reference = _in_thread(lambda: _all(cases))
    errors = []
    entered, release = threading.Event(), threading.Event()

    def holder():
        with threadpoolctl.threadpool_limits(1):
            entered.set()
            release.wait(120)

    def caller():
        try:
            for _ in range(2):
                _assert_same(_all(cases), reference)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    hold = threading.Thread(target=holder)
    callers = [threading.Thread(target=caller) for _ in range(3)]
    if holder_enters == "before":
        hold.start()
        entered.wait(10)
    for c in callers:
        c.start()
    if holder_enters == "during":
        hold.start()
        entered.wait(10)
    release.set()  # the holder leaves while the callers are still computing
    for th in callers + [hold]:
        th.join()
    if errors:
        raise errors[0]
    assert _blas_threads() == before


def test_concurrent_callers_leave_the_blas_count_unchanged(cases):
    """Several threads in the pooled path at once: nothing to restore, every result bit-identical."""
    before = _blas_threads()
    reference = _in_thread(lambda: [es(x, t) for es, x, t in cases])
    errors = []

    def caller():
        try:
            for _ in range(3):
                for (es, x, t), s in zip(cases, reference):
                    np.testing.assert_array_equal(es(x, t), s)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    assert _blas_threads() == before


@pytest.mark.parametrize("case", [0, 1, 2], ids=["full", "axis", "axis-784"])
def test_main_thread_equals_other_threads(cases, case):
    es, x, t = cases[case]
    np.testing.assert_array_equal(es(x, t), _in_thread(lambda: es(x, t)))
