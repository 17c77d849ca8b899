/* erofs.c - the EROFS view of an index (ll_erofs_build): a metadata image in
 * memory and the layout of the data file that holds every regular file's content.
 *
 * The metadata image, in 4 KiB blocks:
 *   block 0    the superblock at byte 1024, the device table (one slot: the
 *              data file) at 1152;
 *   block 1..  the inodes, root first (nid 0), each a 64-byte extended inode,
 *              then its inline xattrs, then either the chunk index of a regular
 *              file (8-byte aligned) or the tail of a directory or symlink
 *              (FLAT_INLINE); a record never straddles a block unless it is
 *              bigger than one; nid = (offset - 4096) / 32;
 *   then       the whole blocks of directories and symlinks too big to be
 *              inline (FLAT_PLAIN, or the full blocks before an inline tail).
 * Field layouts: fs/erofs/erofs_fs.h of Linux (superblock, erofs_inode_extended,
 * erofs_xattr_ibody_header / erofs_xattr_entry, erofs_inode_chunk_index,
 * erofs_dirent). */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>


#define BLK LL_EROFS_BLOCK
#define EROFS_MAGIC 0xE0F5E1E2u
#define SB_OFFSET 1024
#define DEVT_SLOTOFF 9                 /* device table at 9 x 128 = 1152 */
#define META_BLKADDR 1
#define INODE_SIZE 64
#define DIRENT_SIZE 12
#define XATTR_HEADER 12
#define INCOMPAT_CHUNKED_FILE 0x4
#define INCOMPAT_DEVICE_TABLE 0x8
#define LAYOUT_FLAT_PLAIN 0
#define LAYOUT_FLAT_INLINE 2
#define LAYOUT_CHUNK_BASED 4
#define CHUNK_FORMAT_INDEXES 0x20
#define MAX_NAME 255

enum { FT_UNKNOWN = 0, FT_REG = 1, FT_DIR = 2, FT_CHR = 3, FT_BLK = 4, FT_FIFO = 5, FT_SOCK = 6, FT_LNK = 7 };

struct ll_erofs {
    uint8_t *meta;
    size_t meta_size;
    uint64_t data_size;
    uint64_t nfiles;          /* regular files with content, in data order (layout()) */
    uint64_t *file_ino, *file_off, *file_size;
    uint32_t *file_of;        /* inode -> its place in those arrays (index ino - 1), NO_FILE if none */
    uint64_t ninodes;
};

#define NO_FILE UINT32_MAX

typedef struct {
    uint64_t pos;             /* of the record in the metadata image */
    uint64_t dsize;           /* directory or symlink bytes */
    uint64_t parent;          /* directories: the one that lists it */
    uint32_t xsize;           /* inline xattr bytes (0, or the header and entries) */
    uint32_t rec;             /* record bytes */
    uint32_t blkaddr;         /* FLAT_*: first whole block of data in the metadata image */
    uint32_t nblocks;         /* whole blocks there */
    uint8_t layout, chunkbits;
} slot;

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

static uint8_t file_type(uint32_t kind, uint32_t mode) {
    switch (kind) {
    case LL_KIND_REG: return FT_REG;
    case LL_KIND_DIR: return FT_DIR;
    case LL_KIND_SYMLINK: return FT_LNK;
    case LL_KIND_CHAR: return FT_CHR;
    case LL_KIND_BLOCK: return FT_BLK;
    case LL_KIND_FIFO: return (mode & 0170000) == 0140000 ? FT_SOCK : FT_FIFO;
    default: return FT_UNKNOWN;
    }
}

/* ---- extended attributes: EROFS names them by a namespace index and a suffix */

static const struct { const char *prefix; uint8_t index; int whole; } XPREFIX[] = {
    {"user.", 1, 0}, {"system.posix_acl_access", 2, 1}, {"system.posix_acl_default", 3, 1},
    {"trusted.", 4, 0}, {"security.", 6, 0},
};

