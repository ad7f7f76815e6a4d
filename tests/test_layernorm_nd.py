"""Layer norm over the last axis of x (..., D) of any rank >= 2, compiled and reference."""

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import reference as ref
from fastnorm.gradient_check import eval_numerical_gradient_array

SHAPES = [(3, 5, 7), (2, 3, 4, 6), (1, 1, 9), (4, 1, 2)]


def case(shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    D = shape[-1]
    x = (3 * rng.standard_normal(shape) + 2).astype(dtype)
    return (x, rng.standard_normal(D).astype(dtype), rng.standard_normal(D).astype(dtype),
            rng.standard_normal(shape).astype(dtype))


def oracle(x, gamma, beta, eps=1e-5, ddof=0):
    """float64 layer norm along the last axis, written directly."""
    x = x.astype(np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).sum(axis=-1, keepdims=True) / (x.shape[-1] - ddof)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ln_param", [{}, {"ddof": 1, "eps": 1e-3}])
def test_nd_is_the_2d_call_on_the_rows_bitwise(shape, dtype, ln_param):
    if shape[-1] <= ln_param.get("ddof", 0):
        pytest.skip("needs more features than ddof")
    x, g, b, dout = case(shape, dtype)
    D = shape[-1]
    out, cache = fn.layernorm_forward(x, g, b, dict(ln_param))
    out2, cache2 = fn.layernorm_forward(x.reshape(-1, D), g, b, dict(ln_param))
    assert out.shape == shape and out.dtype == dtype
    assert out.tobytes() == out2.tobytes()
    assert cache.mean.shape == cache.inv_std.shape == shape[:-1]
    assert cache.mean.tobytes() == cache2.mean.tobytes() and cache.inv_std.tobytes() == cache2.inv_std.tobytes()
    grads = fn.layernorm_backward(dout, cache)
    grads2 = fn.layernorm_backward(dout.reshape(-1, D), cache2)
    assert [a.shape for a in grads] == [shape, (D,), (D,)]
    for a, a2 in zip(grads, grads2):
        assert a.dtype == dtype and a.tobytes() == a2.tobytes()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nd_matches_the_reference_and_the_oracle(shape, dtype):
    x, g, b, dout = case(shape, dtype, seed=1)
    out, cache = fn.layernorm_forward(x, g, b, {})
    r_out, r_cache = ref.layernorm_forward(x, g, b, {})
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, r_out, **tol)
    np.testing.assert_allclose(r_out, oracle(x, g.astype(np.float64), b.astype(np.float64)), **tol)
    for a, r in zip(fn.layernorm_backward(dout, cache), ref.layernorm_backward(dout, r_cache)):
        assert a.shape == r.shape
        np.testing.assert_allclose(a, r, **tol)


def test_nd_numeric_gradients():
    x, g, b, dout = case((2, 3, 5), seed=2)
    ln_param = {}
    _, cache = fn.layernorm_forward(x, g, b, ln_param)
    dx, dgamma, dbeta = fn.layernorm_backward(dout, cache)
    for grad, arg, f in [
        (dx, x, lambda v: fn.layernorm_forward(v, g, b, ln_param)[0]),
        (dgamma, g, lambda v: fn.layernorm_forward(x, v, b, ln_param)[0]),
        (dbeta, b, lambda v: fn.layernorm_forward(x, g, v, ln_param)[0]),
    ]:
        num = eval_numerical_gradient_array(f, arg, dout)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_non_contiguous_x_is_copied_once_and_gives_the_same_numbers(layout):
    base, g, b, dout = case((4, 6, 5), seed=3)
    x = base.transpose(1, 0, 2) if layout == "transposed" else base[:, ::2, :]
    before = x.copy()
    out, cache = fn.layernorm_forward(x, g, b, {})
    expected, expected_cache = fn.layernorm_forward(np.ascontiguousarray(x), g, b, {})
    np.testing.assert_array_equal(x, before)
    assert out.shape == x.shape and out.flags.c_contiguous
    assert out.tobytes() == expected.tobytes()
    assert cache.x.flags.c_contiguous and not np.shares_memory(cache.x, base)
    d = np.ascontiguousarray(dout[:, :, :].transpose(1, 0, 2) if layout == "transposed" else dout[:, ::2, :])
    for a, e in zip(fn.layernorm_backward(d, cache), fn.layernorm_backward(d, expected_cache)):
        assert a.tobytes() == e.tobytes()
    # a non-contiguous dout of the right shape: converted, same gradients
    d_strided = np.repeat(d, 2, axis=-1)[..., ::2]
    for a, e in zip(fn.layernorm_backward(d_strided, cache), fn.layernorm_backward(d, cache)):
        assert a.tobytes() == e.tobytes()


