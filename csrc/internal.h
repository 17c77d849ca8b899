/* internal.h - declarations shared between the library's source files.  Not installed. */
#ifndef LL_INTERNAL_H
#define LL_INTERNAL_H

#include "lazylayer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define LL_HIDDEN __attribute__((visibility("hidden")))

/* ---- host callbacks: what a read or write callback's return value means (see
 * ll_read_fn).  LL__ERR_LAST is the last status code; keep it so when adding one. */
#define LL__ERR_LAST LL_ERR_CACHE
static inline int ll__callback_status(int rc) {
    if (rc == 0) return LL_OK;
    return rc <= LL_ERR_NOMEM && rc >= LL__ERR_LAST ? rc : LL_ERR_IO;
}

/* ---- option structs: the size of their first version (lazylayer 0.2), the
 * smallest struct_size accepted.  Never change these: add fields at the end. */
#define LL__END_OF(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))
#define LL__READER_OPTIONS_V1 LL__END_OF(ll_reader_options, whole_frames)
#define LL__WRITER_OPTIONS_V1 LL__END_OF(ll_writer_options, pool)

/* ll_*_options_init: copy the library's `defaults` (a whole struct of `size`
 * bytes) into the caller's struct of `struct_size` bytes, zero what lies past
 * the library's own fields, and record struct_size (the first field). */
static inline int ll__options_init(void *opt, size_t struct_size, const void *defaults, size_t size,
                                   size_t v1) {
    if (!opt || struct_size < v1) return LL_ERR_ARG;
    memcpy(opt, defaults, struct_size < size ? struct_size : size);
    if (struct_size > size) memset((char *)opt + size, 0, struct_size - size);
    memcpy(opt, &struct_size, sizeof struct_size);
    return LL_OK;
}

/* ll_*_create: copy the caller's options (as many bytes as both it and the
 * library know) over `dst`, which holds the defaults.  LL_ERR_ARG if the
 * caller's struct_size is unset or below the first version's size. */
static inline int ll__options_copy(void *dst, size_t size, const void *opt, size_t v1) {
    size_t struct_size;
    memcpy(&struct_size, opt, sizeof struct_size);
    if (struct_size < v1) return LL_ERR_ARG;
    memcpy(dst, opt, struct_size < size ? struct_size : size);
    memcpy(dst, &size, sizeof size); /* dst is a whole struct of the library's size */
    return LL_OK;
}

/* ---- little-endian helpers (the format is little-endian on every host) */
static inline uint32_t ll__le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline void ll__put_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

/* ---- seek table */
struct ll_seektable {
    uint32_t n;            /* frames */
    int has_checksums;
    uint32_t max_d_size;
    uint64_t *c_off;       /* n + 1 entries: c_off[n] = compressed size of all frames */
    uint64_t *d_off;       /* n + 1 entries: d_off[n] = uncompressed size */
    uint32_t *checksum;    /* n entries, or NULL */
};

/* ---- checksum of a frame's data as the seek table stores it */
LL_HIDDEN uint32_t ll__frame_checksum(const void *data, size_t size);

/* ---- big buffers (cache.c): decoded frames (cache entries) and the reader's
 * workspace buffers.  They never come from malloc's arenas, where glibc keeps
 * freed memory per thread and the process's RSS creeps: a buffer of at least
 * LL__BUF_MMAP_MIN bytes is mmap'd (its capacity rounded up to LL__BUF_ROUND),
 * and freed into a free list bounded by a byte limit, beyond which it is
 * munmap'd (back to the OS).  Smaller ones are malloc'd.  The capacity decides
 * which (below LL__BUF_MMAP_MIN: malloc), so a buffer goes back with its cap.
 * Thread-safe: one mutex per pool.  A NULL pool maps and unmaps every time. */
#define LL__BUF_MMAP_MIN (64u << 10)
#define LL__BUF_ROUND (64u << 10)
typedef struct ll__freebuf ll__freebuf;
typedef struct {
    pthread_mutex_t lock;
    ll__freebuf *head;      /* most recently freed first */
    uint64_t held;          /* bytes in the free list */
    uint64_t limit;         /* most bytes the free list keeps */
} ll__bufpool;
/* The capacity ll__buf_get gives a buffer of `size` bytes (>= size). */
LL_HIDDEN size_t ll__buf_cap(size_t size);
/* A buffer of at least `size` bytes; *cap gets its capacity: ll__buf_cap(size), or
 * that of a free buffer reused, which is at most max_cap and at most twice size
 * (max_cap = ll__buf_cap(size): only an exact fit).  NULL when memory is short.
 * Contents undefined. */
