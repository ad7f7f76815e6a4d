# Stores that bypass the cache, for outputs too large to be read again from it:
# a plain store first reads the line it writes (one more stream from memory).
# Only where the values are stored, never how they are computed: results are
# the same bits with or without them. SSE2 (every x86-64 build); elsewhere plain
# stores.

cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #define FASTNORM_STREAM_ALIGN 64   /* a cache line: a line is streamed whole or stored plainly, never both */
    static inline void fastnorm_stream16_f32(float *dst, const float *src) {
        for (int k = 0; k < 16; k += 4) _mm_stream_ps(dst + k, _mm_loadu_ps(src + k));
    }
    static inline void fastnorm_stream16_f64(double *dst, const double *src) {
        for (int k = 0; k < 16; k += 2) _mm_stream_pd(dst + k, _mm_loadu_pd(src + k));
    }
    static inline void fastnorm_stream_fence(void) { _mm_sfence(); }
    #else
    #define FASTNORM_STREAM_ALIGN 1
    static inline void fastnorm_stream16_f32(float *dst, const float *src) {
        for (int k = 0; k < 16; k++) dst[k] = src[k];
    }
    static inline void fastnorm_stream16_f64(double *dst, const double *src) {
        for (int k = 0; k < 16; k++) dst[k] = src[k];
    }
    static inline void fastnorm_stream_fence(void) {}
    #endif
    """
    const int STREAM_ALIGN "FASTNORM_STREAM_ALIGN"   # bytes a streamed block's start is aligned to
    void stream16_f32 "fastnorm_stream16_f32"(float* dst, const float* src) noexcept nogil
    void stream16_f64 "fastnorm_stream16_f64"(double* dst, const double* src) noexcept nogil
    void stream_fence "fastnorm_stream_fence"() noexcept nogil   # the streamed stores seen before what follows

cdef enum:
    STREAM_BYTES = 32 * 1024 * 1024   # outputs of this size and more are streamed,
    STREAM_RUN = 256                  # in runs of this many elements and more (the
                                      # lines at a run's ends are stored plainly)
