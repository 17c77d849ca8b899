"""Blobs read by byte range: :class:`HttpBlob` over the :class:`~lazylayer.remote.transport.Transport`,
:class:`FsspecBlob` over any fsspec URL (a local path included), and :func:`open_blob` to pick one.

Every read can be checked against a digest the caller knows; see
:mod:`lazylayer.remote.transport` for what a request does.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import io
import queue
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence
from urllib.parse import urlsplit

from .. import errors
from ..core.seekable import seek_position
from .readahead import ReadAhead
from .transport import (
    Authorizer,
    Range,
    Transport,
    _assemble,
    clean_url,
    default_transport,
    plan_requests,
    sha256_of,
)

# ------------------------------------------------------------------ blobs


class Blob(Protocol):
    """What lazylayer reads blobs through: sizes, ranges, whole reads and streams."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, size: int) -> bytes: ...

    def read_ranges(self, ranges: Sequence[Range], digests: Sequence[str | None] | None = None) -> list[bytes]: ...

    def iter_ranges(self, ranges: Sequence[Range]) -> Iterator[tuple[int, bytes]]: ...

    def read_all(self) -> bytes: ...

    def open(self) -> io.BufferedIOBase: ...


def _check_ranges(ranges: Sequence[Range], size: int | None, what: str) -> None:
    for off, n in ranges:
        if off < 0 or n < 0 or (size is not None and off + n > size):
            raise ValueError(f"{what}: range [{off}, +{n}] is outside the blob ({size} bytes)")


