/* chunked.c - a peer's chunked TOC as a raw layer.
 *
 * eStargz and zstd:chunked (stargz-snapshotter's docs/estargz.md, containers/
 * storage's additions: endOffset, chunkType "zeros", files left whole named by
 * their digest) describe a layer by a JSON TOC whose regular files are lists of
 * chunks, each a compressed member or frame of the blob named by the sha256 of
 * its data.  ll_chunked_convert turns that TOC into what the image index takes
 * for a layer of another format (docs/format.md, "Raw frames"): lazylayer's TOC
 * JSON over a virtual stream in which every file's chunks lie end to end (each
 * chunk one raw frame named by its data's digest), and one row per frame that
 * says where its compressed bytes are in the blob and how they are coded.
 *
 * The semantics are those of the Python model it replaced, kept as the test
 * reference (tests/chunked_model.py): the same checks in the same order, so a
 * TOC gets the same error class (LL_ERR_FORMAT for FormatError, LL_ERR_LIMIT for
 * LimitError, LL_ERR_UNSUPPORTED for NotSupported: the layer is fetched whole).
 * The whole document is read before any entry's fault is reported, as Python
 * parses it whole first.  Where this is stricter than the model (each refused
 * with LL_ERR_FORMAT):
 *   - modtime must be RFC 3339: YYYY-MM-DD, 'T' or ' ', hh:mm:ss, an optional
 *     fraction, and Z or +hh:mm / -hh:mm or nothing (UTC); Python's
 *     fromisoformat also takes other ISO 8601 forms no writer of these formats
 *     uses (dates alone, basic format, comma fractions);
 *   - the lone surrogate escapes json.c refuses;
 *   - what the index (toc.c) refuses in the TOC made here is refused there, as
 *     it was for the model's TOC (a NUL in a name, xattr values that are not
 *     base64): not checked twice.
 * Thread safety: ll_chunked_convert may run on any thread; an ll_chunked is
 * read-only once made (any threads may read it) and freed once. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/evp.h>

#define MAX_WHOLE_SIZE (1ull << 36)
#define ZERO_PIECE (1ull << 20)
#define MAX_ZERO_CHECK (4ull << 30)
#define MTIME_MAX 253402214400ll
#define ID_LIMIT (1ull << 32)
#define NONNEG_LIMIT (1ull << 62)

/* ------------------------------------------------------------------ growable buffers */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    int failed;
} buf;

static void put(buf *b, const void *s, size_t n) {
    if (b->failed) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->failed = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}
#define PUTS(b, lit) put((b), lit, sizeof lit - 1)

static void put_u64(buf *b, uint64_t v) {
    char t[24];
    size_t i = sizeof t;
    do t[--i] = (char)('0' + v % 10), v /= 10;
    while (v);
    put(b, t + i, sizeof t - i);
}

/* A JSON string of bytes `s`: valid UTF-8 as is, other bytes as \udcXX (the
 * surrogate escapes the index reads back as those bytes), controls escaped. */
static void put_str(buf *b, const uint8_t *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    PUTS(b, "\"");
    size_t i = 0, run = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len = 0;
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') len = 1;
        else if (c >= 0xC2 && c <= 0xDF && i + 1 < n && (s[i + 1] & 0xC0) == 0x80) len = 2;
        else if (c >= 0xE0 && c <= 0xEF && i + 2 < n && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80) {
            unsigned cp = ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
            if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) len = 3;
        } else if (c >= 0xF0 && c <= 0xF4 && i + 3 < n && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80 &&
                   (s[i + 3] & 0xC0) == 0x80) {
            unsigned cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) |
                          (s[i + 3] & 0x3Fu);
            if (cp >= 0x10000 && cp <= 0x10FFFF) len = 4;
        }
        if (len) {
            i += len;
            run += len;
            continue;
        }
        put(b, s + i - run, run);
        run = 0;
        char e[12];
        if (c == '"' || c == '\\') e[0] = '\\', e[1] = (char)c, put(b, e, 2);
        else if (c < 0x80) memcpy(e, "\\u00", 4), e[4] = hex[c >> 4], e[5] = hex[c & 15], put(b, e, 6);
        else memcpy(e, "\\udc", 4), e[4] = hex[c >> 4], e[5] = hex[c & 15], put(b, e, 6);
        i++;
    }
    put(b, s + i - run, run);
    PUTS(b, "\"");
}


/* ------------------------------------------------------------------ hash tables */

/* Open addressing, power-of-two slots holding index + 1 (0: empty). */
typedef struct {
    uint32_t *slot;
    size_t mask, used;
} table;

