/* erofsd.c - the supervisor of an EROFS mount filled on demand (ll_erofs_spawn;
 * the contract is in lazylayer.h, "EROFS supervisor").
 *
 * Kernel facts it rests on (Linux >= 6.14; range records >= 6.15), checked on
 * this project's machines (docs/mount.md, "The erofs backend"):
 *   - FAN_PRE_ACCESS (0x00100000) needs a FAN_CLASS_PRE_CONTENT group; each
 *     event carries a FAN_EVENT_INFO_TYPE_RANGE (6) record {hdr, pad, offset,
 *     count}; the answer FAN_DENY | errno << 24 fails the read with that errno;
 *   - a file opened before the mark never raises events, so the mark goes on
 *     before mount(2) opens the data file;
 *   - a write through the event's descriptor raises none (any other would
 *     wait on this very loop);
 *   - when the group's last descriptor closes, pending events are allowed and
 *     a hole reads as zeros: hence this process, which never closes it while the
 *     file system lives. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/fanotify.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL /* header-only xxHash: lazylayer-erofsd needs libc alone */
#include <xxhash.h>

#ifndef FAN_PRE_ACCESS
#define FAN_PRE_ACCESS 0x00100000
#endif
#define INFO_RANGE 6
#define DENY_EIO (FAN_DENY | ((uint32_t)EIO << 24))
#define SYSFS "/sys/fs/erofs"
#define MAX_SEEN 64

typedef struct {
    int fan, sock, data;
    int daemon;                /* the daemon's end of sock is open */
    int detached;
    uint64_t data_size, nblocks, nfilled;
    uint8_t *bits;
    int marked;                /* the data file still raises events */
    const char *data_path;
    int *pending;              /* id -> event fd, -1: free */
    uint32_t npending, cap;
    const char *mnt;
    char sysname[128];         /* this file system's /sys/fs/erofs entry, "" if unknown */
} sup;

static void say(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}

uint64_t ll_erofs_sum(const void *data, size_t size) { return data || !size ? XXH3_64bits(data, size) : 0; }

/* ---- the metadata image: the one the host made sure of (its checksum in START) */

typedef struct {
    int fd;                    /* open, -1 if it could not be */
    struct stat st;
    uint64_t sum;
    int summed;
    void *map;                 /* its mapping, NULL if none (unmapped once the mount is made) */
} meta_file;

static void meta_unmap(meta_file *m) {
    if (m->map) munmap(m->map, (size_t)m->st.st_size);
    m->map = NULL;
}

/* Open `path` and take its checksum (mapped, populated at once: 8 MB in ~2 ms here, where
 * reading it through a buffer costs a copy more). */
