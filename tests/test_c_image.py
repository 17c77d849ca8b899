"""ll_image (csrc/image.c): reading files of an indexed image in C, frames from the
disk cache first, only missing runs through the host callback.

Two halves:
- over a *fake* index (a few ll_index_* functions answering from a table
  written by Python), image.c is tested on its own: run coalescing, zero host
  calls once the disk cache has every frame, corrupted host bytes refused with
  LL_ERR_DIGEST, corrupt disk entries refetched;
- over the real index (csrc/index.c), end to end: docs/examples/cat_image_file.c
  compiled against liblazylayer.so prints files of a converted OCI layout, and
  the same reads through the cffi binding with a disk cache make no host calls.
  These skip while ll_index_build is a stub.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lazylayer.core._lib import ffi, lib
from lazylayer.image.cache import DiskCache

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def need_cc():
    if not shutil.which("cc") or not shutil.which("make"):
        pytest.skip("make and a C compiler are needed")


def make_tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for m in members:
            name, kind = m[0], m[1]
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, 1_700_000_000
            if kind == "reg":
                info.size = len(m[2])
                t.addfile(info, io.BytesIO(m[2]))
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, m[2]
                t.addfile(info)
    return buf.getvalue()


def lazy_layer(tar: bytes, frame_size: int = 1 << 16):
    from lazylayer.format import LayerWriter, Toc
    out = io.BytesIO()
    info = LayerWriter(frame_size=frame_size, threads=1).write(io.BytesIO(tar).read, out)
    blob = out.getvalue()
    toc = Toc.from_frame(blob[info.toc_offset:info.toc_offset + info.toc_length])
    return blob, info, toc


def files_of(rng: random.Random):
    big = rng.randbytes(700_000) + bytes(300_000)  # ~15 frames of 64 KiB
    return [("small.txt", "reg", b"hello world\n"), ("dir", "dir"), ("dir/big.bin", "reg", big),
            ("dir/empty", "reg", b""), ("dir/mid", "reg", rng.randbytes(100_000)),
            ("link", "symlink", "dir/big.bin")]


# ---------------------------------------------------------------- over a fake index

FAKE_INDEX = r"""
/* Just enough of ll_index for image.c: a table written by the test. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

typedef struct { char digest[80]; uint64_t blob_size, tar_size; uint32_t n; ll_layer_frame *f; } flayer;
typedef struct { uint64_t size, offset; int32_t layer; } ffile;
struct ll_index { uint32_t nl; flayer *l; uint32_t nf; ffile *files; };

static int hexval(char c) { return c <= '9' ? c - '0' : c - 'a' + 10; }

ll_index *fake_load(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    ll_index *x = calloc(1, sizeof *x);
    x->l = calloc(64, sizeof *x->l);
    x->files = calloc(4096, sizeof *x->files);
    char word[16];
    while (fscanf(f, "%15s", word) == 1) {
        if (!strcmp(word, "layer")) {
            flayer *l = &x->l[x->nl++];
            if (fscanf(f, "%79s %lu %lu %u", l->digest, &l->blob_size, &l->tar_size, &l->n) != 4) abort();
            l->f = calloc(l->n ? l->n : 1, sizeof *l->f);
            for (uint32_t i = 0; i < l->n; i++) {
                char hex[65];
                ll_layer_frame *fr = &l->f[i];
                if (fscanf(f, " f %lu %u %lu %u %64s", &fr->c_offset, &fr->c_size, &fr->d_offset,
                           &fr->d_size, hex) != 5) abort();
                for (int k = 0; k < 32; k++) fr->sha256[k] = (uint8_t)(hexval(hex[2*k]) << 4 | hexval(hex[2*k+1]));
            }
        } else if (!strcmp(word, "file")) {
            ffile *fl = &x->files[x->nf++];
            if (fscanf(f, "%lu %lu %d", &fl->size, &fl->offset, &fl->layer) != 3) abort();
        }
    }
    fclose(f);
    return x;
}

void ll_index_free(ll_index *x) {
    if (!x) return;
    for (uint32_t i = 0; i < x->nl; i++) free(x->l[i].f);
    free(x->l); free(x->files); free(x);
}
/* diskcache.c hands a mapped index its release hook; the fake index is never mapped */
void ll__index_set_release(ll_index *x, void (*release)(void *), void *arg) { (void)x; (void)release; (void)arg; }
uint32_t ll_index_layers(const ll_index *x) { return x->nl; }
int ll_index_layer_info(const ll_index *x, uint32_t layer, const char **digest, uint64_t *blob_size,
                        uint64_t *tar_size, uint32_t *frames) {
    if (layer >= x->nl) return LL_ERR_ARG;
    if (digest) *digest = x->l[layer].digest;
    if (blob_size) *blob_size = x->l[layer].blob_size;
    if (tar_size) *tar_size = x->l[layer].tar_size;
    if (frames) *frames = x->l[layer].n;
    return LL_OK;
}
int ll_index_layer_codec(const ll_index *x, uint32_t layer) {
    return layer < x->nl ? LL_CODEC_ZSTD : LL_ERR_ARG; /* the fake's frames are zstd frames */
}
int ll_index_frame(const ll_index *x, uint32_t layer, uint32_t i, ll_layer_frame *out) {
    if (layer >= x->nl || i >= x->l[layer].n) return LL_ERR_ARG;
    *out = x->l[layer].f[i];
    return LL_OK;
}
/* inode 1 is the root directory, inode 2 + k file k */
int ll_index_stat(const ll_index *x, uint64_t ino, ll_stat *out) {
    memset(out, 0, sizeof *out);
    out->ino = ino;
    if (ino == 1) { out->kind = LL_KIND_DIR; out->layer = -1; return LL_OK; }
    if (ino < 2 || ino - 2 >= x->nf) return LL_ERR_ARG;
    out->kind = LL_KIND_REG;
    out->size = x->files[ino - 2].size;
    out->offset = x->files[ino - 2].offset;
    out->layer = x->files[ino - 2].layer;
    return LL_OK;
}
/* unused by image.c, here for diskcache.c to link */
int ll_index_open_buffer(const void *d, size_t s, int c, ll_index **o, char *e, size_t es) {
    (void)d; (void)s; (void)c; (void)o; (void)e; (void)es; return LL_ERR_STATE;
}
void ll_index_data(const ll_index *x, const void **d, size_t *s) { (void)x; *d = NULL; *s = 0; }
"""

HARNESS = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "lazylayer.h"

ll_index *fake_load(const char *path);

typedef struct { int fd; int corrupt; } src;

static int host_read(void *opaque, uint64_t off, size_t size, void *dst) {
    src *s = opaque;
    fprintf(stderr, "host %lu %zu\n", (unsigned long)off, size);
    if (ll_fd_read(&s->fd, off, size, dst) != 0) return -1;
    if (s->corrupt) ((unsigned char *)dst)[size / 2] ^= 1;
    return 0;
}

/* harness TABLE BLOB CACHE|- CORRUPT USE_DISK VERIFY CHUNK: every file, whole, to stdout */
int main(int argc, char **argv) {
    if (argc != 8) return 2;
    ll_index *idx = fake_load(argv[1]);
    src s = {open(argv[2], O_RDONLY), atoi(argv[4])};
    ll_diskcache *dc = NULL;
    char err[256];
    if (strcmp(argv[3], "-") && ll_diskcache_open(argv[3], &dc, err, sizeof err) != LL_OK) return 4;
    ll_cache *cache;
    ll_pool *pool;
    ll_cache_create(8u << 20, &cache);
    ll_pool_create(2, &pool);
    uint32_t n = ll_index_layers(idx);
    ll_image_source *sources = calloc(n, sizeof *sources);
    for (uint32_t i = 0; i < n; i++) sources[i] = (ll_image_source){host_read, &s, atoi(argv[5]), 0};
    ll_image_options opt;
    ll_image_options_init(&opt, sizeof opt);
    opt.cache = cache; opt.pool = pool; opt.disk = dc; opt.verify_fetched = atoi(argv[6]);
    ll_image *img;
    int rc = ll_image_create(idx, sources, &opt, &img);
    if (rc != LL_OK) { printf("create %d\n", rc); return 3; }
    size_t chunk = (size_t)atol(argv[7]);
    char *buf = malloc(chunk);
    int status = 0;
    for (uint64_t ino = 2;; ino++) {
        ll_stat st;
        if (ll_index_stat(idx, ino, &st) != LL_OK) break;
        for (uint64_t off = 0;;) {
            int64_t got = ll_image_read(img, ino, off, buf, chunk);
            if (got < 0) { fprintf(stderr, "ERR %d\n", (int)got); status = 5; goto done; }
            if (got == 0) break;
            fwrite(buf, 1, (size_t)got, stdout);
            off += (uint64_t)got;
        }
    }
    if (ll_image_read(img, 1, 0, buf, 1) != LL_ERR_NOTREG) status = 6;
    if (ll_image_read(img, 999, 0, buf, 1) != LL_ERR_ARG) status = 7;
done:;
    ll_image_stats t;
    ll_image_get_stats(img, &t);
    fprintf(stderr, "stats %lu %lu %lu %lu %lu %lu\n", (unsigned long)t.reads, (unsigned long)t.frames_disk,
            (unsigned long)t.frames_fetched, (unsigned long)t.host_calls, (unsigned long)t.bytes_fetched,
            (unsigned long)t.digest_errors);
    ll_image_free(img);
    ll_index_free(idx);
    ll_diskcache_free(dc);
    ll_pool_free(pool);
    ll_cache_free(cache);
    free(buf); free(sources);
    return status;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    need_cc()
    d = tmp_path_factory.mktemp("harness")
    (d / "fake_index.c").write_text(FAKE_INDEX)
    (d / "harness.c").write_text(HARNESS)
    srcs = [CSRC / s for s in ("common.c", "seektable.c", "cache.c", "pool.c", "reader.c", "writer.c",
                                "diskcache.c", "image.c", "gzindex.c")]
    exe = d / "harness"
    cflags = os.environ.get("LL_TEST_CFLAGS", "-O1 -g").split()
    subprocess.run(["cc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", *cflags, f"-I{CSRC}",
                    *map(str, srcs), str(d / "fake_index.c"), str(d / "harness.c"), "-o", str(exe),
                    "-lzstd", "-lcrypto", "-lz", "-lisal", "-lpthread"], check=True)
    return exe


@pytest.fixture(scope="module")
def fake_image(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake")
    rng = random.Random(7)
    members = files_of(rng)
    tar = make_tar(members)
    blob, info, toc = lazy_layer(tar)
    (d / "blob").write_bytes(blob)
    lines = [f"layer {info.digest} {info.size} {info.tar_size} {len(toc.frames)}"]
    lines += [f"f {f.compressed_offset} {f.compressed_size} {f.offset} {f.size} {f.sha256}" for f in toc.frames]
    expect = b""
    for e in toc.entries:
        if e["type"] == "reg":
            lines.append(f"file {e.get('size', 0)} {e.get('offset', 0)} 0")
            expect += tar[e.get("offset", 0):e.get("offset", 0) + e.get("size", 0)]
    (d / "table").write_text("\n".join(lines) + "\n")
    return d, expect, toc


def run_harness(exe, d, cache="-", corrupt=0, use_disk=1, verify=1, chunk=1 << 20):
    p = subprocess.run([str(exe), str(d / "table"), str(d / "blob"), str(cache), str(corrupt), str(use_disk),
                        str(verify), str(chunk)], capture_output=True)
    err = p.stderr.decode()
    stats = [int(x) for x in err.split("stats ")[1].split()] if "stats " in err else None
    hosts = [tuple(map(int, line.split()[1:])) for line in err.splitlines() if line.startswith("host ")]
    return p.returncode, p.stdout, stats, hosts, err


def test_fake_reads_without_disk_cache(harness, fake_image):
    d, expect, toc = fake_image
    for chunk in (1 << 20, 4096, 65536 + 17):
        rc, out, stats, hosts, err = run_harness(harness, d, chunk=chunk)
        assert rc == 0, err
        assert out == expect
        assert stats[5] == 0 and stats[1] == 0  # no digest errors, nothing from disk


def test_fake_disk_cache_serves_everything_after_one_pass(harness, fake_image, tmp_path):
    d, expect, toc = fake_image
    cache = tmp_path / "cache"
    rc, out, stats, hosts, err = run_harness(harness, d, cache=cache)
    assert rc == 0 and out == expect, err
    reads, disk, fetched, calls, nbytes, bad = stats
    assert disk == 0 and fetched == len(toc.frames) and calls == len(hosts) and bad == 0
    assert nbytes == sum(f.compressed_size for f in toc.frames)
    # every frame is now in the disk cache, where Python finds it too
    py = DiskCache(cache)
    for f in toc.frames:
        assert py.get("sha256:" + f.sha256) is not None
    rc, out, stats, hosts, err = run_harness(harness, d, cache=cache)
    assert rc == 0 and out == expect, err
    assert stats[3] == 0 and hosts == [] and stats[1] > 0 and stats[2] == 0  # zero host calls


def test_fake_only_missing_runs_are_fetched(harness, fake_image, tmp_path):
    d, expect, toc = fake_image
    cache = tmp_path / "cache"
    py = DiskCache(cache)
    blob = (d / "blob").read_bytes()
    have = set(range(0, len(toc.frames), 3))  # every third frame on disk
    for i in have:
        f = toc.frames[i]
        py.put("sha256:" + f.sha256, blob[f.compressed_offset:f.compressed_offset + f.compressed_size])
    # a corrupt entry: read as a miss, counted, deleted, refetched
    bad = toc.frames[3]
    path = cache / "v1" / "frames" / bad.sha256[:2] / bad.sha256
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    rc, out, stats, hosts, err = run_harness(harness, d, cache=cache)
    assert rc == 0 and out == expect, err
    reads, disk, fetched, calls, nbytes, bad_count = stats
    assert bad_count == 1
    # (at most: frames no file touches are not read, and identical frames -- the zeros
    # in big.bin -- share one disk entry, so the first fetched serves the others)
    assert fetched <= len(toc.frames) - (len(have) - 1) and disk >= len(have) - 1
    starts = {f.compressed_offset: i for i, f in enumerate(toc.frames)}
    for off, size in hosts:  # each host call is a run of frames none of which was on disk
        i = starts[off]
        end = off + size
        while toc.frames[i].compressed_offset + toc.frames[i].compressed_size < end:
            assert i not in have or i == 3
            i += 1
        assert toc.frames[i].compressed_offset + toc.frames[i].compressed_size == end
        assert i not in have or i == 3


def test_fake_corrupted_host_bytes_are_refused(harness, fake_image, tmp_path):
    d, expect, toc = fake_image
    rc, out, stats, hosts, err = run_harness(harness, d, corrupt=1, use_disk=0)
    assert rc == 5 and f"ERR {lib.LL_ERR_DIGEST}" in err, err
    assert stats[5] >= 1
    # with a disk cache nothing wrong is stored, and verify_fetched=0 still hashes what it stores
    cache = tmp_path / "cache"
    rc, out, stats, hosts, err = run_harness(harness, d, cache=cache, corrupt=1, verify=0)
    assert rc == 5 and f"ERR {lib.LL_ERR_DIGEST}" in err, err
    assert DiskCache(cache).usage().entries == 0
    # verify_fetched=0 and no disk cache: the host's word is taken (then zstd notices, or not)
    rc, out, stats, hosts, err = run_harness(harness, d, corrupt=0, use_disk=0, verify=0)
    assert rc == 0 and out == expect and stats[5] == 0


# ---------------------------------------------------------------- over the real index


def index_ready() -> bool:
    out = ffi.new("ll_index **")
    rc = lib.ll_index_build(ffi.NULL, 0, out, ffi.NULL, 0)
    if rc == lib.LL_OK:
        lib.ll_index_free(out[0])
    return rc != lib.LL_ERR_STATE


needs_index = pytest.mark.skipif(not index_ready(), reason="ll_index_build is not implemented yet (csrc/index.c)")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """A two-layer image converted into an oci: layout, and what its files hold."""
    from images import build_layout
    from lazylayer.convert import Converter
    work = tmp_path_factory.mktemp("image")
    rng = random.Random(11)
    base = files_of(rng)
    top = [("dir/mid", "reg", b"replaced by the top layer\n"), ("top.txt", "reg", b"top\n" * 1000)]
    build_layout(str(work / "plain"), [make_tar(base), make_tar(top)], tag="v1")
    # 64 KiB frames: dir/big.bin spans ~16 of them (the default, 2 MiB, would make it one)
    Converter(frame_size=1 << 16, progress=False).convert(f"oci:{work}/plain:v1", f"oci:{work}/lazy:v1")
    want = {"small.txt": base[0][2], "dir/big.bin": base[2][2], "dir/empty": b"",
            "dir/mid": top[0][2], "top.txt": top[1][2], "link": base[2][2]}
    return work / "lazy", want


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    need_cc()
    build = tmp_path_factory.mktemp("build")
    subprocess.run(["make", "-s", "-C", str(CSRC), f"BUILD={build}"], check=True)
    exe = build / "cat_image_file"
    subprocess.run(["cc", "-Wall", "-Wextra", "-Werror", str(ROOT / "docs/examples/cat_image_file.c"),
                    f"-I{CSRC}", f"-L{build}", "-llazylayer", f"-Wl,-rpath,{build}", "-o", str(exe)],
                   check=True)
    return exe


def test_example_usage(example):
    p = subprocess.run([str(example)], capture_output=True)
    assert p.returncode == 2 and b"usage" in p.stderr
    p = subprocess.run([str(example), "/nonexistent", "x"], capture_output=True)
    assert p.returncode == 1 and b"/nonexistent/index.json" in p.stderr


@needs_index
def test_example_prints_files(example, layout, tmp_path):
    path, want = layout
    for name, data in want.items():
        p = subprocess.run([str(example), str(path), name], capture_output=True)
        assert p.returncode == 0, p.stderr
        assert p.stdout == data, name
    p = subprocess.run([str(example), str(path), "/no/such"], capture_output=True)
    assert p.returncode == 1 and b"no such file" in p.stderr
    p = subprocess.run([str(example), str(path), "dir"], capture_output=True)
    assert p.returncode == 1 and b"not a regular file" in p.stderr
    # with a disk cache: the second run maps the stored index and reads frames from disk
    cache = tmp_path / "cache"
    for run in range(2):
        p = subprocess.run([str(example), "--cache", str(cache), "--stats", str(path), "dir/big.bin"],
                           capture_output=True)
        assert p.returncode == 0 and p.stdout == want["dir/big.bin"], p.stderr
        stats = dict(zip(*[iter(p.stderr.split(b"\n")[-2].decode().split())] * 2))
        if run == 0:  # the layout's blob is a local file: its frames count as local, not fetched
            assert stats["frames_fetched"] == "0" and int(stats["frames_local"]) > 0
        if run == 1:
            assert stats["host_calls"] == "0" and int(stats["frames_disk"]) > 0
    assert DiskCache(cache).usage().files == 1


@needs_index
def test_example_refuses_a_layout_that_is_not_lazy(example, tmp_path):
    from images import build_layout
    build_layout(str(tmp_path / "plain"), [make_tar([("a", "reg", b"a")])], tag="v1")
    p = subprocess.run([str(example), str(tmp_path / "plain"), "a"], capture_output=True)
    assert p.returncode == 1 and b"not a lazy layer" in p.stderr and b"lazylayer convert" in p.stderr


def _index_of_layout(path: Path):
    """ll_index_build through cffi, each layer read with ll_fd_read."""
    import json
    idx_json = json.loads((path / "index.json").read_text())
    mdigest = idx_json["manifests"][0]["digest"]
    manifest = json.loads((path / "blobs" / "sha256" / mdigest[7:]).read_bytes())
    layers = manifest["layers"]
    arr = ffi.new("ll_index_layer[]", len(layers))
    keep, fds = [], []
    for i, desc in enumerate(layers):
        ann = desc["annotations"]
        off, length = map(int, ann["io.lazylayer.toc.position"].split(":"))
        fd = os.open(path / "blobs" / "sha256" / desc["digest"][7:], os.O_RDONLY)
        pfd = ffi.new("int *", fd)
        d, td = ffi.new("char[]", desc["digest"].encode()), ffi.new("char[]", ann["io.lazylayer.toc.digest"].encode())
        keep += [pfd, d, td]
        fds.append(fd)
        arr[i].digest, arr[i].blob_size, arr[i].toc_digest = d, desc["size"], td
        arr[i].toc_offset, arr[i].toc_length, arr[i].toc_frame = off, length, ffi.NULL
        arr[i].read, arr[i].opaque = lib.ll_fd_read, pfd
    out = ffi.new("ll_index **")
    err = ffi.new("char[]", lib.LL_ERR_MSG_SIZE)
    rc = lib.ll_index_build(arr, len(layers), out, err, len(err))
    assert rc == lib.LL_OK, ffi.string(err)
    return out[0], keep, fds


def _pread_host(fds, calls: dict | None = None):
    """A host read callback over the layout's blobs (pread), counted in ``calls["n"]``."""
    @ffi.callback("int(void *, uint64_t, size_t, void *)")
    def host(opaque, offset, size, dst):
        if calls is not None:
            calls["n"] += 1
        ffi.memmove(dst, os.pread(fds[int(ffi.cast("intptr_t", opaque))], size, offset), size)
        return 0

    return host


