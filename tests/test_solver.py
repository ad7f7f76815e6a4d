import os
import pickle
import re

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import FullyConnectedNet, Solver


@pytest.fixture(scope="module")
def digits():
    return fn.data.get_digits_data()


def small(digits, n_train=500, n_val=200):
    return {"X_train": digits["X_train"][:n_train], "y_train": digits["y_train"][:n_train],
            "X_val": digits["X_val"][:n_val], "y_val": digits["y_val"][:n_val]}


def bn_model(**kwargs):
    return FullyConnectedNet([32, 32], input_dim=64, normalization="batchnorm", weight_scale=5e-2, **kwargs)


# ---------------------------------------------------------------- the notebook's behaviour

def test_histories_and_printed_lines(digits, capsys):
    np.random.seed(0)
    solver = Solver(bn_model(), small(digits), update_rule="adam", optim_config={"learning_rate": 1e-3},
                    num_epochs=3, batch_size=100, print_every=4)
    solver.train()
    # 500 // 100 = 5 iterations per epoch
    assert len(solver.loss_history) == 15
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 4   # first check + 3 epochs
    lines = capsys.readouterr().out.splitlines()
    iteration_lines = [line for line in lines if line.startswith("(Iteration")]
    epoch_lines = [line for line in lines if line.startswith("(Epoch")]
    assert [line.split(")")[0] for line in iteration_lines] == ["(Iteration 1 / 15", "(Iteration 5 / 15",
                                                                "(Iteration 9 / 15", "(Iteration 13 / 15"]
    assert re.fullmatch(r"\(Iteration 1 / 15\) loss: \d+\.\d{6}", iteration_lines[0])
    assert float(iteration_lines[0].split()[-1]) == pytest.approx(solver.loss_history[0], abs=5e-7)
    assert len(epoch_lines) == 4
    assert re.fullmatch(r"\(Epoch 0 / 3\) train acc: \d\.\d{6}; val_acc: \d\.\d{6}", epoch_lines[0])
    assert epoch_lines[-1].startswith("(Epoch 3 / 3)")


def test_batchnorm_net_learns_digits(digits):
    np.random.seed(1)
    model = bn_model()
    solver = Solver(model, digits, update_rule="adam", optim_config={"learning_rate": 1e-3},
                    num_epochs=4, batch_size=50, verbose=False)
    solver.train()
    assert solver.best_val_acc > 0.8  # chance is 0.1
    assert solver.best_val_acc == max(solver.val_acc_history)
    assert solver.loss_history[-1] < solver.loss_history[0] / 2
    # the best-validation parameters are the model's at the end
    for name, value in solver.best_params.items():
        np.testing.assert_array_equal(model.params[name], value)
    assert solver.check_accuracy(digits["X_val"], digits["y_val"]) == pytest.approx(solver.best_val_acc)


def test_lr_decay_per_epoch(digits):
    solver = Solver(bn_model(), small(digits), update_rule="sgd_momentum",
                    optim_config={"learning_rate": 0.1}, lr_decay=0.5, num_epochs=3, verbose=False)
    solver.train()
    for config in solver.optim_configs.values():
        assert config["learning_rate"] == pytest.approx(0.1 * 0.5**3)
    assert solver.optim_config == {"learning_rate": 0.1}  # the caller's dict is not touched


def test_check_accuracy_in_batches_matches_direct(digits):
    model = bn_model(dtype=np.float64)
    solver = Solver(model, small(digits), verbose=False)
    X, y = digits["X_val"][:237], digits["y_val"][:237]
    direct = np.mean(np.argmax(model.loss(X), axis=1) == y)
    assert solver.check_accuracy(X, y, batch_size=50) == pytest.approx(direct)
    assert solver.check_accuracy(X, y, batch_size=1000) == pytest.approx(direct)


