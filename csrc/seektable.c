/* seektable.c - parse and validate the zstd seekable format's seek table.
 *
 * The table is untrusted input.  Every field is checked before use, sums are
 * done in 64 bits (2^27 frames x 2^32 bytes cannot overflow), and memory is
 * allocated only after the table's bytes are in hand, so its size is bounded by
 * what the caller supplied. */
#include "internal.h"

#include <stdlib.h>

#define DESC_CHECKSUM 0x80u
#define DESC_RESERVED 0x7Cu /* bits 6-2: must be zero; bits 1-0 are ignored */

/* Check the footer (last 9 bytes of tail) and compute the table's total size. */
int ll_seektable_tail_size(const void *tail, size_t tail_len, uint64_t blob_size,
                           uint64_t *table_bytes) {
    if ((!tail && tail_len) || !table_bytes || tail_len > blob_size) return LL_ERR_ARG;
    if (blob_size < LL_SKIPPABLE_HEADER_SIZE + LL_SEEKTABLE_FOOTER_SIZE) return LL_ERR_SEEKTABLE;
    if (tail_len < LL_SEEKTABLE_FOOTER_SIZE) {
        *table_bytes = LL_SEEKTABLE_FOOTER_SIZE; /* at least the footer, to learn more */
        return LL_ERR_NEED_MORE;
    }
    const uint8_t *f = (const uint8_t *)tail + tail_len - LL_SEEKTABLE_FOOTER_SIZE;
    if (ll__le32(f + 5) != LL_SEEKABLE_MAGIC) return LL_ERR_SEEKTABLE;
    uint8_t desc = f[4];
    if (desc & DESC_RESERVED) return LL_ERR_SEEKTABLE;
    uint64_t n = ll__le32(f);
    if (n > LL_MAX_FRAMES) return LL_ERR_LIMIT;
    uint64_t entry = (desc & DESC_CHECKSUM) ? 12 : 8;
    uint64_t total = LL_SKIPPABLE_HEADER_SIZE + n * entry + LL_SEEKTABLE_FOOTER_SIZE;
    if (total > blob_size) return LL_ERR_SEEKTABLE;
    *table_bytes = total;
    return LL_OK;
}

static void table_free(ll_seektable *st) {
    if (!st) return;
    free(st->c_off);
    free(st->d_off);
    free(st->checksum);
    free(st);
}

int ll_seektable_parse(const void *tail, size_t tail_len, uint64_t blob_size,
                       ll_seektable **out, uint64_t *need) {
    if (!out) return LL_ERR_ARG;
    *out = NULL;
    uint64_t total;
    int rc = ll_seektable_tail_size(tail, tail_len, blob_size, &total);
    if (rc == LL_ERR_NEED_MORE && need) *need = total;
    if (rc != LL_OK) return rc;
    if (tail_len < total) {
        if (need) *need = total;
        return LL_ERR_NEED_MORE;
    }
    const uint8_t *t = (const uint8_t *)tail + tail_len - total; /* start of the skippable frame */
    const uint8_t *f = t + total - LL_SEEKTABLE_FOOTER_SIZE;
    uint32_t n = ll__le32(f);
    int checks = (f[4] & DESC_CHECKSUM) != 0;
    size_t entry = checks ? 12 : 8;
    if (ll__le32(t) != LL_SKIPPABLE_MAGIC) return LL_ERR_SEEKTABLE;
    if ((uint64_t)ll__le32(t + 4) != total - LL_SKIPPABLE_HEADER_SIZE) return LL_ERR_SEEKTABLE;

    ll_seektable *st = calloc(1, sizeof *st);
    if (!st) return LL_ERR_NOMEM;
    st->n = n;
    st->has_checksums = checks;
    st->c_off = malloc(((size_t)n + 1) * sizeof(uint64_t));
    st->d_off = malloc(((size_t)n + 1) * sizeof(uint64_t));
    if (checks) st->checksum = malloc(((size_t)n ? n : 1) * sizeof(uint32_t));
    if (!st->c_off || !st->d_off || (checks && !st->checksum)) {
        table_free(st);
        return LL_ERR_NOMEM;
    }
    uint64_t c = 0, d = 0;
    const uint8_t *e = t + LL_SKIPPABLE_HEADER_SIZE;
    for (uint32_t i = 0; i < n; i++, e += entry) {
        uint32_t cs = ll__le32(e), ds = ll__le32(e + 4);
        if (cs == 0) { table_free(st); return LL_ERR_SEEKTABLE; }
        if (ds > LL_MAX_FRAME_SIZE) { table_free(st); return LL_ERR_LIMIT; }
        st->c_off[i] = c;
        st->d_off[i] = d;
        if (checks) st->checksum[i] = ll__le32(e + 8);
        if (ds > st->max_d_size) st->max_d_size = ds;
        c += cs;
        d += ds;
    }
    st->c_off[n] = c;
    st->d_off[n] = d;
    /* The frames must exactly fill the blob in front of the table. */
    if (c != blob_size - total) {
        table_free(st);
        return LL_ERR_SEEKTABLE;
    }
    *out = st;
    return LL_OK;
}

