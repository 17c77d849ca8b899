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
 *   ll_index      an image's merged tree (its layers' TOCs with the OCI rules
 *                 applied) and its layers' frame tables: one immutable buffer,
 *                 built from the TOCs or served from stored (mapped) bytes
 *   ll_manifest   an OCI image manifest's layer descriptors (ll_oci_index_manifest
 *                 finds the manifest in an index.json)
 *   ll_diskcache  the Python package's on-disk frame and index cache, opened from C
 *                 with the same layout and lock protocol
 *   ll_image      reads files of an indexed image: frames from the disk cache
 *                 first, only missing runs through the host's ll_read_fn
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
#define LL_VERSION_MINOR 5
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
    LL_ERR_ZSTD = -12,      /* the libzstd loaded at run time is not one lazylayer can use
                               (see ll_check_zstd) */
    LL_ERR_FORMAT = -13,    /* a TOC, manifest or index file is malformed (or hostile) */
    LL_ERR_DIGEST = -14,    /* bytes do not match the sha256 digest that vouches for them */
    LL_ERR_NOENT = -15,     /* no such file (lookups), or not in the disk cache */
    LL_ERR_NOTDIR = -16,    /* a path component, or the inode given, is not a directory */
    LL_ERR_LOOP = -17,      /* more than LL_MAX_SYMLINK_HOPS symlinks while resolving a path */
    LL_ERR_NOTREG = -18,    /* not a regular file (a read), or not a symlink (readlink) */
    LL_ERR_CACHE = -19,     /* the disk cache directory cannot be used (errno in the message) */
    LL_ERR_MISS = -20,      /* ll_image_read_cached: a frame is neither in memory nor on disk */
    LL_ERR_MOUNT = -21,     /* /dev/fuse, mount(2) or fusermount3 failed (errno in the message) */
    LL_ERR_UNSUPPORTED = -22 /* well formed, but using what this library does not read lazily (chunked TOCs) */
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
    /* --- added after the first version (which ends at pool): read only if
     * struct_size covers it, else its default */
    int stored;            /* 1: no compression: each frame is a zstd frame of raw blocks
                              (the data as is, 3 bytes of header per 128 KiB), which any
                              zstd decoder reads at the speed of a copy; `level` is then
                              not used.  For data kept locally, where disk is cheaper than
                              the CPU time of compressing (default 0) */
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
/* The sha256 of frame i as written (its compressed bytes; a skippable frame's
 * header included), computed on the pool's threads with the compression, so a
 * host that names frames by digest need not hash them again; LL_ERR_ARG if
 * i >= ll_writer_frames. */
LL_API int ll_writer_frame_sha256(const ll_writer *w, uint32_t i, uint8_t out[32]);
LL_API void ll_writer_free(ll_writer *w);

/* ---------------------------------------------------------------- image index
 *
 * An image's merged filesystem: its layers' TOCs (docs/format.md) stacked in
 * order with the OCI rules applied (whiteouts, opaque directories, a later
 * entry replacing an earlier one, parents made when a layer does not list
 * them, hardlinks sharing one inode), plus what reading it needs: each layer's
 * frame table (with every frame's sha256) and its prefetch ranges.
 *
 * An index is one immutable, position-independent buffer (docs/index-format.md):
 * a header, inode records, sorted directory entries and a string pool, with a
 * checksum over all of it.  ll_index_build makes it from the TOCs;
 * ll_index_data hands out its bytes to store; ll_index_open_buffer validates
 * stored bytes (checksum, then every offset and count) and serves lookups
 * straight from them, so a mapped index file costs no parsing.
 *
 * Inodes are numbered densely from LL_ROOT_INO (1, the root directory) to
 * ll_index_inodes().  Paths are relative to the image root, '/'-separated;
 * leading '/' and "." components are ignored.
 *
 * Threads: an ll_index is immutable: every function below may be called from
 * any number of threads at once, except ll_index_free. */

typedef struct ll_index ll_index;

#define LL_ROOT_INO 1
#define LL_MAX_SYMLINK_HOPS 40          /* as Linux: LL_ERR_LOOP beyond */
#define LL_INDEX_FORMAT_VERSION 2        /* of the stored index buffer (2: layers have a codec) */
#define LL_ERR_MSG_SIZE 256              /* a good size for the err buffers below */

typedef enum {
    LL_KIND_REG = 1, LL_KIND_DIR = 2, LL_KIND_SYMLINK = 3,
    LL_KIND_CHAR = 4, LL_KIND_BLOCK = 5, LL_KIND_FIFO = 6
} ll_kind;

/* What one inode is.  Fixed layout while the soname stays the same. */
typedef struct {
    uint64_t ino;
    uint32_t kind;        /* ll_kind */
    uint32_t mode;        /* st_mode: file type and permission bits (symlinks: 0777) */
    uint32_t nlink;       /* files: names sharing the inode; directories: 2 + subdirectories */
    uint32_t uid, gid;
    int64_t mtime_sec;    /* seconds since the epoch (may be negative) */
    uint32_t mtime_nsec;  /* 0..999999999 */
    uint32_t devmajor, devminor;   /* char and block devices */
    uint64_t size;        /* regular files: content bytes; symlinks: target length; else 0 */
    int32_t layer;        /* regular files: the layer holding the content; else -1 */
    uint32_t nxattrs;     /* extended attributes (ll_index_xattr) */
    uint64_t offset;      /* regular files: where the content starts in that layer's tar */
} ll_stat;

/* One entry of a directory: its name (NUL-terminated, also name_len bytes; it
 * points into the index and lives as long as it) and its inode's attributes. */
typedef struct {
    const char *name;
    size_t name_len;
    ll_stat st;
} ll_dirent;

/* One data frame of a layer, as its TOC lists it. */
typedef struct {
    uint64_t c_offset;    /* in the compressed blob */
    uint64_t d_offset;    /* in the layer's tar */
    uint32_t c_size, d_size;
    uint8_t sha256[32];   /* of the compressed frame: verified before it is decoded */
} ll_layer_frame;

/* A layer given to ll_index_build.
 * `digest` ("sha256:<64 hex>", the blob's) and `blob_size` come from the
 * manifest; `toc_digest` and `toc_offset`/`toc_length` from its annotations
 * io.lazylayer.toc.digest and io.lazylayer.toc.position.  The TOC frame (the
 * skippable frame: magic, size, "LZLYTOC1", zstd-compressed JSON) comes from
 * `toc_frame` if not NULL (toc_length bytes), else it is read through `read`
 * (at toc_offset; `read` may then be NULL for no callback).  Either way its
 * sha256 is checked against toc_digest (LL_ERR_DIGEST) before it is parsed. */
typedef struct {
    const char *digest;
    uint64_t blob_size;
    const char *toc_digest;
    uint64_t toc_offset, toc_length;
    const void *toc_frame;
    ll_read_fn read;
    void *opaque;
} ll_index_layer;

/* Build the index of `n` layers (the first is the bottom one; at most 4096).
 * Each TOC is decompressed (at most 64 MiB of JSON), parsed and checked as
 * lazylayer.format does (names, limits, frames contiguous and ending where the
 * TOC frame starts), then merged.  On failure returns LL_ERR_FORMAT (malformed),
 * LL_ERR_LIMIT (over a limit of docs/format.md "Limits"), LL_ERR_DIGEST, LL_ERR_FRAME
 * (the TOC's zstd data does not decode), LL_ERR_IO or another status from the
 * callback, LL_ERR_ARG or LL_ERR_NOMEM, and if `err` is not NULL writes there, cut
 * to err_size bytes and NUL-terminated, what and where (layer, entry, name).
 * Memory: linear in the TOCs' decompressed size.  Any thread. */
