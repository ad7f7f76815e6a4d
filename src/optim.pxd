# Adam's update in one call over flat C-contiguous arrays, in w's dtype.
#
# fastnorm/optim.py writes the rule as NumPy expressions; NumPy evaluates each
# over the whole array (twelve sweeps, each a Python-level call, which on the
# small parameters of a net costs more than the arithmetic). One loop does the
# same operations in the same order and dtype, with no contraction into fused
# multiply-adds, so next_w, m and v are bitwise what the expressions give.

from cython cimport floating
from libc.math cimport sqrt, sqrtf

from numerics cimport floating_out, float_out, double_out


cdef inline floating _sqrt(floating v) noexcept nogil:
    """sqrt in v's dtype, as NumPy takes it (float32: sqrtf, not through double)."""
    if floating is float:
        return sqrtf(v)
    else:
        return sqrt(v)


cdef inline void _adam(const floating* w, const floating* dw, const floating* m,
                       const floating* v,                                  # IN (n,) each
                       Py_ssize_t n, floating lr, floating beta1, floating one_minus_beta1,
                       floating beta2, floating one_minus_beta2, floating bias1,
                       floating bias2, floating eps,
                       floating_out next_w, floating_out m_out,
                       floating_out v_out) noexcept nogil:                 # OUT (n,) each
    """adam_step over pointers, the outputs marked as overlapping nothing else: one
    loop then vectorizes (through memoryviews gcc kept it scalar, or vectorized it
    only split in two loops that read the new moments again)."""
    cdef Py_ssize_t i
    cdef floating g, m_i, v_i
    for i in range(n):
        g = dw[i]
        m_i = beta1 * m[i] + one_minus_beta1 * g
        v_i = beta2 * v[i] + one_minus_beta2 * (g * g)
        m_out[i] = m_i
        v_out[i] = v_i
        next_w[i] = w[i] - lr * (m_i / bias1) / (_sqrt(v_i / bias2) + eps)


cdef inline void adam_step(const floating[::1] w, const floating[::1] dw,
                           const floating[::1] m, const floating[::1] v,
                           floating lr, floating beta1, floating one_minus_beta1,
                           floating beta2, floating one_minus_beta2,
                           floating bias1, floating bias2, floating eps,
                           floating[::1] next_w, floating[::1] m_out,
                           floating[::1] v_out) noexcept nogil:
    # all arrays (n,), the outputs new arrays; bias1 = 1 - beta1**t and bias2 =
    # 1 - beta2**t, rounded to w's dtype as NumPy rounds a Python float that
    # meets a float32 array.
    if w.shape[0] == 0:
        return
    if floating is float:
        _adam(&w[0], &dw[0], &m[0], &v[0], w.shape[0], lr, beta1, one_minus_beta1, beta2,
              one_minus_beta2, bias1, bias2, eps, <float_out> &next_w[0],
              <float_out> &m_out[0], <float_out> &v_out[0])
    else:
        _adam(&w[0], &dw[0], &m[0], &v[0], w.shape[0], lr, beta1, one_minus_beta1, beta2,
              one_minus_beta2, bias1, bias2, eps, <double_out> &next_w[0],
              <double_out> &m_out[0], <double_out> &v_out[0])
