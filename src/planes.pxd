# Spatial batch norm on C-contiguous NCHW: x viewed as (N, C, P), P = H*W, a plane
# being P contiguous values; statistics per channel over its N planes. Channels are
# the tasks, so every channel's sums add in one fixed order for any thread count.
#
# Blocks (also the def wrappers of synchronized batch norm, which merges the moments
# and sums of its ranks in between): channel moments, the normalize sweep, the
# backward's two sums, the dx sweep. The drivers run one channel's blocks back to
# back, while its planes are in cache. Sums in double; element-wise work in x's
# dtype, with float32's mean split into a float32 shift and a residue.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport isfinite, sqrt
from libc.stdlib cimport malloc, free

from _parallel cimport threads_for
from batchnorm cimport _correction
from layernorm cimport _lanes_total, _row_sum, _row_dev_sum, _row_dev_sq

from _parallel cimport LANES


cdef inline double _row_dot_dev(const floating* dy, const floating* x, Py_ssize_t P,
                                double shift) noexcept nogil:
    """sum(dy * (x - shift)) over P values, in double, LANES accumulators."""
    cdef double acc[LANES]
    cdef double tail = 0.0
    cdef Py_ssize_t j, k, body = P - P % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, body, 16):   # 16 == LANES
        for k in range(LANES):
            acc[k] += dy[j + k] * (x[j + k] - shift)
    for j in range(body, P):
        tail += dy[j] * (x[j] - shift)
    return _lanes_total(acc) + tail


cdef inline void channel_moments(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t P,
                                 Py_ssize_t c,
                                 double* mean_out, double* m2_out) noexcept nogil:   # OUT one value each
    """Mean and centered sum of squares of channel c over its N planes: each plane's
    two-pass moments (float64: the corrected two-pass mean), merged plane after plane
    (Chan et al.) about one anchor, plane 0's mean, each plane entering by its mean's
    offset from the anchor (float32: from its exact double sum, the anchor rounded to
    float32 so that P*anchor is exact). A constant channel gives its value and 0.
    Once a plane's mean is not finite, means and sums of squares add as plain sums."""
    cdef const floating* plane
    cdef double total, shift, dev, m2, p_offset, delta, n
    cdef double anchor = 0.0, offset = 0.0, m2_sum = 0.0, sum_all = 0.0, n_a = 0.0
    cdef bint finite = True
    cdef Py_ssize_t i
    for i in range(N):
        plane = x + (i * C + c) * P
        total = _row_sum(plane, P)
        shift = total / P
        dev = 0.0
        if floating is double and isfinite(shift):
            dev = _row_dev_sum(plane, P, shift)
        m2 = _row_dev_sq(plane, P, shift) - dev * dev / P
        if m2 < 0.0:   # round-off only; NaN stays NaN
            m2 = 0.0
        sum_all += total
        if i == 0:
            finite = isfinite(shift)
            if floating is float:
                anchor = <float> shift
                offset = (total - P * anchor) / P
            else:
                anchor = shift
                offset = dev / P
            m2_sum = m2
        elif finite and isfinite(shift):
            if floating is float:
                p_offset = (total - P * anchor) / P
            else:
                p_offset = (shift - anchor) + dev / P
            n = n_a + P
            delta = p_offset - offset
            offset += delta * (P / n)
            m2_sum += m2 + delta * delta * (n_a * P / n)
        else:
            finite = False
            m2_sum += m2
        n_a += P
    mean_out[0] = anchor + offset if finite else sum_all / n_a
    m2_out[0] = m2_sum


cdef inline void plane_affine(const floating* x, Py_ssize_t P, floating shift, floating scale,
                              floating offset, floating* out) noexcept nogil:
    """out = (x - shift) * scale + offset over one plane. Centered, never folded: a
    constant plane (x == shift) gives offset exactly."""
    cdef Py_ssize_t j
    for j in range(P):
        out[j] = (x[j] - shift) * scale + offset


