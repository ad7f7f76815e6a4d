"""Convolution, max pooling and the conv sandwiches against loop oracles, the
ConvolutionalNetworks notebook's printed numbers and numeric gradients."""

import numpy as np
import pytest

from fastnorm import layers, reference
from fastnorm.gradient_check import eval_numerical_gradient_array as numeric

from conftest import rel_error

GRAD_TOL = 1e-6
POOL_2x2 = {"pool_height": 2, "pool_width": 2, "stride": 2}


def conv_oracle(x, w, b, stride, pad):
    """The notebook's naive convolution: a loop over every output position."""
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - HH) // stride + 1, (W + 2 * pad - WW) // stride + 1
    out = np.zeros((N, F, Ho, Wo))
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    patch = xp[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
                    out[n, f, i, j] = np.sum(patch * w[f]) + b[f]
    return out


def pool_oracle(x, ph, pw, stride):
    N, C, H, W = x.shape
    Ho, Wo = (H - ph) // stride + 1, (W - pw) // stride + 1
    out = np.zeros((N, C, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            out[:, :, i, j] = x[:, :, i * stride:i * stride + ph, j * stride:j * stride + pw].max(axis=(2, 3))
    return out


# ---------------------------------------------------------------- convolution

def test_conv_forward_notebook_numbers():
    x_shape, w_shape = (2, 3, 4, 4), (3, 3, 4, 4)
    x = np.linspace(-0.1, 0.5, num=np.prod(x_shape)).reshape(x_shape)
    w = np.linspace(-0.2, 0.3, num=np.prod(w_shape)).reshape(w_shape)
    b = np.linspace(-0.1, 0.2, num=3)
    out, _ = layers.conv_forward(x, w, b, {"stride": 2, "pad": 1})
    correct_out = np.array([[[[-0.08759809, -0.10987781], [-0.18387192, -0.2109216]],
                             [[0.21027089, 0.21661097], [0.22847626, 0.23004637]],
                             [[0.50813986, 0.54309974], [0.64082444, 0.67101435]]],
                            [[[-0.98053589, -1.03143541], [-1.19128892, -1.24695841]],
                             [[0.69108355, 0.66880383], [0.59480972, 0.56776003]],
                             [[2.36270298, 2.36904306], [2.38090835, 2.38247847]]]])
    assert rel_error(out, correct_out) < 1e-7


@pytest.mark.parametrize("x_shape, w_shape, stride, pad", [
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 1),
    ((2, 3, 5, 5), (4, 3, 3, 3), 2, 1),
    ((1, 2, 7, 6), (3, 2, 3, 2), 2, 0),   # non-square filter and input
    ((3, 1, 4, 4), (2, 1, 1, 1), 1, 0),   # 1x1 convolution
    ((2, 2, 3, 3), (2, 2, 5, 5), 1, 2),   # filter larger than the unpadded input
])
def test_conv_forward_matches_the_loop(rng, x_shape, w_shape, stride, pad):
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    out, _ = layers.conv_forward(x, w, b, {"stride": stride, "pad": pad})
    expected = conv_oracle(x, w, b, stride, pad)
    assert out.shape == expected.shape and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 1), (1, 0), (3, 1)])
def test_conv_backward_numeric(rng, stride, pad):
    x, w, b = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    cp = {"stride": stride, "pad": pad}
    out, cache = layers.conv_forward(x, w, b, cp)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = layers.conv_backward(dout, cache)
    assert rel_error(dx, numeric(lambda v: layers.conv_forward(v, w, b, cp)[0], x, dout)) < GRAD_TOL
    assert rel_error(dw, numeric(lambda v: layers.conv_forward(x, v, b, cp)[0], w, dout)) < GRAD_TOL
    assert rel_error(db, numeric(lambda v: layers.conv_forward(x, w, v, cp)[0], b, dout)) < GRAD_TOL


