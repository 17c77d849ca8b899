/* writer.c - write the zstd seekable format: independent frames, then the seek table.
 *
 * Data is cut into frames of frame_size bytes (or where the caller ends a frame).
 * With a pool, frames are collected into batches of (threads + 1), double
 * buffered: while the pool compresses one batch, the caller fills the other,
 * and a batch's frames are handed to the write callback in order once done. */
#include "internal.h"

#include <stdlib.h>
#include <zstd.h>

typedef struct {
    const ll_writer_options *opt;
    const uint8_t *src;
    size_t len;
    uint8_t *dst;
    size_t dst_cap;
    size_t out_len;
    uint32_t checksum;
    uint8_t sha256[32];  /* of dst[0 .. out_len) */
    int status;
} slot;

struct ll_writer {
    ll_writer_options opt;
    ll_write_fn write;
    void *opaque;
    ll__worker *self;
    size_t nslots;       /* frames per batch */
    slot *slots;         /* 2 * nslots: two batches */
    uint8_t *in;         /* 2 * nslots * frame_size */
    int fill;            /* the batch being filled (0 or 1) */
    size_t used;         /* slots filled in it (the last may be open) */
    size_t cur;          /* bytes in the open frame (slot `used`) */
    ll__batch pending;   /* the other batch, being compressed by the pool */
    size_t pending_n;    /* its frames; 0 when nothing is pending */
    /* frame log */
    uint32_t *log;       /* 3 words per frame: c_size, d_size, checksum */
    uint8_t *digests;    /* 32 bytes per frame: its sha256 */
    uint32_t nframes, log_cap;
    uint64_t bytes_in, bytes_out;
    int state;           /* 0 open, 1 finished, <0 failed with that status */
};

static void writer_defaults(ll_writer_options *o) {
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->level = 3;
    o->frame_size = LL_DEFAULT_FRAME_SIZE;
    o->checksum = 1;
}

int ll_writer_options_init(ll_writer_options *opt, size_t struct_size) {
    ll_writer_options d;
    writer_defaults(&d);
    return ll__options_init(opt, struct_size, &d, sizeof d, LL__WRITER_OPTIONS_V1);
}

static slot *batch_slots(ll_writer *w, int k) { return w->slots + (size_t)k * w->nslots; }
static uint8_t *batch_in(ll_writer *w, int k) { return w->in + (size_t)k * w->nslots * w->opt.frame_size; }

void ll_writer_free(ll_writer *w) {
    if (!w) return;
    if (w->pending_n) ll__pool_wait(w->opt.pool, &w->pending, w->self); /* workers use its buffers */
    if (w->slots)
        for (size_t i = 0; i < 2 * w->nslots; i++) free(w->slots[i].dst);
    free(w->slots);
    free(w->in);
    free(w->log);
    free(w->digests);
    ll__worker_free(w->self);
    free(w);
}

int ll_writer_create(const ll_writer_options *opt, ll_write_fn write, void *opaque,
                     ll_writer **out) {
    if (!write || !out) return LL_ERR_ARG;
    *out = NULL;
    ll_writer_options o; /* the caller's options over the defaults (struct_size honoured) */
    writer_defaults(&o);
    if (opt && ll__options_copy(&o, sizeof o, opt, LL__WRITER_OPTIONS_V1) != LL_OK) return LL_ERR_ARG;
    opt = &o;
    if (opt->frame_size == 0 || opt->frame_size > LL_MAX_FRAME_SIZE) return LL_ERR_ARG;
    if (!opt->stored && (opt->level < ZSTD_minCLevel() || opt->level > ZSTD_maxCLevel())) return LL_ERR_ARG;
    if (opt->stored != 0 && opt->stored != 1) return LL_ERR_ARG;
    ll_writer *w = calloc(1, sizeof *w);
    if (!w) return LL_ERR_NOMEM;
    w->opt = *opt;
    w->write = write;
    w->opaque = opaque;
    w->nslots = (size_t)ll_pool_threads(opt->pool) + 1;
    w->self = ll__worker_new();
    w->slots = calloc(2 * w->nslots, sizeof *w->slots);
    w->in = malloc(2 * w->nslots * (size_t)opt->frame_size);
    if (!w->self || !w->slots || !w->in) {
        ll_writer_free(w);
        return LL_ERR_NOMEM;
    }
    /* (A stored frame needs 9 + 3 bytes per 128 KiB more than its data: within the bound.) */
    size_t bound = ZSTD_compressBound(opt->frame_size);
    for (size_t i = 0; i < 2 * w->nslots; i++) {
        w->slots[i].opt = &w->opt;
        w->slots[i].dst = malloc(bound);
        w->slots[i].dst_cap = bound;
        if (!w->slots[i].dst) {
            ll_writer_free(w);
            return LL_ERR_NOMEM;
        }
    }
    *out = w;
    return LL_OK;
}

