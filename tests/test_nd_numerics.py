"""Ill-conditioned data (a large offset beside a unit spread: 1e4 in float32, 1e8 in
float64): the N-D normalizations against an exact reference (the statistics and the
centered values in rational arithmetic), no less accurate than torch's kernels."""

import math
from fractions import Fraction

import numpy as np
import pytest

import fastnorm as fn

torch = pytest.importorskip("torch")
F = torch.nn.functional

EPS = 1e-5
CASES = [pytest.param(np.float32, 1e4, id="float32-1e4"), pytest.param(np.float64, 1e8, id="float64-1e8")]


def exact_normalized(groups):
    """For each row of groups (float64, exact copies of the data): the centered values
    rounded once from their exact rational value, and 1/sqrt(var + eps) in float64."""
    centered, inv_std = [], []
    for row in groups:
        values = [Fraction(v) for v in row]
        mean = sum(values) / len(values)
        xc = [v - mean for v in values]
        var = sum(v * v for v in xc) / len(values)
        centered.append([float(v) for v in xc])
        inv_std.append(1.0 / math.sqrt(float(var) + EPS))
    return np.array(centered), np.array(inv_std)[:, None]


def exact_forward_backward(groups, dout_groups):
    """out = x_hat and dx = inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat)) per row
    (gamma = 1, beta = 0), with exactly rounded sums."""
    xc, inv_std = exact_normalized(groups)
    xhat = xc * inv_std
    n = groups.shape[1]
    mean_dy = np.array([math.fsum(r) / n for r in dout_groups])[:, None]
    mean_dy_xhat = np.array([math.fsum(r) / n for r in dout_groups * xhat])[:, None]
    return xhat, inv_std * (dout_groups - mean_dy - xhat * mean_dy_xhat)


def data(dtype, offset, shape=(4, 3, 8, 8)):
    rng = np.random.default_rng(0)
    return (offset + rng.standard_normal(shape)).astype(dtype), rng.standard_normal(shape).astype(dtype)


def torch_out_dx(fun, x, dout, channels_last=False):
    t = torch.from_numpy(x)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    t.requires_grad_(True)
    out = fun(t)
    out.backward(torch.from_numpy(dout))
    return out.detach().numpy(), t.grad.numpy()


def assert_no_worse(ours, theirs, exact):
    for got, torch_result, want in zip(ours, theirs, exact):
        err, torch_err = np.abs(got - want).max(), np.abs(torch_result - want).max()
        assert err <= torch_err, (err, torch_err)


@pytest.mark.parametrize("dtype, offset", CASES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_spatial_batchnorm_large_offset(dtype, offset, channels_last):
    x, dout = data(dtype, offset)
    N, C, H, W = x.shape
    per_channel = lambda a: np.moveaxis(a.astype(np.float64), 1, 0).reshape(C, -1)  # noqa: E731
    back = lambda a: np.moveaxis(a.reshape(C, N, H, W), 0, 1)  # noqa: E731
    exact = [back(a) for a in exact_forward_backward(per_channel(x), per_channel(dout))]
    ones, zeros = np.ones(C, dtype), np.zeros(C, dtype)
    if channels_last:
        x_in = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        dout_in = np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    else:
        x_in, dout_in = x, dout
    out, cache = fn.spatial_batchnorm_forward(x_in, ones, zeros, {"mode": "train", "eps": EPS})
    dx = fn.spatial_batchnorm_backward(dout_in, cache)[0]
    theirs = torch_out_dx(lambda t: F.batch_norm(t, None, None, torch.from_numpy(ones), torch.from_numpy(zeros),
                                                 training=True, eps=EPS), x, dout, channels_last)
    assert_no_worse((out, dx), theirs, exact)


@pytest.mark.parametrize("dtype, offset", CASES)
@pytest.mark.parametrize("G", [1, 3])
def test_groupnorm_large_offset(dtype, offset, G):
    x, dout = data(dtype, offset)
    N, C = x.shape[:2]
    exact = [a.reshape(x.shape) for a in exact_forward_backward(x.astype(np.float64).reshape(N * G, -1),
                                                               dout.astype(np.float64).reshape(N * G, -1))]
    ones, zeros = np.ones((1, C, 1, 1), dtype), np.zeros((1, C, 1, 1), dtype)
    out, cache = fn.spatial_groupnorm_forward(x, ones, zeros, G, {"eps": EPS})
    dx = fn.spatial_groupnorm_backward(dout, cache)[0]
    theirs = torch_out_dx(lambda t: F.group_norm(t, G, torch.from_numpy(ones.reshape(C)),
                                                 torch.from_numpy(zeros.reshape(C)), eps=EPS), x, dout)
    assert_no_worse((out, dx), theirs, exact)


@pytest.mark.parametrize("dtype, offset", CASES)
def test_rmsnorm_large_offset(dtype, offset):
    x, dout = data(dtype, offset, (16, 96))
    rows = [[Fraction(v) for v in r] for r in x.astype(np.float64)]
    rstd = np.array([1.0 / math.sqrt(float(sum(v * v for v in r) / len(r)) + EPS) for r in rows])[:, None]
    xhat = x.astype(np.float64) * rstd
    d64 = dout.astype(np.float64)
    dot = np.array([math.fsum(r) / x.shape[1] for r in d64 * xhat])[:, None]
    exact = (xhat, rstd * (d64 - xhat * dot))
    gamma = np.ones(x.shape[1], dtype)
    out, cache = fn.rmsnorm_forward(x, gamma, {"eps": EPS})
    dx = fn.rmsnorm_backward(dout, cache)[0]
    theirs = torch_out_dx(lambda t: F.rms_norm(t, (x.shape[1],), torch.from_numpy(gamma), eps=EPS), x, dout)
    assert_no_worse((out, dx), theirs, exact)