LL_HIDDEN uint8_t *ll__buf_get(ll__bufpool *p, size_t size, size_t max_cap, size_t *cap);
/* Give back a buffer from ll__buf_get (NULL is ignored). */
LL_HIDDEN void ll__buf_put(ll__bufpool *p, uint8_t *buf, size_t cap);
/* The pool of a cache (for its readers' workspaces); NULL for a NULL cache. */
LL_HIDDEN ll__bufpool *ll__cache_bufpool(ll_cache *c);

/* ---- block cache (cache.c).  Entries are pinned while a reader holds them. */
typedef struct ll__entry ll__entry;
struct ll__entry {
    uint64_t source;
    uint32_t frame;
    uint32_t valid;        /* bytes of the frame decoded, from its start */
    uint32_t cap;          /* bytes allocated at data */
    int verified;          /* decoded whole and its seek-table checksum checked */
    int linked;            /* still in the table (0: unlinked, freed at last release) */
    unsigned pins;
    uint8_t *data;
    ll__entry *hnext;      /* hash chain */
    ll__entry *lprev, *lnext; /* LRU list: head = most recent */
};

/* Find (source, frame) holding at least `need` decoded bytes (and verified,
 * if `need_verified`); pinned on success. */
LL_HIDDEN ll__entry *ll__cache_get(ll_cache *c, uint64_t source, uint32_t frame, uint32_t need,
                                   int need_verified);
/* Reserve `size` bytes of budget and return a buffer of at least that capacity
 * (maybe recycled from an evicted frame).  NULL when the budget cannot be freed
 * (everything pinned) or memory is short: the caller then decodes uncached. */
LL_HIDDEN uint8_t *ll__cache_alloc(ll_cache *c, uint32_t size, uint32_t *cap);
/* Give back a buffer from ll__cache_alloc that will not be inserted. */
LL_HIDDEN void ll__cache_discard(ll_cache *c, uint8_t *data, uint32_t cap);
/* Insert a decoded frame (takes ownership of data); returns the pinned entry
 * that now serves (source, frame): the new one, or an existing one at least as
 * good (as long and as verified).  A verified entry is never replaced by an
 * unverified one, so readers that do not verify cannot poison readers that do. */
LL_HIDDEN ll__entry *ll__cache_put(ll_cache *c, uint64_t source, uint32_t frame, uint8_t *data,
                                   uint32_t cap, uint32_t valid, int verified);
LL_HIDDEN void ll__cache_release(ll_cache *c, ll__entry *e);
LL_HIDDEN uint64_t ll__cache_new_source(ll_cache *c);
LL_HIDDEN void ll__cache_count_bypass(ll_cache *c);

/* ---- worker pool (pool.c) */
typedef struct ll__worker ll__worker;
/* Per-thread scratch a task may use: created lazily, kept for the thread's life. */
LL_HIDDEN void *ll__worker_dctx(ll__worker *w);   /* ZSTD_DCtx*, NULL on OOM */
LL_HIDDEN void *ll__worker_cctx(ll__worker *w);   /* ZSTD_CCtx*, NULL on OOM */
typedef void (*ll__task_fn)(void *arg, size_t index, ll__worker *w);
/* A set of n tasks fn(arg, i, worker) handed to a pool.  Callers embed it. */
typedef struct ll__batch {
    ll__task_fn fn;
    void *arg;
    size_t n;
    _Atomic size_t next;     /* next task index to hand out */
    size_t done;             /* tasks finished, under the pool lock */
    struct ll__batch *qnext;
} ll__batch;
/* Run fn(arg, i, w) for i in [0, n) on the pool's threads and on the calling
 * thread (which uses `self` as its worker scratch); returns when all are done.
 * pool may be NULL: everything runs on the caller. */
LL_HIDDEN void ll__pool_run(ll_pool *p, ll__worker *self, ll__task_fn fn, void *arg, size_t n);
/* The same in two halves: submit starts the pool's workers on the batch and
 * returns at once; wait makes the caller work on what is left, then waits for
 * the rest.  Every submit must be followed by a wait on the same batch. */
LL_HIDDEN void ll__pool_submit(ll_pool *p, ll__batch *b, ll__task_fn fn, void *arg, size_t n);
LL_HIDDEN void ll__pool_wait(ll_pool *p, ll__batch *b, ll__worker *self);
/* Worker scratch for threads outside the pool (reader workspaces, writers). */
LL_HIDDEN ll__worker *ll__worker_new(void);
LL_HIDDEN void ll__worker_free(ll__worker *w);

#endif
