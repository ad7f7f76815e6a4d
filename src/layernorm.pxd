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
from libc.math cimport isfinite, sqrt
from libc.stdlib cimport malloc, free

from _parallel cimport ROW_BLOCK, COL_TILE, LANES, n_blocks, threads_for


cdef extern from *:
    # The backward's column partials never overlap the inputs or each other, nor
    # does an output row (out, dx). Said to the compiler, a loop that writes them
    # keeps its lane sums in registers instead of checking for overlap at run
    # time around a stack copy of them, and a short row's loop skips the checks.
    ctypedef double* partial_ptr "double *__restrict__"
    ctypedef float* float_out "float *__restrict__"
    ctypedef double* double_out "double *__restrict__"

ctypedef fused floating_out:   # an output row of x's dtype
    float_out
    double_out


cdef inline double _lanes_total(const double* acc) noexcept nogil:
    """Pairwise total of the LANES accumulators, folded by halves (lane k with
    k + 8, then k + 4, ...)."""
    cdef double half[8]
    cdef double quarter[4]
    cdef int k
    for k in range(8):
        half[k] = acc[k] + acc[k + 8]
    for k in range(4):
        quarter[k] = half[k] + half[k + 4]
    return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3])


# Each row reduction below is one loop with one LANES accumulator array: that
# form keeps the lanes in vector registers (two sums in one loop do not). The
# last D % LANES elements go into a scalar of their own, added to the lanes'
# total: a lane picked by a run-time index would keep the lanes in memory.

cdef inline double _row_sum(const floating* row, Py_ssize_t D) noexcept nogil:
    cdef double acc[LANES]
    cdef double tail = 0.0
    cdef Py_ssize_t j, k, body = D - D % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, body, 16):   # 16 == LANES (range needs a literal step)
        for k in range(LANES):
            acc[k] += row[j + k]
    for j in range(body, D):
        tail += row[j]
    return _lanes_total(acc) + tail


cdef inline double _row_dev_sum(const floating* row, Py_ssize_t D, double shift) noexcept nogil:
    """sum(row - shift)."""
    cdef double acc[LANES]
    cdef double tail = 0.0
    cdef Py_ssize_t j, k, body = D - D % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, body, 16):
        for k in range(LANES):
            acc[k] += row[j + k] - shift
    for j in range(body, D):
        tail += row[j] - shift
    return _lanes_total(acc) + tail


cdef inline double _row_dev_sq(const floating* row, Py_ssize_t D, double shift) noexcept nogil:
    """sum((row - shift)**2)."""
    cdef double acc[LANES]
    cdef double tail = 0.0
    cdef Py_ssize_t j, k, body = D - D % LANES
    for k in range(LANES):
        acc[k] = 0.0
    for j in range(0, body, 16):
        for k in range(LANES):
            acc[k] += (row[j + k] - shift) * (row[j + k] - shift)
    for j in range(body, D):
        tail += (row[j] - shift) * (row[j] - shift)
    return _lanes_total(acc) + tail


cdef inline double _row_moments(const floating* row, Py_ssize_t D, double row_sum,
                                double* mean_out) noexcept nogil:
    """Centered sum of squares of one row (returned) and its mean, from the row's
    sum: passes over the cached row. float64 uses the corrected two-pass mean
    (exact on constant rows); float32 sums in double are exact on constant rows
    already."""
    cdef double shift = row_sum / D
    cdef double dev_sum = 0.0
    if floating is double and isfinite(shift):   # an infinite mean is already the answer
        dev_sum = _row_dev_sum(row, D, shift)
    cdef double m2 = _row_dev_sq(row, D, shift) - dev_sum * dev_sum / D
    if m2 < 0.0:   # round-off only; NaN stays NaN
        m2 = 0.0
    mean_out[0] = shift + dev_sum / D
    return m2


