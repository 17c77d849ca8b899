/* toc.c - a layer's TOC frame: verified, decompressed in bounded steps, parsed and checked.
 *
 * The semantics are those of the Python reader, which is the specification:
 * lazylayer/format/layer.py (Toc.from_frame, Toc.from_json, _check_entries,
 * check_toc_frames) and lazylayer/format/tar.py (check_name and the limits).
 * Checks run in the order Python runs them, so a TOC with several faults gets
 * the same error class (LL_ERR_FORMAT for FormatError, LL_ERR_LIMIT for
 * LimitError): the JSON is read in one pass, the first fault of each kind is
 * recorded, and the faults are reported in Python's order at the end.
 * Where this reader is stricter than Python (each is refused with LL_ERR_FORMAT
 * unless said otherwise):
 *   - a frame's sha256 must be 64 lowercase hex digits (Python checks the length
 *     and then never matches a frame);
 *   - a frame over LL_MAX_FRAME_SIZE decompressed, or 2^32 compressed, bytes is
 *     LL_ERR_LIMIT (Python fails later, building its seek table);
 *   - tar_size must equal the frames' total (Python does not look at it);
 *   - names, link targets and xattr names must not hold a NUL byte;
 *   - lone surrogate escapes other than U+DC80..U+DCFF (json.c);
 *   - the zstd data must be exactly one frame (Python ignores what follows it);
 *     a frame that does not decode is LL_ERR_FRAME (CorruptFrameError);
 *   - "version" must be the integer 1 or true (Python also takes 1.0).
 * Out-of-range mtime, uid, gid, devmajor and devminor are clamped as Python
 * clamps them (silently: the C library has no logger). */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

#include <zstd.h>

#define TOC_MAGIC "LZLYTOC1"
#define TOC_SKIPPABLE 0x184D2A5Au
#define ID_MAX 0xFFFFFFFFull
#define DEVMAJOR_MAX 0xFFFull
#define DEVMINOR_MAX 0xFFFFFull

/* ------------------------------------------------------------------ names */

/* Why `name` is not what normalize_name would make of it, or NULL; *base gets
 * the offset of its last component. */
static const char *name_problem(const uint8_t *s, size_t n, uint32_t *base) {
    *base = 0;
    if (n == 1 && s[0] == '.') return NULL;
    if (n == 0) return "is not normalised (no leading '/', '.', '..' or empty components)";
    if (n > LL__MAX_PATH_BYTES) return "is longer than 4096 bytes";
    size_t start = 0, parts = 0;
    for (;;) {
        const uint8_t *slash = memchr(s + start, '/', n - start);
        size_t end = slash ? (size_t)(slash - s) : n, len = end - start;
        const uint8_t *c = s + start;
        if (len == 2 && c[0] == '.' && c[1] == '.')
            return "has a '..' component; refusing a layer that would write outside its root";
        if (len == 0 || (len == 1 && c[0] == '.'))
            return "is not normalised (no leading '/', '.', '..' or empty components)";
        if (len > LL__MAX_NAME_BYTES) return "has a component longer than 255 bytes";
        if (++parts > LL__MAX_PATH_DEPTH) return "has more than 256 components";
        if (memchr(c, 0, len)) return "holds a NUL byte";
        if (!slash) {
            *base = (uint32_t)start;
            return NULL;
        }
        start = end + 1;
    }
}

/* ------------------------------------------------------------------ base64 */

static const int8_t b64val[256] = {
    ['A'] = 1, ['B'] = 2, ['C'] = 3, ['D'] = 4, ['E'] = 5, ['F'] = 6, ['G'] = 7, ['H'] = 8, ['I'] = 9,
    ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16, ['Q'] = 17,
    ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22, ['W'] = 23, ['X'] = 24, ['Y'] = 25,
    ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32, ['g'] = 33,
    ['h'] = 34, ['i'] = 35, ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41,
    ['p'] = 42, ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] = 49,
    ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56, ['4'] = 57,
    ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['+'] = 63, ['/'] = 64,
};

/* Decode in place as Python's base64.b64decode(s, validate=True) does (3.11):
 * [A-Za-z0-9+/]* then at most two '='; n data chars with n % 4 == 1 refused,
 * n % 4 == 2 needs "==", n % 4 == 3 needs "=", n % 4 == 0 takes 0..2 '=' (but not
 * after no data at all).  Returns the decoded length, or -1. */
static long b64_decode(uint8_t *s, size_t n) {
    size_t data = 0;
    while (data < n && b64val[s[data]]) data++;
    size_t pad = n - data;
    if (pad > 2) return -1;
    for (size_t i = data; i < n; i++)
        if (s[i] != '=') return -1;
    switch (data % 4) {
    case 0: if (data == 0 && pad) return -1; break;
    case 1: return -1;
    case 2: if (pad != 2) return -1; break;
    case 3: if (pad != 1) return -1; break;
    }
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < data; i++) {
        acc = (acc << 6) | (uint32_t)(b64val[s[i]] - 1);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            s[o++] = (uint8_t)(acc >> bits);
        }
    }
    return (long)o;
}

/* ------------------------------------------------------------------ the parse */

