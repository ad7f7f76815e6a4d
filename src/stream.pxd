# Stores that bypass the cache, for outputs too large to stay in it: a plain
# store first reads each line of the output into cache (read for ownership), so
# a forward would move x in, out in and out back; a streaming store only writes.
# The values are computed as before, a short chunk at a time into L1, and only
# stored differently, so they are bitwise the same. A segment of the output
# (a task's rows, written in order) streams its whole 64-byte lines and stores
# its first and last partial lines plainly: a line is never written both ways,
# and a line half-written by a streaming store never goes to memory. One C
# source for every build: SSE2's 16-byte streaming stores are in every x86-64
# baseline, AVX builds store 32 bytes; other machines store plainly.

from cython cimport floating

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__AVX__)
    #include <immintrin.h>
    #elif defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    #define FASTNORM_LINE 64
    /* Stores buf[0..n) at dst: plainly up to dst's first line boundary (a segment's
       start), then whole lines streamed; the rest (under a line) plainly when last,
       else moved to buf's front for the next call. Returns the count stored. */
    #define FASTNORM_STREAM_LINES(T, STREAM, LOAD, STEP)                                  \
    static inline Py_ssize_t fastnorm_stream_lines_##T(T *dst, T *buf, Py_ssize_t n,  \
                                                        int last) {                  \
        Py_ssize_t j = 0, lines;                                                      \
        for (; j < n && ((uintptr_t) (dst + j) % FASTNORM_LINE) != 0; j++)            \
            dst[j] = buf[j];                                                          \
        lines = j + (n - j) / (FASTNORM_LINE / sizeof(T)) * (FASTNORM_LINE / sizeof(T)); \
        for (; j < lines; j += STEP) STREAM(dst + j, LOAD(buf + j));                  \
        if (last) {                                                                   \
            for (; j < n; j++) dst[j] = buf[j];                                       \
            return n;                                                                 \
        }                                                                             \
        if (n > j) memmove(buf, buf + j, (n - j) * sizeof(T));  /* no call per line-sized row */ \
        return j;                                                                     \
    }
    #if defined(__AVX__)
    FASTNORM_STREAM_LINES(float, _mm256_stream_ps, _mm256_loadu_ps, 8)
    FASTNORM_STREAM_LINES(double, _mm256_stream_pd, _mm256_loadu_pd, 4)
    #elif defined(__SSE2__)
    FASTNORM_STREAM_LINES(float, _mm_stream_ps, _mm_loadu_ps, 4)
    FASTNORM_STREAM_LINES(double, _mm_stream_pd, _mm_loadu_pd, 2)
    #else
    #define FASTNORM_PLAIN(dst, value) (*(dst) = (value))
    #define FASTNORM_LOAD(src) (*(src))
    FASTNORM_STREAM_LINES(float, FASTNORM_PLAIN, FASTNORM_LOAD, 1)
    FASTNORM_STREAM_LINES(double, FASTNORM_PLAIN, FASTNORM_LOAD, 1)
    #endif
    /* Outputs of this many bytes and more are streamed (streams, streams_rows): past
       the 2 MiB of a server core's L2, which they and their input no longer share
       (docs/performance.md). Set from Python by set_stream_bytes; the same bits
       whatever it is, since only where the values are stored changes. */
    static Py_ssize_t fastnorm_stream_bytes = (Py_ssize_t) 2 << 20;
    /* Streaming stores are weakly ordered: a task fences its own before it ends, so
       that they are visible when the caller (or another thread) reads out. */
    static inline void fastnorm_store_fence(void) {
    #if defined(__SSE2__)
        _mm_sfence();
    #endif
    }
    """
    Py_ssize_t _lines_float "fastnorm_stream_lines_float"(float* dst, float* buf, Py_ssize_t n,
                                                          bint last) noexcept nogil
    Py_ssize_t _lines_double "fastnorm_stream_lines_double"(double* dst, double* buf, Py_ssize_t n,
                                                            bint last) noexcept nogil
    void store_fence "fastnorm_store_fence"() noexcept nogil
    Py_ssize_t stream_bytes "fastnorm_stream_bytes"   # outputs of this size on are streamed


cdef enum:
    STREAM_CHUNK = 128       # values computed into L1 at a time: 8 or 16 lines, so that the
                             # loads of the next chunk overlap the stores of this one
                             # (64 measured 3-11% slower on the Zen 4, 256 lost on float64)
    STREAM_BUF = STREAM_CHUNK + 16   # a chunk and what is left of a line (16 float32 values)
    STREAM_TASK = 65536      # values per task at least (rows grouped), one fence each
    STREAM_ROW = 256         # rows (or row pieces) streamed have at least this many values
    # batch norm's dx (column_dx) streams from 2 times stream_bytes (4 MiB): plain
    # stores, which leave it in L3 for its reader, gained at 2 MiB (Zen 4, float32
    # and float64, rows of 512 to 2048 values: one thread 0.96-1.27x, 1.1x or more
    # in most; two 1.02-2.11x); at 4 MiB one thread ran 0.77-1.13x (two
    # 0.94-2.14x), from 6 MiB on 0.68-2.5x; at 8 MiB, with the output cache,
    # plain ran 0.85-0.98x at one thread, though 1.16-2.47x at two at 32768x64 float32
    COLUMNS_DX_STREAM_TIMES = 2
    # and its out (normalize_columns) from 6 times (12 MiB): with outputs reused
    # from the output cache, x and an out of 4 to 8 MiB stay in L3 from call to
    # call. Plain/streamed, the train forward at 4-8 MiB: one thread 0.96-2.01x
    # (1.06x or more in most cells), two 1.14-1.49x; at 12 MiB 0.84-1.50x
    COLUMNS_OUT_STREAM_TIMES = 6


cdef inline bint streams(Py_ssize_t N, Py_ssize_t D, Py_ssize_t itemsize,
                         Py_ssize_t times=1) noexcept nogil:
    """Whether an (N, D) output (a forward's out, layer norm's dx) is written with
    streaming stores: its size against `times` stream_bytes, and its rows' length
    (rows shorter than STREAM_ROW pay more per row in the segment's bookkeeping
    than the stores save)."""
    return streams_rows(N, D, itemsize, times) and D >= STREAM_ROW


cdef inline bint streams_rows(Py_ssize_t N, Py_ssize_t D, Py_ssize_t itemsize,
                              Py_ssize_t times=1) noexcept nogil:
    """Whether batch norm's (N, D) output (out, dx) is streamed: its size against
    `times` stream_bytes (divided by times, never stream_bytes multiplied: it may be
    set to any size). A task streams its rows as one contiguous segment, rows
    narrower than a chunk several to a chunk, so short rows cost no more
    bookkeeping than long ones (unlike streams)."""
    return N * D * itemsize // times >= stream_bytes


cdef inline Py_ssize_t chunk_values(Py_ssize_t have, Py_ssize_t left) noexcept nogil:
    """Values a row's streamed sweep computes next into its buffer, of the `left` still
    to come: the rest where it fits beside the `have` the buffer holds (STREAM_BUF),
    else those that fill it to STREAM_CHUNK (a whole number of lines). From the
    segment's first line boundary on, a chunk then ends on a line of the output,
    and the next is computed at the buffer's start, on a line as its values are in
    the output. A fixed chunk left values off the lines chunk after chunk where the
    output is not on one (an out= from NumPy: 16 bytes past), and the streaming
    loads of them spanned two of the compute's stores. Zen 4, out= 16 bytes past a
    line, one build: layer norm's forward 0.99-1.15x, its backward 1.00-1.57x (a
    fixed chunk ran 2x as long in some processes); on a line 0.99-1.02x. Batch
    norm's sweeps keep the fixed chunk: 0.93-1.03x by this rule, the first chunk of
    each row ending in a scalar tail."""
    if have + left <= STREAM_BUF:
        return left
    return STREAM_CHUNK - have


cdef inline Py_ssize_t rows_per_task(Py_ssize_t D) noexcept nogil:
    """Rows of D values a streaming task takes: at least STREAM_TASK values in all."""
    return max(1, STREAM_TASK // max(D, 1))


cdef inline Py_ssize_t stream_lines(floating* dst, floating* buf, Py_ssize_t n,   # IN buf (n,)
                                    bint last) noexcept nogil:
    """Stores buf[0..n) of a segment at dst (see the C above); the count stored."""
    if floating is float:
        return _lines_float(dst, buf, n, last)
    else:
        return _lines_double(dst, buf, n, last)
