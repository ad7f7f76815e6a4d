# Adam's update in one call over flat C-contiguous arrays, in w's dtype.
#
# fastnorm/optim.py writes the rule as NumPy expressions; NumPy evaluates each
# over the whole array (twelve sweeps, each a Python-level call, which on the
# small parameters of a net costs more than the arithmetic). Two loops do the
# same operations in the same order and dtype, with no contraction into fused
# multiply-adds, so next_w, m and v are bitwise what the expressions give.

from cython cimport floating
from libc.math cimport sqrt, sqrtf


cdef inline floating _sqrt(floating v) noexcept nogil:
    """sqrt in v's dtype, as NumPy takes it (float32: sqrtf, not through double)."""
    if floating is float:
        return sqrtf(v)
    else:
        return sqrt(v)


cdef inline void adam_step(const floating[::1] w, const floating[::1] dw,
                           const floating[::1] m, const floating[::1] v,
                           floating lr, floating beta1, floating one_minus_beta1,
                           floating beta2, floating one_minus_beta2,
                           floating bias1, floating bias2, floating eps,
                           floating[::1] next_w, floating[::1] m_out,
                           floating[::1] v_out) noexcept nogil:
    # all arrays (n,); bias1 = 1 - beta1**t and bias2 = 1 - beta2**t, rounded to
    # w's dtype as NumPy rounds a Python float that meets a float32 array.
    # Two loops, moments then weights: with all seven arrays in one loop gcc
    # gives up its run-time overlap checks and does not vectorize.
    cdef Py_ssize_t i, n = w.shape[0]
    cdef floating g, root
    for i in range(n):
        g = dw[i]
        m_out[i] = beta1 * m[i] + one_minus_beta1 * g
        v_out[i] = beta2 * v[i] + one_minus_beta2 * (g * g)
    for i in range(n):
        root = _sqrt(v_out[i] / bias2)
        next_w[i] = w[i] - lr * (m_out[i] / bias1) / (root + eps)
