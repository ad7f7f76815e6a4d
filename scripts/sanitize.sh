#!/usr/bin/env bash
# Memory-safety runs of fastnorm's kernels, each on a build in a temporary copy
# of the repository (tracked and untracked-but-not-ignored files), so the
# in-place build of the work tree is left alone.
#
#   bash scripts/sanitize.sh            # AddressSanitizer + UndefinedBehaviorSanitizer
#   bash scripts/sanitize.sh --debug    # FASTNORM_DEBUG=1 build, the whole suite
#   bash scripts/sanitize.sh [--debug] tests/test_x.py ...   # other pytest arguments
#
# Default (ASan+UBSan): the release code paths (-O3, Cython's checks off,
# OpenMP on), so the sanitizers see every out-of-bounds, use-after-free or
# undefined-behaviour access of the raw-pointer loops, which Cython's own
# checks cannot see. The kernel, numerics, fuzz and concurrency tests run on
# the highest instruction-set level of the kernels the CPU has (AVX-512 or
# AVX2; the AVX-512 copy is built only when the CPU runs it), then the kernel
# and numerics tests on the baseline copy. Any sanitizer report ends the run with a
# non-zero exit. About 4-7 minutes on a 2-core machine (the build alone 1-2).
#
# --debug: setup.py's debug build (bounds, wraparound and initialized checks
# on, -O0 -g; baseline kernels only), then the whole test suite. About as long
# as the normal suite plus a minute.
#
# Needs gcc (with libasan and libubsan for the default mode).
set -euo pipefail

mode=asan
if [ "${1:-}" = "--debug" ]; then
    mode=debug
    shift
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/fastnorm-$mode.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

if ! python -c "import Cython, setuptools" 2>/dev/null; then
    echo "sanitize.sh: the build needs Cython and setuptools in this Python:" \
         "pip install -e '.[dev]' (or pip install 'Cython>=3.1' 'setuptools>=64')" >&2
    exit 2
fi

cd "$repo"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$work"
cd "$work"

# Python for the copy only: an editable install of another tree (pip install -e)
# puts an import hook on sys.meta_path that would resolve fastnorm's submodules
# (the other kernel copy, say) in that tree; drop it.
cat > hermetic.py <<'PY'
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not (getattr(f, "__module__", None) or type(f).__module__).startswith("__editable__")]
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True) if sys.argv[0] != "-" else exec(sys.stdin.read())
PY
hpython() { python "$work/hermetic.py" "$@"; }

# Lay out the packages pyproject.toml maps from other folders (package-dir) the
# way an install does, so the copy imports like an installed fastnorm.
python - <<'PY'
import pathlib, shutil, tomllib
conf = tomllib.loads(pathlib.Path("pyproject.toml").read_text())
for name, folder in conf.get("tool", {}).get("setuptools", {}).get("package-dir", {}).items():
    target = pathlib.Path(*name.split("."))
    if name and folder and not target.exists() and pathlib.Path(folder).is_dir():
        shutil.copytree(folder, target)
PY

check_import() {
    hpython - <<'PY'
import pathlib, fastnorm, fastnorm._build as b
here = pathlib.Path.cwd().resolve()
k = b.load_kernels()
assert pathlib.Path(k.__file__).resolve().is_relative_to(here), k.__file__
print("   testing", pathlib.Path(k.__file__).name, "openmp:", fastnorm.openmp_enabled())
PY
}

if [ "$mode" = debug ]; then
    echo "== FASTNORM_DEBUG=1 build in $work"
    FASTNORM_DEBUG=1 python setup.py build_ext --inplace > build.log 2>&1 || { tail -40 build.log; exit 1; }
    echo "   built in $(( $(date +%s) - start )) s"
    check_import
    echo "== pytest ${*:-(whole suite)}"
    hpython pytest -q -p no:cacheprovider "$@"
    echo "== debug-build run passed ($(( $(date +%s) - start )) s in all)"
    exit 0
fi

libasan="$(gcc -print-file-name=libasan.so)"
libubsan="$(gcc -print-file-name=libubsan.so)"
if [ ! -e "$libasan" ] || [ ! -e "$libubsan" ]; then
    echo "sanitize.sh: gcc's libasan/libubsan not found (apt-get install gcc)" >&2
    exit 2
fi

# a copy of the kernels the tests cannot run would only lengthen the build
grep -qw avx512f /proc/cpuinfo 2>/dev/null || export FASTNORM_NO_AVX512=1
echo "== building the kernels with -fsanitize=address,undefined in $work"
# The flags go in CC so that setup.py's OpenMP probe (compiled and linked as an
# executable) links with the sanitizer runtime too and OpenMP stays on.
CC="gcc -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
CFLAGS="-g" \
    python setup.py build_ext --inplace > build.log 2>&1 || { tail -40 build.log; exit 1; }
echo "   built in $(( $(date +%s) - start )) s"

export LD_PRELOAD="$libasan $libubsan"
# Python's own allocator hides heap errors from ASan; leaks of the interpreter are not ours.
export PYTHONMALLOC=malloc
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_odr_violation=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

kernel_tests=$(ls tests/test_kernels*.py 2>/dev/null || true)
if [ "$#" -gt 0 ]; then
    passes=("auto:$*")
else
    passes=("auto:$kernel_tests tests/test_numerics.py tests/test_fuzz.py tests/test_concurrency.py")
    if ls fastnorm/_kernels_avx*.so > /dev/null 2>&1; then
        passes+=("baseline:$kernel_tests tests/test_numerics.py")
    fi
fi
for pass in "${passes[@]}"; do
    export FASTNORM_KERNELS="${pass%%:*}"
    echo "== FASTNORM_KERNELS=$FASTNORM_KERNELS pytest ${pass#*:}"
    check_import
    # --capture=sys: a sanitizer report (written to fd 2) reaches the terminal even
    # when it aborts the process in the middle of a test.
    # shellcheck disable=SC2086  # the test list is split on purpose
    hpython pytest -q -p no:cacheprovider --capture=sys ${pass#*:}
done
echo "== sanitizer run clean: no invalid read/write, no undefined behaviour ($(( $(date +%s) - start )) s in all)"
