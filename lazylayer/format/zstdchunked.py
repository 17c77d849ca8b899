"""What lazylayer knows of zstd:chunked layers, to read them lazily.

zstd:chunked (containers/storage's ``pkg/chunked``; docs/filesystem.md) is a
``tar+zstd`` layer whose files, and content-defined chunks of larger files,
start new zstd frames, followed by its TOC: zstd-compressed JSON in a skippable
frame, in eStargz's TOC schema with containers/storage's additions.  Three
writers are in use, and lazylayer reads all three:

- containers/image before 2023 (Debian bookworm's skopeo 1.9.3): annotations
  ``io.containers.zstd-chunked.manifest-checksum`` / ``-position``, a 40-byte
  footer ending in ``GnUlInUx``, no tar-split;
- stargz-snapshotter's ``zstdchunked``: the same annotations and footer, plus
  ``containerd.io/snapshot/stargz/toc.digest`` (the JSON's sha256) and
  eStargz's prefetch landmarks;
- containers/storage since 2023: ``io.github.containers.zstd-chunked.*``
  annotations, a tar-split frame after the TOC, a 64-byte footer ending in
  ``GNUlInUx``.

As containers/storage does, the TOC is found from the annotations alone (one
range request, no footer read): ``manifest-position`` is
``offset:length:uncompressed-length:type`` of the TOC's compressed bytes, and
``manifest-checksum`` their sha256, checked before they are decompressed.
Chunk digests cover the *uncompressed* data, so each chunk becomes a raw frame
named by that digest (:func:`lazylayer.format.estargz.raw_layer`), fetched and
checked by :class:`lazylayer.image.frames.ChunkSource`.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any, Callable

import zstandard

from .. import errors
from . import estargz
from .estargz import ANNOTATION_TOC_DIGEST, EstargzToc, checked_digest, hidden_names, parse_toc
from .tar import MAX_TOC_BYTES

PREFIXES = ("io.github.containers.zstd-chunked.", "io.containers.zstd-chunked.")
"""The annotation prefixes: containers/storage's current one first, then the one before 2023."""
MANIFEST_TYPE_CRFS = 1
"""The only TOC type (``manifest-position``'s last field) there is."""
SKIPPABLE_HEADER = 8
_POSITION = re.compile(r"([0-9]{1,20}):([0-9]{1,20}):([0-9]{1,20}):([0-9]{1,20})")


def annotation(desc: dict[str, Any], key: str) -> str | None:
    """The zstd:chunked annotation ``key`` (``manifest-checksum``, ``manifest-position``) of a
    layer descriptor, under either prefix (the current one preferred)."""
    ann = desc.get("annotations") or {}
    for prefix in PREFIXES:
        if prefix + key in ann:
            return ann[prefix + key]
    return None


def is_zstd_chunked(desc: dict[str, Any]) -> bool:
    """A zstd layer that says where its zstd:chunked TOC is."""
    return str(desc.get("mediaType", "")).endswith("zstd") and annotation(desc, "manifest-position") is not None


def read_toc(fetch: Callable[[int, int], bytes], desc: dict[str, Any], max_bytes: int = MAX_TOC_BYTES,
             runs: bool = False) -> EstargzToc:
    """Read and check the TOC of zstd:chunked layer ``desc`` (``fetch(offset, size)`` reads its
    blob): one range read of the TOC's compressed bytes, their sha256 checked against
    ``manifest-checksum`` before they are decompressed (and, for stargz's writer, the JSON's
    against ``toc.digest``), at most ``max_bytes`` of it.  FormatError (LimitError,
    IntegrityError for a digest mismatch) naming what is wrong."""
    size = desc.get("size")
    position, checksum = annotation(desc, "manifest-position"), annotation(desc, "manifest-checksum")
    m = _POSITION.fullmatch(position or "")
    if not isinstance(size, int) or m is None:
        raise errors.FormatError(f"the zstd:chunked manifest-position {str(position)[:80]!r} is not "
                                 "offset:length:uncompressed-length:type")
    offset, length, raw_length, kind = (int(g) for g in m.groups())
    checked_digest(checksum, "the layer's zstd:chunked manifest-checksum")
    if kind != MANIFEST_TYPE_CRFS:
        raise errors.FormatError(f"the zstd:chunked TOC is of type {kind}, not {MANIFEST_TYPE_CRFS} (the only one)")
    if length > max_bytes or raw_length > max_bytes:
        raise errors.LimitError(f"the zstd:chunked TOC is larger than {max_bytes} bytes")
    if offset < SKIPPABLE_HEADER or length == 0 or offset + length > size:
        raise errors.FormatError(f"the zstd:chunked TOC at {offset} ({length} bytes) is not inside the "
                                 f"{size}-byte blob")
    data = fetch(offset, length)
    if len(data) != length or "sha256:" + hashlib.sha256(data).hexdigest() != checksum:
        raise errors.IntegrityError(f"the zstd:chunked TOC's sha256 is not {checksum}, the checksum the layer names")
    try:
        doc = decompress_prefix(data, raw_length + 1)
    except zstandard.ZstdError as exc:
        raise errors.FormatError(f"the zstd:chunked TOC at {offset} is not zstd: {exc}") from None
    if len(doc) != raw_length:
        raise errors.FormatError(f"the zstd:chunked TOC holds {len(doc)} bytes, not the {raw_length} its "
                                 "position says")
    toc_digest = (desc.get("annotations") or {}).get(ANNOTATION_TOC_DIGEST)
    if toc_digest is not None and "sha256:" + hashlib.sha256(doc).hexdigest() != checked_digest(
            toc_digest, "the layer's toc.digest annotation"):
        raise errors.IntegrityError(f"the zstd:chunked TOC's JSON sha256 is not {toc_digest}, the digest the layer "
                                    "names")
    return parse_toc(doc, offset - SKIPPABLE_HEADER, codec="zstd", hidden=hidden_names(desc), runs=runs)


def decompress_prefix(data: bytes, size: int) -> bytes:
    """The first ``size`` bytes ``data``'s zstd frames decompress to (fewer if they hold fewer):
    never more than ``size`` bytes of memory, whatever a frame header claims.  ZstdError if the
    bytes are not zstd."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    parts, got = [], 0
    while got < size:
        part = reader.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def is_chunked(desc: dict[str, Any]) -> bool:
    """An eStargz or zstd:chunked layer: one whose TOC :func:`read_chunked_toc` reads."""
    return estargz.is_estargz(desc) or is_zstd_chunked(desc)


def read_chunked_toc(fetch: Callable[[int, int], bytes], desc: dict[str, Any], runs: bool = False) -> EstargzToc:
    """The checked TOC of eStargz or zstd:chunked layer ``desc`` (``fetch(offset, size)`` reads its
    blob): :func:`lazylayer.format.estargz.read_toc`, or :func:`read_toc`; ``runs``: runs of small
    chunks one frame each (:func:`lazylayer.format.estargz.parse_toc`)."""
    if not estargz.is_estargz(desc):
        return read_toc(fetch, desc, runs=runs)
    size = desc.get("size")
    if not isinstance(size, int):
        raise errors.FormatError(f"the eStargz layer's size {str(size)[:40]} is not a number")
    return estargz.read_toc(fetch, size, desc["annotations"][ANNOTATION_TOC_DIGEST], runs=runs)
