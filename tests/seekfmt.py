"""Builds seekable-format blobs by hand for tests, independently of lazylayer's writer.

Having a second, tiny implementation of the format (python-zstandard frames plus
a seek table packed with struct) lets tests make blobs lazylayer's writer never
would: empty frames, skippable frames in the middle, and hostile tables.
"""

from __future__ import annotations

import struct

import zstandard

SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1


def xxh64_low32(data: bytes) -> int:
    """Low 32 bits of XXH64(data), taken from a zstd frame's content checksum."""
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    return struct.unpack("<I", frame[-4:])[0]


def seek_table(entries: list[tuple[int, int] | tuple[int, int, int]], checksums: bool,
               descriptor: int | None = None, count: int | None = None,
               frame_size: int | None = None) -> bytes:
    """A seek-table skippable frame; every field can be overridden to make it hostile."""
    body = b"".join(struct.pack("<III" if checksums else "<II", *e[: 3 if checksums else 2])
                    for e in entries)
    desc = (0x80 if checksums else 0) if descriptor is None else descriptor
    footer = struct.pack("<IBI", len(entries) if count is None else count, desc, SEEKABLE_MAGIC)
    size = len(body) + len(footer) if frame_size is None else frame_size
    return struct.pack("<II", SKIPPABLE_MAGIC, size) + body + footer


def build(parts: list[bytes | tuple[str, bytes]], checksums: bool = True, level: int = 3) -> bytes:
    """Concatenate frames and append the seek table.

    Each part is the data of one zstd frame (b"" makes an empty frame), or
    ("skip", payload) for a skippable frame in the middle of the stream.
    """
    cctx = zstandard.ZstdCompressor(level=level)
    blob = bytearray()
    entries = []
    for part in parts:
        if isinstance(part, tuple):
            frame = struct.pack("<II", 0x184D2A50, len(part[1])) + part[1]
            entries.append((len(frame), 0, xxh64_low32(b"")))
        else:
            frame = cctx.compress(part)
            entries.append((len(frame), len(part), xxh64_low32(part)))
        blob += frame
    return bytes(blob) + seek_table(entries, checksums)