LL_API int ll_index_build(const ll_index_layer *layers, uint32_t n, ll_index **out,
                          char *err, size_t err_size);

/* Serve an index from stored bytes (ll_index_data's, e.g. a mapped file).  The
 * checksum and every internal offset, count and string are validated first:
 * LL_ERR_FORMAT (with a reason in err) for anything else, never a crash.
 * `copy`: 0 serves lookups from `data`, which must stay valid and unchanged
 * until ll_index_free; 1 copies it.  Any thread. */
LL_API int ll_index_open_buffer(const void *data, size_t size, int copy, ll_index **out,
                                char *err, size_t err_size);

/* The stored form: `*size` bytes at `*data`, owned by the index.  Any thread. */
LL_API void ll_index_data(const ll_index *idx, const void **data, size_t *size);
LL_API void ll_index_free(ll_index *idx);

LL_API uint64_t ll_index_inodes(const ll_index *idx);   /* highest inode number */
LL_API uint64_t ll_index_names(const ll_index *idx);    /* directory entries, the root included */
LL_API uint32_t ll_index_layers(const ll_index *idx);

/* The inode named `name` (name_len bytes, no '/') in directory `dir`:
 * LL_ERR_NOENT, LL_ERR_NOTDIR (dir is not a directory) or LL_ERR_ARG (no such
 * inode).  "." and ".." are not entries (the host answers them). */
LL_API int ll_index_lookup(const ll_index *idx, uint64_t dir, const char *name, size_t name_len,
                           uint64_t *ino);

/* The inode at `path` (path_len bytes), as a process chrooted into the image
 * would find it: symlinks followed inside the image root (absolute targets and
 * ".." never leave it), LL_ERR_LOOP after LL_MAX_SYMLINK_HOPS.  `follow` 0 does
 * not follow a symlink in the last component (lstat).  LL_ERR_NOENT,
 * LL_ERR_NOTDIR, LL_ERR_LOOP. */
LL_API int ll_index_resolve(const ll_index *idx, const char *path, size_t path_len, int follow,
                            uint64_t *ino);

/* ll_index_resolve that also gives the real path of what it found: the names
 * from the root to it with every symlink on the way replaced by where it led
 * ("" for the root), NUL-terminated in `real` (real_size bytes), its length in
 * *real_len.  If it does not fit, LL_ERR_LIMIT with *ino and *real_len set
 * (call again with real_len + 1 bytes).  `real` NULL: only *real_len.  This is
 * what an fsspec-style API needs to name what a path led to. */
LL_API int ll_index_resolve_path(const ll_index *idx, const char *path, size_t path_len, int follow,
                                 uint64_t *ino, char *real, size_t real_size, size_t *real_len);

/* Attributes of inode `ino`; LL_ERR_ARG if there is none. */
LL_API int ll_index_stat(const ll_index *idx, uint64_t ino, ll_stat *out);

/* Entries of directory `dir` in name order (bytewise), from position `pos`
 * (0 first; a directory's entries are positions 0..count-1): up to `max` go in
 * `out`, *n says how many.  *n < max means the end.  `count`, if not NULL, gets
 * the directory's number of entries.  LL_ERR_NOTDIR, LL_ERR_ARG. */
LL_API int ll_index_readdir(const ll_index *idx, uint64_t dir, uint64_t pos, ll_dirent *out,
                            size_t max, size_t *n, uint64_t *count);

/* A directory's entries packed for a host that pays per call (a Python binding):
 * every name, NUL-terminated, one after the other in `names` (names_size bytes;
 * *names_len gets the bytes used), and each entry's inode number and ll_kind in
 * inos[] and kinds[] (room for `max`; *n gets the count), in name order.  If
 * something does not fit: LL_ERR_LIMIT with *names_len and *n set to what is
 * needed (call again with that much room).  LL_ERR_NOTDIR, LL_ERR_ARG. */
LL_API int ll_index_readdir_names(const ll_index *idx, uint64_t dir, char *names, size_t names_size,
                                  size_t *names_len, uint64_t *inos, uint8_t *kinds, size_t max, size_t *n);

/* A symlink's target as written in the layer (*target points into the index,
 * NUL-terminated, *len bytes).  LL_ERR_NOTREG if `ino` is not a symlink. */
LL_API int ll_index_readlink(const ll_index *idx, uint64_t ino, const char **target, size_t *len);

/* Extended attribute `i` (0..nxattrs-1) of `ino`: name (NUL-terminated) and
 * value (value_len bytes, decoded), both pointing into the index.  LL_ERR_ARG. */
LL_API int ll_index_xattr(const ll_index *idx, uint64_t ino, uint32_t i, const char **name,
                          const void **value, size_t *value_len);

/* Layer `layer`'s blob digest ("sha256:..."), blob size, tar size and number of
 * data frames; NULL pointers are skipped.  LL_ERR_ARG. */
LL_API int ll_index_layer_info(const ll_index *idx, uint32_t layer, const char **digest,
                          uint64_t *blob_size, uint64_t *tar_size, uint32_t *frames);
/* How layer `layer`'s data frames are stored: LL_CODEC_ZSTD (zstd frames, the
 * lazy layer format) or LL_CODEC_RAW (each frame is its data as is: compressed
 * size = size, sha256 of the data; what a host builds for another format, whose
 * reads it answers with data it decoded itself).  A raw frame whose sha256 is
 * all zeros is one the host vouches for itself (a piece of a chunk too big for
 * one frame, whose digest covers the whole chunk): the image neither checks it
 * nor stores it in the disk cache.  LL_ERR_ARG. */
#define LL_CODEC_ZSTD 0
#define LL_CODEC_RAW 1
LL_API int ll_index_layer_codec(const ll_index *idx, uint32_t layer);
/* Data frame `i` of `layer`.  LL_ERR_ARG. */
LL_API int ll_index_frame(const ll_index *idx, uint32_t layer, uint32_t i, ll_layer_frame *out);
/* All of `layer`'s data frames at once: *table points at *count records of
 * LL_INDEX_FRAME_RECORD bytes inside the index (valid while it lives), each
 * little-endian: compressed offset (8), offset (8), compressed size (4), size (4),
 * sha256 (32).  For a host that keeps a layer's frame table (the Python
 * binding).  LL_ERR_ARG.  Any thread. */
#define LL_INDEX_FRAME_RECORD 56
LL_API int ll_index_frame_table(const ll_index *idx, uint32_t layer, const void **table, uint32_t *count);
/* The layer's prefetch plan from its TOC: range `i` of `*count`, (offset, length)
 * in the tar.  With out NULL only *count is set.  LL_ERR_ARG. */
LL_API int ll_index_prefetch(const ll_index *idx, uint32_t layer, uint64_t i, uint64_t *count,
                             uint64_t *offset, uint64_t *length);

/* ---------------------------------------------------------------- OCI metadata
 *
 * Enough of the OCI image format for a host without a JSON library to find an
 * image's layers: the same parser as the TOC's (bounded, hostile input gets
 * LL_ERR_FORMAT).  Any thread. */

typedef struct ll_manifest ll_manifest;

typedef struct {
    const char *media_type;
    const char *digest;
    uint64_t size;
    const char *toc_digest;       /* io.lazylayer.toc.digest, or NULL */
    uint64_t toc_offset, toc_length; /* io.lazylayer.toc.position (0, 0 if absent) */
} ll_descriptor;

