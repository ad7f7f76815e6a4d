"""The compiled builds of this package, for tests that compare them.

A module lookup can find an editable install of another tree, so a build counts
only if it sits beside the fastnorm package under test.
"""

from pathlib import Path

import fastnorm as fn


def _module(name):
    """fastnorm.<name> if it is built in this package, else None."""
    try:
        module = __import__(f"fastnorm.{name}", fromlist=["x"])
    except ImportError:
        return None
    return module if Path(module.__file__).parent == Path(fn.__file__).parent else None


BASELINE = _module("_kernels")
# None in a debug build, which makes only the baseline (and where
# FASTNORM_NO_AVX2 / FASTNORM_NO_AVX512 skipped them)
AVX2 = _module("_kernels_avx2")
HAVE_BOTH = AVX2 is not None and BASELINE.cpu_has_avx2_fma()
# imported only where the CPU runs it: even its module initialization may hold
# AVX-512 instructions
AVX512 = _module("_kernels_avx512") if BASELINE.cpu_supports("avx512") else None
HAVE_AVX512 = AVX512 is not None
# every build this CPU can run, lowest level first
RUNNABLE = [m for m, runs in ((BASELINE, True), (AVX2, HAVE_BOTH), (AVX512, HAVE_AVX512)) if runs]
