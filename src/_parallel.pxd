# Threads and tiling shared by all kernels.
#
# Reductions are split into tiles whose size depends on the shape only, never on
# the thread count, and partial results are merged in tile order: every result
# is bitwise the same for any number of threads (the split of pytorch#88718 is
# what this avoids).

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTNORM_HAVE_OPENMP 1
    #else
    #define FASTNORM_HAVE_OPENMP 0
    static inline int omp_get_max_threads(void) { return 1; }
    #endif
    #ifndef FASTNORM_SOURCE_HASH
    #define FASTNORM_SOURCE_HASH "unknown"
    #endif
    """
    const bint FASTNORM_HAVE_OPENMP
    const char* FASTNORM_SOURCE_HASH
    int omp_get_max_threads() noexcept nogil

cdef enum:
    ROW_BLOCK = 64     # rows in one reduction tile
    COL_TILE = 512     # columns in one reduction tile: 64 x 512 doubles = 256 KiB, L2-resident
    LANES = 16         # independent accumulators of a row sum (vectorizable, fixed order)
    STRIP = 16         # columns whose sums a tile reduction keeps in registers


cdef inline Py_ssize_t n_blocks(Py_ssize_t n, Py_ssize_t block) noexcept nogil:
    return (n + block - 1) // block


cdef inline int threads_for(Py_ssize_t n_elements, int n_threads) noexcept nogil:
    """Small problems run on one thread: waking a team costs more than it saves.

    Kernels run a one-thread loop as a plain loop, not as a prange of one thread:
    opening even a one-thread OpenMP region costs ~0.5-1 µs, much of a small call.
    Each task is one function call in both loops, so both compute the same bits."""
    if n_elements < 32768:
        return 1
    return n_threads
