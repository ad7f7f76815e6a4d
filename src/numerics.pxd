# Helpers the building blocks share: how float32 work carries a double mean,
# which moments take a correction pass, and outputs marked as overlapping nothing.

from cython cimport floating
from libc.math cimport isfinite


cdef extern from *:
    """
    #include <stdlib.h>
    /* Scratch of the kernels (column partials, constants), freed with free(): on a
       cache line, where malloc starts a block 16 bytes past one or more. A 64-byte
       vector there splits over two lines, and a partial's store did not forward to
       its next load across the split (Zen 4: the narrow layer-norm backward waited
       on it). NULL when out of memory. */
    static inline void *fastnorm_scratch_alloc(size_t size) {
    #if defined(_WIN32)
        return malloc(size > 0 ? size : 1);
    #else
        void *p = NULL;
        return posix_memalign(&p, 64, size > 0 ? size : 1) == 0 ? p : NULL;
    #endif
    }
    """
    void* scratch_alloc "fastnorm_scratch_alloc"(size_t size) noexcept nogil


cdef inline Py_ssize_t line_stride(Py_ssize_t n) noexcept nogil:
    """n doubles rounded up to whole cache lines (8 doubles): the stride of the rows
    of partials in scratch, so that each row starts on a line as its first does."""
    return (n + 7) // 8 * 8


cdef inline Py_ssize_t half_page_apart(Py_ssize_t n) noexcept nogil:
    """n doubles or a few hundred more: the distance of two arrays of partials that
    a loop loads and stores side by side, so that they lie half a page apart modulo
    4 KiB. A load whose address shares its low 12 bits with an older store's waits
    on that store (4K aliasing); layer norm's dgamma and dbeta partials, a whole
    number of pages apart, lost 3-6% to it in their backward (Zen 4)."""
    cdef Py_ssize_t r = n % 512   # 512 doubles: a 4 KiB page
    return n + ((256 - r) if r <= 256 else (768 - r))


cdef extern from *:
    # An output row (out, dx) or a column partial never overlaps the inputs or each
    # other. Said to the compiler, a loop that writes one keeps its lane sums in
    # registers instead of checking for overlap at run time around a stack copy of
    # them, and a short row's loop skips the checks.
    ctypedef double* partial_ptr "double *__restrict__"
    ctypedef float* float_out "float *__restrict__"
    ctypedef double* double_out "double *__restrict__"

ctypedef fused floating_out:   # an output row of x's dtype
    float_out
    double_out


cdef inline double correction(double residue, double factor) noexcept nogil:
    """residue * factor for the float32 residue (mean - shift, below float32's
    rounding), or 0 where that is not finite: where the factor or the mean is
    infinite, the value it would correct is the answer already, and 0 * inf or
    inf - inf would make a NaN of it (float64 has no residue: its correction is
    0, and x - 0 is x). A select, not a branch: a loop that calls it stays vectorized."""
    cdef double product = residue * factor
    return product if isfinite(product) else 0.0


cdef inline bint has_residue(const floating* x) noexcept nogil:
    """Whether work in x's dtype carries a residue: float32 splits a double mean
    into a float32 shift and mean - shift; float64's shift is the mean itself."""
    return floating is float


cdef inline floating less_residue(floating value, double residue, double factor) noexcept nogil:
    """value - correction(residue, factor), rounded to value's dtype (float32);
    float64 has no residue: value as it is (a -0.0 stays -0.0)."""
    if floating is double:
        return value
    else:
        return <floating> (value - correction(residue, factor))


cdef inline void split_mean(const double* mean, Py_ssize_t w, floating* shift,
                            double* residue) noexcept nogil:
    """shift = mean rounded to x's dtype, residue = mean - shift (0 for float64), (w,) each."""
    cdef Py_ssize_t j
    for j in range(w):
        shift[j] = <floating> mean[j]
        residue[j] = mean[j] - shift[j]


cdef inline bint corrects_mean(const floating* x) noexcept nogil:
    """Whether moments of x's dtype take the corrected two-pass mean (a pass that
    sums the deviations from the first mean): float64 needs it for a constant row
    or column to give its value exactly and m2 == 0; float32 values summed in
    double are exact there already."""
    return floating is double


cdef inline const double* as_double(const floating* a, Py_ssize_t n, double** copy_out) noexcept nogil:
    """a itself (float64) or a copy of it converted to double (float32), which the
    caller frees (copy_out; NULL for float64). NULL when the copy cannot be had."""
    cdef Py_ssize_t j
    copy_out[0] = NULL
    if floating is double:
        return a
    else:
        copy_out[0] = <double*> scratch_alloc(n * sizeof(double))
        if copy_out[0] != NULL:
            for j in range(n):
                copy_out[0][j] = a[j]
        return copy_out[0]
