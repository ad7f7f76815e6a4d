"""Input checking of the N-D normalizations (spatial batch norm, group norm, RMS norm).

One function per op, shared by the compiled API and the NumPy reference. Each
accepts the usual call (exact ndarrays of one kernel dtype, plain dicts) after a
few identity tests and runs the full checks otherwise; a bad argument raises
with a message that names it and the shapes, and no argument is modified.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from ._validate import DEFAULT_EPS, MODES, as_contiguous, as_real_array, compute_dtype, real_in_range

DEFAULT_MOMENTUM = 0.9  # batchnorm_forward's
# the N-D API these checks serve (see _validate.OPS)
OPS = ("spatial_batchnorm_forward", "spatial_batchnorm_backward", "spatial_groupnorm_forward",
       "spatial_groupnorm_backward", "rmsnorm_forward", "rmsnorm_backward")

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_ndarray = np.ndarray
_ABSENT = object()


def _param_dict(params, pname: str) -> dict:
    if not isinstance(params, dict):
        raise TypeError(f"{pname} must be a dict, got {type(params).__name__}")
    return params


def _eps(params: dict, pname: str) -> float:
    eps = params.get("eps", DEFAULT_EPS)
    if type(eps) is float and 0.0 <= eps < np.inf:
        return eps
    return real_in_range(f"{pname}['eps']", eps, 0.0, np.inf)


def _ddof(params: dict, pname: str) -> int:
    ddof = params.get("ddof", 0)
    if type(ddof) is int and (ddof == 0 or ddof == 1):
        return ddof
    if isinstance(ddof, (bool, np.bool_)) or not isinstance(ddof, numbers.Integral) or ddof not in (0, 1):
        raise ValueError(f"{pname}['ddof'] must be 0 or 1, got {ddof!r}")
    return int(ddof)


def _x_4d(x) -> np.ndarray:
    x = as_real_array("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got {x.ndim}-D with shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"x must have at least one element per axis, got shape {x.shape}")
    return x


def _in_dtype(x: np.ndarray, dtype) -> np.ndarray:
    """x in dtype, its memory layout kept (a channels-last x stays channels-last)."""
    return x if x.dtype == dtype else x.astype(dtype, order="K")


def _shaped(name: str, value, shape: tuple, what: str, x_shape: tuple) -> np.ndarray:
    arr = as_real_array(name, value)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {what} = {shape} for x of shape {x_shape}, got {arr.shape}")
    return arr


# ------------------------------------------------------------- spatial batch norm
# the checked settings of a batch norm call, after its x: gamma, beta and the running
# statistics C-contiguous (C,) in the compute dtype (also fastnorm.distributed's call)
BATCHNORM_SETTINGS = [("gamma", np.ndarray), ("beta", np.ndarray), ("eps", float), ("ddof", int),
                      ("train", bool), ("momentum", float), ("running_mean", np.ndarray),
                      ("running_var", np.ndarray)]


class SpatialBatchNormCall(NamedTuple("SpatialBatchNormCall", [("x", np.ndarray), *BATCHNORM_SETTINGS])):
    """x (N, C, H, W) in the compute dtype, its layout as given; then BATCHNORM_SETTINGS."""

    __slots__ = ()


def _spatial_batchnorm_full(x, gamma, beta, bn_param) -> SpatialBatchNormCall:
    bn_param = _param_dict(bn_param, "bn_param")
    if "mode" not in bn_param:
        raise ValueError("bn_param['mode'] is required: 'train' or 'test'")
    mode = bn_param["mode"]
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"bn_param['mode'] must be 'train' or 'test', got {mode!r}")
    eps = _eps(bn_param, "bn_param")
    momentum = real_in_range("bn_param['momentum']", bn_param.get("momentum", DEFAULT_MOMENTUM), 0.0, 1.0)
    ddof = _ddof(bn_param, "bn_param")
    x = _x_4d(x)
    N, C, H, W = x.shape
    c_shape = (C,)
    gamma = _shaped("gamma", gamma, c_shape, "(C,)", x.shape)
    beta = _shaped("beta", beta, c_shape, "(C,)", x.shape)
    dtype = compute_dtype(x, gamma, beta)
    running = []
    for key in ("running_mean", "running_var"):
        if key in bn_param:
            running.append(as_contiguous(_shaped(f"bn_param['{key}']", bn_param[key], c_shape, "(C,)",
                                                 x.shape), dtype))
        else:
            running.append(np.zeros(C, dtype))
    train = mode == "train"
    if train and N * H * W <= ddof:
        raise ValueError(f"train mode with ddof={ddof} needs more than {ddof} value(s) per channel, "
                         f"got x of shape {x.shape}")
    return SpatialBatchNormCall(_in_dtype(x, dtype), as_contiguous(gamma, dtype), as_contiguous(beta, dtype),
                                eps, ddof, train, momentum, running[0], running[1])


def spatial_batchnorm_call(x, gamma, beta, bn_param) -> SpatialBatchNormCall:
    """The checked arguments of spatial_batchnorm_forward."""
    if (type(x) is _ndarray and type(gamma) is _ndarray and type(beta) is _ndarray
            and type(bn_param) is dict and x.ndim == 4):
        dtype = x.dtype
        N, C, H, W = x.shape
        mode = bn_param.get("mode")
        eps = bn_param.get("eps", DEFAULT_EPS)
        momentum = bn_param.get("momentum", DEFAULT_MOMENTUM)
        ddof = bn_param.get("ddof", 0)
        train = mode == "train" if type(mode) is str else False
        rm = bn_param.get("running_mean", _ABSENT)
        rv = bn_param.get("running_var", _ABSENT)
        if ((dtype is _F64 or dtype is _F32) and gamma.dtype is dtype and beta.dtype is dtype
                and x.size > 0 and gamma.shape == (C,) and beta.shape == (C,)
                and gamma.flags.c_contiguous and beta.flags.c_contiguous
                and (train or (type(mode) is str and mode == "test"))
                and type(eps) is float and 0.0 <= eps < np.inf
                and type(momentum) is float and 0.0 <= momentum <= 1.0
                and type(ddof) is int and (ddof == 0 or ddof == 1) and (not train or N * H * W > ddof)):
            if rm is _ABSENT:
                rm = np.zeros(C, dtype)
            if rv is _ABSENT:
                rv = np.zeros(C, dtype)
            if (type(rm) is _ndarray and type(rv) is _ndarray and rm.dtype is dtype and rv.dtype is dtype
                    and rm.shape == (C,) and rv.shape == (C,)
                    and rm.flags.c_contiguous and rv.flags.c_contiguous):
                return SpatialBatchNormCall(x, gamma, beta, eps, ddof, train, momentum, rm, rv)
    return _spatial_batchnorm_full(x, gamma, beta, bn_param)


# ------------------------------------------------------------------- group norm
class GroupNormCall(NamedTuple):
    """x (N, C, H, W) C-contiguous in the compute dtype; gamma, beta flat (C,)."""

    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    G: int
    eps: float


def _groups(G, C: int) -> int:
    if isinstance(G, (bool, np.bool_)) or not isinstance(G, numbers.Integral):
        raise TypeError(f"G must be a positive integer dividing C, got {G!r}")
    G = int(G)
    if G < 1 or C % G != 0:
        raise ValueError(f"G must be a positive integer dividing C = {C}, got {G}")
    return G


def _spatial_groupnorm_full(x, gamma, beta, G, gn_param) -> GroupNormCall:
    gn_param = _param_dict(gn_param, "gn_param")
    eps = _eps(gn_param, "gn_param")
    x = _x_4d(x)
    C = x.shape[1]
    G = _groups(G, C)
    gamma = _shaped("gamma", gamma, (1, C, 1, 1), "(1, C, 1, 1)", x.shape)
    beta = _shaped("beta", beta, (1, C, 1, 1), "(1, C, 1, 1)", x.shape)
    dtype = compute_dtype(x, gamma, beta)
    return GroupNormCall(as_contiguous(x, dtype), as_contiguous(gamma, dtype).reshape(C),
                         as_contiguous(beta, dtype).reshape(C), G, eps)


def spatial_groupnorm_call(x, gamma, beta, G, gn_param) -> GroupNormCall:
    """The checked arguments of spatial_groupnorm_forward; keys of gn_param other
    than 'eps' are ignored (the notebook passes 'mode')."""
    if (type(x) is _ndarray and type(gamma) is _ndarray and type(beta) is _ndarray
            and type(gn_param) is dict and type(G) is int and x.ndim == 4 and G > 0):
        dtype = x.dtype
        C = x.shape[1]
        eps = gn_param.get("eps", DEFAULT_EPS)
        c_shape = (1, C, 1, 1)
        if ((dtype is _F64 or dtype is _F32) and gamma.dtype is dtype and beta.dtype is dtype
                and x.flags.c_contiguous and x.size > 0 and C % G == 0
                and gamma.shape == c_shape and beta.shape == c_shape
                and gamma.flags.c_contiguous and beta.flags.c_contiguous
                and type(eps) is float and 0.0 <= eps < np.inf):
            return GroupNormCall(x, gamma.reshape(C), beta.reshape(C), G, eps)
    return _spatial_groupnorm_full(x, gamma, beta, G, gn_param)


# --------------------------------------------------------------------- RMS norm
class RMSNormCall(NamedTuple):
    """x C-contiguous in the compute dtype, any rank >= 2 (rows: its last axis); gamma (D,)."""

    x: np.ndarray
    gamma: np.ndarray
    eps: float


def _rmsnorm_full(x, gamma, rms_param) -> RMSNormCall:
    rms_param = _param_dict(rms_param, "rms_param")
    eps = _eps(rms_param, "rms_param")
    x = as_real_array("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have rank >= 2 (..., D), got {x.ndim}-D with shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"x must have at least one row and one feature, got shape {x.shape}")
    gamma = _shaped("gamma", gamma, (x.shape[-1],), "(D,)", x.shape)
    dtype = compute_dtype(x, gamma)
    return RMSNormCall(as_contiguous(x, dtype), as_contiguous(gamma, dtype), eps)


def rmsnorm_call(x, gamma, rms_param) -> RMSNormCall:
    """The checked arguments of rmsnorm_forward."""
    if type(x) is _ndarray and type(gamma) is _ndarray and type(rms_param) is dict and x.ndim >= 2:
        dtype = x.dtype
        eps = rms_param.get("eps", DEFAULT_EPS)
        if ((dtype is _F64 or dtype is _F32) and gamma.dtype is dtype and x.flags.c_contiguous
                and x.size > 0 and gamma.shape == (x.shape[-1],) and gamma.flags.c_contiguous
                and type(eps) is float and 0.0 <= eps < np.inf):
            return RMSNormCall(x, gamma, eps)
    return _rmsnorm_full(x, gamma, rms_param)
