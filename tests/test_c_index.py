"""The C image index (csrc/index.c, toc.c, json.c, oci.c) against the Python reader and Tree.

Every case builds real TOC frames with the Python format code, builds the C index
through the cffi binding, and compares it with :class:`lazylayer.image.tree.Tree`
on the same TOCs: every path's attributes, every directory's listing, every
path resolved with and without following the last symlink, inode sharing, and
the same answers again from the stored buffer reopened.  Hostile TOCs must get
the error class Python raises (LL_ERR_FORMAT for FormatError, LL_ERR_LIMIT for
LimitError, LL_ERR_DIGEST for a digest mismatch).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import math
import os
import random
import struct
import tarfile

import pytest
import zstandard

from lazylayer import errors
from lazylayer.core._lib import ffi, lib
from lazylayer.format import TOC_MAGIC, LayerWriter, Toc, check_toc_frames
from tests.tree_model import Tree  # the Python model the C index replaced

TOC_C_SIZE = 100  # the fake data frame every synthetic layer has, before its TOC frame


# ------------------------------------------------------------------ building layers


def toc_frame(payload: bytes, compressed: bytes | None = None) -> bytes:
    comp = compressed if compressed is not None else zstandard.ZstdCompressor(level=3).compress(payload)
    body = TOC_MAGIC + comp
    return struct.pack("<II", 0x184D2A5A, len(body)) + body


class Layer:
    """A layer as ll_index_build takes it: the TOC frame and the descriptor's values."""

    def __init__(self, doc_json: bytes, toc_offset: int, frame: bytes | None = None,
                 toc_digest: str | None = None, digest: str | None = None, blob_size: int | None = None):
        self.json = doc_json
        self.frame = frame if frame is not None else toc_frame(doc_json)
        self.toc_offset = toc_offset
        self.toc_digest = toc_digest or "sha256:" + hashlib.sha256(self.frame).hexdigest()
        self.digest = digest or "sha256:" + hashlib.sha256(self.frame + b"blob").hexdigest()
        self.blob_size = blob_size if blob_size is not None else toc_offset + len(self.frame) + 100


def synth(entries: list[dict], prefetch: list | None = None, **top) -> Layer:
    """A layer whose TOC lists `entries`, with one fake data frame covering every file's content."""
    end = max([e.get("offset", 0) + e.get("size", 0) for e in entries
               if e.get("type", "reg") == "reg" and isinstance(e.get("size", 0), int)
               and isinstance(e.get("offset", 0), int)] + [1])
    doc = {"version": 1, "frame_size": 2 << 20, "tar_size": end,
           "frames": [[0, TOC_C_SIZE, 0, end, "ab" * 32]], "entries": entries, "prefetch": prefetch or []}
    doc.update(top)
    return Layer(json.dumps(doc).encode(), TOC_C_SIZE)


def real_layer(members: list[tuple]) -> tuple[Layer, bytes]:
    """A real lazy layer (LayerWriter over a tarfile tar); members are (name, kind, data/linkname, extra)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for m in members:
            name, kind, data = m[:3]
            extra = m[3] if len(m) > 3 else {}
            ti = tarfile.TarInfo(name)
            ti.mtime = extra.get("mtime", 1700000000)
            ti.uid, ti.gid = extra.get("uid", 0), extra.get("gid", 0)
            ti.mode = extra.get("mode", 0o644)
            if extra.get("pax"):
                ti.pax_headers = extra["pax"]
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                t.addfile(ti)
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, data
                t.addfile(ti)
            elif kind in ("char", "block"):
                ti.type = tarfile.CHRTYPE if kind == "char" else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = data
                t.addfile(ti)
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
                t.addfile(ti)
            else:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
    tar = buf.getvalue()
    out = io.BytesIO()
    info = LayerWriter(threads=1, frame_size=4096).write(io.BytesIO(tar).read, out)
    blob = out.getvalue()
    frame = blob[info.toc_offset:info.toc_offset + info.toc_length]
    toc = Toc.from_frame(frame)
    layer = Layer(toc.to_json(), info.toc_offset, frame=frame, toc_digest=info.toc_digest, digest=info.digest,
                  blob_size=info.size)
    return layer, blob


class Index:
    """An ll_index, freed with the object."""

    def __init__(self, ptr):
        self.ptr = ffi.gc(ptr, lib.ll_index_free)

    def data(self) -> bytes:
        p, n = ffi.new("void **"), ffi.new("size_t *")
        lib.ll_index_data(self.ptr, ffi.cast("const void **", p), n)
        return bytes(ffi.buffer(p[0], n[0]))


def c_build(layers: list[Layer]) -> tuple[int, Index | None, str]:
    arr = ffi.new("ll_index_layer[]", max(len(layers), 1))
    keep = []
    for i, ly in enumerate(layers):
        d, td = ffi.new("char[]", ly.digest.encode()), ffi.new("char[]", ly.toc_digest.encode())
        fr = ffi.new("char[]", ly.frame)
        keep += [d, td, fr]
        arr[i].digest, arr[i].toc_digest, arr[i].toc_frame = d, td, fr
        arr[i].blob_size, arr[i].toc_offset, arr[i].toc_length = ly.blob_size, ly.toc_offset, len(ly.frame)
    out, err = ffi.new("ll_index **"), ffi.new("char[512]")
    rc = lib.ll_index_build(arr, len(layers), out, err, 512)
    return rc, (Index(out[0]) if rc == 0 else None), ffi.string(err).decode(errors="replace")


def c_open(data: bytes, copy: int = 1) -> tuple[int, Index | None, str]:
    out, err = ffi.new("ll_index **"), ffi.new("char[512]")
    buf = ffi.from_buffer(data) if data else ffi.NULL
    rc = lib.ll_index_open_buffer(buf, len(data), copy, out, err, 512)
    idx = Index(out[0]) if rc == 0 else None
    if idx is not None and not copy:
        idx.keep = (data, buf)
    return rc, idx, ffi.string(err).decode(errors="replace")


class FreshTree(Tree):
    """Tree without its last-parent cache: the semantics the C index implements (see index.c)."""

    def _parent_for(self, path):
        return self._walk_to_parent(path)


def py_tree(layers: list[Layer], cls=Tree):
    """Python's reading of the same layers (as Image does: every TOC, then the tree), or the exception."""
    try:
        tocs = []
        for ly in layers:
            toc = Toc.from_json(ly.json)
            check_toc_frames(toc, ly.toc_offset)
            tocs.append(toc)
        return cls(tocs)
    except errors.LazyLayerError as exc:
        return exc


def expected_status(exc: Exception) -> int:
    if isinstance(exc, errors.LimitError):
        return lib.LL_ERR_LIMIT
    if isinstance(exc, errors.FormatError):
        return lib.LL_ERR_FORMAT
    if isinstance(exc, errors.CorruptFrameError):
        return lib.LL_ERR_FRAME
    if isinstance(exc, errors.IntegrityError):
        return lib.LL_ERR_DIGEST
    raise AssertionError(f"unexpected {exc!r}")


