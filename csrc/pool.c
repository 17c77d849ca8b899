/* pool.c - a few worker threads that run the frames of one call in parallel.
 *
 * A call hands the pool a batch of n independent tasks and then works on the
 * batch itself; workers take task indices from the batch at the head of the
 * queue.  Each thread (worker or caller) brings its own ll__worker scratch, so
 * zstd contexts are made once per thread and reused for every task. */
#include "internal.h"

#include <stdlib.h>
#include <zstd.h>

struct ll__worker {
    ZSTD_DCtx *dctx;
    ZSTD_CCtx *cctx;
};

typedef ll__batch batch;

struct ll_pool {
    pthread_mutex_t lock;
    pthread_cond_t work;   /* a batch was queued, or stop */
    pthread_cond_t done;   /* a batch finished */
    batch *head, *tail;
    int stop;
    unsigned n;
    pthread_t *threads;
    ll__worker *workers;
};

ll__worker *ll__worker_new(void) { return calloc(1, sizeof(ll__worker)); }

static void worker_clear(ll__worker *w) {
    ZSTD_freeDCtx(w->dctx);
    ZSTD_freeCCtx(w->cctx);
    w->dctx = NULL;
    w->cctx = NULL;
}

void ll__worker_free(ll__worker *w) {
    if (!w) return;
    worker_clear(w);
    free(w);
}

void *ll__worker_dctx(ll__worker *w) {
    if (!w->dctx) {
        w->dctx = ZSTD_createDCtx();
        /* Bound the window a hostile frame can make the streaming decoder allocate. */
        if (w->dctx) ZSTD_DCtx_setParameter(w->dctx, ZSTD_d_windowLogMax, 27);
    }
    return w->dctx;
}

void *ll__worker_cctx(ll__worker *w) {
    if (!w->cctx) w->cctx = ZSTD_createCCtx();
    return w->cctx;
}

static void queue_remove(ll_pool *p, batch *b) {
    batch *prev = NULL;
    for (batch *x = p->head; x; prev = x, x = x->qnext) {
        if (x != b) continue;
        if (prev) prev->qnext = x->qnext; else p->head = x->qnext;
        if (p->tail == x) p->tail = prev;
        return;
    }
}

static void finish_task(ll_pool *p, batch *b) {
    pthread_mutex_lock(&p->lock);
    if (++b->done == b->n) pthread_cond_broadcast(&p->done);
    pthread_mutex_unlock(&p->lock); /* b may be gone after this */
}

typedef struct {
    ll_pool *pool;
    ll__worker *w;
} start_arg;

static void *run_worker(void *arg) {
    start_arg *sa = arg;
    ll_pool *p = sa->pool;
    ll__worker *w = sa->w;
    free(sa);
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->stop && !p->head) pthread_cond_wait(&p->work, &p->lock);
        if (p->stop) break;
        batch *b = p->head;
        size_t i = atomic_fetch_add(&b->next, 1);
        if (i >= b->n) {
            queue_remove(p, b); /* all handed out; the caller waits for done */
            continue;
        }
        pthread_mutex_unlock(&p->lock);
        b->fn(b->arg, i, w);
        pthread_mutex_lock(&p->lock);
        if (++b->done == b->n) pthread_cond_broadcast(&p->done);
    }
    pthread_mutex_unlock(&p->lock);
    worker_clear(w);
    return NULL;
}

int ll_pool_create(unsigned nthreads, ll_pool **out) {
    if (!out || nthreads > 256) return LL_ERR_ARG;
    ll_pool *p = calloc(1, sizeof *p);
    if (!p) return LL_ERR_NOMEM;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    if (nthreads) {
        p->threads = calloc(nthreads, sizeof *p->threads);
        p->workers = calloc(nthreads, sizeof *p->workers);
        if (!p->threads || !p->workers) {
            ll_pool_free(p);
            return LL_ERR_NOMEM;
        }
    }
    for (unsigned i = 0; i < nthreads; i++) {
        start_arg *sa = malloc(sizeof *sa);
        if (!sa) { ll_pool_free(p); return LL_ERR_NOMEM; }
        sa->pool = p;
        sa->w = &p->workers[i];
        if (pthread_create(&p->threads[i], NULL, run_worker, sa) != 0) {
            free(sa);
            ll_pool_free(p);
            return LL_ERR_THREAD;
        }
        p->n++;
    }
    *out = p;
    return LL_OK;
}

void ll_pool_free(ll_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->lock);
    free(p->threads);
    free(p->workers);
    free(p);
}

unsigned ll_pool_threads(const ll_pool *p) { return p ? p->n : 0; }

void ll__pool_submit(ll_pool *p, ll__batch *b, ll__task_fn fn, void *arg, size_t n) {
    *b = (ll__batch){.fn = fn, .arg = arg, .n = n, .done = 0, .qnext = NULL};
    atomic_init(&b->next, 0);
    if (!p || p->n == 0 || n == 0) return; /* the caller does it all in wait */
    pthread_mutex_lock(&p->lock);
    if (p->tail) p->tail->qnext = b; else p->head = b;
    p->tail = b;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);
}

void ll__pool_wait(ll_pool *p, ll__batch *b, ll__worker *self) {
    if (!p || p->n == 0) {
        for (size_t i; (i = atomic_fetch_add(&b->next, 1)) < b->n;) b->fn(b->arg, i, self);
        return;
    }
    for (size_t i; (i = atomic_fetch_add(&b->next, 1)) < b->n;) {
        b->fn(b->arg, i, self);
        finish_task(p, b);
    }
    pthread_mutex_lock(&p->lock);
    queue_remove(p, b);
    while (b->done < b->n) pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

void ll__pool_run(ll_pool *p, ll__worker *self, ll__task_fn fn, void *arg, size_t n) {
    if (n == 1 || !p || p->n == 0) {
        for (size_t i = 0; i < n; i++) fn(arg, i, self);
        return;
    }
    batch b;
    ll__pool_submit(p, &b, fn, arg, n);
    ll__pool_wait(p, &b, self);
}