def test_conv_float32_in_float32_out_and_inputs_untouched(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    copies = [a.copy() for a in (x, w, b)]
    out, cache = layers.conv_forward(x, w, b, {"stride": 1, "pad": 1})
    grads = layers.conv_backward(np.ones_like(out), cache)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    np.testing.assert_allclose(out, conv_oracle(x, w, b, 1, 1), rtol=1e-4, atol=1e-5)
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


def test_conv_reads_non_contiguous_x(rng):
    x = rng.standard_normal((2, 5, 5, 3)).transpose(0, 3, 1, 2)  # channels-last memory
    w, b = rng.standard_normal((2, 3, 3, 3)), np.zeros(2)
    out, _ = layers.conv_forward(x, w, b, {"stride": 1, "pad": 1})
    np.testing.assert_allclose(out, conv_oracle(x, w, b, 1, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("x_shape, w_shape, b_shape, param, message", [
    ((2, 3, 5), (4, 3, 3, 3), (4,), {"stride": 1, "pad": 1}, r"x must be 4-D.*\(2, 3, 5\)"),
    ((2, 3, 5, 5), (4, 3, 3), (4,), {"stride": 1, "pad": 1}, r"w \(F, C, HH, WW\).*\(4, 3, 3\)"),
    ((2, 3, 5, 5), (4, 2, 3, 3), (4,), {"stride": 1, "pad": 1}, r"x has 3 channels but w has 2"),
    ((2, 3, 5, 5), (4, 3, 3, 3), (3,), {"stride": 1, "pad": 1}, r"b must have shape \(F,\) = \(4,\)"),
    ((2, 3, 6, 6), (4, 3, 3, 3), (4,), {"stride": 2, "pad": 1},
     r"do not tile 8 values \(8 - 3 is not divisible by 2\).*x \(2, 3, 6, 6\)"),
    ((2, 3, 2, 2), (4, 3, 5, 5), (4,), {"stride": 1, "pad": 0}, r"window \(5\) is larger than the input \(2\)"),
    ((2, 3, 5, 5), (4, 3, 3, 3), (4,), {"pad": 1}, r"conv_param\['stride'\] is required"),
    ((2, 3, 5, 5), (4, 3, 3, 3), (4,), {"stride": 0, "pad": 1}, r"conv_param\['stride'\] must be an integer >= 1"),
    ((2, 3, 5, 5), (4, 3, 3, 3), (4,), {"stride": True, "pad": 1}, r"conv_param\['stride'\]"),
    ((2, 3, 5, 5), (4, 3, 3, 3), (4,), {"stride": 1, "pad": -1}, r"conv_param\['pad'\] must be an integer >= 0"),
    ((2, 3, 5, 5), (4, 3, 3, 3), (4,), {"stride": 1, "pad": 0.5}, r"conv_param\['pad'\]"),
])
def test_conv_errors_name_the_shapes(x_shape, w_shape, b_shape, param, message):
    with pytest.raises(ValueError, match=message):
        layers.conv_forward(np.zeros(x_shape), np.zeros(w_shape), np.zeros(b_shape), param)


def test_conv_backward_checks_cache_and_dout(rng):
    out, cache = layers.conv_forward(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 3, 3)), np.zeros(2),
                                     {"stride": 1, "pad": 1})
    with pytest.raises(ValueError, match=r"dout must have the layer's output shape \(2, 2, 4, 4\)"):
        layers.conv_backward(np.zeros((2, 2, 4, 3)), cache)
    with pytest.raises(TypeError, match="cache must be the one returned by conv_forward, got tuple"):
        layers.conv_backward(out, (1, 2, 3))
    _, pool_cache = layers.max_pool_forward(out, POOL_2x2)
    with pytest.raises(TypeError, match="conv_forward, got PoolCache"):
        layers.conv_backward(out, pool_cache)
    with pytest.raises(TypeError, match="conv_param must be a dict"):
        layers.conv_forward(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 3, 3)), np.zeros(2), [1, 1])


# ---------------------------------------------------------------- max pooling

def test_max_pool_forward_notebook_numbers():
    x_shape = (2, 3, 4, 4)
    x = np.linspace(-0.3, 0.4, num=np.prod(x_shape)).reshape(x_shape)
    out, _ = layers.max_pool_forward(x, POOL_2x2)
    correct_out = np.array([[[[-0.26315789, -0.24842105], [-0.20421053, -0.18947368]],
                             [[-0.14526316, -0.13052632], [-0.08631579, -0.07157895]],
                             [[-0.02736842, -0.01263158], [0.03157895, 0.04631579]]],
                            [[[0.09052632, 0.10526316], [0.14947368, 0.16421053]],
                             [[0.20842105, 0.22315789], [0.26736842, 0.28210526]],
                             [[0.32631579, 0.34105263], [0.38526316, 0.4]]]])
    assert rel_error(out, correct_out) < 1e-7


