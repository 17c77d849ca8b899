"""The compressed frames a layer's C reader asks for: from the disk cache, else fetched and verified."""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import threading
import time
import zlib
from typing import Any, Callable, NamedTuple, Sequence

from .. import errors
from ..format import Frame, FrameTable, frame_column
from .cache import DiskCache

log = logging.getLogger("lazylayer")
_here = threading.local()  # .fetched: how many frames this thread's last read fetched itself (for the -vv log)


class FrameSource:
    """The compressed bytes a layer's C reader asks for, as verified frames.

    The reader always asks for whole frames (one contiguous run per call).
    Frames come from the disk cache when it has them; the others are fetched
    in one :meth:`read_ranges` batch (coalesced, parallel), each checked
    against the sha256 the TOC gives it.  Counters: ``frames_fetched``,
    ``bytes_fetched``, ``frames_from_disk``; for a ``local`` blob (a file on
    this machine: a layout's blob, a layer kept whole in the disk cache) the
    frames read are ``frames_local`` and ``bytes_local`` instead of fetched.
    """

    def __init__(self, blob: Any, frames: Sequence[Frame], disk: DiskCache | None, name: str,
                 local: bool = False) -> None:
        self.blob = blob
        self.frames = frames if isinstance(frames, FrameTable) else list(frames)
        self.disk = disk
        self.local = local
        self.__name__ = name
        self._starts = frame_column(self.frames, "compressed_offset")
        self._lock = threading.Lock()
        self.frames_fetched = 0
        self.bytes_fetched = 0
        self.frames_from_disk = 0
        self.frames_local = 0
        self.bytes_local = 0
        self.on_read: Callable[[int, int], None] | None = None
        """Called with the first and last frame index of every read (the prefetcher's read-ahead)."""

    _store_fetched = True
    """Whether the disk cache stores what :meth:`_fetch` returns (else :meth:`_fetch` stores it itself)."""

    def span(self, offset: int, size: int) -> list[Frame]:
        """The frames that exactly cover compressed bytes ``offset .. offset+size``."""
        i = bisect.bisect_right(self._starts, offset) - 1
        out: list[Frame] = []
        end = offset + size
        if i < 0 or self.frames[i].compressed_offset != offset:
            raise errors.SourceError(f"{self.__name__}: read at {offset} does not start a frame")
        while offset < end:
            if i >= len(self.frames) or self.frames[i].compressed_offset != offset:
                raise errors.SourceError(f"{self.__name__}: read of {size} bytes does not end on a frame")
            out.append(self.frames[i])
            offset += self.frames[i].compressed_size
            i += 1
        if offset != end:
            raise errors.SourceError(f"{self.__name__}: read of {size} bytes does not end on a frame")
        return out

    def _fetch(self, frames: Sequence[Frame]) -> list[bytes]:
        got = self.blob.read_ranges([(f.compressed_offset, f.compressed_size) for f in frames],
                                    ["sha256:" + f.sha256 for f in frames])
        self._count(len(frames), sum(f.compressed_size for f in frames))
        return got

    def _count(self, frames: int, nbytes: int) -> None:
        """Count frames read from the blob: fetched, or local for a local blob."""
        with self._lock:
            if self.local:
                self.frames_local += frames
                self.bytes_local += nbytes
            else:
                self.frames_fetched += frames
                self.bytes_fetched += nbytes

    def __call__(self, offset: int, size: int) -> bytes:
        frames = self.span(offset, size)
        first = bisect.bisect_left(self._starts, offset)  # span() checked that a frame starts here
        if self.on_read is not None:
            self.on_read(first, first + len(frames) - 1)
        if log.isEnabledFor(logging.DEBUG):
            t0 = time.perf_counter()
            _here.fetched = 0
            got = self._get(frames)
            log.debug("%s: frames %d..%d (%d bytes) in %.1f ms, %s", self.__name__, first, first + len(frames) - 1,
                      size, (time.perf_counter() - t0) * 1e3,
                      f"{_here.fetched} fetched" if _here.fetched else "from the disk cache (fetched ahead)")
            return got
        return self._get(frames)

    def _get(self, frames: list[Frame]) -> bytes:
        if self.disk is None:
            parts = self._fetch(frames)
        else:
            fetched: list[int] = []

            def fetch(missing: list[int]) -> list[bytes]:
                fetched.extend(missing)
                return self._fetch([frames[i] for i in missing])

            parts = self.disk.fetch_many(["sha256:" + f.sha256 for f in frames], fetch, store=self._store_fetched)
            _here.fetched = len(fetched)
            with self._lock:
                self.frames_from_disk += len(frames) - len(fetched)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def prefetch(self, indices: Sequence[int]) -> int:
        """Fetch frames ``indices`` into the disk cache unless they are there; the bytes fetched.

        Each frame is checked and stored as soon as it has arrived (:meth:`HttpBlob.iter_ranges`),
        so a read waiting for one of the first goes on before the rest is in."""
        if self.disk is None:
            return 0
        frames = [self.frames[i] for i in indices]
        got = 0

        def store(missing: list[int], stored: Callable[[int], None]) -> None:
            nonlocal got
            want = [frames[m] for m in missing]
            ranges = [(f.compressed_offset, f.compressed_size) for f in want]
            bad: list[int] = []
            n = 0
            try:
                for j, data in self.blob.iter_ranges(ranges):
                    if hashlib.sha256(data).hexdigest() != want[j].sha256:
                        bad.append(j)  # corrupted in transit: fetched again alone, below
                        continue
                    self._put(want[j], data)
                    stored(missing[j])
                    n, got = n + 1, got + len(data)
                if bad:  # (read_ranges checks them, and fetches each again until it holds)
                    again = self.blob.read_ranges([ranges[j] for j in bad], ["sha256:" + want[j].sha256 for j in bad])
                    for j, data in zip(bad, again):
                        self._put(want[j], data)
                        stored(missing[j])
                        n, got = n + 1, got + len(data)
            finally:
                self._count(n, got)

        self.disk.fill_many(["sha256:" + f.sha256 for f in frames], store)
        return got

    def _put(self, f: Frame, data: bytes) -> None:
        try:
            assert self.disk is not None
            self.disk.put("sha256:" + f.sha256, data)
        except OSError as exc:  # a full disk must not fail the read
            log.warning("disk cache: not stored: %s", exc)