static int xattr_split(const char *name, uint8_t *index, size_t *skip) {
    for (size_t i = 0; i < sizeof XPREFIX / sizeof XPREFIX[0]; i++) {
        size_t n = strlen(XPREFIX[i].prefix);
        if (strncmp(name, XPREFIX[i].prefix, n) != 0) continue;
        if (XPREFIX[i].whole && name[n] != 0) continue;
        *index = XPREFIX[i].index;
        *skip = n;
        return 1;
    }
    return 0;
}

/* The inline xattr bytes of `ino` (0 if it has none); writes them at `out` if not NULL. */
static int xattrs(const ll_index *idx, uint64_t ino, uint32_t n, uint8_t *out, uint32_t *size, char *err,
                  size_t err_size) {
    if (!n) { *size = 0; return LL_OK; }
    uint64_t total = XATTR_HEADER;
    for (uint32_t i = 0; i < n; i++) {
        const char *name;
        const void *value;
        size_t vlen, skip;
        uint8_t index;
        int rc = ll_index_xattr(idx, ino, i, &name, &value, &vlen);
        if (rc != LL_OK) return rc;
        if (!xattr_split(name, &index, &skip)) {
            char shown[80];
            ll__show(shown, sizeof shown, name, strlen(name));
            ll__set_err(err, err_size, "inode %llu: extended attribute '%s' is in a namespace EROFS cannot hold",
                        (unsigned long long)ino, shown);
            return LL_ERR_LIMIT;
        }
        size_t nlen = strlen(name) - skip;
        if (nlen > MAX_NAME || vlen > 0xffff) {
            ll__set_err(err, err_size, "inode %llu: extended attribute %u is over EROFS's limits (name 255 bytes, "
                        "value 65535)", (unsigned long long)ino, i);
            return LL_ERR_LIMIT;
        }
        if (out) {
            uint8_t *e = out + total;
            e[0] = (uint8_t)nlen;
            e[1] = index;
            put16(e + 2, (uint16_t)vlen);
            memcpy(e + 4, name + skip, nlen);
            if (vlen) memcpy(e + 4 + nlen, value, vlen);
        }
        total += align_up(4 + nlen + vlen, 4);
    }
    if (total > XATTR_HEADER + 4 * 65534ull) {
        ll__set_err(err, err_size, "inode %llu: %llu bytes of extended attributes, more than an EROFS inode holds",
                    (unsigned long long)ino, (unsigned long long)total);
        return LL_ERR_LIMIT;
    }
    if (out) memset(out, 0, XATTR_HEADER);  /* no name filter, no shared xattrs */
    *size = (uint32_t)total;
    return LL_OK;
}

/* ---- directories: entries in byte order, "." and ".." among them, packed in blocks */

typedef struct {
    const char *name;
    size_t len;
    uint64_t ino;
    uint8_t type;
} dent;

typedef struct {
    dent e[BLK / (DIRENT_SIZE + 1) + 1];
    size_t n, names;
    uint64_t size;            /* bytes so far: whole blocks, then the last one's used bytes */
    uint64_t blocks;          /* blocks flushed */
    /* writing (pass 2); NULL: sizes only */
    uint8_t *meta;
    const slot *slots, *self;
} packer;

static int name_cmp(const char *a, size_t al, const char *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al < bl ? -1 : al > bl);
}

static void pack_flush(packer *p, int last) {
    if (!p->n) return;
    size_t used = p->n * DIRENT_SIZE + p->names;
    if (p->meta) {
        const slot *s = p->self;
        uint8_t *b = p->blocks < s->nblocks ? p->meta + ((uint64_t)s->blkaddr + p->blocks) * BLK
                                            : p->meta + s->pos + INODE_SIZE + s->xsize;
        size_t off = p->n * DIRENT_SIZE;
        for (size_t i = 0; i < p->n; i++) {
            uint8_t *d = b + i * DIRENT_SIZE;
            put64(d, (p->slots[p->e[i].ino - 1].pos - (uint64_t)META_BLKADDR * BLK) / 32);
            put16(d + 8, (uint16_t)off);
            d[10] = p->e[i].type;
            d[11] = 0;
            memcpy(b + off, p->e[i].name, p->e[i].len);
            off += p->e[i].len;
        }
    }
    p->size += last ? used : BLK;
    p->blocks++;
    p->n = p->names = 0;
}

