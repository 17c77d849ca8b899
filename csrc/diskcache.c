/* diskcache.c - the Python package's disk cache (docs/cache.md), opened from C.
 *
 * Same directory, same layout, same lock protocol as lazylayer/image/cache.py,
 * so C and Python (in one process or many) share a cache safely:
 *
 *   <dir>/v1/frames/<2 hex>/<64 hex>   a frame, named by the sha256 of its bytes
 *   <dir>/v1/frames/<2 hex>/<64 hex>.z a raw layer's frame kept encoded (ll_chunk_decode)
 *   <dir>/v1/files/<name>              derived files (here: index-<64 hex>.v<N>)
 *   <dir>/v1/tmp/.w-XXXXXX             files being written
 *
 * - Reading (DiskCache._read): open, flock(LOCK_SH) for as long as we read (a
 *   trim takes flock(LOCK_EX|LOCK_NB) and skips what it cannot lock), read,
 *   sha256 against the name, refresh the mtime (LRU).  A mismatch is deleted,
 *   but only if flock(LOCK_EX|LOCK_NB) succeeds (nobody else reads it) and the
 *   path still names the file we read (fstat vs stat: not replaced meanwhile).
 * - Writing (DiskCache._write): a temporary file in tmp/ (mkostemp, prefix
 *   ".w-", mode 0600) held with flock(LOCK_EX) while it is filled (a trim
 *   removes only *unlocked* temporary files over an hour old), then renamed
 *   into place, the fan-out directory made on ENOENT.
 * - A mapped index file is held with flock(LOCK_SH) from before it is mapped
 *   until ll_index_free: a pin, exactly as Python's DiskCache.pin.
 *
 * What C does NOT do, on purpose:
 * - It never opens <dir>/v1/lock, the file of the fetch single-flight POSIX
 *   record locks.  Record locks belong to the process, and closing *any*
 *   descriptor of that file drops *all* of the process's locks on it, so a C
 *   open/close in a process that also runs the Python package would silently
 *   release the Python side's locks.  A C host that wants single-flight takes
 *   those locks itself, through the one descriptor its process keeps.
 * - It does not trim: the Python side's trims count and evict what C wrote.
 *
 * Every descriptor is O_CLOEXEC; every call that can be interrupted by a
 * signal is retried on EINTR.  No global state: an ll_diskcache is just a path. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#define SUBDIR_MAX 96 /* longest name below the root: "files/index-<64 hex>.v<n>" or a frame */

/* The frame-file memo (see ll__diskcache_get): a bounded, direct-mapped table
 * keyed by the frame's sha256 (uniformly distributed: its first bytes pick the
 * slot; a colliding frame just replaces the slot).  It says, for the file this
 * process last read under that name, which file it was and how it looked
 * (device, inode, size, mtime, ctime) when its bytes were last hashed and
 * found right, and when this process last refreshed its mtime. */
#define MEMO_SLOTS 4096u              /* 4096 * 104 bytes: ~416 KiB per ll_diskcache */
#define MEMO_INTERVAL_NS (10ull * 1000000000ull) /* touch (and, trusted, re-hash) at most this often */
typedef struct {
    uint8_t sha256[32];
    uint64_t dev, ino, size;
    int64_t mtime_sec, ctime_sec;
    uint32_t mtime_nsec, ctime_nsec;
    uint64_t touched;   /* CLOCK_MONOTONIC ns of this process's last touch; 0: never */
    int verified;       /* the file with these stamps hashed right (after that touch) */
} memo_slot;

struct ll_diskcache {
    char *root;      /* "<dir>/v1" */
    size_t root_len;
    pthread_mutex_t memo_lock;
    memo_slot *memo; /* MEMO_SLOTS slots, or NULL (out of memory: no memo, every read hashed and touched) */
};

/* ---------------------------------------------------------------- helpers */

