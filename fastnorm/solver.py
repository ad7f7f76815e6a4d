"""The notebook's Solver: minibatch training of a classification model.

    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-3},
                    lr_decay=0.95, num_epochs=10, batch_size=100, print_every=100)
    solver.train()
    solver.loss_history, solver.train_acc_history, solver.val_acc_history, solver.best_val_acc

The model needs ``params`` (a dict name -> array) and ``loss(X, y=None)``
returning scores (N, C) when y is None and ``(loss, grads)`` otherwise;
``num_classes`` and ``input_dim`` attributes, when present, let the data be
checked before training. ``data`` holds X_train, y_train, X_val, y_val.

Keywords (the notebook's, with its defaults): update_rule 'sgd' (a name in
``fastnorm.optim`` or a callable), optim_config {}, lr_decay 1.0 (per epoch),
batch_size 100, num_epochs 10, num_train_samples 1000, num_val_samples None,
checkpoint_name None, print_every 10, verbose True. One more: progress (None):
a tqdm bar over iterations, shown when True, or when None, verbose and stderr is
a terminal. Unknown keywords are a ValueError (as in the notebook's Solver).

Data-parallel (``comm``, an mpi4py communicator; the model built with the same
one, ``FullyConnectedNet(..., comm=comm)``; see docs/distributed.md): every rank
holds the data; rank 0's parameters and generator state are broadcast, so every
rank draws the same minibatch and takes its contiguous part (np.array_split
order); the shards' loss and gradient terms are all-reduced and every rank
applies the same update: P ranks train as one process would on the same
minibatches, to round-off. Accuracy checks split the samples among the ranks.
Rank 0 alone prints, draws the bar and writes checkpoints; ``from_checkpoint(path,
data, comm=comm)`` and ``restore`` read the file on rank 0.

Each iteration samples a minibatch with ``np.random.choice`` (NumPy's global
generator). Accuracies are checked on the first and last iteration and at each
epoch end; the parameters with the best validation accuracy are put back into
the model when training ends.

Checkpoints
-----------
With ``checkpoint_name``, every accuracy check writes
``f"{checkpoint_name}_epoch_{epoch}.pkl"`` atomically (``fastnorm.checkpoint``
describes the file). Resuming continues exactly as the uninterrupted run would
(same minibatches, same losses, bit for bit), on the same data:

    solver = Solver.from_checkpoint("run_epoch_3.pkl", data)          # model and settings from the file
    solver = Solver.from_checkpoint(path, data, num_epochs=20)        # keywords override the settings
    solver.train()

The resumed solver keeps writing checkpoints under the saved checkpoint_name
unless given another one (``checkpoint_name=None`` turns them off).

``Solver.latest_checkpoint(checkpoint_name)`` finds the newest file of a run
(None when there is none). Or, with a model and solver you built with the same settings,
``solver.restore(path_or_dict)`` then ``solver.train()``. NumPy's global
generator is set to the saved state when train() starts. A loss or gradient
that becomes NaN or infinite stops training with a FloatingPointError naming
the iteration; no checkpoint is written after it, so the last file on disk is
the last good state.
"""

from __future__ import annotations

import math
import numbers
import os
import sys

import numpy as np
from tqdm import tqdm

from . import optim
from ._validate import as_real_array, finite_float
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, SETTINGS, check_writable, latest, read,
                         restore_into, solver_state, write)
from .layers import check_labels

_OWN_RULES = tuple(optim.UPDATE_RULES.values())