static void meta_open(meta_file *m, const char *path) {
    m->summed = 0;
    m->map = NULL;
    if ((m->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return;
    if (fstat(m->fd, &m->st) != 0 || m->st.st_size <= 0) return;
    void *p = mmap(NULL, (size_t)m->st.st_size, PROT_READ, MAP_SHARED | MAP_POPULATE, m->fd, 0);
    if (p == MAP_FAILED) return;
    m->map = p;
    m->sum = ll_erofs_sum(p, (size_t)m->st.st_size);
    m->summed = 1;
}

/* Still the file at `path` (the host writes a new image under a new inode, by rename)? */
static int meta_current(const meta_file *m, const char *path) {
    struct stat st;
    return m->fd >= 0 && stat(path, &st) == 0 && st.st_ino == m->st.st_ino && st.st_dev == m->st.st_dev &&
           st.st_size == m->st.st_size && st.st_mtim.tv_sec == m->st.st_mtim.tv_sec &&
           st.st_mtim.tv_nsec == m->st.st_mtim.tv_nsec;
}

/* ---- the filled blocks */

static int filled(const sup *s, uint64_t off, uint64_t len) {
    if (len == 0) return 1;
    uint64_t first = off / LL_EROFS_BLOCK, last = (off + len - 1) / LL_EROFS_BLOCK;
    if (last >= s->nblocks) last = s->nblocks - 1;
    for (uint64_t b = first; b <= last; b++)
        if (!(s->bits[b >> 3] & (1u << (b & 7)))) return 0;
    return 1;
}

static void mark_filled(sup *s, uint64_t off, uint64_t len) {
    /* only whole blocks: a partly written block is not filled */
    uint64_t first = (off + LL_EROFS_BLOCK - 1) / LL_EROFS_BLOCK;
    uint64_t end = off + len >= s->data_size ? s->nblocks : (off + len) / LL_EROFS_BLOCK;
    for (uint64_t b = first; b < end && b < s->nblocks; b++)
        if (!(s->bits[b >> 3] & (1u << (b & 7)))) {
            s->bits[b >> 3] |= (uint8_t)(1u << (b & 7));
            s->nfilled++;
        }
    /* Complete: no more events at all (the kernel finds no mark; reads go straight to the file). */
    if (s->marked && s->nfilled == s->nblocks &&
        fanotify_mark(s->fan, FAN_MARK_REMOVE, FAN_PRE_ACCESS, AT_FDCWD, s->data_path) == 0) {
        s->marked = 0;
        say("lazylayer erofs supervisor: %s: the data file is complete; no more events", s->mnt);
    }
}

/* ---- answers */

static void answer(sup *s, int fd, uint32_t response) {
    struct fanotify_response r = {.fd = fd, .response = response};
    if (write(s->fan, &r, sizeof r) != (ssize_t)sizeof r) say("lazylayer erofs supervisor: answering an event: %s",
                                                              strerror(errno));
    close(fd);
}

static int send_msg(sup *s, const ll_erofs_msg *m, int fd) {
    struct iovec iov = {.iov_base = (void *)m, .iov_len = sizeof *m};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr h = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&u, 0, sizeof u);
        h.msg_control = u.buf;
        h.msg_controllen = sizeof u.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&h);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    for (;;) {
        ssize_t n = sendmsg(s->sock, &h, MSG_NOSIGNAL);
        if (n == (ssize_t)sizeof *m) return 0;
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
}

static void detach(sup *s) {
    if (s->detached) return;
    s->detached = 1;
    if (umount2(s->mnt, MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT)
        say("lazylayer erofs supervisor: detaching %s: %s", s->mnt, strerror(errno));
}

static void daemon_gone(sup *s) {
    if (!s->daemon) return;
    s->daemon = 0;
    uint32_t denied = 0;
    for (uint32_t i = 0; i < s->npending; i++)
        if (s->pending[i] >= 0) {
            answer(s, s->pending[i], DENY_EIO);
            s->pending[i] = -1;
            denied++;
        }
    say("lazylayer erofs supervisor: the daemon of %s is gone: %u pending reads failed with EIO, the mount is "
        "detached, blocks not filled read as EIO until the last file is closed", s->mnt, denied);
    detach(s);
}

static void hand_over(sup *s, int fd, uint64_t off, uint64_t len) {
    uint32_t id = 0;
    while (id < s->npending && s->pending[id] >= 0) id++;
    if (id == s->cap) {
        uint32_t cap = s->cap ? s->cap * 2 : 64;
        int *p = realloc(s->pending, cap * sizeof *p);
        if (!p) { answer(s, fd, DENY_EIO); return; }
        s->pending = p;
        s->cap = cap;
    }
    if (id == s->npending) s->npending++;
    s->pending[id] = fd;
    ll_erofs_msg m = {.type = LL_EROFS_MSG_FILL, .id = id, .offset = off, .length = len};
    if (send_msg(s, &m, fd) != 0) daemon_gone(s);   /* denies it with the rest */
}

static void on_events(sup *s) {
    uint8_t buf[16384] __attribute__((aligned(8)));
    for (;;) {
        ssize_t n = read(s->fan, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;  /* EAGAIN: drained */
        }
        size_t at = 0;
        while (at + sizeof(struct fanotify_event_metadata) <= (size_t)n) {
            struct fanotify_event_metadata md;
            memcpy(&md, buf + at, sizeof md);
            if (md.event_len < sizeof md || at + md.event_len > (size_t)n) return;
            uint64_t off = 0, len = s->data_size;
            for (size_t i = at + md.metadata_len; i + 24 <= at + md.event_len;) {
                uint8_t type = buf[i];
                uint16_t ilen;
                memcpy(&ilen, buf + i + 2, 2);
                if (ilen < 4) break;
                if (type == INFO_RANGE && ilen >= 24) {
                    memcpy(&off, buf + i + 8, 8);
                    memcpy(&len, buf + i + 16, 8);
                }
                i += ilen;
            }
            at += md.event_len;
            if (md.fd < 0) continue;
            if (!(md.mask & FAN_PRE_ACCESS)) { close(md.fd); continue; }
            if (off >= s->data_size) len = 0;
            else if (len > s->data_size - off) len = s->data_size - off;
            if (filled(s, off, len)) answer(s, md.fd, FAN_ALLOW);
            else if (s->daemon) hand_over(s, md.fd, off, len);
            else answer(s, md.fd, DENY_EIO);
        }
    }
}

static void on_message(sup *s) {
    ll_erofs_msg m;
    for (;;) {
        ssize_t n = recv(s->sock, &m, sizeof m, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n != (ssize_t)sizeof m) { daemon_gone(s); return; }   /* 0: closed; else garbage */
        switch (m.type) {
        case LL_EROFS_MSG_DONE:
            if (m.id >= s->npending || s->pending[m.id] < 0) break;
            if (m.status == 0) mark_filled(s, m.offset, m.length);
            /* (any failure is EIO: the kernel takes only a few errnos, and a refused answer would
             * leave the reader waiting) */
            answer(s, s->pending[m.id], m.status == 0 ? FAN_ALLOW : DENY_EIO);
            s->pending[m.id] = -1;
            break;
        case LL_EROFS_MSG_FILLED:
            if (m.offset < s->data_size) mark_filled(s, m.offset, m.length);
            break;
        case LL_EROFS_MSG_UNMOUNT:
            detach(s);
            break;
        default:
            break;
        }
    }
}

/* ---- is the file system still there? */

static int list_sysfs(char names[][128], int max) {
    DIR *d = opendir(SYSFS);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "features") == 0) continue;
        snprintf(names[n++], 128, "%.127s", e->d_name);
    }
    closedir(d);
    return n;
}

