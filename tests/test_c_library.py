"""The plain C library: build liblazylayer.so, install it with its pkg-config file,
and compile, link and run the example program from docs/ against it; then the ABI
contract (option struct sizes, callback statuses, the version in one place) and
ll_check_zstd, the run-time check of the libzstd under the library."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pyzstd

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not shutil.which("make") or not shutil.which("cc"):
        pytest.skip("make and a C compiler are needed to build the shared library")
    prefix = tmp_path_factory.mktemp("prefix")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(["make", "-s", "-C", str(ROOT / "csrc"), f"BUILD={build}", f"PREFIX={prefix}", "install"],
                   check=True)
    return prefix


def test_example_reads_a_range(installed, tmp_path, corpus):
    data = corpus[:2_000_000]
    blob = tmp_path / "data.zst"
    with pyzstd.SeekableZstdFile(blob, "w", max_frame_content_size=65536) as f:
        f.write(data)
    env = dict(os.environ, PKG_CONFIG_PATH=str(installed / "lib" / "pkgconfig"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "lazylayer"], env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    exe = tmp_path / "read_range"
    subprocess.run(["cc", "-Wall", "-Werror", str(ROOT / "docs/examples/read_range.c"), "-o", str(exe),
                    *flags, f"-Wl,-rpath,{installed / 'lib'}"], check=True)
    for off, n in [(0, 10), (123_457, 300_000), (len(data) - 5, 100), (len(data) + 1, 10)]:
        res = subprocess.run([str(exe), str(blob), str(off), str(n)], capture_output=True, check=True)
        assert res.stdout == data[off:off + n]
    bad = tmp_path / "bad.zst"
    bad.write_bytes(b"not a seekable file at all")
    res = subprocess.run([str(exe), str(bad), "0", "10"], capture_output=True)
    assert res.returncode == 1 and b"seek table" in res.stderr


def test_only_prefixed_symbols_are_exported(installed):
    lib = installed / "lib" / "liblazylayer.so"
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert names and all(n.startswith("ll_") for n in names), names


# ---------------------------------------------------------------- the ABI contract (issue 14)

API_TEST = r"""
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lazylayer.h>

static int failures;
#define EXPECT(cond) do { if (!(cond)) { printf("FAIL line %d: %s\n", __LINE__, #cond); failures++; } } while (0)

typedef struct { unsigned char *p; size_t len, cap; int fail; } sink;

static int sink_write(void *opaque, const void *src, size_t n) {
    sink *s = opaque;
    if (s->fail) return s->fail;
    if (s->len + n > s->cap) {
        s->cap = (s->len + n) * 2;
        s->p = realloc(s->p, s->cap);
        if (!s->p) abort();
    }
    memcpy(s->p + s->len, src, n);
    s->len += n;
    return 0;
}

typedef struct { ll_mem_source m; int fail; } source;

static int source_read(void *opaque, uint64_t off, size_t size, void *dst) {
    source *s = opaque;
    if (s->fail) return s->fail;
    return ll_mem_read(&s->m, off, size, dst);
}

