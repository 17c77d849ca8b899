"""The compressed frames a layer's C reader asks for: from the disk cache, else fetched and verified."""

from __future__ import annotations

import bisect
import hashlib
import logging
import threading
import time
import zlib
from typing import Any, Callable, Sequence

from .. import errors
from ..format import Frame
from .cache import DiskCache

log = logging.getLogger("lazylayer")


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
        self.frames = list(frames)
        self.disk = disk
        self.local = local
        self.__name__ = name
        self._starts = [f.compressed_offset for f in self.frames]
        self._lock = threading.Lock()
        self.frames_fetched = 0
        self.bytes_fetched = 0
        self.frames_from_disk = 0
        self.frames_local = 0
        self.bytes_local = 0
        self.on_read: Callable[[int, int], None] | None = None
        """Called with the first and last frame index of every read (the prefetcher's read-ahead)."""

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
            got = self._get(frames)
            log.debug("%s: frames %d..%d (%d bytes) in %.1f ms", self.__name__, first, first + len(frames) - 1,
                      size, (time.perf_counter() - t0) * 1e3)
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

            parts = self.disk.fetch_many(["sha256:" + f.sha256 for f in frames], fetch)
            with self._lock:
                self.frames_from_disk += len(frames) - len(fetched)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def prefetch(self, indices: Sequence[int]) -> int:
        """Fetch frames ``indices`` into the disk cache unless they are there; the bytes fetched."""
        if self.disk is None:
            return 0
        frames = [self.frames[i] for i in indices if not self.disk.has("sha256:" + self.frames[i].sha256)]
        if not frames:
            return 0
        fetched: list[int] = []

        def fetch(missing: list[int]) -> list[bytes]:
            fetched.extend(missing)
            return self._fetch([frames[i] for i in missing])

        self.disk.fetch_many(["sha256:" + f.sha256 for f in frames], fetch)
        return sum(frames[i].compressed_size for i in fetched)


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
    fetched once.  Everything else is :class:`FrameSource`'s.
    """

    def __init__(self, blob: Any, frames: Sequence[Frame], chunks: Sequence[Any], disk: DiskCache | None,
                 name: str, local: bool = False) -> None:
        super().__init__(blob, frames, disk, name, local)
        if len(chunks) != len(self.frames):
            raise errors.FormatError(f"{name}: {len(chunks)} chunks for {len(self.frames)} frames")
        self._chunk_list = list(chunks)

    def _index(self, f: Frame) -> int:
        return bisect.bisect_left(self._starts, f.compressed_offset)  # (span() found it)

    def _fetch(self, frames: Sequence[Frame]) -> list[bytes]:
        out = self._fetch_chunks([self._index(f) for f in frames], decode=True)
        assert out is not None
        return out

    def _fetch_chunks(self, want: list[int], *, decode: bool) -> list[bytes] | None:
        """Fetch chunks ``want`` (indices) and store them encoded in the disk cache; with ``decode``
        return their data, each checked against its sha256 (and stored only then)."""
        remote = [i for i in want if self._chunk_list[i].codec != "zeros"]
        ranges = [(self._chunk_list[i].offset, self._chunk_list[i].end - self._chunk_list[i].offset) for i in remote]
        raw = dict(zip(remote, self.blob.read_ranges(ranges)))
        self._count(len(remote), sum(n for _, n in ranges))
        out = []
        for i in want:
            c, f = self._chunk_list[i], self.frames[i]
            if decode:
                data = bytes(c.size) if c.codec == "zeros" else _decode(c, raw[i], self.__name__)
                if len(data) != c.size or hashlib.sha256(data).hexdigest() != f.sha256:
                    raise errors.IntegrityError(f"{self.__name__}: the chunk at {c.offset} does not match its "
                                                f"chunkDigest sha256:{f.sha256}")
                out.append(data)
            if self.disk is not None:
                self._store(c, f, raw.get(i, b""))
        return out if decode else None

    def _store(self, c: Any, f: Frame, compressed: bytes) -> None:
        from ..core import chunk

        extra: dict[str, Any] = {}
        if c.codec == "gzspan":
            from ..format.gzindex import window

            extra = {"bits": c.bits, "byte": c.byte, "window": window(c)}
        try:
            assert self.disk is not None
            self.disk.put_encoded("sha256:" + f.sha256, [chunk.header(c.codec, c.size, **extra), compressed])
        except OSError as exc:  # a full disk must not fail the read
            log.warning("disk cache: not stored: %s", exc)

    def _get(self, frames: list[Frame]) -> bytes:
        if self.disk is None:
            return super()._get(frames)
        fetched: list[int] = []

        def fetch(missing: list[int]) -> list[bytes]:
            fetched.extend(missing)
            return self._fetch([frames[i] for i in missing])

        parts = self.disk.fetch_many(["sha256:" + f.sha256 for f in frames], fetch, store=False)
        with self._lock:
            self.frames_from_disk += len(frames) - len(fetched)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def prefetch(self, indices: Sequence[int]) -> int:
        """Fetch chunks ``indices`` into the disk cache, encoded, unless they are there: neither
        decompressed nor hashed now (that is done when one is read); the bytes fetched."""
        if self.disk is None:
            return 0
        indices = list(indices)
        got = 0

        def store(missing: list[int]) -> None:
            nonlocal got
            want = [indices[m] for m in missing]
            self._fetch_chunks(want, decode=False)
            got = sum(c.end - c.offset for c in (self._chunk_list[i] for i in want) if c.codec != "zeros")

        self.disk.fill_many(["sha256:" + self.frames[i].sha256 for i in indices], store)
        return got


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
