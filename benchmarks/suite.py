"""What is timed: the cases (operation, shape, dtype) and their contenders.

Contenders of a case, by role:
    fastnorm  the compiled kernel (the one every ratio divides)
    fastnorm_out  the same, writing into preallocated out= buffers: its GB/s
              is held against the copy, which also writes into an existing array
    numpy     fastnorm.reference: the forward, or the simplified backward
    graph     fastnorm.reference.batchnorm_backward, node by node (bn backward only)
    torch     PyTorch's ATen kernel, when torch is importable
Inputs and forward caches are made once per case, outside the timed region.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from . import torch_anchor
from .machine import last_level_cache_bytes

OPS = ("bn_fwd", "bn_bwd", "ln_fwd", "ln_bwd")
OP_LABELS = {
    "bn_fwd": "bn forward (train)",
    "bn_bwd": "bn backward",
    "ln_fwd": "ln forward",
    "ln_bwd": "ln backward",
}
DTYPES = ("float32", "float64")
CONTENDERS = ("fastnorm", "fastnorm_out", "numpy", "graph", "torch")

NOTEBOOK_SHAPE = (100, 500)
OVERHEAD_SHAPE = (2, 3)  # per-call overhead: the data is negligible
# issue 5's matrix
MATRIX_SHAPES = ((100, 500), (64, 4096), (512, 512), (4096, 1024), (32768, 64), (8, 65536))
LARGE_BYTES = 16 * 2**20  # from here on, GB/s is held against the copy bandwidth


def sweep_shapes() -> tuple[tuple[int, int], ...]:
    """`fastnorm bench`: the notebook's shape, few wide rows, many narrow rows,
    a square, and one whose float32 array is 1.5 times the last-level cache
    (larger than the cache, yet quick for the NumPy graph backward)."""
    D = 1024
    rows = math.ceil(1.5 * last_level_cache_bytes() / (D * 4) / 1024) * 1024
    return (NOTEBOOK_SHAPE, (8, 65536), (32768, 64), (1024, 1024), (rows, D))


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple[int, int]
    dtype: str

    @property
    def nbytes(self) -> int:
        """Size of x."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def traffic(self) -> int:
        """Minimum bytes moved: forward reads x and writes out; backward reads
        x and dout and writes dx."""
        return (2 if self.op.endswith("fwd") else 3) * self.nbytes

    @property
    def is_large(self) -> bool:
        return self.nbytes >= LARGE_BYTES

    @property
    def shape_text(self) -> str:
        return "x".join(map(str, self.shape))


def cases(shapes, dtypes=DTYPES, ops=OPS) -> list[Case]:
    """Every (shape, dtype, op), grouped by shape then dtype so inputs are built once each."""
    return [Case(op, tuple(shape), dtype) for shape, dtype, op in itertools.product(shapes, dtypes, ops)]


def make_inputs(shape, dtype, seed: int = 0) -> SimpleNamespace:
    """x, gamma, beta, dout of the notebook's kind: x with a nonzero mean and scale."""
    rng = np.random.default_rng(seed)
    N, D = shape
    return SimpleNamespace(
        x=(5.0 * rng.standard_normal(shape) + 12.0).astype(dtype),
        gamma=rng.standard_normal(D).astype(dtype),
        beta=rng.standard_normal(D).astype(dtype),
        dout=rng.standard_normal(shape).astype(dtype),
    )


# the batch-norm backward each NumPy-API role times (layer norm has one backward)
BN_BACKWARD = {
    "fastnorm": "batchnorm_backward",  # compiled, fused
    "fastnorm_out": "batchnorm_backward",
    "numpy": "batchnorm_backward_alt",  # reference, simplified
    "graph": "batchnorm_backward",  # reference, node by node
}


def _out_buffers(op: str, inputs) -> dict:
    """out= for fastnorm_out: out, or (dx, dgamma, dbeta)."""
    if op.endswith("fwd"):
        return {"out": np.empty_like(inputs.x)}
    return {"out": (np.empty_like(inputs.x), np.empty_like(inputs.gamma), np.empty_like(inputs.gamma))}


def _numpy_api_contender(module, role: str, op: str, inputs):
    """The zero-argument callable running op with module (fastnorm or fastnorm.reference)."""
    norm, param = ("batchnorm", {"mode": "train"}) if op.startswith("bn") else ("layernorm", {})
    forward = getattr(module, f"{norm}_forward")
    x, gamma, beta, dout = inputs.x, inputs.gamma, inputs.beta, inputs.dout
    out = _out_buffers(op, inputs) if role == "fastnorm_out" else {}
    if op.endswith("fwd"):
        return lambda: forward(x, gamma, beta, param, **out)
    backward = getattr(module, BN_BACKWARD[role] if norm == "batchnorm" else "layernorm_backward")
    _, cache = forward(x, gamma, beta, dict(param))
    return lambda: backward(dout, cache, **out)


def contenders(case: Case, inputs, roles) -> dict:
    """The callables of case for each role asked for and applicable."""
    import fastnorm
    from fastnorm import reference

    funcs = {}
    for role in roles:
        if role in ("fastnorm", "fastnorm_out"):
            funcs[role] = _numpy_api_contender(fastnorm, role, case.op, inputs)
        elif role == "numpy" or (role == "graph" and case.op == "bn_bwd"):
            funcs[role] = _numpy_api_contender(reference, role, case.op, inputs)
        elif role == "torch" and torch_anchor.available():
            funcs[role] = torch_anchor.contender(case.op, inputs)
    return funcs