/* From an OCI index (index.json) or a manifest list: the digest (into
 * `digest`, at least 72 bytes) of the first image manifest (mediaType OCI or
 * Docker v2 manifest, or none) whose platform matches `os` and `arch` (NULL:
 * any, except "unknown", the platform of attestations; an entry without a
 * platform matches).  LL_ERR_NOENT if none does; LL_ERR_FORMAT if the JSON is
 * malformed or the matching entry's digest is not sha256:<64 hex>. */
LL_API int ll_oci_index_manifest(const void *json, size_t len, const char *os, const char *arch,
                                 char *digest, size_t digest_size, char *err, size_t err_size);

/* Parse an image manifest: its layers (every descriptor of "layers", in order;
 * at most 4096).  Each needs a sha256 digest and a size; media_type is NULL if
 * absent; a TOC position must be exactly OFFSET:LENGTH within the blob
 * (lazylayer.format.parse_toc_position), else LL_ERR_FORMAT. */
LL_API int ll_manifest_parse(const void *json, size_t len, ll_manifest **out, char *err,
                             size_t err_size);
LL_API uint32_t ll_manifest_layers(const ll_manifest *m);
/* Layer i's descriptor; its strings live as long as the manifest.  LL_ERR_ARG. */
LL_API int ll_manifest_layer(const ll_manifest *m, uint32_t i, ll_descriptor *out);
LL_API void ll_manifest_free(ll_manifest *m);

/* ---------------------------------------------------------------- disk cache
 *
 * The disk cache that lazylayer's Python package keeps (docs/cache.md), opened
 * from C: content-addressed frames under <dir>/v1/frames/<2 hex>/<64 hex> and
 * derived files under <dir>/v1/files/.  The C side reads frames (each one hashed
 * and checked against its name; a mismatch is deleted and reads as a miss),
 * stores frames and index files atomically (a temporary file in v1/tmp/ renamed
 * into place), and maps index files.  It follows the cache's lock protocol:
 * a shared flock on a file while reading it or while it is mapped (a trim skips
 * such files), an exclusive one on a temporary file being written.  It never
 * takes the fetch single-flight record locks on v1/lock (and never opens that
 * file: closing a descriptor of it would drop the process's record locks); a
 * host that wants one fetch per frame across processes takes them itself, as
 * the Python package does.  It does not trim: the Python package's trims (and
 * `lazylayer cache trim`) count and evict what C wrote.
 *
 * Threads: any thread, many at once. */

typedef struct ll_diskcache ll_diskcache;

/* Open (creating, mode 0700) the cache at `dir`.  LL_ERR_CACHE with the path
 * and errno in err if it cannot be made or written. */
LL_API int ll_diskcache_open(const char *dir, ll_diskcache **out, char *err, size_t err_size);
LL_API void ll_diskcache_free(ll_diskcache *dc);

/* Read the frame whose compressed bytes have sha256 `sha256` into dst, which
 * has room for `size` bytes; the file must be exactly that long (at most
 * size + 1 bytes are read) and match its sha256 (always hashed here); its mtime
 * is refreshed (LRU), at most once per 10 s per file by one ll_diskcache.
 * LL_OK, or LL_ERR_NOENT (absent, of another size, unreadable or corrupt: a
 * miss; dst's contents are then undefined).  A corrupt entry is deleted unless
 * another reader holds it. */
LL_API int ll_diskcache_get(ll_diskcache *dc, const uint8_t sha256[32], void *dst, size_t size);
/* Store a frame the caller has verified (it is not hashed here), atomically:
 * written to v1/tmp/ and renamed into place.  Nothing happens if it is there.
 * LL_OK, or LL_ERR_CACHE if it cannot be written (a full disk...). */
LL_API int ll_diskcache_put(ll_diskcache *dc, const uint8_t sha256[32], const void *data, size_t size);

/* The index stored for image manifest `manifest_digest` ("sha256:<hex>") in
 * v1/files/index-<hex>.v<LL_INDEX_FORMAT_VERSION>, mapped read-only and held
 * with a shared flock (pinned: not evicted) until ll_index_free.  LL_ERR_NOENT if
 * there is none; a file that fails ll_index_open_buffer's checks is deleted and
 * reads as LL_ERR_NOENT too (rebuilt, never trusted). */
LL_API int ll_diskcache_load_index(ll_diskcache *dc, const char *manifest_digest, ll_index **out);
/* Store `idx` as the index of `manifest_digest` (atomically; kept if there). */
LL_API int ll_diskcache_store_index(ll_diskcache *dc, const char *manifest_digest, const ll_index *idx);

/* sha256 of `size` bytes (OpenSSL's libcrypto; uses the CPU's SHA extensions). */
LL_API void ll_sha256(const void *data, size_t size, uint8_t out[32]);

/* ---------------------------------------------------------------- image
 *
 * Reads files of an indexed image.  Each layer's data frames are looked up in
 * the disk cache first (verified, as ll_diskcache_get); only a run of frames
 * missing from disk goes to that layer's host read callback, which returns the
 * compressed bytes of exactly that run.  Decoded frames go to the shared block
 * cache. */

typedef struct ll_image ll_image;

/* Where layer i's compressed bytes come from. */
typedef struct {
    ll_read_fn read;      /* compressed bytes of frames missing from the disk cache */
    void *opaque;
    int use_disk;         /* 1: look in the disk cache first; 0: always `read` (a local file) */
    int local;            /* 1: `read` gives bytes from local storage (a file on this machine):
                             counted as frames_local / bytes_local, not as fetched */
} ll_image_source;

typedef struct {
    size_t struct_size;    /* set by ll_image_options_init; first */
    ll_cache *cache;       /* decoded frames, shared; NULL: none */
    ll_pool *pool;         /* parallel decoding of multi-frame reads; NULL: none */
    ll_diskcache *disk;    /* NULL: no disk cache (every frame through `read`) */
    int verify_fetched;    /* 1 (default): check the sha256 of every frame `read` returns;
                              0: the host verifies (the Python package does) */
    int store_fetched;     /* 1 (default): put frames `read` returned into the disk cache
                              (sources with use_disk only; hashed first even with
                              verify_fetched 0); 0: the host stores them */
    /* --- added after the first version (which ends at store_fetched): read only
     * if struct_size covers it, else its default */
    int disk_verify_memo;  /* 1 (default): a disk-cache frame file this process hashed and
                              found right is not hashed again while it keeps the same
                              device, inode, size, mtime and ctime (checked before and
                              after each read), for up to 10 s after it was hashed (then
                              hashed again); the memo is bounded (4096 files per
                              ll_diskcache).  Cache files are never modified in place
                              (written to a temporary file, renamed), so this trusts the
                              file system to keep an unchanged file's bytes: it does not
                              re-detect, within those 10 s, corruption below the file
                              system or a write that leaves both timestamps as they were.
                              0: every frame read from disk is hashed (docs/cache.md,
                              "Verified-file memo") */
    int raw_checked_by_host; /* 1: frames of raw layers (LL_CODEC_RAW) that a source's `read`
                              returns were decoded and checked by the host, chunk by chunk:
                              neither hashed nor stored here (a run of chunks is one frame
                              named by its chunk table, LL_CHUNK_RUN, not by its data); 0
                              (default): checked as verify_fetched says */
} ll_image_options;

