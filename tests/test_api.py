"""The API contract around the kernels: bad input, dtypes and layouts, the cache,
caller-provided outputs, running statistics, threads."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import reference as ref
from fastnorm.normalization import BatchNormCache, LayerNormCache

FORWARDS = [
    pytest.param(fn.batchnorm_forward, {"mode": "train"}, id="bn"),
    pytest.param(fn.layernorm_forward, {}, id="ln"),
    pytest.param(ref.batchnorm_forward, {"mode": "train"}, id="ref-bn"),
    pytest.param(ref.layernorm_forward, {}, id="ref-ln"),
]
PAIRS = [
    pytest.param(fn.batchnorm_forward, fn.batchnorm_backward, {"mode": "train"}, id="bn"),
    pytest.param(fn.batchnorm_forward, fn.batchnorm_backward_alt, {"mode": "train"}, id="bn-alt"),
    pytest.param(fn.layernorm_forward, fn.layernorm_backward, {}, id="ln"),
    pytest.param(ref.batchnorm_forward, ref.batchnorm_backward, {"mode": "train"}, id="ref-bn"),
    pytest.param(ref.layernorm_forward, ref.layernorm_backward, {}, id="ref-ln"),
]


def inputs(N=4, D=3, dtype=np.float64):
    rng = np.random.default_rng(5)
    return (rng.standard_normal((N, D)).astype(dtype), rng.standard_normal(D).astype(dtype),
            rng.standard_normal(D).astype(dtype))


def assert_rejected(forward, args, params, exc, match):
    """Raises `exc` matching `match`, and leaves every argument as it was."""
    before = copy.deepcopy((args, params))
    with pytest.raises(exc, match=match):
        forward(*args, params)
    after = (args, params)
    for a, b in zip(before[0], after[0]):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
    assert before[1].keys() == after[1].keys()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("forward, params", FORWARDS)
@pytest.mark.parametrize("x_shape", [(12,), (2, 3, 2), ()])
def test_x_not_2d(forward, params, x_shape):
    _, g, b = inputs()
    x = np.ones(x_shape)
    if len(x_shape) > 2 and forward in (fn.layernorm_forward, ref.layernorm_forward):
        # layer norm takes x (..., D): this x is fine, its D of 2 does not fit gamma (3,)
        assert_rejected(forward, (x, g, b), params, ValueError,
                        r"gamma must have shape \(D,\) = \(2,\) for x of shape \(2, 3, 2\)")
    else:
        assert_rejected(forward, (x, g, b), params, ValueError, r"x must be 2-D \(N, D\).*" + r"\(")


@pytest.mark.parametrize("forward, params", FORWARDS)
@pytest.mark.parametrize("which, shape", [("gamma", (4,)), ("beta", (3, 1)), ("gamma", ())])
def test_gamma_beta_shape(forward, params, which, shape):
    x, g, b = inputs()
    args = {"gamma": g, "beta": b}
    args[which] = np.ones(shape)
    assert_rejected(forward, (x, args["gamma"], args["beta"]), params, ValueError,
                    rf"{which} must have shape \(D,\) = \(3,\) for x of shape \(4, 3\)")


@pytest.mark.parametrize("forward, params", FORWARDS)
@pytest.mark.parametrize("shape", [(0, 3), (4, 0), (0, 0)])
def test_empty_x(forward, params, shape):
    x = np.ones(shape)
    D = shape[1]
    assert_rejected(forward, (x, np.ones(D), np.ones(D)), params, ValueError, "at least one row and one feature")


@pytest.mark.parametrize("forward, params", FORWARDS)
@pytest.mark.parametrize("bad", [np.ones((4, 3), complex), np.full((4, 3), "a"), np.full((4, 3), None, object)])
def test_non_real_dtypes_are_type_errors(forward, params, bad):
    _, g, b = inputs()
    with pytest.raises(TypeError, match="x "):
        forward(bad, g, b, dict(params))
    with pytest.raises(TypeError, match="gamma "):
        forward(np.ones((4, 3)), bad[0], b, dict(params))


@pytest.mark.parametrize("forward", [fn.batchnorm_forward, ref.batchnorm_forward])
@pytest.mark.parametrize("params, match", [
    ({}, r"bn_param\['mode'\] is required"),
    ({"mode": "eval"}, r"bn_param\['mode'\] must be 'train' or 'test', got 'eval'"),
    ({"mode": None}, r"must be 'train' or 'test'"),
    ({"mode": "train", "eps": -1e-5}, r"bn_param\['eps'\] must be finite and in"),
    ({"mode": "train", "eps": float("nan")}, r"bn_param\['eps'\]"),
    ({"mode": "train", "eps": 10**400}, r"bn_param\['eps'\] must be finite"),  # was an unnamed OverflowError
    ({"mode": "train", "momentum": 1.5}, r"bn_param\['momentum'\] must be finite and in \[0.0, 1.0\]"),
    ({"mode": "train", "ddof": 2}, r"bn_param\['ddof'\] must be 0 or 1"),
    ({"mode": "train", "ddof": True}, r"bn_param\['ddof'\] must be 0 or 1"),
    ({"mode": "train", "running_mean": np.zeros(4)}, r"bn_param\['running_mean'\] must have shape \(D,\) = \(3,\)"),
    ({"mode": "test", "running_var": np.zeros((3, 1))}, r"bn_param\['running_var'\] must have shape"),
])
def test_bn_param_errors(forward, params, match):
    x, g, b = inputs()
    assert_rejected(forward, (x, g, b), params, ValueError, match)


@pytest.mark.parametrize("forward, params", FORWARDS)
def test_masked_elements_are_refused_not_used(forward, params):
    x, g, b = inputs()
    masked = np.ma.masked_array(x, mask=np.zeros(x.shape, bool))
    expected, _ = forward(x, g, b, dict(params))
    np.testing.assert_array_equal(forward(masked, g, b, dict(params))[0], expected)  # nothing masked
    masked[0, 0] = np.ma.masked  # was normalized with the value under the mask, silently
    with pytest.raises(TypeError, match="x is a masked array with masked elements"):
        forward(masked, g, b, dict(params))


@pytest.mark.parametrize("forward", [fn.batchnorm_forward, ref.batchnorm_forward])
def test_bn_param_type_errors(forward):
    x, g, b = inputs()
    with pytest.raises(TypeError, match="bn_param must be a dict"):
        forward(x, g, b, None)
    with pytest.raises(TypeError, match=r"bn_param\['eps'\] must be a real number"):
        forward(x, g, b, {"mode": "train", "eps": "1e-5"})
    with pytest.raises(TypeError, match=r"bn_param\['running_mean'\] is complex"):
        forward(x, g, b, {"mode": "train", "running_mean": np.zeros(3, complex)})


@pytest.mark.parametrize("forward", [fn.batchnorm_forward, ref.batchnorm_forward])
def test_train_mode_needs_more_rows_than_ddof(forward):
    x, g, b = inputs(N=1)
    assert_rejected(forward, (x, g, b), {"mode": "train", "ddof": 1}, ValueError,
                    r"ddof=1 needs more than 1 row\(s\), got x of shape \(1, 3\)")
    out, _ = forward(x, g, b, {"mode": "test", "ddof": 1})  # test mode uses running stats: fine
    assert out.shape == (1, 3)


@pytest.mark.parametrize("forward, backward, params", PAIRS)
def test_dout_shape_mismatch(forward, backward, params):
    x, g, b = inputs()
    _, cache = forward(x, g, b, dict(params))
    with pytest.raises(ValueError, match=r"dout must have the shape of x \(4, 3\), got \(3, 4\)"):
        backward(np.ones((3, 4)), cache)
    with pytest.raises(TypeError, match="dout is complex"):
        backward(np.ones((4, 3), complex), cache)


def test_cache_from_another_function_is_refused():
    x, g, b = inputs()
    _, bn_cache = fn.batchnorm_forward(x, g, b, {"mode": "train"})
    _, ln_cache = fn.layernorm_forward(x, g, b, {})
    _, ref_cache = ref.batchnorm_forward(x, g, b, {"mode": "train"})
    dout = np.ones_like(x)
    with pytest.raises(TypeError, match="cache must be the one returned by batchnorm_forward, got LayerNormCache"):
        fn.batchnorm_backward(dout, ln_cache)
    with pytest.raises(TypeError, match="layernorm_forward, got BatchNormCache"):
        fn.layernorm_backward(dout, bn_cache)
    with pytest.raises(TypeError, match="batchnorm_forward, got ReferenceCache"):
        fn.batchnorm_backward(dout, ref_cache)
    with pytest.raises(TypeError, match="reference.layernorm_forward"):
        ref.layernorm_backward(dout, ref_cache)
    with pytest.raises(TypeError):
        fn.batchnorm_backward(dout, (x, g))


@pytest.mark.parametrize("field, value, match", [
    ("mean", np.zeros(5), r"cache.mean must be a float64 array of shape \(3,\)"),
    ("inv_std", np.zeros(3, np.float32), r"cache.inv_std must be a float64"),
    ("gamma", np.zeros(2), r"cache.gamma must be a float64 array of shape \(3,\)"),
    ("x", np.zeros((4, 3))[:, ::-1], "cache.x is no longer"),
    ("ddof", 3, "invalid value"),
])
def test_altered_cache_is_refused(field, value, match):
    assert_refused_with(field, value, match)


def assert_refused_with(field, value, match):
    """batchnorm_backward raises `match` for a train-mode cache whose `field` is set to `value`."""
    x, g, b = inputs()
    _, cache = fn.batchnorm_forward(x, g, b, {"mode": "train"})
    setattr(cache, field, value)
    with pytest.raises(ValueError, match=match):
        fn.batchnorm_backward(np.ones_like(x), cache)


# ---------------------------------------------------------------- dtypes and layouts
@pytest.mark.parametrize("forward, backward, params", PAIRS)
@pytest.mark.parametrize("in_dtype, out_dtype", [
    (np.int64, np.float64), (np.int32, np.float64), (np.uint8, np.float64), (np.bool_, np.float64),
    (np.float16, np.float32), (np.float32, np.float32), (np.float64, np.float64),
])
def test_dtype_conversions(forward, backward, params, in_dtype, out_dtype):
    rng = np.random.default_rng(3)
    x = (rng.integers(0, 2, (6, 5)) if in_dtype == np.bool_ else rng.integers(0, 9, (6, 5))).astype(in_dtype)
    g = np.ones(5, in_dtype)
    b = np.zeros(5, in_dtype)
    out, cache = forward(x, g, b, dict(params))
    assert out.dtype == out_dtype
    expected, _ = forward(x.astype(out_dtype), g.astype(out_dtype), b.astype(out_dtype), dict(params))
    np.testing.assert_array_equal(out, expected)
    dx, dgamma, dbeta = backward(np.ones((6, 5), in_dtype), cache)
    assert dx.dtype == dgamma.dtype == dbeta.dtype == out_dtype


def test_mixed_precision_computes_in_the_result_type():
    x, g, b = inputs(dtype=np.float32)
    out, cache = fn.batchnorm_forward(x, g.astype(np.float64), b, {"mode": "train"})
    assert out.dtype == np.float64
    expected, _ = fn.batchnorm_forward(x.astype(np.float64), g.astype(np.float64), b.astype(np.float64),
                                       {"mode": "train"})
    np.testing.assert_array_equal(out, expected)
    # float32 cache, float64 dout: the backward runs in float64
    _, cache32 = fn.layernorm_forward(x, g, b, {})
    dx, dgamma, _ = fn.layernorm_backward(np.ones((4, 3)), cache32)
    assert dx.dtype == dgamma.dtype == np.float64


def test_python_lists_and_extended_precision():
    out, _ = fn.layernorm_forward([[1, 2, 3], [4, 5, 7]], [1, 1, 1], [0, 0, 0], {})
    assert out.dtype == np.float64
    if np.dtype(np.longdouble).itemsize > 8:
        with pytest.raises(TypeError, match="not supported"):
            fn.layernorm_forward(np.ones((2, 3), np.longdouble), np.ones(3), np.zeros(3), {})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts_give_identical_results(dtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((70, 90)).astype(dtype)
    g, b = rng.standard_normal(90).astype(dtype), rng.standard_normal(90).astype(dtype)
    dout = rng.standard_normal((70, 90)).astype(dtype)
    ro = x.copy()
    ro.flags.writeable = False
    big = np.zeros((140, 180), dtype)
    big[::2, ::2] = x
    for forward, backward, params in ((fn.batchnorm_forward, fn.batchnorm_backward, {"mode": "train"}),
                                      (fn.layernorm_forward, fn.layernorm_backward, {})):
        out, cache = forward(x, g, b, dict(params))
        grads = backward(dout, cache)
        for variant in (np.asfortranarray(x), big[::2, ::2], ro):
            out_v, cache_v = forward(variant, g, b, dict(params))
            np.testing.assert_array_equal(out_v, out)
            for got, expected in zip(backward(np.asfortranarray(dout), cache_v), grads):
                np.testing.assert_array_equal(got, expected)


def test_nan_and_inf_propagate_per_feature():
    x, g, b = inputs(N=6, D=4)
    x[2, 1] = np.nan
    x[3, 2] = np.inf
    out, cache = fn.batchnorm_forward(x, g, b, {"mode": "train"})
    assert np.all(np.isnan(out[:, 1])) and np.all(~np.isfinite(out[:, 2]) | np.isnan(out[:, 2]))
    clean, _ = fn.batchnorm_forward(x[:, [0, 3]], g[[0, 3]], b[[0, 3]], {"mode": "train"})
    np.testing.assert_array_equal(out[:, [0, 3]], clean)
    dx, dgamma, dbeta = fn.batchnorm_backward(np.ones_like(x), cache)
    assert np.all(np.isfinite(dx[:, [0, 3]]))


# ---------------------------------------------------------------- cache and buffers
@pytest.mark.parametrize("forward, params, cls", [
    (fn.batchnorm_forward, {"mode": "train"}, BatchNormCache),
    (fn.layernorm_forward, {}, LayerNormCache),
])
def test_cache_holds_x_by_reference_and_nothing_else_full_size(forward, params, cls):
    x, g, b = inputs(N=40, D=30)
    _, cache = forward(x, g, b, dict(params))
    assert isinstance(cache, cls)
    assert cache.x is x
    for name in ("mean", "inv_std", "gamma", "eps", "ddof", "mode"):
        value = getattr(cache, name)
        if isinstance(value, np.ndarray):
            assert value.size <= max(x.shape), f"cache.{name} is full-size {value.shape}"


def test_converted_x_is_cached_once_not_the_original():
    x = np.asfortranarray(np.random.default_rng(0).standard_normal((5, 4)))
    _, cache = fn.batchnorm_forward(x, np.ones(4), np.zeros(4), {"mode": "train"})
    assert cache.x is not x and cache.x.flags.c_contiguous
    np.testing.assert_array_equal(cache.x, x)


@pytest.mark.parametrize("forward, backward, params", PAIRS[:3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_buffers_are_written_and_bitwise_identical(forward, backward, params, dtype):
    x, g, b = inputs(N=80, D=33, dtype=dtype)
    dout = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    out, cache = forward(x, g, b, dict(params))
    grads = backward(dout, cache)
    out_buf = np.full_like(x, np.nan)
    bufs = (np.full_like(x, np.nan), np.full(33, np.nan, dtype), np.full(33, np.nan, dtype))
    res, cache2 = forward(x, g, b, dict(params), out=out_buf)
    assert res is out_buf
    np.testing.assert_array_equal(out_buf, out)
    res = backward(dout, cache2, out=bufs)
    for r, buf, expected in zip(res, bufs, grads):
        assert r is buf
        np.testing.assert_array_equal(buf, expected)


def test_bad_out_buffers():
    x, g, b = inputs()
    with pytest.raises(ValueError, match=r"out must have shape \(4, 3\) and dtype float64"):
        fn.batchnorm_forward(x, g, b, {"mode": "train"}, out=np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        fn.batchnorm_forward(x, g, b, {"mode": "train"}, out=np.empty((3, 4)).T)
    with pytest.raises(ValueError, match="must not share memory"):
        fn.layernorm_forward(x, g, b, {}, out=x)
    _, cache = fn.batchnorm_forward(x, g, b, {"mode": "train"})
    with pytest.raises(TypeError, match=r"out must be a tuple \(dx, dgamma, dbeta\)"):
        fn.batchnorm_backward(np.ones((4, 3)), cache, out=np.empty((4, 3)))
    with pytest.raises(ValueError, match=r"out\[1\] \(dgamma\) must have shape \(3,\)"):
        fn.batchnorm_backward(np.ones((4, 3)), cache, out=(np.empty((4, 3)), np.empty(4), np.empty(3)))


# ---------------------------------------------------------------- running statistics
@pytest.mark.parametrize("api", [fn, ref])
def test_running_stats_defaults_and_write_back(api):
    x, g, b = inputs(N=10, D=3, dtype=np.float32)
    bn_param = {"mode": "train"}
    api.batchnorm_forward(x, g, b, bn_param)
    assert bn_param["running_mean"].dtype == np.float32
    # zeros to start, momentum 0.9: running = 0.1 * batch statistic
    np.testing.assert_allclose(bn_param["running_mean"], 0.1 * x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(bn_param["running_var"], 0.1 * x.astype(np.float64).var(0), rtol=1e-6)
    bn_param.update(mode="test", momentum=0.5)
    before = bn_param["running_mean"].copy()
    api.batchnorm_forward(x, g, b, bn_param)  # test mode leaves them, but writes them back
    np.testing.assert_array_equal(bn_param["running_mean"], before)
    bn_param.update(mode="train", ddof=1)
    api.batchnorm_forward(x, g, b, bn_param)
    np.testing.assert_allclose(bn_param["running_var"],
                               0.5 * 0.1 * x.astype(np.float64).var(0) + 0.5 * x.astype(np.float64).var(0, ddof=1),
                               rtol=1e-6)


def test_input_arrays_are_not_modified():
    x, g, b = inputs(N=9, D=5)
    rm, rv = np.ones(5), np.full(5, 2.0)
    copies = [a.copy() for a in (x, g, b, rm, rv)]
    bn_param = {"mode": "train", "running_mean": rm, "running_var": rv}
    _, cache = fn.batchnorm_forward(x, g, b, bn_param)
    dout = np.ones_like(x)
    fn.batchnorm_backward(dout, cache)
    for a, c in zip((x, g, b, rm, rv), copies):
        np.testing.assert_array_equal(a, c)
    assert bn_param["running_mean"] is not rm
    np.testing.assert_array_equal(dout, 1.0)


# ---------------------------------------------------------------- threads
def test_thread_settings():
    assert isinstance(fn.openmp_enabled(), bool)
    default = fn.get_num_threads()
    assert default >= 1
    with fn.num_threads(1):
        assert fn.get_num_threads() == 1
        with fn.num_threads(3):
            assert fn.get_num_threads() == 3
        assert fn.get_num_threads() == 1
    assert fn.get_num_threads() == default
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            fn.set_num_threads(bad)


def test_thread_counts_openmp_cannot_start_are_refused():
    # 100000 crashed the process at the next large call, 2**31 made every call an OverflowError
    with fn.num_threads(2):
        for bad in (fn._threads.MAX_THREADS + 1, 100_000, 2**31, np.int64(2**40)):
            with pytest.raises(ValueError, match="up to 1024"):
                fn.set_num_threads(bad)
            assert fn.get_num_threads() == 2
        fn.set_num_threads(fn._threads.MAX_THREADS)
        assert fn.get_num_threads() == fn._threads.MAX_THREADS


@pytest.mark.skipif(not fn.openmp_enabled(), reason="OMP_NUM_THREADS matters to an OpenMP build only")
def test_an_openmp_default_too_large_is_capped(tmp_path):
    # OMP_NUM_THREADS=100000 made OpenMP's own default crash the process at a large call
    code = "import fastnorm as fn; print(fn.get_num_threads())"
    # the child imports the same fastnorm as this process
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fn.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="100000",
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                          text=True, check=True)
    assert int(done.stdout) == fn._threads.MAX_THREADS


SHAPES_ACROSS_SPLITS = [(100, 500), (300, 1100), (4096, 64), (8, 20000), (1000, 1)]


@pytest.mark.parametrize("shape", SHAPES_ACROSS_SPLITS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_are_bitwise_identical_for_1_and_2_threads(shape, dtype):
    rng = np.random.default_rng(2)
    x = (7 + rng.standard_normal(shape)).astype(dtype)
    g, b = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    results = []
    for n in (1, 2):
        with fn.num_threads(n):
            run = []
            for forward, backward, params in ((fn.batchnorm_forward, fn.batchnorm_backward, {"mode": "train"}),
                                              (fn.layernorm_forward, fn.layernorm_backward, {})):
                p = dict(params)
                out, cache = forward(x, g, b, p)
                run += [out, *backward(dout, cache), *[v for k, v in p.items() if k.startswith("running")]]
            results.append(run)
    for a, b_ in zip(*results):
        assert a.tobytes() == b_.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinite_feature_keeps_an_infinite_mean_across_row_blocks(dtype):
    """+Inf in two row blocks (64 rows each): the merge must not turn inf - inf into NaN."""
    x = np.random.default_rng(4).standard_normal((200, 3)).astype(dtype)
    x[5, 0] = x[150, 0] = np.inf
    x[7, 2] = -np.inf
    params = {"mode": "train", "momentum": 0.0}
    ref_params = dict(params)
    fn.batchnorm_forward(x, np.ones(3, dtype), np.zeros(3, dtype), params)
    with np.errstate(invalid="ignore"):
        ref.batchnorm_forward(x, np.ones(3, dtype), np.zeros(3, dtype), ref_params)
    assert params["running_mean"][0] == ref_params["running_mean"][0] == np.inf
    assert params["running_mean"][2] == ref_params["running_mean"][2] == -np.inf
    np.testing.assert_allclose(params["running_mean"][1], ref_params["running_mean"][1], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_test_mode_dx_does_not_read_x(dtype):
    x = np.ones((70, 600), dtype)
    x[3, 4], x[60, 599] = np.nan, np.inf
    params = {"mode": "test", "running_mean": np.zeros(600, dtype), "running_var": np.ones(600, dtype)}
    gamma = np.full(600, 2.0, dtype)
    _, cache = fn.batchnorm_forward(x, gamma, np.zeros(600, dtype), params)
    dx, _, _ = fn.batchnorm_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(dx, (gamma / np.sqrt(np.float64(1) + 1e-5)).astype(dtype)[None, :].repeat(70, 0))


# ---------------------------------------------------------------- the usual call's fast acceptance
def _same_fields(fast, full):
    """The fields of an unusual call against those of the usual call with the same values:
    equal values of the same dtype, C-contiguous plain arrays, scalars of the same type."""
    assert len(fast) == len(full)
    for a, b in zip(fast, full):
        if isinstance(b, np.ndarray):
            assert type(a) is np.ndarray and a.dtype == b.dtype and a.flags.c_contiguous
            np.testing.assert_array_equal(a, b)
        else:
            assert type(a) is type(b) and a == b


USUAL_AND_UNUSUAL = [
    pytest.param({"mode": "train"}, lambda x, g, b: (x, g, b), id="usual"),
    pytest.param({"mode": "test", "eps": 0.0, "momentum": 1.0, "ddof": 1}, lambda x, g, b: (x, g, b),
                 id="usual-bounds"),
    pytest.param({"mode": "train", "eps": np.float64(1e-3), "momentum": 1, "ddof": np.int64(1)},
                 lambda x, g, b: (x, g, b), id="numpy-scalars"),
    pytest.param({"mode": "train"}, lambda x, g, b: (np.asfortranarray(x), g[::-1].copy()[::-1], b),
                 id="fortran-x"),
    pytest.param({"mode": "train"}, lambda x, g, b: (x, np.repeat(g, 2)[::2], b), id="strided-gamma"),
    pytest.param({"mode": "train"}, lambda x, g, b: (x, g.astype(">f8"), b), id="byteswapped-gamma"),
    pytest.param({"mode": "train"}, lambda x, g, b: (x.view(np.matrix), g, b), id="subclass-x"),
    pytest.param({"mode": "train"}, lambda x, g, b: (x.astype(np.float32), g, b), id="mixed-dtypes"),
    pytest.param({"mode": "train", "running_mean": np.ones(3, np.float32), "running_var": [1, 2, 3]},
                 lambda x, g, b: (x, g, b), id="running-converted"),
]


@pytest.mark.parametrize("params, variant", USUAL_AND_UNUSUAL)
def test_fast_args_give_the_fields_of_the_full_checks(params, variant):
    """One function checks each op: what it makes of an unusual (converted) call is what
    it accepts as is from the usual call of the same values."""
    from fastnorm import _validate

    args = variant(*inputs(N=4, D=3))
    dtype = np.result_type(*[np.asarray(a) for a in args])
    usual_args = [np.ascontiguousarray(np.asarray(a), dtype=dtype) for a in args]
    usual_params = {k: (np.ascontiguousarray(v, dtype=dtype) if isinstance(v, (np.ndarray, list))
                        else int(v) if k == "ddof" else float(v) if k != "mode" else v)
                    for k, v in params.items()}
    _same_fields(_validate.batchnorm_args(*args, dict(params)),
                 _validate.batchnorm_args(*usual_args, dict(usual_params)))
    ln_params = {k: v for k, v in params.items() if k in ("eps", "ddof")}
    usual_ln = {k: v for k, v in usual_params.items() if k in ("eps", "ddof")}
    _same_fields(_validate.layernorm_args(*args, dict(ln_params)),
                 _validate.layernorm_args(*usual_args, dict(usual_ln)))


def test_usual_call_keeps_the_given_arrays():
    from fastnorm import _validate

    x, g, b = inputs()
    rm, rv = np.zeros(3), np.ones(3)
    fields = _validate.batchnorm_args(x, g, b, {"mode": "train", "running_mean": rm, "running_var": rv})
    assert [type(f) for f in fields[3:7]] == [float, int, bool, float]
    assert fields[3:7] == (1e-5, 0, True, 0.9)
    assert all(a is e for a, e in zip(fields[:3] + fields[7:], (x, g, b, rm, rv)))


@pytest.mark.parametrize("params, exc, match", [
    ({"mode": "train", "running_mean": None}, TypeError, r"bn_param\['running_mean'\] must hold real numbers"),
    ({"mode": "train", "eps": float("inf")}, ValueError, r"bn_param\['eps'\] must be finite"),
    ({"mode": "train", "momentum": -0.0 - 1e-300}, ValueError, r"bn_param\['momentum'\]"),
    ({"mode": "train", "ddof": False}, ValueError, r"bn_param\['ddof'\] must be 0 or 1"),
    ({"mode": "train", "ddof": "1"}, ValueError, r"bn_param\['ddof'\] must be 0 or 1"),
    ({"mode": b"train"}, ValueError, r"bn_param\['mode'\] must be 'train' or 'test'"),
    ({"mode": np.array(["train"])}, ValueError, r"bn_param\['mode'\] must be 'train' or 'test'"),
])
def test_near_usual_bad_params_still_raise(params, exc, match):
    assert_rejected(fn.batchnorm_forward, inputs(), params, exc, match)


def test_ln_ddof_of_the_wrong_type_still_raises():
    x, g, b = inputs(D=1)
    assert_rejected(fn.layernorm_forward, (x, g, b), {"ddof": 1}, ValueError, r"ddof=1 needs more than 1 feature")
    assert_rejected(fn.layernorm_forward, inputs(), {"ddof": "1"}, ValueError, r"ln_param\['ddof'\] must be 0 or 1")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_outputs_are_separate_plain_arrays(dtype):
    """mean and inv_std (and the running statistics) share one buffer in the kernel call:
    each is still a (D,) C-contiguous array that no other output overlaps, and the
    written-back statistics take the fast path on the next call with the same results."""
    x, g, b = inputs(N=6, D=5, dtype=dtype)
    params = {"mode": "train"}
    _, cache = fn.batchnorm_forward(x, g, b, params)
    _, ln_cache = fn.layernorm_forward(x, g, b, {})
    named = {"mean": cache.mean, "inv_std": cache.inv_std, "ln mean": ln_cache.mean,
             "ln inv_std": ln_cache.inv_std, "running_mean": params["running_mean"],
             "running_var": params["running_var"]}
    for name, arr in named.items():
        assert type(arr) is np.ndarray and arr.ndim == 1 and arr.flags.c_contiguous, name
        assert arr.dtype == (dtype if name.startswith("running") else np.float64), name
        for other_name, other in named.items():
            assert other_name == name or not np.shares_memory(arr, other), (name, other_name)
    # the running statistics written back: a second call sees them as plain arrays
    copied = _DictSubclass({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in params.items()})
    out_fast, cache_fast = fn.batchnorm_forward(x, g, b, params)
    out_full, cache_full = fn.batchnorm_forward(x, g, b, copied)  # not a dict: the full checks
    np.testing.assert_array_equal(out_fast, out_full)
    for name in ("mean", "inv_std"):
        np.testing.assert_array_equal(getattr(cache_fast, name), getattr(cache_full, name))
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(params[key], copied[key])


class _DictSubclass(dict):
    pass


BACKWARD_SETUPS = [
    pytest.param(fn.batchnorm_forward, fn.batchnorm_backward, {"mode": "train"}, id="bn-train"),
    pytest.param(fn.batchnorm_forward, fn.batchnorm_backward, {"mode": "train", "ddof": 1}, id="bn-ddof1"),
    pytest.param(fn.batchnorm_forward, fn.batchnorm_backward,
                 {"mode": "test", "running_mean": np.ones(33), "running_var": np.full(33, 2.0)}, id="bn-test"),
    pytest.param(fn.layernorm_forward, fn.layernorm_backward, {}, id="ln"),
    pytest.param(fn.layernorm_forward, fn.layernorm_backward, {"ddof": 1}, id="ln-ddof1"),
]


@pytest.mark.parametrize("forward, backward, params", BACKWARD_SETUPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_usual_backward_matches_the_fully_checked_one(forward, backward, params, dtype):
    """The untouched cache takes the fast acceptance; a numpy-integer ddof or a Fortran
    dout goes through the full checks (and a conversion): bitwise the same gradients."""
    x, g, b = inputs(N=70, D=33, dtype=dtype)
    dout = np.random.default_rng(8).standard_normal(x.shape).astype(dtype)
    params = {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in params.items()}
    _, cache = forward(x, g, b, params)
    usual = backward(dout, cache)
    from_fortran = backward(np.asfortranarray(dout), cache)
    cache.ddof = np.int64(cache.ddof)
    full = backward(dout, cache)
    for u, f1, f2 in zip(usual, from_fortran, full):
        assert u.dtype == dtype and u.flags.c_contiguous
        assert u.tobytes() == f1.tobytes() == f2.tobytes()


@pytest.mark.parametrize("field, value, match", [
    ("mode", "eval", "cache.ddof or cache.mode was changed"),
    ("ddof", 2.0, "cache.ddof or cache.mode was changed"),
    ("gamma", np.ones(3, np.float32), r"cache.gamma must be a float64 array of shape \(3,\)"),
    ("mean", np.zeros(3).tolist(), r"cache.mean must be a float64 array"),
    ("inv_std", np.zeros(6)[::2], r"cache.inv_std must be a float64 array"),
])
def test_near_usual_caches_are_still_refused(field, value, match):
    assert_refused_with(field, value, match)