static void set_err(char *err, size_t err_size, const char *fmt, const char *path, int e) {
    if (err && err_size) snprintf(err, err_size, fmt, path, strerror(e));
}

static int open_retry(const char *path, int flags, mode_t mode) {
    int fd;
    do fd = open(path, flags | O_CLOEXEC, mode);
    while (fd < 0 && errno == EINTR);
    return fd;
}

static int flock_retry(int fd, int op) {
    int rc;
    do rc = flock(fd, op);
    while (rc < 0 && errno == EINTR);
    return rc;
}

/* The path still names the file open at fd (not unlinked, not replaced). */
static int same_file(int fd, const char *path) {
    struct stat a, b;
    if (fstat(fd, &a) != 0 || stat(path, &b) != 0) return 0;
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* Delete the file open at fd (path), only if nobody else uses it and it is
 * still that file: as DiskCache._read does with a corrupt entry. */
static void unlink_if_unused(int fd, const char *path) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0 && same_file(fd, path)) unlink(path);
}

/* Refresh the mtime (LRU); a read-only copy of a cache is still usable. */
static void touch(int fd) { (void)futimens(fd, NULL); }

/* mkdir -p with mode 0700 (as os.makedirs(mode=0o700, exist_ok=True)). */
static int mkdir_p(const char *path) {
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        if (buf[i - 1] == '/') continue; /* "//" */
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
        buf[i] = c;
    }
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* Make <dir>/v1 and its subdirectories; on failure errno, and *bad the path. */
static int make_dirs(const ll_diskcache *dc, char *bad, size_t bad_size) {
    static const char *const subs[] = {"", "/frames", "/files", "/tmp", "/locks"};
    char p[PATH_MAX];
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        snprintf(p, sizeof p, "%s%s", dc->root, subs[i]);
        if (mkdir_p(p) != 0 || access(p, W_OK | X_OK) != 0) {
            if (bad) snprintf(bad, bad_size, "%s", p);
            return -1;
        }
    }
    return 0;
}

static const char hexdig[] = "0123456789abcdef";

static void to_hex(const uint8_t sha256[32], char out[65]) {
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hexdig[sha256[i] >> 4];
        out[2 * i + 1] = hexdig[sha256[i] & 15];
    }
    out[64] = '\0';
}

/* "<root>/frames/<2 hex>/<64 hex>" into p (PATH_MAX bytes). */
static void frame_path(const ll_diskcache *dc, const uint8_t sha256[32], char *p) {
    char hex[65];
    to_hex(sha256, hex);
    snprintf(p, PATH_MAX, "%s/frames/%.2s/%s", dc->root, hex, hex);
}