static int fail(ll_writer *w, int rc) {
    if (w->state == 0) w->state = rc;
    return rc;
}

static int log_frame(ll_writer *w, uint32_t c, uint32_t d, uint32_t sum, const uint8_t sha256[32]) {
    if (w->nframes >= LL_MAX_FRAMES) return LL_ERR_LIMIT;
    if (w->nframes == w->log_cap) {
        uint32_t cap = w->log_cap ? w->log_cap * 2 : 256;
        uint32_t *p = realloc(w->log, (size_t)cap * 3 * sizeof *p);
        if (!p) return LL_ERR_NOMEM;
        w->log = p;
        uint8_t *q = realloc(w->digests, (size_t)cap * 32);
        if (!q) return LL_ERR_NOMEM;
        w->digests = q;
        w->log_cap = cap;
    }
    uint32_t *e = &w->log[(size_t)w->nframes * 3];
    e[0] = c;
    e[1] = d;
    e[2] = sum;
    memcpy(w->digests + (size_t)w->nframes * 32, sha256, 32);
    w->nframes++;
    return LL_OK;
}

/* A zstd frame of raw blocks holding src as is (RFC 8878: a single-segment frame
 * header with a 4-byte content size, then blocks of at most 128 KiB, each a
 * 3-byte header: last-block bit, block type 0 = raw, size).  Its size, or 0 if it
 * does not fit in cap. */
static size_t store_frame(uint8_t *dst, size_t cap, const uint8_t *src, size_t len) {
    enum { BLOCK = 128 * 1024 };
    if (len == 0 || len > UINT32_MAX || 9 + 3 * ((len + BLOCK - 1) / BLOCK) + len > cap) return 0;
    uint8_t *p = dst;
    ll__put_le32(p, ZSTD_MAGICNUMBER);
    p[4] = 0xA0; /* Frame_Header_Descriptor: FCS_Field_Size 2 (4 bytes), Single_Segment */
    ll__put_le32(p + 5, (uint32_t)len);
    p += 9;
    for (size_t done = 0; done < len;) {
        size_t n = len - done < BLOCK ? len - done : BLOCK;
        uint32_t header = (uint32_t)(done + n == len) | (uint32_t)n << 3; /* type 0: raw */
        p[0] = (uint8_t)header;
        p[1] = (uint8_t)(header >> 8);
        p[2] = (uint8_t)(header >> 16);
        memcpy(p + 3, src + done, n);
        p += 3 + n;
        done += n;
    }
    return (size_t)(p - dst);
}

