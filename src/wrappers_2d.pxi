# Wrappers of the 2-D kernels (part of _kernels.pyx): batch norm and layer norm on
# (N, D), Adam, and batch norm's building blocks.

from batchnorm cimport bn_forward, bn_backward, bn_normalize
from dx cimport column_dx as _column_dx
from grad_sums cimport column_grad_sums as _column_grad_sums
from layernorm cimport ln_forward, ln_backward
from moments cimport column_moments as _column_moments
from optim cimport adam_step


def batchnorm_forward(const floating[:, ::1] x, const floating[::1] gamma,
                      const floating[::1] beta, const floating[::1] running_mean,
                      const floating[::1] running_var, bint train, double momentum,
                      double eps, int ddof, floating[:, ::1] out, double[:, ::1] stats,
                      floating[:, ::1] running_out, int n_threads):
    # stats (2, D) receives mean and inv_std, running_out (2, D) the running mean and
    # variance: one buffer for each pair, since every array argument costs a buffer
    # acquisition (~0.3 us), a large share of a call on a small x
    cdef int status
    with nogil:
        status = bn_forward(x, gamma, beta, running_mean, running_var, train, momentum,
                            eps, ddof, out, stats[0], stats[1], running_out[0],
                            running_out[1], n_threads)
    _check(status)


def batchnorm_backward(const floating[:, ::1] dout, const floating[:, ::1] x,
                       const double[::1] mean, const double[::1] inv_std,
                       const floating[::1] gamma, bint train, int ddof,
                       floating[:, ::1] dx, floating[::1] dgamma, floating[::1] dbeta,
                       int n_threads):
    cdef int status
    with nogil:
        status = bn_backward(dout, x, mean, inv_std, gamma, train, ddof, dx, dgamma, dbeta,
                             n_threads)
    _check(status)


def layernorm_forward(const floating[:, ::1] x, const floating[::1] gamma,
                      const floating[::1] beta, double eps, int ddof,
                      floating[:, ::1] out, double[:, ::1] stats, int n_threads):
    # stats (2, N) receives mean and inv_std (see batchnorm_forward)
    cdef int status
    with nogil:
        status = ln_forward(x, gamma, beta, eps, ddof, out, stats[0], stats[1], n_threads)
    _check(status)


def layernorm_backward(const floating[:, ::1] dout, const floating[:, ::1] x,
                       const double[::1] mean, const double[::1] inv_std,
                       const floating[::1] gamma, int ddof,
                       floating[:, ::1] dx, floating[::1] dgamma, floating[::1] dbeta,
                       int n_threads):
    cdef int status
    with nogil:
        status = ln_backward(dout, x, mean, inv_std, gamma, ddof, dx, dgamma, dbeta, n_threads)
    _check(status)


def adam_update(const floating[::1] w, const floating[::1] dw, const floating[::1] m,
                const floating[::1] v, double lr, double beta1, double beta2,
                double bias1, double bias2, double eps, floating[::1] next_w,
                floating[::1] m_out, floating[::1] v_out):
    # every array flat (n,), the outputs new ones (marked restrict in the kernel: they
    # overlap no input); the doubles are rounded to w's dtype here, once
    with nogil:
        adam_step(w, dw, m, v, <floating> lr, <floating> beta1, <floating> (1 - beta1),
                  <floating> beta2, <floating> (1 - beta2), <floating> bias1,
                  <floating> bias2, <floating> eps, next_w, m_out, v_out)


# The building blocks of batch norm's forward and backward, for callers that
# combine statistics across processes (data-parallel batch norm): the forward
# is column_moments, then column_normalize; the backward is column_grad_sums,
# then column_dx with count = N.

