/* fuzz_index_load.c - bytes as a stored index: the checksum is fixed up first, so the
 * fuzzer gets past it to the structural checks of ll_index_open_buffer; then
 * everything is walked (every inode, directory, name, xattr, symlink, layer, frame,
 * prefetch range, and resolutions of paths made of the names found).  A buffer
 * that opens must never make a lookup crash, hang or read out of bounds. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "fuzz_index_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1);   /* exactly `size` bytes: ASan sees any overrun */
    if (!buf) return 0;
    memcpy(buf, data, size);
    if (size >= 24) {
        uint64_t sum = XXH3_64bits(buf + 24, size - 24);
        for (int i = 0; i < 8; i++) buf[16 + i] = (uint8_t)(sum >> (8 * i));
    }
    ll_index *idx;
    char err[LL_ERR_MSG_SIZE];
    int rc = ll_index_open_buffer(buf, size, 0, &idx, err, sizeof err);
    CHECK(rc == LL_OK || rc == LL_ERR_FORMAT || rc == LL_ERR_NOMEM, "open rc %d", rc);
    if (rc == LL_OK) {
        ll_fuzz_walk(idx, ll_fuzz_hash(data, size));
        ll_index_free(idx);
    } else {
        CHECK(err[0], "a refusal without a reason");
    }
    free(buf);
    return 0;
}
