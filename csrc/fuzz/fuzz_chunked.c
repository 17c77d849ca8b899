/* fuzz_chunked.c - chunked TOCs (eStargz, zstd:chunked) made raw layers
 * (ll_chunked_convert, csrc/chunked.c).
 *
 * Byte 0: bit 0 the codec (gzip, zstd), bit 1 hides stargz's own names, bit 2
 * lowers the limits (chunks over 4096 bytes are big: pieces of 1024) so the
 * big-chunk path is reached, bit 3 makes runs of small chunks one frame (small
 * limits: 8 KiB runs of chunks up to 2 KiB, 512 bytes apart); bytes 1-2: the TOC offset in KiB (+1).  The rest is
 * the TOC's JSON.  Invariants: a documented status, with a message; for a TOC
 * that converts, every row is well formed (a known codec, 1..max_chunk bytes,
 * offset < end <= the TOC offset, at most size + size / 8 + LL_CHUNK_SPAN_SLACK
 * bytes of the blob but for big chunks' pieces, zero span fields), the stream size is the
 * rows' sum, and the TOC made is one the
 * index takes as a raw layer whose frames tile the rows — a row each, or with
 * runs a run of rows within the limits, named by the sha256 of its chunk
 * table — (or refuses
 * with LL_ERR_FORMAT / LL_ERR_LIMIT: what toc.c checks that the converter
 * leaves to it), which then walks clean. */
