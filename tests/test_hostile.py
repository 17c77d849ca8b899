"""Bad input: hostile seek tables, corrupt and truncated frames, failing sources.

Each case must end in a typed exception with a clear message: never a crash,
a hang, an allocation sized by the input, or wrong bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import tarfile

import images
import pytest
import seekfmt
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seekfmt import seek_table

import lazylayer
from lazylayer import BlockCache, SeekableReader, SeekableWriter, errors
from lazylayer.core import build_seek_table
from lazylayer.format import (
    ANNOTATION_TOC_DIGEST,
    ANNOTATION_TOC_POSITION,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    MAX_PATH_DEPTH,
    MAX_PLAN_RANGES,
    MAX_TOC_BYTES,
    MAX_TOC_ENTRIES,
    TOC_MAGIC,
    LayerWriter,
    Toc,
    read_toc,
)
from lazylayer.image import Tree

FRAME = b"".join(i.to_bytes(4, "little") for i in range(5000))  # 20 kB, compressible


def good_blob(frames: int = 3, checksums: bool = True) -> tuple[bytes, list[tuple[int, int, int]]]:
    blob = seekfmt.build([FRAME] * frames, checksums=checksums)
    n = len(blob) - len(seek_table([(0, 0, 0)] * frames, checksums))
    frame_len = n // frames
    return blob[:n], [(frame_len, len(FRAME), seekfmt.xxh64_low32(FRAME))] * frames


def open_blob(blob: bytes, **kw) -> SeekableReader:
    return SeekableReader(blob, cache=BlockCache(1 << 20), threads=2, **kw)


def test_good_blob_is_good():
    frames, entries = good_blob()
    with open_blob(frames + seek_table(entries, True)) as r:
        assert r.pread(10**6, 0) == FRAME * 3


HOSTILE = {
    "no magic": lambda f, e: f + b"\x00" * 30,
    "empty blob": lambda f, e: b"",
    "only footer": lambda f, e: struct.pack("<IBI", 0, 0, seekfmt.SEEKABLE_MAGIC),
    "reserved bits set": lambda f, e: f + seek_table(e, True, descriptor=0x80 | 0x04),
    "count larger than table": lambda f, e: f + seek_table(e, True, count=4),
    "count smaller than table": lambda f, e: f + seek_table(e, True, count=2),
    "count 2^32-1": lambda f, e: f + seek_table(e, True, count=0xFFFFFFFF),
    "count just over format limit": lambda f, e: f + seek_table(e, True, count=0x8000001),
    "frame_size field wrong": lambda f, e: f + seek_table(e, True, frame_size=5),
    "bad skippable magic": lambda f, e: f + b"\x00\x00\x00\x00" + seek_table(e, True)[4:],
    "checksum flag without checksums": lambda f, e: f + seek_table(e, False, descriptor=0x80),
    "compressed sizes too small": lambda f, e: f + seek_table([(c - 1, d, s) for c, d, s in e], True),
    "compressed sizes too big": lambda f, e: f + seek_table([(c + 1, d, s) for c, d, s in e], True),
    "compressed sizes overflow u32 sum": lambda f, e: f + seek_table(
        [(0xFFFFFFFF, 1, 0), (0xFFFFFFFF, 1, 0), (len(f) + 2, 1, 0)], True),
    "compressed size zero": lambda f, e: f + seek_table([(0, 0, 0)] + e, True),
    "decompressed size over 1 GiB": lambda f, e: f + seek_table([(e[0][0], 0x40000001, 0)] + e[1:], True),
    "frames shifted": lambda f, e: f[1:] + seek_table(e, True),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_seek_tables(case):
    frames, entries = good_blob()
    blob = HOSTILE[case](frames, entries)
    with pytest.raises((lazylayer.FormatError, lazylayer.CorruptFrameError)) as info:
        with open_blob(blob) as r:
            r.pread(len(FRAME) * 3, 0)
    assert str(info.value)  # a message, not an empty exception


def test_frame_over_reader_limit_is_a_limit_error():
    blob = seekfmt.build([b"a" * 200_000])
    with pytest.raises(lazylayer.LimitError, match="max_frame_size"):
        SeekableReader(blob, max_frame_size=100_000)
    with SeekableReader(blob, max_frame_size=200_000) as r:
        assert r.pread(5, 0) == b"aaaaa"


def test_decompressed_size_lies():
    """The table says a frame holds more (or less) than it does: an error, not padding."""
    frames, entries = good_blob(checksums=False)
    for delta in (-1, 1, 1000):
        lying = [(c, d + delta) for c, d, _ in entries]
        with open_blob(frames + seek_table(lying, False)) as r:
            with pytest.raises(lazylayer.CorruptFrameError):
                r.pread(len(FRAME) * 3, 0)
            with pytest.raises(lazylayer.CorruptFrameError):
                r.pread(100, len(FRAME) + d_end(delta))


def d_end(delta: int) -> int:
    return len(FRAME) + delta - 100 if delta > 0 else 0


def test_every_flipped_byte_is_caught_with_checksums():
    data = bytes(random.Random(3).randbytes(3000)) + FRAME
    out = io.BytesIO()
    with SeekableWriter(out, frame_size=4096, checksum=True) as w:
        w.write(data)
    blob = out.getvalue()
    table_len = 8 + 12 * ((len(data) + 4095) // 4096) + 9
    for pos in range(0, len(blob) - table_len):
        bad = bytearray(blob)
        bad[pos] ^= 0x41
        with SeekableReader(bytes(bad), cache=None, threads=1) as r:
            try:
                got = r.pread(len(data), 0)
            except lazylayer.IntegrityError:
                continue
            assert got == data, f"flipped byte {pos} gave wrong data"


def test_truncated_blob():
    out = io.BytesIO()
    with SeekableWriter(out, frame_size=4096) as w:
        w.write(FRAME)
    blob = out.getvalue()
    for cut in (1, 9, 20, len(blob) // 2, len(blob) - 1):
        with pytest.raises(lazylayer.FormatError):
            SeekableReader(blob[:cut])


def test_source_errors_are_typed_and_chained():
    frames, entries = good_blob()
    blob = frames + seek_table(entries, True)
    calls = []

    def flaky(off: int, size: int) -> bytes:
        calls.append((off, size))
        if off < len(blob) - 1000:
            raise ConnectionResetError("peer reset")
        return blob[off:off + size]

    with SeekableReader(flaky, blob_size=len(blob), cache=None) as r:  # the table reads work
        with pytest.raises(lazylayer.SourceError) as info:
            r.pread(10, 0)
        assert isinstance(info.value.__cause__, ConnectionResetError)
        assert "peer reset" in str(info.value)

    def short(off: int, size: int) -> bytes:
        return blob[off:off + size][:-1] if size > 100 else blob[off:off + size]

    with SeekableReader(short, blob_size=len(blob)) as r:
        with pytest.raises(lazylayer.SourceError, match="returned"):
            r.pread(10, 0)

    with pytest.raises(TypeError, match="blob_size"):
        SeekableReader(flaky)


def test_file_shorter_than_its_table(tmp_path):
    frames, entries = good_blob()
    p = tmp_path / "x.zst"
    p.write_bytes(frames + seek_table(entries, True))
    with SeekableReader(p) as r:
        with open(p, "r+b") as f:  # the file shrinks under the reader
            f.truncate(100)
        with pytest.raises(lazylayer.SourceError):
            r.pread(10, len(FRAME) * 2)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tail=st.binary(min_size=0, max_size=200), count=st.integers(0, 2**32 - 1),
       desc=st.integers(0, 255), frame_size=st.integers(0, 2**32 - 1), mode=st.integers(0, 3))
def test_random_tables_never_crash(tail, count, desc, frame_size, mode):
    frames, entries = good_blob(2)
    if mode == 0:
        blob = frames + tail + struct.pack("<IBI", count, desc, seekfmt.SEEKABLE_MAGIC)
    elif mode == 1:
        blob = frames + struct.pack("<II", seekfmt.SKIPPABLE_MAGIC, frame_size) + tail + \
            struct.pack("<IBI", count, desc, seekfmt.SEEKABLE_MAGIC)
    elif mode == 2:
        body = tail[: (len(tail) // 8) * 8]
        blob = frames + struct.pack("<II", seekfmt.SKIPPABLE_MAGIC, len(body) + 9) + body + \
            struct.pack("<IBI", len(body) // 8, desc & 0x03, seekfmt.SEEKABLE_MAGIC)
    else:
        blob = tail + frames[len(tail):] + seek_table(entries, True)
    try:
        with open_blob(blob) as r:
            got = r.pread(1 << 20, 0)
            assert len(got) == r.size
    except (lazylayer.FormatError, lazylayer.CorruptFrameError):
        pass


def test_unverifying_reader_cannot_poison_a_verifying_one():
    """Two readers share cached frames (same cache_key); the one that does not
    verify caches a corrupt frame first.  The verifying one must still refuse it."""
    out = io.BytesIO()
    with SeekableWriter(out, frame_size=len(FRAME), checksum=True) as w:
        w.write(FRAME * 2)
    bad = bytearray(out.getvalue())
    bad[30] ^= 0x01  # inside frame 0's compressed data
    cache = BlockCache(1 << 20)
    loose = SeekableReader(bytes(bad), cache=cache, verify=False, cache_key=7)
    strict = SeekableReader(bytes(bad), cache=cache, verify=True, cache_key=7)
    try:
        loose.pread(100, 10)  # may decode to wrong bytes: that reader opted out
    except lazylayer.IntegrityError:
        pass
    with pytest.raises(lazylayer.IntegrityError):
        strict.pread(100, 10)
    assert strict.pread(100, len(FRAME)) == FRAME[:100]  # the good frame still reads


# ------------------------------------------------- hostile TOCs, trees and plans (issue 15)
#
# Each builds the hostile input for real: a real lazy layer whose TOC frame is replaced by
# crafted JSON (compressed, framed, with a seek table and annotations that vouch for it),
# or a crafted plan.  Size and CPU cases run in a child with a memory cap and a timeout.

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _tar(*members: tuple[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                t.addfile(ti)
            else:
                ti.size, ti.mtime = len(data), 1700000000
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


BASE_TAR = _tar(("etc", None), ("etc/a", b"hello\n"), ("etc/b", b"world\n"))


def _toc_frame(payload_json: bytes | None = None, compressed: bytes | None = None) -> bytes:
    comp = compressed if compressed is not None else zstandard.ZstdCompressor(level=3).compress(payload_json)
    payload = TOC_MAGIC + comp
    return struct.pack("<II", 0x184D2A5A, len(payload)) + payload


def crafted_layer(patch=None, raw: bytes | None = None, compressed: bytes | None = None,
                  tar: bytes = BASE_TAR) -> tuple[bytes, dict[str, str], bytes]:
    """A real lazy layer of ``tar`` whose TOC is replaced: the real one's JSON changed by
    ``patch(doc)``, or ``raw`` JSON, or an already ``compressed`` zstd stream.  The blob,
    its annotations (which vouch for the crafted TOC) and the tar."""
    out = io.BytesIO()
    info = LayerWriter(threads=1).write(io.BytesIO(tar).read, out)
    blob = out.getvalue()
    toc = Toc.from_frame(blob[info.toc_offset:info.toc_offset + info.toc_length])
    if raw is None and compressed is None:
        doc = json.loads(toc.to_json())
        if patch is not None:
            patch(doc)
        raw = json.dumps(doc).encode()
    frame = _toc_frame(raw, compressed)
    table = build_seek_table([(f.compressed_size, f.size) for f in toc.frames] + [(len(frame), 0)])
    new = blob[:info.toc_offset] + frame + table
    ann = {**info.annotations(), ANNOTATION_TOC_DIGEST: "sha256:" + hashlib.sha256(frame).hexdigest(),
           ANNOTATION_TOC_POSITION: f"{info.toc_offset}:{len(frame)}"}
    return new, ann, tar


def read_crafted(blob: bytes, ann: dict[str, str]) -> Toc:
    return read_toc(lambda off, n: blob[off:off + n], len(blob), ann).toc


def crafted_image(path: str, blob: bytes, ann: dict[str, str], tar: bytes) -> str:
    """An OCI layout holding one image whose one layer is ``blob`` with ``ann``; returns its reference."""
    images.init_layout(path)
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [images.sha256(tar)]}}
    cdesc = images.write_blob(path, json.dumps(config).encode(), images.OCI_CONFIG)
    ldesc = images.write_blob(path, blob, images.LAYER_MEDIA["zstd"], annotations=ann)
    manifest = {"schemaVersion": 2, "mediaType": images.OCI_MANIFEST, "config": cdesc, "layers": [ldesc]}
    mdesc = images.write_blob(path, json.dumps(manifest).encode(), images.OCI_MANIFEST)
    images.write_index(path, [images.tagged(mdesc, "latest")])
    return f"oci:{path}:latest"


#: The child's peak resident memory in MB.  VmHWM, not ru_maxrss: ru_maxrss survives fork and exec,
#: so a child of a large pytest process would report its parent's peak.
PEAK_MB = """
def peak_mb():
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmHWM:")).split()[1]) / 1024
"""


def in_child(code: str, mem_mb: int = 1024, timeout: float = 60) -> dict:
    """Run ``code`` in a fresh interpreter with RLIMIT_AS at ``mem_mb`` (on top of what the bare
    interpreter maps); it prints one JSON line.  Adds the child's peak RSS (MB) as ``peak_mb``."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, ((mem_mb + 512) << 20, (mem_mb + 512) << 20))

    prog = (f"import json, resource, sys\nsys.path[:0] = [{ROOT!r}, {HERE!r}]\n" + PEAK_MB + code +
            "\nout['peak_mb'] = peak_mb()\nprint(json.dumps(out))\n")
    p = subprocess.run([sys.executable, "-c", prog], capture_output=True, timeout=timeout, preexec_fn=limit,
                       check=False)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


