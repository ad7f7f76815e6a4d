# Batch-norm kernels on C-contiguous (N, D): statistics per feature (column),
# reduced over the N rows. Inputs are float32 or float64 (one source through
# `floating`); every sum is accumulated in double.
#
# The forward caches (for the backward) the per-feature mean and inverse std in
# double; the backward takes x itself, never a full-size x_hat.
#
# Reductions walk a tile in strips of STRIP columns whose sums stay in registers;
# deviations and products are taken in double. The element-wise sweeps run in
# x's dtype: for float32 the double mean is split into a float32 part (x - shift
# is exact or nearly) and a residue folded into the per-column constants.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport isfinite, sqrt
from libc.stdlib cimport malloc, free

from _parallel cimport ROW_BLOCK, COL_TILE, STRIP, n_blocks, threads_for


cdef enum:
    ROW_CHUNK = 8   # rows a strip pass takes at once: 8 lines per cache set, any row stride


cdef inline double _correction(double residue, double factor) noexcept nogil:
    """residue * factor for the float32 residue (mean - shift, below float32's
    rounding), or 0 where that is not finite: where the factor or the mean is
    infinite, the value it would correct is the answer already, and 0 * inf or
    inf - inf would make a NaN of it (float64 has no residue). A select, not a
    branch: the per-tile loop that calls it stays vectorized."""
    cdef double product = residue * factor
    return product if isfinite(product) else 0.0


cdef inline void _strip_pass(const floating* x, Py_ssize_t D, Py_ssize_t n_rows,
                             const double* shift, double* acc_io, int kind) noexcept nogil:
    """acc_io[k] += sum over the n_rows of f(x[i, k] - shift[k]) for the STRIP columns
    at x (row stride D): f(d) = d + shift (kind 0, plain sums), d (1), d*d (2).
    One loop per kind, so the STRIP sums stay in vector registers."""
    cdef double acc[STRIP]
    cdef Py_ssize_t i, k
    cdef const floating* row
    for k in range(STRIP):
        acc[k] = acc_io[k]
    if kind == 0:
        for i in range(n_rows):
            row = x + i * D
            for k in range(STRIP):
                acc[k] += row[k]
    elif kind == 1:
        for i in range(n_rows):
            row = x + i * D
            for k in range(STRIP):
                acc[k] += row[k] - shift[k]
    else:
        for i in range(n_rows):
            row = x + i * D
            for k in range(STRIP):
                acc[k] += (row[k] - shift[k]) * (row[k] - shift[k])
    for k in range(STRIP):
        acc_io[k] = acc[k]


cdef inline void _tile_pass(const floating* x, Py_ssize_t D, Py_ssize_t n, Py_ssize_t w,
                            const double* shift, double* acc, int kind) noexcept nogil:
    """_strip_pass over the (n, w) tile at x, ROW_CHUNK rows at a time; acc: (w,) IN/OUT."""
    cdef Py_ssize_t r, c, i, rows, body = w - w % STRIP
    cdef const floating* row
    for r in range(0, n, 8):   # 8 == ROW_CHUNK (range needs a literal step)
        rows = min(ROW_CHUNK, n - r)
        for c in range(0, body, 16):   # 16 == STRIP
            _strip_pass(x + r * D + c, D, rows, shift + c, acc + c, kind)
        for i in range(r, r + rows):   # the last w % STRIP columns
            row = x + i * D
            for c in range(body, w):
                if kind == 0:
                    acc[c] += row[c]
                elif kind == 1:
                    acc[c] += row[c] - shift[c]
                else:
                    acc[c] += (row[c] - shift[c]) * (row[c] - shift[c])


