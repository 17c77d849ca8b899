"""The image converter, tested against real images built with umoci and skopeo.

No mocks: the source image is made by umoci (init / new / unpack / change the
rootfs / repack, three times), other sources by skopeo or written by hand, and
every converted layer is judged by tools that know nothing of lazylayer: the
``zstd`` command, Python's ``tarfile`` and ``gzip``, pyzstd's
``SeekableZstdFile``, skopeo and umoci.

Needs root (device nodes, ownership, umoci unpack), umoci, skopeo and zstd.
"""

from __future__ import annotations

import base64
import bisect
import filecmp
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile

import images
import pytest
import zstandard
from images import run, sha256

from lazylayer import errors
from lazylayer.convert import convert
from lazylayer.format import read_toc
from lazylayer.oci import ReferenceError as OciReferenceError

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, chown, umoci unpack)"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("umoci", "skopeo", "zstd")),
                       reason="needs umoci, skopeo and zstd"),
]

FRAME = 64 << 10  # small frames, so the 3 MiB file spans ~48 of them
TAG = "v1"
LAZY_MEDIA = "application/vnd.oci.image.layer.v1.tar+zstd"
ANN_TOC_DIGEST = "io.lazylayer.toc.digest"
ANN_TOC_POSITION = "io.lazylayer.toc.position"
ANN_VERSION = "io.lazylayer.version"
ANN_UNCOMPRESSED = "io.lazylayer.uncompressed-size"
ANN_SOURCE = "io.lazylayer.source-manifest"
TOC_TYPES = {
    tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.CONTTYPE: "reg", tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}


# ====================================================================== fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("convert"))


@pytest.fixture(scope="module")
def source(work: str) -> str:
    """Path of the umoci-built OCI layout (tag v1, three gzip layers)."""
    return images.build_umoci_image(os.path.join(work, "umoci"), TAG)


@pytest.fixture(scope="module")
def src_image(source: str) -> images.Image:
    return images.image(source, TAG)


@pytest.fixture(scope="module")
def src_tars(src_image: images.Image) -> list[bytes]:
    """The source layers' tars, gunzipped by Python's gzip module."""
    return [src_image.layer_tar(i) for i in range(len(src_image.layers))]


@pytest.fixture(scope="module")
def converted(work: str, source: str):
    """(layout path, ConvertResult) of converting the umoci image with 64 KiB frames."""
    dst = os.path.join(work, "conv")
    result = convert(f"oci:{source}:{TAG}", f"oci:{dst}:{TAG}", frame_size=FRAME, progress=False)
    return dst, result


@pytest.fixture(scope="module")
def conv_image(converted) -> images.Image:
    return images.image(converted[0], TAG)


def layer_digests(layout: str, tag: str = TAG) -> list[str]:
    return [layer["digest"] for layer in images.image(layout, tag).layers]


# ====================================================================== helpers


def norm(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts) or "."


