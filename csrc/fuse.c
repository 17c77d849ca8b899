/* fuse.c - a read-only FUSE server of an ll_image, speaking the kernel protocol.
 *
 * The protocol is the kernel's own (<linux/fuse.h>): a request is a
 * fuse_in_header followed by the opcode's struct, read whole from /dev/fuse; a
 * reply is a fuse_out_header (error = -errno, or 0 and the opcode's answer)
 * written whole, on the descriptor the request came from.  No libfuse: the
 * whole read-only set is a few hundred lines, libfuse 3.14 (bookworm) has no
 * passthrough, and its high-level API costs a path walk per request.
 *
 * Node ids are the index's inode numbers (LL_ROOT_INO is FUSE_ROOT_ID, 1):
 * the index never changes while mounted, so no lookup counts are kept and
 * FORGETs need nothing.  Each server thread has its own descriptor
 * (FUSE_DEV_IOC_CLONE) and its own buffers; the only shared state is the
 * counters (atomics) and the miss queue (a mutex and a condition variable).
 *
 * A READ is answered from ll_image_read_cached; if that reports LL_ERR_MISS the
 * request (its unique id and descriptor) goes to the miss queue, where a miss
 * thread calls ll_image_read, which may call the host's read callback and
 * wait, and answers it.  INTERRUPTs are ignored: a reply to an interrupted
 * request is dropped by the kernel (write gives ENOENT). */
#include "internal.h"

#include <openssl/evp.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

extern char **environ;

#define MAX_READ (1u << 20)           /* 1 MiB reads: max_pages 256 */
#define IN_SIZE (256u << 10)          /* request buffer: > max_write + headers */
#define MAX_WRITE (128u << 10)        /* never used (read-only), but the kernel sizes buffers by it */
#define MAX_THREADS 64
#define MAX_MISS_THREADS 256
#define DIR_BATCH 64

/* Passthrough (protocol 7.40, Linux 6.9); <linux/fuse.h> of bookworm is 7.38. */
#define PT_FLAG (1ULL << 37)        /* FUSE_PASSTHROUGH, in init flags2 */
#define PT_FOPEN (1u << 7)          /* FOPEN_PASSTHROUGH */
struct pt_backing_map {
    int32_t fd;
    uint32_t flags;
    uint64_t padding;
};
#define PT_IOC_OPEN _IOW(FUSE_DEV_IOC_MAGIC, 1, struct pt_backing_map)
#define PT_IOC_CLOSE _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t)
#define PT_XATTR "user.lazylayer.sha256"
#define PT_RETRY_SECONDS 10

/* An inode's passthrough state: the backing id once registered; while it is
 * 0, how many opens the kernel holds in cached mode (the kernel refuses to mix
 * the two modes on one inode) and when the last try to make its file failed. */
typedef struct {
    uint64_t ino;
    int32_t id;
    int fd;
    uint32_t cached_opens;
    time_t failed_at;
} pt_inode;

typedef struct miss {
    struct miss *next;
    uint64_t unique, ino, offset;
    uint32_t size;
    int fd;
} miss_t;

typedef struct {
    ll_fuse *f;
    int fd;
    pthread_t thread;
    int started;
    uint8_t *in;   /* IN_SIZE */
    uint8_t *out;  /* MAX_READ + room for headers */
} worker_t;

struct ll_fuse {
    ll_image *img;
    const ll_index *idx;
    ll_fuse_options o;
    char *mountpoint;
    char *fsname, *subtype;
    int fd;                        /* the session's first descriptor */
    int mounted;                   /* by us, and not yet unmounted by us */
    int started;
    uint64_t entry_sec, attr_sec, neg_sec;
    uint32_t entry_nsec, attr_nsec, neg_nsec;
    uint64_t statfs_blocks;
    worker_t workers[MAX_THREADS];
    unsigned nworkers;
    pthread_t *miss_threads;
    unsigned nmiss;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    miss_t *head, *tail;
    int stopping;
    /* passthrough */
    int pt_on;                     /* asked for, and the kernel agreed at INIT */
    int pt_disabled;               /* BACKING_OPEN refused: not again */
    char *pt_dir;
    pthread_mutex_t pt_mu;
    pt_inode *pt;
    size_t npt, cappt;
    _Atomic uint64_t passthrough_opens;
    _Atomic int xattrs_anywhere; /* 0: not looked yet; 1: no inode has one; 2: some do */
    _Atomic uint64_t requests, lookups, getattrs, readdirs, reads, readlinks, xattrs, forgets, others, negative,
        bytes_read, misses, eio;
};

static void set_err(char *err, size_t err_size, const char *fmt, ...) {
    if (!err || !err_size) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

static void fuse_defaults(ll_fuse_options *o) {
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->entry_timeout = o->attr_timeout = o->negative_timeout = 86400.0;
    o->threads = 2;
    o->miss_threads = 16;
    o->log_fd = -1;
    o->passthrough_min_size = 1u << 20;
}

#define LL__FUSE_OPTIONS_V1 LL__END_OF(ll_fuse_options, passthrough_min_size)

int ll_fuse_options_init(ll_fuse_options *opt, size_t struct_size) {
    ll_fuse_options d;
    fuse_defaults(&d);
    return ll__options_init(opt, struct_size, &d, sizeof d, LL__FUSE_OPTIONS_V1);
}

static void split_timeout(double t, uint64_t *sec, uint32_t *nsec) {
    if (!(t > 0)) t = 0; /* NaN too */
    if (t > 1e12) t = 1e12;
    *sec = (uint64_t)t;
    *nsec = (uint32_t)((t - (double)*sec) * 1e9);
    if (*nsec > 999999999u) *nsec = 999999999u;
}

/* A copy of s with ',', ' ' and control characters made '_' (a mount option
 * value cannot hold them). */
static char *option_value(const char *s) {
    char *d = strdup(s);
    if (!d) return NULL;
    for (char *p = d; *p; p++)
        if (*p == ',' || *p == ' ' || (unsigned char)*p < 0x20 || *p == '\\') *p = '_';
    return d;
}

/* ---------------------------------------------------------------- mounting */

/* fusermount3 mounts for a user without root and sends the /dev/fuse
 * descriptor back over the socket named by _FUSE_COMMFD. */
static int fusermount(ll_fuse *f, const char *opts, char *err, size_t err_size) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        set_err(err, err_size, "socketpair: %s", strerror(errno));
        return LL_ERR_MOUNT;
    }
    char envfd[32];
    snprintf(envfd, sizeof envfd, "_FUSE_COMMFD=%d", sv[0]);
    size_t n = 0;
    while (environ && environ[n]) n++;
    char **envp = calloc(n + 2, sizeof *envp);
    if (!envp) {
        close(sv[0]);
        close(sv[1]);
        return LL_ERR_NOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "_FUSE_COMMFD=", 13) != 0) envp[k++] = environ[i];
    envp[k++] = envfd;
    envp[k] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[0], sv[0]); /* clears FD_CLOEXEC in the child */
    char *argv[] = {"fusermount3", "-o", (char *)opts, "--", f->mountpoint, NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "fusermount3", &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    free(envp);
    close(sv[0]);
    if (rc != 0) {
        close(sv[1]);
        set_err(err, err_size, "cannot run fusermount3 (Debian: apt-get install fuse3): %s", strerror(rc));
        return LL_ERR_MOUNT;
    }
    char byte;
    char ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    ssize_t got;
    do got = recvmsg(sv[1], &msg, MSG_CMSG_CLOEXEC);
    while (got < 0 && errno == EINTR);
    close(sv[1]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    int fd = -1;
    struct cmsghdr *c = got > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)))
        memcpy(&fd, CMSG_DATA(c), sizeof fd);
    if (fd < 0) {
        set_err(err, err_size, "could not mount %s: fusermount3 failed (exit status %d; is the directory empty, "
                "and user_allow_other in /etc/fuse.conf if allow_other is asked?)",
                f->mountpoint, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        return LL_ERR_MOUNT;
    }
    f->fd = fd;
    return LL_OK;
}

