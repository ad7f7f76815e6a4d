# A NumPy memory handler (NEP 49) for fastnorm's large outputs: a block freed
# by its array is kept for the next output of the same size, instead of going
# back to the system. An output of 32 MiB or more is mapped afresh by the C
# library on every allocation, and so are smaller ones often enough: each call
# then pays for faulting its pages in (a float64 layer-norm backward of
# 4096x1024 took 8.8 ms allocating its dx, 4.5 ms into a buffer it was given).
#
# Only arrays allocated by new_output() carry this handler; the blocks come from
# NumPy's default handler and go back to it, so NumPy's own hugepage advice
# applies to them. The cache holds at most SLOTS blocks and `capacity` bytes: a
# block freed when it is full pushes the oldest out, and a block larger than the
# capacity goes back at once. A take looks for the newest block of its size.
#
# Every block the handler hands out starts on a cache line (64 bytes): the C
# library's large blocks start 16 bytes past one, so a 64-byte store into them
# splits over two lines, and batch norm's streamed sweeps (src/stream.pxd) carry a
# partial line through every chunk (Zen 4, 4096x1024 float32 from memory, one
# thread: out on a line against 16 bytes past it, x where NumPy put it: the
# eval-mode batch-norm forward 1.13x, the layer-norm forward 1.09x).

cdef extern from *:
    """
    #define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
    #define NPY_TARGET_VERSION NPY_1_22_API_VERSION
    #include <stdint.h>
    #include <string.h>
    #include <numpy/arrayobject.h>
    #include <pythread.h>

    #define FASTNORM_SLOTS 8
    /* A block is base's allocation of size + FASTNORM_LINE bytes; the array's data
       starts at the first line boundary past its first byte, and the byte before
       the data says how far past (1 to FASTNORM_LINE). */
    #define FASTNORM_LINE 64

    typedef struct { void *p; size_t size; } fastnorm_block;   /* p: the data */

    static struct {
        PyDataMem_Handler *base;    /* NumPy's default: where blocks come from and go */
        PyThread_type_lock lock;
        size_t capacity, held, min_size;
        int n;                      /* blocks[0 .. n): oldest first */
        fastnorm_block blocks[FASTNORM_SLOTS];
        unsigned long long hits, misses;
    } fastnorm_cache;

    /* the first line boundary past raw's first byte */
    static unsigned char *fastnorm_line_past(void *raw) {
        return (unsigned char *) (((uintptr_t) raw + FASTNORM_LINE) & ~(uintptr_t) (FASTNORM_LINE - 1));
    }

    static void *fastnorm_on_line(void *raw) {
        unsigned char *p;
        if (raw == NULL) return NULL;
        p = fastnorm_line_past(raw);
        p[-1] = (unsigned char) (p - (unsigned char *) raw);
        return p;
    }

    static void *fastnorm_raw(void *p) {
        return (unsigned char *) p - ((unsigned char *) p)[-1];
    }

    /* size + FASTNORM_LINE, or 0 when that overflows (base then fails as it should) */
    static size_t fastnorm_padded(size_t size) {
        return size <= (size_t) -1 - FASTNORM_LINE ? size + FASTNORM_LINE : 0;
    }

    static void fastnorm_release(void *p, size_t size) {
        PyDataMem_Handler *base = fastnorm_cache.base;
        base->allocator.free(base->allocator.ctx, fastnorm_raw(p), size + FASTNORM_LINE);
    }

    static void *fastnorm_take(size_t size) {
        void *p = NULL;
        int k;
        if (size < fastnorm_cache.min_size) return NULL;
        PyThread_acquire_lock(fastnorm_cache.lock, WAIT_LOCK);
        for (k = fastnorm_cache.n - 1; k >= 0; k--) {
            if (fastnorm_cache.blocks[k].size == size) {
                p = fastnorm_cache.blocks[k].p;
                memmove(fastnorm_cache.blocks + k, fastnorm_cache.blocks + k + 1,
                        (fastnorm_cache.n - k - 1) * sizeof(fastnorm_block));
                fastnorm_cache.n--;
                fastnorm_cache.held -= size;
                break;
            }
        }
        if (p != NULL) fastnorm_cache.hits++; else fastnorm_cache.misses++;
        PyThread_release_lock(fastnorm_cache.lock);
        return p;
    }

    /* Frees the oldest blocks until `room` more bytes and one more block fit (room 0
       and no block: all of them); the caller holds the lock. */
    static void fastnorm_evict(size_t room, int slots) {
        while (fastnorm_cache.n > 0 && (fastnorm_cache.n + slots > FASTNORM_SLOTS
                                        || fastnorm_cache.held + room > fastnorm_cache.capacity)) {
            fastnorm_block oldest = fastnorm_cache.blocks[0];
            memmove(fastnorm_cache.blocks, fastnorm_cache.blocks + 1,
                    (fastnorm_cache.n - 1) * sizeof(fastnorm_block));
            fastnorm_cache.n--;
            fastnorm_cache.held -= oldest.size;
            fastnorm_release(oldest.p, oldest.size);
        }
    }

    static void *fastnorm_malloc(void *ctx, size_t size) {
        PyDataMem_Handler *base = fastnorm_cache.base;
        void *p = fastnorm_take(size);
        if (p != NULL || fastnorm_padded(size) == 0) return p;
        return fastnorm_on_line(base->allocator.malloc(base->allocator.ctx, size + FASTNORM_LINE));
    }

    static void *fastnorm_calloc(void *ctx, size_t nelem, size_t elsize) {
        PyDataMem_Handler *base = fastnorm_cache.base;
        void *p;
        size_t size;
        if (elsize != 0 && nelem > (size_t) -1 / elsize) return NULL;
        size = nelem * elsize;
        p = fastnorm_take(size);
        if (p != NULL) {
            memset(p, 0, size);
            return p;
        }
        if (fastnorm_padded(size) == 0) return NULL;
        return fastnorm_on_line(base->allocator.calloc(base->allocator.ctx, 1, size + FASTNORM_LINE));
    }

    /* The data moves with base's realloc; where the new block puts the line boundary
       at another distance from its start, the data is moved onto it. */
    static void *fastnorm_realloc(void *ctx, void *p, size_t size) {
        PyDataMem_Handler *base = fastnorm_cache.base;
        unsigned char *raw, *q;
        size_t offset;
        if (p == NULL) return fastnorm_malloc(ctx, size);
        if (fastnorm_padded(size) == 0) return NULL;
        offset = ((unsigned char *) p)[-1];
        raw = (unsigned char *) base->allocator.realloc(base->allocator.ctx, fastnorm_raw(p),
                                                         size + FASTNORM_LINE);
        if (raw == NULL) return NULL;   /* p is as it was */
        q = fastnorm_line_past(raw);
        if ((size_t) (q - raw) != offset) memmove(q, raw + offset, size);
        q[-1] = (unsigned char) (q - raw);   /* after the move: the byte may hold data before it */
        return q;
    }

    static void fastnorm_free(void *ctx, void *p, size_t size) {
        if (p == NULL) return;
        if (size >= fastnorm_cache.min_size) {
            PyThread_acquire_lock(fastnorm_cache.lock, WAIT_LOCK);
            if (size <= fastnorm_cache.capacity) {
                fastnorm_evict(size, 1);
                fastnorm_cache.blocks[fastnorm_cache.n].p = p;
                fastnorm_cache.blocks[fastnorm_cache.n].size = size;
                fastnorm_cache.n++;
                fastnorm_cache.held += size;
                p = NULL;
            }
            PyThread_release_lock(fastnorm_cache.lock);
            if (p == NULL) return;
        }
        fastnorm_release(p, size);
    }

    static PyDataMem_Handler fastnorm_handler = {
        "fastnorm_output_cache", 1,
        {NULL, fastnorm_malloc, fastnorm_calloc, fastnorm_realloc, fastnorm_free}
    };

    /* 0, or -1 with a Python exception set. */
    static int fastnorm_cache_init(size_t capacity, size_t min_size) {
        if (_import_array() < 0) return -1;
        fastnorm_cache.base = (PyDataMem_Handler *) PyCapsule_GetPointer(
            PyDataMem_DefaultHandler, "mem_handler");
        if (fastnorm_cache.base == NULL) return -1;
        fastnorm_cache.lock = PyThread_allocate_lock();
        if (fastnorm_cache.lock == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        fastnorm_cache.capacity = capacity;
        fastnorm_cache.min_size = min_size;
        return 0;
    }

    static size_t fastnorm_cache_resize(size_t capacity) {
        size_t before;
        PyThread_acquire_lock(fastnorm_cache.lock, WAIT_LOCK);
        before = fastnorm_cache.capacity;
        fastnorm_cache.capacity = capacity;
        fastnorm_evict(0, 0);
        PyThread_release_lock(fastnorm_cache.lock);
        return before;
    }

    static PyObject *fastnorm_cache_handler(void) {
        return PyCapsule_New(&fastnorm_handler, "mem_handler", NULL);
    }
    """
    int cache_init "fastnorm_cache_init"(size_t capacity, size_t min_size) except -1
    size_t cache_resize "fastnorm_cache_resize"(size_t capacity) noexcept nogil
    object cache_handler "fastnorm_cache_handler"()
    object PyDataMem_SetHandler(object handler)
    struct Cache:
        size_t capacity, held, min_size
        int n
        unsigned long long hits, misses
    Cache state "fastnorm_cache"
    const int SLOTS "FASTNORM_SLOTS"

