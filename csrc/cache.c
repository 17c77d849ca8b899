/* cache.c - decompressed frames under a hard byte budget.
 *
 * 16 shards, each a hash table plus an LRU list behind its own mutex.  The
 * byte count is one atomic for the whole cache: a buffer's bytes are reserved
 * before it is allocated, so the budget holds at every instant, counting every
 * allocated buffer (including frames unlinked while a reader still pins them).
 * Making room evicts least-recently-used unpinned frames, shard by shard, and
 * hands an evicted buffer of a fitting size straight to the new frame, so
 * steady-state misses cost no malloc/free (and no page faults).
 *
 * Frame buffers are the cache's own (ll__buf_get/put below): mmap'd, and when
 * freed kept in a small free list (pool_limit(budget) bytes) or unmapped, so
 * the memory of evicted frames goes back to the OS instead of piling up in
 * malloc's per-thread arenas. */
#include "internal.h"

#include <stdlib.h>
#include <sys/mman.h>

#define SHARDS 16
#define INITIAL_BUCKETS 64

typedef struct {
    pthread_mutex_t lock;
    ll__entry **buckets;
    size_t nbuckets;
    size_t count;
    ll__entry *head, *tail; /* LRU: head is most recently used */
} shard;

/* ---- the buffer pool (see internal.h) */

/* Under AddressSanitizer the big buffers come from malloc after all, so ASan
 * checks their bounds and their use after free, and a buffer in the free list
 * is poisoned but for its link. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LL__ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(LL__ASAN)
#define LL__ASAN 1
#endif
#ifdef LL__ASAN
#include <sanitizer/asan_interface.h>
static void *map_buf(size_t cap) { return malloc(cap); }
static void unmap_buf(void *p, size_t cap) { (void)cap; free(p); }
/* No resizing under ASan: a recycled buffer must already fit. */
static void *resize_buf(void *p, size_t cap, size_t new_cap) { (void)p; (void)cap; (void)new_cap; return NULL; }
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
static void *map_buf(size_t cap) {
    void *m = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return m == MAP_FAILED ? NULL : m;
}
static void unmap_buf(void *p, size_t cap) { munmap(p, cap); }
/* A mapped buffer made `new_cap` bytes long, keeping its first pages (shrunk in
 * place; grown in place or moved, without copying): only pages past the old
 * end are new (and faulted in on first use).  NULL if it cannot be: the
 * buffer is then unchanged. */
static void *resize_buf(void *p, size_t cap, size_t new_cap) {
    void *m = mremap(p, cap, new_cap, MREMAP_MAYMOVE);
    return m == MAP_FAILED ? NULL : m;
}
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct ll__freebuf {   /* lives in the first bytes of the free buffer itself */
    ll__freebuf *next;
    size_t cap;
};

size_t ll__buf_cap(size_t size) {
    if (size < LL__BUF_MMAP_MIN) return size ? size : 1;
    if (size > SIZE_MAX - LL__BUF_ROUND) return SIZE_MAX; /* mmap refuses it */
    return (size + LL__BUF_ROUND - 1) / LL__BUF_ROUND * LL__BUF_ROUND;
}

uint8_t *ll__buf_get(ll__bufpool *p, size_t size, size_t max_cap, size_t *cap) {
    size_t want = ll__buf_cap(size);
    if (want < LL__BUF_MMAP_MIN) {
        uint8_t *b = malloc(want);
        if (b) *cap = want;
        return b;
    }
    if (p) {
        if (max_cap > want && max_cap / 2 > want) max_cap = 2 * want;
        pthread_mutex_lock(&p->lock);
        ll__freebuf **best = NULL;
        for (ll__freebuf **pp = &p->head; *pp; pp = &(*pp)->next) {
            size_t c = (*pp)->cap;
            if (c >= want && c <= max_cap && (!best || c < (*best)->cap)) {
                best = pp;
                if (c == want) break;
            }
        }
        if (best) {
            ll__freebuf *f = *best;
            *best = f->next;
            p->held -= f->cap;
            pthread_mutex_unlock(&p->lock);
            *cap = f->cap;
            UNPOISON(f, f->cap);
            return (uint8_t *)f;
        }
        pthread_mutex_unlock(&p->lock);
    }
    void *m = map_buf(want);
    if (!m) return NULL;
    *cap = want;
    return m;
}