int ll_fuse_mount(ll_image *img, const char *mountpoint, const ll_fuse_options *opt, ll_fuse **out, char *err,
                  size_t err_size) {
    if (out) *out = NULL;
    if (!img || !mountpoint || !out) return LL_ERR_ARG;
    ll_fuse_options o;
    fuse_defaults(&o);
    if (opt && ll__options_copy(&o, sizeof o, opt, LL__FUSE_OPTIONS_V1) != LL_OK) return LL_ERR_ARG;
    if (o.threads < 1) o.threads = 1;
    if (o.threads > MAX_THREADS) o.threads = MAX_THREADS;
    if (o.miss_threads < 1) o.miss_threads = 1;
    if (o.miss_threads > MAX_MISS_THREADS) o.miss_threads = MAX_MISS_THREADS;
    ll_fuse *f = calloc(1, sizeof *f);
    if (!f) return LL_ERR_NOMEM;
    f->fd = -1;
    f->img = img;
    f->idx = ll_image_index(img);
    f->o = o;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    pthread_mutex_init(&f->pt_mu, NULL);
    if (o.passthrough_dir && *o.passthrough_dir && !(f->pt_dir = strdup(o.passthrough_dir))) {
        ll_fuse_free(f);
        return LL_ERR_NOMEM;
    }
    f->mountpoint = strdup(mountpoint);
    f->fsname = option_value(o.fsname && *o.fsname ? o.fsname : "lazylayer");
    f->subtype = option_value(o.subtype && *o.subtype ? o.subtype : "lazylayer");
    if (!f->mountpoint || !f->fsname || !f->subtype) {
        ll_fuse_free(f);
        return LL_ERR_NOMEM;
    }
    split_timeout(o.entry_timeout, &f->entry_sec, &f->entry_nsec);
    split_timeout(o.attr_timeout, &f->attr_sec, &f->attr_nsec);
    split_timeout(o.negative_timeout, &f->neg_sec, &f->neg_nsec);
    for (uint32_t i = 0; i < ll_index_layers(f->idx); i++) {
        uint64_t blob = 0;
        ll_index_layer_info(f->idx, i, NULL, &blob, NULL, NULL);
        f->statfs_blocks += (blob + 4095) / 4096;
    }
    struct stat st;
    if (stat(mountpoint, &st) != 0 || !S_ISDIR(st.st_mode)) {
        set_err(err, err_size, "%s: mount point is not a directory", mountpoint);
        ll_fuse_free(f);
        return LL_ERR_MOUNT;
    }
    int rc = LL_OK;
    if (geteuid() == 0) {
        f->fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
        if (f->fd < 0) {
            set_err(err, err_size, "could not mount %s: /dev/fuse: %s (is FUSE there?)", mountpoint, strerror(errno));
            rc = LL_ERR_MOUNT;
        } else {
            char data[256];
            snprintf(data, sizeof data, "fd=%d,rootmode=40000,user_id=%u,group_id=%u,default_permissions%s", f->fd,
                     (unsigned)getuid(), (unsigned)getgid(), o.allow_other ? ",allow_other" : "");
            char type[300];
            snprintf(type, sizeof type, "fuse.%s", f->subtype);
            if (mount(f->fsname, mountpoint, type, MS_NOSUID | MS_NODEV | MS_RDONLY, data) != 0) {
                set_err(err, err_size, "could not mount %s: mount(2): %s", mountpoint, strerror(errno));
                rc = LL_ERR_MOUNT;
            }
        }
    } else {
        size_t len = strlen(f->fsname) + strlen(f->subtype) + 128;
        char *opts = malloc(len);
        if (!opts) rc = LL_ERR_NOMEM;
        else {
            snprintf(opts, len, "ro,nosuid,nodev,default_permissions,fsname=%s,subtype=%s%s", f->fsname,
                     f->subtype, o.allow_other ? ",allow_other" : "");
            rc = fusermount(f, opts, err, err_size);
            free(opts);
        }
    }
    if (rc != LL_OK) {
        ll_fuse_free(f);
        return rc;
    }
    f->mounted = 1;
    *out = f;
    return LL_OK;
}

