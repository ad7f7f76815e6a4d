"""One training step of the notebook's model: fastnorm against its NumPy kernels and torch eager.

The model is the batch-normalization notebook's: five hidden layers of 100 units,
affine - batch norm - ReLU each, then affine - softmax, trained with Adam. A step
is what the Solver does per iteration: draw a minibatch, forward, backward, and
one Adam update of every parameter. torch runs the same architecture eagerly
(nn.Linear, nn.BatchNorm1d, nn.ReLU, cross entropy, torch.optim.Adam) on the
same minibatches, at the same thread count.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

HIDDEN = (100, 100, 100, 100, 100)
INPUT_DIM = 3072
NUM_CLASSES = 10
BATCHES = (50, 256)
POOL = 1024  # samples the minibatches are drawn from
WEIGHT_SCALE = 2e-2
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class StepCase:
    batch: int
    dtype: str
    threads: int

    @property
    def label(self) -> str:
        return f"train step, batch {self.batch}, {self.dtype}, {self.threads}t"


def cases(batches=BATCHES, dtypes=("float32", "float64"), threads=(1,)) -> list[StepCase]:
    return [StepCase(b, d, t) for t in threads for d in dtypes for b in batches]


def _data(dtype, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((POOL, INPUT_DIM)).astype(dtype)
    y = rng.integers(0, NUM_CLASSES, POOL)
    return {"X_train": X, "y_train": y, "X_val": X[:100], "y_val": y[:100]}


def fastnorm_step(case: StepCase, kernels: str = "fast"):
    """A zero-argument callable running one Solver step on fastnorm's model."""
    import fastnorm as fn

    data = _data(case.dtype)
    model = fn.FullyConnectedNet(list(HIDDEN), input_dim=INPUT_DIM, num_classes=NUM_CLASSES,
                                 normalization="batchnorm", weight_scale=WEIGHT_SCALE,
                                 dtype=np.dtype(case.dtype), kernels=kernels)
    solver = fn.Solver(model, data, update_rule="adam", optim_config={"learning_rate": LEARNING_RATE},
                       batch_size=case.batch, verbose=False)
    return solver._step  # the Solver's own per-iteration work, nothing around it


def torch_step(case: StepCase):
    """The same architecture, loss and Adam in torch eager."""
    import torch
    from torch import nn

    dtype = getattr(torch, case.dtype)
    layers: list = []
    fan_in = INPUT_DIM
    for width in HIDDEN:
        layers += [nn.Linear(fan_in, width), nn.BatchNorm1d(width, eps=1e-5, momentum=0.1), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, NUM_CLASSES))
    model = nn.Sequential(*layers).to(dtype).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8)
    data = _data(case.dtype)
    X = torch.from_numpy(data["X_train"])
    y = torch.from_numpy(data["y_train"])
    loss_fn = nn.CrossEntropyLoss()

    def step():
        batch_mask = torch.from_numpy(np.random.choice(POOL, case.batch))
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(X[batch_mask]), y[batch_mask])
        loss.backward()
        optimizer.step()
        return loss

    step.model = model  # for inspection (the tests compare the architectures)
    return step


@contextlib.contextmanager
def _threads(n: int, with_torch: bool):
    import fastnorm as fn
    from threadpoolctl import threadpool_limits

    stack = contextlib.ExitStack()
    with stack:
        stack.enter_context(fn.num_threads(n))
        stack.enter_context(threadpool_limits(limits=n))  # the affine layers' BLAS
        if with_torch:
            from . import torch_anchor

            stack.enter_context(torch_anchor.threads(n))
        yield


def contenders(case: StepCase, with_torch: bool, with_reference: bool = True) -> dict:
    funcs = {"fastnorm": fastnorm_step(case)}
    if with_reference:
        funcs["reference"] = fastnorm_step(case, kernels="reference")
    if with_torch:
        funcs["torch"] = torch_step(case)
    return funcs


def measure(step_cases, repeat: int, min_time: float, clock_mode: str, with_torch: bool,
            budget: float | None = None) -> list[dict]:
    """Interleaved medians of every contender per case: seconds per step and ratios."""
    from . import timing

    rows = []
    for case in step_cases:
        with _threads(case.threads, with_torch):
            funcs = contenders(case, with_torch)
            clock = timing.CLOCKS[timing.clock_for(clock_mode, case.threads)]
            timings = timing.interleaved(funcs, repeat, min_time, clock, budget)
        seconds = {name: t.median for name, t in timings.items()}
        rows.append({"batch": case.batch, "dtype": case.dtype, "threads": case.threads,
                     "seconds": seconds,
                     "vs": {name: s / seconds["fastnorm"] for name, s in seconds.items()
                            if name != "fastnorm"},
                     "samples": {name: t.as_dict() for name, t in timings.items()}})
    return rows


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    from .report import seconds_text, speedup_text

    headers = ["model", "batch", "dtype", "thr", "fastnorm", "numpy kernels", "vs numpy", "torch eager",
               "vs torch"]
    body = []
    for row in rows:
        vs_torch = row["vs"].get("torch")
        body.append(["fc 5x100 bn adam", str(row["batch"]), row["dtype"], str(row["threads"]),
                     seconds_text(row["seconds"]["fastnorm"]),
                     seconds_text(row["seconds"].get("reference")), speedup_text(row["vs"].get("reference")),
                     seconds_text(row["seconds"].get("torch")),
                     speedup_text(vs_torch, vs_torch is not None and vs_torch < 1.0)])
    return headers, body


def summary(rows: list[dict]) -> str:
    timed = [r for r in rows if "torch" in r["vs"]]
    if not timed:
        return "[ -- ] training step faster than torch eager: not measured (torch not installed)"
    missed = [f"batch {r['batch']} {r['dtype']} {r['threads']}t ({r['vs']['torch']:.2f}x)"
              for r in timed if r["vs"]["torch"] < 1.0]
    state = "MISS" if missed else "PASS"
    detail = f"{len(missed)} of {len(timed)} cases miss: " + ", ".join(missed) if missed else f"{len(timed)} cases"
    return f"[{state}] training step of the notebook's model faster than torch eager ({detail})"
