"""Calls from several Python threads at once equal serial calls, bit for bit.

The kernels drop the GIL, so Python threads really run them side by side, each
call with its own OpenMP team. Nothing is shared between calls but the inputs
(read only), and every reduction has a fixed order: the results must be the
serial ones exactly, whatever the interleaving and the thread counts.

Also pinned here: how fastnorm's thread count meets OpenMP's own setting
(OMP_NUM_THREADS, threadpoolctl) and NumPy's BLAS pool.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import threadpoolctl

import fastnorm as fn

N_WORKERS = 6
ROUNDS = 4


def _problem(seed):
    """A BN or LN problem; the shapes are large enough to run OpenMP teams
    (>= 32768 elements) and several reduction tiles, and small ones too."""
    rng = np.random.default_rng(seed)
    kind = ("batchnorm", "layernorm")[seed % 2]
    dtype = (np.float32, np.float64)[(seed // 2) % 2]
    shape = [(300, 700), (130, 257), (7, 5), (1000, 40)][seed % 4]
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)
    gamma = rng.standard_normal(shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    ddof = seed % 3 % 2
    return kind, x, gamma, beta, dout, ddof


def _run(problem):
    kind, x, gamma, beta, dout, ddof = problem
    if kind == "batchnorm":
        params = {"mode": "train", "ddof": ddof}
        out, cache = fn.batchnorm_forward(x, gamma, beta, params)
        grads = fn.batchnorm_backward(dout, cache)
        test_out, _ = fn.batchnorm_forward(x, gamma, beta, dict(params, mode="test"))
        return (out, *grads, params["running_mean"], params["running_var"], test_out)
    out, cache = fn.layernorm_forward(x, gamma, beta, {"ddof": ddof})
    return (out, *fn.layernorm_backward(dout, cache))


@pytest.fixture(scope="module")
def problems_and_serial():
    problems = [_problem(seed) for seed in range(16)]
    serial = [_run(p) for p in problems]
    return problems, serial


def _assert_same(results, serial):
    for got, want in zip(results, serial):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_threads_at_once_equal_serial(problems_and_serial):
    problems, serial = problems_and_serial
    barrier = threading.Barrier(N_WORKERS)

    def worker(k):
        barrier.wait()  # all start together
        out = []
        for r in range(ROUNDS):
            for i in range(k + r, k + r + len(problems)):  # each thread in its own order
                j = i % len(problems)
                out.append((j, _run(problems[j])))
        return out

    with ThreadPoolExecutor(N_WORKERS) as pool:
        per_thread = list(pool.map(worker, range(N_WORKERS)))
    n = 0
    for results in per_thread:
        for j, got in results:
            _assert_same([got], [serial[j]])
            n += 1
    assert n == N_WORKERS * ROUNDS * len(problems)


def test_changing_the_thread_count_meanwhile_changes_no_result(problems_and_serial):
    """The count is process-wide; another thread changing it mid-flight may
    change how many threads a call uses, never what it computes."""
    problems, serial = problems_and_serial
    stop = threading.Event()

    def toggler():
        counts = [1, 2, 3, None]
        k = 0
        while not stop.is_set():
            fn.set_num_threads(counts[k % len(counts)])
            k += 1

    t = threading.Thread(target=toggler)
    t.start()
    try:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(_run, problems * 2))
    finally:
        stop.set()
        t.join()
        fn.set_num_threads(None)
    _assert_same(results, serial * 2)


def test_same_input_shared_by_threads_is_not_modified(problems_and_serial):
    problems, serial = problems_and_serial
    kind, x, gamma, beta, dout, ddof = problems[0]
    x.flags.writeable = False  # would raise inside NumPy if anything tried to write
    before = x.copy()
    try:
        with ThreadPoolExecutor(N_WORKERS) as pool:
            results = list(pool.map(lambda _: _run(problems[0]), range(3 * N_WORKERS)))
    finally:
        x.flags.writeable = True
    _assert_same(results, [serial[0]] * len(results))
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_each_thread_count_gives_the_serial_bits(problems_and_serial, n):
    problems, serial = problems_and_serial
    with fn.num_threads(n):
        results = [_run(p) for p in problems]
    _assert_same(results, serial)


def test_thread_count_and_threadpoolctl():
    """fastnorm's count: set_num_threads(n) if set, else OpenMP's default for
    the calling thread (OMP_NUM_THREADS, or what threadpoolctl's 'openmp'
    limit sets in that thread). NumPy's BLAS limit does not touch it."""
    default = fn.get_num_threads()
    assert default >= 1
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        assert fn.get_num_threads() == default
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fn.get_num_threads() == 1
        with fn.num_threads(3):  # an explicit count wins over OpenMP's default
            assert fn.get_num_threads() == 3
    assert fn.get_num_threads() == default
    if not fn.openmp_enabled():
        assert default == 1  # serial build: always one thread
    else:
        libs = {info["user_api"] for info in threadpoolctl.threadpool_info()}
        assert "openmp" in libs  # the kernels' OpenMP runtime is visible to threadpoolctl


def test_set_num_threads_rejects_bad_counts():
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="thread count"):
            fn.set_num_threads(bad)
    assert fn.get_num_threads() >= 1
