"""Spatial batch norm, group norm and RMS norm on the compiled kernels, with the
ConvolutionalNetworks notebook's API.

    out, cache = spatial_batchnorm_forward(x, gamma, beta, bn_param)   # x (N, C, H, W), gamma (C,)
    dx, dgamma, dbeta = spatial_batchnorm_backward(dout, cache)
    out, cache = spatial_groupnorm_forward(x, gamma, beta, G, gn_param) # gamma (1, C, 1, 1)
    dx, dgamma, dbeta = spatial_groupnorm_backward(dout, cache)
    out, cache = rmsnorm_forward(x, gamma, rms_param)                   # x (..., D), gamma (D,)
    dx, dgamma = rmsnorm_backward(dout, cache)

Spatial batch norm reads C-contiguous NCHW x and channels-last x (the
``a.transpose(0, 3, 1, 2)`` of a C-contiguous (N, H, W, C) array ``a``) where they
lie, and answers in x's layout; any other x is copied to NCHW once. The compute
dtype and the ``out`` buffers follow fastnorm.normalization: ``out`` is
C-contiguous, or for a channels-last x channels-last as well.
"""

from __future__ import annotations

import numpy as np

from . import _validate, _validate_nd
from ._build import by_dtype, load_kernels
from ._output_cache import new_output
from ._threads import get_num_threads
from ._validate_nd import rmsnorm_call, spatial_batchnorm_call, spatial_groupnorm_call

_kernels = load_kernels()

NCHW, CHANNELS_LAST = "NCHW", "channels-last"
# batch norm's kernels by layout: channels-last x is the (N*H*W, C) matrix of batchnorm_forward
_SBN_FORWARD = {NCHW: by_dtype(_kernels.spatial_batchnorm_forward),
                CHANNELS_LAST: by_dtype(_kernels.batchnorm_forward)}
_SBN_BACKWARD = {NCHW: by_dtype(_kernels.spatial_batchnorm_backward),
                 CHANNELS_LAST: by_dtype(_kernels.batchnorm_backward)}
_GN_FORWARD = by_dtype(_kernels.groupnorm_forward)
_GN_BACKWARD = by_dtype(_kernels.groupnorm_backward)
_RMS_FORWARD = by_dtype(_kernels.rmsnorm_forward)
_RMS_BACKWARD = by_dtype(_kernels.rmsnorm_backward)

__all__ = ["SpatialBatchNormCache", "GroupNormCache", "RMSNormCache", *_validate_nd.OPS]


class SpatialBatchNormCache:
    """x (a reference, in its layout), the per-channel mean and inverse std (float64),
    gamma, and the conventions of the forward."""

    __slots__ = ("x", "mean", "inv_std", "gamma", "eps", "ddof", "mode", "layout")

    def __init__(self, x, mean, inv_std, gamma, eps, ddof, mode, layout):
        self.x, self.mean, self.inv_std, self.gamma = x, mean, inv_std, gamma
        self.eps, self.ddof, self.mode, self.layout = eps, ddof, mode, layout

    def __repr__(self):
        return (f"SpatialBatchNormCache(x: {self.x.shape} {self.x.dtype} {self.layout}, "
                f"mode={self.mode!r}, eps={self.eps}, ddof={self.ddof})")


class GroupNormCache:
    """x (a reference), the per-(sample, group) mean and inverse std (float64, (N*G,)),
    gamma (C,), G and eps."""

    __slots__ = ("x", "mean", "inv_std", "gamma", "G", "eps")

    def __init__(self, x, mean, inv_std, gamma, G, eps):
        self.x, self.mean, self.inv_std, self.gamma, self.G, self.eps = x, mean, inv_std, gamma, G, eps

    def __repr__(self):
        return f"GroupNormCache(x: {self.x.shape} {self.x.dtype}, G={self.G}, eps={self.eps})"


class RMSNormCache:
    """x (a reference), the per-row 1/rms (float64, (M,) for the M rows), gamma (D,), eps."""

    __slots__ = ("x", "rstd", "gamma", "eps")

    def __init__(self, x, rstd, gamma, eps):
        self.x, self.rstd, self.gamma, self.eps = x, rstd, gamma, eps

    def __repr__(self):
        return f"RMSNormCache(x: {self.x.shape} {self.x.dtype}, eps={self.eps})"