def test_check_accuracy_refuses_bad_arguments(digits):
    solver = Solver(bn_model(), small(digits), verbose=False)
    X, y = digits["X_val"][:20], digits["y_val"][:20]
    # a (1,) y broadcast against the 20 predictions: a wrong accuracy, no error
    with pytest.raises(ValueError, match=r"y \(N,\), got shapes \(20, 1, 8, 8\) and \(1,\)"):
        solver.check_accuracy(X, y[:1])
    with pytest.raises(ValueError, match=r"got shapes \(20, 1, 8, 8\) and \(5,\)"):
        solver.check_accuracy(X, y[:5])
    with pytest.raises(ValueError, match=r"N >= 1"):  # was "need at least one array to concatenate"
        solver.check_accuracy(X[:0], y[:0])
    for bad in (0, -1, 2.5):  # were ZeroDivisionError, a concatenate error, a TypeError
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            solver.check_accuracy(X, y, batch_size=bad)
        with pytest.raises(ValueError, match="num_samples must be an integer >= 1 or None"):
            solver.check_accuracy(X, y, num_samples=bad)


def test_progress_bar_on_stderr_and_quiet_stdout(digits, capsys):
    solver = Solver(bn_model(), small(digits), num_epochs=1, verbose=False, progress=True)
    solver.train()
    out, err = capsys.readouterr()
    assert out == ""
    assert "training" in err and "/5 " in err  # a bar over the 5 iterations


# ---------------------------------------------------------------- checkpoints

def make_run(digits, tmp_path, **kwargs):
    np.random.seed(2)
    model = FullyConnectedNet([32, 16], input_dim=64, normalization="batchnorm", dropout_keep_ratio=0.8,
                              weight_scale=5e-2, dtype=np.float64)
    return Solver(model, small(digits, 300, 100), update_rule="adam", optim_config={"learning_rate": 2e-3},
                  lr_decay=0.9, num_epochs=4, batch_size=50, num_train_samples=100,
                  checkpoint_name=str(tmp_path / "run"), verbose=False, **kwargs)


def test_checkpoint_files_written_atomically(digits, tmp_path):
    solver = make_run(digits, tmp_path)
    solver.train()
    names = sorted(os.listdir(tmp_path))
    assert names == [f"run_epoch_{k}.pkl" for k in range(5)]  # the first check, then each epoch
    state = Solver.load_checkpoint(tmp_path / "run_epoch_2.pkl")
    assert state["epoch"] == 2 and state["iteration"] == 12
    assert len(state["loss_history"]) == 12 and len(state["val_acc_history"]) == 3
    assert state["update_rule"] == "adam" and state["optim_configs"]["W1"]["t"] == 12
    assert "running_mean" in state["model"].bn_params[0]


def test_resume_is_bit_for_bit(digits, tmp_path):
    full = make_run(digits, tmp_path / "a")
    (tmp_path / "a").mkdir()
    full.train()
    checkpoint = tmp_path / "a" / "run_epoch_2.pkl"
    assert Solver.latest_checkpoint(tmp_path / "a" / "run") == str(tmp_path / "a" / "run_epoch_4.pkl")
    assert Solver.latest_checkpoint(tmp_path / "a" / "other") is None

    np.random.seed(999)  # whatever happened since: the checkpoint's RNG state is used
    (tmp_path / "b").mkdir()
    resumed = Solver.from_checkpoint(checkpoint, small(digits, 300, 100), checkpoint_name=str(tmp_path / "b" / "run"))
    assert resumed.iteration == 12 and resumed.epoch == 2
    resumed.train()
    assert resumed.loss_history == full.loss_history
    assert resumed.train_acc_history == full.train_acc_history
    assert resumed.val_acc_history == full.val_acc_history
    for name in full.model.params:
        np.testing.assert_array_equal(resumed.model.params[name], full.model.params[name])
    for p_full, p_res in zip(full.model.bn_params, resumed.model.bn_params):
        np.testing.assert_array_equal(p_full["running_var"], p_res["running_var"])
    assert sorted(os.listdir(tmp_path / "b")) == ["run_epoch_3.pkl", "run_epoch_4.pkl"]
    # without an override the saved checkpoint_name is kept
    again = Solver.from_checkpoint(checkpoint, small(digits, 300, 100), verbose=False)
    assert again.checkpoint_name == str(tmp_path / "a" / "run")


def test_restore_into_a_new_model_and_solver(digits, tmp_path):
    (tmp_path / "a").mkdir()
    full = make_run(digits, tmp_path / "a")
    full.train()
    fresh = make_run(digits, tmp_path / "c")  # new weights: restore must replace them
    fresh.restore(str(tmp_path / "a" / "run_epoch_1.pkl"))
    fresh.checkpoint_name = None
    fresh.train()
    assert fresh.loss_history == full.loss_history
    for name in full.model.params:
        np.testing.assert_array_equal(fresh.model.params[name], full.model.params[name])


