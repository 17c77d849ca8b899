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
 * which the decoder never sees) and inflates any later member in gzip mode.
 *
 * The indexer needs zlib's Z_BLOCK; the span decoder (on every read of a span)
 * and ll__inflate_gzip (an eStargz chunk's member) use ISA-L's inflate, about
 * twice as fast: its bit buffer (read_in, read_in_length, public fields of
 * struct inflate_state) takes the checkpoint's bits as inflatePrime would. */
#include "internal.h"

#include <isa-l/igzip_lib.h>
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

/* The input a stopped isal_inflate has not consumed: what follows next_in, and
 * the whole bytes still in its bit buffer (the bits below a byte are the end of
 * the deflate stream's last byte). */
static size_t isal_consumed(const struct inflate_state *st, const uint8_t *in) {
    return (size_t)(st->next_in - in) - (size_t)(st->read_in_length / 8);
}

int ll__inflate_gzip(const void *src, size_t src_len, void *dst, size_t size) {
    void *state = NULL;
    int rc = ll__inflate_gzip_reuse(&state, src, src_len, dst, size);
    free(state);
    return rc;
}

int ll__inflate_gzip_reuse(void **state, const void *src, size_t src_len, void *dst, size_t size) {
    if (!state || (!src && src_len) || (!dst && size) || src_len > UINT32_MAX || size > UINT32_MAX)
        return LL_ERR_ARG;
    struct inflate_state *st = *state;
    if (!st && !(st = *state = malloc(sizeof *st))) /* ~50 KiB: not on a server thread's stack */
        return LL_ERR_NOMEM;
    isal_inflate_init(st);
    st->crc_flag = ISAL_GZIP;
    st->next_in = (uint8_t *)(uintptr_t)src;
    st->avail_in = (uint32_t)src_len;
    st->next_out = dst;
    st->avail_out = (uint32_t)size;
    while (st->avail_out > 0) {
        uint32_t in0 = st->avail_in, out0 = st->avail_out;
        if (isal_inflate(st) != ISAL_DECOMP_OK || st->block_state == ISAL_BLOCK_FINISH) break;
        if (st->avail_in == in0 && st->avail_out == out0) break; /* input used up */
    }
    return st->avail_out == 0 ? LL_OK : LL_ERR_FRAME;
}

int ll_gz_inflate_span(uint32_t bits, uint32_t byte, const void *window, size_t window_size,
                       const void *src, size_t src_len, void *dst, size_t size) {
    if (bits > 7 || byte > 255 || window_size > LL_GZ_WINDOW || (!window && window_size) ||
        (!src && src_len) || (!dst && size))
        return LL_ERR_ARG;
    if (size == 0) return LL_OK;
    struct inflate_state *st = malloc(sizeof *st); /* ~50 KiB: not on a server thread's stack */
    if (!st) return LL_ERR_NOMEM;
    isal_inflate_init(st); /* raw deflate: inside a member */
    int rc = LL_OK, raw = 1;
    if (window_size && isal_inflate_set_dict(st, (uint8_t *)(uintptr_t)window, (uint32_t)window_size) != COMP_OK)
        rc = LL_ERR_FRAME;
    if (bits) { /* the low bits of the byte before the span start its first block (as inflatePrime) */
        st->read_in = byte >> (8 - bits);
        st->read_in_length = (int32_t)bits;
    }
    const uint8_t *in = src;
    uint8_t *out = dst;
    size_t ip = 0, op = 0; /* input handed over (some of it may sit in the bit buffer), output made */
    st->avail_in = 0;
    while (rc == LL_OK && op < size) {
        if (st->avail_in == 0) { /* (re)fill: avail_in / avail_out are 32-bit */
            size_t ia = src_len - ip;
            st->next_in = (uint8_t *)(uintptr_t)(in + ip);
            st->avail_in = (uint32_t)(ia < CHUNK_MAX ? ia : CHUNK_MAX);
            ip += st->avail_in;
        }
        size_t oa = size - op;
        st->next_out = out + op;
        st->avail_out = (uint32_t)(oa < CHUNK_MAX ? oa : CHUNK_MAX);
        uint32_t in0 = st->avail_in;
        int32_t bits0 = st->read_in_length;
        int r = isal_inflate(st);
        size_t made = (size_t)(st->next_out - (out + op));
        op += made;
        if (r != ISAL_DECOMP_OK) {
            rc = LL_ERR_FRAME;
            break;
        }
        if (st->block_state == ISAL_BLOCK_FINISH) {
            if (op == size) break;
            /* A member ended: go on after it.  Where its deflate data ends in the input: */
            size_t at = isal_consumed(st, in);
            if (raw) { /* the trailer of the member the span began in: unchecked, see above */
                if (src_len - at < 8) {
                    rc = LL_ERR_FRAME;
                    break;
                }
                at += 8;
                raw = 0;
            }
            isal_inflate_reset(st); /* the next member, in gzip mode: header, CRC-32 and length checked */
            st->crc_flag = ISAL_GZIP;
            ip = at;
            st->avail_in = 0;
            continue;
        }
        if (made == 0 && st->avail_in == in0 && st->read_in_length == bits0 && ip == src_len)
            rc = LL_ERR_FRAME; /* the span ended before `size` bytes */
    }
    free(st);
    return rc;
}
