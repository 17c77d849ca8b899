/* reader.c - read any byte range of a seekable zstd stream.
 *
 * A read finds the frames it touches from the seek table.  Frames already in
 * the cache are copied out.  For the rest, the compressed bytes of each run of
 * consecutive frames are requested from the host in one callback, then the
 * frames are decoded (in parallel on the pool when there are several):
 * frames the read covers whole go straight into the caller's buffer; a frame
 * covered in part is decoded into a cache buffer (or a reused scratch buffer
 * when uncached) and the requested slice copied out.
 *
 * Each concurrent call borrows a workspace (zstd context, input and scratch
 * buffers) from the reader's free list and returns it, so steady-state reads
 * allocate nothing.  The buffers come from the cache's buffer pool (mmap'd,
 * never malloc's arenas: see internal.h); an idle workspace keeps at most
 * WS_KEEP bytes in each, so one huge read does not pin its buffers for good. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#define ZSTD_STATIC_LINKING_ONLY /* buffer-less streaming: see decode() */
#include <zstd.h>

typedef struct task {
    uint32_t frame;
    const uint8_t *src;  /* compressed bytes */
    uint8_t *dst;        /* where the whole frame goes */
    int status;
} task;

#define WS_KEEP (4u << 20)

typedef struct workspace {
    ll__worker *w;
    uint8_t *in;
    size_t in_cap;
    uint8_t *out;
    size_t out_cap;
    task *tasks;
    size_t tasks_cap;
    struct workspace *next;
} workspace;

struct ll_reader {
    ll_seektable *st;
    ll_read_fn read;
    ll__read_ex_fn read_ex; /* image.c's, or NULL */
    void *opaque;
    ll_cache *cache;
    ll_pool *pool;
    ll__bufpool *bufs;   /* the cache's buffer pool, or NULL (map and unmap) */
    uint64_t source;
    int verify;
    int whole_frames;
    int local_only;      /* ll__reader_set_local_only */
    int raw;             /* ll__reader_set_raw */
    uint64_t max_fetch;
    pthread_mutex_t ws_lock;
    workspace *free_ws;
};

static void reader_defaults(ll_reader_options *o) {
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->verify_checksums = 1;
    o->max_frame_size = LL_DEFAULT_MAX_FRAME_SIZE;
    o->max_fetch_bytes = 64u << 20;
}

int ll_reader_options_init(ll_reader_options *opt, size_t struct_size) {
    ll_reader_options d;
    reader_defaults(&d);
    return ll__options_init(opt, struct_size, &d, sizeof d, LL__READER_OPTIONS_V1);
}

int ll_reader_create(ll_seektable *st, ll_read_fn read, void *opaque,
                     const ll_reader_options *opt, ll_reader **out) {
    if (!st || !read || !out) return LL_ERR_ARG;
    *out = NULL;
    ll_reader_options o; /* the caller's options over the defaults (struct_size honoured) */
    reader_defaults(&o);
    if (opt && ll__options_copy(&o, sizeof o, opt, LL__READER_OPTIONS_V1) != LL_OK) return LL_ERR_ARG;
    opt = &o;
    if (opt->max_frame_size == 0 || opt->max_frame_size > LL_MAX_FRAME_SIZE) return LL_ERR_ARG;
    if (st->max_d_size > opt->max_frame_size) return LL_ERR_LIMIT;
    /* A real frame is never much larger than its data: bounding compressed sizes
     * bounds the input buffers a hostile table could make us allocate. */
    uint64_t c_limit = ZSTD_compressBound(opt->max_frame_size) + 4096;
    for (uint32_t i = 0; i < st->n; i++) {
        if (st->d_off[i + 1] != st->d_off[i] && st->c_off[i + 1] - st->c_off[i] > c_limit)
            return LL_ERR_LIMIT;
    }
    ll_reader *r = calloc(1, sizeof *r);
    if (!r) return LL_ERR_NOMEM;
    r->st = st;
    r->read = read;
    r->opaque = opaque;
    r->cache = opt->cache;
    r->pool = opt->pool;
    r->bufs = ll__cache_bufpool(r->cache);
    r->verify = opt->verify_checksums;
    r->whole_frames = opt->whole_frames;
    r->max_fetch = opt->max_fetch_bytes ? opt->max_fetch_bytes : (64u << 20);
    if (r->cache) r->source = opt->source_key ? opt->source_key : ll__cache_new_source(r->cache);
    pthread_mutex_init(&r->ws_lock, NULL);
    *out = r;
    return LL_OK;
}

