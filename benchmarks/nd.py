"""The N-D normalizations timed: `fastnorm bench --nd`.

Spatial batch norm (NCHW and channels-last) and group norm on convnet shapes, layer
norm and RMS norm on transformer shapes; forward and backward, float32 and float64.
Contenders: fastnorm, the NumPy reference (fastnorm.reference) and PyTorch's CPU
ops at the same thread count (torch.ops.aten.native_batch_norm[_backward],
native_group_norm[_backward], native_layer_norm[_backward]; RMS norm has no
compiled CPU backward in torch: _fused_rms_norm forward, autograd's backward of
F.rms_norm). Channels-last torch tensors are .contiguous(memory_format=torch.channels_last)
of the same values. Inputs and forward caches are made outside the timed region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import timing, torch_anchor
from .report import ALLOCATION_LINE, format_table, seconds_text, speedup_text

EPS = 1e-5
GROUPS = 32  # group norm's G on the convnet shapes (the group-norm paper's default)
CONV_SHAPES = ((64, 64, 32, 32), (128, 256, 8, 8), (8, 32, 112, 112))
SEQ_SHAPES = ((8, 512, 768), (4096, 1024))
QUICK_CONV_SHAPES = ((16, 32, 16, 16),)
QUICK_SEQ_SHAPES = ((4, 128, 256),)
DTYPES = ("float32", "float64")
NCHW, CHANNELS_LAST = "nchw", "channels_last"
OPS = ("sbn_fwd", "sbn_bwd", "gn_fwd", "gn_bwd", "ln_fwd", "ln_bwd", "rms_fwd", "rms_bwd")
LABELS = {"sbn": "spatial bn", "gn": "group norm", "ln": "layer norm", "rms": "rms norm"}


@dataclass(frozen=True)
class NdCase:
    op: str
    shape: tuple[int, ...]
    dtype: str
    layout: str = NCHW

    @property
    def norm(self) -> str:
        return self.op.rsplit("_", 1)[0]

    @property
    def forward(self) -> bool:
        return self.op.endswith("fwd")

    @property
    def label(self) -> str:
        return f"{LABELS[self.norm]} {'fwd' if self.forward else 'bwd'}"

    @property
    def traffic(self) -> int:
        """Minimum bytes moved (forward: x in, out; backward: x, dout in, dx out)."""
        return (2 if self.forward else 3) * math.prod(self.shape) * np.dtype(self.dtype).itemsize


def cases(quick: bool = False, dtypes=DTYPES, ops=OPS) -> list[NdCase]:
    """The cells of `--nd`, restricted to the given dtypes and ops (`--dtypes`, `--ops`)."""
    conv = QUICK_CONV_SHAPES if quick else CONV_SHAPES
    seq = QUICK_SEQ_SHAPES if quick else SEQ_SHAPES
    out = []
    for dtype in dtypes:
        for shape in conv:
            for layout in (NCHW, CHANNELS_LAST):
                out += [NdCase("sbn_fwd", shape, dtype, layout), NdCase("sbn_bwd", shape, dtype, layout)]
            out += [NdCase("gn_fwd", shape, dtype), NdCase("gn_bwd", shape, dtype)]
        for shape in seq:
            out += [NdCase(op, shape, dtype) for op in ("ln_fwd", "ln_bwd", "rms_fwd", "rms_bwd")]
    return [case for case in out if case.op in ops]


def _in_layout(a: np.ndarray, layout: str) -> np.ndarray:
    if layout == CHANNELS_LAST:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    return a


def make_inputs(case: NdCase, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shape = case.shape
    C = shape[1] if case.norm in ("sbn", "gn") else shape[-1]
    x = (5.0 * rng.standard_normal(shape) + 12.0).astype(case.dtype)
    dout = rng.standard_normal(shape).astype(case.dtype)
    return {"x": _in_layout(x, case.layout), "dout": _in_layout(dout, case.layout),
            "gamma": rng.standard_normal(C).astype(case.dtype), "beta": rng.standard_normal(C).astype(case.dtype)}


def _numpy_api(module, case: NdCase, a: dict):
    """The zero-argument callable of case's op with fastnorm or fastnorm.reference."""
    x, dout, gamma, beta = a["x"], a["dout"], a["gamma"], a["beta"]
    if case.norm == "sbn":
        def fwd():
            return module.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
        bwd = module.spatial_batchnorm_backward
    elif case.norm == "gn":
        g4, b4 = gamma.reshape(1, -1, 1, 1), beta.reshape(1, -1, 1, 1)

        def fwd():
            return module.spatial_groupnorm_forward(x, g4, b4, GROUPS, {})
        bwd = module.spatial_groupnorm_backward
    elif case.norm == "rms":
        def fwd():
            return module.rmsnorm_forward(x, gamma, {})
        bwd = module.rmsnorm_backward
    else:   # layer norm over the last axis; (..., D) viewed as rows
        rows = x.reshape(-1, x.shape[-1])
        dout = dout.reshape(rows.shape)

        def fwd():
            return module.layernorm_forward(rows, gamma, beta, {})
        bwd = module.layernorm_backward
    if case.forward:
        return fwd
    cache = fwd()[1]
    return lambda: bwd(dout, cache)