/* "<root>/files/index-<64 hex>.v<N>" for "sha256:<64 lowercase hex>"; -1 if malformed. */
static int index_path(const ll_diskcache *dc, const char *digest, char *p) {
    if (!digest || strncmp(digest, "sha256:", 7) != 0) return -1;
    const char *h = digest + 7;
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'))) return -1;
    if (h[64] != '\0') return -1;
    snprintf(p, PATH_MAX, "%s/files/index-%s.v%d", dc->root, h, LL_INDEX_FORMAT_VERSION);
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read up to n bytes at offset 0..; returns the bytes read (short at end of
 * file) or -1. */
static ssize_t read_full(int fd, uint8_t *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Write `size` bytes to a temporary file and rename it to `path` (a file in
 * <root>/frames/<2 hex>/ or <root>/files/).  Nothing is left behind on failure. */
static int atomic_write(const ll_diskcache *dc, const char *path, const void *data, size_t size) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/tmp/.w-XXXXXX", dc->root);
    int fd = mkostemp(tmp, O_CLOEXEC); /* mode 0600 */
    if (fd < 0 && errno == ENOENT) {   /* the tree was removed under us: make it again */
        if (make_dirs(dc, NULL, 0) != 0) return LL_ERR_CACHE;
        snprintf(tmp, sizeof tmp, "%s/tmp/.w-XXXXXX", dc->root);
        fd = mkostemp(tmp, O_CLOEXEC);
    }
    if (fd < 0) return LL_ERR_CACHE;
    /* Locked while being written: a trim removes only unlocked temporary files. */
    int ok = flock_retry(fd, LOCK_EX) == 0 && write_all(fd, data, size) == 0;
    if (ok && rename(tmp, path) != 0) {
        ok = 0;
        if (errno == ENOENT) { /* the fan-out directory does not exist yet */
            char dir[PATH_MAX];
            snprintf(dir, sizeof dir, "%s", path);
            char *slash = strrchr(dir, '/');
            if (slash) {
                *slash = '\0';
                if (mkdir_p(dir) == 0 && rename(tmp, path) == 0) ok = 1;
            }
        }
    }
    if (!ok) unlink(tmp);
    close(fd); /* drops the flock */
    return ok ? LL_OK : LL_ERR_CACHE;
}

/* ---------------------------------------------------------------- open, free */

int ll_diskcache_open(const char *dir, ll_diskcache **out, char *err, size_t err_size) {
    if (err && err_size) err[0] = '\0';
    if (!dir || !*dir || !out) return LL_ERR_ARG;
    *out = NULL;
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    if (n + 3 + SUBDIR_MAX >= PATH_MAX) {
        set_err(err, err_size, "disk cache: cannot use %s: %s", dir, ENAMETOOLONG);
        return LL_ERR_CACHE;
    }
    ll_diskcache *dc = calloc(1, sizeof *dc);
    if (!dc) return LL_ERR_NOMEM;
    dc->root = malloc(n + 4);
    if (!dc->root) {
        free(dc);
        return LL_ERR_NOMEM;
    }
    memcpy(dc->root, dir, n);
    memcpy(dc->root + n, "/v1", 4);
    dc->root_len = n + 3;
    pthread_mutex_init(&dc->memo_lock, NULL);
    dc->memo = calloc(MEMO_SLOTS, sizeof *dc->memo); /* NULL: no memo, still correct */
    char bad[PATH_MAX];
    if (make_dirs(dc, bad, sizeof bad) != 0) {
        int e = errno;
        set_err(err, err_size, "disk cache: cannot create or write to %s: %s", bad, e);
        ll_diskcache_free(dc);
        return LL_ERR_CACHE;
    }
    *out = dc;
    return LL_OK;
}

void ll_diskcache_free(ll_diskcache *dc) {
    if (!dc) return;
    free(dc->memo);
    pthread_mutex_destroy(&dc->memo_lock);
    free(dc->root);
    free(dc);
}

/* ---------------------------------------------------------------- frames */

static uint64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static memo_slot *memo_slot_of(const ll_diskcache *dc, const uint8_t sha256[32]) {
    uint32_t h;
    memcpy(&h, sha256, sizeof h);
    return &dc->memo[h % MEMO_SLOTS];
}

/* The identity and change stamps of a file, as the memo compares them. */
static void stamps(const struct stat *st, memo_slot *m) {
    m->dev = (uint64_t)st->st_dev;
    m->ino = (uint64_t)st->st_ino;
    m->size = (uint64_t)st->st_size;
    m->mtime_sec = (int64_t)st->st_mtim.tv_sec;
    m->mtime_nsec = (uint32_t)st->st_mtim.tv_nsec;
    m->ctime_sec = (int64_t)st->st_ctim.tv_sec;
    m->ctime_nsec = (uint32_t)st->st_ctim.tv_nsec;
}

static int same_stamps(const memo_slot *a, const memo_slot *b) {
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_sec == b->mtime_sec &&
           a->mtime_nsec == b->mtime_nsec && a->ctime_sec == b->ctime_sec && a->ctime_nsec == b->ctime_nsec;
}

/* Read the frame file at fd (open, shared-locked) the old way: up to size + 1
 * bytes, hashed.  LL_OK, or LL_ERR_NOENT (with *corrupt and the file deleted
 * if unused when its bytes do not match). */
static int read_and_hash(int fd, const char *path, const uint8_t sha256[32], uint8_t *dst, size_t size,
                         int *corrupt) {
    ssize_t got = read_full(fd, dst, size);
    if (got < 0) return LL_ERR_NOENT; /* EIO, a directory where a file should be...: a miss */
    uint8_t h[32];
    if ((size_t)got < size) {
        /* Short: either a truncated entry or the caller expects the wrong size.
         * What we have is the whole file: hash it to tell which. */
        ll_sha256(dst, (size_t)got, h);
        if (memcmp(h, sha256, 32) != 0) {
            if (corrupt) *corrupt = 1;
            unlink_if_unused(fd, path);
        }
        return LL_ERR_NOENT;
    }
    uint8_t extra;
    ssize_t more;
    do more = read(fd, &extra, 1); /* longer than expected: a miss, not read further */
    while (more < 0 && errno == EINTR);
    if (more != 0) return LL_ERR_NOENT;
    ll_sha256(dst, size, h);
    if (memcmp(h, sha256, 32) != 0) {
        if (corrupt) *corrupt = 1;
        unlink_if_unused(fd, path); /* only if nobody else reads it, and only if still this file */
        return LL_ERR_NOENT;
    }
    return LL_OK;
}

/* ---------------------------------------------------------------- encoded frames */

#define CHUNK_MAGIC "LLCHNKZ1"
#define CHUNK_WINDOW_LOG_MAX 27 /* as libzstd's default limit: a 128 MiB window at most */

static uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* The first `size` bytes the zstd frames at src decompress to (across frames;
 * skippable frames are skipped), with decompression context d (reset here). */
static int decode_zstd_with(ZSTD_DCtx *d, const uint8_t *src, size_t len, uint8_t *dst, size_t size) {
    if (ZSTD_isError(ZSTD_DCtx_reset(d, ZSTD_reset_session_only)) ||
        ZSTD_isError(ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, CHUNK_WINDOW_LOG_MAX)))
        return LL_ERR_FRAME;
    ZSTD_inBuffer in = {src, len, 0};
    ZSTD_outBuffer out = {dst, size, 0};
    while (out.pos < out.size) {
        size_t in0 = in.pos, out0 = out.pos;
        size_t r = ZSTD_decompressStream(d, &out, &in);
        if (ZSTD_isError(r)) return LL_ERR_FRAME;
        if (in.pos == in0 && out.pos == out0) break; /* input used up */
    }
    return out.pos == out.size ? LL_OK : LL_ERR_FRAME;
}

