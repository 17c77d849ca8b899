/* fuzz_chunk.c - encoded frames (ll_chunk_decode, csrc/diskcache.c).
 *
 * Byte 0 is the mode.  Even: the rest is an encoded frame file as is (hostile
 * bytes: header, window, payload).  Odd: the harness makes a real one from the
 * rest, `body`: codec byte 1 % 4 (zeros: as many zero bytes; gzip: a member of
 * zlib level byte 2 % 10; zstd: ZSTD_compress at level byte 2 % 19 + 1; gzspan:
 * the body gzipped, a checkpoint taken every 256 bytes by ll_gzindexer, span
 * byte 2 of them), so decoding is reached every time and must give the body.
 * Invariants: every status is a documented one; nothing is written past the
 * `size` bytes asked for; a frame that decodes to bytes whose digest is not
 * the one given is LL_ERR_DIGEST, and given that digest the same call is LL_OK
 * with the same bytes; a header that gives another size is LL_ERR_FORMAT.
 *
 * With bit 1 of byte 0 set, runs (ll_run_decode) instead.  Hostile (bit 0
 * clear): byte 1 is the number of table entries, then the table, then the
 * payload.  Real (bit 0 set): the rest is cut into up to 8 chunks, each made
 * zeros (its bytes then zeroed), a gzip member or zstd frames, with bytes of the
 * input between them.  Invariants: documented statuses only, nothing written
 * past `size`; a real run decodes to its chunks, and one entry's digest changed
 * is LL_ERR_DIGEST naming that entry; a hostile run that decodes has chunks that
 * match their digests. */
#include "fuzz_common.h"

#include <zlib.h>
#include <zstd.h>

#define MAX_SIZE (4u << 20)
#define GUARD 16

static const uint8_t MAGIC[8] = {'L', 'L', 'C', 'H', 'N', 'K', 'Z', '1'};

static size_t header(uint8_t *p, int codec, uint32_t bits, uint32_t byte, uint32_t wlen, uint64_t size) {
    memcpy(p, MAGIC, 8);
    p[8] = (uint8_t)codec;
    p[9] = (uint8_t)bits;
    p[10] = (uint8_t)byte;
    p[11] = 0;
    for (int i = 0; i < 4; i++) p[12 + i] = (uint8_t)(wlen >> (8 * i));
    for (int i = 0; i < 8; i++) p[16 + i] = (uint8_t)(size >> (8 * i));
    return LL_CHUNK_HEADER;
}

static size_t gzip_body(const uint8_t *body, size_t n, int level, uint8_t *out, size_t cap) {
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) return 0;
    zs.next_in = (Bytef *)(uintptr_t)body;
    zs.avail_in = (uInt)n;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    int z = deflate(&zs, Z_FINISH);
    size_t len = zs.total_out;
    deflateEnd(&zs);
    return z == Z_STREAM_END ? len : 0;
}

/* A real encoded frame of `body` into *out (malloc'd); its data (*data, *data_len: the body, or
 * for gzspan the span's part of it).  0 if it cannot be made. */
