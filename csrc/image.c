/* image.c - read files of an indexed image (ll_image).
 *
 * One ll_reader per layer, over a seek table built from the index's frame
 * records (the data frames, then one frame of decompressed size 0 standing for
 * the TOC frame and the seek table behind it; the reader never reads it).  The
 * readers' read callback is layer_read() below: the reader asks for the
 * compressed bytes of a run of whole consecutive frames, which are taken from
 * the disk cache frame by frame (each verified by its sha256, as
 * ll_diskcache_get does); each maximal run of frames missing there goes to the
 * layer's host callback in one call, is verified against the index's sha256s
 * and stored in the disk cache.  Decoded frames go to the shared ll_cache,
 * under the same key the Python package uses for the blob, so Python readers of
 * the same layer in the same process share them.
 *
 * Threads: everything after ll_image_create is read-only but for the counters
 * and each layer's failure status (atomics), so reads run concurrently. */
#include "internal.h"

#include <openssl/evp.h>

#include <stdlib.h>

typedef struct layer layer_t;

/* What a reader's callback gets: its layer, and whether it may call the host. */
typedef struct {
    layer_t *l;
    int no_fetch;            /* 1: a frame missing from disk is LL_ERR_MISS (ll_image_read_cached) */
} layer_ref;

struct layer {
    ll_image *img;
    uint32_t layer;
    uint32_t nframes;        /* data frames */
    const ll_seektable *st;  /* the reader's (c_off of frame i; c_off[nframes] = end of data) */
    ll_image_source src;
    ll_reader *reader;       /* may call the host */
    ll_reader *cached;       /* never calls the host: same frames, same block cache */
    layer_ref ref[2];        /* the callbacks' opaque pointers: [0] reader, [1] cached */
    int raw;                 /* LL_CODEC_RAW */
    _Atomic int failed;      /* 0, or the status every read of the layer gets (ll_image_fail_layer) */
};

struct ll_image {
    const ll_index *idx;
    ll_diskcache *disk;
    int verify_fetched;
    int store_fetched;
    int disk_verify_memo;
    int raw_checked_by_host;
    uint32_t nlayers;
    layer_t *layers;
    _Atomic uint64_t reads, frames_disk, frames_fetched, host_calls, bytes_fetched, digest_errors, frames_local,
        bytes_local;
};

static void image_defaults(ll_image_options *o) {
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->verify_fetched = 1;
    o->store_fetched = 1;
    o->disk_verify_memo = 1;
}

int ll_image_options_init(ll_image_options *opt, size_t struct_size) {
    ll_image_options d;
    image_defaults(&d);
    return ll__options_init(opt, struct_size, &d, sizeof d, LL__IMAGE_OPTIONS_V1);
}

/* The C block cache's key for a blob: as lazylayer/image/image.py _cache_key,
 * the first 15 hex digits of the digest (60 bits), never 0; 0 (a unique key)
 * if the digest has no hex part. */
static uint64_t cache_key(const char *digest) {
    const char *h = digest ? strchr(digest, ':') : NULL;
    if (!h) return 0;
    h++;
    uint64_t v = 0;
    int n = 0;
    for (; n < 15 && h[n]; n++) {
        char c = h[n];
        unsigned d;
        if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') d = (unsigned)(c - 'A' + 10);
        else return 0;
        v = v << 4 | d;
    }
    if (n == 0) return 0;
    return v ? v : 1;
}

/* The block cache key of a raw layer (LL_CODEC_RAW): the first 60 bits of the
 * sha256 of its digest and its frame records, never 0.  A raw layer's frames
 * are not fixed by its blob's digest alone (a gzip layer's index may have been
 * built with other spans, or be a forged one under check): two images in one
 * process that read the same blob through different indexes must not share
 * decoded frames.  0 (a unique key) if it cannot be computed. */
