"""Encoded frames: a chunk of another format kept in the disk cache as it was fetched (csrc ``ll_chunk_decode``).

A raw layer's frame (docs/format.md, "Raw frames") is a chunk of another
format — an eStargz gzip member, zstd:chunked zstd frames, a span of a plain
gzip layer from its checkpoint — named by the sha256 of its *data*.  Storing
that data means inflating and hashing every chunk fetched, those fetched ahead
and never read included; storing the chunk as it came over the network (with
a 24-byte header saying how to decode it) costs a write of the compressed
bytes and nothing more.  The reader then decodes and checks it when it is
read, in C (docs/cache.md, "Encoded frames").  :func:`header` makes the header
the Python package writes; :func:`decode` is the check the C reader makes.
:func:`decode_run` decodes and checks a run of small chunks fetched as one frame
(``ll_run_decode``; :func:`lazylayer.format.estargz.parse_toc` with ``runs``).
"""

from __future__ import annotations

import struct
from typing import Any

from .. import errors
from ._lib import check, ffi, lib

__all__ = ["CODECS", "HEADER_SIZE", "decode", "decode_run", "header", "run_entry", "run_header", "size_of"]

_alloc = ffi.new_allocator(should_clear_after_alloc=False)
_HEADER = struct.Struct("<8sBBBxIQ")
_MAGIC = b"LLCHNKZ1"
_RUN_ENTRY = struct.Struct("<IIIB3x32s")
assert _RUN_ENTRY.size == lib.LL_RUN_ENTRY

HEADER_SIZE = _HEADER.size
assert HEADER_SIZE == lib.LL_CHUNK_HEADER

CODECS = {"zeros": lib.LL_CHUNK_ZEROS, "gzip": lib.LL_CHUNK_GZIP, "zstd": lib.LL_CHUNK_ZSTD,
          "gzspan": lib.LL_CHUNK_GZSPAN}
"""Codec names (those of :class:`lazylayer.format.estargz` chunk rows) and their numbers in the header."""


def header(codec: str, size: int, *, bits: int = 0, byte: int = 0, window: bytes = b"") -> bytes:
    """The header (and, for ``gzspan``, the window) that goes before a chunk's compressed bytes."""
    if codec not in CODECS:
        raise ValueError(f"no encoded form for codec {codec!r}")
    if codec != "gzspan" and (bits or byte or window):
        raise ValueError("bits, byte and window belong to gzspan chunks")
    return _HEADER.pack(_MAGIC, CODECS[codec], bits, byte, len(window), size) + window


def size_of(data: Any) -> int | None:
    """The data size an encoded frame's header gives, or None if ``data`` does not start with one."""
    if len(data) < HEADER_SIZE:
        return None
    magic, _, _, _, _, size = _HEADER.unpack_from(data)
    return size if magic == _MAGIC and size <= lib.LL_MAX_FRAME_SIZE else None


def decode(data: Any, sha256_hex: str) -> bytes:
    """The data of encoded frame ``data`` (header, window, compressed bytes), checked against
    ``sha256_hex``.  :class:`~lazylayer.errors.FormatError` for a bad header,
    :class:`~lazylayer.errors.CorruptFrameError` if it does not decode,
    :class:`~lazylayer.errors.IntegrityError` if it decodes to other bytes."""
    size = size_of(data)
    if size is None:
        raise errors.FormatError(f"encoded frame sha256:{sha256_hex}: no LLCHNKZ1 header")
    digest = bytes.fromhex(sha256_hex)
    src = ffi.from_buffer(data)
    dst = _alloc("uint8_t[]", max(size, 1))
    rc = lib.ll_chunk_decode(src, len(src), digest, dst, size)
    if rc == lib.LL_ERR_FRAME:
        codec = {v: k for k, v in CODECS.items()}.get(data[8], "?")
        raise errors.CorruptFrameError(f"encoded frame sha256:{sha256_hex}: its {codec} bytes do not decode "
                                       f"to {size} bytes")
    check(rc, f"encoded frame sha256:{sha256_hex}")
    return bytes(ffi.buffer(dst, size))


def run_header(size: int, n: int) -> bytes:
    """The header of a run of ``n`` chunks and ``size`` bytes of data kept as one encoded frame
    (``LL_CHUNK_RUN``): then come its table (:func:`run_entry` of each chunk) and its payload; it is
    named by the sha256 of the table."""
    return _HEADER.pack(_MAGIC, lib.LL_CHUNK_RUN, 0, 0, n, size)


def run_entry(offset: int, length: int, size: int, codec: str, digest: bytes) -> bytes:
    """One chunk of a run, as :func:`decode_run` takes it: its compressed bytes at ``offset``
    (``length`` bytes) in the run's payload, ``size`` bytes of data with sha256 ``digest``
    (32 bytes); ``codec`` ``zeros``, ``gzip`` or ``zstd``."""
    return _RUN_ENTRY.pack(offset, length, size, CODECS[codec], digest)


def decode_run(table: bytes, payload: Any, size: int, name: Any = None) -> bytes:
    """The data of a run of chunks (``table``: :func:`run_entry` of each, in order) whose
    compressed bytes are ``payload``: every chunk decoded in C and checked against its own
    sha256.  :class:`~lazylayer.errors.IntegrityError` if one decodes to other bytes,
    :class:`~lazylayer.errors.CorruptFrameError` if one does not decode,
    :class:`~lazylayer.errors.FormatError` for a table that does not fit the payload; the
    message names the chunk by ``name(k)`` (k: its entry) if given."""
    n = len(table) // _RUN_ENTRY.size
    src = ffi.from_buffer(payload)
    dst = _alloc("uint8_t[]", max(size, 1))
    bad = ffi.new("uint32_t *")
    try:
        rc = lib.ll_run_decode(table, n, src, len(src), dst, size, bad)
    finally:
        ffi.release(src)
    if rc != lib.LL_OK:
        what = name(bad[0]) if name is not None else f"chunk {bad[0]} of a run"
        if rc == lib.LL_ERR_DIGEST:
            raise errors.IntegrityError(f"{what} does not match its chunkDigest")
        if rc == lib.LL_ERR_FRAME:
            raise errors.CorruptFrameError(f"{what}: its compressed bytes do not decode to its size")
        check(rc, f"{what}: decoding its run")
    return bytes(ffi.buffer(dst, size))