/* Fill `opt` with the defaults (no cache, pool or disk cache; verify_fetched,
 * store_fetched and disk_verify_memo 1); struct_size as for
 * ll_reader_options_init (the first version ends at store_fetched; a struct
 * that ends there gets disk_verify_memo's default).  LL_ERR_ARG if opt is NULL
 * or struct_size too small.  Any thread. */
LL_API int ll_image_options_init(ll_image_options *opt, size_t struct_size);

/* An image over `idx` (not owned: free it after the image) with one source per
 * layer (ll_index_layers(idx) of them, each with a `read`).  `opt` NULL: the
 * defaults.  The cache, pool and disk cache must outlive the image.  A source's
 * `read` is asked only for whole, consecutive data frames of its blob, one
 * call per run missing from disk, on the thread calling ll_image_read.  The
 * image's readers share the block cache with the Python package's readers of
 * the same blob (same key: the digest's first 60 bits).  LL_ERR_FORMAT if the
 * index's frame table of a layer is not contiguous.  Any thread. */
LL_API int ll_image_create(const ll_index *idx, const ll_image_source *sources,
                           const ll_image_options *opt, ll_image **out);

/* pread() on regular file `ino`: up to `size` bytes at `offset` into dst.
 * Returns the bytes read (short only at the end of the file, 0 past it) or a
 * negative ll_status: LL_ERR_NOTREG, LL_ERR_ARG (no such inode), LL_ERR_DIGEST (a
 * fetched frame does not match its sha256), the callback's status.  Any thread,
 * many at once. */
LL_API int64_t ll_image_read(ll_image *img, uint64_t ino, uint64_t offset, void *dst, size_t size);

typedef struct {
    uint64_t reads;          /* ll_image_read calls */
    uint64_t frames_disk;    /* frames read from the disk cache */
    uint64_t frames_fetched; /* frames the host's read callbacks returned (sources not `local`) */
    uint64_t host_calls;     /* host read callback calls */
    uint64_t bytes_fetched;  /* compressed bytes they returned */
    uint64_t digest_errors;  /* frames that failed their sha256 (disk or host) */
    uint64_t frames_local;   /* frames read from sources marked `local` (not counted above) */
    uint64_t bytes_local;    /* their bytes */
} ll_image_stats;

LL_API void ll_image_get_stats(ll_image *img, ll_image_stats *out);

/* ll_image_read that never calls a host read callback: LL_ERR_MISS if a frame
 * it needs is neither in the block cache nor in the disk cache (nothing is
 * fetched; ask again with ll_image_read, on a thread that may wait).  A server
 * answers cache hits at once this way and hands misses to other threads.  Any
 * thread, many at once. */
LL_API int64_t ll_image_read_cached(ll_image *img, uint64_t ino, uint64_t offset, void *dst, size_t size);

/* Fail every later read of `layer` with `status` (a negative ll_status other
 * than LL_ERR_MISS, e.g. LL_ERR_DIGEST): for a layer found, after reads began,
 * not to be what its index says (an index a background check refuted).  Frames
 * already in the caches are not served from then on; reads in flight may still
 * complete.  The first status given stays.  LL_OK, or LL_ERR_ARG.  Any thread,
 * concurrently with reads. */
LL_API int ll_image_fail_layer(ll_image *img, uint32_t layer, int status);
/* 0, or the status ll_image_fail_layer gave `layer` (LL_ERR_ARG: no such layer).  Any thread. */
LL_API int ll_image_layer_failed(ll_image *img, uint32_t layer);

/* The index the image was created over.  Any thread. */
LL_API const ll_index *ll_image_index(const ll_image *img);
/* Free the image (not concurrent with reads).  The index stays the caller's. */
LL_API void ll_image_free(ll_image *img);

/* ---------------------------------------------------------------- host over a socket
 *
 * Image sources whose bytes come from another process (the Python package's
 * fetcher: a registry fetch needs Python, which a server thread must not wait
 * on in the process it serves; docs/mount.md, "Deadlock hazard").  A read of
 * layer L, `size` bytes at `offset`, takes a free connection of the pool (or
 * waits for one), sends a request and reads the answer:
 *
 *   request  24 bytes: u32 magic 0x3146464c ("LLF1"), u32 layer, u64 offset, u64 size
 *   answer   16 bytes: i32 status (0, or a negative ll_status), u32 0, u64 length
 *            then `length` bytes: exactly `size` when status is 0, else an error
 *            message (at most 4096 bytes) that is read and dropped
 *
 * all little-endian.  A connection that breaks or answers out of protocol is
 * closed and the read is LL_ERR_IO; when none is left every read is LL_ERR_IO.
 * No timeouts here: the other side has its own deadlines.  The bytes are not
 * trusted: ll_image verifies them (verify_fetched).
 *
 * Threads: ll_sockhost_source and reads from any thread, many at once (one
 * connection each); ll_sockhost_free once no read is running. */

typedef struct ll_sockhost ll_sockhost;

#define LL_SOCKHOST_MAGIC 0x3146464cu

/* A pool over `n` connected stream sockets (owned: closed by ll_sockhost_free),
 * serving layers 0..nlayers-1.  LL_ERR_ARG, LL_ERR_NOMEM. */
LL_API int ll_sockhost_create(const int *fds, unsigned n, uint32_t nlayers, ll_sockhost **out);
/* The ll_image_source of layer `layer` (use_disk 1).  LL_ERR_ARG. */
LL_API int ll_sockhost_source(ll_sockhost *h, uint32_t layer, ll_image_source *out);
LL_API void ll_sockhost_free(ll_sockhost *h);

/* ---------------------------------------------------------------- FUSE server
 *
 * A read-only FUSE file system of an ll_image, speaking the kernel's protocol
 * on /dev/fuse itself (no libfuse; docs/mount.md says why).  The kernel is told
 * to keep what it learns for long (the image never changes): entries,
 * attributes and negative lookups for entry/attr/negative_timeout seconds, file
 * pages across opens (OPEN and OPENDIR answer ENOSYS once: no_open), directory
 * listings with every entry's attributes (READDIRPLUS), reads of up to 1 MiB.
 * Cache hits are answered on the server threads (`threads` of them, each with
 * its own /dev/fuse descriptor); a read that needs a frame from the host goes
 * to one of `miss_threads` threads that call ll_image_read and answer the
 * request when it returns, so a waiting miss never holds up hits.  A read that
 * fails (a frame that does not verify, a failed fetch) is EIO, written to
 * log_fd with the file's path and the reason; the mount keeps serving.  Every
 * write is EROFS (the mount is read-only).
 *
 * Mounting: as root with mount(2) (/proc/mounts shows `fsname` and type
 * fuse.<subtype>), otherwise through fusermount3, which hands the /dev/fuse
 * descriptor back over a socket.
 *
 * Threads: ll_fuse_mount, ll_fuse_start, ll_fuse_wait and ll_fuse_free on one
 * thread, in that order; ll_fuse_unmount and ll_fuse_get_stats from any thread
 * at any time between ll_fuse_mount and ll_fuse_free.  The image and index
 * must outlive the server.  The host read callbacks are called on the miss
 * threads (a Python host takes its GIL there: a thread of the same process
 * that holds the GIL while touching the mount must not need a miss; see
 * docs/mount.md, "Deadlock hazard"). */

typedef struct ll_fuse ll_fuse;

