"""The layer stack both models share: a loss call, the hidden layers, the softmax head.

FullyConnectedNet and ConvNet are the same stack after their first layers:

    X -> [stem: ConvNet's conv stages; none in FullyConnectedNet]
      -> {affine - [norm] - relu - [dropout]} for the hidden layers up to L - 1
      -> affine (layer L) - softmax

``LayerStack.loss`` checks X and y once (the subclass's ``check_inputs``); every
layer after it runs through the unchecked twins of ``fastnorm.layers``, since each
array it sees was made by the model itself. No gradient of X is computed: the
returned grads hold the parameters' only, so the first layer skips its dx.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from . import layers, normalization, reference
from ._validate import real_in_range


def positive_int(name, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def float_dtype(dtype) -> np.dtype:
    """np.float32 or np.float64 as a dtype; a TypeError naming what was given otherwise."""
    try:  # np.dtype(None) is float64, np.dtype("banana") a message without the argument
        ok = dtype is not None and np.dtype(dtype) in (np.float32, np.float64)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"dtype must be float32 or float64, got {getattr(dtype, '__name__', repr(dtype))}")
    return np.dtype(dtype)


KERNELS = ("fast", "reference")


def hidden_norm_functions(norm, kernels: str):
    """(forward, backward) of norm "batchnorm" or "layernorm" on (N, D), on the compiled
    kernels ("fast") or fastnorm.reference; (None, None) for norm None."""
    if norm is None:
        return None, None
    module = normalization if kernels == "fast" else reference
    if norm == "batchnorm":
        return module.batchnorm_forward, module.batchnorm_backward_alt
    return module.layernorm_forward, module.layernorm_backward


class Run(NamedTuple):
    """What one loss call needs beyond the parameters: its dropout settings (None without
    dropout) and, for a data-parallel shard, rows = (start, total) of the global batch."""

    dropout: dict | None = None
    rows: tuple | None = None
    adds_reg: bool = True   # the L2 term belongs to this call (once over the ranks)


class LayerStack:
    """Base of the models. A subclass sets params (W1..WL, b1..bL, gamma/beta of the
    normalized layers), bn_params, reg, num_layers, and provides check_inputs and
    _hidden_norm; a stem of `_stem_layers` layers before the hidden ones overrides
    _stem_forward and _stem_backward."""

    _stem_layers = 0

    def loss(self, X, y=None):
        """Scores (N, C) when y is None (test mode); else (loss, grads) in train mode.

        grads[k] has the shape and dtype of params[k].
        """
        X, y = self.check_inputs(X, y)
        mode = "test" if y is None else "train"
        for bn_param in self.bn_params:
            bn_param["mode"] = mode
        run = self._run(mode, X.shape[0])
        scores, caches = self._forward(X, run)
        if y is None:
            return scores
        loss, dscores = layers._softmax_loss(scores, y, None if run.rows is None else run.rows[1])
        grads = self._backward(dscores, caches)
        if self.reg and run.adds_reg:  # reg 0 adds nothing (and 0 * inf would make a NaN of an overflow)
            for i in range(1, self.num_layers + 1):
                W = self.params[f"W{i}"]
                loss += 0.5 * self.reg * float(np.sum(W * W))
                grads[f"W{i}"] += self.reg * W
        return loss, grads

    def _check_settings(self, kernels, reg, weight_scale, dtype) -> float:
        """The settings both models take, checked in this order; sets reg and dtype,
        returns the weight scale."""
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
        self.reg = real_in_range("reg", reg, 0.0)
        weight_scale = real_in_range("weight_scale", weight_scale, 0.0)
        self.dtype = float_dtype(dtype)
        return weight_scale

    def _add_norm_params(self, params, i: int, shape) -> None:
        """gamma_i ones and beta_i zeros of `shape`, in the model's dtype."""
        params[f"gamma{i}"] = np.ones(shape, dtype=self.dtype)
        params[f"beta{i}"] = np.zeros(shape, dtype=self.dtype)

    def _run(self, mode, n_rows) -> Run:
        return Run()

    def _stem_forward(self, X):
        return X, []

    def _stem_backward(self, dh, caches, grads):
        pass

    def _forward(self, X, run):
        """Scores (N, C) and the per-layer caches."""
        norm_forward = self._hidden_norm()[0]
        p = self.params
        h, caches = self._stem_forward(X)
        drop = run.dropout
        for i in range(self._stem_layers + 1, self.num_layers):
            h, c_aff = layers._affine(h, p[f"W{i}"], p[f"b{i}"])
            c_norm = c_drop = None
            if norm_forward is not None:
                h, c_norm = norm_forward(h, p[f"gamma{i}"], p[f"beta{i}"], self.bn_params[i - 1])
            h, c_relu = layers._relu(h)
            if drop is not None:
                h, c_drop = layers._dropout(h, drop["mode"], drop["p"], drop, run.rows)
            caches.append((c_aff, c_norm, c_relu, c_drop))
        L = self.num_layers
        scores, c_last = layers._affine(h, p[f"W{L}"], p[f"b{L}"])
        caches.append(c_last)
        return scores, caches

    def _backward(self, dscores, caches):
        """Gradients of every parameter from dscores (N, C), without the L2 term."""
        norm_backward = self._hidden_norm()[1]
        grads = {}
        L, S = self.num_layers, self._stem_layers
        dh, grads[f"W{L}"], grads[f"b{L}"] = layers._affine_grads(dscores, caches[-1], input_grad=L > 1)
        for i in range(L - 1, S, -1):
            c_aff, c_norm, c_relu, c_drop = caches[i - 1]
            if c_drop is not None:
                dh = layers._dropout_grad(dh, c_drop[1])
            dh = layers._relu_grad(dh, c_relu)
            if norm_backward is not None:
                dh, grads[f"gamma{i}"], grads[f"beta{i}"] = norm_backward(dh, c_norm)
            dh, grads[f"W{i}"], grads[f"b{i}"] = layers._affine_grads(dh, c_aff, input_grad=i > 1)
        self._stem_backward(dh, caches[:S], grads)
        return grads
