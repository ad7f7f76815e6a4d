# Stub of the compiled module fastnorm._kernels (src/_kernels.pyx); its AVX2+FMA
# build fastnorm._kernels_avx2 re-exports this interface (_kernels_avx2.pyi).
# Every array is C-contiguous; `floating` arrays of one call share one dtype,
# float32 or float64. Callers (fastnorm.normalization) validate and allocate.
import numpy as np
from numpy.typing import NDArray

_F = NDArray[np.float32] | NDArray[np.float64]

SOURCE_HASH: str  # hash of src/ when built: a stale in-place build is refused
ISA: str          # "baseline" or "avx2": which build this is

def cpu_has_avx2_fma() -> bool: ...

def openmp_enabled() -> bool: ...
def max_threads() -> int: ...
def batchnorm_forward(
    x: _F,                       # const floating[:, ::1] (N, D)
    gamma: _F,                   # const floating[::1] (D,)
    beta: _F,                    # const floating[::1] (D,)
    running_mean: _F,            # const floating[::1] (D,)
    running_var: _F,             # const floating[::1] (D,)
    train: bool,                 # bint
    momentum: float,             # double
    eps: float,                  # double
    ddof: int,                   # int, 0 or 1
    out: _F,                     # floating[:, ::1] (N, D) OUT
    stats: NDArray[np.float64],  # double[:, ::1] (2, D) OUT: mean, inv_std
    running_out: _F,             # floating[:, ::1] (2, D) OUT: running mean, running var
    n_threads: int,              # int
) -> None: ...
def batchnorm_backward(
    dout: _F,                    # const floating[:, ::1] (N, D)
    x: _F,                       # const floating[:, ::1] (N, D)
    mean: NDArray[np.float64],   # const double[::1] (D,)
    inv_std: NDArray[np.float64],  # const double[::1] (D,)
    gamma: _F,                   # const floating[::1] (D,)
    train: bool,                 # bint
    ddof: int,                   # int
    dx: _F,                      # floating[:, ::1] (N, D) OUT
    dgamma: _F,                  # floating[::1] (D,) OUT
    dbeta: _F,                   # floating[::1] (D,) OUT
    n_threads: int,              # int
) -> None: ...
def layernorm_forward(
    x: _F,                       # const floating[:, ::1] (N, D)
    gamma: _F,                   # const floating[::1] (D,)
    beta: _F,                    # const floating[::1] (D,)
    eps: float,                  # double
    ddof: int,                   # int
    out: _F,                     # floating[:, ::1] (N, D) OUT
    stats: NDArray[np.float64],  # double[:, ::1] (2, N) OUT: mean, inv_std
    n_threads: int,              # int
) -> None: ...
def layernorm_backward(
    dout: _F,                    # const floating[:, ::1] (N, D)
    x: _F,                       # const floating[:, ::1] (N, D)
    mean: NDArray[np.float64],   # const double[::1] (N,)
    inv_std: NDArray[np.float64],  # const double[::1] (N,)
    gamma: _F,                   # const floating[::1] (D,)
    ddof: int,                   # int
    dx: _F,                      # floating[:, ::1] (N, D) OUT
    dgamma: _F,                  # floating[::1] (D,) OUT
    dbeta: _F,                   # floating[::1] (D,) OUT
    n_threads: int,              # int
) -> None: ...
def adam_update(
    w: _F,                       # const floating[::1] (n,): every array flat, one dtype
    dw: _F,                      # const floating[::1] (n,)
    m: _F,                       # const floating[::1] (n,)
    v: _F,                       # const floating[::1] (n,)
    lr: float,                   # double; this and the rest rounded to w's dtype
    beta1: float,                # double
    beta2: float,                # double
    bias1: float,                # double: 1 - beta1**t
    bias2: float,                # double: 1 - beta2**t
    eps: float,                  # double
    next_w: _F,                  # floating[::1] (n,) OUT
    m_out: _F,                   # floating[::1] (n,) OUT
    v_out: _F,                   # floating[::1] (n,) OUT
) -> None: ...

