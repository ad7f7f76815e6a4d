# The Python/compiled boundary of fastnorm: thin `def` wrappers that take
# validated, C-contiguous float32/float64 arrays and preallocated outputs, drop
# the GIL and run a kernel. Checking, converting and allocating are done in
# Python above this (fastnorm/_validate.py, fastnorm/normalization.py).

from cython cimport floating

from _parallel cimport FASTNORM_HAVE_OPENMP, FASTNORM_SOURCE_HASH, omp_get_max_threads
from batchnorm cimport bn_forward, bn_backward
from dx cimport column_dx as _column_dx
from grad_sums cimport column_grad_sums as _column_grad_sums
from layernorm cimport ln_forward, ln_backward
from moments cimport column_moments as _column_moments
from optim cimport adam_step
from planes cimport (sbn_forward, sbn_backward, plane_moments_all, plane_normalize_all,
                    plane_grad_sums_all, plane_dx_all)
from groupnorm cimport gn_forward, gn_backward
from rmsnorm cimport rms_forward, rms_backward

cdef extern from *:
    """
    /* Which instruction set this copy was compiled for (setup.py's levels), and
       what the CPU runs: __builtin_cpu_supports also checks that the OS saves the
       registers of the level (AVX state for AVX2, the AVX-512 state for AVX-512). */
    #if defined(__AVX512F__) && defined(__AVX512CD__) && defined(__AVX512BW__) \
        && defined(__AVX512DQ__) && defined(__AVX512VL__) && defined(__AVX2__) && defined(__FMA__)
    #define FASTNORM_ISA "avx512"
    #elif defined(__AVX2__) && defined(__FMA__)
    #define FASTNORM_ISA "avx2"
    #else
    #define FASTNORM_ISA "baseline"
    #endif
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #define FASTNORM_CPU(feature) __builtin_cpu_supports(feature)
    #else
    #define FASTNORM_CPU(feature) 0
    #endif
    static int fastnorm_cpu_has_avx2_fma(void) {
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
    #endif
        return FASTNORM_CPU("avx2") && FASTNORM_CPU("fma");
    }
    static int fastnorm_cpu_has_avx512(void) {
        return fastnorm_cpu_has_avx2_fma() && FASTNORM_CPU("avx512f") && FASTNORM_CPU("avx512cd")
            && FASTNORM_CPU("avx512bw") && FASTNORM_CPU("avx512dq") && FASTNORM_CPU("avx512vl");
    }
    """
    const char* FASTNORM_ISA
    int fastnorm_cpu_has_avx2_fma()
    int fastnorm_cpu_has_avx512()

SOURCE_HASH = FASTNORM_SOURCE_HASH.decode("ascii")
ISA = FASTNORM_ISA.decode("ascii")


def cpu_has_avx2_fma():
    """True when this CPU (and OS) can run the AVX2+FMA build of the kernels."""
    return bool(fastnorm_cpu_has_avx2_fma())


def cpu_supports(isa):
    """True when this CPU (and OS) can run the build of level isa: 'baseline',
    'avx2' (AVX2+FMA, x86-64-v3) or 'avx512' (AVX-512 F/CD/BW/DQ/VL, x86-64-v4)."""
    if isa == "baseline":
        return True
    if isa == "avx2":
        return bool(fastnorm_cpu_has_avx2_fma())
    if isa == "avx512":
        return bool(fastnorm_cpu_has_avx512())
    raise ValueError(f"isa must be 'baseline', 'avx2' or 'avx512', got {isa!r}")


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


# The building blocks of batch norm's forward and backward, for callers that
# combine statistics across processes (data-parallel batch norm): the forward
# is column_moments, then the normalize sweep; the backward is column_grad_sums,
# then column_dx with count = N. Shapes are checked here, because a wrong one
# would make the kernel write past a buffer; the rest is the caller's.

cdef _check_shape(str name, tuple got, tuple want):
    if got != want:
        raise ValueError(f"{name} must have shape {want}, got {got}")


