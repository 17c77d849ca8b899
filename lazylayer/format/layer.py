"""The lazy layer format: a tar+zstd layer any runtime can unpack, built for random access.

A lazy layer blob is (see docs/format.md for the byte-level specification):

    data frames      independent zstd frames; together they decompress to the
                     layer's tar, byte for byte (so its diff_id is unchanged).
                     A regular file's content starts a frame unless the whole
                     file fits in the frame already open; big files are split
                     every ``frame_size`` bytes.
    TOC frame        a zstd skippable frame: TOC_MAGIC + a zstd-compressed JSON
                     table of contents (every tar entry, where its content lies,
                     every frame with its sha256, room for a prefetch plan).
    seek table       the standard zstd seekable-format table (it lists the TOC
                     frame too, with decompressed size 0).

The layer descriptor's annotations name the TOC frame's sha256 and position,
so the manifest digest vouches for the TOC and the TOC for every frame.

This module writes such blobs (:class:`LayerWriter`) and reads their TOC back
(:func:`read_toc`; :func:`parse_toc_position` reads the position annotation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Container, Iterable, Sequence, TypeVar, overload

import zstandard

from .. import errors
from ..core import FrameInfo, SeekableWriter, parse_seek_table, seek_table_size
from ..oci.media import DIGEST as _DIGEST
from ..oci.media import check_json_shape, load_json
from .tar import (
    MAX_PLAN_RANGES,
    MAX_TOC_BYTES,
    MAX_TOC_ENTRIES,
    MAX_TOC_FRAMES,
    MAX_TOC_VALUES,
    MTIME_MAX,
    TarMember,
    TarScanner,
    check_name,
)

log = logging.getLogger("lazylayer")

FORMAT_VERSION = 1
TOC_MAGIC = b"LZLYTOC1"
TOC_SKIPPABLE_VARIANT = 0xA  # the TOC frame's magic is 0x184D2A5A
# MAX_TOC_BYTES (uncompressed JSON) and the other limits live in .tar, with the name checks.
# Clamped on read, with a warning (docs/format.md, "Limits"): what the kernel, os.makedev and ls carry
# (MTIME_MAX, 9999-12-31, lives in .tar: eStargz's reader clamps with it too).
ID_MAX = (1 << 32) - 1
DEVMAJOR_MAX, DEVMINOR_MAX = (1 << 12) - 1, (1 << 20) - 1  # Linux dev_t as FUSE and stat carry it
LAYER_FRAME_SIZE = 2 << 20  # default frame size of lazy layers: see docs/format.md for the measurements

MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
ANNOTATION_VERSION = "io.lazylayer.version"
ANNOTATION_TOC_DIGEST = "io.lazylayer.toc.digest"
ANNOTATION_TOC_POSITION = "io.lazylayer.toc.position"  # "<offset>:<length>" of the TOC frame
ANNOTATION_UNCOMPRESSED_SIZE = "io.lazylayer.uncompressed-size"

_POSITION = re.compile(r"(0|[1-9][0-9]{0,18}):([1-9][0-9]{0,18})")  # ASCII digits only, no leading zeros
_INT64_MAX = (1 << 63) - 1


_T = TypeVar("_T")


@dataclass(frozen=True)
class Frame:
    """A data frame: where it is in the blob and in the tar, and its sha256 (of the compressed bytes)."""

    compressed_offset: int
    compressed_size: int
    offset: int
    size: int
    sha256: str


class RecordTable(Sequence[_T]):
    """Fixed-size records held as bytes (``table``, records of ``RECORD``), each made an object
    (:meth:`_make`) only when asked for: a layer of another format has tens of thousands of
    frames and chunks, and every process of a mount opens it, most reading few."""

    RECORD: struct.Struct

    def __init__(self, table: bytes) -> None:
        if len(table) % self.RECORD.size:
            raise ValueError(f"{type(self).__name__}: not whole records")
        self.table = table

    def __len__(self) -> int:
        return len(self.table) // self.RECORD.size

    @overload
    def __getitem__(self, i: int) -> _T: ...

    @overload
    def __getitem__(self, i: slice) -> list[_T]: ...

    def __getitem__(self, i: int | slice) -> _T | list[_T]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{type(self).__name__} index out of range")
        return self._make(self.RECORD.unpack_from(self.table, i * self.RECORD.size))

    def _make(self, fields: tuple[Any, ...]) -> _T:
        raise NotImplementedError


class FrameTable(RecordTable[Frame]):
    """A layer's data frames as the image index keeps them (``ll_index_frame_table``: 56-byte
    records), Frames made when asked for, and their columns as lists of ints (:func:`frame_column`)."""

    RECORD = struct.Struct("<QQII32s")  # compressed offset, offset, compressed size, size, sha256

    def __init__(self, table: bytes) -> None:
        super().__init__(table)
        self._columns: dict[str, list[int]] = {}

    def _make(self, fields: tuple[Any, ...]) -> Frame:
        co, do, cs, ds, sha = fields
        return Frame(co, cs, do, ds, sha.hex())

    def column(self, name: str) -> list[int]:
        """Every frame's ``compressed_offset``, ``compressed_size``, ``offset`` or ``size``."""
        got = self._columns.get(name)
        if got is None:
            k = ("compressed_offset", "offset", "compressed_size", "size").index(name)
            got = self._columns[name] = [r[k] for r in self.RECORD.iter_unpack(self.table)]
        return got


