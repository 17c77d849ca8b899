/* oci.c - enough of the OCI image format for a host without a JSON library:
 * pick a platform's manifest from an index, list a manifest's layer descriptors.
 *
 * Same parser as the TOC's (json.c): bounded (at most LL__OCI_MAX_BYTES of JSON,
 * LL__OCI_MAX_VALUES values, nesting 64 deep), hostile input gets LL_ERR_FORMAT
 * (or LL_ERR_LIMIT) with a message naming what and where.  Unknown keys are
 * ignored; a repeated key counts once, the last time (as Python's json).
 *
 * Threads: no shared state; a manifest is immutable once parsed. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

#define LL__OCI_MAX_BYTES (16u << 20)
#define LL__OCI_MAX_VALUES 1000000u
#define OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"
#define ANN_TOC_DIGEST "io.lazylayer.toc.digest"
#define ANN_TOC_POSITION "io.lazylayer.toc.position"

typedef struct {
    const char *media_type, *digest, *toc_digest;
    uint64_t size, toc_offset, toc_length;
} layer_rec;

struct ll_manifest {
    uint8_t *json;           /* the decoded strings live here */
    layer_rec *layers;
    uint32_t n;
};

static int str_is(const ll__jtok *t, const char *s) {
    size_t n = strlen(s);
    return t->len == n && memcmp(t->s, s, n) == 0 && t->type != LL__J_NUM;
}

/* lazylayer.format.parse_toc_position: OFFSET:LENGTH, ASCII digits, no sign or
 * leading zeros, at most 19 digits each, LENGTH >= 1, OFFSET + LENGTH < 2^63 and
 * within the blob. */
static int parse_position(const uint8_t *s, size_t n, uint64_t blob, uint64_t *off, uint64_t *len) {
    uint64_t v[2] = {0, 0};
    size_t i = 0;
    for (int part = 0; part < 2; part++) {
        size_t start = i;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (i - start >= 19) return 0;
            v[part] = v[part] * 10 + (uint64_t)(s[i] - '0');
            i++;
        }
        size_t digits = i - start;
        if (digits == 0 || (digits > 1 && s[start] == '0')) return 0;
        if (part == 0) {
            if (i >= n || s[i] != ':') return 0;
            i++;
        }
    }
    if (i != n || v[1] == 0) return 0;
    if (v[0] > ((uint64_t)1 << 63) - 1 - v[1]) return 0;
    if (v[0] + v[1] > blob) return 0;
    *off = v[0];
    *len = v[1];
    return 1;
}

static uint8_t *copy_json(const void *json, size_t len, int *rc, char *err, size_t err_size) {
    if (len > LL__OCI_MAX_BYTES) {
        ll__set_err(err, err_size, "JSON of %zu bytes: at most %u", len, LL__OCI_MAX_BYTES);
        *rc = LL_ERR_LIMIT;
        return NULL;
    }
    uint8_t *buf = malloc(len + 1);
    if (!buf) {
        *rc = LL_ERR_NOMEM;
        return NULL;
    }
    if (len) memcpy(buf, json, len);
    buf[len] = 0;
    return buf;
}

#define JFAIL(...) do { ll__json_fail(&j, LL_ERR_FORMAT, __VA_ARGS__); goto bad; } while (0)
#define NEXT(t) do { if (ll__json_next(&j, (t)) == LL__J_ERROR) goto bad; } while (0)
#define SKIP(t) do { if (ll__json_skip(&j, (t))) goto bad; } while (0)