cdef inline void _tile_moments(const floating* x, Py_ssize_t D,
                               Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1,
                               double* mean, double* m2, double* base, double* dev) noexcept nogil:
    """Per-column mean and centered sum of squares of the tile x[r0:r1, c0:c1]
    (two passes over the cache-resident tile), and what _merge_row_blocks needs
    of its sums: base, the first pass's mean (float64) or the plain column sum
    (float32), and dev, the mean deviation from base (float64).

    float64 uses the corrected two-pass mean (a third pass sums the deviations),
    so a constant column gives its value exactly and m2 == 0. float32 sums in
    double are exact for a constant column already.
    """
    cdef Py_ssize_t j, n = r1 - r0, w = c1 - c0
    cdef const floating* tile = x + r0 * D + c0
    for j in range(w):
        mean[j] = 0.0
        m2[j] = 0.0
        dev[j] = 0.0
    _tile_pass(tile, D, n, w, mean, mean, 0)   # the column sums
    for j in range(w):
        base[j] = mean[j]   # float32 keeps the sums
        mean[j] /= n
    if floating is double:
        for j in range(w):
            base[j] = mean[j]   # float64 the first pass's mean
        _tile_pass(tile, D, n, w, mean, dev, 1)
    _tile_pass(tile, D, n, w, mean, m2, 2)
    if floating is double:
        for j in range(w):
            # an infinite mean is already the answer; its deviations sum to NaN
            if isfinite(mean[j]):
                m2[j] -= dev[j] * dev[j] / n
                dev[j] /= n
                mean[j] += dev[j]
    for j in range(w):
        if m2[j] < 0.0:   # round-off only; NaN stays NaN
            m2[j] = 0.0


cdef inline void _moments_task(const floating* x, Py_ssize_t N, Py_ssize_t D,
                               Py_ssize_t n_col_tiles, Py_ssize_t t,
                               double* part) noexcept nogil:
    """Tile t (row block t // n_col_tiles, column tile t % n_col_tiles) into its
    row block's partials: part holds four (n_row_blocks, D) arrays, the blocks'
    means, centered sums of squares, bases and mean deviations (_tile_moments)."""
    cdef Py_ssize_t rb = t // n_col_tiles, r0 = rb * ROW_BLOCK, c0 = (t % n_col_tiles) * COL_TILE
    cdef Py_ssize_t size = n_blocks(N, ROW_BLOCK) * D, at = rb * D + c0
    _tile_moments(x, D, r0, min(r0 + ROW_BLOCK, N), c0, min(c0 + COL_TILE, D),
                  part + at, part + size + at, part + 2 * size + at, part + 3 * size + at)


cdef inline void _merge_row_blocks(double* mean, double* m2,   # INOUT (D,) block 0's, then all rows'
                                   const double* part,         # IN the four arrays of _moments_task
                                   Py_ssize_t N, Py_ssize_t D, bint from_sums,
                                   double* anchor, double* offset) noexcept nogil:   # scratch (D,) each
    """Fold the moments of row blocks 1, 2, ... into block 0's (Chan et al.), in block order.

    Each column is merged about one anchor, block 0's mean (rounded to float32
    when from_sums, float32 input): a block's mean enters as its offset from the
    anchor, taken from the block's own sums (float32: (sum - n*anchor)/n, with
    n*anchor exact; float64: (first-pass mean - anchor) + mean deviation). Block
    means rounded to doubles would put an error of |mean|*2**-53 into every
    difference of means, which is large beside the spread when |mean| >> std.
    Equal blocks merge exactly (a constant column stays exact). An infinite or
    NaN mean follows the rule of a plain sum (inf + finite = inf, inf - inf =
    NaN): Chan's update would give inf - inf = NaN for an infinite mean."""
    cdef Py_ssize_t size = n_blocks(N, ROW_BLOCK) * D, rb, j
    cdef const double* base = part + 2 * size
    cdef const double* dev = part + 3 * size
    cdef double n_a = min(ROW_BLOCK, N), n_b, n, delta, block_offset
    for j in range(D):
        anchor[j] = <float> mean[j] if from_sums else base[j]
        if from_sums:
            offset[j] = (base[j] - n_a * anchor[j]) * (1.0 / n_a)
        else:
            offset[j] = dev[j]
    for rb in range(1, n_blocks(N, ROW_BLOCK)):
        n_b = min(ROW_BLOCK, N - rb * ROW_BLOCK)
        n = n_a + n_b
        for j in range(D):
            if isfinite(mean[j]) and isfinite(part[rb * D + j]):
                if from_sums:
                    block_offset = (base[rb * D + j] - n_b * anchor[j]) * (1.0 / n_b)
                else:
                    block_offset = (base[rb * D + j] - anchor[j]) + dev[rb * D + j]
                delta = block_offset - offset[j]
                offset[j] += delta * (n_b / n)
                m2[j] += part[size + rb * D + j] + delta * delta * (n_a * n_b / n)
                mean[j] = anchor[j] + offset[j]
            else:
                mean[j] += part[rb * D + j]
                m2[j] += part[size + rb * D + j]
        n_a = n