int ll_fuse_unmount(ll_fuse *f, char *err, size_t err_size) {
    if (!f) return LL_ERR_ARG;
    if (geteuid() == 0) {
        if (umount2(f->mountpoint, MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT) {
            set_err(err, err_size, "umount2 of %s: %s", f->mountpoint, strerror(errno));
            return LL_ERR_MOUNT;
        }
    } else {
        char *argv[] = {"fusermount3", "-u", "-z", "-q", "--", f->mountpoint, NULL};
        pid_t pid;
        int rc = posix_spawnp(&pid, "fusermount3", NULL, NULL, argv, environ);
        if (rc != 0) {
            set_err(err, err_size, "cannot run fusermount3: %s", strerror(rc));
            return LL_ERR_MOUNT;
        }
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
    }
    f->mounted = 0;
    return LL_OK;
}

/* ---------------------------------------------------------------- replies */

static void reply_iov(int fd, uint64_t unique, int error, struct iovec *iov, int n) {
    struct fuse_out_header oh;
    oh.unique = unique;
    oh.error = error;
    oh.len = sizeof oh;
    for (int i = 1; i < n; i++) oh.len += (uint32_t)iov[i].iov_len;
    iov[0].iov_base = &oh;
    iov[0].iov_len = sizeof oh;
    /* ENOENT: the request was interrupted and is gone; anything else (ENODEV:
     * unmounted) ends the loop at its next read. */
    while (writev(fd, iov, n) < 0 && errno == EINTR) {
    }
}

static void reply_err(int fd, uint64_t unique, int err) {
    struct iovec iov[1];
    reply_iov(fd, unique, -err, iov, 1);
}

static void reply_buf(int fd, uint64_t unique, const void *data, size_t size) {
    struct iovec iov[2] = {{0}, {(void *)data, size}};
    reply_iov(fd, unique, 0, iov, size ? 2 : 1);
}

static int status_errno(int rc) {
    switch (rc) {
    case LL_ERR_NOENT: return ENOENT;
    case LL_ERR_NOTDIR: return ENOTDIR;
    case LL_ERR_LOOP: return ELOOP;
    case LL_ERR_NOTREG: return EINVAL;
    case LL_ERR_ARG: return ENOENT; /* no such inode */
    case LL_ERR_NOMEM: return ENOMEM;
    default: return EIO;
    }
}

static void fill_attr(const ll_stat *s, struct fuse_attr *a) {
    memset(a, 0, sizeof *a);
    a->ino = s->ino;
    a->size = s->kind == LL_KIND_DIR ? 4096 : s->size;
    a->blocks = (s->kind == LL_KIND_REG || s->kind == LL_KIND_DIR) ? (a->size + 511) / 512 : 0;
    a->atime = a->mtime = a->ctime = (uint64_t)s->mtime_sec;
    a->atimensec = a->mtimensec = a->ctimensec = s->mtime_nsec;
    a->mode = s->mode;
    a->nlink = s->nlink;
    a->uid = s->uid;
    a->gid = s->gid;
    a->rdev = (uint32_t)makedev(s->devmajor, s->devminor);
    a->blksize = 4096;
}

static void fill_entry(ll_fuse *f, const ll_stat *s, struct fuse_entry_out *e) {
    memset(e, 0, sizeof *e);
    e->nodeid = s->ino;
    e->generation = 1;
    e->entry_valid = f->entry_sec;
    e->entry_valid_nsec = f->entry_nsec;
    e->attr_valid = f->attr_sec;
    e->attr_valid_nsec = f->attr_nsec;
    fill_attr(s, &e->attr);
}

/* The path of inode `ino` for a log line, found by walking the tree (only on errors). */
static void path_of(const ll_index *idx, uint64_t ino, char *out, size_t size) {
    snprintf(out, size, "(inode %llu)", (unsigned long long)ino);
    uint64_t n = ll_index_inodes(idx);
    if (n == 0 || n > (1u << 26)) return;
    uint64_t *parent = calloc(n + 1, sizeof *parent);
    const char **name = calloc(n + 1, sizeof *name);
    uint64_t *queue = malloc((n + 1) * sizeof *queue);
    if (!parent || !name || !queue) goto done;
    size_t qh = 0, qt = 0;
    queue[qt++] = LL_ROOT_INO;
    parent[LL_ROOT_INO] = LL_ROOT_INO;
    while (qh < qt && !parent[ino]) {
        uint64_t dir = queue[qh++];
        ll_dirent ents[DIR_BATCH];
        size_t got;
        for (uint64_t pos = 0;; pos += got) {
            if (ll_index_readdir(idx, dir, pos, ents, DIR_BATCH, &got, NULL) != LL_OK) break;
            for (size_t i = 0; i < got; i++) {
                uint64_t c = ents[i].st.ino;
                if (c > n || parent[c]) continue;
                parent[c] = dir;
                name[c] = ents[i].name;
                if (ents[i].st.kind == LL_KIND_DIR && qt <= n) queue[qt++] = c;
            }
            if (got < DIR_BATCH) break;
        }
    }
    if (!parent[ino] || ino == LL_ROOT_INO) goto done;
    /* build from the end */
    char *tmp = malloc(size);
    if (!tmp) goto done;
    size_t pos = size - 1;
    tmp[pos] = 0;
    for (uint64_t c = ino; c != LL_ROOT_INO && name[c]; c = parent[c]) {
        size_t l = strlen(name[c]);
        if (l + 1 > pos) break;
        pos -= l;
        memcpy(tmp + pos, name[c], l);
        tmp[--pos] = '/';
    }
    snprintf(out, size, "%s", tmp + pos);
    free(tmp);
done:
    free(parent);
    free(name);
    free(queue);
}

static void log_eio(ll_fuse *f, uint64_t ino, uint64_t offset, uint32_t size, int64_t rc) {
    atomic_fetch_add(&f->eio, 1);
    if (f->o.log_fd < 0) return;
    char path[1024], line[1400];
    path_of(f->idx, ino, path, sizeof path);
    int n = snprintf(line, sizeof line, "lazylayer: EIO: read of %u bytes at %llu of %s: %s\n", size,
                     (unsigned long long)offset, path, ll_strerror((int)rc));
    if (n > 0) {
        ssize_t w = write(f->o.log_fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
        (void)w;
    }
}

/* ---------------------------------------------------------------- requests */

static void do_lookup(worker_t *w, const struct fuse_in_header *h, const char *name, size_t len) {
    ll_fuse *f = w->f;
    atomic_fetch_add(&f->lookups, 1);
    uint64_t ino;
    int rc = ll_index_lookup(f->idx, h->nodeid, name, len, &ino);
    struct fuse_entry_out e;
    if (rc == LL_ERR_NOENT) {
        atomic_fetch_add(&f->negative, 1);
        if (f->neg_sec == 0 && f->neg_nsec == 0) return reply_err(w->fd, h->unique, ENOENT);
        memset(&e, 0, sizeof e); /* node id 0: a negative entry, kept for entry_valid */
        e.entry_valid = f->neg_sec;
        e.entry_valid_nsec = f->neg_nsec;
        return reply_buf(w->fd, h->unique, &e, sizeof e);
    }
    ll_stat st;
    if (rc == LL_OK) rc = ll_index_stat(f->idx, ino, &st);
    if (rc != LL_OK) return reply_err(w->fd, h->unique, status_errno(rc));
    fill_entry(f, &st, &e);
    reply_buf(w->fd, h->unique, &e, sizeof e);
}

static void do_getattr(worker_t *w, const struct fuse_in_header *h) {
    ll_fuse *f = w->f;
    atomic_fetch_add(&f->getattrs, 1);
    ll_stat st;
    int rc = ll_index_stat(f->idx, h->nodeid, &st);
    if (rc != LL_OK) return reply_err(w->fd, h->unique, status_errno(rc));
    struct fuse_attr_out a;
    memset(&a, 0, sizeof a);
    a.attr_valid = f->attr_sec;
    a.attr_valid_nsec = f->attr_nsec;
    fill_attr(&st, &a.attr);
    reply_buf(w->fd, h->unique, &a, sizeof a);
}

static void do_readlink(worker_t *w, const struct fuse_in_header *h) {
    atomic_fetch_add(&w->f->readlinks, 1);
    const char *target;
    size_t len;
    int rc = ll_index_readlink(w->f->idx, h->nodeid, &target, &len);
    if (rc != LL_OK) return reply_err(w->fd, h->unique, rc == LL_ERR_NOTREG ? EINVAL : status_errno(rc));
    reply_buf(w->fd, h->unique, target, len);
}

/* One dirent (plus: with its entry) at p, if it fits in the room left; its size or 0. */
static size_t put_dirent(ll_fuse *f, uint8_t *p, size_t room, int plus, const char *name, size_t len,
                         const ll_stat *st, uint64_t ino, uint32_t type, uint64_t next) {
    size_t ent = plus ? FUSE_NAME_OFFSET_DIRENTPLUS + len : FUSE_NAME_OFFSET + len;
    size_t padded = FUSE_DIRENT_ALIGN(ent);
    if (padded > room) return 0;
    memset(p, 0, padded);
    struct fuse_dirent *d;
    if (plus) {
        struct fuse_direntplus *dp = (struct fuse_direntplus *)p;
        if (st) fill_entry(f, st, &dp->entry_out); /* else node id 0: no entry (. and ..) */
        d = &dp->dirent;
    } else {
        d = (struct fuse_dirent *)p;
    }
    d->ino = ino;
    d->off = next;
    d->namelen = (uint32_t)len;
    d->type = type;
    memcpy(d->name, name, len);
    return padded;
}

static uint32_t dtype(uint32_t mode) { return (mode & S_IFMT) >> 12; }

/* Positions: 0 ".", 1 "..", 2 + i the directory's entry i. */
static void do_readdir(worker_t *w, const struct fuse_in_header *h, const struct fuse_read_in *in, int plus) {
    ll_fuse *f = w->f;
    atomic_fetch_add(&f->readdirs, 1);
    ll_stat dir;
    int rc = ll_index_stat(f->idx, h->nodeid, &dir);
    if (rc != LL_OK) return reply_err(w->fd, h->unique, status_errno(rc));
    if (dir.kind != LL_KIND_DIR) return reply_err(w->fd, h->unique, ENOTDIR);
    size_t room = in->size < MAX_READ ? in->size : MAX_READ;
    uint8_t *p = w->out;
    size_t used = 0;
    uint64_t pos = in->offset;
    while (pos < 2) {
        size_t n = put_dirent(f, p + used, room - used, plus, "..", pos == 0 ? 1 : 2, NULL,
                              dir.ino, DT_DIR, pos + 1);
        if (!n) goto out;
        used += n;
        pos++;
    }
    for (;;) {
        ll_dirent ents[DIR_BATCH];
        size_t got;
        rc = ll_index_readdir(f->idx, h->nodeid, pos - 2, ents, DIR_BATCH, &got, NULL);
        if (rc != LL_OK) {
            if (used) break;
            return reply_err(w->fd, h->unique, status_errno(rc));
        }
        for (size_t i = 0; i < got; i++) {
            size_t n = put_dirent(f, p + used, room - used, plus, ents[i].name, ents[i].name_len, &ents[i].st,
                                  ents[i].st.ino, dtype(ents[i].st.mode), pos + 1);
            if (!n) goto out;
            used += n;
            pos++;
        }
        if (got < DIR_BATCH) break;
    }
out:
    reply_buf(w->fd, h->unique, p, used);
}

static void enqueue_miss(worker_t *w, const struct fuse_in_header *h, const struct fuse_read_in *in) {
    ll_fuse *f = w->f;
    miss_t *m = malloc(sizeof *m);
    if (!m) return reply_err(w->fd, h->unique, ENOMEM);
    m->next = NULL;
    m->unique = h->unique;
    m->ino = h->nodeid;
    m->offset = in->offset;
    m->size = in->size < MAX_READ ? in->size : MAX_READ;
    m->fd = w->fd;
    atomic_fetch_add(&f->misses, 1);
    pthread_mutex_lock(&f->mu);
    if (f->tail) f->tail->next = m;
    else f->head = m;
    f->tail = m;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void answer_read(ll_fuse *f, int fd, uint64_t unique, uint64_t ino, uint64_t offset, uint32_t size,
                        int64_t got, uint8_t *buf) {
    if (got < 0) {
        if (got == LL_ERR_NOTREG) return reply_err(fd, unique, EINVAL);
        if (got == LL_ERR_ARG) return reply_err(fd, unique, ENOENT);
        log_eio(f, ino, offset, size, got);
        return reply_err(fd, unique, EIO);
    }
    atomic_fetch_add(&f->bytes_read, (uint64_t)got);
    reply_buf(fd, unique, buf, (size_t)got);
}

static void do_read(worker_t *w, const struct fuse_in_header *h, const struct fuse_read_in *in) {
    ll_fuse *f = w->f;
    atomic_fetch_add(&f->reads, 1);
    uint32_t size = in->size < MAX_READ ? in->size : MAX_READ;
    if (f->o.on_read) f->o.on_read(f->o.on_read_opaque, h->nodeid, in->offset, size);
    int64_t got = ll_image_read_cached(f->img, h->nodeid, in->offset, w->out, size);
    if (got == LL_ERR_MISS) return enqueue_miss(w, h, in);
    answer_read(f, w->fd, h->unique, h->nodeid, in->offset, size, got, w->out);
}

static void do_statfs(worker_t *w, const struct fuse_in_header *h) {
    ll_fuse *f = w->f;
    atomic_fetch_add(&f->others, 1);
    struct fuse_statfs_out s;
    memset(&s, 0, sizeof s);
    s.st.blocks = f->statfs_blocks;
    s.st.files = ll_index_inodes(f->idx);
    s.st.bsize = s.st.frsize = 4096;
    s.st.namelen = 255;
    reply_buf(w->fd, h->unique, &s, sizeof s);
}

static void do_getxattr(worker_t *w, const struct fuse_in_header *h, const struct fuse_getxattr_in *in,
                        const char *name, int list) {
    ll_fuse *f = w->f;
    atomic_fetch_add(&f->xattrs, 1);
    /* An image without a single xattr answers ENOSYS, once: the kernel then stops
     * sending GETXATTR (or LISTXATTR) at all and tells callers EOPNOTSUPP, which
     * saves a round trip per file that overlayfs or exec would have asked about
     * (a third of the import workload's requests: docs/mount.md).  The index is
     * looked through once, on the first request (a few ms for 63,000 inodes). */
    int anywhere = atomic_load(&f->xattrs_anywhere);
    if (anywhere == 0) {
        anywhere = 1;
        uint64_t n = ll_index_inodes(f->idx);
        for (uint64_t ino = 1; ino <= n && anywhere == 1; ino++) {
            ll_stat s;
            if (ll_index_stat(f->idx, ino, &s) == LL_OK && s.nxattrs) anywhere = 2;
        }
        atomic_store(&f->xattrs_anywhere, anywhere);
    }
    if (anywhere == 1) return reply_err(w->fd, h->unique, ENOSYS);
    ll_stat st;
    int rc = ll_index_stat(f->idx, h->nodeid, &st);
    if (rc != LL_OK) return reply_err(w->fd, h->unique, status_errno(rc));
    size_t total = 0;
    const void *found = NULL;
    for (uint32_t i = 0; i < st.nxattrs; i++) {
        const char *n;
        const void *v;
        size_t vlen;
        if (ll_index_xattr(f->idx, h->nodeid, i, &n, &v, &vlen) != LL_OK) continue;
        if (list) {
            size_t l = strlen(n) + 1;
            if (in->size && total + l <= in->size && total + l <= MAX_READ) memcpy(w->out + total, n, l);
            total += l;
        } else if (strcmp(n, name) == 0) {
            found = v;
            total = vlen;
            break;
        }
    }
    if (!list && !found) return reply_err(w->fd, h->unique, ENODATA);
    if (in->size == 0) {
        struct fuse_getxattr_out o = {.size = (uint32_t)total};
        return reply_buf(w->fd, h->unique, &o, sizeof o);
    }
    if (total > in->size || total > MAX_READ) return reply_err(w->fd, h->unique, ERANGE);
    reply_buf(w->fd, h->unique, list ? w->out : found, total);
}

/* ---------------------------------------------------------------- passthrough */

static void hex32(const uint8_t *h, char *out) {
    static const char d[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = d[h[i] >> 4];
        out[2 * i + 1] = d[h[i] & 15];
    }
    out[64] = 0;
}

/* sha256 of fd's first `size` bytes (from offset 0) as hex; 0 or -1. */
static int hash_fd(int fd, uint64_t size, uint8_t *buf, char out[65]) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        return -1;
    }
    uint64_t off = 0;
    int rc = 0;
    while (off < size) {
        size_t want = size - off < MAX_READ ? (size_t)(size - off) : MAX_READ;
        ssize_t n = pread(fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            rc = -1;
            break;
        }
        EVP_DigestUpdate(ctx, buf, (size_t)n);
        off += (uint64_t)n;
    }
    uint8_t h[32];
    unsigned hl = 0;
    if (rc == 0 && EVP_DigestFinal_ex(ctx, h, &hl) == 1 && hl == 32) hex32(h, out);
    else rc = -1;
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* The file of inode `ino`'s content in pt_dir, checked (size, and the sha256
 * its xattr names), opened read-only with a shared flock (a trim skips it);
 * made from the caches if there is none (never fetching: a frame missing
 * from both is a failure).  The fd, or -1. */
static int content_file(ll_fuse *f, uint64_t ino, const ll_stat *st, uint8_t *buf) {
    const char *digest = NULL;
    if (ll_index_layer_info(f->idx, (uint32_t)st->layer, &digest, NULL, NULL, NULL) != LL_OK || !digest) return -1;
    char keysrc[256], key[65];
    int kn = snprintf(keysrc, sizeof keysrc, "%s:%llu:%llu", digest, (unsigned long long)st->offset,
                      (unsigned long long)st->size);
    uint8_t kh[32];
    ll_sha256(keysrc, (size_t)kn, kh);
    hex32(kh, key);
    size_t plen = strlen(f->pt_dir) + 100;
    char *path = malloc(plen), *tmp = malloc(plen);
    int fd = -1, wfd = -1;
    if (!path || !tmp) goto done;
    snprintf(path, plen, "%s/content-%s", f->pt_dir, key);
    char want[65], got[65];
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        struct stat sb;
        ssize_t xl = fgetxattr(fd, PT_XATTR, want, 64);
        if (fstat(fd, &sb) == 0 && (uint64_t)sb.st_size == st->size && xl == 64 &&
            flock(fd, LOCK_SH) == 0 && hash_fd(fd, st->size, buf, got) == 0 && memcmp(want, got, 64) == 0)
            goto done; /* checked: serve it */
        close(fd);
        fd = -1;
        unlink(path); /* wrong or unreadable: made again below */
    }
    snprintf(tmp, plen, "%s/.content-%s-XXXXXX", f->pt_dir, key);
    wfd = mkostemp(tmp, O_CLOEXEC);
    if (wfd < 0) goto done;
    flock(wfd, LOCK_EX); /* a trim skips it while it is written */
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    for (uint64_t off = 0; ok && off < st->size;) {
        size_t want_n = st->size - off < MAX_READ ? (size_t)(st->size - off) : MAX_READ;
        int64_t n = ll_image_read_cached(f->img, ino, off, buf, want_n);
        if (n <= 0) {
            ok = 0;
            break;
        }
        EVP_DigestUpdate(ctx, buf, (size_t)n);
        for (size_t done_n = 0; ok && done_n < (size_t)n;) {
            ssize_t w = pwrite(wfd, buf + done_n, (size_t)n - done_n, (off_t)(off + done_n));
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) ok = 0;
            else done_n += (size_t)w;
        }
        off += (uint64_t)n;
    }
    uint8_t h[32];
    unsigned hl = 0;
    ok = ok && EVP_DigestFinal_ex(ctx, h, &hl) == 1 && hl == 32;
    EVP_MD_CTX_free(ctx);
    if (ok) {
        hex32(h, want);
        ok = fsetxattr(wfd, PT_XATTR, want, 64, 0) == 0 && rename(tmp, path) == 0;
    }
    if (!ok) unlink(tmp);
    close(wfd); /* drops the exclusive flock before the shared one below (same file) */
    wfd = -1;
    if (!ok) goto done;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && flock(fd, LOCK_SH) != 0) {
        close(fd);
        fd = -1;
    }
