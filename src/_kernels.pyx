# The Python/compiled boundary of fastnorm: thin `def` wrappers that take
# validated, C-contiguous float32/float64 arrays and preallocated outputs, drop
# the GIL and run a kernel. Checking, converting and allocating are done in
# Python above this (fastnorm/_validate.py, fastnorm/normalization.py).
#
# One module in three parts: build_info.pxi (the build's instruction set, the
# CPU's, OpenMP), wrappers_2d.pxi (batch and layer norm on (N, D), Adam, the
# column blocks), wrappers_nd.pxi (spatial batch norm, group norm, RMS norm, the
# plane blocks). _kernels_avx2.pyx and _kernels_avx512.pyx include this file.

from cython cimport floating


cdef inline _check(int status):
    if status != 0:
        raise MemoryError("fastnorm: could not allocate the kernel's scratch memory")


# The blocks' wrappers check their buffers' shapes, because a wrong one would make
# the kernel write past a buffer; the rest is the caller's.

cdef _check_shape(str name, tuple got, tuple want):
    if got != want:
        raise ValueError(f"{name} must have shape {want}, got {got}")


cdef _check_lengths(Py_ssize_t n, dict lengths):
    """Every buffer named in lengths (name: its length) has shape (n,)."""
    for name, length in lengths.items():
        _check_shape(name, (length,), (n,))


include "build_info.pxi"
include "wrappers_2d.pxi"
include "wrappers_nd.pxi"
