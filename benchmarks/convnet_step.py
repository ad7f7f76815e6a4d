"""One training step of fastnorm's ConvNet: compiled kernels, NumPy reference, torch eager.

    fastnorm bench --convnet            digits- and CIFAR-10-sized inputs, each normalization
    fastnorm bench --convnet --quick    fewer, shorter samples

A step is the loss and every gradient of one float32 minibatch (forward and
backward; the optimizer's update, the same for everyone, is left out). The
three contenders run the same architecture from the same weights: fastnorm's
ConvNet on its compiled kernels, the same model on fastnorm.reference, and the
equivalent torch.nn network in eager mode, whose loss must agree with fastnorm's.
Each runs with the same thread count for its kernels and BLAS. Writes
convnet.txt, convnet.md and convnet.json to --out.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONTENDERS = ("fast", "reference", "torch")
NORMS = (None, "spatial_batchnorm", "groupnorm")


@dataclass(frozen=True)
class Shape:
    name: str
    input_dim: tuple[int, int, int]
    batch: int
    num_filters: tuple[int, ...] = (16, 32)
    hidden_dim: int = 100
    G: int = 4


SHAPES = (Shape("digits", (1, 8, 8), 50), Shape("cifar10", (3, 32, 32), 50))


def build(shape: Shape, norm, kernels: str):
    from fastnorm import ConvNet

    return ConvNet(input_dim=shape.input_dim, num_filters=shape.num_filters, hidden_dim=shape.hidden_dim,
                   normalization=norm, G=shape.G if norm == "groupnorm" else None, weight_scale=5e-2,
                   seed=0, kernels=kernels)


def torch_twin(model):
    """The torch.nn network of a fastnorm ConvNet, in its dtype, with copies of its weights."""
    import torch
    from torch import nn

    p, norm = model.params, model.normalization
    kw = {"dtype": torch.float64 if model.dtype == np.float64 else torch.float32}
    layers = []
    for i in range(1, model.num_stages + 1):
        W = p[f"W{i}"]
        F = W.shape[0]
        layers.append(_assign(nn.Conv2d(W.shape[1], F, W.shape[2], padding=model.conv_param["pad"], **kw),
                              W, p[f"b{i}"]))
        if norm == "spatial_batchnorm":
            layers.append(_assign(nn.BatchNorm2d(F, **kw), p[f"gamma{i}"], p[f"beta{i}"]))
        elif norm == "groupnorm":
            layers.append(_assign(nn.GroupNorm(model.G, F, **kw), p[f"gamma{i}"], p[f"beta{i}"]))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    h = model.num_stages + 1
    W = p[f"W{h}"]
    layers += [nn.Flatten(), _assign(nn.Linear(*W.shape, **kw), W.T, p[f"b{h}"])]
    if norm == "spatial_batchnorm":
        layers.append(_assign(nn.BatchNorm1d(W.shape[1], **kw), p[f"gamma{h}"], p[f"beta{h}"]))
    elif norm == "groupnorm":
        layers.append(_assign(nn.LayerNorm(W.shape[1], **kw), p[f"gamma{h}"], p[f"beta{h}"]))
    W = p[f"W{h + 1}"]
    layers += [nn.ReLU(), _assign(nn.Linear(*W.shape, **kw), W.T, p[f"b{h + 1}"])]
    return nn.Sequential(*layers).train()


def torch_grads(net, model) -> dict:
    """The twin's gradients under the fastnorm model's parameter names and shapes."""
    from torch import nn

    grads, layer = {}, 0
    for module in net:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            layer += 1
            weight = module.weight.grad.numpy()
            names = (f"W{layer}", f"b{layer}")
            weight = weight.T if isinstance(module, nn.Linear) else weight
        elif hasattr(module, "weight"):
            names, weight = (f"gamma{layer}", f"beta{layer}"), module.weight.grad.numpy()
        else:
            continue
        for name, grad in zip(names, (weight, module.bias.grad.numpy())):
            grads[name] = grad.reshape(model.params[name].shape)
    return grads


def _assign(module, weight, bias):
    import torch

    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)).reshape(module.weight.shape))
        module.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)).reshape(module.bias.shape))
    return module


def steps(shape: Shape, norm, with_torch: bool, rng) -> tuple[dict, float | None]:
    """The zero-argument step of each contender, and |torch loss - fastnorm loss|."""
    X = rng.standard_normal((shape.batch, *shape.input_dim)).astype(np.float32)
    y = rng.integers(10, size=shape.batch)
    funcs = {kind: (lambda m=build(shape, norm, kind): m.loss(X, y)) for kind in ("fast", "reference")}
    gap = None
    if with_torch:
        import torch
        import torch.nn.functional as F

        net = torch_twin(build(shape, norm, "fast"))
        tx, ty = torch.from_numpy(X), torch.from_numpy(y)

        def torch_step():
            net.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(tx), ty)
            loss.backward()
            return loss

        funcs["torch"] = torch_step
        gap = abs(torch_step().item() - funcs["fast"]()[0])
    return funcs, gap


@contextlib.contextmanager
def _threads(n: int, with_torch: bool):
    """n threads for the kernels, BLAS and (when timed) torch."""
    from threadpoolctl import threadpool_limits

    import fastnorm

    from . import torch_anchor

    with contextlib.ExitStack() as stack:
        stack.enter_context(fastnorm.num_threads(n))
        stack.enter_context(threadpool_limits(limits=n, user_api="blas"))
        if with_torch:
            stack.enter_context(torch_anchor.threads(n))
        yield


def measure(threads, repeat: int, min_time: float, clock_mode: str, with_torch: bool,
            shapes=None, norms=NORMS, progress: bool = False) -> dict:
    """Seconds per step of each contender in every (shape, norm, threads) cell (shapes: SHAPES)."""
    from tqdm import tqdm

    from . import machine, timing, torch_anchor

    load_before = machine.load_average()
    timing.settle_allocator()
    cells = []
    plan = [(s, n, t) for s in (shapes or SHAPES) for n in norms for t in threads]
    for shape, norm, n in tqdm(plan, desc="convnet step", unit="cell", disable=not progress, leave=False):
        clock = timing.clock_for(clock_mode, n)
        with _threads(n, with_torch):
            funcs, gap = steps(shape, norm, with_torch, np.random.default_rng(0))
            times = timing.interleaved(funcs, repeat, min_time, timing.CLOCKS[clock])
        cells.append({"shape": shape.name, "input": [shape.batch, *shape.input_dim],
                      "num_filters": list(shape.num_filters), "hidden_dim": shape.hidden_dim,
                      "normalization": norm, "G": shape.G if norm == "groupnorm" else None, "threads": n,
                      "clock": clock, "torch_loss_gap": gap,
                      "times": {kind: t.as_dict() for kind, t in times.items()}})
    info = machine.describe(torch_anchor.version() if with_torch else None, load_before)
    return {"kind": "convnet", "info": info,
            "settings": {"repeat": repeat, "min_time_s": min_time, "clock": clock_mode, "threads": list(threads)},
            "cells": cells}


def rows(result: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["input (N, C, H, W)", "norm", "thr", "fast (ms)", "reference (ms)", "ref / fast",
               "torch (ms)", "torch / fast", "|loss gap|"]
    table = []
    for c in result["cells"]:
        t = {kind: v["median_s"] for kind, v in c["times"].items()}
        norm = c["normalization"] or "none"
        if c["G"]:
            norm += f" (G={c['G']})"
        torch = ([f"{t['torch'] * 1e3:.2f}", f"{t['torch'] / t['fast']:.2f}x", f"{c['torch_loss_gap']:.1e}"]
                 if "torch" in t else ["-", "-", "-"])
        table.append([str(tuple(c["input"])), norm, str(c["threads"]), f"{t['fast'] * 1e3:.2f}",
                      f"{t['reference'] * 1e3:.2f}", f"{t['reference'] / t['fast']:.2f}x", *torch])
    return headers, table


def text_report(result: dict, markdown: bool = False) -> str:
    from . import machine
    from .report import format_table

    s = result["settings"]
    first = result["cells"][0] if result["cells"] else None
    arch = (f"ConvNet with {first['num_filters']} filters (3x3, each stage with a 2x2 max pool) and a hidden "
            f"layer of {first['hidden_dim']}, float32" if first else "no cells")
    lines = [f"fastnorm bench --convnet: {machine.one_line(result['info'])}",
             f"one training step (loss and every gradient of a minibatch) of a {arch}; median of "
             f"{s['repeat']} interleaved runs per contender; 'X / fast' = X's time over the compiled kernels' "
             f"(>1: fastnorm faster); loss gap: |torch's loss - fastnorm's| on the same weights and batch",
             *filter(None, [machine.load_note(result["info"])]), "",
             format_table(*rows(result), markdown=markdown)]
    return "\n".join(lines)


def write(result: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "convnet.txt", out_dir / "convnet.md", out_dir / "convnet.json"]
    paths[0].write_text(text_report(result) + "\n")
    paths[1].write_text(text_report(result, markdown=True) + "\n")
    paths[2].write_text(json.dumps(result, indent=1) + "\n")
    return paths