int main(void) {
    /* the version macros and the library agree */
    EXPECT(ll_version() == LL_VERSION_NUMBER);
    printf("version %d.%d.%d\n", LL_VERSION_MAJOR, LL_VERSION_MINOR, LL_VERSION_PATCH);

    /* options: struct_size */
    const size_t r_v1 = offsetof(ll_reader_options, whole_frames) + sizeof(int);
    ll_reader_options ro;
    memset(&ro, 0xAB, sizeof ro);
    EXPECT(ll_reader_options_init(&ro, sizeof ro) == LL_OK);
    EXPECT(ro.struct_size == sizeof ro && ro.verify_checksums == 1 && ro.cache == NULL && ro.whole_frames == 0);
    EXPECT(ll_reader_options_init(&ro, 0) == LL_ERR_ARG);
    EXPECT(ll_reader_options_init(&ro, r_v1 - 1) == LL_ERR_ARG);
    EXPECT(ll_reader_options_init(NULL, sizeof ro) == LL_ERR_ARG);
    ll_writer_options wo;
    EXPECT(ll_writer_options_init(&wo, sizeof wo) == LL_OK);
    EXPECT(wo.struct_size == sizeof wo && wo.level == 3 && wo.checksum == 1);
    EXPECT(ll_writer_options_init(&wo, sizeof(size_t)) == LL_ERR_ARG);
    /* a caller built against a newer header: its extra field is zeroed, then ignored */
    struct { ll_writer_options o; unsigned long long future; } big;
    memset(&big, 0xFF, sizeof big);
    EXPECT(ll_writer_options_init(&big.o, sizeof big) == LL_OK);
    EXPECT(big.o.struct_size == sizeof big && big.future == 0 && big.o.frame_size == LL_DEFAULT_FRAME_SIZE);
    big.o.frame_size = 1000;
    big.future = 42;

    /* write a small blob (frames of 1000 bytes) through the newer-sized options */
    static unsigned char data[10000];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i * 7 + i / 100);
    sink out = {0};
    ll_writer *w;
    EXPECT(ll_writer_create(&big.o, sink_write, &out, &w) == LL_OK);
    EXPECT(ll_writer_write(w, data, sizeof data) == LL_OK);
    EXPECT(ll_writer_finish(w) == LL_OK);
    EXPECT(ll_writer_frames(w) == 10);
    ll_writer_free(w);
    /* options never initialised (struct_size 0) are refused; NULL means defaults */
    ll_writer_options zero;
    memset(&zero, 0, sizeof zero);
    EXPECT(ll_writer_create(&zero, sink_write, &out, &w) == LL_ERR_ARG);
    EXPECT(ll_writer_create(NULL, sink_write, &out, &w) == LL_OK);
    ll_writer_free(w);

    /* a write callback's status passes through; anything else is LL_ERR_IO */
    int wfail[] = {LL_ERR_NOMEM, -1, 1, -1000};
    int wwant[] = {LL_ERR_NOMEM, LL_ERR_IO, LL_ERR_IO, LL_ERR_IO};
    for (int k = 0; k < 4; k++) {
        sink bad = {0};
        bad.fail = wfail[k];
        EXPECT(ll_writer_create(NULL, sink_write, &bad, &w) == LL_OK);
        EXPECT(ll_writer_write(w, data, 100) == LL_OK);
        int rc = ll_writer_finish(w);
        if (rc != wwant[k]) printf("write callback returning %d: got %d\n", wfail[k], rc);
        EXPECT(rc == wwant[k]);
        EXPECT(ll_writer_write(w, data, 1) == LL_ERR_STATE);
        ll_writer_free(w);
        free(bad.p);
    }

    /* a read callback's status passes through: from ll_seektable_load ... */
    source src = {{out.p, out.len}, 0};
    ll_seektable *st;
    src.fail = LL_ERR_FRAME;
    EXPECT(ll_seektable_load(source_read, &src, out.len, &st) == LL_ERR_FRAME);
    src.fail = 1;
    EXPECT(ll_seektable_load(source_read, &src, out.len, &st) == LL_ERR_IO);
    src.fail = 0;
    EXPECT(ll_seektable_load(source_read, &src, out.len, &st) == LL_OK);

    /* ... and from ll_reader_read, for one frame and for a run of whole frames */
    ll_reader *r;
    memset(&ro, 0, sizeof ro);
    EXPECT(ll_reader_create(st, source_read, &src, &ro, &r) == LL_ERR_ARG); /* struct_size 0 */
    EXPECT(ll_reader_options_init(&ro, sizeof ro) == LL_OK);
    EXPECT(ll_reader_create(st, source_read, &src, &ro, &r) == LL_OK);
    int rfail[] = {LL_ERR_CHECKSUM, LL_ERR_NOMEM, LL_ERR_ZSTD, 1, -1, 5, LL_ERR_UNSUPPORTED - 1, -100000};
    int rwant[] = {LL_ERR_CHECKSUM, LL_ERR_NOMEM, LL_ERR_ZSTD, LL_ERR_IO, LL_ERR_IO, LL_ERR_IO, LL_ERR_IO, LL_ERR_IO};
    unsigned char buf[sizeof data];
    for (int k = 0; k < 8; k++) {
        src.fail = rfail[k];
        int64_t one = ll_reader_read(r, 10, buf, 100), many = ll_reader_read(r, 0, buf, sizeof buf);
        if (one != rwant[k] || many != rwant[k])
            printf("read callback returning %d: got %lld and %lld\n", rfail[k], (long long)one, (long long)many);
        EXPECT(one == rwant[k] && many == rwant[k]);
    }
    src.fail = 0;
    EXPECT(ll_reader_read(r, 0, buf, sizeof buf) == (int64_t)sizeof data && memcmp(buf, data, sizeof data) == 0);
    ll_reader_free(r);

    /* ll_check_zstd: passes here; the message says what it found */
    char msg[256];
    int rc = ll_check_zstd(msg, sizeof msg);
    printf("check_zstd %d %s\n", rc, msg);
    EXPECT(ll_check_zstd(NULL, 0) == rc);
    char tiny[8];
    EXPECT(ll_check_zstd(tiny, sizeof tiny) == rc && strlen(tiny) == sizeof tiny - 1);
    EXPECT(strstr(ll_strerror(LL_ERR_ZSTD), "libzstd") != NULL);
    EXPECT(strcmp(ll_strerror(LL_ERR_UNSUPPORTED - 1), "unknown error") == 0);
    for (int code = LL_ERR_ARG; code >= LL_ERR_UNSUPPORTED; code--) EXPECT(strcmp(ll_strerror(code), "unknown error") != 0);

    free(out.p);
    printf("%d failures\n", failures);
    return failures != 0;
}
"""


def _compile(installed, tmp_path, name: str, source: str, *extra: str) -> Path:
    env = dict(os.environ, PKG_CONFIG_PATH=str(installed / "lib" / "pkgconfig"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "lazylayer"], env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    exe = tmp_path / name
    res = subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", str(src), "-o", str(exe), *flags,
                          f"-Wl,-rpath,{installed / 'lib'}", *extra], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return exe


def test_pkg_config_version_and_soname_come_from_the_header(installed):
    header = (ROOT / "csrc" / "lazylayer.h").read_text()
    parts = [re.search(rf"^#define LL_VERSION_{p}\s+(\d+)", header, re.M).group(1) for p in ("MAJOR", "MINOR", "PATCH")]
    version = ".".join(parts)
    env = dict(os.environ, PKG_CONFIG_PATH=str(installed / "lib" / "pkgconfig"))
    assert subprocess.run(["pkg-config", "--modversion", "lazylayer"], env=env, check=True, capture_output=True,
                          text=True).stdout.strip() == version
    lib = installed / "lib"
    assert (lib / f"liblazylayer.so.{version}").is_file()
    soname = f"liblazylayer.so.{parts[0]}" if parts[0] != "0" else f"liblazylayer.so.0.{parts[1]}"
    assert os.readlink(lib / "liblazylayer.so") == soname
    dyn = subprocess.run(["readelf", "-d", str(lib / "liblazylayer.so")], capture_output=True, text=True).stdout
    assert f"[{soname}]" in dyn
    import lazylayer
    assert lazylayer.__version__ == version


def test_options_sizes_callback_statuses_and_zstd_check(installed, tmp_path):
    """Option structs carry their size (init, create, NULL, unset, a newer caller's bigger
    struct); a callback's ll_status reaches the caller (LL_ERR_CHECKSUM stays LL_ERR_CHECKSUM,
    1 or -1 become LL_ERR_IO) for reads, seek-table loads and writes; ll_check_zstd passes
    here and ll_strerror knows every status."""
    exe = _compile(installed, tmp_path, "api_test", API_TEST)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "0 failures" in res.stdout, res.stdout + res.stderr
    assert "check_zstd 0 libzstd " in res.stdout, res.stdout


# ---------------------------------------------------------------- ll_check_zstd against another libzstd
#
# A test cannot easily install a different libzstd under the library.  It can
# make the one that is there lie: liblazylayer.so (and the Python extension)
# call libzstd through the PLT, so an LD_PRELOADed shim overrides
# ZSTD_versionNumber (a different version) or wraps ZSTD_decompressContinue (a
# same-version libzstd whose block API misbehaves).  A real ABI change (e.g. a
# changed struct or signature) cannot be simulated this way.

VERSION_SHIM = r"""
#include <zstd.h>
unsigned ZSTD_versionNumber(void) { return FAKE_VERSION; }
"""

BROKEN_BLOCK_API_SHIM = r"""
#define _GNU_SOURCE
#define ZSTD_STATIC_LINKING_ONLY
#include <dlfcn.h>
#include <zstd.h>
size_t ZSTD_decompressContinue(ZSTD_DCtx *dctx, void *dst, size_t cap, const void *src, size_t size) {
    size_t (*real)(ZSTD_DCtx *, void *, size_t, const void *, size_t) =
        (size_t (*)(ZSTD_DCtx *, void *, size_t, const void *, size_t))dlsym(RTLD_NEXT, "ZSTD_decompressContinue");
    size_t n = real(dctx, dst, cap, src, size);
    if (!ZSTD_isError(n) && n > 0) ((unsigned char *)dst)[n - 1] ^= 1;
    return n;
}
"""

CHECK_ZSTD = r"""
#include <stdio.h>
#include <zstd.h>
#include <lazylayer.h>
int main(void) {
    char msg[512];
    int rc = ll_check_zstd(msg, sizeof msg);
    printf("%d|%u|%s\n", rc, (unsigned)ZSTD_VERSION_NUMBER, msg);
    return 0;
}
"""


def _shim(tmp_path, name: str, source: str, *defines: str) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    lib = tmp_path / f"{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", *defines, str(src), "-o", str(lib), "-ldl"], check=True)
    return lib


def _dotted(v: int) -> str:
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


@pytest.mark.parametrize("case", ["same", "newer-patch", "older-minor", "newer-minor", "broken-block-api"])
def test_check_zstd_refuses_another_libzstd(installed, tmp_path, case):
    exe = _compile(installed, tmp_path, "check_zstd", CHECK_ZSTD)
    env = dict(os.environ)
    fake = {"newer-patch": "(ZSTD_VERSION_NUMBER+1)", "older-minor": "(ZSTD_VERSION_NUMBER-100)",
            "newer-minor": "(ZSTD_VERSION_NUMBER+100)"}
    if case in fake:
        env["LD_PRELOAD"] = str(_shim(tmp_path, "shim", VERSION_SHIM, f"-DFAKE_VERSION={fake[case]}"))
    elif case == "broken-block-api":
        env["LD_PRELOAD"] = str(_shim(tmp_path, "shim", BROKEN_BLOCK_API_SHIM))
    out = subprocess.run([str(exe)], capture_output=True, text=True, env=env, check=True).stdout.strip()
    rc, built, msg = out.split("|", 2)
    built = int(built)
    running = {"newer-patch": built + 1, "older-minor": built - 100, "newer-minor": built + 100}.get(case, built)
    if case in ("same", "newer-patch"):
        assert (int(rc), msg) == (0, f"libzstd {_dotted(running)} (built with {_dotted(built)})")
    elif case == "broken-block-api":
        assert int(rc) == -12 and "self-test" in msg and "wrong bytes" in msg, msg
    else:
        assert int(rc) == -12, out
        assert msg.startswith(f"built with libzstd {_dotted(built)}, running {_dotted(running)}"), msg


def test_python_import_refuses_another_libzstd(tmp_path):
    """The extension runs ll_check_zstd on import and turns a failure into ImportError."""
    if not shutil.which("cc"):
        pytest.skip("a C compiler is needed for the shim")
    shim = _shim(tmp_path, "shim", VERSION_SHIM, "-DFAKE_VERSION=(ZSTD_VERSION_NUMBER+100)")
    env = dict(os.environ, LD_PRELOAD=str(shim))
    res = subprocess.run([sys.executable, "-c", "import lazylayer"], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    assert res.returncode != 0
    assert "ImportError: lazylayer.core._native cannot use the libzstd loaded at run time: built with libzstd" \
        in res.stderr, res.stderr
    ok = subprocess.run([sys.executable, "-c", "import lazylayer"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
