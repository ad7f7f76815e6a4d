"""A convolutional net on the spatial normalization kernels, for the Solver.

    model = ConvNet(input_dim=(3, 32, 32), num_filters=[16, 32], normalization="groupnorm", G=4)
    loss, grads = model.loss(X, y)   # X (N, C, H, W), y (N,): train mode
    scores = model.loss(X)           # y=None: test mode, scores (N, num_classes)

Architecture: {conv - [spatial batch norm | group norm] - relu - 2x2 max pool} per
entry of num_filters (stride-1 convolutions padded to keep H and W), then
affine - [batch norm | layer norm] - relu, then affine - softmax.

``loss`` is fastnorm._model.LayerStack's, as FullyConnectedNet's: X and y are
checked once, then the conv stages (the unchecked twins of the sandwiches in
fastnorm.conv_layers), the hidden layer and the head run on the model's own arrays.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import conv_layers, layers
from ._model import KERNELS, LayerStack, hidden_norm_functions, positive_int
from ._validate import as_real_array
from .conv_layers import CONV_NORMS, norm_functions

HIDDEN_NORM = {"spatial_batchnorm": "batchnorm", "groupnorm": "layernorm"}  # of the hidden affine layer
POOL = {"pool_height": 2, "pool_width": 2, "stride": 2}

__all__ = ["ConvNet"]


def _int_tuple(name, value, length=None):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    values = tuple(positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))
    if length is not None and len(values) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(values)}: {values}")
    if not values:
        raise ValueError(f"{name} must not be empty")
    return values


class ConvNet(LayerStack):
    """[conv - norm - relu - 2x2 max pool] x S - affine - norm - relu - affine - softmax.

    Parameters
    ----------
    input_dim : (C, H, W) of one sample; H and W must stay even through the S pools.
    num_filters : int (one stage) or a sequence of ints, the filters of each stage.
    filter_size : odd int; every convolution has stride 1 and pad (filter_size - 1) // 2.
    hidden_dim : int, width of the hidden affine layer.
    num_classes : int.
    normalization : None; "spatial_batchnorm" (the hidden layer then uses batch norm);
        or "groupnorm" with G groups (the hidden layer then uses layer norm).
    G : groups of group norm, required with it and dividing every filter count.
    reg : L2 strength; the loss adds 0.5 * reg * sum of ||W||^2 (weights only).
    weight_scale : std of the normal initial weights.
    dtype : np.float32 or np.float64; parameters and computation use it.
    seed : when given, the weights come from np.random.RandomState(seed) (the same
        draws as np.random.seed(seed) before the call) and NumPy's global generator
        is left alone; without it, from the global generator.
    kernels : "fast" (the compiled kernels) or "reference" (fastnorm.reference's NumPy).

    Initialisation, layer by layer in order: W = weight_scale * randn(F, C, k, k) per
    stage, then (D, hidden_dim) and (hidden_dim, num_classes); b zeros, gamma ones,
    beta zeros, all of dtype. Parameters W1..WL, b1..bL (L = S + 2) and, normalized,
    gamma1..gamma(S+1), beta1..beta(S+1): shape (F,) for spatial batch norm, (1, F, 1, 1)
    for group norm, (hidden_dim,) for the hidden layer. ``bn_params`` holds one dict per
    normalized layer (its running statistics for batch norm). ``input_dim`` is stored as
    the number of values per sample (C * H * W), what the Solver checks; ``input_shape``
    is (C, H, W).
    """

    def __init__(self, input_dim=(3, 32, 32), num_filters=32, filter_size=3, hidden_dim=100,
                 num_classes=10, normalization=None, G=None, reg=0.0, weight_scale=1e-3,
                 dtype=np.float32, seed=None, kernels="fast"):
        self.input_shape = _int_tuple("input_dim", input_dim, length=3)
        if isinstance(num_filters, numbers.Integral) and not isinstance(num_filters, (bool, np.bool_)):
            num_filters = (num_filters,)
        self.num_filters = _int_tuple("num_filters", num_filters)
        self.filter_size = positive_int("filter_size", filter_size)
        if self.filter_size % 2 == 0:
            raise ValueError(f"filter_size must be odd, so that a stride-1 convolution keeps H and W; "
                             f"got {self.filter_size}")
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        self.num_classes = positive_int("num_classes", num_classes)
        if normalization not in CONV_NORMS:
            raise ValueError(f"normalization must be one of {CONV_NORMS}, got {normalization!r}")
        if normalization == "groupnorm":
            if G is None:
                raise ValueError("normalization='groupnorm' needs G, the number of groups")
            G = positive_int("G", G)
            bad = [f for f in self.num_filters if f % G]
            if bad:
                raise ValueError(f"G={G} must divide every filter count; num_filters {list(self.num_filters)} "
                                 f"has {bad}")
        elif G is not None:
            raise ValueError(f"G applies only to normalization='groupnorm', got normalization={normalization!r}")
        weight_scale = self._check_settings(kernels, reg, weight_scale, dtype)
        if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)
                                 or not 0 <= seed < 2**32):
            raise ValueError(f"seed must be None or an integer in [0, 2**32), got {seed!r}")
        C, H, W = self.input_shape
        for stage in range(1, len(self.num_filters) + 1):
            if H % 2 or W % 2:
                raise ValueError(f"input_dim {self.input_shape} with {len(self.num_filters)} stages: the 2x2 "
                                 f"pool of stage {stage} gets H x W = {H} x {W}, which must be even")
            H, W = H // 2, W // 2

        self.normalization = normalization
        self.G = G
        self.kernels = kernels
        self.seed = seed
        self.num_stages = len(self.num_filters)
        self.num_layers = self.num_stages + 2
        self.input_dim = math.prod(self.input_shape)
        self.conv_param = {"stride": 1, "pad": (self.filter_size - 1) // 2}
        self.pool_param = dict(POOL)
        rng = np.random if seed is None else np.random.RandomState(seed)
        self.params = self._init_params(rng, weight_scale, self.num_filters[-1] * H * W)
        n_norm = self.num_stages + 1 if normalization else 0
        self.bn_params = [{"mode": "train"} for _ in range(n_norm)]

    def _init_params(self, rng, weight_scale, flat_dim):
        # layer by layer, in this order, so a seed reproduces the net
        params = {}
        k, S = self.filter_size, self.num_stages
        channels = (self.input_shape[0], *self.num_filters)
        shapes = [(channels[i + 1], channels[i], k, k) for i in range(S)]
        shapes += [(flat_dim, self.hidden_dim), (self.hidden_dim, self.num_classes)]
        for i, shape in enumerate(shapes, start=1):
            params[f"W{i}"] = (weight_scale * rng.randn(*shape)).astype(self.dtype)
            params[f"b{i}"] = np.zeros(shape[0] if i <= S else shape[1], dtype=self.dtype)
            if self.normalization and i <= S + 1:
                width = shape[0] if i <= S else shape[1]
                norm_shape = (1, width, 1, 1) if self.normalization == "groupnorm" and i <= S else (width,)
                self._add_norm_params(params, i, norm_shape)
        return params

    # ------------------------------------------------------------ helpers

    def _hidden_norm(self):
        """(forward, backward) of the hidden affine layer's norm, or (None, None)."""
        return hidden_norm_functions(HIDDEN_NORM.get(self.normalization), self.kernels)

    def check_inputs(self, X, y=None):
        """X as an (N, C, H, W) array of self.dtype; y checked labels."""
        X = as_real_array("X", X)
        if X.ndim != 4 or X.shape[1:] != self.input_shape or X.shape[0] == 0:
            hint = ""
            if X.ndim == 4 and X.shape[1:] == (*self.input_shape[1:], self.input_shape[0]):
                hint = "; for channels-last images pass X.transpose(0, 3, 1, 2)"
            elif X.ndim >= 2 and math.prod(X.shape[1:]) == self.input_dim:
                hint = f"; reshape it to (N, *{self.input_shape})"
            raise ValueError(f"X must be (N, C, H, W) = (N, *{self.input_shape}) with N >= 1, "
                             f"got shape {X.shape}{hint}")
        if y is not None:
            y = layers.check_labels(y, X.shape[0], self.num_classes)
        return X.astype(self.dtype, copy=False), y

    # ------------------------------------------------------------ the conv stages

    @property
    def _stem_layers(self):
        return self.num_stages

    def _stem_forward(self, X):
        p, stride, pad = self.params, self.conv_param["stride"], self.conv_param["pad"]
        pool = (self.pool_param["pool_height"], self.pool_param["pool_width"], self.pool_param["stride"])
        stage_norm = norm_functions(self.normalization, self.kernels) if self.normalization else None
        h, caches = X, []
        for i in range(1, self.num_stages + 1):
            norm = None if stage_norm is None else (
                *stage_norm, p[f"gamma{i}"], p[f"beta{i}"], self.bn_params[i - 1], self.G)
            h, cache = conv_layers._sandwich(h, p[f"W{i}"], p[f"b{i}"], stride, pad, pool, norm)
            caches.append(cache)
        return h, caches

    def _stem_backward(self, dh, caches, grads):
        for i in range(self.num_stages, 0, -1):  # no gradient of X
            dh, grads[f"W{i}"], grads[f"b{i}"], dgamma, dbeta = conv_layers._sandwich_grads(
                dh, caches[i - 1], input_grad=i > 1)
            if self.normalization:
                grads[f"gamma{i}"], grads[f"beta{i}"] = dgamma, dbeta

    def __repr__(self):
        G = f", G={self.G}" if self.G is not None else ""
        return (f"ConvNet(input_dim={self.input_shape}, num_filters={list(self.num_filters)}, "
                f"filter_size={self.filter_size}, hidden_dim={self.hidden_dim}, num_classes={self.num_classes}, "
                f"normalization={self.normalization!r}{G}, dtype={self.dtype.name}, kernels={self.kernels!r})")