done:
    if (wfd >= 0) close(wfd);
    free(path);
    free(tmp);
    return fd;
}

static pt_inode *pt_find(ll_fuse *f, uint64_t ino, int create) {
    for (size_t i = 0; i < f->npt; i++)
        if (f->pt[i].ino == ino) return &f->pt[i];
    if (!create) return NULL;
    if (f->npt == f->cappt) {
        size_t cap = f->cappt ? f->cappt * 2 : 64;
        pt_inode *p = realloc(f->pt, cap * sizeof *p);
        if (!p) return NULL;
        f->pt = p;
        f->cappt = cap;
    }
    pt_inode *e = &f->pt[f->npt++];
    memset(e, 0, sizeof *e);
    e->ino = ino;
    e->fd = -1;
    return e;
}

/* The backing id to answer this OPEN with, or 0 (a cached-mode open, counted). */
static int32_t pt_open(worker_t *w, uint64_t ino, const ll_stat *st) {
    ll_fuse *f = w->f;
    pthread_mutex_lock(&f->pt_mu);
    pt_inode *e = pt_find(f, ino, 1);
    int32_t id = 0;
    if (!e) goto out;
    if (e->id > 0) {
        id = e->id;
        goto out;
    }
    /* Only with no cached-mode open of the inode left, and not again right after a failure. */
    if (!f->pt_disabled && e->cached_opens == 0 && (e->failed_at == 0 || time(NULL) - e->failed_at >= PT_RETRY_SECONDS)) {
        int fd = content_file(f, ino, st, w->out);
        if (fd >= 0) {
            struct pt_backing_map m = {.fd = fd};
            int bid = ioctl(f->fd, PT_IOC_OPEN, &m);
            if (bid > 0) {
                e->id = id = bid;
                e->fd = fd;
                goto out;
            }
            if (f->o.log_fd >= 0) {
                char line[200];
                int n = snprintf(line, sizeof line, "lazylayer: passthrough off: FUSE_DEV_IOC_BACKING_OPEN: %s\n",
                                 strerror(errno));
                if (n > 0) (void)!write(f->o.log_fd, line, (size_t)n);
            }
            f->pt_disabled = 1;
            close(fd);
        }
        e->failed_at = time(NULL);
    }
    e->cached_opens++;
out:
    pthread_mutex_unlock(&f->pt_mu);
    return id;
}

