/* fuzz_roundtrip.c - structured libFuzzer target: write with ll_writer, read back.
 *
 * Input layout (missing header bytes read as 0):
 *   [0..1]   frame size: 1 + u16 (1..64 KiB; raised so there are at most ~1024 frames)
 *   [2]      flags: 1 checksums, 2 writer uses the pool, 4 also run a writer whose
 *            sink fails part way, 8/16 cache budget choice, 32/64 level choice,
 *            128 small max_fetch_bytes (fetch in rounds)
 *   [3]      bits 0-1: number of cut operations (0..3); bits 2-7: 2 bits per op:
 *            0/1 ll_writer_end_frame, 2 ll_writer_add_skippable, 3 end_frame twice
 *   [4..9]   3 x u16 op positions in the data
 *   [10]     skippable: variant (low 4 bits), payload 0..31 bytes (bits 4-7 x 2)
 *   [11..14] u32 position of the byte to corrupt; also where the failing sink fails
 *   [15]     xor mask for that byte (0 means 0x01)
 *   [16..31] 4 x (u16 offset, u16 length) ranges to read
 *   [32..]   the data
 *
 * Checks: the writer's seek table has exactly the frames the cuts imply (sizes,
 * skippables, XXH64 checksums); readers with and without a cache, with the
 * 1-thread pool, with verification on and off, give back the data byte for byte
 * (whole, the 4 ranges, spans over frame boundaries, past the end); the cache
 * never exceeds its budget; a read callback that fails gives right data, or
 * LL_ERR_IO when it returned -1 and its own status when it returned an ll_status
 * (LL_ERR_CHECKSUM); a failing write callback gives LL_ERR_IO then LL_ERR_STATE.  Then one
 * byte of the blob is flipped: every call must return a status, and with
 * checksums verified a successful read must still return the original data. */
#include "fuzz_common.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#define HDR 32
#define MAX_FRAMES_WANTED 1024
#define READ_CAP (1u << 20)

static ll_pool *g_pool;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (ll_pool_create(1, &g_pool) != LL_OK) abort();
    return 0;
}

/* ---- sinks and sources */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    uint64_t fail_at; /* 0: never; else fail a write that would reach this many bytes */
} sink;

static int sink_write(void *opaque, const void *src, size_t n) {
    sink *s = opaque;
    if (s->fail_at && s->len + n >= s->fail_at) return -1;
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + n) cap *= 2;
        uint8_t *p = realloc(s->p, cap);
        if (!p) abort();
        s->p = p;
        s->cap = cap;
    }
    if (n) memcpy(s->p + s->len, src, n);
    s->len += n;
    return 0;
}

typedef struct {
    ll_mem_source m;
    uint64_t bad; /* requests covering this compressed offset fail */
    int fail;     /* with this value: -1 (the reader reports LL_ERR_IO) or an ll_status (passed through) */
} flaky;

static int flaky_read(void *opaque, uint64_t off, size_t size, void *dst) {
    flaky *f = opaque;
    if (f->bad >= off && f->bad - off < size) return f->fail;
    return ll_mem_read(&f->m, off, size, dst);
}

/* ---- parameters */

enum { OP_END = 0, OP_SKIP = 2, OP_END2 = 3 };

typedef struct {
    uint32_t frame_size;
    int checksum, writer_pool, failing_sink, level;
    uint64_t budget, max_fetch;
    int nops, op_kind[3];
    size_t op_pos[3];
    unsigned skip_variant;
    size_t skip_len;
    uint32_t flip_pos;
    uint8_t flip_xor;
    uint64_t roff[4], rlen[4];
} params;

