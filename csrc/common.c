/* common.c - status messages, version, checksums and the ready-made read callbacks.
 * (ll_check_zstd is in reader.c, next to the zstd API it checks.) */
#include "internal.h"

#include <errno.h>
#include <unistd.h>

#define XXH_INLINE_ALL /* header-only xxHash from libxxhash-dev: no runtime dependency */
#include <xxhash.h>

#include <openssl/sha.h>

const char *ll_strerror(int code) {
    switch (code) {
    case LL_OK: return "success";
    case LL_ERR_ARG: return "invalid argument";
    case LL_ERR_NOMEM: return "out of memory";
    case LL_ERR_SEEKTABLE: return "missing or malformed zstd seek table";
    case LL_ERR_LIMIT: return "seek table exceeds a format or configured limit";
    case LL_ERR_FRAME: return "corrupt zstd frame, or its size disagrees with the seek table";
    case LL_ERR_CHECKSUM: return "frame checksum mismatch: the data is corrupt";
    case LL_ERR_IO: return "the read or write callback failed";
    case LL_ERR_NEED_MORE: return "more tail bytes are needed to parse the seek table";
    case LL_ERR_STATE: return "object used after it finished or failed";
    case LL_ERR_THREAD: return "could not start a worker thread";
    case LL_ERR_COMPRESS: return "zstd compression failed";
    case LL_ERR_ZSTD:
        return "the libzstd loaded at run time is not the one lazylayer was built against "
               "(or its experimental block API misbehaves)";
    case LL_ERR_FORMAT: return "malformed TOC, manifest or index";
    case LL_ERR_DIGEST: return "data does not match the sha256 digest that vouches for it";
    case LL_ERR_NOENT: return "no such file or directory";
    case LL_ERR_NOTDIR: return "not a directory";
    case LL_ERR_LOOP: return "too many levels of symbolic links";
    case LL_ERR_NOTREG: return "not a regular file (or, for readlink, not a symlink)";
    case LL_ERR_CACHE: return "the disk cache directory cannot be used";
    case LL_ERR_MISS: return "a frame must be fetched (not in the memory or disk cache)";
    case LL_ERR_MOUNT: return "the FUSE mount could not be made or served";
    case LL_ERR_UNSUPPORTED: return "the layer uses what this library does not read lazily";
    default: return "unknown error";
    }
}

int ll_version(void) {
    return LL_VERSION_MAJOR * 10000 + LL_VERSION_MINOR * 100 + LL_VERSION_PATCH;
}

uint32_t ll__frame_checksum(const void *data, size_t size) {
    return (uint32_t)XXH64(data, size, 0);
}

int ll_fd_read(void *opaque, uint64_t offset, size_t size, void *dst) {
    int fd = *(const int *)opaque;
    uint8_t *p = dst;
    while (size > 0) {
        ssize_t n = pread(fd, p, size, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR) continue;
            return LL_ERR_IO;
        }
        if (n == 0) return LL_ERR_IO; /* short file */
        p += n;
        size -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

int ll_mem_read(void *opaque, uint64_t offset, size_t size, void *dst) {
    const ll_mem_source *m = opaque;
    if (offset > m->size || size > m->size - offset) return LL_ERR_IO;
    memcpy(dst, (const uint8_t *)m->data + offset, size);
    return 0;
}

void ll_sha256(const void *data, size_t size, uint8_t out[32]) {
    SHA256(data, size, out); /* OpenSSL picks the CPU's SHA extensions when it has them */
}

int ll__grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return LL_OK;
    size_t n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    if (n > SIZE_MAX / elem) return LL_ERR_NOMEM;
    void *q = realloc(*p, n * elem);
    if (!q) return LL_ERR_NOMEM;
    *p = q;
    *cap = n;
    return LL_OK;
}