static uint64_t raw_cache_key(const ll_index *idx, uint32_t layer, const char *digest, uint32_t n) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t h[EVP_MAX_MD_SIZE];
    unsigned hl = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, digest, strlen(digest) + 1) == 1;
    for (uint32_t i = 0; ok && i < n; i++) {
        ll_layer_frame f;
        ok = ll_index_frame(idx, layer, i, &f) == LL_OK && EVP_DigestUpdate(ctx, &f, sizeof f) == 1;
    }
    ok = ok && EVP_DigestFinal_ex(ctx, h, &hl) == 1 && hl >= 8;
    EVP_MD_CTX_free(ctx);
    if (!ok) return 0;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | h[i];
    v >>= 4;
    return v ? v : 1;
}

/* Frame i of layer l, by binary search, such that c_off[i] == offset; -1 if none. */
static int64_t frame_starting_at(const layer_t *l, uint64_t offset) {
    const uint64_t *c = l->st->c_off;
    uint32_t lo = 0, hi = l->nframes; /* search [lo, hi) */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (c[mid] < offset) lo = mid + 1;
        else hi = mid;
    }
    return lo < l->nframes && c[lo] == offset ? (int64_t)lo : -1;
}

static int is_zero(const uint8_t sha256[32]) {
    uint8_t any = 0;
    for (int i = 0; i < 32; i++) any |= sha256[i];
    return any == 0;
}

/* Check frames [a, b], fetched into buf (= frame a's start), against their
 * sha256s; store them in the disk cache if asked.  A raw layer's frame whose
 * sha256 is all zeros is the host's to verify (a piece of a chunk too big to be
 * one frame, checked whole by the host: ll_index_layer_codec), as is every raw
 * frame with raw_checked_by_host (a run of chunks is named by its table, not by
 * its data): neither checked nor stored here. */
static int check_and_store(layer_t *l, uint32_t a, uint32_t b, const uint8_t *buf, int verify,
                           int store) {
    ll_image *img = l->img;
    const uint64_t *c = l->st->c_off;
    for (uint32_t i = a; i <= b; i++) {
        ll_layer_frame f;
        int rc = ll_index_frame(img->idx, l->layer, i, &f);
        if (rc != LL_OK) return rc;
        const uint8_t *p = buf + (c[i] - c[a]);
        size_t n = (size_t)(c[i + 1] - c[i]);
        /* vouched for by the host (LL_CODEC_RAW): never stored */
        if (l->raw && (is_zero(f.sha256) || img->raw_checked_by_host)) continue;
        if (verify) {
            uint8_t h[32];
            ll_sha256(p, n, h);
            if (memcmp(h, f.sha256, 32) != 0) {
                atomic_fetch_add(&img->digest_errors, 1);
                return LL_ERR_DIGEST;
            }
        }
        if (store) (void)ll_diskcache_put(img->disk, f.sha256, p, n); /* a full disk must not fail the read */
    }
    return LL_OK;
}

/* Frames [a, b] from the host, in one call, into dst (= frame a's start);
 * LL_ERR_MISS instead for a reader that must not call it.  (No thread-local
 * flag here: a thread's first use of a dlopen'd library's TLS takes the
 * loader's lock, which a thread of the host may hold while it dlopens a file
 * from the mount this thread serves.) */
static int fetch_run(const layer_ref *ref, uint32_t a, uint32_t b, uint8_t *dst, int verify, int store) {
    layer_t *l = ref->l;
    if (ref->no_fetch) return LL_ERR_MISS;
    ll_image *img = l->img;
    const uint64_t *c = l->st->c_off;
    uint64_t len = c[b + 1] - c[a];
    atomic_fetch_add(&img->host_calls, 1);
    int rc = l->src.read(l->src.opaque, c[a], (size_t)len, dst);
    if (rc != 0) return rc; /* the reader maps it (ll__callback_status) */
    atomic_fetch_add(l->src.local ? &img->frames_local : &img->frames_fetched, b - a + 1);
    atomic_fetch_add(l->src.local ? &img->bytes_local : &img->bytes_fetched, len);
    return check_and_store(l, a, b, dst, verify, store);
}

/* The reader's read callback (ll__read_ex_fn): the compressed bytes of whole
 * frames [offset, offset + size); *local = 1 if every one came from the disk cache. */