@dataclass
class HttpBlob:
    """A blob behind one or more HTTP(S) URLs (mirrors first), read by byte ranges.

    ``digest`` (``sha256:...``), when known, is checked by :meth:`read_all`.
    ``auth`` adds credentials (a registry's).  A blob is also a
    ``fetch(offset, size)`` callable, so it can be a
    :class:`~lazylayer.SeekableReader`'s source directly.
    """

    urls: Sequence[str]
    transport: Transport = field(default_factory=default_transport)
    digest: str | None = None
    auth: Authorizer | None = None
    name: str = ""
    _size: int | None = None
    #: True once the server has confirmed ``_size`` (a declared size is checked before a large read).
    _size_checked: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            self.urls = [self.urls]
        if not self.urls:
            raise ValueError("a blob needs at least one URL")
        self.name = self.name or clean_url(self.urls[-1])

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = self.transport.run(self.asize())
        return self._size

    async def asize(self) -> int:
        if self._size is None:
            self._size = await self.transport.call_soon(
                self.transport.head_size(self.urls, auth=self.auth, what=self.name))
            self._size_checked = True
        return self._size

    async def _check_declared_size(self, wanted: int) -> None:
        """Before a read of ``wanted`` bytes (more than a few parts) by a size nobody checked: ask the server.

        A descriptor may declare any size (10^12, 2^62); planning and
        allocating by it before a byte arrives would exhaust memory.  The
        server's size must be the declared one, else IntegrityError names both.
        """
        o = self.transport.options
        if self._size is None or self._size_checked or wanted <= o.part_size * 4:
            return
        real = await self.transport.head_size(self.urls, auth=self.auth, what=self.name)
        if real != self._size:
            raise errors.IntegrityError(f"{self.name}: the server has {real} bytes, but its descriptor declares "
                                        f"{self._size}: refusing to read by the declared size")
        self._size_checked = True

    async def _fetch_ranges(self, ranges: Sequence[Range], digests: Sequence[str | None] | None) -> list[bytes]:
        t, o = self.transport, self.transport.options
        _check_ranges(ranges, self._size, self.name)
        if digests is not None:
            if len(digests) != len(ranges):
                raise ValueError("digests must have one entry per range")
        with t.deadline_scope():  # one deadline for the parts, their retries and the re-fetches
            await self._check_declared_size(sum(n for _, n in ranges))
            requests = plan_requests(ranges, o.coalesce_gap, o.part_size)
            bodies = await asyncio.gather(*(t.fetch_range(self.urls, off, n, auth=self.auth, what=self.name,
                                                          total=self._size)
                                            for off, n in requests))
            out = _assemble(ranges, requests, list(bodies))
            del bodies
            if digests is not None:
                for i, (data, want) in enumerate(zip(out, digests)):
                    if want is not None and sha256_of(data) != want:
                        # Corrupted in transit, or a coalesced request went wrong: fetch this range alone.
                        t.stats.digest_mismatches += 1
                        off, n = ranges[i]
                        out[i] = await t.fetch_range(self.urls, off, n, auth=self.auth, digest=want,
                                                     what=self.name, total=self._size)
        return out

    async def aread_ranges(self, ranges: Sequence[Range], digests: Sequence[str | None] | None = None) -> list[bytes]:
        """The bytes of each ``(offset, size)`` range, from any event loop.

        With ``digests`` (one ``sha256:...`` or None per range), every range is
        verified before it is returned.
        """
        return await self.transport.call_soon(self._fetch_ranges(list(ranges), digests))

    def read_ranges(self, ranges: Sequence[Range], digests: Sequence[str | None] | None = None) -> list[bytes]:
        """Synchronous :meth:`aread_ranges`."""
        return self.transport.run(self._fetch_ranges(list(ranges), digests))

    async def _stream_ranges(self, ranges: Sequence[Range], emit: Callable[[int, bytes], None]) -> None:
        """Fetch ``ranges`` as :meth:`_fetch_ranges` does (unchecked), calling ``emit(i, data)`` on the
        loop's thread as soon as range ``i``'s bytes are all in."""
        t, o = self.transport, self.transport.options
        _check_ranges(ranges, self._size, self.name)
        with t.deadline_scope():
            await self._check_declared_size(sum(n for _, n in ranges))
            requests = plan_requests(ranges, o.coalesce_gap, o.part_size)
            starts = [r for r, _ in requests]
            # A range within one request is emitted once that request's bytes reach its end (its
            # entries sorted by end, last first, for pop()); one split over parts, when all are in.
            within: list[list[tuple[int, int, int]]] = [[] for _ in requests]
            spanning: list[int] = []
            for i, (off, n) in enumerate(ranges):
                if n == 0:
                    emit(i, b"")
                    continue
                k = bisect.bisect_right(starts, off) - 1
                ro, rn = requests[k]
                if off + n <= ro + rn:
                    within[k].append((off + n - ro, off - ro, i))
                else:
                    spanning.append(i)
            for w in within:
                w.sort(reverse=True)

            def progress(k: int) -> Callable[[Any, int], None]:
                todo = within[k]

                def on(buffer: Any, n: int) -> None:
                    while todo and todo[-1][0] <= n:
                        end, start, i = todo.pop()
                        with memoryview(buffer) as view, view[start:end] as part:
                            emit(i, bytes(part))
                return on

            bodies = await asyncio.gather(*(t.fetch_range(self.urls, off, n, auth=self.auth, what=self.name,
                                                          total=self._size, progress=progress(k))
                                            for k, (off, n) in enumerate(requests)))
            if spanning:
                for i, data in zip(spanning, _assemble([ranges[i] for i in spanning], requests, list(bodies))):
                    emit(i, data)

    def iter_ranges(self, ranges: Sequence[Range]) -> Iterator[tuple[int, bytes]]:
        """``(i, bytes of ranges[i])`` for every range, each as soon as it has arrived, in arrival order.

        The requests are :meth:`read_ranges`' (coalesced, parallel, retried), but
        a range is handed over when its own last byte is in, not when its whole
        request is: a prefetch stores (and releases to a waiting reader) the
        first frames of a 4 MiB request while the rest is still on the way.
        The bytes are **not checked** against any digest: the caller checks.
        Leaving the loop early cancels what is still being fetched.
        """
        ranges = list(ranges)
        arrived: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        future = self.transport.submit(self._stream_ranges(ranges, lambda i, data: arrived.put((i, data))))
        future.add_done_callback(lambda _: arrived.put(None))
        try:
            while (item := arrived.get()) is not None:
                yield item
            future.result()  # (raises what ended the fetch early)
        finally:
            if not future.done():
                future.cancel()

    def read(self, offset: int, size: int, digest: str | None = None) -> bytes:
        """``size`` bytes at ``offset`` (split into parallel parts when large)."""
        return self.read_ranges([(offset, size)], None if digest is None else [digest])[0]

    async def _fetch_into(self, buffer: Any, offset: int, digest: str | None) -> int:
        t, o = self.transport, self.transport.options
        view = memoryview(buffer).cast("B")
        size = len(view)
        _check_ranges([(offset, size)], self._size, self.name)
        with t.deadline_scope():  # one deadline for the parts, their retries and the re-fetch
            parts = plan_requests([(offset, size)], 0, o.part_size)
            await asyncio.gather(*(t.fetch_range(self.urls, off, n, auth=self.auth, what=self.name, total=self._size,
                                                 into=view[off - offset:off - offset + n]) for off, n in parts))
            if digest is not None and sha256_of(view) != digest:
                t.stats.digest_mismatches += 1
                await t.fetch_range(self.urls, offset, size, auth=self.auth, digest=digest, what=self.name,
                                    into=view, total=self._size)
        return size

    def readinto(self, buffer: Any, offset: int, digest: str | None = None) -> int:
        """Fill ``buffer`` (any writable buffer) with the bytes at ``offset``: no copy beyond the socket's.

        Large reads are split into parallel parts, each written straight to its
        place.  Returns ``len(buffer)``.
        """
        return self.transport.run(self._fetch_into(buffer, offset, digest))

    async def areadinto(self, buffer: Any, offset: int, digest: str | None = None) -> int:
        """:meth:`readinto` from any event loop."""
        return await self.transport.call_soon(self._fetch_into(buffer, offset, digest))

    def __call__(self, offset: int, size: int) -> bytes:
        return self.read(offset, size)

    def read_all(self) -> bytes:
        """The whole blob, verified against ``digest`` when it is known."""
        return self.read_ranges([(0, self.size)], None if self.digest is None else [self.digest])[0]

    def open(self, readahead: int | None = None) -> io.BufferedReader:
        """A seekable binary file that fetches ahead of a sequential reader, in parallel parts."""
        return io.BufferedReader(_BlobStream(self, readahead), buffer_size=1 << 20)

    def __repr__(self) -> str:
        return f"HttpBlob({self.name!r}, size={self._size}, mirrors={len(self.urls) - 1})"