POOLS = [
    ((2, 3, 4, 6), 2, 2, 2),  # non-overlapping 2x2: the reshape path
    ((2, 2, 6, 6), 3, 3, 3),  # non-overlapping 3x3
    ((2, 2, 5, 5), 3, 3, 1),  # overlapping
    ((1, 2, 5, 7), 3, 3, 2),  # overlapping, stride 2
    ((2, 1, 4, 7), 2, 3, 2),  # rectangular windows, overlapping along W
    ((2, 1, 4, 5), 2, 1, 2),  # gaps between the windows along W
    ((2, 1, 5, 5), 1, 1, 2),  # strided sampling
]


@pytest.mark.parametrize("x_shape, ph, pw, stride", POOLS)
def test_max_pool_matches_the_loop_and_numeric_gradient(rng, x_shape, ph, pw, stride):
    x = rng.standard_normal(x_shape)
    param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out, cache = layers.max_pool_forward(x, param)
    np.testing.assert_array_equal(out, pool_oracle(x, ph, pw, stride))
    dout = rng.standard_normal(out.shape)
    dx = layers.max_pool_backward(dout, cache)
    assert dx.shape == x.shape and dx.flags.c_contiguous
    assert rel_error(dx, numeric(lambda v: layers.max_pool_forward(v, param)[0], x, dout)) < GRAD_TOL


def test_max_pool_ties_give_the_gradient_to_the_first_maximum():
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, 1, 3] = -1.0  # the second window's maximum 0 is tied three times
    x[0, 0, 1, 0] = 5.0
    out, cache = layers.max_pool_forward(x, POOL_2x2)
    np.testing.assert_array_equal(out, [[[[5.0, 0.0]]]])
    dx = layers.max_pool_backward(np.array([[[[2.0, 3.0]]]]), cache)
    np.testing.assert_array_equal(dx, [[[[0, 0, 3, 0], [2, 0, 0, 0]]]])


def test_max_pool_float32_and_errors():
    x = np.arange(2 * 2 * 4 * 4, dtype=np.float32).reshape(2, 2, 4, 4)
    out, cache = layers.max_pool_forward(x, POOL_2x2)
    assert out.dtype == np.float32 and layers.max_pool_backward(out, cache).dtype == np.float32
    with pytest.raises(ValueError, match=r"x must be 4-D.*\(4, 4\)"):
        layers.max_pool_forward(np.zeros((4, 4)), POOL_2x2)
    with pytest.raises(ValueError, match=r"do not tile 5 values \(5 - 2 is not divisible by 2\).*x \(1, 1, 5, 4\)"):
        layers.max_pool_forward(np.zeros((1, 1, 5, 4)), POOL_2x2)
    with pytest.raises(ValueError, match=r"pool_param\['pool_width'\] is required"):
        layers.max_pool_forward(x, {"pool_height": 2, "stride": 2})
    with pytest.raises(ValueError, match=r"window \(5\) is larger than the input \(4\)"):
        layers.max_pool_forward(x, {"pool_height": 5, "pool_width": 2, "stride": 1})
    with pytest.raises(ValueError, match=r"dout must have the layer's output shape \(2, 2, 2, 2\)"):
        layers.max_pool_backward(np.zeros((2, 2, 2)), cache)
    with pytest.raises(TypeError, match="max_pool_forward"):
        layers.max_pool_backward(out, None)


# ---------------------------------------------------------------- sandwiches

