"""Batch and layer normalization on the compiled kernels, with the notebook's API.

    out, cache = batchnorm_forward(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    out, cache = layernorm_forward(x, gamma, beta, ln_param)
    dx, dgamma, dbeta = layernorm_backward(dout, cache)

Batch norm takes x (N, D) and normalizes each feature over the N rows; layer
norm takes x (..., D) of any rank >= 2 and normalizes each row of D features
along the last axis (a C-contiguous x is read as an (N, D) matrix, no copy). The variance is the biased one (ddof=0, the
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
from ._validate import MODES as _MODES
from ._validate import _ndarray, batchnorm_args, layernorm_args
from ._build import by_dtype, load_kernels
from ._output_cache import new_output
from ._threads import get_num_threads

_kernels = load_kernels()  # the baseline, AVX2 or AVX-512 build, chosen once at import


_BN_FORWARD = by_dtype(_kernels.batchnorm_forward)
_BN_BACKWARD = by_dtype(_kernels.batchnorm_backward)
_LN_FORWARD = by_dtype(_kernels.layernorm_forward)
_LN_BACKWARD = by_dtype(_kernels.layernorm_backward)
_F32, _F64 = _validate._F32, _validate._F64
_BN_FORWARD_F64 = _BN_FORWARD[_F64]  # float64 found by identity, before the dict lookup
_LN_FORWARD_F64 = _LN_FORWARD[_F64]
_BN_BACKWARD_F64 = _BN_BACKWARD[_F64]
_LN_BACKWARD_F64 = _LN_BACKWARD[_F64]

__all__ = ["BatchNormCache", "LayerNormCache", *_validate.OPS]


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
    """x (N, D); mean, inv_std (D,)."""
    __slots__ = ()
    any_rank = False


class LayerNormCache(_NormCache):
    """x (..., D); mean, inv_std of x's leading shape (one per row)."""
    __slots__ = ()
    any_rank = True


def _float64_of_shape(arr, shape) -> bool:
    return (isinstance(arr, np.ndarray) and (arr.dtype is _F64 or arr.dtype == _F64)
            and arr.shape == shape and arr.flags.c_contiguous)


def _backward_args(dout, cache, out, kind: type, forward_name: str):
    """Check a backward's arguments, then return the kernel's: dout, x and gamma as
    C-contiguous arrays of the backward's dtype, and (dx, dgamma, dbeta), allocated
    or the caller's `out`. The cache is checked too: it may have been altered since
    the forward. The usual call (an untouched cache, dout a C-contiguous array of x's
    shape and dtype, no out) passes identity tests and converts nothing."""
    if type(cache) is not kind:
        _validate.check_cache_type(cache, kind, forward_name)
    x, gamma = cache.x, cache.gamma
    if not (isinstance(x, np.ndarray) and (x.ndim == 2 or (kind.any_rank and x.ndim > 2))
            and (x.dtype is _F64 or x.dtype is _F32 or x.dtype in (_F32, _F64))
            and x.flags.c_contiguous and x.size > 0):
        raise ValueError("cache.x is no longer the non-empty C-contiguous float array the forward stored")
    shape, dtype = x.shape, x.dtype
    stats_shape = shape[:-1] if kind.any_rank else shape[-1:]
    mean, inv_std = cache.mean, cache.inv_std
    if not (_float64_of_shape(mean, stats_shape) and _float64_of_shape(inv_std, stats_shape)):
        name = "inv_std" if _float64_of_shape(mean, stats_shape) else "mean"
        raise ValueError(f"cache.{name} must be a float64 array of shape {stats_shape}")
    D = shape[-1]
    if not (isinstance(gamma, np.ndarray) and gamma.shape == (D,) and (gamma.dtype is dtype or gamma.dtype == dtype)):
        raise ValueError(f"cache.gamma must be a {dtype} array of shape ({D},)")
    if cache.ddof not in (0, 1) or cache.mode not in _MODES:
        raise ValueError("cache.ddof or cache.mode was changed to an invalid value")
    if not (type(dout) is _ndarray and dout.dtype is dtype and dout.shape == shape
            and dout.flags.c_contiguous and gamma.flags.c_contiguous):
        dout, dtype = _validate.check_dout(dout, shape, dtype)
        dout = _validate.as_contiguous(dout, dtype)
        x = _validate.as_contiguous(x, dtype)
        gamma = _validate.as_contiguous(gamma, dtype)
    if out is None:
        return dout, x, gamma, (new_output(shape, dtype, dout, x), np.empty(D, dtype), np.empty(D, dtype))
    if not (isinstance(out, tuple) and len(out) == 3):
        raise TypeError("out must be a tuple (dx, dgamma, dbeta) of arrays")
    # the outputs must not overlap anything the kernel reads, nor the cache
    read = (dout, x, gamma, cache.x, cache.gamma, cache.mean, cache.inv_std)
    dx = _validate.check_out("out[0] (dx)", out[0], shape, dtype, *read)
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
    x, gamma, beta, eps, ddof, train, momentum, running_mean, running_var = batchnorm_args(
        x, gamma, beta, bn_param)
    dtype = x.dtype
    D = x.shape[1]
    if out is None:
        out = new_output(x.shape, dtype, x)
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