static void ws_free(ll_reader *r, workspace *ws) {
    ll__worker_free(ws->w);
    ll__buf_put(r->bufs, ws->in, ws->in_cap);
    ll__buf_put(r->bufs, ws->out, ws->out_cap);
    free(ws->tasks);
    free(ws);
}

void ll_reader_free(ll_reader *r) {
    if (!r) return;
    workspace *ws = r->free_ws;
    while (ws) {
        workspace *next = ws->next;
        ws_free(r, ws);
        ws = next;
    }
    pthread_mutex_destroy(&r->ws_lock);
    ll_seektable_free(r->st);
    free(r);
}

void ll__reader_set_read_ex(ll_reader *r, ll__read_ex_fn read_ex) { r->read_ex = read_ex; }
void ll__reader_set_local_only(ll_reader *r) { r->local_only = 1; }
void ll__reader_set_raw(ll_reader *r) { r->raw = 1; }

const ll_seektable *ll_reader_seektable(const ll_reader *r) { return r->st; }
uint64_t ll_reader_size(const ll_reader *r) { return r->st->d_off[r->st->n]; }

static workspace *ws_get(ll_reader *r) {
    pthread_mutex_lock(&r->ws_lock);
    workspace *ws = r->free_ws;
    if (ws) r->free_ws = ws->next;
    pthread_mutex_unlock(&r->ws_lock);
    if (ws) return ws;
    ws = calloc(1, sizeof *ws);
    if (!ws) return NULL;
    ws->w = ll__worker_new();
    if (!ws->w) {
        free(ws);
        return NULL;
    }
    return ws;
}

static void ws_put(ll_reader *r, workspace *ws) {
    if (ws->in_cap > WS_KEEP) {
        ll__buf_put(r->bufs, ws->in, ws->in_cap);
        ws->in = NULL;
        ws->in_cap = 0;
    }
    if (ws->out_cap > WS_KEEP) {
        ll__buf_put(r->bufs, ws->out, ws->out_cap);
        ws->out = NULL;
        ws->out_cap = 0;
    }
    pthread_mutex_lock(&r->ws_lock);
    ws->next = r->free_ws;
    r->free_ws = ws;
    pthread_mutex_unlock(&r->ws_lock);
}

static int grow(ll__bufpool *bufs, uint8_t **buf, size_t *cap, size_t need) {
    if (*cap >= need) return LL_OK;
    size_t got;
    uint8_t *p = ll__buf_get(bufs, need, SIZE_MAX, &got); /* contents need not survive: no copy */
    if (!p) return LL_ERR_NOMEM;
    ll__buf_put(bufs, *buf, *cap);
    *buf = p;
    *cap = got;
    return LL_OK;
}

/* Frames must be decoded whole and checked before use. */
static int must_verify(const ll_reader *r) { return r->verify && r->st->has_checksums; }

static uint32_t c_size(const ll_seektable *st, uint32_t i) { return (uint32_t)(st->c_off[i + 1] - st->c_off[i]); }
static uint32_t d_size(const ll_seektable *st, uint32_t i) { return (uint32_t)(st->d_off[i + 1] - st->d_off[i]); }

/* Room a prefix decode of `len` bytes of a `ds`-byte frame may fill: zstd
 * decodes whole blocks, so up to one block past `len`. */
static uint32_t prefix_room(uint32_t len, uint32_t ds) {
    return ds - len < ZSTD_BLOCKSIZE_MAX ? ds : len + ZSTD_BLOCKSIZE_MAX;
}

/* Decode frame i from its compressed bytes `src` into dst.
 * len == the frame's size: decoded in one shot, checked to fill exactly its
 * table size, and verified against its checksum.  Otherwise a prefix: blocks
 * are decoded straight into dst (room for prefix_room(len, ds) bytes) until at
 * least `len` bytes are out; *produced says how many. */
