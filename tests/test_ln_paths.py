"""The layer-norm kernels' splits: row groups of the backward (ROW_BLOCK = 64
rows, or half of fewer than 128 rows); rows up to WIDE_ROW = 8192 one by one,
wider rows by 1024-column tiles over all rows; lane tails (16 lanes). Both
kernels are checked bitwise against an exact NumPy model of their order of
operations (at the end of this file). Deterministic checks only (no timing)."""

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import _build
from fastnorm import reference as ref
from kernel_builds import AVX2, BASELINE, HAVE_BOTH, RUNNABLE

# Each has more than 32768 elements, so that two threads really run (smaller
# calls stay on one thread): half groups with and without a short last one,
# whole groups with a short last one, rows at and past WIDE_ROW (past it: a
# short last column tile), lane tails.
SHAPES = [(100, 500), (7, 5000), (255, 131), (257, 129), (300, 127), (600, 64),
          (130, 256), (130, 257), (64, 512), (64, 513),
          (4, 8192), (5, 8193), (3, 20001), (70, 8200), (127, 8193), (200, 8200)]


def _inputs(N, D, dtype, seed, offset=3.0):
    rng = np.random.default_rng(seed)
    x = (offset + 2.0 * rng.standard_normal((N, D))).astype(dtype)
    gamma = rng.standard_normal(D).astype(dtype)
    dout = rng.standard_normal((N, D)).astype(dtype)
    return x, gamma, dout


def _backward(kernels, x, gamma, dout, n_threads, ddof=0):
    """The compiled forward statistics, then the backward; returns dx, dgamma, dbeta."""
    N, D = x.shape
    out, stats = np.empty_like(x), np.empty((2, N))  # stats: mean, inv_std
    kernels.layernorm_forward(x, gamma, np.zeros_like(gamma), 1e-5, ddof, out, stats, n_threads)
    mean, inv_std = stats
    dx, dgamma, dbeta = np.empty_like(x), np.empty_like(gamma), np.empty_like(gamma)
    kernels.layernorm_backward(dout, x, mean, inv_std, gamma, ddof, dx, dgamma, dbeta, n_threads)
    return dx, dgamma, dbeta


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_one_and_two_threads_bitwise_equal(shape, dtype):
    kernels = _build.load_kernels()
    args = _inputs(*shape, dtype, seed=shape[1])
    for a, b in zip(_backward(kernels, *args, 1), _backward(kernels, *args, 2)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not HAVE_BOTH, reason="needs the AVX2 build and a CPU that runs it")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_both_builds_bitwise_equal(shape, dtype):
    args = _inputs(*shape, dtype, seed=shape[0])
    for a, b in zip(_backward(BASELINE, *args, 2), _backward(AVX2, *args, 2)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_float64_reference(shape, dtype, ddof):
    x, gamma, dout = _inputs(*shape, dtype, seed=7, offset=1e3)
    _, cache = fn.layernorm_forward(x, gamma, np.zeros_like(gamma), {"ddof": ddof})
    got = fn.layernorm_backward(dout, cache)
    x64, g64, d64 = (a.astype(np.float64) for a in (x, gamma, dout))
    _, rcache = ref.layernorm_forward(x64, g64, np.zeros_like(g64), {"ddof": ddof})
    want = ref.layernorm_backward(d64, rcache)
    # float64: the reference's own error, about eps * offset / std = 1e-13, bounds the check
    eps = np.finfo(np.float32).eps if dtype == np.float32 else 1e-12
    # dx per row: the terms are of size |g| * inv_std, their sums cancel to about that
    scale = np.abs(d64 * g64).max(axis=1, keepdims=True) * rcache["ivar"]
    assert np.max(np.abs(got[0] - want[0]) / scale) < 8 * eps
    # column sums in double, rounded once to the dtype: to the dtype's rounding,
    # relative to the sum of absolute terms. Below that, the reference's own error:
    # its x_hat carries about eps64 * offset / std = 2e-13 each, and how NumPy
    # sums them (its order changed between versions) makes 1e-13 to 1.3e-12
    for g, w, terms in zip(got[1:], want[1:], (np.abs(d64 * rcache["xhat"]), np.abs(d64))):
        bound = eps * np.abs(w) + 4e-12 * terms.sum(axis=0)
        assert np.max(np.abs(g - w) / bound) < 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(100, 500), (5, 8193), (257, 129)])