def _layout(x: np.ndarray) -> str | None:
    if x.flags.c_contiguous:
        return NCHW
    if x.transpose(0, 2, 3, 1).flags.c_contiguous:
        return CHANNELS_LAST
    return None


def _kernel_view(a: np.ndarray, layout: str) -> np.ndarray:
    """What the kernels read or write of a (in that layout): (N, C, H*W) for NCHW, the
    (N*H*W, C) matrix for channels-last."""
    N, C, H, W = a.shape
    if layout == NCHW:
        return a.reshape(N, C, H * W)
    return a.transpose(0, 2, 3, 1).reshape(N * H * W, C)


def _kernel_input(a: np.ndarray, layout: str, dtype) -> np.ndarray:
    """_kernel_view of a in dtype, after one copy into the layout when it is in another."""
    if layout == NCHW:
        return _kernel_view(_validate.as_contiguous(a, dtype), NCHW)
    return _validate.as_contiguous(a.transpose(0, 2, 3, 1), dtype).reshape(-1, a.shape[1])


def _new_like(shape, dtype, layout: str, *near) -> np.ndarray:
    """A new output of x's layout; near: the arrays the kernel reads (new_output)."""
    if layout == NCHW:   # C-contiguous, of any rank
        return new_output(shape, dtype, *near)
    N, C, H, W = shape
    return new_output((N, H, W, C), dtype, *near).transpose(0, 3, 1, 2)


def _checked_out(name: str, out, shape, dtype, layout: str, *read) -> np.ndarray:
    """A caller's 4-D buffer in the layout the kernel writes (C-contiguous NCHW, or
    channels-last for a channels-last x), not overlapping what the kernel reads."""
    if layout == NCHW:
        return _validate.check_out(name, out, shape, dtype, *read)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype or _layout(out) != CHANNELS_LAST:
        raise ValueError(f"{name} must be a channels-last array of shape {tuple(shape)} and dtype {dtype} "
                         f"(x is channels-last), got shape {out.shape}, dtype {out.dtype}")
    _validate.check_out(name, out.transpose(0, 2, 3, 1), out.transpose(0, 2, 3, 1).shape, dtype, *read)
    return out


def _stats_ok(arr, n: int) -> bool:
    return (isinstance(arr, np.ndarray) and arr.dtype == np.float64 and arr.shape == (n,)
            and arr.flags.c_contiguous)


def _check_cached_gamma(cache, n: int) -> None:
    gamma, dtype = cache.gamma, cache.x.dtype
    if not (isinstance(gamma, np.ndarray) and gamma.shape == (n,) and gamma.dtype == dtype):
        raise ValueError(f"cache.gamma must be a {dtype} array of shape ({n},)")


def _contiguous_backward_inputs(dout, cache, n: int):
    """(dout, x, gamma, dtype): the cache's gamma checked to be (n,), then dout, x and
    gamma C-contiguous in the backward's dtype (NumPy's promotion of dout's and x's)."""
    _check_cached_gamma(cache, n)
    x = cache.x
    dout, dtype = _validate.check_dout(dout, x.shape, x.dtype)
    return (_validate.as_contiguous(dout, dtype), _validate.as_contiguous(x, dtype),
            _validate.as_contiguous(cache.gamma, dtype), dtype)


def _grads_out(out, count: int, x, dtype, layout, grad_shape, read, near):
    """dx (x's layout) and the parameter gradients of shape grad_shape: new (dx placed
    away from near, the kernel's dout and x), or the caller's after the checks."""
    if out is None:
        return (_new_like(x.shape, dtype, layout, *near),) + tuple(np.empty(grad_shape, dtype)
                                                                   for _ in range(count - 1))
    if not (isinstance(out, tuple) and len(out) == count):
        names = "(dx, dgamma, dbeta)" if count == 3 else "(dx, dgamma)"
        raise TypeError(f"out must be a tuple {names} of arrays")
    dx = _checked_out("out[0] (dx)", out[0], x.shape, dtype, layout, *read)
    grads = [dx]
    for i, name in enumerate(("dgamma", "dbeta")[:count - 1], start=1):
        grads.append(_validate.check_out(f"out[{i}] ({name})", out[i], grad_shape, dtype, *read, *grads))
    return tuple(grads)


