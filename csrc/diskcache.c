/* diskcache.c - (stub, being written) */
#include "internal.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

int ll_diskcache_open(const char *dir, ll_diskcache **out, char *err, size_t err_size) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

void ll_diskcache_free(ll_diskcache *dc) {
    /* TODO: stub */
    
}

int ll_diskcache_get(ll_diskcache *dc, const uint8_t sha256[32], void *dst, size_t size) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_diskcache_put(ll_diskcache *dc, const uint8_t sha256[32], const void *data, size_t size) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_diskcache_load_index(ll_diskcache *dc, const char *manifest_digest, ll_index **out) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_diskcache_store_index(ll_diskcache *dc, const char *manifest_digest, const ll_index *idx) {
    /* TODO: stub */
    return LL_ERR_STATE;
}