void ll__buf_put(ll__bufpool *p, uint8_t *buf, size_t cap) {
    if (!buf) return;
    if (cap < LL__BUF_MMAP_MIN) {
        free(buf);
        return;
    }
    ll__freebuf *drop = NULL;
    if (p) {
        ll__freebuf *f = (ll__freebuf *)(void *)buf;
        f->cap = cap;
        pthread_mutex_lock(&p->lock);
        if (cap <= p->limit) {
            f->next = p->head;
            p->head = f;
            p->held += cap;
            POISON((uint8_t *)f + sizeof *f, cap - sizeof *f);
            buf = NULL;
            while (p->held > p->limit) { /* unmap the least recently freed */
                ll__freebuf **pp = &p->head;
                while ((*pp)->next) pp = &(*pp)->next;
                ll__freebuf *t = *pp;
                *pp = NULL;
                p->held -= t->cap;
                t->next = drop;
                drop = t;
            }
        }
        pthread_mutex_unlock(&p->lock);
    }
    if (buf) unmap_buf(buf, cap);
    while (drop) {
        ll__freebuf *next = drop->next;
        UNPOISON(drop, drop->cap);
        unmap_buf(drop, drop->cap);
        drop = next;
    }
}

/* The free list's limit for a cache of `budget` bytes: an eighth of it, 4..32 MiB. */
static uint64_t pool_limit(uint64_t budget) {
    uint64_t l = budget / 8;
    return l < (4u << 20) ? (4u << 20) : l > (32u << 20) ? (32u << 20) : l;
}

static void pool_set_limit(ll__bufpool *p, uint64_t limit) {
    pthread_mutex_lock(&p->lock);
    p->limit = limit;
    pthread_mutex_unlock(&p->lock);
}

static void pool_destroy(ll__bufpool *p) {
    ll__freebuf *f = p->head;
    while (f) {
        ll__freebuf *next = f->next;
        UNPOISON(f, f->cap);
        unmap_buf(f, f->cap);
        f = next;
    }
    pthread_mutex_destroy(&p->lock);
}

/* ---- the cache */

#define CLAIMS 64 /* frames being loaded at once that other readers can wait for */

typedef struct {
    uint64_t source;
    uint32_t frame;
    int used;
    int slow; /* its holder may fetch over the network (not only read local storage) */
} claim;

struct ll_cache {
    ll__bufpool pool;
    shard shards[SHARDS];
    pthread_mutex_t claim_lock;
    pthread_cond_t claim_cv;
    claim claims[CLAIMS];
    _Atomic uint64_t budget;
    _Atomic uint64_t bytes;
    _Atomic uint64_t peak;
    _Atomic uint64_t entries;
    _Atomic uint64_t hits, misses, inserts, evictions, bypasses;
    _Atomic uint64_t next_source;
    _Atomic unsigned evict_cursor;
};

static uint64_t mix(uint64_t source, uint32_t frame) {
    uint64_t h = source * 0x9E3779B97F4A7C15ull ^ ((uint64_t)frame + 0x632BE59BD9B4E019ull);
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    return h;
}

static shard *shard_of(ll_cache *c, uint64_t h) { return &c->shards[h & (SHARDS - 1)]; }

int ll_cache_create(uint64_t budget_bytes, ll_cache **out) {
    if (!out) return LL_ERR_ARG;
    ll_cache *c = calloc(1, sizeof *c);
    if (!c) return LL_ERR_NOMEM;
    for (int i = 0; i < SHARDS; i++) {
        shard *s = &c->shards[i];
        s->buckets = calloc(INITIAL_BUCKETS, sizeof *s->buckets);
        if (!s->buckets) {
            for (int j = 0; j < i; j++) {
                free(c->shards[j].buckets);
                pthread_mutex_destroy(&c->shards[j].lock);
            }
            free(c);
            return LL_ERR_NOMEM;
        }
        s->nbuckets = INITIAL_BUCKETS;
        pthread_mutex_init(&s->lock, NULL);
    }
    pthread_mutex_init(&c->pool.lock, NULL);
    pthread_mutex_init(&c->claim_lock, NULL);
    pthread_cond_init(&c->claim_cv, NULL);
    c->pool.limit = pool_limit(budget_bytes);
    atomic_init(&c->budget, budget_bytes);
    atomic_init(&c->next_source, 1);
    *out = c;
    return LL_OK;
}

static void unreserve(ll_cache *c, uint32_t cap) { atomic_fetch_sub(&c->bytes, (uint64_t)cap); }

static void entry_destroy(ll_cache *c, ll__entry *e) {
    unreserve(c, e->cap);
    ll__buf_put(&c->pool, e->data, e->cap);
    free(e);
}