# ------------------------------------------------------------------ comparing


KINDS = {1: "reg", 2: "dir", 3: "symlink", 4: "char", 5: "block", 6: "fifo"}
ERRNO = {lib.LL_ERR_NOENT: errno.ENOENT, lib.LL_ERR_NOTDIR: errno.ENOTDIR, lib.LL_ERR_LOOP: errno.ELOOP}


def c_resolve(idx: Index, path: bytes, follow: bool):
    ino = ffi.new("uint64_t *")
    rc = lib.ll_index_resolve(idx.ptr, path, len(path), int(follow), ino)
    return ino[0] if rc == 0 else ("err", ERRNO.get(rc, rc))


def py_resolve(tree: Tree, path: str, follow: bool):
    try:
        return tree.resolve(path, follow=follow)
    except OSError as exc:
        return ("err", exc.errno)


def c_stat(idx: Index, ino: int) -> dict:
    st = ffi.new("ll_stat *")
    assert lib.ll_index_stat(idx.ptr, ino, st) == 0
    info = {"kind": KINDS[st.kind], "mode": st.mode, "uid": st.uid, "gid": st.gid, "nlink": st.nlink,
            "size": st.size, "mtime": (st.mtime_sec, st.mtime_nsec), "ino": st.ino}
    if st.kind == 3:
        t, n = ffi.new("const char **"), ffi.new("size_t *")
        assert lib.ll_index_readlink(idx.ptr, ino, t, n) == 0
        info["destination"] = ffi.unpack(t[0], n[0])
    else:
        assert lib.ll_index_readlink(idx.ptr, ino, ffi.NULL, ffi.NULL) == lib.LL_ERR_NOTREG
    if st.kind in (4, 5):
        info["dev"] = (st.devmajor, st.devminor)
    if st.kind == 1:
        info["layer"] = (st.layer, st.offset)
    else:
        assert st.layer == -1
    xattrs = {}
    name, val, vlen = ffi.new("const char **"), ffi.new("const void **"), ffi.new("size_t *")
    for i in range(st.nxattrs):
        assert lib.ll_index_xattr(idx.ptr, ino, i, name, val, vlen) == 0
        xattrs[ffi.string(name[0])] = bytes(ffi.buffer(val[0], vlen[0]))
    assert lib.ll_index_xattr(idx.ptr, ino, st.nxattrs, name, val, vlen) == lib.LL_ERR_ARG
    info["xattrs"] = xattrs
    return info


def mtime_of(m: float) -> tuple[int, int]:
    return int(m), round((m - int(m)) * 1e9)


def py_stat(node) -> dict:
    i = node.inode
    info = {"kind": i.kind, "mode": i.mode, "uid": i.uid, "gid": i.gid, "nlink": i.nlink, "size": i.size,
            "mtime": i.mtime}
    if i.kind == "symlink":
        info["destination"] = os.fsencode(i.linkname)
    if i.kind in ("char", "block"):
        info["dev"] = (os.major(i.rdev), os.minor(i.rdev))
    if i.kind == "reg":
        info["layer"] = (i.layer, i.offset)
    info["xattrs"] = {os.fsencode(k): v for k, v in i.xattrs.items()}
    return info


def same_stat(c: dict, p: dict, path: str) -> None:
    c = dict(c)
    ino = c.pop("ino")
    csec, cns = c.pop("mtime")
    pm = p.pop("mtime")
    assert abs((csec + cns / 1e9) - pm) <= max(1e-6, abs(pm) * 1e-15), (path, (csec, cns), pm)
    assert c == p, (path, ino, c, p)


def readdir(idx: Index, ino: int) -> list[tuple[bytes, int]]:
    n, cnt = ffi.new("size_t *"), ffi.new("uint64_t *")
    ents = ffi.new("ll_dirent[7]")
    out, pos = [], 0
    while True:
        assert lib.ll_index_readdir(idx.ptr, ino, pos, ents, 7, n, cnt) == 0
        out += [(ffi.unpack(ents[k].name, ents[k].name_len), ents[k].st.ino) for k in range(n[0])]
        assert all(ents[k].name[ents[k].name_len] == b"\0" for k in range(n[0]))
        pos += n[0]
        if n[0] < 7:
            break
    assert cnt[0] == len(out)
    return out


def compare(idx: Index, tree: Tree, extra_paths: tuple[str, ...] = ()) -> None:
    """The C index and the Python tree agree on every path, listing, inode and resolution."""
    assert lib.ll_index_names(idx.ptr) == len(tree)
    c_of_py: dict[int, int] = {}
    for path in tree.paths:
        node = tree.paths[path]
        bpath = os.fsencode(path)
        ino = c_resolve(idx, bpath, False)
        assert isinstance(ino, int), (path, ino)
        assert c_of_py.setdefault(node.inode.ino, ino) == ino, f"{path}: inode sharing differs"
        same_stat(c_stat(idx, ino), py_stat(node), path)
        if node.children is not None:
            listing = readdir(idx, ino)
            assert [n for n, _ in listing] == sorted(os.fsencode(k) for k in node.children), path
            for name, child in listing:
                got = ffi.new("uint64_t *")
                assert lib.ll_index_lookup(idx.ptr, ino, name, len(name), got) == 0 and got[0] == child
        else:
            assert lib.ll_index_readdir(idx.ptr, ino, 0, ffi.NULL, 0, ffi.new("size_t *"), ffi.NULL) == \
                lib.LL_ERR_NOTDIR
    assert len(set(c_of_py.values())) == len(c_of_py) == lib.ll_index_inodes(idx.ptr)
    assert c_of_py[tree.root.inode.ino] == lib.LL_ROOT_INO
    # resolution with and without following, of every path and some tricky ones
    probes = list(tree.paths) + list(extra_paths)
    probes += [p + "/.." for p in list(tree.paths)[:200]] + [p + "/x" for p in list(tree.paths)[:200]]
    probes += ["/" + p for p in list(tree.paths)[:50]] + ["..", "../..", "/", "", ".", "nope", "a/../../b"]
    for path in probes:
        for follow in (False, True):
            want = py_resolve(tree, path, follow)
            got = c_resolve(idx, os.fsencode(path), follow)
            if isinstance(want, tuple):
                assert got == want, (path, follow, got, want)
            else:
                assert got == c_of_py[want.inode.ino], (path, follow, got, want)


def check(layers: list[Layer], extra_paths: tuple[str, ...] = (), cls=Tree) -> Index:
    """Build in C and in Python, compare, and compare again after a round trip through the buffer."""
    rc, idx, err = c_build(layers)
    tree = py_tree(layers, cls)
    assert not isinstance(tree, Exception), tree
    assert rc == 0, err
    compare(idx, tree, extra_paths)
    data = idx.data()
    for copy in (0, 1):
        rc, again, err = c_open(data, copy)
        assert rc == 0, err
        compare(again, tree, extra_paths)
        assert again.data() == data
    return idx