static int layer_read_ex(void *opaque, uint64_t offset, size_t size, void *dst, int *local) {
    const layer_ref *ref = opaque;
    layer_t *l = ref->l;
    *local = 0;
    ll_image *img = l->img;
    const uint64_t *c = l->st->c_off;
    int64_t first = frame_starting_at(l, offset);
    if (first < 0 || size == 0 || offset + size > c[l->nframes]) return LL_ERR_ARG;
    uint32_t a = (uint32_t)first, b = a;
    while (c[b + 1] < offset + size) b++;
    if (c[b + 1] != offset + size) return LL_ERR_ARG; /* not on a frame boundary */
    uint8_t *out = dst;
    int use_disk = l->src.use_disk && img->disk;
    int store = use_disk && img->store_fetched;
    /* Frames stored on disk are always hashed first, so a host that promised to
     * verify but did not cannot plant wrong bytes under a digest's name. */
    int verify = img->verify_fetched || store;
    if (!use_disk) return fetch_run(ref, a, b, out, verify, 0);
    uint32_t run = UINT32_MAX; /* first frame of the pending run of misses */
    for (uint32_t i = a; i <= b; i++) {
        ll_layer_frame f;
        int rc = ll_index_frame(img->idx, l->layer, i, &f);
        if (rc != LL_OK) return rc;
        int corrupt = 0;
        rc = ll__diskcache_get_ex(img->disk, f.sha256, out + (c[i] - offset), (size_t)(c[i + 1] - c[i]),
                                  &corrupt, img->disk_verify_memo);
        if (corrupt) atomic_fetch_add(&img->digest_errors, 1);
        if (rc != LL_OK) {
            if (run == UINT32_MAX) run = i;
            continue;
        }
        atomic_fetch_add(&img->frames_disk, 1);
        if (run != UINT32_MAX) {
            rc = fetch_run(ref, run, i - 1, out + (c[run] - offset), verify, store);
            if (rc != 0) return rc;
            run = UINT32_MAX;
        }
    }
    if (run != UINT32_MAX) return fetch_run(ref, run, b, out + (c[run] - offset), verify, store);
    *local = 1;
    return LL_OK;
}

/* The same as a plain ll_read_fn (the reader's seek-table-less create wants one). */
static int layer_read(void *opaque, uint64_t offset, size_t size, void *dst) {
    int local;
    return layer_read_ex(opaque, offset, size, dst, &local);
}

/* Layer l's seek table from the index: data frames, contiguous from 0, then
 * the rest of the blob (TOC frame and seek table) as one empty frame. */
static int build_table(const ll_index *idx, uint32_t layer, ll_seektable **out, uint32_t *nframes) {
    const char *digest;
    uint64_t blob_size, tar_size;
    uint32_t n;
    int rc = ll_index_layer_info(idx, layer, &digest, &blob_size, &tar_size, &n);
    if (rc != LL_OK) return rc;
    ll_seektable *st = calloc(1, sizeof *st);
    if (!st) return LL_ERR_NOMEM;
    st->c_off = malloc(((size_t)n + 2) * sizeof(uint64_t));
    st->d_off = malloc(((size_t)n + 2) * sizeof(uint64_t));
    if (!st->c_off || !st->d_off) {
        rc = LL_ERR_NOMEM;
        goto fail;
    }
    uint64_t c = 0, d = 0;
    for (uint32_t i = 0; i < n; i++) {
        ll_layer_frame f;
        rc = ll_index_frame(idx, layer, i, &f);
        if (rc != LL_OK) goto fail;
        if (f.c_offset != c || f.d_offset != d || f.c_size == 0 || f.c_size > blob_size - c ||
            f.d_size > LL_MAX_FRAME_SIZE) {
            rc = LL_ERR_FORMAT;
            goto fail;
        }
        st->c_off[i] = c;
        st->d_off[i] = d;
        c += f.c_size;
        d += f.d_size;
        if (f.d_size > st->max_d_size) st->max_d_size = f.d_size;
    }
    if (d != tar_size) {
        rc = LL_ERR_FORMAT;
        goto fail;
    }
    st->c_off[n] = c;
    st->d_off[n] = d;
    st->n = n;
    if (blob_size > c) { /* the TOC frame and the seek table: never read */
        st->c_off[n + 1] = blob_size;
        st->d_off[n + 1] = d;
        st->n = n + 1;
    }
    *out = st;
    *nframes = n;
    return LL_OK;
fail:
    ll_seektable_free(st);
    return rc;
}

