"""Layers in the peers' formats, written by the peers' own tools: eStargz and stargz's zstd:chunked
(stargz-snapshotter's library), zstd:chunked as skopeo writes it (containers/image).

The stargz layers are made by tests/estargz_gen (Go, built here offline
against the library's source from Debian's
golang-github-containerd-stargz-snapshotter-dev), skopeo's by ``skopeo copy
--dest-compress-format zstd:chunked``, all from tars made here.  The third
zstd:chunked dialect, containers/storage's since 2023 (``io.github.containers``
annotations, tar-split, 64-byte footer), is written by no Debian tool: its
fixture is built here by hand from containers/storage's
docs/containers-storage-zstd-chunked.md (``_containers_zstd_chunked``).  All
are read lazily, chunk by chunk (docs/filesystem.md): every file must read back
as the original tar has it, a tampered chunk or TOC is an integrity error, and
the stargz formats' own files (the TOC entry ``stargz.index.json`` and the
prefetch landmarks) must not show in the tree, as stargz-snapshotter hides
them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import threading
import warnings
from pathlib import Path
from typing import Any

import images
import pytest
import zstandard
from servers import wait_for

from lazylayer.fs import ImageFileSystem
from lazylayer.image import NotLazyWarning

GEN_SRC = Path(__file__).parent / "estargz_gen"
GOCODE = Path("/usr/share/gocode/src/github.com/containerd/stargz-snapshotter/estargz")

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None or not GOCODE.is_dir(),
    reason="needs go and stargz-snapshotter's source (apt install golang-go "
           "golang-github-containerd-stargz-snapshotter-dev; scripts/setup.sh does)")
needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0, reason="needs /dev/fuse and root (a mount)")


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/estargz_gen built in GOPATH mode against Debian's Go sources (no network)."""
    work = tmp_path_factory.mktemp("estargz-gen")
    exe = work / "estargz_gen"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{work / 'gopath'}:/usr/share/gocode",
           "GOCACHE": str(work / "gocache"), "GOFLAGS": ""}
    r = subprocess.run(["go", "build", "-o", str(exe), "."], cwd=GEN_SRC, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"building tests/estargz_gen failed:\n{r.stderr[-3000:]}"
    return exe


def _files(n: int, seed: int) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    rng = random.Random(seed)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    d = tarfile.TarInfo("app")
    d.type, d.mode = tarfile.DIRTYPE, 0o755
    members.append((d, None))
    for i in range(n):
        size = rng.choice([0, 10, 4000, 70_000, 300_000, 1_500_000])  # some over the 64 KiB chunks below
        members.append(images.reg(f"app/f{seed}-{i}.bin", rng.randbytes(size // 2) + bytes(size - size // 2)))
    link = tarfile.TarInfo("app/link")
    link.type, link.linkname = tarfile.SYMTYPE, f"f{seed}-0.bin"
    members.append((link, None))
    return members


class Variant:
    def __init__(self, gen: Path, work: Path, zstd: bool, members: list[Any], prioritized: str,
                 level: int | None = None, chunk: int = 65536) -> None:
        self.tar = images.make_tar(members)
        src, self.blob_path = work / "in.tar", work / ("layer.zstdchunked" if zstd else "layer.esgz")
        src.write_bytes(self.tar)
        argv = [str(gen), "-chunk", str(chunk), "-prioritized", prioritized, str(src), str(self.blob_path)]
        if zstd:
            argv.insert(1, "-zstdchunked")
        if level is not None:
            argv[1:1] = ["-level", str(level)]
        r = subprocess.run(argv, capture_output=True, text=True, check=True)
        meta = json.loads(r.stdout)
        self.annotations, self.diff_id = meta["annotations"], meta["diff_id"]
        self.blob = self.blob_path.read_bytes()
        self.zstd = zstd
        self.media_type = images.LAYER_MEDIA["zstd" if zstd else "gzip"]
        self.want = {m.name: data for m, data in members if m.isreg()}


@pytest.fixture(scope="module")
def image(gen: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Variant]]:
    """An OCI layout of two layers: eStargz (gzip) and stargz's zstd:chunked, with landmarks."""
    work = tmp_path_factory.mktemp("estargz-image")
    variants = []
    for i, zstd in enumerate((False, True)):
        (work / str(i)).mkdir()
        variants.append(Variant(gen, work / str(i), zstd, _files(8, i), prioritized=f"app/f{i}-3.bin,app/f{i}-1.bin"))
    return _layout(work / "layout", [(v.blob, v.media_type, v.annotations, v.diff_id) for v in variants]), variants


def _layout(path: Path, layers: list[tuple[bytes, str, dict[str, str], str]]) -> str:
    """An OCI layout tagged v1 of ``layers``, each (blob, media type, annotations, diff_id)."""
    layout = str(path)
    images.init_layout(layout)
    config = {"architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": [diff_id for *_, diff_id in layers]}}
    cdesc = images.write_blob(layout, json.dumps(config).encode(), images.OCI_CONFIG)
    ldescs = [images.write_blob(layout, blob, media, annotations=ann) for blob, media, ann, _ in layers]
    manifest = {"schemaVersion": 2, "mediaType": images.OCI_MANIFEST, "config": cdesc, "layers": ldescs}
    mdesc = images.write_blob(layout, json.dumps(manifest).encode(), images.OCI_MANIFEST)
    images.write_index(layout, [images.tagged(mdesc, "v1")])
    return f"oci:{layout}:v1"


def _tar_names(v: Variant) -> list[str]:
    """The member names of the layer's tar as the peers' tools unpack it (gzip or zstd: the stream)."""
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(v.blob), read_across_frames=True).read() \
        if v.zstd else gzip.decompress(v.blob)
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        return [m.name for m in t.getmembers()]


def test_the_library_writes_what_the_format_says(image: tuple[str, list[Variant]]) -> None:
    """The fixtures are what the tests below need: the format's own files are in the tars (so hiding
    them is tested), and the annotations are the ones each dialect writes."""
    _, (esgz, zchunk) = image
    assert "stargz.index.json" in _tar_names(esgz) and ".prefetch.landmark" in _tar_names(esgz)
    assert ".prefetch.landmark" in _tar_names(zchunk) and "stargz.index.json" not in _tar_names(zchunk)
    assert esgz.blob[-51:][:2] == b"\x1f\x8b"  # the 51-byte footer is an empty gzip member
    assert zchunk.blob[-8:] == b"GnUlInUx" and "io.containers.zstd-chunked.manifest-position" in zchunk.annotations
    assert all("containerd.io/snapshot/stargz/toc.digest" in v.annotations for v in (esgz, zchunk))


def test_every_file_reads_back_and_the_formats_own_files_are_hidden(image: tuple[str, list[Variant]],
                                                                    tmp_path: Path) -> None:
    ref, variants = image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLazyWarning)
        fs = ImageFileSystem(image=ref, cache_dir=str(tmp_path / "cache"), use_cache=True, skip_instance_cache=True)
        try:
            assert fs.ls("/", detail=False) == ["app"]
            for v in variants:
                for name, data in v.want.items():
                    assert fs.cat(name) == data, name
            assert fs.readlink("app/link") == "f1-0.bin"  # the upper layer's
            # eStargz and stargz's zstd:chunked are read lazily, chunk by chunk
            assert [layer.lazy for layer in fs.image.layers] == [True, True]
            assert fs.image.stats()["layers_fetched_whole"] == 0
        finally:
            fs.close()


