"""Seekable zstd: read any byte range of a compressed stream, and write the format.

The format is the standard zstd seekable format (facebook/zstd
``contrib/seekable_format``): independent zstd frames followed by a seek table
in a skippable frame, so any zstd tool can still decompress the whole stream.

:class:`SeekableReader` reads ranges of the *uncompressed* stream out of a
blob held in memory, in a local file, or behind a callable that returns
compressed byte ranges (a network fetch).  The C core does the work with the
GIL released: it finds the frames a read touches, asks the source for their
compressed bytes, decodes them (several at once on a :class:`WorkerPool`) and
keeps decompressed frames in a :class:`BlockCache` with a hard byte budget.

:class:`SeekableWriter` is a binary file object that writes the format.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from typing import Any, Callable, Iterable, NamedTuple, Union

from .. import errors
from ._lib import callback_status, check, ffi, lib, raise_status, strerror

__all__ = [
    "BlockCache",
    "CacheStats",
    "FrameInfo",
    "SeekableReader",
    "SeekableWriter",
    "WorkerPool",
    "build_seek_table",
    "default_cache",
    "default_pool",
    "parse_seek_table",
    "seek_table_size",
]

DEFAULT_FRAME_SIZE: int = lib.LL_DEFAULT_FRAME_SIZE
DEFAULT_MAX_FRAME_SIZE: int = lib.LL_DEFAULT_MAX_FRAME_SIZE
DEFAULT_CACHE_BYTES = 256 << 20

Fetch = Callable[[int, int], bytes]
"""A source callable: ``fetch(offset, size)`` returns exactly ``size`` bytes of the blob."""

BytesLike = Union[bytes, bytearray, memoryview]


class CacheStats(NamedTuple):
    """Counters of a :class:`BlockCache`; bytes are decompressed bytes."""

    hits: int
    misses: int
    inserts: int
    evictions: int
    bypasses: int
    bytes: int
    peak_bytes: int
    entries: int
    budget: int

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class FrameInfo(NamedTuple):
    """Where one frame lies in the compressed blob and in the uncompressed stream."""

    compressed_offset: int
    compressed_size: int
    offset: int
    size: int
    checksum: int | None


class BlockCache:
    """Decompressed frames shared by any number of readers, never above ``budget`` bytes.

    Frames being read are pinned and never freed under a reader; when the whole
    budget is pinned, reads decode without caching (``stats().bypasses``).
    """

    def __init__(self, budget: int = DEFAULT_CACHE_BYTES) -> None:
        if budget < 0:
            raise ValueError("budget must be >= 0")
        out = ffi.new("ll_cache **")
        check(lib.ll_cache_create(budget, out), "creating a block cache")
        self._ptr = ffi.gc(out[0], lib.ll_cache_free)

    @property
    def budget(self) -> int:
        return self.stats().budget

    @budget.setter
    def budget(self, value: int) -> None:
        if value < 0:
            raise ValueError("budget must be >= 0")
        lib.ll_cache_set_budget(self._ptr, value)

    def stats(self) -> CacheStats:
        s = ffi.new("ll_cache_stats *")
        lib.ll_cache_get_stats(self._ptr, s)
        return CacheStats(s.hits, s.misses, s.inserts, s.evictions, s.bypasses, s.bytes,
                          s.peak_bytes, s.entries, s.budget)

    @property
    def pool_bytes(self) -> int:
        """Bytes of freed frame buffers kept for reuse (at most budget/8, 4..32 MiB; not in the budget)."""
        return lib.ll_cache_pool_bytes(self._ptr)

    def clear(self) -> None:
        """Drop every frame no reader is using."""
        lib.ll_cache_clear(self._ptr)

    def __repr__(self) -> str:
        s = self.stats()
        return f"<BlockCache {s.bytes}/{s.budget} bytes, {s.entries} frames, hit ratio {s.hit_ratio:.2f}>"


class WorkerPool:
    """Threads that decode (or compress) the frames of one call in parallel.

    ``threads`` counts the calling thread, which works too: ``WorkerPool(2)``
    starts one worker thread.
    """

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        out = ffi.new("ll_pool **")
        check(lib.ll_pool_create(threads - 1, out), f"starting {threads - 1} worker threads")
        self._ptr = ffi.gc(out[0], lib.ll_pool_free)
        self.threads = threads

    def __repr__(self) -> str:
        return f"<WorkerPool threads={self.threads}>"


# Process-wide defaults, made on first use.  A forked child gets new ones: the
# parent's worker threads do not exist there (the old objects are left alone).
_defaults_lock = threading.Lock()
_default_cache: BlockCache | None = None
_default_pool: WorkerPool | None = None


def default_cache() -> BlockCache:
    """The cache readers share unless told otherwise.

    Its budget is ``LAZYLAYER_MEMORY_CACHE_MB`` MiB (default 256).
    """
    global _default_cache
    with _defaults_lock:
        if _default_cache is None:
            mb = os.environ.get("LAZYLAYER_MEMORY_CACHE_MB")
            _default_cache = BlockCache(int(mb) << 20 if mb else DEFAULT_CACHE_BYTES)
        return _default_cache


def default_pool() -> WorkerPool:
    """The pool readers and writers share unless told otherwise: one thread per CPU."""
    global _default_pool
    with _defaults_lock:
        if _default_pool is None:
            _default_pool = WorkerPool(max(1, len(os.sched_getaffinity(0))))
        return _default_pool


def _after_fork_in_child() -> None:
    global _default_cache, _default_pool, _defaults_lock, _live_lock
    _defaults_lock = threading.Lock()
    _live_lock = threading.Lock()
    # Never free the parent's objects here: the pool's threads do not exist in
    # the child and the cache's locks may have been held at fork time.
    _leaked.extend(x for x in (_default_pool, _default_cache) if x is not None)
    _default_cache = None
    _default_pool = None


_leaked: list[Any] = []
os.register_at_fork(after_in_child=_after_fork_in_child)

_DEFAULT: Any = object()


def _resolve_pool(threads: int | None) -> WorkerPool | None:
    if threads is None:
        return default_pool()
    if threads < 1:
        raise ValueError("threads must be >= 1 (or None for the shared pool)")
    return None if threads == 1 else WorkerPool(threads)


def seek_table_size(tail: BytesLike, blob_size: int) -> int:
    """Bytes the seek table takes at the end of a ``blob_size``-byte blob, from its last bytes.

    ``tail`` is the end of the blob (at least 9 bytes for a definite answer).
    """
    buf = ffi.from_buffer(tail)
    out = ffi.new("uint64_t *")
    try:
        rc = lib.ll_seektable_tail_size(buf, len(buf), blob_size, out)
    finally:
        ffi.release(buf)  # see SeekableReader.readinto
    if rc not in (lib.LL_OK, lib.LL_ERR_NEED_MORE):
        raise_status(rc, "reading the seek table footer")
    return out[0]


def build_seek_table(frames: Iterable[tuple[int, int]]) -> bytes:
    """A seek table (without checksums) listing ``(compressed_size, size)`` frames, as bytes.

    For a reader that already knows a blob's frames from a verified index: the
    table it gets needs no fetch and no trust in the blob's own table.
    """
    sizes = list(frames)
    body = b"".join(struct.pack("<II", c, d) for c, d in sizes)
    footer = struct.pack("<IBI", len(sizes), 0, lib.LL_SEEKABLE_MAGIC)
    return struct.pack("<II", lib.LL_SKIPPABLE_MAGIC, len(body) + len(footer)) + body + footer


def parse_seek_table(tail: BytesLike, blob_size: int) -> list[FrameInfo]:
    """Every frame listed by the seek table at the end of ``tail`` (the end of the blob)."""
    buf = ffi.from_buffer(tail)
    table = ffi.new("ll_seektable **")
    need = ffi.new("uint64_t *")
    size = len(buf)
    try:
        rc = lib.ll_seektable_parse(buf, size, blob_size, table, need)
    finally:
        ffi.release(buf)  # see SeekableReader.readinto
    if rc == lib.LL_ERR_NEED_MORE:
        raise errors.FormatError(f"the seek table needs the last {need[0]} bytes, got {size}")
    check(rc, "parsing the seek table")
    try:
        info = ffi.new("ll_frame_info *")
        frames = []
        for i in range(lib.ll_seektable_num_frames(table[0])):
            lib.ll_seektable_frame(table[0], i, info)
            frames.append(FrameInfo(info.c_offset, info.c_size, info.d_offset, info.d_size,
                                    info.checksum if info.has_checksum else None))
        return frames
    finally:
        lib.ll_seektable_free(table[0])


class _CallbackSource:
    """Adapts ``fetch(offset, size) -> bytes`` to the C read callback.

    An exception raised by ``fetch`` is kept per thread and re-raised by the
    call that made C ask for the bytes: a lazylayer error as it is (so an
    :class:`~lazylayer.errors.IntegrityError` stays one), anything else as the
    cause of a :class:`~lazylayer.errors.SourceError`.  The callback also hands
    C the matching status (:func:`._lib.callback_status`: e.g. LL_ERR_CHECKSUM
    for a :class:`~lazylayer.errors.ChecksumError`, else LL_ERR_IO), which the C
    library passes through, so the status agrees with the exception.
    """

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch
        self.failure = threading.local()
        self.handle = ffi.new_handle(self)

    def take_failure(self) -> BaseException | None:
        exc = getattr(self.failure, "exc", None)
        self.failure.exc = None
        return exc


@ffi.def_extern()
def _ll_py_read(opaque: Any, offset: int, size: int, dst: Any) -> int:
    src: _CallbackSource = ffi.from_handle(opaque)
    try:
        data = src.fetch(offset, size)
        if len(data) != size:
            raise errors.SourceError(
                f"source returned {len(data)} bytes for a read of {size} at offset {offset}"
            )
        ffi.memmove(dst, data, size)
        return 0
    except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
        src.failure.exc = exc
        return callback_status(exc)


_SCRATCH_SIZE = 256 << 10
_scratch = threading.local()  # per-thread buffer for small pread() calls
_UNSET: Any = object()


def scratch_read(size: int, exact: int, read: Callable[[Any], int]) -> bytes:
    """``read(buf)`` into a C buffer of at least ``size`` bytes; the ``n`` bytes it says it read.

    Small reads go through this thread's scratch buffer and are copied once, into
    the bytes returned; a bigger one gets a buffer of ``exact`` bytes (what it can
    return at most).  The scratch buffer is taken while in use, so a source
    callback that itself reads through lazylayer allocates its own.
    """
    scratch = None
    if size <= _SCRATCH_SIZE:
        scratch = getattr(_scratch, "buf", _UNSET)
        if scratch is _UNSET:
            scratch = ffi.new("char[]", _SCRATCH_SIZE)
        _scratch.buf = None
    buf = scratch if scratch is not None else ffi.new("char[]", exact)
    try:
        return ffi.unpack(buf, read(buf))
    finally:
        if scratch is not None:
            _scratch.buf = scratch


# What each live C reader or writer works through (its source or sink, cache,
# pool, file), by the object's address.  A module-level dict, not a closure:
# the garbage collector, tearing down a cycle that holds a reader, may clear a
# closure's references in any order, and a cache or pool freed before its
# reader is a crash.  Entries leave only once the C object is freed.
_live: dict[int, tuple[Callable[[Any], None], int | None, object]] = {}
_live_lock = threading.Lock()


def _address(ptr: Any) -> int:
    return int(ffi.cast("uintptr_t", ptr))


def _release(ptr: Any) -> None:
    """Free a C object, then close its file and let go of what it used."""
    if _live is None:  # the interpreter is tearing this module down: the process is exiting
        return
    with _live_lock:
        free, fd, _ = _live.pop(_address(ptr))
    free(ptr)
    if fd is not None:
        os.close(fd)


def _owned(ptr: Any, free: Callable[[Any], None], keep: object, fd: int | None = None) -> Any:
    """``ptr`` as a cdata that frees it (with ``free``) when the last reference goes;
    ``keep`` and ``fd`` live until then."""
    with _live_lock:
        _live[_address(ptr)] = (free, fd, keep)
    return ffi.gc(ptr, _release)


class SeekableReader:
    """Random access to the uncompressed data of a seekable zstd blob.

    ``source`` is one of:

    - a bytes-like object holding the whole blob (kept referenced, not copied);
    - a path to a local file (read with ``pread``, no Python in the loop);
    - a callable ``fetch(offset, size) -> bytes`` returning compressed ranges,
      with ``blob_size`` giving the blob's total size, and optionally ``tail``,
      the blob's last bytes (at least its seek table), to save two fetches.

    ``cache`` is a :class:`BlockCache` (default: the shared one) or ``None``.
    ``threads`` sets how many threads decode a read that spans several frames:
    ``None`` uses the shared :func:`default_pool`, ``1`` decodes on the calling
    thread only.  ``verify`` checks the seek table's per-frame checksums when
    the blob has them.  ``max_frame_size`` refuses blobs whose frames are larger
    (a bound on the memory a hostile seek table can make us allocate).
    ``cache_key`` lets several readers of the *same* blob share cached frames.
    ``whole_frames``: a read that misses the cache decodes and caches its whole
    frame rather than the prefix it needs — right when fetching a frame again
    costs more than decoding the rest of it (remote sources, reads that go on
    through the frame).

    All methods are safe to call from many threads at once; the GIL is released
    while C works.
    """

    def __init__(
        self,
        source: BytesLike | str | os.PathLike[str] | Fetch,
        *,
        blob_size: int | None = None,
        cache: BlockCache | None = _DEFAULT,
        threads: int | None = None,
        verify: bool = True,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        cache_key: int = 0,
        name: str | None = None,
        tail: BytesLike | None = None,
        whole_frames: bool = False,
    ) -> None:
        self._ptr: Any = None
        self._fd: int | None = None
        self._callback: _CallbackSource | None = None
        self.cache = default_cache() if cache is _DEFAULT else cache
        self.pool = _resolve_pool(threads)

        table = ffi.new("ll_seektable **")
        if callable(source):
            if blob_size is None:
                raise TypeError("blob_size is required when the source is a callable")
            self.name = name or getattr(source, "__name__", "callable source")
            self._callback = _CallbackSource(source)
            read_fn, opaque = lib._ll_py_read, self._callback.handle
            if tail is not None:  # the caller already has the blob's last bytes
                buf = ffi.from_buffer(tail)
                try:
                    rc = lib.ll_seektable_parse(buf, len(buf), blob_size, table, ffi.NULL)
                finally:
                    ffi.release(buf)  # see readinto
                self._check(rc, "parsing the seek table")
            else:
                rc = lib.ll_seektable_load(read_fn, opaque, blob_size, table)
                self._check(rc, "reading the seek table")
        elif isinstance(source, (str, os.PathLike)):
            self.name = name or os.fspath(source)
            self._fd = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            blob_size = os.fstat(self._fd).st_size
            self._fdbox = ffi.new("int *", self._fd)
            read_fn, opaque = ffi.addressof(lib, "ll_fd_read"), self._fdbox
            try:
                self._check(lib.ll_seektable_load(read_fn, opaque, blob_size, table), "reading the seek table")
            except BaseException:
                os.close(self._fd)
                self._fd = None
                raise
        else:
            view = memoryview(source).cast("B")
            self.name = name or f"<{len(view)} bytes in memory>"
            blob_size = len(view)
            self._buffer = ffi.from_buffer(view)
            self._mem = ffi.new("ll_mem_source *", {"data": self._buffer, "size": blob_size})
            read_fn, opaque = ffi.addressof(lib, "ll_mem_read"), self._mem
            need = ffi.new("uint64_t *")
            rc = lib.ll_seektable_parse(self._buffer, blob_size, blob_size, table, need)
            self._check(rc, "parsing the seek table")

        opts = ffi.new("ll_reader_options *")
        check(lib.ll_reader_options_init(opts, ffi.sizeof(opts[0])), "initialising reader options")
        opts.cache = self.cache._ptr if self.cache is not None else ffi.NULL
        opts.pool = self.pool._ptr if self.pool is not None else ffi.NULL
        opts.source_key = cache_key
        opts.verify_checksums = int(bool(verify))
        opts.max_frame_size = max_frame_size
        opts.whole_frames = int(bool(whole_frames))
        out = ffi.new("ll_reader **")
        rc = lib.ll_reader_create(table[0], read_fn, opaque, opts, out)
        if rc != lib.LL_OK:
            lib.ll_seektable_free(table[0])
            if self._fd is not None:
                os.close(self._fd)
            if rc == lib.LL_ERR_LIMIT:
                raise errors.LimitError(
                    f"{self.name}: a frame exceeds max_frame_size={max_frame_size} bytes "
                    "(or its compressed size is implausible); raise max_frame_size if the blob is trusted"
                )
            raise_status(rc, f"{self.name}: creating the reader")
        # The C reader, and everything it reads through, lives as long as this
        # cdata: a read in progress holds a reference to it, so close() (which
        # drops ours) frees it at once when idle, or when the last read returns.
        keep = (opaque, self._callback, getattr(self, "_buffer", None), self.cache, self.pool)
        self._ptr = _owned(out[0], lib.ll_reader_free, keep, self._fd)
        st = lib.ll_reader_seektable(self._ptr)
        self.size: int = lib.ll_reader_size(self._ptr)
        """Size of the uncompressed stream in bytes."""
        self.frames: int = lib.ll_seektable_num_frames(st)
        """Number of frames (including skippable ones) in the seek table."""
        self.blob_size: int = blob_size
        self.has_checksums: bool = bool(lib.ll_seektable_has_checksums(st))

    # -- errors ---------------------------------------------------------------

    def _check(self, rc: int, what: str) -> None:
        if rc >= 0:
            return
        cause = self._callback.take_failure() if self._callback is not None else None
        if rc == lib.LL_ERR_IO and cause is None and self._fd is not None:
            cause = OSError("pread failed or the file is shorter than its seek table says")
        if isinstance(cause, errors.LazyLayerError):
            raise cause  # already typed (IntegrityError, RemoteError...) and says what failed
        raise_status(rc, f"{self.name}: {what}", cause)

    # -- reading --------------------------------------------------------------

    def _closed(self) -> ValueError:
        return ValueError(f"{self.name}: I/O on a closed reader")

    def readinto(self, buffer: Any, offset: int) -> int:
        """Read ``len(buffer)`` bytes at ``offset`` straight into ``buffer``.

        Returns the number of bytes read: fewer only at the end of the stream.
        """
        ptr = self._ptr
        if ptr is None:
            raise self._closed()
        if offset < 0:
            raise ValueError("offset must be >= 0")
        try:
            dst = ffi.from_buffer(buffer, require_writable=True)
        except BufferError:
            raise TypeError("readinto() needs a writable bytes-like object") from None
        # Released before any exception leaves: a buffer export held by a
        # traceback's frame can crash the garbage collector (memoryview exporters).
        size = len(dst)
        try:
            n = lib.ll_reader_read(ptr, offset, dst, size)
        finally:
            ffi.release(dst)
        if n < 0:
            self._check(n, f"reading {size} bytes at offset {offset}")
        return n

    def pread(self, size: int, offset: int) -> bytes:
        """Return ``size`` bytes at ``offset`` (fewer at the end of the stream)."""
        ptr = self._ptr
        if ptr is None:
            raise self._closed()
        if size < 0 or offset < 0:
            raise ValueError("size and offset must be >= 0")
        def read(buf: Any) -> int:
            n = lib.ll_reader_read(ptr, offset, buf, size)
            if n < 0:
                self._check(n, f"reading {size} bytes at offset {offset}")
            return n

        return scratch_read(size, max(0, min(size, self.size - offset)), read)

    def frame(self, index: int) -> FrameInfo:
        """Position and sizes of frame ``index``."""
        ptr = self._ptr
        if ptr is None:
            raise self._closed()
        info = ffi.new("ll_frame_info *")
        if lib.ll_seektable_frame(lib.ll_reader_seektable(ptr), index, info) != lib.LL_OK:
            raise IndexError(f"frame {index} out of range (0..{self.frames - 1})")
        return FrameInfo(info.c_offset, info.c_size, info.d_offset, info.d_size,
                         info.checksum if info.has_checksum else None)

    def cache_stats(self) -> CacheStats | None:
        """Counters of this reader's cache (shared with other readers), or None."""
        return self.cache.stats() if self.cache is not None else None

    def open(self, buffer_size: int = io.DEFAULT_BUFFER_SIZE) -> io.BufferedReader:
        """A seekable binary file object over the uncompressed stream."""
        return io.BufferedReader(_RawStream(self), buffer_size=buffer_size)

    # -- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Release the reader (and its file).  Reads in progress finish first;
        later ones raise ``ValueError``."""
        self._ptr = None

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def __enter__(self) -> SeekableReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SeekableReader {self.name!r} size={self.size} frames={self.frames}>"


def seek_position(pos: int, offset: int, whence: int, size: Callable[[], int]) -> int:
    """The position ``seek(offset, whence)`` moves a stream at ``pos`` to (``size()`` only for SEEK_END)."""
    if whence == io.SEEK_SET:
        base = 0
    elif whence == io.SEEK_CUR:
        base = pos
    elif whence == io.SEEK_END:
        base = size()
    else:
        raise ValueError(f"invalid whence {whence!r}")
    if base + offset < 0:
        raise ValueError("negative seek position")
    return base + offset


class _RawStream(io.RawIOBase):
    """A file position over a :class:`SeekableReader` (see :meth:`SeekableReader.open`)."""

    def __init__(self, reader: SeekableReader) -> None:
        self._reader = reader
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._reader.readinto(buffer, self._pos)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = seek_position(self._pos, offset, whence, lambda: self._reader.size)
        return self._pos

    def tell(self) -> int:
        return self._pos


class _Sink:
    """Adapts a binary file to the C write callback, keeping its exception."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.exc: BaseException | None = None
        self.handle = ffi.new_handle(self)