/* Fields of an entry whose value has the wrong JSON type (bit per field). */
enum {
    F_NAME = 1, F_TYPE = 2, F_LINK = 4, F_MODE = 8, F_SIZE = 16, F_OFFSET = 32, F_UNAME = 64, F_GNAME = 128,
    F_MTIME = 256, F_UID = 512, F_GID = 1024, F_DEVMAJOR = 2048, F_DEVMINOR = 4096
};

typedef struct {
    ll__json j;
    ll__toc *toc;
    uint32_t layer;
    size_t ecap, xcap, fcap, pcap;
    /* what the document holds, for the checks made in Python's order at the end */
    int have_version, version_one;
    int frames_kind;           /* 0 absent, 1 a list, 2 something else */
    size_t frames_seen;
    size_t frame_type_err;     /* 1 + index of the first frame that is not [int, int, int, int, str] */
    int frame_place_status;    /* the first check_toc_frames fault */
    size_t frame_place_err;    /* 1 + its index */
    const char *frame_place_why;
    uint64_t c_sum, d_sum;     /* running totals while reading the frames */
    int sums_bad;
    int entries_kind;
    size_t entries_seen;
    size_t entry_not_obj;      /* 1 + index of the first entry that is not an object */
    size_t entry_err;          /* 1 + index of the first entry that fails _check_entries */
    char entry_msg[320];
    int prefetch_kind;         /* 0 absent (= []), 1 a list, 2 something else */
    size_t prefetch_seen;
    int prefetch_bad;
    int have_frame_size, frame_size_int, have_tar_size, tar_size_int;
    int codec;                 /* LL_CODEC_ZSTD (absent or "zstd"), LL_CODEC_RAW ("raw"), -1 anything else */
    ll__jint tar_size;
} parser;

static int key_is(const ll__jtok *t, const char *k, size_t n) {
    return t->len == n && memcmp(t->s, k, n) == 0;
}
#define KEY(t, lit) key_is((t), lit, sizeof lit - 1)

static int uint_of(const ll__jint *v, uint64_t *out) {
    if (v->neg || v->big) return 0;
    *out = v->mag;
    return 1;
}

static uint32_t clamp_id(const ll__jint *v, uint64_t hi) {
    if (v->neg) return 0;
    if (v->big || v->mag > hi) return (uint32_t)hi;
    return (uint32_t)v->mag;
}

static int name_entry_err(parser *ps, size_t index, const ll__toc_entry *e, int have_name, const char *fmt,
                          const char *what) {
    if (ps->entry_err) return LL_OK;
    char shown[96];
    if (have_name) ll__show(shown, sizeof shown, e->name, e->name_len);
    else snprintf(shown, sizeof shown, "(no name)");
    ps->entry_err = index + 1;
    snprintf(ps->entry_msg, sizeof ps->entry_msg, fmt, shown, what);
    return LL_OK;
}

static int xattr_cmp(const void *a, const void *b) {
    const ll__toc_xattr *x = a, *y = b;
    int c = ll__bytes_cmp(x->name, x->name_len, y->name, y->name_len);
    /* equal names: keep JSON order (the later value wins below) */
    return c ? c : x->value < y->value ? -1 : x->value > y->value;
}

