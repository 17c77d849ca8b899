"""What lazylayer knows of eStargz (stargz-snapshotter's docs/estargz.md), and the TOC schema
eStargz and zstd:chunked share.

How to tell a stargz layer (the layer descriptor's TOC-digest annotation, which
eStargz and stargz's zstd:chunked write), the files of its own that
stargz-snapshotter hides from the merged root (its TOC, a tar entry in
eStargz, and the prefetch landmarks), and how to read an eStargz layer lazily:
:func:`read_toc` finds, checks and parses its TOC into lazylayer's TOC entries
and each file's chunks, :func:`raw_layer` makes that a raw layer for the image
index (docs/format.md, "Raw frames") whose frames
:class:`lazylayer.image.frames.ChunkSource` fetches and checks chunk by chunk.

zstd:chunked (:mod:`.zstdchunked`) keeps the same TOC schema in a skippable
frame, with containers/storage's additions (``endOffset``, ``chunkType``
``zeros``, files left whole with only ``digest``): :func:`parse_toc` reads
both, :func:`raw_layer` serves both.
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import logging
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence, overload

from .. import errors
from ..oci.media import DIGEST, load_json
from .tar import MAX_TOC_BYTES, MAX_TOC_ENTRIES, MAX_TOC_FRAMES, MAX_TOC_VALUES, MTIME_MAX, normalize_name, parse_header

log = logging.getLogger("lazylayer")

ANNOTATION_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
"""The sha256 of a layer's eStargz TOC JSON (stargz-snapshotter's ``estargz.TOCJSONDigestAnnotation``)."""
TOC_TAR_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
HIDDEN = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
"""Names at a layer's root that are the format's, not the image's: left out of the tree."""


def is_stargz(desc: dict[str, Any]) -> bool:
    """True for a layer written by stargz-snapshotter's library (eStargz, or its zstd:chunked)."""
    return ANNOTATION_TOC_DIGEST in (desc.get("annotations") or {})


def hidden_names(desc: dict[str, Any]) -> frozenset[str]:
    """The names to leave out of layer ``desc``'s tree (none for other layers)."""
    return HIDDEN if is_stargz(desc) else frozenset()


# ------------------------------------------------------------------ reading the TOC
#
# The layout (docs/estargz.md of stargz-snapshotter): the blob is gzip members;
# the TOC is the last tar entry, stargz.index.json, alone in the member that
# starts at the TOC offset; the blob ends with a 51-byte footer, an empty gzip
# member whose header's extra field (subfield 'S','G', 22 bytes) is the TOC
# offset as 16 hex digits and "STARGZ".

class NotSupported(errors.FormatError):
    """An eStargz or zstd:chunked layer using what this lazylayer does not read lazily (``innerOffset``,
    a chunk over :data:`MAX_CHUNK_SIZE` that does not start its file or is over
    :data:`MAX_WHOLE_SIZE`, or any over :data:`MAX_CHUNK_SIZE` with no disk cache to keep its copy in;
    over :data:`MAX_ZERO_CHECK` bytes of zeros chunks to check): it is fetched whole instead."""


FOOTER_SIZE = 51
_FOOTER_HEAD = b"\x1f\x8b\x08\x04"  # gzip, deflate, FEXTRA


MAX_CHUNK_SIZE = 64 << 20
"""The largest chunk read as one frame (the C reader's default frame limit).  A larger one that
starts its file (zstd:chunked leaves big files whole, named by their ``digest``) is read as
:data:`WHOLE_PIECE` frames of a copy fetched, checked whole and kept on disk
(:class:`lazylayer.image.frames.ChunkSource`); any other layer with a larger one (other than a
run of zeros) is fetched whole."""
WHOLE_PIECE = 4 << 20
"""The frames a chunk over :data:`MAX_CHUNK_SIZE` is read as (from its copy on disk)."""
MAX_WHOLE_SIZE = 1 << 36
"""The largest such chunk read from a copy on disk (64 GiB); past it the layer is fetched whole."""
ZERO_SHA256 = "0" * 64
"""The frame digest of a piece of such a chunk: the C reader leaves its check to the host."""
ZERO_PIECE = 1 << 20
"""A zstd:chunked ``zeros`` chunk becomes frames of this many zero bytes (never fetched)."""
MAX_ZERO_CHECK = 4 << 30
"""Zero bytes hashed, at most, to check the digests of one TOC's ``zeros`` chunks (distinct sizes)."""


