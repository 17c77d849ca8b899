/* fuzz_toc.c - bytes as TOC JSON: 1 to 3 layers, built into an index, walked, and
 * round-tripped through ll_index_data / ll_index_open_buffer.
 *
 * Input: byte 0 picks the number of layers (1 + b % 3); the rest is split into
 * that many TOCs at "\n--\n" separators (the seeds use them), else into equal
 * parts.  Each TOC is wrapped in a real TOC frame (zstd, header, sha256 as the
 * toc_digest, frames ending at LL_FUZZ_TOC_OFFSET).  Invariants: the build
 * returns a documented status with a message; a built index answers every
 * lookup without a sanitizer report; reopened from its bytes (mapped or
 * copied) it answers exactly the same. */
#include "fuzz_index_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint32_t n = 1 + data[0] % 3;
    const uint8_t *rest = data + 1;
    size_t rlen = size - 1;
    const uint8_t *parts[3];
    size_t lens[3];
    uint32_t got = 0;
    const uint8_t *p = rest, *end = rest + rlen;
    while (got + 1 < n) {
        const uint8_t *sep = memmem(p, (size_t)(end - p), "\n--\n", 4);
        if (!sep) break;
        parts[got] = p;
        lens[got++] = (size_t)(sep - p);
        p = sep + 4;
    }
    if (got + 1 < n) {   /* no separators: equal parts of what is left */
        size_t left = (size_t)(end - p), each = left / (n - got);
        while (got + 1 < n) {
            parts[got] = p;
            lens[got++] = each;
            p += each;
        }
    }
    parts[got] = p;
    lens[got++] = (size_t)(end - p);
    ll_index *idx = NULL;
    char err[LL_ERR_MSG_SIZE];
    int rc = ll_fuzz_build(parts, lens, got, &idx, err, sizeof err);
    CHECK(ll_fuzz_known_status(rc) && rc != LL_ERR_STATE, "build rc %d", rc);
    if (rc) {
        CHECK(idx == NULL && err[0], "a failure without a message (rc %d)", rc);
        CHECK(rc == LL_ERR_FORMAT || rc == LL_ERR_LIMIT || rc == LL_ERR_FRAME || rc == LL_ERR_NOMEM,
              "unexpected build status %d: %s", rc, err);
        return 0;
    }
    uint64_t seed = ll_fuzz_hash(data, size);
    uint64_t h = ll_fuzz_walk(idx, seed);
    const void *buf;
    size_t blen;
    ll_index_data(idx, &buf, &blen);
    for (int copy = 0; copy < 2; copy++) {
        ll_index *again;
        rc = ll_index_open_buffer(buf, blen, copy, &again, err, sizeof err);
        CHECK(rc == LL_OK, "reopening a built index: %s", err);
        const void *b2;
        size_t l2;
        ll_index_data(again, &b2, &l2);
        CHECK(l2 == blen && memcmp(b2, buf, blen) == 0, "the reopened index's bytes differ");
        CHECK(ll_fuzz_walk(again, seed) == h, "the reopened index answers differently");
        ll_index_free(again);
    }
    ll_index_free(idx);
    return 0;
}
