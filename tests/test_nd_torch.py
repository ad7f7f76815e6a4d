"""The N-D normalizations against torch.nn.functional (outputs and autograd
gradients), when torch is installed."""

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import reference as ref

torch = pytest.importorskip("torch")
F = torch.nn.functional

APIS = [pytest.param(fn, id="compiled"), pytest.param(ref, id="reference")]
TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=2e-4, atol=2e-4)}
DTYPES = [np.float64, np.float32]


def data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal(shape) + 2).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, dout


def torch_grads(fun, dout, *arrays):
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fun(*tensors)
    out.backward(torch.from_numpy(dout))
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


def close(got, want, dtype):
    np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7, 4, 1, 3), (1, 2, 9, 9)])
def test_spatial_batchnorm_matches_torch(api, dtype, shape):
    x, dout = data(shape, dtype)
    C = shape[1]
    rng = np.random.default_rng(1)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    bn_param = {"mode": "train", "momentum": 0.75}
    out, cache = api.spatial_batchnorm_forward(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = api.spatial_batchnorm_backward(dout, cache)

    tdtype = torch.from_numpy(x).dtype
    running_mean, running_var = torch.zeros(C, dtype=tdtype), torch.ones(C, dtype=tdtype)
    want, (tdx, tdgamma, tdbeta) = torch_grads(
        lambda a, g, b: F.batch_norm(a, running_mean, running_var, g, b, training=True, momentum=0.25,
                                     eps=1e-5), dout, x, gamma, beta)
    for got, exp in ((out, want), (dx, tdx), (dgamma, tdgamma), (dbeta, tdbeta)):
        close(got, exp, dtype)
    # torch's running mean moves by its momentum (0.25 = 1 - ours); its running var is unbiased
    n = shape[0] * shape[2] * shape[3]
    close(bn_param["running_mean"], running_mean.numpy(), dtype)
    if n > 1:
        biased = (running_var.numpy() - 0.75) * (n - 1) / n
        close(bn_param["running_var"], biased, dtype)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, G", [((2, 6, 4, 5), 2), ((3, 4, 3, 3), 4), ((2, 4, 1, 7), 1)])
def test_groupnorm_matches_torch(api, dtype, shape, G):
    x, dout = data(shape, dtype)
    C = shape[1]
    rng = np.random.default_rng(1)
    gamma = rng.standard_normal((1, C, 1, 1)).astype(dtype)
    beta = rng.standard_normal((1, C, 1, 1)).astype(dtype)
    out, cache = api.spatial_groupnorm_forward(x, gamma, beta, G, {"mode": "train"})
    dx, dgamma, dbeta = api.spatial_groupnorm_backward(dout, cache)
    want, (tdx, tdgamma, tdbeta) = torch_grads(
        lambda a, g, b: F.group_norm(a, G, g.reshape(C), b.reshape(C), eps=1e-5), dout, x, gamma, beta)
    for got, exp in ((out, want), (dx, tdx), (dgamma, tdgamma), (dbeta, tdbeta)):
        close(got, exp, dtype)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 16), (2, 3, 33), (2, 2, 2, 5)])
def test_rmsnorm_matches_torch(api, dtype, shape):
    x, dout = data(shape, dtype)
    gamma = np.random.default_rng(1).standard_normal(shape[-1]).astype(dtype)
    out, cache = api.rmsnorm_forward(x, gamma, {"eps": 1e-5})
    dx, dgamma = api.rmsnorm_backward(dout, cache)
    want, (tdx, tdgamma) = torch_grads(lambda a, g: F.rms_norm(a, (shape[-1],), g, eps=1e-5), dout, x, gamma)
    for got, exp in ((out, want), (dx, tdx), (dgamma, tdgamma)):
        close(got, exp, dtype)
