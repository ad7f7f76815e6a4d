"""No lost training state: SIGKILL during checkpoint writes, resume, incompatible checkpoints.

A real training subprocess (the script TRAIN below) is killed with SIGKILL,
most times by itself from inside a checkpoint write (a chosen write, after a
chosen fraction of its bytes: the kill lands there on any machine, however
loaded), once at an arbitrary moment. After every kill, every checkpoint on
disk must load; the script is restarted and resumes from the newest one. When
it finally finishes, its result must equal, bit for bit, that of a run that was
never interrupted.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastnorm
from fastnorm import FullyConnectedNet, Solver

# The training job. Resumes from the newest checkpoint when there is one. With
# argv[3] = "k:f" it SIGKILLs itself inside its k-th checkpoint write (k from 0),
# after writing the fraction f of the pickled bytes to the temporary file.
TRAIN = r'''
import os, pickle, signal, sys, types
import numpy as np
import fastnorm
import fastnorm.checkpoint
from fastnorm import FullyConnectedNet, Solver

folder, normalization = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:
    kill_at, fraction = sys.argv[3].split(":")
    writes = []

    def dump(obj, f, protocol=None):
        data = pickle.dumps(obj, protocol=protocol)
        if len(writes) == int(kill_at):
            f.write(data[:int(len(data) * float(fraction))])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        writes.append(len(data))
        f.write(data)

    fastnorm.checkpoint.pickle = types.SimpleNamespace(**{**vars(pickle), "dump": dump})
name = os.path.join(folder, "run")
rng = np.random.default_rng(5)
centers = rng.standard_normal((4, 64)) * 2
y = rng.integers(0, 4, 400)
X = centers[y] + rng.standard_normal((400, 64))
data = {"X_train": X[:300], "y_train": y[:300], "X_val": X[300:], "y_val": y[300:]}

latest = Solver.latest_checkpoint(name)
if latest is None:
    np.random.seed(1)
    model = FullyConnectedNet([900, 900], input_dim=64, num_classes=4, normalization=normalization,
                              weight_scale=5e-2, dtype=np.float64)
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-3},
                    batch_size=50, num_epochs=6, checkpoint_name=name, verbose=False, progress=False)
else:
    solver = Solver.from_checkpoint(latest, data)
    print("resumed", latest, flush=True)
solver.train()
result = {"loss_history": solver.loss_history, "val_acc_history": solver.val_acc_history,
          "train_acc_history": solver.train_acc_history, "params": solver.model.params,
          "bn_params": solver.model.bn_params, "fastnorm": os.path.abspath(fastnorm.__file__)}
with open(os.path.join(folder, "result.pkl"), "wb") as f:
    pickle.dump(result, f)
'''

ITERATIONS_PER_EPOCH = 6  # 300 samples / batch 50


def _start(script, folder, normalization, *args):
    """The training job, its output going to files beside the run (no pipes to leak when killed)."""
    # the child imports the same fastnorm as this process (a debug or sanitizer copy too)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastnorm.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    with open(folder / "stdout.log", "wb") as out, open(folder / "stderr.log", "wb") as err:
        return subprocess.Popen([sys.executable, str(script), str(folder), normalization, *args],
                                stdout=out, stderr=err, env=env)


def _finish(proc, folder):
    proc.wait(timeout=600)
    assert proc.returncode == 0, (folder / "stderr.log").read_text()
    return (folder / "stdout.log").read_text()


def _check_every_checkpoint_loads(folder):
    """Every .pkl on disk is a complete, consistent checkpoint; returns their epochs."""
    epochs = []
    for entry in sorted(os.listdir(folder)):
        if not entry.endswith(".pkl") or entry == "result.pkl":
            continue
        state = Solver.load_checkpoint(folder / entry)
        epoch = int(entry[len("run_epoch_"):-len(".pkl")])
        assert state["epoch"] == epoch
        expected = 1 if epoch == 0 else epoch * ITERATIONS_PER_EPOCH
        assert state["iteration"] == expected
        assert len(state["loss_history"]) == state["iteration"]
        epochs.append(epoch)
    return epochs


def _temporaries(folder):
    return {e for e in os.listdir(folder) if e.endswith(".tmp")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    script = folder / "train.py"
    script.write_text(TRAIN)
    _finish(_start(script, folder, "batchnorm"), folder)
    with open(folder / "result.pkl", "rb") as f:
        return pickle.load(f)


@pytest.mark.slow
def test_sigkill_while_checkpointing_keeps_a_loadable_checkpoint_and_resume_is_exact(tmp_path, uninterrupted):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    folder = tmp_path / "run"
    folder.mkdir()
    # (k-th write of that run, fraction written): a kill before the first byte,
    # half-way, after the last byte (before the rename), and in the first write
    # of a fresh run, which leaves no checkpoint at all to resume from
    resumed_epochs = []
    for kill_at, fraction in [(0, 0.0), (1, 0.5), (1, 1.0), (0, 0.3), (2, 0.7)]:
        before = _temporaries(folder)
        proc = _start(script, folder, "batchnorm", f"{kill_at}:{fraction}")
        proc.wait(timeout=600)
        assert proc.returncode == -signal.SIGKILL, (folder / "stderr.log").read_text()
        assert _temporaries(folder) - before, "the kill inside a write left its temporary file behind"
        epochs = _check_every_checkpoint_loads(folder)
        if epochs:
            assert Solver.latest_checkpoint(folder / "run") == str(folder / f"run_epoch_{max(epochs)}.pkl")
            resumed_epochs.append(max(epochs))
    assert resumed_epochs == sorted(resumed_epochs) and resumed_epochs[-1] >= 2  # training advanced
    # and one kill at an arbitrary moment (training or writing: the assertions hold for either)
    proc = _start(script, folder, "batchnorm")
    time.sleep(np.random.default_rng(2024).uniform(0.5, 2.0))
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=600)
    _check_every_checkpoint_loads(folder)
    if not (folder / "result.pkl").exists():
        out = _finish(_start(script, folder, "batchnorm"), folder)
        assert "resumed" in out
    with open(folder / "result.pkl", "rb") as f:
        result = pickle.load(f)
    assert result["fastnorm"] == os.path.abspath(fastnorm.__file__)  # the build under test
    assert result["loss_history"] == uninterrupted["loss_history"]
    assert result["val_acc_history"] == uninterrupted["val_acc_history"]
    assert result["train_acc_history"] == uninterrupted["train_acc_history"]
    for name, value in uninterrupted["params"].items():
        np.testing.assert_array_equal(result["params"][name], value)
    for mine, theirs in zip(result["bn_params"], uninterrupted["bn_params"]):
        for key in ("running_mean", "running_var"):
            np.testing.assert_array_equal(mine[key], theirs[key])
    # stray temporaries are never taken for checkpoints
    assert Solver.latest_checkpoint(folder / "run").endswith("run_epoch_6.pkl")


# ---------------------------------------------------------------------------
# Resume in process at every checkpoint, and incompatible checkpoints

def _toy_data(seed=0, dim=10):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, dim)) * 2
    y = rng.integers(0, 3, 160)
    X = centers[y] + rng.standard_normal((160, dim))
    return {"X_train": X[:120], "y_train": y[:120], "X_val": X[120:], "y_val": y[120:]}


def _toy_model(normalization="batchnorm", hidden=(12, 8), dim=10, dtype=np.float64, keep=1):
    return FullyConnectedNet(list(hidden), input_dim=dim, num_classes=3, normalization=normalization,
                             weight_scale=5e-2, dtype=dtype, dropout_keep_ratio=keep, seed=None)


def _toy_solver(model, data, folder, **kw):
    return Solver(model, data, update_rule="sgd_momentum", optim_config={"learning_rate": 5e-2},
                  lr_decay=0.9, batch_size=40, num_epochs=4, checkpoint_name=str(folder / "run"),
                  verbose=False, progress=False, **kw)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    data = _toy_data()
    np.random.seed(3)
    solver = _toy_solver(_toy_model(keep=0.75), data, folder)
    solver.train()
    return folder, data, solver


@pytest.mark.parametrize("epoch", [0, 1, 2, 3])
def test_resume_from_each_checkpoint_equals_uninterrupted(toy_run, epoch, tmp_path):
    folder, data, full = toy_run
    np.random.seed(12345)  # disturbs nothing: the checkpoint carries the generator state
    resumed = Solver.from_checkpoint(folder / f"run_epoch_{epoch}.pkl", data,
                                     checkpoint_name=str(tmp_path / "again"))
    resumed.train()
    assert resumed.loss_history == full.loss_history
    assert resumed.val_acc_history == full.val_acc_history
    assert resumed.best_val_acc == full.best_val_acc
    for name, value in full.model.params.items():
        np.testing.assert_array_equal(resumed.model.params[name], value)
    for mine, theirs in zip(resumed.model.bn_params, full.model.bn_params):
        np.testing.assert_array_equal(mine["running_mean"], theirs["running_mean"])
    # and the rewritten last checkpoint is the same state
    a = Solver.load_checkpoint(tmp_path / "again_epoch_4.pkl")
    b = Solver.load_checkpoint(folder / "run_epoch_4.pkl")
    assert a["loss_history"] == b["loss_history"] and a["iteration"] == b["iteration"]


@pytest.mark.parametrize("other", [
    dict(hidden=(12, 9)),          # another width
    dict(hidden=(12, 8, 8)),       # another depth
    dict(normalization=None),      # no normalization: other parameter names
    dict(dim=11),                  # another input size
])
def test_checkpoint_of_another_shape_is_refused(toy_run, other, tmp_path):
    folder, _, _ = toy_run
    model = _toy_model(**other)
    before = {k: v.copy() for k, v in model.params.items()}
    solver = _toy_solver(model, _toy_data(dim=model.input_dim), tmp_path)
    with pytest.raises(ValueError, match="do not match"):
        solver.restore(str(folder / "run_epoch_2.pkl"))
    for k, v in before.items():  # the refused checkpoint changed nothing
        np.testing.assert_array_equal(model.params[k], v)
    assert solver.iteration == 0 and solver.loss_history == []


def test_checkpoint_with_data_of_another_size_is_refused(toy_run):
    folder, _, _ = toy_run
    with pytest.raises(ValueError, match="X_train"):
        Solver.from_checkpoint(folder / "run_epoch_2.pkl", _toy_data(dim=7))


def test_checkpoint_of_another_normalization_is_refused(toy_run, tmp_path):
    folder, _, _ = toy_run
    model = _toy_model(normalization="layernorm")
    solver = _toy_solver(model, _toy_data(), tmp_path)
    with pytest.raises(ValueError, match="normalization"):
        solver.restore(str(folder / "run_epoch_2.pkl"))


def test_checkpoint_of_another_dtype_is_refused(toy_run, tmp_path):
    folder, _, _ = toy_run
    model = _toy_model(dtype=np.float32)
    solver = _toy_solver(model, _toy_data(), tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        solver.restore(str(folder / "run_epoch_2.pkl"))
    assert all(v.dtype == np.float32 for v in model.params.values())


@pytest.mark.parametrize("keep", [1, 0.5])
def test_checkpoint_of_another_dropout_is_refused(toy_run, tmp_path, keep):
    folder, _, _ = toy_run  # trained with dropout_keep_ratio 0.75
    model = _toy_model(keep=keep)
    solver = _toy_solver(model, _toy_data(), tmp_path)
    with pytest.raises(ValueError, match="dropout"):
        solver.restore(str(folder / "run_epoch_2.pkl"))


def test_truncated_or_foreign_files_are_refused(toy_run, tmp_path):
    folder, _, _ = toy_run
    good = (folder / "run_epoch_2.pkl").read_bytes()
    for k, blob in enumerate([good[: len(good) // 2], good[:10], b"", pickle.dumps({"format": "x"}),
                              pickle.dumps([1, 2, 3])]):
        path = tmp_path / f"bad_{k}.pkl"
        path.write_bytes(blob)
        with pytest.raises(ValueError):
            Solver.load_checkpoint(path)