static int decode(const ll_reader *r, ll__worker *w, uint32_t i, const uint8_t *src,
                  uint8_t *dst, uint32_t len, uint32_t *produced) {
    const ll_seektable *st = r->st;
    uint32_t cs = c_size(st, i), ds = d_size(st, i);
    if (r->raw) { /* a raw frame is its data: (a prefix of) it is copied */
        if (cs != ds || len > ds) return LL_ERR_FRAME;
        memcpy(dst, src, len);
        *produced = len;
        return LL_OK;
    }
    ZSTD_DCtx *dctx = ll__worker_dctx(w);
    if (!dctx) return LL_ERR_NOMEM;
    /* A size in the frame header must agree with the table (a prefix decode
     * would not see the frame end to check it otherwise). */
    unsigned long long fcs = ZSTD_getFrameContentSize(src, cs);
    if (fcs == ZSTD_CONTENTSIZE_ERROR || (fcs != ZSTD_CONTENTSIZE_UNKNOWN && fcs != ds))
        return LL_ERR_FRAME;
    if (len == ds) {
        size_t fs = ZSTD_findFrameCompressedSize(src, cs);
        if (ZSTD_isError(fs) || fs != cs) return LL_ERR_FRAME;
        size_t got = ZSTD_decompressDCtx(dctx, dst, ds, src, cs);
        if (ZSTD_isError(got) || got != ds) return LL_ERR_FRAME;
        if (r->verify && st->has_checksums && ll__frame_checksum(dst, ds) != st->checksum[i])
            return LL_ERR_CHECKSUM;
        *produced = ds;
        return LL_OK;
    }
    /* zstd's buffer-less streaming API: each step decodes one block directly
     * after the previous output, so nothing is copied through a window buffer
     * and decoding stops one block past what the read needs. */
    size_t room = prefix_room(len, ds), out = 0, in = 0;
    if (ZSTD_isError(ZSTD_decompressBegin(dctx))) return LL_ERR_FRAME;
    while (out < len) {
        size_t step = ZSTD_nextSrcSizeToDecompress(dctx);
        if (step == 0 || step > cs - in) return LL_ERR_FRAME; /* ended early, or truncated */
        size_t got = ZSTD_decompressContinue(dctx, dst + out, room - out, src + in, step);
        if (ZSTD_isError(got)) return LL_ERR_FRAME;
        in += step;
        out += got;
    }
    *produced = (uint32_t)(out < ds ? out : ds);
    return LL_OK;
}

/* Fetch the compressed bytes of frames [a, b] into ws->in; *local as
 * ll__read_ex_fn's (0 with a plain ll_read_fn). */
static int fetch(ll_reader *r, workspace *ws, uint32_t a, uint32_t b, int *local) {
    uint64_t off = r->st->c_off[a], len = r->st->c_off[b + 1] - off;
    *local = 0;
    if (len > SIZE_MAX) return LL_ERR_LIMIT;
    int rc = grow(r->bufs, &ws->in, &ws->in_cap, (size_t)len);
    if (rc != LL_OK) return rc;
    if (r->read_ex) return ll__callback_status(r->read_ex(r->opaque, off, (size_t)len, ws->in, local));
    return ll__callback_status(r->read(r->opaque, off, (size_t)len, ws->in));
}

static int load_in_frame(ll_reader *r, workspace *ws, uint32_t i, uint32_t lo, uint32_t hi, uint8_t *dst,
                         int present);

/* Bytes [lo, hi) of frame i into dst, through the cache when there is one; one
 * load of a frame at a time (ll__cache_claim): readers of it meanwhile wait. */
static int read_in_frame(ll_reader *r, workspace *ws, uint32_t i, uint32_t lo, uint32_t hi,
                         uint8_t *dst) {
    if (!r->cache) return load_in_frame(r, ws, i, lo, hi, dst, 0);
    for (;;) {
        int present = 0; /* the cache has a shorter prefix of this frame */
        ll__entry *e = ll__cache_get_ex(r->cache, r->source, i, hi, must_verify(r), &present);
        if (e) {
            memcpy(dst, e->data + lo, hi - lo);
            ll__cache_release(r->cache, e);
            return LL_OK;
        }
        int slot;
        int c = ll__cache_claim(r->cache, r->source, i, !r->local_only, &slot);
        if (c == LL__CLAIM_LOADED) continue;
        if (c == LL__CLAIM_BUSY) {
            if (r->local_only) return LL_ERR_MISS; /* being fetched: (FUSE) a miss thread reads it instead */
            return load_in_frame(r, ws, i, lo, hi, dst, present); /* unclaimed, as two loads were before */
        }
        int rc = load_in_frame(r, ws, i, lo, hi, dst, present);
        ll__cache_unclaim(r->cache, slot);
        return rc;
    }
}

