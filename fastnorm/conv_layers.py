"""The ConvolutionalNetworks notebook's layers: convolution, max pooling and the sandwiches.

NumPy over BLAS: a convolution is one im2col copy and one matrix product; max
pooling takes the maximum over one strided view of x per window offset.

    out, cache = conv_forward(x, w, b, {"stride": 1, "pad": 1})   # x (N, C, H, W), w (F, C, HH, WW)
    dx, dw, db = conv_backward(dout, cache)
    out, cache = max_pool_forward(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    dx = max_pool_backward(dout, cache)
    out, cache = conv_norm_relu_pool_forward(x, w, b, conv_param, pool_param, norm="groupnorm",
                                             gamma=gamma, beta=beta, norm_param={"mode": "train"}, G=4)
    dx, dw, db, dgamma, dbeta = conv_norm_relu_pool_backward(dout, cache)

Outputs are C-contiguous and keep the inputs' floating dtype. The sandwiches'
norm is None, "spatial_batchnorm" (gamma, beta (C,)) or "groupnorm" (gamma,
beta (1, C, 1, 1), G groups); kernels="reference" runs them on fastnorm.reference.
Each public function checks, then calls an unchecked twin (``_conv``, ``_max_pool``,
``_sandwich`` and their gradients), which ConvNet calls on the arrays it made.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from ._validate import as_real_array, compute_dtype
from .layers import _relu, _relu_grad

__all__ = [
    "conv_forward",
    "conv_backward",
    "max_pool_forward",
    "max_pool_backward",
    "conv_norm_relu_forward",
    "conv_norm_relu_backward",
    "conv_norm_relu_pool_forward",
    "conv_norm_relu_pool_backward",
    "CONV_NORMS",
    "norm_functions",
]

CONV_NORMS = (None, "spatial_batchnorm", "groupnorm")
KERNELS = ("fast", "reference")


def _param_int(params: dict, pname: str, key: str, low: int) -> int:
    if key not in params:
        raise ValueError(f"{pname}[{key!r}] is required")
    value = params[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{pname}[{key!r}] must be an integer >= {low}, got {value!r}")
    return int(value)


def _param_dict(params, pname: str) -> dict:
    if not isinstance(params, dict):
        raise TypeError(f"{pname} must be a dict, got {type(params).__name__}")
    return params


def _check_cache(cache, expected: type, forward: str):
    if not isinstance(cache, expected):
        raise TypeError(f"cache must be the one returned by {forward}, got {type(cache).__name__}")


def _check_dout(dout, shape) -> np.ndarray:
    dout = as_real_array("dout", dout)
    if dout.shape != tuple(shape):
        raise ValueError(f"dout must have the layer's output shape {tuple(shape)}, got {dout.shape}")
    return dout


def _as_images(name: str, x) -> np.ndarray:
    x = as_real_array(name, x)
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got {x.ndim}-D with shape {x.shape}")
    return x


def _windows(length: int, size: int, stride: int, what: str, shapes: str) -> int:
    """Output length of `size` windows `stride` apart over `length` values; they must tile it."""
    if size > length:
        raise ValueError(f"{what}: the window ({size}) is larger than the input ({length}); {shapes}")
    if (length - size) % stride:
        raise ValueError(f"{what}: windows of {size} with stride {stride} do not tile {length} values "
                         f"({length} - {size} is not divisible by {stride}); {shapes}")
    return (length - size) // stride + 1


# ---------------------------------------------------------------- convolution

class ConvCache(NamedTuple):
    cols: np.ndarray      # (C*HH*WW, N*Ho*Wo): the im2col matrix of the padded x, taps first
    w: np.ndarray         # (F, C, HH, WW)
    x_shape: tuple
    stride: int
    pad: int


def _tap(i: int, j: int, s: int, Ho: int, Wo: int):
    """The (H, W) slices of the values that filter tap (i, j) meets, one per output position."""
    return slice(i, i + s * (Ho - 1) + 1, s), slice(j, j + s * (Wo - 1) + 1, s)


def _conv_call(x, w, b, conv_param):
    x = _as_images("x", x)
    w = as_real_array("w", w)
    b = as_real_array("b", b)
    if w.ndim != 4 or b.ndim != 1:
        raise ValueError(f"conv needs w (F, C, HH, WW) and b (F,), got shapes {w.shape} and {b.shape}")
    N, C, H, W = x.shape
    F, Cw, HH, WW = w.shape
    shapes = f"x {x.shape}, w {w.shape}"
    if Cw != C:
        raise ValueError(f"conv: x has {C} channels but w has {Cw} (x {x.shape}, w (F, C, HH, WW) = {w.shape})")
    if b.shape != (F,):
        raise ValueError(f"conv: b must have shape (F,) = ({F},) for w of shape {w.shape}, got {b.shape}")
    if min(x.shape + w.shape) == 0:
        raise ValueError(f"conv needs non-empty x and w, got {shapes}")
    conv_param = _param_dict(conv_param, "conv_param")
    stride = _param_int(conv_param, "conv_param", "stride", 1)
    pad = _param_int(conv_param, "conv_param", "pad", 0)
    shapes += f", stride {stride}, pad {pad}"
    Ho = _windows(H + 2 * pad, HH, stride, "conv height (H + 2*pad, HH)", shapes)
    Wo = _windows(W + 2 * pad, WW, stride, "conv width (W + 2*pad, WW)", shapes)
    dtype = compute_dtype(x, w, b)
    return x.astype(dtype, copy=False), w.astype(dtype, copy=False), b.astype(dtype, copy=False), \
        stride, pad, Ho, Wo


def conv_forward(x, w, b, conv_param):
    """Convolution (cross-correlation, as the notebook's) with zero padding.

    x: (N, C, H, W); w: (F, C, HH, WW); b: (F,); conv_param: 'stride' (>= 1) and
    'pad' (>= 0, zeros on each side). (H + 2*pad - HH) and (W + 2*pad - WW) must be
    divisible by the stride. Returns out (N, F, Ho, Wo) with Ho = 1 + (H + 2*pad - HH) / stride,
    and the cache (im2col matrix, w, shapes).
    """
    x, w, b, s, pad, _, _ = _conv_call(x, w, b, conv_param)
    return _conv(x, w, b, s, pad)


def _conv(x, w, b, s, pad):
    """conv_forward on checked arrays of one dtype and a (stride, pad) that tiles x."""
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    Ho, Wo = (H + 2 * pad - HH) // s + 1, (W + 2 * pad - WW) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    # im2col with the taps first and (N, Ho, Wo) last: each copy reads rows of x
    cols = np.empty((C, HH, WW, N, Ho, Wo), dtype=x.dtype)
    for i in range(HH):
        for j in range(WW):
            cols[:, i, j] = xp[(slice(None), slice(None), *_tap(i, j, s, Ho, Wo))].transpose(1, 0, 2, 3)
    cols = cols.reshape(C * HH * WW, N * Ho * Wo)
    out = w.reshape(F, -1) @ cols                    # (F, N*Ho*Wo)
    out += b[:, None]
    out = np.ascontiguousarray(out.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3))
    return out, ConvCache(cols, w, x.shape, s, pad)


def conv_backward(dout, cache):
    """dout (N, F, Ho, Wo) -> dx (N, C, H, W), dw (F, C, HH, WW), db (F,)."""
    _check_cache(cache, ConvCache, "conv_forward")
    return _conv_grads(_check_dout(dout, _conv_out_shape(cache)), cache)


def _conv_out_shape(cache: ConvCache) -> tuple:
    (N, _, H, W), (F, _, HH, WW), s, pad = cache.x_shape, cache.w.shape, cache.stride, cache.pad
    return N, F, (H + 2 * pad - HH) // s + 1, (W + 2 * pad - WW) // s + 1


def _conv_grads(dout, cache, input_grad: bool = True):
    """conv_backward on a dout of the output's shape; dx is None without input_grad
    (a net's first layer needs none)."""
    cols, w, (N, C, H, W), s, pad = cache
    F, _, HH, WW = w.shape
    _, _, Ho, Wo = _conv_out_shape(cache)
    dout = dout.astype(cols.dtype, copy=False)
    d2 = dout.transpose(1, 0, 2, 3).reshape(F, N * Ho * Wo)
    db = d2.sum(axis=1)
    dw = (d2 @ cols.T).reshape(w.shape)
    if not input_grad:
        return None, dw, db
    dcols = (w.reshape(F, -1).T @ d2).reshape(C, HH, WW, N, Ho, Wo)
    # col2im: each filter tap adds its (C, N, Ho, Wo) slab back where it read it,
    # in that layout; one transpose to (N, C, H, W) at the end
    dxp = np.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=cols.dtype)
    for i in range(HH):
        for j in range(WW):
            dxp[(slice(None), slice(None), *_tap(i, j, s, Ho, Wo))] += dcols[:, i, j]
    dx = np.ascontiguousarray(dxp[:, :, pad:pad + H, pad:pad + W].transpose(1, 0, 2, 3))
    return dx, dw, db


# ---------------------------------------------------------------- max pooling

class PoolCache(NamedTuple):
    argmax: np.ndarray    # (N, C, Ho, Wo) uint8/int: the winner's row-major index in its window
    x_shape: tuple
    dtype: np.dtype
    pool: tuple           # (pool_height, pool_width, stride)


def _pool_geometry(x_shape: tuple, pool_param) -> tuple:
    """(pool_height, pool_width, stride) of a pool_param whose windows tile x of x_shape."""
    pool_param = _param_dict(pool_param, "pool_param")
    ph = _param_int(pool_param, "pool_param", "pool_height", 1)
    pw = _param_int(pool_param, "pool_param", "pool_width", 1)
    s = _param_int(pool_param, "pool_param", "stride", 1)
    shapes = f"x {tuple(x_shape)}, pool {ph}x{pw}, stride {s}"
    _windows(x_shape[2], ph, s, "max pool height (H, pool_height)", shapes)
    _windows(x_shape[3], pw, s, "max pool width (W, pool_width)", shapes)
    return ph, pw, s


def _pool_call(x, pool_param):
    x = _as_images("x", x)
    if x.size == 0:
        raise ValueError(f"max pool needs a non-empty x, got shape {x.shape}")
    ph, pw, s = _pool_geometry(x.shape, pool_param)
    if x.dtype.kind != "f":
        x = x.astype(compute_dtype(x))
    return x, ph, pw, s


def max_pool_forward(x, pool_param):
    """Max pooling over windows of x (N, C, H, W).

    pool_param: 'pool_height', 'pool_width', 'stride'; the windows must tile H and W
    ((H - pool_height) divisible by the stride). Returns out (N, C, Ho, Wo) and the cache
    (each window's argmax). Of tied maxima the first in row-major order gets the gradient.
    """
    return _max_pool(*_pool_call(x, pool_param))


def _max_pool(x, ph, pw, s):
    """max_pool_forward on a float x that the (ph, pw, s) windows tile."""
    Ho, Wo = (x.shape[2] - ph) // s + 1, (x.shape[3] - pw) // s + 1
    # one strided view per window offset: no copy of x, for any window and stride
    views = [x[(slice(None), slice(None), *_tap(*divmod(k, pw), s, Ho, Wo))] for k in range(ph * pw)]
    out = views[0].copy()
    for v in views[1:]:
        np.maximum(out, v, out=out)
    # the first maximum's offset = how many offsets come before one that equals the max
    argmax = np.zeros(out.shape, dtype=np.min_scalar_type(ph * pw))
    found = views[0] == out
    for v in views[1:]:
        argmax += ~found
        found |= v == out
    return out, PoolCache(argmax, x.shape, x.dtype, (ph, pw, s))


def max_pool_backward(dout, cache):
    """dout (N, C, Ho, Wo) -> dx (N, C, H, W): each window's gradient goes to its argmax."""
    _check_cache(cache, PoolCache, "max_pool_forward")
    return _max_pool_grad(_check_dout(dout, cache.argmax.shape), cache)


def _max_pool_grad(dout, cache):
    """max_pool_backward on a dout of the output's shape."""
    argmax, (N, C, H, W), dtype, (ph, pw, s) = cache
    Ho, Wo = argmax.shape[2:]
    dtype = np.result_type(dout.dtype, dtype)
    zero = np.zeros((), dtype)
    if s == ph == pw and H == Ho * ph and W == Wo * pw:
        # non-overlapping windows that cover x (2x2, stride 2): each value of dx written once,
        # by a product with the 0/1 mask where that is exact (finite dout: no inf * 0)
        dx = np.empty((N, C, H, W), dtype=dtype)
        finite = bool(np.isfinite(dout).all())
        for k in range(ph * pw):
            view = dx[(slice(None), slice(None), *_tap(*divmod(k, pw), s, Ho, Wo))]
            if finite:
                np.multiply(dout, argmax == k, out=view)
            else:
                view[...] = np.where(argmax == k, dout, zero)
        return dx
    dx = np.zeros((N, C, H, W), dtype=dtype)
    for k in range(ph * pw):  # overlapping windows add up; values between windows stay 0
        dx[(slice(None), slice(None), *_tap(*divmod(k, pw), s, Ho, Wo))] += np.where(argmax == k, dout, zero)
    return dx


# ---------------------------------------------------------------- sandwich layers

def norm_functions(norm: str, kernels: str = "fast"):
    """(forward, backward) of a spatial norm on the compiled kernels or fastnorm.reference."""
    import fastnorm  # at call time: fastnorm imports this module

    module = fastnorm if kernels == "fast" else fastnorm.reference
    name = {"spatial_batchnorm": "spatial_batchnorm", "groupnorm": "spatial_groupnorm"}[norm]
    return getattr(module, f"{name}_forward"), getattr(module, f"{name}_backward")


class SandwichCache(NamedTuple):
    conv: ConvCache
    norm: object          # the norm's own cache, or None
    relu: np.ndarray
    pool: PoolCache | None
    backward: object      # the norm's backward, or None


def _check_sandwich(norm, gamma, beta, norm_param, G, kernels):
    if norm not in CONV_NORMS:
        raise ValueError(f"norm must be one of {CONV_NORMS}, got {norm!r}")
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if norm is None:
        if gamma is not None or beta is not None or G is not None:
            raise ValueError("gamma, beta and G apply only with a norm; norm is None")
        return
    if gamma is None or beta is None or norm_param is None:
        raise ValueError(f"norm={norm!r} needs gamma, beta and norm_param")
    if norm == "groupnorm" and G is None:
        raise ValueError("norm='groupnorm' needs G, the number of groups")
    if norm != "groupnorm" and G is not None:
        raise ValueError(f"G applies only to norm='groupnorm', got norm={norm!r}")


def _sandwich_forward(x, w, b, conv_param, pool_param, norm, gamma, beta, norm_param, G, kernels):
    _check_sandwich(norm, gamma, beta, norm_param, G, kernels)
    x, w, b, s, pad, Ho, Wo = _conv_call(x, w, b, conv_param)
    pool = None if pool_param is None else _pool_geometry((x.shape[0], w.shape[0], Ho, Wo), pool_param)
    stage_norm = None if norm is None else (*norm_functions(norm, kernels), gamma, beta, norm_param, G)
    return _sandwich(x, w, b, s, pad, pool, stage_norm)


def _sandwich(x, w, b, stride, pad, pool, norm):
    """Either sandwich on checked arguments: pool (pool_height, pool_width, stride) or None;
    norm None or (forward, backward, gamma, beta, norm_param, G), G None but for group norm."""
    h, c_conv = _conv(x, w, b, stride, pad)
    c_norm = backward = None
    if norm is not None:
        forward, backward, gamma, beta, norm_param, G = norm
        if G is None:
            h, c_norm = forward(h, gamma, beta, norm_param)
        else:
            h, c_norm = forward(h, gamma, beta, G, norm_param)
    # max commutes with relu: pooling first gives the same values and gradients
    # from a relu on a quarter (for 2x2 pools) of the values
    c_pool = None
    if pool is not None:
        h, c_pool = _max_pool(h, *pool)
    h, c_relu = _relu(h)
    return h, SandwichCache(c_conv, c_norm, c_relu, c_pool, backward)


def sandwich_backward(dout, cache, forward_name: str, input_grad: bool = True):
    """The backward of either sandwich (named by its forward); dx is None without input_grad."""
    _check_cache(cache, SandwichCache, forward_name)
    if (cache.pool is None) != (forward_name == "conv_norm_relu_forward"):
        raise TypeError(f"cache must be the one returned by {forward_name}, got the other sandwich's")
    if not isinstance(cache.relu, np.ndarray):
        raise TypeError(f"cache must be the one returned by {forward_name}, its relu part is "
                        f"{type(cache.relu).__name__}")
    return _sandwich_grads(_check_dout(dout, cache.relu.shape), cache, input_grad)


def _sandwich_grads(dout, cache, input_grad: bool = True):
    """sandwich_backward on a dout of the output's shape: (dx, dw, db, dgamma, dbeta)."""
    c_conv, c_norm, c_relu, c_pool, backward = cache
    dh = _relu_grad(dout, c_relu)
    if c_pool is not None:
        dh = _max_pool_grad(dh, c_pool)
    dgamma = dbeta = None
    if backward is not None:
        dh, dgamma, dbeta = backward(dh, c_norm)
    dx, dw, db = _conv_grads(dh, c_conv, input_grad)
    return dx, dw, db, dgamma, dbeta


def conv_norm_relu_forward(x, w, b, conv_param, norm=None, gamma=None, beta=None, norm_param=None,
                           G=None, kernels="fast"):
    """conv -> [spatial batch norm | group norm] -> relu. Returns out (N, F, Ho, Wo) and the cache.

    norm_param is the norm's bn_param / gn_param dict ('mode' 'train' or 'test', ...).
    """
    return _sandwich_forward(x, w, b, conv_param, None, norm, gamma, beta, norm_param, G, kernels)


def conv_norm_relu_backward(dout, cache):
    """(dx, dw, db, dgamma, dbeta); dgamma and dbeta are None without a norm."""
    return sandwich_backward(dout, cache, "conv_norm_relu_forward")


def conv_norm_relu_pool_forward(x, w, b, conv_param, pool_param, norm=None, gamma=None, beta=None,
                                norm_param=None, G=None, kernels="fast"):
    """conv -> [spatial batch norm | group norm] -> relu -> max pool; see conv_norm_relu_forward."""
    if pool_param is None:
        raise ValueError("pool_param is required: 'pool_height', 'pool_width', 'stride'")
    return _sandwich_forward(x, w, b, conv_param, pool_param, norm, gamma, beta, norm_param, G, kernels)


def conv_norm_relu_pool_backward(dout, cache):
    """(dx, dw, db, dgamma, dbeta); dgamma and dbeta are None without a norm."""
    return sandwich_backward(dout, cache, "conv_norm_relu_pool_forward")