static int alive(const sup *s) {
    if (!s->sysname[0]) return 1;  /* unknown: stay */
    char path[256];
    snprintf(path, sizeof path, SYSFS "/%s", s->sysname);
    struct stat st;
    return stat(path, &st) == 0;
}

static void write_filled(sup *s, const char *path) {
    if (!path || !path[0]) return;
    if (fdatasync(s->data) != 0) return;
    struct stat st;
    if (fstat(s->data, &st) != 0) return;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return;
    uint8_t head[32];
    memcpy(head, "LLEROFS1", 8);
    for (int i = 0; i < 8; i++) {
        head[8 + i] = (uint8_t)(s->data_size >> (8 * i));
        head[16 + i] = (uint8_t)((uint64_t)st.st_ino >> (8 * i));
        head[24 + i] = (uint8_t)((uint64_t)st.st_dev >> (8 * i));
    }
    size_t nb = (size_t)((s->nblocks + 7) / 8);
    int ok = write(fd, head, sizeof head) == (ssize_t)sizeof head && write(fd, s->bits, nb) == (ssize_t)nb &&
             fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp, path) != 0) unlink(tmp);
}

/* ---- setup, in the forked child */

static __attribute__((noreturn)) void fail(sup *s, int errnum, const char *what) {
    ll_erofs_msg m = {.type = LL_EROFS_MSG_MOUNTED, .status = errnum ? errnum : EIO};
    snprintf(m.text, sizeof m.text, "%s: %s", what, strerror(errnum));
    send_msg(s, &m, -1);
    _exit(1);
}

