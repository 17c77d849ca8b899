"""Bad input: hostile seek tables, corrupt and truncated frames, failing sources.

Each case must end in a typed exception with a clear message: never a crash,
a hang, an allocation sized by the input, or wrong bytes.
"""

from __future__ import annotations

import io
import random
import struct

import pytest
import seekfmt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seekfmt import seek_table

import lazylayer
from lazylayer import BlockCache, SeekableReader, SeekableWriter

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