ll__bufpool *ll__cache_bufpool(ll_cache *c) { return c ? &c->pool : NULL; }

uint64_t ll_cache_pool_bytes(ll_cache *c) {
    pthread_mutex_lock(&c->pool.lock);
    uint64_t held = c->pool.held;
    pthread_mutex_unlock(&c->pool.lock);
    return held;
}

/* ---- per-shard structure, caller holds s->lock */

static ll__entry **find_slot(shard *s, uint64_t h, uint64_t source, uint32_t frame) {
    ll__entry **p = &s->buckets[(h >> 4) & (s->nbuckets - 1)];
    while (*p && !((*p)->source == source && (*p)->frame == frame)) p = &(*p)->hnext;
    return p;
}

static void lru_unlink(shard *s, ll__entry *e) {
    if (e->lprev) e->lprev->lnext = e->lnext; else s->head = e->lnext;
    if (e->lnext) e->lnext->lprev = e->lprev; else s->tail = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void lru_push_front(shard *s, ll__entry *e) {
    e->lprev = NULL;
    e->lnext = s->head;
    if (s->head) s->head->lprev = e; else s->tail = e;
    s->head = e;
}

static void grow(shard *s) {
    size_t nb = s->nbuckets * 2;
    ll__entry **b = calloc(nb, sizeof *b);
    if (!b) return; /* keep the old table: longer chains, still correct */
    for (size_t i = 0; i < s->nbuckets; i++) {
        ll__entry *e = s->buckets[i];
        while (e) {
            ll__entry *next = e->hnext;
            size_t k = (mix(e->source, e->frame) >> 4) & (nb - 1);
            e->hnext = b[k];
            b[k] = e;
            e = next;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

/* Remove e from hash and LRU; the caller frees it if unpinned. */
static void unlink_entry(ll_cache *c, shard *s, ll__entry *e) {
    ll__entry **p = find_slot(s, mix(e->source, e->frame), e->source, e->frame);
    if (*p == e) *p = e->hnext;
    lru_unlink(s, e);
    e->linked = 0;
    s->count--;
    atomic_fetch_sub(&c->entries, 1);
}

/* Evict one unpinned frame from any shard and return it unlinked (or NULL). */
static ll__entry *evict_one(ll_cache *c) {
    unsigned start = atomic_fetch_add(&c->evict_cursor, 1);
    for (unsigned k = 0; k < SHARDS; k++) {
        shard *s = &c->shards[(start + k) & (SHARDS - 1)];
        pthread_mutex_lock(&s->lock);
        for (ll__entry *e = s->tail; e; e = e->lprev) {
            if (e->pins == 0) {
                unlink_entry(c, s, e);
                pthread_mutex_unlock(&s->lock);
                atomic_fetch_add(&c->evictions, 1);
                return e;
            }
        }
        pthread_mutex_unlock(&s->lock);
    }
    return NULL;
}

static void note_peak(ll_cache *c, uint64_t now) {
    uint64_t p = atomic_load(&c->peak);
    while (now > p && !atomic_compare_exchange_weak(&c->peak, &p, now)) {}
}

uint8_t *ll__cache_alloc(ll_cache *c, uint32_t size, uint32_t *cap) {
    if (size == 0) size = 1;
    uint32_t want = (uint32_t)ll__buf_cap(size); /* size <= LL_MAX_FRAME_SIZE: fits */
    /* An evicted buffer kept for this frame (its bytes stay reserved: `have`),
     * to be resized to `want`: entries of different sizes (prefixes) recycle
     * each other's pages instead of unmapping them and faulting in new ones. */
    uint8_t *keep = NULL;
    uint32_t have = 0;
    for (;;) {
        uint64_t budget = atomic_load(&c->budget);
        if (want > budget) break;
        uint64_t cur = atomic_load(&c->bytes);
        if (cur + (want - have) <= budget) {
            if (!atomic_compare_exchange_weak(&c->bytes, &cur, cur + (want - have))) continue;
            note_peak(c, cur + (want - have));
            if (keep) {
                uint8_t *p = resize_buf(keep, have, want);
                if (p) {
                    *cap = want;
                    return p;
                }
                /* Not resized: the kept buffer goes back to the free list, and the `want`
                 * bytes now reserved (its `have` plus what was just added) are the new one's. */
                ll__buf_put(&c->pool, keep, have);
                keep = NULL;
                have = 0;
            }
            size_t got;
            uint8_t *p = ll__buf_get(&c->pool, size, want, &got); /* exactly `want`: reserved */
            if (!p) { unreserve(c, want); return NULL; }
            *cap = want;
            return p;
        }
        ll__entry *v = evict_one(c);
        if (!v) break;
        uint8_t *vdata = v->data;
        uint32_t vcap = v->cap;
        if (vcap >= want && vcap / 2 <= size) {
            /* Recycle: its bytes stay reserved, now for the new frame. */
            free(v);
            if (keep) {
                ll__buf_put(&c->pool, keep, have);
                unreserve(c, have);
            }
            *cap = vcap;
            return vdata;
        }
        /* Resizing keeps a buffer mapped: only between sizes that are both mapped
         * ones (the capacity tells ll__buf_put how to free it). */
        if (vcap > want && want >= LL__BUF_MMAP_MIN) { /* too big: shrunk in place, the tail's bytes unreserved */
            uint8_t *p = resize_buf(vdata, vcap, want);
            if (p) {
                free(v);
                unreserve(c, vcap - want);
                if (keep) {
                    ll__buf_put(&c->pool, keep, have);
                    unreserve(c, have);
                }
                *cap = want;
                return p;
            }
        } else if (vcap < want && vcap > have && vcap >= LL__BUF_MMAP_MIN) { /* too small: the biggest one is grown */
            free(v);
            if (keep) {
                ll__buf_put(&c->pool, keep, have);
                unreserve(c, have);
            }
            keep = vdata;
            have = vcap;
            continue;
        }
        entry_destroy(c, v);
    }
    if (keep) {
        ll__buf_put(&c->pool, keep, have);
        unreserve(c, have);
    }
    return NULL;
}

void ll__cache_discard(ll_cache *c, uint8_t *data, uint32_t cap) {
    ll__buf_put(&c->pool, data, cap);
    unreserve(c, cap);
}

ll__entry *ll__cache_get(ll_cache *c, uint64_t source, uint32_t frame, uint32_t need,
                         int need_verified) {
    return ll__cache_get_ex(c, source, frame, need, need_verified, NULL);
}

ll__entry *ll__cache_get_ex(ll_cache *c, uint64_t source, uint32_t frame, uint32_t need,
                            int need_verified, int *present) {
    uint64_t h = mix(source, frame);
    shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->lock);
    ll__entry *e = *find_slot(s, h, source, frame);
    if (present) *present = e != NULL;
    if (e && e->valid >= need && (e->verified || !need_verified)) {
        e->pins++;
        if (s->head != e) {
            lru_unlink(s, e);
            lru_push_front(s, e);
        }
        pthread_mutex_unlock(&s->lock);
        atomic_fetch_add_explicit(&c->hits, 1, memory_order_relaxed);
        return e;
    }
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_add_explicit(&c->misses, 1, memory_order_relaxed);
    return NULL;
}

ll__entry *ll__cache_put(ll_cache *c, uint64_t source, uint32_t frame, uint8_t *data,
                         uint32_t cap, uint32_t valid, int verified) {
    ll__entry *n = malloc(sizeof *n);
    if (!n) {
        ll__cache_discard(c, data, cap);
        return NULL;
    }
    uint64_t h = mix(source, frame);
    shard *s = shard_of(c, h);
    ll__entry *stale = NULL;
    pthread_mutex_lock(&s->lock);
    ll__entry **slot = find_slot(s, h, source, frame);
    ll__entry *old = *slot;
    if (old && (old->verified || (!verified && old->valid >= valid))) {
        /* Another thread decoded it first (or further, or verified): serve theirs. */
        old->pins++;
        pthread_mutex_unlock(&s->lock);
        free(n);
        ll__cache_discard(c, data, cap);
        return old;
    }
    if (old) {
        unlink_entry(c, s, old);
        if (old->pins == 0) stale = old;
        slot = find_slot(s, h, source, frame);
    }
    *n = (ll__entry){.source = source, .frame = frame, .valid = valid, .cap = cap, .verified = verified,
                     .linked = 1, .pins = 1, .data = data};
    n->hnext = *slot;
    *slot = n;
    lru_push_front(s, n);
    s->count++;
    if (s->count > s->nbuckets * 2) grow(s);
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_add(&c->entries, 1);
    atomic_fetch_add_explicit(&c->inserts, 1, memory_order_relaxed);
    if (stale) entry_destroy(c, stale);
    return n;
}

void ll__cache_release(ll_cache *c, ll__entry *e) {
    shard *s = shard_of(c, mix(e->source, e->frame));
    pthread_mutex_lock(&s->lock);
    int dead = --e->pins == 0 && !e->linked;
    pthread_mutex_unlock(&s->lock);
    if (dead) entry_destroy(c, e);
}

uint64_t ll__cache_new_source(ll_cache *c) {
    /* Keys from here have the top bit set, so they never meet a caller's key
     * unless the caller asks for that range on purpose. */
    return atomic_fetch_add(&c->next_source, 1) | (1ull << 63);
}

void ll__cache_count_bypass(ll_cache *c) {
    atomic_fetch_add_explicit(&c->bypasses, 1, memory_order_relaxed);
}

void ll_cache_get_stats(ll_cache *c, ll_cache_stats *out) {
    out->hits = atomic_load(&c->hits);
    out->misses = atomic_load(&c->misses);
    out->inserts = atomic_load(&c->inserts);
    out->evictions = atomic_load(&c->evictions);
    out->bypasses = atomic_load(&c->bypasses);
    out->bytes = atomic_load(&c->bytes);
    out->peak_bytes = atomic_load(&c->peak);
    out->entries = atomic_load(&c->entries);
    out->budget = atomic_load(&c->budget);
}

void ll_cache_set_budget(ll_cache *c, uint64_t budget_bytes) {
    atomic_store(&c->budget, budget_bytes);
    pool_set_limit(&c->pool, pool_limit(budget_bytes));
    while (atomic_load(&c->bytes) > budget_bytes) {
        ll__entry *v = evict_one(c);
        if (!v) break; /* the rest is pinned; it goes when released */
        entry_destroy(c, v);
    }
}

void ll_cache_clear(ll_cache *c) {
    for (int i = 0; i < SHARDS; i++) {
        shard *s = &c->shards[i];
        ll__entry *dead = NULL;
        pthread_mutex_lock(&s->lock);
        ll__entry *e = s->tail;
        while (e) {
            ll__entry *prev = e->lprev;
            if (e->pins == 0) {
                unlink_entry(c, s, e);
                e->hnext = dead;
                dead = e;
            }
            e = prev;
        }
        pthread_mutex_unlock(&s->lock);
        while (dead) {
            ll__entry *next = dead->hnext;
            atomic_fetch_add(&c->evictions, 1);
            entry_destroy(c, dead);
            dead = next;
        }
    }
}

void ll_cache_free(ll_cache *c) {
    if (!c) return;
    for (int i = 0; i < SHARDS; i++) {
        shard *s = &c->shards[i];
        ll__entry *e = s->head;
        while (e) {
            ll__entry *next = e->lnext;
            ll__buf_put(NULL, e->data, e->cap);
            free(e);
            e = next;
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->lock);
    }
    pool_destroy(&c->pool);
    pthread_mutex_destroy(&c->claim_lock);
    pthread_cond_destroy(&c->claim_cv);
    free(c);
}

int ll__cache_claim(ll_cache *c, uint64_t source, uint32_t frame, int slow, int *slot) {
    *slot = -1;
    pthread_mutex_lock(&c->claim_lock);
    int waited = 0;
    for (;;) {
        int held = -1, free_slot = -1;
        for (int k = 0; k < CLAIMS; k++) {
            if (!c->claims[k].used) {
                if (free_slot < 0) free_slot = k;
            } else if (c->claims[k].source == source && c->claims[k].frame == frame) {
                held = k;
                break;
            }
        }
        if (held < 0) {
            if (waited) break; /* released while we waited: look in the cache again */
            if (free_slot >= 0) {
                c->claims[free_slot] = (claim){.source = source, .frame = frame, .used = 1, .slow = slow};
                *slot = free_slot;
            }
            pthread_mutex_unlock(&c->claim_lock);
            return LL__CLAIM_MINE; /* (a full table: load it unrecorded, as before claims) */
        }
        if (c->claims[held].slow) { /* its holder may be waiting on a host (a GIL): never wait for it */
            pthread_mutex_unlock(&c->claim_lock);
            return LL__CLAIM_BUSY;
        }
        waited = 1;
        pthread_cond_wait(&c->claim_cv, &c->claim_lock);
    }
    pthread_mutex_unlock(&c->claim_lock);
    return LL__CLAIM_LOADED;
}

void ll__cache_unclaim(ll_cache *c, int slot) {
    if (slot < 0 || slot >= CLAIMS) return;
    pthread_mutex_lock(&c->claim_lock);
    c->claims[slot].used = 0;
    pthread_cond_broadcast(&c->claim_cv);
    pthread_mutex_unlock(&c->claim_lock);
}