class _BlobStream(io.RawIOBase):
    """Sequential reads of an :class:`HttpBlob` with a growing window of parts in flight.

    The part being read is fetched with the parts after it: how many is the
    :class:`~lazylayer.remote.readahead.ReadAhead` policy's window, counted
    in parts (one at the first read, doubling with every part read in
    order, up to ``readahead`` bytes in flight); a seek elsewhere cancels
    what is in flight.  Memory is bounded by the window.
    """

    def __init__(self, blob: HttpBlob, readahead: int | None) -> None:
        super().__init__()
        self.blob = blob
        o = blob.transport.options
        self.part = o.part_size
        in_flight = max(1, (readahead if readahead is not None else o.readahead) // self.part)
        self.ra = ReadAhead(1, in_flight - 1, after=0)  # parts ahead of the one being read
        self.pos = 0
        self.last = -1
        self.parts: dict[int, concurrent.futures.Future[bytes]] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = seek_position(self.pos, offset, whence, lambda: self.blob.size)
        return self.pos

    def _schedule(self, first: int, end: int, size: int) -> None:
        t = self.blob.transport
        for j in range(first, min(end, -(-size // self.part))):
            if j not in self.parts:
                off = j * self.part
                n = min(self.part, size - off)
                self.parts[j] = t.submit(t.fetch_range(self.blob.urls, off, n, auth=self.blob.auth,
                                                       what=self.blob.name, total=self.blob._size))

    def readinto(self, b: Any) -> int:
        size = self.blob.size
        if self.pos >= size or len(b) == 0:
            return 0
        idx = self.pos // self.part
        ahead = None
        if idx != self.last:  # a new part: a step of the run, or a seek
            ahead = self.ra.read(idx, idx + 1)
            if self.ra.steps == 0:
                self._cancel()
        self._schedule(idx, idx + 1, size)
        if ahead is not None:
            self._schedule(*ahead, size)
        data = self.parts[idx].result()
        for j in [j for j in self.parts if j < idx]:
            self.parts.pop(j).cancel()
        self.last = idx
        start = self.pos - idx * self.part
        n = min(len(b), len(data) - start)
        b[:n] = data[start:start + n]
        self.pos += n
        if start + n == len(data):
            self.parts.pop(idx, None)
        return n

    def _cancel(self) -> None:
        for fut in self.parts.values():
            fut.cancel()
        self.parts.clear()

    def close(self) -> None:
        self._cancel()
        super().close()


class FsspecBlob:
    """A blob at any fsspec URL (``file://``, ``s3://``, ``gs://``, ...), read through fsspec itself.

    fsspec's filesystems do their own connection pooling and retries; errors
    are mapped to lazylayer's (:class:`~lazylayer.errors.NotFoundError`,
    :class:`~lazylayer.errors.RemoteError`).
    """

    def __init__(self, url: str, *, digest: str | None = None, size: int | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.fs, self.path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.url = url
        self.digest = digest
        self._size = size

    def _wrap(self, exc: Exception) -> errors.RemoteError:
        if isinstance(exc, FileNotFoundError):
            return errors.NotFoundError(f"{self.url}: not found", url=self.url)
        return errors.RemoteError(f"{self.url}: {type(exc).__name__}: {exc}", url=self.url)

    @property
    def size(self) -> int:
        if self._size is None:
            try:
                self._size = int(self.fs.size(self.path))
            except Exception as exc:  # noqa: BLE001 - fsspec backends raise anything
                raise self._wrap(exc) from None
        return self._size

    def read_ranges(self, ranges: Sequence[Range], digests: Sequence[str | None] | None = None) -> list[bytes]:
        ranges = list(ranges)
        _check_ranges(ranges, self.size, self.url)
        try:
            out = self.fs.cat_ranges([self.path] * len(ranges), [o for o, _ in ranges],
                                     [o + n for o, n in ranges], on_error="raise")
        except Exception as exc:  # noqa: BLE001
            raise self._wrap(exc) from None
        for (off, n), data, want in zip(ranges, out, digests or [None] * len(ranges)):
            if len(data) != n:
                raise errors.RemoteError(f"{self.url}: {len(data)} bytes for a read of {n} at {off}", url=self.url)
            if want is not None and sha256_of(data) != want:
                raise errors.IntegrityError(f"{self.url}: bytes {off}-{off + n - 1} do not match {want}")
        return list(out)

    def iter_ranges(self, ranges: Sequence[Range]) -> Iterator[tuple[int, bytes]]:
        """``(i, bytes of ranges[i])`` for every range (all at once: fsspec reads them together)."""
        yield from enumerate(self.read_ranges(ranges))

    def read(self, offset: int, size: int, digest: str | None = None) -> bytes:
        return self.read_ranges([(offset, size)], None if digest is None else [digest])[0]

    def __call__(self, offset: int, size: int) -> bytes:
        return self.read(offset, size)

    def read_all(self) -> bytes:
        return self.read(0, self.size, self.digest)

    def open(self) -> io.BufferedIOBase:
        try:
            return self.fs.open(self.path, "rb")
        except Exception as exc:  # noqa: BLE001
            raise self._wrap(exc) from None

    def __repr__(self) -> str:
        return f"FsspecBlob({self.url!r})"


def open_blob(url: str, *, transport: Transport | None = None, digest: str | None = None,
              size: int | None = None, mirrors: Sequence[str] = (),
              storage_options: dict[str, Any] | None = None) -> HttpBlob | FsspecBlob:
    """A blob at ``url``: ``http(s)://`` through lazylayer's engine, any other scheme through fsspec.

    ``mirrors`` are full URLs of the same blob, tried before ``url``.  A plain
    path is a local file.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return HttpBlob([*mirrors, url], transport or default_transport(), digest=digest, _size=size)
    if mirrors:
        raise ValueError("mirrors are supported for http(s) URLs only")
    return FsspecBlob(url, digest=digest, size=size, storage_options=storage_options)