static int decode_zstd(const uint8_t *src, size_t len, uint8_t *dst, size_t size) {
    ZSTD_DCtx *d = ZSTD_createDCtx();
    if (!d) return LL_ERR_NOMEM;
    int rc = decode_zstd_with(d, src, len, dst, size);
    ZSTD_freeDCtx(d);
    return rc;
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int ll_run_decode(const void *table, uint32_t n, const void *payload, size_t payload_len, void *dst, size_t size,
                  uint32_t *bad) {
    const uint8_t *t = table, *src = payload;
    uint8_t *out = dst;
    if (bad) *bad = 0;
    if ((!table && n) || (!payload && payload_len) || (!dst && size)) return LL_ERR_ARG;
    if (n == 0 || n > LL_RUN_MAX_CHUNKS || size > LL_MAX_FRAME_SIZE) return LL_ERR_FORMAT;
    /* The table first, whole: every entry inside the payload, sizes adding up to `size`. */
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = t + (size_t)i * LL_RUN_ENTRY;
        uint64_t off = le32(e), len = le32(e + 4), sz = le32(e + 8);
        uint8_t codec = e[12];
        if (bad) *bad = i;
        if (e[13] || e[14] || e[15] || off + len > payload_len) return LL_ERR_FORMAT;
        if (codec == LL_CHUNK_ZEROS ? len != 0 : codec != LL_CHUNK_GZIP && codec != LL_CHUNK_ZSTD)
            return LL_ERR_FORMAT;
        total += sz;
        if (total > size) return LL_ERR_FORMAT;
    }
    if (total != size) return LL_ERR_FORMAT;
    void *gz = NULL;
    ZSTD_DCtx *zd = NULL;
    int rc = LL_OK;
    uint64_t at = 0;
    for (uint32_t i = 0; i < n && rc == LL_OK; i++) {
        const uint8_t *e = t + (size_t)i * LL_RUN_ENTRY;
        uint32_t off = le32(e), len = le32(e + 4), sz = le32(e + 8);
        if (bad) *bad = i;
        switch (e[12]) {
        case LL_CHUNK_ZEROS:
            memset(out + at, 0, sz);
            break;
        case LL_CHUNK_GZIP:
            rc = ll__inflate_gzip_reuse(&gz, src + off, len, out + at, sz);
            break;
        default: /* LL_CHUNK_ZSTD (checked above) */
            if (!zd && !(zd = ZSTD_createDCtx())) {
                rc = LL_ERR_NOMEM;
                break;
            }
            rc = decode_zstd_with(zd, src + off, len, out + at, sz);
        }
        if (rc == LL_OK) {
            uint8_t h[32];
            ll_sha256(out + at, sz, h);
            if (memcmp(h, e + 16, 32) != 0) rc = LL_ERR_DIGEST;
        }
        at += sz;
    }
    free(gz);
    ZSTD_freeDCtx(zd);
    return rc;
}

