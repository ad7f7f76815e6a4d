# Batch norm on C-contiguous (N, D): statistics per feature (column), over the
# N rows. The forward caches the per-column mean and inverse std in double; the
# backward takes x itself, never a full-size x_hat.

from cython cimport floating
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free

from dx cimport column_dx
from grad_sums cimport column_grad_sums
from moments cimport column_moments
from numerics cimport less_residue
from sweeps cimport normalize_columns


cdef inline int bn_forward(const floating[:, ::1] x,              # IN  (N, D)
                           const floating[::1] gamma,             # IN  (D,)
                           const floating[::1] beta,              # IN  (D,)
                           const floating[::1] running_mean,      # IN  (D,)
                           const floating[::1] running_var,       # IN  (D,)
                           bint train, double momentum, double eps, int ddof,
                           floating[:, ::1] out,                  # OUT (N, D)
                           double[::1] mean,                      # OUT (D,) cached
                           double[::1] inv_std,                   # OUT (D,) cached
                           floating[::1] running_mean_out,        # OUT (D,)
                           floating[::1] running_var_out,         # OUT (D,)
                           int n_threads) noexcept nogil:
    """Train: batch statistics (ddof 0 or 1), running stats updated with momentum.
    Test: running statistics. Returns -1 when scratch memory cannot be had."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], j
    cdef double* var = <double*> malloc(D * sizeof(double))
    cdef floating* consts = <floating*> malloc(3 * D * sizeof(floating))
    cdef floating* shift = consts          # mean rounded to x's dtype
    cdef floating* scale = consts + D      # gamma * inv_std
    cdef floating* offset = consts + 2 * D # beta - (mean - shift) * scale: float32's residue
    if var == NULL or consts == NULL:
        free(var)
        free(consts)
        return -1

    # first: the statistics (batch moments, or the running ones)
    if train:
        if column_moments(&x[0, 0], N, D, &mean[0], var, n_threads) != 0:
            free(var)
            free(consts)
            return -1
        # per-column loops with one or two outputs each: they vectorize (wide D matters)
        for j in range(D):
            var[j] = var[j] / (N - ddof)   # m2 until here
        for j in range(D):
            inv_std[j] = 1.0 / sqrt(var[j] + eps)
        for j in range(D):
            running_mean_out[j] = <floating> (momentum * running_mean[j] + (1.0 - momentum) * mean[j])
        for j in range(D):
            running_var_out[j] = <floating> (momentum * running_var[j] + (1.0 - momentum) * var[j])
    else:
        for j in range(D):
            mean[j] = running_mean[j]
            inv_std[j] = 1.0 / sqrt(<double> running_var[j] + eps)
            running_mean_out[j] = running_mean[j]
            running_var_out[j] = running_var[j]

    # then: the per-column constants, and the normalize sweep
    for j in range(D):
        shift[j] = <floating> mean[j]
        scale[j] = <floating> (gamma[j] * inv_std[j])
    for j in range(D):
        offset[j] = less_residue(beta[j], mean[j] - shift[j], gamma[j] * inv_std[j])
    normalize_columns(&x[0, 0], N, D, shift, scale, offset, &out[0, 0], n_threads)
    free(var)
    free(consts)
    return 0


cdef inline int bn_backward(const floating[:, ::1] dout,          # IN  (N, D)
                            const floating[:, ::1] x,             # IN  (N, D) from the cache
                            const double[::1] mean,               # IN  (D,) cached
                            const double[::1] inv_std,            # IN  (D,) cached
                            const floating[::1] gamma,            # IN  (D,)
                            bint train, int ddof,
                            floating[:, ::1] dx,                  # OUT (N, D)
                            floating[::1] dgamma,                 # OUT (D,)
                            floating[::1] dbeta,                  # OUT (D,)
                            int n_threads) noexcept nogil:
    """Simplified closed form, two sweeps: the sums (-> dbeta, dgamma), then dx:

    dx = gamma*inv_std * (dout - sum(dout)/N - x_hat * sum(dout*x_hat)/(N - ddof))
    in train mode; dx = gamma*inv_std*dout in test mode (statistics are constants)."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], j
    cdef double* sums = <double*> malloc(2 * D * sizeof(double))
    cdef double* sum_dy = sums
    cdef double* sum_dy_xc = sums + D    # sum(dout * (x - mean))
    cdef int status = -1
    if sums == NULL:
        return -1

    # first: the two column sums
    if column_grad_sums(&dout[0, 0], &x[0, 0], N, D, &mean[0], sum_dy, sum_dy_xc, n_threads) == 0:
        for j in range(D):
            dbeta[j] = <floating> sum_dy[j]
        for j in range(D):
            dgamma[j] = <floating> (sum_dy_xc[j] * inv_std[j])
        # then: the terms
        status = column_dx(&dout[0, 0], &x[0, 0], N, D, &mean[0], &inv_std[0], &gamma[0],
                           sum_dy, sum_dy_xc, N, ddof, train, &dx[0, 0], n_threads)
    free(sums)
    return status