cdef inline void affine_constants(double mean, double inv_std, double gamma, double beta,
                                  floating* consts) noexcept nogil:   # OUT (3,) shift, scale, offset
    """plane_affine's constants for (x - mean) * inv_std * gamma + beta in x's dtype:
    float32 folds the residue mean - shift into the offset."""
    cdef floating shift = <floating> mean
    consts[0] = shift
    consts[1] = <floating> (gamma * inv_std)
    if floating is double:
        consts[2] = beta
    else:
        consts[2] = <floating> (beta - _correction(mean - shift, gamma * inv_std))


cdef inline void plane_dx_terms(const floating* dy, const floating* x, Py_ssize_t P,
                                floating s, floating g, floating dy_shift, floating shift,
                                floating k_xc, floating* dx) noexcept nogil:
    """dx = s * (dy * g - dy_shift - (x - shift) * k_xc) over one plane: the closed-form
    backward of a normalization whose statistics cover the plane (s the scale of dy,
    g a per-plane factor of dy, k_xc the coefficient of the centered x)."""
    cdef Py_ssize_t j
    for j in range(P):
        dx[j] = s * (dy[j] * g - dy_shift - (x[j] - shift) * k_xc)


cdef inline void plane_scale(const floating* dy, Py_ssize_t P, floating s, floating* dx) noexcept nogil:
    """dx = s * dy (test mode: the statistics are constants, x is not read)."""
    cdef Py_ssize_t j
    for j in range(P):
        dx[j] = s * dy[j]


cdef inline void channel_grad_sums(const floating* dout, const floating* x, Py_ssize_t N,
                                   Py_ssize_t C, Py_ssize_t P, Py_ssize_t c, double mean,
                                   double* sum_dy_out, double* sum_dy_xc_out) noexcept nogil:
    """sum(dout) and sum(dout * (x - mean)) over channel c's planes, plane after plane."""
    cdef floating shift = <floating> mean
    cdef double sum_dy = 0.0, sum_dy_xc = 0.0
    cdef Py_ssize_t i, at
    for i in range(N):
        at = (i * C + c) * P
        sum_dy += _row_sum(dout + at, P)
        sum_dy_xc += _row_dot_dev(dout + at, x + at, P, shift)
    if floating is float:
        sum_dy_xc -= _correction(mean - shift, sum_dy)
    sum_dy_out[0] = sum_dy
    sum_dy_xc_out[0] = sum_dy_xc


cdef inline void channel_dx(const floating* dout, const floating* x, Py_ssize_t N, Py_ssize_t C,
                            Py_ssize_t P, Py_ssize_t c, double mean, double inv_std, double gamma,
                            double sum_dy, double sum_dy_xc, double count, int ddof, bint train,
                            floating* dx) noexcept nogil:
    """dx of channel c's planes: gamma*inv_std * (dout - sum_dy/count - (x - mean) * k_xc),
    k_xc = inv_std**2 * sum_dy_xc / (count - ddof); gamma*inv_std * dout in test mode."""
    cdef floating shift = <floating> mean
    cdef floating s = <floating> (gamma * inv_std)
    cdef double k_xc = inv_std * inv_std * sum_dy_xc / (count - ddof)
    cdef floating dy_shift = <floating> (sum_dy / count - _correction(mean - shift, k_xc))
    cdef Py_ssize_t i, at
    for i in range(N):
        at = (i * C + c) * P
        if train:
            plane_dx_terms(dout + at, x + at, P, s, 1, dy_shift, shift, <floating> k_xc, dx + at)
        else:
            plane_scale(dout + at, P, s, dx + at)


# ---------------------------------------------------------------- drivers

cdef inline void _sbn_forward_channel(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t P,
                                      Py_ssize_t c, const floating* gamma, const floating* beta,
                                      const floating* running_var, bint train, double eps, int ddof,
                                      double* mean, double* inv_std, double* var,
                                      floating* out) noexcept nogil:
    """One channel: its statistics (batch or running), then its planes of out."""
    cdef double m2
    cdef floating consts[3]
    cdef Py_ssize_t i
    if train:
        channel_moments(x, N, C, P, c, &mean[c], &m2)
        var[c] = m2 / (N * P - ddof)
    else:
        var[c] = running_var[c]
    inv_std[c] = 1.0 / sqrt(var[c] + eps)
    affine_constants(mean[c], inv_std[c], gamma[c], beta[c], consts)
    for i in range(N):
        plane_affine(x + (i * C + c) * P, P, consts[0], consts[1], consts[2], out + (i * C + c) * P)


