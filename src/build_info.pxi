# Which build this is and what the machine runs (part of _kernels.pyx): the
# instruction-set level the copy was compiled for, the CPU's levels, OpenMP; and
# the one setting of the kernels that moves only time, the streaming threshold.

from _parallel cimport FASTNORM_HAVE_OPENMP, FASTNORM_SOURCE_HASH, omp_get_max_threads
from stream cimport stream_bytes as _stream_bytes

cdef extern from *:
    """
    /* Which instruction set this copy was compiled for (setup.py's levels), and
       what the CPU runs: __builtin_cpu_supports also checks that the OS saves the
       registers of the level (AVX state for AVX2, the AVX-512 state for AVX-512). */
    #if defined(__AVX512F__) && defined(__AVX512CD__) && defined(__AVX512BW__) \
        && defined(__AVX512DQ__) && defined(__AVX512VL__) && defined(__AVX2__) && defined(__FMA__)
    #define FASTNORM_ISA "avx512"
    #elif defined(__AVX2__) && defined(__FMA__)
    #define FASTNORM_ISA "avx2"
    #else
    #define FASTNORM_ISA "baseline"
    #endif
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #define FASTNORM_CPU(feature) __builtin_cpu_supports(feature)
    #else
    #define FASTNORM_CPU(feature) 0
    #endif
    static int fastnorm_cpu_has_avx2_fma(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
    #endif
        return FASTNORM_CPU("avx2") && FASTNORM_CPU("fma");
    }
    static int fastnorm_cpu_has_avx512(void) {
        return fastnorm_cpu_has_avx2_fma() && FASTNORM_CPU("avx512f") && FASTNORM_CPU("avx512cd")
            && FASTNORM_CPU("avx512bw") && FASTNORM_CPU("avx512dq") && FASTNORM_CPU("avx512vl");
    }
    """
    const char* FASTNORM_ISA
    int fastnorm_cpu_has_avx2_fma()
    int fastnorm_cpu_has_avx512()

SOURCE_HASH = FASTNORM_SOURCE_HASH.decode("ascii")
ISA = FASTNORM_ISA.decode("ascii")


def cpu_has_avx2_fma():
    """True when this CPU (and OS) can run the AVX2+FMA build of the kernels."""
    return bool(fastnorm_cpu_has_avx2_fma())


def cpu_supports(isa):
    """True when this CPU (and OS) can run the build of level isa: 'baseline',
    'avx2' (AVX2+FMA, x86-64-v3) or 'avx512' (AVX-512 F/CD/BW/DQ/VL, x86-64-v4)."""
    if isa == "baseline":
        return True
    if isa == "avx2":
        return bool(fastnorm_cpu_has_avx2_fma())
    if isa == "avx512":
        return bool(fastnorm_cpu_has_avx512())
    raise ValueError(f"isa must be 'baseline', 'avx2' or 'avx512', got {isa!r}")


def openmp_enabled():
    """True when this build runs its loops with OpenMP threads."""
    return bool(FASTNORM_HAVE_OPENMP)


def max_threads():
    """OpenMP's default team size (OMP_NUM_THREADS or the core count); 1 without OpenMP."""
    return omp_get_max_threads()


def set_stream_bytes(Py_ssize_t n):
    """Outputs of n bytes or more are written past the cache (streaming stores) from
    now on, in this build's copy of the kernels; returns the threshold it replaces
    (2 MiB at import). Results are bitwise the same for any n: for tests and timings."""
    global _stream_bytes
    cdef Py_ssize_t previous = _stream_bytes
    _stream_bytes = n
    return previous
