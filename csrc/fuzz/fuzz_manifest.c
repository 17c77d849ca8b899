/* fuzz_manifest.c - bytes as an OCI image manifest (ll_manifest_parse) and as an OCI
 * index (ll_oci_index_manifest, with several platforms).  Byte 0 picks the
 * platform asked for; the rest is the JSON.  Invariants: documented statuses
 * with a message, every descriptor's strings NUL-terminated and its TOC
 * position inside the blob. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const uint8_t *json = data + 1;
    size_t n = size - 1;
    char err[LL_ERR_MSG_SIZE];
    ll_manifest *m;
    int rc = ll_manifest_parse(json, n, &m, err, sizeof err);
    CHECK(rc == LL_OK || rc == LL_ERR_FORMAT || rc == LL_ERR_LIMIT || rc == LL_ERR_NOMEM, "manifest rc %d", rc);
    if (rc == LL_OK) {
        for (uint32_t i = 0; i < ll_manifest_layers(m); i++) {
            ll_descriptor d;
            CHECK(ll_manifest_layer(m, i, &d) == LL_OK, "layer");
            CHECK(strlen(d.digest) == 71, "digest");
            if (d.media_type) (void)strlen(d.media_type);
            if (d.toc_digest) CHECK(strlen(d.toc_digest) == 71, "toc digest");
            CHECK(d.toc_offset + d.toc_length <= d.size, "TOC position outside the blob");
        }
        ll_descriptor d;
        CHECK(ll_manifest_layer(m, ll_manifest_layers(m), &d) == LL_ERR_ARG, "past the end");
        ll_manifest_free(m);
    } else CHECK(err[0], "no message");
    static const char *const os[] = {NULL, "linux", "windows", "unknown"};
    static const char *const arch[] = {NULL, "amd64", "arm64", "unknown"};
    char digest[72];
    rc = ll_oci_index_manifest(json, n, os[data[0] & 3], arch[(data[0] >> 2) & 3], digest, sizeof digest, err,
                               sizeof err);
    CHECK(rc == LL_OK || rc == LL_ERR_FORMAT || rc == LL_ERR_LIMIT || rc == LL_ERR_NOENT || rc == LL_ERR_NOMEM,
          "index rc %d", rc);
    if (rc == LL_OK) CHECK(strlen(digest) == 71 && memcmp(digest, "sha256:", 7) == 0, "digest");
    else CHECK(err[0] && digest[0] == 0, "no message");
    return 0;
}