# ------------------------------------------------------------- spatial batch norm
def spatial_batchnorm_forward(x, gamma, beta, bn_param, *, out=None):
    """Spatial batch normalization forward on the compiled kernels.

    x (N, C, H, W); gamma, beta (C,); statistics per channel over (N, H, W).
    bn_param as batchnorm_forward's: 'mode' ('train' or 'test', required), 'eps'
    (1e-5), 'momentum' (0.9), 'ddof' (0), 'running_mean' and 'running_var' ((C,),
    written back in both modes). Returns out (in x's layout) and the cache.
    """
    x, gamma, beta, eps, ddof, train, momentum, running_mean, running_var = spatial_batchnorm_call(
        x, gamma, beta, bn_param)
    dtype = x.dtype
    C = x.shape[1]
    layout = _layout(x)
    if layout is None:   # other strides: one copy, then the NCHW kernel
        x, layout = np.ascontiguousarray(x), NCHW
    if out is None:
        out = _new_like(x.shape, dtype, layout, x)
    else:
        out = _checked_out("out", out, x.shape, dtype, layout, x, gamma, beta, running_mean, running_var)
    stats = np.empty((2, C))  # mean, inv_std
    running = np.empty((2, C), dtype)
    _SBN_FORWARD[layout][dtype](_kernel_view(x, layout), gamma, beta, running_mean, running_var, train,
                                momentum, eps, ddof, _kernel_view(out, layout), stats, running,
                                get_num_threads())
    bn_param["running_mean"] = running[0]
    bn_param["running_var"] = running[1]
    return out, SpatialBatchNormCache(x, stats[0], stats[1], gamma, eps, ddof,
                                      "train" if train else "test", layout)


def _checked_spatial_bn_cache(cache):
    _validate.check_cache_type(cache, SpatialBatchNormCache, "spatial_batchnorm_forward")
    x = cache.x
    if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype in (np.float32, np.float64)
            and x.size > 0 and cache.layout in (NCHW, CHANNELS_LAST) and _layout(x) == cache.layout):
        raise ValueError("cache.x is no longer the non-empty float array in the layout the forward stored")
    C = x.shape[1]
    if not (_stats_ok(cache.mean, C) and _stats_ok(cache.inv_std, C)):
        raise ValueError(f"cache.mean and cache.inv_std must be float64 arrays of shape ({C},)")
    _check_cached_gamma(cache, C)
    if cache.ddof not in (0, 1) or cache.mode not in _validate.MODES:
        raise ValueError("cache.ddof or cache.mode was changed to an invalid value")
    return cache


def spatial_batchnorm_backward(dout, cache, *, out=None):
    """Spatial batch normalization backward (compiled, the simplified closed form):
    dx (N, C, H, W) in x's layout, dgamma (C,), dbeta (C,).
    ``out=(dx, dgamma, dbeta)`` writes into caller buffers."""
    cache = _checked_spatial_bn_cache(cache)
    x, layout = cache.x, cache.layout
    dout, dtype = _validate.check_dout(dout, x.shape, x.dtype)
    view_dout = _kernel_input(dout, layout, dtype)
    view_x = _kernel_input(x, layout, dtype)
    gamma = _validate.as_contiguous(cache.gamma, dtype)
    C = x.shape[1]
    read = (dout, x, gamma, cache.gamma, cache.mean, cache.inv_std, view_dout, view_x)
    dx, dgamma, dbeta = _grads_out(out, 3, x, dtype, layout, (C,), read, (view_dout, view_x))
    _SBN_BACKWARD[layout][dtype](view_dout, view_x, cache.mean, cache.inv_std, gamma, cache.mode == "train",
                                 cache.ddof, _kernel_view(dx, layout), dgamma, dbeta, get_num_threads())
    return dx, dgamma, dbeta


# ------------------------------------------------------------------- group norm
def spatial_groupnorm_forward(x, gamma, beta, G, gn_param, *, out=None):
    """Group normalization forward on the compiled kernels.

    x (N, C, H, W); gamma, beta (1, C, 1, 1); G groups of C/G channels, statistics
    per (sample, group) over (C/G, H, W); gn_param 'eps' (1e-5), other keys ignored.
    G = C is instance norm, G = 1 layer norm over (C, H, W).
    """
    x, gamma, beta, G, eps = spatial_groupnorm_call(x, gamma, beta, G, gn_param)
    dtype = x.dtype
    N, C, H, W = x.shape
    if out is None:
        out = new_output(x.shape, dtype, x)
    else:
        out = _validate.check_out("out", out, x.shape, dtype, x, gamma, beta)
    stats = np.empty((2, N * G))
    _GN_FORWARD[dtype](x.reshape(N, C, H * W), gamma, beta, G, eps, out.reshape(N, C, H * W), stats,
                       get_num_threads())
    return out, GroupNormCache(x, stats[0], stats[1], gamma, G, eps)


