/* sockhost.c - image sources served by another process over stream sockets.
 *
 * The protocol is in lazylayer.h.  Each read holds one connection from send to
 * the last byte of the answer, so requests never interleave on a socket.  A
 * connection that fails is closed and leaves the pool. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    ll_sockhost *h;
    uint32_t layer;
} sh_layer;

struct ll_sockhost {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int *fds;        /* -1: closed */
    int *busy;
    unsigned n, alive;
    uint32_t nlayers;
    sh_layer *layers;
};

int ll_sockhost_create(const int *fds, unsigned n, uint32_t nlayers, ll_sockhost **out) {
    if (!out) return LL_ERR_ARG;
    *out = NULL;
    if ((!fds && n) || n > 4096 || nlayers > 4096) return LL_ERR_ARG;
    ll_sockhost *h = calloc(1, sizeof *h);
    if (!h) return LL_ERR_NOMEM;
    h->fds = calloc(n ? n : 1, sizeof *h->fds);
    h->busy = calloc(n ? n : 1, sizeof *h->busy);
    h->layers = calloc(nlayers ? nlayers : 1, sizeof *h->layers);
    if (!h->fds || !h->busy || !h->layers) {
        free(h->fds);
        free(h->busy);
        free(h->layers);
        free(h);
        return LL_ERR_NOMEM;
    }
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    for (unsigned i = 0; i < n; i++) h->fds[i] = fds[i];
    h->n = h->alive = n;
    h->nlayers = nlayers;
    for (uint32_t i = 0; i < nlayers; i++) h->layers[i] = (sh_layer){h, i};
    *out = h;
    return LL_OK;
}

/* A free, open connection's slot (waiting for one), or -1 if none is left. */
static int take(ll_sockhost *h) {
    pthread_mutex_lock(&h->mu);
    for (;;) {
        if (h->alive == 0) {
            pthread_mutex_unlock(&h->mu);
            return -1;
        }
        for (unsigned i = 0; i < h->n; i++)
            if (h->fds[i] >= 0 && !h->busy[i]) {
                h->busy[i] = 1;
                pthread_mutex_unlock(&h->mu);
                return (int)i;
            }
        pthread_cond_wait(&h->cv, &h->mu);
    }
}

static void give(ll_sockhost *h, int slot, int broken) {
    pthread_mutex_lock(&h->mu);
    h->busy[slot] = 0;
    if (broken && h->fds[slot] >= 0) {
        close(h->fds[slot]);
        h->fds[slot] = -1;
        h->alive--;
    }
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static int send_all(int fd, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int recv_all(int fd, void *p, size_t n) {
    uint8_t *b = p;
    while (n) {
        ssize_t r = recv(fd, b, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

static void put64(uint8_t *p, uint64_t v) {
    ll__put_le32(p, (uint32_t)v);
    ll__put_le32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t get64(const uint8_t *p) { return (uint64_t)ll__le32(p) | (uint64_t)ll__le32(p + 4) << 32; }

static int sockhost_read(void *opaque, uint64_t offset, size_t size, void *dst) {
    sh_layer *l = opaque;
    ll_sockhost *h = l->h;
    int slot = take(h);
    if (slot < 0) return LL_ERR_IO;
    int fd = h->fds[slot];
    uint8_t req[24], ans[16];
    ll__put_le32(req, LL_SOCKHOST_MAGIC);
    ll__put_le32(req + 4, l->layer);
    put64(req + 8, offset);
    put64(req + 16, (uint64_t)size);
    int rc = LL_ERR_IO, broken = 1;
    if (send_all(fd, req, sizeof req) != 0 || recv_all(fd, ans, sizeof ans) != 0) goto done;
    int32_t status = (int32_t)ll__le32(ans);
    uint64_t len = get64(ans + 8);
    if (ll__le32(ans + 4) != 0) goto done;
    if (status == 0) {
        if (len != size || recv_all(fd, dst, size) != 0) goto done;
        rc = LL_OK;
    } else {
        if (status > 0 || len > 4096) goto done;
        char msg[4096];
        if (len && recv_all(fd, msg, (size_t)len) != 0) goto done;
        rc = ll__callback_status(status);
        if (rc == LL_ERR_ARG) rc = LL_ERR_IO;
    }
    broken = 0;
done:
    give(h, slot, broken);
    return rc;
}

int ll_sockhost_source(ll_sockhost *h, uint32_t layer, ll_image_source *out) {
    if (!h || !out || layer >= h->nlayers) return LL_ERR_ARG;
    out->read = sockhost_read;
    out->opaque = &h->layers[layer];
    out->use_disk = 1;
    return LL_OK;
}

void ll_sockhost_free(ll_sockhost *h) {
    if (!h) return;
    for (unsigned i = 0; i < h->n; i++)
        if (h->fds[i] >= 0) close(h->fds[i]);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    free(h->fds);
    free(h->busy);
    free(h->layers);
    free(h);
}