def _disk_image_parts(idx, host, cache_dir, cache_bytes: int = 0):
    """For ll_image_create: a disk cache at ``cache_dir``, a memory cache of ``cache_bytes``
    (0: none), every layer read through ``host`` and the disk cache, and options naming both."""
    out = ffi.new("ll_diskcache **")
    assert lib.ll_diskcache_open(str(cache_dir).encode(), out, ffi.NULL, 0) == lib.LL_OK
    cache = ffi.NULL
    if cache_bytes:
        cout = ffi.new("ll_cache **")
        assert lib.ll_cache_create(cache_bytes, cout) == lib.LL_OK
        cache = cout[0]
    n = lib.ll_index_layers(idx)
    sources = ffi.new("ll_image_source[]", n)
    for i in range(n):
        sources[i].read, sources[i].opaque, sources[i].use_disk = host, ffi.cast("void *", i), 1
    opt = ffi.new("ll_image_options *")
    assert lib.ll_image_options_init(opt, ffi.sizeof("ll_image_options")) == lib.LL_OK
    opt.disk, opt.cache = out[0], cache
    return out[0], cache, sources, opt


def _free_all(images, cache, idx, disk, fds) -> None:
    """Free what _disk_image_parts and _index_of_layout made, images first."""
    for h in images:
        lib.ll_image_free(h)
    lib.ll_cache_free(cache)
    lib.ll_index_free(idx)
    lib.ll_diskcache_free(disk)
    for fd in fds:
        os.close(fd)