static int copy_table(const ll_seektable *st, ll_seektable **out) {
    ll_seektable *c = calloc(1, sizeof *c);
    if (!c) return LL_ERR_NOMEM;
    *c = *st;
    c->checksum = NULL;
    c->c_off = malloc(((size_t)st->n + 1) * sizeof(uint64_t));
    c->d_off = malloc(((size_t)st->n + 1) * sizeof(uint64_t));
    if (!c->c_off || !c->d_off) {
        ll_seektable_free(c);
        return LL_ERR_NOMEM;
    }
    memcpy(c->c_off, st->c_off, ((size_t)st->n + 1) * sizeof(uint64_t));
    memcpy(c->d_off, st->d_off, ((size_t)st->n + 1) * sizeof(uint64_t));
    *out = c;
    return LL_OK;
}

int ll_image_create(const ll_index *idx, const ll_image_source *sources, const ll_image_options *opt,
                    ll_image **out) {
    if (!out) return LL_ERR_ARG;
    *out = NULL;
    if (!idx) return LL_ERR_ARG;
    ll_image_options o;
    image_defaults(&o);
    if (opt && ll__options_copy(&o, sizeof o, opt, LL__IMAGE_OPTIONS_V1) != LL_OK) return LL_ERR_ARG;
    uint32_t n = ll_index_layers(idx);
    if (n > 0 && !sources) return LL_ERR_ARG;
    for (uint32_t i = 0; i < n; i++)
        if (!sources[i].read) return LL_ERR_ARG;
    ll_image *img = calloc(1, sizeof *img);
    if (!img) return LL_ERR_NOMEM;
    img->idx = idx;
    img->disk = o.disk;
    img->verify_fetched = o.verify_fetched;
    img->store_fetched = o.store_fetched;
    img->disk_verify_memo = o.disk_verify_memo != 0;
    img->raw_checked_by_host = o.raw_checked_by_host != 0;
    img->layers = calloc(n ? n : 1, sizeof *img->layers);
    if (!img->layers) {
        free(img);
        return LL_ERR_NOMEM;
    }
    img->nlayers = n;
    int rc = LL_OK;
    for (uint32_t i = 0; i < n && rc == LL_OK; i++) {
        layer_t *l = &img->layers[i];
        l->img = img;
        l->layer = i;
        l->src = sources[i];
        l->raw = ll_index_layer_codec(idx, i) == LL_CODEC_RAW;
        ll_seektable *st = NULL;
        rc = build_table(idx, i, &st, &l->nframes);
        if (rc != LL_OK) break;
        const char *digest = NULL;
        ll_index_layer_info(idx, i, &digest, NULL, NULL, NULL);
        ll_reader_options ro;
        ll_reader_options_init(&ro, sizeof ro);
        ro.cache = o.cache;
        ro.pool = o.pool;
        ro.source_key = l->raw ? raw_cache_key(idx, i, digest ? digest : "", l->nframes) : cache_key(digest);
        ro.verify_checksums = 0; /* frames are checked by sha256 before decoding */
        ro.whole_frames = 1;     /* a fetch costs more than a decode (not from disk: layer_read_ex) */
        l->ref[0] = (layer_ref){l, 0};
        l->ref[1] = (layer_ref){l, 1};
        ll_seektable *st2 = NULL; /* the cached reader's copy (a reader owns its table) */
        rc = copy_table(st, &st2);
        if (rc != LL_OK) {
            ll_seektable_free(st);
            break;
        }
        rc = ll_reader_create(st, layer_read, &l->ref[0], &ro, &l->reader);
        if (rc != LL_OK) {
            ll_seektable_free(st);
            ll_seektable_free(st2);
            break;
        }
        rc = ll_reader_create(st2, layer_read, &l->ref[1], &ro, &l->cached);
        if (rc != LL_OK) {
            ll_seektable_free(st2);
            break;
        }
        /* frames from the disk cache: a partly covered one is decoded only as far as needed */
        ll__reader_set_read_ex(l->reader, layer_read_ex);
        ll__reader_set_read_ex(l->cached, layer_read_ex);
        ll__reader_set_local_only(l->cached); /* its loads never wait on the host, nor on others' fetches */
        if (l->raw) {
            ll__reader_set_raw(l->reader);
            ll__reader_set_raw(l->cached);
        }
        l->st = ll_reader_seektable(l->reader);
    }
    if (rc != LL_OK) {
        ll_image_free(img);
        return rc;
    }
    *out = img;
    return LL_OK;
}

