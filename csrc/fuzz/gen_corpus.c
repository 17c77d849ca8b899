/* gen_corpus.c - seed corpora for the lazylayer fuzzers.
 *
 *   gen_corpus OUTDIR     writes OUTDIR/seektable/, roundtrip/, toc/, index_load/ and manifest/
 *
 * seektable seeds: small valid blobs made by the library's own writer (with and
 * without checksums, skippable frames, empty data, several frame sizes) and
 * hand-made hostile blobs: huge frame counts, reserved descriptor bits, a
 * Frame_Size that disagrees, compressed sizes that overflow 32 bits when summed,
 * a compressed size of 0, decompressed sizes over 1 GiB, sizes that disagree
 * with the frames, a wrong checksum, a skippable frame claiming data, a frame
 * with a 128 MiB window and no content size, RLE frames that expand a lot.
 * roundtrip seeds: the 32-byte parameter header (see fuzz_roundtrip.c) plus data. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../lazylayer.h"
#include "fuzz_index_common.h"

#include <zlib.h>
#include <zstd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

static const char *g_dir;
static int g_count;

static void save(const char *sub, const char *name, const void *p, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", g_dir, sub);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) { perror(path); exit(1); }
    snprintf(path, sizeof path, "%s/%s/%s", g_dir, sub, name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) { perror(path); exit(1); }
    g_count++;
}

/* ---- a growable byte buffer */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf;

static void put(buf *b, const void *src, size_t n) {
    if (n == 0) return;
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}
static void put32(buf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(b, x, 4);
}
static void put8(buf *b, uint8_t v) { put(b, &v, 1); }
static int sink(void *opaque, const void *src, size_t n) {
    put(opaque, src, n);
    return 0;
}

/* ---- sample data */
static uint8_t *text(size_t n, unsigned seed) {
    static const char *words[] = {"layer", "zstd", "seek", "frame", "table", "cache", "pool", "tar",
                                  "\n", "usr/lib/", "0000644", "lazylayer ", "\0\0\0\0"};
    uint8_t *p = malloc(n ? n : 1);
    size_t i = 0;
    uint32_t s = seed * 2654435761u + 1;
    while (i < n) {
        s = s * 1103515245u + 12345u;
        const char *w = words[(s >> 16) % 13];
        size_t wl = w[0] ? strlen(w) : 4;
        for (size_t k = 0; k < wl && i < n; k++) p[i++] = (uint8_t)w[k];
        if ((s >> 8) % 7 == 0 && i < n) p[i++] = (uint8_t)(s >> 24); /* some noise */
    }
    return p;
}

/* ---- valid blobs from the library's writer */
typedef struct {
    uint32_t frame_size;
    int checksum;
    size_t len;
    size_t cut;      /* ll_writer_end_frame at this offset, if non-zero */
    size_t skip_at;  /* ll_writer_add_skippable at this offset, if non-zero (+1) */
    int pool;
} wspec;

static buf write_blob(const wspec *s, const uint8_t *data) {
    buf b = {0};
    ll_pool *pool = NULL;
    if (s->pool && ll_pool_create(1, &pool) != LL_OK) abort();
    ll_writer_options o;
    ll_writer_options_init(&o, sizeof o);
    o.frame_size = s->frame_size;
    o.checksum = s->checksum;
    o.pool = pool;
    ll_writer *w;
    if (ll_writer_create(&o, sink, &b, &w) != LL_OK) abort();
    size_t pos = 0;
    if (s->cut && s->cut <= s->len) {
        if (ll_writer_write(w, data, s->cut) || ll_writer_end_frame(w)) abort();
        pos = s->cut;
    }
    if (s->skip_at && s->skip_at - 1 >= pos && s->skip_at - 1 <= s->len) {
        if (ll_writer_write(w, data + pos, s->skip_at - 1 - pos)) abort();
        if (ll_writer_add_skippable(w, 3, "skippable payload", 17)) abort();
        pos = s->skip_at - 1;
    }
    if (ll_writer_write(w, data + pos, s->len - pos) || ll_writer_finish(w)) abort();
    ll_writer_free(w);
    ll_pool_free(pool);
    return b;
}

/* ---- hand-made seek tables */
typedef struct {
    uint32_t c, d, sum;
} entry;

/* Append a seek table; count/desc/frame_size < 0 mean "the right value". */
static void table(buf *b, const entry *e, size_t n, int checks, int64_t count, int desc, int64_t frame_size) {
    size_t esz = checks ? 12 : 8;
    uint32_t fs = (uint32_t)(n * esz + 9);
    put32(b, LL_SKIPPABLE_MAGIC);
    put32(b, frame_size >= 0 ? (uint32_t)frame_size : fs);
    for (size_t i = 0; i < n; i++) {
        put32(b, e[i].c);
        put32(b, e[i].d);
        if (checks) put32(b, e[i].sum);
    }
    put32(b, count >= 0 ? (uint32_t)count : (uint32_t)n);
    put8(b, desc >= 0 ? (uint8_t)desc : (checks ? 0x80 : 0));
    put32(b, LL_SEEKABLE_MAGIC);
}