def read_toc_in_child(compressed_toc: bytes, mem_mb: int, timeout: float = 60) -> dict:
    """``read_toc`` of a real layer holding ``compressed_toc``, in :func:`in_child`: ``error`` is the
    LimitError's message (None if it was accepted), ``peak_mb`` the child's peak."""
    blob, ann, _ = crafted_layer(compressed=compressed_toc)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lazylayer-toc-{os.getpid()}.bin")
    with open(path, "wb") as f:
        f.write(blob)
    try:
        return in_child(f"""
from lazylayer import errors
from lazylayer.format import read_toc
blob = open({path!r}, "rb").read()
try:
    read_toc(lambda o, n: blob[o:o + n], len(blob), {ann!r})
    out = {{"error": None}}
except errors.LimitError as exc:
    out = {{"error": str(exc)}}
""", mem_mb=mem_mb, timeout=timeout)
    finally:
        os.unlink(path)


# (2) path length and depth: the converter and the reader refuse the same names.


def test_deep_and_long_names_are_refused_by_the_converter_and_the_reader():
    deep = "/".join(["d"] * 150_000)  # the 300 KB name
    for name in (deep, "a/" * MAX_PATH_DEPTH + "f", "n" * (MAX_NAME_BYTES + 1),
                 "/".join(["x" * 200] * 21)):  # 4,220 bytes
        with pytest.raises(errors.FormatError, match="tar member"):
            LayerWriter(threads=1).write(io.BytesIO(_tar((name, b"x"))).read, io.BytesIO())
        blob, ann, _ = crafted_layer(lambda doc, name=name: doc["entries"].append({"name": name, "type": "fifo"}))
        with pytest.raises(errors.FormatError) as info:
            read_crafted(blob, ann)
        assert name[:20] in str(info.value)  # names the path
    ok = "/".join(["d"] * MAX_PATH_DEPTH)  # at the limits: both accept
    ok2 = "/".join(["é" * (MAX_NAME_BYTES // 2)] * 10)[:MAX_PATH_BYTES // 2]
    for name in (ok, ok2):
        LayerWriter(threads=1).write(io.BytesIO(_tar((name, b"x"))).read, io.BytesIO())
        blob, ann, _ = crafted_layer(lambda doc, name=name: doc["entries"].append({"name": name, "type": "fifo"}))
        assert Tree.from_tocs([read_crafted(blob, ann)]).resolve(name, follow=False).kind == "fifo"


def test_tree_memory_stays_linear_in_a_deep_tree():
    """Every entry 256 components deep, none of its parents listed: parents made for it are
    bounded by the layer's entries, and a node does not keep its whole path."""
    out = in_child(r"""
from lazylayer import errors
from lazylayer.format import Toc
from lazylayer.image import Tree
depth = 255
chain = "/".join(["c" * 14] * depth)
entries = [{"name": f"x{i}/" + chain, "type": "fifo"} for i in range(3)]
entries += [{"name": f"y{i}", "type": "fifo"} for i in range(3 * depth)]
t = Tree.from_tocs([Toc(frames=[], entries=entries)])      # 3*256 parents made, for 3*256 entries: fine
out = {"nodes": len(t), "path": t.resolve("x2/" + chain, follow=False).path == "x2/" + chain}
entries = [{"name": f"x{i}/" + chain, "type": "fifo"} for i in range(2000)]  # 2000 x 255 parents: refused
try:
    Tree.from_tocs([Toc(frames=[], entries=entries)])
except errors.LimitError as exc:
    out["refused"] = str(exc)[:120]
""", mem_mb=1024)
    assert out["path"] and out["nodes"] == 1 + 3 * 256 + 3 * 255 and "layer 0: a layer makes" in out["refused"]
    assert out["peak_mb"] < 300


# (3) small TOCs that would expand to gigabytes: every cap holds on read.


def _zstd_of_repeats(head: bytes, item: bytes, count: int, tail: bytes) -> bytes:
    c = zstandard.ZstdCompressor(level=3).compressobj()
    parts = [c.compress(head)]
    chunk = item * 100_000
    for _ in range(count // 100_000):
        parts.append(c.compress(chunk))
    parts.append(c.compress(item * (count % 100_000)))
    parts.append(c.compress(tail))
    parts.append(c.flush())
    return b"".join(parts)


def test_a_toc_bomb_is_refused_while_decompressing():
    # The 40M-range prefetch plan: 240 MB of JSON from < 0.1 MB.
    head = b'{"version":1,"frame_size":1,"tar_size":0,"frames":[],"entries":[],"prefetch":['
    comp = _zstd_of_repeats(head, b"[0,0],", 40_000_000, b"[0,0]]}")
    assert len(comp) < 100_000
    out = read_toc_in_child(comp, mem_mb=512)
    assert out["error"] and str(MAX_TOC_BYTES) in out["error"]
    assert out["peak_mb"] < 256  # refused once past the limit, never held whole


@pytest.mark.parametrize("what", ["entries", "prefetch", "values"])
def test_toc_caps_hold_on_read_and_memory_stays_under_1_gib(what):
    """Just over each cap: a LimitError naming the field, the child's peak RSS under 1 GiB."""
    head = b'{"version":1,"frame_size":1,"tar_size":0,"frames":[],'
    if what == "entries":  # the converter's member cap, applied on read
        comp = _zstd_of_repeats(head + b'"prefetch":[],"entries":[', b'{"name":"a","type":"fifo"},',
                                MAX_TOC_ENTRIES, b'{"name":"a","type":"fifo"}]}')
    elif what == "prefetch":  # the plan range cap (the values cap is met first: each range is 3 values)
        comp = _zstd_of_repeats(head + b'"entries":[],"prefetch":[', b"[0,0],", MAX_PLAN_RANGES, b"[0,0]]}")
    else:  # many small values in a field nobody reads
        comp = _zstd_of_repeats(head + b'"entries":[],"prefetch":[],"x":[', b"[],", 5_000_000, b"[]]}")
    out = read_toc_in_child(comp, mem_mb=1024, timeout=120)
    assert out["error"], out
    assert {"entries": "entries", "prefetch": "JSON values", "values": "JSON values"}[what] in out["error"]
    assert out["peak_mb"] < 1024


def test_the_largest_accepted_toc_and_its_tree_stay_under_1_gib():
    """Half a million typical entries (64 MiB of JSON, the most a TOC may hold): read and indexed."""
    out = in_child(r"""
import json
from lazylayer.format import Toc, MAX_TOC_BYTES, MAX_TOC_ENTRIES
from lazylayer.image import Tree
n = MAX_TOC_ENTRIES - 10_000
ents = [{"name": f"usr/lib/python3/dist-packages/p{i // 100}/m_{i}.py", "type": "reg", "mode": 420,
         "mtime": 1700000000, "size": 1234, "offset": 512 * i} for i in range(n)]
data = json.dumps({"version": 1, "frame_size": 2097152, "tar_size": 512 * n + 2000,
                   "frames": [[0, 1, 0, 512 * n + 2000, "0" * 64]],  # (a file's content lies inside the tar)
                   "entries": ents, "prefetch": []}, separators=(",", ":")).encode()
del ents
assert len(data) <= MAX_TOC_BYTES, len(data)
base = peak_mb()
t = Tree.from_tocs([Toc.from_json(data)])
out = {"n": n, "nodes": len(t), "json": len(data), "base_mb": base}
""", mem_mb=1536, timeout=120)
    assert out["nodes"] > out["n"]
    assert out["peak_mb"] < 1024, out


# (5) a hostile plan costs O((frames + ranges) log frames), not frames x ranges.


def test_planning_a_hostile_plan_is_linear():
    out = in_child(r"""
import time
from lazylayer.format import Frame
from lazylayer.prefetch.prefetcher import _frames_of
from lazylayer.prefetch import Plan, LayerPlan
frames = [Frame(i * 100, 100, i * 2097152, 2097152, "0" * 64) for i in range(2114)]
end = 2114 * 2097152
plan = Plan([LayerPlan("sha256:" + "0" * 64, "", [(0, end)] * 1_000_000 + [(end - 1, 1 << 40)] * 1_000_000)])
data = plan.to_json()
plan = Plan.from_json(data)                   # the 4M-range cap is the parser's
got = _frames_of(frames, plan.layers[0].ranges)
out = {"frames": len(got), "ordered": got == list(range(2114)), "bytes": len(data)}
""", mem_mb=1024, timeout=120)  # frames x ranges would be 4.2e9 steps: far past the timeout
    assert out["frames"] == 2114 and out["ordered"]


def test_plan_range_cap_applies_to_toc_plans():
    blob, ann, _ = crafted_layer(lambda doc: doc.update(prefetch=[[0, "x"]]))
    with pytest.raises(errors.FormatError, match="prefetch"):
        read_crafted(blob, ann)


# (6) typed errors, not tracebacks.


def test_a_non_hex_toc_digest_is_a_format_error(tmp_path):
    blob, ann, tar = crafted_layer()
    for bad in ("sha256:" + "zz" * 32, "sha256:" + "0" * 63, "md5:00", "sha256:" + "0" * 64 + "\n"):
        ref = crafted_image(str(tmp_path / f"l{len(bad)}{bad[:3]}"), blob, {**ann, ANNOTATION_TOC_DIGEST: bad}, tar)
        for cache in (None, lazylayer.image.DiskCache(str(tmp_path / "cache"))):
            with pytest.raises(errors.FormatError, match="toc.digest"):
                lazylayer.Image(ref, cache=cache).close()
        with pytest.raises(errors.FormatError, match="toc.digest"):
            read_crafted(blob, {**ann, ANNOTATION_TOC_DIGEST: bad})


@pytest.mark.parametrize("levels", [20_000, 100_000])
def test_deeply_nested_json_is_a_format_error(levels, tmp_path):
    from lazylayer import oci
    from lazylayer.prefetch import Plan, PlanError

    nested = b"[" * levels + b"]" * levels
    with pytest.raises(errors.FormatError, match="JSON"):
        oci.parse_json(b'{"a":' + nested + b"}", "manifest")
    with pytest.raises(errors.FormatError):
        Toc.from_json(b'{"version":1,"frames":[],"entries":[],"x":' + nested + b"}")
    blob, ann, _ = crafted_layer(raw=b'{"version":1,"frame_size":1,"tar_size":0,"frames":[],"entries":[],"x":'
                                 + nested + b"}")
    with pytest.raises(errors.FormatError):
        read_crafted(blob, ann)
    with pytest.raises(PlanError):
        Plan.from_json(b'{"mediaType":"application/vnd.lazylayer.prefetch.v1+json","x":' + nested + b"}")
    # and through a real layout: a config nested 100k deep
    images.init_layout(str(tmp_path))
    cdesc = images.write_blob(str(tmp_path), b'{"rootfs":' + nested + b"}", images.OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": images.OCI_MANIFEST, "config": cdesc, "layers": []}
    mdesc = images.write_blob(str(tmp_path), json.dumps(manifest).encode(), images.OCI_MANIFEST)
    images.write_index(str(tmp_path), [images.tagged(mdesc, "latest")])
    with pytest.raises(errors.FormatError):
        lazylayer.Image(f"oci:{tmp_path}:latest", cache=None).close()


def _with_odd_metadata(doc):
    doc["entries"] += [
        {"name": "etc/far", "type": "fifo", "mtime": 1e300},
        {"name": "etc/neg", "type": "fifo", "mtime": -5, "uid": -1, "gid": 1 << 40},
        {"name": "etc/dev", "type": "char", "devmajor": 1 << 40, "devminor": 1 << 33},
        {"name": "etc/nan", "type": "fifo", "mtime": float("nan")},
    ]


def test_out_of_range_metadata_is_clamped_with_a_warning(tmp_path, caplog):
    blob, ann, tar = crafted_layer(_with_odd_metadata)
    assert b"NaN" in zstandard.ZstdDecompressor().decompressobj().decompress(blob[int(ann[ANNOTATION_TOC_POSITION]
                                                                                       .split(":")[0]) + 16:])
    with caplog.at_level("WARNING", logger="lazylayer"):
        toc = read_crafted(blob, ann)
    assert "clamped" in caplog.text and "etc/far" in caplog.text and "(and " in caplog.text
    e = {x["name"]: x for x in toc.entries}
    assert e["etc/far"]["mtime"] == 253402214400 and e["etc/nan"]["mtime"] == 0 and e["etc/neg"]["mtime"] == 0
    assert (e["etc/neg"]["uid"], e["etc/neg"]["gid"]) == (0, (1 << 32) - 1)
    tree = Tree.from_tocs([toc])
    info = tree.resolve("etc/dev").info()
    assert (info["devmajor"], info["devminor"]) == ((1 << 12) - 1, (1 << 20) - 1)
    # the whole directory lists, long format, through the real command
    ref = crafted_image(str(tmp_path / "img"), blob, ann, tar)
    p = subprocess.run([sys.executable, "-m", "lazylayer", "ls", "-l", ref, "/etc"], capture_output=True,
                       timeout=60, check=False, cwd=ROOT, env={**os.environ, "LAZYLAYER_CACHE_DIR": str(tmp_path / "c")})
    assert p.returncode == 0, p.stderr.decode()
    listing = p.stdout.decode()
    assert all(n in listing for n in ("far", "neg", "dev", "nan", " a", " b")) and "9999" in listing


def test_bad_field_types_are_format_errors_naming_the_field():
    for field, value in (("mtime", "x"), ("uid", 1.5), ("mode", "420"), ("devmajor", None), ("xattrs", {"a": "!"}),
                         ("size", -0.5), ("linkname", 5)):
        blob, ann, _ = crafted_layer(lambda doc, f=field, v=value: doc["entries"][1].update({f: v}))
        with pytest.raises(errors.FormatError, match=field if field != "xattrs" else "xattr"):
            read_crafted(blob, ann)


# (7) / (9) names the converter would refuse are refused on read, with the same function.


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "etc/..", "./etc/x", "/etc/x", "etc//x", "etc/x/",
                                  "", "etc/./x", "n" * 256, "etc/" + "n" * 300])
def test_names_the_converter_refuses_or_rewrites_are_refused_on_read(name):
    blob, ann, _ = crafted_layer(lambda doc: doc["entries"].append({"name": name, "type": "fifo"}))
    with pytest.raises(errors.FormatError) as info:
        read_crafted(blob, ann)
    assert repr(name)[:30] in str(info.value) or "not normalised" in str(info.value)


def test_a_hardlink_target_outside_the_root_is_refused_on_read():
    blob, ann, _ = crafted_layer(lambda doc: doc["entries"].append(
        {"name": "etc/l", "type": "hardlink", "linkname": "../etc/a"}))
    with pytest.raises(errors.FormatError, match="hardlink target"):
        read_crafted(blob, ann)


@pytest.mark.fuse
@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0
                    or subprocess.run(["which", "fusermount3"], capture_output=True, check=False).returncode,
                    reason="needs /dev/fuse, fusermount3 and root")
def test_one_bad_entry_does_not_break_its_directory_in_a_mount(tmp_path):
    """mtime 1e300 / NaN, uid -1, devmajor 2^40 in one directory: READDIRPLUS lists all of it."""
    blob, ann, tar = crafted_layer(_with_odd_metadata)
    ref = crafted_image(str(tmp_path / "img"), blob, ann, tar)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "LAZYLAYER_CACHE_DIR": str(tmp_path / "c")}
    lz = [sys.executable, "-m", "lazylayer"]
    p = subprocess.run([*lz, "mount", ref, str(mnt), "--log", str(tmp_path / "log")], capture_output=True,
                       timeout=60, check=False, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr.decode()
    try:
        names = sorted(os.listdir(mnt / "etc"))
        assert names == ["a", "b", "dev", "far", "nan", "neg"]
        st_ = {n: os.lstat(mnt / "etc" / n) for n in names}
        assert st_["far"].st_mtime == 253402214400 and st_["nan"].st_mtime == 0
        assert (mnt / "etc" / "a").read_bytes() == b"hello\n"
        ls = subprocess.run(["ls", "-la", str(mnt / "etc")], capture_output=True, timeout=30, check=False)
        assert ls.returncode == 0 and ls.stdout.decode().count("\n") >= 8, ls.stderr.decode()
    finally:
        subprocess.run([*lz, "umount", str(mnt)], capture_output=True, timeout=60, check=False, env=env, cwd=ROOT)
