/* fuzz_sockhost.c - bytes as the answer stream of the process behind an
 * ll_sockhost (csrc/sockhost.c).  Byte 0 picks the size asked for (1..256),
 * byte 1 the layer (0..3, 3 is past the end); the rest is what the other side
 * sends, then it hangs up.  Two reads are made.  Invariants: a read succeeds
 * only on an answer that says status 0, reserved 0, exactly `size` bytes, and
 * then hands over exactly those bytes; a failure is LL_ERR_IO or the status the
 * answer named (never LL_ERR_ARG from the other side); nothing hangs (the
 * other side's end is shut for writing). */
#include "fuzz_common.h"
#include "../internal.h" /* ll__le32 */

#include <sys/socket.h>
#include <unistd.h>

static uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2 || size > 65536) return 0;
    size_t want = (size_t)data[0] + 1;
    uint32_t layer = data[1] % 4;
    const uint8_t *ans = data + 2;
    size_t n = size - 2;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
    int big = 1 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(sv[1], ans + off, n - off, MSG_NOSIGNAL);
        if (w <= 0) break;
        off += (size_t)w;
    }
    shutdown(sv[1], SHUT_WR);
    ll_sockhost *h;
    CHECK(ll_sockhost_create(&sv[0], 1, 3, &h) == LL_OK, "create");
    ll_image_source src;
    int rc = ll_sockhost_source(h, layer, &src);
    if (layer >= 3) {
        CHECK(rc == LL_ERR_ARG, "layer past the end accepted");
        ll_sockhost_free(h);
        close(sv[1]);
        return 0;
    }
    CHECK(rc == LL_OK && src.use_disk == 1, "source");
    uint8_t dst[256];
    size_t pos = 0; /* where the next answer starts in `ans` */
    int known = 1;  /* 0 once a read failed with LL_ERR_IO: the stream may or may not have been dropped */
    for (int k = 0; k < 2; k++) {
        memset(dst, 0xA5, sizeof dst);
        rc = src.read(src.opaque, 4096u * (uint64_t)k, want, dst);
        CHECK(rc == LL_OK || (rc != LL_ERR_ARG && rc < 0 && rc >= LL_ERR_UNSUPPORTED), "read rc %d", rc);  /* (the last status) */
        if (!known) continue;
        int complete = off == n && pos + 16 <= n;
        const uint8_t *a = ans + pos;
        if (rc == LL_OK) {
            CHECK(complete, "success without a whole header");
            CHECK((int32_t)ll__le32(a) == 0 && ll__le32(a + 4) == 0 && le64(a + 8) == want, "success on a bad header");
            CHECK(pos + 16 + want <= n && memcmp(dst, a + 16, want) == 0, "success with other bytes");
            pos += 16 + want;
        } else if (rc != LL_ERR_IO) {
            CHECK(complete && (int32_t)ll__le32(a) == rc, "a status nobody sent: %d", rc);
            pos += 16 + (size_t)le64(a + 8);
        } else {
            known = 0;
        }
    }
    ll_sockhost_free(h);
    close(sv[1]);
    return 0;
}
