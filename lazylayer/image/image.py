"""An image opened for lazy reading: its layers' TOCs, the merged tree, and verified reads.

:class:`Image` is what :class:`lazylayer.fs.ImageFileSystem` (and the FUSE
mount) stand on.  Opening an image reads its manifest and, per layer, one
range request for the TOC (or none, when the disk cache has it).  File content
is fetched when read, a frame at a time:

- each layer has a :class:`~lazylayer.seekable.SeekableReader` whose seek table
  is built from the *verified* TOC (the manifest vouches for the TOC through
  the layer's annotations, the TOC for every frame's sha256);
- the C reader asks :class:`FrameSource` for the compressed frames a read
  needs; it takes them from the disk cache (:class:`lazylayer.cache.DiskCache`,
  keyed by frame digest, so a frame shared by several layers or images is
  fetched once) or fetches the missing ones in one batch of range requests,
  every frame checked against its sha256 before the decoder sees it;
- decoded frames live in the shared memory cache (the C block cache).

Layers that are not lazy layers (plain gzip/zstd/tar) still work: the whole
blob is fetched once, checked against its digest and re-encoded locally into a
lazy layer in the disk cache — slow, and a warning says so.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import warnings
from typing import Any

from .. import errors, oci
from ..core import BlockCache, SeekableReader, build_seek_table, default_cache
from ..format import (
    ANNOTATION_TOC_DIGEST,
    LayerWriter,
    Toc,
    check_toc_frames,
    is_lazy_layer,
    parse_toc_position,
    read_toc,
    reencode_layer,
)
from ..progress import Progress
from ..registry import open_source
from ..remote import FsspecBlob
from .cache import DiskCache
from .frames import FrameSource
from .tree import Node, Tree

__all__ = ["FrameSource", "Image", "Layer", "NotLazyWarning"]

log = logging.getLogger("lazylayer")
_DEFAULT: Any = object()


class NotLazyWarning(UserWarning):
    """A layer is not in the lazy format: it is fetched whole before any file in it can be read."""


class Layer:
    """One layer of an opened image: its TOC and a reader of its tar."""

    def __init__(self, index: int, descriptor: oci.Descriptor, toc: Toc, reader: SeekableReader,
                 source: FrameSource, lazy: bool, keep: Any = None, diff_id: str = "") -> None:
        self.index = index
        self.descriptor = descriptor
        self.digest: str = descriptor.get("digest", "")
        self.diff_id = diff_id
        """The sha256 of the layer's tar, from the image config."""
        self.toc = toc
        self.reader = reader
        self.source = source
        self.lazy = lazy
        """False for a layer that was fetched whole and re-encoded locally."""
        self._keep = keep  # a pin on (or the temporary file of) a locally re-encoded layer

    def close(self) -> None:
        self.reader.close()
        if self._keep is not None:
            self._keep.close()
            self._keep = None

    def __repr__(self) -> str:
        return f"<Layer {self.index} {self.digest[:19]} {'lazy' if self.lazy else 'local'}>"


def _cache_key(digest: str) -> int:
    """A non-zero 60-bit key for the C block cache: readers of the same blob share frames."""
    hexpart = digest.partition(":")[2][:15]
    try:
        return int(hexpart, 16) or 1
    except ValueError:
        return 0


def _regular(node: Node) -> Any:
    """The inode of ``node``, which must be a regular file."""
    inode = node.inode
    if inode.kind != "reg":
        raise IsADirectoryError(f"{node.path}: not a regular file") if inode.kind == "dir" else \
            OSError(f"{node.path}: not a regular file")
    return inode


