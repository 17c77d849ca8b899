"""Plain gzip layers made lazy by ``lazylayer index`` (lazylayer.format.gzindex): images written by
umoci (gzip layers) and pushed to a real registry by skopeo are indexed once, then every file reads
back through ``lazylayer://`` and through the mount as umoci unpacks it, fetching only the spans
the reads need; a tampered blob, index or checkpoint is an integrity error (EIO through the mount),
never data.  (The checkpoint code itself: tests/test_gzindex.py and the fuzz target.)"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import images
import pytest
from servers import unique_repo
from test_fs import check_matches_umoci, open_fs

from lazylayer import errors
from lazylayer.core import BlockCache
from lazylayer.format import estargz, gzindex
from lazylayer.image import DiskCache, Image, NotLazyWarning
from lazylayer.index import index_image

pytestmark = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed (apt install umoci)")
needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0, reason="needs /dev/fuse and root (a mount)")

SPAN = 64 << 10  # small spans: the test image's layers get many


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry: Any) -> dict[str, Any]:
    work = str(tmp_path_factory.mktemp("gzindex"))
    layout = images.build_umoci_image(os.path.join(work, "build"))  # gzip layers, as umoci writes them
    repo = unique_repo("gzindex")
    registry.push(f"oci:{layout}:v1", f"{repo}:v1")
    return {"layout": layout, "ref": f"docker://{registry.host}/{repo}:v1",
            "rootfs": images.unpack(layout, "v1", os.path.join(work, "unpacked"))}


def _gzip_layers(layout: str) -> list[dict[str, Any]]:
    return [d for d in images.image(layout, "v1").manifest["layers"] if d["mediaType"].endswith("gzip")]


def test_an_indexed_image_reads_lazily_as_umoci_unpacks_it(built: dict[str, Any], tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    # Not indexed: fetched whole, and the warning says how to make it lazy.
    with pytest.warns(NotLazyWarning, match="lazylayer index IMAGE"):
        Image(built["ref"], cache=None).close()
    result = index_image(built["ref"], cache=DiskCache(cache), span=SPAN, progress=False)
    layers = _gzip_layers(built["layout"])
    assert [x.digest for x in result.layers] == [d["digest"] for d in layers] and result.skipped == 0
    assert all(x.built and x.spans > 1 for x in result.layers if x.size > 100_000)
    again = index_image(built["ref"], cache=DiskCache(cache), span=SPAN, progress=False)
    assert [x.built for x in again.layers] == [False] * len(layers)  # kept: not read again

    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLazyWarning)  # every layer lazy now
        fs = open_fs(built["ref"], cache)
        try:
            data = fs.cat("/data/text.txt")
            assert data == (Path(built["rootfs"]) / "data/text.txt").read_bytes()
            one = fs.image.stats()
            assert one["layers_fetched_whole"] == 0
            spans = sum(len(layer.source.frames) for layer in fs.image.layers)
            assert 0 < one["frames_fetched"] < spans // 4, one  # that file's spans, not the layer
            assert one["bytes_fetched"] < sum(d["size"] for d in layers) // 4
            check_matches_umoci(fs, built["rootfs"])
        finally:
            fs.close()


def test_a_span_is_one_range_and_every_span_checks(built: dict[str, Any], tmp_path: Path) -> None:
    """The index itself: spans cover the tar end to end and the blob from the first deflate block
    to its end; each inflates alone from its checkpoint to the bytes its digest names."""
    layer = max(_gzip_layers(built["layout"]), key=lambda d: d["size"])
    blob = images.read_blob(built["layout"], layer["digest"])
    tar = gzip.decompress(blob)
    with open(images.blob_path(built["layout"], layer["digest"]), "rb") as f:
        spec, chunks = gzindex.build(f, layer, SPAN)
    assert spec.toc_offset == len(tar)
    assert [c.file_offset for c in chunks] == [0] + [c.file_offset + c.size for c in chunks[:-1]]
    assert chunks[-1].file_offset + chunks[-1].size == len(tar) and chunks[-1].end == len(blob)
    assert all(a.end == b.offset for a, b in zip(chunks, chunks[1:]))
    from lazylayer.core.gzindex import Checkpoint, inflate_span
    for c in chunks:
        out = inflate_span(Checkpoint(c.offset, c.file_offset, c.bits, c.byte, gzindex.window(c)), blob[c.offset:c.end],
                           c.size)
        assert out == tar[c.file_offset:c.file_offset + c.size]
        assert "sha256:" + hashlib.sha256(out).hexdigest() == c.digest
    # kept and loaded back as it was
    back = estargz.load_raw_layer(estargz.dump_raw_layer(spec, chunks), layer["digest"])
    assert back[1] == chunks and back[0].toc_frame == spec.toc_frame


def test_a_blob_that_is_not_its_digest_is_never_indexed(built: dict[str, Any], tmp_path: Path) -> None:
    layer = _gzip_layers(built["layout"])[0]
    blob = bytearray(images.read_blob(built["layout"], layer["digest"]))
    blob[len(blob) // 2] ^= 0x01
    import io

    with pytest.raises((errors.IntegrityError, errors.CorruptFrameError)):
        gzindex.build(io.BytesIO(bytes(blob)), layer, SPAN)
    other = dict(layer, digest="sha256:" + "0" * 64)
    with pytest.raises(errors.IntegrityError, match="digest"):
        gzindex.build(io.BytesIO(images.read_blob(built["layout"], layer["digest"])), other, SPAN)
    # truncated: never an index
    with pytest.raises(errors.LazyLayerError):
        gzindex.build(io.BytesIO(bytes(blob[: len(blob) // 2])), layer, SPAN)


def _copy_layout(built: dict[str, Any], tmp_path: Path) -> str:
    layout = str(tmp_path / "layout")
    shutil.copytree(built["layout"], layout)
    return layout


def test_a_tampered_blob_or_index_is_never_data(built: dict[str, Any], tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """From an OCI layout whose blob changes after it was indexed: the span read is an
    IntegrityError, the others still read; an index damaged on disk is said and not used; an index
    whose checkpoint window was changed (its own checksum made good again) gives wrong output, which
    its span's digest refuses."""
    layout = _copy_layout(built, tmp_path)
    ref = f"oci:{layout}:v1"
    cache = DiskCache(str(tmp_path / "cache"))
    index_image(ref, cache=cache, span=SPAN, progress=False)
    want = {p: (Path(built["rootfs"]) / p).read_bytes() for p in ("data/text.txt", "data/random.bin")}

    def read(path: str) -> bytes:  # (a fresh memory cache: spans verified before are not read again)
        with Image(ref, cache=cache, memory_cache=BlockCache(64 << 20)) as img:
            node = img.tree.resolve(path)
            return img.pread(node, node._st.size, 0)

    def span_of(path: str) -> tuple[Any, str]:
        """The chunk holding the middle of ``path``, and its layer's digest."""
        with Image(ref, cache=cache) as img:
            st = img.tree.resolve(path)._st
            at = st.offset + st.size // 2
            layer = img.layers[st.layer]
            return next(c for c in layer.source._chunk_list
                        if c.file_offset <= at < c.file_offset + c.size), layer.descriptor["digest"]

    assert read("data/text.txt") == want["data/text.txt"]
    assert read("data/random.bin") == want["data/random.bin"]
    # 1. the blob changed under the index, in the middle of a span of data/random.bin
    chunk, digest = span_of("data/random.bin")
    path = images.blob_path(layout, digest)
    original = Path(path).read_bytes()
    bad = bytearray(original)
    bad[chunk.offset + (chunk.end - chunk.offset) // 3] ^= 0xFF  # (in a stored block: a data byte)
    Path(path).write_bytes(bytes(bad))
    try:
        with pytest.raises((errors.IntegrityError, errors.CorruptFrameError)):
            read("data/random.bin")
    finally:
        Path(path).write_bytes(original)
    # 2. the index damaged on disk: said, not used (the layer is fetched whole, and still right)
    name = gzindex.cache_name(digest)
    kept = Path(cache.files_dir) / name
    good = kept.read_bytes()
    damaged = bytearray(good)
    damaged[-100] ^= 1
    kept.write_bytes(bytes(damaged))
    with pytest.warns(NotLazyWarning):
        assert read("data/random.bin") == want["data/random.bin"]
    assert "not used" in caplog.text and not kept.exists()
    # 3. a checkpoint window changed, the sidecar's checksum made to match (as only someone who can
    # write the disk cache could): the text's span now copies zeros where it refers back, and its
    # digest refuses the output
    kept.write_bytes(good)
    chunk, text_layer = span_of("data/text.txt")
    assert chunk.window and text_layer == digest
    spec, chunks = estargz.load_raw_layer(good, digest)
    k = chunks.index(chunk)
    chunks[k] = chunk._replace(window=gzindex.pack_window(bytes(len(gzindex.window(chunk)))))
    kept.write_bytes(estargz.dump_raw_layer(spec, chunks))
    with pytest.raises(errors.IntegrityError, match="does not match"):
        read("data/text.txt")


def test_the_cli_indexes_and_says_what_it_did(built: dict[str, Any], tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "lazylayer", "index", built["ref"], "--cache-dir", cache, "--span", "256K"]
    first = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert [x["built"] for x in first["layers"]] == [True] * len(_gzip_layers(built["layout"]))
    second = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "indexed before" in second
    listing = subprocess.run([sys.executable, "-m", "lazylayer", "ls", built["ref"], "/data", "--cache-dir", cache],
                             capture_output=True, text=True, check=True)
    assert "text.txt" in listing.stdout and "fetched whole" not in listing.stderr


def test_several_gzip_members_and_a_zero_length_tail(tmp_path: Path) -> None:
    """A layer of concatenated gzip members (as some writers make) indexes and reads back."""
    members = [images.reg(f"f{i}", os.urandom(1000) * (i + 1)) for i in range(40)]
    tar = images.make_tar(members)
    cut = len(tar) // 3 // 512 * 512
    blob = gzip.compress(tar[:cut], 6) + gzip.compress(tar[cut:], 1) + gzip.compress(b"", 9)
    ref = images.build_layout(str(tmp_path / "layout"), [tar], blobs=[blob])
    cache = DiskCache(str(tmp_path / "cache"))
    index_image(ref, cache=cache, span=16 << 10, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLazyWarning)
        with Image(ref, cache=cache) as img:
            for i, (info, data) in enumerate(members):
                node = img.tree.resolve(info.name)
                assert img.pread(node, len(data), 0) == data


@needs_fuse
def test_through_the_mount(built: dict[str, Any], tmp_path: Path) -> None:
    """Every file as the kernel shows it equals umoci's unpack; a span whose bytes are tampered
    with is EIO, not data."""
    import lazylayer

    cache = lazylayer.DiskCache(str(tmp_path / "cache"))
    index_image(built["ref"], cache=cache, span=SPAN, progress=False)
    where = tmp_path / "mnt"
    where.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLazyWarning)
        with lazylayer.Mount(built["ref"], str(where), cache=cache) as m:
            got, got_links = images.snapshot(str(where))
            want, want_links = images.snapshot(built["rootfs"])
            assert images.diff_snapshots(got, want) == [] and got_links == want_links
            assert m.stats()["eio"] == 0
    # the layout's blob tampered with, the index built from the good one: EIO through the mount
    layout = _copy_layout(built, tmp_path)
    big = max(_gzip_layers(layout), key=lambda d: d["size"])
    path = Path(images.blob_path(layout, big["digest"]))
    bad = bytearray(path.read_bytes())
    for at in range(len(bad) // 8, len(bad), len(bad) // 8):
        bad[at] ^= 0xFF
    path.write_bytes(bytes(bad))
    where2 = tmp_path / "mnt2"
    where2.mkdir()
    with lazylayer.Mount(f"oci:{layout}:v1", str(where2), cache=cache) as m:
        with pytest.raises(OSError) as exc:
            (where2 / "data/random.bin").read_bytes()
        assert exc.value.errno == 5


# ------------------------------------------------------------------ indexes attached to the image


@pytest.fixture(autouse=True)
def _check_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attached indexes are checked at once here, not after the delay a cold start gets."""
    from lazylayer.image import image as image_module

    monkeypatch.setattr(image_module._AttachedCheck, "DELAY", 0.0)


def _push(built: dict[str, Any], registry: Any, name: str) -> str:
    """The test image under a repository of its own (artifacts attached to it stay there)."""
    repo = unique_repo(name)
    registry.push(f"oci:{built['layout']}:v1", f"{repo}:v1")
    return f"docker://{registry.host}/{repo}:v1"


def _forge(built: dict[str, Any], ref: str, tmp_path: Path) -> tuple[str, str]:
    """Attach to ``ref`` an index of its text layer that serves wrong bytes while passing every
    span check: one span's window zeroed (its back-references now copy zeros) and its digest made
    that of what it then inflates to.  Returns the layer digest and the wrong bytes' file."""
    from lazylayer.core.gzindex import Checkpoint, inflate_span
    from lazylayer.registry import open_source

    layout = _copy_layout(built, tmp_path)
    cache = DiskCache(str(tmp_path / "forge-cache"))
    index_image(f"oci:{layout}:v1", cache=cache, span=SPAN, progress=False)
    with Image(f"oci:{layout}:v1", cache=cache) as img:
        st = img.tree.resolve("data/text.txt")._st
        layer = img.layers[st.layer]
        at = st.offset + st.size // 2
        chunk = next(c for c in layer.source._chunk_list if c.file_offset <= at < c.file_offset + c.size)
        digest, subject = layer.descriptor["digest"], dict(img.manifest_image.manifest_descriptor)
    blob = images.read_blob(layout, digest)
    spec, chunks = estargz.load_raw_layer(cache.read_file(gzindex.cache_name(digest)) or b"", digest)
    k = chunks.index(chunk)
    zero = bytes(len(gzindex.window(chunk)))
    wrong = inflate_span(Checkpoint(chunk.offset, chunk.file_offset, chunk.bits, chunk.byte, zero),
                         blob[chunk.offset:chunk.end], chunk.size)
    assert wrong != gzip.decompress(blob)[chunk.file_offset:chunk.file_offset + chunk.size]
    chunks[k] = chunk._replace(window=gzindex.pack_window(zero), digest="sha256:" + hashlib.sha256(wrong).hexdigest())
    # the TOC frame names frames by their digests too: rebuild it with the forged one
    from lazylayer.format.layer import Frame, Toc
    toc = Toc.from_frame(spec.toc_frame)
    frames = [Frame(c.file_offset, c.size, c.file_offset, c.size, c.digest[7:]) for c in chunks]
    forged = estargz.dump_raw_layer(estargz.index_layer(frames, toc.entries, toc.tar_size, [], digest), chunks)
    subject = {key: subject[key] for key in ("mediaType", "digest", "size")}
    source = open_source(ref)
    try:
        gzindex.attach(source.artifacts(), subject, [(digest, forged)])
    finally:
        source.close()
    return digest, "data/text.txt"


def test_attached_indexes_are_used_only_when_asked_and_checked(built: dict[str, Any], registry: Any,
                                                               tmp_path: Path) -> None:
    """``--attach`` stores the indexes next to the image; another machine (a fresh disk cache)
    ignores them by default (the layers are fetched whole, with the warning), and with
    ``gzip_indexes="attached"`` reads lazily at once while the layers are checked in the
    background; checked, each index is kept as this machine's own."""
    ref = _push(built, registry, "gzindex-attached")
    result = index_image(ref, cache=DiskCache(str(tmp_path / "builder")), span=SPAN, progress=False, attach=True)
    assert result.artifact is not None and result.artifact["artifactType"] == gzindex.ARTIFACT_TYPE
    other = str(tmp_path / "other")
    with pytest.warns(NotLazyWarning):
        Image(ref, cache=DiskCache(other)).close()  # default policy: local indexes only
    other2 = DiskCache(str(tmp_path / "other2"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLazyWarning)
        fs = open_fs(ref, other2.path, gzip_indexes="attached")
        try:
            assert fs.cat("/data/text.txt") == (Path(built["rootfs"]) / "data/text.txt").read_bytes()
            checker = fs.image._checker
            assert checker is not None and checker.done.wait(60)
            assert fs.image._unchecked == {} and fs.image.poisoned == {}
            check_matches_umoci(fs, built["rootfs"])
        finally:
            fs.close()
    for d in _gzip_layers(built["layout"]):  # checked: kept as if built here
        assert other2.read_file(gzindex.cache_name(d["digest"])) is not None
    # Another process opening while an index is unchecked (the mount's fetcher) reads the
    # artifact's bytes from the disk cache, not from the registry again.
    other3 = DiskCache(str(tmp_path / "other3"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLazyWarning)
        with Image(ref, cache=other3, gzip_indexes="attached", check_attached=False) as first:
            chosen = first.attached_indexes
        assert sorted(chosen) == sorted(d["digest"] for d in _gzip_layers(built["layout"]))
        from lazylayer.registry import referrers

        def no_fetch(*a: Any, **k: Any) -> Any:
            raise AssertionError("fetched again")

        real = referrers.read_layer
        referrers.read_layer = no_fetch
        try:
            with Image(ref, cache=other3, gzip_indexes="attached", check_attached=False) as img:
                assert img._unchecked
            # told which indexes the mount chose (its fetcher is): not even looked for in the registry
            real_find, gzindex.find_attached = gzindex.find_attached, no_fetch
            try:
                with Image(ref, cache=other3, gzip_indexes="attached", check_attached=False, attached=chosen) as img:
                    assert img.attached_indexes == chosen
                    node = img.tree.resolve("/data/text.txt")
                    want = (Path(built["rootfs"]) / "data/text.txt").read_bytes()
                    assert img.pread(node, len(want) + 1, 0) == want
            finally:
                gzindex.find_attached = real_find
        finally:
            referrers.read_layer = real
    with pytest.raises(ValueError, match="gzip_indexes"):
        Image(ref, cache=None, gzip_indexes="trust-me")


def test_a_forged_attached_index_is_found_out_and_its_layer_refused(built: dict[str, Any], registry: Any,
                                                                   tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """An index attached by someone who can push to the repository, made to serve wrong bytes
    that pass every span check: the background check fetches the layer, finds the index wrong,
    and from then on every read of the layer is an IntegrityError (cache hits included); the
    index is remembered as refuted, so the next open fetches the layer whole and reads it right."""
    ref = _push(built, registry, "gzindex-forged")
    digest, name = _forge(built, ref, tmp_path)
    cache = str(tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLazyWarning)  # (the other layers have no index attached)
        img = Image(ref, cache=DiskCache(cache), gzip_indexes="attached")
    try:
        assert img._checker is not None and img._checker.done.wait(60)
        assert list(img.poisoned) == [i for i, layer in enumerate(img.layers) if layer.digest == digest]
        node = img.tree.resolve(name)
        with pytest.raises(errors.IntegrityError, match="does not match the gzip index"):
            img.pread(node, node._st.size, 0)
        with pytest.raises(errors.IntegrityError, match="does not match the gzip index"):
            img.reader.pread(node._st.ino, 10, 0)  # C refuses it too, whatever its caches hold
    finally:
        img.close()
    assert "does not match the gzip index attached" in caplog.text
    with pytest.warns(NotLazyWarning):
        again = Image(ref, cache=DiskCache(cache), gzip_indexes="attached")
    try:
        node = again.tree.resolve(name)
        assert again.pread(node, node._st.size, 0) == (Path(built["rootfs"]) / name).read_bytes()
    finally:
        again.close()
    assert "found wrong before" in caplog.text


def test_a_mangled_attached_index_is_refused_in_words(built: dict[str, Any], registry: Any, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes that are not an index, or an index whose spans run out of the blob, are not used
    (said in the log; the layer is fetched whole): never a crash, never a fetch out of range."""
    from lazylayer.registry import open_source

    ref = _push(built, registry, "gzindex-mangled")
    layer = max(_gzip_layers(built["layout"]), key=lambda d: d["size"])
    with open(images.blob_path(built["layout"], layer["digest"]), "rb") as f:
        spec, chunks = gzindex.build(f, layer, SPAN)
    chunks[-1] = chunks[-1]._replace(end=layer["size"] + (1 << 30))
    source = open_source(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLazyWarning)
        with Image(ref, cache=None) as img:
            subject = {k: img.manifest_image.manifest_descriptor[k] for k in ("mediaType", "digest", "size")}
    try:
        gzindex.attach(source.artifacts(), subject, [(layer["digest"], estargz.dump_raw_layer(spec, chunks))])
        gzindex.attach(source.artifacts(), subject, [(d["digest"], b"LLCHUNK2 not an index")
                                                    for d in _gzip_layers(built["layout"]) if d != layer])
    finally:
        source.close()
    with pytest.warns(NotLazyWarning):
        Image(ref, cache=DiskCache(str(tmp_path / "cache")), gzip_indexes="attached").close()
    assert "out of bounds" in caplog.text and "truncated" in caplog.text
    # an artifact layer over the size limit is not read at all: said, and the open goes on
    ref2 = _push(built, registry, "gzindex-too-big")
    index_image(ref2, cache=DiskCache(str(tmp_path / "builder")), span=SPAN, progress=False, attach=True)
    monkeypatch.setattr(gzindex, "MAX_ATTACHED_BYTES", 1000)
    with pytest.warns(NotLazyWarning):
        Image(ref2, cache=DiskCache(str(tmp_path / "cache2")), gzip_indexes="attached").close()
    assert "not used" in caplog.text and "too large" in caplog.text


def test_a_bad_attached_index_gives_way_to_the_next_one(built: dict[str, Any], registry: Any, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Two artifacts carry an index of the same layer: the first has a window that does not unpack
    (an index from an older lazylayer, or a hostile one), the second is good.  The first is refused
    at open, in words, and the second is used: the layer is read lazily, right."""
    from lazylayer.registry import open_source

    ref = _push(built, registry, "gzindex-two")
    layer = max(_gzip_layers(built["layout"]), key=lambda d: d["size"])
    with open(images.blob_path(built["layout"], layer["digest"]), "rb") as f:
        spec, chunks = gzindex.build(f, layer, SPAN)
    k = next(i for i, c in enumerate(chunks) if c.window)
    chunks[k] = chunks[k]._replace(window=b"\0" * 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLazyWarning)
        with Image(ref, cache=None) as img:
            subject = {k: img.manifest_image.manifest_descriptor[k] for k in ("mediaType", "digest", "size")}
    source = open_source(ref)
    try:
        gzindex.attach(source.artifacts(), subject, [(layer["digest"], estargz.dump_raw_layer(spec, chunks))])
    finally:
        source.close()
    index_image(ref, cache=DiskCache(str(tmp_path / "builder")), span=SPAN, progress=False, attach=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLazyWarning)
        fs = open_fs(ref, str(tmp_path / "cache"), gzip_indexes="attached")
        try:
            check_matches_umoci(fs, built["rootfs"])
            assert "its window is not zstd" in caplog.text and "not used" in caplog.text
            checker = fs.image._checker
            assert checker is not None and checker.done.wait(60) and fs.image.poisoned == {}
        finally:
            fs.close()


def test_an_unchecked_index_never_lends_its_spans_to_a_checked_one(built: dict[str, Any], registry: Any,
                                                                    tmp_path: Path) -> None:
    """Two images in one process read the same layer, one through a forged attached index (its
    check left to another process: the mount's fetcher does this), one through an index built here:
    the second reads the layer's own bytes.  Decoded spans are cached under the index's frames, not
    under the blob's digest alone (with the digest alone, the forged span came out of the shared
    memory cache)."""
    from lazylayer.core import BlockCache

    ref = _push(built, registry, "gzindex-shared-cache")
    digest, name = _forge(built, ref, tmp_path)
    want = (Path(built["rootfs"]) / name).read_bytes()
    memory = BlockCache(64 << 20)  # one cache for both, as the process-wide one would be

    def read(img: Image) -> bytes:  # in 4 KiB reads, as a page cache asks: spans land in the memory cache
        node = img.tree.resolve(name)
        return b"".join(img.pread(node, 4096, at) for at in range(0, node._st.size, 4096))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLazyWarning)
        with Image(ref, cache=DiskCache(str(tmp_path / "a")), memory_cache=memory, gzip_indexes="attached",
                   check_attached=False) as img:
            assert read(img) != want  # unchecked: the documented window
    cache = DiskCache(str(tmp_path / "b"))
    index_image(ref, cache=cache, span=SPAN, progress=False)
    with Image(ref, cache=cache, memory_cache=memory) as img:
        assert read(img) == want


@needs_fuse
def test_a_forged_index_through_the_mount_becomes_eio_even_from_the_page_cache(
        built: dict[str, Any], registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check held back until a file of the forged layer has been read (its wrong bytes in the
    kernel's page cache: that is the window the policy documents); once the check refutes the
    index, the same read is EIO: the mount's reader refuses the layer and the kernel was told to
    drop its pages."""
    import threading

    import lazylayer
    from lazylayer.image import image as image_module

    ref = _push(built, registry, "gzindex-forged-mount")
    digest, name = _forge(built, ref, tmp_path)
    go = threading.Event()
    real_run = image_module._AttachedCheck._run
    monkeypatch.setattr(image_module._AttachedCheck, "_run", lambda self: (go.wait(60), real_run(self)))
    where = tmp_path / "mnt"
    where.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLazyWarning)
        with lazylayer.Mount(ref, str(where), cache=lazylayer.DiskCache(str(tmp_path / "cache")),
                             gzip_indexes="attached") as m:
            before = (where / name).read_bytes()
            assert before != (Path(built["rootfs"]) / name).read_bytes()  # unchecked: the documented window
            go.set()
            assert m.image._checker is not None and m.image._checker.done.wait(60)
            with pytest.raises(OSError) as exc:
                (where / name).read_bytes()
            assert exc.value.errno == 5


@needs_fuse
def test_a_mount_of_an_image_poisoned_before_it_mounted_refuses_the_layer(
        built: dict[str, Any], registry: Any, tmp_path: Path) -> None:
    """The check may end before the mount listens (an Image given to Mount after its check):
    the mount's own reader refuses the layer all the same.  (The fetcher process would refuse it
    too: it finds the index refuted in the disk cache and reads the layer another way, whose frames
    the mount's index does not have.)"""
    import lazylayer

    ref = _push(built, registry, "gzindex-poisoned-early")
    digest, name = _forge(built, ref, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLazyWarning)
        img = Image(ref, cache=DiskCache(str(tmp_path / "cache")), gzip_indexes="attached")
    try:
        assert img._checker is not None and img._checker.done.wait(60) and img.poisoned
        where = tmp_path / "mnt"
        where.mkdir()
        with lazylayer.Mount(img, str(where)) as m:
            from lazylayer.core._lib import lib

            (layer,) = img.poisoned
            assert m._reader is not None and lib.ll_image_layer_failed(m._reader._ptr, layer) == lib.LL_ERR_DIGEST
            with pytest.raises(OSError) as exc:
                (where / name).read_bytes()
            assert exc.value.errno == 5 and m.stats()["eio"] >= 1
    finally:
        img.close()


def test_windows_are_kept_compressed_and_unpacked_within_bounds() -> None:
    """A span's window is kept zstd-compressed; unpacking gives it back, and bytes that are not
    a window (not zstd, or more than 32 KiB once decompressed) are a CorruptFrameError."""
    import zstandard

    from lazylayer.format.estargz import Chunk

    w = bytes(range(256)) * 128  # 32 KiB
    c = Chunk(0, 10, 0, 10, "sha256:" + "0" * 64, "gzspan", 0, 0, gzindex.pack_window(w))
    assert len(c.window) < len(w) // 4 and gzindex.window(c) == w
    assert gzindex.window(c._replace(window=b"")) == b""
    for bad in (b"not zstd at all", zstandard.ZstdCompressor().compress(bytes(1 << 20))):
        with pytest.raises(errors.CorruptFrameError):
            gzindex.window(c._replace(window=bad))


def test_resealed_mutations_of_an_index_are_refused_in_words(built: dict[str, Any]) -> None:
    """An attached index is whatever its author made it, checksum included.  1,500 mutations of a
    real index's body (bytes flipped, chunk rows and windows altered, lengths changed), each
    sealed again with a correct header as a hostile author would: every one is refused with a
    FormatError (CorruptFrameError for a TOC frame or window that does not decompress) where an
    attached index is checked at open, or loads whole, its TOC taken by the C index.  Never
    another exception."""
    import struct

    import zstandard

    from lazylayer.core import Index

    layer = max(_gzip_layers(built["layout"]), key=lambda d: d["size"])
    with open(images.blob_path(built["layout"], layer["digest"]), "rb") as f:
        spec, chunks = gzindex.build(f, layer, SPAN)
    good = estargz.dump_raw_layer(spec, chunks)
    head = struct.Struct("<8s32sQIIQ")
    magic, _, at, count, flen, blen = head.unpack_from(good)
    body = zstandard.ZstdDecompressor().decompress(good[head.size:], max_output_size=blen)
    rng = random.Random(18)
    loaded = 0
    for _ in range(1500):
        b = bytearray(body)
        n_at, n_count, n_flen = at, count, flen
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.5:  # flip bytes anywhere (the TOC frame, rows, windows)
                for _ in range(rng.randint(1, 8)):
                    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            elif op < 0.8:  # a row's field set to an extreme
                row = flen + 65 * rng.randrange(count)  # (estargz._ROW: <QIQQ32sBBBH)
                field = rng.choice([(0, "<Q"), (8, "<I"), (12, "<Q"), (20, "<Q"), (28, "<B"), (60, "<B"),
                                    (61, "<B"), (62, "<B"), (63, "<H")])
                size = struct.calcsize(field[1])
                b[row + field[0]:row + field[0] + size] = struct.pack(field[1], rng.choice(
                    [0, 1, 7, 8, 255, (1 << (8 * size)) - 1, rng.randrange(1 << (8 * size))]))
            elif op < 0.9:
                del b[rng.randrange(len(b)):][:rng.randint(1, 4096)]
            else:
                n_at, n_count, n_flen = (rng.choice([at, 0, at + 1, 1 << 40]), rng.choice([count, count + 1, 0]),
                                         rng.choice([flen, flen - 1, 0]))
        packed = zstandard.ZstdCompressor(level=1).compress(bytes(b))
        data = head.pack(magic, hashlib.sha256(packed).digest(), n_at, n_count, n_flen, len(b)) + packed
        try:
            lay, chs = estargz.load_raw_layer(data, layer["digest"])
            gzindex.check_index(lay, chs, layer["size"], "mutated")  # (the C index parses its TOC frame)
            for c in chs:
                gzindex.window(c)
        except (errors.FormatError, errors.CorruptFrameError):
            continue
        loaded += 1
        assert len(Index.build([lay]).frames(0)) == len(chs)
    assert loaded > 0  # (some mutations leave a valid index: flipped bits in a window, say)
