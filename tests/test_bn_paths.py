"""Batch-norm backward against an exact NumPy model of its arithmetic.

The compiled backward promises a fixed order of additions (partial column sums
per block of 64 rows, each summed row after row from 0, added in block order),
products in x's dtype and the dx formula evaluated in a fixed order. NumPy's sum
over axis 0 of a C-contiguous block also adds row after row, so the model below
gives bitwise the same numbers: any change to the order (a different row split,
a pairwise step, a folded constant) fails here, on every build and thread count.
Shapes cross the row blocks (64), the column tiles (512, or whole rows up to
2048), odd row counts (the float32 loop steps two rows at a time) and the
threads' split of tiles.
"""

import numpy as np
import pytest

import fastnorm as fn

from kernel_builds import RUNNABLE as BUILDS

ROW_BLOCK = 64


def exact_backward(dout, x, mean, inv_std, gamma, train, ddof):
    """dx, dgamma, dbeta in the kernel's order of operations (see the module doc)."""
    N, D = x.shape
    dt = x.dtype
    shift = mean.astype(dt)
    residue = mean - shift
    sum_dy = sum_xc = None
    for r0 in range(0, N, ROW_BLOCK):
        dy = dout[r0:r0 + ROW_BLOCK]
        part_dy = dy.astype(np.float64).sum(axis=0)     # row after row
        part_xc = (dy * (x[r0:r0 + ROW_BLOCK] - shift)).astype(np.float64).sum(axis=0)
        if dt == np.float32:
            part_xc = part_xc - residue * part_dy
        if sum_dy is None:
            sum_dy, sum_xc = part_dy, part_xc
        else:
            sum_dy, sum_xc = sum_dy + part_dy, sum_xc + part_xc
    dbeta = sum_dy.astype(dt)
    dgamma = (sum_xc * inv_std).astype(dt)
    c_scale = (gamma * inv_std).astype(dt)
    if not train:
        return c_scale * dout, dgamma, dbeta
    k_xc = inv_std * inv_std * sum_xc / (N - ddof)
    c_shift = (sum_dy / N - residue * k_xc).astype(dt)
    dx = c_scale * (dout - c_shift - (x - shift) * k_xc.astype(dt))
    return dx, dgamma, dbeta


def _case(N, D, dtype, seed, offset=3.0):
    rng = np.random.default_rng(seed)
    x = (offset + 2.0 * rng.standard_normal((N, D))).astype(dtype)
    dout = rng.standard_normal((N, D)).astype(dtype)
    gamma = rng.standard_normal(D).astype(dtype)
    mean = x.astype(np.float64).mean(axis=0)
    inv_std = 1.0 / np.sqrt(x.astype(np.float64).var(axis=0) + 1e-5)
    return dout, x, mean, inv_std, gamma


def _kernel_backward(kernels, dout, x, mean, inv_std, gamma, train, ddof, n_threads):
    dx = np.empty_like(x)
    dgamma, dbeta = np.empty_like(gamma), np.empty_like(gamma)
    kernels.batchnorm_backward(dout, x, mean, inv_std, gamma, train, ddof, dx, dgamma, dbeta,
                               n_threads)
    return dx, dgamma, dbeta


# row blocks 1..3 with partial last blocks, odd and even row counts, column tiles
# (512 for one row block, whole rows up to 2048 for more) with a partial last one,
# (100, 500), the shape the benchmark's target names, and float64's backward by
# column tiles of every row (2..8 row blocks of 1024 columns or more, under 4 MiB)
# and just past it
SHAPES = [(1, 5), (2, 3), (3, 17), (7, 513), (63, 40), (64, 40), (65, 40), (129, 33),
          (100, 500), (8, 1100), (131, 1030), (300, 7), (70, 2100), (512, 1024), (513, 1024)]


@pytest.mark.parametrize("build", BUILDS, ids=lambda m: m.ISA)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_is_bitwise_the_exact_model(shape, dtype, build):
    args = _case(*shape, dtype, seed=shape[0] * 1000 + shape[1])
    N = shape[0]
    for train, ddof in [(True, 0), (True, 1), (False, 0)]:
        if train and N - ddof < 1:
            continue
        want = exact_backward(*args, train, ddof)
        for n_threads in (1, 2):
            got = _kernel_backward(build, *args, train, ddof, n_threads)
            for g, w, name in zip(got, want, ("dx", "dgamma", "dbeta")):
                np.testing.assert_array_equal(g, w, err_msg=f"{name} train={train} ddof={ddof} "
                                                            f"threads={n_threads}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_offset_keeps_the_residue_exactly(dtype):
    """A mean far from 0 (float32: its residue matters) in a shape with many tiles."""
    args = _case(257, 600, dtype, seed=7, offset=-4.0e5)
    want = exact_backward(*args, True, 0)
    got = _kernel_backward(BUILDS[-1], *args, True, 0, 2)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_model_is_the_reference_backward():
    """The model itself is the simplified backward: close to the float64 reference."""
    x = np.random.default_rng(8).standard_normal((130, 70)) * 3 + 1
    dout = np.random.default_rng(9).standard_normal((130, 70))
    gamma = np.random.default_rng(10).standard_normal(70)
    _, cache = fn.reference.batchnorm_forward(x, gamma, np.zeros(70), {"mode": "train"})
    want = fn.reference.batchnorm_backward(dout, cache)
    mean = x.mean(axis=0)
    inv_std = 1.0 / np.sqrt(x.var(axis=0) + 1e-5)
    got = exact_backward(dout, x, mean, inv_std, gamma, True, 0)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


# float32 arrays of 4 MiB or more in rows of 64 to 256 values: the column sums ask for
# the rows ahead of the ones they add into L2 (hints only: the same bits), here up to
# the array's end, across row blocks and an odd last row
@pytest.mark.parametrize("build", BUILDS, ids=lambda m: m.ISA)
@pytest.mark.parametrize("shape", [(4097, 256), (8193, 128), (16385, 64)])
def test_backward_reading_ahead_is_bitwise_the_exact_model(shape, build):
    args = _case(*shape, np.float32, seed=shape[1])
    want = exact_backward(*args, True, 0)
    for n_threads in (1, 2):
        got = _kernel_backward(build, *args, True, 0, n_threads)
        for g, w, name in zip(got, want, ("dx", "dgamma", "dbeta")):
            np.testing.assert_array_equal(g, w, err_msg=f"{name} threads={n_threads}")


# float64's backward of 2 to 8 row blocks of 1024 columns or more goes by column
# tiles of every row, at least two a thread: widths that change with the thread
# count (and a partial last tile), the same bits as the model at every one
@pytest.mark.parametrize("build", BUILDS, ids=lambda m: m.ISA)
@pytest.mark.parametrize("shape", [(65, 1024), (256, 1040), (200, 3000), (449, 1100)])
def test_backward_by_column_tiles_is_bitwise_the_exact_model(shape, build):
    args = _case(*shape, np.float64, seed=shape[0] + shape[1])
    for train, ddof in [(True, 0), (True, 1), (False, 0)]:
        want = exact_backward(*args, train, ddof)
        for n_threads in (1, 2, 3):
            got = _kernel_backward(build, *args, train, ddof, n_threads)
            for g, w, name in zip(got, want, ("dx", "dgamma", "dbeta")):
                np.testing.assert_array_equal(g, w, err_msg=f"{name} train={train} ddof={ddof} "
                                                            f"threads={n_threads}")