/* A zstd frame of raw blocks: magic, header, blocks.  window_log 0: single
 * segment with the content size; else no content size and that window. */
static void zframe_raw(buf *b, const uint8_t *data, size_t n, int window_log) {
    put32(b, 0xFD2FB528u);
    if (window_log) {
        put8(b, 0x00);                                     /* no FCS, not single segment */
        put8(b, (uint8_t)((window_log - 10) << 3));         /* window descriptor */
    } else {
        put8(b, 0xA0);                                     /* single segment, 4-byte FCS */
        put32(b, (uint32_t)n);
    }
    size_t pos = 0;
    do {
        size_t k = n - pos < 65536 ? n - pos : 65536;
        uint32_t hdr = (uint32_t)((k << 3) | (pos + k == n ? 1 : 0)); /* raw block */
        put8(b, (uint8_t)hdr);
        put8(b, (uint8_t)(hdr >> 8));
        put8(b, (uint8_t)(hdr >> 16));
        put(b, data + pos, k);
        pos += k;
    } while (pos < n);
}

/* A zstd frame of `n` copies of byte `v` in RLE blocks (128 KiB each). */
static void zframe_rle(buf *b, uint8_t v, uint32_t n, int with_fcs) {
    put32(b, 0xFD2FB528u);
    if (with_fcs) {
        put8(b, 0x80);       /* 4-byte FCS, not single segment */
        put8(b, (20 - 10) << 3); /* 1 MiB window */
        put32(b, n);
    } else {
        put8(b, 0x00);
        put8(b, (20 - 10) << 3);
    }
    uint32_t pos = 0;
    do {
        uint32_t k = n - pos < 131072 ? n - pos : 131072;
        uint32_t hdr = (k << 3) | (1u << 1) | (pos + k == n ? 1u : 0u); /* RLE block */
        put8(b, (uint8_t)hdr);
        put8(b, (uint8_t)(hdr >> 8));
        put8(b, (uint8_t)(hdr >> 16));
        put8(b, v);
        pos += k;
    } while (pos < n);
}

static void seektable_seeds(void) {
    char name[64];
    int k = 0;
    /* valid, from the writer */
    static const wspec specs[] = {
        {1024, 1, 0, 0, 0, 0},      {1024, 0, 0, 0, 0, 0},     {1, 1, 1, 0, 0, 0},
        {100, 1, 1000, 0, 0, 0},    {100, 0, 1000, 0, 0, 0},   {1024, 0, 5000, 0, 0, 1},
        {4096, 1, 3000, 700, 0, 0}, {512, 1, 2000, 0, 1001, 0}, {512, 0, 2000, 300, 301, 1},
        {65536, 1, 20000, 0, 0, 0}, {7, 1, 200, 50, 101, 0},   {2048, 1, 8192, 0, 1, 0},
    };
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        uint8_t *d = text(specs[i].len, (unsigned)i);
        buf b = write_blob(&specs[i], d);
        snprintf(name, sizeof name, "valid-%02d", k++);
        save("seektable", name, b.p, b.len);
        free(b.p);
        free(d);
    }

    /* hostile */
    uint8_t payload[64];
    for (int i = 0; i < 64; i++) payload[i] = (uint8_t)(i * 7);
    buf f = {0}; /* one real 64-byte raw frame */
    zframe_raw(&f, payload, 64, 0);
    uint32_t fsz = (uint32_t)f.len, sum = (uint32_t)XXH64(payload, 64, 0);
    entry good = {fsz, 64, sum};