int ll_oci_index_manifest(const void *json, size_t len, const char *os, const char *arch, char *digest,
                          size_t digest_size, char *err, size_t err_size) {
    if (err && err_size) err[0] = 0;
    if ((!json && len) || !digest || digest_size < 72) return LL_ERR_ARG;
    digest[0] = 0;
    int rc = LL_OK;
    uint8_t *buf = copy_json(json, len, &rc, err, err_size);
    if (!buf) return rc;
    ll__json j;
    ll__json_init(&j, buf, len, LL__OCI_MAX_VALUES);
    ll__jtok t, k, v;
    int found = 0, have_manifests = 0;
    NEXT(&t);
    if (t.type != LL__J_OBJ) JFAIL("an OCI index is not a JSON object");
    for (;;) {
        NEXT(&k);
        if (k.type == LL__J_OBJ_END) break;
        NEXT(&v);
        if (!(k.len == 9 && memcmp(k.s, "manifests", 9) == 0)) {
            SKIP(&v);
            continue;
        }
        if (v.type != LL__J_ARR) JFAIL("the index's \"manifests\" is not a list");
        have_manifests = 1;
        found = 0;   /* a repeated key: the last list counts */
        for (size_t i = 0;; i++) {
            NEXT(&t);
            if (t.type == LL__J_ARR_END) break;
            if (t.type != LL__J_OBJ) {   /* select_manifest skips what is not an object */
                SKIP(&t);
                continue;
            }
            const uint8_t *media = NULL, *dg = NULL, *pos = NULL, *parch = NULL;
            size_t dlen = 0;
            int media_ok = 1, has_platform = 0, bad_digest = 0;
            for (;;) {
                NEXT(&k);
                if (k.type == LL__J_OBJ_END) break;
                NEXT(&v);
                if (k.len == 9 && memcmp(k.s, "mediaType", 9) == 0) {
                    media = v.type == LL__J_STR ? v.s : NULL;
                    media_ok = v.type == LL__J_STR && (str_is(&v, OCI_MANIFEST) || str_is(&v, DOCKER_MANIFEST));
                } else if (k.len == 6 && memcmp(k.s, "digest", 6) == 0) {
                    bad_digest = v.type != LL__J_STR;
                    dg = v.type == LL__J_STR ? v.s : NULL;
                    dlen = v.len;
                } else if (k.len == 8 && memcmp(k.s, "platform", 8) == 0) {
                    has_platform = v.type == LL__J_OBJ;
                    pos = parch = NULL;
                    if (v.type == LL__J_OBJ) {
                        for (;;) {
                            ll__jtok pk, pv;
                            NEXT(&pk);
                            if (pk.type == LL__J_OBJ_END) break;
                            NEXT(&pv);
                            if (pv.type == LL__J_STR && pk.len == 2 && memcmp(pk.s, "os", 2) == 0) pos = pv.s;
                            else if (pv.type == LL__J_STR && pk.len == 12 && memcmp(pk.s, "architecture", 12) == 0)
                                parch = pv.s;
                            else SKIP(&pv);
                        }
                        continue;
                    }
                }
                SKIP(&v);
            }
            (void)media;
            if (found || !media_ok) continue;
            int match = 1;
            if (has_platform) {
                /* attestations (unknown/unknown) never match unless asked for */
                if (os ? !pos || strcmp((const char *)pos, os) != 0 : pos && !strcmp((const char *)pos, "unknown"))
                    match = 0;
                if (arch ? !parch || strcmp((const char *)parch, arch) != 0
                         : parch && !strcmp((const char *)parch, "unknown"))
                    match = 0;
            }
            if (!match) continue;
            if (bad_digest || !dg || !ll__digest_ok((const char *)dg, dlen))
                JFAIL("index entry %zu: unsupported or malformed digest", i);
            memcpy(digest, dg, 71);
            digest[71] = 0;
            found = 1;
        }
    }
    NEXT(&t);
    if (t.type != LL__J_EOF) goto bad;
    if (!have_manifests) JFAIL("the index has no \"manifests\" list");
    free(buf);
    if (!found) {
        digest[0] = 0;
        ll__set_err(err, err_size, "no image manifest for %s/%s in the index", os ? os : "*", arch ? arch : "*");
        return LL_ERR_NOENT;
    }
    return LL_OK;
bad:
    digest[0] = 0;
    ll__set_err(err, err_size, "OCI index: %s", j.msg);
    rc = j.status ? j.status : LL_ERR_FORMAT;
    free(buf);
    return rc;
}