static int64_t image_read(ll_image *img, uint64_t ino, uint64_t offset, void *dst, size_t size, int cached) {
    if (!img || (!dst && size)) return LL_ERR_ARG;
    atomic_fetch_add(&img->reads, 1);
    ll_stat st;
    int rc = ll_index_stat(img->idx, ino, &st);
    if (rc != LL_OK) return rc;
    if (st.kind != LL_KIND_REG) return LL_ERR_NOTREG;
    if (offset >= st.size || size == 0) return 0;
    uint64_t n = st.size - offset < size ? st.size - offset : size;
    if (st.layer < 0 || (uint32_t)st.layer >= img->nlayers) return LL_ERR_FORMAT;
    layer_t *l = &img->layers[st.layer];
    int failed = atomic_load(&l->failed);
    if (failed) return failed;
    if (st.offset > UINT64_MAX - st.size) return LL_ERR_FORMAT;
    int64_t got = ll_reader_read(cached ? l->cached : l->reader, st.offset + offset, dst, (size_t)n);
    if (got < 0) return got;
    if ((uint64_t)got != n) return LL_ERR_FORMAT; /* the file runs past its layer's tar */
    return got;
}

int64_t ll_image_read(ll_image *img, uint64_t ino, uint64_t offset, void *dst, size_t size) {
    return image_read(img, ino, offset, dst, size, 0);
}

int64_t ll_image_read_cached(ll_image *img, uint64_t ino, uint64_t offset, void *dst, size_t size) {
    return image_read(img, ino, offset, dst, size, 1);
}

int ll_image_fail_layer(ll_image *img, uint32_t layer, int status) {
    if (!img || layer >= img->nlayers || status >= 0 || status == LL_ERR_MISS) return LL_ERR_ARG;
    int none = 0; /* the first status given stays */
    atomic_compare_exchange_strong(&img->layers[layer].failed, &none, status);
    return LL_OK;
}

int ll_image_layer_failed(ll_image *img, uint32_t layer) {
    if (!img || layer >= img->nlayers) return LL_ERR_ARG;
    return atomic_load(&img->layers[layer].failed);
}

const ll_index *ll_image_index(const ll_image *img) { return img ? img->idx : NULL; }

void ll_image_get_stats(ll_image *img, ll_image_stats *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!img) return;
    out->reads = atomic_load(&img->reads);
    out->frames_disk = atomic_load(&img->frames_disk);
    out->frames_fetched = atomic_load(&img->frames_fetched);
    out->host_calls = atomic_load(&img->host_calls);
    out->bytes_fetched = atomic_load(&img->bytes_fetched);
    out->digest_errors = atomic_load(&img->digest_errors);
    out->frames_local = atomic_load(&img->frames_local);
    out->bytes_local = atomic_load(&img->bytes_local);
}

void ll_image_free(ll_image *img) {
    if (!img) return;
    for (uint32_t i = 0; i < img->nlayers; i++) {
        ll_reader_free(img->layers[i].reader);
        ll_reader_free(img->layers[i].cached);
    }
    free(img->layers);
    free(img);
}