#define HOSTILE(label, ...)                                                 \
    do {                                                                    \
        buf b = {0};                                                        \
        __VA_ARGS__;                                                        \
        save("seektable", "hostile-" label, b.p, b.len);                    \
        free(b.p);                                                          \
    } while (0)

    HOSTILE("empty-table", table(&b, NULL, 0, 1, -1, -1, -1));
    HOSTILE("one-frame", put(&b, f.p, f.len); table(&b, &good, 1, 1, -1, -1, -1));
    HOSTILE("count-huge", put(&b, f.p, f.len); table(&b, &good, 1, 1, 0xFFFFFFFF, -1, -1));
    HOSTILE("count-max", put(&b, f.p, f.len); table(&b, &good, 1, 0, LL_MAX_FRAMES, -1, -1));
    HOSTILE("count-max+1", put(&b, f.p, f.len); table(&b, &good, 1, 0, LL_MAX_FRAMES + 1, -1, -1));
    HOSTILE("count-off-by-one", put(&b, f.p, f.len); table(&b, &good, 1, 1, 2, -1, -1));
    HOSTILE("reserved-bit", put(&b, f.p, f.len); table(&b, &good, 1, 1, -1, 0x84, -1));
    HOSTILE("reserved-all", put(&b, f.p, f.len); table(&b, &good, 1, 0, -1, 0x7C, -1));
    HOSTILE("ignored-bits", put(&b, f.p, f.len); table(&b, &good, 1, 1, -1, 0x83, -1));
    HOSTILE("frame-size-minus1", put(&b, f.p, f.len); table(&b, &good, 1, 1, -1, -1, 20));
    HOSTILE("frame-size-huge", put(&b, f.p, f.len); table(&b, &good, 1, 1, -1, -1, 0xFFFFFFFF));
    HOSTILE("bad-skippable-magic", put(&b, f.p, f.len); table(&b, &good, 1, 1, -1, -1, -1); b.p[f.len] ^= 1);
    {
        /* c sizes 0xFFFFFFF0 + 0x20 wrap to 0x10 in 32 bits: 16 bytes of "frames" */
        entry e[2] = {{0xFFFFFFF0u, 10, 0}, {0x20, 10, 0}};
        HOSTILE("csum-wraps-32", put(&b, payload, 16); table(&b, e, 2, 0, -1, -1, -1));
        entry e3[3] = {{0x80000000u, 1, 0}, {0x80000000u, 1, 0}, {fsz, 64, sum}};
        HOSTILE("csum-wraps-32b", put(&b, f.p, f.len); table(&b, e3, 3, 1, -1, -1, -1));
    }
    {
        /* d sizes that sum past 4 GiB with a valid layout: five frames of 1 GiB */
        buf fr = {0};
        entry e[5];
        for (int i = 0; i < 5; i++) {
            size_t before = fr.len;
            zframe_rle(&fr, (uint8_t)i, 1, 0);
            e[i] = (entry){(uint32_t)(fr.len - before), 0x40000000u, 0};
        }
        HOSTILE("dsum-over-4g", put(&b, fr.p, fr.len); table(&b, e, 5, 0, -1, -1, -1));
        for (int i = 0; i < 5; i++) e[i].d = 0x3FFFFFFF;
        HOSTILE("dsum-over-4g-b", put(&b, fr.p, fr.len); table(&b, e, 5, 0, -1, -1, -1));
        free(fr.p);
    }
    {
        entry e0 = {0, 64, sum}, e1 = {fsz, 0x40000001u, sum}, e2 = {fsz, 0xFFFFFFFFu, sum};
        entry e3 = {fsz, LL_MAX_FRAME_SIZE, sum}, e4 = {fsz, (1u << 20) + 1, sum};
        entry z[2] = {{0, 0, 0}, good};
        HOSTILE("csize-zero", put(&b, f.p, f.len); table(&b, &e0, 1, 1, -1, -1, -1));
        HOSTILE("csize-zero-b", put(&b, f.p, f.len); table(&b, z, 2, 1, -1, -1, -1));
        HOSTILE("dsize-over-1g", put(&b, f.p, f.len); table(&b, &e1, 1, 1, -1, -1, -1));
        HOSTILE("dsize-u32max", put(&b, f.p, f.len); table(&b, &e2, 1, 1, -1, -1, -1));
        HOSTILE("dsize-1g", put(&b, f.p, f.len); table(&b, &e3, 1, 1, -1, -1, -1));
        HOSTILE("dsize-1m+1", put(&b, f.p, f.len); table(&b, &e4, 1, 1, -1, -1, -1));
    }
    {
        entry small = {fsz, 63, sum}, big = {fsz, 65, sum}, badsum = {fsz, 64, sum ^ 1};
        HOSTILE("dsize-short", put(&b, f.p, f.len); table(&b, &small, 1, 0, -1, -1, -1));
        HOSTILE("dsize-long", put(&b, f.p, f.len); table(&b, &big, 1, 0, -1, -1, -1));
        HOSTILE("bad-checksum", put(&b, f.p, f.len); table(&b, &badsum, 1, 1, -1, -1, -1));
        entry two = {2 * fsz, 128, 0};
        HOSTILE("two-frames-one-entry", put(&b, f.p, f.len); put(&b, f.p, f.len); table(&b, &two, 1, 0, -1, -1, -1));
        entry split[2] = {{fsz - 10, 30, 0}, {10, 34, 0}};
        HOSTILE("frame-split", put(&b, f.p, f.len); table(&b, split, 2, 0, -1, -1, -1));
    }
    {
        /* a skippable frame listed with data, and one listed properly between frames */
        buf s = {0};
        put32(&s, 0x184D2A53u);
        put32(&s, 8);
        put(&s, payload, 8);
        entry e1 = {(uint32_t)s.len, 16, 0};
        HOSTILE("skippable-with-data", put(&b, s.p, s.len); table(&b, &e1, 1, 0, -1, -1, -1));
        entry e3[3] = {good, {(uint32_t)s.len, 0, 0}, good};
        HOSTILE("skippable-middle", put(&b, f.p, f.len); put(&b, s.p, s.len); put(&b, f.p, f.len);
                table(&b, e3, 3, 1, -1, -1, -1));
        entry e4[3] = {good, {fsz, 0, 0}, good};
        HOSTILE("empty-real-frame", put(&b, f.p, f.len); put(&b, f.p, f.len); put(&b, f.p, f.len);
                table(&b, e4, 3, 0, -1, -1, -1));
        free(s.p);
    }
    {
        /* no content size, 128 MiB window: a streaming (partial) decode sizes its buffer from it */
        buf w = {0};
        zframe_raw(&w, payload, 64, 27);
        entry e = {(uint32_t)w.len, 64, sum};
        HOSTILE("window-128m-no-fcs", put(&b, w.p, w.len); table(&b, &e, 1, 0, -1, -1, -1));
        HOSTILE("window-128m-no-fcs-ck", put(&b, w.p, w.len); table(&b, &e, 1, 1, -1, -1, -1));
        free(w.p);
        w = (buf){0};
        zframe_raw(&w, payload, 64, 31);
        e.c = (uint32_t)w.len;
        HOSTILE("window-2g-no-fcs", put(&b, w.p, w.len); table(&b, &e, 1, 0, -1, -1, -1));
        free(w.p);
    }
    {
        /* RLE frames that expand to 1 MiB each from a few bytes */
        buf r = {0};
        entry e[3];
        for (int i = 0; i < 3; i++) {
            size_t before = r.len;
            zframe_rle(&r, (uint8_t)('a' + i), 1u << 20, i != 1);
            e[i] = (entry){(uint32_t)(r.len - before), 1u << 20, 0};
        }
        HOSTILE("rle-3x1m", put(&b, r.p, r.len); table(&b, e, 3, 0, -1, -1, -1));
        e[1].d = 1000;
        HOSTILE("rle-size-lies", put(&b, r.p, r.len); table(&b, e, 3, 0, -1, -1, -1));
        free(r.p);
    }
    HOSTILE("footer-only", put32(&b, 0); put8(&b, 0); put32(&b, LL_SEEKABLE_MAGIC));
    HOSTILE("tiny", put8(&b, 0xB1));
    free(f.p);