int ll_chunk_decode(const void *src, size_t len, const uint8_t sha256[32], void *dst, size_t size) {
    const uint8_t *p = src;
    if ((!src && len) || !sha256 || (!dst && size)) return LL_ERR_ARG;
    if (len < LL_CHUNK_HEADER || memcmp(p, CHUNK_MAGIC, 8) != 0 || p[11] != 0) return LL_ERR_FORMAT;
    uint32_t codec = p[8], bits = p[9], byte = p[10];
    uint32_t wlen = (uint32_t)p[12] | (uint32_t)p[13] << 8 | (uint32_t)p[14] << 16 | (uint32_t)p[15] << 24;
    uint64_t n = le64(p + 16);
    if (n != size || size > LL_MAX_FRAME_SIZE || len > UINT32_MAX) return LL_ERR_FORMAT;
    if (codec == LL_CHUNK_RUN) { /* table (wlen entries), payload; named by the table */
        if (bits || byte || wlen == 0 || wlen > LL_RUN_MAX_CHUNKS ||
            (uint64_t)wlen * LL_RUN_ENTRY > len - LL_CHUNK_HEADER)
            return LL_ERR_FORMAT;
        const uint8_t *table = p + LL_CHUNK_HEADER;
        size_t tlen = (size_t)wlen * LL_RUN_ENTRY;
        uint8_t h[32];
        ll_sha256(table, tlen, h);
        if (memcmp(h, sha256, 32) != 0) return LL_ERR_DIGEST;
        return ll_run_decode(table, wlen, table + tlen, len - LL_CHUNK_HEADER - tlen, dst, size, NULL);
    }
    if (codec != LL_CHUNK_GZSPAN && (bits || byte || wlen)) return LL_ERR_FORMAT;
    if (codec == LL_CHUNK_GZSPAN && (bits > 7 || wlen > LL_GZ_WINDOW || wlen > len - LL_CHUNK_HEADER))
        return LL_ERR_FORMAT;
    const uint8_t *window = p + LL_CHUNK_HEADER, *data = window + wlen;
    size_t data_len = len - LL_CHUNK_HEADER - wlen;
    int rc;
    switch (codec) {
    case LL_CHUNK_ZEROS:
        if (data_len) return LL_ERR_FORMAT;
        if (size) memset(dst, 0, size);
        rc = LL_OK;
        break;
    case LL_CHUNK_GZIP: rc = ll__inflate_gzip(data, data_len, dst, size); break;
    case LL_CHUNK_ZSTD: rc = decode_zstd(data, data_len, dst, size); break;
    case LL_CHUNK_GZSPAN:
        rc = ll_gz_inflate_span(bits, byte, window, wlen, data, data_len, dst, size);
        if (rc == LL_ERR_ARG) rc = LL_ERR_FORMAT; /* (a window of 0 bytes, say) */
        break;
    default: return LL_ERR_FORMAT;
    }
    if (rc != LL_OK) return rc;
    uint8_t h[32];
    ll_sha256(dst, size, h);
    return memcmp(h, sha256, 32) == 0 ? LL_OK : LL_ERR_DIGEST;
}