def _read_file(img, idx, name: str, chunk: int = 1 << 20) -> bytes:
    ino = ffi.new("uint64_t *")
    assert lib.ll_index_resolve(idx, name.encode(), len(name.encode()), 1, ino) == lib.LL_OK
    buf = ffi.new("char[]", chunk)
    out = b""
    while True:
        got = lib.ll_image_read(img, ino[0], len(out), buf, chunk)
        assert got >= 0, got
        if got == 0:
            return out
        out += ffi.buffer(buf, got)[:]


@needs_index
def test_cffi_reads_zero_host_calls_from_a_warm_disk_cache(layout, tmp_path):
    path, want = layout
    idx, keep, fds = _index_of_layout(path)
    counting = {"calls": 0, "corrupt": False}
    handles = []

    @ffi.callback("int(void *, uint64_t, size_t, void *)")
    def host(opaque, offset, size, dst):
        counting["calls"] += 1
        fd = fds[int(ffi.cast("intptr_t", opaque))]
        data = os.pread(fd, size, offset)
        if counting["corrupt"]:
            data = bytes([data[0] ^ 1]) + data[1:]
        ffi.memmove(dst, data, size)
        return 0

    disk, cache, sources, opt = _disk_image_parts(idx, host, tmp_path / "cache")
    assert opt.verify_fetched == 1 and opt.store_fetched == 1

    def image():
        img = ffi.new("ll_image **")
        assert lib.ll_image_create(idx, sources, opt, img) == lib.LL_OK
        handles.append(img[0])
        return img[0]

    stats = ffi.new("ll_image_stats *")
    try:
        cold = image()
        for name, data in want.items():
            assert _read_file(cold, idx, name, chunk=65536 + 3) == data, name
        lib.ll_image_get_stats(cold, stats)
        assert stats.host_calls == counting["calls"] > 0 and stats.digest_errors == 0
        warm = image()
        for name, data in want.items():
            assert _read_file(warm, idx, name) == data, name
        lib.ll_image_get_stats(warm, stats)
        assert stats.host_calls == 0 and stats.frames_disk > 0
        # corrupted bytes from the host: LL_ERR_DIGEST, nothing stored
        DiskCache(tmp_path / "cache").clear()
        counting["corrupt"] = True
        bad = image()
        ino = ffi.new("uint64_t *")
        assert lib.ll_index_resolve(idx, b"dir/big.bin", 11, 1, ino) == lib.LL_OK
        buf = ffi.new("char[]", 4096)
        assert lib.ll_image_read(bad, ino[0], 0, buf, 4096) == lib.LL_ERR_DIGEST
        lib.ll_image_get_stats(bad, stats)
        assert stats.digest_errors >= 1
        assert DiskCache(tmp_path / "cache").usage().entries == 0
    finally:
        _free_all(handles, cache, idx, disk, fds)