static void do_open(worker_t *w, const struct fuse_in_header *h, int dir) {
    ll_fuse *f = w->f;
    atomic_fetch_add(&f->others, 1);
    if (dir || (!f->o.direct_io && !f->pt_on))
        return reply_err(w->fd, h->unique, ENOSYS); /* no_open / no_opendir */
    struct fuse_open_out o;
    memset(&o, 0, sizeof o);
    if (f->pt_on) {
        ll_stat st;
        int rc = ll_index_stat(f->idx, h->nodeid, &st);
        if (rc != LL_OK) return reply_err(w->fd, h->unique, status_errno(rc));
        int32_t id = 0;
        if (st.kind == LL_KIND_REG && st.size >= f->o.passthrough_min_size && st.layer >= 0)
            id = pt_open(w, h->nodeid, &st);
        if (id > 0) {
            atomic_fetch_add(&f->passthrough_opens, 1);
            o.open_flags = PT_FOPEN;
            memcpy(&o.padding, &id, sizeof id); /* backing_id (7.40) */
        } else {
            o.open_flags = f->o.direct_io ? FOPEN_DIRECT_IO : FOPEN_KEEP_CACHE;
        }
    } else {
        o.open_flags = FOPEN_DIRECT_IO;
    }
    reply_buf(w->fd, h->unique, &o, sizeof o);
}

