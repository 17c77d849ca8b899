/* fuzz_index_common.h - building an index from raw TOC JSON and walking one, for
 * fuzz_toc, fuzz_index_load and gen_corpus.  Public API only (plus zstd). */
#ifndef LL_FUZZ_INDEX_COMMON_H
#define LL_FUZZ_INDEX_COMMON_H

#include <zstd.h>

#include "fuzz_common.h"

/* Every synthetic layer has data frames ending where its TOC frame starts:
 * seeds list frames whose compressed sizes add up to this. */
#define LL_FUZZ_TOC_OFFSET 100u

/* A TOC frame (skippable header, "LZLYTOC1", zstd of json) in *out (malloc'd). */
static inline size_t ll_fuzz_toc_frame(const uint8_t *json, size_t n, uint8_t **out) {
    size_t bound = ZSTD_compressBound(n);
    uint8_t *f = malloc(16 + bound);
    if (!f) abort();
    size_t z = ZSTD_compress(f + 16, bound, json, n, 1);
    if (ZSTD_isError(z)) abort();
    uint32_t magic = 0x184D2A5Au, size = (uint32_t)(z + 8);
    for (int i = 0; i < 4; i++) f[i] = (uint8_t)(magic >> (8 * i)), f[4 + i] = (uint8_t)(size >> (8 * i));
    memcpy(f + 8, "LZLYTOC1", 8);
    *out = f;
    return z + 16;
}

static inline void ll_fuzz_hex_digest(const uint8_t *data, size_t n, char out[72]) {
    static const char hex[] = "0123456789abcdef";
    uint8_t sha[32];
    ll_sha256(data, n, sha);
    memcpy(out, "sha256:", 7);
    for (int i = 0; i < 32; i++) out[7 + 2 * i] = hex[sha[i] >> 4], out[8 + 2 * i] = hex[sha[i] & 15];
    out[71] = 0;
}

/* Build the index of `n` layers whose TOCs are the JSON texts parts[i]. */
static inline int ll_fuzz_build(const uint8_t *const *parts, const size_t *lens, uint32_t n, ll_index **out,
                                char *err, size_t err_size) {
    ll_index_layer layers[3];
    uint8_t *frames[3];
    char digests[3][72], toc_digests[3][72];
    for (uint32_t i = 0; i < n; i++) {
        size_t fl = ll_fuzz_toc_frame(parts[i], lens[i], &frames[i]);
        ll_fuzz_hex_digest(frames[i], fl, toc_digests[i]);
        uint8_t b = (uint8_t)i;
        ll_fuzz_hex_digest(&b, 1, digests[i]);
        layers[i] = (ll_index_layer){.digest = digests[i], .blob_size = LL_FUZZ_TOC_OFFSET + fl + 50,
                                     .toc_digest = toc_digests[i], .toc_offset = LL_FUZZ_TOC_OFFSET,
                                     .toc_length = fl, .toc_frame = frames[i]};
    }
    int rc = ll_index_build(layers, n, out, err, err_size);
    for (uint32_t i = 0; i < n; i++) free(frames[i]);
    return rc;
}

/* A digest of everything the index answers (walking every inode once, every
 * directory's entries, symlinks, xattrs, layers, frames, prefetch ranges and some
 * resolutions), so two indexes can be compared; it must never crash or hang. */
/* The EROFS view of an index that opened (csrc/erofs.c): built or refused with a
 * reason, never a crash; its layout agrees with the index file by file. */
