/* index.c - an image's merged tree: built from its layers' TOCs, stored as one
 * position-independent buffer, validated when opened, served by lookups.
 *
 * The merge has exactly the semantics of lazylayer/image/tree.py (Tree), which
 * is the specification: whiteouts first within each layer and on the layers
 * below only, later entries replacing earlier ones, a directory over a
 * directory updating its metadata, parents a layer does not list made (within
 * a budget of the layer's entries + 256), symlinked parents followed inside the
 * root when they lead to a directory, hardlinks sharing their target's inode.
 * One deliberate difference: Tree caches the last parent directory it looked
 * up and, in two cases, uses it after it went stale (a layer whose whiteouts
 * removed it; a symlink replaced by a directory); here the cache is dropped
 * whenever a directory or symlink is removed or replaced, so the result is
 * always what a fresh walk gives.
 *
 * Building: nodes (a name in a directory) and inodes (what hardlinks share)
 * live in arrays; one hash table maps (children-set id, name) to a node.
 * Clearing a directory (an opaque whiteout) gives it a new children-set id, so
 * it costs O(1), and removed subtrees are just unreachable.  At the end a
 * breadth-first walk from the root numbers the reachable inodes (root 1, then
 * in walk order, entries in name order: deterministic), counts links and
 * writes the stored form.  Memory is linear in the TOCs (they are kept until
 * the end: names point into them).
 *
 * Speed (issue 16: <= 50 ms from decompressed TOCs for a 63k-entry image,
 * benchmarks/index.py): most of the time is cache misses and first touches of
 * fresh pages (a page fault costs ~1 us here), so the builder's records are
 * small and point into the TOCs instead of copying them: an inode is 16 bytes
 * (its TOC entry, number, link count), a node 24 (its kind kept there, so the
 * walks never visit the inode); the hash table is sized once; the final walk
 * groups names in the order they were made (TOC order: a tar lists a
 * directory sorted, so the sort is then one pass) and sorts with the names'
 * first 8 bytes as an integer key.
 *
 * The stored form is described byte by byte in docs/index-format.md.  Every
 * lookup reads it through bounds already proven by ll_index_open_buffer (or by
 * construction), so a buffer that passed the checks cannot make a lookup read
 * out of bounds or loop: inode numbers are in range, a directory's parent has
 * a smaller number, directory entries are in range and sorted, every string is
 * NUL-terminated inside the pool.
 *
 * Threads: an ll_index is immutable once made; every function may run on any
 * number of threads at once, except ll_index_free. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

/* Profiling hook (a driver that includes this file defines it): marks the end of a phase. */
#ifndef LL__PHASE
#define LL__PHASE(name) ((void)0)
#endif

/* ------------------------------------------------------------------ stored format */

#define IDX_MAGIC "LZLYIDX\0"
#define HDR_SIZE 128
#define INODE_SIZE 80
#define DIRENT_SIZE 16
#define XATTR_SIZE 24
#define LAYER_SIZE 80
#define FRAME_SIZE 56   /* LL_INDEX_FRAME_RECORD */
#define RANGE_SIZE 16
#define CHECKSUM_FROM 24   /* the checksum covers bytes 24..end */

/* header */
#define H_VERSION 8
#define H_HDRSIZE 12
#define H_CHECKSUM 16
#define H_TOTAL 24
#define H_INODES 32
#define H_DIRENTS 40
#define H_XATTRS 48
#define H_FRAMES 56
#define H_RANGES 64
#define H_POOL 72
#define H_LAYERS 80
#define H_FLAGS 84
/* inode */
#define I_KIND 0
#define I_MODE 4
#define I_NLINK 8
#define I_UID 12
#define I_GID 16
#define I_NSEC 20
#define I_SEC 24
#define I_SIZE 32
#define I_DATA 40     /* reg: offset in the tar; symlink: pool offset of the target; dir: first entry */
#define I_COUNT 48    /* dir: entries */
#define I_PARENT 56   /* dir: parent's ino; char, block: devmajor << 32 | devminor */
#define I_LAYER 64
#define I_NXATTRS 68
#define I_XFIRST 72
/* layer */
#define L_DIGEST 0
#define L_BLOB 8
#define L_TAR 16
#define L_TOCOFF 24
#define L_TOCLEN 32
#define L_FFIRST 40
#define L_FCOUNT 48
#define L_PFIRST 56
#define L_PCOUNT 64
#define L_CODEC 72   /* u32 LL_CODEC_ZSTD / LL_CODEC_RAW, then u32 reserved (0) */

static inline uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}
static inline uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}
static inline void wr32(uint8_t *p, uint32_t v) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    memcpy(p, &v, 4);
}
static inline void wr64(uint8_t *p, uint64_t v) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

struct ll_index {
    const uint8_t *data;
    size_t size;
    uint8_t *owned;                 /* data, when the index holds its own copy */
    uint64_t ninodes, ndirents, nxattrs, nframes, nranges, pool_size;
    uint32_t nlayers;
    const uint8_t *inodes, *dirents, *xattrs, *layers, *frames, *ranges, *pool;
    void (*release)(void *);
    void *release_arg;
};

static inline const uint8_t *inode_at(const ll_index *x, uint64_t ino) {
    return x->inodes + (ino - 1) * INODE_SIZE;
}

/* Section offsets from the counts; 0 if they overflow or do not fit `size`. */
static int layout(ll_index *x, size_t size) {
    uint64_t counts[7] = {x->ninodes, x->ndirents, x->nxattrs, x->nlayers, x->nframes, x->nranges, x->pool_size};
    static const uint64_t rec[7] = {INODE_SIZE, DIRENT_SIZE, XATTR_SIZE, LAYER_SIZE, FRAME_SIZE, RANGE_SIZE, 1};
    const uint8_t **dst[7] = {&x->inodes, &x->dirents, &x->xattrs, &x->layers, &x->frames, &x->ranges, &x->pool};
    uint64_t off = HDR_SIZE;
    for (int i = 0; i < 7; i++) {
        if (counts[i] > (size - off) / rec[i]) return 0;
        *dst[i] = x->data + off;
        off += counts[i] * rec[i];
    }
    return off == size;
}

/* ------------------------------------------------------------------ path resolution
 *
 * Tree.resolve, over either the builder's nodes or a stored index: `..` pops
 * (never above the root, and a non-directory on top pops to its directory),
 * a symlink anywhere but last (or last, with follow) is replaced by its target
 * (absolute: from the root), at most LL_MAX_SYMLINK_HOPS of them, walking
 * through a non-directory is LL_ERR_NOTDIR.  The components still to walk are
 * a stack of text segments, one per symlink followed, so nothing is allocated. */

typedef struct {
    /* child of directory `dir` named name: LL_OK or LL_ERR_NOENT */
    int (*lookup)(const void *ctx, uint64_t dir, const uint8_t *name, size_t len, uint64_t *child);
    int (*kind)(const void *ctx, uint64_t x);
    uint64_t (*parent)(const void *ctx, uint64_t dir);
    void (*target)(const void *ctx, uint64_t x, const uint8_t **t, size_t *len);
    uint64_t root;
} resolver;

typedef struct {
    const uint8_t *p;
    size_t n;
} seg;

/* Drop separators and "." components from the top of the stack (and empty segments). */
static void settle(seg *s, size_t *ns) {
    while (*ns > 0) {
        seg *t = &s[*ns - 1];
        while (t->n > 0) {
            if (t->p[0] == '/') {
                t->p++, t->n--;
            } else if (t->p[0] == '.' && (t->n == 1 || t->p[1] == '/')) {
                t->p++, t->n--;
            } else return;
        }
        (*ns)--;
    }
}

