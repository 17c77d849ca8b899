"""Plain gzip layers read lazily as they are, through a seekable index built once.

A gzip layer cannot be read from the middle: deflate refers back up to 32 KiB
into its own output.  :func:`build` reads a layer once (the blob's digest is
checked at its end: an index is only ever made from verified bytes), takes an
inflate checkpoint (:mod:`lazylayer.core.gzindex`, in C) at a deflate block
boundary every :data:`SPAN` bytes of output, names each *span* — the output
from one checkpoint to the next — by its sha256, and walks the tar for its
files.  The result is a raw layer (docs/format.md, "Raw frames") whose frames
are the spans, laid over the tar as it is, and whose chunks
(:class:`~lazylayer.format.estargz.Chunk` with codec ``gzspan``) say where each
span's compressed bytes are and carry its checkpoint: the same image index,
reader, disk cache and prefetcher as eStargz and zstd:chunked chunks.  A span
is fetched (one range request), inflated from its checkpoint in C and checked
against its sha256 before anything sees it.

Why spans are named by the sha256 of their output rather than of their
compressed bytes: the C reader and the disk cache know raw frames by the
digest of their data, and that one check covers the transfer and the inflate
alike; a second digest over the compressed bytes would add a hash and no
guarantee.

Trust: an index proves nothing about the layer unless it was made from the
layer.  One built here (:func:`build`) is kept in the disk cache under the
layer's digest and used by every image that has the layer (docs/filesystem.md,
"Plain gzip layers").
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

from .. import errors
from ..progress import Progress
from .estargz import MAX_CHUNK_SIZE, Chunk, NotSupported, index_layer, is_stargz, load_raw_layer
from .layer import Frame, count_hardlinks, toc_entry
from .tar import TarScanner

log = logging.getLogger("lazylayer")

SPAN = 4 << 20
"""Output bytes between checkpoints (docs/benchmarks.md, "Plain gzip layers indexed": a span is
what one miss fetches; each costs a 32 KiB window in the index)."""
_READ = 1 << 20
GZIP_MEDIA_TYPES = frozenset({"application/vnd.oci.image.layer.v1.tar+gzip",
                              "application/vnd.docker.image.rootfs.diff.tar.gzip",
                              "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"})


def is_gzip_layer(desc: dict[str, Any]) -> bool:
    """A plain gzip layer (not eStargz, which is read through its own TOC)."""
    return desc.get("mediaType") in GZIP_MEDIA_TYPES and not is_stargz(desc)


def cache_name(digest: str) -> str:
    """The disk-cache file name of the index of layer ``digest`` (sha256:...)."""
    return f"gzindex-{digest.removeprefix('sha256:')}"


def load_cached(disk: Any, digest: str) -> tuple[Any, list[Chunk]] | None:
    """The index of layer ``digest`` kept in disk cache ``disk`` (None: there is none; a damaged
    one is removed, and said in the log)."""
    name = cache_name(digest)
    data = disk.read_file(name)
    if data is None:
        return None
    try:
        return load_raw_layer(data, digest)
    except errors.FormatError as exc:
        log.warning("layer %s: its gzip index in the disk cache is not used: %s", digest, exc)
        disk.remove_file(name)
        return None


class _Stream:
    """The blob's tar, inflated on a background thread with checkpoints taken (C, without the
    GIL) while the calling thread walks the tar and hashes spans; at most ``depth`` pieces of
    output in flight."""

    def __init__(self, raw: Any, digest: str, size: int | None, span: int, bar: Progress | None,
                 cancel: threading.Event | None) -> None:
        from ..core.gzindex import GzipIndexer
        from .reencode import _Pipe

        self.checkpoints: list[Any] = []  # appended before the output past them is handed over
        self.total_in = 0
        indexer = GzipIndexer(span)

        def chunks() -> Any:
            sha = hashlib.sha256()
            while True:
                if cancel is not None and cancel.is_set():
                    raise errors.LazyLayerError("cancelled")
                data = raw.read(_READ)
                if not data:
                    break
                sha.update(data)
                self.total_in += len(data)
                if bar is not None:
                    bar.update(len(data))
                while data:
                    out = indexer.decompress(data, 16 * _READ)
                    self.checkpoints.extend(indexer.checkpoints())
                    data = indexer.unconsumed_tail
                    if out:
                        yield out
                    elif data:  # (cannot happen: zlib gives output or takes input)
                        raise errors.CorruptFrameError("gzip layer: inflate made no progress")
            if not indexer.eof:
                raise errors.FormatError("gzip layer is truncated (or not gzip)")
            if size is not None and self.total_in != size:
                raise errors.IntegrityError(f"the blob has {self.total_in} bytes, its descriptor says {size}")
            if "sha256:" + sha.hexdigest() != digest:
                raise errors.IntegrityError(f"the blob's digest is sha256:{sha.hexdigest()}, not {digest}")

        self.pipe = _Pipe(chunks())


class _SpanHasher:
    """The sink of the tar walk: the sha256 of each span, cut at the checkpoints' outputs."""

    def __init__(self, checkpoints: list[Any]) -> None:
        self.checkpoints = checkpoints
        self.digests: list[str] = []
        self.pos = 0
        self._sha: Any = None

    def __call__(self, data: Any) -> None:
        view = memoryview(data)
        while view.nbytes:
            k = len(self.digests) + (self._sha is not None)  # the next checkpoint to cut at
            cut = self.checkpoints[k].output if k < len(self.checkpoints) else None
            if self._sha is None:
                if cut != self.pos:
                    raise errors.FormatError(f"gzip index: no checkpoint at output {self.pos}")
                self._sha = hashlib.sha256()
                continue
            n = view.nbytes if cut is None or cut >= self.pos + view.nbytes else cut - self.pos
            self._sha.update(view[:n])
            self.pos += n
            view = view[n:]
            if cut is not None and self.pos == cut:
                self.digests.append("sha256:" + self._sha.hexdigest())
                self._sha = None

    def finish(self) -> list[str]:
        if self._sha is not None:
            self.digests.append("sha256:" + self._sha.hexdigest())
            self._sha = None
        return self.digests


