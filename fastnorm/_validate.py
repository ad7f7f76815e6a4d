"""Input checking shared by the compiled API and the NumPy reference.

Everything here runs before any kernel: a bad argument raises with a message
that names it (and the shapes), and no argument is modified.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

DEFAULT_EPS = 1e-5
DEFAULT_MOMENTUM = 0.9
MODES = ("train", "test")
# the 2-D API these checks serve, by name: fastnorm's, fastnorm.normalization's and
# fastnorm.reference's export lists are made from it
OPS = ("batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt", "layernorm_forward",
       "layernorm_backward")

_INF = math.inf
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, floating
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)  # the kernels' dtypes


def _describe(a) -> str:
    return f"shape {a.shape} and dtype {a.dtype}"


def as_real_array(name: str, value) -> np.ndarray:
    """`value` as an ndarray of a real numeric dtype (no copy when it already is one)."""
    if type(value) is np.ndarray:
        arr = value  # what asarray returns, without the call
    else:
        if isinstance(value, np.ma.MaskedArray) and np.ma.getmask(value).any():
            # asarray drops the mask: the masked values would be used as data
            raise TypeError(f"{name} is a masked array with masked elements; fill or remove them first")
        try:
            arr = np.asarray(value)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} could not be read as an array: {exc}") from None
    kind = arr.dtype.kind
    if kind in _NUMERIC_KINDS:
        return arr
    if kind == "c":
        raise TypeError(f"{name} is complex ({arr.dtype}); normalization needs real numbers")
    raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")


def compute_dtype(*arrays: np.ndarray) -> np.dtype:
    """The floating dtype a computation on `arrays` runs in.

    NumPy's result type, with integers and bool computed in float64 (as NumPy's
    mean would) and float16 in float32 (no half-precision kernel). Extended
    precision is refused rather than silently rounded to float64.
    """
    first = arrays[0].dtype
    if first is _F64 or first is _F32:  # the common case, without result_type's cost
        for a in arrays:
            if a.dtype is not first:
                break
        else:
            return first
    dtype = np.result_type(*arrays)
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    if dtype == np.float16:
        return np.dtype(np.float32)
    if dtype not in (np.float32, np.float64):
        raise TypeError(
            f"dtype {dtype} is not supported: fastnorm computes in float32 or float64; "
            "cast the arrays first"
        )
    return dtype


def finite_float(value) -> float | None:
    """`value` as a float when it is a finite real number (not a bool), else None.
    An int too large for a float (10**400) is not finite."""
    if type(value) is not float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            return None
        try:
            value = float(value)
        except OverflowError:
            return None
    return value if math.isfinite(value) else None


def real_in_range(name: str, value, low, high=math.inf, low_open=False) -> float:
    """`value` as a float, checked to be a finite real (not a bool) in [low, high]
    (or (low, high] with low_open)."""
    if type(value) is not float and (isinstance(value, (bool, np.bool_))
                                     or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    number = finite_float(value)
    if number is None or number < low or number > high or (low_open and number == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must be finite and in {bounds}, got {value!r}")
    return number


# The general halves of the parameter checks: batchnorm_args and layernorm_args test
# the usual value inline (exact type, in range) and call these only when that fails.

def _real_param(params: dict, pname: str, key: str, default, high) -> float:
    """params[key] (`default` when absent) as a finite float in [0, high]."""
    return real_in_range(f"{pname}['{key}']", params.get(key, default), 0.0, high)


def _ddof(params: dict, pname: str) -> int:
    ddof = params.get("ddof", 0)
    if isinstance(ddof, (bool, np.bool_)) or not isinstance(ddof, numbers.Integral) or ddof not in (0, 1):
        raise ValueError(f"{pname}['ddof'] must be 0 or 1, got {ddof!r}")
    return int(ddof)


def _mode(bn_param: dict) -> str:
    if "mode" not in bn_param:
        raise ValueError("bn_param['mode'] is required: 'train' or 'test'")
    mode = bn_param["mode"]
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"bn_param['mode'] must be 'train' or 'test', got {mode!r}")
    return mode


def _param_dict(params, pname: str) -> dict:
    if not isinstance(params, dict):
        raise TypeError(f"{pname} must be a dict, got {type(params).__name__}")
    return params


_ndarray = np.ndarray


def _features_last(x, gamma, beta, any_rank: bool) -> tuple:
    """x (N, D), or (..., D) of any rank >= 2 with any_rank, and gamma, beta (D,), as
    C-contiguous arrays of their compute dtype: the given arrays when they already are."""
    if type(x) is _ndarray and type(gamma) is _ndarray and type(beta) is _ndarray:
        dtype, shape = x.dtype, x.shape
        d_shape = shape[-1:]
        if ((dtype is _F64 or dtype is _F32) and gamma.dtype is dtype and beta.dtype is dtype
                and gamma.shape == d_shape and beta.shape == d_shape
                and (len(shape) == 2 or (any_rank and len(shape) > 2)) and x.size
                and x.flags.c_contiguous and gamma.flags.c_contiguous and beta.flags.c_contiguous):
            return x, gamma, beta  # the usual call: identity tests only
    x = as_real_array("x", x)
    gamma = as_real_array("gamma", gamma)
    beta = as_real_array("beta", beta)
    if x.ndim != 2 and not (any_rank and x.ndim > 2):
        wanted = "2-D (N, D) or of higher rank (..., D)" if any_rank else "2-D (N, D)"
        raise ValueError(f"x must be {wanted}, got {x.ndim}-D with shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"x must have at least one row and one feature, got shape {x.shape}")
    D = x.shape[-1]
    for name, arr in (("gamma", gamma), ("beta", beta)):
        if arr.shape != (D,):
            raise ValueError(f"{name} must have shape (D,) = ({D},) for x of shape {x.shape}, got {arr.shape}")
    dtype = compute_dtype(x, gamma, beta)
    return as_contiguous(x, dtype), as_contiguous(gamma, dtype), as_contiguous(beta, dtype)


def as_contiguous(arr: np.ndarray, dtype) -> np.ndarray:
    """np.ascontiguousarray(arr, dtype=dtype), returning arr at once when it already is."""
    if arr.dtype is dtype and arr.flags.c_contiguous:
        return arr
    return np.ascontiguousarray(arr, dtype=dtype)


_ABSENT = object()


def _running(bn_param: dict, key: str, x: np.ndarray) -> np.ndarray:
    """bn_param[key] as a C-contiguous (D,) array of x's dtype; zeros when absent."""
    D, dtype = x.shape[1], x.dtype
    arr = bn_param.get(key, _ABSENT)
    if arr is _ABSENT:
        return np.zeros(D, dtype)
    arr = as_real_array(f"bn_param['{key}']", arr)
    if arr.shape != (D,):
        raise ValueError(f"bn_param['{key}'] must have shape (D,) = ({D},) for x of shape {x.shape}, got {arr.shape}")
    return as_contiguous(arr, dtype)