class ChunkSource(FrameSource):
    """The frames of a layer in another format, as raw frames (docs/format.md, "Raw frames").

    Each frame of the layer's index is one chunk of that format — for eStargz, a
    gzip member whose first ``size`` uncompressed bytes are the chunk; for
    zstd:chunked, zstd frames; for a plain gzip layer indexed here, a span inflated from its
    checkpoint (:mod:`lazylayer.format.gzindex`) — named by the sha256 of its data.  A missing
    chunk's compressed bytes (from its member's start to the next chunk's) are
    fetched, decompressed to exactly its size and checked against that sha256
    before anything sees them; a zstd:chunked run of zeros is made here, not
    fetched.  The disk cache keeps each chunk **encoded**, as it was fetched
    (:func:`lazylayer.core.chunk.header` before its compressed bytes), under the
    sha256 of its data: chunks fetched ahead (:meth:`prefetch`: plans, read-ahead,
    fill) are stored without being decompressed or hashed, and are decoded and
    checked when read, in C.  The same chunk in any layer, image or format is
    fetched once.  A run of small chunks read as one frame (``parse_toc`` with
    ``runs``) is fetched with one request and kept the same way, as one encoded
    frame (``LL_CHUNK_RUN``: its chunk table, then the blob's bytes from its first
    chunk to its last) named by the sha256 of that table, each chunk checked
    against its own digest when read (``ll_run_decode``).  Everything else is
    :class:`FrameSource`'s.
    """

    _store_fetched = False  # (_fetch keeps each frame encoded, as fetched)

    def __init__(self, blob: Any, frames: Sequence[Frame], chunks: Sequence[Any], disk: DiskCache | None,
                 name: str, local: bool = False) -> None:
        super().__init__(blob, frames, disk, name, local)
        from ..format.estargz import ChunkRows  # (a layer kept in the disk cache: chunks made when used)

        self._chunk_list = chunks if isinstance(chunks, ChunkRows) else list(chunks)
        # Each frame's first chunk (row), and one past the last frame's last: a frame is one chunk,
        # or a run of small ones; None when every frame is one chunk.
        self._first: list[int] | None = None
        if len(self._chunk_list) != len(self.frames):
            self._first = _first_rows(frame_column(self.frames, "size"), _sizes(self._chunk_list), name)
        # A big chunk's pieces (its frames), by its (offset, digest): their sizes, in order; and
        # each piece's place among them, by its row index.
        self._whole: dict[tuple[int, str], list[int]] = {}
        self._piece: dict[int, tuple[int, int]] = {}  # row -> (piece number, offset in the chunk)
        at: dict[tuple[int, str], int] = {}
        rows = self._chunk_list.whole() if isinstance(self._chunk_list, ChunkRows) else range(len(self._chunk_list))
        for i in rows:
            c = self._chunk_list[i]
            if c.codec.endswith("-whole"):
                key = (c.offset, c.digest)
                sizes = self._whole.setdefault(key, [])
                self._piece[i] = (len(sizes), at.get(key, 0))
                sizes.append(c.size)
                at[key] = at.get(key, 0) + c.size
        self._whole_size = at  # a big chunk's size, by its (offset, digest)

    def _index(self, f: Frame) -> int:
        """Frame ``f``'s index (span() found it)."""
        return bisect.bisect_left(self._starts, f.compressed_offset)

    def _rows(self, i: int) -> range:
        """The chunks (rows) of frame ``i``: one, or a run."""
        return range(i, i + 1) if self._first is None else range(self._first[i], self._first[i + 1])

    def _part(self, f: Frame) -> _Part:
        """What frame ``f`` is made of: its chunks, where their bytes are in the blob, and for a run
        its table (checked against the frame's name)."""
        rows = self._rows(self._index(f))
        chunks = [self._chunk_list[i] for i in rows]
        data = [c for c in chunks if c.codec != "zeros"]
        span = (data[0].offset, data[-1].end - data[0].offset) if data else (0, 0)
        if len(chunks) == 1:
            return _Part(f, chunks, span, b"")
        from ..core import chunk

        table = b"".join(chunk.run_entry(c.offset - span[0] if c.codec != "zeros" else 0,
                                         c.end - c.offset if c.codec != "zeros" else 0, c.size, c.codec,
                                         bytes.fromhex(c.digest[7:])) for c in chunks)
        if hashlib.sha256(table).hexdigest() != f.sha256:
            raise errors.FormatError(f"{self.__name__}: the run of chunks at {span[0]} is not the one its frame "
                                     "names")
        return _Part(f, chunks, span, table)

    def _fetch(self, frames: Sequence[Frame]) -> list[bytes]:
        """Fetch frames ``frames`` (one request) and return their data, every chunk checked against its
        sha256, each frame kept encoded in the disk cache only then."""
        parts = [self._part(f) for f in frames]
        remote = [p for p in parts if p.span[1]]
        raw = dict(zip((id(p) for p in remote), self.blob.read_ranges([p.span for p in remote])))
        self._count(len(remote), sum(p.span[1] for p in remote))
        out = []
        for p in parts:
            compressed = raw.get(id(p), b"")
            data = self._decode(p, compressed)
            out.append(data)
            if self.disk is not None:
                self._keep(p, compressed)
        return out

    def _decode(self, p: _Part, compressed: bytes) -> bytes:
        """The data of frame part ``p`` from its compressed bytes, every chunk checked."""
        if len(compressed) != p.span[1]:
            raise errors.CorruptFrameError(f"{self.__name__}: {len(compressed)} bytes at {p.span[0]}, not "
                                           f"{p.span[1]}")
        if p.table:
            from ..core import chunk

            return chunk.decode_run(p.table, compressed, p.frame.size,
                                    lambda k: f"{self.__name__}: the chunk at {p.chunks[k].offset} "
                                              f"({p.chunks[k].digest})")
        c = p.chunks[0]
        data = bytes(c.size) if c.codec == "zeros" else _decode(c, compressed, self.__name__)
        _check(c, data, self.__name__)
        return data

    def _keep(self, p: _Part, compressed: bytes) -> None:
        """Keep frame part ``p`` encoded, as fetched, under its frame's name."""
        from ..core import chunk

        c = p.chunks[0]
        if p.table:
            head = chunk.run_header(p.frame.size, len(p.chunks))
            parts = [head, p.table, compressed]
        else:
            extra: dict[str, Any] = {}
            if c.codec == "gzspan":
                from ..format.gzindex import window

                extra = {"bits": c.bits, "byte": c.byte, "window": window(c)}
            parts = [chunk.header(c.codec, c.size, **extra), compressed]
        try:
            assert self.disk is not None
            self.disk.put_encoded("sha256:" + p.frame.sha256, parts)
        except OSError as exc:  # a full disk must not fail the read
            log.warning("disk cache: not stored: %s", exc)

    def _get(self, frames: list[Frame]) -> bytes:
        if not self._piece:
            return super()._get(frames)
        parts, plain = [], []
        for f in frames:  # big chunks' pieces on their own (through a checked copy), the rest as usual
            rows = self._rows(self._index(f))
            if rows[0] not in self._piece:
                plain.append(f)
                continue
            if plain:
                parts.append(super()._get(plain))
                plain = []
            parts.append(self._read_whole(rows[0]))
        if plain:
            parts.append(super()._get(plain))
        return b"".join(parts)

    def prefetch(self, indices: Sequence[int]) -> int:
        """Fetch frames ``indices`` into the disk cache unless they are there: kept encoded, neither
        decompressed nor hashed now (that is done when one is read); the bytes fetched."""
        if self.disk is None:
            return 0
        frames = [self.frames[i] for i in indices]
        got = 0
        if self._piece:
            big = {}
            for f in frames:
                r = self._rows(self._index(f))[0]
                if r in self._piece:
                    c = self._chunk_list[r]
                    big[(c.offset, c.digest)] = c
            for c in big.values():
                got += self._ensure_whole(c)
            frames = [f for f in frames if self._rows(self._index(f))[0] not in self._piece]

        def store(missing: list[int], stored: Callable[[int], None]) -> None:
            nonlocal got
            parts = [self._part(frames[m]) for m in missing]
            remote: list[int] = []
            for k, p in enumerate(parts):
                if p.span[1]:
                    remote.append(k)
                else:  # (zeros: nothing to fetch)
                    self._keep(p, b"")
                    stored(missing[k])
            n = nbytes = 0
            try:
                for j, data in self.blob.iter_ranges([parts[k].span for k in remote]):
                    self._keep(parts[remote[j]], data)
                    stored(missing[remote[j]])
                    n, nbytes = n + 1, nbytes + len(data)
            finally:
                self._count(n, nbytes)
                got += nbytes

        self.disk.fill_many(["sha256:" + f.sha256 for f in frames], store)
        return got

    # -- chunks too big for one frame (a file zstd:chunked left whole): a checked copy on disk

    def _whole_name(self, c: Any) -> str:
        return f"whole-{c.digest[7:]}"

    def _ensure_whole(self, c: Any) -> int:
        """Make sure the copy of big chunk ``c`` is in the disk cache; the bytes fetched for it."""
        assert self.disk is not None
        fetched = [0]

        def build(f: Any) -> None:
            fetched[0] = self._spill(c, f)

        self.disk.ensure_file(self._whole_name(c), build)
        return fetched[0]

    def _spill(self, c: Any, f: Any) -> int:
        """Write big chunk ``c``'s data into ``f``, then the sha256 of each of its pieces (frames):
        its compressed bytes fetched in parts, decompressed as they come (bounded memory), the data
        checked against the chunk's digest before the copy is kept (else IntegrityError: nothing is
        kept).  Returns the bytes fetched."""
        sizes = self._whole[(c.offset, c.digest)]
        size = self._whole_size[(c.offset, c.digest)]
        whole, piece, pieces = hashlib.sha256(), hashlib.sha256(), []
        from concurrent.futures import ThreadPoolExecutor

        # The fetcher thread and both generators are ended here, on this thread, whatever happens: a
        # generator left suspended is finalized by the garbage collector on any thread, at any time
        # (once inside a new thread's start-up, where joining a thread deadlocked the test suite).
        ex = ThreadPoolExecutor(1, thread_name_prefix="lazylayer-whole")
        parts = self._parts(c, ex)
        inflated = _inflate_parts(c, parts, size, self.__name__)
        try:
            got, pieces = self._copy_whole(inflated, f, sizes, whole, piece, pieces)
        finally:
            inflated.close()
            parts.close()
            ex.shutdown(wait=False, cancel_futures=True)
        if got != size:
            raise errors.CorruptFrameError(f"{self.__name__}: the chunk at {c.offset} gives {got} bytes, not {size}")
        if whole.hexdigest() != c.digest[7:]:
            raise errors.IntegrityError(f"{self.__name__}: the {size}-byte chunk at {c.offset} does not match its "
                                        f"digest {c.digest}")
        f.write(b"".join(pieces))
        self._count(1, c.end - c.offset)
        return c.end - c.offset

    @staticmethod
    def _copy_whole(inflated: Any, f: Any, sizes: list[int], whole: Any, piece: Any,
                    pieces: list[bytes]) -> tuple[int, list[bytes]]:
        """Write what ``inflated`` yields to ``f``, hashing it whole and per piece (``sizes``)."""
        got = in_piece = 0
        for out in inflated:
            mv = memoryview(out)
            f.write(mv)
            whole.update(mv)
            while mv:  # (size bytes at most: each piece ends where its frame does)
                take = min(len(mv), sizes[len(pieces)] - in_piece)
                piece.update(mv[:take])
                mv, in_piece = mv[take:], in_piece + take
                if in_piece == sizes[len(pieces)]:
                    pieces.append(piece.digest())
                    piece, in_piece = hashlib.sha256(), 0
            got += len(out)
        return got, pieces

    def _parts(self, c: Any, ex: Any, part: int = 8 << 20, batch: int = 2) -> Any:
        """Chunk ``c``'s compressed bytes, in parts of ``part`` bytes: ``batch`` range requests at a
        time, in parallel, the next batch fetched (on ``ex``, a one-thread executor the caller shuts
        down) while this one is decompressed (at most ``2 * part * batch`` bytes held)."""
        spans = [(at, min(part, c.end - at)) for at in range(c.offset, c.end, part)]
        batches = [spans[k:k + batch] for k in range(0, len(spans), batch)]
        ahead = ex.submit(self.blob.read_ranges, batches[0]) if batches else None
        for k in range(len(batches)):
            assert ahead is not None
            got, ahead = ahead.result(), ex.submit(self.blob.read_ranges, batches[k + 1]) \
                if k + 1 < len(batches) else None
            yield from got

    def _read_whole(self, i: int) -> bytes:
        """Piece ``i`` of a big chunk, from its copy on disk (made first if need be), checked
        against the sha256 the copy keeps for it; a damaged copy is removed and made again."""
        c = self._chunk_list[i]
        assert self.disk is not None  # (the image fetches such a layer whole without a disk cache)
        size = self._whole_size[(c.offset, c.digest)]
        k, start = self._piece[i]
        for _ in range(2):
            pin = self.disk.ensure_pinned(self._whole_name(c), lambda f: self._spill(c, f))
            try:
                data = os.pread(pin.fileno(), c.size, start)
                want = os.pread(pin.fileno(), 32, size + 32 * k)
            finally:
                pin.close()
            if len(data) == c.size and hashlib.sha256(data).digest() == want:
                with self._lock:
                    self.frames_local += 1
                    self.bytes_local += c.size
                return data
            log.warning("%s: the disk copy of the chunk at %d is damaged; removed", self.__name__, c.offset)
            self.disk.remove_file(self._whole_name(c))
        raise errors.IntegrityError(f"{self.__name__}: the disk copy of the chunk at {c.offset} keeps failing "
                                    "its check")


