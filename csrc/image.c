/* image.c - (stub, being written) */
#include "internal.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

int ll_image_options_init(ll_image_options *opt, size_t struct_size) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int ll_image_create(const ll_index *idx, const ll_image_source *sources, const ll_image_options *opt, ll_image **out) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

int64_t ll_image_read(ll_image *img, uint64_t ino, uint64_t offset, void *dst, size_t size) {
    /* TODO: stub */
    return LL_ERR_STATE;
}

void ll_image_get_stats(ll_image *img, ll_image_stats *out) {
    /* TODO: stub */
    
}

void ll_image_free(ll_image *img) {
    /* TODO: stub */
    
}