static void pack_add(packer *p, const char *name, size_t len, uint64_t ino, uint8_t type) {
    if ((p->n + 1) * DIRENT_SIZE + p->names + len > BLK) pack_flush(p, 0);
    p->e[p->n++] = (dent){name, len, ino, type};
    p->names += len;
}

/* Pack directory `dir` (whose parent is `parent`) into p; *sub gets its
 * subdirectories' parent set (pass 1) when slots is writable. */
static int pack_dir(const ll_index *idx, uint64_t dir, uint64_t parent, packer *p, slot *slots, char *err,
                    size_t err_size) {
    static const char DOT[] = "..";
    int dots = 0;  /* 0: "." pending, 1: ".." pending, 2: both out */
    uint8_t dir_type = FT_DIR;
    ll_dirent batch[64];
    uint64_t pos = 0, count = 0;
    for (;;) {
        size_t got = 0;
        int rc = ll_index_readdir(idx, dir, pos, batch, 64, &got, &count);
        if (rc != LL_OK) return rc;
        for (size_t i = 0; i < got; i++) {
            const ll_dirent *d = &batch[i];
            if (d->name_len == 0 || d->name_len > MAX_NAME) {
                ll__set_err(err, err_size, "directory inode %llu: a name of %zu bytes (EROFS: 1 to 255)",
                            (unsigned long long)dir, d->name_len);
                return LL_ERR_LIMIT;
            }
            while (dots < 2 && name_cmp(DOT, (size_t)dots + 1, d->name, d->name_len) < 0) {
                pack_add(p, DOT, (size_t)dots + 1, dots ? parent : dir, dir_type);
                dots++;
            }
            pack_add(p, d->name, d->name_len, d->st.ino, file_type(d->st.kind, d->st.mode));
            if (slots && d->st.kind == LL_KIND_DIR) slots[d->st.ino - 1].parent = dir;
        }
        pos += got;
        if (got < 64) break;
    }
    while (dots < 2) {
        pack_add(p, DOT, (size_t)dots + 1, dots ? parent : dir, dir_type);
        dots++;
    }
    pack_flush(p, 1);
    return LL_OK;
}

/* ---- build */

static void write_inode(uint8_t *p, const ll_stat *st, const slot *s, uint16_t icount, uint64_t size, uint32_t iu) {
    put16(p + 0, (uint16_t)((s->layout << 1) | 1));   /* extended inode */
    put16(p + 2, icount);
    put16(p + 4, (uint16_t)st->mode);
    put16(p + 6, 0);
    put64(p + 8, size);
    ll__put_le32(p + 16, iu);
    ll__put_le32(p + 20, (uint32_t)st->ino);
    ll__put_le32(p + 24, st->uid);
    ll__put_le32(p + 28, st->gid);
    put64(p + 32, (uint64_t)st->mtime_sec);
    ll__put_le32(p + 40, st->mtime_nsec);
    ll__put_le32(p + 44, st->nlink);
}

void ll_erofs_free(ll_erofs *e) {
    if (!e) return;
    free(e->meta);
    free(e->file_ino);
    free(e->file_off);
    free(e->file_size);
    free(e->file_of);
    free(e);
}

/* Regular file st->ino (with content) next in the data file, at the next block boundary, unless it
 * has its place already (a hard link met before). */
