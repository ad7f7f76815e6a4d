"""Shared test settings: a deterministic hypothesis profile and small helpers."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# CI runs a fixed, repeatable budget; `HYPOTHESIS_PROFILE=dev` explores more.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def rel_error(x, y):
    """The notebook's relative error."""
    return np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y)))


def assert_loss_checks_once(model, X, y, model_module, layer_modules, monkeypatch):
    """model.loss checks X (through model_module.as_real_array) and y once, no module of
    layer_modules re-checks an array, and the loss and grads are those of an unpatched call.
    Leaves the modules patched, so that the caller can show that a public layer checks."""
    from fastnorm import layers

    expected = model.loss(X, y)
    calls = []
    model_check, labels_check = model_module.as_real_array, layers.check_labels

    def counted_check(name, value):
        calls.append(name)
        return model_check(name, value)

    def counted_labels(*args, **kwargs):
        calls.append("labels")
        return labels_check(*args, **kwargs)

    monkeypatch.setattr(model_module, "as_real_array", counted_check)
    monkeypatch.setattr(layers, "check_labels", counted_labels)
    for module in layer_modules:
        monkeypatch.setattr(module, "as_real_array", lambda *a: pytest.fail("a layer re-checked an array"))
    loss, grads = model.loss(X, y)
    assert calls == ["X", "labels"]
    assert loss == expected[0]
    assert sorted(grads) == sorted(expected[1]) == sorted(model.params)
    assert all(np.array_equal(grads[k], expected[1][k]) for k in grads)


@pytest.fixture
def rng():
    return np.random.default_rng(231)


# tests/mpi runs under mpiexec, from .ci/run: `mpiexec -n 3 python -m pytest tests/mpi`
collect_ignore = ["mpi"]