def build(raw: Any, desc: dict[str, Any], span: int = SPAN, bar: Progress | None = None,
          cancel: threading.Event | None = None) -> tuple[Any, list[Chunk]]:
    """Index gzip layer ``desc`` from ``raw``, a stream of its blob: the raw layer for the image
    index (frames: the spans, over the tar as it is) and its chunks, one per span.

    Raises :class:`~lazylayer.errors.IntegrityError` if the blob is not the one ``desc`` names
    (nothing is returned then), FormatError or CorruptFrameError if it is not a gzip tar, and
    :class:`~lazylayer.format.estargz.NotSupported` for a span over the C reader's frame limit.
    """
    digest = str(desc.get("digest", ""))
    size = desc.get("size") if isinstance(desc.get("size"), int) else None
    stream = _Stream(raw, digest, size, span, bar, cancel)
    hasher = _SpanHasher(stream.checkpoints)
    try:
        entries = [toc_entry(m) for m in TarScanner(stream.pipe.read, hasher).members()]
        stream.pipe.finish()
    except errors.LazyLayerError as exc:
        raise type(exc)(f"layer {digest}: {exc}") from exc
    finally:
        stream.pipe.close()
    count_hardlinks(entries)
    digests, tar_size = hasher.finish(), hasher.pos
    cps = [cp for cp in stream.checkpoints if cp.output < tar_size]  # (one at the very end starts nothing)
    if not cps or len(digests) != len(cps):
        raise errors.FormatError(f"layer {digest}: the gzip index has {len(cps)} checkpoints for "
                                 f"{len(digests)} spans")
    chunks = []
    for k, cp in enumerate(cps):
        last = k + 1 == len(cps)
        n = (tar_size if last else cps[k + 1].output) - cp.output
        if n > MAX_CHUNK_SIZE:
            raise NotSupported(f"layer {digest}: a deflate block gives {n} bytes between checkpoints, over "
                               f"the reader's {MAX_CHUNK_SIZE}")
        chunks.append(Chunk(cp.output, n, cp.input, stream.total_in if last else cps[k + 1].input, digests[k],
                            "gzspan", cp.bits, cp.byte, cp.window))
    frames = [Frame(c.file_offset, c.size, c.file_offset, c.size, c.digest[7:]) for c in chunks]
    return index_layer(frames, entries, tar_size, [], digest), chunks