static int place(ll_erofs *e, const ll_stat *st, uint64_t *cap, char *err, size_t err_size) {
    uint64_t ino = st->ino;
    if (st->kind != LL_KIND_REG || st->size == 0 || e->file_of[ino - 1] != NO_FILE) return LL_OK;
    if (st->size > ((uint64_t)BLK << 31) || (e->data_size + st->size) / BLK > UINT32_MAX - 1) {
        ll__set_err(err, err_size, "inode %llu: the data file would be over 16 TiB, or the file over what "
                    "EROFS maps in one chunk", (unsigned long long)ino);
        return LL_ERR_LIMIT;
    }
    if (e->nfiles == *cap) {   /* (grown as it goes) */
        *cap = *cap ? *cap * 2 : 1024;
        uint64_t *a = realloc(e->file_ino, *cap * sizeof *a);
        if (a) e->file_ino = a;
        uint64_t *b = realloc(e->file_off, *cap * sizeof *b);
        if (b) e->file_off = b;
        uint64_t *c = realloc(e->file_size, *cap * sizeof *c);
        if (c) e->file_size = c;
        if (!a || !b || !c) return LL_ERR_NOMEM;
    }
    e->file_of[ino - 1] = (uint32_t)e->nfiles;
    e->file_ino[e->nfiles] = ino;
    e->file_off[e->nfiles] = e->data_size;
    e->file_size[e->nfiles] = st->size;
    e->nfiles++;
    e->data_size += align_up(st->size, BLK);
    return LL_OK;
}

/* The data file's layout: every regular file's content at a block-aligned offset, in the order a
 * walk of the tree reads them (tar, cp -r, find: depth first, each directory's entries in name
 * order, a subdirectory walked where its name comes), so that filling the data file from its start
 * runs ahead of such a reader and a directory's files lie together whatever layer they came from;
 * then any file no directory lists, in inode order.  A directory met twice (a hostile index) is
 * walked once; the walk keeps one (directory, next entry) pair per level, at most one per inode.
 * build() starts with it; a layout_only build is this alone. */
static int layout(const ll_index *idx, ll_erofs *e, char *err, size_t err_size) {
    uint64_t n = ll_index_inodes(idx), cap = 0;
    if (n >= NO_FILE) {
        ll__set_err(err, err_size, "%llu inodes: the EROFS view holds at most %u", (unsigned long long)n, NO_FILE - 1);
        return LL_ERR_LIMIT;
    }
    typedef struct { uint64_t dir, pos; } level;
    e->ninodes = n;
    e->file_of = malloc((size_t)n * sizeof *e->file_of);
    uint8_t *walked = calloc((size_t)(n + 7) / 8, 1);
    level *stack = malloc((size_t)n * sizeof *stack);
    int rc = e->file_of && walked && stack ? LL_OK : LL_ERR_NOMEM;
    if (rc == LL_OK) memset(e->file_of, 0xff, (size_t)n * sizeof *e->file_of);
    size_t depth = 0;
    if (rc == LL_OK && LL_ROOT_INO <= n) {
        stack[depth++] = (level){LL_ROOT_INO, 0};
        walked[(LL_ROOT_INO - 1) >> 3] |= (uint8_t)(1u << ((LL_ROOT_INO - 1) & 7));
    }
#define WALKED(ino) (walked[((ino) - 1) >> 3] & (1u << (((ino) - 1) & 7)))
    ll_dirent batch[64];
    while (rc == LL_OK && depth > 0) {
        level *top = &stack[depth - 1];
        size_t got = 0, i = 0;
        uint64_t count = 0, sub = 0;
        if ((rc = ll_index_readdir(idx, top->dir, top->pos, batch, 64, &got, &count)) != LL_OK) break;
        if (got == 0) {   /* this directory is done */
            depth--;
            continue;
        }
        while (i < got && !sub) {
            const ll_dirent *d = &batch[i++];
            uint64_t ino = d->st.ino;
            if (ino == 0 || ino > n) {
                rc = LL_ERR_FORMAT;
                break;
            }
            if (d->st.kind == LL_KIND_REG) {
                if ((rc = place(e, &d->st, &cap, err, err_size)) != LL_OK) break;
            } else if (d->st.kind == LL_KIND_DIR && !WALKED(ino)) {
                walked[(ino - 1) >> 3] |= (uint8_t)(1u << ((ino - 1) & 7));
                sub = ino;   /* walked now; the rest of this directory after it */
            }
        }
        top->pos += i;
        if (rc == LL_OK && sub) stack[depth++] = (level){sub, 0};   /* (each directory once: depth <= n) */
    }
#undef WALKED
    for (uint64_t ino = 1; rc == LL_OK && ino <= n; ino++) {
        ll_stat st;
        if ((rc = ll_index_stat(idx, ino, &st)) == LL_OK) rc = place(e, &st, &cap, err, err_size);
    }
    free(walked);
    free(stack);
    return rc;
}

