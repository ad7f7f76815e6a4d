"""Batch and layer normalization on the compiled kernels, with the notebook's API.

    out, cache = batchnorm_forward(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    out, cache = layernorm_forward(x, gamma, beta, ln_param)
    dx, dgamma, dbeta = layernorm_backward(dout, cache)

x is (N, D). Batch norm normalizes each feature over the N rows, layer norm
each row over its D features. The variance is the biased one (ddof=0, the
notebook's equations); ``bn_param["ddof"] = 1`` (or ``ln_param``) divides by
N-1 (D-1) instead, which is what the notebook's printed numbers used.

Every function takes optional ``out`` buffers so a training loop can run
without allocating; results are bitwise identical to the allocating call.

The compute dtype is float32 or float64: x's own, or what NumPy's promotion of
the arguments gives (integers and bool compute in float64, float16 in float32).
Results and ``out`` buffers are of that dtype.
"""

from __future__ import annotations

import numpy as np

from . import _validate
from ._build import by_dtype, load_kernels
from ._threads import get_num_threads

_kernels = load_kernels()  # the baseline or the AVX2 build, chosen once at import


_BN_FORWARD = by_dtype(_kernels.batchnorm_forward)
_BN_BACKWARD = by_dtype(_kernels.batchnorm_backward)
_LN_FORWARD = by_dtype(_kernels.layernorm_forward)
_LN_BACKWARD = by_dtype(_kernels.layernorm_backward)
_F32, _F64 = _validate._F32, _validate._F64
_BN_FORWARD_F64 = _BN_FORWARD[_F64]  # float64 found by identity, before the dict lookup
_LN_FORWARD_F64 = _LN_FORWARD[_F64]
_BN_BACKWARD_F64 = _BN_BACKWARD[_F64]
_LN_BACKWARD_F64 = _LN_BACKWARD[_F64]
_batchnorm_args = _validate.batchnorm_args  # module globals: one lookup less per call
_layernorm_args = _validate.layernorm_args

__all__ = [
    "BatchNormCache",
    "LayerNormCache",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "layernorm_forward",
    "layernorm_backward",
]


class _NormCache:
    """What the backward needs: x (a reference, not a copy), the per-feature
    (batch norm) or per-row (layer norm) mean and inverse std in float64, gamma,
    and the conventions of the forward. Mutating x after the forward changes
    what the backward computes."""

    __slots__ = ("x", "mean", "inv_std", "gamma", "eps", "ddof", "mode")

    def __init__(self, x, mean, inv_std, gamma, eps, ddof, mode):
        self.x = x
        self.mean = mean
        self.inv_std = inv_std
        self.gamma = gamma
        self.eps = eps
        self.ddof = ddof
        self.mode = mode

    def __repr__(self):
        return (f"{type(self).__name__}(x: {self.x.shape} {self.x.dtype}, mode={self.mode!r}, "
                f"eps={self.eps}, ddof={self.ddof})")


class BatchNormCache(_NormCache):
    __slots__ = ()
    stats_axis = 1  # statistics have length D


class LayerNormCache(_NormCache):
    __slots__ = ()
    stats_axis = 0  # statistics have length N


def _is_kernel_dtype(dtype) -> bool:
    return dtype is _F64 or dtype is _F32 or dtype in (np.float32, np.float64)


def _checked_cache(cache, kind: type, forward_name: str):
    """Check a cache (it may have been altered since the forward) before a kernel reads it."""
    _validate.check_cache_type(cache, kind, forward_name)
    x = cache.x
    if not (isinstance(x, np.ndarray) and x.ndim == 2 and _is_kernel_dtype(x.dtype)
            and x.flags.c_contiguous and x.size > 0):
        raise ValueError("cache.x is no longer the non-empty C-contiguous float array the forward stored")
    n_stats = x.shape[kind.stats_axis]
    stats_shape = (n_stats,)
    for name, arr in (("mean", cache.mean), ("inv_std", cache.inv_std)):
        if not (isinstance(arr, np.ndarray) and (arr.dtype is _F64 or arr.dtype == np.float64)
                and arr.shape == stats_shape
                and arr.flags.c_contiguous):
            raise ValueError(f"cache.{name} must be a float64 array of shape ({n_stats},)")
    gamma = cache.gamma
    if not (isinstance(gamma, np.ndarray) and gamma.shape == (x.shape[1],)
            and (gamma.dtype is x.dtype or gamma.dtype == x.dtype)):
        raise ValueError(f"cache.gamma must be a {x.dtype} array of shape ({x.shape[1]},)")
    if cache.ddof not in (0, 1) or cache.mode not in _validate.MODES:
        raise ValueError("cache.ddof or cache.mode was changed to an invalid value")
    return cache