def frame_column(frames: Sequence[Frame], name: str) -> list[int]:
    """Field ``name`` of every frame in ``frames`` (a :class:`FrameTable`'s without making its frames)."""
    if isinstance(frames, FrameTable):
        return frames.column(name)
    return [getattr(f, name) for f in frames]


@dataclass
class Toc:
    """A layer's table of contents.

    ``entries`` are dicts in tar order with keys ``name``, ``type`` (reg, dir,
    symlink, hardlink, char, block, fifo), ``mode``, ``uid``, ``gid``,
    ``uname``, ``gname``, ``mtime``, ``size``, ``offset`` (of the content in the
    tar), ``linkname``, ``devmajor``, ``devminor``, ``xattrs`` (name -> base64),
    ``nlink`` (for files with hardlinks); zero and empty values are omitted.
    """

    frames: list[Frame]
    entries: list[dict[str, Any]]
    frame_size: int = LAYER_FRAME_SIZE
    tar_size: int = 0
    prefetch: list[list[int]] = field(default_factory=list)  # [offset, length] ranges of the tar, in order
    version: int = FORMAT_VERSION
    codec: str = "zstd"
    """``zstd``: frames are zstd frames (every lazy layer blob).  ``raw``: each frame is its data
    as is, named by the data's sha256 — only in TOCs lazylayer builds for a layer of another
    format, whose frames its host decodes itself (docs/format.md, "Raw frames")."""

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "version": self.version,
            "frame_size": self.frame_size,
            "tar_size": self.tar_size,
            "frames": [[f.compressed_offset, f.compressed_size, f.offset, f.size, f.sha256] for f in self.frames],
            "entries": self.entries,
            "prefetch": self.prefetch,
        }
        if self.codec != "zstd":  # (absent: a lazy layer's TOC is byte for byte what it always was)
            doc["codec"] = self.codec
        # ASCII with \u escapes: names that are not UTF-8 (kept as lone surrogates
        # by the tar scanner) survive the round trip exactly.
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> Toc:
        """Parse and check a TOC's JSON: every limit of docs/format.md holds, every name is normalised.

        Raises :class:`~lazylayer.errors.FormatError` (or ``LimitError``)
        naming what is wrong; out-of-range metadata is clamped with a warning.
        """
        if len(data) > MAX_TOC_BYTES:
            raise errors.LimitError(f"TOC larger than {MAX_TOC_BYTES} bytes of JSON")
        doc = load_json(data, "TOC", MAX_TOC_VALUES)
        try:
            if not isinstance(doc, dict):
                raise errors.FormatError("malformed TOC: not a JSON object")
            if doc.get("version") != FORMAT_VERSION:
                raise errors.FormatError(f"TOC version {doc.get('version')!r} is not supported "
                                         f"(this lazylayer reads version {FORMAT_VERSION})")
            raw_frames, entries = doc["frames"], doc["entries"]
            if not isinstance(raw_frames, list) or len(raw_frames) > MAX_TOC_FRAMES:
                raise errors.LimitError(f"TOC frames: not a list of at most {MAX_TOC_FRAMES} frames")
            frames = [Frame(_int(a), _int(b), _int(c), _int(d), e) for a, b, c, d, e in raw_frames]
            if not all(isinstance(f.sha256, str) for f in frames):
                raise errors.FormatError("TOC frames: a sha256 is not a string")
            if not isinstance(entries, list) or len(entries) > MAX_TOC_ENTRIES:
                raise errors.LimitError(f"TOC entries: not a list of at most {MAX_TOC_ENTRIES} entries")
            if not all(isinstance(e, dict) for e in entries):
                raise errors.FormatError("TOC entries are malformed")
            prefetch = doc.get("prefetch", [])
            if isinstance(prefetch, list) and len(prefetch) > MAX_PLAN_RANGES:
                raise errors.LimitError(f"the TOC's prefetch plan has more than {MAX_PLAN_RANGES} ranges")
            if not isinstance(prefetch, list) or not all(
                    isinstance(r, list) and len(r) == 2 and all(type(x) is int and 0 <= x < 1 << 62 for x in r)
                    for r in prefetch):
                raise errors.FormatError("the TOC's prefetch plan is not a list of [offset, length] pairs")
            codec = doc.get("codec", "zstd")
            if codec not in ("zstd", "raw"):
                raise errors.FormatError("the TOC's codec is neither \"zstd\" nor \"raw\"")
            if codec == "raw" and any(f.compressed_size != f.size for f in frames):
                raise errors.FormatError("a frame of a raw TOC is not its data as is (compressed size != size)")
            _check_entries(entries)
            return cls(frames=frames, entries=entries, frame_size=_int(doc["frame_size"]),
                       tar_size=_int(doc["tar_size"]), prefetch=prefetch, codec=codec)
        except errors.FormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise errors.FormatError(f"malformed TOC: {type(exc).__name__}: {exc}") from None

    def frame_payload(self, level: int = 9) -> bytes:
        """The TOC skippable frame's payload: magic + compressed JSON."""
        return _toc_payload(self.check_size(), level)

    def to_frame(self, level: int = 9) -> bytes:
        """The whole TOC skippable frame (header included), as :meth:`from_frame` reads it (and as
        a layer's writer would write it: the index builds raw layers' TOCs with it)."""
        return toc_frame(self.check_size(), level)

    @classmethod
    def from_frame(cls, frame: bytes) -> Toc:
        """Parse a whole TOC skippable frame (header included)."""
        if len(frame) < 8 + len(TOC_MAGIC):
            raise errors.FormatError("TOC frame too short")
        magic, size = struct.unpack_from("<II", frame)
        if magic != 0x184D2A50 + TOC_SKIPPABLE_VARIANT or size != len(frame) - 8:
            raise errors.FormatError("not a lazylayer TOC frame (wrong skippable magic or size)")
        if frame[8:8 + len(TOC_MAGIC)] != TOC_MAGIC:
            raise errors.FormatError("not a lazylayer TOC frame (wrong TOC magic)")
        # Decompressed a chunk at a time: a bomb is refused once it passes the limit, never held whole.
        out = bytearray()
        try:
            dctx = zstandard.ZstdDecompressor()
            reader = dctx.stream_reader(memoryview(frame)[8 + len(TOC_MAGIC):])
            while chunk := reader.read(1 << 20):
                out += chunk
                if len(out) > MAX_TOC_BYTES:
                    raise errors.LimitError(f"TOC larger than {MAX_TOC_BYTES} bytes of JSON when decompressed")
        except zstandard.ZstdError as exc:
            raise errors.CorruptFrameError(f"TOC does not decompress: {exc}") from None
        return cls.from_json(bytes(out))

    def check_size(self) -> bytes:
        """The TOC's JSON, refused if a reader would refuse it (the converter calls this)."""
        data = self.to_json()
        if len(data) > MAX_TOC_BYTES:
            raise errors.LimitError(f"the TOC would be {len(data)} bytes of JSON (limit {MAX_TOC_BYTES})")
        check_json_shape(data, "the TOC", MAX_TOC_VALUES)
        if len(self.prefetch) > MAX_PLAN_RANGES:
            raise errors.LimitError(f"the prefetch plan has more than {MAX_PLAN_RANGES} ranges")
        if len(self.frames) > MAX_TOC_FRAMES:
            raise errors.LimitError(f"more than {MAX_TOC_FRAMES} frames (raise the frame size)")
        return data