static int resolve_with(const resolver *r, const void *ctx, uint64_t start, const uint8_t *path, size_t len,
                        int follow, uint64_t *out) {
    seg s[LL_MAX_SYMLINK_HOPS + 2];
    size_t ns = 1;
    s[0].p = path;
    s[0].n = len;
    uint64_t dir = start, top = 0;   /* top: a non-directory on top of the walk, 0 if none */
    int have_top = 0, hops = 0;
    for (;;) {
        settle(s, &ns);
        if (ns == 0) break;
        seg *t = &s[ns - 1];
        const uint8_t *slash = memchr(t->p, '/', t->n);
        size_t n = slash ? (size_t)(slash - t->p) : t->n;
        const uint8_t *part = t->p;
        t->p += n;
        t->n -= n;
        if (n == 2 && part[0] == '.' && part[1] == '.') {
            if (have_top) have_top = 0;
            else if (dir != r->root) dir = r->parent(ctx, dir);
            continue;
        }
        if (have_top) return LL_ERR_NOTDIR;
        uint64_t child;
        if (r->lookup(ctx, dir, part, n, &child)) return LL_ERR_NOENT;
        int k = r->kind(ctx, child);
        if (k == LL_KIND_SYMLINK) {
            settle(s, &ns);
            if (ns > 0 || follow) {
                if (++hops > LL_MAX_SYMLINK_HOPS) return LL_ERR_LOOP;
                const uint8_t *tp;
                size_t tn;
                r->target(ctx, child, &tp, &tn);
                if (tn > 0 && tp[0] == '/') dir = r->root;
                s[ns].p = tp;
                s[ns].n = tn;
                ns++;
                continue;
            }
        }
        if (k == LL_KIND_DIR) dir = child;
        else top = child, have_top = 1;
    }
    *out = have_top ? top : dir;
    return LL_OK;
}

/* ------------------------------------------------------------------ lookups on a stored index */

static int name_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c) return c;
    return an < bn ? -1 : an > bn;
}

static int idx_lookup(const void *ctx, uint64_t dir, const uint8_t *name, size_t len, uint64_t *child) {
    const ll_index *x = ctx;
    const uint8_t *in = inode_at(x, dir);
    uint64_t lo = rd64(in + I_DATA), hi = lo + rd64(in + I_COUNT);
    if (len == 0 || len > 255) return LL_ERR_NOENT;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const uint8_t *d = x->dirents + mid * DIRENT_SIZE;
        uint64_t nm = rd64(d + 8);
        int c = name_cmp(x->pool + (nm >> 8), nm & 0xFF, name, len);
        if (c == 0) {
            *child = rd64(d);
            return LL_OK;
        }
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return LL_ERR_NOENT;
}
static int idx_kind(const void *ctx, uint64_t ino) {
    return (int)rd32(inode_at(ctx, ino) + I_KIND);
}
static uint64_t idx_parent(const void *ctx, uint64_t dir) {
    return rd64(inode_at(ctx, dir) + I_PARENT);
}
static void idx_target(const void *ctx, uint64_t ino, const uint8_t **t, size_t *len) {
    const ll_index *x = ctx;
    const uint8_t *in = inode_at(x, ino);
    *t = x->pool + rd64(in + I_DATA);
    *len = (size_t)rd64(in + I_SIZE);
}
static const resolver idx_resolver = {idx_lookup, idx_kind, idx_parent, idx_target, LL_ROOT_INO};

/* ------------------------------------------------------------------ the builder */

/* An inode: the TOC entry that made it (its layer is e->layer), or the implicit
 * directory below.  16 bytes: the metadata stays in the TOC's entry records and
 * is read once, when the stored form is written. */
typedef struct {
    const ll__toc_entry *e;
    uint32_t ino;                /* final number, 0 until the walk reaches it */
    uint32_t nlink;
} binode;

/* A directory a layer does not list (and the root until a layer lists it):
 * Tree's Inode defaults, mode 0755, owner 0, mtime 0. */
static const ll__toc_entry implicit_dir = {.name = (const uint8_t *)"", .link = (const uint8_t *)"",
                                           .type = LL__T_DIR};

typedef struct {
    uint32_t inode;              /* binode index */
    uint32_t cid;                /* directories: id of the current set of children */
    uint32_t parent;             /* node of the directory holding it */
    uint8_t kind;                /* LL_KIND_*: fixed (a directory over a directory only changes its inode) */
    uint8_t name_len;            /* a name is 1..255 bytes (the root's is empty) */
    const uint8_t *name;
} bnode;

#define REMOVED UINT32_MAX       /* a slot whose name was removed (node 0, the root, is never a child) */
typedef struct {
    const uint8_t *name;         /* NULL: never used */
    uint32_t hash, cid, node, name_len;
} slot;

typedef struct {
    binode *inodes;
    size_t ninodes, icap;
    const ll__toc *tocs;
    bnode *nodes;
    size_t nnodes, ncap;
    slot *table;
    size_t tcap, tused;          /* tused: slots ever used (removed ones too) */
    uint32_t ncids;
    int64_t implicit;            /* parents this layer may still make */
    /* Tree._last_parent: the directory node for the last parent path */
    const uint8_t *cache_path;
    size_t cache_len;
    uint32_t cache_node;
    int cache_ok;
    char *err;
    size_t err_size;
} builder;

static inline uint64_t hash_name(const uint8_t *name, size_t len, uint32_t cid) {
    return XXH3_64bits_withSeed(name, len, cid);
}

static slot *find_slot(builder *b, uint32_t cid, const uint8_t *name, size_t len, uint64_t h) {
    size_t mask = b->tcap - 1, i = (size_t)h & mask;
    uint32_t h32 = (uint32_t)(h >> 32);
    for (;;) {
        slot *s = &b->table[i];
        if (!s->name) return s;
        if (s->hash == h32 && s->cid == cid && s->name_len == len && memcmp(s->name, name, len) == 0) return s;
        i = (i + 1) & mask;
    }
}

static int table_grow(builder *b) {
    size_t ncap = b->tcap ? b->tcap * 2 : 1024;
    slot *t = calloc(ncap, sizeof *t);
    if (!t) return LL_ERR_NOMEM;
    slot *old = b->table;
    size_t ocap = b->tcap;
    b->table = t;
    b->tcap = ncap;
    b->tused = 0;
    for (size_t i = 0; i < ocap; i++) {
        slot *s = &old[i];
        if (!s->name || s->node == REMOVED) continue;
        uint64_t h = hash_name(s->name, s->name_len, s->cid);
        slot *d = find_slot(b, s->cid, s->name, s->name_len, h);
        *d = *s;
        b->tused++;
    }
    free(old);
    return LL_OK;
}

/* The slot for (dir, name), with room for one more name reserved first (so it stays valid). */
static slot *slot_for(builder *b, uint32_t dir, const uint8_t *name, size_t len) {
    if ((b->tused + 1) * 4 > b->tcap * 3 && table_grow(b)) return NULL;
    uint32_t cid = b->nodes[dir].cid;
    uint64_t h = hash_name(name, len, cid);
    slot *s = find_slot(b, cid, name, len, h);
    if (!s->name) {
        s->name = name;
        s->name_len = (uint32_t)len;
        s->cid = cid;
        s->hash = (uint32_t)(h >> 32);
        s->node = REMOVED;
        b->tused++;
    }
    return s;
}

static uint32_t child_of(builder *b, uint32_t dir, const uint8_t *name, size_t len) {
    uint32_t cid = b->nodes[dir].cid;
    slot *s = find_slot(b, cid, name, len, hash_name(name, len, cid));
    return s->name ? s->node : REMOVED;
}