cdef inline int _column_moments(const floating* x, Py_ssize_t N, Py_ssize_t D,
                                double* mean, double* m2, int n_threads) noexcept nogil:
    """mean, m2: (D,) OUT. One read of x from memory, tiles in parallel, merged in tile order."""
    cdef Py_ssize_t n_row_blocks = n_blocks(N, ROW_BLOCK), n_col_tiles = n_blocks(D, COL_TILE)
    cdef Py_ssize_t t
    cdef double* part = <double*> malloc((4 * n_row_blocks + 2) * D * sizeof(double))
    if part == NULL:
        return -1
    if n_threads == 1:   # no OpenMP team (see threads_for)
        for t in range(n_row_blocks * n_col_tiles):
            _moments_task(x, N, D, n_col_tiles, t, part)
    else:
        for t in prange(n_row_blocks * n_col_tiles, num_threads=n_threads, schedule='static'):
            _moments_task(x, N, D, n_col_tiles, t, part)
    for t in range(D):
        mean[t] = part[t]
        m2[t] = part[n_row_blocks * D + t]
    if n_row_blocks > 1:
        _merge_row_blocks(mean, m2, part, N, D, floating is float,
                          part + 4 * n_row_blocks * D, part + (4 * n_row_blocks + 1) * D)
    free(part)
    return 0


cdef inline void _normalize_row(const floating* x_row, Py_ssize_t D, const floating* shift,
                                const floating* scale, const floating* offset,
                                floating* out_row) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(D):
        out_row[j] = (x_row[j] - shift[j]) * scale[j] + offset[j]


cdef inline void _normalize_rows(const floating* x, Py_ssize_t N, Py_ssize_t D,
                                 const floating* shift, const floating* scale,
                                 const floating* offset, floating* out,
                                 int n_threads) noexcept nogil:
    """out = (x - shift) * scale + offset per column, in x's dtype. Centered, never
    folded: a constant column (x == shift, offset == beta) gives beta exactly."""
    cdef Py_ssize_t i
    if n_threads == 1:
        for i in range(N):
            _normalize_row(x + i * D, D, shift, scale, offset, out + i * D)
    else:
        for i in prange(N, num_threads=n_threads, schedule='static'):
            _normalize_row(x + i * D, D, shift, scale, offset, out + i * D)


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
    cdef double* m2 = <double*> malloc(D * sizeof(double))
    cdef floating* consts = <floating*> malloc(3 * D * sizeof(floating))
    if m2 == NULL or consts == NULL:
        free(m2)
        free(consts)
        return -1
    cdef floating* shift = consts          # mean rounded to x's dtype
    cdef floating* scales = consts + D     # gamma * inv_std
    cdef floating* offset = consts + 2 * D # beta - (mean - shift) * scale
    if train:
        if _column_moments(&x[0, 0], N, D, &mean[0], m2, nt) != 0:
            free(m2)
            free(consts)
            return -1
        # per-column loops with one or two outputs each: they vectorize (wide D matters)
        for j in range(D):
            m2[j] = m2[j] / (N - ddof)   # the variance from here on
        for j in range(D):
            inv_std[j] = 1.0 / sqrt(m2[j] + eps)
        for j in range(D):
            running_mean_out[j] = <floating> (momentum * running_mean[j] + (1.0 - momentum) * mean[j])
        for j in range(D):
            running_var_out[j] = <floating> (momentum * running_var[j] + (1.0 - momentum) * m2[j])
    else:
        for j in range(D):
            mean[j] = running_mean[j]
            inv_std[j] = 1.0 / sqrt(<double> running_var[j] + eps)
            running_mean_out[j] = running_mean[j]
            running_var_out[j] = running_var[j]
    for j in range(D):
        shift[j] = <floating> mean[j]
        scales[j] = <floating> (gamma[j] * inv_std[j])
    for j in range(D):
        if floating is double:
            offset[j] = beta[j]
        else:
            offset[j] = <floating> (beta[j] - _correction(mean[j] - shift[j], gamma[j] * inv_std[j]))
    _normalize_rows(&x[0, 0], N, D, shift, scales, offset, &out[0, 0], nt)
    free(m2)
    free(consts)
    return 0