cdef inline void _normalize_row(const floating* x_row, const floating* gamma,
                                const floating* beta, Py_ssize_t D, double mean, double s,
                                floating_out out_row) noexcept nogil:
    """out_row = (x_row - mean) * s * gamma + beta, element-wise in x's dtype (float32:
    the double mean split into mu_hi and a residue mu_lo). Steps of LANES elements:
    one loop count and test per two vectors."""
    cdef floating mu_hi = <floating> mean
    cdef floating mu_lo = <floating> (mean - mu_hi)
    cdef floating s_f = <floating> s
    cdef Py_ssize_t j, k, body = D - D % LANES
    for j in range(0, body, 16):   # 16 == LANES
        for k in range(LANES):
            if floating is double:
                out_row[j + k] = (x_row[j + k] - mu_hi) * s_f * gamma[j + k] + beta[j + k]
            else:
                out_row[j + k] = (((x_row[j + k] - mu_hi) - mu_lo) * (s_f * gamma[j + k])
                                  + beta[j + k])
    for j in range(body, D):
        if floating is double:
            out_row[j] = (x_row[j] - mu_hi) * s_f * gamma[j] + beta[j]
        else:
            out_row[j] = ((x_row[j] - mu_hi) - mu_lo) * (s_f * gamma[j]) + beta[j]


cdef inline void _forward_row(const floating* x_row, const floating* gamma, const floating* beta,
                              Py_ssize_t D, double eps, int ddof, floating* out_row,
                              double* mean, double* inv_std) noexcept nogil:
    """One row: its mean and inv_std (OUT, one value each), then out_row."""
    cdef double s = 1.0 / sqrt(_row_moments(x_row, D, _row_sum(x_row, D), mean) / (D - ddof)
                               + eps)
    inv_std[0] = s
    if floating is float:
        _normalize_row(x_row, gamma, beta, D, mean[0], s, <float_out> out_row)
    else:
        _normalize_row(x_row, gamma, beta, D, mean[0], s, <double_out> out_row)