typedef struct {
    size_t struct_size;        /* set by ll_fuse_options_init; first */
    const char *fsname;        /* the source /proc/mounts shows (default "lazylayer"); ',' and
                                  ' ' and anything below 0x20 become '_' */
    const char *subtype;       /* the type is fuse.<subtype> (default "lazylayer") */
    int allow_other;           /* let other users in (root, or user_allow_other in /etc/fuse.conf) */
    double entry_timeout;      /* seconds the kernel keeps a name -> inode (default 86400) */
    double attr_timeout;       /* seconds it keeps attributes (default 86400) */
    double negative_timeout;   /* seconds it keeps "no such name" (default 86400) */
    unsigned threads;          /* server threads (default 2; at most 64) */
    unsigned miss_threads;     /* threads waiting on host reads (default 16; at most 256) */
    int direct_io;             /* 1: OPEN is answered with FOPEN_DIRECT_IO, so every read reaches
                                  the server (benchmarks); default 0 (no_open, page cache kept) */
    int log_fd;                /* where EIO lines go (default -1: nowhere) */
    /* Called for each READ before it is served (a recorder of what a workload reads);
     * on a server thread, several at once.  NULL: none. */
    void (*on_read)(void *opaque, uint64_t ino, uint64_t offset, uint64_t size);
    void *on_read_opaque;
    /* FUSE passthrough (Linux >= 6.9, CAP_SYS_ADMIN): a regular file of at least
     * passthrough_min_size bytes whose frames are all in the memory or disk cache
     * is decoded once into a file of passthrough_dir (content-<key>, its sha256 in
     * the xattr user.lazylayer.sha256, checked whenever a server registers it), and
     * the kernel reads that file itself: no READ reaches the server.  OPEN is then
     * answered (no no_open).  Off (NULL) by default; where the kernel refuses, the
     * mount goes on without it. */
    const char *passthrough_dir;
    uint64_t passthrough_min_size;   /* default 1 MiB */
} ll_fuse_options;

typedef struct {
    uint64_t requests;         /* every request read from the kernel, INIT and FORGETs included */
    uint64_t lookups, getattrs, readdirs, reads, readlinks, xattrs, forgets, others;
    uint64_t negative;         /* LOOKUPs of names that do not exist */
    uint64_t bytes_read;       /* bytes answered to READs */
    uint64_t misses;           /* READs handed to a miss thread */
    uint64_t eio;              /* READs answered EIO */
    uint64_t passthrough;      /* OPENs answered with a backing file */
} ll_fuse_stats;

/* Defaults as documented in ll_fuse_options.  LL_ERR_ARG if opt is NULL or
 * struct_size too small.  Any thread. */
LL_API int ll_fuse_options_init(ll_fuse_options *opt, size_t struct_size);

/* Mount `img` read-only at `mountpoint`: /dev/fuse opened and mount(2) called
 * (root), else fusermount3 run.  Nothing is served until ll_fuse_start (a
 * process touching the mount point waits until then).  LL_ERR_MOUNT with the
 * reason in err; LL_ERR_ARG; LL_ERR_NOMEM. */
LL_API int ll_fuse_mount(ll_image *img, const char *mountpoint, const ll_fuse_options *opt, ll_fuse **out,
                         char *err, size_t err_size);

/* Answer the kernel's INIT, then start the server and miss threads; returns
 * once the mount answers requests.  LL_ERR_MOUNT (the kernel's handshake
 * failed), LL_ERR_THREAD. */
LL_API int ll_fuse_start(ll_fuse *f, char *err, size_t err_size);

/* Block until the mount is gone (unmounted by anyone, or ll_fuse_unmount) and
 * every thread has ended.  LL_OK. */
LL_API int ll_fuse_wait(ll_fuse *f);

/* Unmount (lazily: processes still inside keep what they hold): umount2 with
 * MNT_DETACH as root, else `fusermount3 -u -z`.  LL_OK, or LL_ERR_MOUNT with
 * the reason in err (already unmounted is LL_OK). */
LL_API int ll_fuse_unmount(ll_fuse *f, char *err, size_t err_size);

LL_API void ll_fuse_get_stats(ll_fuse *f, ll_fuse_stats *out);

/* Tell the kernel to drop the cached pages of every regular file of `layer`
 * (FUSE_NOTIFY_INVAL_INODE), so that later reads reach the server: with
 * ll_image_fail_layer, a layer found bad is refused from then on, whatever the
 * page cache held.  The number of files the kernel was told about (those it
 * does not hold are skipped), or LL_ERR_ARG before ll_fuse_start.  Any thread
 * but a server thread. */
LL_API int64_t ll_fuse_invalidate_layer(ll_fuse *f, uint32_t layer);

/* Free the server (after ll_fuse_wait, or instead of ll_fuse_start after a
 * failure: then it unmounts first). */
LL_API void ll_fuse_free(ll_fuse *f);

/* ---------------------------------------------------------------- gzip checkpoints
 *
 * Random access into a gzip stream as it is, the idea of zlib's examples/zran.c.
 * An ll_gzindexer inflates a gzip stream once (one gzip member or several,
 * concatenated) and takes a checkpoint at a deflate block boundary after every
 * `span` bytes of output or more: where the block starts in the compressed
 * stream (a byte offset, plus 0..7 bits of the byte before it), its offset in
 * the output, and the 32 KiB of output before it (the window deflate may refer
 * back into).  ll_gz_inflate_span then inflates the output from one checkpoint
 * to the next from nothing but that checkpoint and the compressed bytes between
 * them.  Both parse untrusted bytes: corrupt input is LL_ERR_FRAME, never a
 * crash or output past the caller's buffer (fuzzed: csrc/fuzz/fuzz_gzindex.c). */

#define LL_GZ_WINDOW 32768

typedef struct ll_gzindexer ll_gzindexer;

typedef struct {
    uint64_t in;           /* compressed offset of the first whole byte of the span */
    uint64_t out;          /* uncompressed offset of the checkpoint */
    uint32_t bits;         /* 0..7: low bits of the byte before `in` that start the span */
    uint32_t byte;         /* that byte (meaningful when bits > 0) */
    uint32_t window_size;  /* bytes of window: LL_GZ_WINDOW, or less within 32 KiB of the start */
    uint8_t window[LL_GZ_WINDOW];
} ll_gz_checkpoint;

/* An indexer taking a checkpoint every `span` (>= 1) bytes of output or more
 * (the first one where the first deflate block starts).  One thread at a time. */
LL_API int ll_gzindexer_create(uint64_t span, ll_gzindexer **out);
/* Inflate the next compressed bytes: like zlib's inflate, it consumes some of
 * `in` (*in_used) and writes up to out_cap bytes of output (*out_len); call it
 * again with the rest of the input when it has not used it all (out_cap was
 * full).  A member's end is followed by the next member or the end of the
 * input.  LL_OK; LL_ERR_FRAME for bytes that are not gzip or are corrupt (a
 * member's CRC-32 or length included), with *in_used and *out_len saying what
 * was consumed and produced before the error; LL_ERR_STATE after a failure. */
LL_API int ll_gzindexer_inflate(ll_gzindexer *g, const void *in, size_t in_len, size_t *in_used,
                                void *out, size_t out_cap, size_t *out_len);
/* Stop checking the members' CRC-32s (zlib's inflateValidate): for a caller
 * that checks the stream another way, a digest over the compressed bytes,
 * which the output is a function of (the CRC then costs ~10% of the inflate
 * and proves nothing more).  Call it before the first inflate.  LL_OK, or
 * LL_ERR_ARG / LL_ERR_STATE after the first inflate. */
