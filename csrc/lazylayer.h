/*
 * lazylayer.h - seekable zstd decompression with a shared, bounded block cache.
 *
 * The one public header of liblazylayer.  It reads and writes the standard
 * zstd seekable format (facebook/zstd contrib/seekable_format, v0.1.0):
 * independent zstd frames followed by a skippable frame holding a seek table.
 *
 * Objects (all opaque, all prefixed ll_):
 *   ll_seektable  a parsed, validated seek table (immutable once made)
 *   ll_cache      decompressed frames keyed by (source, frame) under a hard byte budget
 *   ll_pool       a few worker threads that decode (or compress) frames in parallel
 *   ll_reader     reads any byte range of the uncompressed stream; asks the host
 *                 for compressed bytes through an ll_read_fn callback
 *   ll_writer     writes frames plus the seek table through an ll_write_fn callback
 *
 * Errors: every function that can fail returns an int status, LL_OK (0) or a
 * negative ll_status; ll_strerror() gives its message.
 *
 * Versions: LL_VERSION_MAJOR/MINOR/PATCH below are the one place the version of
 * lazylayer (C library and Python package alike) is written; the Makefile, the
 * pkg-config file and the Python package read it from here.  ll_version() is
 * the version of the library actually linked.
 *
 * Option structs (ll_reader_options, ll_writer_options) carry their own size,
 * so fields can be added at their end without breaking the ABI: see
 * ll_reader_options_init().  A host should call ll_check_zstd() once at start.
 *
 * Threads: the library has no global mutable state.  The thread safety of each
 * function is stated next to it.  "Any thread" means the call may run
 * concurrently with any other call on the same object except its _free.
 *
 * Untrusted input: seek tables and frames may be hostile.  Parsing checks every
 * bound; no allocation is sized by the input beyond what the caller handed in
 * (a seek table costs at most 3x the bytes of the table itself) or the caller's
 * configured limits (ll_reader_options.max_frame_size).
 */
#ifndef LAZYLAYER_H
#define LAZYLAYER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LL_API __attribute__((visibility("default")))
#else
#define LL_API
#endif

/* LL_VERSION_MAJOR*10000 + MINOR*100 + PATCH of this header, for #if tests (outside
 * the cffi block: cffi's cdef takes only literal #defines). */
#define LL_VERSION_NUMBER (LL_VERSION_MAJOR * 10000 + LL_VERSION_MINOR * 100 + LL_VERSION_PATCH)

/* cffi-begin: everything down to cffi-end is also the Python binding's cdef. */

/* The version of lazylayer, written here and nowhere else.  While MAJOR is 0, a
 * MINOR change may break the ABI (and changes the soname); see docs/c-api.md, "ABI". */
#define LL_VERSION_MAJOR 0
#define LL_VERSION_MINOR 2
#define LL_VERSION_PATCH 0

#define LL_SKIPPABLE_MAGIC 0x184D2A5E     /* seek table frame's magic */
#define LL_SEEKABLE_MAGIC 0x8F92EAB1      /* last 4 bytes of a seekable blob */
#define LL_SEEKTABLE_FOOTER_SIZE 9        /* Number_Of_Frames, descriptor, magic */
#define LL_SKIPPABLE_HEADER_SIZE 8        /* magic + Frame_Size */
#define LL_MAX_FRAMES 0x8000000           /* format limit on Number_Of_Frames */
#define LL_MAX_FRAME_SIZE 0x40000000      /* format limit on a frame's decompressed size */
#define LL_DEFAULT_FRAME_SIZE 1048576     /* writer's default decompressed bytes per frame */
#define LL_DEFAULT_MAX_FRAME_SIZE 67108864 /* reader's default limit on one frame (64 MiB) */