/* RELEASE of a file: a cached-mode open of a passthrough candidate ends. */
static void do_release(worker_t *w, const struct fuse_in_header *h) {
    ll_fuse *f = w->f;
    atomic_fetch_add(&f->others, 1);
    if (f->pt_on) {
        pthread_mutex_lock(&f->pt_mu);
        pt_inode *e = pt_find(f, h->nodeid, 0);
        if (e && e->id <= 0 && e->cached_opens > 0) e->cached_opens--;
        pthread_mutex_unlock(&f->pt_mu);
    }
    reply_err(w->fd, h->unique, 0);
}

static void handle(worker_t *w, size_t len) {
    ll_fuse *f = w->f;
    atomic_fetch_add(&f->requests, 1);
    const struct fuse_in_header *h = (const struct fuse_in_header *)w->in;
    if (len < sizeof *h || h->len != len) return reply_err(w->fd, h->unique, EIO);
    const uint8_t *arg = w->in + sizeof *h;
    size_t alen = len - sizeof *h;
    switch (h->opcode) {
    case FUSE_LOOKUP: {
        size_t n = strnlen((const char *)arg, alen);
        if (n == alen) return reply_err(w->fd, h->unique, EINVAL);
        return do_lookup(w, h, (const char *)arg, n);
    }
    case FUSE_GETATTR: return do_getattr(w, h);
    case FUSE_READLINK: return do_readlink(w, h);
    case FUSE_READ:
    case FUSE_READDIR:
    case FUSE_READDIRPLUS:
        if (alen < sizeof(struct fuse_read_in)) return reply_err(w->fd, h->unique, EINVAL);
        if (h->opcode == FUSE_READ) return do_read(w, h, (const struct fuse_read_in *)arg);
        return do_readdir(w, h, (const struct fuse_read_in *)arg, h->opcode == FUSE_READDIRPLUS);
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR: {
        if (alen < sizeof(struct fuse_getxattr_in)) return reply_err(w->fd, h->unique, EINVAL);
        const char *name = (const char *)arg + sizeof(struct fuse_getxattr_in);
        size_t room = alen - sizeof(struct fuse_getxattr_in);
        if (h->opcode == FUSE_GETXATTR && strnlen(name, room) == room) return reply_err(w->fd, h->unique, EINVAL);
        return do_getxattr(w, h, (const struct fuse_getxattr_in *)arg, name, h->opcode == FUSE_LISTXATTR);
    }
    case FUSE_STATFS: return do_statfs(w, h);
    case FUSE_OPEN: return do_open(w, h, 0);
    case FUSE_OPENDIR: return do_open(w, h, 1);
    case FUSE_RELEASE: return do_release(w, h);
    case FUSE_RELEASEDIR:
        atomic_fetch_add(&f->others, 1);
        return reply_err(w->fd, h->unique, 0);
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
        atomic_fetch_add(&f->forgets, 1);
        return; /* no reply; node ids are inode numbers, nothing to release */
    case FUSE_INTERRUPT: return; /* no reply: a miss answers when its fetch ends */
    case FUSE_DESTROY:
        atomic_fetch_add(&f->others, 1);
        return reply_err(w->fd, h->unique, 0);
    case FUSE_SETATTR:
    case FUSE_SYMLINK:
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_UNLINK:
    case FUSE_RMDIR:
    case FUSE_RENAME:
    case FUSE_RENAME2:
    case FUSE_LINK:
    case FUSE_WRITE:
    case FUSE_SETXATTR:
    case FUSE_REMOVEXATTR:
    case FUSE_CREATE:
    case FUSE_FALLOCATE:
    case FUSE_COPY_FILE_RANGE:
    case FUSE_TMPFILE:
        atomic_fetch_add(&f->others, 1);
        return reply_err(w->fd, h->unique, EROFS);
    default: /* FLUSH, ACCESS, FSYNC, GETLK, IOCTL, POLL, LSEEK, STATX...: the kernel stops asking */
        atomic_fetch_add(&f->others, 1);
        return reply_err(w->fd, h->unique, ENOSYS);
    }
}

