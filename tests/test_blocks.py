"""The building blocks of batch norm that data-parallel batch norm combines across
processes (column_moments, column_normalize, column_grad_sums, column_dx): against float64 NumPy
formulas, and composed, bitwise what batchnorm_forward and batchnorm_backward
give (the forward and backward are made of them)."""

import numpy as np
import pytest

from fastnorm import _build

K = _build.load_kernels()
DTYPES = [np.float32, np.float64]
# one row block and several (64 rows), one column tile and several (512; the
# backward's tiles are whole rows up to 2048), strip and lane tails; float64's
# forward and backward by column tiles of every row (2 to 8 row blocks of 1024
# values or more, under 4 MiB)
SHAPES = [(1, 1), (2, 3), (7, 33), (65, 17), (130, 600), (300, 2100), (130, 1030), (256, 2048)]


def _inputs(shape, dtype, offset=3.0, seed=0):
    rng = np.random.default_rng(seed + shape[0] * 7 + shape[1])
    x = (offset + 2.0 * rng.standard_normal(shape)).astype(dtype)
    x[:, ::4] = dtype(offset + 0.5)   # constant columns
    gamma = rng.standard_normal(shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dout


def moments(x, n_threads=1):
    mean, m2 = np.empty(x.shape[1]), np.empty(x.shape[1])
    K.column_moments(x, mean, m2, n_threads)
    return mean, m2


def grad_sums(dout, x, mean, n_threads=1):
    sum_dy, sum_dy_xc = np.empty(x.shape[1]), np.empty(x.shape[1])
    K.column_grad_sums(dout, x, mean, sum_dy, sum_dy_xc, n_threads)
    return sum_dy, sum_dy_xc


def column_dx(dout, x, mean, inv_std, gamma, sums, count, ddof, train, n_threads=1):
    dx = np.full_like(x, np.nan)
    K.column_dx(dout, x, mean, inv_std, gamma, *sums, count, ddof, train, dx, n_threads)
    return dx


def bn_forward(x, gamma, beta, ddof, train=True, n_threads=1):
    D = x.shape[1]
    running_mean, running_var = beta[::-1].copy(), gamma * gamma
    out, stats, running = np.empty_like(x), np.empty((2, D)), np.empty((2, D), x.dtype)
    K.batchnorm_forward(x, gamma, beta, running_mean, running_var, train, 0.9, 1e-5, ddof, out,
                        stats, running, n_threads)
    return out, stats, running, running_mean, running_var


def bn_backward(dout, x, mean, inv_std, gamma, train, ddof, n_threads=1):
    dx, dgamma, dbeta = np.empty_like(x), np.empty_like(gamma), np.empty_like(gamma)
    K.batchnorm_backward(dout, x, mean, inv_std, gamma, train, ddof, dx, dgamma, dbeta, n_threads)
    return dx, dgamma, dbeta


@pytest.mark.parametrize("offset", [3.0, 1e4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_column_moments_are_the_float64_mean_and_centered_sum_of_squares(shape, dtype, offset):
    x = _inputs(shape, dtype, offset)[0]
    mean, m2 = moments(x)
    x64 = x.astype(np.float64)
    want_mean = x64.mean(axis=0)
    want_m2 = ((x64 - want_mean) ** 2).sum(axis=0)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-14)
    np.testing.assert_allclose(m2, want_m2, rtol=1e-11)
    # a constant column is exact: its value, no spread
    np.testing.assert_array_equal(mean[::4], x64[0, ::4])
    np.testing.assert_array_equal(m2[::4], 0.0)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] > 1])
def test_column_moments_are_what_the_forward_computes(shape, dtype, ddof):
    x, gamma, beta, _ = _inputs(shape, dtype, offset=1e4)
    mean, m2 = moments(x)
    _, stats, running, running_mean, running_var = bn_forward(x, gamma, beta, ddof)
    var = m2 / (shape[0] - ddof)
    np.testing.assert_array_equal(stats[0], mean)
    np.testing.assert_array_equal(stats[1], 1.0 / np.sqrt(var + 1e-5))
    np.testing.assert_array_equal(running[0], (0.9 * running_mean.astype(np.float64) + (1 - 0.9) * mean).astype(dtype))
    np.testing.assert_array_equal(running[1], (0.9 * running_var.astype(np.float64) + (1 - 0.9) * var).astype(dtype))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_column_normalize_is_the_forwards_sweep(shape, dtype, train):
    """Given the statistics the forward used (the batch's, or the running ones in
    test mode), column_normalize writes the forward's out bit for bit, and it is
    (x - mean) * inv_std * gamma + beta to float32's rounding."""
    x, gamma, beta, _ = _inputs(shape, dtype, offset=1e4)
    want, stats, _, _, _ = bn_forward(x, gamma, beta, 0, train)
    out = np.full_like(x, np.nan)
    K.column_normalize(x, stats[0], stats[1], gamma, beta, out, 1)
    np.testing.assert_array_equal(out, want)
    exact = (x.astype(np.float64) - stats[0]) * stats[1] * gamma + beta
    scale = np.abs(gamma * stats[1]) * np.abs(x).max(axis=0) + np.abs(beta)
    assert np.all(np.abs(out - exact) <= 4 * np.finfo(dtype).eps * scale)
    if train:  # a constant column sits at its mean: exactly beta
        np.testing.assert_array_equal(out[:, ::4], np.broadcast_to(beta[::4], out[:, ::4].shape))