def toc_frame(data: bytes, level: int = 9) -> bytes:
    """A TOC's JSON (checked: :meth:`Toc.check_size`, or made by ``ll_chunked_convert``) as the whole
    TOC skippable frame: header, magic, the JSON zstd-compressed at ``level``."""
    payload = _toc_payload(data, level)
    return struct.pack("<II", 0x184D2A50 + TOC_SKIPPABLE_VARIANT, len(payload)) + payload


def _toc_payload(data: bytes, level: int) -> bytes:
    return TOC_MAGIC + zstandard.ZstdCompressor(level=level).compress(data)


def check_digest_form(digest: str) -> bool:
    """True if ``digest`` is ``sha256:`` and 64 lowercase hex digits (oci.media.check_digest's rule)."""
    return bool(_DIGEST.fullmatch(digest))


def _int(x: Any) -> int:
    if type(x) is not int:
        raise errors.FormatError(f"malformed TOC: {x!r} is not an integer")
    return x


def _check_entries(entries: list[dict[str, Any]]) -> None:
    """Check every entry (names as the converter writes them, field types) and clamp metadata."""
    clamped: list[str] = []
    for e in entries:
        name = check_name(e.get("name"))
        kind = e.get("type", "reg")
        if not isinstance(kind, str):
            raise errors.FormatError(f"TOC entry {name!r}: type {kind!r} is not a string")
        if kind == "hardlink":
            check_name(e.get("linkname", ""), "hardlink target")
        for key in ("mode", "size", "offset"):
            v = e.get(key, 0)
            if type(v) is not int:
                raise errors.FormatError(f"TOC entry {name!r}: {key} {v!r} is not an integer")
        for key in ("linkname", "uname", "gname"):
            if not isinstance(e.get(key, ""), str):
                raise errors.FormatError(f"TOC entry {name!r}: {key} is not a string")
        mtime = e.get("mtime", 0)
        if type(mtime) is not int and type(mtime) is not float:
            raise errors.FormatError(f"TOC entry {name!r}: mtime {mtime!r} is not a number")
        if not 0 <= mtime <= MTIME_MAX:  # also NaN
            e["mtime"] = 0 if math.isnan(mtime) or mtime < 0 else MTIME_MAX
            clamped.append(f"{name!r}: mtime {mtime!r} -> {e['mtime']}")
        for key, hi in (("uid", ID_MAX), ("gid", ID_MAX), ("devmajor", DEVMAJOR_MAX), ("devminor", DEVMINOR_MAX)):
            v = e.get(key, 0)
            if type(v) is not int:
                raise errors.FormatError(f"TOC entry {name!r}: {key} {v!r} is not an integer")
            if not 0 <= v <= hi:
                e[key] = 0 if v < 0 else hi
                clamped.append(f"{name!r}: {key} {v} -> {e[key]}")
        xattrs = e.get("xattrs")
        if xattrs is not None:
            if not isinstance(xattrs, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in xattrs.items()):
                raise errors.FormatError(f"TOC entry {name!r}: xattrs is not a map of names to base64")
            try:
                for v in xattrs.values():
                    base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise errors.FormatError(f"TOC entry {name!r}: an xattr value is not base64") from None
    if clamped:
        more = f" (and {len(clamped) - 3} more)" if len(clamped) > 3 else ""
        log.warning("TOC: clamped out-of-range metadata to what the kernel and ls can show: %s%s",
                    "; ".join(clamped[:3]), more)