static int build(const ll_index *idx, const uint8_t *uuid, ll_erofs *e, slot *slots, char *err, size_t err_size) {
    uint64_t n = ll_index_inodes(idx);
    int lrc = layout(idx, e, err, err_size);   /* (its limits cover every chunk: at most 2^31 blocks) */
    if (lrc != LL_OK) return lrc;
    /* pass 1: sizes, and each directory's parent (from the listing of its parent,
     * whatever the inode order) for its ".." */
    slots[LL_ROOT_INO - 1].parent = LL_ROOT_INO;
    for (uint64_t ino = 1; ino <= n; ino++) {
        ll_stat st;
        int rc = ll_index_stat(idx, ino, &st);
        if (rc != LL_OK) return rc;
        slot *s = &slots[ino - 1];
        if ((rc = xattrs(idx, ino, st.nxattrs, NULL, &s->xsize, err, err_size)) != LL_OK) return rc;
        uint64_t base = INODE_SIZE + (uint64_t)s->xsize;
        s->layout = LAYOUT_FLAT_PLAIN;
        s->rec = (uint32_t)base;
        if (st.kind == LL_KIND_REG && st.size > 0) {
            uint64_t blocks = (st.size + BLK - 1) / BLK;
            unsigned bits = 0;
            while ((1ull << bits) < blocks) bits++;
            s->layout = LAYOUT_CHUNK_BASED;
            s->chunkbits = (uint8_t)bits;
            s->rec = (uint32_t)(align_up(base, 8) + 8);
        } else if (st.kind == LL_KIND_DIR || st.kind == LL_KIND_SYMLINK) {
            if (st.kind == LL_KIND_DIR) {
                packer p = {0};
                if ((rc = pack_dir(idx, ino, 0, &p, slots, err, err_size)) != LL_OK) return rc;
                s->dsize = p.size;
            } else {
                s->dsize = st.size;
            }
            uint64_t tail = s->dsize % BLK;
            if (tail && base + tail <= BLK) {
                s->layout = LAYOUT_FLAT_INLINE;
                s->rec = (uint32_t)(base + tail);
                s->nblocks = (uint32_t)(s->dsize / BLK);
            } else {
                s->nblocks = (uint32_t)((s->dsize + BLK - 1) / BLK);
            }
        }
    }
    /* records, root first */
    uint64_t pos = (uint64_t)META_BLKADDR * BLK;
    for (uint64_t ino = 1; ino <= n; ino++) {
        slot *s = &slots[ino - 1];
        if (s->rec <= BLK ? pos % BLK + s->rec > BLK : pos % BLK != 0) pos = align_up(pos, BLK);
        s->pos = pos;
        pos += align_up(s->rec, 32);
    }
    /* whole blocks of directories and symlinks */
    uint64_t blk = align_up(pos, BLK) / BLK;
    for (uint64_t ino = 1; ino <= n; ino++) {
        slot *s = &slots[ino - 1];
        if (s->nblocks) {
            s->blkaddr = (uint32_t)blk;
            blk += s->nblocks;
        }
        if (blk > UINT32_MAX) {
            ll__set_err(err, err_size, "the metadata image would be over 2^32 blocks");
            return LL_ERR_LIMIT;
        }
    }
    e->meta_size = (size_t)blk * BLK;
    if ((uint64_t)e->meta_size != blk * BLK) return LL_ERR_NOMEM;
    if (!(e->meta = calloc(1, e->meta_size))) return LL_ERR_NOMEM;

    /* pass 2: write (regular files take their extents from the layout) */
    uint64_t placed = 0;
    for (uint64_t ino = 1; ino <= n; ino++) {
        ll_stat st;
        int rc = ll_index_stat(idx, ino, &st);
        if (rc != LL_OK) return rc;
        slot *s = &slots[ino - 1];
        uint8_t *rec = e->meta + s->pos;
        uint32_t xs;
        if ((rc = xattrs(idx, ino, st.nxattrs, rec + INODE_SIZE, &xs, err, err_size)) != LL_OK) return rc;
        uint16_t icount = s->xsize ? (uint16_t)((s->xsize - XATTR_HEADER) / 4 + 1) : 0;
        uint64_t size = 0;
        uint32_t iu = 0;
        if (s->layout == LAYOUT_CHUNK_BASED) {
            size = st.size;
            iu = (uint32_t)(s->chunkbits | CHUNK_FORMAT_INDEXES);
            uint32_t file = e->file_of[ino - 1];
            if (file == NO_FILE || e->file_ino[file] != ino) return LL_ERR_STATE;
            uint8_t *ci = e->meta + align_up(s->pos + INODE_SIZE + s->xsize, 8);
            put16(ci, 0);
            put16(ci + 2, 1);                    /* device 1: the data file */
            ll__put_le32(ci + 4, (uint32_t)(e->file_off[file] / BLK));
            placed++;
        } else if (st.kind == LL_KIND_DIR) {
            size = s->dsize;
            iu = s->blkaddr;
            packer p = {.meta = e->meta, .slots = slots, .self = s};
            if ((rc = pack_dir(idx, ino, s->parent ? s->parent : ino, &p, NULL, err, err_size)) != LL_OK) return rc;
            if (p.size != s->dsize) return LL_ERR_STATE;
        } else if (st.kind == LL_KIND_SYMLINK) {
            const char *target;
            size_t len;
            if ((rc = ll_index_readlink(idx, ino, &target, &len)) != LL_OK) return rc;
            size = len;
            iu = s->blkaddr;
            uint64_t whole = (uint64_t)s->nblocks * BLK;
            if (s->layout == LAYOUT_FLAT_INLINE) whole = len / BLK * BLK;
            if (s->nblocks) memcpy(e->meta + (uint64_t)s->blkaddr * BLK, target, whole < len ? whole : len);
            if (s->layout == LAYOUT_FLAT_INLINE) memcpy(rec + INODE_SIZE + s->xsize, target + whole, len - whole);
        } else if (st.kind == LL_KIND_CHAR || st.kind == LL_KIND_BLOCK) {
            iu = (st.devminor & 0xff) | (st.devmajor << 8) | ((st.devminor & ~0xffu) << 12);
        }
        write_inode(rec, &st, s, icount, size, iu);
    }
    if (placed != e->nfiles) return LL_ERR_STATE;

    /* superblock and device table */
    uint8_t *sb = e->meta + SB_OFFSET;
    ll__put_le32(sb + 0, EROFS_MAGIC);
    sb[12] = 12;                                   /* blkszbits */
    put16(sb + 14, 0);                             /* root nid */
    put64(sb + 16, n);                             /* inos */
    ll__put_le32(sb + 36, (uint32_t)blk);          /* blocks */
    ll__put_le32(sb + 40, META_BLKADDR);
    if (uuid) memcpy(sb + 48, uuid, 16);
    memcpy(sb + 64, "lazylayer", 9);               /* volume name */
    ll__put_le32(sb + 80, INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE);
    put16(sb + 86, 1);                             /* extra devices */
    put16(sb + 88, DEVT_SLOTOFF);
    uint8_t *dev = e->meta + DEVT_SLOTOFF * 128;
    memcpy(dev, "lazylayer-data", 14);             /* tag (the path comes from the mount's device=) */
    ll__put_le32(dev + 64, (uint32_t)(e->data_size / BLK));
    return LL_OK;
}