def test_failed_write_keeps_previous_checkpoint(digits, tmp_path, monkeypatch):
    solver = make_run(digits, tmp_path)
    solver.num_epochs = 1
    solver.train()
    good = (tmp_path / "run_epoch_1.pkl").read_bytes()

    def broken_dump(obj, f, protocol=None):
        f.write(b"half a pickle")
        raise OSError("disk full")

    assert solver.epoch == 1  # the next save rewrites run_epoch_1.pkl
    monkeypatch.setattr(pickle, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        solver._save_checkpoint()
    assert (tmp_path / "run_epoch_1.pkl").read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["run_epoch_0.pkl", "run_epoch_1.pkl"]  # no temporary left


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        Solver.load_checkpoint(tmp_path / "nope.pkl")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps({"format": "x"})[:5])
    with pytest.raises(ValueError, match="cut.pkl.*corrupt"):
        Solver.load_checkpoint(tmp_path / "cut.pkl")
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a fastnorm Solver checkpoint"):
        Solver.load_checkpoint(tmp_path / "other.pkl")


def test_incomplete_checkpoint_is_named_not_a_key_error(digits, tmp_path):
    solver = Solver(bn_model(), small(digits), verbose=False)
    state = solver.checkpoint_state()
    header = {"format": fn.solver.CHECKPOINT_FORMAT, "version": fn.solver.CHECKPOINT_VERSION}
    (tmp_path / "header.pkl").write_bytes(pickle.dumps(header))
    with pytest.raises(ValueError, match="header.pkl is incomplete: it has no model, update_rule"):
        Solver.from_checkpoint(tmp_path / "header.pkl", small(digits))  # was KeyError: 'optim_config'
    with pytest.raises(ValueError, match="incomplete: it has no best_params$"):
        solver.restore({k: v for k, v in state.items() if k != "best_params"})
    with pytest.raises(ValueError, match="no model with a params dict"):
        solver.restore({**state, "model": None})  # was AttributeError on None.params
    assert solver.iteration == 0 and solver.loss_history == []


def test_checkpoint_folder_must_exist_when_training_starts(digits, tmp_path):
    model = bn_model()
    before = {k: v.copy() for k, v in model.params.items()}
    solver = Solver(model, small(digits), num_epochs=1, verbose=False,
                    checkpoint_name=str(tmp_path / "nowhere" / "run"))
    # was a FileNotFoundError naming a .tmp file at the first checkpoint, after one update
    with pytest.raises(FileNotFoundError, match="folder of checkpoint_name .*nowhere/run"):
        solver.train()
    assert all(np.array_equal(before[k], model.params[k]) for k in before)
    assert solver.iteration == 0 and solver.loss_history == []
    (tmp_path / "nowhere").mkdir()  # the folder may be made after the Solver
    solver.train()
    assert os.path.exists(tmp_path / "nowhere" / "run_epoch_1.pkl")


class NaNAfter:
    """A model that behaves like `inner` but whose loss becomes NaN from call `k` on."""

    def __init__(self, inner, k):
        self.inner, self.k, self.calls = inner, k, 0
        self.num_classes, self.input_dim = inner.num_classes, inner.input_dim

    @property
    def params(self):
        return self.inner.params

    @params.setter
    def params(self, value):
        self.inner.params = value

    def loss(self, X, y=None):
        if y is None:
            return self.inner.loss(X)
        self.calls += 1
        loss, grads = self.inner.loss(X, y)
        return (float("nan") if self.calls >= self.k else loss), grads


def test_nan_loss_stops_with_iteration_and_keeps_last_checkpoint(digits, tmp_path):
    model = NaNAfter(bn_model(), k=13)
    solver = Solver(model, small(digits), num_epochs=5, checkpoint_name=str(tmp_path / "run"), verbose=False)
    with pytest.raises(FloatingPointError, match=r"loss is nan at iteration 13 / 25.*run_epoch_2\.pkl"):
        solver.train()
    assert sorted(os.listdir(tmp_path)) == ["run_epoch_0.pkl", "run_epoch_1.pkl", "run_epoch_2.pkl"]
    state = Solver.load_checkpoint(tmp_path / "run_epoch_2.pkl")
    assert state["iteration"] == 10 and np.all(np.isfinite(state["loss_history"]))
    assert len(solver.loss_history) == 12  # the NaN was not recorded, nor applied
    assert all(np.all(np.isfinite(v)) for v in model.params.values())