static uint64_t hash_bytes(const uint8_t *s, size_t n) {
    uint64_t h = 1469598103934665603ull;   /* FNV-1a, then mixed */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

static uint64_t hash_u64(uint64_t v) {
    v ^= v >> 33;
    v *= 0xff51afd7ed558ccdull;
    v ^= v >> 33;
    v *= 0xc4ceb9fe1a85ec53ull;
    return v ^ (v >> 33);
}

static int table_init(table *t, size_t expect) {
    size_t n = 16;
    while (n < expect * 2 + 16) n *= 2;
    t->slot = calloc(n, sizeof *t->slot);
    t->mask = n - 1;
    t->used = 0;
    return t->slot ? LL_OK : LL_ERR_NOMEM;
}

/* ------------------------------------------------------------------ the converter's state */

enum { K_REG = 1, K_DIR, K_SYMLINK, K_HARDLINK, K_CHAR, K_BLOCK, K_FIFO };
static const char *const KIND_NAMES[] = {NULL, "reg", "dir", "symlink", "hardlink", "char", "block", "fifo"};

typedef struct {
    const uint8_t *name, *uname, *gname, *link;
    uint32_t name_len, uname_len, gname_len, link_len;
    uint8_t kind;
    uint8_t has_uid, has_gid, has_major, has_minor;
    uint32_t mode, uid, gid, major, minor, nlink;
    int64_t mtime;
    uint64_t size, offset;       /* reg: size, and offset in the virtual stream */
    size_t xfirst, xcount;       /* its xattrs */
    size_t cfirst, ccount;       /* reg: its chunks */
} entry;

typedef struct {
    const uint8_t *name, *value;
    size_t name_len, value_len;
} xattr;

typedef struct {
    uint64_t file_offset, size, offset, end;
    uint8_t digest[32];
    uint8_t codec;
} chunk;

/* One value of an entry's field: what the model's e.get(key) would see. */
typedef struct {
    int type;               /* LL__J_* of the value; 0: the key is absent */
    const uint8_t *s;       /* STR: the decoded bytes */
    size_t len;
    ll__jint n;
    int is_int;             /* an integer token (Python int) */
    int truthy;             /* Python's bool() of the value */
    int all_str;            /* an object whose values are all strings (xattrs) */
} field;

enum {
    F_NAME, F_TYPE, F_MODE, F_UID, F_GID, F_MAJOR, F_MINOR, F_UNAME, F_GNAME, F_LINK, F_MODTIME, F_XATTRS,
    F_SIZE, F_OFFSET, F_END, F_INNER, F_COFF, F_CSIZE, F_CDIGEST, F_DIGEST, F_CTYPE, F_COUNT
};
static const char *const FIELD_KEYS[F_COUNT] = {
    "name", "type", "mode", "uid", "gid", "devMajor", "devMinor", "userName", "groupName", "linkName", "modtime",
    "xattrs", "size", "offset", "endOffset", "innerOffset", "chunkOffset", "chunkSize", "chunkDigest", "digest",
    "chunkType"};
static const uint8_t FIELD_LENS[F_COUNT] = {4, 4, 4, 3, 3, 8, 8, 8, 9, 8, 7, 6, 4, 6, 9, 11, 11, 9, 11, 6, 9};

struct ll_chunked {
    uint8_t *json;          /* the TOC made (lazylayer's TOC JSON) */
    size_t json_len;
    uint8_t *rows;          /* LL_CHUNKED_ROW_SIZE bytes per frame */
    uint64_t count;
    uint64_t size;          /* the virtual stream's */
};

typedef struct {
    ll__json j;
    uint64_t toc_offset;
    uint8_t codec;          /* LL_ROW_GZIP or LL_ROW_ZSTD */
    uint64_t max_chunk, whole_piece;
    uint64_t run_size, run_chunk, run_gap;   /* runs of small chunks as one frame (0: none) */
    int hide;
    /* what the entries list gave (reset by a repeated "entries" key: the last counts) */
    entry *e;
    size_t ne, ecap;
    xattr *x;
    size_t nx, xcap;
    chunk *c;
    size_t nc, ccap;
    uint64_t *ends;         /* chunk starts, endOffsets and the TOC offset */
    size_t nends, endcap;
    uint32_t *prio;         /* the prioritized files (entry indices), in order */
    size_t nprio, priocap;
    uint64_t raw_entries;   /* entries in the list, chunks included */
    int landmark;           /* a landmark was seen */
    long current;           /* the reg entry "chunk" entries continue (-1: none) */
    /* the first fault in an entry, reported after the whole document is read */
    int entry_status;
    char entry_msg[LL_ERR_MSG_SIZE];
    int version_ok, entries_is_list, doc_is_object;
    uint8_t *zero;          /* ZERO_PIECE zero bytes, for hashing runs of zeros */
    uint64_t *zsize;        /* sizes of zeros hashed, and their digests */
    uint8_t (*zdig)[32];
    size_t nz, zcap;
    table ztab;
    uint64_t zero_hashed;
} conv;

static void conv_reset_entries(conv *cv) {
    cv->ne = cv->nx = cv->nc = cv->nends = cv->nprio = 0;
    cv->raw_entries = 0;
    cv->landmark = 0;
    cv->current = -1;
    cv->entry_status = LL_OK;
    cv->entry_msg[0] = 0;
}

static void conv_free(conv *cv) {
    free(cv->e);
    free(cv->x);
    free(cv->c);
    free(cv->ends);
    free(cv->prio);
    free(cv->zero);
    free(cv->zsize);
    free(cv->zdig);
    free(cv->ztab.slot);
}

/* Record an entry's fault (the first one counts); returns 1 so callers can `return fail(...)`. */
static int fail(conv *cv, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(conv *cv, int status, const char *fmt, ...) {
    if (cv->entry_status != LL_OK) return 1;
    cv->entry_status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cv->entry_msg, sizeof cv->entry_msg, fmt, ap);
    va_end(ap);
    return 1;
}

static void shown(char *dst, size_t size, const uint8_t *s, size_t n) {
    ll__show(dst, size, s, n > 100 ? 100 : n);
}
/* The entry's name (`name`, `nlen`) as messages show it, into the caller's `sh`: made only for a message. */
#define SH (shown(sh, sizeof sh, name, nlen), sh)

/* ------------------------------------------------------------------ values as Python sees them */

/* bool() of a number token: 0 only if every mantissa digit is 0 (NaN and Infinity are true). */
static int num_truthy(const ll__jtok *t) {
    if (t->num & (LL__JN_NAN | LL__JN_INF)) return 1;
    for (size_t i = 0; i < t->len; i++) {
        uint8_t c = t->s[i];
        if (c == 'e' || c == 'E') break;
        if (c >= '1' && c <= '9') return 1;
    }
    return 0;
}

/* Skip the rest of a container whose opening token was read; *truthy: it is not empty. */
static int skip_container(ll__json *j, int *truthy) {
    int depth = 1, first = 1;
    *truthy = 0;
    ll__jtok x;
    while (depth) {
        int t = ll__json_next(j, &x);
        if (t == LL__J_ERROR || t == LL__J_EOF) return j->status ? j->status : LL_ERR_FORMAT;
        if (first) {
            *truthy = t != LL__J_OBJ_END && t != LL__J_ARR_END;
            first = 0;
        }
        if (t == LL__J_OBJ || t == LL__J_ARR) depth++;
        else if (t == LL__J_OBJ_END || t == LL__J_ARR_END) depth--;
    }
    return LL_OK;
}

/* _nonneg: absent is 0; else an int (not a bool, not a float) in 0 .. limit-1. */
static int nonneg(conv *cv, const field *f, const char *key, uint64_t limit, const uint8_t *name, size_t nlen,
                  uint64_t *out) {
    *out = 0;
    if (!f->type) return LL_OK;
    if (f->is_int && !f->n.big && (!f->n.neg || f->n.mag == 0) && f->n.mag < limit) {
        *out = f->n.neg ? 0 : f->n.mag;
        return LL_OK;
    }
    char s[128];
    shown(s, sizeof s, name, nlen);
    fail(cv, LL_ERR_FORMAT, "eStargz TOC entry '%s': bad %s", s, key);
    return 1;
}

/* normalize_name, in place: relative, no '.', '' or trailing '/' components; '.' is the root. */
static int normalize(conv *cv, uint8_t *s, size_t *n, const char *what) {
    size_t len = *n, out = 0, parts = 0;
    char sh[128];
    if (len > 4 * LL__MAX_PATH_BYTES + 4 * LL__MAX_PATH_DEPTH) goto too_long;
    for (size_t i = 0; i <= len;) {
        size_t j = i;
        while (j < len && s[j] != '/') j++;
        size_t plen = j - i;
        if (plen == 2 && s[i] == '.' && s[i + 1] == '.') {
            shown(sh, sizeof sh, s, len);
            fail(cv, LL_ERR_FORMAT, "tar member '%s': %s has a '..' component; refusing a layer that would write "
                 "outside its root", sh, what);
            return 1;
        }
        if (plen && !(plen == 1 && s[i] == '.')) {
            if (plen > LL__MAX_NAME_BYTES) {
                shown(sh, sizeof sh, s, len);
                fail(cv, LL_ERR_FORMAT, "tar member '%s': %s has a component longer than %u bytes", sh, what,
                     LL__MAX_NAME_BYTES);
                return 1;
            }
            if (++parts > LL__MAX_PATH_DEPTH) {
                shown(sh, sizeof sh, s, len);
                fail(cv, LL_ERR_FORMAT, "tar member '%s': %s has more than %u components", sh, what,
                     LL__MAX_PATH_DEPTH);
                return 1;
            }
            if (out) s[out++] = '/';
            memmove(s + out, s + i, plen);
            out += plen;
        }
        i = j + 1;
    }
    if (!out) s[out++] = '.';
    if (out > LL__MAX_PATH_BYTES) goto too_long;
    *n = out;
    return LL_OK;
too_long:
    shown(sh, sizeof sh, s, len);
    fail(cv, LL_ERR_FORMAT, "tar member '%s': %s is longer than %u bytes", sh, what, LL__MAX_PATH_BYTES);
    return 1;
}

static int is_digest(const field *f) {
    return f->type == LL__J_STR && ll__digest_ok((const char *)f->s, f->len);
}

static void digest_bytes(const uint8_t *s, uint8_t out[32]) {   /* "sha256:" + 64 lowercase hex digits */
    for (int i = 0; i < 32; i++) {
        uint8_t hi = s[7 + 2 * i], lo = s[8 + 2 * i];
        out[i] = (uint8_t)(((hi <= '9' ? hi - '0' : hi - 'a' + 10) << 4) | (lo <= '9' ? lo - '0' : lo - 'a' + 10));
    }
}

/* RFC 3339 as seconds since the epoch, clamped to 0..MTIME_MAX; 0 if it is not one. */
static int parse_time(const uint8_t *s, size_t n, int64_t *out) {
    unsigned v[6] = {0};
    static const size_t pos[6] = {0, 5, 8, 11, 14, 17}, width[6] = {4, 2, 2, 2, 2, 2};
    if (n < 19 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != ' ') || s[13] != ':' || s[16] != ':')
        return 0;
    for (int k = 0; k < 6; k++)
        for (size_t i = 0; i < width[k]; i++) {
            uint8_t c = s[pos[k] + i];
            if (c < '0' || c > '9') return 0;
            v[k] = v[k] * 10 + (c - '0');
        }
    static const unsigned mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    unsigned y = v[0], mo = v[1], d = v[2];
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap) || v[3] > 23 || v[4] > 59 ||
        v[5] > 59)
        return 0;
    size_t i = 19;
    if (i < n && s[i] == '.') {
        size_t k = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        if (i == k) return 0;
    }
    int64_t off = 0;
    if (i < n && s[i] == 'Z') i++;
    else if (i < n && (s[i] == '+' || s[i] == '-')) {
        if (n - i < 6 || s[i + 3] != ':') return 0;
        unsigned oh = 0, om = 0;
        for (int k = 1; k <= 5; k++) {
            if (k == 3) continue;
            uint8_t c = s[i + k];
            if (c < '0' || c > '9') return 0;
            if (k < 3) oh = oh * 10 + (c - '0');
            else om = om * 10 + (c - '0');
        }
        if (oh > 23 || om > 59) return 0;
        off = (int64_t)(oh * 3600 + om * 60) * (s[i] == '-' ? -1 : 1);
        i += 6;
    }
    if (i != n) return 0;
    /* days since 1970-01-01 (civil calendar) */
    int64_t yy = (int64_t)y - (mo <= 2), era = yy / 400;
    int64_t yoe = yy - era * 400, mp = (mo + 9) % 12;
    int64_t doy = (153 * mp + 2) / 5 + d - 1, doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    int64_t days = era * 146097 + doe - 719468;
    int64_t t = days * 86400 + v[3] * 3600 + v[4] * 60 + v[5] - off;
    *out = t < 0 ? 0 : t > MTIME_MAX ? MTIME_MAX : t;
    return 1;
}