static void compress_task(void *arg, size_t index, ll__worker *wk) {
    slot *s = &((slot *)arg)[index];
    const ll_writer_options *opt = s->opt;
    if (opt->stored) {
        s->out_len = store_frame(s->dst, s->dst_cap, s->src, s->len);
        s->checksum = opt->checksum ? ll__frame_checksum(s->src, s->len) : 0;
        s->status = s->out_len ? LL_OK : LL_ERR_COMPRESS;
        if (s->out_len) ll_sha256(s->dst, s->out_len, s->sha256);
        return;
    }
    ZSTD_CCtx *cctx = ll__worker_cctx(wk);
    if (!cctx) {
        s->status = LL_ERR_NOMEM;
        return;
    }
    ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, opt->level);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1);
    size_t n = ZSTD_compress2(cctx, s->dst, s->dst_cap, s->src, s->len);
    if (ZSTD_isError(n)) {
        s->status = LL_ERR_COMPRESS;
        return;
    }
    s->out_len = n;
    s->checksum = opt->checksum ? ll__frame_checksum(s->src, s->len) : 0;
    ll_sha256(s->dst, n, s->sha256);
    s->status = LL_OK;
}

/* Wait for the pending batch and write its frames in order. */
static int complete_pending(ll_writer *w) {
    size_t n = w->pending_n;
    if (n == 0) return LL_OK;
    ll__pool_wait(w->opt.pool, &w->pending, w->self);
    w->pending_n = 0;
    slot *slots = batch_slots(w, w->fill ^ 1);
    for (size_t i = 0; i < n; i++) {
        slot *s = &slots[i];
        if (s->status != LL_OK) return s->status;
        int rc = ll__callback_status(w->write(w->opaque, s->dst, s->out_len));
        if (rc != LL_OK) return rc;
        rc = log_frame(w, (uint32_t)s->out_len, (uint32_t)s->len, s->checksum, s->sha256);
        if (rc != LL_OK) return rc;
        w->bytes_out += s->out_len;
    }
    return LL_OK;
}

/* Hand the batch being filled to the pool and switch to the other one (after
 * writing out the batch that was pending there).  Without a pool worker the
 * batch is compressed and written right away. */
static int flush_batch(ll_writer *w) {
    size_t n = w->used;
    if (n == 0) return LL_OK;
    slot *slots = batch_slots(w, w->fill);
    for (size_t i = 0; i < n; i++) slots[i].src = batch_in(w, w->fill) + i * (size_t)w->opt.frame_size;
    int rc = complete_pending(w);
    if (rc != LL_OK) return rc;
    ll__pool_submit(w->opt.pool, &w->pending, compress_task, slots, n);
    w->pending_n = n;
    w->fill ^= 1;
    w->used = 0;
    if (ll_pool_threads(w->opt.pool) == 0) return complete_pending(w);
    return LL_OK;
}

static int close_frame(ll_writer *w) {
    if (w->cur == 0) return LL_OK;
    batch_slots(w, w->fill)[w->used].len = w->cur;
    w->used++;
    w->cur = 0;
    return w->used == w->nslots ? flush_batch(w) : LL_OK;
}

int ll_writer_write(ll_writer *w, const void *src, size_t size) {
    if (!w || (!src && size)) return LL_ERR_ARG;
    if (w->state != 0) return LL_ERR_STATE;
    const uint8_t *p = src;
    while (size > 0) {
        size_t room = w->opt.frame_size - w->cur;
        size_t n = size < room ? size : room;
        memcpy(batch_in(w, w->fill) + w->used * (size_t)w->opt.frame_size + w->cur, p, n);
        w->cur += n;
        w->bytes_in += n;
        p += n;
        size -= n;
        if (w->cur == w->opt.frame_size) {
            int rc = close_frame(w);
            if (rc != LL_OK) return fail(w, rc);
        }
    }
    return LL_OK;
}

int ll_writer_end_frame(ll_writer *w) {
    if (!w) return LL_ERR_ARG;
    if (w->state != 0) return LL_ERR_STATE;
    int rc = close_frame(w);
    return rc == LL_OK ? rc : fail(w, rc);
}

int ll_writer_flush(ll_writer *w) {
    if (!w) return LL_ERR_ARG;
    if (w->state != 0) return LL_ERR_STATE;
    int rc = close_frame(w);
    if (rc == LL_OK) rc = flush_batch(w);
    if (rc == LL_OK) rc = complete_pending(w);
    return rc == LL_OK ? rc : fail(w, rc);
}