static int set_child(builder *b, uint32_t dir, uint32_t node) {
    if ((b->tused + 1) * 4 > b->tcap * 3 && table_grow(b)) return LL_ERR_NOMEM;
    bnode *n = &b->nodes[node];
    uint32_t cid = b->nodes[dir].cid;
    uint64_t h = hash_name(n->name, n->name_len, cid);
    slot *s = find_slot(b, cid, n->name, n->name_len, h);
    if (!s->name) {
        s->name = n->name;
        s->name_len = n->name_len;
        s->cid = cid;
        s->hash = (uint32_t)(h >> 32);
        b->tused++;
    }
    s->node = node;
    return LL_OK;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return LL_OK;
    size_t n = *cap ? *cap * 2 : 1024;
    while (n < need) n *= 2;
    if (n > SIZE_MAX / elem || n > UINT32_MAX - 1) return LL_ERR_NOMEM;
    void *q = realloc(*p, n * elem);
    if (!q) return LL_ERR_NOMEM;
    *p = q;
    *cap = n;
    return LL_OK;
}

/* A new inode for TOC entry e (never a hardlink: those share their target's inode). */
static int new_inode(builder *b, const ll__toc_entry *e, uint32_t *out) {
    if (grow((void **)&b->inodes, &b->icap, b->ninodes + 1, sizeof *b->inodes)) return LL_ERR_NOMEM;
    *out = (uint32_t)b->ninodes++;
    b->inodes[*out].e = e;
    b->inodes[*out].ino = 0;
    b->inodes[*out].nlink = 0;
    return LL_OK;
}

static int new_node(builder *b, uint32_t parent, const uint8_t *name, size_t len, uint32_t inode, int kind,
                    uint32_t *out) {
    if (grow((void **)&b->nodes, &b->ncap, b->nnodes + 1, sizeof *b->nodes)) return LL_ERR_NOMEM;
    if (kind == LL_KIND_DIR && b->ncids == UINT32_MAX) return LL_ERR_NOMEM;
    *out = (uint32_t)b->nnodes++;
    bnode *n = &b->nodes[*out];
    n->inode = inode;
    n->cid = kind == LL_KIND_DIR ? ++b->ncids : 0;
    n->parent = parent;
    n->kind = (uint8_t)kind;
    n->name = name;
    n->name_len = (uint8_t)len;   /* 0..255: TOC names are checked */
    return LL_OK;
}

static inline int node_kind(const builder *b, uint32_t node) {
    return b->nodes[node].kind;
}

static int b_lookup(const void *ctx, uint64_t dir, const uint8_t *name, size_t len, uint64_t *child) {
    builder *b = (builder *)ctx;
    uint32_t c = child_of(b, (uint32_t)dir, name, len);
    if (c == REMOVED) return LL_ERR_NOENT;
    *child = c;
    return LL_OK;
}
static int b_kind(const void *ctx, uint64_t x) {
    return node_kind(ctx, (uint32_t)x);
}
static uint64_t b_parent(const void *ctx, uint64_t dir) {
    return ((const builder *)ctx)->nodes[dir].parent;
}
static void b_target(const void *ctx, uint64_t x, const uint8_t **t, size_t *len) {
    const builder *b = ctx;
    const ll__toc_entry *e = b->inodes[b->nodes[x].inode].e;
    *t = e->link;
    *len = e->link_len;
}
static const resolver b_resolver = {b_lookup, b_kind, b_parent, b_target, 0};

static void show_entry(char *dst, size_t n, const ll__toc_entry *e) {
    ll__show(dst, n, e->name, e->name_len);
}

/* Tree._parent_for: the directory node for `path` (a parent of an entry), made if missing. */
static int parent_for(builder *b, uint32_t layer, const uint8_t *path, size_t len, uint32_t *out) {
    if (b->cache_ok && b->cache_len == len && memcmp(b->cache_path, path, len) == 0) {
        *out = b->cache_node;
        return LL_OK;
    }
    uint32_t node = 0;
    size_t pos = 0;
    while (pos < len) {
        const uint8_t *part = path + pos, *slash = memchr(part, '/', len - pos);
        size_t n = slash ? (size_t)(slash - part) : len - pos;
        pos += n + 1;
        uint32_t child = child_of(b, node, part, n);
        if (child != REMOVED && node_kind(b, child) == LL_KIND_SYMLINK) {
            uint64_t target;
            if (resolve_with(&b_resolver, b, node, part, n, 1, &target) == LL_OK &&
                node_kind(b, (uint32_t)target) == LL_KIND_DIR) {
                node = (uint32_t)target;
                continue;
            }
            child = REMOVED;
        }
        if (child == REMOVED || node_kind(b, child) != LL_KIND_DIR) {
            if (--b->implicit < 0) {
                char shown[220];
                ll__show(shown, sizeof shown, path, len);
                ll__set_err(b->err, b->err_size,
                            "layer %u: a layer makes more parent directories it does not list than it has entries "
                            "(at '%s')", layer, shown);
                return LL_ERR_LIMIT;
            }
            uint32_t ino;
            if (new_inode(b, &implicit_dir, &ino)) return LL_ERR_NOMEM;
            if (new_node(b, node, part, n, ino, LL_KIND_DIR, &child) || set_child(b, node, child)) return LL_ERR_NOMEM;
            b->cache_ok = 0;   /* it may have replaced a symlink */
        }
        node = child;
    }
    b->cache_ok = 1;
    b->cache_path = path;
    b->cache_len = len;
    b->cache_node = node;
    *out = node;
    return LL_OK;
}

static int add_entry(builder *b, uint32_t layer, size_t index, const ll__toc_entry *e) {
    const uint8_t *name = e->name;
    if (e->name_len == 1 && name[0] == '.') {   /* the root */
        if (e->type == LL__T_DIR) {
            uint32_t ino;
            if (new_inode(b, e, &ino)) return LL_ERR_NOMEM;
            b->nodes[0].inode = ino;
        }
        return LL_OK;
    }
    uint32_t parent;
    int rc = parent_for(b, layer, name, e->base ? e->base - 1 : 0, &parent);
    if (rc) return rc;
    const uint8_t *base = name + e->base;
    size_t blen = e->name_len - e->base;
    slot *s = slot_for(b, parent, base, blen);
    if (!s) return LL_ERR_NOMEM;
    uint32_t old = s->node;
    int old_kind = old == REMOVED ? 0 : node_kind(b, old);
    if (old_kind == LL_KIND_DIR || old_kind == LL_KIND_SYMLINK) {
        if (e->type != LL__T_DIR || old_kind == LL_KIND_SYMLINK) b->cache_ok = 0;
    }
    uint32_t ino, node;
    if (e->type == LL__T_DIR) {
        if (new_inode(b, e, &ino)) return LL_ERR_NOMEM;
        if (old_kind == LL_KIND_DIR) {
            b->nodes[old].inode = ino;
            return LL_OK;
        }
        if (new_node(b, parent, base, blen, ino, LL_KIND_DIR, &node)) return LL_ERR_NOMEM;
        s->node = node;
        return LL_OK;
    }
    if (e->type == LL__T_HARDLINK) {
        uint64_t t;
        if (resolve_with(&b_resolver, b, 0, e->link, e->link_len, 0, &t) != LL_OK ||
            node_kind(b, (uint32_t)t) == LL_KIND_DIR) {
            char s1[120], s2[120];
            show_entry(s1, sizeof s1, e);
            ll__show(s2, sizeof s2, e->link, e->link_len);
            ll__set_err(b->err, b->err_size,
                        "layer %u, entry %zu: hardlink '%s' -> '%s': the target is not a file of this image", layer,
                        index, s1, s2);
            return LL_ERR_FORMAT;
        }
        if (new_node(b, parent, base, blen, b->nodes[t].inode, node_kind(b, (uint32_t)t), &node)) return LL_ERR_NOMEM;
        s->node = node;
        return LL_OK;
    }
    if (e->type == LL__T_UNKNOWN) {
        char s1[120], s2[80];
        show_entry(s1, sizeof s1, e);
        ll__show(s2, sizeof s2, e->type_str, e->type_len);
        ll__set_err(b->err, b->err_size, "layer %u, entry %zu: '%s' has an unknown type '%s'", layer, index, s1, s2);
        return LL_ERR_FORMAT;
    }
    if (new_inode(b, e, &ino)) return LL_ERR_NOMEM;
    if (new_node(b, parent, base, blen, ino, e->type, &node)) return LL_ERR_NOMEM;
    s->node = node;
    return LL_OK;
}

