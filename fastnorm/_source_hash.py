"""The hash of the kernel sources in src/ (Cython files, templates and their
expander), computed one way for both users: setup.py, which loads this file by
path (without importing the package) and compiles the hash into the build, and
fastnorm/_build.py, which compares it at import to refuse a stale in-place build."""

import hashlib
from pathlib import Path

PATTERNS = ("*.pyx", "*.pxi", "*.pxd", "*.tp", "*.py")


def source_hash(src: Path) -> str:
    """First 16 hex digits of the SHA-256 of every source file's name and bytes, in name order."""
    digest = hashlib.sha256()
    paths = {path for pattern in PATTERNS for path in Path(src).glob(pattern)}
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
