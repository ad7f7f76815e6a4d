# Layer-norm kernels on C-contiguous (N, D): statistics per row, over its D
# features. Rows run in parallel; row sums use LANES fixed accumulators (they
# vectorize, and add in the same order for any thread count). Sums in double.
#
# The forward caches (for the backward) the per-row mean and inverse std in
# double; the backward takes x itself, never a full-size x_hat.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free

from _parallel cimport ROW_BLOCK, COL_TILE, LANES, n_blocks, threads_for


cdef inline double _lanes_total(const double* acc) noexcept nogil:
    """Pairwise total of the LANES accumulators."""
    return (((acc[0] + acc[1]) + (acc[2] + acc[3]))
            + ((acc[4] + acc[5]) + (acc[6] + acc[7])))


cdef inline void _row_moments(const floating* row, Py_ssize_t D,
                              double* mean_out, double* m2_out) noexcept nogil:
    """Mean and centered sum of squares of one row: two passes (the row is in
    cache for the second) with the corrected-two-pass mean, exact on constant rows."""
    cdef double acc[LANES]
    cdef double acc2[LANES]
    cdef Py_ssize_t j, k, body = D - D % LANES
    cdef double mean, dev_sum, m2, d
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, body, 8):   # 8 == LANES (range needs a literal step)
        for k in range(LANES):
            acc[k] += row[j + k]
    for j in range(body, D):
        acc[j - body] += row[j]
    mean = _lanes_total(acc) / D
    for k in range(LANES):
        acc[k] = 0.0
        acc2[k] = 0.0
    for j in range(0, body, 8):   # 8 == LANES (range needs a literal step)
        for k in range(LANES):
            d = row[j + k] - mean
            acc[k] += d
            acc2[k] += d * d
    for j in range(body, D):
        d = row[j] - mean
        acc[j - body] += d
        acc2[j - body] += d * d
    dev_sum = _lanes_total(acc)
    m2 = _lanes_total(acc2) - dev_sum * dev_sum / D
    if m2 < 0.0:   # round-off only; NaN stays NaN
        m2 = 0.0
    mean_out[0] = mean + dev_sum / D
    m2_out[0] = m2