/* The bitmap write_filled left, if it is about this data file (size, inode, device; the host
 * removes it whenever it makes a new data file, whose inode may be an old one's).  The caller removes
 * it once the mount is made (a journalled unlink takes milliseconds): the next clean end writes it
 * again, a crash leaves none. */
static void read_filled(sup *s, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st, dst;
    size_t nb = (size_t)((s->nblocks + 7) / 8);
    uint8_t head[32];
    if (fstat(fd, &st) == 0 && fstat(s->data, &dst) == 0 && (uint64_t)st.st_size == 32 + nb &&
        read(fd, head, 32) == 32 && memcmp(head, "LLEROFS1", 8) == 0) {
        uint64_t v[3] = {0, 0, 0};
        for (int k = 0; k < 3; k++)
            for (int i = 0; i < 8; i++) v[k] |= (uint64_t)head[8 + 8 * k + i] << (8 * i);
        if (v[0] == s->data_size && v[1] == (uint64_t)dst.st_ino && v[2] == (uint64_t)dst.st_dev &&
            read(fd, s->bits, nb) == (ssize_t)nb) {
            if (s->nblocks % 8) s->bits[s->nblocks / 8] &= (uint8_t)((1u << (s->nblocks % 8)) - 1);
            for (size_t i = 0; i < nb; i++) s->nfilled += (uint64_t)__builtin_popcount(s->bits[i]);
        } else {
            memset(s->bits, 0, nb);
        }
    }
    close(fd);
}