#undef HOSTILE
}

/* header for fuzz_roundtrip (see its layout comment) */
static void rt_seed(const char *name, uint16_t fs_raw, uint8_t flags, uint8_t ops, uint16_t p0, uint16_t p1,
                    uint16_t p2, uint8_t skip, uint32_t flip, uint8_t xr, const uint8_t *data, size_t n) {
    buf b = {0};
    put8(&b, (uint8_t)fs_raw);
    put8(&b, (uint8_t)(fs_raw >> 8));
    put8(&b, flags);
    put8(&b, ops);
    uint16_t pos[3] = {p0, p1, p2};
    for (int i = 0; i < 3; i++) { put8(&b, (uint8_t)pos[i]); put8(&b, (uint8_t)(pos[i] >> 8)); }
    put8(&b, skip);
    put32(&b, flip);
    put8(&b, xr);
    uint16_t r[8] = {10, 100, 0, 4000, 999, 3, 1500, 2500};
    for (int i = 0; i < 8; i++) { put8(&b, (uint8_t)r[i]); put8(&b, (uint8_t)(r[i] >> 8)); }
    put(&b, data, n);
    save("roundtrip", name, b.p, b.len);
    free(b.p);
}

static void roundtrip_seeds(void) {
    uint8_t *d = text(16384, 99);
    rt_seed("empty", 1023, 0x01, 0, 0, 0, 0, 0, 0, 0, NULL, 0);
    rt_seed("one-byte", 0, 0x01, 0, 0, 0, 0, 0, 5, 0xFF, d, 1);
    rt_seed("ck-1k-frames", 1023, 0x01, 0, 0, 0, 0, 0, 100, 0x40, d, 4000);
    rt_seed("nock-1k-frames", 1023, 0x00, 0, 0, 0, 0, 0, 100, 0x40, d, 4000);
    rt_seed("ck-small-frames", 99, 0x09, 0, 0, 0, 0, 0, 2000, 0x01, d, 3000);
    rt_seed("cuts", 511, 0x11, 0x03 | (0 << 2) | (2 << 4) | (3 << 6), 100, 1700, 2500, 0x53, 300, 0x10, d, 3000);
    rt_seed("skippables", 255, 0x1B, 0x02 | (2 << 2) | (2 << 4), 0, 2000, 0, 0xF7, 9999, 0x80, d, 2500);
    rt_seed("pool-writer", 700, 0x03 | 0x18, 0, 0, 0, 0, 0, 77, 0x02, d, 8000);
    rt_seed("failing-sink", 700, 0x05, 0x01, 3000, 0, 0, 0, 1234, 0x02, d, 6000);
    rt_seed("small-fetch", 300, 0x81 | 0x08, 0, 0, 0, 0, 0, 50, 0x20, d, 5000);
    rt_seed("level-neg", 2047, 0x41, 0, 0, 0, 0, 0, 3000, 0x08, d, 12000);
    rt_seed("big-frame-16k", 16383, 0x61 | 0x18, 0x01, 8000, 0, 0, 0, 7, 0x01, d, 16384);
    rt_seed("table-flip", 1023, 0x01, 0, 0, 0, 0, 0, 0xFFFFFFF0u, 0x01, d, 3000);
    free(d);
}

/* ---- TOC, index and manifest seeds (fuzz_toc, fuzz_index_load, fuzz_manifest) */
#define SHA_A "abababababababababababababababababababababababababababababababab"
#define SHA_C "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"
#define TOC_HEAD "{\"version\":1,\"frame_size\":4096,\"tar_size\":4096,\"frames\":[[0,60,0,4000,\"" SHA_A \
                 "\"],[60,40,4000,96,\"" SHA_C "\"]],\"prefetch\":[[0,512],[1024,10]],\"entries\":["