static int is_whiteout(const ll__toc_entry *e) {
    return e->whiteout;   /* e->name_len - e->base >= 4 && memcmp(e->name + e->base, ".wh.", 4) == 0 */
}

static int apply_layer(builder *b, uint32_t layer, const ll__toc *toc) {
    b->implicit = (int64_t)toc->nentries + LL__MAX_PATH_DEPTH;
    for (size_t i = 0; i < toc->nentries; i++) {   /* whiteouts first: they act on the layers below */
        const ll__toc_entry *e = &toc->entries[i];
        if (!is_whiteout(e)) continue;
        const uint8_t *base = e->name + e->base;
        size_t blen = e->name_len - e->base;
        uint64_t dir;
        if (resolve_with(&b_resolver, b, 0, e->name, e->base ? e->base - 1 : 0, 1, &dir) != LL_OK ||
            node_kind(b, (uint32_t)dir) != LL_KIND_DIR)
            continue;
        if (blen == 12 && memcmp(base, ".wh..wh..opq", 12) == 0) {
            if (b->ncids == UINT32_MAX) return LL_ERR_NOMEM;
            b->nodes[dir].cid = ++b->ncids;
        } else if (!(blen >= 8 && memcmp(base, ".wh..wh.", 8) == 0) && blen > 4) {
            uint32_t cid = b->nodes[dir].cid;
            slot *s = find_slot(b, cid, base + 4, blen - 4, hash_name(base + 4, blen - 4, cid));
            if (s->name) s->node = REMOVED;
        }
    }
    b->cache_ok = 0;
    for (size_t i = 0; i < toc->nentries; i++) {
        const ll__toc_entry *e = &toc->entries[i];
        if (is_whiteout(e)) continue;
        int rc = add_entry(b, layer, i, e);
        if (rc) {
            if (rc == LL_ERR_NOMEM) ll__set_err(b->err, b->err_size, "out of memory building the index");
            return rc;
        }
    }
    return LL_OK;
}

/* ------------------------------------------------------------------ writing the stored form */

/* A live name while writing: its first 8 bytes big-endian (zero-padded: names
 * hold no NUL, so the padding sorts before any byte, as a shorter prefix does)
 * decide most comparisons without touching the name's bytes. */
typedef struct {
    uint64_t key;
    const uint8_t *name;
    uint32_t node;
    uint8_t len;
    uint8_t kind;
} kid;

static inline uint64_t name_key(const uint8_t *name, size_t len) {
    uint64_t k = 0;
    for (size_t i = 0; i < 8; i++) k = k << 8 | (i < len ? name[i] : 0);
    return k;
}

static inline int kid_less(const kid *a, const kid *b) {
    if (a->key != b->key) return a->key < b->key;
    return name_cmp(a->name, a->len, b->name, b->len) < 0;
}

static void insertion_sort(kid *a, size_t n) {
    for (size_t i = 1; i < n; i++) {
        if (!kid_less(&a[i], &a[i - 1])) continue;
        kid t = a[i];
        size_t j = i;
        do {
            a[j] = a[j - 1];
            j--;
        } while (j > 0 && kid_less(&t, &a[j - 1]));
        a[j] = t;
    }
}

/* Sort a directory's names: nothing to do when already in order (tar layers
 * list a directory's names sorted, and they come here in TOC order); else
 * insertion-sorted runs of 16 merged bottom-up through tmp (n records):
 * O(n log n) whatever the input. */
#define RUN 16
static void sort_kids(kid *a, size_t n, kid *tmp) {
    size_t i = 1;
    while (i < n && kid_less(&a[i - 1], &a[i])) i++;
    if (i >= n) return;
    if (n <= 2 * RUN) {
        insertion_sort(a, n);
        return;
    }
    for (size_t r = 0; r < n; r += RUN) insertion_sort(a + r, n - r < RUN ? n - r : RUN);
    kid *src = a, *dst = tmp;
    for (size_t w = RUN; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t x = lo, y = mid, o = lo;
            while (x < mid && y < hi) dst[o++] = kid_less(&src[y], &src[x]) ? src[y++] : src[x++];
            while (x < mid) dst[o++] = src[x++];
            while (y < hi) dst[o++] = src[y++];
        }
        kid *t = src;
        src = dst;
        dst = t;
    }
    if (src != a) memcpy(a, src, n * sizeof *a);
}

static inline const ll__toc_xattr *entry_xattrs(const builder *b, const ll__toc_entry *e) {
    return e->nxattrs ? b->tocs[e->layer].xattrs + e->xattr_first : NULL;
}

static uint64_t xattr_pool(const builder *b, const ll__toc_entry *e) {
    const ll__toc_xattr *x = entry_xattrs(b, e);
    uint64_t n = 0;
    for (uint32_t i = 0; i < e->nxattrs; i++) n += x[i].name_len + 1 + x[i].value_len + 1;
    return n;
}