def toc_entry(m: TarMember) -> dict[str, Any]:
    """A TOC entry for a tar member, omitting zero and empty values."""
    e: dict[str, Any] = {"name": m.name, "type": m.type, "mode": m.mode}
    for key in ("uid", "gid", "uname", "gname", "mtime", "linkname", "devmajor", "devminor"):
        v = getattr(m, key)
        if v:
            e[key] = v
    if m.type == "reg":
        e["size"] = m.size
        e["offset"] = m.offset
    if m.xattrs:
        e["xattrs"] = {k: base64.b64encode(v).decode() for k, v in sorted(m.xattrs.items())}
    return e


def is_lazy_layer(desc: dict[str, Any]) -> bool:
    """True if a layer descriptor names a lazy layer (zstd, with the TOC annotations)."""
    ann = desc.get("annotations") or {}
    return desc.get("mediaType") == MEDIA_TYPE_LAYER_ZSTD and ANNOTATION_TOC_DIGEST in ann \
        and ANNOTATION_TOC_POSITION in ann


def parse_toc_position(annotations: dict[str, str] | None, blob_size: int | None = None) -> tuple[int, int]:
    """The TOC frame's ``(offset, length)`` from a layer descriptor's ``io.lazylayer.toc.position``.

    The value must be exactly ``OFFSET:LENGTH`` (docs/format.md): two decimal
    numbers in ASCII digits, without sign, whitespace, underscores or leading
    zeros, ``LENGTH`` at least 1, and ``OFFSET + LENGTH`` below 2^63 (and
    within ``blob_size`` when it is given).  Anything else raises
    :class:`~lazylayer.errors.FormatError` naming the annotation.
    """
    value = annotations.get(ANNOTATION_TOC_POSITION) if isinstance(annotations, dict) else None
    if value is None:
        raise errors.FormatError(f"the layer has no {ANNOTATION_TOC_POSITION} annotation")
    m = _POSITION.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise errors.FormatError(f"bad {ANNOTATION_TOC_POSITION} annotation {shown}: "
                                 "it must be OFFSET:LENGTH in decimal (docs/format.md)")
    offset, length = int(m.group(1)), int(m.group(2))
    if offset + length > _INT64_MAX:
        raise errors.FormatError(f"bad {ANNOTATION_TOC_POSITION} annotation {value!r}: "
                                 "the TOC frame would end beyond 2^63")
    if blob_size is not None and offset + length > blob_size:
        raise errors.FormatError(f"{ANNOTATION_TOC_POSITION} {value!r} is outside the blob ({blob_size} bytes)")
    return offset, length