static void *server_main(void *arg) {
    worker_t *w = arg;
    for (;;) {
        ssize_t n = read(w->fd, w->in, IN_SIZE);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
            break; /* ENODEV: unmounted */
        }
        if (n == 0) break;
        handle(w, (size_t)n);
    }
    return NULL;
}

static void *miss_main(void *arg) {
    ll_fuse *f = arg;
    uint8_t *buf = NULL;
    for (;;) {
        pthread_mutex_lock(&f->mu);
        while (!f->head && !f->stopping) pthread_cond_wait(&f->cv, &f->mu);
        miss_t *m = f->head;
        if (m) {
            f->head = m->next;
            if (!f->head) f->tail = NULL;
        }
        pthread_mutex_unlock(&f->mu);
        if (!m) break; /* stopping and nothing left */
        if (!buf) buf = malloc(MAX_READ);
        int64_t got = buf ? ll_image_read(f->img, m->ino, m->offset, buf, m->size) : LL_ERR_NOMEM;
        answer_read(f, m->fd, m->unique, m->ino, m->offset, m->size, got, buf);
        free(m);
    }
    free(buf);
    return NULL;
}

/* ---------------------------------------------------------------- session */

static int handshake(ll_fuse *f, uint8_t *in, char *err, size_t err_size) {
    for (;;) {
        ssize_t n = read(f->fd, in, IN_SIZE);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == ENOENT)) continue;
        if (n < 0) {
            set_err(err, err_size, "reading the kernel's INIT: %s", strerror(errno));
            return LL_ERR_MOUNT;
        }
        const struct fuse_in_header *h = (const struct fuse_in_header *)in;
        if ((size_t)n < sizeof *h + 16 || h->opcode != FUSE_INIT) {
            set_err(err, err_size, "the kernel's first request is not INIT");
            return LL_ERR_MOUNT;
        }
        atomic_fetch_add(&f->requests, 1);
        const struct fuse_init_in *ii = (const struct fuse_init_in *)(in + sizeof *h);
        struct fuse_init_out o;
        memset(&o, 0, sizeof o);
        o.major = FUSE_KERNEL_VERSION;
        o.minor = FUSE_KERNEL_MINOR_VERSION;
        if (ii->major != FUSE_KERNEL_VERSION || ii->minor < 28) {
            /* 7.28 (Linux 4.20) brought max_pages; older kernels get nothing from us */
            reply_err(f->fd, h->unique, EPROTO);
            set_err(err, err_size, "the kernel speaks FUSE %u.%u; lazylayer needs 7.28 or later", ii->major,
                    ii->minor);
            return LL_ERR_MOUNT;
        }
        uint64_t want = FUSE_ASYNC_READ | FUSE_DO_READDIRPLUS | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS |
                        FUSE_CACHE_SYMLINKS | FUSE_BIG_WRITES;
        uint64_t offered = ii->flags;
        if (offered & FUSE_INIT_EXT) offered |= (uint64_t)ii->flags2 << 32;
        if (f->pt_dir && ii->minor >= 40 && (offered & PT_FLAG)) {
            want |= PT_FLAG | FUSE_INIT_EXT;
            o.minor = 40;
            o.unused[0] = 1; /* max_stack_depth: backing files on a plain file system */
            f->pt_on = 1;
        }
        o.flags = (uint32_t)(want & offered);
        o.flags2 = (uint32_t)((want & offered) >> 32);
        o.max_readahead = ii->max_readahead;
        o.max_background = 64;
        o.congestion_threshold = 48;
        o.max_write = MAX_WRITE;
        o.time_gran = 1;
        o.max_pages = MAX_READ / 4096;
        reply_buf(f->fd, h->unique, &o, sizeof o);
        return LL_OK;
    }
}

static int start_worker(ll_fuse *f, unsigned i) {
    worker_t *w = &f->workers[i];
    w->f = f;
    w->in = malloc(IN_SIZE);
    w->out = malloc(MAX_READ + 4096);
    if (!w->in || !w->out) return LL_ERR_NOMEM;
    if (i == 0) w->fd = f->fd;
    else {
        w->fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
        if (w->fd < 0) return LL_ERR_MOUNT;
        uint32_t src = (uint32_t)f->fd;
        if (ioctl(w->fd, FUSE_DEV_IOC_CLONE, &src) != 0) {
            close(w->fd);
            w->fd = -1;
            return LL_ERR_MOUNT;
        }
    }
    /* server threads block no signals of their own; the host's handlers run elsewhere */
    if (pthread_create(&w->thread, NULL, server_main, w) != 0) {
        if (i) close(w->fd);
        w->fd = -1;
        return LL_ERR_THREAD;
    }
    pthread_setname_np(w->thread, "ll-fuse"); /* as top -H and /proc/PID/task/TID/comm show it */
    w->started = 1;
    f->nworkers = i + 1;
    return LL_OK;
}