int ll_erofs_build(const ll_index *idx, const uint8_t *uuid, int layout_only, ll_erofs **out, char *err,
                   size_t err_size) {
    if (err && err_size) err[0] = 0;
    if (!idx || !out) return LL_ERR_ARG;
    *out = NULL;
    uint64_t n = ll_index_inodes(idx);
    if (n == 0 || n > SIZE_MAX / sizeof(slot)) return LL_ERR_ARG;
    ll_erofs *e = calloc(1, sizeof *e);
    slot *slots = layout_only ? NULL : calloc((size_t)n, sizeof *slots);
    int rc = !e || (!layout_only && !slots) ? LL_ERR_NOMEM
             : layout_only ? layout(idx, e, err, err_size) : build(idx, uuid, e, slots, err, err_size);
    free(slots);
    if (rc != LL_OK) {
        if (rc == LL_ERR_NOMEM) ll__set_err(err, err_size, "out of memory building the EROFS image");
        else if (err && err_size && !err[0]) ll__set_err(err, err_size, "cannot build the EROFS image (status %d)", rc);
        ll_erofs_free(e);
        return rc;
    }
    *out = e;
    return LL_OK;
}

void ll_erofs_meta(const ll_erofs *e, const void **data, size_t *size) {
    if (data) *data = e ? e->meta : NULL;
    if (size) *size = e ? e->meta_size : 0;
}