def test_contiguous_x_is_read_in_place():
    x, g, b, _ = case((3, 4, 5))
    _, cache = fn.layernorm_forward(x, g, b, {})
    assert cache.x is x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_buffers_of_the_nd_shape(dtype):
    x, g, b, dout = case((3, 4, 6), dtype, seed=4)
    out = np.full(x.shape, np.nan, dtype)
    got, cache = fn.layernorm_forward(x, g, b, {}, out=out)
    expected, _ = fn.layernorm_forward(x, g, b, {})
    assert got is out and out.tobytes() == expected.tobytes()
    bufs = (np.full(x.shape, np.nan, dtype), np.full(6, np.nan, dtype), np.full(6, np.nan, dtype))
    grads = fn.layernorm_backward(dout, cache, out=bufs)
    assert all(a is buf for a, buf in zip(grads, bufs))
    for a, e in zip(grads, fn.layernorm_backward(dout, cache)):
        assert a.tobytes() == e.tobytes()
    with pytest.raises(ValueError, match=r"out must have shape \(3, 4, 6\)"):
        fn.layernorm_forward(x, g, b, {}, out=np.empty((12, 6), dtype))
    with pytest.raises(ValueError, match=r"out\[0\] \(dx\) must have shape \(3, 4, 6\)"):
        fn.layernorm_backward(dout, cache, out=(np.empty((12, 6), dtype), *bufs[1:]))


@pytest.mark.parametrize("forward", [fn.layernorm_forward, ref.layernorm_forward])
def test_nd_errors_name_the_shapes(forward):
    x, g, b, _ = case((2, 3, 4))
    for bad in (np.ones(4), np.ones(())):
        with pytest.raises(ValueError, match=r"x must be 2-D \(N, D\) or of higher rank \(\.\.\., D\), got \d-D"):
            forward(bad, g, b, {})
    with pytest.raises(ValueError, match=r"gamma must have shape \(D,\) = \(4,\) for x of shape \(2, 3, 4\), got \(3,\)"):
        forward(x, np.ones(3), b, {})
    with pytest.raises(ValueError, match=r"at least one row and one feature, got shape \(2, 0, 4\)"):
        forward(np.ones((2, 0, 4)), g, b, {})
    with pytest.raises(ValueError, match=r"ddof=1 needs more than 1 feature\(s\), got x of shape \(2, 3, 1\)"):
        forward(np.ones((2, 3, 1)), np.ones(1), np.ones(1), {"ddof": 1})


@pytest.mark.parametrize("api", [fn, ref])
def test_nd_dout_of_another_shape_is_refused(api):
    x, g, b, dout = case((2, 3, 4))
    _, cache = api.layernorm_forward(x, g, b, {})
    with pytest.raises(ValueError, match=r"dout must have the shape of x \(2, 3, 4\), got \(6, 4\)"):
        api.layernorm_backward(dout.reshape(6, 4), cache)


def test_batchnorm_still_takes_only_2d():
    x, g, b, _ = case((2, 3, 4))
    with pytest.raises(ValueError, match=r"x must be 2-D \(N, D\), got 3-D with shape \(2, 3, 4\)"):
        fn.batchnorm_forward(x, g, b, {"mode": "train"})


def test_altered_nd_cache_is_refused():
    x, g, b, dout = case((2, 3, 4))
    _, cache = fn.layernorm_forward(x, g, b, {})
    cache.mean = cache.mean.reshape(-1)  # the statistics have x's leading shape (2, 3)
    with pytest.raises(ValueError, match=r"cache.mean must be a float64 array of shape \(2, 3\)"):
        fn.layernorm_backward(dout, cache)


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 2, 3, 8)])
def test_against_torch_layer_norm(shape):
    torch = pytest.importorskip("torch")
    x, g, b, dout = case(shape, seed=5)
    out, cache = fn.layernorm_forward(x, g, b, {"eps": 1e-5})
    dx, dgamma, dbeta = fn.layernorm_backward(dout, cache)
    tx, tg, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, g, b))
    t_out = torch.nn.functional.layer_norm(tx, (shape[-1],), tg, tb, eps=1e-5)
    t_out.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for mine, theirs in ((dx, tx), (dgamma, tg), (dbeta, tb)):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), rtol=1e-9, atol=1e-11)
