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

import hashlib
import json
import logging
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

from .. import errors
from ..oci.media import DIGEST
from .layer import RecordTable, Toc, toc_frame
from .tar import MAX_TOC_BYTES, MAX_TOC_FRAMES, parse_header

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


# The limits of a chunked TOC's conversion: csrc/chunked.c holds MAX_WHOLE_SIZE, ZERO_PIECE and
# MAX_ZERO_CHECK (the same values); MAX_CHUNK_SIZE and WHOLE_PIECE are passed to it (parse_toc).
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


@dataclass(frozen=True)
class EstargzToc:
    """A chunked layer's TOC, checked and converted (``ll_chunked_convert``, csrc/chunked.c): ``toc``,
    the raw layer's TOC as JSON in lazylayer's form (docs/format.md; every file's chunks laid end to
    end, one frame each, or with ``runs`` runs of small chunks one frame each), ``rows``, one row per
    chunk (where its compressed bytes are: the chunk table, :class:`ChunkRows`), and the TOC's
    offset in the blob.  ``entries``, ``chunks`` and
    ``prioritized`` read the JSON back, for inspection (tests, tools): the open never does."""

    toc: bytes
    rows: bytes
    toc_offset: int
    size: int
    """The virtual stream's size: every file's chunks, end to end."""

    @property
    def chunk_rows(self) -> ChunkRows:
        return ChunkRows(self.rows)

    @property
    def entries(self) -> list[dict[str, Any]]:
        return json.loads(self.toc)["entries"]

    @property
    def chunks(self) -> dict[int, list[Chunk]]:
        """Each regular file's frames (chunks; runs of zeros and big chunks in pieces), by its index in
        ``entries``."""
        rows, out, k = self.chunk_rows, {}, 0
        for i, e in enumerate(self.entries):
            if e["type"] == "reg":
                out[i], n = [], 0
                while n < e["size"]:
                    out[i].append(rows[k])
                    n += rows[k].size
                    k += 1
        return out

    @property
    def prioritized(self) -> list[str]:
        """The files before the prefetch landmark (with content), in order: the prefetch plan."""
        doc = json.loads(self.toc)
        at = {(e["offset"], e["size"]): e["name"] for e in doc["entries"] if e["type"] == "reg"}
        return [at[(o, n)] for o, n in doc["prefetch"]]



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
             max_bytes: int = MAX_TOC_BYTES, runs: bool = False) -> EstargzToc:
    """Read and check the eStargz TOC of a blob of ``blob_size`` bytes: two range reads
    (``fetch(offset, size)``: the footer, then the TOC's gzip member), the TOC JSON's sha256
    against ``toc_digest`` (the layer's annotation) before it is parsed, at most ``max_bytes``
    of it; ``runs``: as :func:`parse_toc`.  FormatError (LimitError, IntegrityError for a digest
    mismatch) naming what is wrong."""
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
    return parse_toc(data, offset, runs=runs)


def parse_toc(data: bytes, toc_offset: int, codec: str = "gzip", hidden: frozenset[str] = HIDDEN,
              runs: bool = False) -> EstargzToc:
    """Check an eStargz or zstd:chunked TOC's JSON (already vouched for by its digest: still treated
    as hostile) and convert it, in C (``ll_chunked_convert``): its chunks are compressed with
    ``codec`` (``gzip`` or ``zstd``) and lie before ``toc_offset``; ``hidden`` (:data:`HIDDEN` or
    none) names are left out of the entries.  With ``runs``, each run of small chunks is one frame
    (:data:`RUN_SIZE`: an eStargz layer's files are a chunk each, and a frame per chunk made a
    request per file missed and a file of the disk cache per chunk fetched ahead, ~12,500 in one
    cold start: docs/benchmarks.md): consecutive chunks of at most :data:`RUN_CHUNK` (gzip, zstd,
    and zstd:chunked runs of zeros, which have no bytes), each chunk's compressed bytes at most
    :data:`RUN_GAP` after the one before it in the blob, up to :data:`RUN_SIZE` of data.  Such a
    frame is read with one request and kept as one encoded frame of the disk cache, named by the
    sha256 of its chunk table (``ll_run_decode``'s; the converter computes it), each of its
    chunks checked against the chunk's own digest (:class:`~lazylayer.image.frames.ChunkSource`).
    FormatError naming the entry and the fault (LimitError over a format limit; :class:`NotSupported`
    for a layer to fetch whole).  What is checked: docs/filesystem.md, "eStargz layers" and
    "zstd:chunked layers"."""
    from ..core._lib import ffi, lib, raise_status

    if codec not in ("gzip", "zstd") or hidden not in (HIDDEN, frozenset()):
        raise ValueError(f"parse_toc: codec {codec!r} and hidden {sorted(hidden)} are not what it reads")
    opt = ffi.new("ll_chunked_options *")
    lib.ll_chunked_options_init(opt, ffi.sizeof(opt[0]))
    opt.toc_offset = toc_offset
    opt.codec = lib.LL_CHUNK_GZIP if codec == "gzip" else lib.LL_CHUNK_ZSTD
    opt.flags = lib.LL_CHUNKED_HIDE_STARGZ if hidden else 0
    opt.max_chunk, opt.whole_piece = MAX_CHUNK_SIZE, WHOLE_PIECE  # (read here: tests lower them)
    if runs:
        opt.run_size, opt.run_chunk, opt.run_gap = RUN_SIZE, RUN_CHUNK, RUN_GAP
    out = ffi.new("ll_chunked **")
    err = ffi.new("char[]", lib.LL_ERR_MSG_SIZE)
    rc = lib.ll_chunked_convert(ffi.from_buffer(data), len(data), opt, out, err, len(err))
    if rc != lib.LL_OK:
        msg = ffi.string(err).decode("utf-8", "replace")
        if rc == lib.LL_ERR_UNSUPPORTED:
            raise NotSupported(msg)
        if rc in (lib.LL_ERR_FORMAT, lib.LL_ERR_LIMIT):
            raise (errors.LimitError if rc == lib.LL_ERR_LIMIT else errors.FormatError)(msg)
        raise_status(rc, f"converting a chunked TOC: {msg}")
    try:
        n, count = ffi.new("size_t *"), ffi.new("uint64_t *")
        toc = bytes(ffi.buffer(lib.ll_chunked_json(out[0], n), n[0]))
        rows_ptr = lib.ll_chunked_rows(out[0], count)
        rows = bytes(ffi.buffer(rows_ptr, count[0] * _ROW.size)) if count[0] else b""
        size = lib.ll_chunked_stream_size(out[0])
    finally:
        lib.ll_chunked_free(out[0])
    return EstargzToc(toc, rows, toc_offset, size)