def batchnorm_args(x, gamma, beta, bn_param) -> tuple:
    """The checked arguments of a batch-norm forward, for the compiled API and the reference:

        (x, gamma, beta, eps, ddof, train, momentum, running_mean, running_var)

    x (N, D), gamma, beta and the running statistics (D,) are C-contiguous arrays of
    the compute dtype (the given arrays when they already are; absent running
    statistics are zeros); eps and momentum are floats, ddof an int, train a bool.
    Each value is first tested for what the usual call passes (exact types, in
    range), so that call costs a few identity tests; any other value is converted,
    or refused with a message that names it.
    """
    if type(bn_param) is not dict:
        _param_dict(bn_param, "bn_param")
    get = bn_param.get
    mode, eps, momentum, ddof = get("mode"), get("eps", DEFAULT_EPS), get("momentum", DEFAULT_MOMENTUM), get("ddof", 0)
    if not (type(mode) is str and (mode == "train" or mode == "test")):
        mode = _mode(bn_param)
    if not (type(eps) is float and 0.0 <= eps < _INF):
        eps = _real_param(bn_param, "bn_param", "eps", DEFAULT_EPS, math.inf)
    if not (type(momentum) is float and 0.0 <= momentum <= 1.0):
        momentum = _real_param(bn_param, "bn_param", "momentum", DEFAULT_MOMENTUM, 1.0)
    if not (type(ddof) is int and (ddof == 0 or ddof == 1)):
        ddof = _ddof(bn_param, "bn_param")
    x, gamma, beta = _features_last(x, gamma, beta, False)
    dtype, d_shape = x.dtype, gamma.shape
    running_mean, running_var = get("running_mean"), get("running_var")
    if not (type(running_mean) is _ndarray and running_mean.dtype is dtype and running_mean.shape == d_shape
            and running_mean.flags.c_contiguous):
        running_mean = _running(bn_param, "running_mean", x)
    if not (type(running_var) is _ndarray and running_var.dtype is dtype and running_var.shape == d_shape
            and running_var.flags.c_contiguous):
        running_var = _running(bn_param, "running_var", x)
    train = mode == "train"
    if train and x.shape[0] <= ddof:
        raise ValueError(f"train mode with ddof={ddof} needs more than {ddof} row(s), got x of shape {x.shape}")
    return x, gamma, beta, eps, ddof, train, momentum, running_mean, running_var