static const char *const toc_seeds[][2] = {
    {"basic", TOC_HEAD "{\"name\":\"etc\",\"type\":\"dir\",\"mode\":493,\"mtime\":1700000000},"
              "{\"name\":\"etc/a\",\"type\":\"reg\",\"mode\":420,\"size\":6,\"offset\":512,\"mtime\":1700000000.5},"
              "{\"name\":\"etc/l\",\"type\":\"symlink\",\"linkname\":\"a\"},"
              "{\"name\":\"etc/h\",\"type\":\"hardlink\",\"linkname\":\"etc/a\"},"
              "{\"name\":\"dev/null\",\"type\":\"char\",\"devmajor\":1,\"devminor\":3},"
              "{\"name\":\"dev/sda\",\"type\":\"block\",\"devmajor\":8},{\"name\":\"run/p\",\"type\":\"fifo\"},"
              "{\"name\":\"x\",\"size\":3,\"offset\":1024,\"uid\":1000,\"gid\":1000,"
              "\"xattrs\":{\"user.a\":\"QUJD\",\"security.capability\":\"AQAAAg==\"}}]}"},
    {"layers3", "\x02" TOC_HEAD "{\"name\":\"a/b/c\",\"type\":\"fifo\"},{\"name\":\"a/x\",\"type\":\"fifo\"},"
                "{\"name\":\"s\",\"type\":\"symlink\",\"linkname\":\"/a\"}]}\n--\n"
                TOC_HEAD "{\"name\":\"a/.wh.b\"},{\"name\":\"s/new\",\"type\":\"fifo\"},{\"name\":\".wh..wh..opq\"},"
                "{\"name\":\"a/.wh..wh..opq\"},{\"name\":\"a/y\",\"type\":\"dir\"}]}\n--\n"
                TOC_HEAD "{\"name\":\".\",\"type\":\"dir\",\"mode\":448},{\"name\":\"a\",\"type\":\"reg\"},"
                "{\"name\":\"loop\",\"type\":\"symlink\",\"linkname\":\"loop/x\"},{\"name\":\"u\",\"type\":\"symlink\","
                "\"linkname\":\"../../a\"}]}"},
    {"odd-values", TOC_HEAD "{\"name\":\"\\u00e9\\udcff\",\"type\":\"fifo\",\"mtime\":1e300,\"uid\":-1,"
                   "\"gid\":99999999999999999999999},{\"name\":\"n\",\"type\":\"fifo\",\"mtime\":NaN,\"mode\":-1},"
                   "{\"name\":\"i\",\"type\":\"fifo\",\"mtime\":-Infinity,\"xattrs\":null,\"nlink\":3},"
                   "{\"name\":\"f\",\"type\":\"fifo\",\"mtime\":1.7e9,\"unknown\":[1,{\"a\":[]}]}]}"},
    {"hostile-name", TOC_HEAD "{\"name\":\"../x\"}]}"},
    {"hostile-hardlink", TOC_HEAD "{\"name\":\"h\",\"type\":\"hardlink\",\"linkname\":\"nothere\"}]}"},
    {"hostile-type", TOC_HEAD "{\"name\":\"h\",\"type\":\"socket\"}]}"},
    {"hostile-b64", TOC_HEAD "{\"name\":\"h\",\"xattrs\":{\"a\":\"QQ\"}}]}"},
    {"hostile-frames", "{\"version\":1,\"frame_size\":1,\"tar_size\":1,\"frames\":[[0,99,0,1,\"" SHA_A "\"]],"
                       "\"entries\":[]}"},
    {"hostile-json", "{\"version\":1,\"entries\":[{\"name\":\"a\\ud800\"}]}"},
    {"empty", "{\"version\":1,\"frame_size\":1,\"tar_size\":0,\"frames\":[],\"entries\":[]}"},
    {"raw", "{\"version\":1,\"codec\":\"raw\",\"frame_size\":4096,\"tar_size\":100,\"frames\":[[0,60,0,60,\"" SHA_A
            "\"],[60,40,60,40,\"" SHA_C "\"]],\"entries\":[{\"name\":\"f\",\"type\":\"reg\",\"size\":100,\"offset\":0}]}"},
    {"hostile-raw", "{\"version\":1,\"codec\":\"raw\",\"frame_size\":4096,\"tar_size\":100,\"frames\":[[0,60,0,61,\""
                    SHA_A "\"],[60,40,61,39,\"" SHA_C "\"]],\"entries\":[]}"},
};