/* Frame `sha256` from its encoded file, if there is one: LL_OK, or LL_ERR_NOENT
 * (absent, unreadable, another size, or bad: then deleted if unused, *corrupt set).
 * The file is read whole; one longer than its data could be, compressed, plus
 * slack (a chunk's range may end with the next file's tar header members) is
 * refused unread. */
static int get_encoded(ll_diskcache *dc, const uint8_t sha256[32], uint8_t *dst, size_t size, int *corrupt) {
    char path[PATH_MAX];
    frame_path(dc, sha256, path);
    size_t pl = strlen(path);
    if (pl + 3 > sizeof path) return LL_ERR_NOENT;
    memcpy(path + pl, ".z", 3);
    int fd = open_retry(path, O_RDONLY | O_NOFOLLOW, 0);
    if (fd < 0) return LL_ERR_NOENT;
    int rc = LL_ERR_NOENT;
    uint8_t *buf = NULL;
    struct stat st;
    if (flock_retry(fd, LOCK_SH) != 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) goto done;
    uint64_t limit = (uint64_t)LL_CHUNK_HEADER + LL_GZ_WINDOW + size + size / 2 + (16u << 20);
    int bad = 0;
    uint8_t head[LL_CHUNK_HEADER];
    if ((uint64_t)st.st_size > limit || st.st_size < LL_CHUNK_HEADER) {
        bad = 1;
    } else if (read_full(fd, head, sizeof head) != (ssize_t)sizeof head) {
        goto done;
    } else if (memcmp(head, CHUNK_MAGIC, 8) == 0 && le64(head + 16) != size) {
        goto done; /* the caller expects another size (a sha256 fixes the size): a miss */
    } else if (!(buf = malloc((size_t)st.st_size))) {
        goto done;
    } else {
        memcpy(buf, head, sizeof head);
        ssize_t got = read_full(fd, buf + sizeof head, (size_t)st.st_size - sizeof head);
        if (got != (ssize_t)((size_t)st.st_size - sizeof head)) goto done;
        int d = ll_chunk_decode(buf, (size_t)st.st_size, sha256, dst, size);
        if (d == LL_OK) {
            touch(fd);
            rc = LL_OK;
        } else if (d != LL_ERR_NOMEM) {
            bad = 1;
        }
    }
    if (bad) {
        if (corrupt) *corrupt = 1;
        unlink_if_unused(fd, path);
    }
done:
    free(buf);
    close(fd);
    return rc;
}

