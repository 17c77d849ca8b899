/* read_range.c - print LENGTH bytes at OFFSET of the uncompressed data of a
 * local seekable zstd file, using liblazylayer without Python.
 *
 *   cc read_range.c $(pkg-config --cflags --libs lazylayer) -o read_range
 *   ./read_range layer.tar.zst 1048576 4096 > slice.bin
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lazylayer.h>

static int die(const char *what, int rc) {
    fprintf(stderr, "read_range: %s: %s\n", what, ll_strerror(rc));
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s FILE OFFSET LENGTH\n", argv[0]);
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        perror(argv[1]);
        return 1;
    }
    uint64_t offset = strtoull(argv[2], NULL, 0);
    size_t length = (size_t)strtoull(argv[3], NULL, 0);

    /* The seek table is read through the same callback as the frames. */
    ll_seektable *st;
    int rc = ll_seektable_load(ll_fd_read, &fd, (uint64_t)sb.st_size, &st);
    if (rc != LL_OK) return die("seek table", rc);

    ll_cache *cache; /* 64 MiB of decompressed frames, shareable by many readers */
    if ((rc = ll_cache_create(64u << 20, &cache)) != LL_OK) return die("cache", rc);
    ll_pool *pool; /* one worker + this thread decode multi-frame reads */
    if ((rc = ll_pool_create(1, &pool)) != LL_OK) return die("pool", rc);

    ll_reader_options opt;
    ll_reader_options_init(&opt, sizeof opt); /* struct_size: see lazylayer.h */
    opt.cache = cache;
    opt.pool = pool;
    ll_reader *r;
    if ((rc = ll_reader_create(st, ll_fd_read, &fd, &opt, &r)) != LL_OK) {
        ll_seektable_free(st);
        return die("reader", rc);
    }

    char *buf = malloc(length ? length : 1);
    if (!buf) return die("buffer", LL_ERR_NOMEM);
    int64_t got = ll_reader_read(r, offset, buf, length);
    if (got < 0) return die("read", (int)got);
    fwrite(buf, 1, (size_t)got, stdout);
    fprintf(stderr, "read %lld bytes at %llu of %llu (%u frames)\n", (long long)got,
            (unsigned long long)offset, (unsigned long long)ll_reader_size(r),
            ll_seektable_num_frames(ll_reader_seektable(r)));

    free(buf);
    ll_reader_free(r); /* frees the seek table too */
    ll_pool_free(pool);
    ll_cache_free(cache);
    close(fd);
    return 0;
}