uint64_t ll_erofs_data_size(const ll_erofs *e) { return e ? e->data_size : 0; }

int ll_erofs_file_offset(const ll_erofs *e, uint64_t ino, uint64_t *offset) {
    if (!e || !offset) return LL_ERR_ARG;
    if (ino == 0 || ino > e->ninodes || e->file_of[ino - 1] == NO_FILE) return LL_ERR_NOTREG;
    *offset = e->file_off[e->file_of[ino - 1]];
    return LL_OK;
}

int ll_erofs_data_at(const ll_erofs *e, uint64_t offset, uint64_t *ino, uint64_t *file_offset, uint64_t *len) {
    if (!e || !ino || !file_offset || !len || offset >= e->data_size) return LL_ERR_ARG;
    uint64_t lo = 0, hi = e->nfiles;   /* the last file starting at or before offset */
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (e->file_off[mid] <= offset) lo = mid;
        else hi = mid;
    }
    uint64_t start = e->file_off[lo], size = e->file_size[lo];
    if (offset < start + size) {
        *ino = e->file_ino[lo];
        *file_offset = offset - start;
        *len = start + size - offset;
    } else {
        *ino = 0;
        *file_offset = 0;
        *len = align_up(start + size, BLK) - offset;
    }
    return LL_OK;
}

int ll_erofs_fill(const ll_erofs *e, ll_image *img, int fd, uint64_t offset, uint64_t length, uint64_t *written,
                  uint64_t *bad_ino) {
    if (written) *written = 0;
    if (bad_ino) *bad_ino = 0;
    if (!e || !img || fd < 0) return LL_ERR_ARG;
    uint64_t end = offset + length < offset || offset + length > e->data_size ? e->data_size : offset + length;
    size_t cap = 1u << 20;
    uint8_t *buf = NULL;
    int rc = LL_OK;
    while (offset < end) {
        uint64_t ino, fo, len;
        if ((rc = ll_erofs_data_at(e, offset, &ino, &fo, &len)) != LL_OK) break;
        if (len > end - offset) len = end - offset;
        if (ino == 0) {   /* padding: never read */
            offset += len;
            continue;
        }
        if (!buf && !(buf = malloc(cap))) { rc = LL_ERR_NOMEM; break; }
        uint64_t done = 0;
        while (done < len) {
            size_t n = len - done < cap ? (size_t)(len - done) : cap;
            int64_t got = ll_image_read(img, ino, fo + done, buf, n);
            if (got < 0 || (size_t)got != n) {
                rc = got < 0 ? (int)got : LL_ERR_FRAME;   /* (short: the index and the image disagree) */
                if (bad_ino) *bad_ino = ino;
                goto out;
            }
            for (size_t w = 0; w < n;) {
                ssize_t put = pwrite(fd, buf + w, n - w, (off_t)(offset + done + w));
                if (put < 0 && errno == EINTR) continue;
                if (put <= 0) { rc = LL_ERR_IO; goto out; }
                w += (size_t)put;
            }
            done += n;
            if (written) *written += n;
        }
        offset += len;
    }
out:
    free(buf);
    return rc;
}