def check_error(layers: list[Layer], want: int | None = None) -> str:
    """The C build fails with the class Python's reading fails with."""
    tree = py_tree(layers)
    assert isinstance(tree, Exception), "Python accepts it"
    rc, idx, err = c_build(layers)
    assert rc == (want if want is not None else expected_status(tree)), (rc, err, tree)
    assert idx is None and err
    return err


# ------------------------------------------------------------------ the merge


def e(name, type="reg", **kw):
    return {"name": name, "type": type, **kw}


def test_real_layers_whiteouts_hardlinks_devices():
    l0, _ = real_layer([("etc", "dir", None), ("etc/a", "reg", b"hello"), ("etc/l", "sym", "a"),
                        ("etc/h", "hard", "etc/a"), ("etc/h2", "hard", "etc/a"), ("dev/null", "char", (1, 3)),
                        ("dev/sda", "block", (8, 0)), ("run/fifo", "fifo", None),
                        ("opt/x/y", "reg", b"y" * 5000), ("opt/x/z", "reg", b"z"),
                        ("f", "reg", b"x", {"pax": {"SCHILY.xattr.user.a": "1", "SCHILY.xattr.security.b": "v"}}),
                        ("frac", "reg", b"", {"mtime": 1700000000.123456}),
                        ("own", "reg", b"", {"uid": 1000, "gid": 2000, "mode": 0o4755})])
    l1, _ = real_layer([("etc/.wh.a", "reg", b""), ("opt/x/.wh..wh..opq", "reg", b""), ("opt/x/new", "reg", b"n"),
                        ("etc/b", "reg", b"b" * 10000), ("usr/lib/x", "reg", b"zz"), (".wh.run", "reg", b""),
                        ("etc/.wh..wh.aufs", "reg", b"")])
    check([l0], ("etc/l/x", "etc/l/..", "etc/h/.."))
    idx = check([l0, l1])
    # hardlink names share an inode whose nlink counts the names that survived (a is gone)
    h = c_resolve(idx, b"etc/h", False)
    assert h == c_resolve(idx, b"etc/h2", False) and c_stat(idx, h)["nlink"] == 2
    assert c_resolve(idx, b"run", False) == ("err", errno.ENOENT)
    assert [n for n, _ in readdir(idx, c_resolve(idx, b"opt/x", True))] == [b"new"]


def test_layer_info_frames_and_prefetch():
    l0, blob = real_layer([("a", "reg", os.urandom(9000)), ("b", "reg", b"b" * 20000)])
    doc = json.loads(l0.json)
    doc["prefetch"] = [[0, 512], [4096, 100]]
    l0b = Layer(json.dumps(doc).encode(), l0.toc_offset, digest=l0.digest, blob_size=l0.blob_size)
    for ly in (l0, l0b):
        rc, idx, err = c_build([ly, ly])
        assert rc == 0, err
        toc = Toc.from_json(ly.json)
        assert lib.ll_index_layers(idx.ptr) == 2
        d, bs, ts, nf = ffi.new("const char **"), ffi.new("uint64_t *"), ffi.new("uint64_t *"), ffi.new("uint32_t *")
        assert lib.ll_index_layer_info(idx.ptr, 1, d, bs, ts, nf) == 0
        assert (ffi.string(d[0]).decode(), bs[0], ts[0], nf[0]) == (ly.digest, ly.blob_size, toc.tar_size,
                                                                    len(toc.frames))
        f = ffi.new("ll_layer_frame *")
        for i, fr in enumerate(toc.frames):
            assert lib.ll_index_frame(idx.ptr, 1, i, f) == 0
            assert (f.c_offset, f.c_size, f.d_offset, f.d_size, bytes(f.sha256).hex()) == \
                (fr.compressed_offset, fr.compressed_size, fr.offset, fr.size, fr.sha256)
            assert hashlib.sha256(blob[fr.compressed_offset:fr.compressed_offset + fr.compressed_size]).hexdigest() \
                == fr.sha256
        assert lib.ll_index_frame(idx.ptr, 1, len(toc.frames), f) == lib.LL_ERR_ARG
        assert lib.ll_index_layer_info(idx.ptr, 2, d, bs, ts, nf) == lib.LL_ERR_ARG
        cnt, off, ln = ffi.new("uint64_t *"), ffi.new("uint64_t *"), ffi.new("uint64_t *")
        assert lib.ll_index_prefetch(idx.ptr, 0, 0, cnt, ffi.NULL, ffi.NULL) == 0
        assert cnt[0] == len(toc.prefetch)
        for i, (o, n) in enumerate(toc.prefetch):
            assert lib.ll_index_prefetch(idx.ptr, 0, i, cnt, off, ln) == 0 and (off[0], ln[0]) == (o, n)
        assert lib.ll_index_prefetch(idx.ptr, 0, cnt[0], cnt, off, ln) == lib.LL_ERR_ARG
        # a file's content is where the TOC says
        st = c_stat(idx, c_resolve(idx, b"b", False))
        assert st["layer"] == (1, toc.entries[1]["offset"])


def test_whiteouts_act_on_lower_layers_only_whatever_their_position():
    l0 = synth([e("a", "dir"), e("a/x"), e("a/y"), e("b/z"), e("c/d/e")])
    l1 = synth([e("a/x2"), e("a/.wh.x"), e(".wh.b"), e("c/d/.wh..wh..opq"), e("c/d/f"), e("n/f"), e("n/.wh.f"),
                e(".wh..wh..opq2"), e("a/.wh."), e(".wh.nothere/x")])
    check([l0, l1])
    l2 = synth([e(".wh..wh..opq"), e("new")])
    idx = check([l0, l1, l2])
    assert [n for n, _ in readdir(idx, 1)] == [b"new"]


def test_replacement_and_directory_metadata():
    l0 = synth([e("d", "dir", mode=0o700, uid=5), e("d/f", size=3, offset=0), e("f"), e("s", "symlink", linkname="d"),
                e("x/y/z", "fifo")])
    l1 = synth([e("d", "dir", mode=0o711, uid=7, mtime=5), e("f", "dir"), e("f/inner"), e("x", "reg"),
                e("s", "dir"), e("s/t")])
    l2 = synth([e("d", "symlink", linkname="/f"), e("f", "fifo"), e(".", "dir", mode=0o700, uid=3, mtime=9),
                e(".", "fifo")])
    check([l0, l1])
    check([l0, l1, l2], ("d/inner", "d/..", "s/t"))


def test_implicit_parents_and_their_budget():
    l0 = synth([e("a/b/c/d/e/f"), e("x/y", "dir"), e("x/y/z")])
    check([l0])
    deep = "/".join(["d"] * 255)
    check([synth([e(f"x{i}/" + deep, "fifo") for i in range(2)] + [e(f"y{i}", "fifo") for i in range(600)])])
    # parents over entries + 256: refused, as Python refuses it
    check_error([synth([e(f"x{i}/" + deep, "fifo") for i in range(20)])], lib.LL_ERR_LIMIT)