def batchnorm_backward(dout, cache, *, out=None):
    """Batch normalization backward: the simplified closed form, fused on the compiled kernel.

    Returns dx (N, D), dgamma (D,), dbeta (D,). ``out=(dx, dgamma, dbeta)``
    writes into caller buffers.
    """
    dout, x, gamma, (dx, dgamma, dbeta) = _backward_args(dout, cache, out, BatchNormCache, "batchnorm_forward")
    kernel = _BN_BACKWARD_F64 if x.dtype is _F64 else _BN_BACKWARD[x.dtype]
    kernel(dout, x, cache.mean, cache.inv_std, gamma, cache.mode == "train", cache.ddof,
           dx, dgamma, dbeta, get_num_threads())
    return dx, dgamma, dbeta


def batchnorm_backward_alt(dout, cache, *, out=None):
    """Same as batchnorm_backward: the compiled kernel already is the simplified form."""
    return batchnorm_backward(dout, cache, out=out)


def layernorm_forward(x, gamma, beta, ln_param, *, out=None):
    """Layer normalization forward on the compiled kernel.

    Each row of x (..., D), any rank >= 2, is normalized over its D features (the
    last axis), then scaled by gamma and shifted by beta (both (D,)). ln_param:
    optional 'eps' (1e-5) and 'ddof' (0 or 1); 'mode' is ignored, there are no
    running statistics. out: optional C-contiguous array of x's shape and the
    compute dtype. The cache's mean and inv_std have x's leading shape.
    """
    x, gamma, beta, eps, ddof = layernorm_args(x, gamma, beta, ln_param)
    dtype = x.dtype
    if out is None:
        out = new_output(x.shape, dtype, x)
    else:
        out = _checked_forward_out(out, x, gamma, beta)
    shape = x.shape
    if len(shape) == 2:
        stats = stats_rows = np.empty((2, shape[0]))  # mean, inv_std of each row
        x_rows, out_rows = x, out
    else:  # the rows of C-contiguous arrays: views, no copies
        stats = np.empty((2, *shape[:-1]))
        stats_rows, x_rows, out_rows = stats.reshape(2, -1), x.reshape(-1, shape[-1]), out.reshape(-1, shape[-1])
    kernel = _LN_FORWARD_F64 if dtype is _F64 else _LN_FORWARD[dtype]
    kernel(x_rows, gamma, beta, eps, ddof, out_rows, stats_rows, get_num_threads())
    return out, LayerNormCache(x, stats[0], stats[1], gamma, eps, ddof, "train")


def layernorm_backward(dout, cache, *, out=None):
    """Layer normalization backward (compiled): dx (x's shape), dgamma (D,), dbeta (D,).
    ``out=(dx, dgamma, dbeta)`` writes into caller buffers."""
    dout, x, gamma, (dx, dgamma, dbeta) = _backward_args(dout, cache, out, LayerNormCache, "layernorm_forward")
    mean, inv_std = cache.mean, cache.inv_std
    if x.ndim != 2:  # the rows of C-contiguous arrays: views, no copies
        D = x.shape[-1]
        dout, x, dx_rows = dout.reshape(-1, D), x.reshape(-1, D), dx.reshape(-1, D)
        mean, inv_std = mean.reshape(-1), inv_std.reshape(-1)
    else:
        dx_rows = dx
    kernel = _LN_BACKWARD_F64 if x.dtype is _F64 else _LN_BACKWARD[x.dtype]
    kernel(dout, x, mean, inv_std, gamma, cache.ddof, dx_rows, dgamma, dbeta, get_num_threads())
    return dx, dgamma, dbeta