typedef enum {
    LL_OK = 0,
    LL_ERR_ARG = -1,        /* invalid argument */
    LL_ERR_NOMEM = -2,      /* out of memory */
    LL_ERR_SEEKTABLE = -3,  /* no seek table, or a malformed one */
    LL_ERR_LIMIT = -4,      /* well formed but over a format or configured limit */
    LL_ERR_FRAME = -5,      /* a compressed frame is corrupt or its size disagrees with the table */
    LL_ERR_CHECKSUM = -6,   /* a frame's checksum does not match its data */
    LL_ERR_IO = -7,         /* the host's read or write callback reported failure */
    LL_ERR_NEED_MORE = -8,  /* the tail given to ll_seektable_parse is too short */
    LL_ERR_STATE = -9,      /* object used after it finished or failed */
    LL_ERR_THREAD = -10,    /* a worker thread could not be started */
    LL_ERR_COMPRESS = -11,  /* the zstd compressor reported an error */
    LL_ERR_ZSTD = -12       /* the libzstd loaded at run time is not one lazylayer can use
                               (see ll_check_zstd) */
    /* New codes are added below the last one, in minor versions too: treat an
     * unknown negative code as a generic failure. */
} ll_status;

/* Message for a status code; never NULL, static storage.  Any thread. */
LL_API const char *ll_strerror(int code);

/* LL_VERSION_MAJOR*10000 + MINOR*100 + PATCH of the library actually linked
 * (compare with LL_VERSION_NUMBER, the header's).  Any thread. */
LL_API int ll_version(void);

/* Check that the libzstd loaded at run time is one whose experimental
 * buffer-less decoding API (ZSTD_decompressBegin / ZSTD_nextSrcSizeToDecompress /
 * ZSTD_decompressContinue, which the reader uses) behaves as lazylayer was built
 * against.  zstd promises that API only within one version, and liblazylayer
 * links libzstd dynamically, so a different libzstd may sit under it at run time.
 * Two tests: (1) ZSTD_versionNumber() at run time must have the same major and
 * minor version as ZSTD_VERSION_NUMBER at build time (any patch release of that
 * minor is accepted); (2) a self-test decodes a fixed, hand-made frame (a
 * compressed, an RLE and a raw block, with a content checksum) block by block
 * with that API and checks every byte.  Returns LL_OK or LL_ERR_ZSTD (LL_ERR_NOMEM
 * if a context cannot be made); if `msg` is not NULL it receives, NUL-terminated
 * and cut to `msg_size` bytes, what was found (e.g. "built with libzstd 1.5.4,
 * running 1.4.9").  Not done implicitly: call it once at start (the Python
 * binding does so on import).  Any thread; no state is kept. */
LL_API int ll_check_zstd(char *msg, size_t msg_size);

/* ---------------------------------------------------------------- I/O callbacks */

/* Fill dst with exactly `size` bytes of the compressed blob starting at `offset`.
 * Return 0 on success.  On failure return either an ll_status from LL_ERR_NOMEM
 * (-2) down to the last code (e.g. LL_ERR_CHECKSUM when the host verified the
 * bytes itself): it is passed unchanged to the caller of ll_reader_read or
 * ll_seektable_load; or any other non-zero value (-1, 1, an errno...): the caller
 * then gets LL_ERR_IO.  -1 (numerically LL_ERR_ARG) is deliberately *not* passed
 * through: it is every C programmer's "failed", not "you called me wrongly".
 * Called only on threads that called into the library (never on pool workers),
 * possibly on several such threads at once. */
typedef int (*ll_read_fn)(void *opaque, uint64_t offset, size_t size, void *dst);

/* Consume `size` bytes produced by a writer.  Return 0 on success; a failure
 * value is reported by the writer call exactly as for ll_read_fn (an ll_status
 * from LL_ERR_NOMEM down passes through, anything else becomes LL_ERR_IO), and
 * the writer is then failed (later calls give LL_ERR_STATE). */
typedef int (*ll_write_fn)(void *opaque, const void *src, size_t size);

/* Ready-made read callbacks.  ll_fd_read: opaque points to an int file descriptor
 * read with pread().  ll_mem_read: opaque points to an ll_mem_source.  Both
 * return LL_ERR_IO on failure (a read error, or a source shorter than asked).
 * Any thread. */
