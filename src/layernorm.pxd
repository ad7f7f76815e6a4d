# Layer-norm kernels on C-contiguous (N, D): statistics per row, over its D
# features. Rows run in parallel; row sums use LANES fixed accumulators (they
# vectorize, and add in the same order for any thread count). Sums in double.
#
# The forward caches (for the backward) the per-row mean and inverse std in
# double; the backward takes x itself, never a full-size x_hat.
#
# Element-wise work runs in x's dtype: for float32 the double mean is split into
# mean_hi (float32) and a residue, so x - mean_hi is exact or nearly and the
# centered values keep double-level accuracy.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free

from _parallel cimport ROW_BLOCK, COL_TILE, LANES, n_blocks, threads_for


cdef inline double _lanes_total(const double* acc) noexcept nogil:
    """Pairwise total of the LANES accumulators."""
    return ((((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])))
            + (((acc[8] + acc[9]) + (acc[10] + acc[11])) + ((acc[12] + acc[13]) + (acc[14] + acc[15]))))


# Each row reduction below is one loop with one LANES accumulator array: that
# form keeps the lanes in vector registers (two sums in one loop do not).

cdef inline double _row_sum(const floating* row, Py_ssize_t D) noexcept nogil:
    cdef double acc[LANES]
    cdef Py_ssize_t j, k, body = D - D % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, body, 16):   # 16 == LANES (range needs a literal step)
        for k in range(LANES):
            acc[k] += row[j + k]
    for j in range(body, D):
        acc[j - body] += row[j]
    return _lanes_total(acc)


cdef inline double _row_dev_sum(const floating* row, Py_ssize_t D, double shift) noexcept nogil:
    """sum(row - shift)."""
    cdef double acc[LANES]
    cdef Py_ssize_t j, k, body = D - D % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, body, 16):
        for k in range(LANES):
            acc[k] += row[j + k] - shift
    for j in range(body, D):
        acc[j - body] += row[j] - shift
    return _lanes_total(acc)


cdef inline double _row_dev_sq(const floating* row, Py_ssize_t D, double shift) noexcept nogil:
    """sum((row - shift)**2)."""
    cdef double acc[LANES]
    cdef Py_ssize_t j, k, body = D - D % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, body, 16):
        for k in range(LANES):
            acc[k] += (row[j + k] - shift) * (row[j + k] - shift)
    for j in range(body, D):
        acc[j - body] += (row[j] - shift) * (row[j] - shift)
    return _lanes_total(acc)


cdef inline double _row_moments(const floating* row, Py_ssize_t D, double* mean_out) noexcept nogil:
    """Centered sum of squares of one row (returned) and its mean: passes over
    the cached row. float64 uses the corrected two-pass mean (exact on constant
    rows); float32 sums in double are exact on constant rows already."""
    cdef double shift = _row_sum(row, D) / D
    cdef double dev_sum = 0.0
    if floating is double:
        dev_sum = _row_dev_sum(row, D, shift)
    cdef double m2 = _row_dev_sq(row, D, shift) - dev_sum * dev_sum / D
    if m2 < 0.0:   # round-off only; NaN stays NaN
        m2 = 0.0
    mean_out[0] = shift + dev_sum / D
    return m2


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
    cdef double m2, s
    cdef floating mu_hi, mu_lo, s_f
    cdef const floating* x_row
    cdef floating* out_row
    for i in prange(N, num_threads=nt, schedule='static'):
        x_row = &x[i, 0]
        out_row = &out[i, 0]
        m2 = _row_moments(x_row, D, &mean[i])   # assigned here, so private to the thread
        s = 1.0 / sqrt(m2 / (D - ddof) + eps)
        inv_std[i] = s
        mu_hi = <floating> mean[i]
        mu_lo = <floating> (mean[i] - mu_hi)
        s_f = <floating> s
        if floating is double:
            for j in range(D):
                out_row[j] = (x_row[j] - mu_hi) * s_f * gamma[j] + beta[j]
        else:
            for j in range(D):
                out_row[j] = ((x_row[j] - mu_hi) - mu_lo) * (s_f * gamma[j]) + beta[j]
    return 0


cdef inline double _row_g_sum(const floating* dy, const floating* gamma, Py_ssize_t D) noexcept nogil:
    """sum(g) for g = dout * gamma on one row: products in x's dtype, sums in double."""
    cdef double acc[LANES]
    cdef Py_ssize_t j, k, body = D - D % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, body, 16):   # 16 == LANES (range needs a literal step)
        for k in range(LANES):
            acc[k] += dy[j + k] * gamma[j + k]
    for j in range(body, D):
        acc[j - body] += dy[j] * gamma[j]
    return _lanes_total(acc)


cdef inline double _row_g_xc_sum(const floating* dy, const floating* x, const floating* gamma,
                                 Py_ssize_t D, floating mu) noexcept nogil:
    """sum(g * (x - mu)) for g = dout * gamma on one row: products in x's dtype
    (one conversion per element, the float32 bottleneck), sums in double."""
    cdef double acc[LANES]
    cdef Py_ssize_t j, k, body = D - D % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, body, 16):
        for k in range(LANES):
            acc[k] += dy[j + k] * gamma[j + k] * (x[j + k] - mu)
    for j in range(body, D):
        acc[j - body] += dy[j] * gamma[j] * (x[j] - mu)
    return _lanes_total(acc)


