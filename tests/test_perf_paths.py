"""The code paths added for speed: the AVX2 build and its dispatch, the strip and
row-block splits of the kernels, float32 element-wise math, the fast Python path.
Deterministic checks only (no timing)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import _build
from fastnorm import reference as ref

from kernel_builds import AVX2, BASELINE, HAVE_AVX512, HAVE_BOTH

BUILDS = ["_kernels", "_kernels_avx2"]


def _run_all(kernels, x, gamma, beta, dout, n_threads):
    """Every kernel of one build on the same inputs; returns all outputs."""
    N, D = x.shape
    dt = x.dtype
    zeros = np.zeros(D, dt)
    out, stats, running = np.empty_like(x), np.empty((2, D)), np.empty((2, D), dt)
    kernels.batchnorm_forward(x, gamma, beta, zeros, zeros, N > 1, 0.9, 1e-5, 0, out, stats, running,
                              n_threads)
    (mean, inv_std), (rmean, rvar) = stats, running
    dx, dgamma, dbeta = np.empty_like(x), np.empty(D, dt), np.empty(D, dt)
    kernels.batchnorm_backward(dout, x, mean, inv_std, gamma, N > 1, 0, dx, dgamma, dbeta, n_threads)
    lout, lstats = np.empty_like(x), np.empty((2, N))
    kernels.layernorm_forward(x, gamma, beta, 1e-5, 0, lout, lstats, n_threads)
    lmean, linv = lstats
    ldx, ldgamma, ldbeta = np.empty_like(x), np.empty(D, dt), np.empty(D, dt)
    kernels.layernorm_backward(dout, x, lmean, linv, gamma, 0, ldx, ldgamma, ldbeta, n_threads)
    return [out, mean, inv_std, rmean, rvar, dx, dgamma, dbeta, lout, lmean, linv, ldx, ldgamma, ldbeta]


def _inputs(N, D, dtype, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    x = (offset + 2.0 * rng.standard_normal((N, D))).astype(dtype)
    gamma = rng.standard_normal(D).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    dout = rng.standard_normal((N, D)).astype(dtype)
    return x, gamma, beta, dout


# shapes around the strips (16 columns, 8 rows), the tiles (64 rows, 512 columns)
# and both layer-norm backward splits (wide: < 4 row blocks; tall: one pass per block)
SHAPES = [(1, 1), (3, 17), (9, 33), (64, 512), (65, 529), (255, 40), (256, 40), (300, 7),
          (8, 4100), (520, 1031)]


def test_dispatch_follows_the_cpu():
    chosen = _build.load_kernels()
    assert fn.normalization._kernels is chosen
    forced = os.environ.get("FASTNORM_KERNELS", "auto").strip().lower()
    if forced in ("baseline", "avx2", "avx512"):
        assert chosen.ISA == forced
    elif HAVE_AVX512:
        assert chosen.ISA == "avx512"
    elif HAVE_BOTH:
        assert chosen.ISA == "avx2"
    else:
        assert chosen.ISA == "baseline"


@pytest.mark.parametrize("wanted", ["baseline", "bogus"])
def test_forced_choice_in_a_fresh_process(wanted, tmp_path):
    code = "import fastnorm._build as b; print(b.load_kernels().ISA)"
    # the fastnorm these tests import (installed or built in place), not the working directory's
    package_parent = str(Path(_build.__file__).resolve().parents[1])
    env = dict(os.environ, FASTNORM_KERNELS=wanted, PYTHONPATH=package_parent)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    if wanted == "baseline":
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "baseline"
    else:
        assert result.returncode != 0
        assert "FASTNORM_KERNELS must be auto, baseline or avx2" in result.stderr


@pytest.mark.skipif(not HAVE_BOTH, reason="needs the AVX2 build and a CPU that runs it")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_both_builds_give_bitwise_the_same_results(shape, dtype):
    args = _inputs(*shape, dtype)
    for a, b in zip(_run_all(BASELINE, *args, 2), _run_all(AVX2, *args, 2)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_one_and_two_threads_bitwise_equal_on_every_split(shape, dtype):
    kernels = _build.load_kernels()
    args = _inputs(*shape, dtype, seed=1)
    for a, b in zip(_run_all(kernels, *args, 1), _run_all(kernels, *args, 2)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(9, 33), (300, 7), (8, 4100), (520, 1031)])
def test_layernorm_backward_splits_match_the_reference(shape, dtype):
    x, gamma, beta, dout = _inputs(*shape, dtype, seed=2)
    _, cache = fn.layernorm_forward(x, gamma, beta, {})
    got = fn.layernorm_backward(dout, cache)
    x64, g64, b64, d64 = (a.astype(np.float64) for a in (x, gamma, beta, dout))
    _, rcache = ref.layernorm_forward(x64, g64, b64, {})
    want = ref.layernorm_backward(d64, rcache)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    dx_scale = np.abs(d64).max() * np.abs(g64).max() * cache.inv_std.max()
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=tol * dx_scale)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.abs(w).max())


@pytest.mark.parametrize("offset", [1e4, -3e6])
def test_float32_math_keeps_large_offsets_centered(offset):
    """float32 sweeps subtract a float32 part of the double mean, then its residue."""
    x, gamma, beta, dout = _inputs(200, 37, np.float32, seed=3, offset=offset)
    x64, g64, b64, d64 = (a.astype(np.float64) for a in (x, gamma, beta, dout))
    for forward, backward, rforward, rbackward, param in [
        (fn.batchnorm_forward, fn.batchnorm_backward, ref.batchnorm_forward,
         ref.batchnorm_backward_alt, {"mode": "train"}),
        (fn.layernorm_forward, fn.layernorm_backward, ref.layernorm_forward,
         ref.layernorm_backward, {}),
    ]:
        out, cache = forward(x, gamma, beta, dict(param))
        rout, rcache = rforward(x64, g64, b64, dict(param))
        np.testing.assert_allclose(out, rout, rtol=0, atol=1e-5 * np.abs(rout).max())
        dx = backward(dout, cache)[0]
        rdx = rbackward(d64, rcache)[0]
        scale = np.abs(d64).max() * np.abs(g64).max() * cache.inv_std.max()
        np.testing.assert_allclose(dx, rdx, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(9, 17), (70, 33), (130, 1030)])
def test_constant_features_in_strip_tails_give_beta(shape, dtype):
    N, D = shape
    x, gamma, beta, _ = _inputs(N, D, dtype, seed=4)
    x[:, -1] = dtype(0.1)    # last column: in the tail of the last strip
    x[:, 5] = dtype(1e7 + 0.5)
    out, _ = fn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_array_equal(out[:, -1], np.full(N, beta[-1]))
    np.testing.assert_array_equal(out[:, 5], np.full(N, beta[5]))
    x[3] = dtype(-2.5e-3)
    out, _ = fn.layernorm_forward(x, gamma, beta, {})
    np.testing.assert_array_equal(out[3], beta)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_buffers_bitwise_equal_to_allocating_calls(dtype):
    x, gamma, beta, dout = _inputs(130, 33, dtype, seed=5)
    out, cache = fn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    buf = np.empty_like(x)
    out2, _ = fn.batchnorm_forward(x, gamma, beta, {"mode": "train"}, out=buf)
    assert out2 is buf
    np.testing.assert_array_equal(out, buf)
    grads = fn.batchnorm_backward(dout, cache)
    bufs = (np.empty_like(x), np.empty(33, dtype), np.empty(33, dtype))
    grads2 = fn.batchnorm_backward(dout, cache, out=bufs)
    for a, b, c in zip(grads, grads2, bufs):
        assert b is c
        np.testing.assert_array_equal(a, b)


def test_fast_python_path_keeps_the_checks():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="bn_param\\['eps'\\]"):
        fn.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train", "eps": float("nan")})
    with pytest.raises(ValueError, match="ddof"):
        fn.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train", "ddof": 2})
    with pytest.raises(ValueError, match="gamma"):
        fn.layernorm_forward(x, np.ones(4), np.zeros(3), {})
    # mixed dtypes still compute in NumPy's result type
    out, _ = fn.layernorm_forward(x.astype(np.float32), np.ones(3), np.zeros(3), {})
    assert out.dtype == np.float64
    # a present but None running statistic is not an absent one
    with pytest.raises(TypeError, match="running_var"):
        fn.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train", "running_var": None})
    # the backward's quick acceptance of an untouched cache still checks an altered one
    _, cache = fn.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    cache.mean = cache.mean[:2]
    with pytest.raises(ValueError, match="cache.mean"):
        fn.batchnorm_backward(np.ones_like(x), cache)