/* read_in_frame's load: fetch frame i, decode (into the cache if there is one). */
static int load_in_frame(ll_reader *r, workspace *ws, uint32_t i, uint32_t lo, uint32_t hi, uint8_t *dst,
                         int present) {
    const ll_seektable *st = r->st;
    uint32_t ds = d_size(st, i);
    int local;
    int rc = fetch(r, ws, i, i, &local);
    if (rc != LL_OK) return rc;
    uint32_t produced;
    if (lo == 0 && hi == ds) /* whole frame: straight into the caller's buffer */
        return decode(r, ws->w, i, ws->in, dst, ds, &produced);
    /* whole_frames is for frames that were costly to fetch; one read from local
     * storage is cheaper to fetch again than to decode whole (a later read
     * further into the frame re-decodes: ll__cache_put keeps the longest).  The
     * second time a frame is decoded in part, it is decoded whole: reads keep
     * coming to it, so one more decode now saves the next ones.  A read that
     * needs half the frame or more decodes it whole at once: a prefix would save
     * little, and a sequential reader (1 MiB kernel reads of 2 MiB frames) would
     * load, hash and decode every frame twice. */
    uint32_t need = must_verify(r) || (r->whole_frames && (!local || present)) || hi >= ds / 2 ? ds : hi;
    uint32_t room = need == ds ? ds : prefix_room(need, ds);
    if (r->cache) {
        uint32_t cap;
        uint8_t *buf = ll__cache_alloc(r->cache, room, &cap);
        if (buf) {
            rc = decode(r, ws->w, i, ws->in, buf, need, &produced);
            if (rc != LL_OK) {
                ll__cache_discard(r->cache, buf, cap);
                return rc;
            }
            ll__entry *e = ll__cache_put(r->cache, r->source, i, buf, cap, produced, must_verify(r));
            if (!e) return LL_ERR_NOMEM;
            memcpy(dst, e->data + lo, hi - lo);
            ll__cache_release(r->cache, e);
            return LL_OK;
        }
        ll__cache_count_bypass(r->cache);
    }
    rc = grow(r->bufs, &ws->out, &ws->out_cap, room);
    if (rc != LL_OK) return rc;
    rc = decode(r, ws->w, i, ws->in, ws->out, need, &produced);
    if (rc == LL_OK) memcpy(dst, ws->out + lo, hi - lo);
    return rc;
}

static void decode_task(void *arg, size_t index, ll__worker *w) {
    const ll_reader *r = ((void **)arg)[0];
    task *t = &((task *)((void **)arg)[1])[index];
    uint32_t produced;
    t->status = decode(r, w, t->frame, t->src, t->dst, d_size(r->st, t->frame), &produced);
}

