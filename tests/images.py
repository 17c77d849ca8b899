"""Helpers for the converter tests: real images built with umoci and skopeo,
hand-made OCI layouts (for bad input), and a tree comparison for unpacked rootfs.

Nothing here knows lazylayer's internals; the tests judge the converter by
what standard tools (umoci, skopeo, zstd, tarfile, pyzstd) make of its output.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from typing import Any, Iterable

import zstandard

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    None: "application/vnd.oci.image.layer.v1.tar",
}
REF_NAME = "org.opencontainers.image.ref.name"


def run(*cmd: str, **kw: Any) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail with its output."""
    p = subprocess.run(list(cmd), capture_output=True, **kw)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout.decode(errors='replace')}"
                             f"\n{p.stderr.decode(errors='replace')}")
    return p


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ------------------------------------------------------------------ reading a layout


@dataclass
class Image:
    """One platform image of an OCI layout, as plain JSON and paths."""

    layout: str
    manifest_desc: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]

    def blob(self, digest: str) -> str:
        return blob_path(self.layout, digest)

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.manifest["layers"]

    @property
    def diff_ids(self) -> list[str]:
        return self.config["rootfs"]["diff_ids"]

    def layer_tar(self, i: int) -> bytes:
        """The uncompressed tar of layer i, decompressed by standard tools (not lazylayer)."""
        with open(self.blob(self.layers[i]["digest"]), "rb") as f:
            return decompress(f.read())


def blob_path(layout: str, digest: str) -> str:
    return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])


def read_blob(layout: str, digest: str) -> bytes:
    with open(blob_path(layout, digest), "rb") as f:
        return f.read()


def read_json_blob(layout: str, desc: dict[str, Any]) -> dict[str, Any]:
    data = read_blob(layout, desc["digest"])
    assert sha256(data) == desc["digest"] and len(data) == desc["size"]
    return json.loads(data)


def index(layout: str) -> dict[str, Any]:
    with open(os.path.join(layout, "index.json"), "rb") as f:
        return json.load(f)


