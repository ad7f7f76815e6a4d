"""`import fastnorm` gives the compiled kernels or an ImportError that says how
to build them: never a silent fall-back to NumPy."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastnorm
from fastnorm import _kernels

REPO = Path(__file__).resolve().parents[1]


def import_in(tmp_path):
    return subprocess.run([sys.executable, "-c", "import fastnorm"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def copy_package(tmp_path, with_kernels):
    package = Path(fastnorm.__file__).parent
    shutil.copytree(package, tmp_path / "fastnorm",
                    ignore=shutil.ignore_patterns("__pycache__", "_kernels*.so", "_kernels*.pyd"))
    if with_kernels:
        shutil.copy(_kernels.__file__, tmp_path / "fastnorm")


def test_the_kernels_are_compiled():
    assert Path(_kernels.__file__).suffix in {".so", ".pyd"}
    assert fastnorm.batchnorm_forward.__module__ == "fastnorm.normalization"


def test_missing_build_is_an_import_error_that_says_how_to_build(tmp_path):
    copy_package(tmp_path, with_kernels=False)
    result = import_in(tmp_path)
    assert result.returncode != 0
    assert "ImportError: fastnorm's compiled kernels are not built" in result.stderr
    assert "pip install ." in result.stderr


@pytest.mark.skipif(not (REPO / "src" / "_kernels.pyx").is_file(), reason="needs the source tree")
def test_stale_in_place_build_is_an_import_error(tmp_path):
    copy_package(tmp_path, with_kernels=True)
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.c", "*.html"))
    shutil.copy(REPO / "setup.py", tmp_path)
    fresh = import_in(tmp_path)
    assert fresh.returncode == 0, fresh.stderr  # the same sources: not stale
    with open(tmp_path / "src" / "batchnorm.pxd.tp", "a") as f:
        f.write("\n# edited after the build\n")
    stale = import_in(tmp_path)
    assert stale.returncode != 0
    assert "compiled kernels" in stale.stderr and "are stale" in stale.stderr