static size_t make(const uint8_t *params, const uint8_t *body, size_t n, uint8_t **out, const uint8_t **data,
                   size_t *data_len) {
    int codec = params[0] % 4;
    size_t cap = LL_CHUNK_HEADER + LL_GZ_WINDOW + compressBound((uLong)n) + ZSTD_compressBound(n) + 64;
    uint8_t *p = malloc(cap);
    if (!p) return 0;
    *data = body;
    *data_len = n;
    size_t len = 0;
    if (codec == LL_CHUNK_ZEROS) {
        *data = NULL; /* n zero bytes */
        len = header(p, codec, 0, 0, 0, n);
    } else if (codec == LL_CHUNK_GZIP) {
        size_t c = gzip_body(body, n, params[1] % 10, p + LL_CHUNK_HEADER, cap - LL_CHUNK_HEADER);
        if (c) len = header(p, codec, 0, 0, 0, n) + c;
    } else if (codec == LL_CHUNK_ZSTD) {
        size_t c = ZSTD_compress(p + LL_CHUNK_HEADER, cap - LL_CHUNK_HEADER, body, n, params[1] % 19 + 1);
        if (!ZSTD_isError(c)) len = header(p, codec, 0, 0, 0, n) + c;
    } else { /* gzspan */
        uint8_t *gz = malloc(compressBound((uLong)n) + 64);
        size_t gl = gz ? gzip_body(body, n, 6, gz, compressBound((uLong)n) + 64) : 0;
        ll_gzindexer *g = NULL;
        uint8_t *scratch = malloc(n + 1);
        if (gl && scratch && ll_gzindexer_create(256, &g) == LL_OK) {
            ll_gz_checkpoint cp, chosen, next;
            int have = 0, have_next = 0;
            size_t ip = 0, op = 0, k = 0, want = params[1];
            while (ip < gl) {
                size_t used = 0, made = 0;
                size_t take = gl - ip < 97 ? gl - ip : 97; /* small calls: a checkpoint per block boundary */
                if (ll_gzindexer_inflate(g, gz + ip, take, &used, scratch + op, n + 1 - op, &made) != LL_OK) break;
                ip += used;
                op += made;
                while (ll_gzindexer_take(g, &cp) == LL_OK) {
                    if (k == want) chosen = cp, have = 1;
                    else if (have && !have_next) next = cp, have_next = 1;
                    k++;
                }
                if (used == 0 && made == 0) break;
            }
            if (have && op == n) {
                uint64_t end_in = have_next ? next.in : gl, end_out = have_next ? next.out : n;
                size_t w = chosen.window_size;
                len = header(p, codec, chosen.bits, chosen.byte, (uint32_t)w, end_out - chosen.out);
                memcpy(p + len, chosen.window, w);
                len += w;
                memcpy(p + len, gz + chosen.in, (size_t)(end_in - chosen.in));
                len += (size_t)(end_in - chosen.in);
                *data = body + chosen.out;
                *data_len = (size_t)(end_out - chosen.out);
            }
        }
        ll_gzindexer_free(g);
        free(scratch);
        free(gz);
    }
    if (!len) {
        free(p);
        return 0;
    }
    *out = p;
    return len;
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void fuzz_run(const uint8_t *data, size_t size) {
    int real = data[0] & 1;
    const uint8_t *in = data + 1;
    size_t left = size - 1;
    uint8_t *table = NULL, *payload = NULL, *expect = NULL;
    size_t n = 0, plen = 0, total = 0;
    if (!real) {
        if (left < 1) return;
        n = in[0];
        if (n * LL_RUN_ENTRY > left - 1) n = (left - 1) / LL_RUN_ENTRY;
        table = malloc(n * LL_RUN_ENTRY + 1);
        if (!table) return;
        memcpy(table, in + 1, n * LL_RUN_ENTRY);
        plen = left - 1 - n * LL_RUN_ENTRY;
        payload = malloc(plen + 1);
        if (!payload) goto done;
        memcpy(payload, in + 1 + n * LL_RUN_ENTRY, plen);
        for (size_t i = 0; i < n; i++) total += ll_fuzz_u32(table + i * LL_RUN_ENTRY + 8);
    } else {
        if (left < 2) return;
        n = in[0] % 8 + 1;
        uint64_t seed = ll_fuzz_hash(in, left);
        const uint8_t *body = in + 1;
        size_t blen = left - 1;
        size_t cap = 8 * 64 + 2 * (compressBound((uLong)blen) + ZSTD_compressBound(blen)) + 64 * 8;
        table = calloc(n, LL_RUN_ENTRY);
        payload = malloc(cap);
        expect = malloc(blen + 1);
        if (!table || !payload || !expect) goto done;
        size_t at = 0;
        for (size_t i = 0; i < n; i++) {
            size_t take = i + 1 == n ? blen - at : (size_t)ll_fuzz_below(&seed, blen - at + 1);
            uint8_t *e = table + i * LL_RUN_ENTRY, *d = expect + total;
            memcpy(d, body + at, take);
            int codec = (int)ll_fuzz_below(&seed, 3);
            size_t off = plen, len = 0;
            if (codec == LL_CHUNK_ZEROS) {
                memset(d, 0, take);
                off = 0;
            } else if (codec == LL_CHUNK_GZIP) {
                len = gzip_body(d, take, (int)ll_fuzz_below(&seed, 10), payload + plen, cap - plen);
                if (!len) goto done;
            } else {
                size_t c = ZSTD_compress(payload + plen, cap - plen, d, take, (int)ll_fuzz_below(&seed, 5) + 1);
                if (ZSTD_isError(c)) goto done;
                len = c;
            }
            plen += len;
            size_t gap = (size_t)ll_fuzz_below(&seed, 64);
            for (size_t k = 0; k < gap && plen < cap; k++) payload[plen++] = body[(at + k) % (blen ? blen : 1)];
            put32(e, (uint32_t)off);
            put32(e + 4, (uint32_t)len);
            put32(e + 8, (uint32_t)take);
            e[12] = (uint8_t)codec;
            ll_sha256(d, take, e + 16);
            at += take;
            total += take;
        }
    }
    if (total > MAX_SIZE) {
        uint8_t small[64];
        CHECK(ll_run_decode(table, (uint32_t)n, payload, plen, small, sizeof small, NULL) == LL_ERR_FORMAT,
              "sizes over the buffer");
        goto done;
    }
    uint8_t *dst = malloc(total + GUARD);
    if (!dst) goto done;
    memset(dst + total, 0xA5, GUARD);
    uint32_t bad = 0;
    int rc = ll_run_decode(table, (uint32_t)n, payload, plen, dst, total, &bad);
    CHECK(ll_fuzz_known_status(rc) && rc != LL_ERR_ARG, "status %d", rc);
    for (int k = 0; k < GUARD; k++) CHECK(dst[total + k] == 0xA5, "wrote past the buffer");
    if (rc != LL_OK) CHECK(bad < n || n == 0, "entry at fault %u of %zu", bad, n);
    if (rc == LL_OK) { /* every chunk matches its digest */
        size_t at = 0;
        for (size_t i = 0; i < n; i++) {
            uint8_t h[32];
            uint32_t sz = ll_fuzz_u32(table + i * LL_RUN_ENTRY + 8);
            ll_sha256(dst + at, sz, h);
            CHECK(memcmp(h, table + i * LL_RUN_ENTRY + 16, 32) == 0, "chunk %zu passed unchecked", i);
            at += sz;
        }
    }
    if (real) {
        CHECK(rc == LL_OK, "a real run: %d (entry %u)", rc, bad);
        CHECK(memcmp(dst, expect, total) == 0, "a real run's bytes");
        /* the same kept as an encoded frame (LL_CHUNK_RUN), named by its table */
        size_t flen = LL_CHUNK_HEADER + n * LL_RUN_ENTRY + plen;
        uint8_t *file = malloc(flen), name[32];
        if (file) {
            header(file, LL_CHUNK_RUN, 0, 0, (uint32_t)n, total);
            memcpy(file + LL_CHUNK_HEADER, table, n * LL_RUN_ENTRY);
            memcpy(file + LL_CHUNK_HEADER + n * LL_RUN_ENTRY, payload, plen);
            ll_sha256(table, n * LL_RUN_ENTRY, name);
            memset(dst, 0, total);
            CHECK(ll_chunk_decode(file, flen, name, dst, total) == LL_OK && memcmp(dst, expect, total) == 0,
                  "a real run file");
            name[0] ^= 1;
            CHECK(ll_chunk_decode(file, flen, name, dst, total) == LL_ERR_DIGEST, "a run file under another name");
            free(file);
        }
        size_t k = (size_t)(ll_fuzz_hash(data, size) % n);
        table[k * LL_RUN_ENTRY + 16] ^= 1;
        CHECK(ll_run_decode(table, (uint32_t)n, payload, plen, dst, total, &bad) == LL_ERR_DIGEST && bad == k,
              "a changed digest (entry %zu): entry %u", k, bad);
    }
    free(dst);
done:
    free(table);
    free(payload);
    free(expect);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > (1u << 20)) return 0;
    if (data[0] & 2) {
        fuzz_run(data, size);
        return 0;
    }
    uint8_t *made = NULL;
    const uint8_t *src = data + 1, *expect = NULL;
    size_t len = size - 1, expect_len = 0;
    int real = data[0] & 1;
    if (real) {
        if (size < 3) return 0;
        len = make(data + 1, data + 3, size - 3, &made, &expect, &expect_len);
        if (!len) return 0;
        src = made;
    }
    uint64_t n = 0;
    if (len >= LL_CHUNK_HEADER)
        for (int i = 7; i >= 0; i--) n = n << 8 | src[16 + i];
    if (!real && len >= LL_CHUNK_HEADER && src[8] == LL_CHUNK_RUN) { /* named by its table, not its data */
        uint32_t entries = ll_fuzz_u32(src + 12);
        if (n <= MAX_SIZE && (uint64_t)entries * LL_RUN_ENTRY <= len - LL_CHUNK_HEADER) {
            uint8_t name[32], zero[32] = {0};
            ll_sha256(src + LL_CHUNK_HEADER, (size_t)entries * LL_RUN_ENTRY, name);
            uint8_t *dst = malloc((size_t)n + GUARD);
            if (dst) {
                memset(dst + n, 0xA5, GUARD);
                int rc = ll_chunk_decode(src, len, name, dst, (size_t)n);
                CHECK(ll_fuzz_known_status(rc) && rc != LL_ERR_ARG, "run file: status %d", rc);
                for (int k = 0; k < GUARD; k++) CHECK(dst[n + k] == 0xA5, "run file: wrote past the buffer");
                if (rc == LL_OK) {
                    CHECK(entries > 0 && ll_chunk_decode(src, len, zero, dst, (size_t)n) == LL_ERR_DIGEST,
                          "a run file under another name");
                    size_t at = 0; /* every chunk matches its digest */
                    for (uint32_t i = 0; i < entries; i++) {
                        const uint8_t *e = src + LL_CHUNK_HEADER + (size_t)i * LL_RUN_ENTRY;
                        uint8_t h[32];
                        ll_sha256(dst + at, ll_fuzz_u32(e + 8), h);
                        CHECK(memcmp(h, e + 16, 32) == 0, "run file: chunk %u passed unchecked", i);
                        at += ll_fuzz_u32(e + 8);
                    }
                }
                free(dst);
            }
        }
        free(made);
        return 0;
    }
    if (n > MAX_SIZE) { /* not allocated: asked for less, it is a header giving another size */
        uint8_t small[64], sha[32] = {0};
        CHECK(ll_chunk_decode(src, len, sha, small, sizeof small) == LL_ERR_FORMAT, "size mismatch");
        free(made);
        return 0;
    }
    uint8_t *dst = malloc((size_t)n + GUARD), zero[32] = {0}, sha[32];
    if (!dst) {
        free(made);
        return 0;
    }
    memset(dst + n, 0xA5, GUARD);
    int rc = ll_chunk_decode(src, len, zero, dst, (size_t)n);
    CHECK(ll_fuzz_known_status(rc) && rc != LL_ERR_ARG, "status %d", rc);
    for (int k = 0; k < GUARD; k++) CHECK(dst[n + k] == 0xA5, "wrote past the buffer");
    if (real) CHECK(rc == LL_ERR_DIGEST, "a real frame decodes (to other bytes than the zero digest): %d", rc);
    if (rc == LL_ERR_DIGEST) { /* it decoded: with the digest of what it gave, the same bytes, LL_OK */
        ll_sha256(dst, (size_t)n, sha);
        uint8_t *again = malloc((size_t)n + 1);
        if (again) {
            CHECK(ll_chunk_decode(src, len, sha, again, (size_t)n) == LL_OK, "with its digest");
            CHECK(memcmp(again, dst, (size_t)n) == 0, "not deterministic");
            free(again);
        }
        if (real) {
            CHECK(n == expect_len, "size %llu, not %zu", (unsigned long long)n, expect_len);
            for (size_t i = 0; i < expect_len; i++)
                CHECK(dst[i] == (expect ? expect[i] : 0), "byte %zu of the round trip", i);
        }
        if (n > 0) CHECK(ll_chunk_decode(src, len, sha, dst, (size_t)n - 1) == LL_ERR_FORMAT, "smaller size");
    }
    free(dst);
    free(made);
    return 0;
}