LL_API int ll_gzindexer_skip_crc(ll_gzindexer *g);
/* 1 if the input so far ends exactly at the end of a member (a complete
 * stream, if nothing follows), else 0. */
LL_API int ll_gzindexer_complete(const ll_gzindexer *g);
/* Bytes consumed and produced so far. */
LL_API void ll_gzindexer_totals(const ll_gzindexer *g, uint64_t *in, uint64_t *out);
/* Move the oldest checkpoint not yet taken into *cp: LL_OK, or LL_ERR_NOENT if
 * there is none.  Take them after each inflate call: each call adds at most
 * one per block boundary it crossed, so they stay few. */
LL_API int ll_gzindexer_take(ll_gzindexer *g, ll_gz_checkpoint *cp);
LL_API void ll_gzindexer_free(ll_gzindexer *g);

/* Inflate exactly `size` bytes of output from checkpoint (bits, byte, window)
 * and the compressed bytes `src` that follow it (the span to the next
 * checkpoint: any member end, CRC-32 and next member header within it are
 * handled; the CRC-32 of a member that began before the checkpoint cannot be
 * checked, the span's sha256 vouches for it).  LL_OK, LL_ERR_FRAME if the
 * bytes are corrupt or give less, LL_ERR_ARG for a bad argument.  Any thread. */
LL_API int ll_gz_inflate_span(uint32_t bits, uint32_t byte, const void *window, size_t window_size,
                              const void *src, size_t src_len, void *dst, size_t size);

/* ---------------------------------------------------------------- encoded frames
 *
 * A frame of a raw layer (a chunk of another format: an eStargz gzip member,
 * zstd:chunked zstd frames, a span of a plain gzip layer) may be kept in the disk
 * cache as it was fetched, still compressed, instead of as its data: the file
 * <dir>/v1/frames/<2 hex>/<64 hex>.z beside where its data would be, named by
 * the sha256 of its *data*, so that fetching ahead costs a write of what came
 * over the network and nothing more (docs/cache.md, "Encoded frames").  The
 * file is a 24-byte header, then for LL_CHUNK_GZSPAN the checkpoint's window,
 * then the compressed bytes (all little-endian):
 *
 *   0  8  magic "LLCHNKZ1"
 *   8  1  codec: LL_CHUNK_ZEROS (no payload), LL_CHUNK_GZIP (a gzip member, or
 *         several, whose first `size` bytes of output are the data),
 *         LL_CHUNK_ZSTD (zstd frames, likewise), LL_CHUNK_GZSPAN (raw deflate
 *         from an ll_gz_checkpoint: ll_gz_inflate_span)
 *   9  1  bits (LL_CHUNK_GZSPAN: 0..7; else 0)
 *  10  1  byte (LL_CHUNK_GZSPAN, with bits > 0; else 0)
 *  11  1  0
 *  12  4  window length (LL_CHUNK_GZSPAN: at most LL_GZ_WINDOW; else 0)
 *  16  8  size: bytes of data (at most LL_MAX_FRAME_SIZE)
 *
 * An LL_CHUNK_RUN file is a run of small chunks read as one frame: its header's
 * window length is the run's number of chunks n, then come its table (n
 * entries of LL_RUN_ENTRY bytes) and payload, as ll_run_decode takes them; it
 * is named not by its data but by the sha256 of its table (the frame's name in
 * the index: ll_chunked_convert makes it so), and each chunk's data is checked
 * against the table's sha256 for it.
 *
 * ll_diskcache_get (and the image reader's disk lookups) read a frame's data
 * file first, then its encoded file, which is decoded and checked like any
 * frame: a file that does not decode to exactly its data is a miss and is
 * deleted.  The Python package writes these files; C only reads them. */

#define LL_CHUNK_HEADER 24
#define LL_CHUNK_ZEROS 0
#define LL_CHUNK_GZIP 1
#define LL_CHUNK_ZSTD 2
#define LL_CHUNK_GZSPAN 3
#define LL_CHUNK_RUN 4    /* a run of chunks (ll_run_decode): window length = its n entries */

/* Decode encoded frame `src` (len bytes: header, window, payload) into exactly
 * `size` bytes at dst and check their sha256 against `sha256` (an LL_CHUNK_RUN
 * file: its table's sha256, and each chunk against its own).  Never writes
 * past dst + size nor allocates more than a zstd window of 128 MiB, whatever the
 * bytes say.  LL_OK; LL_ERR_FORMAT if the header is malformed or gives another
 * size; LL_ERR_FRAME if the payload does not decode to `size` bytes;
 * LL_ERR_DIGEST if it decodes to other bytes; LL_ERR_NOMEM.  Fuzzed
 * (csrc/fuzz/fuzz_chunk.c).  Any thread. */
LL_API int ll_chunk_decode(const void *src, size_t len, const uint8_t sha256[32], void *dst, size_t size);

/* A run of small chunks read as one frame (a host's choice: one request and one
 * disk-cache file for many chunks of an eStargz or zstd:chunked layer).  Its
 * chunks' compressed bytes are `payload` (the blob's span from the first
 * chunk's start to the last one's end, gaps included), described by `table`:
 * n entries of LL_RUN_ENTRY bytes, each little-endian
 *
 *   0  4  offset of the chunk's compressed bytes in payload
 *   4  4  their length (0 for LL_CHUNK_ZEROS)
 *   8  4  size: bytes of data
 *  12  1  codec: LL_CHUNK_ZEROS, LL_CHUNK_GZIP or LL_CHUNK_ZSTD (as an encoded
 *         frame's: the first `size` bytes the bytes decompress to)
 *  13  3  0
 *  16 32  sha256 of the chunk's data
 *
 * ll_run_decode decodes every chunk, in order, into dst (exactly `size` bytes,
 * the sum of the entries' sizes) and checks each against its own sha256, with
 * one inflate state and one zstd context for the whole run.  LL_OK;
 * LL_ERR_FORMAT for a malformed table (an entry outside the payload, an unknown
 * codec, sizes that do not add up to `size`, n of 0 or over LL_RUN_MAX_CHUNKS);
 * LL_ERR_FRAME if a chunk does not decode to its size; LL_ERR_DIGEST if it
 * decodes to other bytes; LL_ERR_NOMEM.  *bad (if not NULL) gets the entry at
 * fault.  Never writes past dst + size.  Fuzzed (csrc/fuzz/fuzz_chunk.c).  Any
 * thread. */
#define LL_RUN_ENTRY 48
#define LL_RUN_MAX_CHUNKS 65536
LL_API int ll_run_decode(const void *table, uint32_t n, const void *payload, size_t payload_len, void *dst,
                         size_t size, uint32_t *bad);