def test_dx_rows_do_not_depend_on_the_grouping(shape, dtype):
    """A row's dx depends on that row alone: the same bits when the row is
    backpropagated alone or inside groups of other sizes."""
    kernels = _build.load_kernels()
    x, gamma, dout = _inputs(*shape, dtype, seed=3)
    dx_all = _backward(kernels, x, gamma, dout, 2)[0]
    for rows in (slice(0, 1), slice(1, 4), slice(shape[0] - 2, shape[0])):
        dx_part = _backward(kernels, x[rows].copy(), gamma, dout[rows].copy(), 2)[0]
        np.testing.assert_array_equal(dx_part, dx_all[rows])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 8193), (300, 127)])
def test_constant_rows_give_zero_dgamma_and_the_dout_sums(shape, dtype):
    """x_hat is exactly 0 on a constant row (large offset included): dgamma
    gets exactly 0 from it; dbeta is the column sum of dout."""
    N, D = shape
    rng = np.random.default_rng(5)
    x = np.repeat(rng.choice([0.0, 1.0, -3e6, 1e4], N).reshape(-1, 1), D, axis=1).astype(dtype)
    gamma = rng.standard_normal(D).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    _, cache = fn.layernorm_forward(x, gamma, np.zeros_like(gamma), {})
    dx, dgamma, dbeta = fn.layernorm_backward(dout, cache)
    np.testing.assert_array_equal(dgamma, np.zeros(D, dtype))
    want = dout.astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(dbeta, want, rtol=np.finfo(dtype).eps, atol=1e-12 * N)
    assert np.all(np.isfinite(dx))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 8200), (257, 129)])
def test_nonfinite_dout_stays_in_its_row_and_column(shape, dtype, bad):
    N, D = shape
    x, gamma, dout = _inputs(N, D, dtype, seed=11)
    _, cache = fn.layernorm_forward(x, gamma, np.zeros_like(gamma), {})
    clean = fn.layernorm_backward(dout, cache)
    row, col = N - 2, D - 3   # in the last group and the last (tail) segment
    dout[row, col] = bad
    dirty = fn.layernorm_backward(dout, cache)
    rows, cols = np.arange(N) != row, np.arange(D) != col
    np.testing.assert_array_equal(dirty[0][rows], clean[0][rows])
    assert not np.isfinite(dirty[0][row]).any()
    for d, c in zip(dirty[1:], clean[1:]):
        np.testing.assert_array_equal(d[cols], c[cols])
        assert not np.isfinite(d[col])


# ---------------------------------------------------------------- exact model
# The kernels' order of operations, in NumPy (float32 element-wise work in
# float32, sums in double): row sums in LANES lanes, each lane adding its
# columns j = k, k + LANES, ... in order, the last D % LANES columns in a sum of
# their own; the lanes folded by halves, then the tail added. Column partials
# per row group (64 rows, or half of fewer than 128), row after row, the groups
# added in order. Any other order of additions fails the bitwise checks below.

LANES = 16
WIDE_ROW = 8192   # layernorm.pxd.tp: wider rows go by column tiles of WIDE_TILE
WIDE_TILE = 1024


def _row_sums(terms):
    """(N, D) float64 terms -> (N,) the kernels' row sums."""
    N, D = terms.shape
    body = D - D % LANES
    lanes = np.zeros((N, LANES))
    for j in range(0, body, LANES):
        lanes = lanes + terms[:, j:j + LANES]
    tail = np.zeros(N)
    for j in range(body, D):
        tail = tail + terms[:, j]
    half = lanes[:, :8] + lanes[:, 8:]
    quarter = half[:, :4] + half[:, 4:]
    return ((quarter[:, 0] + quarter[:, 2]) + (quarter[:, 1] + quarter[:, 3])) + tail


def exact_forward(x, gamma, beta, eps, ddof):
    """out, mean, inv_std as the compiled forward computes them."""
    N, D = x.shape
    dt = x.dtype
    x64 = x.astype(np.float64)
    shift = _row_sums(x64) / D
    dev_sum = np.zeros(N)
    if dt == np.float64:
        dev_sum = _row_sums(x64 - shift[:, None])
    dev = x64 - shift[:, None]
    m2 = _row_sums(dev * dev) - dev_sum * dev_sum / D
    m2 = np.where(m2 < 0.0, 0.0, m2)
    mean = shift + dev_sum / D
    inv_std = 1.0 / np.sqrt(m2 / (D - ddof) + eps)
    mu_hi = mean.astype(dt)[:, None]
    s_f = inv_std.astype(dt)[:, None]
    if dt == np.float64:
        out = (x - mu_hi) * s_f * gamma + beta
    else:
        mu_lo = (mean - mu_hi[:, 0]).astype(dt)[:, None]
        out = ((x - mu_hi) - mu_lo) * (s_f * gamma) + beta
    return out, mean, inv_std