cdef enum:
    GRAD_ROW_TILE = 2048   # widest backward tile: its two column sums (32 KiB) stay in L1


cdef inline Py_ssize_t _grad_col_tile(Py_ssize_t N, Py_ssize_t D) noexcept nogil:
    """Columns of a backward sums tile. With two row blocks or more, whole rows up to
    GRAD_ROW_TILE: a tile is then one contiguous stream per array (a 4096 x 1024 sweep
    ~10% faster than with COL_TILE halves). A single row block keeps COL_TILE, so that
    its columns still split into tiles for the threads. The split of the columns does
    not change any result: every column is summed alone, in row order."""
    if N > ROW_BLOCK:
        return min(D, GRAD_ROW_TILE)
    return COL_TILE


cdef inline void _tile_grad_sums(const floating* dout, const floating* x, Py_ssize_t D,
                                 Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1,
                                 const floating* shift, const double* residue,
                                 double* sum_dy, double* sum_dy_xc) noexcept nogil:
    """Per column of the tile [r0:r1, c0:c1]: sum(dout) and sum(dout * (x - mean)),
    where mean = shift + residue (residue is 0 for float64); shift, residue: the
    tile's columns; sum_dy, sum_dy_xc: (c1 - c0,) OUT. Products in x's dtype, sums
    in double, each column summed row after row from 0.

    The tile is read once, from memory, so it is walked along its rows (contiguous
    streams) with the column sums in L1 (GRAD_ROW_TILE at most); float32 takes two rows
    per step (four streams, half the sum traffic; the same order of additions).
    A two-row float64 loop does not vectorize (too many possible aliases)."""
    cdef Py_ssize_t i = r0, j, w = c1 - c0
    cdef const floating* dy_row
    cdef const floating* x_row
    for j in range(w):
        sum_dy[j] = 0.0
    for j in range(w):
        sum_dy_xc[j] = 0.0
    if floating is float:
        while i + 1 < r1:
            dy_row = dout + i * D + c0
            x_row = x + i * D + c0
            for j in range(w):
                sum_dy[j] = (sum_dy[j] + dy_row[j]) + dy_row[D + j]
                sum_dy_xc[j] = ((sum_dy_xc[j] + dy_row[j] * (x_row[j] - shift[j]))
                                + dy_row[D + j] * (x_row[D + j] - shift[j]))
            i += 2
    while i < r1:
        dy_row = dout + i * D + c0
        x_row = x + i * D + c0
        for j in range(w):
            sum_dy[j] += dy_row[j]
            sum_dy_xc[j] += dy_row[j] * (x_row[j] - shift[j])
        i += 1
    if floating is float:
        for j in range(w):
            sum_dy_xc[j] -= _correction(residue[j], sum_dy[j])


cdef inline void _grad_sums_task(const floating* dout, const floating* x, Py_ssize_t N,
                                 Py_ssize_t D, Py_ssize_t col_tile, Py_ssize_t n_col_tiles,
                                 Py_ssize_t t, const floating* shift, const double* residue,
                                 double* part_dy, double* part_dy_xc) noexcept nogil:
    """Tile t (row block t // n_col_tiles, column tile t % n_col_tiles) into its
    row block's partial sums (n_row_blocks, D)."""
    cdef Py_ssize_t rb = t // n_col_tiles, r0 = rb * ROW_BLOCK, c0 = (t % n_col_tiles) * col_tile
    _tile_grad_sums(dout, x, D, r0, min(r0 + ROW_BLOCK, N), c0, min(c0 + col_tile, D),
                    shift + c0, residue + c0, part_dy + rb * D + c0, part_dy_xc + rb * D + c0)


