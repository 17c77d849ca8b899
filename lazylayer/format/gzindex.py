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
from collections import deque
from typing import Any, Callable, NamedTuple

from .. import errors
from ..oci.media import DIGEST, HashingReader
from ..progress import Progress
from .estargz import MAX_CHUNK_SIZE, Chunk, NotSupported, index_layer, is_stargz, read_cached
from .layer import Frame, count_hardlinks, toc_entry
from .tar import TarScanner

log = logging.getLogger("lazylayer")

SPAN = 2 << 20
"""Output bytes between checkpoints, chosen by measurement (docs/benchmarks.md, "Plain gzip layers
indexed": against 1, 4 and 8 MiB, 2 MiB moved 23% fewer bytes than 4 MiB for 40 random files and
made the cold start 1.26x our format's instead of 1.41x; 1 MiB was no faster and doubles the
index: a 32 KiB window per span, kept compressed in memory too)."""
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
    return read_cached(disk, cache_name(digest), digest)


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
        self.digest, self.size = digest, size
        self._sha = hashlib.sha256()
        self._unhashed: deque[bytes] = deque()  # compressed input the walking thread hashes (off the inflate thread)
        indexer = GzipIndexer(span, check_crc=False)  # (the blob's digest is checked: the CRCs prove nothing more)

        def chunks() -> Any:
            while True:
                if cancel is not None and cancel.is_set():
                    raise errors.LazyLayerError("cancelled")
                data = raw.read(_READ)
                if not data:
                    break
                self._unhashed.append(data)
                self.total_in += len(data)
                if bar is not None:
                    bar.update(len(data))
                while data:
                    out = indexer.decompress(data, 8 * _READ, view=True)
                    self.checkpoints.extend(indexer.checkpoints())
                    data = indexer.unconsumed_tail
                    if out.nbytes:
                        yield out
                    elif data:  # (cannot happen: zlib gives output or takes input)
                        raise errors.CorruptFrameError("gzip layer: inflate made no progress")
            if not indexer.eof:
                raise errors.FormatError("gzip layer is truncated (or not gzip)")

        self.pipe = _Pipe(chunks())

    def hash_input(self) -> None:
        """Hash the compressed input read so far (called by the walking thread)."""
        while self._unhashed:
            self._sha.update(self._unhashed.popleft())

    def check(self) -> None:
        """IntegrityError unless the whole input was the blob the descriptor names."""
        self.hash_input()
        if self.size is not None and self.total_in != self.size:
            raise errors.IntegrityError(f"the blob has {self.total_in} bytes, its descriptor says {self.size}")
        if "sha256:" + self._sha.hexdigest() != self.digest:
            raise errors.IntegrityError(f"the blob's digest is sha256:{self._sha.hexdigest()}, not {self.digest}")


class _SpanHasher:
    """The sink of the tar walk: the sha256 of each span, cut where ``cut_at(k)`` says the k-th
    span starts (None: not known yet, so not before the end of what was given)."""

    def __init__(self, cut_at: Callable[[int], int | None]) -> None:
        self.cut_at = cut_at
        self.digests: list[str] = []
        self.pos = 0
        self._sha: Any = None

    def __call__(self, data: Any) -> None:
        view = memoryview(data)
        while view.nbytes:
            cut = self.cut_at(len(self.digests) + (self._sha is not None))  # where the next span starts
            if self._sha is None:
                if cut != self.pos:
                    raise errors.FormatError(f"gzip index: no span starts at output {self.pos}")
                self._sha = hashlib.sha256()
                continue
            n = view.nbytes if cut is None or cut >= self.pos + view.nbytes else cut - self.pos
            if n <= 0:
                raise errors.FormatError(f"gzip index: the span at {self.pos} is empty or out of order")
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
          cancel: threading.Event | None = None, counts: dict[str, int] | None = None) -> tuple[Any, list[Chunk]]:
    """Index gzip layer ``desc`` from ``raw``, a stream of its blob: the raw layer for the image
    index (frames: the spans, over the tar as it is) and its chunks, one per span.

    Raises :class:`~lazylayer.errors.IntegrityError` if the blob is not the one ``desc`` names
    (nothing is returned then), FormatError or CorruptFrameError if it is not a gzip tar, and
    :class:`~lazylayer.format.estargz.NotSupported` for a span over the C reader's frame limit.
    ``counts`` gets the number of ``entries``.
    """
    digest = str(desc.get("digest", ""))
    size = desc.get("size") if isinstance(desc.get("size"), int) else None
    stream = _Stream(raw, digest, size, span, bar, cancel)
    cps = stream.checkpoints
    hasher = _SpanHasher(lambda k: cps[k].output if k < len(cps) else None)

    def sink(data: Any) -> None:
        hasher(data)
        stream.hash_input()

    try:
        entries = [toc_entry(m) for m in TarScanner(stream.pipe.read, sink).members()]
        stream.pipe.finish()
        stream.check()
    except errors.LazyLayerError as exc:
        raise type(exc)(f"layer {digest}: {exc}") from exc
    finally:
        stream.pipe.close()
    count_hardlinks(entries)
    if counts is not None:
        counts["entries"] = len(entries)
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
                            "gzspan", cp.bits, cp.byte, pack_window(cp.window)))
    frames = [Frame(c.file_offset, c.size, c.file_offset, c.size, c.digest[7:]) for c in chunks]
    return index_layer(frames, entries, tar_size, [], digest), chunks


