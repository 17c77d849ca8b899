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
"""

from __future__ import annotations

import struct
from typing import Any

from .. import errors
from ._lib import check, ffi, lib

__all__ = ["CODECS", "HEADER_SIZE", "decode", "header", "size_of"]

_alloc = ffi.new_allocator(should_clear_after_alloc=False)
_HEADER = struct.Struct("<8sBBBxIQ")
_MAGIC = b"LLCHNKZ1"

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