@dataclass
class LayerInfo:
    """What writing a layer produced: everything its descriptor and checks need."""

    digest: str  # sha256:... of the blob
    size: int
    diff_id: str  # sha256:... of the tar
    tar_size: int
    toc_digest: str
    toc_offset: int
    toc_length: int
    frames: int
    entries: int

    def annotations(self) -> dict[str, str]:
        return {
            ANNOTATION_VERSION: str(FORMAT_VERSION),
            ANNOTATION_TOC_DIGEST: self.toc_digest,
            ANNOTATION_TOC_POSITION: f"{self.toc_offset}:{self.toc_length}",
            ANNOTATION_UNCOMPRESSED_SIZE: str(self.tar_size),
        }


class _FrameSink:
    """The writer's destination: passes bytes on, records each frame's place and hashes the blob.

    The C writer hands every frame to ``write`` in exactly one call (and hashes
    each frame itself, on its pool).  ``digest`` False: the blob is not hashed
    (a copy kept locally, whose digest nothing asks for).
    """

    def __init__(self, out: BinaryIO, digest: bool = True) -> None:
        self.out = out
        self.blob = hashlib.sha256() if digest else None
        self.pos = 0
        self.records: list[tuple[int, int]] = []  # (offset, size) per write

    def write(self, data: Any) -> int:
        mv = memoryview(data)
        self.records.append((self.pos, len(mv)))
        if self.blob is not None:
            self.blob.update(mv)
        self.out.write(mv)
        self.pos += len(mv)
        return len(mv)