MAX_PACKED_WINDOW = 40 << 10
"""A compressed window's bound (32 KiB of incompressible bytes and zstd's framing fit)."""


def pack_window(window: bytes) -> bytes:
    """A checkpoint's 32 KiB window as a span keeps it: zstd-compressed (about a third of its size
    for the test layers: 31 MB of windows in memory for a 589 MB layer would be 10), so that a
    process holding a large image's index does not hold 1.6% of its compressed bytes in windows."""
    import zstandard

    return zstandard.ZstdCompressor(level=1, write_content_size=True).compress(window) if window else b""


def window(c: Chunk) -> bytes:
    """Span ``c``'s window, decompressed (at most 32 KiB whatever the frame claims:
    CorruptFrameError for bytes that are not one)."""
    import zstandard

    if not c.window:
        return b""
    try:
        out = zstandard.ZstdDecompressor().decompress(c.window, max_output_size=32768)
    except zstandard.ZstdError as exc:
        raise errors.CorruptFrameError(f"the span at {c.file_offset}: its window is not zstd: {exc}") from None
    if len(out) > 32768:
        raise errors.CorruptFrameError(f"the span at {c.file_offset}: its window is over 32 KiB")
    return out


def check_chunks(chunks: list[Chunk], blob_size: int, what: str) -> None:
    """FormatError unless ``chunks`` are spans as :func:`build` makes them: ``gzspan`` chunks over
    the tar end to end, each within the reader's frame limit, their compressed ranges in order
    within the blob's ``blob_size`` bytes.  (What an index from elsewhere must pass before its
    ranges are fetched; that it matches the layer is another matter: :func:`verify`.)"""
    at, last = 0, 0
    for c in chunks:
        if c.codec != "gzspan" or c.file_offset != at or not 0 < c.size <= MAX_CHUNK_SIZE or \
                not last <= c.offset < c.end <= blob_size or c.end - c.offset > 2 * MAX_CHUNK_SIZE or \
                c.bits > 7 or not 0 <= c.byte <= 255 or len(c.window) > MAX_PACKED_WINDOW:
            raise errors.FormatError(f"{what}: the span at {at} is malformed or out of bounds")
        at, last = at + c.size, c.offset
    if not chunks:
        raise errors.FormatError(f"{what}: no spans")


def check_index(layer: Any, chunks: list[Chunk], blob_size: int, what: str) -> None:
    """:func:`check_chunks`, and that the C index takes the raw layer's TOC frame and that its
    frames are the spans: FormatError (or CorruptFrameError for a TOC frame that does not
    decompress) for an index from elsewhere that is malformed, found at its open rather than when
    the image's index is built."""
    from ..core import Index

    check_chunks(chunks, blob_size, what)
    frames = Index.build([layer]).frames(0)
    if [(f[2], f[3], f[4]) for f in frames] != [(c.file_offset, c.size, c.digest[7:]) for c in chunks]:
        raise errors.FormatError(f"{what}: its TOC's frames are not its spans")
    for c in chunks:  # every window unpacks (~20 us each), or no read would
        try:
            window(c)
        except errors.CorruptFrameError as exc:
            raise errors.CorruptFrameError(f"{what}: {exc}") from None