int ll_manifest_parse(const void *json, size_t len, ll_manifest **out, char *err, size_t err_size) {
    if (err && err_size) err[0] = 0;
    if ((!json && len) || !out) return LL_ERR_ARG;
    *out = NULL;
    int rc = LL_OK;
    uint8_t *buf = copy_json(json, len, &rc, err, err_size);
    if (!buf) return rc;
    ll_manifest *m = calloc(1, sizeof *m);
    if (!m) {
        free(buf);
        return LL_ERR_NOMEM;
    }
    m->json = buf;
    size_t cap = 0;
    ll__json j;
    ll__json_init(&j, buf, len, LL__OCI_MAX_VALUES);
    ll__jtok t, k, v;
    int have_layers = 0;
    NEXT(&t);
    if (t.type != LL__J_OBJ) JFAIL("a manifest is not a JSON object");
    for (;;) {
        NEXT(&k);
        if (k.type == LL__J_OBJ_END) break;
        NEXT(&v);
        if (!(k.len == 6 && memcmp(k.s, "layers", 6) == 0)) {
            SKIP(&v);
            continue;
        }
        if (v.type != LL__J_ARR) JFAIL("the manifest's \"layers\" is not a list");
        have_layers = 1;
        m->n = 0;
        for (size_t i = 0;; i++) {
            NEXT(&t);
            if (t.type == LL__J_ARR_END) break;
            if (t.type != LL__J_OBJ) JFAIL("layer %zu: not a JSON object", i);
            if (i >= LL__MAX_LAYERS) {
                ll__json_fail(&j, LL_ERR_LIMIT, "more than %u layers", LL__MAX_LAYERS);
                goto bad;
            }
            layer_rec r;
            memset(&r, 0, sizeof r);
            int have_size = 0;
            const uint8_t *pos = NULL;
            size_t pos_len = 0;
            for (;;) {
                NEXT(&k);
                if (k.type == LL__J_OBJ_END) break;
                NEXT(&v);
                if (k.len == 9 && memcmp(k.s, "mediaType", 9) == 0) {
                    if (v.type != LL__J_STR) JFAIL("layer %zu: mediaType is not a string", i);
                    r.media_type = (const char *)v.s;
                } else if (k.len == 6 && memcmp(k.s, "digest", 6) == 0) {
                    if (v.type != LL__J_STR || !ll__digest_ok((const char *)v.s, v.len))
                        JFAIL("layer %zu: unsupported or malformed digest", i);
                    r.digest = (const char *)v.s;
                } else if (k.len == 4 && memcmp(k.s, "size", 4) == 0) {
                    ll__jint n;
                    if (!ll__json_int(&v, &n) || n.neg || n.big || n.mag > ((uint64_t)1 << 63) - 1)
                        JFAIL("layer %zu: size is not a non-negative integer", i);
                    r.size = n.mag;
                    have_size = 1;
                } else if (k.len == 11 && memcmp(k.s, "annotations", 11) == 0) {
                    r.toc_digest = NULL;
                    pos = NULL;
                    if (v.type == LL__J_NULL) continue;
                    if (v.type != LL__J_OBJ) JFAIL("layer %zu: annotations is not an object", i);
                    for (;;) {
                        ll__jtok ak, av;
                        NEXT(&ak);
                        if (ak.type == LL__J_OBJ_END) break;
                        NEXT(&av);
                        int is_dg = ak.len == sizeof ANN_TOC_DIGEST - 1 && !memcmp(ak.s, ANN_TOC_DIGEST, ak.len);
                        int is_pos = ak.len == sizeof ANN_TOC_POSITION - 1 && !memcmp(ak.s, ANN_TOC_POSITION, ak.len);
                        if ((is_dg || is_pos) && av.type != LL__J_STR)
                            JFAIL("layer %zu: annotation %s is not a string", i, is_dg ? ANN_TOC_DIGEST : ANN_TOC_POSITION);
                        if (is_dg) r.toc_digest = (const char *)av.s;
                        else if (is_pos) pos = av.s, pos_len = av.len;
                        else SKIP(&av);
                    }
                    continue;
                }
                SKIP(&v);
            }
            if (!r.digest) JFAIL("layer %zu: no digest", i);
            if (!have_size) JFAIL("layer %zu: no size", i);
            if (r.toc_digest && !ll__digest_ok(r.toc_digest, strlen(r.toc_digest)))
                JFAIL("layer %zu: bad " ANN_TOC_DIGEST " annotation: it must be sha256: and 64 hex digits", i);
            if (pos && !parse_position(pos, pos_len, r.size, &r.toc_offset, &r.toc_length)) {
                char shown[100];
                ll__show(shown, sizeof shown, pos, pos_len);
                JFAIL("layer %zu: bad " ANN_TOC_POSITION " annotation '%s': it must be OFFSET:LENGTH in decimal, "
                      "within the blob (docs/format.md)", i, shown);
            }
            if (m->n >= cap) {
                size_t ncap = cap ? cap * 2 : 8;
                layer_rec *q = realloc(m->layers, ncap * sizeof *q);
                if (!q) {
                    ll__json_fail(&j, LL_ERR_NOMEM, "out of memory");
                    goto bad;
                }
                m->layers = q;
                cap = ncap;
            }
            m->layers[m->n++] = r;
        }
    }
    NEXT(&t);
    if (t.type != LL__J_EOF) goto bad;
    if (!have_layers) JFAIL("the manifest has no \"layers\" list");
    *out = m;
    return LL_OK;
bad:
    ll__set_err(err, err_size, "manifest: %s", j.msg);
    rc = j.status ? j.status : LL_ERR_FORMAT;
    ll_manifest_free(m);
    return rc;
}

uint32_t ll_manifest_layers(const ll_manifest *m) {
    return m ? m->n : 0;
}

int ll_manifest_layer(const ll_manifest *m, uint32_t i, ll_descriptor *out) {
    if (!m || i >= m->n || !out) return LL_ERR_ARG;
    const layer_rec *r = &m->layers[i];
    out->media_type = r->media_type;
    out->digest = r->digest;
    out->size = r->size;
    out->toc_digest = r->toc_digest;
    out->toc_offset = r->toc_offset;
    out->toc_length = r->toc_length;
    return LL_OK;
}

void ll_manifest_free(ll_manifest *m) {
    if (!m) return;
    free(m->json);
    free(m->layers);
    free(m);
}