def spatial_groupnorm_backward(dout, cache, *, out=None):
    """Group normalization backward (compiled): dx (N, C, H, W), dgamma and dbeta
    (1, C, 1, 1). ``out=(dx, dgamma, dbeta)`` writes into caller buffers."""
    _validate.check_cache_type(cache, GroupNormCache, "spatial_groupnorm_forward")
    x, G = cache.x, cache.G
    if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype in (np.float32, np.float64)
            and x.size > 0 and x.flags.c_contiguous and type(G) is int and G > 0 and x.shape[1] % G == 0):
        raise ValueError("cache.x or cache.G is no longer what the forward stored")
    N, C, H, W = x.shape
    if not (_stats_ok(cache.mean, N * G) and _stats_ok(cache.inv_std, N * G)):
        raise ValueError(f"cache.mean and cache.inv_std must be float64 arrays of shape ({N * G},)")
    dout, xk, gamma, dtype = _contiguous_backward_inputs(dout, cache, C)
    read = (dout, x, xk, gamma, cache.gamma, cache.mean, cache.inv_std)
    dx, dgamma, dbeta = _grads_out(out, 3, x, dtype, NCHW, (1, C, 1, 1), read, (dout, xk))
    sums = np.empty((2, N * C))
    P = H * W
    _GN_BACKWARD[dtype](dout.reshape(N, C, P), xk.reshape(N, C, P), cache.mean, cache.inv_std, gamma, G,
                        sums, dx.reshape(N, C, P), dgamma.reshape(C), dbeta.reshape(C), get_num_threads())
    return dx, dgamma, dbeta


# --------------------------------------------------------------------- RMS norm
def rmsnorm_forward(x, gamma, rms_param, *, out=None):
    """RMS normalization forward on the compiled kernels: y = x / sqrt(mean(x**2) + eps)
    * gamma over the last axis of x (any rank >= 2); gamma (D,); rms_param 'eps' (1e-5)."""
    x, gamma, eps = rmsnorm_call(x, gamma, rms_param)
    dtype = x.dtype
    D = x.shape[-1]
    if out is None:
        out = new_output(x.shape, dtype, x)
    else:
        out = _validate.check_out("out", out, x.shape, dtype, x, gamma)
    rstd = np.empty(x.size // D)
    _RMS_FORWARD[dtype](x.reshape(-1, D), gamma, eps, out.reshape(-1, D), rstd, get_num_threads())
    return out, RMSNormCache(x, rstd, gamma, eps)


def rmsnorm_backward(dout, cache, *, out=None):
    """RMS normalization backward (compiled): dx (x's shape) and dgamma (D,).
    ``out=(dx, dgamma)`` writes into caller buffers."""
    _validate.check_cache_type(cache, RMSNormCache, "rmsnorm_forward")
    x = cache.x
    if not (isinstance(x, np.ndarray) and x.ndim >= 2 and x.dtype in (np.float32, np.float64)
            and x.size > 0 and x.flags.c_contiguous):
        raise ValueError("cache.x is no longer the non-empty C-contiguous float array the forward stored")
    D = x.shape[-1]
    M = x.size // D
    if not _stats_ok(cache.rstd, M):
        raise ValueError(f"cache.rstd must be a float64 array of shape ({M},)")
    dout, xk, gamma, dtype = _contiguous_backward_inputs(dout, cache, D)
    read = (dout, x, xk, gamma, cache.gamma, cache.rstd)
    dx, dgamma = _grads_out(out, 2, x, dtype, NCHW, (D,), read, (dout, xk))
    _RMS_BACKWARD[dtype](dout.reshape(M, D), xk.reshape(M, D), cache.rstd, gamma, dx.reshape(M, D), dgamma,
                         get_num_threads())
    return dx, dgamma
