"""The compiled N-D normalizations against the NumPy reference: random shapes,
dtypes and memory layouts; thread-count independence; exact constants; out=
buffers; the cache; the NCHW building blocks of synchronized batch norm."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastnorm as fn
from fastnorm import normalization_nd as nd
from fastnorm import reference as ref
from fastnorm._build import by_dtype, load_kernels

TOL = {np.float64: dict(rtol=1e-9, atol=1e-9), np.float32: dict(rtol=1e-3, atol=1e-3)}


def layout(x, kind):
    """x (N, C, H, W) with the same values in memory of another kind."""
    if kind == "nchw":
        return np.ascontiguousarray(x)
    if kind == "channels_last":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    big = np.empty(x.shape[:3] + (2 * x.shape[3],), x.dtype)   # W strided by 2
    view = big[..., ::2]
    view[...] = x
    return view


def close(got, want, dtype):
    np.testing.assert_allclose(got, want, **TOL[dtype])


shapes_4d = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 7), st.integers(1, 9))
dtypes = st.sampled_from([np.float64, np.float32])
layouts = st.sampled_from(["nchw", "channels_last", "strided"])


@given(shape=shapes_4d, dtype=dtypes, kind=layouts, mode=st.sampled_from(["train", "test"]),
       ddof=st.sampled_from([0, 1]), seed=st.integers(0, 2**16))
def test_spatial_batchnorm_matches_reference(shape, dtype, kind, mode, ddof, seed):
    N, C, H, W = shape
    if mode == "train" and N * H * W <= ddof:
        ddof = 0
    rng = np.random.default_rng(seed)
    x = layout((2 * rng.standard_normal(shape) + 3).astype(dtype), kind)
    dout = layout(rng.standard_normal(shape).astype(dtype), kind)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    running = {"running_mean": rng.standard_normal(C).astype(dtype),
               "running_var": rng.uniform(0.5, 2, C).astype(dtype)}
    x_before = x.copy()
    p_fn = {"mode": mode, "ddof": ddof, "momentum": 0.8, **running}
    p_ref = dict(p_fn)
    out, cache = fn.spatial_batchnorm_forward(x, gamma, beta, p_fn)
    want, cache_ref = ref.spatial_batchnorm_forward(x, gamma, beta, p_ref)
    close(out, want, dtype)
    for key in running:
        close(p_fn[key], p_ref[key], dtype)
        assert p_fn[key].dtype == dtype
    assert out.dtype == dtype
    if kind == "channels_last":   # answered in x's layout, read in place
        assert out.transpose(0, 2, 3, 1).flags.c_contiguous and cache.x is x
    else:
        assert out.flags.c_contiguous
    for got, exp in zip(fn.spatial_batchnorm_backward(dout, cache), ref.spatial_batchnorm_backward(dout, cache_ref)):
        close(got, exp, dtype)
    np.testing.assert_array_equal(x, x_before)


@given(shape=shapes_4d, dtype=dtypes, seed=st.integers(0, 2**16), data=st.data())
def test_groupnorm_matches_reference(shape, dtype, seed, data):
    N, C, H, W = shape
    G = data.draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]))
    rng = np.random.default_rng(seed)
    x = (2 * rng.standard_normal(shape) + 3).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal((1, C, 1, 1)).astype(dtype)
    beta = rng.standard_normal((1, C, 1, 1)).astype(dtype)
    out, cache = fn.spatial_groupnorm_forward(x, gamma, beta, G, {"eps": 1e-4})
    want, cache_ref = ref.spatial_groupnorm_forward(x, gamma, beta, G, {"eps": 1e-4})
    close(out, want, dtype)
    grads = fn.spatial_groupnorm_backward(dout, cache)
    for got, exp in zip(grads, ref.spatial_groupnorm_backward(dout, cache_ref)):
        assert got.shape == exp.shape and got.dtype == dtype
        close(got, exp, dtype)


@given(shape=st.lists(st.integers(1, 40), min_size=2, max_size=4).map(tuple), dtype=dtypes,
       seed=st.integers(0, 2**16))
def test_rmsnorm_matches_reference(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) + 0.5).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(shape[-1]).astype(dtype)
    out, cache = fn.rmsnorm_forward(x, gamma, {})
    want, cache_ref = ref.rmsnorm_forward(x, gamma, {})
    close(out, want, dtype)
    for got, exp in zip(fn.rmsnorm_backward(dout, cache), ref.rmsnorm_backward(dout, cache_ref)):
        close(got, exp, dtype)


# ------------------------------------------------------------------ threads
def run_all(x, dout, dtype):
    N, C, H, W = x.shape
    rng = np.random.default_rng(1)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    results = []
    for kind in ("nchw", "channels_last"):
        xl, dl = layout(x, kind), layout(dout, kind)
        out, cache = fn.spatial_batchnorm_forward(xl, gamma, beta, {"mode": "train"})
        results += [out, *fn.spatial_batchnorm_backward(dl, cache)]
    g4, b4 = gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1)
    out, cache = fn.spatial_groupnorm_forward(x, g4, b4, 4, {})
    results += [out, *fn.spatial_groupnorm_backward(dout, cache)]
    out, cache = fn.rmsnorm_forward(x, np.ones(W, dtype), {})
    results += [out, *fn.rmsnorm_backward(dout, cache)]
    flat = x.reshape(-1, 256)
    out, cache = fn.rmsnorm_forward(flat, np.ones(256, dtype), {})
    results += [out, *fn.rmsnorm_backward(dout.reshape(flat.shape), cache)]
    return results


# the kernels start a second thread from 32768 values on (threads_for, src/_parallel.pxd.tp)
THREAD_SHAPES = [
    (2, 8, 32, 32),    # 16384 values: one thread either way
    (1, 8, 64, 63),    # 32256, just below the threshold
    (4, 8, 32, 32),    # 32768, the first size with two
    (1, 8, 64, 65),    # 33280, just above
    (6, 8, 32, 32),    # 49152
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", THREAD_SHAPES)
def test_bitwise_identical_for_1_and_2_threads(dtype, shape):
    rng = np.random.default_rng(7)
    x = (3 * rng.standard_normal(shape) + 5).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    with fn.num_threads(1):
        one = run_all(x, dout, dtype)
    with fn.num_threads(2):
        two = run_all(x, dout, dtype)
    assert len(one) == len(two) == 18
    for a, b in zip(one, two):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    # and the values are right on both sides of the threshold (the float64 reference)
    out, _ = ref.spatial_groupnorm_forward(x.astype(np.float64), np.ones((1, 8, 1, 1)), np.zeros((1, 8, 1, 1)),
                                           4, {})
    g4 = np.ones((1, 8, 1, 1), dtype)
    with fn.num_threads(2):
        got, _ = fn.spatial_groupnorm_forward(x, g4, np.zeros_like(g4), 4, {})
    close(got, out, dtype)


# ------------------------------------------------------------------ exact constants
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("value", [0.0, 3.25, -1e7, 123456.7])
def test_constant_channel_and_group_give_beta_exactly(dtype, value):
    N, C, H, W = 3, 4, 5, 6
    x = np.random.default_rng(0).standard_normal((N, C, H, W)).astype(dtype)
    x[:, 1] = value   # channel 1 constant; with G = 2, group 0 of every sample is channels 0, 1
    x[:, 0] = value
    beta = np.array([0.5, -2.0, 1.0, 3.0], dtype)
    gamma = np.array([2.0, 3.0, 0.5, 1.5], dtype)
    for kind in ("nchw", "channels_last"):
        out, _ = fn.spatial_batchnorm_forward(layout(x, kind), gamma, beta, {"mode": "train"})
        assert np.all(out[:, 0] == beta[0]) and np.all(out[:, 1] == beta[1])
    out, _ = fn.spatial_groupnorm_forward(x, gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1), 2, {})
    assert np.all(out[:, 0] == beta[0]) and np.all(out[:, 1] == beta[1])


# ------------------------------------------------------------------ out= and the cache
@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_spatial_batchnorm_out_buffers(kind):
    rng = np.random.default_rng(2)
    x = layout(rng.standard_normal((3, 4, 5, 6)), kind)
    dout = layout(rng.standard_normal((3, 4, 5, 6)), kind)
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    out, cache = fn.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    buf = layout(np.zeros_like(out), kind)
    out2, _ = fn.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"}, out=buf)
    assert out2 is buf
    np.testing.assert_array_equal(buf, out)
    grads = fn.spatial_batchnorm_backward(dout, cache)
    bufs = (layout(np.zeros_like(out), kind), np.zeros(4), np.zeros(4))
    grads2 = fn.spatial_batchnorm_backward(dout, cache, out=bufs)
    for a, b, c in zip(grads, grads2, bufs):
        assert b is c
        np.testing.assert_array_equal(a, b)
    wrong = layout(np.zeros_like(out), "channels_last" if kind == "nchw" else "nchw")
    with pytest.raises(ValueError, match="out"):
        fn.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"}, out=wrong)
    with pytest.raises(ValueError, match="must not share memory"):
        fn.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"}, out=x)


def test_groupnorm_and_rmsnorm_out_buffers():
    rng = np.random.default_rng(3)
    x, dout = rng.standard_normal((2, 6, 3, 4)), rng.standard_normal((2, 6, 3, 4))
    g, b = rng.standard_normal((1, 6, 1, 1)), rng.standard_normal((1, 6, 1, 1))
    out, cache = fn.spatial_groupnorm_forward(x, g, b, 3, {})
    buf = np.empty_like(x)
    assert fn.spatial_groupnorm_forward(x, g, b, 3, {}, out=buf)[0] is buf
    np.testing.assert_array_equal(buf, out)
    bufs = (np.empty_like(x), np.empty((1, 6, 1, 1)), np.empty((1, 6, 1, 1)))
    for a, c in zip(fn.spatial_groupnorm_backward(dout, cache), fn.spatial_groupnorm_backward(dout, cache, out=bufs)):
        np.testing.assert_array_equal(a, c)
    assert all(np.shares_memory(c, d) for c, d in zip(fn.spatial_groupnorm_backward(dout, cache, out=bufs), bufs))
    with pytest.raises(ValueError, match=r"out\[1\] \(dgamma\) must have shape \(1, 6, 1, 1\)"):
        fn.spatial_groupnorm_backward(dout, cache, out=(bufs[0], np.empty(6), bufs[2]))

    out, cache = fn.rmsnorm_forward(x, np.ones(4), {})
    buf = np.empty_like(x)
    assert fn.rmsnorm_forward(x, np.ones(4), {}, out=buf)[0] is buf
    np.testing.assert_array_equal(buf, out)
    bufs = (np.empty_like(x), np.empty(4))
    for a, c, d in zip(fn.rmsnorm_backward(dout, cache), fn.rmsnorm_backward(dout, cache, out=bufs), bufs):
        assert c is d
        np.testing.assert_array_equal(a, c)
    with pytest.raises(TypeError, match=r"out must be a tuple \(dx, dgamma\)"):
        fn.rmsnorm_backward(dout, cache, out=bufs[0])


def test_caches_hold_references_and_small_statistics():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 3, 4))
    _, bn = fn.spatial_batchnorm_forward(x, np.ones(6), np.zeros(6), {"mode": "train"})
    assert bn.x is x and bn.mean.shape == bn.inv_std.shape == (6,) and bn.mean.dtype == np.float64
    _, gn = fn.spatial_groupnorm_forward(x, np.ones((1, 6, 1, 1)), np.zeros((1, 6, 1, 1)), 2, {})
    assert gn.x is x and gn.mean.shape == gn.inv_std.shape == (4,)
    _, rms = fn.rmsnorm_forward(x, np.ones(4), {})
    assert rms.x is x and rms.rstd.shape == (2 * 6 * 3,) and rms.rstd.dtype == np.float64
    for cache in (bn, gn, rms):   # nothing of x's size besides x itself
        arrays = [getattr(cache, name) for name in cache.__slots__ if name != "x"]
        assert all(a.size < x.size for a in arrays if isinstance(a, np.ndarray))


def test_mixed_dtypes_promote_as_numpy_does():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    out, cache = fn.spatial_batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    assert out.dtype == np.float64
    out, cache = fn.spatial_batchnorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), {"mode": "train"})
    dx, _, _ = fn.spatial_batchnorm_backward(np.ones(x.shape), cache)   # float64 dout
    assert dx.dtype == np.float64
    out, _ = fn.spatial_groupnorm_forward(x.astype(np.float16), np.ones((1, 3, 1, 1), np.float16),
                                          np.zeros((1, 3, 1, 1), np.float16), 3, {})
    assert out.dtype == np.float32
    out, _ = fn.rmsnorm_forward(np.arange(12).reshape(3, 4), np.ones(4, int), {})
    assert out.dtype == np.float64


def test_altered_cache_is_refused():
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 5))
    _, cache = fn.spatial_batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    cache.mean = np.zeros(4)
    with pytest.raises(ValueError, match=r"cache.mean and cache.inv_std must be float64 arrays of shape \(3,\)"):
        fn.spatial_batchnorm_backward(x, cache)
    _, cache = fn.spatial_groupnorm_forward(x, np.ones((1, 3, 1, 1)), np.zeros((1, 3, 1, 1)), 3, {})
    cache.G = 2
    with pytest.raises(ValueError, match="cache.G"):
        fn.spatial_groupnorm_backward(x, cache)
    _, cache = fn.rmsnorm_forward(x, np.ones(5), {})
    cache.rstd = cache.rstd[:-1]
    with pytest.raises(ValueError, match="cache.rstd"):
        fn.rmsnorm_backward(x, cache)


# ---------------------------------------------- building blocks of synchronized batch norm
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train, ddof", [(True, 0), (True, 1), (False, 0)])
def test_plane_blocks_compose_to_spatial_batchnorm(dtype, train, ddof):
    kernels = load_kernels()
    rng = np.random.default_rng(8)
    N, C, H, W = 4, 3, 5, 6
    x = (2 * rng.standard_normal((N, C, H, W)) + 7).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    bn_param = {"mode": "train" if train else "test", "ddof": ddof,
                "running_mean": np.full(C, 7, dtype), "running_var": np.full(C, 4, dtype)}
    out, cache = fn.spatial_batchnorm_forward(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = fn.spatial_batchnorm_backward(dout, cache)

    x3, d3 = x.reshape(N, C, H * W), dout.reshape(N, C, H * W)
    mean, m2 = np.empty(C), np.empty(C)
    by_dtype(kernels.plane_moments)[np.dtype(dtype)](x3, mean, m2, 1)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(m2, ((x64 - x64.mean(axis=(0, 2, 3), keepdims=True)) ** 2).sum(axis=(0, 2, 3)),
                               rtol=1e-12)
    if train:
        np.testing.assert_array_equal(mean, cache.mean)
        np.testing.assert_array_equal(1 / np.sqrt(m2 / (N * H * W - ddof) + 1e-5), cache.inv_std)
    o = np.empty_like(x3)
    by_dtype(kernels.plane_normalize)[np.dtype(dtype)](x3, cache.mean, cache.inv_std, gamma, beta, o, 1)
    np.testing.assert_array_equal(o.reshape(x.shape), out)

    sum_dy, sum_dy_xc = np.empty(C), np.empty(C)
    by_dtype(kernels.plane_grad_sums)[np.dtype(dtype)](d3, x3, cache.mean, sum_dy, sum_dy_xc, 2)
    np.testing.assert_array_equal(sum_dy.astype(dtype), dbeta)
    np.testing.assert_array_equal((sum_dy_xc * cache.inv_std).astype(dtype), dgamma)
    dx3 = np.empty_like(x3)
    by_dtype(kernels.plane_dx)[np.dtype(dtype)](d3, x3, cache.mean, cache.inv_std, gamma, sum_dy, sum_dy_xc,
                                                float(N * H * W), ddof, train, dx3, 2)
    np.testing.assert_array_equal(dx3.reshape(x.shape), dx)



@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_plane_blocks_take_an_empty_shard_and_refuse_wrong_lengths(dtype):
    kernels = load_kernels()
    block = lambda name: by_dtype(getattr(kernels, name))[np.dtype(dtype)]  # noqa: E731
    empty = np.empty((0, 3, 4), dtype)
    mean, m2 = np.full(3, 7.0), np.full(3, 7.0)
    block("plane_moments")(empty, mean, m2, 2)
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_array_equal(m2, 0.0)
    s1, s2 = np.full(3, 7.0), np.full(3, 7.0)
    block("plane_grad_sums")(empty, empty, np.zeros(3), s1, s2, 2)
    np.testing.assert_array_equal(s1, 0.0)
    np.testing.assert_array_equal(s2, 0.0)
    block("plane_dx")(empty, empty, np.zeros(3), np.ones(3), np.ones(3, dtype), s1, s2, 10.0, 0, True,
                      np.empty_like(empty), 2)
    x = np.ones((2, 3, 4), dtype)
    with pytest.raises(ValueError, match=r"mean_out must have shape \(3,\), got \(2,\)"):
        block("plane_moments")(x, np.empty(2), np.empty(3), 1)
    with pytest.raises(ValueError, match="dout must have shape"):
        block("plane_grad_sums")(np.ones((2, 3, 5), dtype), x, np.zeros(3), s1, s2, 1)
    with pytest.raises(ValueError, match="gamma must have shape"):
        block("plane_dx")(x, x, np.zeros(3), np.ones(3), np.ones(4, dtype), s1, s2, 8.0, 0, True,
                          np.empty_like(x), 1)
    with pytest.raises(ValueError, match="out must have shape"):
        block("plane_normalize")(x, np.zeros(3), np.ones(3), np.ones(3, dtype), np.zeros(3, dtype),
                                 np.empty((2, 3, 3), dtype), 1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_instruction_set_level_gives_the_baseline_bits(dtype):
    from kernel_builds import BASELINE, RUNNABLE

    rng = np.random.default_rng(9)
    N, C, P, G = 4, 6, 37, 3
    x = (1e4 + 3 * rng.standard_normal((N, C, P))).astype(dtype)
    x[:, 2] = dtype(1e4 + 0.25)
    dout = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rows, drows, g_rows = x.reshape(-1, P), dout.reshape(-1, P), rng.standard_normal(P).astype(dtype)

    def every_op(k):
        f = lambda name: getattr(k, name)[{np.float32: "float", np.float64: "double"}[dtype]]  # noqa: E731
        results = []
        out, stats, running = np.empty_like(x), np.empty((2, C)), np.empty((2, C), dtype)
        f("spatial_batchnorm_forward")(x, gamma, beta, np.zeros(C, dtype), np.ones(C, dtype), True, 0.9, 1e-5,
                                       0, out, stats, running, 2)
        dx, dg, db = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)
        f("spatial_batchnorm_backward")(dout, x, stats[0], stats[1], gamma, True, 0, dx, dg, db, 2)
        results += [out, stats, running, dx, dg, db]
        out, gstats = np.empty_like(x), np.empty((2, N * G))
        f("groupnorm_forward")(x, gamma, beta, G, 1e-5, out, gstats, 2)
        dx, dg, db = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)
        f("groupnorm_backward")(dout, x, gstats[0], gstats[1], gamma, G, np.empty((2, N * C)), dx, dg, db, 2)
        results += [out, gstats, dx, dg, db]
        out, rstd = np.empty_like(rows), np.empty(rows.shape[0])
        f("rmsnorm_forward")(rows, g_rows, 1e-5, out, rstd, 2)
        dx, dg = np.empty_like(rows), np.empty(P, dtype)
        f("rmsnorm_backward")(drows, rows, rstd, g_rows, dx, dg, 2)
        return results + [out, rstd, dx, dg]

    expected = every_op(BASELINE)
    for build in RUNNABLE[1:]:
        for a, b in zip(expected, every_op(build)):
            np.testing.assert_array_equal(a, b)