@pytest.mark.parametrize("offset", [3.0, 1e4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_column_grad_sums_against_float64(shape, dtype, offset):
    x, _, _, dout = _inputs(shape, dtype, offset)
    mean = x.astype(np.float64).mean(axis=0) + 0.125   # any mean: the blocks take it as given
    sum_dy, sum_dy_xc = grad_sums(dout, x, mean)
    x64, d64 = x.astype(np.float64), dout.astype(np.float64)
    terms = d64 * (x64 - mean)
    # float64 sums the products in order; float32 forms each product in float32 (the
    # deviation from a float32 shift, exact or nearly, the residue added back in double)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(sum_dy, d64.sum(axis=0), rtol=0, atol=1e-13 * np.abs(d64).sum(axis=0).max())
    bound = 4 * eps * np.abs(terms).sum(axis=0) + 1e-13 * np.abs(d64).sum(axis=0) * offset
    assert np.all(np.abs(sum_dy_xc - terms.sum(axis=0)) <= bound)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] > 1])
def test_blocks_composed_are_batchnorm_backward_bitwise(shape, dtype, ddof, train):
    x, gamma, beta, dout = _inputs(shape, dtype, offset=1e4)
    _, stats, *_ = bn_forward(x, gamma, beta, ddof, train)
    mean, inv_std = stats
    dx, dgamma, dbeta = bn_backward(dout, x, mean, inv_std, gamma, train, ddof)
    sums = grad_sums(dout, x, mean)
    np.testing.assert_array_equal(dbeta, sums[0].astype(dtype))
    np.testing.assert_array_equal(dgamma, (sums[1] * inv_std).astype(dtype))
    np.testing.assert_array_equal(column_dx(dout, x, mean, inv_std, gamma, sums, shape[0], ddof, train), dx)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 33), (130, 600)])
def test_column_dx_with_a_global_count_against_float64(shape, dtype, ddof):
    x, gamma, _, dout = _inputs(shape, dtype, offset=1e4)
    rng = np.random.default_rng(5)
    D = shape[1]
    count = 3.0 * shape[0] + 2      # the rows of a batch spread over processes
    mean = x.astype(np.float64).mean(axis=0) + rng.standard_normal(D)
    inv_std = 0.5 + rng.random(D)
    sums = rng.standard_normal(D) * count, rng.standard_normal(D) * count
    got = column_dx(dout, x, mean, inv_std, gamma, sums, count, ddof, True)
    x64, d64, g64 = x.astype(np.float64), dout.astype(np.float64), gamma.astype(np.float64)
    want = g64 * inv_std * (d64 - sums[0] / count - (x64 - mean) * inv_std ** 2 * sums[1] / (count - ddof))
    # the terms in x's dtype: each to its rounding, relative to the largest term
    scale = np.abs(g64 * inv_std) * (np.abs(d64) + np.abs(sums[0] / count)
                                     + np.abs((x64 - mean) * inv_std ** 2 * sums[1] / (count - ddof)))
    assert np.all(np.abs(got - want) <= 4 * np.finfo(dtype).eps * scale)
    test_mode = column_dx(dout, x, mean, inv_std, gamma, sums, count, ddof, False)
    assert np.all(np.abs(test_mode - g64 * inv_std * d64) <= 2 * np.finfo(dtype).eps * np.abs(g64 * inv_std * d64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_shards_sum_to_the_whole_batch_and_their_dx_are_its_rows(dtype):
    x, gamma, _, dout = _inputs((200, 70), dtype, offset=1e4)
    mean, m2 = moments(x)
    inv_std = 1.0 / np.sqrt(m2 / 200 + 1e-5)
    whole = grad_sums(dout, x, mean)
    cuts = [0, 0, 37, 130, 200]     # an empty shard, then shards of 37, 93 and 70 rows
    parts = [grad_sums(dout[a:b], x[a:b], mean) for a, b in zip(cuts, cuts[1:])]
    for k in range(2):
        np.testing.assert_allclose(sum(p[k] for p in parts), whole[k], rtol=1e-12,
                                   atol=1e-12 * np.abs(whole[k]).max())
    # dx is element-wise once the sums are known: each shard gives its rows of the whole
    dx = column_dx(dout, x, mean, inv_std, gamma, whole, 200, 0, True)
    for a, b in zip(cuts, cuts[1:]):
        np.testing.assert_array_equal(column_dx(dout[a:b], x[a:b], mean, inv_std, gamma, whole, 200, 0, True),
                                      dx[a:b])


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_empty_shard_gives_zero_moments_and_sums(dtype):
    x = np.empty((0, 5), dtype)
    mean, m2 = np.full(5, np.nan), np.full(5, np.nan)
    K.column_moments(x, mean, m2, 1)
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_array_equal(m2, 0.0)
    np.testing.assert_array_equal(grad_sums(x, x, np.ones(5)), 0.0)
    assert column_dx(x, x, np.ones(5), np.ones(5), np.ones(5, dtype), (np.ones(5), np.ones(5)),
                     10.0, 0, True).shape == (0, 5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(300, 2100), (8, 8200)])
def test_blocks_bitwise_equal_for_one_and_two_threads(shape, dtype):
    x, gamma, _, dout = _inputs(shape, dtype, offset=1e4)
    mean, m2 = moments(x, 1)
    for a, b in zip((mean, m2), moments(x, 2)):
        np.testing.assert_array_equal(a, b)
    sums = grad_sums(dout, x, mean, 1)
    for a, b in zip(sums, grad_sums(dout, x, mean, 2)):
        np.testing.assert_array_equal(a, b)
    inv_std = 1.0 / np.sqrt(m2 / shape[0] + 1e-5)
    np.testing.assert_array_equal(column_dx(dout, x, mean, inv_std, gamma, sums, shape[0], 0, True, 1),
                                  column_dx(dout, x, mean, inv_std, gamma, sums, shape[0], 0, True, 2))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(65, 1024), (200, 1100), (256, 2048), (449, 1100)])