class LayerWriter:
    """Writes one lazy layer blob from a tar stream.

    ``frame_size``: uncompressed bytes per frame (see docs/format.md for why
    the default); ``threads``: compression threads (None: one per CPU).
    ``stored``: data frames are not compressed (zstd frames of raw blocks, read
    at the speed of a copy): for a layer kept on this machine's disk, where
    compressing would cost more time than the space saves.
    """

    def __init__(self, frame_size: int = LAYER_FRAME_SIZE, level: int = 3,
                 threads: int | None = None, toc_level: int = 9,
                 max_members: int = MAX_TOC_ENTRIES, stored: bool = False) -> None:
        self.frame_size = frame_size
        self.stored = stored
        self.level = level
        self.threads = threads
        self.toc_level = toc_level
        self.max_members = max_members

    def write(self, read: Callable[[int], bytes], out: BinaryIO,
              progress: Callable[[int], object] | None = None,
              prefetch: Iterable[tuple[int, int]] = (), hide: Container[str] = (),
              diff_id: str | None = None) -> LayerInfo:
        """Read a tar through ``read(n)``, write the blob to ``out``; return its description
        (with ``digest`` "" for a ``stored`` writer: the blob of a local copy is not hashed).
        ``hide``: member names (normalised) left out of the TOC, their bytes kept in the tar
        (an eStargz layer's own TOC and landmark files, which its readers hide too).
        ``diff_id``: the sha256 the tar should have; a tar that has it only with zero bytes
        appended gets them back (:func:`missing_padding`).  The caller still checks the result."""
        sink = _FrameSink(out, digest=not self.stored)
        tar_hash = hashlib.sha256()
        writer = SeekableWriter(sink, frame_size=self.frame_size, level=self.level,
                                checksum=True, threads=self.threads, stored=self.stored)
        state = {"cut": 0}  # uncompressed offset where the open frame began (mod frame_size)
        entries: list[dict[str, Any]] = []

        def feed(data: bytes) -> None:
            tar_hash.update(data)
            writer.write(data)
            if progress is not None:
                progress(len(data))

        def before_content(m: TarMember) -> None:
            fill = (m.offset - state["cut"]) % self.frame_size
            if fill and fill + m.size > self.frame_size:
                writer.end_frame()
                state["cut"] = m.offset

        try:
            scanner = TarScanner(read, feed, before_content, max_members=self.max_members)
            for member in scanner.members():
                if member.name not in hide:
                    entries.append(toc_entry(member))
            tar_size = scanner.pos
            if diff_id is not None and "sha256:" + tar_hash.hexdigest() != diff_id:
                pad = missing_padding(tar_hash, diff_id)
                if pad:
                    feed(bytes(pad))
                    tar_size += pad
            writer.flush()
            count_hardlinks(entries)
            seek = _seek_records(sink, writer)
            toc = Toc(frames=seek, entries=entries, frame_size=self.frame_size, tar_size=tar_size,
                      prefetch=[[int(o), int(n)] for o, n in prefetch])
            writer.add_skippable(toc.frame_payload(self.toc_level), variant=TOC_SKIPPABLE_VARIANT)
            toc_offset, toc_length = sink.records[-1]
            toc_sha = writer.frame_sha256s()[-1]
            writer.close()
        except BaseException:
            writer.abort()
            raise
        return LayerInfo(
            digest="sha256:" + sink.blob.hexdigest() if sink.blob is not None else "", size=sink.pos,
            diff_id="sha256:" + tar_hash.hexdigest(), tar_size=tar_size,
            toc_digest="sha256:" + toc_sha, toc_offset=toc_offset, toc_length=toc_length,
            frames=len(seek), entries=len(entries),
        )


