"""The notebook's layers: affine, ReLU, inverted dropout, softmax loss, and the norms.

Every forward returns ``(out, cache)`` and every backward takes
``(dout, cache)``, as in the notebook. Arrays keep their dtype: float32 in,
float32 through (NumPy's type promotion decides when dtypes are mixed).

    out, cache = affine_forward(x, w, b)      # x (N, d_1, ..., d_k), w (D, M), b (M,)
    dx, dw, db = affine_backward(dout, cache)
    out, cache = relu_forward(x)
    out, cache = dropout_forward(x, {"mode": "train", "p": 0.5})
    loss, dx = softmax_loss(scores, y)        # scores (N, C), y (N,) ints in [0, C)

The normalization functions are the compiled ones of ``fastnorm``;
``fastnorm.reference`` holds their NumPy twins.

Each public function checks its arguments, then calls a private twin that only
computes (``_affine``, ``_relu``, ``_dropout``, ``_softmax_loss`` and their
gradients); the models (fastnorm._model.LayerStack) check X and y once per loss
call and call the twins on the arrays they made themselves.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._validate import as_real_array
from .normalization import (
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    layernorm_backward,
    layernorm_forward,
)

__all__ = [
    "affine_forward",
    "affine_backward",
    "relu_forward",
    "relu_backward",
    "dropout_forward",
    "dropout_backward",
    "softmax_loss",
    "check_labels",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "layernorm_forward",
    "layernorm_backward",
]


def _check_cache(cache, length: int, what: str, forward: str):
    if not (isinstance(cache, tuple) and len(cache) == length):
        raise TypeError(f"cache must be the {what} returned by {forward}, got {type(cache).__name__}"
                        f"{f' of length {len(cache)}' if isinstance(cache, (tuple, list)) else ''}")


# ---------------------------------------------------------------- affine

def _check_affine(x, w, b):
    x = as_real_array("x", x)
    w = as_real_array("w", w)
    b = as_real_array("b", b)
    if x.ndim < 1 or w.ndim != 2 or b.ndim != 1:
        raise ValueError(
            f"affine needs x (N, ...), w (D, M) and b (M,), got shapes {x.shape}, {w.shape}, {b.shape}"
        )
    D, M = w.shape
    row = math.prod(x.shape[1:])
    if row != D or b.shape != (M,):
        raise ValueError(
            f"affine: x of shape {x.shape} has {row} values per sample, w is {w.shape} "
            f"and b is {b.shape}; need w (D, M) = ({row}, M) and b (M,)"
        )
    return x, w, b


def affine_forward(x, w, b):
    """out = x.reshape(N, D) @ w + b.

    x: (N, d_1, ..., d_k) with D = d_1 * ... * d_k; w: (D, M); b: (M,).
    Returns out (N, M) and cache (x, w, b).
    """
    return _affine(*_check_affine(x, w, b))


def _affine(x, w, b):
    out = x.reshape(x.shape[0], w.shape[0]) @ w  # not -1: NumPy cannot infer it for N = 0
    if out.dtype == np.result_type(out, b):
        out += b  # in place: one array fewer per layer
    else:
        out = out + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    """dout (N, M) -> dx (shape of x), dw (D, M), db (M,)."""
    _check_cache(cache, 3, "(x, w, b)", "affine_forward")
    x, w, b = cache
    dout = as_real_array("dout", dout)
    if dout.shape != (x.shape[0], w.shape[1]):
        raise ValueError(f"dout must have shape (N, M) = {(x.shape[0], w.shape[1])}, got {dout.shape}")
    return _affine_grads(dout, cache)


def _affine_grads(dout, cache, input_grad=True):
    """affine_backward on trusted arrays; dx is None without input_grad (a net's inputs need none)."""
    x, w, _ = cache
    dx = (dout @ w.T).reshape(x.shape) if input_grad else None
    dw = x.reshape(x.shape[0], w.shape[0]).T @ dout
    db = dout.sum(axis=0)
    return dx, dw, db


# ---------------------------------------------------------------- relu

def relu_forward(x):
    """out = max(0, x), any shape; the cache is x."""
    return _relu(as_real_array("x", x))


def _relu(x):
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    """dx = dout where x > 0, else 0 (the subgradient at 0 is taken as 0)."""
    if not isinstance(cache, np.ndarray):
        raise TypeError(f"cache must be the x returned by relu_forward, got {type(cache).__name__}")
    x = cache
    dout = as_real_array("dout", dout)
    if dout.shape != x.shape:
        raise ValueError(f"dout must have the shape of x {x.shape}, got {dout.shape}")
    return _relu_grad(dout, x)


def _relu_grad(dout, x):
    return np.where(x > 0, dout, np.zeros((), dout.dtype))


# ---------------------------------------------------------------- dropout

def _check_dropout_param(dropout_param):
    if not isinstance(dropout_param, dict):
        raise TypeError(f"dropout_param must be a dict, got {type(dropout_param).__name__}")
    mode = dropout_param.get("mode")
    if mode not in ("train", "test"):
        raise ValueError(f"dropout_param['mode'] must be 'train' or 'test', got {mode!r}")
    p = dropout_param.get("p")
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
        raise ValueError(f"dropout_param['p'] is the keep probability, a number in (0, 1], got {p!r}")
    seed = dropout_param.get("seed")
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ValueError(f"dropout_param['seed'] must be None or a non-negative integer, got {seed!r}")
    rng = dropout_param.get("rng")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout_param['rng'] must be a numpy Generator, got {type(rng).__name__}")
    return mode, float(p)


def _uniform(shape, dropout_param):
    """Uniform [0, 1) draws of `shape` from the param's generator, its seed, or NumPy's global one."""
    rng = dropout_param.get("rng")
    if rng is None and dropout_param.get("seed") is not None:
        # a fresh generator per call: the same seed gives the same mask every call,
        # without reseeding (and so disturbing) NumPy's global generator
        rng = np.random.default_rng(dropout_param["seed"])
    if rng is None:
        return np.random.rand(*shape)
    return rng.random(shape)


def dropout_forward(x, dropout_param):
    """Inverted dropout: keep each unit with probability p and scale it by 1/p.

    dropout_param: 'mode' ('train' or 'test'), 'p' (keep probability in (0, 1]),
    optional 'seed' (same mask on every call) or 'rng' (a np.random.Generator
    to draw from); without either, masks come from NumPy's global generator.
    In test mode out is x. Returns out (shape of x) and cache (dropout_param, mask).
    """
    mode, p = _check_dropout_param(dropout_param)
    return _dropout(as_real_array("x", x), mode, p, dropout_param)


def _dropout(x, mode, p, dropout_param, rows=None):
    """rows=(start, total): x is rows start.. of a batch of `total` rows (a data-parallel
    shard); the whole batch's draws are made and x's rows kept, as in one process."""
    if mode == "test" or p == 1:
        return x.copy(), (dropout_param, None)
    dtype = x.dtype if x.dtype.kind == "f" else np.float64
    if rows is None:
        uniform = _uniform(x.shape, dropout_param)
    else:
        start, total = rows
        uniform = _uniform((total, *x.shape[1:]), dropout_param)[start:start + x.shape[0]]
    mask = ((uniform < p) / p).astype(dtype, copy=False)
    return x * mask, (dropout_param, mask)


def dropout_backward(dout, cache):
    """dx = dout * mask in train mode, dout in test mode."""
    _check_cache(cache, 2, "(dropout_param, mask)", "dropout_forward")
    _, mask = cache
    dout = as_real_array("dout", dout)
    if mask is not None and dout.shape != mask.shape:
        raise ValueError(f"dout must have the shape of x {mask.shape}, got {dout.shape}")
    return _dropout_grad(dout, mask)


def _dropout_grad(dout, mask):
    return dout.copy() if mask is None else dout * mask


# ---------------------------------------------------------------- softmax loss

def check_labels(y, n_samples: int, num_classes: int, name: str = "y") -> np.ndarray:
    """y as an integer array of shape (n_samples,) with values in [0, num_classes)."""
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n_samples:
        raise ValueError(f"{name} must have shape ({n_samples},) to match the scores/inputs, got {y.shape}")
    whole_floats = y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    if y.dtype.kind not in "iu" and y.size and not whole_floats:
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    # the range before any cast: a float label of 1e300 must not wrap to a valid int64
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"{name} has labels outside [0, {num_classes}): min {y.min()}, max {y.max()}"
        )
    return y if y.dtype.kind in "iu" else y.astype(np.int64)