def column_moments(const floating[:, ::1] x, double[::1] mean_out, double[::1] m2_out,
                   int n_threads):
    # x (N, D); mean_out, m2_out (D,) OUT: per column the mean and the centered sum of
    # squares (M2), exactly as batchnorm_forward computes them. N == 0 gives zeros.
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    _check_lengths(D, {"mean_out": mean_out.shape[0], "m2_out": m2_out.shape[0]})
    if N == 0:
        mean_out[:] = 0.0
        m2_out[:] = 0.0
    if N == 0 or D == 0:
        return
    cdef int status
    with nogil:
        status = _column_moments(&x[0, 0], N, D, &mean_out[0], &m2_out[0], n_threads)
    _check(status)


def column_normalize(const floating[:, ::1] x, const double[::1] mean, const double[::1] inv_std,
                     const floating[::1] gamma, const floating[::1] beta, floating[:, ::1] out,
                     int n_threads):
    # x, out (N, D); the rest (D,): out = (x - mean) * inv_std * gamma + beta per column,
    # with the constants and the sweep of batchnorm_forward
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    _check_shape("out", (out.shape[0], out.shape[1]), (N, D))
    _check_lengths(D, {"mean": mean.shape[0], "inv_std": inv_std.shape[0], "gamma": gamma.shape[0],
                       "beta": beta.shape[0]})
    if N == 0 or D == 0:
        return
    cdef int status
    with nogil:
        status = bn_normalize(x, mean, inv_std, gamma, beta, out, n_threads)
    _check(status)


def column_grad_sums(const floating[:, ::1] dout, const floating[:, ::1] x,
                     const double[::1] mean, double[::1] sum_dy_out, double[::1] sum_dy_xc_out,
                     int n_threads):
    # dout, x (N, D); mean (D,); sum_dy_out, sum_dy_xc_out (D,) OUT: per column sum(dout)
    # and sum(dout * (x - mean)), as batchnorm_backward computes them. N == 0 gives zeros.
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    _check_shape("dout", (dout.shape[0], dout.shape[1]), (N, D))
    _check_lengths(D, {"mean": mean.shape[0], "sum_dy_out": sum_dy_out.shape[0],
                       "sum_dy_xc_out": sum_dy_xc_out.shape[0]})
    if N == 0:
        sum_dy_out[:] = 0.0
        sum_dy_xc_out[:] = 0.0
    if N == 0 or D == 0:
        return
    cdef int status
    with nogil:
        status = _column_grad_sums(&dout[0, 0], &x[0, 0], N, D, &mean[0], &sum_dy_out[0],
                                   &sum_dy_xc_out[0], n_threads)
    _check(status)


def column_dx(const floating[:, ::1] dout, const floating[:, ::1] x, const double[::1] mean,
              const double[::1] inv_std, const floating[::1] gamma, const double[::1] sum_dy,
              const double[::1] sum_dy_xc, double count, int ddof, bint train,
              floating[:, ::1] dx_out, int n_threads):
    # dout, x, dx_out (N, D); the rest (D,). Train: dx = gamma*inv_std*(dout - sum_dy/count
    # - (x - mean)*inv_std**2*sum_dy_xc/(count - ddof)), count the rows of the whole batch
    # (it may differ from N); test: dx = gamma*inv_std*dout.
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    _check_shape("dout", (dout.shape[0], dout.shape[1]), (N, D))
    _check_shape("dx_out", (dx_out.shape[0], dx_out.shape[1]), (N, D))
    _check_lengths(D, {"mean": mean.shape[0], "inv_std": inv_std.shape[0], "gamma": gamma.shape[0],
                       "sum_dy": sum_dy.shape[0], "sum_dy_xc": sum_dy_xc.shape[0]})
    if N == 0 or D == 0:
        return
    cdef int status
    with nogil:
        status = _column_dx(&dout[0, 0], &x[0, 0], N, D, &mean[0], &inv_std[0], &gamma[0],
                            &sum_dy[0], &sum_dy_xc[0], count, ddof, train, &dx_out[0, 0],
                            n_threads)
    _check(status)