@ffi.def_extern()
def _ll_py_write(opaque: Any, src: Any, size: int) -> int:
    sink: _Sink = ffi.from_handle(opaque)
    try:
        view = memoryview(ffi.buffer(src, size))
        while view:
            n = sink.file.write(view)
            if n is None:
                raise BlockingIOError("the destination file is non-blocking and not ready")
            view = view[n:]
        return 0
    except BaseException as exc:  # noqa: BLE001 - re-raised by the writer method
        sink.exc = exc
        return callback_status(exc)


class SeekableWriter(io.RawIOBase):
    """A binary file object that writes the zstd seekable format.

    Data is cut into frames of ``frame_size`` uncompressed bytes, or earlier
    with :meth:`end_frame`.  ``close()`` writes the seek table; leaving a
    ``with`` block by an exception does *not*, so a failed write never looks
    like a complete file.  ``threads`` compresses that many frames at once
    (``None``: the shared pool, one per CPU).  ``stored``: no compression, each
    frame a zstd frame of raw blocks (any zstd decoder reads it at the speed of
    a copy): for data kept on local disk, where CPU time costs more than space.
    """

    def __init__(
        self,
        file: str | os.PathLike[str] | Any,
        *,
        frame_size: int = DEFAULT_FRAME_SIZE,
        level: int = 3,
        checksum: bool = True,
        threads: int | None = None,
        stored: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < frame_size <= lib.LL_MAX_FRAME_SIZE:
            raise ValueError(f"frame_size must be in 1..{lib.LL_MAX_FRAME_SIZE}")
        self._owns_file = isinstance(file, (str, os.PathLike))
        target: Any = open(file, "wb") if isinstance(file, (str, os.PathLike)) else file
        self._sink = _Sink(target)
        self._pool = _resolve_pool(threads)
        opts = ffi.new("ll_writer_options *")
        check(lib.ll_writer_options_init(opts, ffi.sizeof(opts[0])), "initialising writer options")
        opts.level = level
        opts.frame_size = frame_size
        opts.checksum = int(bool(checksum))
        opts.stored = int(bool(stored))
        opts.pool = self._pool._ptr if self._pool is not None else ffi.NULL
        out = ffi.new("ll_writer **")
        rc = lib.ll_writer_create(opts, lib._ll_py_write, self._sink.handle, out)
        if rc != lib.LL_OK:
            if self._owns_file:
                target.close()
            raise ValueError(f"invalid writer options (level={level}, frame_size={frame_size}): {strerror(rc)}")
        self._ptr = _owned(out[0], lib.ll_writer_free, (self._sink, self._pool))
        self._finished = False

    def _check(self, rc: int, what: str) -> None:
        if rc == lib.LL_OK:
            return
        if rc < 0 and self._sink.exc is not None:  # the sink failed (rc: callback_status(exc))
            exc, self._sink.exc = self._sink.exc, None
            raise exc
        raise_status(rc, what)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed SeekableWriter")
        src = ffi.from_buffer(data)
        size = len(src)
        try:
            rc = lib.ll_writer_write(self._ptr, src, size)
        finally:
            ffi.release(src)  # see SeekableReader.readinto
        self._check(rc, "compressing")
        return size

    def end_frame(self) -> None:
        """Start a new frame at this point (nothing happens if the frame is empty)."""
        self._check(lib.ll_writer_end_frame(self._ptr), "ending a frame")

    def flush(self) -> None:
        """End the current frame and write every pending frame to the file now."""
        if not self.closed and not self._finished:  # IOBase.close() calls flush() too
            self._check(lib.ll_writer_flush(self._ptr), "flushing")

    def add_skippable(self, data: bytes, variant: int = 0) -> None:
        """Insert a zstd skippable frame (magic 0x184D2A50 + variant) holding ``data``."""
        src = ffi.from_buffer(data)
        try:
            rc = lib.ll_writer_add_skippable(self._ptr, variant, src, len(src))
        finally:
            ffi.release(src)  # see SeekableReader.readinto
        self._check(rc, "writing a skippable frame")

    def tell(self) -> int:
        """Uncompressed bytes written so far."""
        return lib.ll_writer_bytes_in(self._ptr)

    @property
    def compressed_size(self) -> int:
        return lib.ll_writer_bytes_out(self._ptr)

    @property
    def frames(self) -> int:
        return lib.ll_writer_frames(self._ptr)

    def frame_sizes(self) -> list[int]:
        """Decompressed size of each frame written so far (0 for skippable frames)."""
        d = ffi.new("uint32_t *")
        sizes = []
        for i in range(lib.ll_writer_frames(self._ptr)):
            lib.ll_writer_frame(self._ptr, i, ffi.NULL, d)
            sizes.append(d[0])
        return sizes

    def frame_sha256s(self) -> list[str]:
        """The sha256 (hex) of each frame written so far, as written (hashed in C, on the threads
        that compressed them)."""
        out = ffi.new("uint8_t[32]")
        digests = []
        for i in range(lib.ll_writer_frames(self._ptr)):
            lib.ll_writer_frame_sha256(self._ptr, i, out)
            digests.append(bytes(ffi.buffer(out, 32)).hex())
        return digests

    def close(self) -> None:
        """Write the last frame and the seek table, then close (and the file, if we opened it)."""
        if self.closed:
            return
        try:
            if not self._finished:
                self._finished = True
                self._check(lib.ll_writer_finish(self._ptr), "writing the seek table")
                flush = getattr(self._sink.file, "flush", None)
                if flush is not None:
                    flush()
        finally:
            self._close_file()

    def abort(self) -> None:
        """Close without writing the seek table: the output is not a valid seekable blob."""
        self._finished = True
        self._close_file()

    def _close_file(self) -> None:
        try:
            if self._owns_file:
                self._sink.file.close()
        finally:
            super().close()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