cdef inline int ln_forward(const floating[:, ::1] x,       # IN  (N, D)
                           const floating[::1] gamma,      # IN  (D,)
                           const floating[::1] beta,       # IN  (D,)
                           double eps, int ddof,
                           floating[:, ::1] out,           # OUT (N, D)
                           double[::1] mean,               # OUT (N,) cached
                           double[::1] inv_std,            # OUT (N,) cached
                           int n_threads) noexcept nogil:
    """out = (x - mean_row) * inv_std_row * gamma + beta, each row in one visit."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], i, j
    cdef int nt = threads_for(N * D, n_threads)
    cdef double mu, s
    cdef const floating* x_row
    cdef floating* out_row
    for i in prange(N, num_threads=nt, schedule='static'):
        x_row = &x[i, 0]
        out_row = &out[i, 0]
        _row_moments(x_row, D, &mean[i], &inv_std[i])   # inv_std[i] holds m2 here
        mu = mean[i]
        s = 1.0 / sqrt(inv_std[i] / (D - ddof) + eps)
        inv_std[i] = s
        for j in range(D):
            out_row[j] = <floating> ((x_row[j] - mu) * s * gamma[j] + beta[j])
    return 0


cdef inline void _row_grad_sums(const floating* dy, const floating* x, const floating* gamma,
                                Py_ssize_t D, double mu,
                                double* sum_g, double* sum_g_xc) noexcept nogil:
    """For g = dout * gamma on one row: sum(g) and sum(g * (x - mu))."""
    cdef double acc[LANES]
    cdef double acc2[LANES]
    cdef Py_ssize_t j, k, body = D - D % LANES
    cdef double g
    for k in range(LANES):
        acc[k] = 0.0
        acc2[k] = 0.0
    for j in range(0, body, 8):   # 8 == LANES (range needs a literal step)
        for k in range(LANES):
            g = <double> dy[j + k] * gamma[j + k]
            acc[k] += g
            acc2[k] += g * (x[j + k] - mu)
    for j in range(body, D):
        g = <double> dy[j] * gamma[j]
        acc[j - body] += g
        acc2[j - body] += g * (x[j] - mu)
    sum_g[0] = _lanes_total(acc)
    sum_g_xc[0] = _lanes_total(acc2)


cdef inline void _tile_backward(const floating* dout, const floating* x, const floating* gamma,
                                Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                                Py_ssize_t c0, Py_ssize_t c1,
                                const double* mean, const double* inv_std,
                                const double* k_shift, const double* k_xc,
                                floating* dx, double* dgamma_part, double* dbeta_part) noexcept nogil:
    """dx on the tile [r0:r1, c0:c1] from the row sums, and the tile's column sums
    of dout * x_hat (-> dgamma) and dout (-> dbeta)."""
    cdef Py_ssize_t i, j, w = c1 - c0
    cdef double mu, s, shift, kxc, xc
    cdef const floating* dy_row
    cdef const floating* x_row
    cdef floating* dx_row
    for j in range(w):
        dgamma_part[j] = 0.0
        dbeta_part[j] = 0.0
    for i in range(r0, r1):
        dy_row = dout + i * D + c0
        x_row = x + i * D + c0
        dx_row = dx + i * D + c0
        mu = mean[i]
        s = inv_std[i]
        shift = k_shift[i]
        kxc = k_xc[i]
        for j in range(w):
            xc = x_row[j] - mu
            dgamma_part[j] += dy_row[j] * xc * s
            dbeta_part[j] += dy_row[j]
            dx_row[j] = <floating> (s * (dy_row[j] * gamma[c0 + j] - shift - xc * kxc))


cdef inline int ln_backward(const floating[:, ::1] dout,   # IN  (N, D)
                            const floating[:, ::1] x,      # IN  (N, D) from the cache
                            const double[::1] mean,        # IN  (N,) cached
                            const double[::1] inv_std,     # IN  (N,) cached
                            const floating[::1] gamma,     # IN  (D,)
                            int ddof,
                            floating[:, ::1] dx,           # OUT (N, D)
                            floating[::1] dgamma,          # OUT (D,)
                            floating[::1] dbeta,           # OUT (D,)
                            int n_threads) noexcept nogil:
    """First the two row reductions of g = dout*gamma, then the terms:

    dx = inv_std * (g - sum(g)/D - x_hat * sum(g*x_hat)/(D - ddof)),
    dgamma, dbeta = column sums of dout*x_hat and dout over rows, in tile order.
    """
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    cdef Py_ssize_t n_row_blocks = n_blocks(N, ROW_BLOCK), n_col_tiles = n_blocks(D, COL_TILE)
    cdef Py_ssize_t t, rb, r0, c0, i, j
    cdef int nt = threads_for(N * D, n_threads)
    cdef double dgamma_j, dbeta_j
    cdef double* part = <double*> malloc((2 * n_row_blocks * D + 2 * N) * sizeof(double))
    if part == NULL:
        return -1
    cdef double* part_dbeta = part + n_row_blocks * D
    cdef double* k_shift = part + 2 * n_row_blocks * D    # (N,) sum(g) / D
    cdef double* k_xc = k_shift + N                       # (N,) inv_std^2 * sum(g*(x-mu)) / (D - ddof)

    for i in prange(N, num_threads=nt, schedule='static'):
        _row_grad_sums(&dout[i, 0], &x[i, 0], &gamma[0], D, mean[i], &k_shift[i], &k_xc[i])
        k_shift[i] = k_shift[i] / D
        k_xc[i] = inv_std[i] * inv_std[i] * k_xc[i] / (D - ddof)

    for t in prange(n_row_blocks * n_col_tiles, num_threads=nt, schedule='static'):
        r0 = (t // n_col_tiles) * ROW_BLOCK
        c0 = (t % n_col_tiles) * COL_TILE
        _tile_backward(&dout[0, 0], &x[0, 0], &gamma[0], D, r0, min(r0 + ROW_BLOCK, N),
                       c0, min(c0 + COL_TILE, D), &mean[0], &inv_std[0], k_shift, k_xc, &dx[0, 0],
                       part + (t // n_col_tiles) * D + c0, part_dbeta + (t // n_col_tiles) * D + c0)

    for j in range(D):
        dgamma_j = part[j]
        dbeta_j = part_dbeta[j]
        for rb in range(1, n_row_blocks):
            dgamma_j += part[rb * D + j]
            dbeta_j += part_dbeta[rb * D + j]
        dgamma[j] = <floating> dgamma_j
        dbeta[j] = <floating> dbeta_j
    free(part)
    return 0