class Image:
    """A container image whose files are read lazily.

    ``reference``: ``docker://HOST/REPO:TAG`` (or ``@sha256:...``),
    ``oci:DIR[:TAG]`` or ``docker-archive:FILE``.  ``platform``: ``OS/ARCH[/VARIANT]``
    for multi-platform images (default: this machine's).  ``registry``: a
    :class:`lazylayer.registry.RegistryConfig` (credentials, TLS, mirrors).
    ``cache``: the :class:`~lazylayer.image.DiskCache` for fetched frames
    (default: the one at ``LAZYLAYER_CACHE_DIR``); ``None`` keeps nothing on disk.
    ``memory_cache``: the :class:`~lazylayer.core.BlockCache` of decoded
    frames (default: the process-wide one).  ``threads``: decoding threads per
    read (None: the shared pool).

    An Image reads what it is asked for and nothing more: prefetch (plans,
    read-ahead, fill) is started by the front ends with
    :func:`lazylayer.prefetch.start`.  The keywords ``prefetch``, ``fill``,
    ``fill_rate`` and ``readahead`` still do that, with a ``DeprecationWarning``.

    Every method is safe to call from many threads at once.
    """

    def __init__(self, reference: str | oci.ImageRef, *, platform: str | None = None, registry: Any = None,
                 cache: DiskCache | None = _DEFAULT, memory_cache: BlockCache | None = _DEFAULT,
                 threads: int | None = None, prefetch: Any = _DEFAULT, fill: bool = False,
                 fill_rate: float | None = None, readahead: Any = _DEFAULT) -> None:
        self.reference = str(reference)
        self.disk = DiskCache() if cache is _DEFAULT else cache
        self.memory = default_cache() if memory_cache is _DEFAULT else memory_cache
        self.threads = threads
        self.layers: list[Layer] = []
        self.recorder: Any = None
        """A :class:`~lazylayer.prefetch.Recorder` to tell about every read (None: no recording)."""
        self.prefetcher: Any = None
        """The :class:`~lazylayer.prefetch.Prefetcher` (None without a disk cache or lazy layers)."""
        self.prefetch_started = threading.Event()
        """Set once the plan (if any) is found and queued."""
        self.prefetch_started.set()
        self._source = open_source(reference, registry)
        if isinstance(self._source, oci.OciLayout):
            self.disk = None  # its blobs are local files already: nothing to keep
        try:
            self.manifest_image = oci.select_image(self._source, platform)
            self.manifest: dict[str, Any] = self.manifest_image.manifest
            self.digest: str = self.manifest_image.manifest_descriptor.get("digest", "")
            self.config: dict[str, Any] = oci.parse_json(self.manifest_image.config, "image config")
            descs = [d for d in self.manifest["layers"] if oci.is_tar_layer(d)]
            ids = oci.diff_ids(self.manifest_image)
            for i, desc in enumerate(descs):
                self.layers.append(self._open_layer(i, desc, ids[i]))
            try:
                self.tree = Tree([layer.toc for layer in self.layers])
            except errors.LazyLayerError:
                raise
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise errors.FormatError(f"{self.reference}: a layer's TOC has a malformed entry: {exc!r}") from None
            if prefetch is not _DEFAULT or fill or fill_rate is not None or readahead is not _DEFAULT:
                _deprecated_prefetch(self, prefetch, fill, fill_rate, readahead)
        except BaseException:
            self.close()
            raise

    @property
    def source(self) -> oci.ImageSource:
        """The store the image is read from (an :class:`~lazylayer.oci.ImageSource`); its
        ``artifacts()`` is where artifacts that refer to the image live (None: nowhere)."""
        return self._source

    # -- opening layers -------------------------------------------------------

    def _open_layer(self, i: int, desc: oci.Descriptor, diff_id: str) -> Layer:
        digest = desc.get("digest", "")
        blob = self._source.blob(desc) if is_lazy_layer(desc) else None
        if blob is not None:
            return self._lazy_layer(i, desc, blob, diff_id)
        # Say it once per image, in words, and only when a layer really is fetched and re-encoded
        # now: not when the disk cache has the copy from an earlier open (named as in _local_layer).
        hexd = oci.check_digest(digest)
        cached = self.disk is not None and os.path.exists(self.disk._file_path(f"sha256-{hexd}.lazy"))
        if not cached and not getattr(self, "_told_not_lazy", False):
            from ..units import human_size

            self._told_not_lazy = True
            again = "once: the disk cache keeps the copy" if self.disk is not None else \
                "on every open: nothing keeps the copy"
            if is_lazy_layer(desc):
                what = "its source cannot read byte ranges, so its layers are"
            else:
                tars = [d for d in self.manifest.get("layers", []) if oci.is_tar_layer(d)]
                plain = [d for d in tars if not is_lazy_layer(d)]
                size = human_size(sum(int(d.get("size") or 0) for d in plain))
                what = f"{len(plain)} of its {len(tars)} layers ({size}) are not lazy layers: they are"
            warnings.warn(f"{self.reference}: {what} fetched whole and re-encoded before any file in them can "
                          f"be read ({again}); to read the image lazily, convert it: lazylayer convert SRC DST",
                          NotLazyWarning, stacklevel=4)
        return self._local_layer(i, desc, diff_id)

    def _lazy_layer(self, i: int, desc: oci.Descriptor, blob: Any, diff_id: str) -> Layer:
        ann = desc.get("annotations") or {}
        toc_digest = ann[ANNOTATION_TOC_DIGEST]
        try:  # it names a file in the disk cache: the same check as every other digest
            oci.check_digest(toc_digest)
        except errors.FormatError:
            raise errors.FormatError(f"layer {desc.get('digest')}: bad {ANNOTATION_TOC_DIGEST} annotation "
                                     f"{str(toc_digest)[:80]!r}: it must be sha256: and 64 hex digits") from None
        size = desc.get("size")
        if not isinstance(size, int) or size <= 0:
            raise errors.FormatError(f"layer {desc.get('digest')}: bad size {size!r}")
        frame = self.disk.get(toc_digest) if self.disk is not None else None
        if frame is not None:
            toc_offset, toc_length = parse_toc_position(ann, size)
            if toc_length != len(frame):
                raise errors.FormatError(f"layer {desc.get('digest')}: the TOC frame {toc_digest} has {len(frame)} "
                                         f"bytes, its position annotation says {toc_length}")
            toc = Toc.from_frame(frame)
        else:
            index = read_toc(blob, size, ann)
            toc, toc_offset = index.toc, index.toc_offset
            if self.disk is not None:
                self.disk.put(toc_digest, index.frame)
            frame = index.frame
        return self._layer(i, desc, toc, toc_offset, len(frame), blob, self.disk, lazy=True, diff_id=diff_id)

    def _layer(self, i: int, desc: oci.Descriptor, toc: Toc, toc_offset: int, toc_length: int, blob: Any,
               disk: DiskCache | None, lazy: bool, keep: Any = None, diff_id: str = "") -> Layer:
        check_toc_frames(toc, toc_offset)
        table = build_seek_table([(f.compressed_size, f.size) for f in toc.frames] + [(toc_length, 0)])
        digest = desc.get("digest", "")
        source = FrameSource(blob, toc.frames, disk, f"layer {digest}")
        # XXH64 checks are off: every frame is checked against its sha256 before decoding.
        # A miss decodes its whole frame: the next read of a file usually goes on where
        # this one ended, and the frame had to be fetched (and verified) whole anyway.
        reader = SeekableReader(source, blob_size=toc_offset + toc_length + len(table), tail=table,
                                cache=self.memory, threads=self.threads, verify=False, whole_frames=True,
                                cache_key=_cache_key(digest) if lazy else 0, name=f"layer {digest}")
        return Layer(i, desc, toc, reader, source, lazy, keep, diff_id)

    def _local_layer(self, i: int, desc: oci.Descriptor, diff_id: str) -> Layer:
        hexd = oci.check_digest(desc.get("digest", ""))
        writer = LayerWriter(threads=self.threads)

        def build(out: Any) -> None:
            # A bar on stderr when it is a terminal (never on stdout, which scripts parse).
            bar = Progress(desc.get("size"), f"fetching layer sha256:{hexd[:12]}… (not lazy)")
            try:
                reencode_layer(self._source, desc, diff_id, out, writer, bar)
            finally:
                bar.close()

        keep: Any
        if self.disk is not None:
            keep = self.disk.ensure_pinned(f"sha256-{hexd}.lazy", build)
            path = keep.path
        else:
            keep = tempfile.NamedTemporaryFile(prefix="lazylayer-", suffix=".lazy")
            build(keep)
            keep.flush()
            path = keep.name
        try:
            blob = FsspecBlob(path, size=os.path.getsize(path))
            index = read_toc(blob, blob.size)
            return self._layer(i, desc, index.toc, index.toc_offset, len(index.frame), blob, None,
                               lazy=False, keep=keep, diff_id=diff_id)
        except BaseException:
            keep.close()
            raise

    # -- reading --------------------------------------------------------------

    def readinto(self, node: Node, buffer: Any, offset: int) -> int:
        """Read file ``node``'s content at ``offset`` into ``buffer``; the bytes read (short at the end)."""
        inode = _regular(node)
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), inode.size - offset))
        if n == 0:
            return 0
        if self.recorder is not None:
            self.recorder.read(inode.layer, inode.offset + offset, n)
        got = self.layers[inode.layer].reader.readinto(view[:n], inode.offset + offset)
        if got != n:
            raise errors.FormatError(f"{node.path}: layer {inode.layer} ends inside the file")
        return n

    def pread(self, node: Node, size: int, offset: int) -> bytes:
        """``size`` bytes of file ``node`` at ``offset`` (fewer at its end)."""
        inode = _regular(node)
        n = max(0, min(size, inode.size - offset))
        if n == 0:
            return b""
        if self.recorder is not None:
            self.recorder.read(inode.layer, inode.offset + offset, n)
        data = self.layers[inode.layer].reader.pread(n, inode.offset + offset)
        if len(data) != n:
            raise errors.FormatError(f"{node.path}: layer {inode.layer} ends inside the file")
        return data

    # -- information ------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Frames and compressed bytes fetched over the network, and frames found on disk, so far."""
        out = {"frames_fetched": 0, "bytes_fetched": 0, "frames_from_disk": 0}
        for layer in self.layers:
            for k in out:
                out[k] += getattr(layer.source, k)
        if self.prefetcher is not None:
            out.update(self.prefetcher.stats())
        return out

    def close(self) -> None:
        """Release the layers' readers, pins and temporary files."""
        if self.prefetcher is not None:
            self.prefetcher.close()
        for layer in self.layers:
            layer.close()
        self.layers = []
        self._source.close()

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Image {self.reference} {self.digest[:19]} layers={len(self.layers)}>"


def _deprecated_prefetch(image: Image, prefetch: Any, fill: bool, fill_rate: float | None, readahead: Any) -> None:
    """``Image(prefetch=, fill=, fill_rate=, readahead=)``: the prefetcher is started by the front
    ends now (``lazylayer.prefetch.start``); the keywords still work, with a warning."""
    import importlib

    warnings.warn("Image(prefetch=, fill=, fill_rate=, readahead=) is deprecated: Image no longer prefetches; "
                  "call lazylayer.prefetch.start(image, prefetch, fill=, fill_rate=, readahead=) "
                  "(ImageFileSystem and the mount do)", DeprecationWarning, stacklevel=3)
    start = importlib.import_module("lazylayer.prefetch").start  # one package up: imported only here
    start(image, "auto" if prefetch is _DEFAULT else prefetch, fill=fill, fill_rate=fill_rate,
          readahead=True if readahead is _DEFAULT else readahead)
