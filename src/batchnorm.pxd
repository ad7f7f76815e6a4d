# Batch-norm kernels on C-contiguous (N, D): statistics per feature (column),
# reduced over the N rows. Inputs are float32 or float64 (one source through
# `floating`); every sum is accumulated in double.
#
# The forward caches (for the backward) the per-feature mean and inverse std in
# double; the backward takes x itself, never a full-size x_hat.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free

from _parallel cimport ROW_BLOCK, COL_TILE, n_blocks, threads_for, merge_moments


cdef inline void _tile_moments(const floating* x, Py_ssize_t D,
                               Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1,
                               double* mean, double* m2) noexcept nogil:
    """Per-column mean and centered sum of squares of the tile x[r0:r1, c0:c1].

    The tile stays in cache between its two passes. The second pass also sums the
    deviations to correct the mean (corrected two-pass): a constant column gives
    its value exactly and m2 == 0.
    """
    cdef Py_ssize_t i, j, w = c1 - c0
    cdef double n = r1 - r0, d
    cdef double dev_sum[COL_TILE]
    cdef const floating* row
    for j in range(w):
        mean[j] = 0.0
        m2[j] = 0.0
        dev_sum[j] = 0.0
    for i in range(r0, r1):
        row = x + i * D + c0
        for j in range(w):
            mean[j] += row[j]
    for j in range(w):
        mean[j] /= n
    for i in range(r0, r1):
        row = x + i * D + c0
        for j in range(w):
            d = row[j] - mean[j]
            dev_sum[j] += d
            m2[j] += d * d
    for j in range(w):
        mean[j] += dev_sum[j] / n
        m2[j] -= dev_sum[j] * dev_sum[j] / n
        if m2[j] < 0.0:   # round-off only; NaN stays NaN
            m2[j] = 0.0