/* ------------------------------------------------------------------ one entry */

static int read_field(conv *cv, field *f, ll__jtok *v, size_t *x0) {
    ll__json *j = &cv->j;
    memset(f, 0, sizeof *f);
    f->type = v->type;
    switch (v->type) {
    case LL__J_STR:
        f->s = v->s;
        f->len = v->len;
        f->truthy = v->len > 0;
        break;
    case LL__J_NUM:
        f->is_int = ll__json_int(v, &f->n);
        f->truthy = num_truthy(v);
        break;
    case LL__J_TRUE: f->truthy = 1; break;
    case LL__J_OBJ:
        if (x0) {   /* xattrs: name -> string pairs, the last of a name counts */
            cv->nx = *x0;
            int all_str = 1;
            for (;;) {
                ll__jtok k, xv;
                int t = ll__json_next(j, &k);
                if (t == LL__J_OBJ_END) break;
                if (t != LL__J_KEY) return j->status ? j->status : LL_ERR_FORMAT;
                if (ll__json_next(j, &xv) == LL__J_ERROR) return j->status;
                f->truthy = 1;
                if (xv.type != LL__J_STR) {
                    all_str = 0;
                    if ((xv.type == LL__J_OBJ || xv.type == LL__J_ARR) && skip_container(j, &(int){0}))
                        return j->status ? j->status : LL_ERR_FORMAT;
                    continue;
                }
                if (ll__grow((void **)&cv->x, &cv->xcap, cv->nx + 1, sizeof *cv->x)) return LL_ERR_NOMEM;
                cv->x[cv->nx++] = (xattr){k.s, xv.s, k.len, xv.len};   /* (repeated names: see parse_entry) */
            }
            f->all_str = all_str;
            return LL_OK;
        }
        /* fall through */
    case LL__J_ARR:
        return skip_container(j, &f->truthy);
    default: break;
    }
    return LL_OK;
}

/* By name, then by place in the document (strings are decoded in place: later ones lie further on). */
static int xattr_cmp(const void *a, const void *b) {
    const xattr *x = a, *y = b;
    int c = ll__bytes_cmp(x->name, x->name_len, y->name, y->name_len);
    return c ? c : (x->name > y->name) - (x->name < y->name);
}

/* The model's _chunk: entry fields f of file `name` (`file_size` bytes); adds a chunk. */
static int add_chunk(conv *cv, field *f, const uint8_t *name, size_t nlen, uint64_t file_size) {
    char sh[128];
    uint64_t offset, start, size;
    if (nonneg(cv, &f[F_OFFSET], "offset", NONNEG_LIMIT, name, nlen, &offset)) return 1;
    if (offset >= cv->toc_offset) return fail(cv, LL_ERR_FORMAT, "eStargz TOC: a chunk of '%s' lies at or past the TOC", SH);
    if (f[F_INNER].truthy)
        return fail(cv, LL_ERR_UNSUPPORTED, "eStargz TOC: '%s' uses innerOffset, which this lazylayer does not read "
                    "lazily yet", SH);
    if (nonneg(cv, &f[F_COFF], "chunkOffset", NONNEG_LIMIT, name, nlen, &start)) return 1;
    if (nonneg(cv, &f[F_CSIZE], "chunkSize", NONNEG_LIMIT, name, nlen, &size)) return 1;
    if (!size) {
        if (start >= file_size) return fail(cv, LL_ERR_FORMAT, "eStargz TOC: a chunk of '%s' lies outside the file", SH);
        size = file_size - start;
    }
    if (start + size > file_size) return fail(cv, LL_ERR_FORMAT, "eStargz TOC: a chunk of '%s' lies outside the file", SH);
    const field *d = &f[F_CDIGEST];
    if ((d->type == 0 || d->type == LL__J_NULL) && start == 0 && size == file_size) d = &f[F_DIGEST];
    if (!is_digest(d)) return fail(cv, LL_ERR_FORMAT, "the chunkDigest of '%s' is not sha256: and 64 hex digits", SH);
    int zeros = 0;
    if (f[F_CTYPE].type) {
        if (f[F_CTYPE].type != LL__J_STR || (f[F_CTYPE].len && !(f[F_CTYPE].len == 5 && !memcmp(f[F_CTYPE].s, "zeros", 5)))) {
            char k[48];
            if (f[F_CTYPE].type == LL__J_STR) ll__show(k, sizeof k, f[F_CTYPE].s, f[F_CTYPE].len > 20 ? 20 : f[F_CTYPE].len);
            else snprintf(k, sizeof k, "(not a string)");
            return fail(cv, LL_ERR_FORMAT, "eStargz TOC: a chunk of '%s' has unknown chunkType '%s'", SH, k);
        }
        zeros = f[F_CTYPE].len == 5;
    }
    if (ll__grow((void **)&cv->c, &cv->ccap, cv->nc + 1, sizeof *cv->c) ||
        ll__grow((void **)&cv->ends, &cv->endcap, cv->nends + 1, sizeof *cv->ends))
        return fail(cv, LL_ERR_NOMEM, "out of memory");
    chunk *c = &cv->c[cv->nc++];
    c->file_offset = start;
    c->size = size;
    c->offset = offset;
    c->end = 0;
    digest_bytes(d->s, c->digest);
    c->codec = zeros ? LL_ROW_ZEROS : cv->codec;
    cv->ends[cv->nends++] = offset;
    cv->e[cv->current].ccount++;
    return LL_OK;
}