static int finish(builder *b, const ll_index_layer *layers, const ll__toc *tocs, uint32_t nl, ll_index **out) {
    int rc = LL_ERR_NOMEM;
    kid *kids = NULL, *tmp = NULL;
    size_t *start = NULL;
    uint32_t *queue = NULL, *order = NULL, *gcid = NULL;
    uint64_t *first = NULL;
    uint8_t *buf = NULL;
    /* Live names grouped by children-set id (a counting sort), each group in
     * the order the names were made (node order, which is TOC order). */
    size_t nk = 0;
    start = calloc((size_t)b->ncids + 2, sizeof *start);
    gcid = malloc(b->nnodes * sizeof *gcid);
    queue = malloc(b->nnodes * sizeof *queue);
    order = malloc((b->ninodes + 1) * sizeof *order);
    if (!start || !gcid || !queue || !order) goto out;
    memset(gcid, 0xFF, b->nnodes * sizeof *gcid);
    for (size_t i = 0; i < b->tcap; i++) {
        const slot *s = &b->table[i];
        if (!s->name || s->node == REMOVED) continue;
        gcid[s->node] = s->cid;   /* a node is in at most one slot */
        start[s->cid + 1]++;
        nk++;
    }
    size_t biggest = 0;
    for (size_t c = 1; c <= (size_t)b->ncids + 1; c++) {
        if (start[c] > biggest) biggest = start[c];
        start[c] += start[c - 1];
    }
    kids = malloc((nk + 1) * sizeof *kids);
    tmp = malloc((biggest + 1) * sizeof *tmp);
    if (!kids || !tmp) goto out;
    for (size_t i = 1; i < b->nnodes; i++) {
        if (gcid[i] == UINT32_MAX) continue;
        const bnode *n = &b->nodes[i];
        kid *k = &kids[start[gcid[i]]++];
        k->key = name_key(n->name, n->name_len);
        k->name = n->name;
        k->len = n->name_len;
        k->kind = n->kind;
        k->node = (uint32_t)i;
    }
    LL__PHASE("f_group");
    /* start[c] is now the end of group c: group c is [start[c-1], start[c]) */
    for (size_t i = 0; i < b->ninodes; i++) b->inodes[i].ino = 0, b->inodes[i].nlink = 0;
    /* Breadth-first from the root: number inodes, count links and what the pool holds. */
    size_t qn = 0, ndirents = 0, nxattrs = 0;
    uint64_t nino = 0, pool = 0;
    queue[qn++] = 0;
    b->inodes[b->nodes[0].inode].ino = (uint32_t)++nino;
    order[nino] = b->nodes[0].inode;
    for (size_t q = 0; q < qn; q++) {
        bnode *d = &b->nodes[queue[q]];
        size_t lo = d->cid ? start[d->cid - 1] : 0, hi = start[d->cid];
        if (hi - lo > 1) sort_kids(kids + lo, hi - lo, tmp);
        uint32_t subdirs = 0;
        ndirents += hi - lo;
        for (size_t k = lo; k < hi; k++) {
            uint32_t inode = b->nodes[kids[k].node].inode;
            binode *ci = &b->inodes[inode];
            pool += kids[k].len + 1;
            if (!ci->ino) {
                const ll__toc_entry *e = ci->e;
                ci->ino = (uint32_t)++nino;
                order[nino] = inode;
                if (e->type == LL__T_SYMLINK) pool += e->link_len + 1;
                if (e->nxattrs) {
                    pool += xattr_pool(b, e);
                    nxattrs += e->nxattrs;
                }
            }
            if (kids[k].kind == LL_KIND_DIR) {
                subdirs++;
                queue[qn++] = kids[k].node;
            } else ci->nlink++;
        }
        b->inodes[d->inode].nlink = 2 + subdirs;
    }
    {
        const ll__toc_entry *re = b->inodes[b->nodes[0].inode].e;
        pool += xattr_pool(b, re);
        nxattrs += re->nxattrs;
    }
    LL__PHASE("f_walk");
    size_t nframes = 0, nranges = 0;
    for (uint32_t l = 0; l < nl; l++) {
        nframes += tocs[l].nframes;
        nranges += tocs[l].nprefetch;
        pool += 72;
    }
    if (pool >= ((uint64_t)1 << 56)) {
        ll__set_err(b->err, b->err_size, "the index's string pool would be over 2^56 bytes");
        rc = LL_ERR_LIMIT;
        goto out;
    }
    uint64_t size = HDR_SIZE + nino * INODE_SIZE + ndirents * DIRENT_SIZE + nxattrs * XATTR_SIZE +
                    (uint64_t)nl * LAYER_SIZE + nframes * FRAME_SIZE + nranges * RANGE_SIZE + pool;
    if (size > SIZE_MAX) goto out;
    buf = calloc(1, (size_t)size);
    ll_index *x = calloc(1, sizeof *x);
    if (!buf || !x) {
        free(x);
        goto out;
    }
    LL__PHASE("f_alloc");
    x->data = x->owned = buf;
    x->size = (size_t)size;
    x->ninodes = nino;
    x->ndirents = ndirents;
    x->nxattrs = nxattrs;
    x->nlayers = nl;
    x->nframes = nframes;
    x->nranges = nranges;
    x->pool_size = pool;
    layout(x, (size_t)size);
    uint8_t *P = (uint8_t *)x->pool;
    uint64_t po = 0, xo = 0, de = 0;
    /* dirents of each directory, in queue (= inode) order; first[q] for the inode records */
    first = malloc((qn + 1) * sizeof *first);
    if (!first) {
        ll_index_free(x);
        buf = NULL;
        goto out;
    }
    for (size_t q = 0; q < qn; q++) {
        bnode *d = &b->nodes[queue[q]];
        size_t lo = d->cid ? start[d->cid - 1] : 0, hi = start[d->cid];
        first[q] = de;
        for (size_t k = lo; k < hi; k++) {
            uint8_t *r = (uint8_t *)x->dirents + de++ * DIRENT_SIZE;
            wr64(r, b->inodes[b->nodes[kids[k].node].inode].ino);
            wr64(r + 8, po << 8 | kids[k].len);
            memcpy(P + po, kids[k].name, kids[k].len);
            po += kids[k].len + 1;
        }
    }
    LL__PHASE("f_dirents");
    /* inode records; directories' parents from the queue (a directory's parent is earlier) */
    static const uint32_t fmt[] = {0, S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO};
    size_t q = 0;
    for (uint64_t ino = 1; ino <= nino; ino++) {
        const binode *i = &b->inodes[order[ino]];
        const ll__toc_entry *e = i->e;
        uint32_t kind = e->type;   /* LL__T_REG..LL__T_FIFO are LL_KIND_REG..LL_KIND_FIFO */
        uint8_t *r = (uint8_t *)x->inodes + (ino - 1) * INODE_SIZE;
        wr32(r + I_KIND, kind);
        wr32(r + I_MODE, kind == LL_KIND_SYMLINK ? S_IFLNK | 0777
                         : fmt[kind] | (e->has_mode ? e->mode : kind == LL_KIND_DIR ? 0755 : 0644));
        wr32(r + I_NLINK, i->nlink);
        wr32(r + I_UID, e->uid);
        wr32(r + I_GID, e->gid);
        wr32(r + I_NSEC, e->mtime_nsec);
        wr64(r + I_SEC, (uint64_t)e->mtime_sec);
        wr32(r + I_LAYER, kind == LL_KIND_REG ? e->layer : (uint32_t)-1);
        if (kind == LL_KIND_REG) {
            wr64(r + I_SIZE, e->size);
            wr64(r + I_DATA, e->offset);
        } else if (kind == LL_KIND_SYMLINK) {
            wr64(r + I_SIZE, e->link_len);
            wr64(r + I_DATA, po);
            memcpy(P + po, e->link, e->link_len);
            po += e->link_len + 1;
        } else if (kind == LL_KIND_DIR) {
            /* the q-th directory in the queue has the q-th smallest directory inode number */
            bnode *d = &b->nodes[queue[q]];
            size_t lo = d->cid ? start[d->cid - 1] : 0, hi = start[d->cid];
            wr64(r + I_DATA, first[q]);
            wr64(r + I_COUNT, hi - lo);
            wr64(r + I_PARENT, queue[q] == 0 ? LL_ROOT_INO : b->inodes[b->nodes[d->parent].inode].ino);
            q++;
        } else if (kind == LL_KIND_CHAR || kind == LL_KIND_BLOCK) {
            wr64(r + I_PARENT, (uint64_t)e->devmajor << 32 | e->devminor);
        }
        wr32(r + I_NXATTRS, e->nxattrs);
        wr64(r + I_XFIRST, xo);
        const ll__toc_xattr *xa = entry_xattrs(b, e);
        for (uint32_t k = 0; k < e->nxattrs; k++) {
            uint8_t *xr = (uint8_t *)x->xattrs + xo++ * XATTR_SIZE;
            const ll__toc_xattr *a = &xa[k];
            wr64(xr, po);
            wr32(xr + 16, a->name_len);
            memcpy(P + po, a->name, a->name_len);
            po += a->name_len + 1;
            wr64(xr + 8, po);
            wr32(xr + 20, a->value_len);
            memcpy(P + po, a->value, a->value_len);
            po += a->value_len + 1;
        }
    }
    LL__PHASE("f_inodes");
    uint64_t fo = 0, ro = 0;
    for (uint32_t l = 0; l < nl; l++) {
        uint8_t *r = (uint8_t *)x->layers + (size_t)l * LAYER_SIZE;
        const ll__toc *t = &tocs[l];
        wr64(r + L_DIGEST, po);
        memcpy(P + po, layers[l].digest, 71);
        po += 72;
        wr64(r + L_BLOB, layers[l].blob_size);
        wr64(r + L_TAR, t->tar_size);
        wr64(r + L_TOCOFF, layers[l].toc_offset);
        wr64(r + L_TOCLEN, layers[l].toc_length);
        wr64(r + L_FFIRST, fo);
        wr64(r + L_FCOUNT, t->nframes);
        wr32(r + L_CODEC, t->codec);
        wr32(r + L_CODEC + 4, 0);
        wr64(r + L_PFIRST, ro);
        wr64(r + L_PCOUNT, t->nprefetch);
        for (size_t i = 0; i < t->nframes; i++) {
            uint8_t *f = (uint8_t *)x->frames + fo++ * FRAME_SIZE;
            wr64(f, t->frames[i].c_offset);
            wr64(f + 8, t->frames[i].d_offset);
            wr32(f + 16, t->frames[i].c_size);
            wr32(f + 20, t->frames[i].d_size);
            memcpy(f + 24, t->frames[i].sha256, 32);
        }
        for (size_t i = 0; i < t->nprefetch; i++) {
            uint8_t *p = (uint8_t *)x->ranges + ro++ * RANGE_SIZE;
            wr64(p, t->prefetch[2 * i]);
            wr64(p + 8, t->prefetch[2 * i + 1]);
        }
    }
    /* header */
    memcpy(buf, IDX_MAGIC, 8);
    wr32(buf + H_VERSION, LL_INDEX_FORMAT_VERSION);
    wr32(buf + H_HDRSIZE, HDR_SIZE);
    wr64(buf + H_TOTAL, size);
    wr64(buf + H_INODES, nino);
    wr64(buf + H_DIRENTS, ndirents);
    wr64(buf + H_XATTRS, nxattrs);
    wr64(buf + H_FRAMES, nframes);
    wr64(buf + H_RANGES, nranges);
    wr64(buf + H_POOL, pool);
    wr32(buf + H_LAYERS, nl);
    wr32(buf + H_FLAGS, 0);
    LL__PHASE("f_layers");
    wr64(buf + H_CHECKSUM, XXH3_64bits(buf + CHECKSUM_FROM, (size_t)size - CHECKSUM_FROM));
    LL__PHASE("f_checksum");
    *out = x;
    buf = NULL;
    rc = LL_OK;
out:
    if (rc == LL_ERR_NOMEM) ll__set_err(b->err, b->err_size, "out of memory writing the index");
    free(buf);
    free(kids);
    free(tmp);
    free(start);
    free(gcid);
    free(queue);
    free(order);
    free(first);
    return rc;
}