def _read_through_a_mount(ref: str, layers: list[Any], tmp_path: Path) -> None:
    """Mount ``ref`` and read every file of ``layers`` (the upper layer's copy where two hold one):
    the bytes the tars hold, no EIO."""
    import lazylayer

    want: dict[str, bytes] = {}
    for layer in layers:
        want.update(layer.want)
    where = tmp_path / "mnt"
    where.mkdir()
    with lazylayer.Mount(ref, str(where), cache=lazylayer.DiskCache(str(tmp_path / "cache"))) as m:
        assert sorted(os.listdir(where)) == ["app"]
        for name, data in want.items():
            assert (where / name).read_bytes() == data, name
        assert m.stats()["eio"] == 0


@needs_fuse
def test_through_the_mount(image: tuple[str, list[Variant]], tmp_path: Path) -> None:
    _read_through_a_mount(*image, tmp_path)


def test_skopeo_zstd_chunked_reads_back_and_converts(tmp_path: Path) -> None:
    """Debian's skopeo (1.9.3) writes zstd:chunked: zstd frames per file, the TOC in a skippable
    frame, the io.containers.zstd-chunked annotations; every file reads back as the tar has it.
    Its stream lacks the source tar's last zero blocks while the config keeps the source's diff_id
    (checked here): reading and converting put them back, and the converted layer's tar has that
    diff_id exactly."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    members = _files(10, 7)
    tar = images.make_tar(members)
    src = images.build_layout(str(tmp_path / "src"), [tar], tag="v1")
    dst = tmp_path / "dst"
    subprocess.run(["skopeo", "copy", "-q", "--dest-compress-format", "zstd:chunked", src, f"oci:{dst}:v1"],
                   check=True, capture_output=True)
    index = json.loads((dst / "index.json").read_text())
    manifest = json.loads((dst / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    layer = manifest["layers"][0]
    assert any(k.startswith("io.containers.zstd-chunked") for k in layer.get("annotations", {}))
    stream = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO((dst / "blobs" / "sha256" / layer["digest"][7:]).read_bytes()), read_across_frames=True).read()
    assert stream != tar and tar.startswith(stream) and not tar[len(stream):].strip(b"\0")  # zeros dropped
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLazyWarning)  # read lazily: no warning
        fs = ImageFileSystem(image=f"oci:{dst}:v1", use_cache=False, skip_instance_cache=True)
        try:
            assert fs.image.layers[0].lazy and fs.image.stats()["layers_fetched_whole"] == 0
            for m, data in members:
                if m.isreg():
                    assert fs.cat(m.name) == data, m.name
            assert fs.ls("/", detail=False) == ["app"]
        finally:
            fs.close()

    from lazylayer.convert import Converter

    Converter(progress=False).convert(f"oci:{dst}:v1", f"oci:{tmp_path / 'lazy'}:v1")
    lazy = tmp_path / "lazy"
    index = json.loads((lazy / "index.json").read_text())
    manifest = json.loads((lazy / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((lazy / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_text())
    blob = (lazy / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]).read_bytes()
    out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    assert out == tar and images.sha256(out) == config["rootfs"]["diff_ids"][0]


# ---------------------------------------------------------------- the eStargz TOC (item 1, first half)


def test_the_estargz_toc_is_found_checked_and_parsed(image: tuple[str, list[Variant]]) -> None:
    """read_toc on a blob the reference library wrote: two range reads, the entries as the tar has
    them (the format's own files left out), each file's chunks tiling it, each chunk's gzip member
    inflating to the file's bytes with the chunkDigest's sha256; the prioritized files in order."""
    import hashlib
    import zlib

    from lazylayer.format import estargz

    _, (esgz, _) = image
    reads = []

    def fetch(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return esgz.blob[offset:offset + size]

    toc = estargz.read_toc(fetch, len(esgz.blob), esgz.annotations[estargz.ANNOTATION_TOC_DIGEST])
    assert len(reads) == 2
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(esgz.blob))) as t:
        members = {m.name: m for m in t.getmembers() if m.name not in estargz.HIDDEN}
    assert [e["name"] for e in toc.entries] == list(members)
    for e in toc.entries:
        m = members[e["name"]]
        assert e["mode"] == m.mode and e.get("size", 0) == (m.size if m.isreg() else 0)
        assert e["type"] == ("reg" if m.isreg() else "dir" if m.isdir() else "symlink")
        assert e.get("linkname", "") == m.linkname
    assert toc.prioritized == ["app/f0-3.bin", "app/f0-1.bin"]
    multi = 0
    for k, chunks in toc.chunks.items():
        data = esgz.want[toc.entries[k]["name"]]
        name = toc.entries[k]["name"]
        assert sum(c.size for c in chunks) == len(data)
        multi += len(chunks) > 1
        for c in chunks:
            got = zlib.decompressobj(31).decompress(esgz.blob[c.offset:c.end], c.size)[:c.size]
            assert got == data[c.file_offset:c.file_offset + c.size], name
            assert "sha256:" + hashlib.sha256(got).hexdigest() == c.digest
    assert multi >= 2  # files over the 64 KiB chunk size are in several chunks


def test_a_hostile_estargz_blob_or_toc_is_refused(image: tuple[str, list[Variant]]) -> None:
    import json as _json

    from lazylayer import errors
    from lazylayer.format import estargz

    _, (esgz, _) = image
    blob, want = esgz.blob, esgz.annotations[estargz.ANNOTATION_TOC_DIGEST]

    def read(b: bytes, digest: str = want) -> Any:
        return estargz.read_toc(lambda o, n: b[o:o + n], len(b), digest)

    with pytest.raises(errors.IntegrityError, match="sha256"):
        read(blob, "sha256:" + "0" * 64)
    with pytest.raises(errors.FormatError, match="sha256: and 64 hex"):
        read(blob, "md5:abc")
    bad = bytearray(blob)
    bad[-51 + 16] ^= 0x01  # a hex digit of the offset: no longer hex, or elsewhere
    with pytest.raises(errors.FormatError):
        read(bytes(bad))
    with pytest.raises(errors.FormatError, match="not an eStargz blob"):
        read(blob[:-1])
    with pytest.raises(errors.FormatError, match="too small"):
        read(blob[-100:])
    off = estargz.parse_footer(blob[-51:], len(blob))
    with pytest.raises(errors.FormatError):  # the TOC member cut: it does not end at the footer
        read(blob[:off + 20] + blob[-51:].replace(b"%016x" % off, b"%016x" % off))
    # hostile JSON, vouched for by its digest all the same
    good = [{"name": "a", "type": "reg", "size": 3, "offset": 10, "chunkDigest": "sha256:" + "a" * 64}]
    assert estargz.parse_toc(_json.dumps({"version": 1, "entries": good}).encode(), 100).chunks[0][0].end == 100
    # a small chunk with nothing after it in a huge blob is never fetched with the rest of the blob
    far = estargz.parse_toc(_json.dumps({"version": 1, "entries": good}).encode(), 10 << 30).chunks[0][0]
    assert far.end - far.offset == 3 + 3 // 8 + (1 << 20)  # (size + size / 8 + LL_CHUNK_SPAN_SLACK)
    # nor is a run of small chunks, however far apart the TOC puts their members (each run: 2 * RUN_SIZE
    # of the blob at most)
    spread = [{"name": f"f{i}", "type": "reg", "size": 3, "offset": 10 + i * (60 << 10),
               "chunkDigest": "sha256:" + "a" * 64} for i in range(1000)]
    toc = estargz.parse_toc(_json.dumps({"version": 1, "entries": spread}).encode(), 1 << 40, runs=True)
    layer, rows = estargz.raw_layer(toc, "")
    from lazylayer.format.layer import Toc
    at = 0
    for f in Toc.from_frame(layer.toc_frame).frames:
        run = list(rows)[at:at + f.size // 3]
        at += len(run)
        assert run[-1].end - run[0].offset <= 2 * estargz.RUN_SIZE
    assert at == 1000 and len(Toc.from_frame(layer.toc_frame).frames) < 1000  # (runs were made)
    for entries, match in (
        ([{**good[0], "name": "../x"}], r"'\.\.'"),
        ([{**good[0], "offset": 100}], "at or past the TOC"),
        ([{**good[0], "chunkDigest": "sha256:xyz"}], "chunkDigest"),
        ([{**good[0], "innerOffset": 5}], "innerOffset"),
        ([{**good[0], "chunkSize": 2}], "hold 2 of its 3"),
        ([{**good[0], "chunkSize": 4}], "outside the file"),
        ([{**good[0], "size": -1}], "bad size"),
        ([{**good[0], "type": "socket"}], "unknown type"),
        ([{"name": "l", "type": "symlink"}], "without linkName"),
        ([{"name": "b", "type": "chunk", "offset": 1}], "does not follow"),
        ([{**good[0], "modtime": "yesterday"}], "RFC 3339"),
        ([{**good[0], "xattrs": {"user.a": 5}}], "xattrs"),
    ):
        with pytest.raises(errors.FormatError, match=match):
            estargz.parse_toc(_json.dumps({"version": 1, "entries": entries}).encode(), 100)
    with pytest.raises(errors.FormatError, match="version 1"):
        estargz.parse_toc(b'{"version": 2, "entries": []}', 100)


# ---------------------------------------------------------------- eStargz read lazily (item 1)


def _esgz_layout(work: Path, v: Variant, blob: bytes | None = None, annotations: dict | None = None) -> str:
    """A one-layer OCI layout of variant ``v`` (or of ``blob`` in its place, with its annotations)."""
    return _layout(work, [(blob if blob is not None else v.blob, v.media_type,
                           annotations if annotations is not None else v.annotations, v.diff_id)])


@pytest.mark.parametrize("runs", [False, True], ids=["chunks", "runs"])
def test_an_estargz_layer_is_read_chunk_by_chunk(image: tuple[str, list[Variant]], tmp_path: Path,
                                                 runs: bool) -> None:
    """No warning, nothing fetched whole: reading one file reads its chunks' members and nothing
    else — with ``chunk_runs`` (the mounts'), the runs of small chunks they are in, one frame and
    one request each, their members end to end; each chunk is checked against its chunkDigest;
    the prioritized files are the plan."""
    from lazylayer.format import estargz

    _, (esgz, _) = image
    ref = _esgz_layout(tmp_path / "one", esgz)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLazyWarning)
        from lazylayer.core import BlockCache

        # (a memory cache of its own: another test's read of this image may hold the frames decoded)
        fs = ImageFileSystem(image=ref, use_cache=False, skip_instance_cache=True, memory_cache=BlockCache(64 << 20),
                             chunk_runs=runs)
        try:
            img = fs.image
            assert img.layers[0].lazy and img.stats()["layers_fetched_whole"] == 0
            toc = estargz.read_toc(lambda o, n: esgz.blob[o:o + n], len(esgz.blob),
                                   esgz.annotations[estargz.ANNOTATION_TOC_DIGEST])
            k = next(k for k, e in enumerate(toc.entries) if e["name"] == "app/f0-0.bin")
            assert fs.cat("app/f0-0.bin") == esgz.want["app/f0-0.bin"]
            s = img.stats()
            # its chunks (2 or more), in the frames that hold them
            node = img.tree.resolve("/app/f0-0.bin").inode
            src, frames = img.layers[0].source, img.layers[0].toc.frames
            held = [i for i, f in enumerate(frames) if f.offset < node.offset + node.size
                    and f.offset + f.size > node.offset]
            rows = [src._rows(i) for i in held]
            assert len(toc.chunks[k]) >= 2 and all(c in [src._chunk_list[j] for r in rows for j in r]
                                                   for c in toc.chunks[k])
            assert s["frames_local"] == len(held) < len(toc.chunks[k]) + 2
            assert s["bytes_local"] == sum(src._chunk_list[r[-1]].end - src._chunk_list[r[0]].offset for r in rows)
            assert any(len(r) > 1 for r in rows) if runs else len(held) == len(toc.chunks[k])  # (either can fail)
            plan = img.layers[0].toc.prefetch  # the prioritized files, in order
            sizes = [len(esgz.want[n]) for n in ("app/f0-3.bin", "app/f0-1.bin")]
            assert [n for _, n in plan] == sizes
        finally:
            fs.close()


@pytest.mark.parametrize("runs", [False, True], ids=["chunks", "runs"])
def test_a_tampered_estargz_chunk_or_toc_is_never_data(gen: Path, image: tuple[str, list[Variant]],
                                                       tmp_path: Path, runs: bool) -> None:
    """A flipped byte in a chunk's member is an IntegrityError, never data: in the compressed layer a
    zlib error (or, in a run decoded in C, which stops at the chunk's last byte, bytes that fail the
    chunkDigest); in one written with gzip level 0 (stored blocks), in a file's last chunk (its member
    goes on with the next tar header, so the member's CRC-32 is not reached), the bytes inflate fine,
    wrong, and only the chunkDigest stands in the way.  A TOC that is not the layer's is refused."""
    from lazylayer import errors
    from lazylayer.format import estargz

    _, (esgz, _) = image
    (tmp_path / "stored").mkdir()
    stored = Variant(gen, tmp_path / "stored", False, _files(8, 0), prioritized="app/f0-3.bin", level=0)
    for v, which, at, match in ((esgz, 0, 200, "not gzip|chunkDigest"), (stored, -1, 100, "chunkDigest")):
        toc = estargz.read_toc(lambda o, n: v.blob[o:o + n], len(v.blob), v.annotations[estargz.ANNOTATION_TOC_DIGEST])
        k = next(k for k, e in enumerate(toc.entries) if e["name"] == "app/f0-4.bin")
        c = toc.chunks[k][which]
        bad = bytearray(v.blob)
        bad[c.offset + at] ^= 0x20  # inside the chunk's data in its member
        fs = ImageFileSystem(image=_esgz_layout(tmp_path / f"bad{id(v)}", v, bytes(bad)), use_cache=False,
                             skip_instance_cache=True, chunk_runs=runs)
        try:
            with pytest.raises(errors.IntegrityError, match=match):
                fs.cat("app/f0-4.bin")
            # other files are intact, but for those that share a frame with it (with runs: a run of
            # small chunks is one frame, read and checked whole, as a frame of lazylayer's own format is)
            frames = fs.image.layers[0].toc.frames

            def frames_of(name: str) -> set[int]:
                node = fs.image.tree.resolve("/" + name).inode
                return {i for i, f in enumerate(frames) if f.offset < node.offset + node.size
                        and f.offset + f.size > node.offset}

            shared = 0
            for name in sorted(set(v.want) - {"app/f0-4.bin"}):
                if frames_of(name) & frames_of("app/f0-4.bin") and v.want[name]:
                    shared += 1
                    with pytest.raises(errors.IntegrityError, match=match):
                        fs.cat(name)
                else:
                    assert fs.cat(name) == v.want[name]
            assert bool(shared) == runs
        finally:
            fs.close()
    wrong = {**esgz.annotations, estargz.ANNOTATION_TOC_DIGEST: "sha256:" + "1" * 64}
    with pytest.raises(errors.IntegrityError, match="TOC"):
        ImageFileSystem(image=_esgz_layout(tmp_path / "toc", esgz, annotations=wrong), use_cache=False,
                        skip_instance_cache=True).image


# ---------------------------------------------------------------- zstd:chunked read lazily (item 2)

ZC = "io.github.containers.zstd-chunked."


def _skippable(payload: bytes) -> bytes:
    return b"\x50\x2a\x4d\x18" + len(payload).to_bytes(4, "little") + payload


def _containers_zstd_chunked(members: list[Any], chunk: int = 65536) -> tuple[bytes, dict[str, str], bytes]:
    """A zstd:chunked layer as containers/storage writes it since 2023, built by hand from its
    docs/containers-storage-zstd-chunked.md (no Debian tool writes this dialect): each tar header
    run in a zstd frame of its own, each chunk of a file's content too (``chunk`` bytes; a run of
    zero chunks one ``zeros`` chunk; a file of one chunk left whole, named by its ``digest``), then
    three skippable frames: the TOC (zstd JSON), the tar-split (here a placeholder: lazylayer never
    reads it) and the 64-byte footer ending in GNUlInUx; the ``io.github.containers`` annotations.
    (The blob, its annotations, the tar its frames decompress to.)"""
    import hashlib
    import struct

    tar = images.make_tar(members)
    cctx = zstandard.ZstdCompressor(level=3)
    out = bytearray()
    entries: list[dict[str, Any]] = []
    at = 0
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        infos = t.getmembers()
    for m in infos:
        e: dict[str, Any] = {"type": {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink"}
                             .get(m.type, "reg"), "name": m.name + ("/" if m.isdir() else ""), "mode": m.mode,
                             "modtime": "2023-11-14T22:13:20Z"}
        if m.linkname:
            e["linkName"] = m.linkname
        entries.append(e)
        if not (m.isreg() and m.size):
            continue
        out += cctx.compress(tar[at:m.offset_data])  # the previous file's padding and this header
        data = tar[m.offset_data:m.offset_data + m.size]
        e.update(size=m.size, digest="sha256:" + hashlib.sha256(data).hexdigest())
        pieces: list[list[Any]] = []  # [offset in file, bytes, zeros?]
        for pos in range(0, m.size, chunk):
            piece = data[pos:pos + chunk]
            zero = len(piece) >= 1024 and not piece.strip(b"\0")
            if pieces and zero and pieces[-1][2]:
                pieces[-1][1] += piece
            else:
                pieces.append([pos, piece, zero])
        for k, (pos, piece, zero) in enumerate(pieces):
            c = e if k == 0 else {"type": "chunk", "name": m.name}
            c["offset"] = len(out)
            if len(pieces) > 1:
                c.update(chunkSize=len(piece), chunkOffset=pos,
                         chunkDigest="sha256:" + hashlib.sha256(piece).hexdigest())
                if zero:
                    c["chunkType"] = "zeros"
                if k:
                    entries.append(c)
            out += cctx.compress(piece)
        e["endOffset"] = len(out)
        at = m.offset_data + m.size
    out += cctx.compress(tar[at:])
    toc = json.dumps({"version": 1, "entries": entries}).encode()
    ztoc = cctx.compress(toc)
    out += _skippable(ztoc)
    toc_at = len(out) - len(ztoc)
    split = cctx.compress(b"")  # the tar-split placeholder
    out += _skippable(split)
    split_at = len(out) - len(split)
    out += _skippable(struct.pack("<7Q8s", toc_at, len(ztoc), len(toc), 1, split_at, len(split), 0, b"GNUlInUx"))
    ann = {ZC + "manifest-checksum": "sha256:" + hashlib.sha256(ztoc).hexdigest(),
           ZC + "manifest-position": f"{toc_at}:{len(ztoc)}:{len(toc)}:1",
           ZC + "tarsplit-position": f"{split_at}:{len(split)}:0"}
    return bytes(out), ann, tar


class ZLayer:
    """A zstd:chunked layer: its blob, annotations, diff_id and the files its tar holds."""

    def __init__(self, blob: bytes, annotations: dict[str, str], diff_id: str, members: list[Any]) -> None:
        self.blob, self.annotations, self.diff_id = blob, annotations, diff_id
        self.want = {m.name: data for m, data in members if m.isreg()}


def _zlayout(path: Path, layers: list[ZLayer], blobs: list[bytes] | None = None,
             annotations: list[dict[str, str]] | None = None) -> str:
    """A layout of zstd:chunked ``layers`` (or of ``blobs`` in their place, with ``annotations``)."""
    return _layout(path, [((blobs or [z.blob for z in layers])[i], images.LAYER_MEDIA["zstd"],
                           (annotations or [z.annotations for z in layers])[i], z.diff_id)
                          for i, z in enumerate(layers)])


@pytest.fixture(scope="module")
def zchunked(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[ZLayer]]:
    """Two zstd:chunked layers: skopeo's (files in content-defined chunks, zeros chunks) and the
    current dialect built by hand (a 3 MiB run of zeros between two data chunks: frames of 1 MiB
    zeros; a hardlink)."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    work = tmp_path_factory.mktemp("zchunked")
    members = _files(10, 11)
    src = images.build_layout(str(work / "src"), [images.make_tar(members)], tag="v1")
    subprocess.run(["skopeo", "copy", "-q", "--dest-compress-format", "zstd:chunked", src, f"oci:{work / 'sk'}:v1"],
                   check=True, capture_output=True)
    index = json.loads((work / "sk" / "index.json").read_text())
    manifest = json.loads((work / "sk" / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((work / "sk" / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_text())
    desc = manifest["layers"][0]
    skopeo = ZLayer((work / "sk" / "blobs" / "sha256" / desc["digest"][7:]).read_bytes(), desc["annotations"],
                    config["rootfs"]["diff_ids"][0], members)
    members = _files(6, 12) + [images.reg("app/zeros.bin", b"z" * 5000 + bytes(3 << 20) + b"end"),
                               images.entry("app/hard", tarfile.LNKTYPE, "app/zeros.bin")]
    blob, ann, tar = _containers_zstd_chunked(members)
    current = ZLayer(blob, ann, images.sha256(tar), members)
    return _zlayout(work / "layout", [skopeo, current]), [skopeo, current]


def test_the_hand_built_dialect_is_what_the_spec_says(zchunked: tuple[str, list[ZLayer]]) -> None:
    """The fixture is a valid tar+zstd layer (the skippable frames skipped by any zstd reader), ends
    with the 64-byte GNUlInUx footer, and its zeros chunk is there to be tested."""
    _, (_, current) = zchunked
    stream = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(current.blob), read_across_frames=True).read()
    assert images.sha256(stream) == current.diff_id
    assert current.blob[-8:] == b"GNUlInUx" and current.blob[-72:-64] == b"\x50\x2a\x4d\x18\x40\0\0\0"
    assert '"chunkType": "zeros"' in zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(current.blob[int(current.annotations[ZC + "manifest-position"].split(":")[0]):])).read().decode()


def test_zstd_chunked_layers_are_read_lazily(zchunked: tuple[str, list[ZLayer]]) -> None:
    """Both dialects: no warning, nothing fetched whole, every file as the tar has it; reading one
    file reads its chunks' frames and nothing else, and a run of zeros is not fetched at all."""
    from lazylayer.format import zstdchunked

    ref, layers = zchunked
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLazyWarning)
        fs = ImageFileSystem(image=ref, use_cache=False, skip_instance_cache=True)
        try:
            img = fs.image
            assert [layer.lazy for layer in img.layers] == [True, True]
            assert fs.cat("app/zeros.bin") == layers[1].want["app/zeros.bin"]
            toc = zstdchunked.read_toc(lambda o, n: layers[1].blob[o:o + n],
                                       {**img.layers[1].descriptor})
            k = next(k for k, e in enumerate(toc.entries) if e["name"] == "app/zeros.bin")
            data = [c for c in toc.chunks[k] if c.codec != "zeros"]
            zeros = [c for c in toc.chunks[k] if c.codec == "zeros"]  # (a run of zeros: in 1 MiB pieces)
            assert len(data) == 2 and sum(c.size for c in zeros) > 2 << 20 and max(c.size for c in zeros) <= 1 << 20
            assert img.stats()["bytes_local"] == sum(c.end - c.offset for c in data)  # zeros: not read
            assert fs.info("app/hard")["nlink"] == 2 and fs.cat("app/hard") == fs.cat("app/zeros.bin")
            for z in layers:
                for name, want in z.want.items():
                    if name not in layers[1].want or z is layers[1]:  # (the upper layer's copy wins)
                        assert fs.cat(name) == want, name
            assert img.stats()["layers_fetched_whole"] == 0
        finally:
            fs.close()


@needs_fuse
def test_zstd_chunked_through_the_mount(zchunked: tuple[str, list[ZLayer]], tmp_path: Path) -> None:
    _read_through_a_mount(*zchunked, tmp_path)


def test_a_tampered_zstd_chunked_chunk_or_toc_is_never_data(zchunked: tuple[str, list[ZLayer]],
                                                            tmp_path: Path) -> None:
    """A flipped byte in a chunk's frame is an integrity error, never data (a zstd error, or bytes
    that do not match the chunkDigest); a TOC that is not the one the manifest-checksum names is
    refused before it is decompressed; hostile manifest-positions are format errors."""
    from lazylayer import errors
    from lazylayer.format import zstdchunked

    _, (_, z) = zchunked
    desc = {"mediaType": images.LAYER_MEDIA["zstd"], "size": len(z.blob), "annotations": z.annotations}
    toc = zstdchunked.read_toc(lambda o, n: z.blob[o:o + n], desc)
    k = next(k for k, e in enumerate(toc.entries) if e["name"] == "app/zeros.bin")
    c = toc.chunks[k][0]
    for at in (c.offset + 20, c.end - 10):  # in the frame's data: a zstd error or wrong bytes
        bad = bytearray(z.blob)
        bad[at] ^= 0x20
        fs = ImageFileSystem(image=_zlayout(tmp_path / f"bad{at}", [z], [bytes(bad)]), use_cache=False,
                             skip_instance_cache=True)
        try:
            with pytest.raises(errors.IntegrityError):
                fs.cat("app/zeros.bin")
            assert fs.cat("app/f12-1.bin") == z.want["app/f12-1.bin"]  # other files are intact
        finally:
            fs.close()
    off, n, raw, _ = (int(x) for x in z.annotations[ZC + "manifest-position"].split(":"))
    bad = bytearray(z.blob)
    bad[off + n // 2] ^= 1
    with pytest.raises(errors.IntegrityError, match="manifest-checksum|checksum the layer names"):
        ImageFileSystem(image=_zlayout(tmp_path / "toc", [z], [bytes(bad)]), use_cache=False,
                        skip_instance_cache=True).image

    def read(**ann: str) -> Any:
        d = {**desc, "annotations": {**z.annotations, **{ZC + k.replace("_", "-"): v for k, v in ann.items()}}}
        return zstdchunked.read_toc(lambda o, m: z.blob[o:o + m], d)

    for position, match in (("x", "offset:length"), (f"{off}:{n}:{raw}", "offset:length"),
                            (f"{off}:{n}:{raw}:2", "type 2"), (f"{len(z.blob)}:{n}:{raw}:1", "not inside"),
                            (f"4:{n}:{raw}:1", "not inside"), (f"{off}:{n}:{100 << 20}:1", "larger than"),
                            (f"{off}:{n}:{raw - 1}:1", f"not the {raw - 1}"), (f"{off}:{n}:{raw + 1}:1", "holds")):
        with pytest.raises(errors.FormatError, match=match):
            read(manifest_position=position)
    with pytest.raises(errors.FormatError, match="sha256: and 64 hex"):
        read(manifest_checksum="md5:x")
    # hostile JSON: a zeros chunk that is not zeros, an unknown chunkType, an endOffset out of place
    good = {"name": "a", "type": "reg", "size": 2048, "offset": 10, "chunkSize": 2048,
            "chunkDigest": "sha256:" + "a" * 64, "endOffset": 20}
    from lazylayer.format import estargz
    assert estargz.parse_toc(json.dumps({"version": 1, "entries": [good]}).encode(), 100,
                             codec="zstd").chunks[0][0].end == 20
    for entry, match in (({**good, "chunkType": "zeros"}, "not that of 2048 zero bytes"),
                         ({**good, "chunkType": "holes"}, "unknown chunkType"),
                         ({**good, "endOffset": 101}, "endOffset"), ({**good, "endOffset": 10}, "endOffset")):
        with pytest.raises(errors.FormatError, match=match):
            estargz.parse_toc(json.dumps({"version": 1, "entries": [entry]}).encode(), 100, codec="zstd")
    zero = {"name": "z", "type": "reg", "size": 1 << 40, "offset": 10, "endOffset": 20, "chunkSize": 1 << 40,
            "chunkDigest": "sha256:" + "b" * 64, "chunkType": "zeros"}
    many = [{**zero, "name": f"z{i}"} for i in range(2)]  # 2 TiB of zeros: 2 M frames of 1 MiB, over the limit
    with pytest.raises(errors.LimitError, match="more than 1000000 chunks"):
        estargz.parse_toc(json.dumps({"version": 1, "entries": many}).encode(), 100, codec="zstd")
    big = {**good, "size": 65 << 20, "chunkSize": 65 << 20}  # over one frame, starting its file: in pieces
    toc = estargz.parse_toc(json.dumps({"version": 1, "entries": [big]}).encode(), 100, codec="zstd")
    assert [c.codec for c in toc.chunks[0]] == ["zstd-whole"] * 17  # (65 MiB in 4 MiB pieces)
    second = [{**good, "size": 2048 + (65 << 20)},  # over one frame, not starting its file: fetched whole
              {"name": "a", "type": "chunk", "offset": 15, "chunkOffset": 2048, "chunkSize": 65 << 20,
               "chunkDigest": "sha256:" + "c" * 64}]
    huge = {**good, "size": 1 << 37, "chunkSize": 1 << 37}  # over MAX_WHOLE_SIZE: fetched whole
    for entries in (second, [huge]):
        with pytest.raises(estargz.NotSupported, match="more than"):
            estargz.parse_toc(json.dumps({"version": 1, "entries": entries}).encode(), 100, codec="zstd")


def test_a_chunked_layers_index_is_kept_in_the_disk_cache(image: tuple[str, list[Variant]], registry: Any,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """From a registry: the first open reads each chunked layer's TOC and keeps its raw layer in
    the disk cache, and the image's index beside it; a later open (another process: the mount's
    fetcher, the next mount) reads neither TOC again nor builds the index; a damaged copy is never
    trusted: it is said, and the TOC read again."""
    from lazylayer.format import estargz, zstdchunked

    layout, variants = image
    registry.push(layout, "peer-formats/chunked:v1")
    ref = f"docker://{registry.host}/peer-formats/chunked:v1"
    calls: list[str] = []
    for mod in (estargz, zstdchunked):
        real = mod.read_toc
        monkeypatch.setattr(mod, "read_toc", lambda *a, _real=real, _m=mod.__name__, **k: calls.append(_m) or
                            _real(*a, **k))

    def read_all() -> None:
        fs = ImageFileSystem(image=ref, cache_dir=str(tmp_path / "cache"), use_cache=True, skip_instance_cache=True)
        try:
            for v in variants:
                for name, data in v.want.items():
                    assert fs.cat(name) == data, name
        finally:
            fs.close()

    from lazylayer.core import Index

    real_build = Index.build.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Index, "build", classmethod(lambda cls, *a, **k: calls.append("index") or
                                                     real_build(cls, *a, **k)))
    read_all()
    assert sorted(calls) == ["index", "lazylayer.format.estargz", "lazylayer.format.zstdchunked"]
    assert len(list((tmp_path / "cache").rglob("files/index-*"))) == 1  # (keyed by the chunk tables' frames too)
    calls.clear()
    read_all()
    assert calls == []  # no TOC read, no index built: both from the disk cache
    kept = sorted((tmp_path / "cache").rglob("files/chunked-*"))
    assert len(kept) == 2
    data = bytearray(kept[0].read_bytes())
    data[len(data) // 2] ^= 1
    kept[0].write_bytes(bytes(data))
    read_all()
    assert len(calls) == 1 and "damaged" in caplog.text


def test_read_ahead_of_chunks_counts_bytes(gen: Path, registry: Any, tmp_path: Path) -> None:
    """From a registry, with a disk cache: a miss of one chunk fetches that chunk alone, and
    read-ahead after it is its window's bytes, not its count of mean-sized chunks: past 60 files
    of 1 KiB come ten of 4 MiB (a mean chunk of ~0.7 MiB, so 4 x 2 MiB of mean chunks would be
    12 chunks, 40 MiB)."""
    import lazylayer.prefetch as prefetch
    from lazylayer.core import BlockCache
    from lazylayer.image import DiskCache, Image
    from lazylayer.image.frames import ChunkSource

    rng = random.Random(5)
    d = tarfile.TarInfo("app")
    d.type, d.mode = tarfile.DIRTYPE, 0o755
    members: list[Any] = [(d, None)]
    members += [images.reg(f"app/s{i:02d}", rng.randbytes(1024)) for i in range(60)]
    members += [images.reg(f"app/z{i:02d}", rng.randbytes(4 << 20)) for i in range(10)]
    (tmp_path / "v").mkdir()
    v = Variant(gen, tmp_path / "v", False, members, prioritized="", level=1, chunk=4 << 20)
    v.blob_path.unlink()
    registry.push(_esgz_layout(tmp_path / "layout", v), "peer-formats/groups:v1")
    ref = f"docker://{registry.host}/peer-formats/groups:v1"

    with Image(ref, cache=DiskCache(tmp_path / "c1")) as img:
        src = img.layers[0].source
        assert isinstance(src, ChunkSource)
        node = img.tree.resolve("/app/s10")
        assert img.pread(node, 2048, 0) == v.want["app/s10"]
        assert img.stats()["frames_fetched"] == 1
        assert max(f.size for f in img.layers[0].toc.frames) == 4 << 20

    with Image(ref, cache=DiskCache(tmp_path / "c2")) as img:
        prefetch.start(img, None)
        assert img.pread(img.tree.resolve("/app/s59"), 2048, 0) == v.want["app/s59"]  # next to the big ones
        wait_for(img.prefetcher.idle)
        got = img.stats()["prefetched_bytes"]
        assert 0 < got <= 4 * (2 << 20) + (4 << 20), got  # 4 frames' worth (+ the chunk that crosses it)

    # with chunk_runs (the mounts'), the 60 small files are one frame: one request for them all
    with Image(ref, cache=DiskCache(tmp_path / "c3"), memory_cache=BlockCache(64 << 20), chunk_runs=True) as img:
        assert [f.size for f in img.layers[0].toc.frames] == [60 << 10] + [4 << 20] * 10
        for name in ("app/s10", "app/s59", "app/s00"):
            assert img.pread(img.tree.resolve("/" + name), 2048, 0) == v.want[name]
        assert img.stats()["frames_fetched"] == 1


def _convert_both(data: bytes, toc_offset: int, codec: str, hidden: frozenset) -> tuple[Any, Any]:
    """A TOC through the Python model (tests/chunked_model.py) and through ll_chunked_convert: each
    as ("ok", TOC doc, chunks) or (the exception's class, its message)."""
    import chunked_model

    from lazylayer import errors
    from lazylayer.format import estargz
    from lazylayer.format.layer import Toc

    out = []
    for mod in (chunked_model, estargz):
        try:
            toc = mod.parse_toc(data, toc_offset, codec=codec, hidden=hidden)
            layer, chunks = mod.raw_layer(toc, "sha256:" + "1" * 64)
            out.append(("ok", json.loads(Toc.from_frame(layer.toc_frame).to_json()), list(chunks)))
        except errors.FormatError as exc:
            out.append((type(exc), str(exc)))
    return out[0], out[1]


def test_runs_of_small_chunks_are_one_frame_each(image: tuple[str, list[Variant]],
                                                 zchunked: tuple[str, list[ZLayer]]) -> None:
    """Runs made by the C converter (parse_toc with runs) on real layers' TOCs: every frame is one
    chunk (named by its digest; a big chunk's piece by zeros) or a run of chunks — each at most
    RUN_CHUNK, gzip, zstd or zeros, each chunk's bytes at most RUN_GAP after the last one's in the
    blob, RUN_SIZE of data at most, named by the sha256 of its chunk table — that stops only where
    the next chunk could not join it; the frames tile the stream as the chunks do."""
    from lazylayer.core import chunk
    from lazylayer.format import estargz, zstdchunked
    from lazylayer.format.layer import Toc

    blobs = [(v.blob, {"mediaType": v.media_type, "size": len(v.blob), "annotations": v.annotations})
             for v in image[1]]
    blobs += [(z.blob, {"mediaType": images.LAYER_MEDIA["zstd"], "size": len(z.blob), "annotations": z.annotations})
              for z in zchunked[1]]
    runs = 0
    for blob, desc in blobs:
        layer, rows = estargz.raw_layer(zstdchunked.read_chunked_toc(lambda o, n, b=blob: b[o:o + n], desc,
                                                                     runs=True), "")
        frames = Toc.from_frame(layer.toc_frame).frames
        chunks, r = list(rows), 0
        for f in frames:
            first = r
            left = f.size
            while left > 0:
                left -= chunks[r].size
                r += 1
            assert left == 0
            run = chunks[first:r]
            if len(run) == 1:
                c = run[0]
                assert f.sha256 == (estargz.ZERO_SHA256 if c.codec.endswith("-whole") else c.digest[7:])
                continue
            runs += 1
            data = [c for c in run if c.codec != "zeros"]
            base = data[0].offset if data else 0
            table = b"".join(chunk.run_entry(c.offset - base if c.codec != "zeros" else 0,
                                             c.end - c.offset if c.codec != "zeros" else 0, c.size, c.codec,
                                             bytes.fromhex(c.digest[7:])) for c in run)
            assert f.sha256 == hashlib.sha256(table).hexdigest() and f.size <= estargz.RUN_SIZE  # named by it
            assert all(c.size <= estargz.RUN_CHUNK and c.codec in ("gzip", "zstd", "zeros") for c in run)
            data = [c for c in run if c.codec != "zeros"]
            assert all(a.end <= b.offset <= a.end + estargz.RUN_GAP for a, b in zip(data, data[1:]))
            if r < len(chunks):  # (it stopped for a reason)
                n = chunks[r]
                assert n.codec not in ("gzip", "zstd", "zeros") or n.size > estargz.RUN_CHUNK or \
                    f.size + n.size > estargz.RUN_SIZE or \
                    (n.codec != "zeros" and data and not data[-1].end <= n.offset <= data[-1].end + estargz.RUN_GAP)
        assert r == len(chunks)
    assert runs  # (the check can fail)


def test_the_c_converter_agrees_with_the_python_model(image: tuple[str, list[Variant]],
                                                      zchunked: tuple[str, list[ZLayer]]) -> None:
    """ll_chunked_convert (csrc/chunked.c) against the Python model it replaced: the TOCs of real
    layers (stargz-snapshotter's eStargz and zstd:chunked, skopeo's zstd:chunked, the hand-built
    dialect) make the same raw layer — TOC and chunk table — and 3,000 random mutations of a real
    TOC's entries (fields deleted or replaced by values of every JSON type, entries duplicated or
    dropped) are refused with the same class of error (FormatError, LimitError, NotSupported) or
    make the same raw layer; every raw layer made is one the C index takes or refuses in words."""
    from lazylayer import errors
    from lazylayer.core import Index
    from lazylayer.format import estargz, zstdchunked

    tocs = []  # (the TOC JSON, its offset, codec, hidden names) of every real layer

    def capture(read: Any, desc: dict[str, Any]) -> None:
        got: list[tuple[Any, ...]] = []
        with pytest.MonkeyPatch.context() as mp:
            for mod in (estargz, zstdchunked):
                real = mod.parse_toc
                mp.setattr(mod, "parse_toc", lambda data, off, codec="gzip", hidden=estargz.HIDDEN, runs=False,
                           _r=real: got.append((bytes(data), off, codec, hidden)) or _r(data, off, codec, hidden))
            zstdchunked.read_chunked_toc(read, desc)
        tocs.extend(got)

    for v in image[1]:
        capture(lambda o, n, b=v.blob: b[o:o + n], {"mediaType": v.media_type, "size": len(v.blob),
                                                     "annotations": v.annotations})
    for z in zchunked[1]:
        capture(lambda o, n, b=z.blob: b[o:o + n], {"mediaType": images.LAYER_MEDIA["zstd"], "size": len(z.blob),
                                                     "annotations": z.annotations})
    assert len(tocs) == len(image[1]) + len(zchunked[1])
    for data, off, codec, hidden in tocs:
        model, c = _convert_both(data, off, codec, hidden)
        assert model[0] == "ok" and model == c
    data, off, _, _ = tocs[-1]
    entries = json.loads(data)["entries"]
    rng = random.Random(18)
    values = [None, True, False, -1, 0, 0.0, 1, 2**63, 1.5, "", "x", "../x", "/", "sha256:" + "0" * 64, "zeros",
              "chunk", "reg", [], {}, {"a": 1}, {"user.x": "QQ=="}, ["x"], "2023-13-45T99:99:99Z",
              "2021-06-01T10:20:30.5+02:00", "a" * 5000]
    outcomes: dict[Any, int] = {}
    for _ in range(3000):
        es = [dict(e) for e in entries]
        for _ in range(rng.randint(1, 4)):
            e = rng.choice(es)
            op = rng.random()
            if op < 0.4:
                e[rng.choice(list(e) + ["chunkType", "endOffset", "innerOffset", "xattrs", "uid", "linkName"])] = \
                    rng.choice(values)
            elif op < 0.6 and len(e) > 1:
                del e[rng.choice(list(e))]
            elif op < 0.8:
                es.insert(rng.randrange(len(es) + 1), dict(rng.choice(es)))
            elif len(es) > 1:
                es.remove(e)
        doc = json.dumps({"version": 1, "entries": es}).encode()
        model, c = _convert_both(doc, off, "zstd", frozenset())
        assert model[0] == c[0], (model[:2], c[:2])
        if model[0] == "ok":
            assert model == c
            try:
                Index.build([estargz.raw_layer(estargz.parse_toc(doc, off, codec="zstd", hidden=frozenset()),
                                               "sha256:" + "1" * 64)[0]])
            except errors.FormatError:
                pass
        outcomes[model[0]] = outcomes.get(model[0], 0) + 1
    assert outcomes.get("ok", 0) > 100 and outcomes.get(errors.FormatError, 0) > 100, outcomes


@pytest.mark.parametrize("runs", [False, True], ids=["chunks", "runs"])
def test_chunks_fetched_ahead_are_kept_encoded_and_checked_when_read(image: tuple[str, list[Variant]],
                                                                     registry: Any, tmp_path: Path,
                                                                     runs: bool) -> None:
    """Fetching ahead (what plans, read-ahead and fill call) stores each chunk as it came — a
    ``.z`` file under its data's digest, neither inflated nor hashed, or with the run of small
    chunks it is in, one ``.z`` file (``LL_CHUNK_RUN``: the run's table and compressed bytes)
    under the sha256 of the table; a later reader (the C reader, another Image on the same cache)
    decodes and checks them and fetches nothing.  A damaged one is found when read, removed, and
    fetched again: the bytes read are right."""
    import glob

    from lazylayer.core import BlockCache
    from lazylayer.core._lib import lib
    from lazylayer.image import DiskCache, Image
    from lazylayer.image.frames import ChunkSource

    layout, variants = image
    registry.push(layout, "peer-formats/encoded:v1")
    ref = f"docker://{registry.host}/peer-formats/encoded:v1"
    want = {k: v for var in variants for k, v in var.want.items()}
    cache = DiskCache(tmp_path / "cache")
    with Image(ref, cache=cache, chunk_runs=runs) as img:
        for layer in img.layers:
            assert isinstance(layer.source, ChunkSource)
            n = layer.source.prefetch(range(len(layer.toc.frames)))
            assert n > 0 and layer.source.prefetch(range(len(layer.toc.frames))) == 0  # there now
    frames = glob.glob(str(tmp_path / "cache" / "v1" / "frames" / "*" / "*"))
    encoded = [p for p in frames if p.endswith(".z")]
    run_files = [p for p in encoded if Path(p).read_bytes()[8] == lib.LL_CHUNK_RUN]
    assert len(encoded) == len(frames) and encoded and bool(run_files) == runs  # nothing stored decoded
    assert not glob.glob(str(tmp_path / "cache" / "v1" / "files" / "run-*"))

    def read_all(img: Image) -> None:
        for name, data in want.items():
            assert img.pread(img.tree.resolve("/" + name), len(data) + 1, 0) == data, name

    # (memory caches of their own: other tests' reads of these layers may hold their frames decoded)
    with Image(ref, cache=DiskCache(tmp_path / "cache"), memory_cache=BlockCache(64 << 20), chunk_runs=runs) as img:
        read_all(img)
        s = img.stats()
        assert s["frames_fetched"] == 0 and s["frames_from_disk"] > 0
        assert s["host_calls"] == 0  # (every frame, runs included, decoded and checked by the C reader itself)

    # damage one chunk's compressed bytes, then a run's: found when read, removed, fetched again
    single = [p for p in encoded if p not in run_files]
    for victim in [max(files, key=os.path.getsize) for files in (single, run_files) if files]:
        blob = bytearray(Path(victim).read_bytes())
        blob[len(blob) // 2] ^= 0x55
        Path(victim).write_bytes(bytes(blob))
        with Image(ref, cache=DiskCache(tmp_path / "cache"), memory_cache=BlockCache(64 << 20),
                   chunk_runs=runs) as img:
            read_all(img)
            s = img.stats()
            assert s["frames_fetched"] == 1, s
        assert Path(victim).read_bytes() != bytes(blob)  # the good one in its place


def test_a_file_too_big_for_one_frame_is_read_through_a_checked_copy(registry: Any, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """zstd:chunked leaves big files whole, named by their ``digest``: one over the reader's frame
    limit (here lowered to 1 MiB, pieces of 256 KiB) is not a reason to fetch the layer whole.  Its
    compressed bytes are fetched once, in parts, decompressed as they come and checked whole
    against the digest, kept on disk with a sha256 per piece; each piece is read from there and
    checked.  Through ``lazylayer://`` and through the mount (whose fetcher process reads the
    chunk table the open kept, pieces included); a damaged copy is removed and made again; a
    blob whose big file does not match its digest is an IntegrityError (EIO), nothing kept."""
    import lazylayer
    from lazylayer import errors
    from lazylayer.format import estargz
    from lazylayer.image import DiskCache, Image

    monkeypatch.setattr(estargz, "MAX_CHUNK_SIZE", 1 << 20)
    monkeypatch.setattr(estargz, "WHOLE_PIECE", 256 << 10)
    rng = random.Random(21)
    big = b"".join(rng.randbytes(4096) * 3 for _ in range(256)) + b"tail"  # ~3 MiB, compressible
    members = _files(4, 13) + [images.reg("app/big.bin", big), images.reg("app/after.txt", b"after\n")]
    blob, ann, tar = _containers_zstd_chunked(members, chunk=8 << 20)  # big.bin: one chunk, left whole
    z = ZLayer(blob, ann, images.sha256(tar), members)
    registry.push(_zlayout(tmp_path / "layout", [z]), "peer-formats/big:v1")
    ref = f"docker://{registry.host}/peer-formats/big:v1"
    cache = DiskCache(str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLazyWarning)
        with Image(ref, cache=cache) as img:
            assert img.layers[0].lazy and img.stats()["layers_fetched_whole"] == 0
            node = img.tree.resolve("/app/big.bin")
            assert img.pread(node, 100_000, 1_300_000) == big[1_300_000:1_400_000]  # a middle piece first
            # the copy's fetcher thread ends with it (nothing left for a garbage collector to finalize)
            wait_for(lambda: not any(t.name.startswith("lazylayer-whole") for t in threading.enumerate()))
            copy = Path(cache.files_dir) / f"whole-{hashlib.sha256(big).hexdigest()}"
            assert copy.stat().st_size == len(big) + 32 * -(-len(big) // (256 << 10))
            assert img.pread(node, len(big) + 1, 0) == big
            for name, data in z.want.items():
                assert img.pread(img.tree.resolve("/" + name), len(data) + 1, 0) == data, name
            fetched = img.stats()["bytes_fetched"]
        # a damaged copy: found by its piece's sha256, removed, made again
        raw = bytearray(copy.read_bytes())
        raw[300_000] ^= 1
        copy.write_bytes(bytes(raw))
        with Image(ref, cache=cache) as img:
            node = img.tree.resolve("/app/big.bin")
            assert img.pread(node, len(big) + 1, 0) == big
        assert copy.read_bytes() != bytes(raw)
    assert fetched < len(blob)
    if os.path.exists("/dev/fuse") and os.geteuid() == 0:
        where = tmp_path / "mnt"
        where.mkdir()
        with lazylayer.Mount(ref, str(where), cache=DiskCache(str(tmp_path / "cache-mount"))) as m:
            assert (where / "app/big.bin").read_bytes() == big
            for name, data in z.want.items():
                assert (where / name).read_bytes() == data, name
            assert m.stats()["eio"] == 0
    # the blob's big file is not what its digest says: never data, nothing kept
    bad = bytearray(blob)
    k = blob.index(zstandard.ZstdCompressor(level=3).compress(big)[:64])
    wrong = zstandard.ZstdCompressor(level=3).compress(big[:-4] + b"TAIL")
    assert len(wrong) == len(zstandard.ZstdCompressor(level=3).compress(big))
    bad[k:k + len(wrong)] = wrong
    registry.push(_zlayout(tmp_path / "bad", [z], blobs=[bytes(bad)]), "peer-formats/big-bad:v1")
    with Image(f"docker://{registry.host}/peer-formats/big-bad:v1", cache=DiskCache(str(tmp_path / "c3"))) as img:
        node = img.tree.resolve("/app/big.bin")
        with pytest.raises(errors.IntegrityError, match="does not match its digest"):
            img.pread(node, 1000, 0)
    assert not list((Path(tmp_path / "c3") / "v1" / "files").glob("whole-*"))


def test_a_kept_chunk_table_reads_back_row_by_row() -> None:
    """A chunked layer kept in the disk cache without windows (eStargz, zstd:chunked) loads as
    :class:`ChunkRows`: the very chunks that were kept, made when asked for (indices, negative
    ones, slices, the big chunks' pieces found by their codec); a row naming no codec, with bad
    bits or with a window that is not there is refused at load, in words, never at a read."""
    import struct

    from lazylayer import errors
    from lazylayer.format import estargz
    from lazylayer.format.layer import Frame

    digest = "sha256:" + "1" * 64
    d = ["sha256:" + hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]
    chunks = [estargz.Chunk(0, 100, 0, 60, d[0], "gzip"), estargz.Chunk(100, 4 << 20, 60, 900, d[1], "zstd-whole"),
              estargz.Chunk(100 + (4 << 20), 5, 60, 900, d[1], "zstd-whole"),
              estargz.Chunk(0, 1 << 20, 900, 900, d[2], "zeros"), estargz.Chunk(0, 7, 900, 950, d[3], "zstd")]
    frames, at = [], 0
    for c in chunks:
        frames.append(Frame(at, c.size, at, c.size, c.digest[7:]))
        at += c.size
    entries = [{"name": "f", "type": "reg", "mode": 0o644, "size": at, "offset": 0}]
    layer = estargz.index_layer(frames, entries, at, [], digest)
    data = estargz.dump_raw_layer(layer, chunks)
    back, rows = estargz.load_raw_layer(data, digest)
    assert isinstance(rows, estargz.ChunkRows) and back.toc_frame == layer.toc_frame
    assert list(rows) == chunks and len(rows) == 5
    assert rows[-1] == chunks[-1] and rows[1:3] == chunks[1:3] and rows.whole() == [1, 2]
    with pytest.raises(IndexError):
        rows[5]
    head = struct.Struct("<8s32sQIIQ")
    magic, _, toc_at, count, flen, blen = head.unpack_from(data)
    body = zstandard.ZstdDecompressor().decompress(data[head.size:], max_output_size=blen)
    for where, value in ((60, 6), (60, 255), (61, 8), (63, 1), (64, 1)):  # codec, bits, window length
        b = bytearray(body)
        b[flen + 65 * 3 + where] = value
        packed = zstandard.ZstdCompressor().compress(bytes(b))
        bad = head.pack(magic, hashlib.sha256(packed).digest(), toc_at, count, flen, len(b)) + packed
        with pytest.raises(errors.FormatError, match="bad chunk row"):
            estargz.load_raw_layer(bad, digest)
