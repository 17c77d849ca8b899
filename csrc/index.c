/* index.c - (stub, being written) */
#include "internal.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

int ll_index_build(const ll_index_layer *layers, uint32_t n, ll_index **out, char *err, size_t err_size) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_index_open_buffer(const void *data, size_t size, int copy, ll_index **out, char *err, size_t err_size) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

void ll_index_data(const ll_index *idx, const void **data, size_t *size) {
    /* TODO: stub */
    
}

void ll_index_free(ll_index *idx) {
    /* TODO: stub */
    
}

uint64_t ll_index_inodes(const ll_index *idx) {
    /* TODO: stub */
    return 0;
}

uint64_t ll_index_names(const ll_index *idx) {
    /* TODO: stub */
    return 0;
}

uint32_t ll_index_layers(const ll_index *idx) {
    /* TODO: stub */
    return 0;
}

int ll_index_lookup(const ll_index *idx, uint64_t dir, const char *name, size_t name_len, uint64_t *ino) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_index_resolve(const ll_index *idx, const char *path, size_t path_len, int follow, uint64_t *ino) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_index_stat(const ll_index *idx, uint64_t ino, ll_stat *out) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_index_readdir(const ll_index *idx, uint64_t dir, uint64_t pos, ll_dirent *out, size_t max, size_t *n, uint64_t *count) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_index_readlink(const ll_index *idx, uint64_t ino, const char **target, size_t *len) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_index_xattr(const ll_index *idx, uint64_t ino, uint32_t i, const char **name, const void **value, size_t *value_len) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_index_layer_info(const ll_index *idx, uint32_t layer, const char **digest, uint64_t *blob_size, uint64_t *tar_size, uint32_t *frames) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_index_frame(const ll_index *idx, uint32_t layer, uint32_t i, ll_layer_frame *out) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_index_prefetch(const ll_index *idx, uint32_t layer, uint64_t i, uint64_t *count, uint64_t *offset, uint64_t *length) {
    /* TODO: stub */
    return LL_ERR_STATE;
}
