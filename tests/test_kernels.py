"""The compiled kernels against the NumPy reference, over a property-based matrix.

Shapes include N=1 and D=1 and sizes that span several reduction tiles; both
dtypes; eps, momentum and ddof; test mode after train mode; C, Fortran,
strided and read-only inputs.

The oracle is the reference run in float64 on the same (possibly float32)
inputs. Tolerances are relative to the scale of the terms that are summed:
max|out| for outputs, max|gamma| * max|dout| * max(inv_std) for dx (whose
terms cancel), max|dgamma|, max|dbeta|: float64 1e-9 (observed ~1e-13),
float32 1e-5 (the kernels compute in double: only the output is rounded).
The NumPy reference run in float32 computes in float32, so its error grows
with offset/spread and as 1/|x - mean|: it is held to 1e-3, on centered data.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastnorm as fn
from fastnorm import reference as ref

TOL = {np.float32: 1e-5, np.float64: 1e-9}
REFERENCE_TOL = {np.float32: 1e-3, np.float64: 1e-9}

# (N, D) around the tile edges (64 rows, 512 columns, 8 lanes) and the extremes
EDGE_SHAPES = [(1, 1), (1, 7), (2, 1), (3, 9), (64, 512), (65, 513), (130, 17), (7, 1100)]


def assert_close(actual, expected, dtype, scale=None, tol=None):
    if scale is None:
        scale = float(np.max(np.abs(expected)))
    tol = TOL[dtype] if tol is None else tol
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(scale, 1e-30))
    assert actual.dtype == dtype


def assert_grads_close(got, expected, dtype, dout, gamma, inv_std, tol=None):
    """dx is compared on the scale of its cancelling terms, dgamma and dbeta on their own."""
    dx_scale = np.max(np.abs(dout)) * np.max(np.abs(gamma)) * np.max(inv_std)
    assert_close(got[0], expected[0], dtype, scale=dx_scale, tol=tol)
    assert_close(got[1], expected[1], dtype, tol=tol)
    assert_close(got[2], expected[2], dtype, tol=tol)


def f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


def make_inputs(seed, N, D, dtype, offset=3.0, spread=2.0):
    rng = np.random.default_rng(seed)
    x = (offset + spread * rng.standard_normal((N, D))).astype(dtype)
    gamma = rng.standard_normal(D).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    dout = rng.standard_normal((N, D)).astype(dtype)
    return x, gamma, beta, dout


def layout(a, kind):
    """The same values in another memory layout."""
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "strided":
        wide = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
        wide[:, ::2] = a
        return wide[:, ::2]
    if kind == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    return a


dtypes = st.sampled_from([np.float32, np.float64])
shapes = st.one_of(
    st.sampled_from(EDGE_SHAPES),
    st.tuples(st.integers(1, 300), st.integers(1, 300)),
)
layouts = st.sampled_from(["c", "fortran", "strided", "readonly"])


@given(seed=st.integers(0, 2**32 - 1), shape=shapes, dtype=dtypes, ddof=st.sampled_from([0, 1]),
       eps=st.sampled_from([1e-5, 1e-3, 0.5]), momentum=st.floats(0.0, 1.0), kind=layouts,
       offset=st.sampled_from([0.0, 12.0, -300.0]))
def test_batchnorm_matches_reference(seed, shape, dtype, ddof, eps, momentum, kind, offset):
    N, D = shape
    if N <= ddof:
        N = ddof + 1
    x, gamma, beta, dout = make_inputs(seed, N, D, dtype, offset=offset)
    rng = np.random.default_rng(seed + 1)
    running = {"running_mean": rng.standard_normal(D).astype(dtype),
               "running_var": rng.random(D).astype(dtype) + 0.5}
    p_fast = {"mode": "train", "eps": eps, "momentum": momentum, "ddof": ddof, **running}
    p_ref = {"mode": "train", "eps": eps, "momentum": momentum, "ddof": ddof,
             **{k: v.astype(np.float64) for k, v in running.items()}}
    p_ref32 = {**p_fast}

    out, cache = fn.batchnorm_forward(layout(x, kind), layout(gamma, "c"), beta, p_fast)
    out_ref, cache_ref = ref.batchnorm_forward(*f64(x, gamma, beta), p_ref)
    assert_close(out, out_ref, dtype)
    for key in ("running_mean", "running_var"):
        assert_close(p_fast[key], p_ref[key], dtype)
        assert p_fast[key].dtype == dtype

    grads = fn.batchnorm_backward(layout(dout, kind), cache)
    grads_graph = ref.batchnorm_backward(np.float64(dout), cache_ref)
    assert_grads_close(grads, grads_graph, dtype, dout, gamma, cache.inv_std)
    # the reference in the input dtype: graph and simplified forms agree
    _, cache_ref32 = ref.batchnorm_forward(x, gamma, beta, p_ref32)
    in_dtype_backwards = (ref.batchnorm_backward, ref.batchnorm_backward_alt)
    for backward in () if offset and dtype == np.float32 else in_dtype_backwards:
        assert_grads_close(backward(dout, cache_ref32), grads_graph, dtype, dout, gamma, cache.inv_std,
                           tol=REFERENCE_TOL[dtype])

    # test mode on the running statistics the train pass wrote back
    p_fast["mode"] = p_ref["mode"] = "test"
    p_ref["running_mean"], p_ref["running_var"] = f64(p_fast["running_mean"], p_fast["running_var"])
    out, cache = fn.batchnorm_forward(x, gamma, beta, p_fast)
    out_ref, cache_ref = ref.batchnorm_forward(*f64(x, gamma, beta), p_ref)
    assert_close(out, out_ref, dtype)
    assert_grads_close(fn.batchnorm_backward(dout, cache), ref.batchnorm_backward(np.float64(dout), cache_ref),
                       dtype, dout, gamma, cache.inv_std)


@given(seed=st.integers(0, 2**32 - 1), shape=shapes, dtype=dtypes, ddof=st.sampled_from([0, 1]),
       eps=st.sampled_from([1e-5, 1e-3, 0.5]), kind=layouts, offset=st.sampled_from([0.0, 12.0, -300.0]))
def test_layernorm_matches_reference(seed, shape, dtype, ddof, eps, kind, offset):
    N, D = shape
    if D <= ddof:
        D = ddof + 1
    x, gamma, beta, dout = make_inputs(seed, N, D, dtype, offset=offset)
    params = {"eps": eps, "ddof": ddof}
    out, cache = fn.layernorm_forward(layout(x, kind), gamma, layout(beta, "c"), params)
    out_ref, cache_ref = ref.layernorm_forward(*f64(x, gamma, beta), params)
    assert_close(out, out_ref, dtype)
    expected = ref.layernorm_backward(np.float64(dout), cache_ref)
    assert_grads_close(fn.layernorm_backward(layout(dout, kind), cache), expected,
                       dtype, dout, gamma, cache.inv_std)
    if not (offset and dtype == np.float32):
        _, cache_ref32 = ref.layernorm_forward(x, gamma, beta, params)
        assert_grads_close(ref.layernorm_backward(dout, cache_ref32), expected, dtype, dout, gamma,
                           cache.inv_std, tol=REFERENCE_TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_edge_shapes_both_norms(shape, dtype):
    N, D = shape
    x, gamma, beta, dout = make_inputs(7, N, D, dtype, offset=12.0, spread=5.0)
    for forward, backward, forward_ref, backward_ref, params in (
        (fn.batchnorm_forward, fn.batchnorm_backward, ref.batchnorm_forward, ref.batchnorm_backward,
         {"mode": "train"}),
        (fn.layernorm_forward, fn.layernorm_backward, ref.layernorm_forward, ref.layernorm_backward, {}),
    ):
        out, cache = forward(x, gamma, beta, dict(params))
        out_ref, cache_ref = forward_ref(*f64(x, gamma, beta), dict(params))
        assert_close(out, out_ref, dtype)
        assert_grads_close(backward(dout, cache), backward_ref(np.float64(dout), cache_ref),
                           dtype, dout, gamma, cache.inv_std)


def test_single_row_batchnorm_gives_beta_and_zero_dx():
    """N=1, ddof 0: every feature is constant over the batch."""
    x = np.array([[1.5, -2.0, 1e8]])
    gamma, beta = np.array([2.0, 3.0, 4.0]), np.array([0.1, 0.2, 0.3])
    out, cache = fn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_array_equal(out, beta[None, :])
    dx, dgamma, dbeta = fn.batchnorm_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(dgamma, 0.0)
    np.testing.assert_array_equal(dbeta, 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_feature_and_row_normalize_to_exactly_beta(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 700)).astype(dtype)
    x[:, 5] = dtype(0.1)          # not exactly representable: the naive mean rounds
    x[:, 600] = dtype(-1234.5678)
    gamma = rng.standard_normal(700).astype(dtype)
    beta = rng.standard_normal(700).astype(dtype)
    out, cache = fn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert out[:, 5].tolist() == [beta[5]] * 300
    assert out[:, 600].tolist() == [beta[600]] * 300
    dx, _, _ = fn.batchnorm_backward(rng.standard_normal((300, 700)).astype(dtype), cache)
    assert np.all(np.isfinite(dx))

    x_rows = np.repeat(np.array([[0.1], [3e7]], dtype), 700, axis=1)
    out, _ = fn.layernorm_forward(x_rows, gamma, beta, {})
    np.testing.assert_array_equal(out, np.broadcast_to(beta, out.shape))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_centered_variance_survives_large_offsets(dtype):
    """E[x^2]-E[x]^2 loses everything here; the centered two-pass does not."""
    rng = np.random.default_rng(1)
    offset = 1e4 if dtype == np.float32 else 1e8
    x = (offset + rng.standard_normal((512, 64))).astype(dtype)
    exact = x.astype(np.longdouble)
    exact = (exact - exact.mean(0)) / np.sqrt(exact.var(0) + 1e-5)
    out, _ = fn.batchnorm_forward(x, np.ones(64, dtype), np.zeros(64, dtype), {"mode": "train"})
    assert np.max(np.abs(out - exact)) < (1e-4 if dtype == np.float32 else 1e-7)