@needs_index
@pytest.mark.parametrize("memo", [1, 0])
def test_cffi_disk_hits_partial_frames_and_verified_memo(layout, tmp_path, memo):
    """Frames read from the disk cache for a read covering part of one are decoded
    only up to the read's end (reader.c, layer_read_ex): later reads further into
    the same frame re-decode a longer prefix and get the right bytes.  With the
    verified-file memo, a frame file modified in place after it was verified is
    still caught (its ctime changed): hashed, refused, fetched again."""
    path, want = layout
    idx, keep, fds = _index_of_layout(path)
    calls = {"n": 0}
    host = _pread_host(fds, calls)
    # 4 frames of 64 KiB in the memory cache: evictions
    disk, cache, sources, opt = _disk_image_parts(idx, host, tmp_path / "cache", 256 << 10)
    assert opt.disk_verify_memo == 1  # the default
    opt.disk_verify_memo = memo
    handles = []
    stats = ffi.new("ll_image_stats *")
    ino = ffi.new("uint64_t *")
    buf = ffi.new("char[]", 70_000)

    def image():
        img = ffi.new("ll_image **")
        assert lib.ll_image_create(idx, sources, opt, img) == lib.LL_OK
        handles.append(img[0])
        return img[0]

    def pread(img, name, off, size):
        assert lib.ll_index_resolve(idx, name.encode(), len(name.encode()), 1, ino) == lib.LL_OK
        got = lib.ll_image_read(img, ino[0], off, buf, size)
        assert got >= 0, got
        return ffi.buffer(buf, got)[:]

    try:
        warm = image()
        for name, data in want.items():
            assert _read_file(warm, idx, name) == data, name
        lib.ll_cache_clear(cache)
        img = image()
        big = want["dir/big.bin"]
        # short reads moving forward inside each 64 KiB frame: each needs a longer prefix
        for start in range(0, len(big), 1 << 16):
            for off in (start + 10, start + 30_000, start + 20, start + 65_000):
                if off < len(big):
                    assert pread(img, "dir/big.bin", off, 100) == big[off:off + 100], off
        rng = random.Random(5)
        names = [k for k, v in want.items() if v]
        for _ in range(400):
            name = rng.choice(names)
            data = want[name]
            off, size = rng.randrange(len(data)), rng.choice([1, 100, 4096, 70_000])
            assert pread(img, name, off, size) == data[off:off + size], (name, off, size)
        lib.ll_image_get_stats(img, stats)
        assert calls["n"] == 0 or stats.host_calls == 0
        assert stats.host_calls == 0 and stats.digest_errors == 0 and stats.frames_disk > 0
        # every frame file modified in place (same size, same inode), after this
        # process verified it: nothing wrong is returned, memo or not
        import time
        time.sleep(0.05)  # past the file system's timestamp granularity
        frames = sorted((tmp_path / "cache" / "v1" / "frames").glob("*/*"))
        assert frames
        for f in frames:
            with open(f, "r+b") as fh:
                b = fh.read(1)
                fh.seek(0)
                fh.write(bytes([b[0] ^ 0x55]))
        lib.ll_cache_clear(cache)
        for name, data in want.items():
            assert _read_file(img, idx, name, chunk=4096 + 7) == data, name
        lib.ll_image_get_stats(img, stats)
        assert stats.digest_errors > 0 and stats.host_calls > 0
    finally:
        _free_all(handles, cache, idx, disk, fds)