def test_forward_and_backward_by_column_tiles_are_the_blocks_on_any_thread_count(shape, train):
    """float64 batches of a few row blocks in wide rows go by column tiles of every
    row, at least two a thread, so the tiles change with the thread count: at
    each, the forward and backward are bitwise the blocks composed."""
    x, gamma, beta, dout = _inputs(shape, np.float64, offset=1e4)
    mean, m2 = moments(x)
    sums = grad_sums(dout, x, mean)
    for n_threads in (1, 2, 3):
        out, stats, *_ = bn_forward(x, gamma, beta, 0, train, n_threads)
        if train:
            np.testing.assert_array_equal(stats[0], mean)
            np.testing.assert_array_equal(stats[1], 1.0 / np.sqrt(m2 / shape[0] + 1e-5))
        want = np.full_like(x, np.nan)
        K.column_normalize(x, stats[0], stats[1], gamma, beta, want, 1)
        np.testing.assert_array_equal(out, want)
        dx, dgamma, dbeta = bn_backward(dout, x, mean, stats[1], gamma, train, 0, n_threads)
        np.testing.assert_array_equal(dbeta, sums[0])
        np.testing.assert_array_equal(dgamma, sums[1] * stats[1])
        np.testing.assert_array_equal(dx, column_dx(dout, x, mean, stats[1], gamma, sums, shape[0], 0,
                                                    train))


def test_a_buffer_of_the_wrong_length_is_refused_before_the_kernel_runs():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"m2_out must have shape \(3,\), got \(2,\)"):
        K.column_moments(x, np.empty(3), np.empty(2), 1)
    with pytest.raises(ValueError, match=r"dout must have shape \(4, 3\), got \(3, 3\)"):
        K.column_grad_sums(np.ones((3, 3)), x, np.zeros(3), np.empty(3), np.empty(3), 1)
    with pytest.raises(ValueError, match="sum_dy_xc_out must have shape"):
        K.column_grad_sums(x, x, np.zeros(3), np.empty(3), np.empty(4), 1)
    with pytest.raises(ValueError, match=r"out must have shape \(4, 3\), got \(4, 2\)"):
        K.column_normalize(x, np.zeros(3), np.ones(3), np.ones(3), np.zeros(3), np.empty((4, 2)), 1)
    with pytest.raises(ValueError, match="inv_std must have shape"):
        K.column_normalize(x, np.zeros(3), np.ones(4), np.ones(3), np.zeros(3), np.empty((4, 3)), 1)
    dx = np.zeros((4, 3))
    with pytest.raises(ValueError, match="gamma must have shape"):
        K.column_dx(x, x, np.zeros(3), np.ones(3), np.ones(2), np.zeros(3), np.zeros(3), 4.0, 0, True, dx, 1)
    with pytest.raises(ValueError, match=r"dx_out must have shape \(4, 3\)"):
        K.column_dx(x, x, np.zeros(3), np.ones(3), np.ones(3), np.zeros(3), np.zeros(3), 4.0, 0, True,
                    np.zeros((4, 2)), 1)
    np.testing.assert_array_equal(dx, 0.0)
