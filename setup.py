"""Build the compiled kernels of fastnorm.

Environment switches (all optional):

    FASTNORM_DISABLE_OPENMP=1   build serial loops even when the compiler has OpenMP
    FASTNORM_DEBUG=1            bounds/wraparound/initialized checks on, -O0 -g
    FASTNORM_NATIVE=1           add -march=native (binaries then only run on this CPU)
    FASTNORM_NO_AVX2=1          on x86-64, skip the second (AVX2+FMA) build of the kernels
    FASTNORM_NO_AVX512=1        on x86-64, skip the third (AVX-512, x86-64-v4) build

The Tempita templates of src/ (*.pxd.tp) are expanded into build/gen first
(src/codegen.py); only the templates are tracked.

Everything else (metadata, dependencies) lives in pyproject.toml.
"""

import importlib.util
import os
import platform
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
GENERATED = HERE / "build" / "gen"   # the expanded templates


def _load(path):
    """A helper module loaded by path: the package itself is not importable before its build."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


DEBUG = _flag("FASTNORM_DEBUG")
NO_OPENMP = _flag("FASTNORM_DISABLE_OPENMP")
NATIVE = _flag("FASTNORM_NATIVE")
# x86-64 baseline is SSE2; the same source is built again for AVX2+FMA
# (x86-64-v3) and for AVX-512 (x86-64-v4), and fastnorm/_build.py picks the
# highest level the CPU runs at import. A debug build makes the baseline only.
X86_64 = platform.machine().lower() in {"x86_64", "amd64"} and sys.platform != "win32"
AVX2 = X86_64 and not DEBUG and not _flag("FASTNORM_NO_AVX2")
AVX512 = X86_64 and not DEBUG and not _flag("FASTNORM_NO_AVX512")
ISA_FLAGS = {
    "_kernels_avx2": ["-mavx2", "-mfma"],
    "_kernels_avx512": ["-mavx512f", "-mavx512cd", "-mavx512bw", "-mavx512dq", "-mavx512vl",
                        "-mavx2", "-mfma"],
}

# The one place where compiler directives are set.
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}


def source_hash():
    """Hash of the kernel sources, and the sources it covers; the built module
    carries it so that `import fastnorm` can tell a stale in-place build from a
    fresh one."""
    hashing = _load(HERE / "fastnorm" / "_source_hash.py")
    sources = {str(p.relative_to(HERE)) for pattern in hashing.PATTERNS for p in SRC.glob(pattern)}
    return hashing.source_hash(SRC), sorted(sources)


class BuildExt(build_ext):
    """Probe the compiler for OpenMP, then build; serial with a warning when absent."""

    def _compiler_has_openmp(self):
        probe = textwrap.dedent(
            """
            #include <omp.h>
            int main(void) {
                int n = 0;
                #pragma omp parallel reduction(+:n)
                n += 1;
                return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;
            }
            """
        )
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe_openmp.c"
            src.write_text(probe)
            try:
                objects = self.compiler.compile(
                    [str(src)], output_dir=tmp, extra_postargs=["-fopenmp"]
                )
                self.compiler.link_executable(
                    objects, "probe_openmp", output_dir=tmp, extra_postargs=["-fopenmp"]
                )
            except Exception:  # any compile or link failure means "no OpenMP"
                return False
        return True

    def build_extensions(self):
        if NO_OPENMP:
            use_openmp = False
            print("fastnorm: FASTNORM_DISABLE_OPENMP set: building serial kernels")
        else:
            use_openmp = self._compiler_has_openmp()
            if not use_openmp:
                print(
                    "WARNING fastnorm: the compiler does not support OpenMP; "
                    "building serial kernels (fastnorm.openmp_enabled() will be False)",
                    file=sys.stderr,
                )
        for ext in self.extensions:
            if use_openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


def extensions():
    compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
    # No fused multiply-adds (FMA hardware must round as the baseline build and as
    # NumPy do) and no errno from sqrt (so its loops vectorize; nothing reads errno).
    compile_args += ["-ffp-contract=off", "-fno-math-errno"]
    if NATIVE:
        compile_args.append("-march=native")

    _load(SRC / "codegen.py").expand_all(SRC, GENERATED)
    digest, hashed = source_hash()

    def kernels(name):
        return Extension(
            f"fastnorm.{name}",
            sources=[f"src/{name}.pyx"],
            include_dirs=["src"],
            define_macros=[("FASTNORM_SOURCE_HASH", f'"{digest}"')],
            depends=hashed,   # any source edited recompiles the hash in (as _build.py checks it)
            extra_compile_args=compile_args + ISA_FLAGS.get(name, []),
            extra_link_args=[],
        )

    exts = [kernels("_kernels")]
    # The output cache is NumPy C-API code (a memory handler), not a kernel: one build.
    exts.append(Extension("fastnorm._output_cache", sources=["src/_output_cache.pyx"],
                          include_dirs=[numpy.get_include()],
                          extra_compile_args=compile_args))
    if AVX2:
        exts.append(kernels("_kernels_avx2"))
    if AVX512:
        exts.append(kernels("_kernels_avx512"))
    # Generated C goes under build/ (per mode), never beside the sources.
    return cythonize(
        exts,
        include_path=["src", str(GENERATED.relative_to(HERE))],
        compiler_directives=DIRECTIVES,
        build_dir="build/cython-debug" if DEBUG else "build/cython",
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