@pytest.mark.parametrize("cached", [1, 0])
def test_readers_of_one_frame_at_once_share_one_load(layout, tmp_path, cached):
    """Single flight (cache.c, ll__cache_claim): 8 threads reading the same frame at the same
    time from the disk cache with ll_image_read_cached (as the FUSE server threads do) load,
    hash and decode it once; the others wait for that load.  Repeated for each of
    dir/big.bin's ~16 frames, each round started together behind a barrier.  ll_image_read
    (which may call the host) is never waited for, by design: its readers get the right bytes,
    each load their own."""
    import threading

    path, want = layout
    idx, keep, fds = _index_of_layout(path)
    host = _pread_host(fds)
    disk, cache, sources, opt = _disk_image_parts(idx, host, tmp_path / "cache", 64 << 20)
    imgs = []
    try:
        for _ in range(2):
            p = ffi.new("ll_image **")
            assert lib.ll_image_create(idx, sources, opt, p) == lib.LL_OK
            imgs.append(p[0])
        warm, img = imgs
        big = want["dir/big.bin"]
        assert _read_file(warm, idx, "dir/big.bin") == big  # every frame on disk now
        lib.ll_cache_clear(cache)
        ino = ffi.new("uint64_t *")
        assert lib.ll_index_resolve(idx, b"dir/big.bin", len(b"dir/big.bin"), 1, ino) == lib.LL_OK
        frames = range(0, len(big) - 100, 1 << 16)  # one read inside each 64 KiB frame
        barrier = threading.Barrier(8)
        bad: list[str] = []
        read = lib.ll_image_read_cached if cached else lib.ll_image_read

        def reader() -> None:
            buf = ffi.new("char[]", 100)
            for off in frames:
                barrier.wait()
                got = read(img, ino[0], off + 10, buf, 100)  # (cffi releases the GIL in the call)
                if got != 100 or ffi.buffer(buf, 100)[:] != big[off + 10:off + 110]:
                    bad.append(f"{off}: {got}")

        threads = [threading.Thread(target=reader) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not bad, bad
        stats = ffi.new("ll_image_stats *")
        lib.ll_image_get_stats(img, stats)
        assert stats.host_calls == 0
        if cached:
            assert stats.frames_disk == len(frames), (stats.frames_disk, len(frames))
        else:
            assert stats.frames_disk >= len(frames)
    finally:
        _free_all(imgs, cache, idx, disk, fds)


# ---------------------------------------------------------------- raw layers (LL_CODEC_RAW)


def _raw_layer(files: dict[str, bytes], frame: int) -> tuple[object, bytes]:
    """A raw layer as a host builds one for another format: each file's bytes laid out in a
    virtual stream, cut into frames that are their data as is, named by the data's sha256;
    the TOC says "codec": "raw".  (The IndexLayer, the virtual stream.)"""
    from lazylayer.core import IndexLayer
    from lazylayer.format import Frame, Toc

    stream, entries, frames = b"", [], []
    for name, data in files.items():
        entries.append({"name": name, "type": "reg", "mode": 0o644, "size": len(data), "offset": len(stream)})
        for i in range(0, len(data), frame):
            piece = data[i:i + frame]
            frames.append(Frame(len(stream), len(piece), len(stream), len(piece), hashlib.sha256(piece).hexdigest()))
            stream += piece
    toc_frame = Toc(frames=frames, entries=entries, frame_size=frame, tar_size=len(stream), codec="raw").to_frame()
    layer = IndexLayer("sha256:" + hashlib.sha256(stream).hexdigest(), len(stream) + len(toc_frame),
                       "sha256:" + hashlib.sha256(toc_frame).hexdigest(), len(stream), len(toc_frame), toc_frame)
    return layer, stream


def test_a_raw_layer_is_served_from_the_data_its_host_returns(tmp_path):
    """LL_CODEC_RAW: the index keeps the layer's codec (also once stored and reopened), reads copy
    the frames the host returns (no zstd), whole and in part, from memory and from the disk cache;
    a frame that is not the data its sha256 names is refused."""
    from lazylayer import errors
    from lazylayer.core import BlockCache, ImageReader, Index, NativeDiskCache

    rng = random.Random(9)
    files = {"a.bin": rng.randbytes(300_000), "b.txt": b"hello\n", "c.bin": bytes(100_000) + rng.randbytes(5)}
    layer, stream = _raw_layer(files, 65536)
    idx = Index.build([layer])
    assert idx.layer_codec(0) == "raw" and Index.from_buffer(idx.data()).layer_codec(0) == "raw"
    calls = []

    def host(offset: int, size: int) -> bytes:
        calls.append((offset, size))
        return stream[offset:offset + size]

    def no_host(offset: int, size: int) -> bytes:
        raise AssertionError("every frame is on disk")

    cache = DiskCache(str(tmp_path / "cache"))
    for off, size, _, _, sha in idx.frames(0):  # frames named by their data's sha256, as a host stores them
        cache.put("sha256:" + sha, stream[off:off + size])
    for fetch, disk in ((host, None), (no_host, NativeDiskCache(str(tmp_path / "cache")))):
        reader = ImageReader(idx, [(fetch, True)], cache=BlockCache(8 << 20), pool=None, disk=disk)
        for name, data in files.items():
            st = idx.stat(idx.resolve_path(name)[0])
            assert reader.pread(st.ino, len(data) + 10, 0) == data
            assert reader.pread(st.ino, 1000, len(data) // 2) == data[len(data) // 2:len(data) // 2 + 1000]
        assert reader.stats()["frames_disk" if disk else "frames_fetched"] >= len(idx.frames(0))
    # C checks what a C source returns (the mount's path): a frame that is not its data is refused
    bad = bytearray(stream)
    bad[70_000] ^= 1
    for source, ok in ((stream, True), (bytes(bad), False)):
        buf = ffi.from_buffer(source)
        mem = ffi.new("ll_mem_source *", {"data": buf, "size": len(source)})
        arr = ffi.new("ll_image_source[]", 1)
        arr[0].read, arr[0].opaque = lib.ll_mem_read, mem
        reader = ImageReader(idx, [], cache=None, pool=None, disk=None, c_sources=arr, keep=(buf, mem))
        st = idx.stat(idx.resolve_path("a.bin")[0])
        if ok:
            assert reader.pread(st.ino, 300_000, 0) == files["a.bin"]
        else:
            assert reader.pread(st.ino, 1000, 0) == files["a.bin"][:1000]  # frame 0 is intact
            with pytest.raises(errors.IntegrityError):
                reader.pread(st.ino, 1000, 69_000)


def test_a_raw_toc_whose_frames_are_not_their_data_is_refused():
    from lazylayer import errors
    from lazylayer.core import Index
    from lazylayer.format import Toc

    layer, _ = _raw_layer({"a": b"x" * 1000}, 512)
    doc = Toc.from_frame(layer.toc_frame)
    assert doc.codec == "raw"
    import json
    import struct

    import zstandard

    from lazylayer.format import TOC_MAGIC, TOC_SKIPPABLE_VARIANT

    def shift(d: dict) -> None:  # frames still tile the stream; frame 0 is 511 bytes for 512 of data
        d["frames"][0][1] = 511
        d["frames"][1][0], d["frames"][1][1] = 511, d["frames"][1][1] + 1

    for change, match in ((shift, "not its data as is"), (lambda d: d.__setitem__("codec", "gzip"), "codec")):
        d = json.loads(doc.to_json())
        change(d)
        body = TOC_MAGIC + zstandard.ZstdCompressor().compress(json.dumps(d).encode())
        frame = struct.pack("<II", 0x184D2A50 + TOC_SKIPPABLE_VARIANT, len(body)) + body
        bad = layer._replace(toc_frame=frame, toc_length=len(frame), blob_size=layer.toc_offset + len(frame),
                             toc_digest="sha256:" + hashlib.sha256(frame).hexdigest())
        with pytest.raises(errors.FormatError, match=match):
            Index.build([bad])
        with pytest.raises(errors.FormatError, match=match):
            Toc.from_frame(frame)


def test_a_failed_layer_is_refused_from_every_cache(tmp_path):
    """ll_image_fail_layer: once a layer is failed, reads of its files get the status given (an
    IntegrityError with the reason, in Python) even for frames in the memory and disk caches; other
    layers read on; the first status stays; bad arguments are LL_ERR_ARG."""
    from lazylayer import errors
    from lazylayer.core import BlockCache, ImageReader, Index, NativeDiskCache

    rng = random.Random(4)
    files = [{"a.bin": rng.randbytes(200_000)}, {"b.bin": rng.randbytes(100_000)}]
    built = [_raw_layer(f, 65536) for f in files]
    layers = [layer._replace(digest=f"sha256:{i:064x}") for i, (layer, _) in enumerate(built)]
    idx = Index.build(layers)
    cache = DiskCache(str(tmp_path / "cache"))
    for i, (_, stream) in enumerate(built):
        for off, size, _, _, sha in idx.frames(i):
            cache.put("sha256:" + sha, stream[off:off + size])

    def no_host(offset: int, size: int) -> bytes:
        raise AssertionError("every frame is on disk")

    reader = ImageReader(idx, [(no_host, True), (no_host, True)], cache=BlockCache(8 << 20), pool=None,
                         disk=NativeDiskCache(str(tmp_path / "cache")))
    a, b = (idx.stat(idx.resolve_path(n)[0]) for n in ("a.bin", "b.bin"))
    assert reader.pread(a.ino, 1000, 5) == files[0]["a.bin"][5:1005]  # in the memory cache now
    reader.fail_layer(a.layer, "layer 0 was found wrong")
    for at in (5, 150_000):  # a cached frame, and one only on disk
        with pytest.raises(errors.IntegrityError, match="found wrong"):
            reader.pread(a.ino, 1000, at)
    assert reader.pread(b.ino, 100_000, 0) == files[1]["b.bin"]
    assert lib.ll_image_layer_failed(reader._ptr, a.layer) == lib.LL_ERR_DIGEST
    assert lib.ll_image_fail_layer(reader._ptr, a.layer, lib.LL_ERR_IO) == lib.LL_OK
    assert lib.ll_image_layer_failed(reader._ptr, a.layer) == lib.LL_ERR_DIGEST  # the first stays
    assert lib.ll_image_layer_failed(reader._ptr, b.layer) == 0
    for layer, status in ((2, lib.LL_ERR_DIGEST), (0, 0), (0, 3), (0, lib.LL_ERR_MISS)):
        assert lib.ll_image_fail_layer(reader._ptr, layer, status) == lib.LL_ERR_ARG
    assert lib.ll_image_fail_layer(ffi.NULL, 0, lib.LL_ERR_DIGEST) == lib.LL_ERR_ARG
    assert lib.ll_image_layer_failed(reader._ptr, 2) == lib.LL_ERR_ARG
