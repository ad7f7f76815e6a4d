"""Settings of the tests that run on several ranks:

    timeout 600 mpiexec -n 3 python -m pytest tests/mpi -x -q

(the plain `pytest` does not collect this folder: see tests/conftest.py). Every rank
runs every test in the same order; a test that fails on one rank aborts the whole
job (the others would wait in its collectives), and a test that hangs is ended
by a per-test timeout.
"""

import sys

import pytest
from mpi4py import MPI

WORLD = MPI.COMM_WORLD
TEST_TIMEOUT = 120  # seconds; the slowest test takes a few on 3 ranks over 2 cores


def pytest_collection_modifyitems(items):
    for item in items:
        # a thread watches the clock: a rank blocked in an MPI call never runs a signal handler
        item.add_marker(pytest.mark.timeout(TEST_TIMEOUT, method="thread"))


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    if report.failed and WORLD.Get_size() > 1:
        sys.stdout.flush()
        sys.stderr.write(f"\n[rank {WORLD.Get_rank()} of {WORLD.Get_size()}] {report.nodeid} "
                         f"failed ({report.when}):\n{report.longreprtext}\n")
        sys.stderr.flush()
        WORLD.Abort(1)


@pytest.fixture
def comm():
    return WORLD


def shard_sizes(pattern, size):
    """Rows per rank: "equal", "unequal" (all different), "empty" (rank 1 has none)."""
    if pattern == "equal":
        return [4] * size
    if pattern == "unequal":
        return [3 + 2 * r for r in range(size)]
    return [0 if r == 1 else 5 + r for r in range(size)]