int ll_writer_add_skippable(ll_writer *w, unsigned variant, const void *data, size_t size) {
    if (!w || variant > 15 || (!data && size) || size > UINT32_MAX - LL_SKIPPABLE_HEADER_SIZE)
        return LL_ERR_ARG;
    int rc = ll_writer_flush(w);
    if (rc != LL_OK) return rc;
    /* Header and payload in one write call: every frame reaches the callback whole. */
    uint8_t *frame = malloc(LL_SKIPPABLE_HEADER_SIZE + size);
    if (!frame) return fail(w, LL_ERR_NOMEM);
    ll__put_le32(frame, 0x184D2A50u + variant);
    ll__put_le32(frame + 4, (uint32_t)size);
    if (size) memcpy(frame + LL_SKIPPABLE_HEADER_SIZE, data, size);
    uint8_t digest[32];
    ll_sha256(frame, LL_SKIPPABLE_HEADER_SIZE + size, digest);
    rc = ll__callback_status(w->write(w->opaque, frame, LL_SKIPPABLE_HEADER_SIZE + size));
    free(frame);
    if (rc != LL_OK) return fail(w, rc);
    rc = log_frame(w, (uint32_t)(LL_SKIPPABLE_HEADER_SIZE + size), 0, ll__frame_checksum("", 0), digest);
    if (rc != LL_OK) return fail(w, rc);
    w->bytes_out += LL_SKIPPABLE_HEADER_SIZE + size;
    return LL_OK;
}

int ll_writer_finish(ll_writer *w) {
    if (!w) return LL_ERR_ARG;
    int rc = ll_writer_flush(w);
    if (rc != LL_OK) return rc;
    size_t entry = w->opt.checksum ? 12 : 8;
    size_t total = LL_SKIPPABLE_HEADER_SIZE + (size_t)w->nframes * entry + LL_SEEKTABLE_FOOTER_SIZE;
    uint8_t *t = malloc(total);
    if (!t) return fail(w, LL_ERR_NOMEM);
    ll__put_le32(t, LL_SKIPPABLE_MAGIC);
    ll__put_le32(t + 4, (uint32_t)(total - LL_SKIPPABLE_HEADER_SIZE));
    uint8_t *e = t + LL_SKIPPABLE_HEADER_SIZE;
    for (uint32_t i = 0; i < w->nframes; i++, e += entry) {
        ll__put_le32(e, w->log[i * 3]);
        ll__put_le32(e + 4, w->log[i * 3 + 1]);
        if (w->opt.checksum) ll__put_le32(e + 8, w->log[i * 3 + 2]);
    }
    ll__put_le32(e, w->nframes);
    e[4] = w->opt.checksum ? 0x80 : 0;
    ll__put_le32(e + 5, LL_SEEKABLE_MAGIC);
    rc = ll__callback_status(w->write(w->opaque, t, total));
    free(t);
    if (rc != LL_OK) return fail(w, rc);
    w->bytes_out += total;
    w->state = 1;
    return LL_OK;
}

uint64_t ll_writer_bytes_in(const ll_writer *w) { return w->bytes_in; }
uint64_t ll_writer_bytes_out(const ll_writer *w) { return w->bytes_out; }
uint32_t ll_writer_frames(const ll_writer *w) { return w->nframes; }

int ll_writer_frame(const ll_writer *w, uint32_t i, uint32_t *c_size, uint32_t *d_size) {
    if (!w || i >= w->nframes) return LL_ERR_ARG;
    if (c_size) *c_size = w->log[(size_t)i * 3];
    if (d_size) *d_size = w->log[(size_t)i * 3 + 1];
    return LL_OK;
}

int ll_writer_frame_sha256(const ll_writer *w, uint32_t i, uint8_t out[32]) {
    if (!w || !out || i >= w->nframes) return LL_ERR_ARG;
    memcpy(out, w->digests + (size_t)i * 32, 32);
    return LL_OK;
}