def test_sandwich_without_norm_is_conv_relu_pool(rng):
    x, w, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    cp = {"stride": 1, "pad": 1}
    out, cache = layers.conv_norm_relu_pool_forward(x, w, b, cp, POOL_2x2)
    expected = pool_oracle(np.maximum(conv_oracle(x, w, b, 1, 1), 0), 2, 2, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dx, dw, db, dgamma, dbeta = layers.conv_norm_relu_pool_backward(dout, cache)
    assert dgamma is None and dbeta is None
    f = lambda v: layers.conv_norm_relu_pool_forward(v, w, b, cp, POOL_2x2)[0]  # noqa: E731
    assert rel_error(dx, numeric(f, x, dout)) < GRAD_TOL
    out2, cache2 = layers.conv_norm_relu_forward(x, w, b, cp)
    np.testing.assert_allclose(out2, np.maximum(conv_oracle(x, w, b, 1, 1), 0), rtol=1e-12, atol=1e-12)
    assert layers.conv_norm_relu_backward(np.ones_like(out2), cache2)[3] is None
    with pytest.raises(TypeError, match="conv_norm_relu_forward, got the other sandwich's"):
        layers.conv_norm_relu_backward(dout, cache)


def test_sandwich_argument_errors(rng):
    x, w, b = np.zeros((2, 4, 4, 4)), np.zeros((4, 4, 3, 3)), np.zeros(4)
    cp = {"stride": 1, "pad": 1}
    gamma, beta = np.ones(4), np.zeros(4)
    with pytest.raises(ValueError, match="norm must be one of"):
        layers.conv_norm_relu_forward(x, w, b, cp, norm="batchnorm", gamma=gamma, beta=beta, norm_param={})
    with pytest.raises(ValueError, match="needs gamma, beta and norm_param"):
        layers.conv_norm_relu_forward(x, w, b, cp, norm="spatial_batchnorm")
    with pytest.raises(ValueError, match="needs G"):
        layers.conv_norm_relu_forward(x, w, b, cp, norm="groupnorm", gamma=gamma, beta=beta, norm_param={})
    with pytest.raises(ValueError, match="G applies only to norm='groupnorm'"):
        layers.conv_norm_relu_forward(x, w, b, cp, norm="spatial_batchnorm", gamma=gamma, beta=beta,
                                      norm_param={"mode": "train"}, G=2)
    with pytest.raises(ValueError, match="apply only with a norm"):
        layers.conv_norm_relu_forward(x, w, b, cp, gamma=gamma)
    with pytest.raises(ValueError, match="kernels must be one of"):
        layers.conv_norm_relu_forward(x, w, b, cp, kernels="gpu")
    with pytest.raises(ValueError, match="pool_param is required"):
        layers.conv_norm_relu_pool_forward(x, w, b, cp, None)


SANDWICH_KERNELS = ["fast", "reference"]


@pytest.mark.parametrize("kernels", SANDWICH_KERNELS)
@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("norm", ["spatial_batchnorm", "groupnorm"])
def test_sandwich_with_norm_numeric(rng, norm, pool, kernels):
    x, w, b = rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    shape = (4,) if norm == "spatial_batchnorm" else (1, 4, 1, 1)
    gamma, beta = 1 + 0.1 * rng.standard_normal(shape), 0.1 * rng.standard_normal(shape)
    cp = {"stride": 1, "pad": 1}
    G = 2 if norm == "groupnorm" else None

    def f(x, w, b, gamma, beta):
        kw = dict(norm=norm, gamma=gamma, beta=beta, norm_param={"mode": "train"}, G=G, kernels=kernels)
        if pool:
            return layers.conv_norm_relu_pool_forward(x, w, b, cp, POOL_2x2, **kw)
        return layers.conv_norm_relu_forward(x, w, b, cp, **kw)

    args = [x, w, b, gamma, beta]
    out, cache = f(*args)
    h = conv_oracle(x, w, b, 1, 1)
    if norm == "groupnorm":
        h = reference.spatial_groupnorm_forward(h, gamma, beta, G, {})[0]
    else:
        h = reference.spatial_batchnorm_forward(h, gamma, beta, {"mode": "train"})[0]
    h = np.maximum(h, 0)
    np.testing.assert_allclose(out, pool_oracle(h, 2, 2, 2) if pool else h, rtol=1e-10, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    backward = layers.conv_norm_relu_pool_backward if pool else layers.conv_norm_relu_backward
    grads = backward(dout, cache)
    for k, (arg, grad) in enumerate(zip(args, grads)):
        def only(v, k=k):
            return f(*[v if j == k else a for j, a in enumerate(args)])[0]
        num = numeric(only, arg, dout)
        assert grad.shape == arg.shape
        if norm == "spatial_batchnorm" and k == 2:  # a bias before batch norm has no effect
            assert np.max(np.abs(grad)) < 1e-12 and np.max(np.abs(num)) < 1e-9
        else:
            assert rel_error(num, grad) < GRAD_TOL, ["x", "w", "b", "gamma", "beta"][k]


def test_max_pool_backward_passes_infinities_only_to_the_maxima():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    out, cache = layers.max_pool_forward(x, POOL_2x2)
    dout = np.array([[[[np.inf, -np.inf], [1.0, np.nan]]]])
    dx = layers.max_pool_backward(dout, cache)
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, 1, 1], expected[0, 0, 1, 3], expected[0, 0, 3, 1], expected[0, 0, 3, 3] = dout.ravel()
    np.testing.assert_array_equal(dx, expected)  # zeros elsewhere, not inf * 0 = NaN
