"""Instruction-set levels: the chooser of fastnorm/_build.py (on fake CPUs), the
real CPU check, forcing a level in a fresh process, and every level this CPU
runs giving bitwise the baseline's results. Deterministic checks only (no timing)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import _build

from kernel_builds import BASELINE, HAVE_AVX512, RUNNABLE

ALL = ["baseline", "avx2", "avx512"]


def cpu(*levels):
    """A fake cpu_supports for a CPU that runs the given levels (and baseline)."""
    return lambda level: level == "baseline" or level in levels


@pytest.mark.parametrize("runs, built, want", [
    ((), ALL, "baseline"),
    (("avx2",), ALL, "avx2"),
    (("avx2", "avx512"), ALL, "avx512"),
    (("avx2", "avx512"), ["baseline", "avx2"], "avx2"),        # FASTNORM_NO_AVX512 build
    (("avx2", "avx512"), ["baseline"], "baseline"),            # debug build
    (("avx2", "avx512"), ["baseline", "avx512"], "avx512"),
    (("avx512",), ["baseline", "avx2", "avx512"], "avx512"),   # the chooser asks the CPU per level
])
def test_auto_takes_the_highest_level_built_that_the_cpu_runs(runs, built, want):
    assert _build.choose_isa("auto", cpu(*runs), built) == want


@pytest.mark.parametrize("level", ALL)
def test_a_forced_level_is_taken_where_it_runs(level):
    assert _build.choose_isa(level, cpu("avx2", "avx512"), ALL) == level


@pytest.mark.parametrize("level, needs", [("avx2", "AVX2 and FMA"), ("avx512", "AVX-512")])
def test_a_forced_level_the_cpu_cannot_run_is_an_import_error(level, needs):
    with pytest.raises(ImportError, match=f"FASTNORM_KERNELS={level}, but this CPU does not support {needs}"):
        _build.choose_isa(level, cpu(), ALL)
    # an AVX2 CPU cannot run AVX-512 either
    if level == "avx512":
        with pytest.raises(ImportError, match="does not support AVX-512"):
            _build.choose_isa(level, cpu("avx2"), ALL)


def test_a_forced_level_not_built_is_an_import_error():
    with pytest.raises(ImportError, match="built without its avx512 kernels"):
        _build.choose_isa("avx512", cpu("avx2", "avx512"), ["baseline", "avx2"])


@pytest.mark.parametrize("wanted", ["bogus", "AVX-512", "sse2", ""])
def test_an_unknown_level_is_an_import_error(wanted):
    with pytest.raises(ImportError, match="FASTNORM_KERNELS must be auto, baseline or avx2 .or avx512."):
        _build.choose_isa(wanted, cpu("avx2", "avx512"), ALL)


def _cpuinfo_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


@pytest.mark.skipif(_cpuinfo_flags() is None, reason="needs Linux's /proc/cpuinfo")
def test_the_cpu_check_agrees_with_the_kernel_view_of_the_cpu():
    flags = _cpuinfo_flags()
    avx2 = {"avx2", "fma"} <= flags
    avx512 = avx2 and {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags
    assert BASELINE.cpu_supports("baseline")
    assert BASELINE.cpu_supports("avx2") == avx2 == BASELINE.cpu_has_avx2_fma()
    assert BASELINE.cpu_supports("avx512") == avx512
    with pytest.raises(ValueError, match="isa must be"):
        BASELINE.cpu_supports("avx1024")


def test_kernel_isa_names_the_build_that_runs():
    assert fn.kernel_isa() == _build.load_kernels().ISA == fn.normalization._kernels.ISA
    if os.environ.get("FASTNORM_KERNELS", "auto").strip().lower() in ("", "auto"):
        assert fn.kernel_isa() == RUNNABLE[-1].ISA
    isas = [m.ISA for m in RUNNABLE]
    assert isas[0] == "baseline" and isas == sorted(set(isas), key=ALL.index)


def _isa_in_a_fresh_process(wanted, tmp_path):
    code = "import fastnorm; print(fastnorm.kernel_isa())"
    package_parent = str(Path(_build.__file__).resolve().parents[1])
    env = dict(os.environ, FASTNORM_KERNELS=wanted, PYTHONPATH=package_parent)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


def test_forcing_avx512_runs_it_or_says_why_not(tmp_path):
    result = _isa_in_a_fresh_process("avx512", tmp_path)
    if HAVE_AVX512:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "avx512"
    else:
        assert result.returncode != 0
        assert "ImportError: FASTNORM_KERNELS=avx512, but" in result.stderr
        assert ("does not support AVX-512" in result.stderr
                or "built without its avx512 kernels" in result.stderr)


def _every_op(kernels, x, gamma, beta, dout, n_threads):
    """Every compiled op of one build on the same inputs, in train and test mode."""
    N, D = x.shape
    dt = x.dtype
    rm, rv = beta[::-1].copy(), gamma * gamma + dt.type(0.5)
    outputs = []
    for train in (True, False):
        out, stats, running = np.empty_like(x), np.empty((2, D)), np.empty((2, D), dt)
        kernels.batchnorm_forward(x, gamma, beta, rm, rv, train, 0.9, 1e-5, 1, out, stats, running,
                                  n_threads)
        dx, dgamma, dbeta = np.empty_like(x), np.empty(D, dt), np.empty(D, dt)
        kernels.batchnorm_backward(dout, x, stats[0], stats[1], gamma, train, 1, dx, dgamma, dbeta,
                                   n_threads)
        outputs += [out, stats, running, dx, dgamma, dbeta]
    lout, lstats = np.empty_like(x), np.empty((2, N))
    kernels.layernorm_forward(x, gamma, beta, 1e-5, 0, lout, lstats, n_threads)
    ldx, ldgamma, ldbeta = np.empty_like(x), np.empty(D, dt), np.empty(D, dt)
    kernels.layernorm_backward(dout, x, lstats[0], lstats[1], gamma, 0, ldx, ldgamma, ldbeta, n_threads)
    mean, m2, sum_dy, sum_dy_xc = (np.empty(D) for _ in range(4))
    kernels.column_moments(x, mean, m2, n_threads)
    kernels.column_grad_sums(dout, x, mean, sum_dy, sum_dy_xc, n_threads)
    bdx = np.empty_like(x)
    kernels.column_dx(dout, x, mean, 1 / np.sqrt(m2 / N + 1e-5), gamma, sum_dy, sum_dy_xc, 3.0 * N,
                      0, True, bdx, n_threads)
    w, dw = x.ravel(), dout.ravel()
    next_w, m_out, v_out = np.empty_like(w), np.empty_like(w), np.empty_like(w)
    kernels.adam_update(w, dw, 0.1 * dw, dw * dw, 1e-3, 0.9, 0.999, 0.19, 0.003, 1e-8, next_w, m_out,
                        v_out)
    return outputs + [lout, lstats, ldx, ldgamma, ldbeta, mean, m2, sum_dy, sum_dy_xc, bdx,
                      next_w, m_out, v_out]


@pytest.mark.parametrize("build", RUNNABLE[1:], ids=lambda m: m.ISA)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (65, 529), (130, 600), (8, 8200)])
def test_every_level_gives_bitwise_the_baseline_results(build, shape, dtype):
    rng = np.random.default_rng(shape[1])
    x = (1e4 + 3.0 * rng.standard_normal(shape)).astype(dtype)
    x[:, ::5] = dtype(1e4 + 0.25)   # constant columns
    gamma, beta = (rng.standard_normal(shape[1]).astype(dtype) for _ in range(2))
    dout = rng.standard_normal(shape).astype(dtype)
    for a, b in zip(_every_op(BASELINE, x, gamma, beta, dout, 2), _every_op(build, x, gamma, beta, dout, 2)):
        np.testing.assert_array_equal(a, b)


def _row_walks(kernels, x, G, n_threads):
    """Layer norm over x's rows and group norm over x as (N, C, P) with G groups: the
    forwards whose row moments walk the rows in turn (a row's squares with the next
    row's sum, src/moments.pxd.tp row_moments_ahead)."""
    N, C, P = x.shape
    rows = x.reshape(N, C * P)
    gamma_d, gamma_c = (np.linspace(-2, 2, n).astype(x.dtype) for n in (C * P, C))
    out, stats = np.empty_like(rows), np.empty((2, N))
    kernels.layernorm_forward(rows, gamma_d, gamma_d[::-1].copy(), 1e-5, 0, out, stats, n_threads)
    gout, gstats = np.empty_like(x), np.empty((2, N * G))
    kernels.groupnorm_forward(x, gamma_c, gamma_c[::-1].copy(), G, 1e-5, gout, gstats, n_threads)
    return out, stats, gout, gstats


@pytest.mark.parametrize("build", RUNNABLE[1:], ids=lambda m: m.ISA)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, G", [
    ((5, 1, 127), 1),      # rows just short of the vector lanes of float32 rows (F32_VECTOR_ROW)
    ((5, 1, 128), 1),      # the first such rows, no tail
    ((3, 4, 75), 2),       # 300 values a row: a tail of 12 after the lanes; group rows of 150
    ((33, 2, 520), 2),     # 34320 values: two threads, an odd number of rows each
    ((1, 4, 9216), 1),     # one group row for two threads: the second takes none
])
def test_row_walks_give_the_baseline_bits_on_every_level(build, shape, G, dtype):
    rng = np.random.default_rng(shape[2])
    x = (1e3 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    x[-1] = dtype(1e3 + 0.25)   # a constant last row: its mean exactly, m2 == 0
    for n_threads in (1, 2):
        want = _row_walks(BASELINE, x, G, n_threads)
        for a, b in zip(want, _row_walks(build, x, G, n_threads)):
            np.testing.assert_array_equal(a, b)
        assert np.all(want[1][1, -1] == 1 / np.sqrt(1e-5))   # the constant row's inv_std


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, G", [
    ((7, 2, 100), 2),      # a walk in cache: each row's squares with the next row's sum
    ((130, 2, 2050), 1),   # 4.2 MB of float64: rows from memory, a float64 walk reads each alone
])
def test_a_row_in_a_walk_is_the_row_alone(shape, G, dtype):
    """Layer norm and group norm rows are independent: a row's results in a call over
    many rows are bitwise those of the row alone, whichever way the walk sums them."""
    rng = np.random.default_rng(3)
    offsets = 100.0 * np.arange(shape[0]).reshape(-1, 1, 1)   # each row's mean far from the last's
    x = (offsets + rng.standard_normal(shape)).astype(dtype)
    kernels = _build.load_kernels()
    whole = _row_walks(kernels, x, G, 2)
    for i in (0, 1, shape[0] // 2, shape[0] - 1):
        alone = _row_walks(kernels, x[i:i + 1].copy(), G, 1)
        np.testing.assert_array_equal(whole[0][i], alone[0][0])
        np.testing.assert_array_equal(whole[1][:, i], alone[1][:, 0])
        np.testing.assert_array_equal(whole[2][i], alone[2][0])
        np.testing.assert_array_equal(whole[3][:, i * G:(i + 1) * G], alone[3])