/* ---------------------------------------------------------------- chunked TOCs
 *
 * eStargz and zstd:chunked layers (stargz-snapshotter's TOC schema, with
 * containers/storage's additions) are read through a raw layer: lazylayer's
 * TOC over a virtual stream in which each regular file's chunks lie end to
 * end, one raw frame per chunk named by the sha256 of its data
 * (docs/format.md, "Raw frames"), and one row per chunk saying where its
 * compressed bytes are in the blob.  ll_chunked_convert makes both from the
 * TOC's JSON (vouched for by its digest, still treated as hostile): every
 * check of docs/filesystem.md's "eStargz layers" and "zstd:chunked layers" in
 * one pass, runs of zeros over 1 MiB and chunks over 64 MiB cut into pieces.
 * With ll_chunked_options.run_size, each run of small chunks (consecutive
 * rows of gzip, zstd or zeros chunks of at most run_chunk bytes, each chunk's
 * compressed bytes at most run_gap after the end of the one before it that has
 * bytes, up to run_size of data, LL_RUN_MAX_CHUNKS chunks and 2 * run_size
 * bytes of the blob) is one frame instead, named by the sha256 of its table as
 * ll_run_decode takes it (entries relative to the run's first compressed byte):
 * its host keeps it as an LL_CHUNK_RUN encoded frame and checks each chunk; the
 * rows stay one per chunk.
 *
 * A chunk's compressed bytes end where the next chunk's (or an endOffset, or
 * the TOC) begins, but never more than size + size / 8 + LL_CHUNK_SPAN_SLACK
 * bytes after they start: a host that fetches a chunk reads a bounded range, whatever the
 * TOC says.
 *
 * A row is LL_CHUNKED_ROW_SIZE bytes, little-endian: file offset (8), size (4),
 * the compressed bytes' offset (8) and end (8) in the blob, the sha256 of the
 * data (32; of the whole chunk for a piece of a big one), the codec (1: an
 * LL_ROW_* value), and 4 zero bytes (a gzip span's bits, byte and window
 * length: spans are not made here).  The TOC is JSON, as lazylayer's TOC frame
 * carries it before compression (ll_index_build takes it in a frame). */
#define LL_CHUNKED_ROW_SIZE 65
#define LL_CHUNK_SPAN_SLACK 1048576 /* a chunk's bytes: at most size + size / 8 + this */
#define LL_ROW_GZIP 0          /* a gzip member (or several) whose first `size` bytes of output are the data */
#define LL_ROW_ZSTD 1          /* zstd frames, likewise */
#define LL_ROW_ZEROS 2         /* `size` zero bytes, made by the host, never fetched */
#define LL_ROW_GZSPAN 3        /* a span of a plain gzip layer (lazylayer index; not made here) */
#define LL_ROW_GZIP_WHOLE 4    /* a piece of a gzip chunk over 64 MiB: read through a checked copy */
#define LL_ROW_ZSTD_WHOLE 5    /* likewise for zstd */
#define LL_CHUNKED_HIDE_STARGZ 1u  /* leave stargz.index.json and the prefetch landmarks out of the tree */

typedef struct ll_chunked ll_chunked;

typedef struct {
    size_t struct_size;     /* sizeof(ll_chunked_options) as the caller compiled it: ll_chunked_options_init */
    uint64_t toc_offset;    /* the chunks lie before it in the blob (no default) */
    int codec;              /* LL_CHUNK_GZIP (eStargz, the default) or LL_CHUNK_ZSTD (zstd:chunked) */
    unsigned flags;         /* LL_CHUNKED_HIDE_STARGZ (the default for eStargz) or 0 */
    uint64_t max_chunk;     /* the largest chunk read as one frame (64 MiB; at most LL_MAX_FRAME_SIZE) */
    uint64_t whole_piece;   /* the frames a larger chunk that starts its file is cut into (4 MiB) */
    /* --- added after the first version (which ends at whole_piece) */
    uint64_t run_size;      /* > 0: runs of small chunks made one frame each, of at most this much data
                               (at most LL_MAX_FRAME_SIZE; default 0: a frame per chunk) */
    uint64_t run_chunk;     /* the largest chunk that joins a run (at most run_size) */
    uint64_t run_gap;       /* the most blob bytes between two chunks of a run */
} ll_chunked_options;

/* Fill `opt` with the defaults, as ll_reader_options_init does (docs/c-api.md,
 * "Options carry their size").  Any thread. */
LL_API int ll_chunked_options_init(ll_chunked_options *opt, size_t struct_size);

/* Convert a chunked TOC's JSON (len bytes, not modified) as `opt` says.
 * LL_OK and *out; LL_ERR_FORMAT for a malformed or hostile TOC; LL_ERR_LIMIT
 * over a format limit (entries, frames, JSON size); LL_ERR_UNSUPPORTED for a
 * valid layer this library does not read lazily (innerOffset, a chunk over
 * max_chunk that does not start its file or is over 64 GiB, more than 4 GiB of
 * zero runs to check): its host should fetch it whole; LL_ERR_NOMEM; LL_ERR_ARG.
 * The message names the entry and the fault.  Fuzzed (csrc/fuzz/fuzz_chunked.c).
 * Any thread. */
LL_API int ll_chunked_convert(const void *json, size_t len, const ll_chunked_options *opt, ll_chunked **out,
                              char *err, size_t err_size);
/* The TOC made: *len bytes of JSON, owned by c.  Any thread. */
LL_API const uint8_t *ll_chunked_json(const ll_chunked *c, size_t *len);
/* The rows: *count rows of LL_CHUNKED_ROW_SIZE bytes, one per chunk (a frame's, or one of a run's,
 * in the stream's order), owned by c.  Any thread. */
LL_API const uint8_t *ll_chunked_rows(const ll_chunked *c, uint64_t *count);
/* The virtual stream's size (the TOC's tar_size: every file's chunks end to end).  Any thread. */
LL_API uint64_t ll_chunked_stream_size(const ll_chunked *c);
LL_API void ll_chunked_free(ll_chunked *c);

/* ---------------------------------------------------------------- EROFS images
 *
 * The image as a Linux EROFS file system (docs/mount.md, "The erofs backend"),
 * for the kernel to serve with no user-space step per lookup or cached read.
 * Two files: the *metadata image* (superblock, inodes, directories, symlinks,
 * devices, extended attributes: everything but file contents), built here in
 * memory; and a *data file*, the image's extra device, in which every regular
 * file's content lies at a block-aligned offset, one extent per file (a
 * chunk-based inode with one chunk), hard links sharing theirs.  The data file
 * starts sparse and is filled by the host (ll_erofs_data_at says what a range of
 * it holds).  The layout follows the kernel's Documentation/filesystems/erofs.rst
 * and fs/erofs/erofs_fs.h: 4 KiB blocks, 64-byte inodes, inline xattrs, tails of
 * directories and symlinks inline when they fit their block.  Checked in tests by
 * erofs-utils' fsck.erofs and a real mount; fuzzed through fuzz_index_load.
 *
 * Threads: an ll_erofs is immutable once built; any thread, any number at once,
 * except ll_erofs_free. */

typedef struct ll_erofs ll_erofs;

#define LL_EROFS_BLOCK 4096

/* Build the EROFS view of `idx`.  `uuid`: 16 bytes for the superblock (e.g. from
 * the manifest digest), NULL for zeros.  `layout_only` 1: only the data file's
 * layout, no metadata image (ll_erofs_meta gives none): for a host that kept the
 * image it built before (checked with ll_erofs_sum), about 20x faster.
 * LL_ERR_LIMIT (with the reason in err) for what EROFS cannot hold: an extended
 * attribute outside the user., trusted., security. and system.posix_acl_*
 * namespaces or over 64 KiB, a data file over 16 TiB; LL_ERR_NOMEM, LL_ERR_ARG.
 * Memory: the metadata image plus 64 bytes per inode while building, then the
 * image plus 24 bytes per regular file. */
LL_API int ll_erofs_build(const ll_index *idx, const uint8_t *uuid, int layout_only, ll_erofs **out, char *err,
                          size_t err_size);
/* The metadata image: `*size` bytes (a multiple of LL_EROFS_BLOCK) at `*data`,
 * owned by the ll_erofs (NULL and 0 for a layout_only build). */