def is_estargz(desc: dict[str, Any]) -> bool:
    """A stargz layer compressed with gzip: eStargz (stargz's zstd:chunked is a zstd layer)."""
    return is_stargz(desc) and str(desc.get("mediaType", "")).endswith(("gzip", "tar.gzip"))



def raw_layer(toc: EstargzToc, digest: str) -> tuple[Any, ChunkRows]:
    """The layer as the image index takes it: a raw layer (docs/format.md, "Raw frames") whose
    frames are the chunks (or runs of them: :func:`parse_toc`), each file's laid end to end in a
    virtual stream, named by their chunkDigest; the prioritized files are its prefetch plan.  (The
    ``IndexLayer``, and the chunks in stream order for the host that fetches them.)"""
    return _index_layer_of(toc_frame(toc.toc, level=1), toc.size, digest), toc.chunk_rows


RUN_SIZE = 1 << 20
"""The most data a run of small chunks read as one frame holds.  Every miss fetches, inflates and
hashes a whole run: 1 MiB runs made the cold start's eStargz and zstd:chunked mounts 0.03-0.06x of
lazylayer's own format's time faster than 2 MiB runs, and 512 KiB runs 0.1x slower
(docs/benchmarks.md)."""
RUN_CHUNK = 512 << 10
"""The largest chunk that joins a run."""
RUN_GAP = 64 << 10
"""The most bytes between two chunks of a run in the blob (fetched with it, not read): zstd:chunked
puts each tar header in a zstd frame of its own between files' chunks."""


def index_layer(frames: list[Any], entries: list[dict[str, Any]], size: int, plan: list[list[int]],
                digest: str) -> Any:
    """The ``IndexLayer`` of a raw layer of ``size`` virtual bytes: its TOC frame (``frames``
    over that stream, ``entries`` with their offsets in it, prefetch ``plan``)."""
    doc = Toc(frames=frames, entries=entries, frame_size=max([f.size for f in frames], default=1), tar_size=size,
              prefetch=plan, codec="raw")
    return _index_layer_of(doc.to_frame(level=1), size, digest)  # (it never leaves this process: the quickest level)


def _index_layer_of(frame: bytes, size: int, digest: str) -> Any:
    """The ``IndexLayer`` of a raw layer of ``size`` virtual bytes whose TOC frame is ``frame``."""
    from ..core import IndexLayer

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


def dump_raw_layer(layer: Any, chunks: Sequence[Chunk]) -> bytes:
    """:func:`raw_layer`'s result as bytes (read back by :func:`load_raw_layer`)."""
    import zstandard

    if isinstance(chunks, ChunkRows):  # (as ll_chunked_convert made them, or read back: no windows)
        rows, windows = chunks.table, []
    else:
        rows = b"".join(_ROW.pack(c.file_offset, c.size, c.offset, c.end, bytes.fromhex(c.digest[7:]),
                                  _CODECS.index(c.codec), c.bits, c.byte, len(c.window)) for c in chunks)
        windows = [c.window for c in chunks]
    body = b"".join([layer.toc_frame, rows, *windows])
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
        chunks = ChunkRows(rows)
        bits, wlo, whi = (rows[_ROW_CODEC + k::_ROW.size] for k in (1, 3, 4))
        if count and (max(chunks.codecs) >= len(_CODECS) or max(bits) > 7 or any(wlo) or any(whi)):
            raise errors.FormatError("a chunked layer's cached index has a bad chunk row")
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


class ChunkRows(RecordTable[Chunk]):
    """A chunked layer's chunk table as :func:`load_raw_layer` reads it or ``ll_chunked_convert``
    makes it (rows without windows), each row made a :class:`Chunk` only when asked for.
    ``codecs``: the codec column, one byte per row (an index into the codec names)."""

    RECORD = _ROW

    def __init__(self, rows: bytes) -> None:
        super().__init__(rows)
        self.codecs = rows[_ROW_CODEC::_ROW.size]

    def _make(self, fields: tuple[Any, ...]) -> Chunk:
        fo, size, off, end, d, k, bits, byte, _ = fields
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


def checked_digest(digest: Any, what: str) -> str:
    """``digest`` if it is ``sha256:`` and 64 hex digits; else a FormatError naming ``what`` it is."""
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):  # (oci.media.check_digest's rule)
        raise errors.FormatError(f"{what} is not sha256: and 64 hex digits")
    return digest