def root_descriptor(layout: str, tag: str) -> dict[str, Any]:
    found = [m for m in index(layout)["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    assert len(found) == 1, f"{layout}: {len(found)} entries tagged {tag!r}"
    return found[0]


def images(layout: str, tag: str) -> tuple[dict[str, Any] | None, list[Image]]:
    """(the image index if the tag names one, else None; every platform's image)."""
    desc = root_descriptor(layout, tag)
    doc = read_json_blob(layout, desc)
    if doc.get("mediaType") == OCI_INDEX or "manifests" in doc:
        return doc, [_image(layout, m) for m in doc["manifests"]]
    return None, [_image(layout, desc)]


def image(layout: str, tag: str) -> Image:
    idx, imgs = images(layout, tag)
    assert idx is None and len(imgs) == 1
    return imgs[0]


def _image(layout: str, desc: dict[str, Any]) -> Image:
    manifest = read_json_blob(layout, desc)
    return Image(layout, desc, manifest, read_json_blob(layout, manifest["config"]))


def referenced_blobs(layout: str) -> set[str]:
    """Every digest reachable from index.json (indexes, manifests, configs, layers)."""
    seen: set[str] = set()

    def walk(desc: dict[str, Any]) -> None:
        seen.add(desc["digest"])
        if desc.get("mediaType") in (OCI_INDEX, OCI_MANIFEST,
                                     "application/vnd.docker.distribution.manifest.v2+json",
                                     "application/vnd.docker.distribution.manifest.list.v2+json"):
            doc = read_json_blob(layout, desc)
            for m in doc.get("manifests", []):
                walk(m)
            if "config" in doc:
                seen.add(doc["config"]["digest"])
            for layer in doc.get("layers", []):
                seen.add(layer["digest"])

    for m in index(layout)["manifests"]:
        walk(m)
    return seen


def check_layout_intact(layout: str) -> None:
    """Every blob index.json reaches exists and matches its digest; no temporary files are left."""
    for digest in referenced_blobs(layout):
        path = blob_path(layout, digest)
        assert os.path.exists(path), f"{layout}: index.json references missing blob {digest}"
        assert file_sha256(path) == digest, f"{layout}: blob {digest} does not match its name"
    leftovers = [n for n in os.listdir(os.path.join(layout, "blobs", "sha256")) if n.startswith(".")]
    leftovers += [n for n in os.listdir(layout) if n.startswith(".tmp")]
    assert not leftovers, f"{layout}: temporary files left behind: {leftovers}"


# ------------------------------------------------------------------ compression


def decompress(blob: bytes) -> bytes:
    """gzip, zstd or plain, by magic bytes (standard Python libraries only)."""
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    if blob[:4] == b"\x28\xb5\x2f\xfd":
        return b"".join(_zstd_frames(blob))
    return blob


def _zstd_frames(blob: bytes) -> Iterable[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    while chunk := reader.read(1 << 20):
        yield chunk


def compress(tar: bytes, how: str | None) -> bytes:
    if how == "gzip":
        return gzip.compress(tar, compresslevel=1, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(tar)
    assert how is None
    return tar


# ------------------------------------------------------------------ hand-made layouts


def init_layout(path: str) -> None:
    os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    if not os.path.exists(os.path.join(path, "index.json")):
        write_index(path, [])


def write_blob(path: str, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    with open(blob_path(path, sha256(data)), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def write_index(path: str, manifests: list[dict[str, Any]], annotations: dict[str, str] | None = None) -> None:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    if annotations:
        doc["annotations"] = annotations
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(doc, f)


def tagged(desc: dict[str, Any], tag: str) -> dict[str, Any]:
    return {**desc, "annotations": {**desc.get("annotations", {}), REF_NAME: tag}}


def write_image(path: str, layers: list[bytes], compression: str | None = "gzip",
                diff_ids: list[str] | None = None, platform: dict[str, str] | None = None,
                blobs: list[bytes] | None = None, architecture: str = "amd64") -> dict[str, Any]:
    """Write config, layer blobs and manifest for an image made of these tars; return the manifest descriptor.

    ``blobs`` replaces the layer blobs as written (to corrupt them) while the
    diff_ids stay those of ``layers``; ``diff_ids`` overrides those.
    """
    init_layout(path)
    blobs = blobs if blobs is not None else [compress(t, compression) for t in layers]
    config = {
        "architecture": (platform or {}).get("architecture", architecture),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha256(t) for t in layers]},
    }
    cdesc = write_blob(path, json.dumps(config).encode(), OCI_CONFIG)
    ldescs = [write_blob(path, b, LAYER_MEDIA[compression]) for b in blobs]
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": ldescs,
                "annotations": {"org.example.built-by": "tests"}}
    extra = {"platform": platform} if platform else {}
    return write_blob(path, json.dumps(manifest).encode(), OCI_MANIFEST, **extra)


def build_layout(path: str, layers: list[bytes], tag: str = "latest", **kw: Any) -> str:
    """A one-image OCI layout from tars; returns ``oci:PATH:TAG``."""
    desc = write_image(path, layers, **kw)
    write_index(path, [tagged(desc, tag)])
    return f"oci:{path}:{tag}"


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def reg(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    return info, data


def entry(name: str, kind: bytes, linkname: str = "", mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, mode, 1_700_000_000
    return info, None


def tiny_files_tar(count: int, size: int = 1) -> bytes:
    """A tar of ``count`` files of ``size`` bytes each (ustar headers built fast from a template)."""
    assert size <= 512
    template = tarfile.TarInfo("x")
    template.size, template.mode, template.mtime = size, 0o644, 1_700_000_000
    blocks = []
    pad = b"\0" * ((512 - size % 512) % 512)
    for i in range(count):
        template.name = f"d{i // 1000:03d}/f{i:07d}"
        blocks.append(template.tobuf(tarfile.USTAR_FORMAT))
        if size:
            blocks.append((b"%07d" % i)[:size].ljust(size, b"x") + pad)
    blocks.append(b"\0" * 1024)
    return b"".join(blocks)


# ------------------------------------------------------------------ the umoci-built image


def _write(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.lchown(path, uid, gid)  # before chmod: chown clears setuid/setgid bits
    os.chmod(path, mode)


def build_umoci_image(work: str, tag: str = "v1") -> str:
    """A three-layer image, each layer made by umoci from a modified rootfs; returns the layout path.

    Layer 1: dirs, empty/small/several-MB files, many small files, symlinks,
    hardlinks, a fifo, char and block devices, xattrs, setuid/setgid/sticky,
    non-root owners, a long and a non-ASCII name.  Layer 2: deletes files
    (whiteouts), replaces a directory's content, changes a mode.  Layer 3: adds files.
    """
    layout = os.path.join(work, "src")
    bundle = os.path.join(work, "bundle")
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:{tag}")
    run("umoci", "unpack", "--image", f"{layout}:{tag}", bundle)
    rootfs = os.path.join(bundle, "rootfs")
    rng = random.Random(20240601)

    def p(*parts: str) -> str:
        return os.path.join(rootfs, *parts)

    # ---- layer 1
    for d in ("etc", "usr/bin", "usr/lib", "data/many", "opt/replaced/sub", "home/user", "srv"):
        os.makedirs(p(d), exist_ok=True)
    os.mkdir(p("tmp"), 0o755)
    os.chmod(p("tmp"), 0o1777)
    os.chmod(p("srv"), 0o2775)
    os.lchown(p("home/user"), 1000, 1000)
    _write(p("etc/empty"), b"")
    _write(p("etc/hostname"), b"lazylayer-test\n")
    _write(p("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
    _write(p("data/random.bin"), rng.randbytes(3 << 20))  # incompressible; spans many 64 KiB frames
    text = b"".join(b"line %d of a compressible file\n" % i for i in range(12_000))
    _write(p("data/text.txt"), text)  # ~400 KB
    _write(p("data/exactly64k"), rng.randbytes(64 << 10))
    for i in range(60):
        _write(p("data/many", f"f{i:02d}"), rng.randbytes(rng.randrange(0, 9000)))
    _write(p("usr/bin/tool"), b"#!/bin/sh\necho tool\n", 0o4755)
    _write(p("usr/bin/group-tool"), b"#!/bin/sh\n", 0o2711)
    _write(p("home/user/notes"), b"owned by user\n", 0o600, 1000, 1001)
    _write(p("home/user/h\u00e9llo w\u00f6rld \u2603.txt"), b"unicode name\n")
    long_dir = p("opt", "a" * 60, "b" * 60)
    os.makedirs(long_dir)
    _write(os.path.join(long_dir, "c" * 90), b"long path\n")
    _write(p("opt/replaced/old1"), b"old one\n")
    _write(p("opt/replaced/sub/old2"), b"old two\n")
    os.symlink("hostname", p("etc/hostname.link"))
    os.symlink("/etc/passwd", p("usr/lib/abs.link"))
    os.symlink("../../etc/passwd", p("usr/lib/rel.link"))
    os.symlink("does/not/exist", p("usr/lib/dangling"))
    os.lchown(p("usr/lib/dangling"), 1000, 1000)
    os.link(p("etc/passwd"), p("data/passwd.hard1"))
    os.link(p("etc/passwd"), p("home/passwd.hard2"))
    os.link(p("data/random.bin"), p("data/random.hard"))
    os.mkfifo(p("srv/fifo"), 0o640)
    os.mknod(p("srv/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(p("srv/loop9"), 0o660 | stat.S_IFBLK, os.makedev(7, 9))
    for path, name, value in (("etc/hostname", "user.comment", b"an xattr"),
                              ("data/text.txt", "user.bin", bytes(range(256))),
                              ("opt", "user.on-a-dir", b"yes")):
        try:
            os.setxattr(p(path), name, value, follow_symlinks=False)
        except OSError:
            pass  # filesystem without user xattrs: the tree compare still checks whatever umoci keeps
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{tag}", bundle)

    # ---- layer 2: deletions (whiteouts), a replaced directory, a metadata-only change
    os.unlink(p("etc/empty"))
    os.unlink(p("data/many/f07"))
    shutil.rmtree(p("opt/replaced"))
    os.makedirs(p("opt/replaced"))
    _write(p("opt/replaced/new"), b"new content\n")
    os.chmod(p("etc/hostname"), 0o600)
    _write(p("etc/passwd"), b"root:x:0:0:root:/root:/bin/bash\n")  # rewritten in place: links still shared
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{tag}", bundle)

    # ---- layer 3: additions
    os.makedirs(p("app/lib"))
    _write(p("app/lib/blob"), rng.randbytes(200_000))
    _write(p("app/run.sh"), b"#!/bin/sh\nexec app\n", 0o755)
    os.symlink("lib/blob", p("app/blob.link"))
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{tag}", bundle)
    return layout


# ------------------------------------------------------------------ tree comparison


def snapshot(root: str) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """Everything about a tree a layer defines: per path (type, mode, uid, gid, size, mtime,
    content sha256 / symlink target / device numbers, xattrs), and the hardlink groups."""
    out: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            fmt = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(fmt):
                what: Any = file_sha256(path)
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(fmt):
                what = os.readlink(path)
            elif stat.S_ISCHR(fmt) or stat.S_ISBLK(fmt):
                what = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                what = None
            try:
                names = os.listxattr(path, follow_symlinks=False)
                xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))
            except OSError:
                xattrs = ()
            mtime = None if stat.S_ISDIR(fmt) else st.st_mtime_ns  # dir mtimes move as children land
            out[rel] = (fmt, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if not stat.S_ISDIR(fmt) else None, mtime, what, xattrs)
    links = {frozenset(v) for v in inodes.values() if len(v) > 1}
    return out, links


def diff_snapshots(a: dict[str, tuple], b: dict[str, tuple]) -> list[str]:
    problems = [f"only in first: {k}" for k in sorted(a.keys() - b.keys())]
    problems += [f"only in second: {k}" for k in sorted(b.keys() - a.keys())]
    problems += [f"differs: {k}: {a[k]} != {b[k]}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    return problems


def build_fs_image(work: str, tag: str = "v1") -> str:
    """:func:`build_umoci_image` plus a fourth, hand-made layer (added verbatim with
    ``umoci raw add-layer``): an opaque directory, whiteouts of a symlink and a
    hardlinked file, a file over several 2 MiB frames with a hardlink to it,
    symlinks that climb above the root, and a symlink loop.  Returns the layout."""
    layout = build_umoci_image(work, tag)
    rng = random.Random(5)
    large = b"".join(rng.randbytes(4096) + bytes(4096) for _ in range(1200))  # 9.4 MiB, half compressible
    members = [
        entry("data", tarfile.DIRTYPE),
        entry("data/.wh..wh..opq", tarfile.REGTYPE, mode=0o644),  # hides every lower-layer file in data/
        reg("data/kept-new", b"added beside the opaque marker\n"),
        entry("etc/.wh.hostname.link", tarfile.REGTYPE, mode=0o644),
        entry("big", tarfile.DIRTYPE),
        reg("big/large.bin", large, 0o640),
        entry("big/large.hard", tarfile.LNKTYPE, linkname="big/large.bin"),
        entry("big/escape", tarfile.SYMTYPE, linkname="../../../../../etc/passwd"),
        entry("big/abs-escape", tarfile.SYMTYPE, linkname="/../../etc/hostname"),
        entry("big/loop1", tarfile.SYMTYPE, linkname="loop2"),
        entry("big/loop2", tarfile.SYMTYPE, linkname="loop1"),
        entry("big/dirlink", tarfile.SYMTYPE, linkname="../app/lib"),
    ]
    path = os.path.join(work, "layer4.tar")
    with open(path, "wb") as f:
        f.write(make_tar(members))
    run("umoci", "raw", "add-layer", "--image", f"{layout}:{tag}", path)
    return layout


def unpack(layout: str, tag: str, dest: str) -> str:
    """The image's root filesystem as umoci unpacks it; returns the rootfs path."""
    run("umoci", "unpack", "--image", f"{layout}:{tag}", dest)
    return os.path.join(dest, "rootfs")
