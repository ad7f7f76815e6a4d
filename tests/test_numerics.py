"""Numerics on ill-conditioned inputs, against an extended-precision reference.

The reference (``exact_norm``) computes the mean and the centered values
x - mean exactly with rationals (fractions.Fraction), then the rest in
np.longdouble: its own error is far below float64's rounding.

Error measure: normwise relative error, max|got - exact| / max|exact|, for
out, dx, dgamma and dbeta separately.

Stated bounds (u = unit roundoff of the dtype, eps = 2u):
- float32: every output within 2 * eps32, whatever the offset: the statistics
  are accumulated in float64, so only a few float32 roundings of the final
  terms remain.
- float64: every output within 2 * eps64 * (1 + |offset| / sigma): the mean is
  held in float64, so it carries an error of up to u * |offset|, and that is
  what x - mean inherits. (A float64 input near 1e12 has spacing 1.2e-4.)
Where PyTorch is installed, fastnorm's error is also no larger than that of
PyTorch's CPU kernels on the same input (or below 4 * eps of the dtype, the
rounding level, where PyTorch is at that level too).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import fastnorm as fn

LD = np.longdouble
_to_fraction = np.vectorize(Fraction, otypes=[object])
_to_ld = np.vectorize(lambda f: LD(f.numerator) / LD(f.denominator), otypes=[LD])


def exact_norm(x, gamma, beta, dout, axis, eps=1e-5, ddof=0):
    """Forward and backward of batch norm (axis=0) or layer norm (axis=1),
    with exact mean and centering. Returns (out, dx, dgamma, dbeta) in longdouble."""
    xf = _to_fraction(np.asarray(x, dtype=np.float64))  # float32 -> float64 is exact
    n = x.shape[axis]
    mean = xf.sum(axis=axis, keepdims=True) / n
    centered = xf - mean
    var = _to_ld((centered * centered).sum(axis=axis, keepdims=True) / (n - ddof))
    inv_std = 1 / np.sqrt(var + LD(eps))
    xhat = _to_ld(centered) * inv_std
    g, b, dy = gamma.astype(LD), beta.astype(LD), dout.astype(LD)
    out = g * xhat + b
    gdy = dy * g
    dx = inv_std * (gdy - gdy.sum(axis=axis, keepdims=True) / n
                    - xhat * (gdy * xhat).sum(axis=axis, keepdims=True) / (n - ddof))
    return Exact((out, dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)), scales=(
        np.max(np.abs(out)),
        np.max(np.abs(inv_std * (np.abs(gdy) + np.abs(gdy).sum(axis=axis, keepdims=True) / n
                                 + np.abs(xhat) * np.abs(gdy * xhat).sum(axis=axis, keepdims=True)
                                 / (n - ddof)))),
        np.max(np.abs(dy * xhat).sum(axis=0)),
        np.max(np.abs(dy).sum(axis=0)),
    ))


class Exact(tuple):
    """The exact (out, dx, dgamma, dbeta), and for each the magnitude its error is
    measured against: max|out| for out; for the gradients, the largest sum of
    absolute terms (so a sum that cancels to nearly 0 is not judged relative
    to that tiny result)."""

    def __new__(cls, values, scales):
        self = super().__new__(cls, values)
        self.scales = scales
        return self

    def errors(self, got):
        return [float(np.max(np.abs(np.asarray(g, dtype=LD) - e)) / s)
                for g, e, s in zip(got, self, self.scales)]


def rel_err(got, exact):
    """Normwise relative error max|got - exact| / max|exact|."""
    got = np.asarray(got, dtype=LD)
    scale = np.max(np.abs(exact))
    return float(np.max(np.abs(got - exact)) / scale)


def fastnorm_run(kind, x, gamma, beta, dout, eps=1e-5, ddof=0):
    if kind == "batchnorm":
        out, cache = fn.batchnorm_forward(x, gamma, beta, {"mode": "train", "eps": eps, "ddof": ddof})
        return (out, *fn.batchnorm_backward(dout, cache))
    out, cache = fn.layernorm_forward(x, gamma, beta, {"eps": eps, "ddof": ddof})
    return (out, *fn.layernorm_backward(dout, cache))


def torch_run(kind, x, gamma, beta, dout, eps=1e-5):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy
    aten = torch.ops.aten
    mask = [True, True, True]
    if kind == "batchnorm":
        out, save_mean, save_invstd = aten.native_batch_norm(t(x), t(gamma), t(beta), None, None,
                                                             True, 0.1, eps)
        grads = aten.native_batch_norm_backward(t(dout), t(x), t(gamma), None, None, save_mean,
                                                save_invstd, True, eps, mask)
    else:
        shape = [x.shape[1]]
        out, mean, rstd = aten.native_layer_norm(t(x), shape, t(gamma), t(beta), eps)
        grads = aten.native_layer_norm_backward(t(dout), t(x), shape, mean, rstd, t(gamma), t(beta),
                                                mask)
    return tuple(a.numpy() for a in (out, *grads))


OUTPUTS = ("out", "dx", "dgamma", "dbeta")
OFFSET_CASES = [
    pytest.param(np.float32, 1e4, id="float32-1e4"),
    pytest.param(np.float32, 1e6, id="float32-1e6"),
    pytest.param(np.float64, 1e8, id="float64-1e8"),
    pytest.param(np.float64, 1e12, id="float64-1e12"),
]


def offset_problem(dtype, offset, seed=0, shape=(256, 24)):
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    D = shape[1]
    gamma = (1 + 0.2 * rng.standard_normal(D)).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dout


def offset_bound(dtype, offset):
    eps = np.finfo(dtype).eps
    if dtype == np.float32:
        return 2 * eps
    return 2 * eps * (1 + offset)  # sigma = 1


_AXIS = {"batchnorm": 0, "layernorm": 1}


@pytest.mark.parametrize("shape,ddof", [((256, 24), 0), ((256, 24), 1),
                                         ((700, 66), 0)])  # threaded, several tiles and lanes
@pytest.mark.parametrize("kind", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("dtype,offset", OFFSET_CASES)
def test_large_offset_within_stated_bound(dtype, offset, kind, shape, ddof):
    x, gamma, beta, dout = offset_problem(dtype, offset, shape=shape)
    exact = exact_norm(x, gamma, beta, dout, _AXIS[kind], ddof=ddof)
    got = fastnorm_run(kind, x, gamma, beta, dout, ddof=ddof)
    bound = offset_bound(dtype, offset)
    errors = dict(zip(OUTPUTS, exact.errors(got)))
    for name in OUTPUTS:
        assert errors[name] <= bound, f"{name}: error {errors[name]:.3e} > bound {bound:.3e} ({errors})"


@pytest.mark.parametrize("kind", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("dtype,offset", OFFSET_CASES)
def test_large_offset_no_worse_than_torch(dtype, offset, kind):
    x, gamma, beta, dout = offset_problem(dtype, offset, seed=1)
    theirs = torch_run(kind, x, gamma, beta, dout)
    exact = exact_norm(x, gamma, beta, dout, _AXIS[kind])
    ours = fastnorm_run(kind, x, gamma, beta, dout)
    floor = 4 * np.finfo(dtype).eps
    for name, e_ours, e_torch in zip(OUTPUTS, exact.errors(ours), exact.errors(theirs)):
        assert e_ours <= max(e_torch, floor), f"{name}: fastnorm {e_ours:.3e} vs torch {e_torch:.3e}"


@pytest.mark.parametrize("N", [65, 1024])   # two row blocks (the second of one row), sixteen
@pytest.mark.parametrize("dtype,offset", [(np.float32, 1e6), (np.float64, 1e7), (np.float64, 1e12)])
def test_batchnorm_statistics_across_row_blocks(dtype, offset, N):
    """The cached mean and inv_std and the running variance stay within a few
    float64 ulps of the exact ones when the kernel merges row blocks of a column
    with a large offset (block means rounded to doubles once cost up to 1e6 ulps)."""
    rng = np.random.default_rng(7)
    x = (offset + rng.standard_normal((N, 8))).astype(dtype)
    bn_param = {"mode": "train", "momentum": 0.0}
    _, cache = fn.batchnorm_forward(x, np.ones(8, dtype), np.zeros(8, dtype), bn_param)
    xf = _to_fraction(x.astype(np.float64))
    mean = xf.sum(axis=0) / N
    var = ((xf - mean) ** 2).sum(axis=0) / N
    exact_mean, exact_var = _to_ld(mean), _to_ld(var)
    exact_inv_std = 1 / np.sqrt(exact_var + LD(1e-5))
    ulp = np.finfo(np.float64).eps
    assert np.max(np.abs(cache.mean - exact_mean) / exact_mean) <= 2 * ulp
    assert np.max(np.abs(cache.inv_std - exact_inv_std) / exact_inv_std) <= 8 * ulp
    # stored in x's dtype: within a rounding of that dtype, or a few float64 ulps
    running_var = np.asarray(bn_param["running_var"], dtype=LD)
    bound = max(np.finfo(dtype).eps, 4 * ulp)
    assert np.max(np.abs(running_var - exact_var) / exact_var) <= bound


def test_exact_reference_catches_naive_variance():
    """The oracle itself: the E[x^2] - E[x]^2 formula in float64 must fail the
    float64 bound at offset 1e8 (otherwise the bound tests could not fail)."""
    x, gamma, beta, dout = offset_problem(np.float64, 1e8)
    mean = x.mean(axis=0)
    var = np.maximum((x * x).mean(axis=0) - mean * mean, 0.0)
    naive = gamma * (x - mean) / np.sqrt(var + 1e-5) + beta
    exact = exact_norm(x, gamma, beta, dout, 0)
    assert rel_err(naive, exact[0]) > offset_bound(np.float64, 1e8)


# ---------------------------------------------------------------------------
# Constant features (batch norm) and constant rows (layer norm)

CONSTANTS = [0.0, 0.1, -3.3e5, 1e7, 123456.789, 1e30, 5e-30]


def _with_constant_lines(dtype, n_lines, length, n_random, seed):
    """(n_lines, length): lines 0..len(CONSTANTS)-1 constant, the rest random."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_lines, length)) * 3 + 10
    for k, c in enumerate(CONSTANTS):
        a[k, :] = c
    return a.astype(dtype)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("N", [2, 3, 7, 100, 1000])  # 100 and 1000 merge several row blocks
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_features_give_exactly_beta(dtype, N, ddof):
    D = len(CONSTANTS) + 3
    x = np.ascontiguousarray(_with_constant_lines(dtype, D, N, 3, seed=N).T)  # (N, D)
    rng = np.random.default_rng(7)
    gamma = (1 + rng.standard_normal(D)).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    dout = rng.standard_normal((N, D)).astype(dtype)
    out, cache = fn.batchnorm_forward(x, gamma, beta, {"mode": "train", "ddof": ddof})
    dx, dgamma, dbeta = fn.batchnorm_backward(dout, cache)
    k = len(CONSTANTS)
    np.testing.assert_array_equal(out[:, :k], np.broadcast_to(beta[:k], (N, k)))
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dgamma)) and np.all(np.isfinite(dbeta))
    np.testing.assert_array_equal(dgamma[:k], 0)  # x_hat is exactly 0 there
    exact = exact_norm(x, gamma, beta, dout, 0, ddof=ddof)
    tol = 2 * np.finfo(dtype).eps
    errors = dict(zip(OUTPUTS, exact.errors((out, dx, dgamma, dbeta))))
    for name in OUTPUTS:
        assert errors[name] <= tol, (name, errors)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("D", [2, 3, 7, 9, 100, 1000])  # 9, 100, 1000 use the lane tail
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_rows_give_exactly_beta(dtype, D, ddof):
    N = len(CONSTANTS) + 3
    x = _with_constant_lines(dtype, N, D, 3, seed=D)
    rng = np.random.default_rng(8)
    gamma = (1 + rng.standard_normal(D)).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    dout = rng.standard_normal((N, D)).astype(dtype)
    out, cache = fn.layernorm_forward(x, gamma, beta, {"ddof": ddof})
    dx, dgamma, dbeta = fn.layernorm_backward(dout, cache)
    k = len(CONSTANTS)
    np.testing.assert_array_equal(out[:k], np.broadcast_to(beta, (k, D)))
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dgamma)) and np.all(np.isfinite(dbeta))
    exact = exact_norm(x, gamma, beta, dout, 1, ddof=ddof)
    errors = dict(zip(OUTPUTS, exact.errors((out, dx, dgamma, dbeta))))
    for name in OUTPUTS:
        assert errors[name] <= 2 * np.finfo(dtype).eps, (name, errors)