def test_symlinked_parents_are_followed_inside_the_root():
    l0 = synth([e("real", "dir"), e("real/old"), e("link", "symlink", linkname="real"),
                e("abs", "symlink", linkname="/real"), e("dangling", "symlink", linkname="nowhere"),
                e("tofile", "symlink", linkname="real/old"), e("up", "symlink", linkname="../../../real"),
                e("loop1", "symlink", linkname="loop2"), e("loop2", "symlink", linkname="loop1"),
                e("self", "symlink", linkname="self/x"), e("chain", "symlink", linkname="link/../abs/old")])
    l1 = synth([e("link/new1"), e("abs/new2"), e("dangling/new3"), e("tofile/new4"), e("up/new5"),
                e("loop1/new6"), e("real/sub/deeper")])
    extra = ("link/new1", "abs/../link/old", "up/old", "loop1", "loop1/x", "self", "self/y", "chain",
             "tofile/x", "tofile/..", "dangling", "link/", "link/.", "/abs/", "chain/..")
    check([l0], extra)
    check([l0, l1], extra)


def test_hardlinks_share_inodes_and_count_names():
    l0 = synth([e("a", size=1, offset=0, mode=0o600), e("h1", "hardlink", linkname="a"),
                e("d/h2", "hardlink", linkname="h1"), e("s", "symlink", linkname="a"),
                e("hs", "hardlink", linkname="s")])
    l1 = synth([e("a", size=2, offset=0), e("h3", "hardlink", linkname="h1")])
    idx = check([l0, l1])
    st = c_stat(idx, c_resolve(idx, b"h1", False))
    assert st["nlink"] == 3 and st["size"] == 1
    assert c_stat(idx, c_resolve(idx, b"a", False))["nlink"] == 1
    for bad in ([e("h", "hardlink", linkname="missing")], [e("d", "dir"), e("h", "hardlink", linkname="d")],
                [e("h", "hardlink", linkname="."), e("x")]):
        check_error([synth(bad)], lib.LL_ERR_FORMAT)


def test_devices_fifos_modes_owners_and_clamping():
    ents = [e("c", "char", devmajor=4095, devminor=(1 << 20) - 1), e("b", "block", devmajor=1 << 40, devminor=-1),
            e("f", "fifo", mode=0o7777), e("r", mode=-1), e("big", mode=(1 << 70) + 0o640),
            e("u", uid=-1, gid=1 << 40), e("u2", uid=(1 << 32) - 1, gid=1 << 100), e("d", "dir"),
            e("sym", "symlink", linkname="é/ü" * 3, mode=0o600),
            e("nomode", "char"), e("dirmode", "dir", uid=1, gid=2)]
    check([synth(ents)])


MTIMES = ["1700000000", "1700000000.5", "1700000000.123456789", "1.7e9", "17e8", "0.000000001999", "1e-10",
          "253402214400", "253402214400.5", "253402214401", "1e300", "-5", "-0.5", "0", "1e12", "123.456e3",
          "9.99999999999e11", "NaN", "Infinity", "-Infinity", "-0.0", "1E+2", "12.3456789129e-1", "0.1e1",
          "2.5e-9", "99999999999.9999999999", "1e-999999999999", "1e999999999999"]


def _exact(lit: str) -> tuple[int, int]:
    from decimal import Decimal, localcontext

    if lit == "NaN" or lit == "-Infinity":
        return 0, 0
    if lit == "Infinity":
        return 253402214400, 0
    with localcontext() as ctx:
        ctx.prec = 200
        d = Decimal(lit)
        if d < 0:
            return 0, 0
        if d > 253402214400:
            return 253402214400, 0
        sec = int(d)
        return sec, int((d - sec) * 1_000_000_000)


def test_mtimes_exact_clamped_and_odd():
    ents = ",".join(f'{{"name":"f{i}","type":"fifo","mtime":{lit}}}' for i, lit in enumerate(MTIMES))
    raw = ('{"version":1,"frame_size":1,"tar_size":1,"frames":[[0,100,0,1,"' + "ab" * 32 + '"]],"entries":[' +
           ents + "]}").encode()
    idx = check([Layer(raw, TOC_C_SIZE)])
    got = {n.decode(): c_stat(idx, i)["mtime"] for n, i in readdir(idx, 1)}
    for i, lit in enumerate(MTIMES):
        assert got[f"f{i}"] == _exact(lit), lit


def test_xattrs_decoded_sorted_and_validated():
    xa = {"user.b": base64.b64encode(b"\x00\xffbin").decode(), "user.a": "", "security.x": "QUJD",
          "trusted.y": "QQ==", "user.z": "QUI="}
    idx = check([synth([e("f", xattrs=xa), e("d", "dir", xattrs={"user.d": "eA=="}), e("n", xattrs=None)])])
    f = c_resolve(idx, b"f", False)
    names = []
    name = ffi.new("const char **")
    for i in range(5):
        assert lib.ll_index_xattr(idx.ptr, f, i, name, ffi.NULL, ffi.NULL) == 0
        names.append(ffi.string(name[0]))
    assert names == sorted(names)
    for bad in ({"a": "!"}, {"a": "QQ"}, {"a": "Q"}, {"a": "QUJ"}, {"a": 5}, ["x"], "x", {"a": "=="}):
        check_error([synth([e("f", xattrs=bad)])], lib.LL_ERR_FORMAT)
    # a repeated name keeps its last value, as a Python dict does
    raw = synth([e("f")]).json.replace(b'"type": "reg"', b'"type": "reg", "xattrs": {"a": "QQ==", "a": "Qg=="}')
    idx = check([Layer(raw, TOC_C_SIZE)])


def test_non_utf8_names_and_escapes():
    names = ["caf\u00e9", "\udcff\udcfe", "emoji\U0001F600", "tab\tname", "quote\"back\\slash", "nl\nx", "a b"]
    ents = [e(n) for n in names] + [e("d\udc80/x"), e("l", "symlink", linkname="\udcff\udcfe")]
    doc = {"version": 1, "frame_size": 1, "tar_size": 1, "frames": [[0, 100, 0, 1, "ab" * 32]], "entries": ents}
    raw = json.dumps(doc, ensure_ascii=True).encode()
    idx = check([Layer(raw, TOC_C_SIZE)], ("l", "l/.."))
    assert c_resolve(idx, b"\xff\xfe", False) == c_resolve(idx, b"l", True)
    assert c_resolve(idx, "emoji\U0001F600".encode(), False) != ("err", errno.ENOENT)


def test_deep_trees_and_wide_directories():
    deep = "/".join(f"level{i}" for i in range(250))
    ents = [e(deep + "/leaf"), e("wide", "dir")] + [e(f"wide/f{i:05d}") for i in range(3000)]
    ents += [e("back", "symlink", linkname="/".join([".."] * 300) + "/wide")]
    check([synth(ents)], (deep + "/" + "/".join([".."] * 260) + "/wide/f00001", "back/f02999"))


