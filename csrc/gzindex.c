/* gzindex.c - checkpoints into a gzip stream, and inflating a span from one.
 *
 * The idea is zlib's examples/zran.c (Mark Adler): inflate the stream once with
 * Z_BLOCK, which returns at every deflate block boundary; at a boundary the
 * decoder needs nothing of the past but the compressed position (a byte and a
 * bit offset) and the last 32 KiB of output, its window.  Keep those every so
 * often and any later byte of output can be had by inflating from the
 * checkpoint before it (inflatePrime for the bits, inflateSetDictionary for the
 * window).  Written for lazylayer from zlib's documented API; no zran code.
 *
 * Member boundaries: the indexer inflates in gzip mode (zlib checks every
 * member's header, CRC-32 and length) and starts each member afresh; a span
 * decoder, which starts inside a member in raw mode, skips that member's
 * 8-byte trailer at its end (its CRC-32 covers bytes before the checkpoint,
 * which the decoder never sees) and inflates any later member in gzip mode. */
#include "internal.h"

#include <stdlib.h>
#include <zlib.h>

#define CHUNK_MAX (1u << 30) /* per zlib call: avail_in / avail_out are uInt */

typedef struct node {
    struct node *next;
    ll_gz_checkpoint cp;
} node;

struct ll_gzindexer {
    z_stream zs;
    int state;         /* LL_OK, or the status it failed with */
    int in_member;     /* between a member's first byte and its end */
    int complete;      /* the input so far ends at the end of a member */
    int have_last;     /* a checkpoint was taken */
    int skip_crc;      /* ll_gzindexer_skip_crc: members' CRC-32s not computed */
    uint8_t prev;      /* the last input byte consumed (the partial byte of a checkpoint) */
    uint64_t span, last, total_in, total_out;
    node *head, *tail; /* checkpoints not yet taken, oldest first */
};

int ll_gzindexer_create(uint64_t span, ll_gzindexer **out) {
    if (!out || span == 0) return LL_ERR_ARG;
    *out = NULL;
    ll_gzindexer *g = calloc(1, sizeof *g);
    if (!g) return LL_ERR_NOMEM;
    if (inflateInit2(&g->zs, 31) != Z_OK) { /* gzip only */
        free(g);
        return LL_ERR_NOMEM;
    }
    g->span = span;
    *out = g;
    return LL_OK;
}

void ll_gzindexer_free(ll_gzindexer *g) {
    if (!g) return;
    inflateEnd(&g->zs);
    for (node *n = g->head, *next; n; n = next) {
        next = n->next;
        free(n);
    }
    free(g);
}

static int fail(ll_gzindexer *g, int rc) {
    g->state = rc;
    return rc;
}

/* A checkpoint here: the decoder sits at a block boundary (or right after a header). */
static int checkpoint(ll_gzindexer *g) {
    node *n = malloc(sizeof *n);
    if (!n) return LL_ERR_NOMEM;
    n->next = NULL;
    ll_gz_checkpoint *cp = &n->cp;
    cp->in = g->total_in;
    cp->out = g->total_out;
    cp->bits = (uint32_t)g->zs.data_type & 7;
    cp->byte = cp->bits ? g->prev : 0;
    uInt len = 0;
    if (inflateGetDictionary(&g->zs, cp->window, &len) != Z_OK || len > LL_GZ_WINDOW) {
        free(n);
        return LL_ERR_FRAME;
    }
    cp->window_size = len;
    if (g->tail) g->tail->next = n;
    else g->head = n;
    g->tail = n;
    g->last = g->total_out;
    g->have_last = 1;
    return LL_OK;
}