def expected_entries(tar: bytes) -> list[dict]:
    """What the TOC should say about each member, from Python's tarfile."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as t:
        for m in t:
            kind = TOC_TYPES.get(m.type, "reg")
            e = {"name": norm(m.name), "type": kind, "mode": m.mode, "uid": m.uid, "gid": m.gid,
                 "uname": m.uname, "gname": m.gname, "mtime": m.mtime}
            if kind == "reg":
                e["size"], e["offset"] = m.size, m.offset_data
            if kind == "hardlink":
                e["linkname"] = norm(m.linkname)
            elif kind == "symlink":
                e["linkname"] = m.linkname
            if kind in ("char", "block"):
                e["devmajor"], e["devminor"] = m.devmajor, m.devminor
            xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                      for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            if xattrs:
                e["xattrs"] = xattrs
            out.append(e)
    return out


def toc_view(e: dict) -> dict:
    """A TOC entry with omitted zero values filled in and xattrs decoded, comparable to expected_entries."""
    kind = e["type"]
    v = {"name": e["name"], "type": kind, "mode": e["mode"], "uid": e.get("uid", 0), "gid": e.get("gid", 0),
         "uname": e.get("uname", ""), "gname": e.get("gname", ""), "mtime": e.get("mtime", 0)}
    if kind == "reg":
        v["size"], v["offset"] = e.get("size", 0), e.get("offset", 0)
    if kind in ("hardlink", "symlink"):
        v["linkname"] = e.get("linkname", "")
    if kind in ("char", "block"):
        v["devmajor"], v["devminor"] = e.get("devmajor", 0), e.get("devminor", 0)
    if e.get("xattrs"):
        v["xattrs"] = {k: base64.b64decode(x) for k, x in e["xattrs"].items()}
    return v


def load_toc(path: str, desc: dict | None = None):
    with open(path, "rb") as f:
        blob = f.read()

    def fetch(offset: int, size: int) -> bytes:
        assert 0 <= offset and offset + size <= len(blob), "read_toc asked for bytes outside the blob"
        return blob[offset:offset + size]

    return blob, read_toc(fetch, len(blob), (desc or {}).get("annotations"))


def hexdigest(digest: str) -> str:
    return digest.split(":", 1)[-1]


def check_frames(toc, blob: bytes, tar: bytes, frame_size: int) -> None:
    """Frames tile the blob and the tar, each decodes alone to its tar range, each sha256 is right."""
    frames = toc.frames
    assert frames, "no data frames"
    assert frames[0].compressed_offset == 0 and frames[0].offset == 0
    for a, b in zip(frames, frames[1:]):
        assert b.compressed_offset == a.compressed_offset + a.compressed_size
        assert b.offset == a.offset + a.size
    assert frames[-1].offset + frames[-1].size == len(tar) == toc.tar_size
    dctx = zstandard.ZstdDecompressor()
    for i, f in enumerate(frames):
        assert 0 < f.size <= frame_size, f"frame {i} holds {f.size} bytes (frame_size {frame_size})"
        raw = blob[f.compressed_offset:f.compressed_offset + f.compressed_size]
        assert hashlib.sha256(raw).hexdigest() == hexdigest(f.sha256), f"frame {i}: sha256 is wrong"
        assert dctx.decompress(raw, max_output_size=f.size) == tar[f.offset:f.offset + f.size], \
            f"frame {i} does not decode to its tar range"


def frame_placement(toc) -> tuple[int, int]:
    """Check the frame-cut rule; return (files starting a frame, files sharing the open frame).

    A regular file's content starts a new frame unless the whole file fits in
    the frame already open when it begins.
    """
    starts = [f.offset for f in toc.frames]
    aligned = shared = 0
    for e in toc.entries:
        if e["type"] != "reg" or not e.get("size"):
            continue
        off, size = e["offset"], e["size"]
        i = bisect.bisect_right(starts, off) - 1
        f = toc.frames[i]
        if f.offset == off:
            aligned += 1
        else:
            assert off + size <= f.offset + f.size, (
                f"{e['name']} ({size} bytes at {off}) starts inside frame {i} "
                f"[{f.offset}, {f.offset + f.size}) and runs past its end: it should have started a frame")
            shared += 1
    return aligned, shared


def zstd_cli_decompress(path: str) -> bytes:
    return run("zstd", "-d", "-c", "-q", path).stdout


# ====================================================================== the umoci image


def test_source_image_is_what_the_tests_expect(src_image: images.Image, src_tars: list[bytes]) -> None:
    """Guard: the umoci-built image really has the features the other tests rely on."""
    assert [l["mediaType"] for l in src_image.layers] == ["application/vnd.oci.image.layer.v1.tar+gzip"] * 3
    names = [{m.name: m for m in tarfile.open(fileobj=io.BytesIO(t))} for t in src_tars]
    first = names[0]
    assert first["data/random.bin"].size == 3 << 20
    assert first["srv/null"].ischr() and first["srv/loop9"].isblk() and first["srv/fifo"].isfifo()
    assert first["usr/bin/tool"].mode & 0o4000 and first["tmp"].mode & 0o1000
    assert first["home/user/notes"].uid == 1000 and first["home/user/notes"].gid == 1001
    assert any(m.islnk() for m in first.values()) and any(m.issym() for m in first.values())
    assert any(n.rsplit("/", 1)[-1].startswith(".wh.") for n in names[1]), "layer 2 has no whiteouts"
    assert "app/lib/blob" in names[2]
    assert sum(len(t) for t in src_tars) < 20 << 20


def test_manifest_and_descriptors(src_image: images.Image, converted, conv_image: images.Image) -> None:
    dst, result = converted
    assert result.copied_layers == 0
    assert images.root_descriptor(dst, TAG)["digest"] == result.root["digest"]
    # config: same bytes, same digest
    assert conv_image.manifest["config"]["digest"] == src_image.manifest["config"]["digest"]
    assert conv_image.config == src_image.config
    assert conv_image.manifest["annotations"][ANN_SOURCE] == src_image.manifest_desc["digest"]
    assert len(conv_image.layers) == len(src_image.layers) == len(result.layers)
    for desc, info in zip(conv_image.layers, result.layers):
        assert desc["mediaType"] == LAZY_MEDIA
        assert desc["digest"] == info.digest and desc["size"] == info.size
        assert os.path.getsize(conv_image.blob(desc["digest"])) == desc["size"]
        assert images.file_sha256(conv_image.blob(desc["digest"])) == desc["digest"]
        ann = desc["annotations"]
        assert ann[ANN_VERSION] == "1"
        assert ann[ANN_TOC_DIGEST] == info.toc_digest
        assert ann[ANN_TOC_POSITION] == f"{info.toc_offset}:{info.toc_length}"
        assert ann[ANN_UNCOMPRESSED] == str(info.tar_size)
    images.check_layout_intact(dst)


def test_zstd_cli_gives_the_original_tar(src_image, src_tars, conv_image) -> None:
    """`zstd -d` of each converted blob is the source layer's tar, byte for byte, and hashes to the diff_id."""
    for i, desc in enumerate(conv_image.layers):
        out = zstd_cli_decompress(conv_image.blob(desc["digest"]))
        assert out == src_tars[i], f"layer {i}: zstd -d output differs from the original tar"
        assert sha256(out) == conv_image.diff_ids[i] == src_image.diff_ids[i]
        assert int(desc["annotations"][ANN_UNCOMPRESSED]) == len(out)


def test_pyzstd_seekable_reads_the_blob(src_tars, conv_image) -> None:
    pyzstd = pytest.importorskip("pyzstd")
    rng = random.Random(7)
    for i, desc in enumerate(conv_image.layers):
        tar = src_tars[i]
        with pyzstd.SeekableZstdFile(conv_image.blob(desc["digest"]), "rb") as f:
            assert f.read() == tar
            for _ in range(40):
                off = rng.randrange(len(tar))
                n = rng.randrange(1, 3 * FRAME)
                f.seek(off)
                assert f.read(n) == tar[off:off + n], f"layer {i}: range {off}+{n}"


def test_toc_matches_the_tar(src_tars, conv_image) -> None:
    for i, desc in enumerate(conv_image.layers):
        blob, idx = load_toc(conv_image.blob(desc["digest"]), desc)
        assert idx.verified
        toc = idx.toc
        assert toc.frame_size == FRAME
        want = expected_entries(src_tars[i])
        got = [toc_view(e) for e in toc.entries]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g == w, f"layer {i}: TOC entry {g} != tar member {w}"
        check_frames(toc, blob, src_tars[i], FRAME)
        # without annotations: the same TOC, found from the tail, but not verified
        _, plain = load_toc(conv_image.blob(desc["digest"]))
        assert not plain.verified and plain.toc.entries == toc.entries and plain.toc.frames == toc.frames


