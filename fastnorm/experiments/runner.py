"""Train the models of one experiment and collect every history in a JSON-ready record.

Each model starts from ``np.random.seed(seed)``: the baseline and the
normalized nets of an experiment get the same initial weights (drawn in the
same order) and the same minibatch sequence, so the curves differ only by
normalization, weight scale and batch size, and the same seed always gives the
same numbers. Running with both kernel sets trains the identical models twice,
which is how the compiled kernels' end-to-end speed-up is measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
import uuid

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from .._threads import num_threads
from .configs import Config, ModelSpec

BLAS_THREADS = 1
LAST_LOSSES = 100  # the notebook's "final training loss" is the mean of the last 100 iterations


def run_experiment(config: Config, data: dict, *, seed: int, kernels=("fast",), repeat: int = 1,
                   dataset: str = "digits", quick: bool = False, progress: bool | None = None) -> dict:
    """Train every model of `config` once per entry of `kernels`; the experiment's record.

    With several kernel sets each model is trained on all of them in turn before
    the next model starts, so slow drifts of the machine's speed hit both alike.
    repeat > 1 trains each model that many times per kernel set and keeps the
    fastest time (the repeats give identical histories: the seed fixes them).
    progress: bars over the models and each model's iterations; None shows them
    when stderr is a terminal.
    """
    start = time.perf_counter()
    subset = training_subset(data, config.num_train)
    specs = config.models()
    progress = sys.stderr.isatty() if progress is None else bool(progress)
    run_id = f"{time.strftime('%Y-%m-%dT%H:%M:%S')}-{uuid.uuid4().hex[:6]}"  # shared: timed side by side
    runs = {kind: {"kernels": kind, "run_id": run_id, "repeat": repeat, "wall_time_s": 0.0, "models": []}
            for kind in kernels}
    bar = tqdm(total=len(specs) * len(kernels) * repeat, desc=config.name, unit="model",
               disable=not progress, leave=False)
    with _saved_global_rng(), _one_blas_thread(), _kernel_threads(config.kernel_threads), bar:
        _warm_up(config, subset, kernels)
        for spec in specs:
            fastest = {}
            for _ in range(repeat):
                for kind in kernels:
                    bar.set_postfix_str(f"{spec.label} ws={spec.weight_scale:.2g} [{kind}]")
                    result = train_model(spec, config, subset, seed=seed, kernels=kind, progress=progress)
                    fastest[kind] = _faster(fastest.get(kind), result)
                    bar.update()
            for kind, result in fastest.items():
                runs[kind]["models"].append(result)
                runs[kind]["wall_time_s"] += result["time_s"]
        env = environment()  # with the kernel threads the models ran on
    return {"experiment": config.name,
            "settings": settings(config, subset, seed=seed, dataset=dataset, quick=quick),
            "environment": env,
            "elapsed_s": time.perf_counter() - start,  # everything, warm-up and all kernel sets
            "runs": runs}


def _faster(kept: dict | None, new: dict) -> dict:
    """The kept result with the faster time of the two, and every time in times_s."""
    if kept is None:
        return {**new, "times_s": [new["time_s"]]}
    if kept["loss_history"] != new["loss_history"]:
        raise RuntimeError(f"{new['label']}: a repeat with the same seed gave other losses")
    return {**kept, "time_s": min(kept["time_s"], new["time_s"]), "times_s": kept["times_s"] + [new["time_s"]]}


def _warm_up(config: Config, subset: dict, kernels) -> None:
    """One forward/backward per normalization and kernel set before any clock starts:
    thread pools (BLAS, OpenMP) and lazy imports would otherwise bill the first model."""
    first = {}
    for spec in config.models():
        first.setdefault(spec.normalization, spec)
    for spec in first.values():
        for kind in kernels:
            model = config.build_model(spec, subset, kernels=kind)
            model.loss(subset["X_train"][:spec.batch_size], subset["y_train"][:spec.batch_size])


def training_subset(data: dict, num_train: int) -> dict:
    """The notebook's small_data: the first num_train training samples and all validation samples.

    X is cast once to float32, the models' dtype, rather than on every minibatch.
    """
    if num_train > len(data["X_train"]):
        raise ValueError(f"the experiment needs {num_train} training samples, the dataset has "
                         f"{len(data['X_train'])}")
    return {"X_train": np.asarray(data["X_train"][:num_train], dtype=np.float32),
            "y_train": np.asarray(data["y_train"][:num_train]),
            "X_val": np.asarray(data["X_val"], dtype=np.float32),
            "y_val": np.asarray(data["y_val"])}


def settings(config: Config, subset: dict, *, seed: int, dataset: str, quick: bool) -> dict:
    return {**config.to_dict(), "dataset": dataset, "seed": seed, "quick": quick,
            "input_dim": input_dim(subset),
            "input_shape": list(subset["X_train"].shape[1:]),
            "num_classes": num_classes(subset),
            "num_val": len(subset["X_val"])}


def input_dim(subset: dict) -> int:
    """Values per sample: 64 for the digits, 3072 for CIFAR-10."""
    return int(np.prod(subset["X_train"].shape[1:]))


def num_classes(subset: dict) -> int:
    return int(max(subset["y_train"].max(), subset["y_val"].max())) + 1


def environment() -> dict:
    """What the timings depend on."""
    import fastnorm
    return {"numpy": np.__version__, "fastnorm": fastnorm.__version__,
            "openmp": bool(fastnorm.openmp_enabled()), "kernel_threads": fastnorm.get_num_threads(),
            "blas_threads": BLAS_THREADS}


def train_model(spec: ModelSpec, config: Config, subset: dict, *, seed: int,
                kernels: str, progress: bool = False) -> dict:
    """Build and train one model from np.random.seed(seed); its histories and summaries."""
    from ..solver import Solver

    np.random.seed(seed)
    start = time.perf_counter()
    model = config.build_model(spec, subset, kernels=kernels, seed=seed)
    solver = Solver(model, subset, update_rule=config.update_rule,
                    optim_config={"learning_rate": config.learning_rate},
                    num_epochs=config.num_epochs, batch_size=spec.batch_size, verbose=False,
                    progress=progress)
    diverged = _train(solver)
    return {**dataclasses.asdict(spec), **histories(solver), "diverged": diverged,
            "time_s": time.perf_counter() - start}


def _train(solver) -> str | None:
    """solver.train(); the Solver's message if the loss stopped being finite, else None."""
    # Large weight scales make the baseline's activations overflow float32 on
    # purpose (that is what the weight-scale experiment shows); the Solver stops
    # on a non-finite loss, so NumPy's overflow warnings would only be noise.
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            solver.train()
        except FloatingPointError as error:
            return str(error)
    return None


def histories(solver) -> dict:
    loss = [float(v) for v in solver.loss_history]
    train_acc = [float(v) for v in solver.train_acc_history]
    val_acc = [float(v) for v in solver.val_acc_history]
    finite_tail = [v for v in loss[-LAST_LOSSES:] if np.isfinite(v)]
    return {"loss_history": loss, "train_acc_history": train_acc, "val_acc_history": val_acc,
            "best_val_acc": float(solver.best_val_acc),
            "best_train_acc": max(train_acc, default=float("nan")),
            "final_train_loss": float(np.mean(finite_tail)) if finite_tail else float("nan")}


def _one_blas_thread():
    """The nets' matrix products are small (batch x 100): a second BLAS thread
    gains nothing there, and on a busy 2-core machine it made training several
    times slower and the timings erratic. The kernels keep their own threads."""
    return threadpool_limits(limits=BLAS_THREADS, user_api="blas")


def _kernel_threads(n: int | None):
    """The config's kernel thread count for the run; None leaves the caller's setting."""
    return contextlib.nullcontext() if n is None else num_threads(n)


@contextlib.contextmanager
def _saved_global_rng():
    """Leave NumPy's global generator as the caller had it."""
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)
