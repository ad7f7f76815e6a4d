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


@pytest.fixture
def rng():
    return np.random.default_rng(231)


# tests/mpi runs under mpiexec, from .ci/run: `mpiexec -n 3 python -m pytest tests/mpi`
collect_ignore = ["mpi"]