static void toc_seeds_write(void) {
    for (size_t i = 0; i < sizeof toc_seeds / sizeof toc_seeds[0]; i++) {
        const char *text = toc_seeds[i][1];
        buf b = {0};
        if (text[0] == '\x02') put(&b, text, strlen(text));   /* picks 3 layers */
        else {
            put8(&b, 0);
            put(&b, text, strlen(text));
        }
        save("toc", toc_seeds[i][0], b.p, b.len);
        /* the index it builds, for fuzz_index_load */
        const uint8_t *parts[3];
        size_t lens[3];
        uint32_t n = 0;
        const uint8_t *p = b.p + 1, *end = b.p + b.len;
        while (n < 2 && b.p[0] == 2) {
            const uint8_t *sep = memmem(p, (size_t)(end - p), "\n--\n", 4);
            if (!sep) break;
            parts[n] = p;
            lens[n++] = (size_t)(sep - p);
            p = sep + 4;
        }
        parts[n] = p;
        lens[n++] = (size_t)(end - p);
        ll_index *idx;
        char err[256];
        if (ll_fuzz_build(parts, lens, n, &idx, err, sizeof err) == LL_OK) {
            const void *data;
            size_t size;
            ll_index_data(idx, &data, &size);
            char name[64];
            snprintf(name, sizeof name, "index-%s", toc_seeds[i][0]);
            save("index_load", name, data, size);
            ll_index_free(idx);
        }
        free(b.p);
    }
}

static const char *const manifest_seeds[][2] = {
    {"manifest", "\x05{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
                 "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:"
                 SHA_A "\",\"size\":2},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+zstd\","
                 "\"digest\":\"sha256:" SHA_C "\",\"size\":5000,\"annotations\":{\"io.lazylayer.version\":\"1\","
                 "\"io.lazylayer.toc.digest\":\"sha256:" SHA_A "\",\"io.lazylayer.toc.position\":\"4000:900\"}},"
                 "{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:" SHA_A
                 "\",\"size\":12}]}"},
    {"index", "\x05{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
              "\"digest\":\"sha256:" SHA_A "\",\"size\":500,\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\","
              "\"variant\":\"v8\"}},{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:"
              SHA_C "\",\"size\":500,\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}},{\"digest\":\"sha256:"
              SHA_A "\",\"platform\":{\"os\":\"unknown\",\"architecture\":\"unknown\"}}]}"},
    {"index-noplatform", "\x00{\"manifests\":[{\"digest\":\"sha256:" SHA_C "\"}]}"},
    {"bad-position", "\x00{\"layers\":[{\"digest\":\"sha256:" SHA_C "\",\"size\":10,\"annotations\":"
                     "{\"io.lazylayer.toc.position\":\"01:5\"}}]}"},
};

static void manifest_seeds_write(void) {
    for (size_t i = 0; i < sizeof manifest_seeds / sizeof manifest_seeds[0]; i++) {
        const char *t = manifest_seeds[i][1];
        save("manifest", manifest_seeds[i][0], t, 1 + strlen(t + 1));
    }
}

/* Answer streams for fuzz_sockhost: byte 0 = size asked - 1, byte 1 = layer, then answers. */
static void sockhost_seeds(void) {
    uint8_t b[2 + 2 * (16 + 64)];
    memset(b, 0, sizeof b);
    b[0] = 63; /* 64 bytes */
    for (int k = 0; k < 2; k++) { /* two good answers */
        uint8_t *a = b + 2 + k * (16 + 64);
        a[8] = 64;
        for (int i = 0; i < 64; i++) a[16 + i] = (uint8_t)(i * 7 + k);
    }
    save("sockhost", "good-two", b, sizeof b);
    uint8_t e[2 + 16 + 5 + 16 + 64];
    memset(e, 0, sizeof e);
    e[0] = 63;
    int32_t st = LL_ERR_DIGEST;
    memcpy(e + 2, &st, 4); /* little-endian hosts only, as the format */
    e[2 + 8] = 5;
    memcpy(e + 2 + 16, "wrong", 5);
    e[2 + 16 + 5 + 8] = 64;
    save("sockhost", "error-then-good", e, sizeof e);
    uint8_t s[2 + 16 + 10];
    memset(s, 0, sizeof s);
    s[0] = 63;
    s[2 + 8] = 64; /* says 64, sends 10 */
    save("sockhost", "short", s, sizeof s);
    uint8_t none[2] = {0, 1};
    save("sockhost", "hangup", none, sizeof none);
}

/* gzindex seeds: 4-byte header (see fuzz_gzindex.c) + body.  Odd mode: data the
 * harness gzips; even: gzip bytes made here (one member and two, a header with
 * a name and a header CRC), so hostile mutations start from real streams. */
static void gz_seed(const char *name, uint8_t mode, uint8_t p1, uint8_t p2, uint8_t p3, const uint8_t *body,
                    size_t n) {
    buf b = {0};
    put8(&b, mode);
    put8(&b, p1);
    put8(&b, p2);
    put8(&b, p3);
    put(&b, body, n);
    save("gzindex", name, b.p, b.len);
    free(b.p);
}

static size_t gzip_into(const uint8_t *data, size_t n, int level, int with_name, uint8_t *out, size_t cap) {
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) exit(1);
    gz_header h;
    memset(&h, 0, sizeof h);
    h.name = (Bytef *)"layer.tar";
    h.hcrc = 1;
    if (with_name) deflateSetHeader(&zs, &h);
    zs.next_in = (Bytef *)(uintptr_t)data;
    zs.avail_in = (uInt)n;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    if (deflate(&zs, Z_FINISH) != Z_STREAM_END) exit(1);
    size_t len = zs.total_out;
    deflateEnd(&zs);
    return len;
}