class Chunk(NamedTuple):
    """A piece of a regular file's content: ``size`` bytes at ``file_offset`` in the file, the start
    of the compressed member or frame at ``offset`` in the blob (its compressed bytes end at
    ``end``: the next member with data), whose uncompressed bytes have sha256 ``digest``; ``codec``
    says how they are compressed: ``gzip`` (eStargz), ``zstd`` (zstd:chunked), ``zeros`` (a
    zstd:chunked run of zeros, made here, not fetched), ``gzspan`` (a span of a plain gzip
    layer; ``file_offset`` is then its offset in the tar), or ``gzip-whole``/``zstd-whole`` (a
    piece of a chunk too big for one frame: ``offset``, ``end`` and ``digest`` are the whole
    chunk's, read through a checked copy on disk)."""

    file_offset: int
    size: int
    offset: int
    end: int
    digest: str
    codec: str = "gzip"
    bits: int = 0
    byte: int = 0
    window: bytes = b""
    """(``gzspan`` only: a plain gzip layer's span, :mod:`.gzindex`: inflated from the checkpoint
    at ``offset`` — the low ``bits`` of ``byte``, the byte before it, and the 32 KiB of output
    before it, ``window``, kept zstd-compressed: :func:`.gzindex.window`.)"""


@dataclass
class EstargzToc:
    """A layer's eStargz TOC, checked: ``entries`` in lazylayer's TOC form (docs/format.md; no
    ``offset``: content is in ``chunks``), ``chunks`` of each regular file by its index in
    ``entries``, the TOC's offset in the blob, and the files named before the prefetch landmark
    (the prioritized files)."""

    entries: list[dict[str, Any]]
    chunks: dict[int, list[Chunk]]
    toc_offset: int
    prioritized: list[str]


def parse_footer(footer: bytes, blob_size: int) -> int:
    """The TOC offset an eStargz footer (the blob's last 51 bytes) gives; FormatError if it is not one."""
    if len(footer) != FOOTER_SIZE or not footer.startswith(_FOOTER_HEAD):
        raise errors.FormatError("not an eStargz blob: its last 51 bytes are not the eStargz footer")
    xlen, si, sublen = struct.unpack_from("<H2sH", footer, 10)
    payload = footer[16:16 + 22]
    if xlen != 26 or si != b"SG" or sublen != 22 or not payload.endswith(b"STARGZ") or \
            not re.fullmatch(rb"[0-9a-f]{16}", payload[:16]):
        raise errors.FormatError("not an eStargz footer (its extra field is not 'SG' + 16 hex digits + STARGZ)")
    try:
        if zlib.decompress(footer, 31) != b"":  # the rest must be a whole, empty gzip member
            raise zlib.error("not empty")
    except zlib.error:
        raise errors.FormatError("the eStargz footer is not an empty gzip member") from None
    offset = int(payload[:16], 16)
    if offset >= blob_size - FOOTER_SIZE:
        raise errors.FormatError(f"the eStargz footer puts the TOC at {offset}, past the blob's data "
                                 f"({blob_size - FOOTER_SIZE} bytes)")
    return offset


