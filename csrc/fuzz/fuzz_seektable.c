/* fuzz_seektable.c - libFuzzer target: arbitrary bytes as a whole seekable blob.
 *
 * 1. ll_seektable_tail_size / ll_seektable_parse on the whole input, and the
 *    LL_ERR_NEED_MORE protocol from a short tail (grow the tail to *need until
 *    it parses): the protocol must converge to the whole-input result, and
 *    ll_seektable_load (two callback reads) must agree with both.
 * 2. A parsed table must be self-consistent through every accessor.
 * 3. Readers over the input (ll_mem_read) with a 1 MiB cache and a 1 MiB
 *    max_frame_size: reads at offsets derived from the input (whole stream,
 *    spanning frames, inside one frame, at the end, past the end, size 0).  Every
 *    read returns a documented status or exactly min(size, total - offset)
 *    bytes; a cached reader and an uncached one must return the same bytes when
 *    both succeed.
 *
 * Build: see Makefile in this directory. */
#include "fuzz_common.h"

#define MAX_FRAME (1u << 20)   /* reader max_frame_size: bounds memory per frame */
#define CACHE_BUDGET (1u << 20)
#define MAX_READ (2u << 20)    /* largest single read we ask for */

static ll_pool *g_pool; /* one worker thread, made once: thread start per input is slow */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (ll_pool_create(1, &g_pool) != LL_OK) abort();
    return 0;
}

static void same_table(const ll_seektable *a, const ll_seektable *b) {
    CHECK(ll_seektable_num_frames(a) == ll_seektable_num_frames(b), "frames differ");
    CHECK(ll_seektable_has_checksums(a) == ll_seektable_has_checksums(b), "checksum flag differs");
    CHECK(ll_seektable_compressed_size(a) == ll_seektable_compressed_size(b), "c size differs");
    CHECK(ll_seektable_decompressed_size(a) == ll_seektable_decompressed_size(b), "d size differs");
    CHECK(ll_seektable_max_frame_size(a) == ll_seektable_max_frame_size(b), "max frame differs");
    uint32_t n = ll_seektable_num_frames(a);
    for (uint32_t i = 0; i < n; i++) {
        ll_frame_info x, y;
        CHECK(ll_seektable_frame(a, i, &x) == LL_OK && ll_seektable_frame(b, i, &y) == LL_OK, "frame");
        CHECK(x.c_offset == y.c_offset && x.d_offset == y.d_offset && x.c_size == y.c_size &&
                  x.d_size == y.d_size && x.checksum == y.checksum && x.has_checksum == y.has_checksum,
              "frame %u differs", i);
    }
}