static void gzindex_seeds(void) {
    uint8_t *t = text(60000, 3);
    gz_seed("text-level6", 1, 6, 0x10, 40, t, 20000);
    gz_seed("text-level1-3members", 1, 1, 0x0e, 3, t, 30000);
    gz_seed("text-huffman-only", 1, 22, 0x40, 200, t, 12000);
    gz_seed("text-stored", 1, 0, 0x03, 9, t, 9000);
    gz_seed("empty", 1, 6, 0, 1, t, 0);
    static uint8_t gz[140000];
    size_t n = gzip_into(t, 60000, 6, 1, gz, sizeof gz);
    gz_seed("gzip-named-hcrc", 0, 0, 0x08, 100, gz, n);
    size_t m = gzip_into(t + 100, 5000, 9, 0, gz + n, sizeof gz - n);
    gz_seed("gzip-two-members", 0, 0, 0x20, 255, gz, n + m);
    gz_seed("gzip-truncated", 0, 0, 0x08, 100, gz, n / 2);
    free(t);
}

/* chunk seeds (see fuzz_chunk.c): odd mode, a codec and a level for the harness to
 * encode text with; even mode, encoded frame files made here. */
static void chunk_raw_seed(const char *name, int codec, uint64_t size, const uint8_t *payload, size_t n) {
    buf b = {0};
    put8(&b, 0);
    put(&b, "LLCHNKZ1", 8);
    put8(&b, (uint8_t)codec);
    put8(&b, 0);
    put8(&b, 0);
    put8(&b, 0);
    for (int i = 0; i < 4; i++) put8(&b, 0);
    for (int i = 0; i < 8; i++) put8(&b, (uint8_t)(size >> (8 * i)));
    put(&b, payload, n);
    save("chunk", name, b.p, b.len);
    free(b.p);
}

static void chunk_seeds(void) {
    uint8_t *t = text(40000, 5);
    static const char *names[4] = {"zeros", "gzip", "zstd", "gzspan"};
    for (int codec = 0; codec < 4; codec++) {
        char name[32];
        snprintf(name, sizeof name, "make-%s", names[codec]);
        buf b = {0};
        put8(&b, 1);
        put8(&b, (uint8_t)codec);
        put8(&b, codec == 3 ? 2 : 6);
        put(&b, t, codec == 0 ? 3000 : 20000);
        save("chunk", name, b.p, b.len);
        free(b.p);
    }
    static uint8_t out[80000];
    size_t n = gzip_into(t, 20000, 6, 0, out, sizeof out);
    chunk_raw_seed("raw-gzip", 1, 20000, out, n);
    size_t z = ZSTD_compress(out, sizeof out, t, 20000, 3);
    if (!ZSTD_isError(z)) chunk_raw_seed("raw-zstd", 2, 20000, out, z);
    chunk_raw_seed("raw-zeros", 0, 5000, NULL, 0);
    /* runs (ll_run_decode): a real one made by the harness, and a table and payload as is */
    buf r = {0};
    put8(&r, 3);
    put8(&r, 4);
    put(&r, t, 30000);
    save("chunk", "make-run", r.p, r.len);
    free(r.p);
    size_t g = gzip_into(t, 9000, 6, 0, out, sizeof out);
    uint8_t e[2][LL_RUN_ENTRY] = {{0}}, zero[700] = {0};
    e[0][4] = (uint8_t)g, e[0][5] = (uint8_t)(g >> 8), e[0][6] = (uint8_t)(g >> 16);
    e[0][8] = (uint8_t)(9000 & 0xff), e[0][9] = (uint8_t)(9000 >> 8), e[0][12] = 1;
    ll_sha256(t, 9000, e[0] + 16);
    e[1][8] = (uint8_t)(700 & 0xff), e[1][9] = (uint8_t)(700 >> 8), e[1][12] = 0;
    ll_sha256(zero, 700, e[1] + 16);
    /* the same run as ll_run_decode's input (mode 2: entries, table, payload) and as an encoded
     * frame file (mode 0: as is; header, then the same table and payload) */
    static const uint8_t as_run[2] = {2, 2};
    static const uint8_t as_file[1 + 16] = {0, 'L', 'L', 'C', 'H', 'N', 'K', 'Z', '1', LL_CHUNK_RUN, 0, 0, 0, 2};
    const struct { const char *name; const uint8_t *head; size_t n; } kinds[2] = {
        {"raw-run", as_run, sizeof as_run}, {"file-run", as_file, sizeof as_file}};
    for (int k = 0; k < 2; k++) {
        r = (buf){0};
        put(&r, kinds[k].head, kinds[k].n);
        if (k == 1) put32(&r, 9700), put32(&r, 0); /* the data's size */
        put(&r, e, sizeof e);
        put(&r, out, g);
        save("chunk", kinds[k].name, r.p, r.len);
        free(r.p);
    }
    free(t);
}

