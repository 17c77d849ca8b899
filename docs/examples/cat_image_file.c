/* cat_image_file.c - print one file of a container image stored as an OCI image
 * layout directory (lazy layers, as `lazylayer convert` writes them), using
 * liblazylayer alone: no Python, no JSON library.
 *
 *   cc cat_image_file.c $(pkg-config --cflags --libs lazylayer) -o cat_image_file
 *   ./cat_image_file [--cache DIR] [--stats] LAYOUT_DIR /etc/os-release
 *
 * Steps: index.json -> the image manifest's digest (ll_oci_index_manifest); the
 * manifest blob, checked against that digest (ll_sha256) and parsed
 * (ll_manifest_parse); for each layer its blob file and its descriptor's TOC
 * annotations, handed to ll_index_build, which reads each TOC frame through the
 * callback and checks it against its digest; then ll_index_resolve and
 * ll_image_read.  Every byte printed is vouched for by the manifest digest: the
 * TOC carries the sha256 of every frame, and ll_image checks each frame read.
 *
 * --cache DIR uses a lazylayer disk cache (the Python package's, e.g.
 * ~/.cache/lazylayer): the index is stored there under the manifest digest and
 * mapped on later runs, and frames are read from it first (here the blobs are
 * local files, so this only shows what a host reading over a network would do).
 * --stats prints the image's counters to stderr.
 *
 * Exit status: 0 the file was printed; 1 an error (message on stderr); 2 usage. */
#define _POSIX_C_SOURCE 200809L /* O_CLOEXEC, even with -std=c11 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lazylayer.h>

#define MAX_JSON (4u << 20) /* index.json and manifests larger than this are refused */
#define CHUNK (1u << 20)

static const char *prog = "cat_image_file";

static int fail(const char *what, int rc, const char *detail) {
    fprintf(stderr, "%s: %s: %s%s%s\n", prog, what, ll_strerror(rc), detail && *detail ? ": " : "",
            detail ? detail : "");
    return 1;
}

/* The whole of a small file (at most MAX_JSON bytes) in a malloc'd buffer. */
static unsigned char *read_small(const char *path, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
        if (fd >= 0) close(fd);
        return NULL;
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size > MAX_JSON) {
        fprintf(stderr, "%s: %s: not a regular file of at most %u bytes\n", prog, path, MAX_JSON);
        close(fd);
        return NULL;
    }
    unsigned char *buf = malloc((size_t)sb.st_size + 1);
    if (!buf || ll_fd_read(&fd, 0, (size_t)sb.st_size, buf) != 0) {
        fprintf(stderr, "%s: %s: cannot read it\n", prog, path);
        free(buf);
        close(fd);
        return NULL;
    }
    close(fd);
    *len = (size_t)sb.st_size;
    return buf;
}