#include "fuzz_index_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 3) return 0;
    ll_chunked_options opt;
    CHECK(ll_chunked_options_init(&opt, sizeof opt) == LL_OK, "options");
    opt.toc_offset = ((uint64_t)data[1] | (uint64_t)data[2] << 8) * 1024 + 1;
    opt.codec = data[0] & 1 ? LL_CHUNK_ZSTD : LL_CHUNK_GZIP;
    opt.flags = data[0] & 2 ? LL_CHUNKED_HIDE_STARGZ : 0;
    if (data[0] & 4) opt.max_chunk = 4096, opt.whole_piece = 1024;
    if (data[0] & 8) opt.run_size = 8192, opt.run_chunk = 2048, opt.run_gap = 512;
    uint64_t max_chunk = opt.max_chunk;
    ll_chunked *c = NULL;
    char err[LL_ERR_MSG_SIZE];
    err[0] = 0;
    int rc = ll_chunked_convert(data + 3, size - 3, &opt, &c, err, sizeof err);
    if (rc != LL_OK) {
        CHECK(c == NULL, "a failure that made something (rc %d)", rc);
        CHECK(rc == LL_ERR_FORMAT || rc == LL_ERR_LIMIT || rc == LL_ERR_UNSUPPORTED || rc == LL_ERR_NOMEM,
              "unexpected status %d: %s", rc, err);
        CHECK(err[0], "a refusal without a message (rc %d)", rc);
        return 0;
    }
    size_t jlen;
    const uint8_t *json = ll_chunked_json(c, &jlen);
    uint64_t count, total = 0;
    const uint8_t *rows = ll_chunked_rows(c, &count);
    for (uint64_t i = 0; i < count; i++) {
        const uint8_t *r = rows + i * LL_CHUNKED_ROW_SIZE;
        uint64_t n = 0, off = 0, end = 0;
        for (int k = 0; k < 4; k++) n |= (uint64_t)r[8 + k] << (8 * k);
        for (int k = 0; k < 8; k++) off |= (uint64_t)r[12 + k] << (8 * k), end |= (uint64_t)r[20 + k] << (8 * k);
        CHECK(r[60] <= LL_ROW_ZSTD_WHOLE && r[60] != LL_ROW_GZSPAN, "row %llu: codec %u", (unsigned long long)i, r[60]);
        CHECK(n >= 1 && n <= max_chunk, "row %llu: %llu bytes", (unsigned long long)i, (unsigned long long)n);
        CHECK(off < end && end <= opt.toc_offset, "row %llu: bytes %llu..%llu, TOC at %llu", (unsigned long long)i,
              (unsigned long long)off, (unsigned long long)end, (unsigned long long)opt.toc_offset);
        CHECK(!r[61] && !r[62] && !r[63] && !r[64], "row %llu: span fields set", (unsigned long long)i);
        CHECK(r[60] >= LL_ROW_GZIP_WHOLE || end - off <= n + n / 8 + LL_CHUNK_SPAN_SLACK,
              "row %llu: %llu bytes of the blob for %llu of data", (unsigned long long)i,
              (unsigned long long)(end - off), (unsigned long long)n);
        total += n;
    }
    CHECK(total == ll_chunked_stream_size(c), "rows hold %llu bytes, the stream %llu", (unsigned long long)total,
          (unsigned long long)ll_chunked_stream_size(c));
    /* the index takes the TOC made as a raw layer of exactly those frames */
    uint8_t *frame;
    size_t fl = ll_fuzz_toc_frame(json, jlen, &frame);
    char digest[72], toc_digest[72];
    uint8_t b = 7;
    ll_fuzz_hex_digest(&b, 1, digest);
    ll_fuzz_hex_digest(frame, fl, toc_digest);
    ll_index_layer layer = {.digest = digest, .blob_size = total + fl, .toc_digest = toc_digest,
                            .toc_offset = total, .toc_length = fl, .toc_frame = frame};
    ll_index *idx = NULL;
    rc = ll_index_build(&layer, 1, &idx, err, sizeof err);
    free(frame);
    if (rc != LL_OK) {
        CHECK(rc == LL_ERR_FORMAT || rc == LL_ERR_LIMIT || rc == LL_ERR_NOMEM, "index of a converted TOC: rc %d: %s",
              rc, err);
        ll_chunked_free(c);
        return 0;
    }
    const char *ld;
    uint64_t blob, tar;
    uint32_t frames;
    CHECK(ll_index_layer_info(idx, 0, &ld, &blob, &tar, &frames) == LL_OK && (opt.run_size || frames == count) &&
              frames <= count && tar == total,
          "the index has %llu frames of %llu bytes, the rows %llu of %llu", (unsigned long long)frames,
          (unsigned long long)tar, (unsigned long long)count, (unsigned long long)total);
    static const uint8_t zero[32];
    uint64_t row = 0;
    for (uint32_t i = 0; i < frames; i++) {
        ll_layer_frame f;
        CHECK(ll_index_frame(idx, 0, i, &f) == LL_OK && f.c_size == f.d_size, "frame %u", i);
        uint64_t first = row, left = f.d_size, last_end = 0, first_off = 0;
        int have = 0;
        while (left > 0 && row < count) {
            const uint8_t *r = rows + row * LL_CHUNKED_ROW_SIZE;
            uint64_t n = 0, off = 0, end = 0;
            for (int k = 0; k < 4; k++) n |= (uint64_t)r[8 + k] << (8 * k);
            for (int k = 0; k < 8; k++) off |= (uint64_t)r[12 + k] << (8 * k), end |= (uint64_t)r[20 + k] << (8 * k);
            CHECK(n <= left, "frame %u does not end on a row", i);
            if (row > first || f.d_size > n) { /* a run */
                CHECK(r[60] <= LL_ROW_ZEROS && n <= opt.run_chunk && f.d_size <= opt.run_size,
                      "row %llu in a run of frame %u", (unsigned long long)row, i);
                if (r[60] != LL_ROW_ZEROS) {
                    CHECK(!have || (last_end <= off && off - last_end <= opt.run_gap), "a gap in frame %u", i);
                    if (!have) first_off = off;
                    have = 1, last_end = end;
                    CHECK(end - first_off <= 2 * opt.run_size, "frame %u: a run over %llu bytes of the blob", i,
                          (unsigned long long)(2 * opt.run_size));
                }
            }
            left -= n;
            row++;
        }
        CHECK(left == 0, "frame %u: the rows end first", i);
        const uint8_t *r = rows + first * LL_CHUNKED_ROW_SIZE;
        if (row - first > 1) { /* a run: named by the sha256 of its table (ll_run_decode's), made here */
            size_t tn = (size_t)(row - first);
            uint8_t *t = calloc(tn, LL_RUN_ENTRY), h[32];
            if (t) {
                for (size_t q = 0; q < tn; q++) {
                    const uint8_t *x = rows + (first + q) * LL_CHUNKED_ROW_SIZE;
                    uint8_t *e = t + q * LL_RUN_ENTRY;
                    uint64_t xo = 0, xe = 0;
                    for (int k = 0; k < 8; k++) xo |= (uint64_t)x[12 + k] << (8 * k), xe |= (uint64_t)x[20 + k] << (8 * k);
                    if (x[60] != LL_ROW_ZEROS)
                        for (int k = 0; k < 4; k++)
                            e[k] = (uint8_t)((xo - first_off) >> (8 * k)), e[4 + k] = (uint8_t)((xe - xo) >> (8 * k));
                    memcpy(e + 8, x + 8, 4);
                    e[12] = x[60] == LL_ROW_GZIP ? LL_CHUNK_GZIP : x[60] == LL_ROW_ZSTD ? LL_CHUNK_ZSTD : LL_CHUNK_ZEROS;
                    memcpy(e + 16, x + 28, 32);
                }
                ll_sha256(t, tn * LL_RUN_ENTRY, h);
                CHECK(memcmp(f.sha256, h, 32) == 0, "frame %u: a run not named by its table", i);
                free(t);
            }
        } else {
            CHECK(memcmp(f.sha256, r[60] < LL_ROW_GZIP_WHOLE ? r + 28 : zero, 32) == 0, "frame %u's name", i);
        }
    }
    CHECK(row == count, "frames end before the rows");
    ll_fuzz_walk(idx, ll_fuzz_hash(data, size));
    ll_index_free(idx);
    ll_chunked_free(c);
    return 0;
}