/* One entry object (its '{' was read). */
static int parse_entry(parser *ps, size_t index, int store) {
    ll__json *j = &ps->j;
    ll__toc *toc = ps->toc;
    ll__toc_entry e;
    memset(&e, 0, sizeof e);
    e.link = (const uint8_t *)"";
    e.layer = (uint16_t)ps->layer;   /* < LL__MAX_LAYERS */
    unsigned bad = 0;
    int have_name = 0, have_type = 0, have_link = 0, xattrs_bad = 0, b64_bad = 0;
    size_t x0 = toc->nxattrs;
    ll__jtok k, v;
    ll__jint n;
    for (;;) {
        int kt = ll__json_next(j, &k);
        if (kt == LL__J_OBJ_END) break;
        if (kt != LL__J_KEY) return j->status;
        if (ll__json_next(j, &v) == LL__J_ERROR) return j->status;
        switch (k.len) {
        case 4:
            if (KEY(&k, "name")) {
                have_name = v.type == LL__J_STR;
                bad = have_name ? bad & ~F_NAME : bad | F_NAME;
                if (have_name) e.name = v.s, e.name_len = (uint32_t)(v.len > UINT32_MAX ? UINT32_MAX : v.len);
                if (v.len > UINT32_MAX) bad |= F_NAME;
                goto next;
            }
            if (KEY(&k, "type")) {
                have_type = 1;
                bad = v.type == LL__J_STR ? bad & ~F_TYPE : bad | F_TYPE;
                if (v.type == LL__J_STR) {
                    e.type_str = v.s;
                    e.type_len = v.len > 64 ? 64 : (uint8_t)v.len;
                    e.type = LL__T_UNKNOWN;
                    static const char *const names[] = {NULL, "reg", "dir", "symlink", "char", "block", "fifo",
                                                        "hardlink"};
                    for (int i = 1; i <= LL__T_HARDLINK; i++)
                        if (v.len == strlen(names[i]) && memcmp(v.s, names[i], v.len) == 0) e.type = (uint8_t)i;
                }
                goto next;
            }
            if (KEY(&k, "mode")) {
                if (ll__json_int(&v, &n)) bad &= ~F_MODE, e.mode = (uint16_t)(n.low & 07777), e.has_mode = 1;
                else bad |= F_MODE;
                goto next;
            }
            if (KEY(&k, "size")) {
                if (ll__json_int(&v, &n)) {
                    bad &= ~F_SIZE;
                    e.size = n.neg || n.big ? UINT64_MAX : n.mag;   /* out of range: fails the content check */
                } else bad |= F_SIZE;
                goto next;
            }
            break;
        case 3:
            if (KEY(&k, "uid") || KEY(&k, "gid")) {
                int is_uid = k.s[0] == 'u';
                unsigned f = is_uid ? F_UID : F_GID;
                if (ll__json_int(&v, &n)) {
                    bad &= ~f;
                    *(is_uid ? &e.uid : &e.gid) = clamp_id(&n, ID_MAX);
                } else bad |= f;
                goto next;
            }
            break;
        case 5:
            if (KEY(&k, "mtime")) {
                if (v.type == LL__J_NUM) {
                    bad &= ~F_MTIME;
                    ll__json_time(&v, LL__MTIME_MAX, &e.mtime_sec, &e.mtime_nsec);
                } else bad |= F_MTIME;
                goto next;
            }
            if (KEY(&k, "uname") || KEY(&k, "gname")) {
                unsigned f = k.s[0] == 'u' ? F_UNAME : F_GNAME;
                bad = v.type == LL__J_STR ? bad & ~f : bad | f;
                goto next;
            }
            break;
        case 6:
            if (KEY(&k, "offset")) {
                if (ll__json_int(&v, &n)) {
                    bad &= ~F_OFFSET;
                    e.offset = n.neg || n.big ? UINT64_MAX : n.mag;
                } else bad |= F_OFFSET;
                goto next;
            }
            if (KEY(&k, "xattrs")) {
                toc->nxattrs = x0;   /* a repeated key: the last one counts */
                xattrs_bad = b64_bad = 0;
                if (v.type == LL__J_NULL) goto next;
                if (v.type != LL__J_OBJ) {
                    xattrs_bad = 1;
                    if (ll__json_skip(j, &v)) return j->status;
                    goto next;
                }
                for (;;) {
                    ll__jtok xk, xv;
                    int t = ll__json_next(j, &xk);
                    if (t == LL__J_OBJ_END) break;
                    if (t != LL__J_KEY) return j->status;
                    if (ll__json_next(j, &xv) == LL__J_ERROR) return j->status;
                    if (xv.type != LL__J_STR) {
                        xattrs_bad = 1;
                        if (ll__json_skip(j, &xv)) return j->status;
                        continue;
                    }
                    long dl = b64_decode(xv.s, xv.len);
                    if (dl < 0) {
                        b64_bad = 1;
                        continue;
                    }
                    if (xk.len == 0 || memchr(xk.s, 0, xk.len) || xk.len > 255) {
                        b64_bad = 2;   /* not a name the kernel takes */
                        continue;
                    }
                    if (!store) continue;
                    if (ll__grow((void **)&toc->xattrs, &ps->xcap, toc->nxattrs + 1, sizeof *toc->xattrs))
                        return ll__json_fail(j, LL_ERR_NOMEM, "out of memory");
                    ll__toc_xattr *x = &toc->xattrs[toc->nxattrs++];
                    x->name = xk.s;
                    x->name_len = (uint32_t)xk.len;
                    x->value = xv.s;
                    x->value_len = (uint32_t)dl;
                }
                goto next;
            }
            break;
        case 8:
            if (KEY(&k, "linkname")) {
                have_link = v.type == LL__J_STR;
                bad = have_link ? bad & ~F_LINK : bad | F_LINK;
                if (have_link) e.link = v.s, e.link_len = (uint32_t)(v.len > UINT32_MAX ? UINT32_MAX : v.len);
                if (v.len > UINT32_MAX) bad |= F_LINK;
                goto next;
            }
            if (KEY(&k, "devmajor") || KEY(&k, "devminor")) {
                int major = k.s[4] == 'a';
                unsigned f = major ? F_DEVMAJOR : F_DEVMINOR;
                if (ll__json_int(&v, &n)) {
                    bad &= ~f;
                    if (major) e.devmajor = clamp_id(&n, DEVMAJOR_MAX);
                    else e.devminor = clamp_id(&n, DEVMINOR_MAX);
                } else bad |= f;
                goto next;
            }
            break;
        }
        if (ll__json_skip(j, &v)) return j->status;   /* a key Python does not read */
    next:;
    }
    if (!have_type) e.type = LL__T_REG, e.type_str = (const uint8_t *)"reg", e.type_len = 3;

    /* _check_entries, in its order */
    const char *why;
    if (!have_name) return name_entry_err(ps, index, &e, 0, "TOC entry %s: the name is not a string%s", "");
    if ((why = name_problem(e.name, e.name_len, &e.base)))
        return name_entry_err(ps, index, &e, 1, "TOC path '%s' %s", why);
    if (bad & F_TYPE) return name_entry_err(ps, index, &e, 1, "TOC entry '%s': type %s", "is not a string");
    if (e.type == LL__T_HARDLINK) {
        uint32_t b;
        if (!have_link) return name_entry_err(ps, index, &e, 1, "TOC entry '%s': hardlink target %s",
                                              "is not a normalised name");
        if ((why = name_problem(e.link, e.link_len, &b))) {
            char msg[120];
            snprintf(msg, sizeof msg, "hardlink target %s", why);
            return name_entry_err(ps, index, &e, 1, "TOC entry '%s': %s", msg);
        }
    }
    static const struct { unsigned f; const char *what; } order[] = {
        {F_MODE, "mode is not an integer"}, {F_SIZE, "size is not an integer"},
        {F_OFFSET, "offset is not an integer"}, {F_LINK, "linkname is not a string"},
        {F_UNAME, "uname is not a string"}, {F_GNAME, "gname is not a string"},
        {F_MTIME, "mtime is not a number"}, {F_UID, "uid is not an integer"}, {F_GID, "gid is not an integer"},
        {F_DEVMAJOR, "devmajor is not an integer"}, {F_DEVMINOR, "devminor is not an integer"},
    };
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (bad & order[i].f) return name_entry_err(ps, index, &e, 1, "TOC entry '%s': %s", order[i].what);
    if (xattrs_bad)
        return name_entry_err(ps, index, &e, 1, "TOC entry '%s': %s", "xattrs is not a map of names to base64");
    if (b64_bad)
        return name_entry_err(ps, index, &e, 1, "TOC entry '%s': %s",
                              b64_bad == 1 ? "an xattr value is not base64" : "an xattr name is empty, too long "
                                                                              "or holds a NUL byte");
    if (e.link_len && memchr(e.link, 0, e.link_len))
        return name_entry_err(ps, index, &e, 1, "TOC entry '%s': %s", "linkname holds a NUL byte");
    if (!store) return LL_OK;
    /* xattrs: sorted by name, a repeated name keeping its last value (a Python dict) */
    size_t nx = toc->nxattrs - x0;
    if (nx > 1) {
        ll__toc_xattr *x = toc->xattrs + x0;
        qsort(x, nx, sizeof *x, xattr_cmp);
        size_t o = 0;
        for (size_t i = 0; i < nx; i++) {
            if (o > 0 && x[o - 1].name_len == x[i].name_len && memcmp(x[o - 1].name, x[i].name, x[i].name_len) == 0)
                x[o - 1] = x[i];
            else x[o++] = x[i];
        }
        toc->nxattrs = x0 + o;
        nx = o;
    }
    e.whiteout = e.name_len - e.base >= 4 && memcmp(e.name + e.base, ".wh.", 4) == 0;
    e.xattr_first = (uint32_t)x0;
    e.nxattrs = (uint32_t)nx;
    if (ll__grow((void **)&toc->entries, &ps->ecap, toc->nentries + 1, sizeof *toc->entries))
        return ll__json_fail(j, LL_ERR_NOMEM, "out of memory");
    toc->entries[toc->nentries++] = e;
    return LL_OK;
}