MAX_MISSING_PADDING = 20 * 512  # tar's default record: 10240 bytes


def missing_padding(tar_hash: Any, diff_id: str) -> int:
    """How many zero bytes (a multiple of 512, at most 10240) the tar hashed so far by
    ``tar_hash`` lacks to have sha256 ``diff_id``; 0 if no such padding gives it.

    Some writers drop a tar's trailing zero blocks (the end-of-archive blocks
    and the padding to tar's 10240-byte record): skopeo 1.9.3's zstd:chunked
    layers decompress to the source tar without its last 3072 bytes, while the
    image config keeps the source tar's diff_id.  Zero bytes past a tar's end
    change none of its files, so such a layer is read, and converted, with the
    zeros put back, and its diff_id then holds exactly.
    """
    h = tar_hash.copy()
    for n in range(512, MAX_MISSING_PADDING + 1, 512):
        h.update(bytes(512))
        if "sha256:" + h.hexdigest() == diff_id:
            return n
    return 0


def _seek_records(sink: _FrameSink, writer: SeekableWriter) -> list[Frame]:
    """The data frames written so far, from the sink's per-write records and the writer's frame sizes."""
    sizes = writer.frame_sizes()
    if len(sizes) != len(sink.records):
        raise AssertionError("writer and sink disagree on the number of frames")
    frames, d = [], 0
    for (off, size), dsize, sha in zip(sink.records, sizes, writer.frame_sha256s(), strict=True):
        frames.append(Frame(off, size, d, dsize, sha))
        d += dsize
    return frames


def count_hardlinks(entries: list[dict[str, Any]]) -> None:
    """Give each regular file that hardlinks point to its link count (``nlink``)."""
    last: dict[str, dict[str, Any]] = {}
    links: dict[str, int] = {}
    for e in entries:
        if e["type"] == "hardlink":
            target = e.get("linkname", "")
            links[target] = links.get(target, 1) + 1
        else:
            last[e["name"]] = e
    for target, n in links.items():
        if target in last and last[target]["type"] == "reg":
            last[target]["nlink"] = n


# --------------------------------------------------------------------- reading


@dataclass
class LayerIndex:
    """A layer's TOC plus the seek table bytes, as read from the blob's tail."""

    toc: Toc
    seek_table: bytes  # the whole seek-table frame, for SeekableReader(tail=...)
    verified: bool  # the TOC matched a digest from the manifest
    frame: bytes = b""  # the TOC frame as stored in the blob (header included)
    toc_offset: int = 0  # where that frame starts in the blob


