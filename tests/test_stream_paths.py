"""The streamed path (src/stream.pxd): outputs of 8 MiB and more, with rows of
at least 256 values, are stored past the cache. Only where the values are
stored changes, so every row (layer norm's out, layer and RMS norm's dx) and
every element of a test-mode batch norm must be bitwise what the same inputs
give on a small array, which takes the plain path: on every build, at one and two threads, with out aligned
to a cache line or not."""

import numpy as np
import pytest

from kernel_builds import RUNNABLE

STREAM_BYTES = 8 << 20   # src/stream.pxd


def _out(shape, dtype, misalign):
    """An empty C-contiguous (N, D) array starting `misalign` elements past a 64-byte line."""
    n = int(np.prod(shape))
    raw = np.empty(n + 64, dtype)
    start = (-raw.ctypes.data % 64) // raw.itemsize + misalign
    return raw[start:start + n].reshape(shape)


def _inputs(N, D, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (3.0 + 2.0 * rng.standard_normal((N, D))).astype(dtype)
    x[5] = x[5, 0]   # a constant row: layer norm gives beta exactly
    gamma = rng.standard_normal(D).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    return x, gamma, beta


def _ln(kernels, x, gamma, beta, out, n_threads):
    stats = np.empty((2, x.shape[0]))
    kernels.layernorm_forward(x, gamma, beta, 1e-5, 0, out, stats, n_threads)
    return stats


def _bn_test_mode(kernels, x, gamma, beta, rmean, rvar, out, n_threads):
    D = x.shape[1]
    stats, running = np.empty((2, D)), np.empty((2, D), x.dtype)
    kernels.batchnorm_forward(x, gamma, beta, rmean, rvar, False, 0.9, 1e-5, 0, out, stats,
                              running, n_threads)


# (N, D) at and past the threshold: rows of a cache line's multiple, rows that
# end mid-line (D odd), a row wider than a chunk's multiple
SHAPES = [(2048, 1024), (2053, 1031), (257, 8200)]


def every_build_and_dtype(shapes):
    """The streamed cases: each build this CPU runs, both dtypes, every shape of shapes."""
    def cases(test):
        test = pytest.mark.parametrize("shape", shapes)(test)
        test = pytest.mark.parametrize("dtype", [np.float32, np.float64])(test)
        return pytest.mark.parametrize("kernels", RUNNABLE, ids=lambda k: k.ISA)(test)
    return cases


every_build_dtype_and_shape = every_build_and_dtype(SHAPES)


@every_build_dtype_and_shape
@pytest.mark.parametrize("misalign", [0, 3])
def test_layernorm_streamed_rows_are_the_plain_rows(kernels, dtype, shape, misalign):
    N, D = shape
    x, gamma, beta = _inputs(N, D, dtype)
    assert x.nbytes >= STREAM_BYTES
    rows = [0, 1, 5, N // 2, N - 2, N - 1]
    small = _out((len(rows), D), dtype, 0)
    small_stats = _ln(kernels, np.ascontiguousarray(x[rows]), gamma, beta, small, 1)
    assert small.nbytes < STREAM_BYTES
    for n_threads in (1, 2):
        out = _out((N, D), dtype, misalign)
        stats = _ln(kernels, x, gamma, beta, out, n_threads)
        np.testing.assert_array_equal(out[rows].view(np.uint8), small.view(np.uint8))
        np.testing.assert_array_equal(stats[:, rows], small_stats)
    np.testing.assert_array_equal(out[5], beta)   # the constant row


@every_build_dtype_and_shape
@pytest.mark.parametrize("misalign", [0, 3])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_row_backward_streamed_dx_rows_are_the_plain_rows(kernels, dtype, shape, misalign, norm):
    # a row's dx depends on that row alone (its statistics and its two sums): the
    # rows of a streamed dx (a row group one segment) are those of the same rows
    # on their own, which take the plain path
    N, D = shape
    x, gamma, beta = _inputs(N, D, dtype)
    dout = np.random.default_rng(3).standard_normal((N, D)).astype(dtype)
    if norm == "layernorm":
        stats = _ln(kernels, x, gamma, beta, np.empty_like(x), 1)
        def backward(rows, dx, n_threads):
            kernels.layernorm_backward(dout[rows], x[rows], stats[0][rows], stats[1][rows], gamma, 0,
                                       dx, np.empty_like(gamma), np.empty_like(gamma), n_threads)
    else:
        rstd = np.empty(N)
        kernels.rmsnorm_forward(x, gamma, 1e-5, np.empty_like(x), rstd, 1)
        def backward(rows, dx, n_threads):
            kernels.rmsnorm_backward(dout[rows], x[rows], rstd[rows], gamma, dx,
                                     np.empty_like(gamma), n_threads)
    every = slice(None)
    rows = [0, 1, 5, N // 2, N - 2, N - 1]
    small = _out((len(rows), D), dtype, 0)
    backward(rows, small, 1)
    assert small.nbytes < STREAM_BYTES <= x.nbytes
    for n_threads in (1, 2):
        dx = _out((N, D), dtype, misalign)
        backward(every, dx, n_threads)
        np.testing.assert_array_equal(dx[rows].view(np.uint8), small.view(np.uint8))


@every_build_dtype_and_shape
@pytest.mark.parametrize("misalign", [0, 5])
def test_batchnorm_streamed_sweep_is_the_plain_sweep(kernels, dtype, shape, misalign):
    # test mode: each element depends on its column's running statistics alone,
    # so the rows of a large batch are those of the same rows on their own
    N, D = shape
    x, gamma, beta = _inputs(N, D, dtype)
    rng = np.random.default_rng(1)
    rmean = rng.standard_normal(D).astype(dtype)
    rvar = rng.uniform(0.5, 2.0, D).astype(dtype)
    rows = list(range(64)) + [N - 3, N - 2, N - 1]   # > 64 rows: the general path, as the large one
    small = _out((len(rows), D), dtype, 0)
    _bn_test_mode(kernels, np.ascontiguousarray(x[rows]), gamma, beta, rmean, rvar, small, 1)
    assert small.nbytes < STREAM_BYTES
    for n_threads in (1, 2):
        out = _out((N, D), dtype, misalign)
        _bn_test_mode(kernels, x, gamma, beta, rmean, rvar, out, n_threads)
        np.testing.assert_array_equal(out[rows].view(np.uint8), small.view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_forwards_match_the_float64_oracle(dtype):
    import fastnorm as fn
    N, D = 2048, 1024
    x, gamma, beta = _inputs(N, D, dtype, seed=2)
    xd = x.astype(np.float64)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    out, _ = fn.layernorm_forward(x, gamma, beta, {})
    mu, var = xd.mean(1, keepdims=True), xd.var(1, keepdims=True)
    np.testing.assert_allclose(out, (xd - mu) / np.sqrt(var + 1e-5) * gamma + beta, **tol)
    out, _ = fn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    mu, var = xd.mean(0), xd.var(0)
    np.testing.assert_allclose(out, (xd - mu) / np.sqrt(var + 1e-5) * gamma + beta, **tol)


def _gn(kernels, x, gamma, beta, G, out, dout, dx, n_threads):
    """Group norm's forward, then its backward, on the raw kernels: the per-group
    statistics, dgamma and dbeta."""
    N, C, _ = x.shape
    stats = np.empty((2, N * G))
    kernels.groupnorm_forward(x, gamma, beta, G, 1e-5, out, stats, n_threads)
    dgamma, dbeta = np.empty(C, x.dtype), np.empty(C, x.dtype)
    kernels.groupnorm_backward(dout, x, stats[0], stats[1], gamma, G, np.empty((2, N * C)), dx,
                               dgamma, dbeta, n_threads)
    return stats, dgamma, dbeta


@pytest.mark.parametrize("kernels", RUNNABLE, ids=lambda k: k.ISA)
@pytest.mark.parametrize("misalign", [0, 3])
@pytest.mark.parametrize("dtype, N, P", [(np.float32, 21, 13001), (np.float64, 21, 13001),
                                         (np.float64, 263, 1001)])
def test_groupnorm_streamed_groups_are_the_plain_groups(kernels, dtype, misalign, N, P):
    # group rows of 32 KiB and more in an output of STREAM_BYTES up to 32 MiB are
    # streamed (forward out, backward dx), and the forward's float64 out of 16 MiB
    # or more in shorter rows (P = 1001); every group is computed alone, so the
    # samples of a large batch are those of the same samples on their own (the
    # plain path), planes of an odd length ending mid-line
    C, G = 8, 4
    rng = np.random.default_rng(3)
    x = (3.0 + 2.0 * rng.standard_normal((N, C, P))).astype(dtype)
    x[1, :C // G] = 7.0   # a constant group: beta exactly
    dout = rng.standard_normal((N, C, P)).astype(dtype)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    assert STREAM_BYTES <= x.nbytes < 32 << 20
    assert C // G * P * x.itemsize >= 32 << 10 or (x.itemsize == 8 and x.nbytes >= 16 << 20)
    rows = [0, 1, N - 1]
    small = [_out((len(rows), C, P), dtype, 0) for _ in range(2)]
    small_stats = _gn(kernels, np.ascontiguousarray(x[rows]), gamma, beta, G, small[0],
                      np.ascontiguousarray(dout[rows]), small[1], 1)[0]
    assert small[0].nbytes < STREAM_BYTES
    results = []
    for n_threads in (1, 2):
        out, dx = _out((N, C, P), dtype, misalign), _out((N, C, P), dtype, misalign)
        stats, dgamma, dbeta = _gn(kernels, x, gamma, beta, G, out, dout, dx, n_threads)
        np.testing.assert_array_equal(out[rows].view(np.uint8), small[0].view(np.uint8))
        np.testing.assert_array_equal(dx[rows].view(np.uint8), small[1].view(np.uint8))
        np.testing.assert_array_equal(stats.reshape(2, N, G)[:, rows], small_stats.reshape(2, -1, G))
        results.append((out, dx, dgamma, dbeta))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    np.testing.assert_array_equal(results[0][0][1, :C // G], np.broadcast_to(beta[:C // G, None], (C // G, P)))
    # dgamma, dbeta (over every sample) against float64
    xd = x.astype(np.float64).reshape(N, G, -1)
    x_hat = ((xd - xd.mean(2, keepdims=True)) / np.sqrt(xd.var(2, keepdims=True) + 1e-5)).reshape(N, C, P)
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(results[0][2], (dout * x_hat).sum((0, 2)), **tol)
    np.testing.assert_allclose(results[0][3], dout.astype(np.float64).sum((0, 2)), **tol)
    g = (dout * gamma[:, None]).astype(np.float64).reshape(N, G, -1)
    xh = x_hat.reshape(N, G, -1)
    want = (g - g.mean(2, keepdims=True) - xh * (g * xh).mean(2, keepdims=True)) / np.sqrt(
        xd.var(2, keepdims=True) + 1e-5)
    np.testing.assert_allclose(results[0][1], want.reshape(N, C, P), **tol)


# Batch norm's sweeps (normalize_columns, column_dx) stream rows of any width: a
# task's rows are one segment, rows narrower than a chunk several to a chunk
# (src/stream.pxd streams_rows). Rows a whole chunk, a few to a chunk (21 x 3 = 63,
# 16 x 4), one to a chunk ending mid-line (33), and the wide rows of SHAPES.
BN_SHAPES = [(32768, 64), (100003, 21), (131072, 16), (70001, 33)] + SHAPES

bn_build_dtype_and_shape = every_build_and_dtype(BN_SHAPES)


@bn_build_dtype_and_shape
@pytest.mark.parametrize("misalign", [0, 5])
def test_batchnorm_streamed_narrow_sweep_is_the_plain_sweep(kernels, dtype, shape, misalign):
    N, D = shape
    x, gamma, beta = _inputs(N, D, dtype)
    assert x.nbytes >= STREAM_BYTES
    rng = np.random.default_rng(1)
    rmean = rng.standard_normal(D).astype(dtype)
    rvar = rng.uniform(0.5, 2.0, D).astype(dtype)
    rows = list(range(64)) + [N // 2, N - 3, N - 2, N - 1]
    small = _out((len(rows), D), dtype, 0)
    _bn_test_mode(kernels, np.ascontiguousarray(x[rows]), gamma, beta, rmean, rvar, small, 1)
    for n_threads in (1, 2):
        out = _out((N, D), dtype, misalign)
        _bn_test_mode(kernels, x, gamma, beta, rmean, rvar, out, n_threads)
        np.testing.assert_array_equal(out[rows].view(np.uint8), small.view(np.uint8))


@bn_build_dtype_and_shape
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_streamed_dx_is_the_plain_dx(kernels, dtype, shape, train):
    # dx is element-wise given its column constants: the rows of the streamed dx are
    # those column_dx gives for the same rows alone (plain stores), with the same sums
    N, D = shape
    x, gamma, _ = _inputs(N, D, dtype)
    dout = np.random.default_rng(3).standard_normal((N, D)).astype(dtype)
    mean, m2 = np.empty(D), np.empty(D)
    kernels.column_moments(x, mean, m2, 1)
    inv_std = 1.0 / np.sqrt(m2 / N + 1e-5)
    sum_dy, sum_dy_xc = np.empty(D), np.empty(D)
    kernels.column_grad_sums(dout, x, mean, sum_dy, sum_dy_xc, 1)
    rows = list(range(64)) + [N // 2, N - 3, N - 2, N - 1]
    small = _out((len(rows), D), dtype, 0)
    kernels.column_dx(np.ascontiguousarray(dout[rows]), np.ascontiguousarray(x[rows]), mean, inv_std,
                      gamma, sum_dy, sum_dy_xc, N, 0, train, small, 1)
    assert small.nbytes < STREAM_BYTES
    for n_threads in (1, 2):
        dx = _out((N, D), dtype, 3)
        dgamma, dbeta = np.empty(D, dtype), np.empty(D, dtype)
        kernels.batchnorm_backward(dout, x, mean, inv_std, gamma, train, 0, dx, dgamma, dbeta, n_threads)
        np.testing.assert_array_equal(dx[rows].view(np.uint8), small.view(np.uint8))
        np.testing.assert_array_equal(dbeta, sum_dy.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_channels_last_batchnorm_matches_the_float64_oracle(dtype):
    # 64x64x32x32 channels-last: the (65536, 64) matrix, out and dx streamed
    import fastnorm as fn
    from fastnorm import reference as ref
    rng = np.random.default_rng(4)
    x = (3.0 + 2.0 * rng.standard_normal((64, 32, 32, 64))).astype(dtype).transpose(0, 3, 1, 2)
    dout = rng.standard_normal((64, 32, 32, 64)).astype(dtype).transpose(0, 3, 1, 2)
    gamma, beta = rng.standard_normal(64).astype(dtype), rng.standard_normal(64).astype(dtype)
    out, cache = fn.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dgamma, dbeta = fn.spatial_batchnorm_backward(dout, cache)
    assert x.nbytes >= STREAM_BYTES and dx.transpose(0, 2, 3, 1).flags.c_contiguous
    x64, g64, b64, d64 = (a.astype(np.float64) for a in (x, gamma, beta, dout))
    want, rcache = ref.spatial_batchnorm_forward(x64, g64, b64, {"mode": "train"})
    wdx, wdgamma, wdbeta = ref.spatial_batchnorm_backward(d64, rcache)
    tol = 1e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(out, want, rtol=0, atol=tol * np.abs(want).max())
    np.testing.assert_allclose(dx, wdx, rtol=0, atol=tol * np.abs(wdx).max())
    for g, w in ((dgamma, wdgamma), (dbeta, wdbeta)):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.abs(w).max())


@pytest.mark.parametrize("kernels", RUNNABLE, ids=lambda k: k.ISA)
@pytest.mark.parametrize("shape", [(8192, 256), (16384, 128), (65536, 64), (40007, 33), (2053, 512)])
def test_column_moments_read_ahead_path(kernels, shape):
    # float32 x of 4 MiB or more in rows of at most 512 values: the first pass asks for
    # rows ahead (src/moments.pxd.tp _fetches), a hint only: 1 and 2 threads give the
    # same bits, and the moments are those of the float64 oracle
    N, D = shape
    x = (3.0 + 2.0 * np.random.default_rng(5).standard_normal((N, D))).astype(np.float32)
    assert x.nbytes >= 4 << 20
    got = []
    for n_threads in (1, 2):
        mean, m2 = np.empty(D), np.empty(D)
        kernels.column_moments(x, mean, m2, n_threads)
        got.append((mean, m2))
    np.testing.assert_array_equal(got[0][0], got[1][0])
    np.testing.assert_array_equal(got[0][1], got[1][1])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(got[0][0], x64.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[0][1], ((x64 - x64.mean(0)) ** 2).sum(0), rtol=1e-10)