def test_toc_digest_is_checked(conv_image) -> None:
    desc = conv_image.layers[0]
    bad = {**desc["annotations"], ANN_TOC_DIGEST: "sha256:" + "0" * 64}
    with pytest.raises(errors.IntegrityError, match="TOC digest"):
        load_toc(conv_image.blob(desc["digest"]), {"annotations": bad})


def test_file_contents_start_frames(conv_image) -> None:
    """Each file's content starts a frame unless it fits whole in the frame already open."""
    _, idx = load_toc(conv_image.blob(conv_image.layers[0]["digest"]), conv_image.layers[0])
    aligned, shared = frame_placement(idx.toc)
    assert aligned >= 3 and shared >= 10, (aligned, shared)  # both cases really occur
    by_name = {e["name"]: e for e in idx.toc.entries}
    big = by_name["data/random.bin"]
    spanned = [f for f in idx.toc.frames if f.offset < big["offset"] + big["size"] and
               f.offset + f.size > big["offset"]]
    assert spanned[0].offset == big["offset"]
    assert len(spanned) == (3 << 20) // FRAME  # split every frame_size bytes, no stray cuts
    # hardlinked files carry their link count
    assert by_name["data/passwd.hard1"]["nlink"] == 3
    assert by_name["data/random.bin"]["nlink"] == 2
    for other in range(1, len(conv_image.layers)):
        _, idx = load_toc(conv_image.blob(conv_image.layers[other]["digest"]), conv_image.layers[other])
        frame_placement(idx.toc)


def test_umoci_unpacks_the_same_tree(work, source, converted, conv_image) -> None:
    """umoci unpacks the converted image to the same tree as the original.

    Debian's umoci 0.4.7 refuses zstd layers ("blob is not correct
    mediatype"), so skopeo (containers/image, which knows nothing of
    lazylayer) first reads our tar+zstd layers and rewrites them as gzip;
    umoci then unpacks that, and the tree is compared with umoci's unpack of
    the original: types, contents, modes, owners, mtimes, symlink targets,
    hardlink groups, device numbers and xattrs.
    """
    dst, _ = converted
    regz = os.path.join(work, "regz")
    run("skopeo", "copy", "--quiet", "--dest-compress", "--dest-compress-format", "gzip",
        f"oci:{dst}:{TAG}", f"oci:{regz}:{TAG}")
    regz_image = images.image(regz, TAG)
    # skopeo really decoded our layers: it wrote gzip ones, whose tars are ours
    for i, layer in enumerate(regz_image.layers):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert sha256(regz_image.layer_tar(i)) == conv_image.diff_ids[i]
    a, b = os.path.join(work, "bundle-orig"), os.path.join(work, "bundle-conv")
    run("umoci", "unpack", "--image", f"{source}:{TAG}", a)
    run("umoci", "unpack", "--image", f"{regz}:{TAG}", b)
    tree_a, links_a = images.snapshot(os.path.join(a, "rootfs"))
    tree_b, links_b = images.snapshot(os.path.join(b, "rootfs"))
    assert images.diff_snapshots(tree_a, tree_b) == []
    assert links_a == links_b
    # and the tree is the interesting one (so the comparison above means something)
    assert {"etc/passwd", "data/passwd.hard1", "home/passwd.hard2"} in links_b
    assert "etc/empty" not in tree_b and "data/many/f07" not in tree_b and "data/many/f08" in tree_b
    assert sorted(k for k in tree_b if k.startswith("opt/replaced/")) == ["opt/replaced/new"]
    assert tree_b["srv/null"][6] == (1, 3) and tree_b["srv/loop9"][6] == (7, 9)
    assert tree_b["usr/bin/tool"][1] == 0o4755 and tree_b["tmp"][1] == 0o1777
    assert tree_b["home/user/notes"][2:4] == (1000, 1001)
    assert tree_b["usr/lib/rel.link"][6] == "../../etc/passwd"
    assert ("user.comment", b"an xattr") in tree_b["etc/hostname"][7] or \
        not tree_a["etc/hostname"][7], "umoci kept the xattr from the original but not from ours"


# ====================================================================== determinism, re-conversion


def test_converting_twice_gives_identical_blobs(work, source, converted) -> None:
    dst, first = converted
    again = os.path.join(work, "conv-again")
    second = convert(f"oci:{source}:{TAG}", f"oci:{again}:{TAG}", frame_size=FRAME, progress=False)
    assert second.root == first.root
    assert layer_digests(again) == layer_digests(dst)
    for d in layer_digests(dst):
        assert filecmp.cmp(images.blob_path(dst, d), images.blob_path(again, d), shallow=False)
    assert images.read_blob(again, first.root["digest"]) == images.read_blob(dst, first.root["digest"])


def test_converting_a_converted_image_copies_its_layers(work, converted, conv_image) -> None:
    dst, _ = converted
    out = os.path.join(work, "conv-of-conv")
    result = convert(f"oci:{dst}:{TAG}", f"oci:{out}:{TAG}", frame_size=FRAME, progress=False)
    assert result.copied_layers == len(conv_image.layers) and result.layers == []
    img = images.image(out, TAG)
    assert img.layers == conv_image.layers  # descriptors (annotations included) kept as they are
    assert img.manifest["config"] == conv_image.manifest["config"]
    for layer in img.layers:
        assert filecmp.cmp(img.blob(layer["digest"]), conv_image.blob(layer["digest"]), shallow=False)
    images.check_layout_intact(out)


def test_frame_size_and_level_change_the_blob_not_the_tar(work, source, src_tars, converted) -> None:
    dst, first = converted
    other = os.path.join(work, "conv-1m")
    result = convert(f"oci:{source}:{TAG}", f"oci:{other}:{TAG}", frame_size=1 << 20, level=1,
                     threads=1, progress=False)
    assert layer_digests(other)[0] != layer_digests(dst)[0]
    img = images.image(other, TAG)
    for i, layer in enumerate(img.layers):
        assert zstd_cli_decompress(img.blob(layer["digest"])) == src_tars[i]
        _, idx = load_toc(img.blob(layer["digest"]), layer)
        assert idx.toc.frame_size == 1 << 20
        frame_placement(idx.toc)
    assert result.layers[0].frames < first.layers[0].frames


