# Group norm on C-contiguous NCHW: x viewed as (N*G, C/G*P) rows, P = H*W; statistics
# per (sample, group) over its row. A group is one task: its moments (layer norm's row
# block), then its planes with per-channel scale and shift, while the row is in cache.
# Cached for the backward: the per-group mean and inverse std (double), never x_hat.
#
# Backward per group: per channel sum(dy) and sum(dy * (x - mean)) (kept per (n, c)),
# combined over the group's channels into the two sums of g = dy*gamma, then the dx
# terms per plane; dgamma, dbeta reduce the per-(n, c) sums over n in sample order.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from _parallel cimport threads_for
from batchnorm cimport _correction
from layernorm cimport _row_moments, _row_sum
from planes cimport _row_dot_dev, affine_constants, plane_affine, plane_dx_terms


cdef inline void _gn_forward_group(const floating* x, Py_ssize_t Cg, Py_ssize_t P, Py_ssize_t row,
                                   Py_ssize_t c0, const floating* gamma, const floating* beta,
                                   double eps, double* mean, double* inv_std,
                                   floating* out) noexcept nogil:
    """Group row (sample n, group g: row = n*G + g, channels c0..c0+Cg): its mean and
    inv_std (OUT at [row]), then out = (x - mean) * inv_std * gamma_c + beta_c per plane."""
    cdef Py_ssize_t M = Cg * P, k
    cdef const floating* x_row = x + row * M
    cdef floating consts[3]
    cdef double m2 = _row_moments(x_row, M, _row_sum(x_row, M), &mean[row])
    inv_std[row] = 1.0 / sqrt(m2 / M + eps)
    for k in range(Cg):
        affine_constants(mean[row], inv_std[row], gamma[c0 + k], beta[c0 + k], consts)
        plane_affine(x_row + k * P, P, consts[0], consts[1], consts[2], out + row * M + k * P)


cdef inline int gn_forward(const floating[:, :, ::1] x,    # IN  (N, C, P)
                           const floating[::1] gamma,      # IN  (C,)
                           const floating[::1] beta,       # IN  (C,)
                           Py_ssize_t G, double eps,
                           floating[:, :, ::1] out,        # OUT (N, C, P)
                           double[::1] mean,               # OUT (N*G,) cached
                           double[::1] inv_std,            # OUT (N*G,) cached
                           int n_threads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], Cg = C // G, r
    cdef int nt = threads_for(N * C * P, n_threads)
    if nt == 1:
        for r in range(N * G):
            _gn_forward_group(&x[0, 0, 0], Cg, P, r, (r % G) * Cg, &gamma[0], &beta[0], eps,
                              &mean[0], &inv_std[0], &out[0, 0, 0])
    else:
        for r in prange(N * G, num_threads=nt, schedule='static'):
            _gn_forward_group(&x[0, 0, 0], Cg, P, r, (r % G) * Cg, &gamma[0], &beta[0], eps,
                              &mean[0], &inv_std[0], &out[0, 0, 0])
    return 0


cdef inline void _gn_backward_group(const floating* dout, const floating* x, Py_ssize_t Cg,
                                    Py_ssize_t P, Py_ssize_t row, Py_ssize_t c0,
                                    const floating* gamma, const double* mean,
                                    const double* inv_std,
                                    double* sum_dy,        # OUT (N*C,) at this group's channels
                                    double* sum_dy_xc,     # OUT (N*C,) likewise
                                    floating* dx) noexcept nogil:
    """Group row: per channel sum(dy) and sum(dy*(x - mean)), then
    dx = inv_std * (dy*gamma_c - sum(g)/M - (x - mean) * inv_std**2 * sum(g*(x - mean))/M)."""
    cdef Py_ssize_t M = Cg * P, k, at
    cdef double mu = mean[row], s = inv_std[row], sum_g = 0.0, sum_g_xc = 0.0, k_xc
    cdef floating shift = <floating> mu
    cdef floating dy_shift, s_f = <floating> s
    for k in range(Cg):
        at = row * M + k * P
        sum_dy[row * Cg + k] = _row_sum(dout + at, P)
        sum_dy_xc[row * Cg + k] = _row_dot_dev(dout + at, x + at, P, shift)
        if floating is float:
            sum_dy_xc[row * Cg + k] -= _correction(mu - shift, sum_dy[row * Cg + k])
        sum_g += gamma[c0 + k] * sum_dy[row * Cg + k]
        sum_g_xc += gamma[c0 + k] * sum_dy_xc[row * Cg + k]
    k_xc = s * s * sum_g_xc / M
    dy_shift = <floating> (sum_g / M - _correction(mu - shift, k_xc))
    for k in range(Cg):
        at = row * M + k * P
        plane_dx_terms(dout + at, x + at, P, s_f, gamma[c0 + k], dy_shift, shift, <floating> k_xc,
                       dx + at)


cdef inline int gn_backward(const floating[:, :, ::1] dout,   # IN  (N, C, P)
                            const floating[:, :, ::1] x,      # IN  (N, C, P) from the cache
                            const double[::1] mean,           # IN  (N*G,) cached
                            const double[::1] inv_std,        # IN  (N*G,) cached
                            const floating[::1] gamma,        # IN  (C,)
                            Py_ssize_t G,
                            double[:, ::1] sums,              # OUT (2, N*C) scratch: sum(dy), sum(dy*(x - mean))
                            floating[:, :, ::1] dx,           # OUT (N, C, P)
                            floating[::1] dgamma,             # OUT (C,)
                            floating[::1] dbeta,              # OUT (C,)
                            int n_threads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], Cg = C // G, r, n, c
    cdef int nt = threads_for(N * C * P, n_threads)
    cdef double acc_g, acc_b
    if nt == 1:
        for r in range(N * G):
            _gn_backward_group(&dout[0, 0, 0], &x[0, 0, 0], Cg, P, r, (r % G) * Cg, &gamma[0],
                               &mean[0], &inv_std[0], &sums[0, 0], &sums[1, 0], &dx[0, 0, 0])
    else:
        for r in prange(N * G, num_threads=nt, schedule='static'):
            _gn_backward_group(&dout[0, 0, 0], &x[0, 0, 0], Cg, P, r, (r % G) * Cg, &gamma[0],
                               &mean[0], &inv_std[0], &sums[0, 0], &sums[1, 0], &dx[0, 0, 0])
    for c in range(C):   # over n in sample order
        acc_g = 0.0
        acc_b = 0.0
        for n in range(N):
            acc_b += sums[0, n * C + c]
            acc_g += sums[1, n * C + c] * inv_std[n * G + c // Cg]
        dgamma[c] = <floating> acc_g
        dbeta[c] = <floating> acc_b
    return 0