static void parse_params(const uint8_t *h, size_t len, params *p) {
    static const int levels[4] = {1, 3, -5, 7};
    static const uint64_t budgets[4] = {0, 4096, 65536, 1u << 20};
    p->frame_size = 1u + ll_fuzz_u16(h);
    uint32_t min_fs = (uint32_t)(len / MAX_FRAMES_WANTED) + 1;
    if (p->frame_size < min_fs) p->frame_size = min_fs;
    p->checksum = h[2] & 1;
    p->writer_pool = (h[2] >> 1) & 1;
    p->failing_sink = (h[2] >> 2) & 1;
    p->budget = budgets[(h[2] >> 3) & 3];
    p->level = levels[(h[2] >> 5) & 3];
    p->max_fetch = (h[2] & 128) ? 1 + h[15] * 37u : 0;
    p->nops = h[3] & 3;
    for (int i = 0; i < 3; i++) {
        p->op_kind[i] = (h[3] >> (2 + 2 * i)) & 3;
        if (p->op_kind[i] == 1) p->op_kind[i] = OP_END;
        p->op_pos[i] = ll_fuzz_u16(h + 4 + 2 * i) % (len + 1);
    }
    /* sort the op positions (3 elements) */
    for (int i = 0; i < p->nops; i++)
        for (int j = i + 1; j < p->nops; j++)
            if (p->op_pos[j] < p->op_pos[i]) {
                size_t t = p->op_pos[i]; p->op_pos[i] = p->op_pos[j]; p->op_pos[j] = t;
                int k = p->op_kind[i]; p->op_kind[i] = p->op_kind[j]; p->op_kind[j] = k;
            }
    p->skip_variant = h[10] & 15;
    p->skip_len = (size_t)(h[10] >> 4) * 2;
    p->flip_pos = ll_fuzz_u32(h + 11);
    p->flip_xor = h[15] ? h[15] : 1;
    for (int i = 0; i < 4; i++) {
        p->roff[i] = ll_fuzz_u16(h + 16 + 4 * i) % (len + 2);
        p->rlen[i] = ll_fuzz_u16(h + 18 + 4 * i) % (len + 2);
    }
}

/* ---- expected layout of the seek table, simulated from the cuts */

typedef struct {
    uint32_t d, c_skip; /* c_skip: compressed size of a skippable frame, else 0 */
    uint64_t d_off;
} exp_frame;

typedef struct {
    exp_frame *f;
    size_t n, cap;
    uint32_t cur;
    uint64_t d_total;
} layout;

static void lay_emit(layout *l, uint32_t d, uint32_t c_skip) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->f = realloc(l->f, l->cap * sizeof *l->f);
        if (!l->f) abort();
    }
    l->f[l->n++] = (exp_frame){d, c_skip, l->d_total};
    l->d_total += d;
}
static void lay_write(layout *l, uint32_t fs, size_t n) {
    while (n) {
        size_t take = fs - l->cur < n ? fs - l->cur : n;
        l->cur += (uint32_t)take;
        n -= take;
        if (l->cur == fs) {
            lay_emit(l, fs, 0);
            l->cur = 0;
        }
    }
}
static void lay_end(layout *l) {
    if (l->cur) lay_emit(l, l->cur, 0);
    l->cur = 0;
}

/* ---- writing */

/* Write the blob as the parameters say.  With a failing sink, checks that the
 * first error is LL_ERR_IO and every later call LL_ERR_STATE; returns the first
 * error (or LL_OK). */