/* Open and close one regular file of the image through the mount, so that
 * the kernel sends its first OPEN and FLUSH now and, answered ENOSYS, never
 * sends either again.  Without this the first FLUSH may come when a process
 * that serves its own mount exits: its server threads are gone by the time
 * its files are closed, and the exit would wait for an answer for ever. */
static void teach_no_flush(ll_fuse *f) {
    uint64_t n = ll_index_inodes(f->idx);
    int tried = 0;
    for (uint64_t ino = LL_ROOT_INO; ino <= n && tried < 8; ino++) {
        ll_stat st;
        if (ll_index_stat(f->idx, ino, &st) != LL_OK || st.kind != LL_KIND_REG) continue;
        if (f->pt_on && st.size >= f->o.passthrough_min_size) continue; /* (it would be decoded) */
        tried++;
        char rel[1024];
        path_of(f->idx, ino, rel, sizeof rel);
        if (rel[0] != '/') continue; /* not found ("(inode N)") */
        size_t len = strlen(f->mountpoint) + strlen(rel) + 1;
        char *full = malloc(len);
        if (!full) return;
        snprintf(full, len, "%s%s", f->mountpoint, rel);
        int fd = open(full, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        free(full);
        if (fd >= 0) {
            close(fd);
            return;
        }
    }
}

int ll_fuse_start(ll_fuse *f, char *err, size_t err_size) {
    if (!f || f->started || f->fd < 0) return LL_ERR_ARG;
    uint8_t *in = malloc(IN_SIZE);
    if (!in) return LL_ERR_NOMEM;
    int rc = handshake(f, in, err, err_size);
    free(in);
    if (rc != LL_OK) return rc;
    f->started = 1;
    f->miss_threads = calloc(f->o.miss_threads, sizeof *f->miss_threads);
    if (!f->miss_threads) return LL_ERR_NOMEM;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* threads start with every signal blocked: the host handles them */
    for (unsigned i = 0; i < f->o.miss_threads; i++) {
        if (pthread_create(&f->miss_threads[i], NULL, miss_main, f) != 0) {
            rc = LL_ERR_THREAD;
            break;
        }
        pthread_setname_np(f->miss_threads[i], "ll-fuse-miss");
        f->nmiss = i + 1;
    }
    for (unsigned i = 0; rc == LL_OK && i < f->o.threads; i++) {
        int r = start_worker(f, i);
        if (r != LL_OK) {
            if (i == 0) rc = r;
            else set_err(err, err_size, "only %u server threads (FUSE_DEV_IOC_CLONE)", i);
            break; /* fewer threads still serve */
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != LL_OK) {
        set_err(err, err_size, "could not start the server threads: %s", ll_strerror(rc));
        return rc;
    }
    teach_no_flush(f);
    return LL_OK;
}

int ll_fuse_wait(ll_fuse *f) {
    if (!f) return LL_ERR_ARG;
    for (unsigned i = 0; i < f->nworkers; i++) {
        worker_t *w = &f->workers[i];
        if (w->started) pthread_join(w->thread, NULL);
        w->started = 0;
    }
    pthread_mutex_lock(&f->mu);
    f->stopping = 1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    for (unsigned i = 0; i < f->nmiss; i++) pthread_join(f->miss_threads[i], NULL);
    f->nmiss = 0;
    f->mounted = 0; /* the kernel is done with it */
    return LL_OK;
}

int64_t ll_fuse_invalidate_layer(ll_fuse *f, uint32_t layer) {
    if (!f || !f->started || f->fd < 0) return LL_ERR_ARG;
    uint64_t n = ll_index_inodes(f->idx), told = 0;
    for (uint64_t ino = 1; ino <= n; ino++) {
        ll_stat st;
        if (ll_index_stat(f->idx, ino, &st) != LL_OK || st.kind != LL_KIND_REG || st.layer != (int64_t)layer) continue;
        struct fuse_out_header oh = {.len = sizeof oh + sizeof(struct fuse_notify_inval_inode_out),
                                     .error = FUSE_NOTIFY_INVAL_INODE, .unique = 0};
        struct fuse_notify_inval_inode_out in = {.ino = ino, .off = 0, .len = 0}; /* every page */
        struct iovec iov[2] = {{&oh, sizeof oh}, {&in, sizeof in}};
        if (writev(f->fd, iov, 2) == (ssize_t)oh.len) told++; /* (ENOENT: the kernel does not have it) */
    }
    return (int64_t)told;
}

void ll_fuse_get_stats(ll_fuse *f, ll_fuse_stats *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!f) return;
    out->requests = atomic_load(&f->requests);
    out->lookups = atomic_load(&f->lookups);
    out->getattrs = atomic_load(&f->getattrs);
    out->readdirs = atomic_load(&f->readdirs);
    out->reads = atomic_load(&f->reads);
    out->readlinks = atomic_load(&f->readlinks);
    out->xattrs = atomic_load(&f->xattrs);
    out->forgets = atomic_load(&f->forgets);
    out->others = atomic_load(&f->others);
    out->negative = atomic_load(&f->negative);
    out->bytes_read = atomic_load(&f->bytes_read);
    out->misses = atomic_load(&f->misses);
    out->eio = atomic_load(&f->eio);
    out->passthrough = atomic_load(&f->passthrough_opens);
}

void ll_fuse_free(ll_fuse *f) {
    if (!f) return;
    if (f->mounted && !f->started) ll_fuse_unmount(f, NULL, 0);
    if (f->nworkers || f->nmiss) {
        if (f->mounted) ll_fuse_unmount(f, NULL, 0);
        ll_fuse_wait(f);
    }
    for (unsigned i = 0; i < MAX_THREADS; i++) {
        worker_t *w = &f->workers[i];
        if (i > 0 && w->fd >= 0 && w->f) close(w->fd);
        free(w->in);
        free(w->out);
    }
    while (f->head) {
        miss_t *m = f->head;
        f->head = m->next;
        free(m);
    }
    for (size_t i = 0; i < f->npt; i++) {
        if (f->pt[i].id > 0 && f->fd >= 0) {
            uint32_t id = (uint32_t)f->pt[i].id;
            (void)ioctl(f->fd, PT_IOC_CLOSE, &id);
        }
        if (f->pt[i].fd >= 0) close(f->pt[i].fd);
    }
    free(f->pt);
    free(f->pt_dir);
    pthread_mutex_destroy(&f->pt_mu);
    if (f->fd >= 0) close(f->fd);
    free(f->miss_threads);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f->mountpoint);
    free(f->fsname);
    free(f->subtype);
    free(f);
}
