"""How many OpenMP threads the kernels use.

The default is OpenMP's own (OMP_NUM_THREADS, else the cores available); set it
for the whole process with set_num_threads(n) or for a block with
``with fastnorm.num_threads(n):``. Results are bitwise the same for any count.
Without an OpenMP build the kernels are serial and the count is ignored.
NumPy's BLAS has a pool of its own: threadpoolctl limits that one.
"""

from __future__ import annotations

import contextlib
import numbers

from ._build import load_kernels

_kernels = load_kernels()

_n_threads: int | None = None

# OpenMP starts every thread it is asked for: tens of thousands of them exhaust
# the process and libgomp aborts or the process crashes (and past C int the
# kernel call fails). More than this many threads is never useful for these kernels.
MAX_THREADS = 1024


def openmp_enabled() -> bool:
    """True when the installed build runs its kernels with OpenMP threads."""
    return _kernels.openmp_enabled()


def get_num_threads() -> int:
    """The thread count the next kernel call will use (OpenMP's default, as
    OMP_NUM_THREADS=100000 would make it, is capped at MAX_THREADS too)."""
    if _n_threads is not None:
        return _n_threads
    return min(MAX_THREADS, max(1, _kernels.max_threads()))


def set_num_threads(n: int | None) -> None:
    """Use n threads in every kernel from now on; None restores OpenMP's default."""
    global _n_threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral)
                          or not 1 <= n <= MAX_THREADS):
        raise ValueError(
            f"the thread count must be a positive integer up to {MAX_THREADS}, or None; got {n!r}")
    _n_threads = None if n is None else int(n)


@contextlib.contextmanager
def num_threads(n: int | None):
    """Run the block with n kernel threads, then restore the previous setting."""
    previous = _n_threads
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)