int ll_index_build(const ll_index_layer *layers, uint32_t n, ll_index **out, char *err, size_t err_size) {
    if (err && err_size) err[0] = 0;
    if (!out || (n && !layers)) return LL_ERR_ARG;
    *out = NULL;
    if (n > LL__MAX_LAYERS) {
        ll__set_err(err, err_size, "%u layers: at most %u", n, LL__MAX_LAYERS);
        return LL_ERR_LIMIT;
    }
    int rc = LL_OK;
    ll__toc *tocs = calloc(n ? n : 1, sizeof *tocs);
    builder b;
    memset(&b, 0, sizeof b);
    b.err = err;
    b.err_size = err_size;
    if (!tocs) return LL_ERR_NOMEM;
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {   /* every TOC read and checked first, as the Python Image does */
        rc = ll__toc_load(&layers[i], i, &tocs[i], err, err_size);
        if (rc) goto out;
        total += tocs[i].nentries;
    }
    LL__PHASE("toc_load");
    rc = LL_ERR_NOMEM;
    uint32_t root;
    if (grow((void **)&b.nodes, &b.ncap, total + 1, sizeof *b.nodes) ||
        grow((void **)&b.inodes, &b.icap, total + 1, sizeof *b.inodes))
        goto nomem;
    {   /* the table at its final size at once (3/4 full with every entry a name) */
        size_t cap = 1024;
        while (cap * 3 < (total + 1) * 4 + 1024) cap *= 2;
        b.table = calloc(cap, sizeof *b.table);
        if (!b.table) goto nomem;
        b.tcap = cap;
    }
    b.tocs = tocs;
    if (new_inode(&b, &implicit_dir, &root)) goto nomem;
    uint32_t rnode;
    if (new_node(&b, 0, (const uint8_t *)"", 0, root, LL_KIND_DIR, &rnode)) goto nomem;
    for (uint32_t i = 0; i < n; i++) {
        rc = apply_layer(&b, i, &tocs[i]);
        if (rc) goto out;
    }
    LL__PHASE("merge");
    rc = finish(&b, layers, tocs, n, out);
    goto out;
nomem:
    ll__set_err(err, err_size, "out of memory building the index");
out:
    for (uint32_t i = 0; i < n; i++) ll__toc_free(&tocs[i]);
    free(tocs);
    free(b.inodes);
    free(b.nodes);
    free(b.table);
    LL__PHASE("free");
    return rc;
}

/* ------------------------------------------------------------------ opening a stored index */

#define BAD(...) do { ll__set_err(err, err_size, "index: " __VA_ARGS__); return LL_ERR_FORMAT; } while (0)

static inline int str_ok(const ll_index *x, uint64_t off, uint64_t len) {
    return off < x->pool_size && len < x->pool_size - off && x->pool[off + len] == 0;
}

