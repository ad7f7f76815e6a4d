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
AVX2 = _module("_kernels_avx2")  # None in a debug build, which makes only the baseline
HAVE_BOTH = AVX2 is not None and BASELINE.cpu_has_avx2_fma()
RUNNABLE = [BASELINE, AVX2] if HAVE_BOTH else [BASELINE]  # the builds this CPU can run