def test_duplicate_keys_last_wins_and_unknown_keys_ignored():
    raw = (b'{"version": 1, "frame_size": 1, "tar_size": 1, "frames": [], "frames": [[0, 100, 0, 1, "' + b"ab" * 32 +
           b'"]], "entries": [{"name": "zz"}], "entries": [{"name": "a", "name": "b", "type": "fifo", "uid": 5,'
           b' "uid": 6, "nlink": 99, "whatever": [1, {"x": null}]}], "extra": {"deep": [[[]]]}, "prefetch": []}')
    idx = check([Layer(raw, TOC_C_SIZE)])
    assert [n for n, _ in readdir(idx, 1)] == [b"b"]


def _random_layers(rng: random.Random, nlayers: int) -> list[Layer]:
    names = ["a", "b", "c", ".wh.a", ".wh.b", ".wh..wh..opq", "d"]
    layers = []
    for _ in range(nlayers):
        ents = []
        for _ in range(rng.randint(1, 25)):
            depth = rng.randint(1, 3)
            path = "/".join(rng.choice(names if k == depth - 1 else names[:3] + ["d"]) for k in range(depth))
            kind = rng.choice(["reg", "dir", "dir", "symlink", "hardlink", "fifo"])
            ent = e(path, kind, mtime=rng.randint(0, 10), uid=rng.randint(0, 3))
            if kind == "symlink":
                ent["linkname"] = rng.choice(["a", "b", "/a", "../a", "a/b", "..", "/", "c/../d", "x", ""])
            elif kind == "hardlink":
                ent["linkname"] = rng.choice(["a", "b", "a/b", "c/d", "d"])
            ents.append(ent)
        layers.append(synth(ents))
    return layers


def test_random_stacks_agree_with_the_python_tree():
    rng = random.Random(16)
    agreed = errors_agreed = 0
    for _ in range(600):
        layers = _random_layers(rng, rng.randint(1, 4))
        tree = py_tree(layers, FreshTree)
        if isinstance(tree, Exception):
            rc, _, err = c_build(layers)
            assert rc == expected_status(tree), (rc, err, tree, [ly.json for ly in layers])
            errors_agreed += 1
            continue
        rc, idx, err = c_build(layers)
        assert rc == 0, (err, [ly.json for ly in layers])
        compare(idx, tree, ("a/b/c", "d/../a/b", "a/../../b/c"))
        agreed += 1
    assert agreed > 50 and errors_agreed > 10, (agreed, errors_agreed)


def test_the_python_tree_cache_differs_in_two_stale_cases():
    """Tree's last-parent cache goes stale in two cases; the C index (and FreshTree) do what a fresh walk does."""
    stale1 = [synth([e("a/b/x")]), synth([e(".wh.a"), e("a/b/y")])]
    stale2 = [synth([e("t", "dir"), e("l", "symlink", linkname="t"), e("l/x")]), synth([e("l", "dir"), e("l/y")])]
    for layers in (stale1, stale2):
        check(layers, cls=FreshTree)
    assert "a/b/y" not in Tree([Toc.from_json(ly.json) for ly in stale1]).paths  # the Python quirk
    assert "a/b/y" in FreshTree([Toc.from_json(ly.json) for ly in stale1]).paths


def test_empty_and_zero_layers():
    rc, idx, err = c_build([])
    assert rc == 0 and lib.ll_index_inodes(idx.ptr) == 1 and lib.ll_index_names(idx.ptr) == 1
    assert c_resolve(idx, b"/../.", True) == 1
    check([synth([])])


# ------------------------------------------------------------------ hostile TOCs: the error class Python gives


HOSTILE_ENTRIES = {
    "name ../escape": [e("../escape")], "name a/../../b": [e("a/../../b")], "name etc/..": [e("etc/..")],
    "name ./etc/x": [e("./etc/x")], "name /etc/x": [e("/etc/x")], "name etc//x": [e("etc//x")],
    "name etc/x/": [e("etc/x/")], "name empty": [e("")], "name etc/./x": [e("etc/./x")],
    "name 256 bytes": [e("n" * 256)], "name long component": [e("etc/" + "n" * 300)],
    "name too deep": [e("a/" * 256 + "f")], "name too long": [e("/".join(["x" * 200] * 21))],
    "name not a string": [{"name": 5}], "no name": [{"type": "reg"}], "name null": [{"name": None}],
    "hardlink outside": [e("etc/l", "hardlink", linkname="../etc/a")],
    "hardlink no target": [e("etc/l", "hardlink")],
    "mtime string": [e("a", mtime="x")], "uid float": [e("a", uid=1.5)], "mode string": [e("a", mode="420")],
    "devmajor null": [e("a", devmajor=None)], "xattr not base64": [e("a", xattrs={"a": "!"})],
    "size float": [e("a", size=-0.5)], "linkname int": [e("a", linkname=5)], "uid bool": [e("a", uid=True)],
    "mode 1.0": [e("a", mode=1.0)], "type int": [e("a", type=3)], "type null": [e("a", type=None)],
    "uname int": [e("a", uname=1)], "unknown type": [e("a", "socket")], "offset string": [e("a", offset="0")],
    "content past the frames": [e("a", size=10, offset=5)], "negative offset": [e("a", size=1, offset=-1)],
    "entry not an object": ["a"],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ENTRIES))
def test_hostile_entries(case):
    ents = HOSTILE_ENTRIES[case]
    end = 10
    doc = {"version": 1, "frame_size": 1, "tar_size": end, "frames": [[0, 100, 0, end, "ab" * 32]],
           "entries": [e("ok")] + ents}
    err = check_error([Layer(json.dumps(doc).encode(), TOC_C_SIZE)])
    assert "layer 0" in err


def _doc(**kw) -> dict:
    doc = {"version": 1, "frame_size": 1, "tar_size": 4, "frames": [[0, 60, 0, 4, "ab" * 32],
                                                                     [60, 40, 4, 0, "cd" * 32]],
           "entries": [e("a", size=4, offset=0)], "prefetch": []}
    doc.update(kw)
    return doc


HOSTILE_DOCS = {
    "version 2": _doc(version=2), "version string": _doc(version="1"), "no version": {"frames": [], "entries": []},
    "no frames": {"version": 1, "entries": [], "frame_size": 1, "tar_size": 0},
    "no entries": {"version": 1, "frames": [], "frame_size": 1, "tar_size": 0},
    "frames not a list": _doc(frames={}), "entries not a list": _doc(entries={}),
    "frame short": _doc(frames=[[0, 100, 0, 4]]), "frame sha int": _doc(frames=[[0, 100, 0, 4, 5]]),
    "frame float": _doc(frames=[[0, 100.0, 0, 4, "ab" * 32]]), "frame string": _doc(frames=["abcde"]),
    "frame gap": _doc(frames=[[0, 50, 0, 4, "ab" * 32], [51, 49, 4, 0, "ab" * 32]]),
    "frame d gap": _doc(frames=[[0, 50, 0, 3, "ab" * 32], [50, 50, 4, 1, "ab" * 32]]),
    "frame zero size": _doc(frames=[[0, 0, 0, 0, "ab" * 32], [0, 100, 0, 4, "ab" * 32]]),
    "frame negative": _doc(frames=[[0, 100, 0, -4, "ab" * 32]]),
    "frame sha short": _doc(frames=[[0, 100, 0, 4, "ab" * 31]]),
    "frames end early": _doc(frames=[[0, 99, 0, 4, "ab" * 32]]),
    "frames end late": _doc(frames=[[0, 101, 0, 4, "ab" * 32]]),
    "no frame_size": {k: v for k, v in _doc().items() if k != "frame_size"},
    "frame_size float": _doc(frame_size=1.5), "tar_size string": _doc(tar_size="4"),
    "prefetch string": _doc(prefetch="x"), "prefetch bad range": _doc(prefetch=[[0, "x"]]),
    "prefetch negative": _doc(prefetch=[[0, -1]]), "prefetch triple": _doc(prefetch=[[0, 1, 2]]),
    "prefetch huge": _doc(prefetch=[[0, 1 << 62]]), "prefetch null": _doc(prefetch=None),
    "not an object": [1, 2], "a string": "toc",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_DOCS))