static int parse_entries(parser *ps) {
    ll__json *j = &ps->j;
    ll__toc *toc = ps->toc;
    ll__jtok t;
    toc->nentries = toc->nxattrs = 0;
    ps->entries_seen = ps->entry_not_obj = ps->entry_err = 0;
    for (;;) {
        int type = ll__json_next(j, &t);
        if (type == LL__J_ARR_END) return LL_OK;
        if (type == LL__J_ERROR) return j->status;
        size_t index = ps->entries_seen++;
        if (type != LL__J_OBJ) {
            if (!ps->entry_not_obj) ps->entry_not_obj = index + 1;
            if (ll__json_skip(j, &t)) return j->status;
            continue;
        }
        /* Past the cap, or once anything is wrong, entries are read but not kept. */
        int store = ps->entries_seen <= LL__MAX_TOC_ENTRIES && !ps->entry_not_obj && !ps->entry_err;
        if (parse_entry(ps, index, store)) return j->status;
    }
}

static int hexval(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static void place_err(parser *ps, size_t index, int status, const char *why) {
    if (ps->frame_place_err) return;
    ps->frame_place_err = index + 1;
    ps->frame_place_status = status;
    ps->frame_place_why = why;
}

static int parse_frames(parser *ps) {
    ll__json *j = &ps->j;
    ll__toc *toc = ps->toc;
    ll__jtok t;
    toc->nframes = 0;
    ps->frames_seen = ps->frame_type_err = ps->frame_place_err = 0;
    ps->c_sum = ps->d_sum = 0;
    ps->sums_bad = 0;
    for (;;) {
        int type = ll__json_next(j, &t);
        if (type == LL__J_ARR_END) return LL_OK;
        if (type == LL__J_ERROR) return j->status;
        size_t index = ps->frames_seen++;
        int ok = type == LL__J_ARR;
        ll__jint v[4];
        ll__jtok sha = {0};
        if (ok) {
            size_t n = 0;
            for (;;) {
                ll__jtok x;
                int xt = ll__json_next(j, &x);
                if (xt == LL__J_ARR_END) break;
                if (xt == LL__J_ERROR) return j->status;
                if (n < 4) ok &= ll__json_int(&x, &v[n]);
                else if (n == 4) {
                    ok &= xt == LL__J_STR;
                    sha = x;
                }
                n++;
                if (ll__json_skip(j, &x)) return j->status;
            }
            ok &= n == 5;
        } else if (ll__json_skip(j, &t)) return j->status;
        if (!ok) {
            if (!ps->frame_type_err) ps->frame_type_err = index + 1;
            continue;
        }
        if (ps->frame_type_err || ps->frame_place_err || ps->frames_seen > LL__MAX_TOC_FRAMES) continue;
        /* check_toc_frames, as the frames come */
        uint64_t c_off, c_size, d_off, d_size;
        if (!uint_of(&v[0], &c_off) || c_off != ps->c_sum || !uint_of(&v[2], &d_off) || d_off != ps->d_sum ||
            ps->sums_bad || !uint_of(&v[1], &c_size) || c_size == 0 || v[3].neg || sha.len != 64) {
            place_err(ps, index, LL_ERR_FORMAT, "is out of place or malformed");
            continue;
        }
        if (v[3].big || v[3].mag > LL_MAX_FRAME_SIZE || c_size > UINT32_MAX) {
            place_err(ps, index, LL_ERR_LIMIT, "is larger than the format allows (1 GiB of data, 4 GiB compressed)");
            continue;
        }
        d_size = v[3].mag;
        ll_layer_frame f;
        f.c_offset = c_off;
        f.d_offset = d_off;
        f.c_size = (uint32_t)c_size;
        f.d_size = (uint32_t)d_size;
        for (int i = 0; i < 32; i++) {
            int hi = hexval(sha.s[2 * i]), lo = hexval(sha.s[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                place_err(ps, index, LL_ERR_FORMAT, "has a sha256 that is not 64 lowercase hex digits");
                goto skip;
            }
            f.sha256[i] = (uint8_t)(hi << 4 | lo);
        }
        if (ps->c_sum + c_size < ps->c_sum || ps->d_sum + d_size < ps->d_sum) ps->sums_bad = 1;
        ps->c_sum += c_size;
        ps->d_sum += d_size;
        if (ll__grow((void **)&toc->frames, &ps->fcap, toc->nframes + 1, sizeof *toc->frames))
            return ll__json_fail(j, LL_ERR_NOMEM, "out of memory");
        toc->frames[toc->nframes++] = f;
    skip:;
    }
}

static int parse_prefetch(parser *ps) {
    ll__json *j = &ps->j;
    ll__toc *toc = ps->toc;
    ll__jtok t;
    toc->nprefetch = 0;
    ps->prefetch_seen = 0;
    ps->prefetch_bad = 0;
    for (;;) {
        int type = ll__json_next(j, &t);
        if (type == LL__J_ARR_END) return LL_OK;
        if (type == LL__J_ERROR) return j->status;
        ps->prefetch_seen++;
        int ok = type == LL__J_ARR;
        uint64_t r[2] = {0, 0};
        if (ok) {
            size_t n = 0;
            for (;;) {
                ll__jtok x;
                ll__jint v;
                int xt = ll__json_next(j, &x);
                if (xt == LL__J_ARR_END) break;
                if (xt == LL__J_ERROR) return j->status;
                if (n < 2) ok &= ll__json_int(&x, &v) && !v.neg && !v.big && v.mag < ((uint64_t)1 << 62);
                if (ok && n < 2) r[n] = v.mag;
                n++;
                if (ll__json_skip(j, &x)) return j->status;
            }
            ok &= n == 2;
        } else if (ll__json_skip(j, &t)) return j->status;
        if (!ok) ps->prefetch_bad = 1;
        if (ps->prefetch_bad || ps->prefetch_seen > LL__MAX_PLAN_RANGES) continue;
        if (ll__grow((void **)&toc->prefetch, &ps->pcap, 2 * (toc->nprefetch + 1), sizeof *toc->prefetch))
            return ll__json_fail(j, LL_ERR_NOMEM, "out of memory");
        toc->prefetch[2 * toc->nprefetch] = r[0];
        toc->prefetch[2 * toc->nprefetch + 1] = r[1];
        toc->nprefetch++;
    }
}

static int parse_doc(parser *ps) {
    ll__json *j = &ps->j;
    ll__jtok k, v;
    if (ll__json_next(j, &v) == LL__J_ERROR) return j->status;
    if (v.type != LL__J_OBJ) {
        if (ll__json_skip(j, &v) || ll__json_next(j, &v) == LL__J_ERROR) return j->status;
        return ll__json_fail(j, LL_ERR_FORMAT, "malformed TOC: not a JSON object");
    }
    for (;;) {
        int kt = ll__json_next(j, &k);
        if (kt == LL__J_OBJ_END) break;
        if (kt != LL__J_KEY) return j->status;
        if (ll__json_next(j, &v) == LL__J_ERROR) return j->status;
        ll__jint n;
        if (KEY(&k, "version")) {
            ps->have_version = 1;
            ps->version_one = v.type == LL__J_TRUE || (ll__json_int(&v, &n) && !n.neg && !n.big && n.mag == 1);
        } else if (KEY(&k, "codec")) {
            ps->codec = v.type == LL__J_STR && KEY(&v, "raw") ? LL_CODEC_RAW
                        : v.type == LL__J_STR && KEY(&v, "zstd") ? LL_CODEC_ZSTD : -1;
        } else if (KEY(&k, "frame_size")) {
            ps->have_frame_size = 1;
            ps->frame_size_int = ll__json_int(&v, &n);
        } else if (KEY(&k, "tar_size")) {
            ps->have_tar_size = 1;
            ps->tar_size_int = ll__json_int(&v, &ps->tar_size);
        } else if (KEY(&k, "frames")) {
            ps->frames_kind = v.type == LL__J_ARR ? 1 : 2;
            if (v.type == LL__J_ARR) {
                if (parse_frames(ps)) return j->status;
                continue;
            }
        } else if (KEY(&k, "entries")) {
            ps->entries_kind = v.type == LL__J_ARR ? 1 : 2;
            if (v.type == LL__J_ARR) {
                if (parse_entries(ps)) return j->status;
                continue;
            }
        } else if (KEY(&k, "prefetch")) {
            ps->prefetch_kind = v.type == LL__J_ARR ? 1 : 2;
            if (v.type == LL__J_ARR) {
                if (parse_prefetch(ps)) return j->status;
                continue;
            }
        }
        if (ll__json_skip(j, &v)) return j->status;
    }
    if (ll__json_next(j, &v) != LL__J_EOF) return j->status;
    return LL_OK;
}

void ll__toc_free(ll__toc *t) {
    if (!t) return;
    free(t->json);
    free(t->entries);
    free(t->xattrs);
    free(t->frames);
    free(t->prefetch);
    memset(t, 0, sizeof *t);
}

#define FAIL(status, ...) do { ll__set_err(err, err_size, __VA_ARGS__); rc = (status); goto out; } while (0)

int ll__toc_parse(uint8_t *json, size_t len, uint64_t toc_offset, uint32_t index, ll__toc *out, char *err,
                  size_t err_size) {
    int rc = LL_OK;
    memset(out, 0, sizeof *out);
    out->json = json;
    out->json_len = len;
    parser *ps = calloc(1, sizeof *ps);
    if (!ps) FAIL(LL_ERR_NOMEM, "layer %u: out of memory", index);
    ps->toc = out;
    ps->layer = index;
    if (len > LL__MAX_TOC_BYTES) FAIL(LL_ERR_LIMIT, "layer %u: TOC larger than %u bytes of JSON", index, LL__MAX_TOC_BYTES);
    /* oci.media.check_json_shape: '[', '{' and ',' bytes bound the values, before parsing */
    uint64_t objects, values = ll__json_count_values(json, len, &objects);
    if (values > LL__MAX_TOC_VALUES)
        FAIL(LL_ERR_LIMIT, "layer %u: the TOC holds more than %u JSON values", index, LL__MAX_TOC_VALUES);
    /* Entries are objects: room for all of them at once (bounded by the text), no regrowth. */
    if (objects > 1 && ll__grow((void **)&out->entries, &ps->ecap,
                            objects - 1 < LL__MAX_TOC_ENTRIES ? objects - 1 : LL__MAX_TOC_ENTRIES,
                            sizeof *out->entries))
        FAIL(LL_ERR_NOMEM, "layer %u: out of memory", index);
    ll__json_init(&ps->j, json, len, LL__MAX_TOC_VALUES);
    if (parse_doc(ps)) {
        if (ps->j.status == LL_ERR_NOMEM) FAIL(LL_ERR_NOMEM, "layer %u: out of memory reading its TOC", index);
        FAIL(ps->j.status, "layer %u: TOC is not valid: %s", index, ps->j.msg);
    }
    if (!ps->have_version || !ps->version_one)
        FAIL(LL_ERR_FORMAT, "layer %u: TOC version is not supported (this lazylayer reads version 1)", index);
    if (!ps->frames_kind || !ps->entries_kind)
        FAIL(LL_ERR_FORMAT, "layer %u: malformed TOC: KeyError: '%s'", index, ps->frames_kind ? "entries" : "frames");
    if (ps->frames_kind != 1 || ps->frames_seen > LL__MAX_TOC_FRAMES)
        FAIL(LL_ERR_LIMIT, "layer %u: TOC frames: not a list of at most %u frames", index, LL__MAX_TOC_FRAMES);
    if (ps->frame_type_err)
        FAIL(LL_ERR_FORMAT, "layer %u: malformed TOC: frame %zu is not [int, int, int, int, \"sha256\"]", index,
             ps->frame_type_err - 1);
    if (ps->entries_kind != 1 || ps->entries_seen > LL__MAX_TOC_ENTRIES)
        FAIL(LL_ERR_LIMIT, "layer %u: TOC entries: not a list of at most %u entries", index, LL__MAX_TOC_ENTRIES);
    if (ps->entry_not_obj)
        FAIL(LL_ERR_FORMAT, "layer %u: TOC entries are malformed (entry %zu is not an object)", index,
             ps->entry_not_obj - 1);
    if (ps->prefetch_kind == 1 && ps->prefetch_seen > LL__MAX_PLAN_RANGES)
        FAIL(LL_ERR_LIMIT, "layer %u: the TOC's prefetch plan has more than %u ranges", index, LL__MAX_PLAN_RANGES);
    if (ps->prefetch_kind == 2 || ps->prefetch_bad)
        FAIL(LL_ERR_FORMAT, "layer %u: the TOC's prefetch plan is not a list of [offset, length] pairs", index);
    if (ps->entry_err)
        FAIL(LL_ERR_FORMAT, "layer %u, entry %zu: %s", index, ps->entry_err - 1, ps->entry_msg);
    if (ps->codec < 0)
        FAIL(LL_ERR_FORMAT, "layer %u: the TOC's codec is neither \"zstd\" nor \"raw\"", index);
    out->codec = (uint32_t)ps->codec;
    if (ps->codec == LL_CODEC_RAW)
        for (size_t i = 0; i < out->nframes; i++)
            if (out->frames[i].c_size != out->frames[i].d_size)
                FAIL(LL_ERR_FORMAT, "layer %u: TOC frame %zu of a raw layer is not its data as is (%u bytes for %u)",
                     index, i, out->frames[i].c_size, out->frames[i].d_size);
    if (!ps->have_frame_size || !ps->frame_size_int)
        FAIL(LL_ERR_FORMAT, "layer %u: malformed TOC: frame_size is missing or not an integer", index);
    if (!ps->have_tar_size || !ps->tar_size_int)
        FAIL(LL_ERR_FORMAT, "layer %u: malformed TOC: tar_size is missing or not an integer", index);
    /* check_toc_frames */
    if (ps->frame_place_err)
        FAIL(ps->frame_place_status, "layer %u: TOC frame %zu %s", index, ps->frame_place_err - 1,
             ps->frame_place_why);
    if (ps->sums_bad || ps->c_sum != toc_offset)
        FAIL(LL_ERR_FORMAT, "layer %u: the TOC's frames end at %llu, but the TOC frame starts at %llu", index,
             (unsigned long long)ps->c_sum, (unsigned long long)toc_offset);
    for (size_t i = 0; i < out->nentries; i++) {
        const ll__toc_entry *e = &out->entries[i];
        if (e->type != LL__T_REG) continue;
        if (e->offset > ps->d_sum || e->size > ps->d_sum - e->offset) {
            char shown[96];
            ll__show(shown, sizeof shown, e->name, e->name_len);
            FAIL(LL_ERR_FORMAT, "layer %u: TOC entry '%s': its content is not within the layer's %llu bytes", index,
                 shown, (unsigned long long)ps->d_sum);
        }
    }
    uint64_t tar_size;
    if (!uint_of(&ps->tar_size, &tar_size) || tar_size != ps->d_sum)
        FAIL(LL_ERR_FORMAT, "layer %u: the TOC's tar_size is not the %llu bytes its frames hold", index,
             (unsigned long long)ps->d_sum);
    out->tar_size = tar_size;
out:
    free(ps);
    if (rc) {
        ll__toc_free(out);
    }
    return rc;
}

int ll__toc_load(const ll_index_layer *L, uint32_t index, ll__toc *out, char *err, size_t err_size) {
    int rc = LL_OK;
    uint8_t *frame = NULL, *json = NULL;
    ZSTD_DCtx *dctx = NULL;
    memset(out, 0, sizeof *out);
    if (!L->digest || !ll__digest_ok(L->digest, strlen(L->digest)))
        FAIL(LL_ERR_FORMAT, "layer %u: unsupported or malformed digest", index);
    if (L->blob_size == 0) FAIL(LL_ERR_FORMAT, "layer %u (%s): bad size 0", index, L->digest);
    if (!L->toc_digest || !ll__digest_ok(L->toc_digest, strlen(L->toc_digest)))
        FAIL(LL_ERR_FORMAT, "layer %u (%s): bad io.lazylayer.toc.digest annotation: it must be sha256: and 64 hex digits",
             index, L->digest);
    if (L->toc_length == 0 || L->toc_offset > ((uint64_t)1 << 63) - 1 - L->toc_length ||
        L->toc_offset + L->toc_length > L->blob_size)
        FAIL(LL_ERR_FORMAT, "layer %u (%s): bad io.lazylayer.toc.position %llu:%llu (blob of %llu bytes)", index,
             L->digest, (unsigned long long)L->toc_offset, (unsigned long long)L->toc_length,
             (unsigned long long)L->blob_size);
    if (L->toc_length > ZSTD_COMPRESSBOUND(LL__MAX_TOC_BYTES) + 16)
        FAIL(LL_ERR_LIMIT, "layer %u (%s): a TOC frame of %llu bytes is larger than any TOC of at most %u bytes",
             index, L->digest, (unsigned long long)L->toc_length, LL__MAX_TOC_BYTES);
    size_t n = (size_t)L->toc_length;
    const uint8_t *f = L->toc_frame;
    if (!f) {
        if (!L->read) FAIL(LL_ERR_ARG, "layer %u: neither toc_frame nor a read callback", index);
        frame = malloc(n);
        if (!frame) FAIL(LL_ERR_NOMEM, "layer %u: out of memory", index);
        int r = ll__callback_status(L->read(L->opaque, L->toc_offset, n, frame));
        if (r) FAIL(r, "layer %u (%s): reading its TOC frame (%llu bytes at %llu) failed: %s", index, L->digest,
                    (unsigned long long)n, (unsigned long long)L->toc_offset, ll_strerror(r));
        f = frame;
    }
    uint8_t sha[32];
    ll_sha256(f, n, sha);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        if (L->toc_digest[7 + 2 * i] != hex[sha[i] >> 4] || L->toc_digest[8 + 2 * i] != hex[sha[i] & 15])
            FAIL(LL_ERR_DIGEST, "layer %u (%s): TOC digest mismatch: the blob's TOC is not the one %s names", index,
                 L->digest, L->toc_digest);
    }
    if (n < 16 || ll__le32(f) != TOC_SKIPPABLE || ll__le32(f + 4) != n - 8)
        FAIL(LL_ERR_FORMAT, "layer %u (%s): not a lazylayer TOC frame (wrong skippable magic or size)", index,
             L->digest);
    if (memcmp(f + 8, TOC_MAGIC, 8) != 0)
        FAIL(LL_ERR_FORMAT, "layer %u (%s): not a lazylayer TOC frame (wrong TOC magic)", index, L->digest);
    const uint8_t *z = f + 16;
    size_t zn = n - 16;
    size_t fsize = ZSTD_findFrameCompressedSize(z, zn);
    if (ZSTD_isError(fsize) || fsize != zn)
        FAIL(LL_ERR_FRAME, "layer %u (%s): the TOC is not one zstd frame (%s)", index, L->digest,
             ZSTD_isError(fsize) ? ZSTD_getErrorName(fsize) : "data after it");
    dctx = ZSTD_createDCtx();
    if (!dctx) FAIL(LL_ERR_NOMEM, "layer %u: out of memory", index);
    unsigned long long content = ZSTD_getFrameContentSize(z, zn);
    size_t len = 0;
    if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != ZSTD_CONTENTSIZE_ERROR) {
        if (content > LL__MAX_TOC_BYTES)
            FAIL(LL_ERR_LIMIT, "layer %u (%s): TOC larger than %u bytes of JSON when decompressed", index, L->digest,
                 LL__MAX_TOC_BYTES);
        json = malloc(content + 1);
        if (!json) FAIL(LL_ERR_NOMEM, "layer %u: out of memory for its %llu-byte TOC", index, content);
        size_t r = ZSTD_decompressDCtx(dctx, json, content, z, zn);
        if (ZSTD_isError(r) || r != content)
            FAIL(LL_ERR_FRAME, "layer %u (%s): TOC does not decompress: %s", index, L->digest,
                 ZSTD_isError(r) ? ZSTD_getErrorName(r) : "short");
        len = r;
    } else {
        /* Unknown size: a chunk at a time, refused once past the limit (never held whole). */
        size_t cap = 1u << 20;
        ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, 27);
        json = malloc(cap + 1);
        if (!json) FAIL(LL_ERR_NOMEM, "layer %u: out of memory", index);
        ZSTD_inBuffer in = {z, zn, 0};
        for (;;) {
            if (len == cap) {
                if (cap > LL__MAX_TOC_BYTES)
                    FAIL(LL_ERR_LIMIT, "layer %u (%s): TOC larger than %u bytes of JSON when decompressed", index,
                         L->digest, LL__MAX_TOC_BYTES);
                size_t ncap = cap * 2 > (size_t)LL__MAX_TOC_BYTES + 1 ? (size_t)LL__MAX_TOC_BYTES + 1 : cap * 2;
                uint8_t *q = realloc(json, ncap + 1);
                if (!q) FAIL(LL_ERR_NOMEM, "layer %u: out of memory", index);
                json = q;
                cap = ncap;
            }
            ZSTD_outBuffer ob = {json, cap, len};
            size_t r = ZSTD_decompressStream(dctx, &ob, &in);
            len = ob.pos;
            if (ZSTD_isError(r))
                FAIL(LL_ERR_FRAME, "layer %u (%s): TOC does not decompress: %s", index, L->digest, ZSTD_getErrorName(r));
            if (len > LL__MAX_TOC_BYTES)
                FAIL(LL_ERR_LIMIT, "layer %u (%s): TOC larger than %u bytes of JSON when decompressed", index,
                     L->digest, LL__MAX_TOC_BYTES);
            if (r == 0) break;
            if (in.pos == in.size && ob.pos < ob.size)
                FAIL(LL_ERR_FRAME, "layer %u (%s): TOC does not decompress: truncated", index, L->digest);
        }
    }
    ZSTD_freeDCtx(dctx);
    dctx = NULL;
    free(frame);
    frame = NULL;
    uint8_t *j = json;
    json = NULL;
    return ll__toc_parse(j, len, L->toc_offset, index, out, err, err_size);
out:
    ZSTD_freeDCtx(dctx);
    free(frame);
    free(json);
    return rc;
}