def read_toc(fetch: Callable[[int, int], bytes], blob_size: int, toc_digest: str,
             max_bytes: int = MAX_TOC_BYTES) -> EstargzToc:
    """Read and check the eStargz TOC of a blob of ``blob_size`` bytes: two range reads
    (``fetch(offset, size)``: the footer, then the TOC's gzip member), the TOC JSON's sha256
    against ``toc_digest`` (the layer's annotation) before it is parsed, at most ``max_bytes``
    of it.  FormatError (LimitError, IntegrityError for a digest mismatch) naming what is wrong."""
    checked_digest(toc_digest, "the layer's toc.digest annotation")
    if blob_size < FOOTER_SIZE + 512:
        raise errors.FormatError(f"a {blob_size}-byte blob is too small for eStargz")
    offset = parse_footer(fetch(blob_size - FOOTER_SIZE, FOOTER_SIZE), blob_size)
    member = fetch(offset, blob_size - FOOTER_SIZE - offset)
    d = zlib.decompressobj(31)
    try:
        tar = d.decompress(member, max_bytes + 1024 + 1)
    except zlib.error as exc:
        raise errors.FormatError(f"the eStargz TOC member at {offset} is not gzip: {exc}") from None
    if len(tar) > max_bytes + 1024:
        raise errors.LimitError(f"the eStargz TOC is larger than {max_bytes} bytes")
    if not d.eof or d.unused_data:
        raise errors.FormatError(f"the eStargz TOC member at {offset} does not end where the footer begins")
    head = parse_header(tar[:512])
    if head.name != TOC_TAR_NAME or head.type not in (b"0", b"\0") or head.size > len(tar) - 512:
        raise errors.FormatError(f"the eStargz TOC member holds {head.name!r}, not {TOC_TAR_NAME}")
    data = tar[512:512 + head.size]
    if "sha256:" + hashlib.sha256(data).hexdigest() != toc_digest:
        raise errors.IntegrityError(f"the eStargz TOC's sha256 is not {toc_digest}, the digest the layer names")
    return parse_toc(data, offset)


def parse_toc(data: bytes, toc_offset: int, codec: str = "gzip", hidden: frozenset[str] = HIDDEN) -> EstargzToc:
    """Check an eStargz or zstd:chunked TOC's JSON (already vouched for by its digest: still treated
    as hostile); its chunks are compressed with ``codec`` and lie before ``toc_offset``; ``hidden``
    names are left out of the entries."""
    doc = load_json(data, "eStargz TOC", MAX_TOC_VALUES)
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("entries"), list):
        raise errors.FormatError("the eStargz TOC is not a version 1 object with an entries list")
    raw = doc["entries"]
    if len(raw) > MAX_TOC_ENTRIES:
        raise errors.LimitError(f"the eStargz TOC has more than {MAX_TOC_ENTRIES} entries")
    try:
        return _convert(raw, toc_offset, codec, hidden)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, errors.FormatError):
            raise
        raise errors.FormatError(f"malformed eStargz TOC entry: {type(exc).__name__}: {exc}") from None


_KINDS = frozenset({"dir", "reg", "symlink", "hardlink", "char", "block", "fifo"})


def _nonneg(e: dict[str, Any], key: str, limit: int = 1 << 62) -> int:
    v = e.get(key, 0)
    if type(v) is not int or not 0 <= v < limit:
        raise errors.FormatError(f"eStargz TOC entry {str(e.get('name'))[:100]!r}: bad {key} {str(v)[:40]}")
    return v