# N-D normalization (src/planes.pxd, groupnorm.pxd, rmsnorm.pxd). The spatial ops
# take x as (N, C, P), P = H*W, C-contiguous; a channels-last x goes to batchnorm_*
# as its (N*H*W, C) matrix instead.
def spatial_batchnorm_forward(
    x: _F,                       # const floating[:, :, ::1] (N, C, P)
    gamma: _F,                   # const floating[::1] (C,)
    beta: _F,                    # const floating[::1] (C,)
    running_mean: _F,            # const floating[::1] (C,)
    running_var: _F,             # const floating[::1] (C,)
    train: bool,                 # bint
    momentum: float,             # double
    eps: float,                  # double
    ddof: int,                   # int, 0 or 1
    out: _F,                     # floating[:, :, ::1] (N, C, P) OUT
    stats: NDArray[np.float64],  # double[:, ::1] (2, C) OUT: mean, inv_std
    running_out: _F,             # floating[:, ::1] (2, C) OUT: running mean, running var
    n_threads: int,              # int
) -> None: ...
def spatial_batchnorm_backward(
    dout: _F,                    # const floating[:, :, ::1] (N, C, P)
    x: _F,                       # const floating[:, :, ::1] (N, C, P)
    mean: NDArray[np.float64],   # const double[::1] (C,)
    inv_std: NDArray[np.float64],  # const double[::1] (C,)
    gamma: _F,                   # const floating[::1] (C,)
    train: bool,                 # bint
    ddof: int,                   # int
    dx: _F,                      # floating[:, :, ::1] (N, C, P) OUT
    dgamma: _F,                  # floating[::1] (C,) OUT
    dbeta: _F,                   # floating[::1] (C,) OUT
    n_threads: int,              # int
) -> None: ...
def plane_moments(
    x: _F,                       # const floating[:, :, ::1] (N, C, P)
    mean_out: NDArray[np.float64],  # double[::1] (C,) OUT
    m2_out: NDArray[np.float64],    # double[::1] (C,) OUT: centered sums of squares
    n_threads: int,              # int
) -> None: ...
def plane_normalize(
    x: _F,                       # const floating[:, :, ::1] (N, C, P)
    mean: NDArray[np.float64],   # const double[::1] (C,)
    inv_std: NDArray[np.float64],  # const double[::1] (C,)
    gamma: _F,                   # const floating[::1] (C,)
    beta: _F,                    # const floating[::1] (C,)
    out: _F,                     # floating[:, :, ::1] (N, C, P) OUT
    n_threads: int,              # int
) -> None: ...
def plane_grad_sums(
    dout: _F,                    # const floating[:, :, ::1] (N, C, P)
    x: _F,                       # const floating[:, :, ::1] (N, C, P)
    mean: NDArray[np.float64],   # const double[::1] (C,)
    sum_dy_out: NDArray[np.float64],     # double[::1] (C,) OUT
    sum_dy_xc_out: NDArray[np.float64],  # double[::1] (C,) OUT: sum(dout * (x - mean))
    n_threads: int,              # int
) -> None: ...
def plane_dx(
    dout: _F,                    # const floating[:, :, ::1] (N, C, P)
    x: _F,                       # const floating[:, :, ::1] (N, C, P)
    mean: NDArray[np.float64],   # const double[::1] (C,)
    inv_std: NDArray[np.float64],  # const double[::1] (C,)
    gamma: _F,                   # const floating[::1] (C,)
    sum_dy: NDArray[np.float64],     # const double[::1] (C,)
    sum_dy_xc: NDArray[np.float64],  # const double[::1] (C,)
    count: float,                # double: values per channel over all ranks
    ddof: int,                   # int
    train: bool,                 # bint
    dx_out: _F,                  # floating[:, :, ::1] (N, C, P) OUT
    n_threads: int,              # int
) -> None: ...
def groupnorm_forward(
    x: _F,                       # const floating[:, :, ::1] (N, C, P)
    gamma: _F,                   # const floating[::1] (C,)
    beta: _F,                    # const floating[::1] (C,)
    G: int,                      # Py_ssize_t, divides C
    eps: float,                  # double
    out: _F,                     # floating[:, :, ::1] (N, C, P) OUT
    stats: NDArray[np.float64],  # double[:, ::1] (2, N*G) OUT: mean, inv_std
    n_threads: int,              # int
) -> None: ...
def groupnorm_backward(
    dout: _F,                    # const floating[:, :, ::1] (N, C, P)
    x: _F,                       # const floating[:, :, ::1] (N, C, P)
    mean: NDArray[np.float64],   # const double[::1] (N*G,)
    inv_std: NDArray[np.float64],  # const double[::1] (N*G,)
    gamma: _F,                   # const floating[::1] (C,)
    G: int,                      # Py_ssize_t
    sums: NDArray[np.float64],   # double[:, ::1] (2, N*C) scratch
    dx: _F,                      # floating[:, :, ::1] (N, C, P) OUT
    dgamma: _F,                  # floating[::1] (C,) OUT
    dbeta: _F,                   # floating[::1] (C,) OUT
    n_threads: int,              # int
) -> None: ...
def rmsnorm_forward(
    x: _F,                       # const floating[:, ::1] (M, D)
    gamma: _F,                   # const floating[::1] (D,)
    eps: float,                  # double
    out: _F,                     # floating[:, ::1] (M, D) OUT
    rstd: NDArray[np.float64],   # double[::1] (M,) OUT
    n_threads: int,              # int
) -> None: ...
def rmsnorm_backward(
    dout: _F,                    # const floating[:, ::1] (M, D)
    x: _F,                       # const floating[:, ::1] (M, D)
    rstd: NDArray[np.float64],   # const double[::1] (M,)
    gamma: _F,                   # const floating[::1] (D,)
    dx: _F,                      # floating[:, ::1] (M, D) OUT
    dgamma: _F,                  # floating[::1] (D,) OUT
    n_threads: int,              # int
) -> None: ...