def column_moments(const floating[:, ::1] x, double[::1] mean_out, double[::1] m2_out,
                   int n_threads):
    # x (N, D); mean_out, m2_out (D,) OUT: per column the mean and the centered sum of
    # squares (M2), exactly as batchnorm_forward computes them. N == 0 gives zeros.
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    _check_shape("mean_out", (mean_out.shape[0],), (D,))
    _check_shape("m2_out", (m2_out.shape[0],), (D,))
    if N == 0:
        mean_out[:] = 0.0
        m2_out[:] = 0.0
    if N == 0 or D == 0:
        return
    cdef int status
    with nogil:
        status = _column_moments(&x[0, 0], N, D, &mean_out[0], &m2_out[0], n_threads)
    _check(status)


def column_grad_sums(const floating[:, ::1] dout, const floating[:, ::1] x,
                     const double[::1] mean, double[::1] sum_dy_out, double[::1] sum_dy_xc_out,
                     int n_threads):
    # dout, x (N, D); mean (D,); sum_dy_out, sum_dy_xc_out (D,) OUT: per column sum(dout)
    # and sum(dout * (x - mean)), as batchnorm_backward computes them. N == 0 gives zeros.
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    _check_shape("dout", (dout.shape[0], dout.shape[1]), (N, D))
    for name, length in (("mean", mean.shape[0]), ("sum_dy_out", sum_dy_out.shape[0]),
                         ("sum_dy_xc_out", sum_dy_xc_out.shape[0])):
        _check_shape(name, (length,), (D,))
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
    for name, length in (("mean", mean.shape[0]), ("inv_std", inv_std.shape[0]),
                         ("gamma", gamma.shape[0]), ("sum_dy", sum_dy.shape[0]),
                         ("sum_dy_xc", sum_dy_xc.shape[0])):
        _check_shape(name, (length,), (D,))
    if N == 0 or D == 0:
        return
    cdef int status
    with nogil:
        status = _column_dx(&dout[0, 0], &x[0, 0], N, D, &mean[0], &inv_std[0], &gamma[0],
                            &sum_dy[0], &sum_dy_xc[0], count, ddof, train, &dx_out[0, 0],
                            n_threads)


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
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], c
    _check_shape("mean_out", (mean_out.shape[0],), (C,))
    _check_shape("m2_out", (m2_out.shape[0],), (C,))
    if N == 0 or P == 0:
        for c in range(C):
            mean_out[c] = 0.0
            m2_out[c] = 0.0
        return
    if C == 0:
        return
    with nogil:
        plane_moments_all(x, mean_out, m2_out, n_threads)


def plane_normalize(const floating[:, :, ::1] x, const double[::1] mean, const double[::1] inv_std,
                    const floating[::1] gamma, const floating[::1] beta, floating[:, :, ::1] out,
                    int n_threads):
    # out = (x - mean_c) * inv_std_c * gamma_c + beta_c per channel; the rest (C,)
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    _check_shape("out", (out.shape[0], out.shape[1], out.shape[2]), (N, C, P))
    for name, length in (("mean", mean.shape[0]), ("inv_std", inv_std.shape[0]),
                         ("gamma", gamma.shape[0]), ("beta", beta.shape[0])):
        _check_shape(name, (length,), (C,))
    if N == 0 or C == 0 or P == 0:
        return
    with nogil:
        plane_normalize_all(x, mean, inv_std, gamma, beta, out, n_threads)


def plane_grad_sums(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                    const double[::1] mean, double[::1] sum_dy_out, double[::1] sum_dy_xc_out,
                    int n_threads):
    # sum_dy_out, sum_dy_xc_out (C,) OUT: per channel sum(dout) and sum(dout * (x - mean))
    # over its N planes, as spatial_batchnorm_backward computes them. N == 0 gives zeros.
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], c
    _check_shape("dout", (dout.shape[0], dout.shape[1], dout.shape[2]), (N, C, P))
    for name, length in (("mean", mean.shape[0]), ("sum_dy_out", sum_dy_out.shape[0]),
                         ("sum_dy_xc_out", sum_dy_xc_out.shape[0])):
        _check_shape(name, (length,), (C,))
    if N == 0 or P == 0:
        for c in range(C):
            sum_dy_out[c] = 0.0
            sum_dy_xc_out[c] = 0.0
        return
    if C == 0:
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
    for name, length in (("mean", mean.shape[0]), ("inv_std", inv_std.shape[0]),
                         ("gamma", gamma.shape[0]), ("sum_dy", sum_dy.shape[0]),
                         ("sum_dy_xc", sum_dy_xc.shape[0])):
        _check_shape(name, (length,), (C,))
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