__all__ = ["Solver", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

_DEFAULTS = {
    "update_rule": "sgd",
    "optim_config": None,
    "lr_decay": 1.0,
    "batch_size": 100,
    "num_epochs": 10,
    "num_train_samples": 1000,
    "num_val_samples": None,
    "checkpoint_name": None,
    "print_every": 10,
    "verbose": True,
    "progress": None,
    "comm": None,
}
def _int_at_least(name, value, low, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def _check_split(data, split, model):
    """X and y of one split, checked against each other and the model."""
    X = as_real_array(f"data['X_{split}']", data[f"X_{split}"])
    y = np.asarray(data[f"y_{split}"])
    if X.ndim < 2 or X.shape[0] == 0:
        raise ValueError(f"data['X_{split}'] must be (N, ...) with N >= 1, got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"data['X_{split}'] has {X.shape[0]} samples (shape {X.shape}) but data['y_{split}'] "
            f"has shape {y.shape}; they must match"
        )
    input_dim = getattr(model, "input_dim", None)
    row = math.prod(X.shape[1:])
    if input_dim is not None and row != input_dim:
        raise ValueError(
            f"data['X_{split}'] of shape {X.shape} has {row} values per sample, "
            f"but the model's input_dim is {input_dim}"
        )
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None:
        y = check_labels(y, X.shape[0], num_classes, name=f"data['y_{split}']")
    elif y.dtype.kind not in "iu":
        raise TypeError(f"data['y_{split}'] must hold integer labels, got dtype {y.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(np.sum(X))  # one pass, no big temporary; NaN/inf propagate
    if not finite and not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X.reshape(X.shape[0], -1)))[0][0]
        raise ValueError(f"data['X_{split}'] has NaN or infinite values (first in sample {bad})")
    return X, y


class Solver:
    __doc__ = __doc__  # the module's: usage, keywords, checkpoints (help(Solver) shows them)

    def __init__(self, model, data, **kwargs):
        unknown = sorted(set(kwargs) - set(_DEFAULTS))
        if unknown:
            raise ValueError(f"Unrecognized arguments {', '.join(unknown)}; known: {', '.join(_DEFAULTS)}")
        if not hasattr(model, "params") or not callable(getattr(model, "loss", None)):
            raise TypeError("model must have a params dict and a loss(X, y=None) method")
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        missing = [k for k in ("X_train", "y_train", "X_val", "y_val") if k not in data]
        if missing:
            raise KeyError(f"data is missing {', '.join(missing)}")
        self._set_options({**_DEFAULTS, **kwargs})
        X_train, y_train = _check_split(data, "train", model)
        X_val, y_val = _check_split(data, "val", model)
        # everything checked: only now is anything stored
        self._dp = None
        if kwargs.get("comm") is not None:
            from .distributed.training import DataParallel
            self._dp = DataParallel(kwargs["comm"], model)
            self._dp.broadcast_model(model)
        self.model = model
        self.X_train, self.y_train, self.X_val, self.y_val = X_train, y_train, X_val, y_val
        self._reset()

    def _set_options(self, opts):
        """Check the keywords, then set them as attributes."""
        update_rule, rule_name = self._resolve_rule(opts["update_rule"])
        optim_config = {} if opts["optim_config"] is None else opts["optim_config"]
        if not isinstance(optim_config, dict):
            raise TypeError(f"optim_config must be a dict, got {type(optim_config).__name__}")
        if isinstance(rule_name, str):  # a bad hyperparameter fails now, not mid-update
            update_rule(np.zeros(1), np.zeros(1), {k: v for k, v in optim_config.items()
                                                   if not isinstance(v, np.ndarray)})
        lr_decay = opts["lr_decay"]
        if not ((finite_float(lr_decay) or 0) > 0):
            raise ValueError(f"lr_decay must be a finite number > 0, got {lr_decay!r}")
        name = opts["checkpoint_name"]
        if name is not None and not isinstance(name, (str, os.PathLike)):
            raise TypeError(f"checkpoint_name must be a path string or None, got {name!r}")
        self.batch_size = _int_at_least("batch_size", opts["batch_size"], 1)
        self.num_epochs = _int_at_least("num_epochs", opts["num_epochs"], 0)
        self.num_train_samples = _int_at_least("num_train_samples", opts["num_train_samples"], 1, True)
        self.num_val_samples = _int_at_least("num_val_samples", opts["num_val_samples"], 1, True)
        self.print_every = _int_at_least("print_every", opts["print_every"], 1)
        self.update_rule, self._rule_name = update_rule, rule_name
        self.optim_config = optim_config
        self.lr_decay = float(lr_decay)
        self.checkpoint_name = None if name is None else os.fspath(name)
        self.verbose = bool(opts["verbose"])
        self.progress = opts["progress"]

    @staticmethod
    def _resolve_rule(rule):
        if callable(rule):
            return rule, rule
        if isinstance(rule, str) and rule in optim.UPDATE_RULES:
            return optim.UPDATE_RULES[rule], rule
        raise ValueError(f'Invalid update_rule "{rule}"; choose one of {", ".join(optim.UPDATE_RULES)}')

    def _reset(self):
        """Fresh bookkeeping: epoch 0, empty histories, a copy of optim_config per parameter."""
        self.epoch = 0
        self.iteration = 0
        self.best_val_acc = 0
        self.best_params = {}
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []
        self.last_checkpoint = None
        self._pending_rng_state = None
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}

    # ------------------------------------------------------------ training

    @property
    def iterations_per_epoch(self):
        return max(self.X_train.shape[0] // self.batch_size, 1)

    @property
    def num_iterations(self):
        return self.num_epochs * self.iterations_per_epoch

    def _step(self):
        """One minibatch update. A non-finite loss, gradient or updated parameter raises
        FloatingPointError before any parameter (or running statistic) changes."""
        num_train = self.X_train.shape[0]
        batch_mask = np.random.choice(num_train, self.batch_size)
        # the forward replaces the running statistics in bn_params: a failed step puts them back
        norm_params = getattr(self.model, "bn_params", None) or []
        saved_norm_params = [dict(p) if isinstance(p, dict) else p for p in norm_params]
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # checked just below
                if self._dp is None:
                    loss, grads = self.model.loss(self.X_train[batch_mask], self.y_train[batch_mask])
                else:  # this rank's shard; the global batch's loss and gradients on every rank
                    loss, grads = self._dp.loss(self.model, self.X_train, self.y_train, batch_mask)
                missing = [p for p in self.model.params if p not in grads]
                if missing:
                    raise KeyError(f"the model's loss returned no gradient for {', '.join(missing)}")
                if not np.isfinite(loss):
                    raise self._diverged(f"loss is {loss}")
                # fastnorm's rules turn a non-finite gradient into a non-finite update, so
                # their gradients need a look only when an update is bad; a caller's rule
                # may not, and never sees a bad gradient
                own_rule = self.update_rule in _OWN_RULES
                if not own_rule:
                    self._check_gradients(grads)
                # each rule updates a copy of its state: nothing is kept unless all is finite
                updates = {p: self.update_rule(w, grads[p], dict(self.optim_configs[p]))
                           for p, w in self.model.params.items()}
                if not own_rule:
                    self._check_rule_results(updates)
                bad = [p for p, (next_w, _) in updates.items() if not np.isfinite(next_w).all()]
                if bad:
                    if own_rule:
                        self._check_gradients(grads)
                    raise self._diverged(f"update of {', '.join(bad)} is not finite")
        except BaseException:
            for param, saved in zip(norm_params, saved_norm_params):
                if isinstance(param, dict):
                    param.clear()
                    param.update(saved)
            raise
        self.loss_history.append(float(loss))
        for p, (next_w, next_config) in updates.items():
            self.model.params[p] = next_w
            self.optim_configs[p] = next_config

    def _check_rule_results(self, updates):
        """A caller's rule must give (next_w, config) with next_w of w's shape: anything
        else would be stored in the model and fail later, far from the cause."""
        for p, result in updates.items():
            shape = np.shape(self.model.params[p])
            if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)
                    and np.shape(result[0]) == shape):
                got = (f"({type(result[0]).__name__} of shape {np.shape(result[0])}, {type(result[1]).__name__})"
                       if isinstance(result, tuple) and len(result) == 2 else type(result).__name__)
                raise TypeError(f"update_rule must return (next_w, config) with next_w of shape {shape} "
                                f"and config a dict; for {p} it returned {got}")

    def _check_gradients(self, grads):
        bad = [p for p in self.model.params if not np.isfinite(grads[p]).all()]
        if bad:
            raise self._diverged(f"gradient of {', '.join(bad)} is not finite")

    def _diverged(self, problem):
        """The FloatingPointError for a non-finite value at the current iteration."""
        kept = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
        return FloatingPointError(
            f"{problem} at iteration {self.iteration + 1} / {self.num_iterations} (epoch {self.epoch}); "
            f"training stopped before this update{kept} (try a smaller learning rate or weight_scale)"
        )

    def check_accuracy(self, X, y, num_samples=None, batch_size=100):
        """Fraction of the N samples of X classified as y, computed batch_size at a time.

        With num_samples < N, a random subsample (np.random.choice) of that size is used.
        """
        X, y = as_real_array("X", X), np.asarray(y)
        if X.ndim < 2 or X.shape[0] == 0 or y.shape != (X.shape[0],):
            # a (1,) or scalar y would broadcast against every prediction
            raise ValueError(f"check_accuracy needs X (N, ...) with N >= 1 and y (N,), "
                             f"got shapes {X.shape} and {y.shape}")
        num_samples = _int_at_least("num_samples", num_samples, 1, allow_none=True)
        batch_size = _int_at_least("batch_size", batch_size, 1)
        N = X.shape[0]
        if num_samples is not None and N > num_samples:
            mask = np.random.choice(N, num_samples)
            N, X, y = num_samples, X[mask], y[mask]
        if self._dp is not None:  # each rank its contiguous part, the counts summed
            return self._dp.count_correct(self._predict, X, y, batch_size) / N
        num_batches = N // batch_size + (N % batch_size != 0)
        y_pred = []
        for i in range(num_batches):
            with np.errstate(over="ignore", invalid="ignore"):  # diverged weights: the next step reports it
                scores = self.model.loss(X[i * batch_size:(i + 1) * batch_size])
            y_pred.append(np.argmax(scores, axis=1))
        return float(np.mean(np.concatenate(y_pred) == y))

    def _predict(self, X):
        with np.errstate(over="ignore", invalid="ignore"):
            return np.argmax(self.model.loss(X), axis=1)

    def _progress_bar(self):
        show = self.progress
        if self._dp is not None and not self._dp.is_root:
            show = False  # rank 0 alone prints and draws
        elif show is None:
            show = self.verbose and sys.stderr is not None and sys.stderr.isatty()
        return tqdm(total=self.num_iterations, initial=self.iteration, disable=not show,
                    desc="training", unit="it", leave=False, file=sys.stderr)

    def _say(self, bar, line):
        if self.verbose and (self._dp is None or self._dp.is_root):
            if bar.disable:
                print(line)
            else:
                bar.write(line, file=sys.stdout)

    def train(self):
        """Run the remaining iterations, then put the best-validation parameters into the model."""
        if self.checkpoint_name is not None:
            if self._dp is None:
                check_writable(self)
            else:
                self._dp.on_root(lambda: check_writable(self))
        if self._pending_rng_state is not None:
            np.random.set_state(self._pending_rng_state)
            self._pending_rng_state = None
        if self._dp is not None:
            self._dp.broadcast_rng()
        num_iterations = self.num_iterations
        with self._progress_bar() as bar:
            for t in range(self.iteration, num_iterations):
                self._step()
                self.iteration = t + 1
                bar.update(1)
                if t % self.print_every == 0:
                    self._say(bar, "(Iteration %d / %d) loss: %f" % (t + 1, num_iterations, self.loss_history[-1]))
                epoch_end = (t + 1) % self.iterations_per_epoch == 0
                if epoch_end:
                    self.epoch += 1
                    for config in self.optim_configs.values():
                        if "learning_rate" in config:
                            config["learning_rate"] *= self.lr_decay
                if t == 0 or t == num_iterations - 1 or epoch_end:
                    self._record_accuracy(bar)
        if self.best_params:
            self.model.params = {k: v.copy() for k, v in self.best_params.items()}

    def _record_accuracy(self, bar):
        train_acc = self.check_accuracy(self.X_train, self.y_train, num_samples=self.num_train_samples)
        val_acc = self.check_accuracy(self.X_val, self.y_val, num_samples=self.num_val_samples)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        self._say(bar, "(Epoch %d / %d) train acc: %f; val_acc: %f" % (self.epoch, self.num_epochs, train_acc, val_acc))
        if val_acc > self.best_val_acc:
            self.best_val_acc = val_acc
            self.best_params = {k: v.copy() for k, v in self.model.params.items()}
        self._save_checkpoint()

    # ------------------------------------------------------------ checkpoints (fastnorm.checkpoint)

    def checkpoint_state(self):
        """The dict a checkpoint file holds (see fastnorm.checkpoint)."""
        return solver_state(self)

    def _save_checkpoint(self):
        if self.checkpoint_name is not None:
            self.last_checkpoint = write(self) if self._dp is None else self._dp.on_root(lambda: write(self))

    latest_checkpoint = staticmethod(latest)
    load_checkpoint = staticmethod(read)

    @classmethod
    def from_checkpoint(cls, path, data, **kwargs):
        """A Solver with the model, settings and state saved at `path`; keywords override settings."""
        comm = kwargs.get("comm")
        if comm is None:
            state = read(path)
        else:  # rank 0 reads; the model on the file has no communicator
            from .distributed.training import on_root
            state = on_root(comm, lambda: read(path))
            state["model"].comm = comm
        settings = {k: state[k] for k in SETTINGS}
        settings["update_rule"] = state["update_rule"]
        settings.update(kwargs)
        solver = cls(state["model"], data, **settings)
        solver.restore(state)
        return solver

    def restore(self, checkpoint):
        """Load a checkpoint (a path or the dict of load_checkpoint) into this solver and
        its model, which must match the saved one (see fastnorm.checkpoint.restore_into)."""
        if self._dp is not None and not isinstance(checkpoint, dict):
            checkpoint = self._dp.on_root(lambda: read(checkpoint))
        restore_into(self, checkpoint)