/* A frame from disk.  Every read takes the shared flock and checks the size;
 * the memo (MEMO_SLOTS, per ll_diskcache) saves two things:
 *
 * - the LRU touch (futimens) is done at most once per MEMO_INTERVAL_NS per
 *   file per process, not on every read;
 * - with `trust` (ll_image_options.disk_verify_memo), the sha256 is not
 *   computed again for a file this process hashed right since its last touch,
 *   less than MEMO_INTERVAL_NS ago, when the file still has the same device,
 *   inode, size, mtime and ctime before and after its bytes are read.  Cache
 *   files are written once (a temporary file renamed into place) and never
 *   modified in place, so a file with an unchanged identity has unchanged
 *   bytes; any write(2), truncate or utimes on it changes its ctime; a file
 *   replaced under the name is another inode.  The order makes the hash cover
 *   every change the stamps can show: touch first (when due), then fstat,
 *   read, hash, fstat again, and remember the stamps only if both fstats agree.
 *   docs/cache.md, "Verified-file memo", says what this gives up. */
int ll__diskcache_get_ex(ll_diskcache *dc, const uint8_t sha256[32], void *dst, size_t size,
                         int *corrupt, int trust) {
    if (corrupt) *corrupt = 0;
    if (!dc || !sha256 || (!dst && size)) return LL_ERR_ARG;
    char path[PATH_MAX];
    frame_path(dc, sha256, path);
    int fd = open_retry(path, O_RDONLY | O_NOFOLLOW, 0);
    if (fd < 0) return errno == ENOENT ? get_encoded(dc, sha256, dst, size, corrupt) : LL_ERR_NOENT;
    int rc = LL_ERR_NOENT;
    if (flock_retry(fd, LOCK_SH) != 0) goto done; /* trim skips what we hold */
    if (!dc->memo) { /* no memo: hash and touch every time */
        rc = read_and_hash(fd, path, sha256, dst, size, corrupt);
        if (rc == LL_OK) touch(fd);
        goto done;
    }
    uint64_t now = mono_ns();
    memo_slot *slot = memo_slot_of(dc, sha256), seen;
    pthread_mutex_lock(&dc->memo_lock);
    seen = *slot;
    pthread_mutex_unlock(&dc->memo_lock);
    int known = memcmp(seen.sha256, sha256, 32) == 0 && seen.touched != 0;
    int due = !known || now - seen.touched >= MEMO_INTERVAL_NS;
    if (due) touch(fd); /* before the stamps are taken: the touch is in them */
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) goto done;
    if ((uint64_t)st.st_size != size) { /* the old path tells a corrupt entry from a wrong size */
        rc = read_and_hash(fd, path, sha256, dst, size, corrupt);
        goto done;
    }
    memo_slot before;
    stamps(&st, &before);
    int vouched = trust && known && !due && seen.verified && same_stamps(&seen, &before);
    if (vouched) {
        ssize_t got = read_full(fd, dst, size);
        struct stat st2;
        memo_slot after;
        if (got < 0 || (size_t)got != size || fstat(fd, &st2) != 0) goto done;
        stamps(&st2, &after);
        if (same_stamps(&before, &after)) {
            rc = LL_OK;
            goto done;
        }
        /* changed while we read it: hash what we have, from the start */
        if (lseek(fd, 0, SEEK_SET) != 0) goto done;
    }
    rc = read_and_hash(fd, path, sha256, dst, size, corrupt);
    struct stat st2;
    memo_slot after;
    int settled = rc == LL_OK && fstat(fd, &st2) == 0 && (stamps(&st2, &after), same_stamps(&before, &after));
    pthread_mutex_lock(&dc->memo_lock);
    if (settled) { /* hashed right, with these stamps before and after: remembered */
        *slot = after;
        memcpy(slot->sha256, sha256, 32);
        slot->touched = due ? now : seen.touched; /* !due implies known */
        slot->verified = 1;
    } else if (memcmp(slot->sha256, sha256, 32) == 0) {
        slot->verified = 0;
        if (due && rc == LL_OK) slot->touched = now;
    }
    pthread_mutex_unlock(&dc->memo_lock);
done:
    close(fd); /* drops the flock */
    return rc;
}