static int is_name(const uint8_t *s, size_t n, const char *lit) {
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

/* One entry object (its '{' was read). */
static int parse_entry(conv *cv) {
    ll__json *j = &cv->j;
    field f[F_COUNT];
    memset(f, 0, sizeof f);
    size_t x0 = cv->nx;
    ll__jtok k, v;
    for (;;) {
        int kt = ll__json_next(j, &k);
        if (kt == LL__J_OBJ_END) break;
        if (kt != LL__J_KEY) return j->status ? j->status : LL_ERR_FORMAT;
        if (ll__json_next(j, &v) == LL__J_ERROR) return j->status;
        int which = -1;
        for (int i = 0; i < F_COUNT && which < 0; i++) /* (length and first byte before memcmp: the hot loop) */
            if (k.len == FIELD_LENS[i] && k.s[0] == (uint8_t)FIELD_KEYS[i][0] && memcmp(k.s, FIELD_KEYS[i], k.len) == 0)
                which = i;
        if (which < 0) {
            if ((v.type == LL__J_OBJ || v.type == LL__J_ARR) && skip_container(j, &(int){0}))
                return j->status ? j->status : LL_ERR_FORMAT;
            continue;
        }
        int rc = read_field(cv, &f[which], &v, which == F_XATTRS ? &x0 : NULL);
        if (rc) return rc;
        if (which == F_XATTRS && v.type != LL__J_OBJ) cv->nx = x0;
    }
    if (cv->entry_status != LL_OK) {   /* a fault was found already: the rest is only read */
        cv->nx = x0;
        return LL_OK;
    }
    size_t xcount = cv->nx - x0;
    cv->nx = x0;   /* kept below only for an entry that stays */
    if (f[F_NAME].type != LL__J_STR || f[F_TYPE].type != LL__J_STR)
        return fail(cv, LL_ERR_FORMAT, "eStargz TOC entry without a name and a type"), LL_OK;
    uint8_t *name = (uint8_t *)f[F_NAME].s;
    size_t nlen = f[F_NAME].len;
    if (normalize(cv, name, &nlen, "path")) return LL_OK;
    char sh[128];   /* the name as messages show it: made only for one (SH) */
    const uint8_t *ks = f[F_TYPE].s;
    size_t klen = f[F_TYPE].len;
    if (is_name(ks, klen, "chunk")) {
        entry *cur = cv->current >= 0 ? &cv->e[cv->current] : NULL;
        if (!cur || cur->name_len != nlen || memcmp(cur->name, name, nlen))
            return fail(cv, LL_ERR_FORMAT, "eStargz TOC: a chunk of '%s' does not follow its file", SH), LL_OK;
        add_chunk(cv, f, name, nlen, cur->size);
        return LL_OK;
    }
    int kind = 0;
    for (int i = 1; i <= K_FIFO; i++)
        if (is_name(ks, klen, KIND_NAMES[i])) kind = i;
    if (!kind) {
        char t[48];
        ll__show(t, sizeof t, ks, klen > 20 ? 20 : klen);
        return fail(cv, LL_ERR_FORMAT, "eStargz TOC entry '%s': unknown type '%s'", SH, t), LL_OK;
    }
    cv->current = -1;
    if (is_name(name, nlen, ".prefetch.landmark") || is_name(name, nlen, ".no.prefetch.landmark")) cv->landmark = 1;
    if (cv->hide && (is_name(name, nlen, "stargz.index.json") || is_name(name, nlen, ".prefetch.landmark") ||
                     is_name(name, nlen, ".no.prefetch.landmark")))
        return LL_OK;
    entry e;
    memset(&e, 0, sizeof e);
    e.name = name;
    e.name_len = (uint32_t)nlen;
    e.kind = (uint8_t)kind;
    e.uname = e.gname = e.link = (const uint8_t *)"";
    uint64_t u;
    if (nonneg(cv, &f[F_MODE], "mode", ID_LIMIT, name, nlen, &u)) return LL_OK;
    e.mode = (uint32_t)(u & 07777);
    static const int ids[4] = {F_UID, F_GID, F_MAJOR, F_MINOR};
    uint32_t *dst[4] = {&e.uid, &e.gid, &e.major, &e.minor};
    uint8_t *has[4] = {&e.has_uid, &e.has_gid, &e.has_major, &e.has_minor};
    for (int i = 0; i < 4; i++) {
        if (!f[ids[i]].truthy) continue;
        if (nonneg(cv, &f[ids[i]], FIELD_KEYS[ids[i]], ID_LIMIT, name, nlen, &u)) return LL_OK;
        *dst[i] = (uint32_t)u;
        *has[i] = 1;
    }
    static const int strs[3] = {F_UNAME, F_GNAME, F_LINK};
    const uint8_t **sdst[3] = {&e.uname, &e.gname, &e.link};
    uint32_t *sl[3] = {&e.uname_len, &e.gname_len, &e.link_len};
    for (int i = 0; i < 3; i++) {
        field *s = &f[strs[i]];
        if (s->truthy) {
            if (s->type != LL__J_STR)
                return fail(cv, LL_ERR_FORMAT, "eStargz TOC entry '%s': %s is not a string", SH, FIELD_KEYS[strs[i]]),
                       LL_OK;
            size_t n = s->len;
            if (kind == K_HARDLINK && strs[i] == F_LINK && normalize(cv, (uint8_t *)s->s, &n, "hardlink target"))
                return LL_OK;
            *sdst[i] = s->s;
            *sl[i] = (uint32_t)n;
        } else if (s->type && s->type != LL__J_NULL && !(s->type == LL__J_STR && s->len == 0)) {
            return fail(cv, LL_ERR_FORMAT, "eStargz TOC entry '%s': %s is not a string", SH, FIELD_KEYS[strs[i]]), LL_OK;
        }
    }
    if ((kind == K_SYMLINK || kind == K_HARDLINK) && !e.link_len)
        return fail(cv, LL_ERR_FORMAT, "eStargz TOC entry '%s': a %s without linkName", SH, KIND_NAMES[kind]), LL_OK;
    field *m = &f[F_MODTIME];
    if (m->type == LL__J_STR && m->len) {
        if (m->len > 64 || !parse_time(m->s, m->len, &e.mtime)) {
            char t[64];
            ll__show(t, sizeof t, m->s, m->len > 40 ? 40 : m->len);
            return fail(cv, LL_ERR_FORMAT, "eStargz TOC entry '%s': modtime '%s' is not RFC 3339", SH, t), LL_OK;
        }
    } else if (m->type && m->type != LL__J_NULL && m->type != LL__J_STR) {
        return fail(cv, LL_ERR_FORMAT, "eStargz TOC entry '%s': modtime is not an RFC 3339 time", SH), LL_OK;
    }
    field *xa = &f[F_XATTRS];
    if (xa->truthy) {
        if (xa->type != LL__J_OBJ || !xa->all_str)
            return fail(cv, LL_ERR_FORMAT, "eStargz TOC entry '%s': xattrs are not name -> base64", SH), LL_OK;
        qsort(cv->x + x0, xcount, sizeof *cv->x, xattr_cmp);
        size_t kept = 0;   /* a name given twice: the last value counts, as in a dict */
        for (size_t i = 0; i < xcount; i++) {
            const xattr *a = &cv->x[x0 + i], *nx = i + 1 < xcount ? a + 1 : NULL;
            if (nx && nx->name_len == a->name_len && !memcmp(nx->name, a->name, a->name_len)) continue;
            cv->x[x0 + kept++] = *a;
        }
        e.xfirst = x0;
        e.xcount = kept;
        cv->nx = x0 + kept;
    } else if (xa->type && xa->type != LL__J_NULL && xa->type != LL__J_OBJ) {
        return fail(cv, LL_ERR_FORMAT, "eStargz TOC entry '%s': xattrs are not name -> base64", SH), LL_OK;
    }
    if (ll__grow((void **)&cv->e, &cv->ecap, cv->ne + 1, sizeof *cv->e)) return LL_ERR_NOMEM;
    size_t idx = cv->ne;
    if (kind == K_REG) {
        if (nonneg(cv, &f[F_SIZE], "size", NONNEG_LIMIT, name, nlen, &e.size)) return LL_OK;
        e.cfirst = cv->nc;
        cv->e[cv->ne++] = e;
        if (e.size) {
            cv->current = (long)idx;
            if (add_chunk(cv, f, name, nlen, e.size)) return LL_OK;
            if (f[F_END].type) {
                uint64_t end, off;
                if (nonneg(cv, &f[F_END], "endOffset", NONNEG_LIMIT, name, nlen, &end)) return LL_OK;
                nonneg(cv, &f[F_OFFSET], "offset", NONNEG_LIMIT, name, nlen, &off);
                if (!f[F_OFFSET].type)   /* (the model reads e["offset"] here: a KeyError) */
                    return fail(cv, LL_ERR_FORMAT, "malformed eStargz TOC entry '%s': endOffset without offset", SH),
                           LL_OK;
                if (!(off < end && end <= cv->toc_offset))
                    return fail(cv, LL_ERR_FORMAT, "eStargz TOC entry '%s': endOffset %llu outside %llu..%llu", SH,
                                (unsigned long long)end, (unsigned long long)off, (unsigned long long)cv->toc_offset),
                           LL_OK;
                if (ll__grow((void **)&cv->ends, &cv->endcap, cv->nends + 1, sizeof *cv->ends)) return LL_ERR_NOMEM;
                cv->ends[cv->nends++] = end;
            }
        }
        if (!cv->landmark) {
            if (ll__grow((void **)&cv->prio, &cv->priocap, cv->nprio + 1, sizeof *cv->prio)) return LL_ERR_NOMEM;
            cv->prio[cv->nprio++] = (uint32_t)idx;
        }
        return LL_OK;
    }
    cv->e[cv->ne++] = e;
    return LL_OK;
}

/* The document (its '{' was read): "version" and "entries" (the last of each counts). */
static int parse_doc(conv *cv) {
    ll__json *j = &cv->j;
    ll__jtok k, v;
    for (;;) {
        int kt = ll__json_next(j, &k);
        if (kt == LL__J_OBJ_END) return LL_OK;
        if (kt != LL__J_KEY) return j->status ? j->status : LL_ERR_FORMAT;
        if (ll__json_next(j, &v) == LL__J_ERROR) return j->status;
        if (k.len == 7 && !memcmp(k.s, "version", 7)) {
            /* == 1 in Python: true, the integer 1, or a number of exactly that value (1.0, 10e-1) */
            ll__jint n;
            int64_t sec = 0;
            uint32_t ns = 1;
            if (v.type == LL__J_NUM && !(v.num & (LL__JN_NAN | LL__JN_INF | LL__JN_NEG)) && !ll__json_int(&v, &n))
                ll__json_time(&v, 2, &sec, &ns);
            cv->version_ok = v.type == LL__J_TRUE ||
                             (v.type == LL__J_NUM && ll__json_int(&v, &n) && !n.neg && !n.big && n.mag == 1) ||
                             (sec == 1 && ns == 0);
            if ((v.type == LL__J_OBJ || v.type == LL__J_ARR) && skip_container(j, &(int){0}))
                return j->status ? j->status : LL_ERR_FORMAT;
            continue;
        }
        if (k.len == 7 && !memcmp(k.s, "entries", 7)) {
            conv_reset_entries(cv);
            cv->entries_is_list = v.type == LL__J_ARR;
            if (v.type == LL__J_OBJ) {
                if (skip_container(j, &(int){0})) return j->status ? j->status : LL_ERR_FORMAT;
                continue;
            }
            if (v.type != LL__J_ARR) continue;
            for (;;) {
                ll__jtok t;
                int tt = ll__json_next(j, &t);
                if (tt == LL__J_ARR_END) break;
                if (tt == LL__J_ERROR) return j->status;
                cv->raw_entries++;
                if (tt == LL__J_OBJ) {
                    int rc = parse_entry(cv);
                    if (rc) return rc;
                    continue;
                }
                fail(cv, LL_ERR_FORMAT, "eStargz TOC entry without a name and a type");
                if (tt == LL__J_ARR && skip_container(j, &(int){0})) return j->status ? j->status : LL_ERR_FORMAT;
            }
            continue;
        }
        if ((v.type == LL__J_OBJ || v.type == LL__J_ARR) && skip_container(j, &(int){0}))
            return j->status ? j->status : LL_ERR_FORMAT;
    }
}

/* ------------------------------------------------------------------ after the entries */

static int u64_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The sha256 of n zero bytes, each size hashed once; `budget`: count it against MAX_ZERO_CHECK. */
static int zero_digest(conv *cv, uint64_t n, int budget, uint8_t out[32]) {
    uint64_t h = hash_u64(n);
    size_t i = h & cv->ztab.mask;
    for (;; i = (i + 1) & cv->ztab.mask) {
        uint32_t s = cv->ztab.slot[i];
        if (!s) break;
        if (cv->zsize[s - 1] == n) {
            memcpy(out, cv->zdig[s - 1], 32);
            return LL_OK;
        }
    }
    if (budget) {
        cv->zero_hashed += n;
        if (cv->zero_hashed > MAX_ZERO_CHECK) return LL_ERR_UNSUPPORTED;
    }
    if (!cv->zero && !(cv->zero = calloc(1, ZERO_PIECE))) return LL_ERR_NOMEM;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    for (uint64_t left = n; ok && left;) {
        size_t m = left < ZERO_PIECE ? (size_t)left : ZERO_PIECE;
        ok = EVP_DigestUpdate(ctx, cv->zero, m);
        left -= m;
    }
    ok = ok && EVP_DigestFinal_ex(ctx, out, NULL);
    EVP_MD_CTX_free(ctx);
    if (!ok) return LL_ERR_NOMEM;
    if ((cv->ztab.used + 1) * 2 > cv->ztab.mask) {   /* full enough: grow and rehash */
        table t;
        if (table_init(&t, (cv->ztab.mask + 1))) return LL_ERR_NOMEM;
        for (size_t k = 0; k < cv->nz; k++) {
            size_t p = hash_u64(cv->zsize[k]) & t.mask;
            while (t.slot[p]) p = (p + 1) & t.mask;
            t.slot[p] = (uint32_t)(k + 1);
        }
        t.used = cv->nz;
        free(cv->ztab.slot);
        cv->ztab = t;
        i = h & cv->ztab.mask;
        while (cv->ztab.slot[i]) i = (i + 1) & cv->ztab.mask;
    }
    if (ll__grow((void **)&cv->zsize, &cv->zcap, cv->nz + 1, sizeof *cv->zsize)) return LL_ERR_NOMEM;
    void *q = realloc(cv->zdig, cv->zcap * sizeof *cv->zdig);   /* (as many as zsize has room for) */
    if (!q) return LL_ERR_NOMEM;
    cv->zdig = q;
    cv->zsize[cv->nz] = n;
    memcpy(cv->zdig[cv->nz], out, 32);
    cv->ztab.slot[i] = (uint32_t)(++cv->nz);
    cv->ztab.used++;
    return LL_OK;
}

/* The model's checks after the entries: chunks tile their files, big chunks, the frame
 * count, runs of zeros; each chunk's end. */
static int check_chunks(conv *cv, uint64_t *frames, char *err, size_t err_size) {
    if (cv->nends) qsort(cv->ends, cv->nends, sizeof *cv->ends, u64_cmp);
    size_t nu = 0;
    for (size_t i = 0; i < cv->nends; i++)
        if (!nu || cv->ends[nu - 1] != cv->ends[i]) cv->ends[nu++] = cv->ends[i];
    cv->nends = nu;
    if (ll__grow((void **)&cv->ends, &cv->endcap, cv->nends + 1, sizeof *cv->ends)) return LL_ERR_NOMEM;
    cv->ends[cv->nends++] = cv->toc_offset;   /* (the largest: every chunk lies before it) */
    *frames = 0;
    char sh[128];
    for (size_t k = 0; k < cv->ne; k++) {
        entry *e = &cv->e[k];
        if (e->kind != K_REG) continue;
        uint64_t done = 0;
        const uint8_t *name = e->name;
        size_t nlen = e->name_len;
        for (size_t i = e->cfirst; i < e->cfirst + e->ccount; i++) {
            chunk *c = &cv->c[i];
            if (c->file_offset != done) {
                ll__set_err(err, err_size, "eStargz TOC: the chunks of '%s' do not tile the file", SH);
                return LL_ERR_FORMAT;
            }
            done += c->size;
            if (c->codec != LL_ROW_ZEROS && c->size > cv->max_chunk) {
                if (c->file_offset != 0 || c->size > MAX_WHOLE_SIZE) {
                    ll__set_err(err, err_size, "eStargz TOC: a chunk of '%s' holds %llu bytes, more than the %llu "
                                "read lazily", SH, (unsigned long long)c->size, (unsigned long long)cv->max_chunk);
                    return LL_ERR_UNSUPPORTED;
                }
                c->codec = c->codec == LL_ROW_GZIP ? LL_ROW_GZIP_WHOLE : LL_ROW_ZSTD_WHOLE;
            }
            *frames += c->codec == LL_ROW_ZEROS ? (c->size + ZERO_PIECE - 1) / ZERO_PIECE
                       : c->codec >= LL_ROW_GZIP_WHOLE ? (c->size + cv->whole_piece - 1) / cv->whole_piece : 1;
            if (*frames > LL__MAX_TOC_FRAMES) {
                ll__set_err(err, err_size, "eStargz TOC: more than %u chunks (runs of zeros and big chunks counted "
                            "in pieces)", LL__MAX_TOC_FRAMES);
                return LL_ERR_LIMIT;
            }
            if (c->codec == LL_ROW_ZEROS) {
                uint8_t want[32];
                int rc = zero_digest(cv, c->size, 1, want);
                if (rc == LL_ERR_UNSUPPORTED)
                    ll__set_err(err, err_size, "eStargz TOC: more than %llu bytes of zeros chunks to check",
                                (unsigned long long)MAX_ZERO_CHECK);
                if (rc) return rc;
                if (memcmp(want, c->digest, 32)) {
                    ll__set_err(err, err_size, "eStargz TOC: a zeros chunk of '%s' has a chunkDigest that is not "
                                "that of %llu zero bytes", SH, (unsigned long long)c->size);
                    return LL_ERR_FORMAT;
                }
            }
            /* its compressed bytes end where the next chunk's member begins (or an endOffset, or the TOC) */
            size_t lo = 0, hi = cv->nends;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (cv->ends[mid] <= c->offset) lo = mid + 1;
                else hi = mid;
            }
            c->end = cv->ends[lo];
            /* ... but a chunk's bytes are never fetched further than its data could be, compressed, and
             * the tar headers of a few entries after it: a hostile TOC with no chunk after a small one
             * must not make a host read the rest of the blob to decode it */
            uint64_t span = c->size + c->size / 8 + LL_CHUNK_SPAN_SLACK;
            if (c->end - c->offset > span) c->end = c->offset + span;
        }
        if (done != e->size) {
            ll__set_err(err, err_size, "eStargz TOC: the chunks of '%s' hold %llu of its %llu bytes", SH,
                        (unsigned long long)done, (unsigned long long)e->size);
            return LL_ERR_FORMAT;
        }
    }
    return LL_OK;
}