static int validate(ll_index *x, char *err, size_t err_size) {
    const uint8_t *h = x->data;
    size_t size = x->size;
    if (size < HDR_SIZE) BAD("%zu bytes: shorter than its header", size);
    if (memcmp(h, IDX_MAGIC, 8) != 0) BAD("not a lazylayer index (wrong magic)");
    if (rd32(h + H_VERSION) != LL_INDEX_FORMAT_VERSION)
        BAD("format version %u, this library reads version %u", rd32(h + H_VERSION), LL_INDEX_FORMAT_VERSION);
    if (rd32(h + H_HDRSIZE) != HDR_SIZE) BAD("header size %u", rd32(h + H_HDRSIZE));
    if (rd64(h + H_CHECKSUM) != XXH3_64bits(h + CHECKSUM_FROM, size - CHECKSUM_FROM))
        BAD("checksum mismatch (corrupt or truncated)");
    if (rd64(h + H_TOTAL) != size) BAD("its header says %llu bytes, it has %zu", (unsigned long long)rd64(h + H_TOTAL), size);
    if (rd32(h + H_FLAGS) != 0) BAD("unknown flags %#x", rd32(h + H_FLAGS));
    for (size_t i = H_FLAGS + 4; i < HDR_SIZE; i++)
        if (h[i]) BAD("reserved header bytes are not zero");
    x->ninodes = rd64(h + H_INODES);
    x->ndirents = rd64(h + H_DIRENTS);
    x->nxattrs = rd64(h + H_XATTRS);
    x->nframes = rd64(h + H_FRAMES);
    x->nranges = rd64(h + H_RANGES);
    x->pool_size = rd64(h + H_POOL);
    x->nlayers = rd32(h + H_LAYERS);
    if (x->nlayers > LL__MAX_LAYERS) BAD("%u layers", x->nlayers);
    if (!layout(x, size)) BAD("its sections do not add up to its size");
    if (x->ninodes < 1) BAD("no root inode");
    if (x->pool_size && x->pool[x->pool_size - 1] != 0) BAD("the string pool does not end with NUL");
    if (x->pool_size >= ((uint64_t)1 << 56)) BAD("string pool too large");
    /* layers, their frames (contiguous in the blob and the tar) and prefetch ranges */
    uint64_t fo = 0, ro = 0;
    for (uint32_t l = 0; l < x->nlayers; l++) {
        const uint8_t *r = x->layers + (size_t)l * LAYER_SIZE;
        uint64_t d = rd64(r + L_DIGEST);
        if (!str_ok(x, d, 71) || !ll__digest_ok((const char *)x->pool + d, 71)) BAD("layer %u: bad digest", l);
        uint64_t ff = rd64(r + L_FFIRST), fc = rd64(r + L_FCOUNT), pf = rd64(r + L_PFIRST), pc = rd64(r + L_PCOUNT);
        if (ff != fo || fc > x->nframes - fo || fc > UINT32_MAX) BAD("layer %u: frames out of place", l);
        if (pf != ro || pc > x->nranges - ro) BAD("layer %u: prefetch ranges out of place", l);
        uint32_t codec = rd32(r + L_CODEC);
        if (codec > LL_CODEC_RAW || rd32(r + L_CODEC + 4) != 0) BAD("layer %u: unknown codec", l);
        uint64_t c = 0, dd = 0;
        for (uint64_t i = 0; i < fc; i++) {
            const uint8_t *f = x->frames + (fo + i) * FRAME_SIZE;
            if (rd64(f) != c || rd64(f + 8) != dd || rd32(f + 16) == 0 || rd32(f + 20) > LL_MAX_FRAME_SIZE)
                BAD("layer %u: frame %llu is out of place", l, (unsigned long long)i);
            if (codec == LL_CODEC_RAW && rd32(f + 16) != rd32(f + 20))
                BAD("layer %u: raw frame %llu is not its data as is", l, (unsigned long long)i);
            c += rd32(f + 16);
            dd += rd32(f + 20);
        }
        uint64_t toff = rd64(r + L_TOCOFF), tlen = rd64(r + L_TOCLEN), blob = rd64(r + L_BLOB);
        if (c != toff || dd != rd64(r + L_TAR) || tlen == 0 || toff > blob || tlen > blob - toff)
            BAD("layer %u: frames, TOC position and sizes disagree", l);
        fo += fc;
        ro += pc;
    }
    if (fo != x->nframes || ro != x->nranges) BAD("frames or prefetch ranges not all owned by layers");
    /* xattrs */
    for (uint64_t i = 0; i < x->nxattrs; i++) {
        const uint8_t *r = x->xattrs + i * XATTR_SIZE;
        if (!str_ok(x, rd64(r), rd32(r + 16)) || !str_ok(x, rd64(r + 8), rd32(r + 20)))
            BAD("xattr %llu: out of the pool", (unsigned long long)i);
    }
    /* inodes; directories' entries tile the dirent array in inode order */
    static const uint32_t fmt[] = {0, S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO};
    uint64_t de = 0;
    for (uint64_t ino = 1; ino <= x->ninodes; ino++) {
        const uint8_t *r = inode_at(x, ino);
        uint32_t kind = rd32(r + I_KIND);
        if (kind < 1 || kind > 6) BAD("inode %llu: kind %u", (unsigned long long)ino, kind);
        if ((rd32(r + I_MODE) & S_IFMT) != fmt[kind] || rd32(r + I_MODE) > 0xFFFF)
            BAD("inode %llu: mode does not match its kind", (unsigned long long)ino);
        if (rd32(r + I_NSEC) > 999999999) BAD("inode %llu: bad nanoseconds", (unsigned long long)ino);
        uint64_t xf = rd64(r + I_XFIRST), xn = rd32(r + I_NXATTRS);
        if (xf > x->nxattrs || xn > x->nxattrs - xf) BAD("inode %llu: xattrs out of range", (unsigned long long)ino);
        int32_t layer = (int32_t)rd32(r + I_LAYER);
        if (ino == 1 && kind != LL_KIND_DIR) BAD("the root is not a directory");
        if (kind == LL_KIND_REG) {
            if (layer < 0 || (uint32_t)layer >= x->nlayers) BAD("inode %llu: bad layer", (unsigned long long)ino);
            uint64_t tar = rd64(x->layers + (size_t)layer * LAYER_SIZE + L_TAR);
            uint64_t off = rd64(r + I_DATA), sz = rd64(r + I_SIZE);
            if (off > tar || sz > tar - off) BAD("inode %llu: content outside its layer", (unsigned long long)ino);
        } else if (layer != -1) BAD("inode %llu: a layer on a non-file", (unsigned long long)ino);
        if (kind == LL_KIND_SYMLINK && !str_ok(x, rd64(r + I_DATA), rd64(r + I_SIZE)))
            BAD("inode %llu: symlink target out of the pool", (unsigned long long)ino);
        if (kind != LL_KIND_DIR) {
            if (rd64(r + I_COUNT) != 0) BAD("inode %llu: entries on a non-directory", (unsigned long long)ino);
            continue;
        }
        uint64_t first = rd64(r + I_DATA), count = rd64(r + I_COUNT), parent = rd64(r + I_PARENT);
        if (rd64(r + I_SIZE) != 0) BAD("inode %llu: a directory with a size", (unsigned long long)ino);
        if (first != de || count > x->ndirents - de) BAD("inode %llu: entries out of place", (unsigned long long)ino);
        if (ino == 1 ? parent != 1 : (parent < 1 || parent >= ino || rd32(inode_at(x, parent) + I_KIND) != LL_KIND_DIR))
            BAD("inode %llu: bad parent", (unsigned long long)ino);
        const uint8_t *prev = NULL;
        uint64_t prev_len = 0;
        for (uint64_t i = 0; i < count; i++) {
            const uint8_t *d = x->dirents + (de + i) * DIRENT_SIZE;
            uint64_t child = rd64(d), nm = rd64(d + 8), off = nm >> 8, len = nm & 0xFF;
            if (child < 2 || child > x->ninodes) BAD("inode %llu: entry %llu: bad inode", (unsigned long long)ino,
                                                     (unsigned long long)i);
            if (len == 0 || !str_ok(x, off, len)) BAD("inode %llu: entry %llu: name out of the pool",
                                                      (unsigned long long)ino, (unsigned long long)i);
            const uint8_t *name = x->pool + off;
            if (memchr(name, '/', len) || memchr(name, 0, len) || (name[0] == '.' && (len == 1 || (len == 2 && name[1] == '.'))))
                BAD("inode %llu: entry %llu: bad name", (unsigned long long)ino, (unsigned long long)i);
            const uint8_t *c = inode_at(x, child);   /* in bounds; validated in its turn */
            if (rd32(c + I_KIND) == LL_KIND_DIR && rd64(c + I_PARENT) != ino)
                BAD("inode %llu: entry %llu: a directory whose parent is another", (unsigned long long)ino,
                    (unsigned long long)i);
            if (prev && name_cmp(prev, prev_len, name, len) >= 0)
                BAD("inode %llu: entries not sorted or not unique", (unsigned long long)ino);
            prev = name;
            prev_len = len;
        }
        de += count;
    }
    if (de != x->ndirents) BAD("directory entries not all owned by directories");
    return LL_OK;
}

int ll_index_open_buffer(const void *data, size_t size, int copy, ll_index **out, char *err, size_t err_size) {
    if (err && err_size) err[0] = 0;
    if (!out || (!data && size)) return LL_ERR_ARG;
    *out = NULL;
    ll_index *x = calloc(1, sizeof *x);
    if (!x) return LL_ERR_NOMEM;
    if (copy) {
        x->owned = malloc(size ? size : 1);
        if (!x->owned) {
            free(x);
            return LL_ERR_NOMEM;
        }
        if (size) memcpy(x->owned, data, size);
        x->data = x->owned;
    } else x->data = data;
    x->size = size;
    int rc = validate(x, err, err_size);
    if (rc) {
        free(x->owned);
        free(x);
        return rc;
    }
    *out = x;
    return LL_OK;
}

void ll__index_set_release(ll_index *idx, void (*release)(void *arg), void *arg) {
    idx->release = release;
    idx->release_arg = arg;
}

void ll_index_data(const ll_index *idx, const void **data, size_t *size) {
    if (data) *data = idx ? idx->data : NULL;
    if (size) *size = idx ? idx->size : 0;
}

void ll_index_free(ll_index *idx) {
    if (!idx) return;
    void (*release)(void *) = idx->release;
    void *arg = idx->release_arg;
    free(idx->owned);
    free(idx);
    if (release) release(arg);
}