def test_exploding_learning_rate_is_caught(digits):
    np.random.seed(3)
    model = FullyConnectedNet([32], input_dim=64, weight_scale=1.0, dtype=np.float64)
    solver = Solver(model, small(digits), optim_config={"learning_rate": 1e200}, num_epochs=2, verbose=False)
    with pytest.raises(FloatingPointError, match="at iteration"):
        solver.train()


def test_non_finite_update_changes_nothing(digits):
    model = bn_model()

    def blow_up(w, dw, config=None):
        return np.full_like(w, np.inf), config

    solver = Solver(model, small(digits), update_rule=blow_up, verbose=False)
    Solver(model, small(digits), num_epochs=1, verbose=False).train()  # running statistics to keep
    before = {k: v.copy() for k, v in model.params.items()}
    norm_before = [{k: np.copy(v) for k, v in p.items()} for p in model.bn_params]
    with pytest.raises(FloatingPointError, match=r"update of W1, b1, .* not finite at iteration 1 / 50"):
        solver.train()
    assert solver.loss_history == []
    assert all(np.array_equal(before[k], model.params[k]) for k in before)
    # the failed step's forward had replaced them (a diverging forward leaves NaN or inf there)
    for saved, now in zip(norm_before, model.bn_params):
        assert saved.keys() == now.keys()
        assert all(np.array_equal(saved[k], now[k]) for k in ("running_mean", "running_var"))


class BadGradient(NaNAfter):
    """Like NaNAfter, but from call `k` on the loss stays finite and one gradient holds `value`."""

    def __init__(self, inner, k, name, value):
        super().__init__(inner, k)
        self.name, self.value = name, value

    def loss(self, X, y=None):
        if y is None:
            return self.inner.loss(X)
        self.calls += 1
        loss, grads = self.inner.loss(X, y)
        if self.calls >= self.k:
            grads[self.name].flat[3] = self.value
        return loss, grads


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "rmsprop", "adam"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_gradient_is_named_and_changes_nothing(digits, rule, value):
    # fastnorm's rules are left to turn the gradient into a bad update: the error must
    # still name the gradient, and neither parameters nor the rules' state may move
    np.random.seed(0)
    model = BadGradient(bn_model(), k=4, name="gamma2", value=value)
    solver = Solver(model, small(digits), update_rule=rule, optim_config={"learning_rate": 0.0},
                    verbose=False)
    with pytest.raises(FloatingPointError, match=r"gradient of gamma2 is not finite at iteration 4 / 50"):
        solver.train()
    assert len(solver.loss_history) == 3
    assert all(np.all(np.isfinite(v)) for v in model.params.values())
    assert all(config.get("t", 3) == 3 for config in solver.optim_configs.values())  # adam's count
    for config in solver.optim_configs.values():
        assert all(np.all(np.isfinite(a)) for a in config.values() if isinstance(a, np.ndarray))


@pytest.mark.parametrize("rule, message", [
    (lambda w, dw, c: (w.ravel(), c), r"for W1 it returned \(ndarray of shape \(2048,\), dict\)"),
    (lambda w, dw, c: (w - dw, None), r"\(ndarray of shape \(64, 32\), NoneType\)"),
    (lambda w, dw, c: w - dw, "it returned ndarray"),
])
def test_callers_rule_returning_the_wrong_thing_changes_nothing(digits, rule, message):
    # a (2048,) next_w was stored in the model and failed at the next forward as an
    # affine shape error; a None config failed at the next step, parameters changed
    model = bn_model()
    before = {k: v.copy() for k, v in model.params.items()}
    solver = Solver(model, small(digits), update_rule=rule, verbose=False)
    with pytest.raises(TypeError, match=r"update_rule must return \(next_w, config\) with next_w of shape \(64, 32\).*" + message):
        solver.train()
    assert all(np.array_equal(before[k], model.params[k]) for k in before) and solver.loss_history == []


