"""SeekableReader / SeekableWriter: interoperability, edges, and every frame boundary."""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess

import pytest
import pyzstd
import seekfmt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazylayer
from lazylayer import BlockCache, SeekableReader, SeekableWriter


def write_pyzstd(path, data: bytes, frame_size: int) -> None:
    with pyzstd.SeekableZstdFile(path, "w", max_frame_content_size=frame_size) as f:
        f.write(data)


def write_ours(data: bytes, **kw) -> bytes:
    out = io.BytesIO()
    with SeekableWriter(out, **kw) as w:
        w.write(data)
    return out.getvalue()


SOURCE_KINDS = ["bytes", "path", "callable"]


def make_reader(blob: bytes, kind: str, tmp_path, **kw) -> SeekableReader:
    if kind == "bytes":
        return SeekableReader(blob, **kw)
    if kind == "path":
        p = tmp_path / "blob.zst"
        p.write_bytes(blob)
        return SeekableReader(p, **kw)
    return SeekableReader(lambda off, size: blob[off:off + size], blob_size=len(blob), **kw)


@pytest.mark.parametrize("frame_size", [4096, 100_000, 1 << 20])
@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_reads_pyzstd_files(tmp_path, corpus, frame_size, kind):
    path = tmp_path / "py.zst"
    write_pyzstd(path, corpus, frame_size)
    with make_reader(path.read_bytes(), kind, tmp_path) as r:
        assert r.size == len(corpus)
        assert not r.has_checksums  # pyzstd writes none
        assert r.pread(len(corpus) + 10, 0) == corpus
        rng = random.Random(frame_size)
        for _ in range(200):
            off = rng.randrange(len(corpus))
            n = rng.choice([1, 100, 4096, 65536, 3 * frame_size + 7])
            assert r.pread(n, off) == corpus[off:off + n]


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_pyzstd_reads_our_files(corpus, checksum, threads):
    blob = write_ours(corpus, frame_size=123_457, checksum=checksum, threads=threads)
    with pyzstd.SeekableZstdFile(io.BytesIO(blob)) as f:
        assert f.read() == corpus
        f.seek(1_000_001)
        assert f.read(77_777) == corpus[1_000_001:1_077_778]
    # and it is one ordinary zstd stream for tools that know nothing of seeking
    assert pyzstd.decompress(blob) == corpus


def test_zstd_cli_decompresses_our_files(tmp_path, corpus):
    path = tmp_path / "ours.zst"
    with SeekableWriter(path, frame_size=65536) as w:
        w.write(corpus[:1_000_000])
        w.end_frame()
        w.add_skippable(b"not data")
        w.write(corpus[1_000_000:])
    out = subprocess.run(["zstd", "-d", "-c", str(path)], check=True, capture_output=True).stdout
    assert out == corpus


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("cache", ["none", "small", "big"])
def test_every_frame_boundary(corpus, verify, cache):
    parts, pos, rng = [], 0, random.Random(7)
    data = corpus[:800_000]
    while pos < len(data):
        n = rng.choice([1, 2, 17, 4096, 30_000, 65_536])
        parts.append(data[pos:pos + n])
        pos += n
        if rng.random() < 0.1:
            parts.append(b"")  # empty frame: decompressed size 0
        if rng.random() < 0.05:
            parts.append(("skip", b"hello"))
    blob = seekfmt.build(parts, checksums=True)
    caches = {"none": None, "small": BlockCache(100_000), "big": BlockCache(64 << 20)}
    with SeekableReader(blob, cache=caches[cache], verify=verify, threads=2) as r:
        assert r.size == len(data)
        bounds, off = [], 0
        for p in parts:
            if isinstance(p, bytes):
                off += len(p)
                bounds.append(off)
        for b in bounds[:-1]:
            for lo in (b - 2, b - 1, b):
                for n in (1, 2, 3, 70_000):
                    if 0 <= lo:
                        assert r.pread(n, lo) == data[lo:lo + n], (lo, n)
        assert r.pread(10, len(data)) == b""
        assert r.pread(10, len(data) + 5) == b""
        assert r.pread(len(data), 0) == data


def test_empty_stream_and_frames_only_empty():
    for parts in ([], [b""], [b"", ("skip", b"x"), b""]):
        blob = seekfmt.build(parts)
        with SeekableReader(blob) as r:
            assert r.size == 0
            assert r.pread(10, 0) == b""
    blob = write_ours(b"")
    with SeekableReader(blob) as r:
        assert r.size == 0 and r.frames == 0


