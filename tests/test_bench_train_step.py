"""`fastnorm bench --train-step`: the notebook model's training step, timed three ways."""

import importlib.util
import json

import numpy as np
import pytest

from fastnorm.benchmarks import train_step
from fastnorm.cli import main

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _param_count(params) -> int:
    return sum(int(np.prod(np.shape(p))) for p in params)


def test_fastnorm_step_runs_the_solver_update():
    case = train_step.StepCase(batch=50, dtype="float64", threads=1)
    step = train_step.fastnorm_step(case)
    solver = step.__self__
    before = {k: v.copy() for k, v in solver.model.params.items()}
    step()
    assert len(solver.loss_history) == 1
    assert np.isfinite(solver.loss_history[0])
    assert all(not np.array_equal(before[k], v) for k, v in solver.model.params.items())
    # the notebook's model: five hidden layers of 100 with batch norm
    assert len(solver.model.bn_params) == len(train_step.HIDDEN)
    assert solver.model.params["W1"].shape == (train_step.INPUT_DIM, 100)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is a benchmark-only dependency")
def test_torch_step_is_the_same_architecture():
    case = train_step.StepCase(batch=50, dtype="float32", threads=1)
    step = train_step.torch_step(case)
    loss = step()
    assert float(loss.detach()) > 0
    fastnorm_params = train_step.fastnorm_step(case).__self__.model.params.values()
    assert _param_count(step.model.parameters()) == _param_count(fastnorm_params)
    norms = [m for m in step.model if type(m).__name__ == "BatchNorm1d"]
    assert len(norms) == len(train_step.HIDDEN) and all(m.eps == 1e-5 for m in norms)


def test_train_step_command_writes_its_table(tmp_path, capsys):
    args = ["bench", "--train-step", "--repeat", "1", "--min-time", "0", "--budget", "0",
            "--threads", "1", "--dtypes", "float64", "--no-torch", "--out", str(tmp_path)]
    assert main(args) == 0
    data = json.loads((tmp_path / "train-step.json").read_text())
    assert [(r["batch"], r["dtype"], r["threads"]) for r in data["rows"]] == [(50, "float64", 1),
                                                                           (256, "float64", 1)]
    for row in data["rows"]:
        assert set(row["seconds"]) == {"fastnorm", "reference"}
        assert row["vs"]["reference"] == pytest.approx(row["seconds"]["reference"] / row["seconds"]["fastnorm"])
    printed = capsys.readouterr().out
    assert "fc 5x100 bn adam" in printed and "not measured (torch not installed)" in printed
    assert (tmp_path / "train-step.md").read_text().count("| fc 5x100 bn adam |") == 2