uint64_t ll_index_inodes(const ll_index *idx) { return idx ? idx->ninodes : 0; }
uint64_t ll_index_names(const ll_index *idx) { return idx ? idx->ndirents + 1 : 0; }
uint32_t ll_index_layers(const ll_index *idx) { return idx ? idx->nlayers : 0; }

static inline int have_inode(const ll_index *idx, uint64_t ino) {
    return idx && ino >= 1 && ino <= idx->ninodes;
}

int ll_index_lookup(const ll_index *idx, uint64_t dir, const char *name, size_t name_len, uint64_t *ino) {
    if (!have_inode(idx, dir) || (!name && name_len) || !ino) return LL_ERR_ARG;
    if (idx_kind(idx, dir) != LL_KIND_DIR) return LL_ERR_NOTDIR;
    return idx_lookup(idx, dir, (const uint8_t *)name, name_len, ino);
}

int ll_index_resolve(const ll_index *idx, const char *path, size_t path_len, int follow, uint64_t *ino) {
    if (!idx || (!path && path_len) || !ino) return LL_ERR_ARG;
    return resolve_with(&idx_resolver, idx, LL_ROOT_INO, (const uint8_t *)(path ? path : ""), path_len, follow, ino);
}

static void fill_stat(const ll_index *idx, uint64_t ino, ll_stat *st) {
    const uint8_t *r = inode_at(idx, ino);
    memset(st, 0, sizeof *st);
    st->ino = ino;
    st->kind = rd32(r + I_KIND);
    st->mode = rd32(r + I_MODE);
    st->nlink = rd32(r + I_NLINK);
    st->uid = rd32(r + I_UID);
    st->gid = rd32(r + I_GID);
    st->mtime_sec = (int64_t)rd64(r + I_SEC);
    st->mtime_nsec = rd32(r + I_NSEC);
    st->size = rd64(r + I_SIZE);
    st->layer = (int32_t)rd32(r + I_LAYER);
    st->nxattrs = rd32(r + I_NXATTRS);
    if (st->kind == LL_KIND_REG) st->offset = rd64(r + I_DATA);
    if (st->kind == LL_KIND_CHAR || st->kind == LL_KIND_BLOCK) {
        uint64_t dev = rd64(r + I_PARENT);
        st->devmajor = (uint32_t)(dev >> 32);
        st->devminor = (uint32_t)dev;
    }
}

int ll_index_stat(const ll_index *idx, uint64_t ino, ll_stat *out) {
    if (!have_inode(idx, ino) || !out) return LL_ERR_ARG;
    fill_stat(idx, ino, out);
    return LL_OK;
}

int ll_index_readdir(const ll_index *idx, uint64_t dir, uint64_t pos, ll_dirent *out, size_t max, size_t *n,
                     uint64_t *count) {
    if (!have_inode(idx, dir) || !n || (!out && max)) return LL_ERR_ARG;
    *n = 0;
    const uint8_t *r = inode_at(idx, dir);
    if (rd32(r + I_KIND) != LL_KIND_DIR) return LL_ERR_NOTDIR;
    uint64_t first = rd64(r + I_DATA), cnt = rd64(r + I_COUNT);
    if (count) *count = cnt;
    size_t k = 0;
    for (uint64_t i = pos; i < cnt && k < max; i++, k++) {
        const uint8_t *d = idx->dirents + (first + i) * DIRENT_SIZE;
        uint64_t nm = rd64(d + 8);
        out[k].name = (const char *)idx->pool + (nm >> 8);
        out[k].name_len = (size_t)(nm & 0xFF);
        fill_stat(idx, rd64(d), &out[k].st);
    }
    *n = k;
    return LL_OK;
}

int ll_index_readlink(const ll_index *idx, uint64_t ino, const char **target, size_t *len) {
    if (!have_inode(idx, ino)) return LL_ERR_ARG;
    const uint8_t *r = inode_at(idx, ino);
    if (rd32(r + I_KIND) != LL_KIND_SYMLINK) return LL_ERR_NOTREG;
    if (target) *target = (const char *)idx->pool + rd64(r + I_DATA);
    if (len) *len = (size_t)rd64(r + I_SIZE);
    return LL_OK;
}

int ll_index_xattr(const ll_index *idx, uint64_t ino, uint32_t i, const char **name, const void **value,
                   size_t *value_len) {
    if (!have_inode(idx, ino)) return LL_ERR_ARG;
    const uint8_t *r = inode_at(idx, ino);
    if (i >= rd32(r + I_NXATTRS)) return LL_ERR_ARG;
    const uint8_t *x = idx->xattrs + (rd64(r + I_XFIRST) + i) * XATTR_SIZE;
    if (name) *name = (const char *)idx->pool + rd64(x);
    if (value) *value = idx->pool + rd64(x + 8);
    if (value_len) *value_len = rd32(x + 20);
    return LL_OK;
}

int ll_index_layer_info(const ll_index *idx, uint32_t layer, const char **digest, uint64_t *blob_size,
                        uint64_t *tar_size, uint32_t *frames) {
    if (!idx || layer >= idx->nlayers) return LL_ERR_ARG;
    const uint8_t *r = idx->layers + (size_t)layer * LAYER_SIZE;
    if (digest) *digest = (const char *)idx->pool + rd64(r + L_DIGEST);
    if (blob_size) *blob_size = rd64(r + L_BLOB);
    if (tar_size) *tar_size = rd64(r + L_TAR);
    if (frames) *frames = (uint32_t)rd64(r + L_FCOUNT);
    return LL_OK;
}

int ll_index_layer_codec(const ll_index *idx, uint32_t layer) {
    if (!idx || layer >= idx->nlayers) return LL_ERR_ARG;
    return (int)rd32(idx->layers + (size_t)layer * LAYER_SIZE + L_CODEC);
}

int ll_index_frame(const ll_index *idx, uint32_t layer, uint32_t i, ll_layer_frame *out) {
    if (!idx || layer >= idx->nlayers || !out) return LL_ERR_ARG;
    const uint8_t *r = idx->layers + (size_t)layer * LAYER_SIZE;
    if (i >= rd64(r + L_FCOUNT)) return LL_ERR_ARG;
    const uint8_t *f = idx->frames + (rd64(r + L_FFIRST) + i) * FRAME_SIZE;
    out->c_offset = rd64(f);
    out->d_offset = rd64(f + 8);
    out->c_size = rd32(f + 16);
    out->d_size = rd32(f + 20);
    memcpy(out->sha256, f + 24, 32);
    return LL_OK;
}

int ll_index_frame_table(const ll_index *idx, uint32_t layer, const void **table, uint32_t *count) {
    if (!idx || layer >= idx->nlayers || !table || !count) return LL_ERR_ARG;
    const uint8_t *r = idx->layers + (size_t)layer * LAYER_SIZE;
    *count = (uint32_t)rd64(r + L_FCOUNT);
    *table = idx->frames + rd64(r + L_FFIRST) * FRAME_SIZE;
    return LL_OK;
}

int ll_index_prefetch(const ll_index *idx, uint32_t layer, uint64_t i, uint64_t *count, uint64_t *offset,
                      uint64_t *length) {
    if (!idx || layer >= idx->nlayers) return LL_ERR_ARG;
    const uint8_t *r = idx->layers + (size_t)layer * LAYER_SIZE;
    uint64_t n = rd64(r + L_PCOUNT);
    if (count) *count = n;
    if (!offset && !length) return LL_OK;
    if (i >= n) return LL_ERR_ARG;
    const uint8_t *p = idx->ranges + (rd64(r + L_PFIRST) + i) * RANGE_SIZE;
    if (offset) *offset = rd64(p);
    if (length) *length = rd64(p + 8);
    return LL_OK;
}
