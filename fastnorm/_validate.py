"""Input checking shared by the compiled API and the NumPy reference.

Everything here runs before any kernel: a bad argument raises with a message
that names it (and the shapes), and no argument is modified.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

DEFAULT_EPS = 1e-5
DEFAULT_MOMENTUM = 0.9
MODES = ("train", "test")

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


def _real_scalar(params: dict, pname: str, key: str, default, low, high, low_open=False):
    return real_in_range(f"{pname}['{key}']", params.get(key, default), low, high, low_open)


def _ddof(params: dict, pname: str) -> int:
    ddof = params.get("ddof", 0)
    if type(ddof) is int and (ddof == 0 or ddof == 1):
        return ddof  # the common case, before the slower isinstance checks
    if isinstance(ddof, (bool, np.bool_)) or not isinstance(ddof, numbers.Integral) or ddof not in (0, 1):
        raise ValueError(f"{pname}['ddof'] must be 0 or 1, got {ddof!r}")
    return int(ddof)


def _param_dict(params, pname: str) -> dict:
    if not isinstance(params, dict):
        raise TypeError(f"{pname} must be a dict, got {type(params).__name__}")
    return params


def _x_gamma_beta(x, gamma, beta):
    x = as_real_array("x", x)
    gamma = as_real_array("gamma", gamma)
    beta = as_real_array("beta", beta)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (N, D), got {x.ndim}-D with shape {x.shape}")
    N, D = x.shape
    if N == 0 or D == 0:
        raise ValueError(f"x must have at least one row and one feature, got shape {x.shape}")
    d_shape = (D,)
    for name, arr in (("gamma", gamma), ("beta", beta)):
        if arr.shape != d_shape:
            raise ValueError(f"{name} must have shape (D,) = ({D},) for x of shape {x.shape}, got {arr.shape}")
    return x, gamma, beta


class NormCall(NamedTuple):
    """A validated forward call: C-contiguous arrays of one floating dtype and its settings."""

    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    ddof: int
    train: bool = True
    momentum: float = DEFAULT_MOMENTUM
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None


def as_contiguous(arr: np.ndarray, dtype) -> np.ndarray:
    """np.ascontiguousarray(arr, dtype=dtype), returning arr at once when it already is."""
    if arr.dtype is dtype and arr.flags.c_contiguous:
        return arr
    return np.ascontiguousarray(arr, dtype=dtype)


_contiguous = as_contiguous


_RUNNING_KEYS = (("running_mean", "bn_param['running_mean']"), ("running_var", "bn_param['running_var']"))


def batchnorm_call(x, gamma, beta, bn_param) -> NormCall:
    bn_param = _param_dict(bn_param, "bn_param")
    if "mode" not in bn_param:
        raise ValueError("bn_param['mode'] is required: 'train' or 'test'")
    mode = bn_param["mode"]
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"bn_param['mode'] must be 'train' or 'test', got {mode!r}")
    eps = _real_scalar(bn_param, "bn_param", "eps", DEFAULT_EPS, 0.0, np.inf)
    momentum = _real_scalar(bn_param, "bn_param", "momentum", DEFAULT_MOMENTUM, 0.0, 1.0)
    ddof = _ddof(bn_param, "bn_param")
    x, gamma, beta = _x_gamma_beta(x, gamma, beta)
    N, D = x.shape
    dtype = compute_dtype(x, gamma, beta)
    running = []
    d_shape = (D,)
    for key, name in _RUNNING_KEYS:
        if key in bn_param:
            arr = as_real_array(name, bn_param[key])
            if arr.shape != d_shape:
                raise ValueError(
                    f"bn_param['{key}'] must have shape (D,) = ({D},) for x of shape {x.shape}, got {arr.shape}"
                )
            running.append(_contiguous(arr, dtype))
        else:
            running.append(np.zeros(D, dtype=dtype))
    train = mode == "train"
    if train and N <= ddof:
        raise ValueError(
            f"train mode with ddof={ddof} needs more than {ddof} row(s), got x of shape {x.shape}"
        )
    return NormCall(
        _contiguous(x, dtype), _contiguous(gamma, dtype), _contiguous(beta, dtype),
        eps, ddof, train, momentum, running[0], running[1],
    )


def layernorm_call(x, gamma, beta, ln_param) -> NormCall:
    ln_param = _param_dict(ln_param, "ln_param")
    eps = _real_scalar(ln_param, "ln_param", "eps", DEFAULT_EPS, 0.0, np.inf)
    ddof = _ddof(ln_param, "ln_param")
    x, gamma, beta = _x_gamma_beta(x, gamma, beta)
    if x.shape[1] <= ddof:
        raise ValueError(f"ddof={ddof} needs more than {ddof} feature(s), got x of shape {x.shape}")
    dtype = compute_dtype(x, gamma, beta)
    return NormCall(_contiguous(x, dtype), _contiguous(gamma, dtype), _contiguous(beta, dtype), eps, ddof)


_ABSENT = object()
_ndarray = np.ndarray


def _usual_arrays(x, gamma, beta, param):
    """(N, D) when x, gamma and beta are exact ndarrays of one kernel dtype (the same
    dtype object: byte-swapped or subclassed arrays do not count), C-contiguous, of
    shapes (N, D) and (D,) with N, D > 0, and param is a plain dict; else None."""
    if (type(x) is _ndarray and type(gamma) is _ndarray and type(beta) is _ndarray
            and type(param) is dict):
        dtype = x.dtype
        if ((dtype is _F64 or dtype is _F32) and gamma.dtype is dtype and beta.dtype is dtype
                and x.ndim == 2 and x.flags.c_contiguous
                and gamma.flags.c_contiguous and beta.flags.c_contiguous):
            N, D = x.shape
            if N > 0 and D > 0 and gamma.shape == (D,) and beta.shape == (D,):
                return N, D
    return None


def _usual_eps_ddof(eps, ddof, n_reduced: int) -> bool:
    """A float eps in [0, inf) and an int ddof of 0 or 1 below the reduced length."""
    return (type(eps) is float and 0.0 <= eps < math.inf
            and type(ddof) is int and (ddof == 0 or ddof == 1) and n_reduced > ddof)


def batchnorm_args(x, gamma, beta, bn_param) -> tuple:
    """batchnorm_call's fields as a plain tuple in NormCall's order, accepting the usual
    call at the cost of a few identity and range tests.

    The usual call: _usual_arrays, plus any running statistics already exact
    C-contiguous (D,) arrays of x's dtype object; bn_param with a str mode, float
    eps and momentum in range, and an int ddof (0 or 1; fewer than N in train mode).
    Anything else, valid or not, goes to batchnorm_call, which converts or raises
    with its messages; for the usual call both give the same values.
    """
    shape = _usual_arrays(x, gamma, beta, bn_param)
    if shape is not None:
        N, D = shape
        mode = bn_param.get("mode")
        eps = bn_param.get("eps", DEFAULT_EPS)
        momentum = bn_param.get("momentum", DEFAULT_MOMENTUM)
        ddof = bn_param.get("ddof", 0)
        train = type(mode) is str and mode == "train"
        if ((train or (type(mode) is str and mode == "test"))
                and type(momentum) is float and 0.0 <= momentum <= 1.0
                and _usual_eps_ddof(eps, ddof, N if train else 2)):  # test mode: any ddof
            dtype = x.dtype
            running_mean = bn_param.get("running_mean", _ABSENT)
            running_var = bn_param.get("running_var", _ABSENT)
            if running_mean is _ABSENT:
                running_mean = np.zeros(D, dtype)
            if running_var is _ABSENT:
                running_var = np.zeros(D, dtype)
            if (type(running_mean) is _ndarray and type(running_var) is _ndarray
                    and running_mean.dtype is dtype and running_var.dtype is dtype
                    and running_mean.shape == (D,) and running_var.shape == (D,)
                    and running_mean.flags.c_contiguous and running_var.flags.c_contiguous):
                return x, gamma, beta, eps, ddof, train, momentum, running_mean, running_var
    return batchnorm_call(x, gamma, beta, bn_param)


def layernorm_args(x, gamma, beta, ln_param) -> tuple:
    """(x, gamma, beta, eps, ddof) of layernorm_call, accepting the usual call
    (_usual_arrays; ln_param with a float eps, an int ddof below D) quickly."""
    shape = _usual_arrays(x, gamma, beta, ln_param)
    if shape is not None:
        eps = ln_param.get("eps", DEFAULT_EPS)
        ddof = ln_param.get("ddof", 0)
        if _usual_eps_ddof(eps, ddof, shape[1]):
            return x, gamma, beta, eps, ddof
    return layernorm_call(x, gamma, beta, ln_param)[:5]


def write_running_stats(bn_param: dict, running_mean: np.ndarray, running_var: np.ndarray) -> None:
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var


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