static __attribute__((noreturn)) void supervise(const char *meta_path, const char *data_path, const char *mountpoint,
                                                const char *filled_path, int sock) {
    sup s = {.fan = -1, .sock = sock, .data = -1, .daemon = 1, .mnt = mountpoint};
    /* everything the host had open but the socket and stderr goes */
    DIR *fds = opendir("/proc/self/fd");
    if (fds) {
        int keep = dirfd(fds);
        struct dirent *e;
        int list[1024], n = 0;
        while ((e = readdir(fds)) && n < 1024) {
            int fd = atoi(e->d_name);
            if (e->d_name[0] != '.' && fd > 2 && fd != sock && fd != keep) list[n++] = fd;
        }
        closedir(fds);
        for (int i = 0; i < n; i++) close(list[i]);
    }
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0) {
        if (write(oom, "-1000", 5) != 5)
            say("lazylayer erofs supervisor: cannot leave the OOM killer's list (%s; needs CAP_SYS_RESOURCE)",
                strerror(errno));
        close(oom);
    }
    /* Every read of the data file waits on this process until the file is complete, even for blocks
     * filled long ago: it must not queue behind the host's filling (decoding, writing) for a core. */
    if (setpriority(PRIO_PROCESS, 0, -10) != 0)
        say("lazylayer erofs supervisor: cannot raise its priority (%s)", strerror(errno));
    /* The host started us first and readies the data file meanwhile; what does not wait for it is
     * done before its START: the group, and the checksum of the metadata image as it is now (the
     * host may still write a new one, which is then summed after START). */
    s.fan = fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE,
                          O_RDWR | O_LARGEFILE | O_CLOEXEC);
    int fan_errno = s.fan < 0 ? errno : 0;
    meta_file meta;
    meta_open(&meta, meta_path);
    ll_erofs_msg start;
    ssize_t got;
    do got = recv(sock, &start, sizeof start, 0);
    while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof start || start.type != LL_EROFS_MSG_START) _exit(1);
    if (fan_errno) fail(&s, fan_errno, "fanotify_init (pre-content events need Linux >= 6.14)");
    if (!meta_current(&meta, meta_path)) {
        meta_unmap(&meta);
        if (meta.fd >= 0) close(meta.fd);
        meta_open(&meta, meta_path);
    }
    if (meta.fd < 0) fail(&s, errno, meta_path);
    if (!meta.summed || meta.sum != start.offset)
        fail(&s, EBADMSG, "the metadata image does not match its checksum");
    s.data_size = start.length;
    if (s.data_size == 0 || s.data_size % LL_EROFS_BLOCK) fail(&s, EINVAL, "START: a bad data file size");
    s.nblocks = s.data_size / LL_EROFS_BLOCK;
    if (!(s.bits = calloc(1, (size_t)((s.nblocks + 7) / 8)))) fail(&s, ENOMEM, "bitmap");
    s.data_path = data_path;
    if ((s.data = open(data_path, O_RDONLY | O_CLOEXEC)) < 0) fail(&s, errno, data_path);
    read_filled(&s, filled_path);
    /* Pinned in the disk cache (its trim skips files it cannot flock exclusively) as long as we live,
     * which may be longer than the daemon. */
    if (flock(meta.fd, LOCK_SH) != 0 || flock(s.data, LOCK_SH) != 0)
        fail(&s, errno, "pinning the metadata image and the data file");
    if (s.nfilled < s.nblocks) {   /* (a complete data file needs no mark) */
        if (fanotify_mark(s.fan, FAN_MARK_ADD, FAN_PRE_ACCESS, AT_FDCWD, data_path) != 0)
            fail(&s, errno, "marking the data file for pre-content events (ext4, xfs or btrfs needed; tmpfs "
                            "refuses)");
        s.marked = 1;
    }
    static char before[MAX_SEEN][128], after[MAX_SEEN][128];
    int nb = list_sysfs(before, MAX_SEEN);
    char opts[4200];
    if (snprintf(opts, sizeof opts, "device=%s", data_path) >= (int)sizeof opts)
        fail(&s, ENAMETOOLONG, "data file path");
    if (mount(meta_path, mountpoint, "erofs", MS_RDONLY | MS_NODEV | MS_NOSUID, opts) != 0)
        fail(&s, errno, "mount(2) of the EROFS image");
    int na = list_sysfs(after, MAX_SEEN), fresh = 0;
    for (int i = 0; i < na; i++) {
        int seen = 0;
        for (int j = 0; j < nb && !seen; j++) seen = strcmp(after[i], before[j]) == 0;
        if (!seen) {
            fresh++;
            snprintf(s.sysname, sizeof s.sysname, "%s", after[i]);
        }
    }
    if (fresh != 1) {
        s.sysname[0] = 0;
        say("lazylayer erofs supervisor: cannot tell which %s entry is %s: it stays until killed", SYSFS, mountpoint);
    }
    ll_erofs_msg ok = {.type = LL_EROFS_MSG_MOUNTED, .offset = s.nfilled * LL_EROFS_BLOCK};
    snprintf(ok.text, sizeof ok.text, "%s", s.sysname);
    if (send_msg(&s, &ok, -1) != 0) daemon_gone(&s);
    unlink(filled_path);
    meta_unmap(&meta);

    for (;;) {
        struct pollfd p[2] = {{.fd = s.fan, .events = POLLIN}, {.fd = s.daemon ? s.sock : -1, .events = POLLIN}};
        int rc = poll(p, 2, s.detached ? 100 : 500);
        if (rc < 0 && errno != EINTR) break;
        if (p[0].revents) on_events(&s);
        if (p[1].revents) on_message(&s);
        if (!alive(&s)) break;   /* unmounted (by anyone) and the last file closed */
    }
    on_events(&s);   /* (none can come now; answer any that did) */
    write_filled(&s, filled_path);
    if (s.daemon) {
        ll_erofs_msg gone = {.type = LL_EROFS_MSG_GONE};
        send_msg(&s, &gone, -1);
    }
    _exit(0);
}

