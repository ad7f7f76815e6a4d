#!/usr/bin/env bash
# Run the kernel tests on an AddressSanitizer + UndefinedBehaviorSanitizer build.
#
#   bash scripts/sanitize.sh                 # kernel, numerics and fuzz tests
#   bash scripts/sanitize.sh tests/test_x.py # other tests (pytest arguments)
#
# The kernels are built in a temporary copy of the repository (tracked and
# untracked, not ignored, files), so the in-place build of the work tree is
# left alone. The build keeps the release code paths (-O3, bounds checks off,
# OpenMP on): the sanitizers then see every out-of-bounds or use-after-free
# access of the raw-pointer loops that Cython's own checks cannot see. Any
# sanitizer report stops the run with a non-zero exit.
#
# Needs gcc with libasan/libubsan (Debian: gcc). Takes about 2 minutes on a
# 2-core machine (build ~15 s, tests under ASan ~2x slower than normal).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/fastnorm-asan.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

cd "$repo"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$work"

libasan="$(gcc -print-file-name=libasan.so)"
libubsan="$(gcc -print-file-name=libubsan.so)"
if [ ! -e "$libasan" ] || [ ! -e "$libubsan" ]; then
    echo "sanitize.sh: gcc's libasan/libubsan not found (apt-get install gcc)" >&2
    exit 2
fi

cd "$work"
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

python - <<'PY'
import pathlib, fastnorm, fastnorm._kernels as k
here = pathlib.Path.cwd().resolve()
assert pathlib.Path(fastnorm.__file__).resolve().is_relative_to(here), fastnorm.__file__
print("   testing", k.__file__, "openmp:", fastnorm.openmp_enabled())
PY

if [ "$#" -eq 0 ]; then
    set -- $(ls tests/test_kernels*.py 2>/dev/null) tests/test_numerics.py tests/test_fuzz.py
fi
echo "== pytest $*"
# -p no:cacheprovider: nothing written back; the fuzz budget is the CI one.
python -m pytest -q -p no:cacheprovider "$@"
echo "== sanitizer run clean: no invalid read/write, no undefined behaviour ($(( $(date +%s) - start )) s in all)"