# ====================================================================== other sources


def test_docker_archive_source(work, source, converted) -> None:
    """A docker-archive (written by skopeo: uncompressed layers) converts to the same layer blobs."""
    archive = os.path.join(work, "image.tar")
    run("skopeo", "copy", "--quiet", f"oci:{source}:{TAG}", f"docker-archive:{archive}:example/app:{TAG}")
    out = os.path.join(work, "conv-docker")
    result = convert(f"docker-archive:{archive}", f"oci:{out}:{TAG}", frame_size=FRAME, progress=False)
    assert layer_digests(out) == layer_digests(converted[0])
    img = images.image(out, TAG)
    assert img.diff_ids == images.image(converted[0], TAG).diff_ids
    assert all(l["mediaType"] == LAZY_MEDIA for l in img.layers)
    assert not any(k.startswith("io.lazylayer.docker-archive") for l in img.layers for k in l["annotations"])
    assert result.copied_layers == 0
    # the fully qualified name skopeo stored works as a reference too
    out2 = os.path.join(work, "conv-docker2")
    convert(f"docker-archive:{archive}:docker.io/example/app:{TAG}", f"oci:{out2}:{TAG}", frame_size=FRAME)
    assert layer_digests(out2) == layer_digests(out)
    with pytest.raises(OciReferenceError, match="no image tagged"):
        convert(f"docker-archive:{archive}:example/other:{TAG}", f"oci:{out2}:x", frame_size=FRAME)


def test_docker_archive_short_reference(work, source) -> None:
    archive = os.path.join(work, "image-short.tar")
    run("skopeo", "copy", "--quiet", f"oci:{source}:{TAG}", f"docker-archive:{archive}:example/app:{TAG}")
    run("skopeo", "inspect", "--raw", f"docker-archive:{archive}:example/app:{TAG}")  # skopeo reads it so
    convert(f"docker-archive:{archive}:example/app:{TAG}", f"oci:{work}/conv-short:{TAG}", frame_size=FRAME)


def test_zstd_source_layers(work, source, converted) -> None:
    """Plain tar+zstd layers (no lazylayer TOC) are converted, not copied: same blobs as from gzip."""
    zsrc = os.path.join(work, "zstd-src")
    run("skopeo", "copy", "--quiet", "--dest-compress", "--dest-compress-format", "zstd",
        f"oci:{source}:{TAG}", f"oci:{zsrc}:{TAG}")
    assert all(l["mediaType"] == LAZY_MEDIA for l in images.image(zsrc, TAG).layers)
    out = os.path.join(work, "conv-zstd")
    result = convert(f"oci:{zsrc}:{TAG}", f"oci:{out}:{TAG}", frame_size=FRAME, progress=False)
    assert result.copied_layers == 0 and len(result.layers) == 3
    assert layer_digests(out) == layer_digests(converted[0])


def test_uncompressed_source_layers(work, src_image, src_tars, converted) -> None:
    """A layout with plain tar layers (written by hand, same config) converts to the same blobs."""
    plain = os.path.join(work, "plain-src")
    images.init_layout(plain)
    config = images.read_blob(src_image.layout, src_image.manifest["config"]["digest"])
    cdesc = images.write_blob(plain, config, images.OCI_CONFIG)
    layers = [images.write_blob(plain, t, images.LAYER_MEDIA[None]) for t in src_tars]
    manifest = {"schemaVersion": 2, "mediaType": images.OCI_MANIFEST, "config": cdesc, "layers": layers}
    mdesc = images.write_blob(plain, json.dumps(manifest).encode(), images.OCI_MANIFEST)
    images.write_index(plain, [images.tagged(mdesc, TAG)])
    out = os.path.join(work, "conv-plain")
    convert(f"oci:{plain}:{TAG}", f"oci:{out}:{TAG}", frame_size=FRAME, progress=False)
    assert layer_digests(out) == layer_digests(converted[0])
    assert images.image(out, TAG).manifest["config"]["digest"] == cdesc["digest"]


def test_untagged_single_image_layout(work, src_tars) -> None:
    """oci:DIR without a tag works when the layout holds one image."""
    src = os.path.join(work, "untagged")
    desc = images.write_image(src, src_tars[2:], compression="gzip")
    images.write_index(src, [desc])
    out = os.path.join(work, "conv-untagged")
    convert(f"oci:{src}", f"oci:{out}:x", frame_size=FRAME)
    assert zstd_cli_decompress(images.blob_path(out, layer_digests(out, "x")[0])) == src_tars[2]