/* ------------------------------------------------------------------ the raw layer */

static uint64_t name_slot(table *t, const entry *es, const uint8_t *s, size_t n, int insert, size_t idx) {
    size_t i = hash_bytes(s, n) & t->mask;
    for (;; i = (i + 1) & t->mask) {
        uint32_t v = t->slot[i];
        if (!v) {
            if (insert) t->slot[i] = (uint32_t)(idx + 1);
            return 0;
        }
        const entry *e = &es[v - 1];
        if (e->name_len == n && !memcmp(e->name, s, n)) {
            if (insert) t->slot[i] = (uint32_t)(idx + 1);
            return v;
        }
    }
}

static void put_row(uint8_t *r, uint64_t fo, uint64_t size, uint64_t off, uint64_t end, const uint8_t d[32],
                    uint8_t codec) {
    for (int i = 0; i < 8; i++) r[i] = (uint8_t)(fo >> (8 * i));
    for (int i = 0; i < 4; i++) r[8 + i] = (uint8_t)(size >> (8 * i));
    for (int i = 0; i < 8; i++) r[12 + i] = (uint8_t)(off >> (8 * i));
    for (int i = 0; i < 8; i++) r[20 + i] = (uint8_t)(end >> (8 * i));
    memcpy(r + 28, d, 32);
    r[60] = codec;
    r[61] = r[62] = r[63] = r[64] = 0;   /* bits, byte, window length: gzip spans only */
}