int ll__diskcache_get(ll_diskcache *dc, const uint8_t sha256[32], void *dst, size_t size,
                      int *corrupt) {
    return ll__diskcache_get_ex(dc, sha256, dst, size, corrupt, 0);
}

int ll_diskcache_get(ll_diskcache *dc, const uint8_t sha256[32], void *dst, size_t size) {
    return ll__diskcache_get(dc, sha256, dst, size, NULL);
}

int ll_diskcache_put(ll_diskcache *dc, const uint8_t sha256[32], const void *data, size_t size) {
    if (!dc || !sha256 || (!data && size)) return LL_ERR_ARG;
    char path[PATH_MAX];
    frame_path(dc, sha256, path);
    struct stat st;
    if (stat(path, &st) == 0) return LL_OK; /* there already (get checks what it reads) */
    return atomic_write(dc, path, data, size);
}

/* ---------------------------------------------------------------- index files */

typedef struct {
    void *map;
    size_t len;
    int fd;   /* holds the flock(LOCK_SH) pin */
} mapped_index;

static void release_mapped(void *arg) {
    mapped_index *m = arg;
    munmap(m->map, m->len);
    close(m->fd); /* drops the pin: the file may now be evicted */
    free(m);
}

int ll_diskcache_load_index(ll_diskcache *dc, const char *manifest_digest, ll_index **out) {
    if (!dc || !out) return LL_ERR_ARG;
    *out = NULL;
    char path[PATH_MAX];
    if (index_path(dc, manifest_digest, path) != 0) return LL_ERR_ARG;
    int fd = -1;
    /* As DiskCache.pin: lock, then check the path still names what we locked (a
     * trim may have unlinked it, or a writer replaced it, between open and flock). */
    for (int tries = 0; tries < 10 && fd < 0; tries++) {
        fd = open_retry(path, O_RDONLY | O_NOFOLLOW, 0);
        if (fd < 0) return LL_ERR_NOENT;
        if (flock_retry(fd, LOCK_SH) != 0) {
            close(fd);
            return LL_ERR_NOENT;
        }
        if (!same_file(fd, path)) {
            close(fd);
            fd = -1;
        }
    }
    if (fd < 0) return LL_ERR_NOENT;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return LL_ERR_NOENT;
    }
    size_t len = (size_t)st.st_size;
    void *map = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    ll_index *idx = NULL;
    char err[LL_ERR_MSG_SIZE];
    int rc = map == MAP_FAILED ? LL_ERR_FORMAT : ll_index_open_buffer(map, len, 0, &idx, err, sizeof err);
    if (rc == LL_ERR_NOMEM) {
        munmap(map, len);
        close(fd);
        return rc;
    }
    if (rc != LL_OK) { /* empty, truncated or corrupt: deleted (rebuilt, never trusted) */
        if (map != MAP_FAILED) munmap(map, len);
        unlink_if_unused(fd, path);
        close(fd);
        return LL_ERR_NOENT;
    }
    touch(fd);
    mapped_index *m = malloc(sizeof *m);
    if (!m) {
        ll_index_free(idx);
        munmap(map, len);
        close(fd);
        return LL_ERR_NOMEM;
    }
    m->map = map;
    m->len = len;
    m->fd = fd;
    ll__index_set_release(idx, release_mapped, m);
    *out = idx;
    return LL_OK;
}

int ll_diskcache_store_index(ll_diskcache *dc, const char *manifest_digest, const ll_index *idx) {
    if (!dc || !idx) return LL_ERR_ARG;
    char path[PATH_MAX];
    if (index_path(dc, manifest_digest, path) != 0) return LL_ERR_ARG;
    const void *data = NULL;
    size_t size = 0;
    ll_index_data(idx, &data, &size);
    if (!data || size == 0) return LL_ERR_ARG;
    struct stat st;
    if (stat(path, &st) == 0) return LL_OK; /* kept: load_index checks it, deletes it if bad */
    return atomic_write(dc, path, data, size);
}