cdef inline void _dx_row(const floating* dy_row, const floating* x_row, Py_ssize_t D,
                         bint train, const floating* consts, floating* dx_row) noexcept nogil:
    """dx of one row from the per-column constants (4, D): shift, scale, shift of dout, x_hat coefficient."""
    cdef const floating* shift = consts
    cdef const floating* c_scale = consts + D
    cdef const floating* c_shift = consts + 2 * D
    cdef const floating* c_xc = consts + 3 * D
    cdef Py_ssize_t j
    if train:
        for j in range(D):
            dx_row[j] = c_scale[j] * (dy_row[j] - c_shift[j] - (x_row[j] - shift[j]) * c_xc[j])
    else:
        for j in range(D):
            dx_row[j] = c_scale[j] * dy_row[j]


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

    Both sweeps walk whole rows. Tried and measured slower on the reference machine
    (2-core EPYC, 512 KiB L2): panels of all N rows x 32..128 columns, summed and
    then written while cached (x and dout read once), 1.5-2.5x slower at 64x4096,
    512x512 and 8x65536, no gain at 100x500 (column-strided reads and dx stores
    defeat the prefetchers); dx in column strips with the constants in registers;
    the dx sweep in reverse row order.
    """
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    cdef Py_ssize_t col_tile = _grad_col_tile(N, D)
    cdef Py_ssize_t n_row_blocks = n_blocks(N, ROW_BLOCK), n_col_tiles = n_blocks(D, col_tile)
    cdef Py_ssize_t t, rb, i, j
    cdef int nt = threads_for(N * D, n_threads)
    cdef double* part = <double*> malloc((2 * n_row_blocks + 2) * D * sizeof(double))
    cdef floating* consts = <floating*> malloc(4 * D * sizeof(floating))
    if part == NULL or consts == NULL:
        free(part)
        free(consts)
        return -1
    cdef double* part_dy_xc = part + n_row_blocks * D
    cdef double* sum_dy = part                # row block 0's partial sums, then the totals
    cdef double* sum_dy_xc = part_dy_xc
    cdef double* residue = part + 2 * n_row_blocks * D   # mean - shift
    cdef double* k_xc = residue + D           # inv_std^2 * sum(dout*(x-mean)) / (N - ddof)
    cdef floating* shift = consts              # mean rounded to x's dtype
    cdef floating* c_scale = consts + D        # gamma * inv_std
    cdef floating* c_shift = consts + 2 * D    # sum(dout)/N - residue * c_xc
    cdef floating* c_xc = consts + 3 * D       # inv_std^2 * sum(dout*(x-mean)) / (N - ddof)

    for j in range(D):
        shift[j] = <floating> mean[j]
        residue[j] = mean[j] - shift[j]
    if nt == 1:   # no OpenMP team (see threads_for)
        for t in range(n_row_blocks * n_col_tiles):
            _grad_sums_task(&dout[0, 0], &x[0, 0], N, D, col_tile, n_col_tiles, t, shift, residue,
                            part, part_dy_xc)
    else:
        for t in prange(n_row_blocks * n_col_tiles, num_threads=nt, schedule='static'):
            _grad_sums_task(&dout[0, 0], &x[0, 0], N, D, col_tile, n_col_tiles, t, shift, residue,
                            part, part_dy_xc)
    for rb in range(1, n_row_blocks):   # merged in row-block order into block 0's sums
        for j in range(D):
            sum_dy[j] += part[rb * D + j]
        for j in range(D):
            sum_dy_xc[j] += part_dy_xc[rb * D + j]

    # per-column loops with few outputs each, so that they vectorize (wide D matters)
    for j in range(D):
        dbeta[j] = <floating> sum_dy[j]
    for j in range(D):
        dgamma[j] = <floating> (sum_dy_xc[j] * inv_std[j])
    for j in range(D):
        c_scale[j] = <floating> (gamma[j] * inv_std[j])
    if train:
        for j in range(D):
            k_xc[j] = inv_std[j] * inv_std[j] * sum_dy_xc[j] / (N - ddof)
        for j in range(D):
            c_shift[j] = <floating> (sum_dy[j] / N - _correction(residue[j], k_xc[j]))
    else:
        for j in range(D):
            k_xc[j] = 0.0
        for j in range(D):
            c_shift[j] = <floating> (0.0 - _correction(residue[j], k_xc[j]))
    for j in range(D):
        c_xc[j] = <floating> k_xc[j]

    # test mode: the statistics are constants, so dx never reads x (a NaN or Inf there stays out)
    if nt == 1:
        for i in range(N):
            _dx_row(&dout[i, 0], &x[i, 0], D, train, consts, &dx[i, 0])
    else:
        for i in prange(N, num_threads=nt, schedule='static'):
            _dx_row(&dout[i, 0], &x[i, 0], D, train, consts, &dx[i, 0])
    free(part)
    free(consts)
    return 0