typedef struct {
    const void *data;
    uint64_t size;
} ll_mem_source;
LL_API int ll_fd_read(void *opaque, uint64_t offset, size_t size, void *dst);
LL_API int ll_mem_read(void *opaque, uint64_t offset, size_t size, void *dst);

/* ---------------------------------------------------------------- seek table */

typedef struct ll_seektable ll_seektable;

typedef struct {
    uint64_t c_offset;   /* offset of the frame in the compressed blob */
    uint64_t d_offset;   /* offset of its data in the uncompressed stream */
    uint32_t c_size;     /* compressed size */
    uint32_t d_size;     /* decompressed size (0 for skippable or empty frames) */
    uint32_t checksum;   /* low 32 bits of XXH64 of the data, if has_checksum */
    int has_checksum;
} ll_frame_info;

/* How many bytes at the end of the blob the seek table occupies (its whole
 * skippable frame).  `tail` holds the last `tail_len` bytes of a blob of
 * `blob_size` bytes; with fewer than 9 it returns LL_ERR_NEED_MORE and sets
 * *table_bytes to 9.  Checks the magic number, the descriptor and the sizes.
 * Any thread. */
LL_API int ll_seektable_tail_size(const void *tail, size_t tail_len, uint64_t blob_size,
                                  uint64_t *table_bytes);

/* Parse and validate the seek table from the last `tail_len` bytes of a blob of
 * `blob_size` bytes (blob_size is needed to check that the frames exactly fill
 * the blob).  If tail_len is too short, returns LL_ERR_NEED_MORE and, if
 * `need` is not NULL, stores the tail length required.  Any thread. */
LL_API int ll_seektable_parse(const void *tail, size_t tail_len, uint64_t blob_size,
                              ll_seektable **out, uint64_t *need);

/* Read the seek table of a blob through a callback: two reads (footer, table).
 * Any thread (the callback must be safe for that thread). */
LL_API int ll_seektable_load(ll_read_fn read, void *opaque, uint64_t blob_size,
                             ll_seektable **out);

/* Free a table that no reader owns.  Not concurrent with other use. */
LL_API void ll_seektable_free(ll_seektable *st);

/* Accessors: any thread, the table is immutable. */
LL_API uint32_t ll_seektable_num_frames(const ll_seektable *st);
LL_API int ll_seektable_has_checksums(const ll_seektable *st);
LL_API uint64_t ll_seektable_compressed_size(const ll_seektable *st);   /* bytes of frames, without the table */
LL_API uint64_t ll_seektable_decompressed_size(const ll_seektable *st);
LL_API uint32_t ll_seektable_max_frame_size(const ll_seektable *st);     /* largest d_size */
/* Frame i's position and sizes; LL_ERR_ARG if i >= num_frames. */
LL_API int ll_seektable_frame(const ll_seektable *st, uint32_t i, ll_frame_info *out);
/* Index of the frame whose data holds uncompressed offset `d_offset`
 * (never an empty frame); num_frames if d_offset >= decompressed size. */
LL_API uint32_t ll_seektable_frame_at(const ll_seektable *st, uint64_t d_offset);

/* ---------------------------------------------------------------- block cache */

typedef struct ll_cache ll_cache;

typedef struct {
    uint64_t hits;        /* lookups served from the cache */
    uint64_t misses;      /* lookups that had to decode */
    uint64_t inserts;     /* frames added */
    uint64_t evictions;   /* frames dropped to stay under budget (or by clear) */
    uint64_t bypasses;    /* decodes not cached because the budget was pinned full */
    uint64_t bytes;       /* bytes held now (decompressed data) */
    uint64_t peak_bytes;  /* most bytes ever held at once */
    uint64_t entries;     /* frames held now */
    uint64_t budget;      /* the hard limit on bytes */
} ll_cache_stats;

/* A cache of decompressed frames that never holds more than `budget_bytes`.
 * Entries being read are pinned and never freed under a reader; when the whole
 * budget is pinned, readers decode without caching (counted in bypasses).
 * Eviction is least-recently-used within each of 16 lock-striped shards.
 * A budget of 0 caches nothing. */