/* Accessors agree with each other and with the blob's size. */
static void check_table(const ll_seektable *st, uint64_t blob_size, uint64_t table_bytes,
                        uint64_t *rng) {
    uint32_t n = ll_seektable_num_frames(st);
    uint64_t csize = ll_seektable_compressed_size(st), dsize = ll_seektable_decompressed_size(st);
    CHECK(n <= LL_MAX_FRAMES, "n=%u", n);
    CHECK(csize + table_bytes == blob_size, "frames %llu + table %llu != blob %llu",
          (unsigned long long)csize, (unsigned long long)table_bytes, (unsigned long long)blob_size);
    uint64_t c = 0, d = 0;
    uint32_t maxd = 0;
    for (uint32_t i = 0; i < n; i++) {
        ll_frame_info fi;
        CHECK(ll_seektable_frame(st, i, &fi) == LL_OK, "frame %u", i);
        CHECK(fi.c_offset == c && fi.d_offset == d, "frame %u offsets not contiguous", i);
        CHECK(fi.c_size > 0, "frame %u compressed size 0 accepted", i);
        CHECK(fi.d_size <= LL_MAX_FRAME_SIZE, "frame %u d_size %u over format limit", i, fi.d_size);
        CHECK(fi.has_checksum == ll_seektable_has_checksums(st), "frame %u checksum flag", i);
        c += fi.c_size;
        d += fi.d_size;
        if (fi.d_size > maxd) maxd = fi.d_size;
    }
    CHECK(c == csize && d == dsize, "sums disagree with totals");
    CHECK(maxd == ll_seektable_max_frame_size(st), "max frame size");
    ll_frame_info fi;
    CHECK(ll_seektable_frame(st, n, &fi) == LL_ERR_ARG, "frame(n) must be LL_ERR_ARG");
    CHECK(ll_seektable_frame_at(st, dsize) == n, "frame_at(end) != n");
    CHECK(ll_seektable_frame_at(st, UINT64_MAX) == n, "frame_at(max) != n");
    if (dsize == 0) return;
    uint64_t probes[6] = {0, dsize - 1, ll_fuzz_below(rng, dsize), ll_fuzz_below(rng, dsize),
                          dsize / 2, ll_fuzz_below(rng, dsize)};
    for (int k = 0; k < 6; k++) {
        uint32_t i = ll_seektable_frame_at(st, probes[k]);
        CHECK(i < n, "frame_at(%llu) = %u >= n", (unsigned long long)probes[k], i);
        CHECK(ll_seektable_frame(st, i, &fi) == LL_OK, "frame");
        CHECK(fi.d_size > 0, "frame_at returned an empty frame %u", i);
        CHECK(fi.d_offset <= probes[k] && probes[k] - fi.d_offset < fi.d_size,
              "frame_at(%llu) = %u does not hold it", (unsigned long long)probes[k], i);
    }
}

typedef struct {
    uint64_t off, len;
} range;

/* One read on each reader; results checked against the contract and each other. */
static void do_read(ll_reader *a, ll_reader *b, uint64_t total, uint64_t off, uint64_t len) {
    if (len > MAX_READ) len = MAX_READ;
    uint8_t *x = malloc(len ? len : 1), *y = malloc(len ? len : 1);
    if (!x || !y) abort();
    memset(x, 0xA5, len);
    memset(y, 0x5A, len);
    /* exactly `len` bytes allocated: ASan sees any write past the request */
    int64_t ra = ll_reader_read(a, off, len ? x : NULL, len);
    int64_t rb = ll_reader_read(b, off, len ? y : NULL, len);
    uint64_t expect = off >= total ? 0 : (total - off < len ? total - off : len);
    CHECK(ll_fuzz_known_status(ra) || ra > 0, "unknown status %lld", (long long)ra);
    CHECK(ll_fuzz_known_status(rb) || rb > 0, "unknown status %lld", (long long)rb);
    if (expect == 0) {
        CHECK(ra == 0 && rb == 0, "read at %llu len %llu of %llu: %lld/%lld, want 0",
              (unsigned long long)off, (unsigned long long)len, (unsigned long long)total,
              (long long)ra, (long long)rb);
    }
    if (ra >= 0) CHECK((uint64_t)ra == expect, "cached read got %lld want %llu", (long long)ra, (unsigned long long)expect);
    if (rb >= 0) CHECK((uint64_t)rb == expect, "uncached read got %lld want %llu", (long long)rb, (unsigned long long)expect);
    if (ra > 0 && rb > 0)
        CHECK(memcmp(x, y, expect) == 0, "cached and uncached readers disagree at %llu+%llu",
              (unsigned long long)off, (unsigned long long)expect);
    free(x);
    free(y);
}