import numpy as np

DEFAULT_CAPACITY = 256 << 20   # bytes of freed outputs kept at most
MIN_SIZE = 1 << 20             # smaller blocks: the C library's heap reuses them well

cache_init(DEFAULT_CAPACITY, MIN_SIZE)
_HANDLER = cache_handler()


def new_output(shape, dtype):
    """np.empty(shape, dtype), its data on a cache line, whose block is cached when
    the array frees it; a block of that size freed before is taken first. Blocks
    under MIN_SIZE bytes come from NumPy's handler and go back to it."""
    previous = PyDataMem_SetHandler(_HANDLER)
    try:
        return np.empty(shape, dtype)
    finally:
        PyDataMem_SetHandler(previous)


def set_output_cache(Py_ssize_t max_bytes):
    """Keep at most max_bytes of fastnorm's freed outputs for its next ones (0: none;
    what is held beyond is freed now). Returns the capacity before (256 MiB at import)."""
    if max_bytes < 0:
        raise ValueError(f"the output cache's capacity must be >= 0 bytes, got {max_bytes}")
    return cache_resize(max_bytes)


def output_cache_info():
    """What the output cache holds now (bytes, blocks), its limits, and how many of
    fastnorm's outputs of min_size bytes or more took a cached block (hits) or not."""
    return {"capacity": state.capacity, "held_bytes": state.held, "blocks": state.n,
            "max_blocks": SLOTS, "min_size": state.min_size, "hits": state.hits,
            "misses": state.misses}