cdef inline void _rows_consts(const floating* dout, const floating* x, const floating* gamma,
                              Py_ssize_t D, Py_ssize_t i0, Py_ssize_t i1,
                              const double* mean, const double* inv_std, int ddof,
                              floating* row_consts) noexcept nogil:
    """The two row reductions of g = dout*gamma for rows i0..i1, turned into 5
    constants per row in x's dtype: mean_hi, mean residue, inv_std, shift, x_hat coefficient."""
    cdef Py_ssize_t i
    cdef floating mu_hi
    cdef double residue, sum_g, sum_g_xc, k_shift, k_xc
    for i in range(i0, i1):
        mu_hi = <floating> mean[i]
        residue = mean[i] - mu_hi
        sum_g = _row_g_sum(dout + i * D, gamma, D)
        sum_g_xc = _row_g_xc_sum(dout + i * D, x + i * D, gamma, D, mu_hi) - residue * sum_g
        k_shift = sum_g / D
        k_xc = inv_std[i] * inv_std[i] * sum_g_xc / (D - ddof)
        row_consts[5 * i] = mu_hi
        row_consts[5 * i + 1] = <floating> residue
        row_consts[5 * i + 2] = <floating> inv_std[i]
        row_consts[5 * i + 3] = <floating> (k_shift - residue * k_xc)
        row_consts[5 * i + 4] = <floating> k_xc


cdef inline void _tile_backward(const floating* dout, const floating* x, const floating* gamma,
                                Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                                Py_ssize_t c0, Py_ssize_t c1,
                                floating* row_consts, bint with_consts,
                                const double* mean, const double* inv_std, int ddof,
                                floating* dx, double* dgamma_part, double* dbeta_part) noexcept nogil:
    """dx on the tile [r0:r1, c0:c1] from the per-row constants, and the tile's
    column sums of dout * x_hat (-> dgamma) and dout (-> dbeta), row by row.
    with_consts: the tile spans whole rows; compute each row's constants first,
    while the row is in cache (same numbers as computing them beforehand)."""
    cdef Py_ssize_t i, j, w = c1 - c0
    cdef floating mu_hi, mu_lo, s, shift, kxc
    cdef const floating* dy_row
    cdef const floating* x_row
    cdef const floating* g = gamma + c0
    cdef floating* dx_row
    for j in range(w):
        dgamma_part[j] = 0.0
        dbeta_part[j] = 0.0
    for i in range(r0, r1):
        if with_consts:
            _rows_consts(dout, x, gamma, D, i, i + 1, mean, inv_std, ddof, row_consts)
        dy_row = dout + i * D + c0
        x_row = x + i * D + c0
        dx_row = dx + i * D + c0
        mu_hi, mu_lo, s = row_consts[5 * i], row_consts[5 * i + 1], row_consts[5 * i + 2]
        shift, kxc = row_consts[5 * i + 3], row_consts[5 * i + 4]
        for j in range(w):
            dx_row[j] = s * (dy_row[j] * g[j] - shift - (x_row[j] - mu_hi) * kxc)
        for j in range(w):   # (one loop with the dx line is slower for float64)
            dgamma_part[j] += dy_row[j] * (((x_row[j] - mu_hi) - mu_lo) * s)
            dbeta_part[j] += dy_row[j]


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
    cdef double* part = <double*> malloc(2 * n_row_blocks * D * sizeof(double))
    # per row, in x's dtype: mean_hi, mean residue, inv_std, shift, x_hat coefficient
    cdef floating* row_consts = <floating*> malloc(5 * N * sizeof(floating))
    if part == NULL or row_consts == NULL:
        free(part)
        free(row_consts)
        return -1
    cdef double* part_dbeta = part + n_row_blocks * D

    if n_row_blocks >= 4 or nt == 1:
        # tall (or one thread): one pass, a row block per task (its row sums, then its
        # dx and partials). Per column the same sums as the wide split: same results.
        for rb in prange(n_row_blocks, num_threads=nt, schedule='static'):
            _tile_backward(&dout[0, 0], &x[0, 0], &gamma[0], D, rb * ROW_BLOCK,
                           min((rb + 1) * ROW_BLOCK, N), 0, D, row_consts, True,
                           &mean[0], &inv_std[0], ddof, &dx[0, 0], part + rb * D, part_dbeta + rb * D)
    else:
        # wide: the row sums in parallel over rows, then tiles that split the columns too
        for i in prange(N, num_threads=nt, schedule='static'):
            _rows_consts(&dout[0, 0], &x[0, 0], &gamma[0], D, i, i + 1, &mean[0], &inv_std[0],
                         ddof, row_consts)
        for t in prange(n_row_blocks * n_col_tiles, num_threads=nt, schedule='static'):
            r0 = (t // n_col_tiles) * ROW_BLOCK
            c0 = (t % n_col_tiles) * COL_TILE
            _tile_backward(&dout[0, 0], &x[0, 0], &gamma[0], D, r0, min(r0 + ROW_BLOCK, N),
                           c0, min(c0 + COL_TILE, D), row_consts, False, &mean[0], &inv_std[0],
                           ddof, &dx[0, 0], part + (t // n_col_tiles) * D + c0,
                           part_dbeta + (t // n_col_tiles) * D + c0)

    for j in range(D):
        dgamma_j = part[j]
        dbeta_j = part_dbeta[j]
        for rb in range(1, n_row_blocks):
            dgamma_j += part[rb * D + j]
            dbeta_j += part_dbeta[rb * D + j]
        dgamma[j] = <floating> dgamma_j
        dbeta[j] = <floating> dbeta_j
    free(part)
    free(row_consts)
    return 0