cdef inline int sbn_forward(const floating[:, :, ::1] x,         # IN  (N, C, P)
                            const floating[::1] gamma,           # IN  (C,)
                            const floating[::1] beta,            # IN  (C,)
                            const floating[::1] running_mean,    # IN  (C,)
                            const floating[::1] running_var,     # IN  (C,)
                            bint train, double momentum, double eps, int ddof,
                            floating[:, :, ::1] out,             # OUT (N, C, P)
                            double[::1] mean,                    # OUT (C,) cached
                            double[::1] inv_std,                 # OUT (C,) cached
                            floating[::1] running_mean_out,      # OUT (C,)
                            floating[::1] running_var_out,       # OUT (C,)
                            int n_threads) noexcept nogil:
    """Per channel (one task each): moments over its N planes, then its planes of out.
    Test mode normalizes with the running statistics. Returns -1 when scratch memory
    cannot be had."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], c
    cdef int nt = threads_for(N * C * P, n_threads)
    cdef double* var = <double*> malloc(C * sizeof(double))   # the variance used
    if var == NULL:
        return -1
    if not train:
        for c in range(C):
            mean[c] = running_mean[c]
    if nt == 1:
        for c in range(C):
            _sbn_forward_channel(&x[0, 0, 0], N, C, P, c, &gamma[0], &beta[0], &running_var[0], train,
                                 eps, ddof, &mean[0], &inv_std[0], var, &out[0, 0, 0])
    else:
        for c in prange(C, num_threads=nt, schedule='static'):
            _sbn_forward_channel(&x[0, 0, 0], N, C, P, c, &gamma[0], &beta[0], &running_var[0], train,
                                 eps, ddof, &mean[0], &inv_std[0], var, &out[0, 0, 0])
    for c in range(C):
        if train:
            running_mean_out[c] = <floating> (momentum * running_mean[c] + (1.0 - momentum) * mean[c])
            running_var_out[c] = <floating> (momentum * running_var[c] + (1.0 - momentum) * var[c])
        else:
            running_mean_out[c] = running_mean[c]
            running_var_out[c] = running_var[c]
    free(var)
    return 0


cdef inline void _sbn_backward_channel(const floating* dout, const floating* x, Py_ssize_t N,
                                       Py_ssize_t C, Py_ssize_t P, Py_ssize_t c, const double* mean,
                                       const double* inv_std, const floating* gamma, bint train,
                                       int ddof, floating* dx, floating* dgamma,
                                       floating* dbeta) noexcept nogil:
    cdef double sum_dy, sum_dy_xc
    channel_grad_sums(dout, x, N, C, P, c, mean[c], &sum_dy, &sum_dy_xc)
    dbeta[c] = <floating> sum_dy
    dgamma[c] = <floating> (sum_dy_xc * inv_std[c])
    channel_dx(dout, x, N, C, P, c, mean[c], inv_std[c], gamma[c], sum_dy, sum_dy_xc, N * P, ddof,
               train, dx)


cdef inline int sbn_backward(const floating[:, :, ::1] dout,     # IN  (N, C, P)
                             const floating[:, :, ::1] x,        # IN  (N, C, P) from the cache
                             const double[::1] mean,             # IN  (C,) cached
                             const double[::1] inv_std,          # IN  (C,) cached
                             const floating[::1] gamma,          # IN  (C,)
                             bint train, int ddof,
                             floating[:, :, ::1] dx,             # OUT (N, C, P)
                             floating[::1] dgamma,               # OUT (C,)
                             floating[::1] dbeta,                # OUT (C,)
                             int n_threads) noexcept nogil:
    """Per channel: its two sums (-> dbeta, dgamma), then its planes of dx."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], c
    cdef int nt = threads_for(N * C * P, n_threads)
    if nt == 1:
        for c in range(C):
            _sbn_backward_channel(&dout[0, 0, 0], &x[0, 0, 0], N, C, P, c, &mean[0], &inv_std[0],
                                  &gamma[0], train, ddof, &dx[0, 0, 0], &dgamma[0], &dbeta[0])
    else:
        for c in prange(C, num_threads=nt, schedule='static'):
            _sbn_backward_channel(&dout[0, 0, 0], &x[0, 0, 0], N, C, P, c, &mean[0], &inv_std[0],
                                  &gamma[0], train, ddof, &dx[0, 0, 0], &dgamma[0], &dbeta[0])
    return 0