static void put_hex(buf *b, const uint8_t d[32]) {
    static const char hex[] = "0123456789abcdef";
    char t[66];
    t[0] = '"';
    for (int i = 0; i < 32; i++) t[1 + 2 * i] = hex[d[i] >> 4], t[2 + 2 * i] = hex[d[i] & 15];
    t[65] = '"';
    put(b, t, 66);
}

static uint64_t row_u64(const uint8_t *r, int at, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | r[at + i];
    return v;
}

/* How many rows from row i make one frame: 1, or with runs (cv->run_size > 0)
 * the run of small chunks it starts, as docs/filesystem.md "Runs of small
 * chunks" says: consecutive rows of gzip, zstd or zeros chunks of at most
 * run_chunk bytes, each chunk's compressed bytes at most run_gap after the end
 * of the one before it with bytes (zeros have none), run_size of data at most,
 * LL_RUN_MAX_CHUNKS chunks and 2 * run_size bytes of the blob at most. */
static uint64_t run_rows(const conv *cv, const uint8_t *rows, uint64_t n, uint64_t i, uint64_t *total) {
    const uint8_t *r = rows + i * LL_CHUNKED_ROW_SIZE;
    uint64_t size = row_u64(r, 8, 4);
    uint8_t k = r[60];
    *total = size;
    if (!cv->run_size || k > LL_ROW_ZEROS || size > cv->run_chunk) return 1;
    int have = k != LL_ROW_ZEROS;
    uint64_t first = have ? row_u64(r, 12, 8) : 0, last = have ? row_u64(r, 20, 8) : 0, j = i + 1;
    for (; j < n; j++) {
        const uint8_t *q = rows + j * LL_CHUNKED_ROW_SIZE;
        uint64_t sz = row_u64(q, 8, 4), o = row_u64(q, 12, 8);
        uint8_t kj = q[60];
        if (kj > LL_ROW_ZEROS || sz > cv->run_chunk || *total + sz > cv->run_size || j - i >= LL_RUN_MAX_CHUNKS)
            break;
        if (kj != LL_ROW_ZEROS && have && !(last <= o && o - last <= cv->run_gap)) break;
        if (kj != LL_ROW_ZEROS && have && row_u64(q, 20, 8) - first > 2 * cv->run_size) break; /* its bytes: bounded */
        *total += sz;
        if (kj != LL_ROW_ZEROS) {
            if (!have) first = o;
            have = 1, last = row_u64(q, 20, 8);
        }
    }
    return j - i;
}

/* The name of the run of rows [i, i + n): the sha256 of its table as ll_run_decode
 * takes it (entries relative to the run's first compressed byte), which is what
 * the host keeps it under (an LL_CHUNK_RUN encoded frame) and checks it by. */