def test_frame_info_and_file_object(corpus):
    data = corpus[:300_000]
    blob = write_ours(data, frame_size=100_000)
    with SeekableReader(blob) as r:
        assert r.frames == 3 and r.has_checksums
        f1 = r.frame(1)
        assert (f1.offset, f1.size) == (100_000, 100_000)
        assert f1.checksum == seekfmt.xxh64_low32(data[100_000:200_000])
        with pytest.raises(IndexError):
            r.frame(3)
        f = r.open()
        f.seek(150_000)
        assert f.read(10) == data[150_000:150_010]
        assert f.seek(-5, io.SEEK_END) == len(data) - 5
        assert f.read() == data[-5:]


def test_readinto_no_extra_copy(corpus):
    blob = write_ours(corpus[:500_000], frame_size=65536)
    with SeekableReader(blob) as r:
        buf = bytearray(200_000)
        view = memoryview(buf)[50_000:150_000]
        assert r.readinto(view, 123_456) == 100_000
        assert bytes(buf[50_000:150_000]) == corpus[123_456:223_456]
        assert buf[:50_000] == bytes(50_000)
        with pytest.raises(TypeError):
            r.readinto(b"immutable", 0)


def test_writer_frame_cuts(corpus):
    out = io.BytesIO()
    with SeekableWriter(out, frame_size=1000, checksum=False) as w:
        w.write(corpus[:2500])   # frames 1000, 1000, then 500 open
        w.end_frame()            # cut: 500
        w.end_frame()            # no-op
        w.write(corpus[2500:2600])
        assert w.tell() == 2600
    with SeekableReader(out.getvalue()) as r:
        sizes = [r.frame(i).size for i in range(r.frames)]
        assert sizes == [1000, 1000, 500, 100]
        assert r.pread(3000, 0) == corpus[:2600]


