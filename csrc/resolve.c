/* resolve.c - path resolution that also reports the real path (ll_index_resolve_path).
 *
 * Written over the public lookup API only (ll_index_lookup, ll_index_stat,
 * ll_index_readlink), so it holds for any index the library accepts. */
#include "internal.h"

#include <stdlib.h>

typedef struct { const char *p; size_t n; } ll__seg;   /* text still to walk */
typedef struct { uint64_t ino; const char *name; size_t len; } ll__level;

/* Next component of the top segments (skipping empty ones and "."), or 0 when none is left. */
static int next_component(ll__seg *segs, size_t *nsegs, const char **name, size_t *len) {
    while (*nsegs > 0) {
        ll__seg *s = &segs[*nsegs - 1];
        while (s->n > 0 && s->p[0] == '/') { s->p++; s->n--; }
        if (s->n == 0) { (*nsegs)--; continue; }
        const char *start = s->p;
        const char *slash = memchr(start, '/', s->n);
        size_t l = slash ? (size_t)(slash - start) : s->n;
        s->p += l;
        s->n -= l;
        if (l == 1 && start[0] == '.') continue;
        *name = start;
        *len = l;
        return 1;
    }
    return 0;
}

/* Whether any component is left (without consuming it). */
static int more_components(const ll__seg *segs, size_t nsegs) {
    for (size_t i = nsegs; i-- > 0;) {
        const char *p = segs[i].p, *end = segs[i].p + segs[i].n;
        while (p < end) {
            if (*p == '/') { p++; continue; }
            const char *slash = memchr(p, '/', (size_t)(end - p));
            size_t l = slash ? (size_t)(slash - p) : (size_t)(end - p);
            if (!(l == 1 && p[0] == '.')) return 1;
            p += l;
        }
    }
    return 0;
}

int ll_index_resolve_path(const ll_index *idx, const char *path, size_t path_len, int follow,
                          uint64_t *ino, char *real, size_t real_size, size_t *real_len) {
    if (!idx || (!path && path_len) || !ino) return LL_ERR_ARG;
    ll__seg segs[LL_MAX_SYMLINK_HOPS + 2];
    size_t nsegs = 0;
    if (path_len) segs[nsegs++] = (ll__seg){path, path_len};
    size_t cap = 64, depth = 1;
    ll__level *stack = malloc(cap * sizeof *stack);
    if (!stack) return LL_ERR_NOMEM;
    stack[0] = (ll__level){LL_ROOT_INO, "", 0};
    int hops = 0, rc = LL_OK;
    const char *name;
    size_t len;
    ll_stat st;
    while (next_component(segs, &nsegs, &name, &len)) {
        if (len == 2 && name[0] == '.' && name[1] == '.') {
            if (depth > 1) depth--;
            continue;
        }
        uint64_t child;
        rc = ll_index_lookup(idx, stack[depth - 1].ino, name, len, &child);
        if (rc != LL_OK) break;
        if ((rc = ll_index_stat(idx, child, &st)) != LL_OK) break;
        if (st.kind == LL_KIND_SYMLINK && (follow || more_components(segs, nsegs))) {
            if (++hops > LL_MAX_SYMLINK_HOPS) { rc = LL_ERR_LOOP; break; }
            const char *target;
            size_t tlen;
            if ((rc = ll_index_readlink(idx, child, &target, &tlen)) != LL_OK) break;
            if (tlen > 0 && target[0] == '/') depth = 1;
            if (tlen) segs[nsegs++] = (ll__seg){target, tlen}; /* at most 1 + 40 + 1 segments */
            continue;
        }
        if (depth == cap) {
            ll__level *bigger = realloc(stack, 2 * cap * sizeof *stack);
            if (!bigger) { rc = LL_ERR_NOMEM; break; }
            stack = bigger;
            cap *= 2;
        }
        stack[depth++] = (ll__level){child, name, len};
    }
    if (rc == LL_OK) {
        *ino = stack[depth - 1].ino;
        size_t need = 0;
        for (size_t i = 1; i < depth; i++) need += stack[i].len + (i > 1);
        if (real_len) *real_len = need;
        if (real) {
            if (need + 1 > real_size) {
                rc = LL_ERR_LIMIT;
            } else {
                size_t at = 0;
                for (size_t i = 1; i < depth; i++) {
                    if (i > 1) real[at++] = '/';
                    memcpy(real + at, stack[i].name, stack[i].len);
                    at += stack[i].len;
                }
                real[at] = '\0';
            }
        }
    }
    free(stack);
    return rc;
}

int ll_index_readdir_names(const ll_index *idx, uint64_t dir, char *names, size_t names_size,
                           size_t *names_len, uint64_t *inos, uint8_t *kinds, size_t max, size_t *n) {
    if (!idx || !names_len || !n || (max && (!inos || !kinds)) || (names_size && !names)) return LL_ERR_ARG;
    ll_dirent batch[64];
    size_t got, used = 0, count = 0;
    uint64_t pos = 0, total = 0;
    int fits = 1;
    do {
        int rc = ll_index_readdir(idx, dir, pos, batch, 64, &got, &total);
        if (rc != LL_OK) return rc;
        for (size_t i = 0; i < got; i++) {
            size_t len = batch[i].name_len + 1;
            if (fits && count < max && used + len <= names_size) {
                memcpy(names + used, batch[i].name, len - 1);
                names[used + len - 1] = '\0';
                inos[count] = batch[i].st.ino;
                kinds[count] = (uint8_t)batch[i].st.kind;
            } else {
                fits = 0;
            }
            used += len;
            count++;
        }
        pos += got;
    } while (got == 64);
    *names_len = used;
    *n = count;
    return fits ? LL_OK : LL_ERR_LIMIT;
}