class _Part(NamedTuple):
    """A frame of a chunked layer: its chunks (one, or a run), where their compressed bytes are in the
    blob (offset, length; (0, 0) for zeros only), and for a run its table (``ll_run_decode``'s)."""

    frame: Frame
    chunks: list[Any]
    span: tuple[int, int]
    table: bytes


def _inflate_parts(c: Any, parts: Any, size: int, name: str) -> Any:
    """The first ``size`` bytes that big chunk ``c``'s compressed ``parts`` decompress to, in pieces."""
    if c.codec == "gzip-whole":
        from isal import isal_zlib

        d = isal_zlib.decompressobj(31)
        got = 0
        try:
            for part in parts:
                data = part
                while data and got < size and not d.eof:
                    out = d.decompress(data, min(size - got, 8 << 20))
                    got += len(out)
                    if out:
                        yield out
                    data = d.unconsumed_tail
                if got >= size or d.eof:
                    return
        except (isal_zlib.error, zlib.error) as exc:  # type: ignore[misc]
            raise errors.CorruptFrameError(f"{name}: the chunk at {c.offset} is not gzip: {exc}") from None
        return
    import io

    import zstandard

    class _Raw(io.RawIOBase):
        def __init__(self) -> None:
            self.it, self.buf = iter(parts), memoryview(b"")

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            while not self.buf:
                self.buf = memoryview(next(self.it, b""))
                if not self.buf:
                    return 0
            n = min(len(b), len(self.buf))
            b[:n] = self.buf[:n]
            self.buf = self.buf[n:]  # (a view: no copy of the rest)
            return n

    reader = zstandard.ZstdDecompressor().stream_reader(_Raw(), read_across_frames=True)
    got = 0
    try:
        while got < size:
            out = reader.read(min(size - got, 8 << 20))
            if not out:
                return
            got += len(out)
            yield out
    except zstandard.ZstdError as exc:
        raise errors.CorruptFrameError(f"{name}: the chunk at {c.offset} is not zstd: {exc}") from None