def exact_backward(dout, x, mean, inv_std, gamma, ddof):
    """dx, dgamma, dbeta as the compiled backward computes them."""
    N, D = x.shape
    dt = x.dtype
    dy64, x64 = dout.astype(np.float64), x.astype(np.float64)
    xc = x64 - mean[:, None]
    g = dy64 * gamma.astype(np.float64)
    if D <= WIDE_ROW:
        sum_g, sum_g_xc = _row_sums(g), _row_sums(g * xc)
        group = 64 if N >= 128 else -(-N // 2)
    else:   # column tiles: each row's tile sums added in tile order; one group of all rows
        sum_g, sum_g_xc = np.zeros(N), np.zeros(N)
        for c0 in range(0, D, WIDE_TILE):
            sum_g = sum_g + _row_sums(g[:, c0:c0 + WIDE_TILE])
            sum_g_xc = sum_g_xc + _row_sums((g * xc)[:, c0:c0 + WIDE_TILE])
        group = N
    dgamma_terms = dy64 * (xc * inv_std[:, None])
    total_dgamma = total_dbeta = None
    for r0 in range(0, N, group):
        part_dgamma, part_dbeta = np.zeros(D), np.zeros(D)
        for i in range(r0, min(r0 + group, N)):
            part_dgamma = part_dgamma + dgamma_terms[i]
            part_dbeta = part_dbeta + dy64[i]
        if total_dgamma is None:
            total_dgamma, total_dbeta = part_dgamma, part_dbeta
        else:
            total_dgamma, total_dbeta = total_dgamma + part_dgamma, total_dbeta + part_dbeta
    k_xc = inv_std * inv_std * sum_g_xc / (D - ddof)
    mu_hi = mean.astype(dt)
    shift = (sum_g / D - (mean - mu_hi) * k_xc).astype(dt)[:, None]
    s_f = inv_std.astype(dt)[:, None]
    dx = s_f * (dout * gamma - shift - (x - mu_hi[:, None]) * k_xc.astype(dt)[:, None])
    return dx, total_dgamma.astype(dt), total_dbeta.astype(dt)


# tile edges of the model: lane tails (D % 16), one row, row groups (half of
# fewer than 128 rows, 64 from 128 on, a short last group), rows narrower than
# 256 in pairs (src/ln_narrow.pxd; an odd group's last row alone), rows of PAIRED_ROW
# (1024) to WIDE_ROW summed two at a time, float64 rows from 256 on too (a group's
# odd last row alone), rows past WIDE_ROW (column tiles of WIDE_TILE, a short last one)
MODEL_SHAPES = [(1, 5), (2, 16), (3, 17), (5, 64), (33, 63), (127, 31), (128, 33), (131, 100),
                (67, 255), (70, 513), (300, 64), (1, 1024), (3, 1040), (131, 2047), (2, 8192),
                (3, 8193), (130, 9216), (1, 10000)]


@pytest.mark.parametrize("build", RUNNABLE, ids=lambda m: m.ISA)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", MODEL_SHAPES)
def test_kernels_are_bitwise_the_exact_model(shape, dtype, build):
    x, gamma, dout = _inputs(*shape, dtype, seed=shape[0] * 100 + shape[1], offset=-40.0)
    beta = np.random.default_rng(1).standard_normal(shape[1]).astype(dtype)
    for ddof in (0, 1):
        if shape[1] - ddof < 1:
            continue
        out_want, mean, inv_std = exact_forward(x, gamma, beta, 1e-5, ddof)
        dx_want = exact_backward(dout, x, mean, inv_std, gamma, ddof)
        for n_threads in (1, 2):
            out, stats = np.empty_like(x), np.empty((2, shape[0]))
            build.layernorm_forward(x, gamma, beta, 1e-5, ddof, out, stats, n_threads)
            np.testing.assert_array_equal(stats[0], mean)
            np.testing.assert_array_equal(stats[1], inv_std)
            np.testing.assert_array_equal(out, out_want)
            got = np.empty_like(x), np.empty_like(gamma), np.empty_like(gamma)
            build.layernorm_backward(dout, x, mean, inv_std, gamma, ddof, *got, n_threads)
            for g, w, name in zip(got, dx_want, ("dx", "dgamma", "dbeta")):
                np.testing.assert_array_equal(g, w,
                                              err_msg=f"{name} ddof={ddof} threads={n_threads}")


def test_model_is_the_reference():
    """The model itself: close to the float64 reference, forward and backward."""
    x, gamma, dout = _inputs(70, 130, np.float64, seed=4)
    beta = np.random.default_rng(2).standard_normal(130)
    out, mean, inv_std = exact_forward(x, gamma, beta, 1e-5, 0)
    want, cache = ref.layernorm_forward(x, gamma, beta, {})
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    for got, w in zip(exact_backward(dout, x, mean, inv_std, gamma, 0),
                      ref.layernorm_backward(dout, cache)):
        np.testing.assert_allclose(got, w, rtol=1e-10, atol=1e-10)


# arrays of 4 MiB and more (src/layernorm.pxd: pair_walk): rows of 256 values and
# more walk in pairs asking for the pairs 8 KiB on (none past the last row, an odd
# last row alone); and float64 rows of 256-1023 in cache in pairs
FETCHED_SHAPES = [((2049, 520), np.float32), ((1031, 515), np.float64), ((1025, 1030), np.float32),
                  ((4098, 257), np.float32), ((4097, 256), np.float32), ((2050, 300), np.float64),
                  ((2049, 256), np.float64), ((129, 384), np.float64)]


def _backward_is_the_exact_model(build, shape, dtype, seed, ddof, stream_bytes=None):
    """build's backward (the exact forward's statistics) bitwise the exact model at 1
    and 2 threads; stream_bytes: the streaming threshold it runs at (None: as set)."""
    x, gamma, dout = _inputs(*shape, dtype, seed=seed, offset=-40.0)
    out, stats = np.empty_like(x), np.empty((2, shape[0]))
    build.layernorm_forward(x, gamma, np.zeros_like(gamma), 1e-5, ddof, out, stats, 1)
    mean, inv_std = stats
    want = exact_backward(dout, x, mean, inv_std, gamma, ddof)
    for n_threads in (1, 2):
        got = np.empty_like(x), np.empty_like(gamma), np.empty_like(gamma)
        previous = build.set_stream_bytes(stream_bytes) if stream_bytes is not None else None
        try:
            build.layernorm_backward(dout, x, mean, inv_std, gamma, ddof, *got, n_threads)
        finally:
            if previous is not None:
                build.set_stream_bytes(previous)
        for g, w, name in zip(got, want, ("dx", "dgamma", "dbeta")):
            np.testing.assert_array_equal(g, w, err_msg=f"{name} threads={n_threads}")


@pytest.mark.parametrize("build", RUNNABLE, ids=lambda m: m.ISA)
@pytest.mark.parametrize("shape, dtype", FETCHED_SHAPES)
def test_paired_and_fetched_walks_are_bitwise_the_exact_model(shape, dtype, build):
    _backward_is_the_exact_model(build, shape, dtype, seed=shape[0], ddof=1)


# dx stored past the cache, from each row's first 64-byte line on (by default
# outputs of 2 MiB and more (src/stream.pxd: stream_bytes) in rows of 256 and
# more (STREAM_ROW), of 16 MiB in narrower rows; here every dx that may stream
# does); odd D puts the rows' starts at every offset within a line; rows
# narrower than 256 (src/ln_narrow.pxd) stream several rows to a chunk
STREAMED_SHAPES = [((1030, 1025), np.float64), ((2050, 1025), np.float32), ((8200, 1025), np.float32),
                   ((1024, 8192), np.float32), ((8200, 257), np.float32), ((32771, 65), np.float32),
                   ((16401, 64), np.float64)]


@pytest.mark.parametrize("build", RUNNABLE, ids=lambda m: m.ISA)
@pytest.mark.parametrize("shape, dtype", STREAMED_SHAPES)
def test_streamed_dx_is_bitwise_the_exact_model(shape, dtype, build):
    _backward_is_the_exact_model(build, shape, dtype, seed=shape[1], ddof=0, stream_bytes=0)