static inline void ll_fuzz_erofs(const ll_index *idx) {
    ll_erofs *e;
    char err[LL_ERR_MSG_SIZE];
    int rc = ll_erofs_build(idx, NULL, 0, &e, err, sizeof err);
    CHECK(rc == LL_OK || rc == LL_ERR_LIMIT || rc == LL_ERR_NOMEM, "erofs build rc %d", rc);
    if (rc != LL_OK) {
        CHECK(err[0], "an EROFS refusal without a reason");
        return;
    }
    const uint8_t *meta;
    size_t size;
    ll_erofs_meta(e, (const void **)&meta, &size);
    CHECK(size >= 2 * LL_EROFS_BLOCK && size % LL_EROFS_BLOCK == 0, "metadata image of %zu bytes", size);
    CHECK(meta[1024] == 0xE2 && meta[1025] == 0xE1 && meta[1026] == 0xF5 && meta[1027] == 0xE0, "EROFS magic");
    CHECK((meta[4096] & 1) == 1, "the root (nid 0) is an extended inode");
    uint64_t data = ll_erofs_data_size(e), ino, fo, len, held = 0;
    CHECK(data % LL_EROFS_BLOCK == 0, "data size %llu", (unsigned long long)data);
    for (uint64_t i = 1; i <= ll_index_inodes(idx); i++) {
        ll_stat st;
        uint64_t at;
        CHECK(ll_index_stat(idx, i, &st) == LL_OK, "stat");
        rc = ll_erofs_file_offset(e, i, &at);
        if (st.kind != LL_KIND_REG || st.size == 0) {
            CHECK(rc == LL_ERR_NOTREG, "inode %llu: no data, yet an offset", (unsigned long long)i);
            continue;
        }
        /* (extents in walk order, not inode order: the data_at checks find any overlap, the sum any gap) */
        CHECK(rc == LL_OK && at % LL_EROFS_BLOCK == 0 && at + st.size <= data, "file extent");
        held += (st.size + LL_EROFS_BLOCK - 1) / LL_EROFS_BLOCK * LL_EROFS_BLOCK;
        CHECK(ll_erofs_data_at(e, at, &ino, &fo, &len) == LL_OK && ino == i && fo == 0 && len == st.size,
              "data_at the start");
        CHECK(ll_erofs_data_at(e, at + st.size - 1, &ino, &fo, &len) == LL_OK && ino == i && len == 1, "data_at the end");
    }
    CHECK(held == data, "the files' extents tile the data file");
    CHECK(ll_erofs_data_at(e, data, &ino, &fo, &len) == LL_ERR_ARG, "data_at past the end");
    /* the layout alone is the same layout */
    ll_erofs *lo;
    CHECK(ll_erofs_build(idx, NULL, 1, &lo, err, sizeof err) == LL_OK, "layout-only build: %s", err);
    CHECK(ll_erofs_data_size(lo) == data, "layout-only data size");
    for (uint64_t i = 1; i <= ll_index_inodes(idx); i++) {
        uint64_t a = 0, b = 0;
        int r1 = ll_erofs_file_offset(e, i, &a), r2 = ll_erofs_file_offset(lo, i, &b);
        CHECK(r1 == r2 && a == b, "layout-only offset of inode %llu", (unsigned long long)i);
    }
    ll_erofs_free(lo);
    ll_erofs_free(e);
}