def softmax_loss(x, y):
    """Mean cross-entropy of the softmax of scores x (N, C) for labels y (N,).

    The scores are shifted by their row maximum first, so large scores do not
    overflow. Returns the loss (a Python float) and dx (N, C) in x's dtype.
    """
    x = as_real_array("x", x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"scores must be 2-D (N, C) with N >= 1, got shape {x.shape}")
    return _softmax_loss(x, check_labels(y, *x.shape))


def _softmax_loss(x, y, count=None):
    """count: the rows the mean is over, when x holds a shard of them (data-parallel)."""
    N = x.shape[0]
    shifted = x - x.max(axis=1, keepdims=True)
    Z = np.exp(shifted).sum(axis=1, keepdims=True)
    probs = np.exp(shifted) / Z
    rows = np.arange(N)
    correct = probs[rows, y]
    # log of the probability, except where it underflowed to 0: there the
    # log-softmax form, which stays finite
    fine = correct > 0
    log_correct = np.where(fine, np.log(np.where(fine, correct, 1)), shifted[rows, y] - np.log(Z[:, 0]))
    over = N if count is None else count
    loss = -log_correct.sum() / over
    dx = probs
    dx[rows, y] -= 1
    dx /= over
    return float(loss), dx


# ---------------------------------------------------------------- convolutional layers

from .conv_layers import (  # noqa: E402  (conv_layers builds on relu above)
    conv_backward,
    conv_forward,
    conv_norm_relu_backward,
    conv_norm_relu_forward,
    conv_norm_relu_pool_backward,
    conv_norm_relu_pool_forward,
    max_pool_backward,
    max_pool_forward,
)

__all__ += ["conv_forward", "conv_backward", "max_pool_forward", "max_pool_backward",
            "conv_norm_relu_forward", "conv_norm_relu_backward",
            "conv_norm_relu_pool_forward", "conv_norm_relu_pool_backward"]