def test_multi_platform_index_converts_every_platform(work, src_tars) -> None:
    """A hand-made index of three platforms (gzip, gzip, zstd; one layer shared): every one converted."""
    base, extra = src_tars[2], [images.make_tar([images.reg(f"plat/{p}", p.encode() * 1000)])
                                for p in ("amd64", "arm64", "arm")]
    src = os.path.join(work, "multi-src")
    platforms = [{"architecture": "amd64", "os": "linux"},
                 {"architecture": "arm64", "os": "linux", "variant": "v8"},
                 {"architecture": "arm", "os": "linux", "variant": "v7"}]
    descs = [images.write_image(src, [base, extra[0]], "gzip", platform=platforms[0]),
             images.write_image(src, [base, extra[1]], "gzip", platform=platforms[1]),
             images.write_image(src, [base, extra[2]], "zstd", platform=platforms[2])]
    idx_annotations = {"org.opencontainers.image.title": "multi", "org.example.note": "kept"}
    idx = {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": descs, "annotations": idx_annotations}
    idesc = images.write_blob(src, json.dumps(idx).encode(), images.OCI_INDEX)
    images.write_index(src, [images.tagged(idesc, "multi")])

    out = os.path.join(work, "multi-conv")
    result = convert(f"oci:{src}:multi", f"oci:{out}:multi", frame_size=FRAME, progress=False)
    assert result.root["mediaType"] == images.OCI_INDEX
    new_index, imgs = images.images(out, "multi")
    assert new_index is not None and new_index["annotations"] == idx_annotations
    assert [m["platform"] for m in new_index["manifests"]] == platforms
    assert len(imgs) == 3
    for img, desc, tar in zip(imgs, descs, extra):
        assert img.manifest["annotations"][ANN_SOURCE] == desc["digest"]
        assert img.manifest["annotations"]["org.example.built-by"] == "tests"
        assert img.config["architecture"] == desc["platform"]["architecture"]
        assert [l["mediaType"] for l in img.layers] == [LAZY_MEDIA] * 2
        assert [zstd_cli_decompress(img.blob(l["digest"])) for l in img.layers] == [base, tar]
    # the shared base converts to one blob, whatever its source compression
    assert len({img.layers[0]["digest"] for img in imgs}) == 1
    assert len({info.digest for info in result.layers}) == 4
    images.check_layout_intact(out)
    # the platforms convert exactly as they would alone
    alone = os.path.join(work, "multi-alone")
    images.write_index(src, [images.tagged(descs[1], "arm64")])
    convert(f"oci:{src}:arm64", f"oci:{alone}:arm64", frame_size=FRAME)
    assert layer_digests(alone, "arm64") == [l["digest"] for l in imgs[1].layers]


# ====================================================================== bad input


@pytest.fixture
def dest(tmp_path, src_tars) -> str:
    """A destination layout already holding a good image tagged 'good' (and 'bad', which must survive)."""
    src = str(tmp_path / "good-src")
    images.build_layout(src, src_tars[2:], tag="good")
    out = str(tmp_path / "dest")
    convert(f"oci:{src}:good", f"oci:{out}:good", frame_size=FRAME)
    convert(f"oci:{src}:good", f"oci:{out}:bad", frame_size=FRAME)
    return out


def assert_refused(src: str, dest: str, exc: type[BaseException], match: str) -> BaseException:
    """Converting src into dest:bad fails with exc; dest's index.json is untouched and intact."""
    with open(os.path.join(dest, "index.json"), "rb") as f:
        before = f.read()
    with pytest.raises(exc, match=match) as info:
        convert(src, f"oci:{dest}:bad", frame_size=FRAME, progress=False)
    with open(os.path.join(dest, "index.json"), "rb") as f:
        assert f.read() == before, "index.json changed after a failed conversion"
    images.check_layout_intact(dest)
    assert isinstance(info.value, errors.LazyLayerError)
    return info.value


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:]