/* Frames [a, b], all covered whole by the read, into out (= frame a's start). */
static int read_whole_frames(ll_reader *r, workspace *ws, uint32_t a, uint32_t b, uint8_t *out) {
    const ll_seektable *st = r->st;
    uint64_t base = st->d_off[a];
    uint32_t i = a;
    while (i <= b) {
        /* One round: cached frames are copied; the misses, up to max_fetch
         * compressed bytes, are fetched (one callback per run) and decoded. */
        size_t ntasks = 0;
        uint64_t round_bytes = 0;
        for (; i <= b; i++) {
            uint32_t ds = d_size(st, i);
            if (ds == 0) continue;
            if (r->cache) {
                ll__entry *e = ll__cache_get(r->cache, r->source, i, ds, must_verify(r));
                if (e) {
                    memcpy(out + (st->d_off[i] - base), e->data, ds);
                    ll__cache_release(r->cache, e);
                    continue;
                }
            }
            if (ntasks > 0 && round_bytes + c_size(st, i) > r->max_fetch) break;
            if (ntasks == ws->tasks_cap) {
                size_t cap = ws->tasks_cap ? ws->tasks_cap * 2 : 16;
                task *t = realloc(ws->tasks, cap * sizeof *t);
                if (!t) return LL_ERR_NOMEM;
                ws->tasks = t;
                ws->tasks_cap = cap;
            }
            ws->tasks[ntasks++] = (task){.frame = i};
            round_bytes += c_size(st, i);
        }
        if (ntasks == 0) continue;
        int rc = grow(r->bufs, &ws->in, &ws->in_cap, (size_t)round_bytes);
        if (rc != LL_OK) return rc;
        /* Fetch runs of consecutive frames with one callback each, packed in ws->in. */
        size_t pos = 0;
        for (size_t k = 0; k < ntasks;) {
            size_t j = k;
            while (j + 1 < ntasks && ws->tasks[j + 1].frame == ws->tasks[j].frame + 1) j++;
            uint64_t off = st->c_off[ws->tasks[k].frame];
            uint64_t len = st->c_off[ws->tasks[j].frame + 1] - off;
            rc = ll__callback_status(r->read(r->opaque, off, (size_t)len, ws->in + pos));
            if (rc != LL_OK) return rc;
            for (size_t m = k; m <= j; m++) {
                ws->tasks[m].src = ws->in + pos + (st->c_off[ws->tasks[m].frame] - off);
                ws->tasks[m].dst = out + (st->d_off[ws->tasks[m].frame] - base);
            }
            pos += (size_t)len;
            k = j + 1;
        }
        void *arg[2] = {r, ws->tasks};
        ll__pool_run(r->pool, ws->w, decode_task, arg, ntasks);
        for (size_t k = 0; k < ntasks; k++)
            if (ws->tasks[k].status != LL_OK) return ws->tasks[k].status;
    }
    return LL_OK;
}

int64_t ll_reader_read(ll_reader *r, uint64_t offset, void *dst, size_t size) {
    if (!r || (!dst && size) || size > INT64_MAX) return LL_ERR_ARG;
    const ll_seektable *st = r->st;
    uint64_t total = st->d_off[st->n];
    if (offset >= total || size == 0) return 0;
    uint64_t end = total - offset < size ? total : offset + size;
    uint32_t first = ll_seektable_frame_at(st, offset);
    uint32_t last = ll_seektable_frame_at(st, end - 1);
    workspace *ws = ws_get(r);
    if (!ws) return LL_ERR_NOMEM;
    uint8_t *out = dst;
    int rc;
    if (first == last) {
        rc = read_in_frame(r, ws, first, (uint32_t)(offset - st->d_off[first]),
                           (uint32_t)(end - st->d_off[first]), out);
    } else {
        /* Head and tail frames may be partial; everything between is whole. */
        uint32_t a = first, b = last;
        rc = LL_OK;
        if (offset != st->d_off[first]) {
            rc = read_in_frame(r, ws, first, (uint32_t)(offset - st->d_off[first]),
                               d_size(st, first), out);
            a = first + 1;
        }
        if (rc == LL_OK && end != st->d_off[last + 1]) {
            rc = read_in_frame(r, ws, last, 0, (uint32_t)(end - st->d_off[last]),
                               out + (st->d_off[last] - offset));
            b = last - 1;
        }
        if (rc == LL_OK && a <= b)
            rc = read_whole_frames(r, ws, a, b, out + (st->d_off[a] - offset));
    }
    ws_put(r, ws);
    return rc == LL_OK ? (int64_t)(end - offset) : rc;
}

/* ---------------------------------------------------------------- ll_check_zstd */

/* A zstd frame made by hand (RFC 8878), so its layout is fixed at build time:
 * header (single segment, 1-byte content size 164, content checksum), a
 * compressed block (58 bytes, from `zstd -19`, not last), an RLE block (20 x 'z'),
 * a raw last block ("end\n"), and the low 32 bits of the content's XXH64. */
