"""Re-encode a layer blob of any compression (gzip, zstd, plain tar) as a lazy layer.

The converter writes compressed frames; the image reader, for a layer that is
not lazy, stored ones (``LayerWriter(stored=True)``: the tar kept as is in zstd
raw blocks, so the decoding keeps up with the stream and reads cost a copy).

One pass over the source: a background thread reads the blob and decompresses
it (gzip with ISA-L's inflate, zstd, or plain tar) into a bounded queue; the
calling thread walks the tar and feeds the :class:`~lazylayer.format.LayerWriter`,
whose frames are compressed on the worker pool.  Memory stays bounded whatever
the layer size.  The converter uses it for every layer it converts, and the
image reader for a layer that is not lazy (fetched whole, then indexed locally).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

import zstandard

from .. import errors, oci
from ..progress import Progress
from .layer import LayerInfo, LayerWriter

ARCHIVE_MEMBER = "io.lazylayer.docker-archive.member"
_CHUNK = 1 << 20
_SMALL = 1 << 16  # reads up to this size get bytes even from a memoryview chunk (tar headers, pax records)


# ------------------------------------------------------------------ decompression


def _gunzip(read: Callable[[int], bytes]) -> Iterator[bytes]:
    """Decompress gzip (one member or several, concatenated), with bounded output per step."""
    from isal import (
        isal_zlib,  # ISA-L inflate, ~1.6x zlib's speed: imported only for gzip layers
    )

    d = isal_zlib.decompressobj(31)
    pending = b""
    started = False
    while True:
        if not pending:
            pending = read(_CHUNK)
            if not pending:
                break
        if d.eof:  # a further member follows
            d = isal_zlib.decompressobj(31)
        started = True
        try:
            out = d.decompress(pending, 4 * _CHUNK)
        except isal_zlib.error as exc:  # type: ignore[misc]  # isal's stubs miss it
            raise errors.CorruptFrameError(f"gzip layer is corrupt: {exc}") from None
        pending = d.unconsumed_tail or (d.unused_data if d.eof else b"")
        if out:
            yield out
    if not started or not d.eof:
        raise errors.FormatError("gzip layer is truncated")


def _unzstd(raw: Any) -> Iterator[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=_CHUNK, read_across_frames=True)
    try:
        while True:
            out = reader.read(4 * _CHUNK)
            if not out:
                return
            yield out
    except zstandard.ZstdError as exc:
        raise errors.CorruptFrameError(f"zstd layer is corrupt or truncated: {exc}") from None


def _plain(read: Callable[[int], bytes]) -> Iterator[bytes]:
    while chunk := read(4 * _CHUNK):
        yield chunk


class _Prefixed:
    """A stream with a few already-read bytes put back in front."""

    def __init__(self, head: bytes, raw: Any) -> None:
        self.head = head
        self.raw = raw

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(n)
        if n < 0:
            out, self.head = self.head + self.raw.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out


def decompressed_chunks(raw: Any) -> Iterator[bytes]:
    """The tar inside a layer blob, whatever its compression (sniffed from the magic bytes)."""
    head = raw.read(4)
    src = _Prefixed(head, raw)
    if head[:2] == b"\x1f\x8b":
        yield from _gunzip(src.read)
    elif head == b"\x28\xb5\x2f\xfd":
        yield from _unzstd(src)
    else:
        yield from _plain(src.read)
    if raw.read(1):
        raise errors.FormatError("unexpected data after the end of the compressed layer")


class _Pipe:
    """Runs a chunk iterator on a background thread; ``read(n)`` consumes it.

    The queue is bounded, so at most ``depth`` chunks are in memory.  Chunks
    may be bytes or memoryviews; reads of up to 64 KiB are always bytes.
    """

    def __init__(self, chunks: Iterator[bytes], depth: int = 8) -> None:
        self._q: queue.Queue[Any] = queue.Queue(depth)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._thread = threading.Thread(target=self._run, args=(chunks,), name="lazylayer-decompress",
                                        daemon=True)
        self._thread.start()

    def _run(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                while not self._stop.is_set():
                    try:
                        self._q.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._q.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._q.put(exc)

    def read(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            if self._eof:
                return b""
            item = self._q.get()
            if item is None:
                self._eof = True
                return b""
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            self._buf, self._pos = item, 0
        if self._pos == 0 and n >= len(self._buf) and (n > _SMALL or isinstance(self._buf, bytes)):
            self._pos = len(self._buf)
            return self._buf
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        if n <= _SMALL and not isinstance(out, bytes):
            out = bytes(out)  # (a piece of a memoryview chunk: headers are parsed as bytes)
        return out

    def finish(self) -> None:
        """Wait for the end of the stream (raising the thread's error, if any)."""
        while self.read(_CHUNK):
            pass
        self._thread.join()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.1)
            except queue.Empty:
                pass


class _Counted:
    """Counts bytes read from a stream into a progress bar; stops with an error once ``cancel`` is set."""

    def __init__(self, raw: Any, progress: Progress | None, cancel: threading.Event | None) -> None:
        self.raw = raw
        self.progress = progress
        self.cancel = cancel

    def read(self, n: int = -1) -> bytes:
        if self.cancel is not None and self.cancel.is_set():
            raise errors.LazyLayerError("cancelled")
        data = self.raw.read(n)
        if self.progress is not None:
            self.progress.update(len(data))
        return data


def reencode_layer(source: oci.ImageSource, layer: oci.Descriptor, diff_id: str | None, out: Any,
                   writer: LayerWriter, bar: Progress | None = None, prefetch: Any = (),
                   cancel: threading.Event | None = None, hide: Any = ()) -> LayerInfo:
    """Stream layer ``layer`` of ``source`` (any compression), written as a lazy layer to ``out``.

    ``prefetch``: ``(offset, length)`` tar ranges for the TOC's prefetch plan.
    ``bar`` counts the source's bytes as they are read; setting ``cancel`` makes
    the stream stop with an error at its next read.  ``hide``: names left out
    of the TOC (:meth:`LayerWriter.write`).

    The source blob's digest, and the tar's sha256 against ``diff_id`` (when
    given), are checked once the stream ends: on a mismatch this raises
    :class:`~lazylayer.errors.IntegrityError` and the caller must discard ``out``.
    """
    what = layer.get("digest") or layer.get("annotations", {}).get(ARCHIVE_MEMBER)
    raw = oci.HashingReader(source.open_blob(layer))
    pipe = _Pipe(decompressed_chunks(_Counted(raw, bar, cancel) if bar is not None or cancel is not None else raw))
    try:
        info = writer.write(pipe.read, out, prefetch=prefetch, hide=hide, diff_id=diff_id)
        pipe.finish()
        if layer.get("digest") and raw.digest() != layer["digest"]:
            raise errors.IntegrityError(f"layer {what}: the source blob's digest is {raw.digest()}")
        if diff_id is not None and info.diff_id != diff_id:
            raise errors.IntegrityError(
                f"layer {what}: its tar's sha256 is {info.diff_id} but the config's diff_id is {diff_id}"
            )
        return info
    except errors.LazyLayerError as exc:
        if str(what) in str(exc):
            raise
        raise type(exc)(f"layer {what}: {exc}") from exc  # say which layer
    finally:
        pipe.close()
        raw.raw.close()
