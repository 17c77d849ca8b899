"""ImageFileSystem (``lazylayer://``) against real images, judged by umoci.

The image is built by umoci (three layers from modified root filesystems) plus
a hand-made fourth layer (opaque directory, whiteouts, a 9 MiB file over
several frames, hardlinks, symlinks that climb above the root, a loop); it is
converted to lazy layers and pushed to a real ``docker-registry``.  Every file
read through the filesystem must match the same image unpacked by umoci.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import multiprocessing
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import warnings
from typing import Any

import fsspec
import images
import pytest
from servers import RegistryServer, unique_repo, wait_for

from lazylayer import errors
from lazylayer.convert import Converter
from lazylayer.core import BlockCache
from lazylayer.fs import ImageFileSystem, image_from_url
from lazylayer.image import Image, NotLazyWarning
from lazylayer.registry import RegistryConfig
from lazylayer.remote import RemoteOptions, Transport

pytestmark = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed (apt install umoci)")


class Built:
    def __init__(self, work: str, registry: RegistryServer) -> None:
        self.work = work
        self.plain = images.build_fs_image(os.path.join(work, "build"))  # gzip layers, as umoci writes them
        self.lazy = os.path.join(work, "lazy")
        Converter(progress=False).convert(f"oci:{self.plain}:v1", f"oci:{self.lazy}:v1")
        self.repo = unique_repo("fs")
        self.registry = registry
        Converter(progress=False).convert(f"oci:{self.lazy}:v1", f"docker://{registry.host}/{self.repo}:v1")
        self.rootfs = images.unpack(self.plain, "v1", os.path.join(work, "unpacked"))

    @property
    def docker_ref(self) -> str:
        return f"docker://{self.registry.host}/{self.repo}:v1"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer) -> Built:
    return Built(str(tmp_path_factory.mktemp("fsimage")), registry)


def open_fs(ref: str, cache_dir: str | None = None, **kw: Any) -> ImageFileSystem:
    return ImageFileSystem(image=ref, cache_dir=cache_dir, use_cache=cache_dir is not None,
                           memory_cache=BlockCache(64 << 20), skip_instance_cache=True, **kw)


def expected_tree(rootfs: str) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """umoci's unpacked tree (:func:`images.snapshot`), with whole-second mtimes, bare sha256s and nlink."""
    snap, links = images.snapshot(rootfs)
    out = {}
    for rel, (fmt, mode, uid, gid, size, mtime_ns, what, xattrs) in snap.items():
        if stat.S_ISREG(fmt):
            what = what.removeprefix("sha256:")
        nlink = None if stat.S_ISDIR(fmt) else os.lstat(os.path.join(rootfs, rel)).st_nlink
        out[rel] = (fmt, mode, uid, gid, size, None if mtime_ns is None else mtime_ns // 10**9, what, xattrs, nlink)
    return out, links


def tree_of(fs: ImageFileSystem) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """The same description, through the filesystem (content read with cat_file)."""
    out: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for _, dirs, files in fs.walk("", detail=True):
        for info in list(dirs.values()) + list(files.values()):
            fmt = stat.S_IFMT(info["mode"])
            what: Any = None
            if stat.S_ISREG(fmt):
                what = hashlib.sha256(fs.cat_file(info["name"])).hexdigest()
                inodes.setdefault(info["ino"], []).append(info["name"])
            elif stat.S_ISLNK(fmt):
                what = info["destination"]
            elif stat.S_ISCHR(fmt) or stat.S_ISBLK(fmt):
                what = (info["devmajor"], info["devminor"])
            xattrs = tuple(sorted(info.get("xattrs", {}).items()))
            out[info["name"]] = (fmt, stat.S_IMODE(info["mode"]), info["uid"], info["gid"],
                                 None if stat.S_ISDIR(fmt) else info["size"],
                                 int(info["mtime"]) if not stat.S_ISDIR(fmt) else None,
                                 what, xattrs, info["nlink"] if not stat.S_ISDIR(fmt) else None)
    return out, {frozenset(v) for v in inodes.values() if len(v) > 1}


def check_matches_umoci(fs: ImageFileSystem, rootfs: str) -> None:
    want, want_links = expected_tree(rootfs)
    got, got_links = tree_of(fs)
    assert images.diff_snapshots(want, got) == []
    assert got_links == want_links
    assert len(want) > 40


# ------------------------------------------------------------------ the tree and its bytes


@pytest.mark.parametrize("where", ["oci", "registry"])
def test_every_file_matches_umoci_unpack(built: Built, tmp_path: Any, where: str) -> None:
    ref = f"oci:{built.lazy}:v1" if where == "oci" else built.docker_ref
    fs = open_fs(ref, str(tmp_path / "cache"))
    check_matches_umoci(fs, built.rootfs)
    # The things the image was built to contain are really there.
    assert fs.ls("data", detail=False) == ["data/kept-new"]  # opaque dir: lower layers' files hidden
    assert not fs.exists("etc/empty") and not fs.exists("etc/hostname.link")  # whiteouts
    assert fs.info("big/large.bin")["nlink"] == 2
    assert fs.info("srv/null")["kind"] == "char" and fs.info("srv/fifo")["kind"] == "fifo"
    assert len(fs.image.layers) == 4 and all(layer.lazy for layer in fs.image.layers)


def test_a_plain_image_works_with_a_warning(built: Built, tmp_path: Any) -> None:
    with pytest.warns(NotLazyWarning, match="fetched whole"):
        fs = open_fs(f"oci:{built.plain}:v1", str(tmp_path / "cache"))
        fs.image  # noqa: B018 - opening is what warns
    assert not any(layer.lazy for layer in fs.image.layers)
    check_matches_umoci(fs, built.rootfs)
    # The re-encoded layers are kept: a second open does not warn about work it need not redo... it still warns,
    # but reads the local files.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLazyWarning)
        again = open_fs(f"oci:{built.plain}:v1", str(tmp_path / "cache"))
        assert again.cat("etc/passwd") == fs.cat("etc/passwd")


def test_layers_that_are_not_lazy_are_fetched_at_once_and_kept_uncompressed(tmp_path: Any, registry: Any,
                                                                            monkeypatch: Any) -> None:
    """A gzip image in a registry: its layers stream in at the same time (a barrier that two fetches
    must reach together: fetched one after the other, the open fails), each decoded into a copy of
    stored frames in the disk cache (the tar as is: zstd decodes it to the layer's diff_id); reads
    of it count as local, not fetched; the next open fetches nothing.  A layer whose blob does not
    match its digest fails the open and leaves no copy."""
    from lazylayer.registry.client import RegistrySource

    tars = [images.make_tar([images.reg(f"data/f{i}.bin", os.urandom(3_000_000 + i))]) for i in range(2)]
    repo = unique_repo("whole")
    registry.push(images.build_layout(str(tmp_path / "plain"), tars, tag="v1"), f"{repo}:v1")
    ref = f"docker://{registry.host}/{repo}:v1"
    together = threading.Barrier(2, timeout=30)
    opened = RegistrySource.open_blob

    def open_blob(self: Any, desc: Any) -> Any:
        together.wait()  # both layers' streams are open at once, or this times out
        return opened(self, desc)

    monkeypatch.setattr(RegistrySource, "open_blob", open_blob)
    cache = tmp_path / "cache"
    with pytest.warns(NotLazyWarning, match="2 of its 2 layers .* fetched whole, all at once"):
        fs = open_fs(ref, str(cache))
        img = fs.image
    try:
        sizes = [layer.descriptor["size"] for layer in img.layers]
        assert img.stats()["layers_fetched_whole"] == 2 and img.stats()["bytes_fetched_whole"] == sum(sizes)
        assert fs.cat("data/f1.bin") == tars[1][512:512 + 3_000_001]
        stats = img.stats()
        assert stats["frames_fetched"] == stats["bytes_fetched"] == 0
        assert stats["frames_local"] >= 2 and stats["bytes_local"] >= 3_000_001
        for layer, tar in zip(img.layers, tars):
            path = img.local_path(layer)
            assert path is not None and path.endswith(f"sha256-{layer.digest[7:]}.stored")
            assert os.path.getsize(path) > len(tar)  # stored: no compression
            assert subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout == tar
    finally:
        fs.close()
    monkeypatch.setattr(RegistrySource, "open_blob", opened)
    again = open_fs(ref, str(cache))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", NotLazyWarning)  # nothing to fetch: nothing to say
            assert again.cat("data/f0.bin") == tars[0][512:512 + 3_000_000]
        assert again.image.stats()["layers_fetched_whole"] == 0
    finally:
        again.close()

    bad = unique_repo("whole-bad")
    blobs = [images.compress(t, "gzip") for t in tars]
    blobs[1] = images.compress(images.make_tar([images.reg("data/f1.bin", b"not this")]), "gzip")
    layout = str(tmp_path / "bad")
    images.write_index(layout, [images.tagged(images.write_image(layout, tars, blobs=blobs), "v1")])
    # (the registry checks digests on push: the manifest here names the blob it got, so the diff_id is what fails)
    registry.push(f"oci:{layout}:v1", f"{bad}:v1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLazyWarning)
        with pytest.raises(errors.IntegrityError, match="diff_id"):
            open_fs(f"docker://{registry.host}/{bad}:v1", str(tmp_path / "cache2")).image
    kept = [p.name for p in (tmp_path / "cache2" / "v1" / "files").glob("*.stored")]
    assert f"sha256-{images.sha256(blobs[1])[7:]}.stored" not in kept  # (the good layer's copy may stay)


def test_symlinks_resolve_inside_the_image_root(built: Built) -> None:
    fs = open_fs(f"oci:{built.lazy}:v1")
    passwd = fs.cat("etc/passwd")
    assert fs.cat("big/escape") == passwd  # ../../../../../etc/passwd stops at the image root
    assert fs.cat("big/abs-escape") == fs.cat("etc/hostname")  # /../../etc/hostname too
    assert fs.cat("usr/lib/abs.link") == passwd
    assert fs.cat("../../../../etc/passwd") == passwd  # a path's own .. cannot leave either
    assert fs.cat("big/dirlink/blob") == fs.cat("app/lib/blob")
    assert fs.ls("big/dirlink", detail=False) == ["big/dirlink/blob"]
    assert fs.readlink("big/escape") == "../../../../../etc/passwd"
    info = fs.info("big/escape")
    assert info["type"] == "link" and info["islink"] and info["destination"] == "../../../../../etc/passwd"
    assert fs.info("big/escape", follow_symlinks=True)["type"] == "file"
    with pytest.raises(OSError) as exc:
        fs.cat("big/loop1")
    assert exc.value.errno == errno.ELOOP
    with pytest.raises(FileNotFoundError):
        fs.cat("usr/lib/dangling")
    with pytest.raises(FileNotFoundError):
        fs.info("no/such/file")
    with pytest.raises(NotADirectoryError):
        fs.info("etc/passwd/x")
    with pytest.raises(IsADirectoryError):
        fs.cat("etc")


def test_it_is_read_only(built: Built, tmp_path: Any) -> None:
    fs = open_fs(f"oci:{built.lazy}:v1")
    for call in (lambda: fs.open("etc/passwd", "wb"), lambda: fs.pipe("x", b"1"), lambda: fs.rm("etc/passwd"),
                 lambda: fs.mkdir("newdir"), lambda: fs.touch("etc/new"), lambda: fs.mv("etc/passwd", "x"),
                 lambda: fs.put(str(tmp_path), "x", recursive=True)):
        with pytest.raises(PermissionError):
            call()
    assert fs.exists("etc/passwd")


def test_urls_plain_and_chained(built: Built) -> None:
    passwd = open(os.path.join(built.rootfs, "etc/passwd"), "rb").read()
    with fsspec.open("lazylayer://etc/passwd", image=f"oci:{built.lazy}:v1", skip_instance_cache=True) as f:
        assert f.read() == passwd
    with fsspec.open(f"lazylayer://etc/passwd::file://{built.lazy}:v1") as f:
        assert f.read() == passwd
    chained = f"lazylayer://etc/passwd::http://{built.registry.host}/v2/{built.repo}/manifests/v1"
    with fsspec.open(chained) as f:
        assert f.read() == passwd
    fs, path = fsspec.core.url_to_fs("lazylayer:///usr/bin/tool", image=built.docker_ref)
    assert isinstance(fs, ImageFileSystem) and path == "usr/bin/tool"
    assert image_from_url("https://ghcr.io/v2/org/app/manifests/1.0") == "docker://ghcr.io/org/app:1.0"
    assert image_from_url("https://r.example/v2/a/b/manifests/sha256:" + "0" * 64) == \
        "docker://r.example/a/b@sha256:" + "0" * 64
    with pytest.raises(ValueError, match="manifest URL"):
        image_from_url("https://r.example/some/file")
    with pytest.raises(ValueError, match="needs an image"):
        ImageFileSystem(skip_instance_cache=True)


# ------------------------------------------------------------------ reads


def test_file_objects_seek_read_readinto_and_read_ahead(built: Built) -> None:
    fs = open_fs(built.docker_ref)
    want = open(os.path.join(built.rootfs, "big/large.bin"), "rb").read()
    with fs.open("big/large.bin") as f:
        got = bytearray()
        while chunk := f.read(100_000):  # sequential: the window grows
            got += chunk
        assert bytes(got) == want and f.tell() == len(want)
        assert f._ra.window == 16 << 20 or len(want) < 16 << 20
        rng = random.Random(1)
        for _ in range(200):
            off, n = rng.randrange(len(want)), rng.choice([1, 100, 4096, 70_000])
            f.seek(off)
            assert f.read(n) == want[off:off + n]
        f.seek(-10, io.SEEK_END)
        buf = bytearray(64)
        assert f.readinto(buf) == 10 and bytes(buf[:10]) == want[-10:]
        assert f.read() == b""
        f.seek(5)
        assert f.read() == want[5:]
    with pytest.raises(ValueError):
        f.read(1)
    assert fs.cat_file("big/large.bin", 100, 200) == want[100:200]
    assert fs.cat_file("big/large.bin", -50) == want[-50:]
    assert fs.cat_file("big/large.bin", 10, 5) == b""
    got = fs.cat_ranges(["big/large.bin", "etc/passwd", "app/lib/blob"], [0, 0, 5], [9_000_000, 10, 50])
    assert got[0] == want[:9_000_000] and got[1] == fs.cat("etc/passwd")[:10]
    assert isinstance(fs.cat_ranges(["nope", "etc/passwd"], 0, 4)[0], FileNotFoundError)


def test_the_file_leaves_read_ahead_to_the_prefetcher(built: Built, tmp_path: Any) -> None:
    """With a disk cache the prefetcher reads ahead, in frames fetched in the background, and the file object
    adds none of its own (docs/filesystem.md, "Read-ahead"); with readahead=False the file object reads ahead."""
    want = open(os.path.join(built.rootfs, "big/large.bin"), "rb").read()
    fs = open_fs(built.docker_ref, str(tmp_path / "c"), prefetch=None)
    layer = fs.image.layers[fs.image.tree.resolve("big/large.bin").inode.layer]
    assert fs.image.prefetcher.reads_ahead(layer.index)
    with fs.open("big/large.bin") as f:
        assert not f._read_ahead
        got = bytearray()
        while chunk := f.read(100_000):
            got += chunk
        assert bytes(got) == want and f._buf == b"" and f._ra.window == 0
    assert fs.image.stats()["frames_fetched"] <= len(layer.toc.frames)  # no frame fetched twice
    fs = open_fs(built.docker_ref, str(tmp_path / "d"), prefetch=None, readahead=False)
    with fs.open("big/large.bin") as f:
        assert f._read_ahead
        got = bytearray()
        while chunk := f.read(100_000):
            got += chunk
        assert bytes(got) == want and f._ra.window > 1 << 20
    assert fs.image.stats()["prefetched_frames"] == 0


def test_a_read_fetches_only_the_frames_it_touches(built: Built, tmp_path: Any) -> None:
    fs = open_fs(built.docker_ref, str(tmp_path / "cache"))
    img = fs.image
    node = img.tree.resolve("etc/passwd")
    layer = img.layers[node.inode.layer]
    frames = [f for f in layer.toc.frames if f.offset < node.inode.offset + node.inode.size
              and node.inode.offset < f.offset + f.size]
    assert fs.cat("etc/passwd")
    assert img.stats()["frames_fetched"] == len(frames) == 1
    assert img.stats()["bytes_fetched"] == sum(f.compressed_size for f in frames)
    # A second filesystem on the same disk cache (and a cold memory cache) fetches nothing.
    again = open_fs(built.docker_ref, str(tmp_path / "cache"))
    assert again.cat("etc/passwd") == fs.cat("etc/passwd")
    assert again.image.stats()["frames_fetched"] == 0 and again.image.stats()["frames_from_disk"] == 1
    # Nor does read-ahead fetch the frames after a read that missed (a lazylayer:// reader reads what
    # it asks for); the mount's neighbour window is asked for with neighbours=, as its fetcher does.
    for n, cache in ((0, "lazy"), (4, "eager")):
        f = open_fs(built.docker_ref, str(tmp_path / cache), **({"neighbours": n} if n else {}))
        assert len(f.image.layers[f.image.tree.resolve("big/large.bin").inode.layer].toc.frames) > 2
        assert f.cat_file("big/large.bin", 0, 10) == open(os.path.join(built.rootfs, "big/large.bin"), "rb").read(10)
        wait_for(f.image.prefetcher.idle)
        assert (f.image.stats()["prefetched_frames"] > 0) == bool(n)


def test_many_threads_read_at_once(built: Built, tmp_path: Any) -> None:
    fs = open_fs(built.docker_ref, str(tmp_path / "cache"))
    files = [p for p in fs.find("") if fs.info(p)["type"] == "file"]
    want = {p: open(os.path.join(built.rootfs, p), "rb").read() for p in files}
    failures: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            p = rng.choice(files)
            data = want[p]
            off = rng.randrange(len(data) + 1)
            n = rng.randrange(0, 300_000)
            try:
                with fs.open(p) as f:
                    f.seek(off)
                    if f.read(n) != data[off:off + n]:
                        failures.append(f"{p} {off}+{n}")
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{p}: {exc!r}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def _read_everything(ref: str, cache_dir: str, out: Any) -> None:
    fs = open_fs(ref, cache_dir)
    digests = {p: hashlib.sha256(fs.cat(p)).hexdigest() for p in fs.find("") if fs.info(p)["type"] == "file"}
    out.put((digests, fs.image.stats()))


def test_several_processes_share_the_disk_cache(built: Built, tmp_path: Any) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_read_everything, args=(built.docker_ref, str(tmp_path / "cache"), queue))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    want, _ = expected_tree(built.rootfs)
    for digests, _ in results:
        assert digests == {p: v[6] for p, v in want.items() if stat.S_ISREG(v[0])}
    # One fetch per frame across the four processes.
    fs = open_fs(built.docker_ref)
    frames_read = {f.sha256 for layer in fs.image.layers for f in layer.toc.frames}
    fetched = sum(stats["frames_fetched"] for _, stats in results)
    assert fetched <= len(frames_read), f"{fetched} frame fetches for {len(frames_read)} frames"


# ------------------------------------------------------------------ bad data


def _copy_layout(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


def _largest_layer(layout: str) -> dict[str, Any]:
    return max(images.image(layout, "v1").layers, key=lambda d: d["size"])


def test_a_corrupt_frame_is_an_error_not_data(built: Built, tmp_path: Any) -> None:
    layout = _copy_layout(built.lazy, str(tmp_path / "bad"))
    with Image(f"oci:{layout}:v1", cache=None) as img:  # where big/large.bin's first frame is
        inode = img.tree.resolve("big/large.bin").inode
        layer = img.layers[inode.layer]
        frame = next(f for f in layer.toc.frames if f.offset <= inode.offset < f.offset + f.size)
        path = images.blob_path(layout, layer.digest)
    with open(path, "r+b") as f:  # flip a byte inside that frame
        f.seek(frame.compressed_offset + frame.compressed_size // 2)
        b = f.read(1)
        f.seek(-1, io.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x40]))
    fs = open_fs(f"oci:{layout}:v1")
    with pytest.raises(errors.IntegrityError):
        fs.cat("big/large.bin")
    with pytest.raises(errors.IntegrityError):
        with fs.open("big/large.bin") as f:
            f.read(10)
    assert fs.cat("etc/passwd") == open(os.path.join(built.rootfs, "etc/passwd"), "rb").read()


def test_corruption_in_transit_is_refetched_or_refused(built: Built, fault_proxy: Any, tmp_path: Any) -> None:
    proxy = fault_proxy(built.registry.url)
    host = proxy.url.split("://", 1)[1]
    cfg = RegistryConfig(transport=Transport(RemoteOptions(deadline=20)))
    # no read-ahead: the frames of the second read must be fetched by that read, under the fault
    fs = open_fs(f"docker://{host}/{built.repo}:v1", str(tmp_path / "cache"), registry=cfg, readahead=False)
    fs.image  # noqa: B018 - open (manifest, TOCs) before breaking blob reads
    want = open(os.path.join(built.rootfs, "big/large.bin"), "rb").read()
    proxy.add_fault("flip", path="/blobs/", times=1, after_bytes=1000)  # once: refetched, right bytes
    assert fs.cat_file("big/large.bin", 0, 3_000_000) == want[:3_000_000]
    proxy.add_fault("flip", path="/blobs/", after_bytes=10)  # always: refused
    with pytest.raises(errors.IntegrityError):
        fs.cat_file("big/large.bin", 5_000_000, 6_000_000)
    cache = os.path.join(str(tmp_path / "cache"))
    stored = [os.path.join(d, f) for d, _, fs_ in os.walk(cache) for f in fs_ if len(f) == 64]
    for p in stored:  # nothing bad was kept on disk
        assert hashlib.sha256(open(p, "rb").read()).hexdigest() == os.path.basename(p)


def test_a_toc_that_does_not_match_its_annotation_is_refused(built: Built, tmp_path: Any) -> None:
    layout = _copy_layout(built.lazy, str(tmp_path / "bad"))
    desc = _largest_layer(layout)
    toc_off, toc_len = map(int, desc["annotations"]["io.lazylayer.toc.position"].split(":"))
    path = images.blob_path(layout, desc["digest"])
    with open(path, "r+b") as f:
        f.seek(toc_off + toc_len - 3)
        b = f.read(1)
        f.seek(toc_off + toc_len - 3)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(errors.IntegrityError, match="TOC digest mismatch"):
        open_fs(f"oci:{layout}:v1").image  # noqa: B018


def test_hostile_toc_entries_are_format_errors(tmp_path: Any) -> None:
    """A TOC whose manifest vouches for it but whose entries are nonsense: typed errors, no crash."""
    from lazylayer.format import Frame, Toc
    from lazylayer.image import Tree

    frames = [Frame(0, 10, 0, 1024, "0" * 64)]
    for entries in ([{"name": "a", "type": "hardlink", "linkname": "missing"}],
                    [{"name": "a", "type": "weird"}]):
        with pytest.raises(errors.FormatError):
            Tree.from_tocs([Toc(frames=frames, entries=entries)])
    from lazylayer.format import check_toc_frames

    with pytest.raises(errors.FormatError):
        check_toc_frames(Toc(frames=frames, entries=[{"name": "a", "type": "reg", "offset": 1000, "size": 100}]), 10)
    with pytest.raises(errors.FormatError):
        check_toc_frames(Toc(frames=[Frame(5, 10, 0, 1024, "0" * 64)], entries=[]), 15)


# ------------------------------------------------------------------ async


def test_the_async_api(built: Built) -> None:
    want = open(os.path.join(built.rootfs, "big/large.bin"), "rb").read()

    async def main() -> None:
        fs = ImageFileSystem(image=built.docker_ref, use_cache=False, asynchronous=True, skip_instance_cache=True)
        assert (await fs._info("etc/passwd"))["type"] == "file"
        assert "etc/passwd" in await fs._ls("etc", detail=False)
        assert await fs._cat_file("big/large.bin", 10, 20) == want[10:20]
        got = await fs._cat_ranges(["big/large.bin"] * 3, [0, 100, 5_000_000], [10, 200, 5_000_100])
        assert got == [want[0:10], want[100:200], want[5_000_000:5_000_100]]
        assert sorted(await fs._find("app")) == ["app/blob.link", "app/lib/blob", "app/run.sh"]
        async with await fs.open_async("big/large.bin") as f:
            await f.seek(1000)
            assert await f.read(10) == want[1000:1010]
        # Other coroutines run while a read is in flight.
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.ensure_future(tick())
        await fs._cat_file("big/large.bin")
        t.cancel()
        assert ticks > 0

    asyncio.run(main())


# ------------------------------------------------------------------ fsspec's own tests


def _scenario_tar() -> bytes:
    """fsspec's test scenarios (fsspec.tests.abstract), each under its own directory."""
    from hashlib import md5

    members: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def d(name: str) -> None:
        members.append(images.entry(name, tarfile.DIRTYPE))

    def f(name: str, data: bytes = b"") -> None:
        members.append(images.reg(name, data))

    for top in ("s0", "glob", "prefix", "hashed", "rec"):
        d(top)
    d("s0/source"), d("s0/source/subdir"), d("s0/source/subdir/nesteddir")
    for p in ("file1", "file2", "subdir/subfile1", "subdir/subfile2", "subdir/nesteddir/nestedfile"):
        f(f"s0/source/{p}")
    d("glob/source")
    f("glob/source/file1"), f("glob/source/file2")
    for i in range(2):
        d(f"glob/source/subdir{i}"), d(f"glob/source/subdir{i}/nesteddir")
        f(f"glob/source/subdir{i}/subfile1"), f(f"glob/source/subdir{i}/subfile2")
        f(f"glob/source/subdir{i}/nesteddir/nestedfile")
    d("prefix/source"), d("prefix/source/subdir")
    f("prefix/source/subdir.txt"), f("prefix/source/subdir/subfile.txt")
    d("hashed/source")
    for i in range(10):
        f(f"hashed/source/{md5(str(i).encode()).hexdigest()}.txt", str(i).encode())
    return images.make_tar(members)


@pytest.fixture(scope="module")
def scenario_fs(tmp_path_factory: pytest.TempPathFactory) -> ImageFileSystem:
    work = str(tmp_path_factory.mktemp("scenarios"))
    plain = images.build_layout(os.path.join(work, "plain"), [_scenario_tar()])  # "oci:DIR:latest"
    Converter(progress=False).convert(plain, f"oci:{work}/lazy:latest")
    return open_fs(f"oci:{work}/lazy:latest")


try:
    from fsspec.tests.abstract import AbstractFixtures
    from fsspec.tests.abstract.get import AbstractGetTests
except ImportError:  # pragma: no cover - fsspec without its test package
    AbstractGetTests = None


if AbstractGetTests is not None:
    class TestFsspecGet(AbstractFixtures, AbstractGetTests):
        """fsspec's ``get`` tests, on a read-only image holding the scenarios they would have written."""

        @pytest.fixture
        def fs(self, scenario_fs: ImageFileSystem) -> ImageFileSystem:
            return scenario_fs

        @pytest.fixture
        def fs_path(self) -> str:
            return ""

        @pytest.fixture
        def fs_bulk_operations_scenario_0(self) -> str:
            return "s0/source"

        @pytest.fixture
        def fs_glob_edge_cases_files(self) -> str:
            return "glob/source"

        @pytest.fixture
        def fs_dir_and_file_with_same_name_prefix(self) -> str:
            return "prefix/source"

        @pytest.fixture
        def fs_10_files_with_hashed_names(self) -> str:
            return "hashed/source"

        def test_get_directory_recursive(self) -> None:  # type: ignore[override]
            pytest.skip("writes to the filesystem under test (fs.mkdir, fs.touch): lazylayer:// is read-only")


# ------------------------------------------------------------------ walk and find


def test_walk_find_du_glob(built: Built) -> None:
    fs = open_fs(f"oci:{built.lazy}:v1")
    want, _ = expected_tree(built.rootfs)
    assert set(fs.find("", withdirs=True)) == set(want)
    assert set(fs.find("")) == {p for p, v in want.items() if not stat.S_ISDIR(v[0])}
    walked = {os.path.join(root, n) if root else n for root, dirs, files in fs.walk("") for n in dirs + files}
    assert walked == set(want)
    assert fs.find("", maxdepth=1) == sorted(p for p, v in want.items() if "/" not in p and not stat.S_ISDIR(v[0]))
    assert fs.du("app") == sum(v[4] for p, v in want.items() if p.startswith("app/") and not stat.S_ISDIR(v[0]))
    assert sorted(fs.glob("usr/*/*")) == sorted(p for p in want if p.count("/") == 2 and p.startswith("usr/"))
    assert fs.isdir("big/dirlink") and not fs.isfile("big/dirlink") and fs.islink("big/dirlink")
    bottom_up = [root for root, _, _ in fs.walk("app", topdown=False)]
    assert bottom_up == ["app/lib", "app"]


def test_walk_listings_agree_with_info_at_every_depth(built: Built) -> None:
    """walk's two listings (packed names; info dicts in one pass) name the same entries in the same
    order, every info dict is what fs.info gives, and maxdepth / topdown cut and order the same."""
    fs = open_fs(f"oci:{built.lazy}:v1")
    for maxdepth in (None, 1, 2, 3):
        plain = list(fs.walk("", maxdepth=maxdepth))
        detailed = list(fs.walk("", maxdepth=maxdepth, detail=True))
        assert [(r, d, f) for r, d, f in plain] == [(r, list(d), list(f)) for r, d, f in detailed]
        for root, dirs, files in detailed:
            for name, info in {**dirs, **files}.items():
                assert info == fs.info(f"{root}/{name}" if root else name)
        assert list(fs.walk("", maxdepth=maxdepth, topdown=False)) == plain[::-1]
    assert [r for r, _, _ in fs.walk("usr", maxdepth=1)] == ["usr"]


def test_cli_cat_of_an_image_file_via_python(built: Built) -> None:
    """The filesystem works from a fresh interpreter by protocol name alone (the entry point)."""
    code = ("import fsspec, sys; fs = fsspec.filesystem('lazylayer', image=sys.argv[1]); "
            "sys.stdout.buffer.write(fs.cat('etc/passwd'))")
    out = subprocess.run([sys.executable, "-c", code, f"oci:{built.lazy}:v1"], capture_output=True, check=True,
                         env={**os.environ, "LAZYLAYER_CACHE_DIR": os.path.join(built.work, "cli-cache")})
    assert out.stdout == open(os.path.join(built.rootfs, "etc/passwd"), "rb").read()
    assert json.dumps(fsspec.available_protocols()).count('"lazylayer"') == 1