def _usual_backward_arrays(dout, cache, kind: type):
    """_backward_arrays(dout, _checked_cache(cache, ...), None) for the usual call,
    after a few identity tests: an untouched cache of `kind` (exact ndarrays, float64
    statistics, gamma of x's dtype, all C-contiguous) and dout a C-contiguous ndarray
    of x's shape and dtype. None otherwise, and the full checks run."""
    if type(cache) is not kind or type(dout) is not np.ndarray:
        return None
    x, mean, inv_std, gamma = cache.x, cache.mean, cache.inv_std, cache.gamma
    if not (type(x) is np.ndarray and type(mean) is np.ndarray and type(inv_std) is np.ndarray
            and type(gamma) is np.ndarray):
        return None
    dtype = x.dtype
    shape = x.shape
    if not ((dtype is _F64 or dtype is _F32) and len(shape) == 2 and x.flags.c_contiguous
            and dout.dtype is dtype and dout.shape == shape and dout.flags.c_contiguous):
        return None
    N, D = shape
    stats_shape = (shape[kind.stats_axis],)
    d_shape = (D,)
    ddof, mode = cache.ddof, cache.mode
    if not (N > 0 and D > 0 and mean.dtype is _F64 and inv_std.dtype is _F64
            and mean.shape == stats_shape and inv_std.shape == stats_shape
            and mean.flags.c_contiguous and inv_std.flags.c_contiguous
            and gamma.dtype is dtype and gamma.shape == d_shape and gamma.flags.c_contiguous
            and type(ddof) is int and (ddof == 0 or ddof == 1)
            and type(mode) is str and (mode == "train" or mode == "test")):
        return None
    return dout, x, gamma, (np.empty(shape, dtype), np.empty(D, dtype), np.empty(D, dtype))


def _backward_arrays(dout, cache, out):
    """dout, x and gamma in the backward's dtype, and the three outputs."""
    x = cache.x
    dout, dtype = _validate.check_dout(dout, x.shape, x.dtype)
    dout = _validate.as_contiguous(dout, dtype)
    x = _validate.as_contiguous(x, dtype)
    gamma = _validate.as_contiguous(cache.gamma, dtype)
    D = x.shape[1]
    if out is None:
        return dout, x, gamma, (np.empty_like(x), np.empty(D, dtype), np.empty(D, dtype))
    if not (isinstance(out, tuple) and len(out) == 3):
        raise TypeError("out must be a tuple (dx, dgamma, dbeta) of arrays")
    # the outputs must not overlap anything the kernel reads, nor the cache
    read = (dout, x, gamma, cache.x, cache.gamma, cache.mean, cache.inv_std)
    dx = _validate.check_out("out[0] (dx)", out[0], x.shape, dtype, *read)
    dgamma = _validate.check_out("out[1] (dgamma)", out[1], (D,), dtype, *read, dx)
    dbeta = _validate.check_out("out[2] (dbeta)", out[2], (D,), dtype, *read, dx, dgamma)
    return dout, x, gamma, (dx, dgamma, dbeta)


def _checked_forward_out(out, x, *read):
    # the kernel reads x, gamma, beta (and the running statistics) while writing out
    return _validate.check_out("out", out, x.shape, x.dtype, x, *read)