LL_API void ll_erofs_meta(const ll_erofs *e, const void **data, size_t *size);
/* A 64-bit checksum (XXH3) of `size` bytes: what a host keeps beside a metadata
 * image it stored, to find it intact before mounting it again.  Any thread. */
LL_API uint64_t ll_erofs_sum(const void *data, size_t size);
/* The version of the layout ll_erofs_build writes: part of the name a host keeps
 * a metadata image under, so that an image from another version is never taken. */
#define LL_EROFS_VERSION 2
/* The data file's size in bytes (a multiple of LL_EROFS_BLOCK; what the
 * metadata image's device table says). */
LL_API uint64_t ll_erofs_data_size(const ll_erofs *e);
/* Where regular file `ino`'s content starts in the data file.  LL_ERR_NOTREG
 * for an inode that is not a regular file, or an empty one; LL_ERR_ARG. */
LL_API int ll_erofs_file_offset(const ll_erofs *e, uint64_t ino, uint64_t *offset);
/* What the data file holds at `offset`: content of inode *ino from *file_offset
 * on, for *len bytes (to the end of that file's content); or, in the padding
 * after a file's last byte up to its block's end, *ino 0 and *len the padding's
 * bytes (zeros).  LL_ERR_ARG past the end. */
LL_API int ll_erofs_data_at(const ll_erofs *e, uint64_t offset, uint64_t *ino, uint64_t *file_offset,
                            uint64_t *len);
LL_API void ll_erofs_free(ll_erofs *e);
/* Fill bytes [offset, offset + length) of the data file through `fd` (cut to the
 * data file's end): every file's bytes there read with ll_image_read from `img`
 * (an ll_image of the index `e` was built from: its frames checked as always,
 * the missing ones asked of its sources) and written with pwrite; padding is
 * left alone.  *written (if not NULL) gets the bytes written.  LL_OK; a read's
 * status, with *bad_ino (if not NULL) the inode it failed on; LL_ERR_IO for a
 * failed write (errno kept).  Memory: a buffer of at most 1 MiB.  Any thread
 * (ll_image_read's rules). */
LL_API int ll_erofs_fill(const ll_erofs *e, ll_image *img, int fd, uint64_t offset, uint64_t length,
                         uint64_t *written, uint64_t *bad_ino);

/* ---------------------------------------------------------------- EROFS supervisor
 *
 * An EROFS mount whose data file is filled on demand: the kernel raises a
 * fanotify pre-content event (FAN_PRE_ACCESS, Linux >= 6.14) before any read of
 * the data file and holds the reader until the event is answered.  If the group
 * that holds the mark goes away, pending and later reads are let through and an
 * unfilled range reads as zeros; so the group is held by a supervisor process
 * that outlives the daemon which fills: the child ll_erofs_spawn forks, which
 * runs C only and never returns to the host's code.  It
 *   - protects itself from the OOM killer and ignores SIGINT, SIGTERM, SIGHUP;
 *   - marks the data file for pre-content events, then mounts (mount(2), the
 *     file-backed way: the mark must come first, the kernel decides at open);
 *   - answers an event for blocks already filled itself (allow), and hands
 *     every other to the daemon over `sock` (a SOCK_SEQPACKET socket) with the
 *     event's descriptor, through which the daemon writes the data (writing
 *     through any other descriptor would raise an event of its own);
 *   - when the daemon is gone (its end of `sock` closed: killed, crashed),
 *     denies every pending event and every later one for a block not filled
 *     with EIO, and detaches the mount; a block filled before is still served;
 *   - stays until the file system is gone (its /sys/fs/erofs entry: the last
 *     process holding a file in it has let go), then writes the bitmap of
 *     filled blocks to `filled_path` (after fdatasync of the data file) and
 *     exits; once every block is filled it takes the mark off (no more events).
 * Messages on `sock` are ll_erofs_msg structs (host byte order); a FILL
 * carries the event's descriptor (SCM_RIGHTS), the daemon answers with DONE
 * and the same id.  docs/mount.md, "The erofs backend", has the whole story. */

#define LL_EROFS_MSG_MOUNTED 1   /* S->D: status 0 (mounted) or an error (text) */
#define LL_EROFS_MSG_FILL 2      /* S->D: fill [offset, offset+length) through the fd, answer DONE */
#define LL_EROFS_MSG_GONE 3      /* S->D: the file system is gone; the supervisor exits */
#define LL_EROFS_MSG_DONE 10     /* D->S: id answered: status 0 (filled offset/length), else the read fails with EIO */
#define LL_EROFS_MSG_FILLED 11   /* D->S: [offset, offset+length) filled (ahead of any event) */
#define LL_EROFS_MSG_UNMOUNT 12  /* D->S: detach the mount; keep serving until it is gone */
#define LL_EROFS_MSG_START 13    /* D->S: the files are ready (length: the data file's size): mount */

typedef struct {
    uint32_t type;
    uint32_t id;
    int32_t status;
    uint32_t reserved;
    uint64_t offset, length;
    char text[224];
} ll_erofs_msg;

/* Fork the supervisor of the EROFS mount of `meta_path` (device `data_path`) at
 * `mountpoint`, as above; *pid gets its pid.  The child runs C only (no host code
 * after the fork) and talks over `sock` (its end of the socket pair; the host
 * closes it after this returns).  It waits for START (length: the data file's
 * size, which the host has made it), so that the host may fork it first and
 * ready the files meanwhile; it reads the bitmap it left at `filled_path` (if it
 * is about this data file), marks, mounts, and answers MOUNTED: status 0 (offset:
 * the bytes already filled) or an errno and the reason.  LL_ERR_ARG, LL_ERR_MOUNT
 * (fork failed; the reason in err).  Any thread. */
LL_API int ll_erofs_spawn(const char *meta_path, const char *data_path, const char *mountpoint,
                          const char *filled_path, int sock, int *pid, char *err, size_t err_size);
/* The same supervisor as a program of its own: `program` is lazylayer-erofsd
 * (built with the library: its main() is ll_erofs_supervisor_main), started
 * with posix_spawn(3) in a session of its own, `sock` its descriptor 3, an
 * empty environment.  Unlike ll_erofs_spawn it copies nothing of the host:
 * starting it costs no fork of the host's memory (milliseconds for a host of
 * tens of MB, during which the host's threads cannot fault a page in), and it
 * holds a few hundred KB instead of the host's pages as they were.  Same
 * protocol, same return values (LL_ERR_MOUNT: the program could not be
 * started).  Any thread. */
LL_API int ll_erofs_exec(const char *program, const char *meta_path, const char *data_path, const char *mountpoint,
                         const char *filled_path, int sock, int *pid, char *err, size_t err_size);
/* Can this process supervise a data file at `path` (an existing file, on the
 * file system the data file would be on)?  0 if it can; else an errno, and
 * *what says which step failed: 1 fanotify_init of a pre-content group (not
 * root, or Linux < 6.14), 2 the pre-content mark on `path` (EOPNOTSUPP: a file
 * system without them, such as tmpfs).  Leaves no mark.  Any thread. */
LL_API int ll_erofs_probe(const char *path, int *what);
/* main() of lazylayer-erofsd: argv = program META DATA MOUNTPOINT FILLED SOCKET-FD.
 * Returns 2 (usage, said on stderr) for bad arguments; otherwise supervises and
 * exits, never returning. */
LL_API int ll_erofs_supervisor_main(int argc, char **argv);

/* cffi-end */

#ifdef __cplusplus
}
#endif
#endif /* LAZYLAYER_H */