def read_toc(fetch: Callable[[int, int], bytes], blob_size: int,
             annotations: dict[str, str] | None = None, tail_guess: int = 256 << 10) -> LayerIndex:
    """Read and check a lazy layer's TOC with as few range requests as possible.

    With the descriptor's annotations: one request, from the TOC frame to the
    end of the blob, and the TOC's sha256 must match the annotation.  Without
    them: the tail (``tail_guess`` bytes, more only if the table is larger),
    and the TOC is unverified.  Either way the seek table must list exactly the
    TOC's frames followed by the TOC frame.
    """
    ann = annotations or {}
    if ANNOTATION_TOC_POSITION in ann and ANNOTATION_TOC_DIGEST in ann:
        toc_off, toc_len = parse_toc_position(ann, blob_size)
        tail = fetch(toc_off, blob_size - toc_off)
        frame = tail[:toc_len]
        want = ann[ANNOTATION_TOC_DIGEST]
        if not isinstance(want, str) or not check_digest_form(want):
            raise errors.FormatError(f"bad {ANNOTATION_TOC_DIGEST} annotation {str(want)[:80]!r}: "
                                     "it must be sha256: and 64 hex digits")
        if "sha256:" + hashlib.sha256(frame).hexdigest() != want:
            raise errors.IntegrityError(f"TOC digest mismatch: the blob's TOC is not the one {want} names")
        verified = True
        table = tail[toc_len:]
    else:
        n = min(blob_size, tail_guess)
        tail = fetch(blob_size - n, n)
        need = seek_table_size(tail, blob_size)
        if need > len(tail):
            tail = fetch(blob_size - need, need)
        table = tail[len(tail) - need:]
        frames = parse_seek_table(table, blob_size)
        if not frames or frames[-1].size != 0:
            raise errors.FormatError("no lazylayer TOC frame before the seek table")
        last = frames[-1]
        start = last.compressed_offset - (blob_size - len(tail))
        frame = tail[start:start + last.compressed_size] if start >= 0 else \
            fetch(last.compressed_offset, last.compressed_size)
        toc_off, toc_len, verified = last.compressed_offset, last.compressed_size, False
    toc = Toc.from_frame(frame)
    listed = parse_seek_table(table, blob_size)
    _check_frames(toc, listed, toc_off, toc_len)
    return LayerIndex(toc=toc, seek_table=table, verified=verified, frame=bytes(frame), toc_offset=toc_off)


def check_toc_frames(toc: Toc, toc_offset: int) -> None:
    """Check that the TOC's frames tile the blob up to its TOC frame and the tar from 0.

    A reader that trusts the TOC for frame positions (and builds its seek table
    from it) relies on this.
    """
    c = d = 0
    for i, f in enumerate(toc.frames):
        if f.compressed_offset != c or f.offset != d or f.compressed_size <= 0 or f.size < 0 \
                or len(f.sha256) != 64:
            raise errors.FormatError(f"TOC frame {i} is out of place or malformed")
        c += f.compressed_size
        d += f.size
    if c != toc_offset:
        raise errors.FormatError(f"the TOC's frames end at {c}, but the TOC frame starts at {toc_offset}")
    for e in toc.entries:
        if e.get("type", "reg") != "reg":
            continue
        off, size = e.get("offset", 0), e.get("size", 0)
        if not (isinstance(off, int) and isinstance(size, int) and 0 <= off and 0 <= size and off + size <= d):
            raise errors.FormatError(f"TOC entry {e['name']!r}: content {off!r}+{size!r} is not within "
                                     f"the layer's {d} bytes")


def _check_frames(toc: Toc, listed: list[FrameInfo], toc_off: int, toc_len: int) -> None:
    if len(listed) != len(toc.frames) + 1:
        raise errors.FormatError(f"seek table lists {len(listed)} frames, the TOC {len(toc.frames)} (+1 for itself)")
    for i, (f, s) in enumerate(zip(toc.frames, listed[:-1], strict=True)):
        if (f.compressed_offset, f.compressed_size, f.offset, f.size) != \
                (s.compressed_offset, s.compressed_size, s.offset, s.size):
            raise errors.FormatError(f"frame {i}: the seek table and the TOC disagree")
    last = listed[-1]
    if (last.compressed_offset, last.compressed_size, last.size) != (toc_off, toc_len, 0):
        raise errors.FormatError("the seek table's last frame is not the TOC")