/* ---- chunked TOCs (fuzz_chunked): byte 0 the flags, bytes 1-2 the TOC offset in KiB, then the JSON */
#define CH_D1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define CH_D2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"
/* the sha256 of 3 and of 5000 zero bytes (zeros chunks must name them) */
#define CH_Z3 "sha256:709e80c88487a2411e1ee4dfb9f22a861492d20c4765150c0c794abd70f8147c"
static const char *const chunked_seeds[][2] = {
    {"estargz", "{\"version\":1,\"entries\":[{\"name\":\"./\",\"type\":\"dir\",\"mode\":493,"
                "\"modtime\":\"2023-01-02T03:04:05Z\"},{\"name\":\"etc/a\",\"type\":\"reg\",\"mode\":420,\"size\":10,"
                "\"offset\":10,\"chunkSize\":6,\"chunkDigest\":\"" CH_D1 "\",\"uid\":1,\"gid\":2,\"userName\":\"u\","
                "\"xattrs\":{\"user.b\":\"QQ==\",\"user.a\":\"Qg==\",\"user.b\":\"Qw==\"}},{\"name\":\"etc/a\","
                "\"type\":\"chunk\",\"offset\":40,\"chunkOffset\":6,\"chunkDigest\":\"" CH_D2 "\"},"
                "{\"name\":\".prefetch.landmark\",\"type\":\"reg\",\"size\":1,\"offset\":90,\"digest\":\"" CH_D1 "\"},"
                "{\"name\":\"/etc/l\",\"type\":\"symlink\",\"linkName\":\"a\",\"modtime\":\"2023-01-02T03:04:05.999+01:30\"},"
                "{\"name\":\"etc/h\",\"type\":\"hardlink\",\"linkName\":\"./etc/a\"},{\"name\":\"dev/null\","
                "\"type\":\"char\",\"devMajor\":1,\"devMinor\":3},{\"name\":\"stargz.index.json\",\"type\":\"reg\"}]}"},
    {"zstd-chunked", "{\"version\":1,\"entries\":[{\"type\":\"reg\",\"name\":\"z\",\"size\":5003,\"offset\":10,"
                     "\"endOffset\":20,\"chunkSize\":3,\"chunkType\":\"zeros\",\"chunkDigest\":\"" CH_Z3 "\"},"
                     "{\"type\":\"chunk\",\"name\":\"z\",\"offset\":20,\"chunkOffset\":3,\"chunkSize\":5000,"
                     "\"chunkDigest\":\"" CH_D1 "\"},{\"type\":\"reg\",\"name\":\"w\",\"size\":9000,\"offset\":30,"
                     "\"digest\":\"" CH_D2 "\",\"accesstime\":\"0001-01-01T00:00:00Z\"}]}"},
    {"hostile-inner", "{\"version\":1,\"entries\":[{\"name\":\"a\",\"type\":\"reg\",\"size\":3,\"offset\":1,"
                      "\"innerOffset\":5,\"chunkDigest\":\"" CH_D1 "\"}]}"},
    {"hostile-values", "{\"version\":1.0,\"entries\":[{\"name\":\"a\\u0000\\udc80\",\"type\":\"fifo\",\"uid\":0.0,"
                       "\"gid\":\"\",\"modtime\":null,\"xattrs\":{}},{\"name\":\"b\",\"type\":\"dir\",\"mode\":-0,"
                       "\"devMajor\":[],\"userName\":null},{\"name\":\"../c\",\"type\":\"dir\"}],\"entries\":[]}"},
    {"hostile-tiles", "{\"version\":1,\"entries\":[{\"name\":\"a\",\"type\":\"reg\",\"size\":9,\"offset\":1,"
                      "\"chunkSize\":4,\"chunkDigest\":\"" CH_D1 "\"},{\"name\":\"a\",\"type\":\"chunk\",\"offset\":2,"
                      "\"chunkOffset\":5,\"chunkSize\":4,\"chunkDigest\":\"" CH_D1 "\"}]}"},
};

static void chunked_seeds_write(void) {
    static const uint8_t flags[] = {2, 5, 0, 3, 1};
    for (size_t i = 0; i < sizeof chunked_seeds / sizeof chunked_seeds[0]; i++) {
        buf b = {0};
        put8(&b, flags[i]);
        put8(&b, 1);
        put8(&b, 0);
        put(&b, chunked_seeds[i][1], strlen(chunked_seeds[i][1]));
        save("chunked", chunked_seeds[i][0], b.p, b.len);
        free(b.p);
    }
    for (size_t i = 0; i < sizeof chunked_seeds / sizeof chunked_seeds[0]; i++) { /* the same with runs */
        char name[64];
        snprintf(name, sizeof name, "%s-runs", chunked_seeds[i][0]);
        buf b = {0};
        put8(&b, (uint8_t)(flags[i] | 8));
        put8(&b, 1);
        put8(&b, 0);
        put(&b, chunked_seeds[i][1], strlen(chunked_seeds[i][1]));
        save("chunked", name, b.p, b.len);
        free(b.p);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
        return 2;
    }
    g_dir = argv[1];
    if (mkdir(g_dir, 0755) != 0 && errno != EEXIST) { perror(g_dir); return 1; }
    seektable_seeds();
    roundtrip_seeds();
    toc_seeds_write();
    manifest_seeds_write();
    sockhost_seeds();
    gzindex_seeds();
    chunk_seeds();
    chunked_seeds_write();
    fprintf(stderr, "gen_corpus: %d seeds in %s\n", g_count, g_dir);
    return 0;
}