# ------------------------------------- the blocks one by one (synchronized batch norm)

cdef inline void plane_moments_all(const floating[:, :, ::1] x, double[::1] mean_out,
                                   double[::1] m2_out, int n_threads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], c
    cdef int nt = threads_for(N * C * P, n_threads)
    if nt == 1:
        for c in range(C):
            channel_moments(&x[0, 0, 0], N, C, P, c, &mean_out[c], &m2_out[c])
    else:
        for c in prange(C, num_threads=nt, schedule='static'):
            channel_moments(&x[0, 0, 0], N, C, P, c, &mean_out[c], &m2_out[c])


cdef inline void _normalize_channel(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t P,
                                    Py_ssize_t c, double mean, double inv_std, double gamma,
                                    double beta, floating* out) noexcept nogil:
    cdef floating consts[3]
    cdef Py_ssize_t i
    affine_constants(mean, inv_std, gamma, beta, consts)
    for i in range(N):
        plane_affine(x + (i * C + c) * P, P, consts[0], consts[1], consts[2], out + (i * C + c) * P)


cdef inline void plane_normalize_all(const floating[:, :, ::1] x, const double[::1] mean,
                                     const double[::1] inv_std, const floating[::1] gamma,
                                     const floating[::1] beta, floating[:, :, ::1] out,
                                     int n_threads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], c
    cdef int nt = threads_for(N * C * P, n_threads)
    if nt == 1:
        for c in range(C):
            _normalize_channel(&x[0, 0, 0], N, C, P, c, mean[c], inv_std[c], gamma[c], beta[c],
                               &out[0, 0, 0])
    else:
        for c in prange(C, num_threads=nt, schedule='static'):
            _normalize_channel(&x[0, 0, 0], N, C, P, c, mean[c], inv_std[c], gamma[c], beta[c],
                               &out[0, 0, 0])


cdef inline void plane_grad_sums_all(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                                     const double[::1] mean, double[::1] sum_dy_out,
                                     double[::1] sum_dy_xc_out, int n_threads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], c
    cdef int nt = threads_for(N * C * P, n_threads)
    if nt == 1:
        for c in range(C):
            channel_grad_sums(&dout[0, 0, 0], &x[0, 0, 0], N, C, P, c, mean[c], &sum_dy_out[c],
                              &sum_dy_xc_out[c])
    else:
        for c in prange(C, num_threads=nt, schedule='static'):
            channel_grad_sums(&dout[0, 0, 0], &x[0, 0, 0], N, C, P, c, mean[c], &sum_dy_out[c],
                              &sum_dy_xc_out[c])


cdef inline void plane_dx_all(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                              const double[::1] mean, const double[::1] inv_std,
                              const floating[::1] gamma, const double[::1] sum_dy,
                              const double[::1] sum_dy_xc, double count, int ddof, bint train,
                              floating[:, :, ::1] dx_out, int n_threads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], c
    cdef int nt = threads_for(N * C * P, n_threads)
    if nt == 1:
        for c in range(C):
            channel_dx(&dout[0, 0, 0], &x[0, 0, 0], N, C, P, c, mean[c], inv_std[c], gamma[c],
                       sum_dy[c], sum_dy_xc[c], count, ddof, train, &dx_out[0, 0, 0])
    else:
        for c in prange(C, num_threads=nt, schedule='static'):
            channel_dx(&dout[0, 0, 0], &x[0, 0, 0], N, C, P, c, mean[c], inv_std[c], gamma[c],
                       sum_dy[c], sum_dy_xc[c], count, ddof, train, &dx_out[0, 0, 0])
