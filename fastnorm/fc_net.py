"""The notebook's FullyConnectedNet, on the compiled normalization kernels.

    model = FullyConnectedNet([100, 100], input_dim=3 * 32 * 32, num_classes=10,
                              normalization="batchnorm", weight_scale=2e-2)
    loss, grads = model.loss(X, y)   # X (N, d_1, ..., d_k), y (N,): train mode
    scores = model.loss(X)           # y=None: test mode, scores (N, C)

Architecture: {affine - [batch/layer norm] - relu - [dropout]} x (L - 1) -
affine - softmax, with L = len(hidden_dims) + 1. ``kernels="reference"`` runs
the same model on the NumPy normalization of ``fastnorm.reference`` instead of
the compiled kernels, so the two can be timed on identical models.

``loss`` (fastnorm._model.LayerStack's, shared with ConvNet) checks X and y once
(``check_inputs``); the layers then run through their unchecked twins in
``fastnorm.layers``, since every array they see was made by the model itself.
The normalization calls stay the public ones (their checks of a plain
contiguous float array are a few identity tests).
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from . import layers
from ._model import KERNELS, LayerStack, Run, hidden_norm_functions, positive_int
from ._validate import as_real_array, real_in_range

NORMALIZATIONS = (None, "batchnorm", "layernorm")

__all__ = ["FullyConnectedNet", "NORMALIZATIONS", "KERNELS"]


class FullyConnectedNet(LayerStack):
    """A fully-connected net with optional batch/layer norm and inverted dropout.

    Parameters
    ----------
    hidden_dims : sequence of ints, the size of each hidden layer (may be empty).
    input_dim : int, values per sample (X of shape (N, d_1, ..., d_k) is flattened).
    num_classes : int, C.
    dropout_keep_ratio : keep probability in (0, 1]; 1 means no dropout.
    normalization : None, "batchnorm" or "layernorm" (after each hidden affine).
    reg : L2 strength; the loss adds 0.5 * reg * sum of ||W||^2 (weights only).
    weight_scale : std of the normal initial weights.
    dtype : np.float32 or np.float64; parameters and computation use it.
    seed : when given, dropout masks come from a generator made from it on each
        loss call, so every call draws the same masks (for gradient checks);
        without it, masks come from NumPy's global generator.
    kernels : "fast" (the compiled kernels) or "reference" (fastnorm.reference's NumPy
        forward and simplified backward, batchnorm_backward_alt), same results to round-off.
    comm : an mpi4py communicator for data-parallel training (needs ``fastnorm[mpi]``;
        see ``Solver(..., comm=comm)``), or None. With it, X and y of a train-mode
        loss call are this rank's shard of the global batch (rows in rank order,
        possibly none): batch norm uses the global batch's statistics
        (fastnorm.distributed), dropout keeps this shard's rows of the global batch's
        masks, and loss and grads are this shard's terms of the global batch's
        (the data term summed over the shard over the global batch size, the L2 term
        on rank 0 only), which sum over the ranks to those of one process. Test mode
        (y=None) is local. Every rank must make the same train-mode calls.

    Initialisation, layer by layer in order: W = weight_scale * np.random.randn(in, out)
    from NumPy's global generator, b zeros, gamma ones, beta zeros, all cast to dtype.
    Parameters are W1..WL, b1..bL and, when normalized, gamma1..gamma(L-1), beta1..beta(L-1).
    ``bn_params`` holds one independent dict per normalized layer (its running
    statistics for batch norm); ``dropout_param`` the dropout settings.
    """

    comm = None  # what a model pickled before the attribute existed reads

    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10, dropout_keep_ratio=1,
                 normalization=None, reg=0.0, weight_scale=1e-2, dtype=np.float32, seed=None,
                 kernels="fast", comm=None):
        hidden = [positive_int(f"hidden_dims[{i}]", h) for i, h in enumerate(self._as_list(hidden_dims))]
        self.input_dim = positive_int("input_dim", input_dim)
        self.num_classes = positive_int("num_classes", num_classes)
        keep = real_in_range("dropout_keep_ratio", dropout_keep_ratio, 0.0, 1.0, low_open=True)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        weight_scale = self._check_settings(kernels, reg, weight_scale, dtype)
        if comm is not None:
            from .distributed import training  # an ImportError saying how to install mpi4py
            training.check_comm(comm)
            if kernels != "fast":
                raise ValueError("comm needs kernels='fast': synchronized batch norm runs on the compiled kernels")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")

        self.normalization = normalization
        self.kernels = kernels
        self.comm = comm
        self.use_dropout = keep != 1
        self.num_layers = len(hidden) + 1
        self.seed = seed
        self.params = self._init_params([self.input_dim, *hidden, self.num_classes], weight_scale)
        self.dropout_param = {"mode": "train", "p": keep} if self.use_dropout else {}
        if seed is not None and self.use_dropout:
            self.dropout_param["seed"] = seed
        n_norm = self.num_layers - 1 if normalization else 0
        self.bn_params = [{"mode": "train"} for _ in range(n_norm)]

    @staticmethod
    def _as_list(hidden_dims):
        if isinstance(hidden_dims, (str, bytes)) or not hasattr(hidden_dims, "__iter__"):
            raise TypeError(f"hidden_dims must be a sequence of ints, got {hidden_dims!r}")
        return list(hidden_dims)

    def _init_params(self, dims, weight_scale):
        # layer by layer, in this order, so np.random.seed(...) reproduces the notebook's nets
        params = {}
        for i in range(1, len(dims)):
            fan_in, fan_out = dims[i - 1], dims[i]
            params[f"W{i}"] = (weight_scale * np.random.randn(fan_in, fan_out)).astype(self.dtype)
            params[f"b{i}"] = np.zeros(fan_out, dtype=self.dtype)
            if self.normalization and i < len(dims) - 1:
                self._add_norm_params(params, i, fan_out)
        return params

    # ------------------------------------------------------------ helpers

    def _hidden_norm(self):
        """(forward, backward) of the configured normalization and kernels, or (None, None)."""
        if self.comm is not None and self.normalization == "batchnorm":
            from .distributed import sync_bn
            return functools.partial(sync_bn.sync_batchnorm_forward, comm=self.comm), sync_bn.sync_batchnorm_backward
        return hidden_norm_functions(self.normalization, self.kernels)

    def check_inputs(self, X, y=None):
        """X as an (N, ...) array of self.dtype with input_dim values per sample; y checked labels.
        The only check of X and y in a loss call: the layers after it trust their inputs."""
        X = as_real_array("X", X)
        if X.ndim < 2 or (X.shape[0] == 0 and self.comm is None):  # a shard may be empty
            raise ValueError(f"X must be (N, d_1, ..., d_k) with N >= 1, got shape {X.shape}")
        row = math.prod(X.shape[1:])
        if row != self.input_dim:
            raise ValueError(
                f"X of shape {X.shape} has {row} values per sample but the model's input_dim is {self.input_dim}"
            )
        if y is not None:
            y = layers.check_labels(y, X.shape[0], self.num_classes)
        return X.astype(self.dtype, copy=False), y

    # ------------------------------------------------------------ loss

    def _run(self, mode, n_rows):
        """This call's dropout settings and, with comm in train mode, the shard's rows."""
        drop = None
        if self.use_dropout:
            self.dropout_param["mode"] = mode
            drop = dict(self.dropout_param)  # per call: the seeded generator must not persist
            if "seed" in drop:
                drop["rng"] = np.random.default_rng(drop.pop("seed"))
        if self.comm is None or mode == "test":
            return Run(drop)
        from .distributed import training
        rows = training.shard_rows(self.comm, n_rows)  # (start, total)
        return Run(drop, rows, adds_reg=self.comm.Get_rank() == 0)  # the L2 term once

    def __getstate__(self):
        # a communicator cannot be pickled (checkpoints): Solver.from_checkpoint(..., comm=)
        # attaches one to the loaded model
        return {**self.__dict__, "comm": None}

    def __repr__(self):
        hidden = [self.params[f"W{i}"].shape[1] for i in range(1, self.num_layers)]
        return (f"FullyConnectedNet({hidden}, input_dim={self.input_dim}, num_classes={self.num_classes}, "
                f"normalization={self.normalization!r}, dtype={self.dtype.name}, kernels={self.kernels!r})")
