# RMS norm on C-contiguous (M, D) rows (x of any rank >= 2, its last axis the row):
# y = x * rstd * gamma, rstd = 1 / sqrt(mean(x**2) + eps) per row, the sum of squares
# in double (layer norm's row block about 0). Cached for the backward: rstd (double).

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free

from _parallel cimport LANES, n_blocks, threads_for
from layernorm cimport (_add_partials, _row_dev_sq, _row_dx_into, _row_segment_sums,
                        ln_backward_group_rows)


cdef inline void _rms_forward_row(const floating* x_row, const floating* gamma, Py_ssize_t D,
                                  double eps, floating* out_row, double* rstd) noexcept nogil:
    cdef double s = 1.0 / sqrt(_row_dev_sq(x_row, D, 0.0) / D + eps)
    cdef floating s_f = <floating> s
    cdef Py_ssize_t j
    rstd[0] = s
    for j in range(D):
        out_row[j] = x_row[j] * s_f * gamma[j]


cdef inline int rms_forward(const floating[:, ::1] x,      # IN  (M, D)
                            const floating[::1] gamma,     # IN  (D,)
                            double eps,
                            floating[:, ::1] out,          # OUT (M, D)
                            double[::1] rstd,              # OUT (M,) cached
                            int n_threads) noexcept nogil:
    cdef Py_ssize_t M = x.shape[0], D = x.shape[1], i
    cdef int nt = threads_for(M * D, n_threads)
    if nt == 1:
        for i in range(M):
            _rms_forward_row(&x[i, 0], &gamma[0], D, eps, &out[i, 0], &rstd[i])
    else:
        for i in prange(M, num_threads=nt, schedule='static'):
            _rms_forward_row(&x[i, 0], &gamma[0], D, eps, &out[i, 0], &rstd[i])
    return 0


# Backward per row: the one reduction sum(g * x) of g = dout*gamma, then
# dx = rstd * (g - x * rstd**2 * sum(g*x) / D), and the column partials of
# dgamma = sum over rows of dout * x * rstd: layer norm's row blocks about a zero
# mean, with the mean term of dx (sum(g)/D) left out.

cdef inline void _rms_group_backward(const floating* dout, const floating* x, const floating* gamma,
                                     const double* gamma_d, Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                                     const double* rstd,
                                     floating* dx,                      # OUT rows r0..r1
                                     double* dgamma_part,               # OUT (D,)
                                     double* dy_part) noexcept nogil:   # scratch (D,)
    cdef double lanes[2 * LANES]
    cdef double totals[2]
    cdef Py_ssize_t i, j
    for j in range(D):
        dgamma_part[j] = 0.0
        dy_part[j] = 0.0
    for i in range(r0, r1):
        _row_segment_sums(dout + i * D, x + i * D, gamma_d, 0, D, 0.0, rstd[i], False, lanes, totals,
                          dgamma_part, dy_part)
        totals[0] = 0.0
        _row_dx_into(dout + i * D, x + i * D, gamma, D, 0.0, rstd[i], totals, 0, dx + i * D)


cdef inline int rms_backward(const floating[:, ::1] dout,   # IN  (M, D)
                             const floating[:, ::1] x,      # IN  (M, D) from the cache
                             const double[::1] rstd,        # IN  (M,) cached
                             const floating[::1] gamma,     # IN  (D,)
                             floating[:, ::1] dx,           # OUT (M, D)
                             floating[::1] dgamma,          # OUT (D,)
                             int n_threads) noexcept nogil:
    """Row groups in parallel (layer norm's split, fixed by the shape), their dgamma
    partials merged in group order. Returns -1 when scratch memory cannot be had."""
    cdef Py_ssize_t M = x.shape[0], D = x.shape[1]
    cdef Py_ssize_t group = ln_backward_group_rows(M)
    cdef Py_ssize_t n_groups = n_blocks(M, group), g, j
    cdef int nt = threads_for(M * D, n_threads)
    cdef double* part = <double*> malloc(2 * n_groups * D * sizeof(double))
    cdef double* gamma_copy = NULL   # float32: gamma in double, converted once per call
    cdef const double* gamma_d
    if floating is float:
        gamma_copy = <double*> malloc(D * sizeof(double))
    if part == NULL or (floating is float and gamma_copy == NULL):
        free(part)
        free(gamma_copy)
        return -1
    if floating is float:
        for j in range(D):
            gamma_copy[j] = gamma[j]
        gamma_d = gamma_copy
    else:
        gamma_d = &gamma[0]
    cdef double* scratch = part + n_groups * D
    if nt == 1:
        for g in range(n_groups):
            _rms_group_backward(&dout[0, 0], &x[0, 0], &gamma[0], gamma_d, D, g * group,
                                min((g + 1) * group, M), &rstd[0], &dx[0, 0], part + g * D, scratch + g * D)
    else:
        for g in prange(n_groups, num_threads=nt, schedule='static'):
            _rms_group_backward(&dout[0, 0], &x[0, 0], &gamma[0], gamma_d, D, g * group,
                                min((g + 1) * group, M), &rstd[0], &dx[0, 0], part + g * D, scratch + g * D)
    _add_partials(part, part + D, n_groups - 1, D)
    for j in range(D):
        dgamma[j] = <floating> part[j]
    free(part)
    free(gamma_copy)
    return 0