def test_hostile_documents(case):
    check_error([Layer(json.dumps(HOSTILE_DOCS[case]).encode(), TOC_C_SIZE)])


def test_valid_documents_of_those_shapes_are_accepted():
    check([Layer(json.dumps(_doc()).encode(), TOC_C_SIZE)])
    check([Layer(json.dumps(_doc(prefetch=[[0, (1 << 62) - 1]])).encode(), TOC_C_SIZE)])
    check([Layer(json.dumps({k: v for k, v in _doc().items() if k != "prefetch"}).encode(), TOC_C_SIZE)])


BAD_JSON = [b"", b"{", b'{"version":1,}', b"{'a':1}", b'{"a":01}', b'{"a":1}x', b'{"a":1}{}', b'{"a":"\x01"}',
            b'{"a":"\\x"}', b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xc0\xaf"}', b'{"a":+1}',
            b'{"a":.5}', b'{"a":1.}', b'{"a":1e}', b'{"a":tru}', b'{"a" 1}', b'[1,]', b'{"a":-}',
            b'{"a":"\\u12"}', b'{"a":"\\ud800"}', b'{"a":"\\udc00x"}', b'{"a":"\\ud800\\u0041"}', b"\xef\xbb\xbf{}"]


@pytest.mark.parametrize("raw", BAD_JSON, ids=range(len(BAD_JSON)))
def test_invalid_json_is_a_format_error(raw):
    rc, _, err = c_build([Layer(raw, 0)])
    assert rc == lib.LL_ERR_FORMAT, err
    assert "byte" in err or "JSON" in err or "TOC" in err


def test_deep_nesting_is_a_format_error():
    for levels in (65, 20_000, 100_000):
        nested = b"[" * levels + b"]" * levels
        raw = b'{"version":1,"frame_size":1,"tar_size":0,"frames":[],"entries":[],"x":' + nested + b"}"
        if levels > 1000:  # Python's json gives up near its recursion limit; C at 64 levels (a TOC needs 4)
            check_error([Layer(raw, 0)], lib.LL_ERR_FORMAT)
        rc, _, err = c_build([Layer(raw, 0)])
        assert rc == lib.LL_ERR_FORMAT and "deep" in err
    ok = b"[" * 60 + b"]" * 60
    check([Layer(b'{"version":1,"frame_size":1,"tar_size":0,"frames":[],"entries":[],"x":' + ok + b"}", 0)])


def test_toc_digest_position_and_frame_header():
    good = synth([e("a")])
    for bad in ("sha256:" + "zz" * 32, "sha256:" + "0" * 63, "md5:00", "sha256:" + "0" * 64 + "\n",
                "sha256:" + "A" * 64):
        ly = synth([e("a")])
        ly.toc_digest = bad
        rc, _, err = c_build([ly])
        assert rc == lib.LL_ERR_FORMAT and "toc.digest" in err, err
    ly = synth([e("a")])
    ly.toc_digest = "sha256:" + "0" * 64
    assert c_build([ly])[0] == lib.LL_ERR_DIGEST
    ly = synth([e("a")])
    ly.digest = "sha256:xyz"
    assert c_build([ly])[0] == lib.LL_ERR_FORMAT
    for frame in (good.frame[:10], b"\x5b\x2a\x4d\x18" + good.frame[4:], good.frame[:8] + b"LZLYTOC2" + good.frame[16:],
                  good.frame[:4] + struct.pack("<I", len(good.frame)) + good.frame[8:]):
        ly = Layer(good.json, TOC_C_SIZE, frame=frame)
        assert c_build([ly])[0] == lib.LL_ERR_FORMAT
    # corrupt zstd data, and data after the zstd frame: CorruptFrameError's class
    z = good.frame[16:]
    for frame in (toc_frame(b"", compressed=z[:-3]), toc_frame(b"", compressed=z + z), toc_frame(b"", compressed=b"junk")):
        assert c_build([Layer(good.json, TOC_C_SIZE, frame=frame)])[0] == lib.LL_ERR_FRAME
    # position outside the blob
    ly = synth([e("a")])
    ly.blob_size = ly.toc_offset + len(ly.frame) - 1
    assert c_build([ly])[0] == lib.LL_ERR_FORMAT


def test_the_toc_through_the_read_callback():
    ly, blob = real_layer([("a", "reg", b"hello" * 1000), ("b", "dir", None)])
    src = ffi.new("ll_mem_source *")
    keep = ffi.from_buffer(blob)
    src.data, src.size = keep, len(blob)
    arr = ffi.new("ll_index_layer[1]")
    d, td = ffi.new("char[]", ly.digest.encode()), ffi.new("char[]", ly.toc_digest.encode())
    arr[0].digest, arr[0].toc_digest, arr[0].blob_size = d, td, len(blob)
    arr[0].toc_offset, arr[0].toc_length = ly.toc_offset, len(ly.frame)
    arr[0].read, arr[0].opaque = lib.ll_mem_read, src
    out, err = ffi.new("ll_index **"), ffi.new("char[256]")
    assert lib.ll_index_build(arr, 1, out, err, 256) == 0, ffi.string(err)
    idx = Index(out[0])
    compare(idx, Tree([Toc.from_json(ly.json)]))
    src.size = ly.toc_offset + 5  # the source is short: the callback's failure
    assert lib.ll_index_build(arr, 1, out, err, 256) == lib.LL_ERR_IO
    arr[0].read = ffi.NULL
    assert lib.ll_index_build(arr, 1, out, err, 256) == lib.LL_ERR_ARG


