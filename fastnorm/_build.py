"""Load the compiled kernels, or fail with an ImportError that says how to build them.

On x86-64 the kernels are built twice from one source: `_kernels` for the
baseline instruction set and `_kernels_avx2` with AVX2+FMA. The AVX2 copy is
used when the CPU has both; FASTNORM_KERNELS=baseline (or avx2) forces a choice.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

import numpy as np

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_DIR = _PACKAGE_DIR.parent / "src"


def _source_hash() -> str | None:
    """Hash of the kernel sources when this package sits in its source tree (as in
    setup.py), else None: an installed copy has no sources to compare with."""
    if not (_SOURCE_DIR / "_kernels.pyx").is_file() or not (_PACKAGE_DIR.parent / "setup.py").is_file():
        return None
    digest = hashlib.sha256()
    for path in sorted(_SOURCE_DIR.glob("*.p[yx][xd]")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


_loaded = None


def load_kernels():
    """The kernel module this process uses (chosen once, then cached)."""
    global _loaded
    if _loaded is None:
        _loaded = _choose(_import_checked("_kernels"))
    return _loaded


def by_dtype(fused) -> dict:
    """The float32 and float64 specializations of a fused kernel, by dtype: calling
    one directly skips the fused function's signature matching on every call."""
    return {np.dtype(np.float32): fused["float"], np.dtype(np.float64): fused["double"]}


def _choose(baseline):
    wanted = os.environ.get("FASTNORM_KERNELS", "auto").strip().lower() or "auto"
    if wanted not in ("auto", "baseline", "avx2"):
        raise ImportError(f"FASTNORM_KERNELS must be auto, baseline or avx2, got {wanted!r}")
    if wanted == "baseline" or (wanted == "auto" and not baseline.cpu_has_avx2_fma()):
        return baseline
    if wanted == "avx2" and not baseline.cpu_has_avx2_fma():
        raise ImportError("FASTNORM_KERNELS=avx2, but this CPU does not support AVX2 and FMA")
    try:
        avx2 = importlib.import_module("fastnorm._kernels_avx2")
        if Path(avx2.__file__).resolve().parent != _PACKAGE_DIR:
            raise ImportError(f"the AVX2 build found is {avx2.__file__}, outside this package")
    except ImportError:
        if wanted == "avx2":
            raise
        return baseline  # built without the AVX2 copy (FASTNORM_NO_AVX2, other platform)
    return _import_checked("_kernels_avx2")


def _import_checked(name):
    try:
        kernels = importlib.import_module(f"fastnorm.{name}")
        # an import hook (an editable install of another tree) may find a module elsewhere
        if Path(kernels.__file__).resolve().parent != _PACKAGE_DIR:
            raise ImportError(f"the only build found is {kernels.__file__}, outside this package")
    except ImportError as exc:
        where = _PACKAGE_DIR
        raise ImportError(
            f"fastnorm's compiled kernels are not built (importing fastnorm from {where}: {exc}).\n"
            "Install the package with `pip install .` from the repository root, or build in place "
            "with `pip install -e .`; if you installed it already, run Python from outside the "
            "source tree so that the installed copy is imported."
        ) from None
    expected = _source_hash()
    if expected is not None and kernels.SOURCE_HASH != expected:
        raise ImportError(
            f"fastnorm's compiled kernels in {_PACKAGE_DIR} are stale: they were built from other "
            "sources than those in src/. Rebuild with `pip install -e .` (or, with Cython and "
            "setuptools installed, as `pip install -e \".[dev]\"` does, "
            "`python setup.py build_ext --inplace`)."
        )
    return kernels
