# Stub of the compiled module fastnorm._kernels (src/_kernels.pyx); its AVX2+FMA
# and AVX-512 builds fastnorm._kernels_avx2 and fastnorm._kernels_avx512 re-export
# this interface (_kernels_avx2.pyi, _kernels_avx512.pyi).
#
# Every array is C-contiguous. The aliases name the C types of the arguments:
# _F is `floating` (float32 or float64, one dtype for every _F of a call), _D
# `double`; their memoryviews are `const` for inputs. Shapes are in the comment
# above each function; OUT marks what the kernel writes. Callers
# (fastnorm.normalization, normalization_nd, distributed) validate and allocate.
import numpy as np
from numpy.typing import NDArray

_F = NDArray[np.float32] | NDArray[np.float64]   # floating[...]
_D = NDArray[np.float64]                         # double[...]
_Threads = int                                   # int n_threads: the OpenMP team size asked for

SOURCE_HASH: str  # hash of src/ when built: a stale in-place build is refused
ISA: str          # "baseline", "avx2" or "avx512": which build this is

def cpu_has_avx2_fma() -> bool: ...
def cpu_supports(isa: str) -> bool: ...  # can this CPU and OS run the build of level isa
def openmp_enabled() -> bool: ...
def max_threads() -> int: ...
def set_stream_bytes(n: int) -> int: ...  # outputs of n bytes on are streamed; returns the old n

# ------------------------------------------------- batch norm and layer norm on (N, D)
# x, out (N, D); gamma, beta, running_* (D,); stats (2, D) OUT mean, inv_std;
# running_out (2, D) OUT running mean, running var; ddof 0 or 1.
def batchnorm_forward(x: _F, gamma: _F, beta: _F, running_mean: _F, running_var: _F, train: bool,
                      momentum: float, eps: float, ddof: int, out: _F, stats: _D, running_out: _F,
                      n_threads: _Threads) -> None: ...
# dout, x, dx (N, D) (dx OUT); mean, inv_std (D,) from the forward; gamma, dgamma, dbeta (D,).
def batchnorm_backward(dout: _F, x: _F, mean: _D, inv_std: _D, gamma: _F, train: bool, ddof: int,
                       dx: _F, dgamma: _F, dbeta: _F, n_threads: _Threads) -> None: ...
# As batch norm's along rows: stats (2, N) OUT mean, inv_std of each row; gamma, beta (D,).
def layernorm_forward(x: _F, gamma: _F, beta: _F, eps: float, ddof: int, out: _F, stats: _D,
                      n_threads: _Threads) -> None: ...
# mean, inv_std (N,) from the forward.
def layernorm_backward(dout: _F, x: _F, mean: _D, inv_std: _D, gamma: _F, ddof: int, dx: _F,
                       dgamma: _F, dbeta: _F, n_threads: _Threads) -> None: ...

# Every array flat (n,), one dtype; the doubles are rounded to it. bias1 = 1 - beta1**t,
# bias2 = 1 - beta2**t.
def adam_update(w: _F, dw: _F, m: _F, v: _F, lr: float, beta1: float, beta2: float, bias1: float,
                bias2: float, eps: float, next_w: _F, m_out: _F, v_out: _F) -> None: ...

# ------------------------------------------------------------ batch norm's building blocks
# For data-parallel batch norm, which combines their results across processes:
# batchnorm_forward is column_moments then column_normalize; batchnorm_backward
# is column_grad_sums then column_dx with count = N. x, dout, dx_out (N, D), the rest
# (D,); lengths are checked (ValueError); N == 0 is allowed (zero sums).
# mean_out, m2_out OUT: per column the mean and the centered sum of squares.
def column_moments(x: _F, mean_out: _D, m2_out: _D, n_threads: _Threads) -> None: ...
# out OUT: (x - mean) * inv_std * gamma + beta per column, batchnorm_forward's sweep.
def column_normalize(x: _F, mean: _D, inv_std: _D, gamma: _F, beta: _F, out: _F,
                     n_threads: _Threads) -> None: ...
# sum_dy_out, sum_dy_xc_out OUT: per column sum(dout) and sum(dout * (x - mean)).
def column_grad_sums(dout: _F, x: _F, mean: _D, sum_dy_out: _D, sum_dy_xc_out: _D,
                     n_threads: _Threads) -> None: ...
# count: rows of the whole batch (may differ from N).
def column_dx(dout: _F, x: _F, mean: _D, inv_std: _D, gamma: _F, sum_dy: _D, sum_dy_xc: _D,
              count: float, ddof: int, train: bool, dx_out: _F, n_threads: _Threads) -> None: ...

# ------------------------------------------------------------------ N-D normalization
# The spatial ops take x as (N, C, P), P = H*W, C-contiguous NCHW memory; a
# channels-last x goes to batchnorm_* as its (N*H*W, C) matrix instead.
# Spatial batch norm: batch norm's arguments with x, out, dout, dx (N, C, P) and the
# per-channel ones (C,) in place of (D,); stats and running_out (2, C).
spatial_batchnorm_forward = batchnorm_forward
spatial_batchnorm_backward = batchnorm_backward
# Its blocks on NCHW memory, as the column blocks with (N, C, P) arrays and (C,)
# vectors, statistics per channel over its N planes; plane_dx's count is the values
# per channel over all ranks (N_global * P).
plane_moments = column_moments
plane_grad_sums = column_grad_sums
plane_dx = column_dx
plane_normalize = column_normalize

# Group norm: x, out, dout, dx (N, C, P); gamma, beta, dgamma, dbeta (C,); G divides C;
# stats (2, N*G) OUT mean, inv_std of each (sample, group); sums (2, N*C) scratch.
def groupnorm_forward(x: _F, gamma: _F, beta: _F, G: int, eps: float, out: _F, stats: _D,
                      n_threads: _Threads) -> None: ...
def groupnorm_backward(dout: _F, x: _F, mean: _D, inv_std: _D, gamma: _F, G: int, sums: _D,
                       dx: _F, dgamma: _F, dbeta: _F, n_threads: _Threads) -> None: ...

# RMS norm on rows: x, out, dout, dx (M, D); gamma, dgamma (D,); rstd (M,) OUT, 1/rms per row.
def rmsnorm_forward(x: _F, gamma: _F, eps: float, out: _F, rstd: _D, n_threads: _Threads) -> None: ...
def rmsnorm_backward(dout: _F, x: _F, rstd: _D, gamma: _F, dx: _F, dgamma: _F,
                     n_threads: _Threads) -> None: ...
