"""The ConvolutionalNetworks notebook's spatial batch-norm and group-norm cells, as
tests, with its seeds and the numbers it prints (default biased variance)."""

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import reference as ref
from fastnorm.gradient_check import eval_numerical_gradient_array

from conftest import rel_error

APIS = [pytest.param(fn, id="compiled"), pytest.param(ref, id="reference")]


def notebook_x(N, C, H, W):
    np.random.seed(231)
    return 4 * np.random.randn(N, C, H, W) + 10


@pytest.mark.parametrize("api", APIS)
def test_spatial_batchnorm_train_forward(api):
    x = notebook_x(2, 3, 4, 5)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), [9.33463814, 8.90909116, 9.11056338], rtol=1e-8)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), [3.61447857, 3.19347686, 3.5168142], rtol=1e-7)

    out, _ = api.spatial_batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-15)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), [0.99999962, 0.99999951, 0.9999996], rtol=0, atol=5e-9)

    gamma, beta = np.asarray([3.0, 4.0, 5.0]), np.asarray([6.0, 7.0, 8.0])
    out, _ = api.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), beta, rtol=1e-15)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), [2.99999885, 3.99999804, 4.99999798],
                               rtol=0, atol=5e-9)


@pytest.mark.parametrize("api", APIS)
def test_spatial_batchnorm_test_time_after_50_passes(api):
    np.random.seed(231)
    N, C, H, W = 10, 4, 11, 12
    bn_param = {"mode": "train"}
    gamma, beta = np.ones(C), np.zeros(C)
    for _ in range(50):
        x = 2.3 * np.random.randn(N, C, H, W) + 13
        api.spatial_batchnorm_forward(x, gamma, beta, bn_param)
    bn_param["mode"] = "test"
    x = 2.3 * np.random.randn(N, C, H, W) + 13
    out, _ = api.spatial_batchnorm_forward(x, gamma, beta, bn_param)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), [-0.08034406, 0.07562881, 0.05716371, 0.04378383],
                               rtol=0, atol=5e-9)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), [0.96718744, 1.0299714, 1.02887624, 1.00585577],
                               rtol=0, atol=5e-9)
    assert bn_param["running_mean"].shape == (C,) and bn_param["running_var"].shape == (C,)


def numeric_grads(f, x, gamma, beta, dout):
    return (eval_numerical_gradient_array(lambda a: f(a, gamma, beta), x, dout),
            eval_numerical_gradient_array(lambda g: f(x, g, beta), gamma, dout),
            eval_numerical_gradient_array(lambda b: f(x, gamma, b), beta, dout))


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("ddof", [0, 1])
def test_spatial_batchnorm_gradient_check(api, ddof):
    np.random.seed(231)
    N, C, H, W = 2, 3, 4, 5
    x = 5 * np.random.randn(N, C, H, W) + 12
    gamma = np.random.randn(C)
    beta = np.random.randn(C)
    dout = np.random.randn(N, C, H, W)
    bn_param = {"mode": "train", "ddof": ddof}

    def f(a, g, b):
        return api.spatial_batchnorm_forward(a, g, b, dict(bn_param))[0]

    dx_num, dgamma_num, dbeta_num = numeric_grads(f, x, gamma, beta, dout)
    _, cache = api.spatial_batchnorm_forward(x, gamma, beta, dict(bn_param))
    dx, dgamma, dbeta = api.spatial_batchnorm_backward(dout, cache)
    assert rel_error(dx_num, dx) < 1e-6  # the notebook prints 2.8e-07
    assert rel_error(dgamma_num, dgamma) < 1e-10
    assert rel_error(dbeta_num, dbeta) < 1e-10


