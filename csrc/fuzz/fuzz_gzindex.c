/* fuzz_gzindex.c - the gzip checkpoint indexer and span decoder (csrc/gzindex.c).
 *
 * Header (4 bytes), then a body:
 *   byte 0: mode.  Bit 1: CRC-32s not checked (ll_gzindexer_skip_crc).  Bit 0 even: the
 *           body is a gzip stream as is (hostile bytes).  Odd:
 *           the body is data the harness compresses itself first (deflate level
 *           byte 1 % 10, strategy byte 1 / 10 % 5, in (byte 2 % 4) + 1 gzip
 *           members), so the round trip below is reached every time.
 *   byte 2: span = ((byte 2 >> 2) + 1) * 64 bytes of output between checkpoints.
 *   byte 3: input chunk = byte 3 * 37 + 1 bytes per call; output room per call the same * 3 + 1.
 * Invariants: every status is a documented one; output never exceeds the room
 * given; checkpoints come in order, with bits <= 7 and windows <= 32 KiB; when
 * the stream is complete, inflating each span from its checkpoint gives exactly
 * the bytes the indexer produced there, and the output of a harness-compressed
 * body is the body.  Last, ll_gz_inflate_span on bytes of the body from a
 * checkpoint made of other bytes of it never writes past its buffer. */
#include "fuzz_common.h"

#include <zlib.h>

#define MAX_OUT (4u << 20)
#define MAX_CP 4096

static size_t gzip_members(const uint8_t *data, size_t n, int level, int strategy, int members, uint8_t **out) {
    size_t cap = compressBound((uLong)n) + 64 * (size_t)members + 64, len = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) return 0;
    size_t per = n / (size_t)members + 1, off = 0;
    for (int m = 0; m < members; m++) {
        size_t take = m == members - 1 ? n - off : (per < n - off ? per : n - off);
        z_stream zs;
        memset(&zs, 0, sizeof zs);
        if (deflateInit2(&zs, level, Z_DEFLATED, 31, 8, strategy) != Z_OK) break;
        zs.next_in = (Bytef *)(uintptr_t)(data + off);
        zs.avail_in = (uInt)take;
        zs.next_out = buf + len;
        zs.avail_out = (uInt)(cap - len);
        int z = deflate(&zs, Z_FINISH);
        CHECK(z == Z_STREAM_END, "deflate returned %d", z);
        len += zs.total_out;
        deflateEnd(&zs);
        off += take;
    }
    *out = buf;
    return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4 || size > (1u << 20)) return 0;
    int compress_it = data[0] & 1;
    uint64_t span = (uint64_t)((data[2] >> 2) + 1) * 64;
    size_t chunk = (size_t)data[3] * 37 + 1, room = chunk * 3 + 1;
    const uint8_t *body = data + 4;
    size_t body_len = size - 4;
    uint8_t *gz = NULL;
    size_t gz_len = body_len;
    if (compress_it) {
        gz_len = gzip_members(body, body_len, data[1] % 10, data[1] / 10 % 5, data[2] % 4 + 1, &gz);
        if (!gz) return 0;
    }
    const uint8_t *in = compress_it ? gz : body;

    ll_gzindexer *g = NULL;
    CHECK(ll_gzindexer_create(span, &g) == LL_OK, "create");
    if (data[0] & 2) CHECK(ll_gzindexer_skip_crc(g) == LL_OK, "skip_crc before the first inflate");
    size_t out_cap = 65536 + room, cp_cap = 16;
    uint8_t *out = malloc(out_cap);
    ll_gz_checkpoint *cps = malloc(cp_cap * sizeof *cps);
    size_t ncp = 0, produced = 0, ip = 0;
    int rc = LL_OK;
    while (out && cps && ip < gz_len && produced < MAX_OUT) {
        if (out_cap - produced < room) { /* grow (quadratic copies would slow the fuzzer down) */
            uint8_t *p = realloc(out, out_cap * 2);
            if (!p) break;
            out = p;
            out_cap *= 2;
        }
        size_t take = gz_len - ip < chunk ? gz_len - ip : chunk, used = 0, made = 0;
        rc = ll_gzindexer_inflate(g, in + ip, take, &used, out + produced, room, &made);
        CHECK(ll_fuzz_known_status(rc), "status %d", rc);
        CHECK(made <= room && used <= take, "made %zu of %zu, used %zu of %zu", made, room, used, take);
        ip += used;
        produced += made;
        ll_gz_checkpoint cp;
        while (ll_gzindexer_take(g, &cp) == LL_OK) {
            CHECK(cp.bits <= 7 && cp.window_size <= LL_GZ_WINDOW && cp.out <= produced, "checkpoint");
            CHECK(ncp == 0 || (cp.out > cps[ncp - 1].out && cp.in > cps[ncp - 1].in), "order");
            if (ncp == cp_cap && cp_cap < MAX_CP) {
                ll_gz_checkpoint *p = realloc(cps, cp_cap * 2 * sizeof *cps);
                if (p) {
                    cps = p;
                    cp_cap *= 2;
                }
            }
            if (ncp < cp_cap) cps[ncp++] = cp;
            else rc = LL_ERR_LIMIT;
        }
        if (rc != LL_OK || (used == 0 && made == 0)) break;
    }
    CHECK(ll_gzindexer_inflate(g, in, 0, &(size_t){0}, out, 0, &(size_t){0}) == (rc == LL_OK ? LL_OK : LL_ERR_STATE) ||
              rc == LL_ERR_LIMIT, "state after %d", rc);
    uint64_t tin = 0, tout = 0;
    ll_gzindexer_totals(g, &tin, &tout);
    int complete = rc == LL_OK && ip == gz_len && ll_gzindexer_complete(g) && tout == produced;
    if (compress_it && rc == LL_OK && produced < MAX_OUT)
        CHECK(complete && produced == body_len && memcmp(out, body, body_len) == 0, "round trip of the body");
    if (complete && ncp) {
        uint8_t *span_out = malloc(produced + 1);
        for (size_t i = 0; span_out && i < ncp; i++) {
            uint64_t end_in = i + 1 < ncp ? cps[i + 1].in : gz_len;
            uint64_t end_out = i + 1 < ncp ? cps[i + 1].out : produced;
            size_t n = (size_t)(end_out - cps[i].out);
            int r = ll_gz_inflate_span(cps[i].bits, cps[i].byte, cps[i].window, cps[i].window_size, in + cps[i].in,
                                       (size_t)(end_in - cps[i].in), span_out, n);
            CHECK(r == LL_OK, "span %zu of %zu: %d", i, ncp, r);
            CHECK(memcmp(span_out, out + cps[i].out, n) == 0, "span %zu differs", i);
        }
        free(span_out);
    }
    /* hostile checkpoints: any bits, byte and window over any bytes */
    if (body_len >= 8) {
        uint8_t dst[4096 + 16];
        memset(dst + 4096, 0xA5, 16);
        size_t wlen = body_len / 3 > LL_GZ_WINDOW ? LL_GZ_WINDOW : body_len / 3;
        int r = ll_gz_inflate_span(body[0] & 7, body[1], body + 2, wlen, body + 2 + wlen, body_len - 2 - wlen,
                                   dst, (size_t)data[3] * 16 + 1);
        CHECK(ll_fuzz_known_status(r), "span status %d", r);
        for (int k = 0; k < 16; k++) CHECK(dst[4096 + k] == 0xA5, "wrote past the buffer");
    }
    free(cps);
    free(out);
    free(gz);
    ll_gzindexer_free(g);
    return 0;
}
