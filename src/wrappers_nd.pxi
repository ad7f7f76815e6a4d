# Wrappers of the N-D kernels (part of _kernels.pyx): spatial batch norm on NCHW,
# its plane blocks, group norm, RMS norm. x of the spatial ops is (N, C, P) with
# P = H*W; statistics are double. A channels-last x goes to the 2-D wrappers.

from groupnorm cimport gn_forward, gn_backward
from rmsnorm cimport rms_forward, rms_backward
from spatial_batchnorm cimport (sbn_forward, sbn_backward, plane_moments_all, plane_normalize_all,
                               plane_grad_sums_all, plane_dx_all)


def spatial_batchnorm_forward(const floating[:, :, ::1] x, const floating[::1] gamma,
                              const floating[::1] beta, const floating[::1] running_mean,
                              const floating[::1] running_var, bint train, double momentum,
                              double eps, int ddof, floating[:, :, ::1] out, double[:, ::1] stats,
                              floating[:, ::1] running_out, int n_threads):
    # stats (2, C): mean, inv_std; running_out (2, C): as batchnorm_forward's
    cdef int status
    with nogil:
        status = sbn_forward(x, gamma, beta, running_mean, running_var, train, momentum, eps, ddof,
                             out, stats[0], stats[1], running_out[0], running_out[1], n_threads)
    _check(status)


def spatial_batchnorm_backward(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                               const double[::1] mean, const double[::1] inv_std,
                               const floating[::1] gamma, bint train, int ddof,
                               floating[:, :, ::1] dx, floating[::1] dgamma, floating[::1] dbeta,
                               int n_threads):
    cdef int status
    with nogil:
        status = sbn_backward(dout, x, mean, inv_std, gamma, train, ddof, dx, dgamma, dbeta,
                              n_threads)
    _check(status)


# The same blocks for NCHW memory: x, dout, dx (N, C, P) with P = H*W, statistics per
# channel over its N planes (spatial batch norm's forward is plane_moments, then
# plane_normalize; its backward plane_grad_sums, then plane_dx with count = N*P).

def plane_moments(const floating[:, :, ::1] x, double[::1] mean_out, double[::1] m2_out,
                  int n_threads):
    # mean_out, m2_out (C,) OUT: per channel the mean and M2 over its N planes, as
    # spatial_batchnorm_forward computes them. N == 0 or P == 0 gives zeros.
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    _check_lengths(C, {"mean_out": mean_out.shape[0], "m2_out": m2_out.shape[0]})
    if N == 0 or P == 0:
        mean_out[:] = 0.0
        m2_out[:] = 0.0
    if N == 0 or C == 0 or P == 0:
        return
    with nogil:
        plane_moments_all(x, mean_out, m2_out, n_threads)


def plane_normalize(const floating[:, :, ::1] x, const double[::1] mean, const double[::1] inv_std,
                    const floating[::1] gamma, const floating[::1] beta, floating[:, :, ::1] out,
                    int n_threads):
    # out = (x - mean_c) * inv_std_c * gamma_c + beta_c per channel; the rest (C,)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    _check_shape("out", (out.shape[0], out.shape[1], out.shape[2]), (N, C, P))
    _check_lengths(C, {"mean": mean.shape[0], "inv_std": inv_std.shape[0], "gamma": gamma.shape[0],
                       "beta": beta.shape[0]})
    if N == 0 or C == 0 or P == 0:
        return
    with nogil:
        plane_normalize_all(x, mean, inv_std, gamma, beta, out, n_threads)


def plane_grad_sums(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                    const double[::1] mean, double[::1] sum_dy_out, double[::1] sum_dy_xc_out,
                    int n_threads):
    # sum_dy_out, sum_dy_xc_out (C,) OUT: per channel sum(dout) and sum(dout * (x - mean))
    # over its N planes, as spatial_batchnorm_backward computes them. N == 0 gives zeros.
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    _check_shape("dout", (dout.shape[0], dout.shape[1], dout.shape[2]), (N, C, P))
    _check_lengths(C, {"mean": mean.shape[0], "sum_dy_out": sum_dy_out.shape[0],
                       "sum_dy_xc_out": sum_dy_xc_out.shape[0]})
    if N == 0 or P == 0:
        sum_dy_out[:] = 0.0
        sum_dy_xc_out[:] = 0.0
    if N == 0 or C == 0 or P == 0:
        return
    with nogil:
        plane_grad_sums_all(dout, x, mean, sum_dy_out, sum_dy_xc_out, n_threads)


def plane_dx(const floating[:, :, ::1] dout, const floating[:, :, ::1] x, const double[::1] mean,
             const double[::1] inv_std, const floating[::1] gamma, const double[::1] sum_dy,
             const double[::1] sum_dy_xc, double count, int ddof, bint train,
             floating[:, :, ::1] dx_out, int n_threads):
    # dout, x, dx_out (N, C, P); the rest (C,). Train: dx = gamma*inv_std*(dout - sum_dy/count
    # - (x - mean)*inv_std**2*sum_dy_xc/(count - ddof)), count the values per channel of the
    # whole batch (N_global * P); test: dx = gamma*inv_std*dout.
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    _check_shape("dout", (dout.shape[0], dout.shape[1], dout.shape[2]), (N, C, P))
    _check_shape("dx_out", (dx_out.shape[0], dx_out.shape[1], dx_out.shape[2]), (N, C, P))
    _check_lengths(C, {"mean": mean.shape[0], "inv_std": inv_std.shape[0], "gamma": gamma.shape[0],
                       "sum_dy": sum_dy.shape[0], "sum_dy_xc": sum_dy_xc.shape[0]})
    if N == 0 or C == 0 or P == 0:
        return
    with nogil:
        plane_dx_all(dout, x, mean, inv_std, gamma, sum_dy, sum_dy_xc, count, ddof, train, dx_out,
                     n_threads)


def groupnorm_forward(const floating[:, :, ::1] x, const floating[::1] gamma,
                      const floating[::1] beta, Py_ssize_t G, double eps, floating[:, :, ::1] out,
                      double[:, ::1] stats, int n_threads):
    # stats (2, N*G): mean, inv_std of each (sample, group)
    with nogil:
        gn_forward(x, gamma, beta, G, eps, out, stats[0], stats[1], n_threads)


def groupnorm_backward(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                       const double[::1] mean, const double[::1] inv_std,
                       const floating[::1] gamma, Py_ssize_t G, double[:, ::1] sums,
                       floating[:, :, ::1] dx, floating[::1] dgamma, floating[::1] dbeta,
                       int n_threads):
    # sums (2, N*C): scratch
    with nogil:
        gn_backward(dout, x, mean, inv_std, gamma, G, sums, dx, dgamma, dbeta, n_threads)


def rmsnorm_forward(const floating[:, ::1] x, const floating[::1] gamma, double eps,
                    floating[:, ::1] out, double[::1] rstd, int n_threads):
    with nogil:
        rms_forward(x, gamma, eps, out, rstd, n_threads)


def rmsnorm_backward(const floating[:, ::1] dout, const floating[:, ::1] x, const double[::1] rstd,
                     const floating[::1] gamma, floating[:, ::1] dx, floating[::1] dgamma,
                     int n_threads):
    cdef int status
    with nogil:
        status = rms_backward(dout, x, rstd, gamma, dx, dgamma, n_threads)
    _check(status)