/* LAYOUT/blobs/sha256/<hex> for "sha256:<hex>"; 0 if the digest is not one. */
static int blob_path(const char *layout, const char *digest, char *out, size_t size) {
    if (strncmp(digest, "sha256:", 7) != 0 || strlen(digest) != 71) return 0;
    for (const char *p = digest + 7; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return 0;
    return snprintf(out, size, "%s/blobs/sha256/%s", layout, digest + 7) < (int)size;
}

static void usage(void) {
    fprintf(stderr, "usage: %s [--cache DIR] [--stats] OCI_LAYOUT_DIR PATH_IN_IMAGE\n", prog);
}

int main(int argc, char **argv) {
    const char *cache_dir = NULL;
    int stats = 0, i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--cache") == 0 && i + 1 < argc) cache_dir = argv[++i];
        else if (strcmp(argv[i], "--stats") == 0) stats = 1;
        else if (strcmp(argv[i], "--") == 0) { i++; break; }
        else { usage(); return 2; }
    }
    if (argc - i != 2) {
        usage();
        return 2;
    }
    const char *layout = argv[i], *path = argv[i + 1];
    char err[LL_ERR_MSG_SIZE] = "", file[4096], mdigest[80];
    int rc, status = 1;

    /* 1. index.json -> the manifest's digest.  NULL, NULL: the first image manifest
     * (pass "linux" and "amd64" to pick a platform from a multi-platform index). */
    size_t len;
    snprintf(file, sizeof file, "%s/index.json", layout);
    unsigned char *json = read_small(file, &len);
    if (!json) return 1;
    rc = ll_oci_index_manifest(json, len, NULL, NULL, mdigest, sizeof mdigest, err, sizeof err);
    free(json);
    if (rc != LL_OK) return fail(file, rc, err);

    /* 2. the manifest, checked against its digest before it is trusted */
    if (!blob_path(layout, mdigest, file, sizeof file)) return fail(mdigest, LL_ERR_FORMAT, "bad digest");
    json = read_small(file, &len);
    if (!json) return 1;
    uint8_t sha[32];
    char hex[65];
    ll_sha256(json, len, sha);
    for (int k = 0; k < 32; k++) snprintf(hex + 2 * k, 3, "%02x", sha[k]);
    if (strcmp(hex, mdigest + 7) != 0) {
        free(json);
        return fail(file, LL_ERR_DIGEST, "the manifest does not match its digest");
    }
    ll_manifest *m = NULL;
    rc = ll_manifest_parse(json, len, &m, err, sizeof err);
    free(json);
    if (rc != LL_OK) return fail("manifest", rc, err);

    uint32_t n = ll_manifest_layers(m);
    int *fds = calloc(n ? n : 1, sizeof *fds);
    ll_index_layer *layers = calloc(n ? n : 1, sizeof *layers);
    ll_image_source *sources = calloc(n ? n : 1, sizeof *sources);
    ll_diskcache *disk = NULL;
    ll_index *idx = NULL;
    ll_image *img = NULL;
    unsigned char *buf = NULL;
    if (!fds || !layers || !sources) {
        fail("setup", LL_ERR_NOMEM, NULL);
        goto out;
    }
    for (uint32_t k = 0; k < n; k++) fds[k] = -1;

    /* 3. each layer's blob and verified descriptor */
    for (uint32_t k = 0; k < n; k++) {
        ll_descriptor d;
        ll_manifest_layer(m, k, &d);
        if (!d.toc_digest || d.toc_length == 0) {
            fprintf(stderr, "%s: layer %u (%s) is not a lazy layer (no io.lazylayer.toc "
                    "annotations): convert the image first, e.g. `lazylayer convert oci:SRC:TAG "
                    "oci:%s:TAG`\n", prog, k, d.digest, layout);
            goto out;
        }
        if (!blob_path(layout, d.digest, file, sizeof file)) {
            fail(d.digest, LL_ERR_FORMAT, "bad layer digest");
            goto out;
        }
        fds[k] = open(file, O_RDONLY | O_CLOEXEC);
        struct stat sb;
        if (fds[k] < 0 || fstat(fds[k], &sb) != 0) {
            fprintf(stderr, "%s: %s: %s\n", prog, file, strerror(errno));
            goto out;
        }
        if ((uint64_t)sb.st_size != d.size) {
            fprintf(stderr, "%s: %s: %lld bytes, the manifest says %llu\n", prog, file,
                    (long long)sb.st_size, (unsigned long long)d.size);
            goto out;
        }
        layers[k] = (ll_index_layer){.digest = d.digest, .blob_size = d.size,
                                     .toc_digest = d.toc_digest, .toc_offset = d.toc_offset,
                                     .toc_length = d.toc_length, .read = ll_fd_read,
                                     .opaque = &fds[k]};
        /* use_disk 0: a local file is read directly (1 with --cache, to show the
         * path a remote source takes: disk cache first, then the callback);
         * local 1: what the callback reads is counted as local, not fetched. */
        sources[k] = (ll_image_source){.read = ll_fd_read, .opaque = &fds[k], .use_disk = cache_dir != NULL,
                                       .local = 1};
    }

    /* 4. the index: from the disk cache if it has it, else built from the TOCs */
    if (cache_dir) {
        rc = ll_diskcache_open(cache_dir, &disk, err, sizeof err);
        if (rc != LL_OK) {
            fail(cache_dir, rc, err);
            goto out;
        }
        rc = ll_diskcache_load_index(disk, mdigest, &idx);
        if (rc != LL_OK && rc != LL_ERR_NOENT) {
            fail("loading the cached index", rc, NULL);
            goto out;
        }
    }
    if (!idx) {
        rc = ll_index_build(layers, n, &idx, err, sizeof err);
        if (rc != LL_OK) {
            fail("building the image index", rc, err);
            goto out;
        }
        if (disk && (rc = ll_diskcache_store_index(disk, mdigest, idx)) != LL_OK)
            fprintf(stderr, "%s: warning: index not stored in %s: %s\n", prog, cache_dir, ll_strerror(rc));
    }

    /* 5. the file */
    uint64_t ino;
    rc = ll_index_resolve(idx, path, strlen(path), 1, &ino);
    if (rc != LL_OK) {
        fail(path, rc, NULL);
        goto out;
    }
    ll_image_options opt;
    ll_image_options_init(&opt, sizeof opt);
    opt.disk = disk;
    rc = ll_image_create(idx, sources, &opt, &img);
    if (rc != LL_OK) {
        fail("opening the image", rc, NULL);
        goto out;
    }
    buf = malloc(CHUNK);
    if (!buf) {
        fail("buffer", LL_ERR_NOMEM, NULL);
        goto out;
    }
    for (uint64_t off = 0;;) {
        int64_t got = ll_image_read(img, ino, off, buf, CHUNK);
        if (got < 0) {
            fail(path, (int)got, NULL);
            goto out;
        }
        if (got == 0) break;
        if (fwrite(buf, 1, (size_t)got, stdout) != (size_t)got) {
            fprintf(stderr, "%s: writing to stdout: %s\n", prog, strerror(errno));
            goto out;
        }
        off += (uint64_t)got;
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "%s: writing to stdout: %s\n", prog, strerror(errno));
        goto out;
    }
    status = 0;
    if (stats) {
        ll_image_stats s;
        ll_image_get_stats(img, &s);
        fprintf(stderr, "reads %llu frames_disk %llu frames_fetched %llu host_calls %llu "
                "bytes_fetched %llu digest_errors %llu frames_local %llu bytes_local %llu\n",
                (unsigned long long)s.reads, (unsigned long long)s.frames_disk,
                (unsigned long long)s.frames_fetched, (unsigned long long)s.host_calls,
                (unsigned long long)s.bytes_fetched, (unsigned long long)s.digest_errors,
                (unsigned long long)s.frames_local, (unsigned long long)s.bytes_local);
    }
out:
    free(buf);
    ll_image_free(img);   /* before the index it reads */
    ll_index_free(idx);
    ll_diskcache_free(disk);
    for (uint32_t k = 0; fds && k < n; k++)
        if (fds[k] >= 0) close(fds[k]);
    free(fds);
    free(layers);
    free(sources);
    ll_manifest_free(m);  /* the descriptors' strings lived in it */
    return status;
}