@pytest.mark.parametrize("api", APIS)
def test_spatial_batchnorm_test_mode_gradient_check(api):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 3, 2)) + 4
    gamma, beta, dout = rng.standard_normal(2), rng.standard_normal(2), rng.standard_normal(x.shape)
    bn_param = {"mode": "test", "running_mean": np.array([3.5, 4.5]), "running_var": np.array([0.5, 2.0])}

    def f(a, g, b):
        return api.spatial_batchnorm_forward(a, g, b, dict(bn_param))[0]

    expected = numeric_grads(f, x, gamma, beta, dout)
    _, cache = api.spatial_batchnorm_forward(x, gamma, beta, dict(bn_param))
    for got, want in zip(api.spatial_batchnorm_backward(dout, cache), expected):
        assert rel_error(want, got) < 1e-8


@pytest.mark.parametrize("api", APIS)
def test_groupnorm_train_forward(api):
    N, C, H, W, G = 2, 6, 4, 5, 2
    x = notebook_x(N, C, H, W)
    gamma, beta = np.ones((1, C, 1, 1)), np.zeros((1, C, 1, 1))
    out, _ = api.spatial_groupnorm_forward(x, gamma, beta, G, {"mode": "train"})
    groups = out.reshape(N * G, -1)
    np.testing.assert_allclose(groups.mean(axis=1), 0.0, atol=1e-15)
    # the notebook prints these (np.std per (sample, group)), all ~0.9999996
    np.testing.assert_allclose(groups.std(axis=1), [0.99999963, 0.99999948, 0.99999973, 0.99999968],
                               rtol=0, atol=5e-9)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("G", [2, 1, 6], ids=["G=2", "layer", "instance"])
def test_groupnorm_gradient_check(api, G):
    np.random.seed(231)
    N, C, H, W = 2, 6, 4, 5
    x = 5 * np.random.randn(N, C, H, W) + 12
    gamma = np.random.randn(1, C, 1, 1)
    beta = np.random.randn(1, C, 1, 1)
    dout = np.random.randn(N, C, H, W)
    gn_param = {}

    def f(a, g, b):
        return api.spatial_groupnorm_forward(a, g, b, G, gn_param)[0]

    dx_num, dgamma_num, dbeta_num = numeric_grads(f, x, gamma, beta, dout)
    _, cache = api.spatial_groupnorm_forward(x, gamma, beta, G, gn_param)
    dx, dgamma, dbeta = api.spatial_groupnorm_backward(dout, cache)
    assert dgamma.shape == dbeta.shape == (1, C, 1, 1)
    assert rel_error(dx_num, dx) < 1e-6  # the notebook prints 7.4e-08 at G = 2
    assert rel_error(dgamma_num, dgamma) < 1e-10
    assert rel_error(dbeta_num, dbeta) < 1e-10


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 8), (2, 1, 3, 5)])
def test_rmsnorm_gradient_check(api, shape):
    rng = np.random.default_rng(231)
    x = rng.standard_normal(shape) + 0.5
    gamma = rng.standard_normal(shape[-1])
    dout = rng.standard_normal(shape)

    def f(a, g):
        return api.rmsnorm_forward(a, g, {})[0]

    dx_num = eval_numerical_gradient_array(lambda a: f(a, gamma), x, dout)
    dgamma_num = eval_numerical_gradient_array(lambda g: f(x, g), gamma, dout)
    out, cache = api.rmsnorm_forward(x, gamma, {})
    dx, dgamma = api.rmsnorm_backward(dout, cache)
    assert out.shape == dx.shape == shape and dgamma.shape == (shape[-1],)
    assert rel_error(dx_num, dx) < 1e-7
    assert rel_error(dgamma_num, dgamma) < 1e-9


@pytest.mark.parametrize("api", APIS)
def test_rmsnorm_forward_is_unit_rms_times_gamma(api):
    rng = np.random.default_rng(0)
    x = 3 * rng.standard_normal((5, 64)) + 2
    gamma = rng.uniform(0.5, 2, 64)
    out, _ = api.rmsnorm_forward(x, np.ones(64), {"eps": 0.0})
    np.testing.assert_allclose(np.sqrt((out ** 2).mean(axis=1)), 1.0, rtol=1e-14)
    out_g, _ = api.rmsnorm_forward(x, gamma, {"eps": 0.0})
    np.testing.assert_allclose(out_g, out * gamma, rtol=1e-14)

