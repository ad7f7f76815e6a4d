"""Solver checkpoints: what a file holds, how it is written, found, loaded and restored.

With ``checkpoint_name``, the Solver writes ``f"{checkpoint_name}_epoch_{epoch}.pkl"``
at every accuracy check (iteration 1 and each epoch end), atomically: a temporary
file in the same folder, flushed and fsynced, then ``os.replace``. A crash leaves
either the previous file or the new one, never a partial ``.pkl`` (a process killed
mid-write may leave a stray ``*.tmp``, which is never read). The file is a pickled dict:

    format            "fastnorm-solver-checkpoint" (CHECKPOINT_FORMAT)
    version           1 (CHECKPOINT_VERSION)
    model             the model object (params, bn_params with running stats, dropout_param)
    update_rule       the rule's name in fastnorm.optim (or the callable)
    optim_config, lr_decay, batch_size, num_epochs, num_train_samples,
    num_val_samples, checkpoint_name, print_every, verbose   the Solver's settings
    optim_configs     per parameter: the rule's state (velocity, m, v, t, decayed learning_rate)
    epoch, iteration  epochs finished, iterations done (the next one is iteration + 1)
    loss_history, train_acc_history, val_acc_history, best_val_acc, best_params
    rng_state         np.random.get_state() right after the checkpoint's accuracy check

Only load files you trust: checkpoints are pickles. The Solver's methods
(checkpoint_state, latest_checkpoint, load_checkpoint, from_checkpoint, restore)
call the functions here.
"""

from __future__ import annotations

import copy
import os
import pickle
import tempfile

import numpy as np

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "SETTINGS", "solver_state", "check_writable", "write",
           "latest", "read", "check_state", "restore_into"]

CHECKPOINT_FORMAT = "fastnorm-solver-checkpoint"
CHECKPOINT_VERSION = 1

SETTINGS = ("optim_config", "lr_decay", "batch_size", "num_epochs", "num_train_samples",
            "num_val_samples", "checkpoint_name", "print_every", "verbose")  # Solver keywords saved
_STATE_KEYS = ("model", "update_rule", "optim_configs", "epoch", "iteration", "loss_history",
               "train_acc_history", "val_acc_history", "best_val_acc", "best_params", "rng_state",
               *SETTINGS)  # what solver_state writes


def solver_state(solver) -> dict:
    """The dict a checkpoint file of `solver` holds, as of now."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": solver.model,
        "update_rule": solver._rule_name,
        "lr_decay": solver.lr_decay,
        "optim_configs": solver.optim_configs,
        "epoch": solver.epoch,
        "iteration": solver.iteration,
        "loss_history": solver.loss_history,
        "train_acc_history": solver.train_acc_history,
        "val_acc_history": solver.val_acc_history,
        "best_val_acc": solver.best_val_acc,
        "best_params": solver.best_params,
        "rng_state": np.random.get_state(),
    }
    state.update({k: getattr(solver, k) for k in SETTINGS})
    return state


def check_writable(solver) -> None:
    """Fail before training, not after the first update: a missing folder, or a state
    (a lambda update_rule, a model) that cannot be pickled."""
    name = solver.checkpoint_name
    if not os.path.isdir(os.path.dirname(os.path.abspath(name))):
        raise FileNotFoundError(f"the folder of checkpoint_name {name!r} does not exist")
    try:
        pickle.dumps(solver_state(solver), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TypeError(f"checkpoints cannot be written: {exc} (a caller's update_rule must be "
                        "a module-level function; or use checkpoint_name=None)") from None


def write(solver) -> str:
    """Write the checkpoint of `solver`'s current epoch atomically; returns its path."""
    path = f"{solver.checkpoint_name}_epoch_{solver.epoch}.pkl"
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(solver_state(solver), f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def latest(checkpoint_name) -> str | None:
    """Path of the highest-epoch ``{checkpoint_name}_epoch_{k}.pkl`` on disk, or None."""
    name = os.fspath(checkpoint_name)
    folder = os.path.dirname(name) or "."
    prefix = os.path.basename(name) + "_epoch_"
    epochs = []
    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        k = entry[len(prefix):-len(".pkl")]
        if entry.startswith(prefix) and entry.endswith(".pkl") and k.isdigit():
            epochs.append(int(k))
    return f"{name}_epoch_{max(epochs)}.pkl" if epochs else None


def read(path) -> dict:
    """The dict saved at `path`, checked to be a fastnorm Solver checkpoint."""
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} is corrupt or not a pickle: {exc}") from None
    check_state(state, path)
    return state


def check_state(state, origin) -> None:
    """A ValueError naming `origin` unless `state` is a complete checkpoint of this version."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{origin} is not a fastnorm Solver checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{origin} has checkpoint version {state.get('version')}, "
                         f"this fastnorm reads version {CHECKPOINT_VERSION}")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"{origin} is incomplete: it has no {', '.join(missing)}")
    if not isinstance(getattr(state["model"], "params", None), dict):
        raise ValueError(f"{origin} holds no model with a params dict")


def _architecture(model) -> dict:
    """What must agree, beyond parameter shapes, for a checkpoint to fit a model."""
    dropout = getattr(model, "dropout_param", None) or {}
    return {
        "normalization": getattr(model, "normalization", None),
        "G": getattr(model, "G", None),  # group norm's groups: same shapes for any G dividing C
        "dtype": getattr(model, "dtype", None),
        "dropout keep ratio": dropout.get("p", 1),
    }


def restore_into(solver, checkpoint) -> None:
    """Put a checkpoint (a path or a loaded dict) into `solver` and its model.

    The model must match the saved one in parameter names and shapes,
    normalization (and group norm's G), dtype and dropout keep ratio: equal widths alone do not make
    the same model. NumPy's global generator is set to the saved state when
    train() next starts, so the run continues as if never interrupted.
    """
    state = read(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    check_state(state, "the checkpoint")
    saved, model = state["model"], solver.model
    mine = {k: np.shape(v) for k, v in model.params.items()}
    theirs = {k: np.shape(v) for k, v in saved.params.items()}
    if mine != theirs:
        raise ValueError(f"the checkpoint's parameters {theirs} do not match the model's {mine}")
    mine, theirs = _architecture(model), _architecture(saved)
    for key in mine:
        if mine[key] != theirs[key]:
            raise ValueError(f"the checkpoint's model has {key} {theirs[key]!r}, "
                             f"this model has {key} {mine[key]!r}")
    if saved is not model:
        model.params = {k: v.copy() for k, v in saved.params.items()}
        for attr in ("bn_params", "dropout_param"):
            if hasattr(saved, attr):
                setattr(model, attr, copy.deepcopy(getattr(saved, attr)))
    solver.optim_configs = copy.deepcopy(state["optim_configs"])
    for key in ("epoch", "iteration", "best_val_acc"):
        setattr(solver, key, state[key])
    for key in ("loss_history", "train_acc_history", "val_acc_history"):
        setattr(solver, key, list(state[key]))
    solver.best_params = {k: v.copy() for k, v in state["best_params"].items()}
    solver._pending_rng_state = state["rng_state"]