static int write_blob(const params *p, const uint8_t *data, size_t len, const uint8_t *payload,
                      sink *out, layout *lay) {
    ll_writer_options wo;
    ll_writer_options_init(&wo, sizeof wo);
    wo.frame_size = p->frame_size;
    wo.checksum = p->checksum;
    wo.level = p->level;
    wo.pool = p->writer_pool ? g_pool : NULL;
    ll_writer *w = NULL;
    int rc = ll_writer_create(&wo, sink_write, out, &w);
    CHECK(rc == LL_OK && w, "writer_create: %d", rc);
    int first_err = LL_OK;
#define STEP(call)                                                                           \
    do {                                                                                     \
        int r_ = (call);                                                                     \
        if (first_err == LL_OK) {                                                            \
            CHECK(r_ == LL_OK || (out->fail_at && r_ == LL_ERR_IO), "%s -> %d", #call, r_); \
            first_err = r_;                                                                  \
        } else {                                                                             \
            CHECK(r_ == LL_ERR_STATE, "%s after failure -> %d", #call, r_);                 \
        }                                                                                    \
    } while (0)
    size_t prev = 0;
    for (int i = 0; i <= p->nops; i++) {
        size_t end = i < p->nops ? p->op_pos[i] : len;
        /* two writes per segment, so frames straddle write calls */
        size_t mid = prev + (end - prev) / 3;
        STEP(ll_writer_write(w, data + prev, mid - prev));
        STEP(ll_writer_write(w, data + mid, end - mid));
        if (lay) lay_write(lay, p->frame_size, end - prev);
        prev = end;
        if (i == p->nops) break;
        switch (p->op_kind[i]) {
        case OP_SKIP:
            STEP(ll_writer_add_skippable(w, p->skip_variant, p->skip_len ? payload : NULL, p->skip_len));
            if (lay) {
                lay_end(lay);
                lay_emit(lay, 0, (uint32_t)(LL_SKIPPABLE_HEADER_SIZE + p->skip_len));
            }
            break;
        case OP_END2:
            STEP(ll_writer_end_frame(w));
            /* fallthrough */
        default:
            STEP(ll_writer_end_frame(w));
            if (lay) lay_end(lay);
            break;
        }
    }
    STEP(ll_writer_finish(w));
    if (lay) lay_end(lay);
    if (first_err == LL_OK) {
        CHECK(ll_writer_bytes_in(w) == len, "bytes_in %llu != %zu", (unsigned long long)ll_writer_bytes_in(w), len);
        CHECK(ll_writer_bytes_out(w) == out->len, "bytes_out %llu != %zu",
              (unsigned long long)ll_writer_bytes_out(w), out->len);
        if (lay) CHECK(ll_writer_frames(w) == lay->n, "writer frames %u, expected %zu", ll_writer_frames(w), lay->n);
        /* a finished writer refuses more work */
        CHECK(ll_writer_write(w, payload, 1) == LL_ERR_STATE, "write after finish");
        CHECK(ll_writer_end_frame(w) == LL_ERR_STATE, "end_frame after finish");
        CHECK(ll_writer_finish(w) == LL_ERR_STATE, "finish twice");
    }
#undef STEP
    ll_writer_free(w);
    return first_err;
}

/* ---- reading */

/* Read [off, off+n) and compare with the expected stream `want` of `total` bytes.
 * strict: the result must be a success; else an error status is allowed but
 * success must still be correct data. */
static void check_read(ll_reader *r, const uint8_t *want, uint64_t total, uint64_t off, uint64_t n,
                       int strict, const char *who) {
    if (n > READ_CAP) n = READ_CAP;
    uint8_t *dst = malloc(n ? n : 1); /* exact size: ASan catches writes past the request */
    if (!dst) abort();
    int64_t got = ll_reader_read(r, off, n ? dst : NULL, n);
    uint64_t expect = off >= total ? 0 : (total - off < n ? total - off : n);
    CHECK(got >= 0 || ll_fuzz_known_status(got), "%s: unknown status %lld", who, (long long)got);
    if (strict || got >= 0) {
        CHECK(got == (int64_t)expect, "%s: read %llu+%llu of %llu returned %lld (%s), want %llu", who,
              (unsigned long long)off, (unsigned long long)n, (unsigned long long)total, (long long)got,
              got < 0 ? ll_strerror((int)got) : "bytes", (unsigned long long)expect);
        if (want && expect) {
            for (uint64_t i = 0; i < expect; i++)
                CHECK(dst[i] == want[off + i], "%s: read %llu+%llu of %llu: byte %llu is %02x, want %02x",
                      who, (unsigned long long)off, (unsigned long long)n, (unsigned long long)total,
                      (unsigned long long)(off + i), dst[i], want[off + i]);
        }
    }
    free(dst);
}

typedef struct {
    uint64_t off, len;
} range;

static size_t make_ranges(const params *p, const layout *lay, uint64_t total, uint64_t *rng, range *rs) {
    size_t k = 0;
    rs[k++] = (range){0, total};
    for (int i = 0; i < 4; i++) rs[k++] = (range){p->roff[i], p->rlen[i]};
    rs[k++] = (range){total ? total - 1 : 0, 2};
    rs[k++] = (range){total, 1};
    rs[k++] = (range){total + 1 + ll_fuzz_below(rng, 100), 10};
    rs[k++] = (range){UINT64_MAX, 1};
    /* spans over frame boundaries: a few bytes either side, and several frames */
    for (int i = 0; i < 6 && lay->n; i++) {
        const exp_frame *f = &lay->f[ll_fuzz_below(rng, lay->n)];
        uint64_t b = f->d_off;
        uint64_t back = ll_fuzz_below(rng, 3) == 0 ? 0 : 1 + ll_fuzz_below(rng, p->frame_size);
        if (back > b) back = b;
        rs[k++] = (range){b - back, back + 1 + ll_fuzz_below(rng, 3 * (uint64_t)p->frame_size)};
    }
    return k;
}

/* The parsed table is exactly the layout the writer was asked for. */
static void check_table(const ll_seektable *st, const params *p, const layout *lay, const uint8_t *data,
                        size_t len, size_t blob_len) {
    CHECK(ll_seektable_num_frames(st) == lay->n, "table has %u frames, expected %zu",
          ll_seektable_num_frames(st), lay->n);
    CHECK(ll_seektable_has_checksums(st) == p->checksum, "checksum flag");
    CHECK(ll_seektable_decompressed_size(st) == len, "decompressed size");
    uint64_t table_bytes = LL_SKIPPABLE_HEADER_SIZE + (uint64_t)lay->n * (p->checksum ? 12 : 8) +
                           LL_SEEKTABLE_FOOTER_SIZE;
    CHECK(ll_seektable_compressed_size(st) + table_bytes == blob_len, "compressed size");
    CHECK(ll_seektable_max_frame_size(st) <= p->frame_size, "max frame size");
    for (uint32_t i = 0; i < lay->n; i++) {
        ll_frame_info fi;
        CHECK(ll_seektable_frame(st, i, &fi) == LL_OK, "frame %u", i);
        CHECK(fi.d_size == lay->f[i].d && fi.d_offset == lay->f[i].d_off, "frame %u: d_size %u, expected %u",
              i, fi.d_size, lay->f[i].d);
        if (lay->f[i].c_skip) CHECK(fi.c_size == lay->f[i].c_skip, "skippable frame %u c_size %u", i, fi.c_size);
        if (p->checksum && fi.d_size)
            CHECK(fi.checksum == (uint32_t)XXH64(data + fi.d_offset, fi.d_size, 0), "frame %u checksum", i);
    }
}

static ll_reader *open_reader(size_t blob_len, ll_read_fn fn, void *opaque, const ll_reader_options *o,
                              int must) {
    ll_seektable *st = NULL;
    int rc = ll_seektable_load(fn, opaque, blob_len, &st);
    CHECK(ll_fuzz_known_status(rc), "load status %d", rc);
    if (rc != LL_OK) {
        CHECK(!must, "load of a freshly written blob failed: %d (%s)", rc, ll_strerror(rc));
        return NULL;
    }
    ll_reader *r = NULL;
    rc = ll_reader_create(st, fn, opaque, o, &r);
    CHECK(ll_fuzz_known_status(rc), "create status %d", rc);
    if (rc != LL_OK) {
        CHECK(!must, "reader_create on a fresh blob failed: %d", rc);
        ll_seektable_free(st);
        return NULL;
    }
    return r;
}

/* `max_budget`: the largest budget the cache ever had (peak_bytes is historic). */
static void check_budget(ll_cache *c, uint64_t max_budget) {
    ll_cache_stats s;
    ll_cache_get_stats(c, &s);
    CHECK(s.peak_bytes <= max_budget && s.bytes <= s.budget, "cache peak %llu / now %llu over budget %llu",
          (unsigned long long)s.peak_bytes, (unsigned long long)s.bytes, (unsigned long long)s.budget);
}

/* Same table layout (offsets and sizes) as the original. */
static int same_layout(const ll_seektable *a, const ll_seektable *b) {
    if (ll_seektable_num_frames(a) != ll_seektable_num_frames(b)) return 0;
    for (uint32_t i = 0; i < ll_seektable_num_frames(a); i++) {
        ll_frame_info x, y;
        ll_seektable_frame(a, i, &x);
        ll_seektable_frame(b, i, &y);
        if (x.c_offset != y.c_offset || x.c_size != y.c_size || x.d_offset != y.d_offset || x.d_size != y.d_size)
            return 0;
    }
    return 1;
}

/* Reads from a corrupted blob.  With checksums present and verified, and the
 * frames where they were, data that comes back must be the original. */
static void read_corrupt(ll_reader *r, const ll_seektable *orig, const uint8_t *data, size_t len,
                         const range *rs, size_t nr, const char *who) {
    if (!r) return;
    const ll_seektable *st = ll_reader_seektable(r);
    int strict = data && ll_seektable_has_checksums(st) && same_layout(st, orig);
    uint64_t total = ll_reader_size(r);
    for (size_t i = 0; i < nr; i++)
        check_read(r, strict ? data : NULL, strict ? len : total, rs[i].off, rs[i].len, 0, who);
    for (size_t i = nr; i-- > 0;)
        check_read(r, strict ? data : NULL, strict ? len : total, rs[i].off, rs[i].len, 0, who);
}

static void corrupted(const params *p, const uint8_t *data, size_t len, const uint8_t *blob, size_t blob_len,
                      const ll_seektable *orig, const range *rs, size_t nr) {
    uint8_t *bad = malloc(blob_len);
    if (!bad) abort();
    memcpy(bad, blob, blob_len);
    size_t pos = p->flip_pos % blob_len;
    bad[pos] ^= p->flip_xor;
    ll_mem_source src = {bad, blob_len};

    ll_cache *cache = NULL;
    if (ll_cache_create(p->budget ? p->budget : 65536, &cache) != LL_OK) abort();
    ll_reader_options ov, on;
    ll_reader_options_init(&ov, sizeof ov); /* verifying, own cache key */
    ov.cache = cache;
    ov.pool = g_pool;
    ov.max_frame_size = 1u << 20;
    ov.max_fetch_bytes = p->max_fetch;
    ll_reader_options_init(&on, sizeof on); /* not verifying, own cache key */
    on.verify_checksums = 0;
    on.cache = cache;
    on.max_frame_size = 1u << 20;
    ll_reader *rn = open_reader(blob_len, ll_mem_read, &src, &on, 0);
    ll_reader *rv = open_reader(blob_len, ll_mem_read, &src, &ov, 0);
    read_corrupt(rn, orig, NULL, 0, rs, nr, "corrupt/noverify"); /* NULL data: statuses and counts only */
    read_corrupt(rv, orig, data, len, rs, nr, "corrupt/verify");
    ll_reader_free(rn);
    ll_reader_free(rv);
#ifndef LL_FUZZ_ALLOW_SHARED_KEY_UNVERIFIED
    /* The same, but the two readers share a cache key (same blob) and the
     * non-verifying one reads first: the verifying one must still verify. */
    ov.source_key = on.source_key = 99;
    rn = open_reader(blob_len, ll_mem_read, &src, &on, 0);
    rv = open_reader(blob_len, ll_mem_read, &src, &ov, 0);
    read_corrupt(rn, orig, NULL, 0, rs, nr, "corrupt/noverify/shared-key");
    read_corrupt(rv, orig, data, len, rs, nr, "corrupt/verify/shared-key");
    ll_reader_free(rn);
    ll_reader_free(rv);
#endif
    check_budget(cache, p->budget ? p->budget : 65536);
    ll_cache_free(cache);
    free(bad);
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
    uint8_t h[HDR] = {0};
    memcpy(h, in, size < HDR ? size : HDR);
    const uint8_t *data = size > HDR ? in + HDR : in + size;
    size_t len = size > HDR ? size - HDR : 0;
    params p;
    parse_params(h, len, &p);
    uint64_t rng = ll_fuzz_hash(in, size);

    /* Write. */
    sink out = {0};
    layout lay = {0};
    int rc = write_blob(&p, data, len, h, &out, &lay);
    CHECK(rc == LL_OK, "writer failed: %d", rc);
    CHECK(lay.d_total == len, "layout");

    if (p.failing_sink) {
        sink bad = {0};
        bad.fail_at = 1 + p.flip_pos % (out.len + 16);
        rc = write_blob(&p, data, len, h, &bad, NULL);
        if (rc == LL_OK)
            CHECK(bad.len == out.len && memcmp(bad.p, out.p, out.len) == 0,
                  "same input and options, different blob");
        else
            CHECK(bad.fail_at <= out.len, "sink failed at %llu of %zu bytes?", (unsigned long long)bad.fail_at, out.len);
        free(bad.p);
    }

    ll_mem_source src = {out.p, out.len};

    /* Table. */
    ll_seektable *st = NULL;
    rc = ll_seektable_load(ll_mem_read, &src, out.len, &st);
    CHECK(rc == LL_OK, "load: %d", rc);
    check_table(st, &p, &lay, data, len, out.len);

    range rs[32];
    size_t nr = make_ranges(&p, &lay, len, &rng, rs);

    /* Reader A: defaults, no cache, no pool. */
    ll_reader *a = open_reader(out.len, ll_mem_read, &src, NULL, 1);
    CHECK(ll_reader_size(a) == len, "reader size");
    check_read(a, data, len, 0, len, 1, "plain");
    for (size_t i = 0; i < nr; i++) check_read(a, data, len, rs[i].off, rs[i].len, 1, "plain");
    ll_reader_free(a);

    /* Readers B (verify, pool) and C (no verify) share a cache and a key. */
    ll_cache *cache = NULL;
    CHECK(ll_cache_create(p.budget, &cache) == LL_OK, "cache");
    ll_reader_options ob, oc;
    ll_reader_options_init(&ob, sizeof ob);
    ob.cache = cache;
    ob.pool = g_pool;
    ob.source_key = 7;
    ob.max_fetch_bytes = p.max_fetch;
    oc = ob;
    oc.pool = NULL;
    oc.verify_checksums = 0;
    ll_reader *b = open_reader(out.len, ll_mem_read, &src, &ob, 1);
    ll_reader *c = open_reader(out.len, ll_mem_read, &src, &oc, 1);
    for (size_t i = 0; i < nr; i++) {
        check_read(b, data, len, rs[i].off, rs[i].len, 1, "cached");
        check_read(c, data, len, rs[nr - 1 - i].off, rs[nr - 1 - i].len, 1, "cached-noverify");
    }
    for (size_t i = 0; i < nr; i++) check_read(b, data, len, rs[i].off, rs[i].len, 1, "cached-again");
    check_budget(cache, p.budget);
    if (h[10] & 1) {
        ll_cache_set_budget(cache, p.budget / 2);
        check_budget(cache, p.budget);
    }
    check_read(c, data, len, 0, len, 1, "cached-noverify");
    check_budget(cache, p.budget);
    ll_reader_free(b);
    ll_reader_free(c);
    ll_cache_free(cache);

    /* A read callback that fails on one compressed byte. */
    if (ll_seektable_compressed_size(st) > 0) {
        flaky fl = {{out.p, out.len}, p.flip_pos % ll_seektable_compressed_size(st),
                    p.flip_pos & 1 ? -1 : LL_ERR_CHECKSUM};
        int want = fl.fail == -1 ? LL_ERR_IO : fl.fail;
        ll_reader_options of;
        ll_reader_options_init(&of, sizeof of);
        of.pool = g_pool;
        of.max_fetch_bytes = p.max_fetch;
        ll_reader *f = open_reader(out.len, flaky_read, &fl, &of, 1);
        for (size_t i = 0; i < nr; i++) {
            int64_t got;
            uint64_t n = rs[i].len > READ_CAP ? READ_CAP : rs[i].len;
            uint8_t *dst = malloc(n ? n : 1);
            got = ll_reader_read(f, rs[i].off, n ? dst : NULL, n);
            CHECK(got >= 0 || got == want, "flaky source failing with %d gave %lld", fl.fail, (long long)got);
            if (got > 0) CHECK(memcmp(dst, data + rs[i].off, (size_t)got) == 0, "flaky source: wrong data");
            free(dst);
        }
        ll_reader_free(f);
    }

    /* One flipped byte. */
    corrupted(&p, data, len, out.p, out.len, st, rs, nr);

    ll_seektable_free(st);
    free(lay.f);
    free(out.p);
    return 0;
}
