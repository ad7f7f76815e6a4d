"""PyTorch's CPU kernels as an anchor, when torch is importable.

torch is a benchmark-only option: it is found with importlib and imported
lazily, and every caller checks `available()` first. The timed callables call
the ATen ops directly (no autograd, no module), on tensors that share memory
with the NumPy inputs and are made once, outside the timed region.
"""

from __future__ import annotations

import contextlib
import importlib.util

EPS = 1e-5
MOMENTUM = 0.1  # torch's convention (the weight of the new batch); no effect on time
ALL_GRADS = [True, True, True]  # dx, dgamma, dbeta, like fastnorm's backward


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


def version() -> str | None:
    if not available():
        return None
    import torch

    return torch.__version__


@contextlib.contextmanager
def threads(n: int):
    """torch's intra-op thread count set to n for the block."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _tensors(inputs):
    import torch

    return {name: torch.from_numpy(arr) for name, arr in vars(inputs).items()}


def _batchnorm(t, D, dtype):
    import torch

    running_mean = torch.zeros(D, dtype=dtype)
    running_var = torch.ones(D, dtype=dtype)
    ops = torch.ops.aten

    def forward():
        return ops.native_batch_norm(t["x"], t["gamma"], t["beta"], running_mean, running_var,
                                     True, MOMENTUM, EPS)

    _, save_mean, save_invstd = forward()

    def backward():
        return ops.native_batch_norm_backward(t["dout"], t["x"], t["gamma"], running_mean,
                                              running_var, save_mean, save_invstd, True, EPS,
                                              ALL_GRADS)

    return forward, backward


def _layernorm(t, D):
    import torch

    ops = torch.ops.aten
    shape = [D]

    def forward():
        return ops.native_layer_norm(t["x"], shape, t["gamma"], t["beta"], EPS)

    _, mean, rstd = forward()

    def backward():
        return ops.native_layer_norm_backward(t["dout"], t["x"], shape, mean, rstd, t["gamma"],
                                              t["beta"], ALL_GRADS)

    return forward, backward


def contender(op: str, inputs):
    """The zero-argument callable that runs `op` with torch on inputs (x, gamma, beta, dout)."""
    t = _tensors(inputs)
    D = inputs.x.shape[1]
    if op.startswith("bn"):
        forward, backward = _batchnorm(t, D, t["x"].dtype)
    else:
        forward, backward = _layernorm(t, D)
    return forward if op.endswith("fwd") else backward
