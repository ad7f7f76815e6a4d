"""Load the compiled kernels, or fail with an ImportError that says how to build them."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

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


def load_kernels():
    try:
        kernels = importlib.import_module("fastnorm._kernels")
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
            "sources than those in src/. Rebuild with `pip install -e .` (or "
            "`python setup.py build_ext --inplace`)."
        )
    return kernels
