"""Load the compiled kernels, or fail with an ImportError that says how to build them.

On x86-64 the kernels are built from one source for up to three instruction-set
levels: `_kernels` (baseline, SSE2), `_kernels_avx2` (AVX2+FMA, x86-64-v3) and
`_kernels_avx512` (AVX-512 F/CD/BW/DQ/VL, x86-64-v4). At import the highest
level that is built and that the CPU (and OS) runs is chosen; all give bitwise
the same results. FASTNORM_KERNELS=baseline, avx2 or avx512 forces a level (an
ImportError when the CPU cannot run it or it is not built); auto is the default.
`fastnorm.kernel_isa()` says which level runs.

`by_dtype(op)` is the one dispatch table: the entry point of each op of the
chosen build for float32 and float64.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from ._source_hash import source_hash

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_DIR = _PACKAGE_DIR.parent / "src"

LEVELS = ("baseline", "avx2", "avx512")   # ascending: each runs where the next one does
_MODULES = {"baseline": "_kernels", "avx2": "_kernels_avx2", "avx512": "_kernels_avx512"}
_NEEDS = {"avx2": "AVX2 and FMA", "avx512": "AVX-512 (F, CD, BW, DQ, VL) with AVX2 and FMA"}

# The compiled entry points, by op: each is a fused function with a float32 and
# a float64 specialization.
OPS = ("batchnorm_forward", "batchnorm_backward", "layernorm_forward", "layernorm_backward",
       "adam_update", "column_moments", "column_grad_sums", "column_dx",
       "spatial_batchnorm_forward", "spatial_batchnorm_backward", "groupnorm_forward",
       "groupnorm_backward", "rmsnorm_forward", "rmsnorm_backward",
       "plane_moments", "plane_normalize", "plane_grad_sums", "plane_dx")


def _source_hash() -> str | None:
    """Hash of the kernel sources when this package sits in its source tree (as in
    setup.py), else None: an installed copy has no sources to compare with."""
    if not (_SOURCE_DIR / "_kernels.pyx").is_file() or not (_PACKAGE_DIR.parent / "setup.py").is_file():
        return None
    return source_hash(_SOURCE_DIR)


_loaded = None
_table = None


def load_kernels():
    """The kernel module this process uses (chosen once, then cached)."""
    global _loaded
    if _loaded is None:
        baseline = _import_checked("_kernels")
        wanted = os.environ.get("FASTNORM_KERNELS", "auto").strip().lower() or "auto"
        level = choose_isa(wanted, baseline.cpu_supports, _built_levels())
        _loaded = baseline if level == "baseline" else _import_checked(_MODULES[level])
    return _loaded


def kernel_isa() -> str:
    """The instruction-set level of the kernels that run: 'baseline', 'avx2' or 'avx512'."""
    return load_kernels().ISA


def by_dtype(op) -> dict:
    """The entry points of one op (its name, or its fused function in the chosen
    build) by dtype, float32 and float64: calling one directly skips the fused
    function's signature matching on every call."""
    global _table
    if _table is None:
        kernels = load_kernels()
        _table = {}
        for name in OPS:
            fused = getattr(kernels, name)
            _table[name] = {np.dtype(np.float32): fused["float"], np.dtype(np.float64): fused["double"]}
    return _table[op if isinstance(op, str) else op.__name__]


def choose_isa(wanted: str, cpu_supports, built) -> str:
    """The level to load. wanted: 'auto' or a level of LEVELS; cpu_supports(level):
    whether the CPU and OS run it; built: the levels built beside this package.
    auto takes the highest level built that the CPU runs."""
    if wanted != "auto" and wanted not in LEVELS:
        raise ImportError(f"FASTNORM_KERNELS must be auto, baseline or avx2 (or avx512), got {wanted!r}")
    if wanted == "auto":
        return max((level for level in built if level == "baseline" or cpu_supports(level)),
                   key=LEVELS.index, default="baseline")
    if wanted != "baseline" and not cpu_supports(wanted):
        raise ImportError(f"FASTNORM_KERNELS={wanted}, but this CPU does not support {_NEEDS[wanted]}")
    if wanted not in built:
        raise ImportError(f"FASTNORM_KERNELS={wanted}, but fastnorm in {_PACKAGE_DIR} was built "
                          f"without its {wanted} kernels (FASTNORM_NO_{wanted.upper()}, a debug "
                          "build or another platform)")
    return wanted


def _built_levels() -> list:
    """The levels whose module lies in this package (an import hook, such as an
    editable install of another tree, may find a module elsewhere: not counted)."""
    built = ["baseline"]
    for level in LEVELS[1:]:
        try:
            spec = importlib.util.find_spec(f"fastnorm.{_MODULES[level]}")
        except ImportError:
            spec = None
        if spec is not None and spec.origin and Path(spec.origin).resolve().parent == _PACKAGE_DIR:
            built.append(level)
    return built


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