static int run_name(const uint8_t *rows, uint64_t i, uint64_t n, uint8_t **scratch, size_t *cap,
                    uint8_t out[32]) {
    if (ll__grow((void **)scratch, cap, (size_t)n * LL_RUN_ENTRY, 1)) return LL_ERR_NOMEM;
    uint8_t *t = *scratch;
    memset(t, 0, (size_t)n * LL_RUN_ENTRY);
    uint64_t base = UINT64_MAX;
    for (uint64_t k = 0; k < n; k++) {
        const uint8_t *r = rows + (i + k) * LL_CHUNKED_ROW_SIZE;
        if (r[60] != LL_ROW_ZEROS && base == UINT64_MAX) base = row_u64(r, 12, 8);
    }
    for (uint64_t k = 0; k < n; k++) {
        const uint8_t *r = rows + (i + k) * LL_CHUNKED_ROW_SIZE;
        uint8_t *e = t + k * LL_RUN_ENTRY;
        uint64_t off = 0, len = 0, size = row_u64(r, 8, 4);
        if (r[60] != LL_ROW_ZEROS) off = row_u64(r, 12, 8) - base, len = row_u64(r, 20, 8) - row_u64(r, 12, 8);
        for (int b = 0; b < 4; b++) {
            e[b] = (uint8_t)(off >> (8 * b));
            e[4 + b] = (uint8_t)(len >> (8 * b));
            e[8 + b] = (uint8_t)(size >> (8 * b));
        }
        e[12] = r[60] == LL_ROW_GZIP ? LL_CHUNK_GZIP : r[60] == LL_ROW_ZSTD ? LL_CHUNK_ZSTD : LL_CHUNK_ZEROS;
        memcpy(e + 16, r + 28, 32);
    }
    ll_sha256(t, (size_t)n * LL_RUN_ENTRY, out);
    return LL_OK;
}

static int make_layer(conv *cv, uint64_t frames, ll_chunked *out, char *err, size_t err_size) {
    static const uint8_t ZERO32[32];
    out->rows = malloc(frames ? frames * LL_CHUNKED_ROW_SIZE : 1);
    if (!out->rows) return LL_ERR_NOMEM;
    buf fr = {0}, b = {0};
    uint64_t at = 0, max = 0, n = 0;
    /* the rows: each regular file's chunks end to end in the virtual stream */
    for (size_t k = 0; k < cv->ne; k++) {
        entry *e = &cv->e[k];
        if (e->kind != K_REG) continue;
        e->offset = at;
        for (size_t i = e->cfirst; i < e->cfirst + e->ccount; i++) {
            const chunk *c = &cv->c[i];
            uint64_t piece = c->codec == LL_ROW_ZEROS && c->size > ZERO_PIECE ? ZERO_PIECE
                             : c->codec >= LL_ROW_GZIP_WHOLE ? cv->whole_piece : c->size;
            for (uint64_t p = 0; p < c->size; p += piece) {
                uint64_t m = c->size - p < piece ? c->size - p : piece;
                uint8_t d[32];
                const uint8_t *rd = c->digest;
                if (c->codec == LL_ROW_ZEROS && c->size > ZERO_PIECE) {
                    int rc = zero_digest(cv, m, 0, d);
                    if (rc) return rc;
                    rd = d;
                }
                put_row(out->rows + n * LL_CHUNKED_ROW_SIZE, c->file_offset + p, m, c->offset, c->end, rd, c->codec);
                n++;
                at += m;
            }
        }
    }
    /* the frames: a row each, or runs of rows; named by the chunk's digest, a run by its table
     * (run_name), a big chunk's piece by zeros (the host checks it: ZERO_SHA256) */
    PUTS(&fr, "[");
    uint64_t pos = 0;
    uint8_t *scratch = NULL, name[32];
    size_t scap = 0;
    for (uint64_t i = 0, f = 0; i < n; f++) {
        uint64_t total;
        uint64_t take = run_rows(cv, out->rows, n, i, &total);
        const uint8_t *r = out->rows + i * LL_CHUNKED_ROW_SIZE;
        const uint8_t *fd = r[60] >= LL_ROW_GZIP_WHOLE ? ZERO32 : r + 28;
        if (take > 1) {
            if (run_name(out->rows, i, take, &scratch, &scap, name)) {
                free(scratch);
                free(fr.p);
                return LL_ERR_NOMEM;
            }
            fd = name;
        }
        if (f) PUTS(&fr, ",");
        PUTS(&fr, "[");
        put_u64(&fr, pos);
        PUTS(&fr, ",");
        put_u64(&fr, total);
        PUTS(&fr, ",");
        put_u64(&fr, pos);
        PUTS(&fr, ",");
        put_u64(&fr, total);
        PUTS(&fr, ",");
        put_hex(&fr, fd);
        PUTS(&fr, "]");
        pos += total;
        if (total > max) max = total;
        i += take;
    }
    free(scratch);
    PUTS(&fr, "]");
    out->count = n;
    out->size = at;
    /* hard links: a regular file's link count (count_hardlinks), over the last non-link entry of a name */
    table names = {0}, regs = {0};
    if (table_init(&names, cv->ne) || table_init(&regs, cv->ne)) {
        free(names.slot);
        free(regs.slot);
        free(fr.p);
        return LL_ERR_NOMEM;
    }
    for (size_t k = 0; k < cv->ne; k++) {
        entry *e = &cv->e[k];
        if (e->kind != K_HARDLINK) name_slot(&names, cv->e, e->name, e->name_len, 1, k);
        if (e->kind == K_REG) name_slot(&regs, cv->e, e->name, e->name_len, 1, k);
    }
    for (size_t k = 0; k < cv->ne; k++) {
        entry *e = &cv->e[k];
        if (e->kind != K_HARDLINK) continue;
        uint64_t v = name_slot(&names, cv->e, e->link, e->link_len, 0, 0);
        if (v && cv->e[v - 1].kind == K_REG) cv->e[v - 1].nlink = cv->e[v - 1].nlink ? cv->e[v - 1].nlink + 1 : 2;
    }
    PUTS(&b, "{\"codec\":\"raw\",\"entries\":[");
    for (size_t k = 0; k < cv->ne; k++) {
        const entry *e = &cv->e[k];
        if (k) PUTS(&b, ",");
        PUTS(&b, "{\"name\":");
        put_str(&b, e->name, e->name_len);
        PUTS(&b, ",\"type\":\"");
        put(&b, KIND_NAMES[e->kind], strlen(KIND_NAMES[e->kind]));
        PUTS(&b, "\",\"mode\":");
        put_u64(&b, e->mode);
        static const char *const idk[4] = {",\"uid\":", ",\"gid\":", ",\"devmajor\":", ",\"devminor\":"};
        const uint8_t hv[4] = {e->has_uid, e->has_gid, e->has_major, e->has_minor};
        const uint32_t iv[4] = {e->uid, e->gid, e->major, e->minor};
        for (int i = 0; i < 4; i++)
            if (hv[i]) put(&b, idk[i], strlen(idk[i])), put_u64(&b, iv[i]);
        if (e->uname_len) PUTS(&b, ",\"uname\":"), put_str(&b, e->uname, e->uname_len);
        if (e->gname_len) PUTS(&b, ",\"gname\":"), put_str(&b, e->gname, e->gname_len);
        if (e->link_len) PUTS(&b, ",\"linkname\":"), put_str(&b, e->link, e->link_len);
        if (e->mtime) PUTS(&b, ",\"mtime\":"), put_u64(&b, (uint64_t)e->mtime);
        if (e->xcount) {
            PUTS(&b, ",\"xattrs\":{");
            for (size_t i = 0; i < e->xcount; i++) {
                const xattr *x = &cv->x[e->xfirst + i];
                if (i) PUTS(&b, ",");
                put_str(&b, x->name, x->name_len);
                PUTS(&b, ":");
                put_str(&b, x->value, x->value_len);
            }
            PUTS(&b, "}");
        }
        if (e->kind == K_REG) {
            PUTS(&b, ",\"size\":");
            put_u64(&b, e->size);
            PUTS(&b, ",\"offset\":");
            put_u64(&b, e->offset);
            if (e->nlink) PUTS(&b, ",\"nlink\":"), put_u64(&b, e->nlink);
        }
        PUTS(&b, "}");
    }
    PUTS(&b, "],\"frame_size\":");
    put_u64(&b, max ? max : 1);
    PUTS(&b, ",\"frames\":");
    put(&b, fr.p, fr.len);
    free(fr.p);
    int frames_failed = fr.failed;
    /* the prefetch plan: the prioritized files' ranges (the last regular file of each name) */
    PUTS(&b, ",\"prefetch\":[");
    uint64_t ranges = 0;
    for (size_t i = 0; i < cv->nprio; i++) {
        const entry *p = &cv->e[cv->prio[i]];
        uint64_t v = name_slot(&regs, cv->e, p->name, p->name_len, 0, 0);
        const entry *r = &cv->e[v - 1];
        if (!r->size) continue;
        if (ranges++) PUTS(&b, ",");
        PUTS(&b, "[");
        put_u64(&b, r->offset);
        PUTS(&b, ",");
        put_u64(&b, r->size);
        PUTS(&b, "]");
    }
    free(names.slot);
    free(regs.slot);
    PUTS(&b, "],\"tar_size\":");
    put_u64(&b, at);
    PUTS(&b, ",\"version\":1}");
    if (b.failed || frames_failed) {
        free(b.p);
        return LL_ERR_NOMEM;
    }
    out->json = b.p;
    out->json_len = b.len;
    /* Toc.check_size: the limits a reader holds the TOC to */
    if (b.len > LL__MAX_TOC_BYTES) {
        ll__set_err(err, err_size, "the TOC would be %zu bytes of JSON (limit %u)", b.len, LL__MAX_TOC_BYTES);
        return LL_ERR_LIMIT;
    }
    uint64_t values = ll__json_count_values(b.p, b.len, NULL);
    if (values > LL__MAX_TOC_VALUES) {
        ll__set_err(err, err_size, "the TOC holds more than %u JSON values", LL__MAX_TOC_VALUES);
        return LL_ERR_LIMIT;
    }
    if (ranges > LL__MAX_PLAN_RANGES) {
        ll__set_err(err, err_size, "the prefetch plan has more than %u ranges", LL__MAX_PLAN_RANGES);
        return LL_ERR_LIMIT;
    }
    return LL_OK;
}