@pytest.mark.parametrize("threads", [1, 3])
def test_stored_frames_are_raw_blocks_any_zstd_reads(corpus, threads):
    """stored=True: no compression; each frame a zstd frame of raw blocks (<= 128 KiB each), which the
    zstd CLI, pyzstd and our reader decode to the data; sizes are the data plus 9 + 3 bytes per block."""
    data = corpus[:700_000] + bytes(300_000) + b"z"  # compressible too: stored all the same
    cuts = [0, 1, 131_072, 131_073, 262_144, 400_000, 1_000_001]
    out = io.BytesIO()
    with SeekableWriter(out, frame_size=300_000, stored=True, threads=threads) as w:
        for a, b in zip(cuts, cuts[1:]):
            w.write(data[a:b])
            w.end_frame()
        w.flush()  # (frames still in the pool's batch are not written, nor hashed, before)
        digests = w.frame_sha256s()
    blob = out.getvalue()
    assert subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout == data
    assert pyzstd.decompress(blob) == data
    with SeekableReader(blob) as r:
        frames = [r.frame(i) for i in range(r.frames)]
        assert r.pread(len(data) + 10, 0) == data and r.pread(5, 131_070) == data[131_070:131_075]
    sizes = [b - a for a, b in zip(cuts, cuts[1:])]
    sizes = [n for s in sizes for n in ([300_000] * (s // 300_000) + ([s % 300_000] if s % 300_000 else []))]
    assert [f.size for f in frames] == sizes
    assert [f.compressed_size for f in frames] == [n + 9 + 3 * -(-n // 131_072) for n in sizes]
    # the writer's sha256 of each frame is the frame's as written
    assert digests == [hashlib.sha256(blob[f.compressed_offset:f.compressed_offset + f.compressed_size]).hexdigest()
                       for f in frames]


def test_writer_hashes_every_frame_it_writes(corpus):
    """frame_sha256s(): compressed and skippable frames, in order, as the sink received them."""
    got: list[bytes] = []

    class Sink(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            got.append(bytes(b))
            return len(b)

    w = SeekableWriter(Sink(), frame_size=100_000, threads=2)
    w.write(corpus[:250_000])
    w.add_skippable(b"toc", variant=3)
    w.write(corpus[:1000])
    w.flush()
    assert w.frame_sha256s() == [hashlib.sha256(b).hexdigest() for b in got]
    assert len(got) == 5
    w.close()


def test_writer_abort_leaves_no_seek_table(tmp_path, corpus):
    path = tmp_path / "partial.zst"
    with pytest.raises(RuntimeError):
        with SeekableWriter(path) as w:
            w.write(corpus[:100_000])
            raise RuntimeError("boom")
    with pytest.raises(lazylayer.FormatError):
        SeekableReader(path)


def test_writer_propagates_sink_errors():
    class Full(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise OSError(28, "No space left on device")

    w = SeekableWriter(Full(), frame_size=1000, threads=1)
    with pytest.raises(OSError, match="No space"):
        w.write(b"x" * 5000)
    with pytest.raises(lazylayer.LazyLayerError):
        w.write(b"more")  # the writer is now failed, not silently continuing
    w.abort()


def test_writer_rejects_bad_options():
    with pytest.raises(ValueError):
        SeekableWriter(io.BytesIO(), frame_size=0)
    with pytest.raises(ValueError):
        SeekableWriter(io.BytesIO(), level=1000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(min_size=0, max_size=20_000),
    frame_size=st.integers(1, 5000),
    cuts=st.lists(st.integers(0, 20_000), max_size=8),
    reads=st.lists(st.tuples(st.integers(0, 21_000), st.integers(0, 21_000)), max_size=20),
    checksum=st.booleans(),
    budget=st.sampled_from([0, 3000, 1 << 20]),
)
def test_random_roundtrip(data, frame_size, cuts, reads, checksum, budget):
    out = io.BytesIO()
    with SeekableWriter(out, frame_size=frame_size, checksum=checksum, threads=2) as w:
        pos = 0
        for c in sorted(set(cuts)):
            c = min(c, len(data))
            w.write(data[pos:c])
            w.end_frame()
            pos = c
        w.write(data[pos:])
    with SeekableReader(out.getvalue(), cache=BlockCache(budget), threads=2) as r:
        assert r.size == len(data)
        for off, n in reads:
            assert r.pread(n, off) == data[off:off + n]
        s = r.cache_stats()
        assert s.peak_bytes <= budget


def test_closed_reader_refuses_io(corpus):
    r = SeekableReader(write_ours(corpus[:10_000]))
    r.close()
    r.close()
    assert r.closed
    with pytest.raises(ValueError, match="closed"):
        r.pread(1, 0)


def test_path_reader_closes_its_file(tmp_path, corpus):
    p = tmp_path / "f.zst"
    p.write_bytes(write_ours(corpus[:10_000]))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with SeekableReader(p) as r:
            r.pread(10, 0)
    assert len(os.listdir("/proc/self/fd")) == before


def test_worked_example_in_docs_is_true():
    """docs/format-seekable.md shows these exact table bytes."""
    out = io.BytesIO()
    with SeekableWriter(out, frame_size=4) as w:
        w.write(b"hello world")
    blob = out.getvalue()
    assert len(blob) == 91
    assert blob[-53:].hex() == (
        "5e2a4d18" "2d000000"
        "0d000000" "04000000" "2c33540d"
        "0d000000" "04000000" "c5230782"
        "0c000000" "03000000" "6355af4d"
        "03000000" "80" "b1ea928f"
    )
    assert seekfmt.xxh64_low32(b"hell") == 0x0D54332C


@pytest.mark.parametrize("whole", [False, True])
def test_whole_frames_decodes_a_missed_frame_once(corpus, whole):
    """A read of a frame's start then of its end: one fetch with whole_frames, two without."""
    data = corpus[: 3 << 20]
    blob = write_ours(data, frame_size=1 << 20, checksum=False)
    asked = []

    def source(off, n):
        asked.append((off, n))
        return blob[off:off + n]

    with SeekableReader(source, blob_size=len(blob), cache=BlockCache(16 << 20), whole_frames=whole) as r:
        start = len(asked)  # the seek table's fetches
        assert r.pread(4096, (1 << 20) + 10) == data[(1 << 20) + 10:(1 << 20) + 10 + 4096]
        assert r.pread(4096, (2 << 20) - 4096) == data[(2 << 20) - 4096:2 << 20]
        assert len(asked) - start == (1 if whole else 2)


# ---------------------------------------------------------------- the C API contract, from Python (issue 14)


def test_version_is_written_once_in_the_header():
    """lazylayer.__version__ (what ``lazylayer --version`` prints) is the header's, as the extension was built."""
    import importlib.metadata
    import pathlib
    import re

    from lazylayer.core._lib import lib

    header = (pathlib.Path(__file__).resolve().parent.parent / "csrc" / "lazylayer.h").read_text()
    parts = [re.search(rf"^#define LL_VERSION_{p}\s+(\d+)", header, re.M).group(1) for p in ("MAJOR", "MINOR", "PATCH")]
    assert lazylayer.__version__ == ".".join(parts)
    assert re.fullmatch(r"\d+\.\d+\.\d+", lazylayer.__version__)
    assert lib.ll_version() == int(parts[0]) * 10000 + int(parts[1]) * 100 + int(parts[2])
    assert importlib.metadata.version("lazylayer") == lazylayer.__version__  # setup.py reads the header too


def test_every_status_has_a_message_and_an_exception():
    from lazylayer import errors
    from lazylayer.core._lib import ZSTD, lib, raise_status, strerror

    codes = range(lib.LL_ERR_ARG, lib.LL_ERR_UNSUPPORTED - 1, -1)
    assert all(strerror(c) != "unknown error" for c in codes)
    assert strerror(lib.LL_ERR_UNSUPPORTED - 1) == "unknown error"  # ll_strerror and the enum end together
    expected = {lib.LL_ERR_ARG: ValueError, lib.LL_ERR_NOMEM: MemoryError, lib.LL_ERR_CHECKSUM: errors.ChecksumError,
                lib.LL_ERR_IO: errors.SourceError, lib.LL_ERR_ZSTD: errors.NativeError}
    for code in codes:
        with pytest.raises(expected.get(code, Exception)) as info:
            raise_status(code, "doing it")
        assert info.value.args[0] == f"doing it: {strerror(code)}"
    assert "libzstd" in strerror(lib.LL_ERR_ZSTD)
    assert ZSTD.startswith("libzstd ")  # ll_check_zstd passed on import


def test_options_structs_carry_their_size():
    from lazylayer.core._lib import ffi, lib

    for kind in ("reader", "writer"):
        opts = ffi.new(f"ll_{kind}_options *")
        init = getattr(lib, f"ll_{kind}_options_init")
        assert init(opts, ffi.sizeof(opts[0])) == lib.LL_OK
        assert opts.struct_size == ffi.sizeof(opts[0])
        assert init(opts, 0) == lib.LL_ERR_ARG
        assert init(ffi.NULL, ffi.sizeof(opts[0])) == lib.LL_ERR_ARG


@pytest.mark.parametrize("raised, status, surfaces_as", [
    (lazylayer.ChecksumError("the host verified these bytes: bad"), "LL_ERR_CHECKSUM", lazylayer.ChecksumError),
    (lazylayer.CorruptFrameError("bad frame"), "LL_ERR_FRAME", lazylayer.CorruptFrameError),
    (lazylayer.LimitError("too big"), "LL_ERR_LIMIT", lazylayer.LimitError),
    (lazylayer.FormatError("bad table"), "LL_ERR_SEEKTABLE", lazylayer.FormatError),
    (lazylayer.SourceError("gone"), "LL_ERR_IO", lazylayer.SourceError),
    (OSError(5, "EIO"), "LL_ERR_IO", lazylayer.SourceError),
    (KeyError("bug"), "LL_ERR_IO", lazylayer.SourceError),
])
def test_fetch_errors_reach_c_as_their_status_and_python_unchanged(raised, status, surfaces_as):
    """The C read callback returns the exception's status (passed through by the C library);
    Python callers still get the exception itself (a lazylayer error) or a SourceError from it."""
    from lazylayer.core._lib import ffi, lib

    blob = write_ours(b"0123456789" * 1000, frame_size=1000, threads=1)
    fail = []

    def fetch(off, n):
        if fail:
            raise fail[0]
        return blob[off:off + n]

    with SeekableReader(fetch, blob_size=len(blob), cache=None, threads=1) as r:
        fail.append(raised)
        buf = ffi.new("char[]", 100)
        assert lib.ll_reader_read(r._ptr, 50, buf, 100) == getattr(lib, status)  # what C sees
        assert r._callback.take_failure() is raised
        with pytest.raises(surfaces_as) as info:  # what Python sees: as before
            r.pread(100, 50)
        if isinstance(raised, lazylayer.LazyLayerError):
            assert info.value is raised
        else:
            assert info.value.__cause__ is raised
    with pytest.raises(surfaces_as):  # the seek table's load goes the same way
        SeekableReader(fetch, blob_size=len(blob), cache=None, threads=1)


def test_sink_errors_reach_c_as_their_status_and_python_unchanged():
    class Sink(io.RawIOBase):
        def __init__(self, exc):
            self.exc = exc

        def writable(self):
            return True

        def write(self, b):
            raise self.exc

    exc = lazylayer.ChecksumError("the sink re-hashed the frame")
    w = SeekableWriter(Sink(exc), frame_size=1000, threads=1)
    with pytest.raises(lazylayer.ChecksumError) as info:
        w.write(b"x" * 5000)
    assert info.value is exc
    with pytest.raises(lazylayer.LazyLayerError):
        w.write(b"more")  # failed for good (LL_ERR_STATE)
    w.abort()
