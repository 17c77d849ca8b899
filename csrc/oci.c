/* oci.c - (stub, being written) */
#include "internal.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

int ll_oci_index_manifest(const void *json, size_t len, const char *os, const char *arch, char *digest, size_t digest_size, char *err, size_t err_size) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_manifest_parse(const void *json, size_t len, ll_manifest **out, char *err, size_t err_size) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

uint32_t ll_manifest_layers(const ll_manifest *m) {
    /* TODO: stub */
    return 0;
}

int ll_manifest_layer(const ll_manifest *m, uint32_t i, ll_descriptor *out) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

void ll_manifest_free(ll_manifest *m) {
    /* TODO: stub */
    
}
