# The Python/compiled boundary of fastnorm: thin `def` wrappers that take
# validated, C-contiguous float32/float64 arrays and preallocated outputs, drop
# the GIL and run a kernel. Checking, converting and allocating are done in
# Python above this (fastnorm/_validate.py, fastnorm/normalization.py).

from cython cimport floating

from _parallel cimport FASTNORM_HAVE_OPENMP, FASTNORM_SOURCE_HASH, omp_get_max_threads
from batchnorm cimport bn_forward, bn_backward
from layernorm cimport ln_forward, ln_backward
from optim cimport adam_step
from planes cimport (sbn_forward, sbn_backward, plane_moments_all, plane_normalize_all,
                    plane_grad_sums_all, plane_dx_all)
from groupnorm cimport gn_forward, gn_backward
from rmsnorm cimport rms_forward, rms_backward

cdef extern from *:
    """
    /* Which instruction set this copy was compiled for, and what the CPU runs. */
    #if defined(__AVX2__) && defined(__FMA__)
    #define FASTNORM_ISA "avx2"
    #else
    #define FASTNORM_ISA "baseline"
    #endif
    static int fastnorm_cpu_has_avx2_fma(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();  /* also checks that the OS saves the AVX registers */
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }
    """
    const char* FASTNORM_ISA
    int fastnorm_cpu_has_avx2_fma()

SOURCE_HASH = FASTNORM_SOURCE_HASH.decode("ascii")
ISA = FASTNORM_ISA.decode("ascii")


def cpu_has_avx2_fma():
    """True when this CPU (and OS) can run the AVX2+FMA build of the kernels."""
    return bool(fastnorm_cpu_has_avx2_fma())


def openmp_enabled():
    """True when this build runs its loops with OpenMP threads."""
    return bool(FASTNORM_HAVE_OPENMP)


def max_threads():
    """OpenMP's default team size (OMP_NUM_THREADS or the core count); 1 without OpenMP."""
    return omp_get_max_threads()


cdef inline _check(int status):
    if status != 0:
        raise MemoryError("fastnorm: could not allocate the kernel's scratch memory")


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
    # every array flat (n,); the doubles are rounded to w's dtype here, once
    with nogil:
        adam_step(w, dw, m, v, <floating> lr, <floating> beta1, <floating> (1 - beta1),
                  <floating> beta2, <floating> (1 - beta2), <floating> bias1,
                  <floating> bias2, <floating> eps, next_w, m_out, v_out)


# ---------------------------------------------------------------- N-D normalization
# x of the spatial ops is (N, C, P) with P = H*W; statistics are double.

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
    with nogil:
        sbn_backward(dout, x, mean, inv_std, gamma, train, ddof, dx, dgamma, dbeta, n_threads)


def plane_moments(const floating[:, :, ::1] x, double[::1] mean_out, double[::1] m2_out,
                  int n_threads):
    """Per channel of x (N, C, P): mean and centered sum of squares over its N planes."""
    with nogil:
        plane_moments_all(x, mean_out, m2_out, n_threads)


def plane_normalize(const floating[:, :, ::1] x, const double[::1] mean, const double[::1] inv_std,
                    const floating[::1] gamma, const floating[::1] beta, floating[:, :, ::1] out,
                    int n_threads):
    """out = (x - mean_c) * inv_std_c * gamma_c + beta_c per channel of x (N, C, P)."""
    with nogil:
        plane_normalize_all(x, mean, inv_std, gamma, beta, out, n_threads)


def plane_grad_sums(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                    const double[::1] mean, double[::1] sum_dy_out, double[::1] sum_dy_xc_out,
                    int n_threads):
    """Per channel: sum(dout) and sum(dout * (x - mean)) over its N planes."""
    with nogil:
        plane_grad_sums_all(dout, x, mean, sum_dy_out, sum_dy_xc_out, n_threads)


def plane_dx(const floating[:, :, ::1] dout, const floating[:, :, ::1] x, const double[::1] mean,
             const double[::1] inv_std, const floating[::1] gamma, const double[::1] sum_dy,
             const double[::1] sum_dy_xc, double count, int ddof, bint train,
             floating[:, :, ::1] dx_out, int n_threads):
    """dx of batch norm per channel from the (global) sums; count is the global number
    of values per channel, N_global * P."""
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