def batchnorm_forward(x, gamma, beta, bn_param, *, out=None):
    """Batch normalization forward on the compiled kernel.

    Parameters
    ----------
    x : (N, D) array
    gamma, beta : (D,) arrays, scale and shift
    bn_param : dict with 'mode' ('train' or 'test', required), and optionally
        'eps' (1e-5), 'momentum' (0.9), 'ddof' (0 or 1, default 0),
        'running_mean', 'running_var' ((D,), default zeros). The updated running
        statistics are written back into bn_param in both modes.
    out : optional (N, D) C-contiguous array of the compute dtype (see the module
        docstring) to write into.

    Returns
    -------
    out : (N, D) normalized, scaled and shifted x
    cache : BatchNormCache for batchnorm_backward
    """
    x, gamma, beta, eps, ddof, train, momentum, running_mean, running_var = _batchnorm_args(
        x, gamma, beta, bn_param)
    dtype = x.dtype
    D = x.shape[1]
    if out is None:
        out = np.empty(x.shape, dtype)
    else:
        out = _checked_forward_out(out, x, gamma, beta, running_mean, running_var)
    stats = np.empty((2, D))  # mean, inv_std: one buffer for both (see the kernel wrapper)
    running = np.empty((2, D), dtype)  # running mean, running var
    kernel = _BN_FORWARD_F64 if dtype is _F64 else _BN_FORWARD[dtype]
    kernel(x, gamma, beta, running_mean, running_var, train, momentum, eps, ddof, out, stats,
           running, get_num_threads())
    bn_param["running_mean"] = running[0]
    bn_param["running_var"] = running[1]
    return out, BatchNormCache(x, stats[0], stats[1], gamma, eps, ddof, "train" if train else "test")


def _backward_call(dout, cache, out, kind: type, forward_name: str):
    """dout, x, gamma and the outputs of a backward: the usual call (no out=, an
    untouched cache) after identity tests, anything else after the full checks."""
    arrays = _usual_backward_arrays(dout, cache, kind) if out is None else None
    if arrays is None:
        arrays = _backward_arrays(dout, _checked_cache(cache, kind, forward_name), out)
    return arrays


def batchnorm_backward(dout, cache, *, out=None):
    """Batch normalization backward: the simplified closed form, fused on the compiled kernel.

    Returns dx (N, D), dgamma (D,), dbeta (D,). ``out=(dx, dgamma, dbeta)``
    writes into caller buffers.
    """
    dout, x, gamma, (dx, dgamma, dbeta) = _backward_call(dout, cache, out, BatchNormCache, "batchnorm_forward")
    kernel = _BN_BACKWARD_F64 if x.dtype is _F64 else _BN_BACKWARD[x.dtype]
    kernel(dout, x, cache.mean, cache.inv_std, gamma, cache.mode == "train", cache.ddof,
           dx, dgamma, dbeta, get_num_threads())
    return dx, dgamma, dbeta


def batchnorm_backward_alt(dout, cache, *, out=None):
    """Same as batchnorm_backward: the compiled kernel already is the simplified form."""
    return batchnorm_backward(dout, cache, out=out)


def layernorm_forward(x, gamma, beta, ln_param, *, out=None):
    """Layer normalization forward on the compiled kernel.

    Each row of x (N, D) is normalized over its D features, then scaled by gamma
    and shifted by beta (both (D,)). ln_param: optional 'eps' (1e-5) and 'ddof'
    (0 or 1); 'mode' is ignored, there are no running statistics.
    """
    x, gamma, beta, eps, ddof = _layernorm_args(x, gamma, beta, ln_param)
    dtype = x.dtype
    if out is None:
        out = np.empty(x.shape, dtype)
    else:
        out = _checked_forward_out(out, x, gamma, beta)
    stats = np.empty((2, x.shape[0]))  # mean, inv_std of each row
    kernel = _LN_FORWARD_F64 if dtype is _F64 else _LN_FORWARD[dtype]
    kernel(x, gamma, beta, eps, ddof, out, stats, get_num_threads())
    return out, LayerNormCache(x, stats[0], stats[1], gamma, eps, ddof, "train")


def layernorm_backward(dout, cache, *, out=None):
    """Layer normalization backward (compiled): dx (N, D), dgamma (D,), dbeta (D,).
    ``out=(dx, dgamma, dbeta)`` writes into caller buffers."""
    dout, x, gamma, (dx, dgamma, dbeta) = _backward_call(dout, cache, out, LayerNormCache, "layernorm_forward")
    kernel = _LN_BACKWARD_F64 if x.dtype is _F64 else _LN_BACKWARD[x.dtype]
    kernel(dout, x, cache.mean, cache.inv_std, gamma, cache.ddof, dx, dgamma, dbeta, get_num_threads())
    return dx, dgamma, dbeta