int ll_seektable_load(ll_read_fn read, void *opaque, uint64_t blob_size, ll_seektable **out) {
    if (!read || !out) return LL_ERR_ARG;
    *out = NULL;
    if (blob_size < LL_SEEKTABLE_FOOTER_SIZE + LL_SKIPPABLE_HEADER_SIZE) return LL_ERR_SEEKTABLE;
    uint8_t footer[LL_SEEKTABLE_FOOTER_SIZE];
    int rc = ll__callback_status(read(opaque, blob_size - sizeof footer, sizeof footer, footer));
    if (rc != LL_OK) return rc;
    uint64_t total;
    rc = ll_seektable_tail_size(footer, sizeof footer, blob_size, &total);
    if (rc != LL_OK) return rc;
    if (total > SIZE_MAX) return LL_ERR_LIMIT;
    uint8_t *buf = malloc((size_t)total);
    if (!buf) return LL_ERR_NOMEM;
    rc = ll__callback_status(read(opaque, blob_size - total, (size_t)total, buf));
    if (rc != LL_OK) {
        free(buf);
        return rc;
    }
    rc = ll_seektable_parse(buf, (size_t)total, blob_size, out, NULL);
    free(buf);
    return rc;
}

void ll_seektable_free(ll_seektable *st) { table_free(st); }

uint32_t ll_seektable_num_frames(const ll_seektable *st) { return st->n; }
int ll_seektable_has_checksums(const ll_seektable *st) { return st->has_checksums; }
uint64_t ll_seektable_compressed_size(const ll_seektable *st) { return st->c_off[st->n]; }
uint64_t ll_seektable_decompressed_size(const ll_seektable *st) { return st->d_off[st->n]; }
uint32_t ll_seektable_max_frame_size(const ll_seektable *st) { return st->max_d_size; }

int ll_seektable_frame(const ll_seektable *st, uint32_t i, ll_frame_info *out) {
    if (!st || !out || i >= st->n) return LL_ERR_ARG;
    out->c_offset = st->c_off[i];
    out->d_offset = st->d_off[i];
    out->c_size = (uint32_t)(st->c_off[i + 1] - st->c_off[i]);
    out->d_size = (uint32_t)(st->d_off[i + 1] - st->d_off[i]);
    out->has_checksum = st->has_checksums;
    out->checksum = st->has_checksums ? st->checksum[i] : 0;
    return LL_OK;
}

uint32_t ll_seektable_frame_at(const ll_seektable *st, uint64_t d_offset) {
    if (d_offset >= st->d_off[st->n]) return st->n;
    /* Largest i with d_off[i] <= d_offset; that frame is never empty, since an
     * empty frame shares its d_off with the next one. */
    uint32_t lo = 0, hi = st->n; /* invariant: d_off[lo] <= d_offset < d_off[hi] */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (st->d_off[mid] <= d_offset) lo = mid; else hi = mid;
    }
    return lo;
}