def verify(raw: Any, desc: dict[str, Any], diff_id: str | None, layer: Any, chunks: list[Chunk],
           bar: Progress | None = None, cancel: threading.Event | None = None) -> None:
    """Check an index that was not made here against the layer itself: stream ``raw`` (the
    blob), check its digest and its tar's sha256 against ``diff_id``, and that the tar's entries
    are the index's and every span is the sha256 its chunk gives.  Returns quietly if all hold;
    IntegrityError (or FormatError, CorruptFrameError) saying what does not."""
    from .layer import Toc
    from .reencode import _Counted, _gunzip, _Pipe

    digest = str(desc.get("digest", ""))
    hashing = HashingReader(raw)
    counted = _Counted(hashing, bar, cancel) if bar is not None or cancel is not None else hashing
    pipe = _Pipe(_gunzip(counted.read))
    tar = hashlib.sha256()

    cuts = [c.file_offset for c in chunks]
    spans = _SpanHasher(lambda k: cuts[k] if k < len(cuts) else None)

    def sink(data: Any) -> None:
        tar.update(data)
        spans(data)

    try:
        entries = [toc_entry(m) for m in TarScanner(pipe.read, sink).members()]
        pipe.finish()
    finally:
        pipe.close()
    if hashing.digest() != digest or (isinstance(desc.get("size"), int) and hashing.count != desc["size"]):
        raise errors.IntegrityError(f"layer {digest}: the blob's digest is {hashing.digest()}")
    if diff_id is not None and "sha256:" + tar.hexdigest() != diff_id:
        raise errors.IntegrityError(f"layer {digest}: its tar's sha256 is sha256:{tar.hexdigest()}, not the "
                                    f"config's diff_id {diff_id}")
    got = spans.finish()
    bad = next((c for c, d in zip(chunks, got) if c.digest != d), None)
    if len(got) != len(chunks) or spans.pos != layer.toc_offset or bad is not None:
        where = f"the span at {bad.file_offset}" if bad is not None else "its spans"
        raise errors.IntegrityError(f"layer {digest}: the gzip index does not match the layer: {where}")
    count_hardlinks(entries)
    if Toc.from_frame(layer.toc_frame).entries != entries:
        raise errors.IntegrityError(f"layer {digest}: the gzip index does not match the layer: its files")


# ------------------------------------------------------------------ attached to the image
#
# `lazylayer index IMAGE --attach` stores the indexes next to the image, as one OCI
# artifact whose subject is the image's manifest (docs/referrers.md): one layer per
# indexed gzip layer, each the bytes kept in the disk cache (dump_raw_layer), named
# by the annotation ANNOTATION_LAYER.  Another machine may use them only under the
# policy docs/filesystem.md states ("Plain gzip layers": gzip_indexes="attached").

ARTIFACT_TYPE = "application/vnd.lazylayer.gzip-index.v1"
MEDIA_TYPE = "application/vnd.lazylayer.gzip-index.layer.v1"
ANNOTATION_LAYER = "io.lazylayer.gzip-index.layer"
MAX_ATTACHED_BYTES = 256 << 20
"""The largest attached index of one layer read (the 589 MB test layer's is ~11 MB with 2 MiB spans)."""
MAX_ATTACHED_TOTAL = 1 << 30
"""The most bytes of attached indexes one open reads, all layers together (the rest are fetched whole)."""
POLICIES = ("local", "attached", "off")
"""Which indexes of plain gzip layers an image uses: ``local`` (default) those built on this
machine; ``attached`` those too and, for the other layers, the ones attached to the image, checked
against the layer by a background fetch; ``off`` none (every gzip layer fetched whole)."""