def _check(c: Any, data: bytes, name: str) -> None:
    """IntegrityError unless ``data`` is chunk ``c``'s (its size and digest)."""
    if len(data) != c.size or "sha256:" + hashlib.sha256(data).hexdigest() != c.digest:
        raise errors.IntegrityError(f"{name}: the chunk at {c.offset} does not match its chunkDigest {c.digest}")


def _sizes(chunks: Sequence[Any]) -> list[int]:
    """The ``size`` of every chunk (row)."""
    from ..format.estargz import ChunkRows

    if isinstance(chunks, ChunkRows):
        return [r[1] for r in ChunkRows.RECORD.iter_unpack(chunks.table)]
    return [c.size for c in chunks]


def _first_rows(frame_sizes: Sequence[int], row_sizes: Sequence[int], name: str) -> list[int]:
    """Each frame's first row, and one past the last (frames of consecutive rows whose sizes add
    up to the frame's); FormatError if the rows do not tile the frames so."""
    first, r, n = [0], 0, len(row_sizes)
    for size in frame_sizes:
        left = size
        while left > 0 and r < n:
            left -= row_sizes[r]
            r += 1
        if left != 0 or r == first[-1]:
            raise errors.FormatError(f"{name}: its chunk table does not tile its frames")
        first.append(r)
    if r != n:
        raise errors.FormatError(f"{name}: {n} chunks for {len(frame_sizes)} frames")
    return first


def _decode(c: Any, data: bytes, name: str) -> bytes:
    """The first ``c.size`` bytes chunk ``c``'s compressed bytes decompress to (its member or
    frames may go on with the next tar header: that is not read)."""
    if c.codec == "gzspan":
        from ..core.gzindex import Checkpoint, inflate_span
        from ..format.gzindex import window

        return inflate_span(Checkpoint(c.offset, c.file_offset, c.bits, c.byte, window(c)), data, c.size)
    if c.codec == "gzip":
        from isal import isal_zlib  # ISA-L's inflate: 2-3x zlib's (eStargz layers only)

        try:
            return isal_zlib.decompressobj(31).decompress(data, c.size)
        except (isal_zlib.error, zlib.error) as exc:  # type: ignore[misc]  # isal's stubs miss it
            raise errors.CorruptFrameError(f"{name}: the chunk at {c.offset} is not gzip: {exc}") from None
    import zstandard  # (zstd:chunked only: kept off the import path of images without it)

    from ..format.zstdchunked import decompress_prefix

    try:
        return decompress_prefix(data, c.size)
    except zstandard.ZstdError as exc:
        raise errors.CorruptFrameError(f"{name}: the chunk at {c.offset} is not zstd: {exc}") from None