def layernorm_args(x, gamma, beta, ln_param) -> tuple:
    """The checked arguments of a layer-norm forward over the last axis, (x, gamma, beta,
    eps, ddof): x (..., D) of any rank >= 2 and gamma, beta (D,) as batchnorm_args gives them."""
    if type(ln_param) is not dict:
        _param_dict(ln_param, "ln_param")
    eps, ddof = ln_param.get("eps", DEFAULT_EPS), ln_param.get("ddof", 0)
    if not (type(eps) is float and 0.0 <= eps < _INF):
        eps = _real_param(ln_param, "ln_param", "eps", DEFAULT_EPS, math.inf)
    if not (type(ddof) is int and (ddof == 0 or ddof == 1)):
        ddof = _ddof(ln_param, "ln_param")
    x, gamma, beta = _features_last(x, gamma, beta, True)
    if x.shape[-1] <= ddof:
        raise ValueError(f"ddof={ddof} needs more than {ddof} feature(s), got x of shape {x.shape}")
    return x, gamma, beta, eps, ddof


def check_dout(dout, x_shape, cache_dtype) -> tuple[np.ndarray, np.dtype]:
    """dout as an array of x's shape; returns it with the dtype the backward runs in."""
    dout = as_real_array("dout", dout)
    if dout.shape != tuple(x_shape):
        raise ValueError(f"dout must have the shape of x {tuple(x_shape)}, got {dout.shape}")
    if dout.dtype is cache_dtype and (cache_dtype is _F64 or cache_dtype is _F32):
        return dout, cache_dtype  # what compute_dtype gives then
    return dout, compute_dtype(dout, np.empty(0, cache_dtype))


def check_cache_type(cache, expected: type, forward_name: str):
    if not isinstance(cache, expected):
        raise TypeError(
            f"cache must be the one returned by {forward_name}, got {type(cache).__name__}"
        )


def check_out(name: str, out, shape, dtype, *inputs: np.ndarray) -> np.ndarray:
    """A caller's output buffer: exact shape and dtype, C-contiguous, writeable,
    and not overlapping any input (the cache keeps x by reference)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"{name} must have shape {tuple(shape)} and dtype {dtype}, got {_describe(out)}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable")
    for arr in inputs:
        if np.may_share_memory(out, arr):
            raise ValueError(f"{name} must not share memory with the inputs")
    return out