cdef inline int _column_moments(const floating* x, Py_ssize_t N, Py_ssize_t D,
                                double* mean, double* m2, int n_threads) noexcept nogil:
    """mean, m2: (D,) OUT. One read of x from memory, tiles in parallel, merged in tile order."""
    cdef Py_ssize_t n_row_blocks = n_blocks(N, ROW_BLOCK), n_col_tiles = n_blocks(D, COL_TILE)
    cdef Py_ssize_t t, rb, r0, c0
    cdef double rows_done
    cdef double* part = <double*> malloc(2 * n_row_blocks * D * sizeof(double))
    if part == NULL:
        return -1
    cdef double* part_m2 = part + n_row_blocks * D
    for t in prange(n_row_blocks * n_col_tiles, num_threads=n_threads, schedule='static'):
        r0 = (t // n_col_tiles) * ROW_BLOCK
        c0 = (t % n_col_tiles) * COL_TILE
        _tile_moments(x, D, r0, min(r0 + ROW_BLOCK, N), c0, min(c0 + COL_TILE, D),
                      part + (t // n_col_tiles) * D + c0, part_m2 + (t // n_col_tiles) * D + c0)
    for t in range(D):
        mean[t] = part[t]
        m2[t] = part_m2[t]
    rows_done = min(ROW_BLOCK, N)
    for rb in range(1, n_row_blocks):
        merge_moments(mean, m2, rows_done, part + rb * D, part_m2 + rb * D,
                      min(ROW_BLOCK, N - rb * ROW_BLOCK), D)
        rows_done += min(ROW_BLOCK, N - rb * ROW_BLOCK)
    free(part)
    return 0


cdef inline void _normalize_rows(const floating* x, Py_ssize_t N, Py_ssize_t D,
                                 const double* mean, const double* scale, const floating* beta,
                                 floating* out, int n_threads) noexcept nogil:
    """out = (x - mean) * scale + beta per column; centered, never folded, so a
    constant column (x == mean exactly) gives beta exactly."""
    cdef Py_ssize_t i, j
    cdef const floating* x_row
    cdef floating* out_row
    for i in prange(N, num_threads=n_threads, schedule='static'):
        x_row = x + i * D
        out_row = out + i * D
        for j in range(D):
            out_row[j] = <floating> ((x_row[j] - mean[j]) * scale[j] + beta[j])


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
    cdef int nt = threads_for(N * D, n_threads)
    cdef double var
    cdef double* scale = <double*> malloc(D * sizeof(double))
    if scale == NULL:
        return -1
    if train:
        # scale holds m2 until it becomes gamma * inv_std
        if _column_moments(&x[0, 0], N, D, &mean[0], scale, nt) != 0:
            free(scale)
            return -1
        for j in range(D):
            var = scale[j] / (N - ddof)
            inv_std[j] = 1.0 / sqrt(var + eps)
            running_mean_out[j] = <floating> (momentum * running_mean[j] + (1.0 - momentum) * mean[j])
            running_var_out[j] = <floating> (momentum * running_var[j] + (1.0 - momentum) * var)
    else:
        for j in range(D):
            mean[j] = running_mean[j]
            inv_std[j] = 1.0 / sqrt(<double> running_var[j] + eps)
            running_mean_out[j] = running_mean[j]
            running_var_out[j] = running_var[j]
    for j in range(D):
        scale[j] = gamma[j] * inv_std[j]
    _normalize_rows(&x[0, 0], N, D, &mean[0], scale, &beta[0], &out[0, 0], nt)
    free(scale)
    return 0


cdef inline void _tile_grad_sums(const floating* dout, const floating* x, Py_ssize_t D,
                                 Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1,
                                 const double* mean, double* sum_dy, double* sum_dy_xc) noexcept nogil:
    """Per column of the tile: sum(dout) and sum(dout * (x - mean)), one pass."""
    cdef Py_ssize_t i, j, w = c1 - c0
    cdef const floating* dy_row
    cdef const floating* x_row
    for j in range(w):
        sum_dy[j] = 0.0
        sum_dy_xc[j] = 0.0
    for i in range(r0, r1):
        dy_row = dout + i * D + c0
        x_row = x + i * D + c0
        for j in range(w):
            sum_dy[j] += dy_row[j]
            sum_dy_xc[j] += dy_row[j] * (x_row[j] - mean[j])


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
    """Simplified closed form, two sweeps: sums (-> dbeta, dgamma), then dx.

    dx = gamma*inv_std * (dout - sum(dout)/N - x_hat * sum(dout*x_hat)/(N - ddof))
    in train mode; dx = gamma*inv_std*dout in test mode (statistics are constants).
    """
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    cdef Py_ssize_t n_row_blocks = n_blocks(N, ROW_BLOCK), n_col_tiles = n_blocks(D, COL_TILE)
    cdef Py_ssize_t t, rb, r0, c0, i, j
    cdef int nt = threads_for(N * D, n_threads)
    cdef double* part = <double*> malloc((2 * n_row_blocks + 5) * D * sizeof(double))
    if part == NULL:
        return -1
    cdef double* part_dy_xc = part + n_row_blocks * D
    cdef double* sum_dy = part + 2 * n_row_blocks * D
    cdef double* sum_dy_xc = sum_dy + D
    cdef double* k_scale = sum_dy + 2 * D     # gamma * inv_std
    cdef double* k_shift = sum_dy + 3 * D     # sum(dout) / N
    cdef double* k_xc = sum_dy + 4 * D        # inv_std^2 * sum(dout*(x-mean)) / (N - ddof)
    cdef const floating* dy_row
    cdef const floating* x_row
    cdef floating* dx_row

    for t in prange(n_row_blocks * n_col_tiles, num_threads=nt, schedule='static'):
        r0 = (t // n_col_tiles) * ROW_BLOCK
        c0 = (t % n_col_tiles) * COL_TILE
        _tile_grad_sums(&dout[0, 0], &x[0, 0], D, r0, min(r0 + ROW_BLOCK, N),
                        c0, min(c0 + COL_TILE, D), &mean[c0],
                        part + (t // n_col_tiles) * D + c0, part_dy_xc + (t // n_col_tiles) * D + c0)
    for j in range(D):
        sum_dy[j] = part[j]
        sum_dy_xc[j] = part_dy_xc[j]
    for rb in range(1, n_row_blocks):
        for j in range(D):
            sum_dy[j] += part[rb * D + j]
            sum_dy_xc[j] += part_dy_xc[rb * D + j]

    for j in range(D):
        dbeta[j] = <floating> sum_dy[j]
        dgamma[j] = <floating> (sum_dy_xc[j] * inv_std[j])
        k_scale[j] = gamma[j] * inv_std[j]
        if train:
            k_shift[j] = sum_dy[j] / N
            k_xc[j] = inv_std[j] * inv_std[j] * sum_dy_xc[j] / (N - ddof)
        else:
            k_shift[j] = 0.0
            k_xc[j] = 0.0

    for i in prange(N, num_threads=nt, schedule='static'):
        dy_row = &dout[i, 0]
        x_row = &x[i, 0]
        dx_row = &dx[i, 0]
        for j in range(D):
            dx_row[j] = <floating> (k_scale[j] * (dy_row[j] - k_shift[j]
                                                   - (x_row[j] - mean[j]) * k_xc[j]))
    free(part)
    return 0