int ll_gzindexer_inflate(ll_gzindexer *g, const void *in, size_t in_len, size_t *in_used,
                         void *out, size_t out_cap, size_t *out_len) {
    if (in_used) *in_used = 0;
    if (out_len) *out_len = 0;
    if (!g || !in_used || !out_len || (!in && in_len) || (!out && out_cap)) return LL_ERR_ARG;
    if (g->state != LL_OK) return LL_ERR_STATE;
    const uint8_t *src = in;
    uint8_t *dst = out;
    size_t ip = 0, op = 0;
    int rc = LL_OK;
    while (ip < in_len && op < out_cap) {
        if (!g->in_member) { /* a member starts here: the stream's first, or one after a member's end */
            if (inflateReset2(&g->zs, 31) != Z_OK || (g->skip_crc && inflateValidate(&g->zs, 0) != Z_OK)) {
                rc = LL_ERR_FRAME;
                break;
            }
            g->in_member = 1;
            g->complete = 0;
        }
        size_t ia = in_len - ip, oa = out_cap - op;
        g->zs.next_in = (Bytef *)(uintptr_t)(src + ip);
        g->zs.avail_in = (uInt)(ia < CHUNK_MAX ? ia : CHUNK_MAX);
        g->zs.next_out = dst + op;
        g->zs.avail_out = (uInt)(oa < CHUNK_MAX ? oa : CHUNK_MAX);
        int z = inflate(&g->zs, Z_BLOCK);
        size_t used = (size_t)(g->zs.next_in - (src + ip)), made = (size_t)(g->zs.next_out - (dst + op));
        if (used) g->prev = src[ip + used - 1];
        ip += used;
        op += made;
        g->total_in += used;
        g->total_out += made;
        if (z == Z_STREAM_END) { /* header, data, CRC-32 and length all checked by zlib */
            g->in_member = 0;
            g->complete = 1;
            continue;
        }
        if (z == Z_MEM_ERROR || (z != Z_OK && z != Z_BUF_ERROR)) { /* not gzip, or corrupt */
            rc = z == Z_MEM_ERROR ? LL_ERR_NOMEM : LL_ERR_FRAME;
            break;
        }
        if (used == 0 && made == 0) break; /* (Z_BUF_ERROR) it needs more input or more room */
        /* At a block boundary that is not past the member's last block: take one every `span` bytes. */
        if ((g->zs.data_type & 128) && !(g->zs.data_type & 64) &&
            (!g->have_last || g->total_out - g->last >= g->span)) {
            rc = checkpoint(g);
            if (rc != LL_OK) break;
        }
    }
    /* On a failure too: what was consumed and produced before it (and the checkpoints taken so far
     * lie within that output); the indexer is then failed. */
    *in_used = ip;
    *out_len = op;
    return rc == LL_OK ? LL_OK : fail(g, rc);
}

int ll_gzindexer_skip_crc(ll_gzindexer *g) {
    if (!g) return LL_ERR_ARG;
    if (g->total_in || g->state != LL_OK) return LL_ERR_STATE;
    g->skip_crc = 1;
    return LL_OK;
}

int ll_gzindexer_complete(const ll_gzindexer *g) { return g && g->state == LL_OK && g->complete; }

void ll_gzindexer_totals(const ll_gzindexer *g, uint64_t *in, uint64_t *out) {
    if (in) *in = g ? g->total_in : 0;
    if (out) *out = g ? g->total_out : 0;
}

int ll_gzindexer_take(ll_gzindexer *g, ll_gz_checkpoint *cp) {
    if (!g || !cp) return LL_ERR_ARG;
    node *n = g->head;
    if (!n) return LL_ERR_NOENT;
    g->head = n->next;
    if (!g->head) g->tail = NULL;
    memcpy(cp, &n->cp, sizeof *cp);
    free(n);
    return LL_OK;
}

int ll_gz_inflate_span(uint32_t bits, uint32_t byte, const void *window, size_t window_size,
                       const void *src, size_t src_len, void *dst, size_t size) {
    if (bits > 7 || byte > 255 || window_size > LL_GZ_WINDOW || (!window && window_size) ||
        (!src && src_len) || (!dst && size))
        return LL_ERR_ARG;
    if (size == 0) return LL_OK;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, -15) != Z_OK) return LL_ERR_NOMEM; /* raw deflate: inside a member */
    int rc = LL_OK, raw = 1;
    if (bits && inflatePrime(&zs, (int)bits, (int)(byte >> (8 - bits))) != Z_OK) rc = LL_ERR_FRAME;
    if (rc == LL_OK && window_size && inflateSetDictionary(&zs, window, (uInt)window_size) != Z_OK)
        rc = LL_ERR_FRAME;
    const uint8_t *in = src;
    uint8_t *out = dst;
    size_t ip = 0, op = 0;
    while (rc == LL_OK && op < size) {
        size_t ia = src_len - ip, oa = size - op;
        zs.next_in = (Bytef *)(uintptr_t)(in + ip);
        zs.avail_in = (uInt)(ia < CHUNK_MAX ? ia : CHUNK_MAX);
        zs.next_out = out + op;
        zs.avail_out = (uInt)(oa < CHUNK_MAX ? oa : CHUNK_MAX);
        int z = inflate(&zs, Z_NO_FLUSH);
        size_t used = (size_t)(zs.next_in - (in + ip)), made = (size_t)(zs.next_out - (out + op));
        ip += used;
        op += made;
        if (z == Z_STREAM_END) {
            if (op == size) break;
            if (raw) { /* the trailer of the member the span began in: unchecked, see above */
                if (src_len - ip < 8) {
                    rc = LL_ERR_FRAME;
                    break;
                }
                ip += 8;
                raw = 0;
            }
            if (inflateReset2(&zs, 31) != Z_OK) rc = LL_ERR_FRAME; /* the next member, in gzip mode */
            continue;
        }
        if (z == Z_MEM_ERROR) rc = LL_ERR_NOMEM;
        else if (z != Z_OK && z != Z_BUF_ERROR) rc = LL_ERR_FRAME;
        else if (used == 0 && made == 0) rc = LL_ERR_FRAME; /* the span ended before `size` bytes */
    }
    inflateEnd(&zs);
    return rc;
}