# ---------------------------------------------------------------------------
# float32 magnitudes near 1e30 and 1e-30

@pytest.mark.parametrize("eps", [0.0, 1e-5])
@pytest.mark.parametrize("kind", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_float32_extreme_magnitudes(scale, kind, eps):
    """Squares of 1e30 overflow float32 and squares of 1e-30 flush to zero in
    it; the results are representable, so they must come out right. (With
    eps=1e-5 and scale 1e-30, eps dominates the variance: still exact.)"""
    rng = np.random.default_rng(3)
    x = (scale * (0.5 + rng.standard_normal((40, 12)))).astype(np.float32)
    gamma = (1 + 0.2 * rng.standard_normal(12)).astype(np.float32)
    beta = rng.standard_normal(12).astype(np.float32)
    dout = rng.standard_normal((40, 12)).astype(np.float32)
    got = fastnorm_run(kind, x, gamma, beta, dout, eps=eps)
    exact = exact_norm(x, gamma, beta, dout, _AXIS[kind], eps=eps)
    for name, g, err in zip(OUTPUTS, got, exact.errors(got)):
        assert np.all(np.isfinite(g)), name
        assert err <= 2 * np.finfo(np.float32).eps, name
    if eps == 0.0:
        # the normalized output has unit variance per feature (row): nothing flushed
        axis = _AXIS[kind]
        xhat = (got[0] - beta) / gamma
        np.testing.assert_allclose(xhat.std(axis=axis, dtype=np.float64), 1.0, rtol=1e-5)


# ---------------------------------------------------------------------------
# NaN / Inf in one feature leaves the other features untouched (batch norm)

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 3), (200, 700)])  # the second runs threaded, several tiles
def test_batchnorm_nonfinite_feature_is_isolated(shape, dtype, bad):
    N, D = shape
    rng = np.random.default_rng(11)
    clean = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(D).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    k = D // 2
    dirty = clean.copy()
    dirty[N // 2, k] = bad
    others = np.arange(D) != k
    p_clean = {"mode": "train", "running_mean": np.ones(D, dtype), "running_var": np.ones(D, dtype)}
    p_dirty = {key: (v.copy() if isinstance(v, np.ndarray) else v) for key, v in p_clean.items()}
    out_c, cache_c = fn.batchnorm_forward(clean, gamma, beta, p_clean)
    out_d, cache_d = fn.batchnorm_forward(dirty, gamma, beta, p_dirty)
    np.testing.assert_array_equal(out_d[:, others], out_c[:, others])
    assert np.isnan(out_d[:, k]).all()
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(p_dirty[key][others], p_clean[key][others])
    grads_c = fn.batchnorm_backward(dout, cache_c)
    grads_d = fn.batchnorm_backward(dout, cache_d)
    for gc, gd in zip(grads_c, grads_d):
        np.testing.assert_array_equal(gd[..., others], gc[..., others])
    assert np.isnan(grads_d[0][:, k]).all() and np.isnan(grads_d[1][k])
    # test mode with the (partly non-finite) running statistics
    out_ct, _ = fn.batchnorm_forward(clean, gamma, beta, dict(p_clean, mode="test"))
    out_dt, _ = fn.batchnorm_forward(clean, gamma, beta, dict(p_dirty, mode="test"))
    np.testing.assert_array_equal(out_dt[:, others], out_ct[:, others])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_nonfinite_dout_feature_is_isolated(dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((300, 600)).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    _, cache = fn.batchnorm_forward(x, np.ones(600, dtype), np.zeros(600, dtype), {"mode": "train"})
    clean = fn.batchnorm_backward(dout, cache)
    dout[17, 5] = np.nan
    dirty = fn.batchnorm_backward(dout, cache)
    others = np.arange(600) != 5
    for gc, gd in zip(clean, dirty):
        np.testing.assert_array_equal(gd[..., others], gc[..., others])
        assert np.isnan(gd[..., 5]).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_nonfinite_row_is_isolated(dtype, bad):
    rng = np.random.default_rng(13)
    clean = rng.standard_normal((150, 300)).astype(dtype)
    gamma = rng.standard_normal(300).astype(dtype)
    beta = rng.standard_normal(300).astype(dtype)
    dout = rng.standard_normal(clean.shape).astype(dtype)
    dirty = clean.copy()
    dirty[70, 3] = bad
    others = np.arange(150) != 70
    out_c, cache_c = fn.layernorm_forward(clean, gamma, beta, {})
    out_d, cache_d = fn.layernorm_forward(dirty, gamma, beta, {})
    np.testing.assert_array_equal(out_d[others], out_c[others])
    assert np.isnan(out_d[70]).all()
    # the row's cached mean is what a plain sum gives, in both dtypes: inf stays inf
    np.testing.assert_array_equal(cache_d.mean[70], bad)
    dx_c = fn.layernorm_backward(dout, cache_c)[0]
    dx_d = fn.layernorm_backward(dout, cache_d)[0]
    np.testing.assert_array_equal(dx_d[others], dx_c[others])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_infinities_give_what_the_reference_gives(dtype):
    """An infinite dout, running mean or gamma gives the reference's infinities
    in both dtypes: float32's residue correction once made NaNs of them
    (0 * inf, inf - inf)."""
    from fastnorm import reference as ref

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7)).astype(dtype)
    gamma, beta = np.ones(7, dtype), np.zeros(7, dtype)
    with np.errstate(all="ignore"):
        dout = rng.standard_normal((5, 7)).astype(dtype)
        dout[2, 2] = np.inf
        _, cache = fn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
        _, ref_cache = ref.batchnorm_forward(x, gamma, beta, {"mode": "train"})
        np.testing.assert_array_equal(fn.batchnorm_backward(dout, cache)[1][2],
                                      ref.batchnorm_backward_alt(dout, ref_cache)[1][2])
        running_mean = np.zeros(7, dtype)
        running_mean[2] = np.inf
        test = {"mode": "test", "running_mean": running_mean, "running_var": np.ones(7, dtype)}
        np.testing.assert_array_equal(fn.batchnorm_forward(x, gamma, beta, dict(test))[0][:, 2],
                                      ref.batchnorm_forward(x, gamma, beta, dict(test))[0][:, 2])
        gamma_inf = gamma.copy()
        gamma_inf[2] = np.inf
        out = fn.batchnorm_forward(x, gamma_inf, beta, {"mode": "train"})[0][:, 2]
        np.testing.assert_array_equal(out, ref.batchnorm_forward(x, gamma_inf, beta, {"mode": "train"})[0][:, 2])
        assert np.isinf(out).all()