LL_API int ll_cache_create(uint64_t budget_bytes, ll_cache **out);
/* Free the cache; every reader using it must have been freed first. */
LL_API void ll_cache_free(ll_cache *c);
/* Counters; any thread (each counter is exact, the set is not one snapshot). */
LL_API void ll_cache_get_stats(ll_cache *c, ll_cache_stats *out);
/* Change the budget, evicting unpinned frames down to it.  Any thread. */
LL_API void ll_cache_set_budget(ll_cache *c, uint64_t budget_bytes);
/* Drop every unpinned frame.  Any thread. */
LL_API void ll_cache_clear(ll_cache *c);
/* Frame buffers (the cache's entries, and the decode and input buffers of the
 * readers using the cache) are the cache's own: buffers of 64 KiB and more are
 * mmap'd, never taken from malloc, and a freed one is kept for reuse in a free
 * list of at most budget/8 bytes (clamped to 4..32 MiB; set with the budget),
 * else unmapped, so the memory of evicted frames goes back to the system.  The
 * free list is not part of the budget.  This returns the bytes it holds now.
 * Any thread. */
LL_API uint64_t ll_cache_pool_bytes(ll_cache *c);

/* ---------------------------------------------------------------- worker pool */

typedef struct ll_pool ll_pool;

/* Start `nthreads` workers (0 is allowed: the calling thread then does all the
 * work).  A thread that hands work to the pool works on it too, so a pool of
 * N-1 threads keeps N cores busy.  Shareable by many readers and writers. */
LL_API int ll_pool_create(unsigned nthreads, ll_pool **out);
/* Stop and join the workers.  Nothing may be using the pool. */
LL_API void ll_pool_free(ll_pool *p);
LL_API unsigned ll_pool_threads(const ll_pool *p);

/* ---------------------------------------------------------------- reader */

typedef struct ll_reader ll_reader;

typedef struct {
    size_t struct_size;       /* sizeof(ll_reader_options) as the caller compiled it:
                                 set by ll_reader_options_init; must stay first */
    ll_cache *cache;          /* shared frame cache, or NULL for none */
    ll_pool *pool;            /* decode multi-frame reads in parallel, or NULL */
    uint64_t source_key;      /* cache namespace: readers with the same non-zero key
                                 share cached frames (same blob!); 0 = unique */
    int verify_checksums;     /* verify seek-table checksums when present (default 1) */
    uint32_t max_frame_size;  /* refuse tables with larger frames (default 64 MiB) */
    uint64_t max_fetch_bytes; /* largest compressed range fetched in one callback
                                 (default 64 MiB; a bigger read is done in rounds) */
    int whole_frames;         /* 1: a read that misses the cache decodes (and caches)
                                 its whole frame, not just the prefix it needs; for
                                 sources where a fetch costs more than a decode
                                 (default 0) */
} ll_reader_options;

/* Fill `opt` with the defaults.  Pass `sizeof *opt` as struct_size: the library
 * fills only the struct_size bytes the caller has (a program built against an
 * older header has a shorter struct; one built against a newer header gets its
 * extra fields zeroed) and stores struct_size in opt->struct_size.  LL_ERR_ARG if
 * opt is NULL or struct_size is smaller than the first version of the struct
 * (lazylayer 0.2: every field up to whole_frames).  Any thread.
 *
 * The convention for every options struct (as SQLite's iVersion): create
 * functions read only the fields that fit in opt->struct_size and use defaults
 * for the rest; fields the library does not know (past its own sizeof) are
 * ignored, so check ll_version() before relying on a field newer than the
 * oldest library you accept.  A struct_size of 0 (never initialised) or below
 * the first version's size is refused with LL_ERR_ARG. */
LL_API int ll_reader_options_init(ll_reader_options *opt, size_t struct_size);

/* Make a reader.  On success the reader owns `st` (freed by ll_reader_free);
 * on failure the caller still owns it.  `opt` may be NULL for defaults; otherwise
 * its struct_size is honoured (see ll_reader_options_init). */