static void exercise_readers(const uint8_t *data, size_t size, uint64_t *rng) {
    ll_mem_source src = {data, size};
    ll_seektable *sa = NULL, *sb = NULL;
    if (ll_seektable_load(ll_mem_read, &src, size, &sa) != LL_OK) return;
    if (ll_seektable_load(ll_mem_read, &src, size, &sb) != LL_OK) abort(); /* was OK once */

    uint64_t knobs = ll_fuzz_next(rng);
    ll_cache *cache = NULL;
    if (ll_cache_create((knobs & 1) ? CACHE_BUDGET : 64 * 1024, &cache) != LL_OK) abort();

    ll_reader_options oa, ob;
    ll_reader_options_init(&oa, sizeof oa);
    oa.cache = cache;
    oa.pool = (knobs & 2) ? g_pool : NULL;
    oa.verify_checksums = (knobs & 4) ? 0 : 1;
    oa.max_frame_size = MAX_FRAME;
    oa.max_fetch_bytes = (knobs & 8) ? 1 + (knobs >> 8) % 4096 : 0; /* rounds of fetches */
    oa.source_key = (knobs & 16) ? 42 : 0;
    ll_reader_options_init(&ob, sizeof ob);
    ob.verify_checksums = oa.verify_checksums;
    ob.max_frame_size = MAX_FRAME;

    ll_reader *ra = NULL, *rb = NULL;
    int rca = ll_reader_create(sa, ll_mem_read, &src, &oa, &ra);
    int rcb = ll_reader_create(sb, ll_mem_read, &src, &ob, &rb);
    CHECK(ll_fuzz_known_status(rca) && ll_fuzz_known_status(rcb), "reader_create status");
    CHECK(rca == rcb, "reader_create disagrees: %d vs %d", rca, rcb);
    if (rca != LL_OK) {
        CHECK(ra == NULL && rb == NULL, "failed create must not return a reader");
        CHECK(rca == LL_ERR_LIMIT, "create failed with %d (%s)", rca, ll_strerror(rca));
        ll_seektable_free(sa);
        ll_seektable_free(sb);
        ll_cache_free(cache);
        return;
    }
    const ll_seektable *st = ll_reader_seektable(ra);
    CHECK(st == sa, "reader does not own the table it was given");
    CHECK(ll_seektable_max_frame_size(st) <= MAX_FRAME, "table over max_frame_size accepted");
    uint64_t total = ll_reader_size(ra);
    CHECK(total == ll_seektable_decompressed_size(st), "reader size");
    uint32_t n = ll_seektable_num_frames(st);

    range rs[16];
    int k = 0;
    rs[k++] = (range){0, total};                               /* everything */
    rs[k++] = (range){total ? total - 1 : 0, 100};             /* runs off the end */
    rs[k++] = (range){total, 10};                              /* at the end */
    rs[k++] = (range){total + 1 + ll_fuzz_below(rng, 1000), 7}; /* past the end */
    rs[k++] = (range){UINT64_MAX - ll_fuzz_below(rng, 3), 5};
    rs[k++] = (range){ll_fuzz_below(rng, total + 1), 0};        /* size 0 */
    if (n > 0) {
        /* middle of one frame to the middle of a later one */
        ll_frame_info f1, f2;
        uint32_t i = (uint32_t)ll_fuzz_below(rng, n);
        uint32_t j = i + (uint32_t)ll_fuzz_below(rng, 4);
        if (j >= n) j = n - 1;
        ll_seektable_frame(st, i, &f1);
        ll_seektable_frame(st, j, &f2);
        uint64_t lo = f1.d_offset + ll_fuzz_below(rng, f1.d_size + 1);
        uint64_t hi = f2.d_offset + ll_fuzz_below(rng, f2.d_size + 1);
        if (hi >= lo) rs[k++] = (range){lo, hi - lo};
        rs[k++] = (range){f1.d_offset, f1.d_size};              /* exactly one frame */
        rs[k++] = (range){f1.d_offset + f1.d_size / 2, 1};      /* one byte inside */
    }
    for (int m = 0; m < 3; m++)
        rs[k++] = (range){ll_fuzz_below(rng, total + 2), ll_fuzz_below(rng, 1 + (ll_fuzz_next(rng) & 1 ? 300 : 70000))};
    int nr = k;
    for (int m = 0; m < nr; m++) do_read(ra, rb, total, rs[m].off, rs[m].len);
    for (int m = nr - 1; m >= 0; m--) do_read(ra, rb, total, rs[m].off, rs[m].len); /* cache hits */

    ll_cache_stats cs;
    ll_cache_get_stats(cache, &cs);
    CHECK(cs.peak_bytes <= cs.budget && cs.bytes <= cs.budget, "cache over budget: peak %llu budget %llu",
          (unsigned long long)cs.peak_bytes, (unsigned long long)cs.budget);
    ll_reader_free(ra);
    ll_reader_free(rb);
    ll_cache_get_stats(cache, &cs);
    CHECK(cs.bytes <= cs.budget, "cache over budget after free");
    if (knobs & 32) {
        ll_cache_clear(cache);
        ll_cache_get_stats(cache, &cs);
        CHECK(cs.bytes == 0 && cs.entries == 0, "clear left %llu bytes", (unsigned long long)cs.bytes);
    }
    ll_cache_free(cache);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint64_t rng = ll_fuzz_hash(data, size);

    /* Footer only. */
    uint64_t tb = 0;
    int rc_ts = ll_seektable_tail_size(data, size, size, &tb);
    CHECK(ll_fuzz_known_status(rc_ts), "tail_size status %d", rc_ts);
    if (rc_ts == LL_OK) CHECK(tb >= 17 && tb <= size, "table bytes %llu of %zu", (unsigned long long)tb, size);

    /* Whole input as the tail. */
    ll_seektable *full = NULL;
    uint64_t need = 0;
    int rc_full = ll_seektable_parse(data, size, size, &full, &need);
    CHECK(ll_fuzz_known_status(rc_full), "parse status %d", rc_full);
    CHECK(rc_full != LL_ERR_NEED_MORE, "NEED_MORE with the whole blob as tail");
    CHECK((rc_full == LL_OK) == (full != NULL), "parse rc %d vs table %p", rc_full, (void *)full);
    if (rc_full == LL_OK) {
        CHECK(rc_ts == LL_OK, "parse OK but tail_size failed %d", rc_ts);
        check_table(full, size, tb, &rng);
    }

    /* The NEED_MORE protocol from a short tail converges to the same answer. */
    size_t tl = size ? (size_t)ll_fuzz_below(&rng, size < 40 ? size + 1 : 40) : 0;
    ll_seektable *part = NULL;
    int rc_part;
    for (int rounds = 0;; rounds++) {
        need = 0;
        rc_part = ll_seektable_parse(data + size - tl, tl, size, &part, &need);
        CHECK(ll_fuzz_known_status(rc_part), "parse status %d", rc_part);
        if (rc_part != LL_ERR_NEED_MORE) break;
        CHECK(part == NULL, "NEED_MORE with a table");
        CHECK(need > tl && need <= size, "NEED_MORE: need %llu, tail %zu, blob %zu",
              (unsigned long long)need, tl, size);
        CHECK(rounds < 3, "NEED_MORE protocol does not converge");
        tl = (size_t)need;
    }
    if (size >= LL_SEEKTABLE_FOOTER_SIZE)
        CHECK(rc_part == rc_full, "short tail (%zu) gives %d, whole blob gives %d", tl, rc_part, rc_full);
    if (rc_part == LL_OK && full) same_table(part, full);
    ll_seektable_free(part);

    /* Through the callback. */
    if (size >= LL_SKIPPABLE_HEADER_SIZE + LL_SEEKTABLE_FOOTER_SIZE) {
        ll_mem_source src = {data, size};
        ll_seektable *loaded = NULL;
        int rc_load = ll_seektable_load(ll_mem_read, &src, size, &loaded);
        CHECK(rc_load == rc_full, "load gives %d, parse gives %d", rc_load, rc_full);
        if (loaded) same_table(loaded, full);
        ll_seektable_free(loaded);
    }
    ll_seektable_free(full);

    if (rc_full == LL_OK) exercise_readers(data, size, &rng);
    return 0;
}