cdef inline int ln_forward(const floating[:, ::1] x,       # IN  (N, D)
                           const floating[::1] gamma,      # IN  (D,)
                           const floating[::1] beta,       # IN  (D,)
                           double eps, int ddof,
                           floating[:, ::1] out,           # OUT (N, D)
                           double[::1] mean,               # OUT (N,) cached
                           double[::1] inv_std,            # OUT (N,) cached
                           int n_threads) noexcept nogil:
    """out = (x - mean_row) * inv_std_row * gamma + beta, each row in one visit."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], i
    cdef int nt = threads_for(N * D, n_threads)
    if nt == 1:   # no OpenMP team (see threads_for)
        for i in range(N):
            _forward_row(&x[i, 0], &gamma[0], &beta[0], D, eps, ddof, &out[i, 0], &mean[i], &inv_std[i])
    else:
        for i in prange(N, num_threads=nt, schedule='static'):
            _forward_row(&x[i, 0], &gamma[0], &beta[0], D, eps, ddof, &out[i, 0], &mean[i], &inv_std[i])
    return 0


# Backward. Per row, first the two reductions of g = dout*gamma (sum g and
# sum g*(x - mean)), then the terms; dgamma, dbeta are column sums over rows.
# float32: each element of dout and x is converted to double once, in the visit
# that makes the row sums, and that same visit adds the row into the column
# partials (x_hat needs only the forward's mean and inv_std): g is exact in
# double and every sum is in double, with one conversion per input element.

cdef enum:
    WIDE_ROW = 8192    # wider rows go in COL_TILE segments, every row of a group per segment


cdef inline void _row_segment_sums(const floating* dy, const floating* x, const double* gamma_d,
                                   Py_ssize_t c0, Py_ssize_t c1, double mu, double s,
                                   bint keep_lanes,
                                   double* lanes,              # INOUT (2*LANES,) sums so far
                                   double* totals,             # OUT (2,) their totals after this segment
                                   partial_ptr dgamma_part,    # INOUT (D,) sums of dout*x_hat
                                   partial_ptr dbeta_part) noexcept nogil:   # INOUT (D,) of dout
    """Columns c0..c1 of one row (c0 a multiple of LANES): the row's lane sums of g
    and g*(x - mean) (lanes: LANES of each; a row's first segment, c0 = 0, starts
    them; kept for the next segment when keep_lanes), and the column partials.
    Only a row's last segment may have a tail past its lanes (every other ends
    on a multiple of LANES), so visits of a row's segments in column order add
    exactly as one visit of the whole row."""
    cdef double sum_g[LANES]
    cdef double sum_g_xc[LANES]
    cdef Py_ssize_t j, k, body = c1 - (c1 - c0) % LANES
    cdef double dy_j, xc_j, g_j, tail_g = 0.0, tail_g_xc = 0.0
    if c0 == 0:
        for k in range(LANES):
            sum_g[k] = 0.0
            sum_g_xc[k] = 0.0
    else:
        for k in range(LANES):
            sum_g[k] = lanes[k]
            sum_g_xc[k] = lanes[LANES + k]
    for j in range(c0, body, 16):   # 16 == LANES (range needs a literal step)
        for k in range(LANES):
            dy_j = dy[j + k]
            xc_j = x[j + k] - mu
            g_j = dy_j * gamma_d[j + k]
            sum_g[k] += g_j
            sum_g_xc[k] += g_j * xc_j
            dgamma_part[j + k] += dy_j * (xc_j * s)
            dbeta_part[j + k] += dy_j
    for j in range(body, c1):
        dy_j = dy[j]
        xc_j = x[j] - mu
        g_j = dy_j * gamma_d[j]
        tail_g += g_j
        tail_g_xc += g_j * xc_j
        dgamma_part[j] += dy_j * (xc_j * s)
        dbeta_part[j] += dy_j
    if keep_lanes:
        for k in range(LANES):
            lanes[k] = sum_g[k]
            lanes[LANES + k] = sum_g_xc[k]
    totals[0] = _lanes_total(sum_g) + tail_g
    totals[1] = _lanes_total(sum_g_xc) + tail_g_xc


cdef inline void _row_dx(const floating* dy, const floating* x, const floating* gamma,
                         Py_ssize_t D, double mu, double s, const double* totals, int ddof,
                         floating_out dx) noexcept nogil:
    """dx of one row from its two sums, element-wise in x's dtype (no conversions):
    for float32 the double mean is split into mu_hi (float32) and a residue that
    the shift takes up."""
    cdef double k_xc = s * s * totals[1] / (D - ddof)
    cdef floating mu_hi = <floating> mu
    cdef floating shift = <floating> (totals[0] / D - (mu - mu_hi) * k_xc)
    cdef floating kxc = <floating> k_xc, s_f = <floating> s
    cdef Py_ssize_t j, k, body = D - D % LANES
    for j in range(0, body, 16):   # 16 == LANES: one loop count and test per two vectors
        for k in range(LANES):
            dx[j + k] = s_f * (dy[j + k] * gamma[j + k] - shift - (x[j + k] - mu_hi) * kxc)
    for j in range(body, D):
        dx[j] = s_f * (dy[j] * gamma[j] - shift - (x[j] - mu_hi) * kxc)


cdef inline void _row_dx_into(const floating* dy, const floating* x, const floating* gamma,
                              Py_ssize_t D, double mu, double s, const double* totals, int ddof,
                              floating* dx) noexcept nogil:
    """_row_dx with dx marked as overlapping nothing else."""
    if floating is float:
        _row_dx(dy, x, gamma, D, mu, s, totals, ddof, <float_out> dx)
    else:
        _row_dx(dy, x, gamma, D, mu, s, totals, ddof, <double_out> dx)


cdef inline void _group_backward(const floating* dout, const floating* x, const floating* gamma,
                                 const double* gamma_d, Py_ssize_t D, Py_ssize_t r0, Py_ssize_t r1,
                                 const double* mean, const double* inv_std, int ddof,
                                 floating* dx,                      # OUT rows r0..r1
                                 double* dgamma_part,               # OUT (D,)
                                 double* dbeta_part) noexcept nogil:   # OUT (D,)
    """Rows r0..r1 (at most ROW_BLOCK): their dx, and their column sums of
    dout*x_hat and dout, added row after row. A row up to WIDE_ROW gets its dx
    right after its sums, while it is in cache; wider rows are summed segment by
    segment over all rows of the group (the segment's partials stay in L1),
    then given their dx."""
    cdef double lanes[ROW_BLOCK * 2 * LANES]   # per row: LANES sums of g, LANES of g*(x - mean)
    cdef double totals[ROW_BLOCK * 2]          # per row: sum of g, sum of g*(x - mean)
    cdef Py_ssize_t i, j, t
    for j in range(D):
        dgamma_part[j] = 0.0
        dbeta_part[j] = 0.0
    if D <= WIDE_ROW:
        for i in range(r0, r1):
            _row_segment_sums(dout + i * D, x + i * D, gamma_d, 0, D, mean[i], inv_std[i],
                              False, lanes, totals, dgamma_part, dbeta_part)
            _row_dx_into(dout + i * D, x + i * D, gamma, D, mean[i], inv_std[i], totals, ddof,
                         dx + i * D)
    else:
        for t in range(n_blocks(D, COL_TILE)):
            for i in range(r0, r1):
                _row_segment_sums(dout + i * D, x + i * D, gamma_d, t * COL_TILE,
                                  min((t + 1) * COL_TILE, D), mean[i], inv_std[i], True,
                                  lanes + (i - r0) * 2 * LANES, totals + (i - r0) * 2,
                                  dgamma_part, dbeta_part)
        for i in range(r0, r1):
            _row_dx_into(dout + i * D, x + i * D, gamma, D, mean[i], inv_std[i],
                         totals + (i - r0) * 2, ddof, dx + i * D)


cdef inline void _add_partials(partial_ptr total,            # INOUT (D,) the first group's
                               const double* others,          # IN (n, D) the next groups'
                               Py_ssize_t n, Py_ssize_t D) noexcept nogil:
    """total += the n other groups' column partials, one group after the other:
    each column adds in group order, and the loop runs along the columns."""
    cdef Py_ssize_t g, j
    for g in range(n):
        for j in range(D):
            total[j] += others[g * D + j]


cdef inline Py_ssize_t ln_backward_group_rows(Py_ssize_t N) noexcept nogil:
    """Rows per group of the backward: ROW_BLOCK (at most: the lane sums of a
    group are on the stack), or half of fewer rows so that two threads share the
    work (more groups of few wide rows cost more in partials than they save).
    The shape's alone: it fixes the results."""
    return ROW_BLOCK if N >= 2 * ROW_BLOCK else n_blocks(N, 2)


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
    dgamma, dbeta = column sums of dout*x_hat and dout over rows: per row group,
    then the groups' partials merged in group order.
    """
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1]
    cdef Py_ssize_t group = ln_backward_group_rows(N)
    cdef Py_ssize_t n_groups = n_blocks(N, group), g, j
    cdef int nt = threads_for(N * D, n_threads)
    cdef double* part = <double*> malloc(2 * n_groups * D * sizeof(double))
    cdef double* gamma_copy = NULL   # float32: gamma in double, converted once per call
    cdef const double* gamma_d
    if floating is float:
        gamma_copy = <double*> malloc(D * sizeof(double))
    if part == NULL or (floating is float and gamma_copy == NULL):
        free(part)
        free(gamma_copy)
        return -1
    if floating is float:
        for j in range(D):
            gamma_copy[j] = gamma[j]
        gamma_d = gamma_copy
    else:
        gamma_d = &gamma[0]
    cdef double* part_dbeta = part + n_groups * D

    if nt == 1:   # no OpenMP team (see threads_for)
        for g in range(n_groups):
            _group_backward(&dout[0, 0], &x[0, 0], &gamma[0], gamma_d, D, g * group,
                            min((g + 1) * group, N), &mean[0], &inv_std[0], ddof, &dx[0, 0],
                            part + g * D, part_dbeta + g * D)
    else:
        for g in prange(n_groups, num_threads=nt, schedule='static'):
            _group_backward(&dout[0, 0], &x[0, 0], &gamma[0], gamma_d, D, g * group,
                            min((g + 1) * group, N), &mean[0], &inv_std[0], ddof, &dx[0, 0],
                            part + g * D, part_dbeta + g * D)

    _add_partials(part, part + D, n_groups - 1, D)
    _add_partials(part_dbeta, part_dbeta + D, n_groups - 1, D)
    for j in range(D):
        dgamma[j] = <floating> part[j]
        dbeta[j] = <floating> part_dbeta[j]
    free(part)
    free(gamma_copy)
    return 0