def test_corrupt_gzip_layer(tmp_path, src_tars, dest) -> None:
    """A gzip stream with a flipped byte (its digest recomputed, so only the gzip is wrong)."""
    tar = src_tars[0]
    blob = images.compress(tar, "gzip")
    bad = flip(blob, len(blob) // 2)
    src = images.build_layout(str(tmp_path / "src"), [src_tars[2], tar], blobs=[images.compress(src_tars[2], "gzip"), bad])
    assert_refused(src, dest, errors.IntegrityError, r"(?i)corrupt|crc|check|header")


def test_corrupt_layer_with_stale_digest(tmp_path, src_tars, dest) -> None:
    """A plain tar layer changed after its manifest was written: the blob digest no longer matches."""
    src = str(tmp_path / "src")
    images.build_layout(src, [src_tars[2]], compression=None)
    digest = images.image(src, "latest").layers[0]["digest"]
    path = images.blob_path(src, digest)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(flip(data, len(data) - 5000))  # inside app/lib/blob's content: the tar still parses
    err = assert_refused(f"oci:{src}:latest", dest, errors.IntegrityError, "digest")
    assert digest in str(err)


def test_truncated_gzip_layer(tmp_path, src_tars, dest) -> None:
    blob = images.compress(src_tars[0], "gzip")
    src = images.build_layout(str(tmp_path / "src"), [src_tars[0]], blobs=[blob[:len(blob) // 2]])
    assert_refused(src, dest, errors.FormatError, "truncated")


def test_truncated_plain_layer(tmp_path, src_tars, dest) -> None:
    tar = src_tars[0]
    src = images.build_layout(str(tmp_path / "src"), [tar], compression=None, blobs=[tar[:len(tar) // 2 + 100]])
    assert_refused(src, dest, errors.FormatError, "truncated")


def test_truncated_zstd_layer(tmp_path, src_tars, dest) -> None:
    blob = images.compress(src_tars[0], "zstd")
    src = images.build_layout(str(tmp_path / "src"), [src_tars[0]], compression="zstd", blobs=[blob[:-1000]])
    assert_refused(src, dest, errors.IntegrityError, "(?i)truncated|corrupt")


def test_trailing_garbage_after_gzip(tmp_path, src_tars, dest) -> None:
    blob = images.compress(src_tars[2], "gzip") + b"not gzip at all"
    src = images.build_layout(str(tmp_path / "src"), [src_tars[2]], blobs=[blob])
    assert_refused(src, dest, errors.IntegrityError, "(?i)gzip|unexpected|corrupt")


def test_diff_id_mismatch(tmp_path, src_tars, dest) -> None:
    src = images.build_layout(str(tmp_path / "src"), [src_tars[2], src_tars[1]],
                              diff_ids=[sha256(src_tars[2]), sha256(b"something else")])
    assert_refused(src, dest, errors.IntegrityError, "diff_id")


def test_failure_keeps_the_existing_tag(tmp_path, src_tars, dest) -> None:
    """Re-converting onto an existing tag and failing (in the last layer) leaves the tag on the old image."""
    old = images.root_descriptor(dest, "bad")
    blob = images.compress(src_tars[1], "gzip")
    src = images.build_layout(str(tmp_path / "src"), [src_tars[0], src_tars[1]],
                              blobs=[images.compress(src_tars[0], "gzip"), blob[:-9]])
    assert_refused(src, dest, errors.FormatError, "truncated")
    assert images.root_descriptor(dest, "bad") == old


def test_absolute_paths_are_normalized(tmp_path, dest) -> None:
    """Documented normalisation: a leading '/' or './', '//' and a trailing '/' are dropped in TOC names;
    the tar itself is kept byte for byte."""
    tar = images.make_tar([
        images.entry("/", tarfile.DIRTYPE),
        images.entry("/abs/", tarfile.DIRTYPE),
        images.reg("/abs/file", b"absolute\n"),
        images.reg("./dot/file", b"dotted\n"),
        images.reg("a//b/c", b"double slash\n"),
        images.entry("/abs/hard", tarfile.LNKTYPE, linkname="/abs/file"),
        images.entry("/abs/sym", tarfile.SYMTYPE, linkname="/abs/file"),
    ], fmt=tarfile.GNU_FORMAT)
    src = images.build_layout(str(tmp_path / "src"), [tar])
    out = str(tmp_path / "out")
    convert(src, f"oci:{out}:x", frame_size=FRAME)
    img = images.image(out, "x")
    assert zstd_cli_decompress(img.blob(img.layers[0]["digest"])) == tar
    _, idx = load_toc(img.blob(img.layers[0]["digest"]), img.layers[0])
    assert [(e["name"], e.get("linkname")) for e in idx.toc.entries] == [
        (".", None), ("abs", None), ("abs/file", None), ("dot/file", None), ("a/b/c", None),
        ("abs/hard", "abs/file"), ("abs/sym", "/abs/file")]  # symlink targets are data: kept


@pytest.mark.parametrize("member", [
    images.reg("../escape", b"x"),
    images.reg("a/../../escape", b"x"),
    images.reg("/../escape", b"x"),
    images.entry("ok/link", tarfile.LNKTYPE, linkname="../../etc/shadow"),
], ids=["dotdot", "nested-dotdot", "abs-dotdot", "hardlink-target"])
def test_dotdot_paths_are_refused(tmp_path, dest, member) -> None:
    tar = images.make_tar([images.reg("fine", b"fine\n"), member])
    src = images.build_layout(str(tmp_path / "src"), [tar])
    assert_refused(src, dest, errors.FormatError, r"'\.\.'")


def test_symlink_to_parent_is_fine(tmp_path) -> None:
    """Symlink targets are not paths the layer writes: '../x' (e.g. /usr/lib64 -> ../lib) converts."""
    tar = images.make_tar([images.entry("usr", tarfile.DIRTYPE),
                           images.entry("usr/lib64", tarfile.SYMTYPE, linkname="../lib"),
                           images.entry("up", tarfile.SYMTYPE, linkname="../../../../etc")])
    src = images.build_layout(str(tmp_path / "src"), [tar])
    out = str(tmp_path / "out")
    convert(src, f"oci:{out}:x")
    img = images.image(out, "x")
    _, idx = load_toc(img.blob(img.layers[0]["digest"]), img.layers[0])
    assert [e.get("linkname") for e in idx.toc.entries] == [None, "../lib", "../../../../etc"]


def test_duplicate_entries_are_kept_in_order(tmp_path, dest) -> None:
    tar = images.make_tar([images.reg("dup", b"first version\n"), images.reg("other", b"o"),
                           images.reg("dup", b"second, longer version\n" * 100),
                           images.entry("dup", tarfile.SYMTYPE, linkname="other")])
    src = images.build_layout(str(tmp_path / "src"), [tar])
    out = str(tmp_path / "out")
    convert(src, f"oci:{out}:x", frame_size=FRAME)
    img = images.image(out, "x")
    assert zstd_cli_decompress(img.blob(img.layers[0]["digest"])) == tar
    _, idx = load_toc(img.blob(img.layers[0]["digest"]), img.layers[0])
    assert [toc_view(e) for e in idx.toc.entries] == expected_entries(tar)
    assert [(e["name"], e["type"], e.get("size")) for e in idx.toc.entries] == [
        ("dup", "reg", 14), ("other", "reg", 1), ("dup", "reg", 2300), ("dup", "symlink", None)]


def test_tar_bomb_of_tiny_files(tmp_path) -> None:
    """200,000 one-byte files: converts, and tiny files share frames (frames ~ tar size / frame size)."""
    count = 200_000
    tar = images.tiny_files_tar(count, 1)
    src = images.build_layout(str(tmp_path / "src"), [tar], compression=None)
    del tar
    out = str(tmp_path / "out")
    result = convert(src, f"oci:{out}:x", progress=False)
    info = result.layers[0]
    assert info.entries == count
    frame_size = 1 << 20  # the default
    assert info.frames <= info.tar_size // frame_size + 2, f"{info.frames} frames for {count} tiny files"
    img = images.image(out, "x")
    blob, idx = load_toc(img.blob(img.layers[0]["digest"]), img.layers[0])
    assert len(idx.toc.entries) == count and idx.toc.entries[-1]["name"] == f"d{(count - 1) // 1000:03d}/f{count - 1:07d}"
    aligned, shared = frame_placement(idx.toc)
    assert shared > count - 2 * info.frames
    assert len(blob) < info.tar_size // 20  # highly compressible, and the TOC stays small per entry


def test_malformed_manifest_json(tmp_path, dest) -> None:
    src = str(tmp_path / "src")
    images.init_layout(src)
    mdesc = images.write_blob(src, b'{"schemaVersion": 2, "layers": [', images.OCI_MANIFEST)
    images.write_index(src, [images.tagged(mdesc, "x")])
    assert_refused(f"oci:{src}:x", dest, errors.FormatError, "not valid JSON")


def test_manifest_without_layers(tmp_path, dest) -> None:
    src = str(tmp_path / "src")
    images.init_layout(src)
    mdesc = images.write_blob(src, b'{"schemaVersion": 2, "mediaType": "%s"}' % images.OCI_MANIFEST.encode(),
                              images.OCI_MANIFEST)
    images.write_index(src, [images.tagged(mdesc, "x")])
    assert_refused(f"oci:{src}:x", dest, errors.FormatError, "no config or layers")


def test_missing_layer_blob(tmp_path, src_tars, dest) -> None:
    src = str(tmp_path / "src")
    ref = images.build_layout(src, [src_tars[2], src_tars[1]])
    os.unlink(images.blob_path(src, images.image(src, "latest").layers[1]["digest"]))
    assert_refused(ref, dest, errors.FormatError, "missing")


def test_missing_config_blob(tmp_path, src_tars, dest) -> None:
    src = str(tmp_path / "src")
    ref = images.build_layout(src, [src_tars[2]])
    os.unlink(images.blob_path(src, images.image(src, "latest").manifest["config"]["digest"]))
    assert_refused(ref, dest, errors.FormatError, "missing")


def test_config_diff_ids_count_mismatch(tmp_path, src_tars, dest) -> None:
    src = images.build_layout(str(tmp_path / "src"), [src_tars[2], src_tars[1]], diff_ids=[sha256(src_tars[2])])
    assert_refused(src, dest, errors.FormatError, "diff_ids")


def test_bad_references(tmp_path, src_tars, dest) -> None:
    src = str(tmp_path / "src")
    images.build_layout(src, [src_tars[2]], tag="present")
    assert_refused(f"oci:{src}:absent", dest, OciReferenceError, "no image tagged 'absent'")
    assert_refused(f"oci:{tmp_path}/nowhere:x", dest, OciReferenceError, "not an OCI image layout")
    assert_refused(f"docker-archive:{tmp_path}/nowhere.tar", dest, OciReferenceError, "docker-archive")
    with pytest.raises(OciReferenceError, match="oci:DIR"):
        convert(f"oci:{src}:present", f"docker-archive:{tmp_path}/out.tar")
    assert not os.path.exists(f"{tmp_path}/out.tar")


def test_tampered_lazy_layer_is_not_copied(tmp_path, converted, dest) -> None:
    """An already-lazy layer whose blob no longer matches its digest is refused, not copied.

    (Layer 2 is in ``dest`` already, so it would not be read at all: tamper with layer 1.)
    """
    src = str(tmp_path / "src")
    shutil.copytree(converted[0], src)
    layer = images.image(src, TAG).layers[1]
    path = images.blob_path(src, layer["digest"])
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(flip(data, 100))
    assert_refused(f"oci:{src}:{TAG}", dest, errors.IntegrityError, "digest")


def test_gnu_sparse_members_are_refused(tmp_path, dest) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "sparse", "wb") as f:
        f.truncate(4 << 20)
        f.seek(0, 2)
        f.write(b"end\n")
    for fmt in ("gnu", "posix"):
        tar = run("tar", "-C", str(root), "--sparse", f"--format={fmt}", "-cf", "-", "sparse").stdout
        src = images.build_layout(str(tmp_path / f"src-{fmt}"), [tar])
        assert_refused(src, dest, errors.FormatError, "sparse")


def test_gnu_tar_layer_with_record_padding(tmp_path) -> None:
    """A layer made by GNU tar (long names, 10 KiB record padding after the end blocks) is kept byte for byte."""
    root = tmp_path / "root"
    (root / ("d" * 120)).mkdir(parents=True)
    (root / ("d" * 120) / ("f" * 150)).write_bytes(b"long name\n")
    (root / "small").write_bytes(b"x" * 700)
    tar = run("tar", "-C", str(root), "--format=gnu", "--sort=name", "-cf", "-", ".").stdout
    assert len(tar) % 10240 == 0
    src = images.build_layout(str(tmp_path / "src"), [tar], compression="gzip")
    out = str(tmp_path / "out")
    convert(src, f"oci:{out}:x", frame_size=FRAME)
    img = images.image(out, "x")
    blob = img.blob(img.layers[0]["digest"])
    assert zstd_cli_decompress(blob) == tar
    _, idx = load_toc(blob, img.layers[0])
    assert [toc_view(e) for e in idx.toc.entries] == expected_entries(tar)
    assert idx.toc.tar_size == len(tar)


@pytest.mark.parametrize("tar,compression", [(b"", None), (b"\0" * 1024, None), (b"", "gzip"), (b"\0" * 1024, "zstd")],
                         ids=["zero-bytes", "end-blocks-only", "gzip-of-nothing", "zstd-end-blocks"])
def test_empty_layers(tmp_path, tar, compression) -> None:
    src = images.build_layout(str(tmp_path / "src"), [tar], compression=compression)
    out = str(tmp_path / "out")
    result = convert(src, f"oci:{out}:x", frame_size=FRAME)
    assert result.layers[0].entries == 0 and result.layers[0].diff_id == sha256(tar)
    img = images.image(out, "x")
    blob = img.blob(img.layers[0]["digest"])
    assert zstd_cli_decompress(blob) == tar
    _, idx = load_toc(blob, img.layers[0])
    assert idx.toc.entries == [] and idx.toc.tar_size == len(tar)
    pyzstd = pytest.importorskip("pyzstd")
    with pyzstd.SeekableZstdFile(blob, "rb") as f:
        assert f.read() == tar


def test_in_place_conversion(tmp_path, src_tars) -> None:
    """Converting within one layout: to a new tag (both kept), then onto the source's own tag."""
    layout = str(tmp_path / "layout")
    images.build_layout(layout, src_tars, tag="orig")
    convert(f"oci:{layout}:orig", f"oci:{layout}:lazy", frame_size=FRAME)
    assert images.image(layout, "orig").layers[0]["mediaType"] == images.LAYER_MEDIA["gzip"]
    lazy = images.image(layout, "lazy")
    assert [l["mediaType"] for l in lazy.layers] == [LAZY_MEDIA] * 3
    images.check_layout_intact(layout)
    convert(f"oci:{layout}:orig", f"oci:{layout}:orig", frame_size=FRAME)
    assert images.image(layout, "orig").layers == lazy.layers
    assert sorted(m["annotations"][images.REF_NAME] for m in images.index(layout)["manifests"]) == ["lazy", "orig"]
    images.check_layout_intact(layout)


# ---------------------------------------------------------------------- regressions: bugs found by these tests


def test_non_utf8_names(tmp_path, dest) -> None:
    """Linux file names are bytes; a layer with a non-UTF-8 name must give a readable TOC (or be refused)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as t:
        for info, data in (images.reg("bad\udcffname", b"abc"),
                           images.entry("link", tarfile.SYMTYPE, linkname="tar\udcfeget")):
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    tar = buf.getvalue()
    assert b"bad\xffname" in tar
    src = images.build_layout(str(tmp_path / "src"), [tar])
    try:
        convert(src, f"oci:{dest}:bad", frame_size=FRAME)
    except errors.FormatError:
        images.check_layout_intact(dest)  # refusing is acceptable too
        return
    img = images.image(dest, "bad")
    blob = img.blob(img.layers[0]["digest"])
    assert zstd_cli_decompress(blob) == tar
    _, idx = load_toc(blob, img.layers[0])
    assert [os.fsencode(e["name"]) for e in idx.toc.entries] == [b"bad\xffname", b"link"]
    assert os.fsencode(idx.toc.entries[1]["linkname"]) == b"tar\xfeget"


def test_index_with_attestation_manifest(tmp_path) -> None:
    """`docker buildx build` adds an attestation manifest (platform unknown/unknown) to every index it pushes.

    Its layers are in-toto JSON, not tars: the image's real platform must convert, and the
    attestation's layers must never be rewritten as tar+zstd (kept unchanged, or the manifest dropped).
    """
    src = str(tmp_path / "src")
    tar = images.make_tar([images.reg("hello", b"hi\n")])
    image_desc = images.write_image(src, [tar], "gzip", platform={"architecture": "amd64", "os": "linux"})
    statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "predicateType": "https://spdx.dev/Document",
                            "subject": [{"name": "x", "digest": {"sha256": hexdigest(image_desc["digest"])}}],
                            "predicate": {}}).encode()
    config = {"architecture": "unknown", "os": "unknown", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [sha256(statement)]}}
    cdesc = images.write_blob(src, json.dumps(config).encode(), images.OCI_CONFIG)
    ldesc = images.write_blob(src, statement, "application/vnd.in-toto+json",
                              annotations={"in-toto.io/predicate-type": "https://spdx.dev/Document"})
    manifest = {"schemaVersion": 2, "mediaType": images.OCI_MANIFEST, "config": cdesc, "layers": [ldesc]}
    att_desc = images.write_blob(src, json.dumps(manifest).encode(), images.OCI_MANIFEST,
                                 platform={"architecture": "unknown", "os": "unknown"},
                                 annotations={"vnd.docker.reference.digest": image_desc["digest"],
                                              "vnd.docker.reference.type": "attestation-manifest"})
    idx = {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": [image_desc, att_desc]}
    idesc = images.write_blob(src, json.dumps(idx).encode(), images.OCI_INDEX)
    images.write_index(src, [images.tagged(idesc, "x")])

    out = str(tmp_path / "out")
    convert(f"oci:{src}:x", f"oci:{out}:x", frame_size=FRAME)
    _, imgs = images.images(out, "x")
    real = [i for i in imgs if i.manifest_desc.get("platform", {}).get("architecture") == "amd64"]
    assert len(real) == 1 and real[0].layers[0]["mediaType"] == LAZY_MEDIA
    assert zstd_cli_decompress(real[0].blob(real[0].layers[0]["digest"])) == tar
    for img in imgs:
        for layer in img.layers:
            if layer["mediaType"] != LAZY_MEDIA:
                assert layer == ldesc and images.read_blob(out, layer["digest"]) == statement
    images.check_layout_intact(out)


@pytest.mark.parametrize("case", ["corrupt-gzip", "truncated-tar", "dotdot"])
def test_layer_errors_name_the_layer(tmp_path, src_tars, case) -> None:
    good = images.compress(src_tars[2], "gzip")
    if case == "corrupt-gzip":
        tar = src_tars[0]
        blob = flip(images.compress(tar, "gzip"), 100_000)
    elif case == "truncated-tar":
        tar = src_tars[0]
        blob = images.compress(tar[:len(tar) // 2], "gzip")
    else:
        tar = images.make_tar([images.reg("../escape", b"x")])
        blob = images.compress(tar, "gzip")
    src = str(tmp_path / "src")
    images.build_layout(src, [src_tars[2], tar], blobs=[good, blob])
    bad_digest = images.image(src, "latest").layers[1]["digest"]
    with pytest.raises(errors.IntegrityError) as info:
        convert(f"oci:{src}:latest", f"oci:{tmp_path}/out:x", frame_size=FRAME)
    assert bad_digest in str(info.value)


# ====================================================================== CLI


def test_cli_convert(work, source, converted) -> None:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    help_ = subprocess.run([sys.executable, "-m", "lazylayer", "convert", "--help"], capture_output=True,
                           env=env)
    assert help_.returncode == 0 and b"SRC" in help_.stdout and b"--frame-size" in help_.stdout
    out = os.path.join(work, "cli-conv")
    p = subprocess.run([sys.executable, "-m", "lazylayer", "convert", "--json", "--frame-size", "64K",
                        f"oci:{source}:{TAG}", f"oci:{out}:{TAG}"], capture_output=True, env=env)
    assert p.returncode == 0, p.stderr.decode()
    summary = json.loads(p.stdout)
    assert summary["digest"] == converted[1].root["digest"]  # same options, same image as the API gives
    assert layer_digests(out) == layer_digests(converted[0])
    bad = subprocess.run([sys.executable, "-m", "lazylayer", "convert", f"oci:{source}:nope", f"oci:{out}:y"],
                         capture_output=True, env=env)
    assert bad.returncode == 1 and b"no image tagged" in bad.stderr
