# Asking for rows in cache before a loop reaches them, where they come from
# memory and the hardware prefetchers fall behind (the callers say which shapes
# gain). A hint only: no arithmetic changes, the bits are the same without it.

from cython cimport floating


cdef extern from *:
    """
    /* a hint, never a fault: a no-op where the compiler has no prefetch instruction;
       into every level (prefetcht0), or into L2 and below (x86: prefetcht1) */
    #define fastnorm_prefetch(p) __builtin_prefetch((p), 0, 3)
    #define fastnorm_prefetch_l2(p) __builtin_prefetch((p), 0, 2)
    """
    void prefetch "fastnorm_prefetch"(const void* p) noexcept nogil
    void prefetch_l2 "fastnorm_prefetch_l2"(const void* p) noexcept nogil


cdef inline void prefetch_rows(const floating* x, Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                               Py_ssize_t w) noexcept nogil:
    """Asks for the lines of rows r0..r1 of the w values at x (row stride D) in cache."""
    cdef Py_ssize_t i, j, step = 64 // sizeof(floating)
    for i in range(r0, r1):
        j = 0
        while j < w:
            prefetch(x + i * D + j)
            j += step
        prefetch(x + i * D + w - 1)   # the last line, where the row is not line-aligned


cdef inline void prefetch_span_l2(const void* start, Py_ssize_t n_bytes) noexcept nogil:
    """Asks for the lines of n_bytes from start in L2 (not L1: the loop asking works there)."""
    cdef const char* p = <const char*> start
    cdef Py_ssize_t k
    for k in range(0, n_bytes, 64):
        prefetch_l2(p + k)
    if n_bytes > 0:
        prefetch_l2(p + n_bytes - 1)   # the last line, where start is not line-aligned