static const uint8_t selftest_frame[] = {
    0x28, 0xb5, 0x2f, 0xfd, 0x24, 0xa4, 0xd4, 0x01, 0x00, 0x12, 0x83, 0x0b, 0x12, 0xa0, 0xbb, 0x01,
    0xc6, 0x16, 0x10, 0x59, 0x91, 0xde, 0xee, 0xb4, 0xc0, 0x45, 0xef, 0x32, 0xff, 0x57, 0x0d, 0x07,
    0x83, 0x88, 0xa7, 0x5c, 0x5b, 0x1e, 0xd4, 0x3a, 0xab, 0xc6, 0xde, 0xe8, 0xa6, 0xf9, 0x5d, 0x4f,
    0x9f, 0x53, 0xea, 0xc9, 0x33, 0x75, 0xb8, 0xee, 0xe1, 0x06, 0x02, 0x00, 0x93, 0x04, 0xd4, 0x3b,
    0x7d, 0xea, 0x09, 0xa2, 0x00, 0x00, 0x7a, 0x21, 0x00, 0x00, 0x65, 0x6e, 0x64, 0x0a, 0x08, 0x77,
    0xbd, 0x2c,
};
#define SELFTEST_PHRASE "lazylayer checks the zstd it runs on: lazylayer checks the block API. "
#define SELFTEST_SIZE 164 /* 2 phrases (140) + 20 'z' + "end\n" */

/* Decode selftest_frame the way decode() does a prefix: block by block, each
 * straight after the previous output in one buffer.  NULL if it decodes to the
 * expected bytes, else what went wrong. */
static const char *selftest(ZSTD_DCtx *dctx) {
    uint8_t want[SELFTEST_SIZE], got[SELFTEST_SIZE];
    size_t phrase = sizeof SELFTEST_PHRASE - 1;
    memcpy(want, SELFTEST_PHRASE, phrase);
    memcpy(want + phrase, SELFTEST_PHRASE, phrase);
    memset(want + 2 * phrase, 'z', 20);
    memcpy(want + 2 * phrase + 20, "end\n", 4);
    if (ZSTD_getFrameContentSize(selftest_frame, sizeof selftest_frame) != SELFTEST_SIZE)
        return "ZSTD_getFrameContentSize disagrees";
    if (ZSTD_findFrameCompressedSize(selftest_frame, sizeof selftest_frame) != sizeof selftest_frame)
        return "ZSTD_findFrameCompressedSize disagrees";
    if (ZSTD_isError(ZSTD_decompressBegin(dctx))) return "ZSTD_decompressBegin failed";
    size_t in = 0, out = 0, steps = 0;
    for (;;) {
        size_t step = ZSTD_nextSrcSizeToDecompress(dctx);
        if (step == 0) break;
        if (step > sizeof selftest_frame - in || ++steps > 16)
            return "ZSTD_nextSrcSizeToDecompress asks for more than the frame holds";
        size_t n = ZSTD_decompressContinue(dctx, got + out, sizeof got - out, selftest_frame + in, step);
        if (ZSTD_isError(n)) return "ZSTD_decompressContinue reported an error";
        in += step;
        out += n;
    }
    if (in != sizeof selftest_frame || out != SELFTEST_SIZE)
        return "the frame did not decode to its size";
    if (memcmp(got, want, SELFTEST_SIZE) != 0) return "the frame decoded to the wrong bytes";
    return NULL;
}

int ll_check_zstd(char *msg, size_t msg_size) {
    unsigned built = ZSTD_VERSION_NUMBER, running = ZSTD_versionNumber();
    char tmp[1];
    if (!msg || msg_size == 0) {
        msg = tmp;
        msg_size = sizeof tmp;
    }
#define LL_ZV(v) (v) / 10000, (v) / 100 % 100, (v) % 100
    if (running / 100 != built / 100) {
        snprintf(msg, msg_size, "built with libzstd %u.%u.%u, running %u.%u.%u (lazylayer accepts "
                 "only the same major.minor at run time: rebuild it against this libzstd)",
                 LL_ZV(built), LL_ZV(running));
        return LL_ERR_ZSTD;
    }
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (!dctx) {
        snprintf(msg, msg_size, "out of memory for a zstd decompression context");
        return LL_ERR_NOMEM;
    }
    const char *why = selftest(dctx);
    ZSTD_freeDCtx(dctx);
    if (why) {
        snprintf(msg, msg_size, "libzstd %u.%u.%u (built with %u.%u.%u) fails lazylayer's self-test "
                 "of its buffer-less decoding API: %s", LL_ZV(running), LL_ZV(built), why);
        return LL_ERR_ZSTD;
    }
    snprintf(msg, msg_size, "libzstd %u.%u.%u (built with %u.%u.%u)", LL_ZV(running), LL_ZV(built));
#undef LL_ZV
    return LL_OK;
}