def _convert(raw: list[Any], toc_offset: int, codec: str, hidden: frozenset[str]) -> EstargzToc:
    entries: list[dict[str, Any]] = []
    chunks: dict[int, list[Chunk]] = {}
    starts: list[int] = []  # the member offset of every chunk, to find where each ends
    ends: set[int] = {toc_offset}  # and where a file's compressed bytes end (zstd:chunked's endOffset)
    prioritized: list[str] = []
    landmark_seen = False
    current: str | None = None  # the regular file that "chunk" entries continue
    size = 0  # its size
    into: list[Chunk] = []  # its chunks
    mtimes: dict[str, int] = {}
    for e in raw:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get("type"), str):
            raise errors.FormatError("eStargz TOC entry without a name and a type")
        name = normalize_name(e["name"])
        kind = e["type"]
        if kind == "chunk":
            if current != name:
                raise errors.FormatError(f"eStargz TOC: a chunk of {name[:100]!r} does not follow its file")
            starts.append(_chunk(e, name, into, toc_offset, size, codec))
            continue
        if kind not in _KINDS:
            raise errors.FormatError(f"eStargz TOC entry {name[:100]!r}: unknown type {kind[:20]!r}")
        current = None
        if name in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK):
            landmark_seen = True
        if name in hidden:
            continue
        out: dict[str, Any] = {"name": name, "type": kind, "mode": _nonneg(e, "mode", 1 << 32) & 0o7777}
        for src, dst in (("uid", "uid"), ("gid", "gid"), ("devMajor", "devmajor"), ("devMinor", "devminor")):
            if e.get(src) and _nonneg(e, src, 1 << 32):  # (0 is the default, left out: most entries)
                out[dst] = e[src]
        for src, dst in (("userName", "uname"), ("groupName", "gname"), ("linkName", "linkname")):
            v = e.get(src)
            if v:
                if not isinstance(v, str):
                    raise errors.FormatError(f"eStargz TOC entry {name[:100]!r}: {src} is not a string")
                out[dst] = normalize_name(v, "hardlink target") if (kind, dst) == ("hardlink", "linkname") else v
            elif v is not None and v != "":
                raise errors.FormatError(f"eStargz TOC entry {name[:100]!r}: {src} is not a string")
        if kind in ("symlink", "hardlink") and "linkname" not in out:
            raise errors.FormatError(f"eStargz TOC entry {name[:100]!r}: a {kind} without linkName")
        modtime = e.get("modtime")
        mtime = mtimes.get(modtime) if isinstance(modtime, str) else None  # (files share their times)
        if mtime is None:
            mtime = _mtime(modtime, name)
            if isinstance(modtime, str):
                mtimes[modtime] = mtime
        if mtime:
            out["mtime"] = mtime
        xattrs = e.get("xattrs")
        if xattrs:
            if not isinstance(xattrs, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in xattrs.items()):
                raise errors.FormatError(f"eStargz TOC entry {name[:100]!r}: xattrs are not name -> base64")
            out["xattrs"] = dict(sorted(xattrs.items()))
        elif xattrs is not None and xattrs != {}:
            raise errors.FormatError(f"eStargz TOC entry {name[:100]!r}: xattrs are not name -> base64")
        if kind == "reg":
            size = _nonneg(e, "size")
            out["size"] = size
            into = chunks[len(entries)] = []
            if size:
                starts.append(_chunk(e, name, into, toc_offset, size, codec))
                current = name
                if "endOffset" in e:
                    end = _nonneg(e, "endOffset")
                    if not e["offset"] < end <= toc_offset:
                        raise errors.FormatError(f"eStargz TOC entry {name[:100]!r}: endOffset {end} outside "
                                                 f"{e['offset']}..{toc_offset}")
                    ends.add(end)
            if not landmark_seen:
                prioritized.append(name)
        entries.append(out)
    # each chunk's compressed bytes end where the next chunk's member begins (or at the TOC)
    ends = sorted(ends.union(starts))
    zeros = _ZeroCheck()
    frames = 0  # as raw_layer will make them: a zeros chunk is a frame per ZERO_PIECE bytes
    for k, cs in chunks.items():
        name, size, done = entries[k]["name"], entries[k]["size"], 0
        for i, c in enumerate(cs):
            if c.file_offset != done:
                raise errors.FormatError(f"eStargz TOC: the chunks of {name[:100]!r} do not tile the file")
            done += c.size
            codec = c.codec
            if codec != "zeros" and c.size > MAX_CHUNK_SIZE:
                if c.file_offset != 0 or c.size > MAX_WHOLE_SIZE:
                    raise NotSupported(f"eStargz TOC: a chunk of {name[:100]!r} holds {c.size} bytes, more than "
                                       f"the {MAX_CHUNK_SIZE} read lazily")
                codec += "-whole"  # read through a checked copy on disk, in pieces
            frames += -(-c.size // ZERO_PIECE) if codec == "zeros" else \
                -(-c.size // WHOLE_PIECE) if codec.endswith("-whole") else 1
            if frames > MAX_TOC_FRAMES:
                raise errors.LimitError(f"eStargz TOC: more than {MAX_TOC_FRAMES} chunks (runs of zeros and big "
                                        "chunks counted in pieces)")
            if codec == "zeros":
                zeros.check(c, name)
            cs[i] = Chunk(c.file_offset, c.size, c.offset, ends[bisect.bisect_right(ends, c.offset)], c.digest,
                          codec)
        if done != size:
            raise errors.FormatError(f"eStargz TOC: the chunks of {name[:100]!r} hold {done} of its {size} bytes")
    return EstargzToc(entries, chunks, toc_offset, prioritized if landmark_seen else [])


def _chunk(e: dict[str, Any], name: str, into: list[Chunk], toc_offset: int, file_size: int, codec: str) -> int:
    """Add entry ``e``'s chunk of file ``name`` (``file_size`` bytes); its member's offset.  A chunk
    without chunkSize runs to the end of the file (the writer omits it for a file's last chunk); a
    file left whole (zstd:chunked: no chunkSize, no chunkDigest) is one chunk named by its digest."""
    offset = _nonneg(e, "offset")
    if offset >= toc_offset:
        raise errors.FormatError(f"eStargz TOC: a chunk of {name[:100]!r} lies at or past the TOC")
    if e.get("innerOffset"):
        raise NotSupported(f"eStargz TOC: {name[:100]!r} uses innerOffset, which this lazylayer does not read "
                           "lazily yet")
    start = _nonneg(e, "chunkOffset")
    size = _nonneg(e, "chunkSize") or file_size - start
    if size <= 0 or start + size > file_size:
        raise errors.FormatError(f"eStargz TOC: a chunk of {name[:100]!r} lies outside the file")
    digest = e.get("chunkDigest")
    if digest is None and start == 0 and size == file_size:
        digest = e.get("digest")
    checked_digest(digest, f"the chunkDigest of {name[:100]!r}")
    kind = e.get("chunkType", "")
    if kind not in ("", "zeros"):
        raise errors.FormatError(f"eStargz TOC: a chunk of {name[:100]!r} has unknown chunkType {str(kind)[:20]!r}")
    into.append(Chunk(start, size, offset, 0, digest, "zeros" if kind == "zeros" else codec))
    return offset


class _ZeroCheck:
    """Checks ``zeros`` chunks' digests against runs of zeros of their size, each size hashed once,
    at most :data:`MAX_ZERO_CHECK` bytes in all (a layer asking for more is fetched whole)."""

    def __init__(self) -> None:
        self.known: dict[int, str] = {}
        self.hashed = 0

    def check(self, c: Chunk, name: str) -> None:
        want = self.known.get(c.size)
        if want is None:
            self.hashed += c.size
            if self.hashed > MAX_ZERO_CHECK:
                raise NotSupported(f"eStargz TOC: more than {MAX_ZERO_CHECK} bytes of zeros chunks to check")
            want = self.known[c.size] = "sha256:" + zero_sha256(c.size)
        if c.digest != want:
            raise errors.FormatError(f"eStargz TOC: a zeros chunk of {name[:100]!r} has a chunkDigest that is "
                                     f"not that of {c.size} zero bytes")


def zero_sha256(size: int) -> str:
    """The sha256 (hex) of ``size`` zero bytes, hashed in pieces of at most 1 MiB."""
    h, block = hashlib.sha256(), bytes(min(size, 1 << 20))
    while size:
        n = min(size, len(block))
        h.update(memoryview(block)[:n])
        size -= n
    return h.hexdigest()


def _mtime(value: Any, name: str) -> int:
    if value in (None, ""):
        return 0
    if not isinstance(value, str) or len(value) > 64:
        raise errors.FormatError(f"eStargz TOC entry {name[:100]!r}: modtime is not an RFC 3339 time")
    try:
        t = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise errors.FormatError(f"eStargz TOC entry {name[:100]!r}: modtime {value[:40]!r} is not RFC 3339") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return max(0, min(int(t.timestamp()), MTIME_MAX))


def is_estargz(desc: dict[str, Any]) -> bool:
    """A stargz layer compressed with gzip: eStargz (stargz's zstd:chunked is a zstd layer)."""
    return is_stargz(desc) and str(desc.get("mediaType", "")).endswith(("gzip", "tar.gzip"))



def raw_layer(toc: EstargzToc, digest: str) -> tuple[Any, list[Chunk]]:
    """The layer as the image index takes it: a raw layer (docs/format.md, "Raw frames") whose
    frames are the chunks, each file's laid end to end in a virtual stream, named by their
    chunkDigest; the prioritized files are its prefetch plan.  (The ``IndexLayer``, and the
    chunks in frame order for the host that fetches them.)"""
    from .layer import Frame, count_hardlinks

    entries, frames, chunks, at, where = [], [], [], 0, {}
    zeros: dict[int, str] = {}
    for k, e in enumerate(toc.entries):
        e = dict(e)
        if e["type"] == "reg":
            e["offset"] = where[e["name"]] = at
            for c in toc.chunks[k]:
                for piece in _pieces(c, zeros):
                    sha = ZERO_SHA256 if piece.codec.endswith("-whole") else piece.digest[7:]
                    frames.append(Frame(at, piece.size, at, piece.size, sha))
                    chunks.append(piece)
                    at += piece.size
        entries.append(e)
    count_hardlinks(entries)
    sizes = {e["name"]: e["size"] for e in entries if e["type"] == "reg"}
    plan = [[where[n], sizes[n]] for n in toc.prioritized if sizes.get(n)]
    return index_layer(frames, entries, at, plan, digest), chunks


def index_layer(frames: list[Any], entries: list[dict[str, Any]], size: int, plan: list[list[int]],
                digest: str) -> Any:
    """The ``IndexLayer`` of a raw layer of ``size`` virtual bytes: its TOC frame (``frames``
    over that stream, ``entries`` with their offsets in it, prefetch ``plan``)."""
    from ..core import IndexLayer
    from .layer import Toc

    doc = Toc(frames=frames, entries=entries, frame_size=max([f.size for f in frames], default=1), tar_size=size,
              prefetch=plan, codec="raw")
    frame = doc.to_frame(level=1)  # (it never leaves this process: the quickest level)
    return IndexLayer(digest, size + len(frame), "sha256:" + hashlib.sha256(frame).hexdigest(), size, len(frame),
                      frame)


# ------------------------------------------------------------------ kept in the disk cache
#
# A chunked layer's raw TOC frame and chunk table, as the image keeps them in the
# disk cache so that a later open (the mount's fetcher process, the next mount)
# neither fetches nor parses the TOC again: a header (magic, the sha256 of the
# body, the raw layer's virtual size, the number of chunks, the frame's length,
# the body's length once decompressed), then the body, zstd-compressed: the
# frame, one row per chunk, and the checkpoint windows of ``gzspan`` chunks.

_SIDECAR = struct.Struct("<8s32sQIIQ")
_SIDECAR_MAGIC = b"LLCHUNK2"
_ROW = struct.Struct("<QIQQ32sBBBH")  # file_offset, size, offset, end, digest, codec, bits, byte, window length
_ROW_CODEC = 60  # where a row's codec is; its bits, byte and window length (2 bytes) follow
_CODECS = ("gzip", "zstd", "zeros", "gzspan", "gzip-whole", "zstd-whole")
MAX_SIDECAR_BODY = 1 << 30
"""The most a chunked layer's index may decompress to (a TOC frame, rows and windows)."""


def dump_raw_layer(layer: Any, chunks: list[Chunk]) -> bytes:
    """:func:`raw_layer`'s result as bytes (read back by :func:`load_raw_layer`)."""
    import zstandard

    rows = b"".join(_ROW.pack(c.file_offset, c.size, c.offset, c.end, bytes.fromhex(c.digest[7:]),
                              _CODECS.index(c.codec), c.bits, c.byte, len(c.window)) for c in chunks)
    body = b"".join([layer.toc_frame, rows, *(c.window for c in chunks)])
    packed = zstandard.ZstdCompressor(level=3).compress(body)
    return _SIDECAR.pack(_SIDECAR_MAGIC, hashlib.sha256(packed).digest(), layer.toc_offset, len(chunks),
                         len(layer.toc_frame), len(body)) + packed


def load_raw_layer(data: bytes, digest: str) -> tuple[Any, list[Chunk]]:
    """What :func:`dump_raw_layer` wrote, for layer ``digest``; FormatError if it is damaged or
    out of bounds."""
    import zstandard

    from ..core import IndexLayer

    if len(data) < _SIDECAR.size:
        raise errors.FormatError("a chunked layer's cached index is truncated")
    magic, sha, at, count, flen, blen = _SIDECAR.unpack_from(data)
    packed = memoryview(data)[_SIDECAR.size:]
    if magic != _SIDECAR_MAGIC or hashlib.sha256(packed).digest() != sha:
        raise errors.FormatError("a chunked layer's cached index is damaged")
    if blen > min(MAX_SIDECAR_BODY, 64 * len(packed) + (1 << 20)) or count > MAX_TOC_FRAMES or \
            flen + count * _ROW.size > blen:
        raise errors.FormatError("a chunked layer's cached index is out of bounds")
    try:
        body = memoryview(zstandard.ZstdDecompressor().decompress(packed, max_output_size=blen))
    except zstandard.ZstdError as exc:
        raise errors.FormatError(f"a chunked layer's cached index is damaged: {exc}") from None
    rows_end = flen + count * _ROW.size
    if len(body) != blen:
        raise errors.FormatError("a chunked layer's cached index is damaged")
    frame, w = bytes(body[:flen]), rows_end
    rows = bytes(body[flen:rows_end])
    chunks: Sequence[Chunk]
    if rows_end == blen:  # no windows (eStargz, zstd:chunked): rows checked by column, Chunks made when asked
        codecs, bits, wlo, whi = (rows[_ROW_CODEC + k::_ROW.size] for k in (0, 1, 3, 4))
        if count and (max(codecs) >= len(_CODECS) or max(bits) > 7 or any(wlo) or any(whi)):
            raise errors.FormatError("a chunked layer's cached index has a bad chunk row")
        chunks = ChunkRows(rows, codecs)
    else:
        chunks = []
        for fo, n, off, end, d, k, b, byte, wlen in _ROW.iter_unpack(rows):
            if k >= len(_CODECS) or b > 7 or wlen > 40 << 10 or w + wlen > blen:  # (windows, compressed)
                raise errors.FormatError("a chunked layer's cached index has a bad chunk row")
            chunks.append(Chunk(fo, n, off, end, "sha256:" + d.hex(), _CODECS[k], b, byte, bytes(body[w:w + wlen])))
            w += wlen
        if w != blen:
            raise errors.FormatError("a chunked layer's cached index is damaged")
    layer = IndexLayer(digest, at + flen, "sha256:" + hashlib.sha256(frame).hexdigest(), at, flen, frame)
    return layer, chunks


class ChunkRows(Sequence[Chunk]):
    """A chunked layer's chunks as :func:`load_raw_layer` read them (rows without windows), each
    made a :class:`Chunk` only when asked for: every process of a mount opens the layer, and
    few read more than a fraction of its tens of thousands of chunks (making them all was a
    quarter of an eStargz open from the disk cache).  ``codecs``: the codec column, one byte
    per row (an index into the codec names)."""

    def __init__(self, rows: bytes, codecs: bytes) -> None:
        self._rows = rows
        self.codecs = codecs

    def __len__(self) -> int:
        return len(self.codecs)

    @overload
    def __getitem__(self, i: int) -> Chunk: ...

    @overload
    def __getitem__(self, i: slice) -> list[Chunk]: ...

    def __getitem__(self, i: int | slice) -> Chunk | list[Chunk]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self.codecs)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("chunk index out of range")
        fo, size, off, end, d, k, bits, byte, _ = _ROW.unpack_from(self._rows, i * _ROW.size)
        return Chunk(fo, size, off, end, "sha256:" + d.hex(), _CODECS[k], bits, byte)

    def whole(self) -> list[int]:
        """The rows that are pieces of a chunk too big for one frame (``-whole`` codecs)."""
        kinds = {_CODECS.index("gzip-whole"), _CODECS.index("zstd-whole")}
        return [i for i, k in enumerate(self.codecs) if k in kinds] if kinds & set(self.codecs) else []


def read_cached(disk: Any, name: str, digest: str) -> tuple[Any, list[Chunk]] | None:
    """The raw layer of layer ``digest`` kept in disk cache ``disk`` as file ``name`` (None: there
    is none; a damaged one is said in the log, removed and not used)."""
    data = disk.read_file(name)
    if data is None:
        return None
    try:
        return load_raw_layer(data, digest)
    except errors.FormatError as exc:
        log.warning("layer %s: %s; not used", digest, exc)
        disk.remove_file(name)
        return None


def cached_raw_layer(disk: Any, name: str, digest: str,
                     build: Callable[[], tuple[Any, list[Chunk]]]) -> tuple[tuple[Any, list[Chunk]], bool]:
    """``build()``'s raw layer of layer ``digest``, kept in disk cache ``disk`` as file ``name``:
    built once across processes and threads.  Also says whether this call built it (False: it was
    there).  A damaged copy is said, removed and built again, never used."""
    for _ in range(2):
        made: list[Any] = []

        def write(f: Any) -> None:
            made.append(build())
            f.write(dump_raw_layer(*made[0]))

        disk.ensure_file(name, write)
        if made:
            return made[0], True
        found = read_cached(disk, name, digest)
        if found is not None:
            return found, False
    return build(), True  # (removed or evicted twice in a row: not kept)


def _pieces(c: Chunk, known: dict[int, str]) -> list[Chunk]:
    """A chunk as frames: itself, a ``zeros`` chunk as pieces of at most :data:`ZERO_PIECE`
    bytes named by their own digests (``known``: those of the sizes seen), or a chunk too big
    for one frame (``-whole``) as pieces of :data:`WHOLE_PIECE` bytes that keep the whole
    chunk's digest (their frames' is :data:`ZERO_SHA256`: the host checks them)."""
    if c.codec.endswith("-whole"):
        return [c._replace(file_offset=c.file_offset + at, size=min(WHOLE_PIECE, c.size - at))
                for at in range(0, c.size, WHOLE_PIECE)]
    if c.codec != "zeros" or c.size <= ZERO_PIECE:
        return [c]
    out = []
    for at in range(0, c.size, ZERO_PIECE):
        n = min(ZERO_PIECE, c.size - at)
        if n not in known:
            known[n] = "sha256:" + zero_sha256(n)
        out.append(Chunk(c.file_offset + at, n, c.offset, c.end, known[n], "zeros"))
    return out


def checked_digest(digest: Any, what: str) -> str:
    """``digest`` if it is ``sha256:`` and 64 hex digits; else a FormatError naming ``what`` it is."""
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):  # (oci.media.check_digest's rule)
        raise errors.FormatError(f"{what} is not sha256: and 64 hex digits")
    return digest
