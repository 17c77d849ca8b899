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
 * ll_read_fn).  LL__ERR_LAST is the last status code; keep it so when adding one (and
 * csrc/fuzz/fuzz_sockhost.c's bound). */
#define LL__ERR_LAST LL_ERR_UNSUPPORTED
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

/* Byte strings in order: by their bytes, then the shorter first (names: xattrs' sort). */
static inline int ll__bytes_cmp(const void *a, size_t alen, const void *b, size_t blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c) return c;
    return alen == blen ? 0 : alen < blen ? -1 : 1;
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
/* The same; *present (if not NULL) tells whether the frame has an entry at all,
 * even one too short or not verified enough to serve this read. */
LL_HIDDEN ll__entry *ll__cache_get_ex(ll_cache *c, uint64_t source, uint32_t frame, uint32_t need,
                                      int need_verified, int *present);
/* Single flight for local loads: a reader that misses a frame claims it before
 * loading it, so that readers of the same frame at the same time wait for that
 * one load instead of each reading, hashing and decoding it.  `slow`: the
 * claimant may call its host (fetch over the network, through a callback that
 * may need a GIL).  LL__CLAIM_MINE: load it, put it, then
 * ll__cache_unclaim(*slot) (*slot -1 when the table was full: nothing to
 * release).  LL__CLAIM_LOADED: a claimant that reads local storage only held it
 * and has let go: look in the cache again.  LL__CLAIM_BUSY: a slow claimant
 * holds it; nobody waits for those (a thread waiting on a host callback that
 * waits on a GIL held by a thread faulting on our own mount would never end):
 * the caller loads it itself, or (a local-only reader) answers LL_ERR_MISS.
 * Claims are held for one frame's load at a time, never nested. */
enum { LL__CLAIM_BUSY = -1, LL__CLAIM_LOADED = 0, LL__CLAIM_MINE = 1 };
LL_HIDDEN int ll__cache_claim(ll_cache *c, uint64_t source, uint32_t frame, int slow, int *slot);
LL_HIDDEN void ll__cache_unclaim(ll_cache *c, int slot);
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

/* ---- disk cache and image (diskcache.c, image.c)
 *
 * ll__index_set_release (index.c), used by diskcache.c: ll_diskcache_load_index maps an index file, opens it
 * with ll_index_open_buffer(copy = 0) and hands the index the mapping and the
 * descriptor holding the file's shared flock (the pin) through this hook:
 * ll_index_free(idx) frees the index and then calls release(arg), once.  Called
 * at most once per index, right after ll_index_open_buffer, before the index
 * is shared with other threads. */
LL_HIDDEN void ll__index_set_release(ll_index *idx, void (*release)(void *arg), void *arg);

/* ll_diskcache_get that also says (*corrupt = 1) when the entry was there but
 * failed its sha256 (and was deleted if nobody else used it), for
 * ll_image_stats.digest_errors.  corrupt may be NULL. */
LL_HIDDEN int ll__diskcache_get(ll_diskcache *dc, const uint8_t sha256[32], void *dst, size_t size,
                                int *corrupt);
/* The same; `trust` 1 lets the disk cache's verified-file memo skip the sha256
 * of a file this process hashed right recently and that is unchanged since
 * (diskcache.c, ll__diskcache_get_ex; ll_image_options.disk_verify_memo). */
LL_HIDDEN int ll__diskcache_get_ex(ll_diskcache *dc, const uint8_t sha256[32], void *dst, size_t size,
                                   int *corrupt, int trust);

/* A reader's internal read callback (image.c's): as ll_read_fn, and *local set
 * to 1 when every byte came from local storage (the disk cache), where fetching
 * a frame again costs less than decoding all of it: a read covering part of
 * such a frame then decodes only the prefix it needs even with whole_frames
 * (whole_frames stays for bytes that came over the network).  Set once, right
 * after ll_reader_create, before the reader is shared; used for reads covering
 * part of one frame (whole frames are decoded whole anyway). */
typedef int (*ll__read_ex_fn)(void *opaque, uint64_t offset, size_t size, void *dst, int *local);
LL_HIDDEN void ll__reader_set_read_ex(ll_reader *r, ll__read_ex_fn read_ex);
/* The reader's loads read local storage only (its callback answers LL_ERR_MISS
 * for anything else): it never waits for a frame another reader is fetching
 * over the network (LL_ERR_MISS instead), and others may wait for its loads.
 * Set once, right after ll_reader_create, before the reader is shared. */
LL_HIDDEN void ll__reader_set_local_only(ll_reader *r);
/* The reader's frames are raw (LL_CODEC_RAW): each is its data as is, copied
 * instead of decoded; the table's compressed sizes equal its sizes (checked by
 * the index).  Set once, right after ll_reader_create, before the reader is shared. */
LL_HIDDEN void ll__reader_set_raw(ll_reader *r);

#define LL__IMAGE_OPTIONS_V1 LL__END_OF(ll_image_options, store_fetched)

/* ---- index, TOC and JSON (index.c, toc.c, json.c, oci.c)
 *
 * json.c: a single-pass, bounded JSON pull parser over a mutable buffer (strings
 * are decoded in place and NUL-terminated there).  Strict RFC 8259, plus the
 * three tokens Python's json also reads (NaN, Infinity, -Infinity), which a
 * caller accepts only where Python's readers do (a TOC's mtime).  Limits: depth
 * LL__JSON_MAX_DEPTH, at most max_values values.  Errors: LL_ERR_FORMAT or
 * LL_ERR_LIMIT with a message naming the byte offset. */
#define LL__JSON_MAX_DEPTH 64
enum {
    LL__J_ERROR = -1, LL__J_EOF = 0, LL__J_OBJ, LL__J_OBJ_END, LL__J_ARR, LL__J_ARR_END,
    LL__J_KEY, LL__J_STR, LL__J_NUM, LL__J_TRUE, LL__J_FALSE, LL__J_NULL
};
/* ll__jtok.num: what a number token holds */
#define LL__JN_NEG 1     /* a leading '-' */
#define LL__JN_FRAC 2    /* a '.' part */
#define LL__JN_EXP 4     /* an exponent */
#define LL__JN_NAN 8     /* NaN */
#define LL__JN_INF 16    /* Infinity or -Infinity */
typedef struct {
    uint8_t *start, *p, *end;
    uint64_t objs;        /* bit d set: the container at depth d+1 is an object */
    unsigned depth;
    int expect;           /* what may come next (json.c) */
    uint64_t values, max_values;
    int status;           /* LL_OK, or the first error */
    char msg[200];        /* its message */
} ll__json;
typedef struct {
    int type;             /* LL__J_* */
    uint8_t *s;           /* KEY, STR: the decoded bytes (NUL-terminated); NUM: the token */
    size_t len;
    size_t off;           /* byte offset of the token in the input */
    int num;              /* NUM: LL__JN_* flags; an integer has none but maybe NEG */
} ll__jtok;
/* An integer token: sign, magnitude (saturated; `big` if it is 2^64 or more) and
 * the value's low 64 bits in two's complement (what Python's `v & mask` sees). */
typedef struct {
    int neg, big;
    uint64_t mag, low;
} ll__jint;
LL_HIDDEN void ll__json_init(ll__json *j, uint8_t *buf, size_t len, uint64_t max_values);
/* oci.media.check_json_shape's bound on the values of a JSON text: 1 + its '[',
 * '{' and ',' bytes (16 at a time with SSE2); *objects (if not NULL) gets its
 * '{' bytes. */
LL_HIDDEN uint64_t ll__json_count_values(const uint8_t *s, size_t len, uint64_t *objects);
/* The next token (LL__J_ERROR: see j->status, j->msg; LL__J_EOF at the end of
 * the document, after checking nothing but whitespace follows). */
LL_HIDDEN int ll__json_next(ll__json *j, ll__jtok *t);
/* Skip the rest of the value `t` began (nothing for a scalar).  LL_OK or j->status. */
LL_HIDDEN int ll__json_skip(ll__json *j, const ll__jtok *t);
/* An error found by the caller (a wrong type...): sets j->status and j->msg if unset. */
LL_HIDDEN int ll__json_fail(ll__json *j, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* 1 if t is an integer token (no fraction, exponent, NaN or Infinity); fills *v. */
LL_HIDDEN int ll__json_int(const ll__jtok *t, ll__jint *v);
/* A number token as a time: clamped to 0..max_sec seconds (NaN: 0, -Infinity: 0,
 * Infinity: max_sec), exact decimal fractions cut to nanoseconds, no floating
 * point.  0 if t is not a number. */
LL_HIDDEN int ll__json_time(const ll__jtok *t, int64_t max_sec, int64_t *sec, uint32_t *nsec);
/* "sha256:" and 64 lowercase hex digits (oci.media.check_digest's rule). */
LL_HIDDEN int ll__digest_ok(const char *s, size_t len);
/* Error text into a caller's buffer (NULL or size 0: none), NUL-terminated. */
LL_HIDDEN void ll__set_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A bounded printable rendering of bytes for messages ("..." when cut). */
LL_HIDDEN void ll__show(char *dst, size_t dst_size, const void *s, size_t len);
/* Make room for `need` elements of `elem` bytes in *p (capacity *cap, doubled from 64 as
 * needed).  LL_OK or LL_ERR_NOMEM (*p unchanged). */
LL_HIDDEN int ll__grow(void **p, size_t *cap, size_t need, size_t elem);

/* toc.c: a layer's TOC, decompressed, parsed and checked as lazylayer.format does.
 * Strings point into `json` (decoded in place), owned by the TOC. */
#define LL__MAX_TOC_BYTES (64u << 20)
#define LL__MAX_TOC_VALUES 8000000u
#define LL__MAX_TOC_ENTRIES 500000u
#define LL__MAX_TOC_FRAMES 1000000u
#define LL__MAX_PLAN_RANGES 4000000u
#define LL__MAX_PATH_BYTES 4096u
#define LL__MAX_NAME_BYTES 255u
#define LL__MAX_PATH_DEPTH 256u
#define LL__MTIME_MAX 253402214400ll
#define LL__MAX_LAYERS 4096u
enum { LL__T_REG = 1, LL__T_DIR, LL__T_SYMLINK, LL__T_CHAR, LL__T_BLOCK, LL__T_FIFO, LL__T_HARDLINK,
       LL__T_UNKNOWN };
typedef struct {
    const uint8_t *name;          /* normalised path ("." is the root) */
    const uint8_t *link;          /* linkname ("" if none) */
    const uint8_t *type_str;      /* the type as written (for messages) */
    uint32_t name_len, base;      /* base: offset of the last component in name */
    uint32_t link_len;
    uint8_t type_len;
    uint8_t whiteout;             /* the last component starts with ".wh." */
    uint16_t layer;               /* index of the layer (the TOC's `index`) */
    uint8_t type;                 /* LL__T_* */
    uint8_t has_mode;
    uint16_t mode;                /* mode & 07777 */
    uint32_t uid, gid, devmajor, devminor;   /* clamped */
    uint32_t mtime_nsec;
    int64_t mtime_sec;            /* clamped to 0..LL__MTIME_MAX */
    uint64_t size, offset;        /* regular files (checked against the frames) */
    uint32_t xattr_first, nxattrs;
} ll__toc_entry;
typedef struct {
    const uint8_t *name, *value;
    uint32_t name_len, value_len;
} ll__toc_xattr;
typedef struct {
    uint8_t *json;                /* the decompressed JSON (owned) */
    size_t json_len;
    ll__toc_entry *entries;
    size_t nentries;
    ll__toc_xattr *xattrs;        /* entries' xattrs, sorted by name within each entry */
    size_t nxattrs;
    ll_layer_frame *frames;
    size_t nframes;
    uint64_t *prefetch;           /* (offset, length) pairs */
    size_t nprefetch;
    uint64_t tar_size;
    uint32_t codec;               /* LL_CODEC_ZSTD, or LL_CODEC_RAW ("codec": "raw") */
} ll__toc;
/* Read (or take), verify against toc_digest, decompress and parse layer `index`'s TOC. */
LL_HIDDEN int ll__toc_load(const ll_index_layer *layer, uint32_t index, ll__toc *out, char *err,
                           size_t err_size);
/* Parse and check decompressed TOC JSON (taking `json`, malloc'd, in all cases). */
LL_HIDDEN int ll__toc_parse(uint8_t *json, size_t len, uint64_t toc_offset, uint32_t index,
                            ll__toc *out, char *err, size_t err_size);
LL_HIDDEN void ll__toc_free(ll__toc *t);

/* ---- gzindex.c: the first `size` bytes a gzip member at src inflates to (ISA-L;
 * no more members after it): LL_OK, LL_ERR_FRAME, LL_ERR_NOMEM, LL_ERR_ARG. */
LL_HIDDEN int ll__inflate_gzip(const void *src, size_t src_len, void *dst, size_t size);
/* The same with an inflate state kept across calls: *state (NULL at first: made
 * here, freed by the caller with free()); saves its allocation per member. */
LL_HIDDEN int ll__inflate_gzip_reuse(void **state, const void *src, size_t src_len, void *dst, size_t size);

#endif