def _torch(case: NdCase, a: dict):
    import torch

    ops = torch.ops.aten
    x, dout = torch.from_numpy(np.ascontiguousarray(a["x"])), torch.from_numpy(np.ascontiguousarray(a["dout"]))
    if case.layout == CHANNELS_LAST:
        x, dout = (t.contiguous(memory_format=torch.channels_last) for t in (x, dout))
    gamma, beta = torch.from_numpy(a["gamma"]), torch.from_numpy(a["beta"])
    grads = [True, True, True]
    if case.norm == "sbn":
        C = x.shape[1]
        rm, rv = torch.zeros(C, dtype=x.dtype), torch.ones(C, dtype=x.dtype)

        def fwd():
            return ops.native_batch_norm(x, gamma, beta, rm, rv, True, 0.1, EPS)
        _, m, r = fwd()

        def bwd():
            return ops.native_batch_norm_backward(dout, x, gamma, rm, rv, m, r, True, EPS, grads)
    elif case.norm == "gn":
        N, C = x.shape[:2]
        HW = math.prod(x.shape[2:])

        def fwd():
            return ops.native_group_norm(x, gamma, beta, N, C, HW, GROUPS, EPS)
        _, m, r = fwd()

        def bwd():
            return ops.native_group_norm_backward(dout, x, m, r, gamma, N, C, HW, GROUPS, grads)
    elif case.norm == "ln":
        shape = [x.shape[-1]]

        def fwd():
            return ops.native_layer_norm(x, shape, gamma, beta, EPS)
        _, m, r = fwd()

        def bwd():
            return ops.native_layer_norm_backward(dout, x, shape, m, r, gamma, beta, grads)
    else:
        shape = [x.shape[-1]]

        def fwd():
            with torch.no_grad():
                return ops._fused_rms_norm(x, shape, gamma, EPS)
        xg, gg = x.clone().requires_grad_(True), gamma.clone().requires_grad_(True)
        y = torch.nn.functional.rms_norm(xg, shape, gg, EPS)

        def bwd():
            return torch.autograd.grad(y, (xg, gg), dout, retain_graph=True)
    return fwd if case.forward else bwd


@dataclass
class NdCell:
    case: NdCase
    threads: int
    timings: dict

    def speedup(self, role: str) -> float | None:
        if role not in self.timings:
            return None
        return self.timings[role].median / self.timings["fastnorm"].median


def run(cases_: list[NdCase], threads: list[int], repeat: int, min_time: float, budget: float | None,
        with_torch: bool, with_numpy: bool = True, clock_mode: str = "auto") -> list[NdCell]:
    import fastnorm
    from fastnorm import reference

    from .runner import thread_count

    cells = []
    for case in cases_:
        inputs = make_inputs(case)
        funcs = {"fastnorm": _numpy_api(fastnorm, case, inputs)}
        if with_numpy:
            funcs["numpy"] = _numpy_api(reference, case, inputs)
        if with_torch:
            funcs["torch"] = _torch(case, inputs)
        for n in threads:
            clock = timing.CLOCKS[timing.clock_for(clock_mode, n)]
            with thread_count(n, with_torch):
                cells.append(NdCell(case, n, timing.interleaved(funcs, repeat, min_time, clock, budget)))
    return cells


def rows(cells: list[NdCell]) -> tuple[list[str], list[list[str]]]:
    headers = ["op", "shape", "layout", "dtype", "thr", "fastnorm", "numpy", "vs numpy", "torch", "vs torch",
               "GB/s"]
    out = []
    for cell in cells:
        c, t = cell.case, cell.timings
        own = t["fastnorm"].median
        out.append([c.label, "x".join(map(str, c.shape)), c.layout if c.norm == "sbn" else "-", c.dtype,
                    str(cell.threads), seconds_text(own),
                    seconds_text(t["numpy"].median if "numpy" in t else None), speedup_text(cell.speedup("numpy")),
                    seconds_text(t["torch"].median if "torch" in t else None), speedup_text(cell.speedup("torch")),
                    f"{timing.gb_per_s(c.traffic, own):.1f}"])
    return headers, out


def summary(cells: list[NdCell]) -> str:
    against = [c for c in cells if c.speedup("torch") is not None]
    behind = [c for c in against if c.speedup("torch") < 1.0]
    if not against:
        return "torch not timed"
    worst = min(against, key=lambda c: c.speedup("torch"))
    return (f"fastnorm time <= torch in {len(against) - len(behind)} of {len(against)} cells; "
            f"slowest relative to torch: {worst.case.label} {'x'.join(map(str, worst.case.shape))} "
            f"{worst.case.layout if worst.case.norm == 'sbn' else ''} {worst.case.dtype} {worst.threads}t "
            f"at {worst.speedup('torch'):.2f}x")


def report(cells: list[NdCell], markdown: bool = False) -> str:
    headers, body = rows(cells)
    return format_table(headers, body, markdown=markdown) + "\n\n" + summary(cells) + "\n" + ALLOCATION_LINE


def available_torch() -> bool:
    return torch_anchor.available()