/* ------------------------------------------------------------------ the API */

#define CHUNKED_OPTIONS_V1 LL__END_OF(ll_chunked_options, whole_piece)  /* (run_* added after it) */

static void chunked_defaults(ll_chunked_options *o) {
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->codec = LL_CHUNK_GZIP;
    o->flags = LL_CHUNKED_HIDE_STARGZ;
    o->max_chunk = 64ull << 20;
    o->whole_piece = 4ull << 20;
}

int ll_chunked_options_init(ll_chunked_options *opt, size_t struct_size) {
    ll_chunked_options d;
    chunked_defaults(&d);
    return ll__options_init(opt, struct_size, &d, sizeof d, CHUNKED_OPTIONS_V1);
}

int ll_chunked_convert(const void *json, size_t len, const ll_chunked_options *options, ll_chunked **out,
                       char *err, size_t err_size) {
    if (out) *out = NULL;
    ll_chunked_options o;
    chunked_defaults(&o);
    if (!options || ll__options_copy(&o, sizeof o, options, CHUNKED_OPTIONS_V1) != LL_OK) return LL_ERR_ARG;
    const ll_chunked_options *opt = &o;
    if ((!json && len) || !out || (opt->codec != LL_CHUNK_GZIP && opt->codec != LL_CHUNK_ZSTD) ||
        (opt->flags & ~LL_CHUNKED_HIDE_STARGZ) || !opt->max_chunk || opt->max_chunk > LL_MAX_FRAME_SIZE ||
        !opt->whole_piece || opt->whole_piece > opt->max_chunk || opt->run_size > LL_MAX_FRAME_SIZE ||
        opt->run_chunk > opt->run_size)
        return LL_ERR_ARG;
    uint64_t max_chunk = opt->max_chunk, whole_piece = opt->whole_piece;
    /* check_json_shape: values counted as '[', '{' and ',' bytes, before anything is parsed */
    const uint8_t *in = json;
    uint64_t values = ll__json_count_values(in, len, NULL);
    if (values > LL__MAX_TOC_VALUES) {
        ll__set_err(err, err_size, "eStargz TOC holds more than %u JSON values", LL__MAX_TOC_VALUES);
        return LL_ERR_LIMIT;
    }
    conv cv;
    memset(&cv, 0, sizeof cv);
    cv.toc_offset = opt->toc_offset;
    cv.codec = opt->codec == LL_CHUNK_GZIP ? LL_ROW_GZIP : LL_ROW_ZSTD;
    cv.max_chunk = max_chunk;
    cv.whole_piece = whole_piece;
    cv.run_size = opt->run_size;
    cv.run_chunk = opt->run_chunk;
    cv.run_gap = opt->run_gap;
    cv.hide = !!(opt->flags & LL_CHUNKED_HIDE_STARGZ);
    conv_reset_entries(&cv);
    ll_chunked *r = calloc(1, sizeof *r);
    uint8_t *copy = malloc(len + 1);   /* json.c decodes strings in place */
    int rc = !r || !copy || table_init(&cv.ztab, 16) ? LL_ERR_NOMEM : LL_OK;
    if (rc) goto done;
    if (len) memcpy(copy, json, len);
    ll__json_init(&cv.j, copy, len, UINT64_MAX);
    ll__jtok t;
    int tt = ll__json_next(&cv.j, &t);
    if (tt == LL__J_OBJ) {
        cv.doc_is_object = 1;
        rc = parse_doc(&cv);
    } else if (tt == LL__J_ERROR) {
        rc = cv.j.status;
    } else if ((tt == LL__J_ARR) && skip_container(&cv.j, &(int){0})) {
        rc = cv.j.status ? cv.j.status : LL_ERR_FORMAT;
    }
    if (!rc && ll__json_next(&cv.j, &t) != LL__J_EOF) rc = cv.j.status ? cv.j.status : LL_ERR_FORMAT;
    if (rc) {   /* not JSON (or out of memory): as load_json says it */
        if (rc == LL_ERR_NOMEM) goto done;
        ll__set_err(err, err_size, "eStargz TOC is not valid JSON: %s", cv.j.msg[0] ? cv.j.msg : "malformed");
        rc = LL_ERR_FORMAT;
        goto done;
    }
    if (!cv.doc_is_object || !cv.version_ok || !cv.entries_is_list) {
        ll__set_err(err, err_size, "the eStargz TOC is not a version 1 object with an entries list");
        rc = LL_ERR_FORMAT;
        goto done;
    }
    if (cv.raw_entries > LL__MAX_TOC_ENTRIES) {
        ll__set_err(err, err_size, "the eStargz TOC has more than %u entries", LL__MAX_TOC_ENTRIES);
        rc = LL_ERR_LIMIT;
        goto done;
    }
    if (cv.entry_status != LL_OK) {
        ll__set_err(err, err_size, "%s", cv.entry_msg);
        rc = cv.entry_status;
        goto done;
    }
    if (!cv.landmark) cv.nprio = 0;   /* no landmark: no prioritized files */
    uint64_t frames;
    rc = check_chunks(&cv, &frames, err, err_size);
    if (!rc) rc = make_layer(&cv, frames, r, err, err_size);
done:
    conv_free(&cv);
    free(copy);
    if (rc) {
        if (rc == LL_ERR_NOMEM) ll__set_err(err, err_size, "out of memory converting a chunked TOC");
        ll_chunked_free(r);
        return rc;
    }
    *out = r;
    return LL_OK;
}

const uint8_t *ll_chunked_json(const ll_chunked *c, size_t *len) {
    if (len) *len = c ? c->json_len : 0;
    return c ? c->json : NULL;
}

const uint8_t *ll_chunked_rows(const ll_chunked *c, uint64_t *count) {
    if (count) *count = c ? c->count : 0;
    return c ? c->rows : NULL;
}

uint64_t ll_chunked_stream_size(const ll_chunked *c) {
    return c ? c->size : 0;
}

void ll_chunked_free(ll_chunked *c) {
    if (!c) return;
    free(c->json);
    free(c->rows);
    free(c);
}