def _zstd_of_repeats(head: bytes, item: bytes, count: int, tail: bytes) -> bytes:
    c = zstandard.ZstdCompressor(level=3).compressobj()
    parts = [c.compress(head)]
    chunk = item * 100_000
    for _ in range(count // 100_000):
        parts.append(c.compress(chunk))
    parts += [c.compress(item * (count % 100_000)), c.compress(tail), c.flush()]
    return b"".join(parts)


@pytest.mark.parametrize("what", ["bomb", "entries", "prefetch", "values", "frames", "known-size bomb"])
def test_caps_hold(what):
    head = b'{"version":1,"frame_size":1,"tar_size":0,"frames":[],'
    if what == "bomb":
        comp = _zstd_of_repeats(head + b'"entries":[],"prefetch":[', b"[0,0],", 40_000_000, b"[0,0]]}")
        want = "bytes of JSON"
    elif what == "known-size bomb":
        comp = zstandard.ZstdCompressor(level=1).compress(b" " * ((64 << 20) + 1))
        want = "bytes of JSON"
    elif what == "entries":
        comp = _zstd_of_repeats(head + b'"prefetch":[],"entries":[', b'{"name":"a","type":"fifo"},',
                                500_000, b'{"name":"a","type":"fifo"}]}')
        want = "entries"
    elif what == "prefetch":
        comp = _zstd_of_repeats(head + b'"entries":[],"prefetch":[', b"[0,0],", 4_000_000, b"[0,0]]}")
        want = "JSON values"
    elif what == "frames":
        comp = _zstd_of_repeats(b'{"version":1,"frame_size":1,"tar_size":0,"entries":[],"frames":[', b"1,",
                                1_000_001, b"1]}")
        want = "frames"
    else:
        comp = _zstd_of_repeats(head + b'"entries":[],"prefetch":[],"x":[', b"[],", 5_000_000, b"[]]}")
        want = "JSON values"
    rc, _, err = c_build([Layer(b"", 0, frame=toc_frame(b"", compressed=comp))])
    assert rc == lib.LL_ERR_LIMIT and want in err, err


def test_clamped_metadata_matches_python():
    ents = [e("etc/far", "fifo", mtime=1e300), e("etc/neg", "fifo", mtime=-5, uid=-1, gid=1 << 40),
            e("etc/dev", "char", devmajor=1 << 40, devminor=1 << 33), e("etc/nan", "fifo", mtime=float("nan"))]
    idx = check([synth(ents)])
    st = c_stat(idx, c_resolve(idx, b"etc/dev", False))
    assert st["dev"] == ((1 << 12) - 1, (1 << 20) - 1)


def test_many_layers_and_the_layer_cap():
    layers = [synth([e(f"f{i}"), e(f".wh.f{i - 1}")]) for i in range(50)]
    idx = check(layers)
    assert [n for n, _ in readdir(idx, 1)] == [b"f49"]
    arr = ffi.new("ll_index_layer[1]")
    out = ffi.new("ll_index **")
    assert lib.ll_index_build(arr, 4097, out, ffi.NULL, 0) == lib.LL_ERR_LIMIT


# ------------------------------------------------------------------ the stored buffer


def _walk_all(idx: Index) -> None:
    """Use every lookup on an index that opened: nothing may crash or loop."""
    n = lib.ll_index_inodes(idx.ptr)
    for ino in range(1, n + 1):
        st = c_stat(idx, ino)
        if st["kind"] == "dir":
            for name, _ in readdir(idx, ino):
                lib.ll_index_lookup(idx.ptr, ino, name, len(name), ffi.new("uint64_t *"))
    for path in (b"a", b"a/b/../c", b"/x/y", b"../../", b"l/l/l/l"):
        c_resolve(idx, path, True)
        c_resolve(idx, path, False)
    for layer in range(lib.ll_index_layers(idx.ptr)):
        nf = ffi.new("uint32_t *")
        lib.ll_index_layer_info(idx.ptr, layer, ffi.new("const char **"), ffi.NULL, ffi.NULL, nf)
        for i in range(nf[0]):
            lib.ll_index_frame(idx.ptr, layer, i, ffi.new("ll_layer_frame *"))


def test_truncated_and_flipped_buffers_are_refused():
    l0, _ = real_layer([("etc/a", "reg", b"x" * 3000), ("etc/l", "sym", "a"), ("x", "reg", b"",
                        {"pax": {"SCHILY.xattr.user.k": "v"}}), ("etc/h", "hard", "etc/a")])
    l1 = synth([e("etc/.wh.a"), e("etc/b", "dir"), e("etc/b/c", "fifo")], prefetch=[[0, 1]])
    rc, idx, err = c_build([l0, l1])
    assert rc == 0, err
    data = idx.data()
    assert data[:8] == b"LZLYIDX\0"
    for cut in list(range(0, 200, 7)) + [len(data) - 1, len(data) // 2]:
        rc, _, err = c_open(data[:cut])
        assert rc == lib.LL_ERR_FORMAT and err.startswith("index:"), (cut, err)
    rc, _, _ = c_open(data + b"\0")
    assert rc == lib.LL_ERR_FORMAT
    rng = random.Random(5)
    for _ in range(300):
        bad = bytearray(data)
        bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        rc, _, err = c_open(bytes(bad))
        assert rc == lib.LL_ERR_FORMAT, err


# A hostile buffer whose checksum was fixed up (so the structural checks are what stands
# between it and the lookups) is the job of csrc/fuzz/fuzz_index_load.c, which computes XXH3.


def test_index_version_and_argument_errors():
    rc, idx, _ = c_build([synth([e("a")])])
    data = bytearray(idx.data())
    data[8] = lib.LL_INDEX_FORMAT_VERSION + 1  # a newer version: refused by name
    rc, _, err = c_open(bytes(data))
    assert rc == lib.LL_ERR_FORMAT and "version" in err
    out = ffi.new("ll_index **")
    assert lib.ll_index_open_buffer(ffi.NULL, 5, 0, out, ffi.NULL, 0) == lib.LL_ERR_ARG
    ino = ffi.new("uint64_t *")
    assert lib.ll_index_lookup(idx.ptr, 99, b"a", 1, ino) == lib.LL_ERR_ARG
    a = c_resolve(idx, b"a", False)
    assert lib.ll_index_lookup(idx.ptr, a, b"x", 1, ino) == lib.LL_ERR_NOTDIR
    assert lib.ll_index_lookup(idx.ptr, 1, b"b", 1, ino) == lib.LL_ERR_NOENT
    assert lib.ll_index_stat(idx.ptr, 0, ffi.new("ll_stat *")) == lib.LL_ERR_ARG


# ------------------------------------------------------------------ OCI metadata


def manifest(layers: list[dict]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "x", "digest": "sha256:" + "1" * 64, "size": 2},
                       "layers": layers}).encode()


def desc(n: int, size: int = 1000, **ann) -> dict:
    d = {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": "sha256:" + f"{n:x}" * 64,
         "size": size}
    if ann:
        d["annotations"] = ann
    return d


def parse_manifest(data: bytes):
    out, err = ffi.new("ll_manifest **"), ffi.new("char[256]")
    rc = lib.ll_manifest_parse(data, len(data), out, err, 256)
    if rc:
        return rc, ffi.string(err).decode()
    m = ffi.gc(out[0], lib.ll_manifest_free)
    res = []
    d = ffi.new("ll_descriptor *")
    for i in range(lib.ll_manifest_layers(m)):
        assert lib.ll_manifest_layer(m, i, d) == 0
        s = lambda p: ffi.string(p).decode() if p != ffi.NULL else None  # noqa: E731
        res.append((s(d.media_type), s(d.digest), d.size, s(d.toc_digest), d.toc_offset, d.toc_length))
    assert lib.ll_manifest_layer(m, lib.ll_manifest_layers(m), d) == lib.LL_ERR_ARG
    return 0, res


