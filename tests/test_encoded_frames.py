"""Encoded frames (docs/cache.md, "Encoded frames"): a raw layer's chunk kept in the disk cache as it
was fetched, named by the sha256 of its data, decoded and checked when read — by C
(ll_chunk_decode, ll_diskcache_get) and by Python (DiskCache.get, lazylayer.core.chunk), which must
agree.  Real gzip (zlib, and gzip members as eStargz writes them), real zstd frames, real gzip
checkpoints from the C indexer; hostile headers and payloads are misses (and deleted), never wrong
bytes, a crash or an allocation the header asks for."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import struct
import zlib

import pytest
import zstandard

from lazylayer import errors
from lazylayer.core import chunk
from lazylayer.core._lib import ffi, lib
from lazylayer.core.gzindex import GzipIndexer
from lazylayer.image.cache import DiskCache

from .test_c_diskcache import digest, frame_path


def _text(n: int, seed: int = 1) -> bytes:
    """Text-like bytes that compress about 1.5x (so payloads are as long as their data's scale)."""
    rnd = random.Random(seed)
    return bytes(rnd.getrandbits(8) % 32 + 65 for _ in range(n))


def _encodings() -> dict[str, tuple[bytes, bytes]]:
    """name -> (data, encoded frame), one per codec, as the chunked formats lay them out."""
    data = _text(300_000)
    out = {}
    # eStargz: the chunk's gzip member, then the next entry's header member (not part of the chunk)
    out["gzip"] = (data, chunk.header("gzip", len(data)) + gzip.compress(data, 9) + gzip.compress(b"\0" * 512))
    # zstd:chunked: the chunk in two frames, then the next file's frame
    z = zstandard.ZstdCompressor(level=3)
    out["zstd"] = (data, chunk.header("zstd", len(data)) + z.compress(data[:100_000]) + z.compress(data[100_000:])
                   + z.compress(b"next file"))
    out["zeros"] = (bytes(70_000), chunk.header("zeros", 70_000))
    # a span of a plain gzip stream from a checkpoint the C indexer took
    stream = gzip.compress(_text(1_200_000, seed=7), 6)
    g = GzipIndexer(span=256 * 1024)
    parts, cps = [], []
    for i in range(0, len(stream), 8192):  # (each call takes at most one checkpoint per block boundary)
        parts.append(g.decompress(stream[i:i + 8192]))
        cps += g.checkpoints()
    full = b"".join(parts)
    a, b = cps[2], cps[3]
    span = full[a.output:b.output]
    out["gzspan"] = (span, chunk.header("gzspan", len(span), bits=a.bits, byte=a.byte, window=a.window)
                     + stream[a.input:b.input + 1])
    return out


ENCODED = _encodings()


def _put_encoded(py: DiskCache, data: bytes, encoded: bytes) -> str:
    py.put_encoded(digest(data), [encoded[:chunk.HEADER_SIZE], encoded[chunk.HEADER_SIZE:]])
    path = frame_path(py.path, data) + ".z"
    assert os.path.exists(path) and not os.path.exists(frame_path(py.path, data))
    return path


@pytest.mark.parametrize("codec", sorted(ENCODED))
def test_each_codec_decodes_in_c_and_python(pair, codec):
    py, c = pair
    data, encoded = ENCODED[codec]
    assert chunk.decode(encoded, hashlib.sha256(data).hexdigest()) == data
    _put_encoded(py, data, encoded)
    assert py.has(digest(data))
    assert c.get(data, len(data)) == data
    assert py.get(digest(data)) == data
    assert py.stats()["corrupt"] == 0


def test_data_file_wins_and_put_encoded_keeps_what_is_there(pair):
    py, c = pair
    data, encoded = ENCODED["zstd"]
    py.put(digest(data), data)
    py.put_encoded(digest(data), [encoded])  # the data is there: nothing written
    assert not os.path.exists(frame_path(py.path, data) + ".z")
    assert c.get(data, len(data)) == data


@pytest.mark.parametrize("damage", ["flip-payload", "truncate", "wrong-codec", "other-data", "bad-magic",
                                    "window-too-long", "zeros-with-payload", "huge-window-log"])
def test_bad_encoded_file_is_a_miss_and_deleted(pair, damage):
    """C reads first: a bad file is a miss there and removed; Python then finds nothing.  Both
    refuse the bytes without ever returning them."""
    py, c = pair
    data, encoded = ENCODED["gzip" if damage != "huge-window-log" else "zstd"]
    bad = bytearray(encoded)
    if damage == "flip-payload":
        bad[chunk.HEADER_SIZE + 5000] ^= 0x40
    elif damage == "truncate":
        bad = bad[:len(bad) // 2]
    elif damage == "wrong-codec":
        bad[8] = lib.LL_CHUNK_ZSTD
    elif damage == "other-data":  # a well-formed frame of other bytes under this name
        other = bytearray(data)
        other[100] ^= 1
        bad = bytearray(chunk.header("gzip", len(data)) + gzip.compress(bytes(other)))
    elif damage == "bad-magic":
        bad[0:8] = b"LLCHNKZ0"
    elif damage == "window-too-long":
        bad[12:16] = struct.pack("<I", 40_000)
    elif damage == "zeros-with-payload":
        bad = bytearray(chunk.header("zeros", len(data)) + b"x")
    else:  # a zstd frame header asking for a 2 GiB window (windowLog 31): refused, not allocated
        bad = bytearray(chunk.header("zstd", len(data)) + bytes.fromhex("28b52ffd") + bytes([0x00, 0xb8])
                        + encoded[chunk.HEADER_SIZE + 6:])
    path = _put_encoded(py, data, bytes(bad))
    assert c.get(data, len(data)) == lib.LL_ERR_NOENT
    assert not os.path.exists(path)
    # Python's reading of the same bad file: a miss, deleted, counted
    _put_encoded(py, data, bytes(bad))
    assert py.get(digest(data)) is None and not os.path.exists(path)
    assert py.stats()["corrupt"] == 1


def test_wrong_size_asked_is_a_miss_and_keeps_the_file(pair):
    py, c = pair
    data, encoded = ENCODED["zstd"]
    path = _put_encoded(py, data, encoded)
    assert c.get(data, len(data) - 1) == lib.LL_ERR_NOENT
    assert c.get(data, len(data) + 1) == lib.LL_ERR_NOENT
    assert os.path.exists(path)
    assert c.get(data, len(data)) == data


def test_oversized_file_is_refused_unread(pair):
    """A file far longer than its data could be compressed is not read into memory."""
    py, c = pair
    data = b"x" * 1000
    path = _put_encoded(py, data, chunk.header("gzip", 1000) + gzip.compress(data) + bytes(17 << 20))
    assert c.get(data, 1000) == lib.LL_ERR_NOENT
    assert not os.path.exists(path)


def test_python_decode_errors_are_typed():
    data, encoded = ENCODED["gzip"]
    h = hashlib.sha256(data).hexdigest()
    with pytest.raises(errors.FormatError):
        chunk.decode(b"LLCHNKZ", h)
    with pytest.raises(errors.CorruptFrameError, match="gzip bytes do not decode"):
        chunk.decode(encoded[:1000], h)
    with pytest.raises(errors.IntegrityError):
        chunk.decode(chunk.header("gzip", len(data)) + gzip.compress(data[:-1] + b"!"), h)
    with pytest.raises(errors.FormatError):  # a header whose size is past the format's limit
        chunk.decode(chunk.header("zeros", 0)[:16] + struct.pack("<Q", 1 << 40), h)
    with pytest.raises(ValueError):
        chunk.header("lz4", 10)
    with pytest.raises(ValueError):
        chunk.header("gzip", 10, window=b"x")


def test_c_decode_never_writes_past_its_buffer():
    """Every codec asked for fewer bytes than it holds: exactly `size` bytes written (a guard
    byte after them stays), and the digest of the shorter data is what decides."""
    for codec, (data, encoded) in sorted(ENCODED.items()):
        n = len(data) // 3
        buf = ffi.new("uint8_t[]", n + 1)
        buf[n] = 0xA5
        hdr = bytearray(encoded)
        hdr[16:24] = struct.pack("<Q", n)
        rc = lib.ll_chunk_decode(bytes(hdr), len(hdr), hashlib.sha256(data[:n]).digest(), buf, n)
        assert rc == lib.LL_OK, codec
        assert bytes(ffi.buffer(buf, n)) == data[:n] and buf[n] == 0xA5, codec


def test_gzip_codec_reads_zlib_written_members():
    """Members written by zlib itself (not Python's gzip module), a deflate stream at level 1."""
    data = _text(50_000, seed=3)
    co = zlib.compressobj(1, zlib.DEFLATED, 31)
    member = co.compress(data) + co.flush()
    assert chunk.decode(chunk.header("gzip", len(data)) + member, hashlib.sha256(data).hexdigest()) == data


# -- runs of small chunks read as one frame (ll_run_decode, chunk.decode_run)

def _run(gap: bytes = b"HDR" * 100) -> tuple[bytes, bytes, bytes]:
    """(table, payload, data) of a run as eStargz and zstd:chunked lay one out: gzip members and
    zstd frames (a chunk's zstd bytes in two frames) with other bytes between them (tar headers),
    and a run of zeros, which has no bytes."""
    z = zstandard.ZstdCompressor(level=3)
    pieces = [("gzip", _text(20_000, 2)), ("zstd", _text(30_000, 3)), ("zeros", bytes(5000)),
              ("gzip", _text(1, 4)), ("zstd", b""), ("gzip", _text(70_000, 5))]
    payload, table, data = bytearray(), [], []
    for codec, d in pieces:
        at = len(payload)
        if codec == "gzip":
            payload += gzip.compress(d, 6)
        elif codec == "zstd":
            payload += z.compress(d[:10_000]) + z.compress(d[10_000:])
        length = len(payload) - at
        table.append(chunk.run_entry(at if length else 0, length, len(d), codec, hashlib.sha256(d).digest()))
        data.append(d)
        payload += gap
    return b"".join(table), bytes(payload), b"".join(data)


def test_a_run_decodes_every_chunk_and_checks_each():
    table, payload, data = _run()
    assert chunk.decode_run(table, payload, len(data)) == data
    assert chunk.decode_run(table, payload[:-300], len(data)) == data  # (the gap after the last: not needed)


def test_a_run_with_a_wrong_chunk_is_an_integrity_error_naming_it():
    table, payload, data = _run()
    entries = [table[i:i + lib.LL_RUN_ENTRY] for i in range(0, len(table), lib.LL_RUN_ENTRY)]
    bad = entries[:]
    bad[1] = bad[1][:16] + hashlib.sha256(b"other").digest()
    with pytest.raises(errors.IntegrityError, match="chunk number 1"):
        chunk.decode_run(b"".join(bad), payload, len(data), lambda k: f"chunk number {k}")
    # a zeros chunk is checked too
    bad = entries[:]
    bad[2] = bad[2][:16] + hashlib.sha256(b"x").digest()
    with pytest.raises(errors.IntegrityError, match="chunk 2 of a run"):
        chunk.decode_run(b"".join(bad), payload, len(data))


def test_a_run_whose_bytes_do_not_decode_is_corrupt():
    table, payload, data = _run()
    broken = bytearray(payload)
    first_zstd = struct.unpack_from("<I", table, lib.LL_RUN_ENTRY)[0]
    broken[first_zstd + 4:first_zstd + 40] = bytes(36)  # (inside the zstd frame's header and first block)
    with pytest.raises((errors.CorruptFrameError, errors.IntegrityError)):
        chunk.decode_run(table, bytes(broken), len(data))
    # truncated inside the last chunk
    last = struct.unpack_from("<I", table, 5 * lib.LL_RUN_ENTRY)[0]
    with pytest.raises(errors.FormatError):  # (its entry then points outside the payload)
        chunk.decode_run(table, payload[:last + 10], len(data))


@pytest.mark.parametrize("damage", ["outside", "codec", "padding", "sizes", "empty", "zeros-with-bytes"])
def test_a_malformed_run_table_is_a_format_error_and_writes_nothing_past_dst(damage):
    table, payload, data = _run()
    t = bytearray(table)
    size = len(data)
    if damage == "outside":
        struct.pack_into("<I", t, 0, len(payload) - 5)  # the first chunk's bytes run past the payload
    elif damage == "codec":
        t[12] = 9
    elif damage == "padding":
        t[13] = 1
    elif damage == "sizes":
        size += 1
    elif damage == "empty":
        t = bytearray()
    elif damage == "zeros-with-bytes":
        t[2 * lib.LL_RUN_ENTRY + 4] = 1
    dst = ffi.new("uint8_t[]", size + 64)
    ffi.memmove(dst + size, b"\xa5" * 64, 64)
    bad = ffi.new("uint32_t *")
    rc = lib.ll_run_decode(bytes(t), len(t) // lib.LL_RUN_ENTRY, payload, len(payload), dst, size, bad)
    assert rc == lib.LL_ERR_FORMAT
    assert bytes(ffi.buffer(dst + size, 64)) == b"\xa5" * 64
    with pytest.raises(errors.FormatError):
        chunk.decode_run(bytes(t), payload, size)


def test_a_run_table_may_not_ask_for_more_than_a_frame():
    entry = chunk.run_entry(0, 0, 1 << 30, "zeros", bytes(32))
    rc = lib.ll_run_decode(entry * 2, 2, b"", 0, ffi.new("uint8_t[]", 1), 1, ffi.NULL)
    assert rc == lib.LL_ERR_FORMAT  # (sizes add up to 2 GiB, more than dst: refused before any write)