static inline uint64_t ll_fuzz_walk(const ll_index *idx, uint64_t seed) {
    uint64_t h = 1469598103934665603ull;
#define MIX(p, n) (h ^= ll_fuzz_hash((const uint8_t *)(p), (n)), h *= 1099511628211ull)
#define MIXV(v) do { uint64_t v_ = (uint64_t)(v); MIX(&v_, sizeof v_); } while (0)
    uint64_t n = ll_index_inodes(idx);
    MIXV(n);
    MIXV(ll_index_names(idx));
    CHECK(n >= 1, "no root");
    ll_stat st;
    ll_dirent ents[8];
    const char *names[16];
    size_t name_lens[16], nnames = 0;
    for (uint64_t ino = 1; ino <= n && ino <= 200000; ino++) {
        CHECK(ll_index_stat(idx, ino, &st) == LL_OK, "stat %llu", (unsigned long long)ino);
        CHECK(st.ino == ino && st.kind >= 1 && st.kind <= 6 && st.mtime_nsec < 1000000000u, "stat fields");
        MIXV(st.kind); MIXV(st.mode); MIXV(st.nlink); MIXV(st.uid); MIXV(st.gid); MIXV(st.mtime_sec);
        MIXV(st.mtime_nsec); MIXV(st.devmajor); MIXV(st.devminor); MIXV(st.size); MIXV(st.layer);
        MIXV(st.offset); MIXV(st.nxattrs);
        for (uint32_t i = 0; i < st.nxattrs && i < 64; i++) {
            const char *xn;
            const void *xv;
            size_t xl;
            CHECK(ll_index_xattr(idx, ino, i, &xn, &xv, &xl) == LL_OK, "xattr");
            MIX(xn, strlen(xn));
            MIX(xv, xl);
        }
        CHECK(ll_index_xattr(idx, ino, st.nxattrs, NULL, NULL, NULL) == LL_ERR_ARG, "xattr past the end");
        const char *t;
        size_t tl;
        int rc = ll_index_readlink(idx, ino, &t, &tl);
        CHECK(rc == (st.kind == LL_KIND_SYMLINK ? LL_OK : LL_ERR_NOTREG), "readlink");
        if (rc == LL_OK) {
            CHECK(t[tl] == 0, "target not NUL-terminated");
            MIX(t, tl);
        }
        uint64_t count = 0, pos = 0;
        size_t got;
        rc = ll_index_readdir(idx, ino, 0, ents, 0, &got, &count);
        CHECK(rc == (st.kind == LL_KIND_DIR ? LL_OK : LL_ERR_NOTDIR), "readdir kind");
        if (rc) continue;
        while (pos < count) {
            CHECK(ll_index_readdir(idx, ino, pos, ents, 8, &got, NULL) == LL_OK && got > 0, "readdir");
            for (size_t k = 0; k < got; k++) {
                CHECK(ents[k].name_len > 0 && ents[k].name[ents[k].name_len] == 0, "name");
                MIX(ents[k].name, ents[k].name_len);
                MIXV(ents[k].st.ino);
                uint64_t found;
                CHECK(ll_index_lookup(idx, ino, ents[k].name, ents[k].name_len, &found) == LL_OK &&
                      found == ents[k].st.ino, "lookup of a listed name");
                if (nnames < 16 && (ll_fuzz_next(&seed) & 3) == 0) {
                    names[nnames] = ents[k].name;
                    name_lens[nnames++] = ents[k].name_len;
                }
            }
            pos += got;
        }
        /* the packed listing agrees with readdir: same count, names back to back */
        {
            char packed[512];
            uint64_t pinos[8];
            uint8_t pkinds[8];
            size_t used = 0, pn = 0;
            rc = ll_index_readdir_names(idx, ino, packed, sizeof packed, &used, pinos, pkinds, 8, &pn);
            CHECK(rc == LL_OK || rc == LL_ERR_LIMIT, "readdir_names rc %d", rc);
            CHECK(pn == count, "readdir_names count %zu vs %llu", pn, (unsigned long long)count);
            CHECK(used >= count, "readdir_names bytes");
            if (rc == LL_OK && count > 0) {
                CHECK(packed[used - 1] == 0, "packed names end with NUL");
                uint64_t first;
                CHECK(ll_index_lookup(idx, ino, packed, strlen(packed), &first) == LL_OK && first == pinos[0],
                      "first packed name");
            }
        }
    }
    /* resolutions of paths made of names seen, "..", "." and "/" */
    for (int r = 0; r < 32; r++) {
        char path[2048];
        size_t pl = 0;
        int parts = (int)ll_fuzz_below(&seed, 8);
        for (int k = 0; k < parts; k++) {
            uint64_t c = ll_fuzz_below(&seed, nnames + 3);
            const char *s = c < nnames ? names[c] : c == nnames ? ".." : c == nnames + 1 ? "." : "";
            size_t sl = c < nnames ? name_lens[c] : strlen(s);
            if (pl + sl + 1 >= sizeof path) break;
            memcpy(path + pl, s, sl);
            pl += sl;
            path[pl++] = '/';
        }
        if (pl && (seed & 1)) pl--;
        uint64_t ino;
        int follow = (int)(seed >> 7 & 1);
        int rc = ll_index_resolve(idx, path, pl, follow, &ino);
        CHECK(rc == LL_OK || rc == LL_ERR_NOENT || rc == LL_ERR_NOTDIR || rc == LL_ERR_LOOP, "resolve rc %d", rc);
        MIXV(rc);
        if (rc == LL_OK) {
            CHECK(ino >= 1 && ino <= n, "resolved inode in range");
            MIXV(ino);
        }
        /* the real-path variant finds the same inode, and its real path leads there again */
        char real[4096];
        size_t rl = 0;
        uint64_t ino2 = 0, ino3 = 0;
        int rc2 = ll_index_resolve_path(idx, path, pl, follow, &ino2, real, sizeof real, &rl);
        CHECK(rc2 == rc || (rc == LL_OK && rc2 == LL_ERR_LIMIT), "resolve_path rc %d vs %d", rc2, rc);
        if (rc2 == LL_OK) {
            CHECK(ino2 == ino && strlen(real) == rl, "resolve_path inode / length");
            CHECK(ll_index_resolve(idx, real, rl, 0, &ino3) == LL_OK && ino3 == ino, "the real path leads back");
        }
    }
    uint32_t nl = ll_index_layers(idx);
    MIXV(nl);
    for (uint32_t l = 0; l < nl; l++) {
        const char *d;
        uint64_t bs, ts, pc;
        uint32_t nf;
        CHECK(ll_index_layer_info(idx, l, &d, &bs, &ts, &nf) == LL_OK, "layer info");
        MIX(d, strlen(d)); MIXV(bs); MIXV(ts); MIXV(nf);
        ll_layer_frame f;
        for (uint32_t i = 0; i < nf && i < 100000; i++) {
            CHECK(ll_index_frame(idx, l, i, &f) == LL_OK, "frame");
            MIXV(f.c_offset); MIXV(f.d_offset); MIXV(f.c_size); MIXV(f.d_size); MIX(f.sha256, 32);
        }
        CHECK(ll_index_frame(idx, l, nf, &f) == LL_ERR_ARG, "frame past the end");
        CHECK(ll_index_prefetch(idx, l, 0, &pc, NULL, NULL) == LL_OK, "prefetch count");
        for (uint64_t i = 0; i < pc && i < 100000; i++) {
            uint64_t o, len;
            CHECK(ll_index_prefetch(idx, l, i, NULL, &o, &len) == LL_OK, "prefetch");
            MIXV(o); MIXV(len);
        }
    }
    CHECK(ll_index_layer_info(idx, nl, NULL, NULL, NULL, NULL) == LL_ERR_ARG, "layer past the end");
    ll_fuzz_erofs(idx);
#undef MIX
#undef MIXV
    return h;
}

#endif