def test_unpicklable_rule_with_checkpoints_fails_before_any_update(digits, tmp_path):
    # was a PicklingError at the first checkpoint, after the first update
    model = bn_model()
    before = {k: v.copy() for k, v in model.params.items()}
    solver = Solver(model, small(digits), update_rule=lambda w, dw, c: (w - 0.01 * dw, c), verbose=False,
                    checkpoint_name=str(tmp_path / "run"))
    with pytest.raises(TypeError, match="checkpoints cannot be written: .*lambda.*module-level function"):
        solver.train()
    assert all(np.array_equal(before[k], model.params[k]) for k in before) and solver.iteration == 0
    assert os.listdir(tmp_path) == []


def test_missing_gradient_is_named(digits):
    model = bn_model()
    loss = model.loss
    model.loss = lambda X, y=None: loss(X) if y is None else (loss(X, y)[0], {})
    with pytest.raises(KeyError, match="no gradient for W1, b1"):
        Solver(model, small(digits), verbose=False).train()


def test_callers_rule_never_sees_a_non_finite_gradient(digits):
    seen = []

    def clipping_sgd(w, dw, config=None):  # would hide the NaN if it were called with it
        seen.append(bool(np.all(np.isfinite(dw))))
        return w - 1e-3 * np.nan_to_num(dw), config

    np.random.seed(0)
    model = BadGradient(bn_model(), k=2, name="W1", value=np.nan)
    solver = Solver(model, small(digits), update_rule=clipping_sgd, verbose=False)
    with pytest.raises(FloatingPointError, match=r"gradient of W1 is not finite at iteration 2 / 50"):
        solver.train()
    assert seen and all(seen)


# ---------------------------------------------------------------- bad data, before training

def bad(data, key, value):
    return {**data, key: value}


@pytest.mark.parametrize("change, error, message", [
    (lambda d: bad(d, "y_train", d["y_train"][:-1]), ValueError, r"500 samples.*\(499,\)"),
    (lambda d: bad(d, "y_val", d["y_val"] + 10), ValueError, r"y_val.*outside \[0, 10\)"),
    (lambda d: bad(d, "X_train", d["X_train"][:, :, :4]), ValueError, r"\(500, 1, 4, 8\).*32 values.*input_dim is 64"),
    (lambda d: bad(d, "X_val", np.where(np.arange(200)[:, None, None, None] == 7, np.nan, d["X_val"])),
     ValueError, "NaN or infinite.*sample 7"),
    (lambda d: {k: v for k, v in d.items() if k != "y_val"}, KeyError, "y_val"),
    (lambda d: bad(d, "y_train", d["y_train"] + 0.5), TypeError, "integer"),
])
def test_bad_data_rejected_before_training(digits, change, error, message):
    model = bn_model()
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(error, match=message):
        Solver(model, change(small(digits)))
    assert all(np.array_equal(before[k], model.params[k]) for k in before)


def test_unknown_keyword_and_rule(digits):
    with pytest.raises(ValueError, match="Unrecognized arguments.*learning_rate"):
        Solver(bn_model(), small(digits), learning_rate=1e-3)
    with pytest.raises(ValueError, match='Invalid update_rule "adamw"'):
        Solver(bn_model(), small(digits), update_rule="adamw")
    with pytest.raises(ValueError, match="batch_size"):
        Solver(bn_model(), small(digits), batch_size=0)
    with pytest.raises(ValueError, match="beta1"):
        Solver(bn_model(), small(digits), update_rule="adam", optim_config={"beta1": 2})
    for lr_decay in (0, float("nan"), True, 10**400):  # 10**400 was NumPy's isfinite TypeError
        with pytest.raises(ValueError, match="lr_decay must be a finite number > 0"):
            Solver(bn_model(), small(digits), lr_decay=lr_decay)


def test_defaults_are_the_notebooks(digits):
    solver = Solver(bn_model(), small(digits))
    assert solver.update_rule is fn.optim.sgd
    assert (solver.optim_config, solver.lr_decay, solver.batch_size, solver.num_epochs) == ({}, 1.0, 100, 10)
    assert (solver.num_train_samples, solver.num_val_samples, solver.checkpoint_name) == (1000, None, None)
    assert (solver.print_every, solver.verbose) == (10, True)