int ll_erofs_spawn(const char *meta_path, const char *data_path, const char *mountpoint, const char *filled_path,
                   int sock, int *pid, char *err, size_t err_size) {
    if (err && err_size) err[0] = 0;
    if (!meta_path || !data_path || !mountpoint || !filled_path || sock < 0 || !pid) return LL_ERR_ARG;
    pid_t child = fork();
    if (child < 0) {
        ll__set_err(err, err_size, "fork: %s", strerror(errno));
        return LL_ERR_MOUNT;
    }
    if (child == 0) supervise(meta_path, data_path, mountpoint, filled_path, sock);
    *pid = (int)child;
    return LL_OK;
}

/* The socket's number in the program ll_erofs_exec starts (after stdin, stdout, stderr). */
#define EXEC_SOCK 3

int ll_erofs_exec(const char *program, const char *meta_path, const char *data_path, const char *mountpoint,
                  const char *filled_path, int sock, int *pid, char *err, size_t err_size) {
    if (err && err_size) err[0] = 0;
    if (!program || !meta_path || !data_path || !mountpoint || !filled_path || sock < 0 || !pid) return LL_ERR_ARG;
    /* The socket goes to EXEC_SOCK (dup2 clears its close-on-exec); one already there is first moved
     * out of the way, as dup2 onto itself would leave the flag set. */
    int moved = -1, from = sock;
    if (sock == EXEC_SOCK) {
        if ((moved = fcntl(sock, F_DUPFD_CLOEXEC, EXEC_SOCK + 1)) < 0) {
            ll__set_err(err, err_size, "dup: %s", strerror(errno));
            return LL_ERR_MOUNT;
        }
        from = moved;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc == 0) {
        rc = posix_spawnattr_init(&attr);
        if (rc != 0) posix_spawn_file_actions_destroy(&fa);
    }
    if (rc == 0) {
        sigset_t none;
        sigemptyset(&none);
        rc = posix_spawn_file_actions_adddup2(&fa, from, EXEC_SOCK);
        if (rc == 0) rc = posix_spawnattr_setsigmask(&attr, &none);
        /* its own session: a terminal's SIGINT or the host's process group being killed passes it by */
        if (rc == 0) rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);
        char fdarg[16];
        snprintf(fdarg, sizeof fdarg, "%d", EXEC_SOCK);
        char *argv[] = {(char *)program, (char *)meta_path, (char *)data_path, (char *)mountpoint,
                        (char *)filled_path, fdarg, NULL};
        char *envp[] = {NULL};
        pid_t child = -1;
        if (rc == 0) rc = posix_spawn(&child, program, &fa, &attr, argv, envp);
        if (rc == 0) *pid = (int)child;
        posix_spawnattr_destroy(&attr);
        posix_spawn_file_actions_destroy(&fa);
    }
    if (moved >= 0) close(moved);
    if (rc != 0) {
        ll__set_err(err, err_size, "starting %s: %s", program, strerror(rc));
        return LL_ERR_MOUNT;
    }
    return LL_OK;
}

int ll_erofs_probe(const char *path, int *what) {
    if (what) *what = 0;
    if (!path) return EINVAL;
    int fan = fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC, O_RDONLY | O_CLOEXEC);
    if (fan < 0) {
        if (what) *what = 1;
        return errno;
    }
    int rc = fanotify_mark(fan, FAN_MARK_ADD, FAN_PRE_ACCESS, AT_FDCWD, path) == 0 ? 0 : errno;
    if (rc && what) *what = 2;
    close(fan);   /* (the mark goes with the group) */
    return rc;
}

int ll_erofs_supervisor_main(int argc, char **argv) {
    char *end = NULL;
    long sock = argc == 6 ? strtol(argv[5], &end, 10) : -1;
    if (argc != 6 || !end || *end || sock < 0 || sock > 1 << 20) {
        say("usage: %s META DATA MOUNTPOINT FILLED SOCKET-FD (started by ll_erofs_exec, not by hand)",
            argc > 0 ? argv[0] : "lazylayer-erofsd");
        return 2;
    }
    supervise(argv[1], argv[2], argv[3], argv[4], (int)sock);
}