LL_API int ll_reader_create(ll_seektable *st, ll_read_fn read, void *opaque,
                            const ll_reader_options *opt, ll_reader **out);

/* Read up to `size` bytes of the uncompressed stream at `offset` into `dst`,
 * like pread(): returns the number of bytes read (fewer than `size` only at the
 * end of the stream, 0 at or past it), or a negative ll_status.
 * Frames a read covers whole are decoded straight into `dst` and not cached
 * (a long scan does not flush the cache); frames it covers in part go through
 * the cache.  With checksums present and verify_checksums set, every frame is
 * decoded whole and verified; otherwise a partly covered frame is decoded only
 * up to the end of the read.  Any thread, many at once. */
LL_API int64_t ll_reader_read(ll_reader *r, uint64_t offset, void *dst, size_t size);

LL_API const ll_seektable *ll_reader_seektable(const ll_reader *r);
LL_API uint64_t ll_reader_size(const ll_reader *r);   /* uncompressed size */
/* Free the reader and its table.  Not concurrent with reads. */
LL_API void ll_reader_free(ll_reader *r);

/* ---------------------------------------------------------------- writer */

typedef struct ll_writer ll_writer;

typedef struct {
    size_t struct_size;    /* sizeof(ll_writer_options): set by ll_writer_options_init; first */
    int level;             /* zstd compression level (default 3) */
    uint32_t frame_size;   /* decompressed bytes per frame, 1..LL_MAX_FRAME_SIZE (default 1 MiB) */
    int checksum;          /* write XXH64 checksums in the seek table (default 1) */
    ll_pool *pool;         /* compress several frames at once, or NULL */
} ll_writer_options;

/* Fill `opt` with the defaults; struct_size as for ll_reader_options_init (the
 * first version ends at `pool`).  LL_ERR_ARG if opt is NULL or struct_size too small. */
LL_API int ll_writer_options_init(ll_writer_options *opt, size_t struct_size);

/* A writer.  `opt` may be NULL for defaults; its struct_size is honoured.
 * Output goes to `write` in order, and each frame (data or
 * skippable), then the seek table, reaches it in exactly one call, so the host
 * can hash or index frames as they pass.  One thread at a time per writer. */
LL_API int ll_writer_create(const ll_writer_options *opt, ll_write_fn write, void *opaque,
                            ll_writer **out);
/* Append data; frames are cut every frame_size bytes. */
LL_API int ll_writer_write(ll_writer *w, const void *src, size_t size);
/* Cut a frame boundary here (nothing happens if the current frame is empty).
 * With a pool, the frame may be compressed and written later, with its batch. */
LL_API int ll_writer_end_frame(ll_writer *w);
/* End the current frame and compress and write every pending frame now. */
LL_API int ll_writer_flush(ll_writer *w);
/* Insert a skippable frame (magic 0x184D2A50 + `variant`, 0..15) holding `data`;
 * it is listed in the seek table with decompressed size 0.  Ends the current frame. */
LL_API int ll_writer_add_skippable(ll_writer *w, unsigned variant, const void *data, size_t size);
/* End the last frame and write the seek table.  The writer is then finished. */
LL_API int ll_writer_finish(ll_writer *w);
/* Totals so far: uncompressed bytes in, compressed bytes out, frames written. */
LL_API uint64_t ll_writer_bytes_in(const ll_writer *w);
LL_API uint64_t ll_writer_bytes_out(const ll_writer *w);
LL_API uint32_t ll_writer_frames(const ll_writer *w);
/* Sizes of frame i written so far (i < ll_writer_frames); LL_ERR_ARG otherwise. */
LL_API int ll_writer_frame(const ll_writer *w, uint32_t i, uint32_t *c_size, uint32_t *d_size);
LL_API void ll_writer_free(ll_writer *w);

/* cffi-end */

#ifdef __cplusplus
}
#endif
#endif /* LAZYLAYER_H */