def test_manifest_layers_and_annotations():
    td = "sha256:" + "a" * 64
    rc, got = parse_manifest(manifest([desc(1), desc(2, **{"io.lazylayer.toc.digest": td,
                                                           "io.lazylayer.toc.position": "900:100", "x": "y"})]))
    assert rc == 0
    assert got[0] == ("application/vnd.oci.image.layer.v1.tar+zstd", "sha256:" + "1" * 64, 1000, None, 0, 0)
    assert got[1][3:] == (td, 900, 100)
    from lazylayer.format import parse_toc_position

    for pos in ("0:1", "01:5", "1:0", " 1:2", "+1:2", "1:2:3", "\u0661:2", "1_0:2", "1:", ":1", "999:2",
                "9223372036854775807:1", "10000000000000000000:1", "1:2 ", "0:1000", "0:1001", "-1:2"):
        ann = {"io.lazylayer.toc.digest": td, "io.lazylayer.toc.position": pos}
        try:
            parse_toc_position(ann, 1000)
            ok = True
        except errors.FormatError:
            ok = False
        rc, got = parse_manifest(manifest([desc(1, **ann)]))
        assert (rc == 0) == ok, (pos, rc, got)
        if not ok:
            assert rc == lib.LL_ERR_FORMAT and "toc.position" in got


@pytest.mark.parametrize("doc", [
    b"", b"[]", b'{"layers": {}}', b'{"schemaVersion": 2}', b'{"layers": [1]}',
    b'{"layers": [{"digest": "sha256:00", "size": 1}]}', b'{"layers": [{"digest": "sha256:' + b"0" * 64 + b'"}]}',
    b'{"layers": [{"digest": "sha256:' + b"0" * 64 + b'", "size": -1}]}',
    b'{"layers": [{"digest": "sha256:' + b"0" * 64 + b'", "size": 1.5}]}',
    b'{"layers": [{"digest": "sha256:' + b"0" * 64 + b'", "size": 1, "mediaType": 5}]}',
    b'{"layers": [{"digest": "sha256:' + b"0" * 64 + b'", "size": 1, "annotations": []}]}',
    b'{"layers": [{"digest": "sha256:' + b"0" * 64 + b'", "size": 1, "annotations": '
    b'{"io.lazylayer.toc.digest": "md5:1"}}]}',
    b'{"layers": []} x', b'{"layers": [' + b"[" * 70 + b"]" * 70 + b"]}",
])
def test_bad_manifests(doc):
    rc, msg = parse_manifest(doc)
    assert rc == lib.LL_ERR_FORMAT, msg
    assert msg.startswith("manifest:")


def test_manifest_layer_cap():
    rc, msg = parse_manifest(manifest([desc(1)] * 4097))
    assert rc == lib.LL_ERR_LIMIT


def oci_index(data: bytes, os_: str | None, arch: str | None):
    out, err = ffi.new("char[80]"), ffi.new("char[256]")
    rc = lib.ll_oci_index_manifest(data, len(data), os_.encode() if os_ else ffi.NULL,
                                   arch.encode() if arch else ffi.NULL, out, 80, err, 256)
    return rc, (ffi.string(out).decode() if rc == 0 else ffi.string(err).decode())


def test_oci_index_platform_selection():
    m = "application/vnd.oci.image.manifest.v1+json"
    entries = [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + "0" * 64,
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": m, "digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": m, "digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": m, "digest": "sha256:" + "3" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
        "not an object",
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": "sha256:" + "4" * 64,
         "platform": {"os": "windows", "architecture": "amd64", "os.version": "10"}},
    ]
    data = json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
    assert oci_index(data, "linux", "amd64") == (0, "sha256:" + "2" * 64)
    assert oci_index(data, "linux", "arm64") == (0, "sha256:" + "1" * 64)
    assert oci_index(data, None, None) == (0, "sha256:" + "1" * 64)
    assert oci_index(data, "windows", None) == (0, "sha256:" + "4" * 64)
    assert oci_index(data, None, "amd64") == (0, "sha256:" + "2" * 64)
    assert oci_index(data, "linux", "s390x")[0] == lib.LL_ERR_NOENT
    nop = json.dumps({"manifests": [{"digest": "sha256:" + "5" * 64}]}).encode()
    assert oci_index(nop, "linux", "amd64") == (0, "sha256:" + "5" * 64)  # no platform: matches
    for bad in (b"{}", b'{"manifests": 1}', b"[", b'{"manifests": [{"digest": "sha256:12"}]}',
                b'{"manifests": [{"digest": 5}]}'):
        rc, msg = oci_index(bad, "linux", "amd64")
        assert rc == lib.LL_ERR_FORMAT, (bad, msg)
    out = ffi.new("char[71]")
    assert lib.ll_oci_index_manifest(data, len(data), ffi.NULL, ffi.NULL, out, 71, ffi.NULL, 0) == lib.LL_ERR_ARG


def test_packed_listing_matches_readdir_and_asks_for_room():
    """ll_index_readdir_names (fs.walk's listing) gives readdir's names, inodes and kinds; a buffer
    too small gets LL_ERR_LIMIT with the room it needs, never a partial answer taken as whole."""
    from lazylayer.core import Index, IndexLayer

    names = [f"d/{'n' * (i % 40)}{i}" for i in range(300)] + ["d/sub/x", "d/é-\udcff"]
    ly = synth([e("d", "dir")] + [e(n) for n in names])
    idx = Index.build([IndexLayer(ly.digest, ly.blob_size, ly.toc_digest, ly.toc_offset, len(ly.frame), ly.frame)])
    d = idx.resolve("d")
    full = idx.readdir(d)
    got_names, inos, kinds = idx.listdir(d)
    assert got_names == [n for n, _ in full] and inos == [st.ino for _, st in full]
    assert [{lib.LL_KIND_DIR: "dir", lib.LL_KIND_REG: "reg"}[k] for k in kinds] == [st.kind for _, st in full]
    buf, used, n = ffi.new("char[]", 16), ffi.new("size_t *"), ffi.new("size_t *")
    ino_arr, kind_arr = ffi.new("uint64_t[]", 2), ffi.new("uint8_t[]", 2)
    rc = lib.ll_index_readdir_names(idx._ptr, d, buf, 16, used, ino_arr, kind_arr, 2, n)
    assert rc == lib.LL_ERR_LIMIT and n[0] == len(full)
    assert used[0] == sum(len(name.encode("utf-8", "surrogateescape")) + 1 for name, _ in full)
    a_file = inos[kinds.index(lib.LL_KIND_REG)]
    assert lib.ll_index_readdir_names(idx._ptr, a_file, buf, 16, used, ino_arr, kind_arr, 2, n) == lib.LL_ERR_NOTDIR
