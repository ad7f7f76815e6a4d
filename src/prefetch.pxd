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

cdef enum:
    FETCH_BYTES = 4 << 20  # arrays from this size on come from memory (past the L2s)
    FETCH_AHEAD = 8192     # bytes of each array asked for ahead of the rows a walk is at


cdef inline void prefetch_rows(const floating* x, Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                               Py_ssize_t w, bint l2=False) noexcept nogil:
    """Asks for the lines of rows r0..r1 of the w values at x (row stride D) in cache:
    in every level, or where l2 in L2 and below (for a loop that works in L1 meanwhile)."""
    cdef Py_ssize_t i, j, step = 64 // sizeof(floating)
    for i in range(r0, r1):
        j = 0
        while j < w:
            if l2:
                prefetch_l2(x + i * D + j)
            else:
                prefetch(x + i * D + j)
            j += step
        if l2:   # the last line, where the row is not line-aligned
            prefetch_l2(x + i * D + w - 1)
        else:
            prefetch(x + i * D + w - 1)


cdef inline void prefetch_ahead(const floating* p, Py_ssize_t n, Py_ssize_t left) noexcept nogil:
    """Asks for the lines of the n values FETCH_AHEAD bytes past p into L2, those of
    the `left` values from p on (the sweep's own): a streamed sweep's read-ahead, a
    chunk at a time, so that its reads from memory overlap its stores."""
    cdef Py_ssize_t k = FETCH_AHEAD // sizeof(floating)
    if k < left:
        prefetch_rows(p + k, 0, 0, 1, min(n, left - k), True)