def attach(store: Any, subject: dict[str, Any], indexes: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Attach ``indexes`` (``(layer digest, dump_raw_layer bytes)``) to the image whose manifest
    descriptor is ``subject``, in ``store`` (its registry repository or OCI layout); the artifact's
    descriptor."""
    from ..registry import referrers

    payloads = [referrers.Payload(data, MEDIA_TYPE, {ANNOTATION_LAYER: digest}) for digest, data in indexes]
    return referrers.attach(store, subject, ARTIFACT_TYPE, payloads, max_payload=MAX_ATTACHED_BYTES)


class Attached(NamedTuple):
    """An index attached to an image: the artifact that carries it, and its layer there."""

    artifact: str
    layer: dict[str, Any]


def find_attached(store: Any, manifest_digest: str, layers: set[str]) -> dict[str, list[Attached]]:
    """The indexes attached to image ``manifest_digest`` for ``layers`` (layer digests): for each
    layer, those of every artifact that has one, in the order the store lists them (at most 16
    artifacts; only their manifests are read here: :func:`read_attached` reads an index).  A
    store that cannot be asked counts as none; an artifact whose manifest cannot be read is said
    in the log and skipped."""
    from ..registry import referrers

    out: dict[str, list[Attached]] = {}
    try:
        found = referrers.find(store, manifest_digest, ARTIFACT_TYPE)
    except errors.LazyLayerError as exc:
        log.info("%s: no gzip index artifacts: %s", manifest_digest, exc)
        return out
    for art in found[:16]:
        try:
            manifest = referrers.read_manifest(store, art)
            for layer in manifest["layers"]:
                ann = layer.get("annotations") if isinstance(layer, dict) else None
                digest = ann.get(ANNOTATION_LAYER) if isinstance(ann, dict) else None
                if layer.get("mediaType") == MEDIA_TYPE and digest in layers:
                    out.setdefault(digest, []).append(Attached(str(art.get("digest")), layer))
        except (errors.LazyLayerError, AttributeError, KeyError, TypeError) as exc:
            log.warning("%s: gzip index artifact %s not used: %s", manifest_digest, art.get("digest"), exc)
    return out


def attached_name(key: str) -> str:
    """The disk cache file that keeps an attached index's bytes, by their sha256 (hex)."""
    return f"gzindex-attached-{key}"


def refuted_name(key: str) -> str:
    """The disk cache file that marks an attached index (by its sha256, hex) found wrong here."""
    return f"gzindex-refuted-{key}"


def kept_attached(cache: Any, key: str) -> bytes | None:
    """The bytes of the attached index with sha256 ``key`` (hex) as :func:`read_attached` kept them
    in disk cache ``cache``, checked against that digest (a damaged copy is said and removed);
    None if there are none (or ``key`` is not a sha256)."""
    if not isinstance(key, str) or not DIGEST.fullmatch("sha256:" + key):
        return None
    data = cache.read_file(attached_name(key))
    if data is not None and hashlib.sha256(data).hexdigest() != key:
        log.warning("disk cache: %s does not match its digest; removed", attached_name(key))
        cache.remove_file(attached_name(key))
        return None
    return data


def read_attached(store: Any, found: Attached, cache: Any = None) -> bytes:
    """An attached index's bytes, checked against its digest (what they say is not checked:
    :func:`check_index`, then :func:`verify`); LimitError over :data:`MAX_ATTACHED_BYTES`.  With
    a disk cache, kept there by that digest (:func:`attached_name`: not an index of this
    machine's, just the artifact's bytes), so that the mount's fetcher and later opens do not
    fetch it again."""
    from ..registry import referrers

    digest = found.layer.get("digest")
    key = digest[7:] if isinstance(digest, str) and DIGEST.fullmatch(digest) else None
    data = kept_attached(cache, key) if cache is not None and key is not None else None
    if data is not None:
        return data
    data = referrers.read_layer(store, found.layer, f"gzip index artifact {found.artifact}", MAX_ATTACHED_BYTES)
    if cache is not None and key is not None:
        try:
            cache.ensure_file(attached_name(key), lambda f: f.write(data))
        except OSError as exc:
            log.warning("disk cache: %s not kept: %s", attached_name(key), exc)
    return data
