"""The Python model of converting a chunked TOC (eStargz, zstd:chunked) into a raw layer: what
lazylayer did before ``ll_chunked_convert`` (csrc/chunked.c) took over, kept as the reference the
C converter is checked against (tests/test_chunked.py), as tests/tree_model.py is for the tree.

``parse_toc`` checks the TOC's JSON and makes lazylayer's TOC entries and each file's chunks;
``raw_layer`` lays the chunks end to end (runs of zeros over 1 MiB and chunks too big for one
frame cut into pieces) and builds the raw layer's TOC frame and its chunk list.
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
from dataclasses import dataclass
from typing import Any

from lazylayer import errors
from lazylayer.format.estargz import (
    HIDDEN,
    MAX_WHOLE_SIZE,
    MAX_ZERO_CHECK,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    ZERO_PIECE,
    ZERO_SHA256,
    Chunk,
    NotSupported,
    checked_digest,
    index_layer,
)
from lazylayer.format.tar import MAX_TOC_ENTRIES, MAX_TOC_FRAMES, MAX_TOC_VALUES, MTIME_MAX, normalize_name
from lazylayer.oci.media import load_json


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
            if codec != "zeros" and c.size > _limits()[0]:
                if c.file_offset != 0 or c.size > MAX_WHOLE_SIZE:
                    raise NotSupported(f"eStargz TOC: a chunk of {name[:100]!r} holds {c.size} bytes, more than "
                                       f"the {_limits()[0]} read lazily")
                codec += "-whole"  # read through a checked copy on disk, in pieces
            frames += -(-c.size // ZERO_PIECE) if codec == "zeros" else \
                -(-c.size // _limits()[1]) if codec.endswith("-whole") else 1
            if frames > MAX_TOC_FRAMES:
                raise errors.LimitError(f"eStargz TOC: more than {MAX_TOC_FRAMES} chunks (runs of zeros and big "
                                        "chunks counted in pieces)")
            if codec == "zeros":
                zeros.check(c, name)
            end = min(ends[bisect.bisect_right(ends, c.offset)], c.offset + c.size + c.size // 8 + (1 << 20))
            cs[i] = Chunk(c.file_offset, c.size, c.offset, end, c.digest, codec)  # (LL_CHUNK_SPAN_SLACK)
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




def raw_layer(toc: EstargzToc, digest: str) -> tuple[Any, list[Chunk]]:
    """The layer as the image index takes it: a raw layer (docs/format.md, "Raw frames") whose
    frames are the chunks, each file's laid end to end in a virtual stream, named by their
    chunkDigest; the prioritized files are its prefetch plan.  (The ``IndexLayer``, and the
    chunks in frame order for the host that fetches them.)"""
    from lazylayer.format.layer import Frame, count_hardlinks

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



def _pieces(c: Chunk, known: dict[int, str]) -> list[Chunk]:
    """A chunk as frames: itself, a ``zeros`` chunk as pieces of at most :data:`ZERO_PIECE`
    bytes named by their own digests (``known``: those of the sizes seen), or a chunk too big
    for one frame (``-whole``) as pieces of WHOLE_PIECE bytes that keep the whole
    chunk's digest (their frames' is :data:`ZERO_SHA256`: the host checks them)."""
    if c.codec.endswith("-whole"):
        return [c._replace(file_offset=c.file_offset + at, size=min(_limits()[1], c.size - at))
                for at in range(0, c.size, _limits()[1])]
    if c.codec != "zeros" or c.size <= ZERO_PIECE:
        return [c]
    out = []
    for at in range(0, c.size, ZERO_PIECE):
        n = min(ZERO_PIECE, c.size - at)
        if n not in known:
            known[n] = "sha256:" + zero_sha256(n)
        out.append(Chunk(c.file_offset + at, n, c.offset, c.end, known[n], "zeros"))
    return out



def _limits() -> tuple[int, int]:
    from lazylayer.format import estargz

    return estargz.MAX_CHUNK_SIZE, estargz.WHOLE_PIECE

