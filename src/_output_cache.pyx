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
#
# An output of 16 KiB or more also starts in its page away from the arrays the
# kernel reads (new_output's `near`). A load whose address shares its low 12 bits
# with an older store waits on that store (4K aliasing): with out 48 to 256 bytes
# past x modulo 4 KiB, each store to out[j] held up the load of x a little ahead of j.
# Blocks the C library hands out one after the other land there: the inputs of
# the benchmarks' 512x512 float32 cells, then the output, put out 64-192 bytes past
# x. In cache (Zen 4, one thread) such outputs cost the eval-mode batch-norm
# forward 1.3x, the layer-norm forward 1.17x and its backward 1.17x.

cdef extern from *:
    """
    #define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
    #define NPY_TARGET_VERSION NPY_1_22_API_VERSION
    #include <stdint.h>
    #include <string.h>
    #include <numpy/arrayobject.h>
    #include <pythread.h>

    #define FASTNORM_SLOTS 8
    /* A block is base's allocation of the size and a pad; the array's data starts on
       a line boundary at least 2 bytes in, and the two bytes before the data say how
       far in (FASTNORM_OFFSET) and which pad the block has (FASTNORM_PAGED). An
       output of FASTNORM_PLACED bytes or more has room to start anywhere in a page
       (FASTNORM_PAGE_PAD); a smaller one starts on the first line (FASTNORM_LINE_PAD:
       NumPy's own cache of small blocks keeps serving it). A resized block keeps
       the page's pad once it has it. */
    #define FASTNORM_LINE 64
    #define FASTNORM_PAGE 4096
    #define FASTNORM_LINE_PAD (FASTNORM_LINE + 2)
    #define FASTNORM_PAGE_PAD (FASTNORM_PAGE + FASTNORM_LINE)
    #define FASTNORM_PLACED (16 << 10)
    #define FASTNORM_OFFSET 0x1fff
    #define FASTNORM_PAGED 0x8000
    /* Where in a page an output should not start, past an array it is read with:
       the middle of the stretch whose loads waited on its stores (48-256 bytes). */
    #define FASTNORM_ALIASED 256
    #define FASTNORM_NEAR 2
    #if defined(_MSC_VER)
    #define FASTNORM_THREAD __declspec(thread)
    #else
    #define FASTNORM_THREAD _Thread_local
    #endif
    /* The data of the arrays the next output is read with (0: none), set around an
       allocation by new_output in the allocating thread. */
    static FASTNORM_THREAD uintptr_t fastnorm_near[FASTNORM_NEAR];

    typedef struct { void *p; size_t size; } fastnorm_block;   /* p: the data */

    static struct {
        PyDataMem_Handler *base;    /* NumPy's default: where blocks come from and go */
        PyThread_type_lock lock;
        size_t capacity, held, min_size;
        int n;                      /* blocks[0 .. n): oldest first */
        fastnorm_block blocks[FASTNORM_SLOTS];
        unsigned long long hits, misses;
    } fastnorm_cache;

    /* how far apart two page offsets are, around the page */
    static uintptr_t fastnorm_around(uintptr_t a, uintptr_t b) {
        uintptr_t d = (a - b) % FASTNORM_PAGE;
        return d < FASTNORM_PAGE - d ? d : FASTNORM_PAGE - d;
    }

    /* how near a page offset comes to the aliased spots a and b */
    static uintptr_t fastnorm_score(uintptr_t t, uintptr_t a, uintptr_t b) {
        uintptr_t da = fastnorm_around(t, a), db = fastnorm_around(t, b);
        return da < db ? da : db;
    }

    /* The page offset (a line boundary) for the next output's data: the farthest
       from FASTNORM_ALIASED past each near array's start, the middle of the longer
       way round between those two spots (one spot: half a page on), to the nearer
       of its two lines that is farther from both; FASTNORM_PAGE where none. */
    static uintptr_t fastnorm_page_offset(void) {
        uintptr_t a = fastnorm_near[0], b = fastnorm_near[1], d, mid, lo;
        if (a == 0 && b == 0) return FASTNORM_PAGE;
        if (a == 0) a = b;
        if (b == 0) b = a;
        a = (a + FASTNORM_ALIASED) % FASTNORM_PAGE;
        b = (b + FASTNORM_ALIASED) % FASTNORM_PAGE;
        d = (b - a) % FASTNORM_PAGE;   /* from a on to b */
        mid = d >= FASTNORM_PAGE / 2 ? a + d / 2 : b + (FASTNORM_PAGE - d) / 2;
        lo = mid & ~(uintptr_t) (FASTNORM_LINE - 1);
        if (fastnorm_score(lo + FASTNORM_LINE, a, b) > fastnorm_score(lo, a, b))
            lo += FASTNORM_LINE;
        return lo % FASTNORM_PAGE;
    }

    /* The data's place in the block at raw: the first line boundary at least two
       bytes in, or in a paged block the first at the page offset
       fastnorm_page_offset asks for. */
    static unsigned char *fastnorm_spot(unsigned char *raw, int paged) {
        uintptr_t start = (uintptr_t) raw + 2, at = paged ? fastnorm_page_offset() : FASTNORM_PAGE;
        if (at == FASTNORM_PAGE)
            return (unsigned char *) ((start + FASTNORM_LINE - 1)
                                      & ~(uintptr_t) (FASTNORM_LINE - 1));
        return (unsigned char *) (start + (at - start) % FASTNORM_PAGE);
    }

    static uint16_t fastnorm_header(void *p) {
        uint16_t h;
        memcpy(&h, (unsigned char *) p - 2, 2);
        return h;
    }

    static void fastnorm_mark(unsigned char *p, unsigned char *raw, int paged) {
        uint16_t h = (uint16_t) ((p - raw) | (paged ? FASTNORM_PAGED : 0));
        memcpy(p - 2, &h, 2);
    }

    static void *fastnorm_place(void *raw, int paged) {
        unsigned char *p;
        if (raw == NULL) return NULL;
        p = fastnorm_spot((unsigned char *) raw, paged);
        fastnorm_mark(p, (unsigned char *) raw, paged);
        return p;
    }

    static void *fastnorm_raw(void *p) {
        return (unsigned char *) p - (fastnorm_header(p) & FASTNORM_OFFSET);
    }

    static size_t fastnorm_pad(int paged) {
        return paged ? FASTNORM_PAGE_PAD : FASTNORM_LINE_PAD;
    }

    /* size and its pad, or 0 when that overflows (base then fails as it should) */
    static size_t fastnorm_padded(size_t size, int paged) {
        return size <= (size_t) -1 - fastnorm_pad(paged) ? size + fastnorm_pad(paged) : 0;
    }

    static void fastnorm_release(void *p, size_t size) {
        PyDataMem_Handler *base = fastnorm_cache.base;
        int paged = (fastnorm_header(p) & FASTNORM_PAGED) != 0;
        base->allocator.free(base->allocator.ctx, fastnorm_raw(p), size + fastnorm_pad(paged));
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
        /* placed for this call (a cached block, of min_size or more, has the page's pad) */
        if (p == NULL) return NULL;
        return fastnorm_place(fastnorm_raw(p), (fastnorm_header(p) & FASTNORM_PAGED) != 0);
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
        int paged = size >= FASTNORM_PLACED;
        if (p != NULL || fastnorm_padded(size, paged) == 0) return p;
        return fastnorm_place(
            base->allocator.malloc(base->allocator.ctx, size + fastnorm_pad(paged)), paged);
    }

    static void *fastnorm_calloc(void *ctx, size_t nelem, size_t elsize) {
        PyDataMem_Handler *base = fastnorm_cache.base;
        void *p;
        size_t size;
        int paged;
        if (elsize != 0 && nelem > (size_t) -1 / elsize) return NULL;
        size = nelem * elsize;
        p = fastnorm_take(size);
        if (p != NULL) {
            memset(p, 0, size);
            return p;
        }
        paged = size >= FASTNORM_PLACED;
        if (fastnorm_padded(size, paged) == 0) return NULL;
        return fastnorm_place(
            base->allocator.calloc(base->allocator.ctx, 1, size + fastnorm_pad(paged)), paged);
    }

    /* The data moves with base's realloc, then onto the line where fastnorm_spot
       puts it in the new block (the same offset in, or another). */
    static void *fastnorm_realloc(void *ctx, void *p, size_t size) {
        PyDataMem_Handler *base = fastnorm_cache.base;
        unsigned char *raw, *q;
        size_t offset;
        uint16_t was;
        int paged;
        if (p == NULL) return fastnorm_malloc(ctx, size);
        was = fastnorm_header(p);
        offset = was & FASTNORM_OFFSET;   /* within either pad of the new block */
        paged = (was & FASTNORM_PAGED) != 0 || size >= FASTNORM_PLACED;
        if (fastnorm_padded(size, paged) == 0) return NULL;
        raw = (unsigned char *) base->allocator.realloc(base->allocator.ctx, fastnorm_raw(p),
                                                         size + fastnorm_pad(paged));
        if (raw == NULL) return NULL;   /* p is as it was */
        q = fastnorm_spot(raw, paged);
        if ((size_t) (q - raw) != offset) memmove(q, raw + offset, size);
        fastnorm_mark(q, raw, paged);   /* after the move: those bytes may hold data before it */
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

    /* the next output's near arrays: up to FASTNORM_NEAR NumPy arrays' data (others: none) */
    static void fastnorm_set_near(PyObject *a, PyObject *b) {
        PyObject *arrays[FASTNORM_NEAR] = {a, b};
        int k;
        for (k = 0; k < FASTNORM_NEAR; k++)
            fastnorm_near[k] = arrays[k] != NULL && PyArray_Check(arrays[k])
                ? (uintptr_t) PyArray_DATA((PyArrayObject *) arrays[k]) : 0;
    }
    """
    int cache_init "fastnorm_cache_init"(size_t capacity, size_t min_size) except -1
    size_t cache_resize "fastnorm_cache_resize"(size_t capacity) noexcept nogil
    object cache_handler "fastnorm_cache_handler"()
    void set_near "fastnorm_set_near"(object a, object b)
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


def new_output(shape, dtype, near=None, near_too=None):
    """np.empty(shape, dtype), its data on a cache line, whose block is cached when
    the array frees it; a block of that size freed before is taken first. Blocks
    under MIN_SIZE bytes come from NumPy's handler and go back to it. near,
    near_too: the arrays the kernel reads while it writes the output (or None);
    the data starts in its page as far as it can from where their loads would wait
    on its stores."""
    previous = PyDataMem_SetHandler(_HANDLER)
    set_near(near, near_too)
    try:
        return np.empty(shape, dtype)
    finally:
        set_near(None, None)
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
