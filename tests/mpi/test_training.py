"""Data-parallel training on several ranks reproduces training in one process.

Every rank also runs the one-process training (the same arithmetic everywhere),
then the data-parallel one, and compares.
"""

import os
import shutil
import tempfile

import numpy as np
import pytest

from fastnorm import FullyConnectedNet, Solver

INPUT, CLASSES = 12, 5


def _data():
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((CLASSES, INPUT)) * 2
    y = rng.integers(0, CLASSES, 260)
    X = centers[y] + rng.standard_normal((260, INPUT))
    return {"X_train": X[:200], "y_train": y[:200], "X_val": X[200:], "y_val": y[200:]}


def _train(comm=None, batch_size=10, keep=1.0, num_epochs=2, dtype=np.float64, **kwargs):
    np.random.seed(0)
    model = FullyConnectedNet([16, 8], input_dim=INPUT, num_classes=CLASSES, normalization="batchnorm",
                              reg=0.05, weight_scale=0.3, dropout_keep_ratio=keep, dtype=dtype, comm=comm)
    options = {"update_rule": "adam", "optim_config": {"learning_rate": 3e-3}, "lr_decay": 0.9,
               "batch_size": batch_size, "num_epochs": num_epochs, "num_train_samples": 90,
               "verbose": False, **kwargs}
    if comm is not None:
        options["comm"] = comm
    solver = Solver(model, _data(), **options)
    solver.train()
    return solver


def _params_on_every_rank_are_identical(comm, solver):
    params = solver.model.params
    mine = b"".join(params[k].tobytes() for k in sorted(params))
    mine += b"".join(p[k].tobytes() for p in solver.model.bn_params for k in ("running_mean", "running_var"))
    return all(other == mine for other in comm.allgather(mine))


@pytest.mark.parametrize("batch_size", ["several rows per rank", "a rank with no rows"])
@pytest.mark.parametrize("keep", [1.0, 0.7])
def test_ranks_train_as_one_process(comm, batch_size, keep):
    # unequal shards; batches of 1 or 2 rows amplify round-off fast: one epoch (100 steps or more)
    batch, epochs = (23, 2) if batch_size == "several rows per rank" else (comm.size - 1, 1)
    one = _train(batch_size=batch, keep=keep, num_epochs=epochs)
    many = _train(comm, batch_size=batch, keep=keep, num_epochs=epochs)
    assert len(many.loss_history) == len(one.loss_history) > 0
    np.testing.assert_allclose(many.loss_history, one.loss_history, rtol=1e-9)
    for k, w in one.model.params.items():
        # b1, b2 (before batch norm) have gradients of round-off only, which Adam scales up
        atol = 1e-6 if k in ("b1", "b2") else 1e-10
        np.testing.assert_allclose(many.model.params[k], w, rtol=1e-9, atol=atol, err_msg=k)
    for mine, theirs in zip(many.model.bn_params, one.model.bn_params):
        np.testing.assert_allclose(mine["running_var"], theirs["running_var"], rtol=1e-9)
    assert many.train_acc_history == one.train_acc_history
    assert many.val_acc_history == one.val_acc_history
    assert _params_on_every_rank_are_identical(comm, many)


def test_float32_ranks_stay_identical_and_close_to_one_process(comm):
    one = _train(dtype=np.float32, batch_size=17)
    many = _train(comm, dtype=np.float32, batch_size=17)
    np.testing.assert_allclose(many.loss_history, one.loss_history, rtol=2e-4)
    assert _params_on_every_rank_are_identical(comm, many)


def test_only_rank_0_prints(comm, capsys):
    _train(comm, num_epochs=1, verbose=True, print_every=5)
    out = capsys.readouterr().out
    assert ("loss:" in out and "val_acc" in out) if comm.rank == 0 else out == ""


@pytest.fixture
def shared_dir(comm):
    """One folder for all ranks (rank 0's), removed after the test."""
    folder = comm.bcast(tempfile.mkdtemp(prefix="fastnorm-mpi-") if comm.rank == 0 else None)
    yield folder
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(folder)


def test_rank_0_writes_checkpoints_and_a_resumed_run_continues_exactly(comm, shared_dir):
    whole = _train(comm, num_epochs=3)
    name = os.path.join(shared_dir, "run")
    first = _train(comm, num_epochs=1, checkpoint_name=name)
    comm.Barrier()
    assert sorted(os.listdir(shared_dir)) == ["run_epoch_0.pkl", "run_epoch_1.pkl"]
    assert first.last_checkpoint == name + "_epoch_1.pkl"
    resumed = Solver.from_checkpoint(first.last_checkpoint, _data(), comm=comm, num_epochs=3)
    assert resumed.model.comm is comm
    resumed.train()
    assert resumed.loss_history == whole.loss_history
    assert resumed.val_acc_history == whole.val_acc_history
    for k, w in whole.model.params.items():
        assert np.array_equal(resumed.model.params[k], w), k
    assert _params_on_every_rank_are_identical(comm, resumed)


def test_a_checkpoint_folder_missing_on_rank_0_fails_on_every_rank(comm, shared_dir):
    name = os.path.join(shared_dir, "no-such-folder", "run")
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        _train(comm, num_epochs=1, checkpoint_name=name)


def test_rank_0_parameters_are_broadcast_at_start(comm):
    np.random.seed(comm.rank)  # different initial weights on every rank
    model = FullyConnectedNet([6], input_dim=INPUT, num_classes=CLASSES, normalization="batchnorm",
                              dtype=np.float64, comm=comm)
    Solver(model, _data(), num_epochs=0, comm=comm, verbose=False)
    mine = model.params["W1"].tobytes()
    assert all(other == mine for other in comm.allgather(mine))
