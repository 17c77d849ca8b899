"""An image opened for lazy reading: its layers' TOCs, the merged tree, and verified reads.

:class:`Image` is what :class:`lazylayer.fs.ImageFileSystem` (and the FUSE
mount) stand on.  Opening an image reads its manifest and, per layer, one
range request for the TOC (or none, when the disk cache has it).  File content
is fetched when read, a frame at a time:

- the layers' TOCs are merged into the C image index (:class:`lazylayer.core.Index`,
  the tree :attr:`Image.tree` views), built once per image and kept in the disk
  cache by the manifest's digest, so a later open maps it instead of fetching
  and parsing TOCs;
- reads go to the C image reader (:class:`lazylayer.core.ImageReader`): frames in
  the disk cache are read, checked against their sha256 and decoded in C,
  decoded frames live in the shared memory cache (the C block cache), and only
  frames missing from disk call :class:`FrameSource`, which fetches them in one
  batch of range requests (every frame checked against the sha256 the TOC
  gives it before the decoder sees it) and stores them, once across threads
  and processes.

eStargz and zstd:chunked layers are read lazily as they are: their TOC becomes a
raw layer whose frames are the chunks (:class:`ChunkSource`).  Other layers
that are not lazy (plain gzip/zstd/tar) still work: they are fetched
whole, all at once, each decoded as it streams into a local copy of stored
(uncompressed) frames, checked against its digest and diff_id before anything
reads it; a warning says so.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from typing import Any, Sequence

from .. import errors, oci
from ..core import BlockCache, default_cache
from ..core.index import ImageReader, Index, IndexLayer, NativeDiskCache
from ..core.seekable import _resolve_pool
from ..format import (
    ANNOTATION_TOC_DIGEST,
    Frame,
    FrameTable,
    is_lazy_layer,
    parse_toc_position,
    read_toc,
)
from ..progress import Progress
from ..registry import open_source
from ..remote import FsspecBlob
from .cache import DiskCache
from .frames import ChunkSource, FrameSource
from .tree import Node, Tree

__all__ = ["FrameSource", "Image", "Layer", "LayerToc", "NotLazyWarning"]

log = logging.getLogger("lazylayer")
_DEFAULT: Any = object()


class NotLazyWarning(UserWarning):
    """A layer is not in the lazy format: it is fetched whole before any file in it can be read."""


class LayerToc:
    """What the image index keeps of a layer's TOC: its frames, tar size and prefetch plan.

    (The TOC's entries live merged in the index, :attr:`Image.tree`; a layer's
    own entries are :func:`lazylayer.format.read_toc`'s to give.)
    """

    def __init__(self, frames: Sequence[Frame], tar_size: int, prefetch: list[list[int]]) -> None:
        self.frames = frames
        self.tar_size = tar_size
        self.prefetch = prefetch

    def __repr__(self) -> str:
        return f"<LayerToc {len(self.frames)} frames, {self.tar_size} tar bytes>"


class Layer:
    """One layer of an opened image: its frames (from the index) and where its compressed bytes come from."""

    def __init__(self, index: int, descriptor: oci.Descriptor, toc: LayerToc, source: FrameSource, lazy: bool,
                 keep: Any = None, diff_id: str = "") -> None:
        self.index = index
        self.descriptor = descriptor
        self.digest: str = descriptor.get("digest", "")
        self.diff_id = diff_id
        """The sha256 of the layer's tar, from the image config."""
        self.toc = toc
        self.source = source
        self.lazy = lazy
        """False for a layer that was fetched whole into a local copy."""
        self._keep = keep  # a pin on (or the temporary file of) a layer's local copy

    def close(self) -> None:
        if self._keep is not None:
            self._keep.close()
            self._keep = None

    def __repr__(self) -> str:
        return f"<Layer {self.index} {self.digest[:19]} {'lazy' if self.lazy else 'local'}>"


def _in_parallel(jobs: list[Any]) -> list[Any]:
    """Each of ``jobs`` called, on a thread each (as many threads as cores) when there are several;
    their results in order (the first exception raised, after all have ended)."""
    if len(jobs) < 2:
        return [job() for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1, 8), thread_name_prefix="lazylayer-open") as pool:
        futures = [pool.submit(job) for job in jobs]
    return [f.result() for f in futures]


def _regular(node: Node) -> Any:
    """The attributes (a :class:`lazylayer.core.Stat`) of ``node``, which must be a regular file."""
    st = node._st
    if st.kind != "reg":
        raise IsADirectoryError(f"{node.path}: not a regular file") if st.kind == "dir" else \
            OSError(f"{node.path}: not a regular file")
    return st


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
    read (None: the shared pool).  ``gzip_indexes``: which indexes make plain
    gzip layers lazy — ``local`` (default: those ``lazylayer index`` built on
    this machine), ``attached`` (those, and for other layers the indexes
    attached to the image, read at once and checked against the layer in the
    background by a full fetch; a layer that fails is refused from then on:
    :meth:`poison`), ``off`` (every gzip layer fetched whole).
    ``check_attached=False`` leaves that check to another process (the mount's
    fetcher: the mount checks); ``attached``, the indexes that process chose
    (:attr:`attached_indexes`), are then read from the disk cache, not looked for
    in the registry again.  ``chunk_runs``: read each run of an eStargz or
    zstd:chunked layer's small chunks as one frame (:func:`lazylayer.format.estargz.parse_toc`):
    one request and one file of the disk cache per run rather than per chunk,
    what a mount wants (it reads around every miss anyway: its cold start went from
    1.49x to 1.11–1.15x lazylayer's own format's); without it (the default, ``lazylayer://``'s)
    a reader of chosen files moves only their chunks (40 files of the 1 GB image:
    1.05x their chunks' bytes, against 1.6x with runs).  docs/filesystem.md, "eStargz layers".

    An Image reads what it is asked for and nothing more: prefetch (plans,
    read-ahead, fill) is started by the front ends with
    :func:`lazylayer.prefetch.start`.  The keywords ``prefetch``, ``fill``,
    ``fill_rate`` and ``readahead`` still do that, with a ``DeprecationWarning``.

    Every method is safe to call from many threads at once.
    """

    def __init__(self, reference: str | oci.ImageRef, *, platform: str | None = None, registry: Any = None,
                 cache: DiskCache | None = _DEFAULT, memory_cache: BlockCache | None = _DEFAULT,
                 threads: int | None = None, prefetch: Any = _DEFAULT, fill: bool = False,
                 fill_rate: float | None = None, readahead: Any = _DEFAULT, gzip_indexes: str = "local",
                 check_attached: bool = True, attached: dict[str, str] | None = None,
                 chunk_runs: bool = False) -> None:
        from ..format.gzindex import POLICIES

        if gzip_indexes not in POLICIES:
            raise ValueError(f"gzip_indexes must be one of {', '.join(POLICIES)}, not {gzip_indexes!r}")
        self.reference = str(reference)
        self.chunk_runs = chunk_runs
        """Whether runs of a chunked layer's small chunks are read as one frame each."""
        self.gzip_indexes = gzip_indexes
        """Which indexes of plain gzip layers are used (:data:`lazylayer.format.gzindex.POLICIES`)."""
        self.on_poison: list[Any] = []
        """Called with a layer's number and the reason when a layer read through an index from
        elsewhere turns out not to match it (the mount drops the kernel's pages of its files)."""
        self._poisoned: dict[int, str] = {}
        self._unchecked: dict[int, tuple[Any, ...]] = {}  # layers read through attached, unchecked indexes
        self._attached_hint = dict(attached or {})
        self._checker: _AttachedCheck | None = None
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
        self.registry = registry
        """The :class:`~lazylayer.registry.RegistryConfig` given (None: the defaults)."""
        self.native: NativeDiskCache | None = None
        """The disk cache as the C side opens it (None without one)."""
        self._whole = (0, 0)  # layers fetched whole by this open, and their bytes
        ref = oci.parse_reference(reference) if isinstance(reference, str) else reference
        self._source = open_source(ref, registry)
        self.gzip_index_cache: DiskCache | None = self.disk
        """Where plain gzip layers' indexes are found: the disk cache, a layout's too (whose frames
        are not kept there)."""
        if isinstance(ref, oci.OciLayoutRef):
            self.disk = None  # its blobs are local files already: nothing to keep
        try:
            self.manifest_image = oci.select_image(self._source, platform)
            self.manifest: dict[str, Any] = self.manifest_image.manifest
            self.digest: str = self.manifest_image.manifest_descriptor.get("digest", "")
            self.config: dict[str, Any] = oci.parse_json(self.manifest_image.config, "image config")
            descs = [d for d in self.manifest["layers"] if oci.is_tar_layer(d)]
            ids = oci.diff_ids(self.manifest_image)
            with _no_gc():
                self._open_layers(descs, ids)
            if self._unchecked and check_attached:
                self._checker = _AttachedCheck(self)
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

    def _open_layers(self, descs: list[oci.Descriptor], ids: list[str]) -> None:
        """The index (from the disk cache, else built from the TOCs), each layer's source, the reader."""
        native = self.native = NativeDiskCache(self.disk.path) if self.disk is not None else None
        blobs = [self._source.blob(d) if is_lazy_layer(d) else None for d in descs]
        chunked = self._chunked_layers(descs, blobs, ids)
        # The index is kept on disk, keyed by the manifest's digest, when every layer is read lazily (a
        # layer copied locally is vouched for by nothing the manifest says about its frames).  A
        # chunked layer's TOC frame and chunk table are kept together (_cached_chunked) and the index
        # is keyed by their frames' digests too: an index is only ever used with the chunk tables
        # whose frames it was built from.
        cacheable = native is not None and all(b is not None for b in blobs) and _is_digest(self.digest)
        key = self.digest
        if chunked:
            h = hashlib.sha256(self.digest.encode())
            for i in sorted(chunked):
                h.update(f"{i} {chunked[i][0].toc_digest}".encode())
            key = "sha256:" + h.hexdigest()
        index = native.load_index(key) if cacheable and native is not None else None
        if index is not None and [index.layer_info(i)[0] for i in range(index.layers)] != \
                [d.get("digest") for d in descs]:
            index = None  # (cannot happen for a digest-keyed manifest; never trust a mismatch)
        keeps: list[Any] = [None] * len(descs)
        if index is None:
            layers: list[Any] = [None] * len(descs)
            plain = _WholeLayers(self, [i for i, b in enumerate(blobs) if b is None], descs, ids)
            try:
                for i, desc in enumerate(descs):  # the lazy layers' TOCs while the others stream in
                    if i in chunked:
                        layers[i] = chunked[i][0]
                    elif blobs[i] is not None:
                        layers[i] = self._lazy_toc(desc, blobs[i])
                for i, (spec, blob, keep) in plain.results().items():
                    layers[i], blobs[i], keeps[i] = spec, blob, keep
                self._whole = (plain.layers_fetched, plain.bytes_fetched)
                index = Index.build(layers)
            except BaseException:
                plain.cancel()
                for keep in keeps:
                    if keep is not None:
                        keep.close()
                raise
            if cacheable and native is not None:
                try:
                    native.store_index(key, index)
                except errors.LazyLayerError as exc:  # a full disk must not fail the open
                    log.warning("%s: image index not stored in the disk cache: %s", self.reference, exc)
        self.index = index
        self.tree = Tree(index)
        for i, desc in enumerate(descs):
            _, _, tar_size, _ = index.layer_info(i)
            frames = FrameTable(index.frame_table(i))
            lazy = keeps[i] is None
            name, local = f"layer {desc.get('digest', '')}", _local_file(blobs[i]) is not None
            source = ChunkSource(blobs[i], frames, chunked[i][1], self.disk, name, local) if i in chunked else \
                FrameSource(blobs[i], frames, self.disk if lazy else None, name, local)
            toc = LayerToc(frames, tar_size, [list(r) for r in index.prefetch(i)])
            self.layers.append(Layer(i, desc, toc, source, lazy, keeps[i], ids[i]))
        # Frames on disk are read, checked against their sha256 and decoded in C; only missing
        # ones call FrameSource (fetched, verified and stored by Python, once across processes).
        self.reader = ImageReader(index, [(layer.source, layer.lazy) for layer in self.layers],
                                  cache=self.memory, pool=_resolve_pool(self.threads), disk=native)

    def _chunked_layers(self, descs: list[oci.Descriptor], blobs: list[Any],
                        ids: list[str]) -> dict[int, tuple[IndexLayer, list[Any]]]:
        """The layers of other formats read lazily (``blobs`` gets their blobs), as raw layers of
        their chunks.  eStargz and zstd:chunked: their TOCs (one or two range requests each),
        checked against the layer's annotations, kept in the disk cache, so that a later open (the
        mount's fetcher, the next mount) neither fetches nor parses them again; one that uses what
        is not read lazily is fetched whole instead (said in the log).  Plain gzip: those indexed
        on this machine (``lazylayer index``; :mod:`lazylayer.format.gzindex`), and under the
        ``attached`` policy those with an index attached to the image (checked in the background:
        :class:`_AttachedCheck`)."""
        out: dict[int, tuple[IndexLayer, list[Any]]] = {}
        if all(b is not None for b in blobs):
            return out  # every layer is a lazy layer: nothing of the peers' formats on this (the mount's) path
        from ..format import estargz, gzindex, zstdchunked

        unindexed: dict[int, oci.Descriptor] = {}
        chunked: list[tuple[int, oci.Descriptor, Any]] = []
        for i, desc in enumerate(descs):
            if blobs[i] is not None or not isinstance(desc.get("size"), int):
                continue
            if gzindex.is_gzip_layer(desc):
                if self.gzip_indexes == "off" or not _is_digest(desc.get("digest", "")):
                    continue
                cache = self.gzip_index_cache  # an index built here, from the verified layer: trusted
                found = gzindex.load_cached(cache, desc["digest"]) if cache is not None else None
                blob = self._source.blob(desc)
                if found is not None and blob is not None:
                    out[i], blobs[i] = found, blob
                elif blob is not None:
                    unindexed[i] = desc
                continue
            if not zstdchunked.is_chunked(desc):
                continue
            blob = self._source.blob(desc)
            if blob is not None:
                chunked.append((i, desc, blob))

        def one(desc: oci.Descriptor, blob: Any) -> Any:
            def build() -> Any:
                return estargz.raw_layer(zstdchunked.read_chunked_toc(blob.read, desc, runs=self.chunk_runs),
                                         desc.get("digest", ""))

            try:
                return self._cached_chunked(desc, build)
            except estargz.NotSupported as exc:
                log.info("%s: layer %s is fetched whole: %s", self.reference, desc.get("digest"), exc)
                return None
            except errors.LazyLayerError as exc:
                raise type(exc)(f"layer {desc.get('digest')}: {exc}") from exc

        # Those kept in the disk cache are read from there, here; the others' TOCs are fetched,
        # decompressed and converted (C, zstd: the GIL let go) a layer per thread.
        todo = []
        for i, desc, blob in chunked:
            kept = estargz.read_cached(self.disk, self._chunked_name(desc), desc.get("digest", "")) \
                if self.disk is not None else None
            if kept is not None:
                out[i], blobs[i] = kept, blob
            else:
                todo.append((i, desc, blob))
        results = _in_parallel([lambda desc=desc, blob=blob: one(desc, blob) for _, desc, blob in todo])
        for (i, _, blob), got in zip(todo, results):
            if got is not None:
                out[i], blobs[i] = got, blob
        if unindexed and self.gzip_indexes == "attached":
            self._attached_indexes(unindexed, ids, out, blobs)
        return out

    def _attached_indexes(self, todo: dict[int, oci.Descriptor], ids: list[str],
                          out: dict[int, tuple[IndexLayer, list[Any]]], blobs: list[Any]) -> None:
        """Layers ``todo`` read through the indexes attached to the image, if it has any that are
        well formed and not refuted before on this machine; each is checked against its layer
        later (:class:`_AttachedCheck`) and until then counts as unchecked."""
        from ..format import estargz, gzindex

        cache = self.gzip_index_cache

        def accept(i: int, desc: oci.Descriptor, data: bytes, key: str, layer: Any, chunks: list[Any]) -> None:
            out[i], blobs[i] = (layer, chunks), self._source.blob(desc)
            self._unchecked[i] = (desc, ids[i], layer, chunks, data, key)

        for i, desc in list(todo.items()):  # chosen and checked by another process of this mount
            key = self._attached_hint.get(desc["digest"], "")
            data = gzindex.kept_attached(cache, key) if cache is not None else None
            if data is None:
                continue
            try:  # (the same bytes, by their digest, that the other process took through check_index)
                accept(i, desc, data, key, *estargz.load_raw_layer(data, desc["digest"]))
            except errors.FormatError:
                continue
            del todo[i]
        if not todo:
            return
        store = self._source.artifacts()
        if store is None or not _is_digest(self.digest):
            return
        found = gzindex.find_attached(store, self.digest, {d["digest"] for d in todo.values()})
        budget = gzindex.MAX_ATTACHED_TOTAL
        for i, desc in todo.items():
            for att in found.get(desc["digest"], []):  # the first that is well formed and not refuted here
                size = att.layer.get("size")
                if not isinstance(size, int) or size > budget:
                    log.warning("%s: attached gzip indexes over %d bytes in all: the rest are not read",
                                self.reference, gzindex.MAX_ATTACHED_TOTAL)
                    return
                budget -= size
                try:
                    data = gzindex.read_attached(store, att, cache)
                    key = hashlib.sha256(data).hexdigest()
                    if cache is not None and cache.read_file(gzindex.refuted_name(key)) is not None:
                        log.warning("%s: a gzip index attached for layer %s was found wrong before: not used",
                                    self.reference, desc["digest"])
                        continue
                    layer, chunks = estargz.load_raw_layer(data, desc["digest"])
                    gzindex.check_index(layer, chunks, desc["size"],
                                        f"the gzip index {key[:12]} attached for layer {desc['digest']}")
                except errors.LazyLayerError as exc:  # unreadable, too large, malformed: the next one
                    log.warning("%s: gzip index artifact %s for layer %s: %s; not used", self.reference,
                                att.artifact, desc["digest"], exc)
                    continue
                accept(i, desc, data, key, layer, chunks)
                log.info("%s: layer %s is read through the gzip index attached to the image, unchecked until "
                         "its background check ends", self.reference, desc["digest"])
                break

    @property
    def attached_indexes(self) -> dict[str, str]:
        """The layers read through indexes attached to the image and not yet checked here: layer
        digest -> the sha256 (hex) of its index's bytes (kept in the disk cache as
        :func:`lazylayer.format.gzindex.attached_name`); what the mount hands its fetcher (``attached=``)."""
        return {desc["digest"]: key for desc, _, _, _, _, key in self._unchecked.values()}

    @property
    def poisoned(self) -> dict[int, str]:
        """The layers :meth:`poison` refused, with the reasons."""
        return dict(self._poisoned)

    def poison(self, layer: int, reason: str) -> None:
        """Refuse every later read of ``layer`` (:class:`~lazylayer.errors.IntegrityError`, EIO
        through a mount): it is not what the index it is read through says.  The reader refuses it
        in C (``ll_image_fail_layer``), cache hits included: no check on Python's read path."""
        if layer in self._poisoned:
            return
        self._poisoned[layer] = reason
        log.error("%s: %s; every read of it fails from now on", self.reference, reason)
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.fail_layer(layer, reason)
        for fn in list(self.on_poison):
            try:
                fn(layer, reason)
            except Exception:  # noqa: BLE001 - one listener must not stop the others
                log.exception("on_poison listener failed")

    def _cached_chunked(self, desc: oci.Descriptor, build: Any) -> tuple[IndexLayer, list[Any]]:
        """``build()``'s raw layer, kept in the disk cache under the layer's digest and annotations
        (what the TOC was checked against): built once across processes."""
        from ..format import estargz

        if self.disk is None:
            layer, chunks = build()
            if chunks.whole():  # (read through a copy kept on disk)
                raise estargz.NotSupported(f"a chunk over {estargz.MAX_CHUNK_SIZE} bytes needs a disk cache")
            return layer, chunks
        return estargz.cached_raw_layer(self.disk, self._chunked_name(desc), desc.get("digest", ""), build)[0]

    def _chunked_name(self, desc: oci.Descriptor) -> str:
        """The disk cache's file of a chunked layer's raw layer: named by what its TOC was checked
        against (the layer's digest and annotations) and how it is read (runs or not)."""
        from ..format import estargz

        key = hashlib.sha256(json.dumps([desc.get("digest"), desc.get("size"), desc.get("mediaType"),
                                         desc.get("annotations"),
                                         ["runs2", estargz.RUN_SIZE, estargz.RUN_CHUNK, estargz.RUN_GAP]
                                         if self.chunk_runs else "chunks"],
                                        sort_keys=True).encode()).hexdigest()
        return f"chunked-{key}"

    def _lazy_toc(self, desc: oci.Descriptor, blob: Any) -> IndexLayer:
        """A lazy layer's TOC frame (from the disk cache, else one range request) and position."""
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
        toc_offset, toc_length = parse_toc_position(ann, size)
        frame = self.disk.get(toc_digest) if self.disk is not None else None
        if frame is None:
            frame = blob.read(toc_offset, toc_length)  # one range request
            if "sha256:" + hashlib.sha256(frame).hexdigest() != toc_digest:  # (C checks it again)
                raise errors.IntegrityError(f"layer {desc.get('digest')}: TOC digest mismatch: the blob's TOC "
                                            f"is not the one {toc_digest} names")
            if self.disk is not None:
                self.disk.put(toc_digest, frame)
        if toc_length != len(frame):
            raise errors.FormatError(f"layer {desc.get('digest')}: the TOC frame {toc_digest} has {len(frame)} "
                                     f"bytes, its position annotation says {toc_length}")
        return IndexLayer(desc.get("digest", ""), size, toc_digest, toc_offset, toc_length, frame)

    def _tell_not_lazy(self, todo: list[int], descs: list[oci.Descriptor]) -> None:
        """Say once, in words, that layers ``todo`` are fetched whole now (not said when the disk
        cache has every copy from an earlier open: ``todo`` is then empty)."""
        if not todo:
            return
        from ..units import human_size

        again = "once: the disk cache keeps the copy" if self.disk is not None else \
            "on every open: nothing keeps the copy"
        if all(is_lazy_layer(descs[i]) for i in todo):
            what = "its source cannot read byte ranges, so its layers are"
        else:
            size = human_size(sum(int(descs[i].get("size") or 0) for i in todo))
            what = f"{len(todo)} of its {len(descs)} layers ({size}) are not lazy layers: they are"
        from ..format.gzindex import is_gzip_layer

        how = "index its gzip layers once (lazylayer index IMAGE) or convert it (lazylayer convert SRC DST)" \
            if any(is_gzip_layer(descs[i]) for i in todo) else "convert it: lazylayer convert SRC DST"
        warnings.warn(f"{self.reference}: {what} fetched whole, all at once, before any file in them can "
                      f"be read ({again}); to read the image lazily, {how}", NotLazyWarning, stacklevel=5)

    def _whole_cached(self, desc: oci.Descriptor) -> bool:
        hexd = oci.check_digest(desc.get("digest", ""))
        return self.disk is not None and os.path.exists(self.disk._file_path(f"sha256-{hexd}.{_WHOLE_SUFFIX}"))

    def _plain_layer(self, desc: oci.Descriptor, diff_id: str, bar: Progress,
                     cancel: threading.Event) -> tuple[IndexLayer, Any, Any]:
        """A layer that is not lazy (or whose source cannot read ranges): fetched whole, decoded as
        it streams and kept uncompressed (once, into the disk cache if there is one) as a lazy layer
        of stored frames; its TOC spec, local blob and pin.  Nothing of it is read before its blob
        digest and its tar's diff_id have been checked (the copy is only kept once both match)."""
        hexd = oci.check_digest(desc.get("digest", ""))
        from ..format.estargz import hidden_names
        from ..format.reencode import LayerWriter, reencode_layer  # (zstandard, tarfile: not on a lazy image's path)

        # Stored frames, not compressed ones: decoding a layer as it streams keeps up with the link;
        # compressing it again did not (docs/filesystem.md, "Images not in the lazy format").
        writer = LayerWriter(threads=self.threads, stored=True)

        def build(out: Any) -> None:
            reencode_layer(self._source, desc, diff_id, out, writer, bar, cancel=cancel, hide=hidden_names(desc))

        keep: Any
        if self.disk is not None:
            keep = self.disk.ensure_pinned(f"sha256-{hexd}.{_WHOLE_SUFFIX}", build)
            path = keep.path
        else:
            keep = tempfile.NamedTemporaryFile(prefix="lazylayer-", suffix=f".{_WHOLE_SUFFIX}")
            build(keep)
            keep.flush()
            path = keep.name
        try:
            blob = FsspecBlob(path, size=os.path.getsize(path))
            index = read_toc(blob, blob.size)  # our own encoding of bytes checked against the layer digest
            frame = index.frame
            spec = IndexLayer(desc.get("digest", ""), blob.size, "sha256:" + hashlib.sha256(frame).hexdigest(),
                              index.toc_offset, len(frame), frame)
            return spec, blob, keep
        except BaseException:
            keep.close()
            raise

    # -- reading --------------------------------------------------------------

    def readinto(self, node: Node, buffer: Any, offset: int) -> int:
        """Read file ``node``'s content at ``offset`` into ``buffer``; the bytes read (short at the end)."""
        st = _regular(node)
        n = max(0, min(memoryview(buffer).nbytes, st.size - offset))
        if n == 0:
            return 0
        if self.recorder is not None:
            self.recorder.read(st.layer, st.offset + offset, n)
        got = self.reader.readinto(st.ino, buffer, offset, name=node.path, size=n)
        if got != n:
            raise errors.FormatError(f"{node.path}: layer {st.layer} ends inside the file")
        return n

    def pread(self, node: Node, size: int, offset: int) -> bytes:
        """``size`` bytes of file ``node`` at ``offset`` (fewer at its end)."""
        ino, kind, _, _, _, _, _, _, _, _, fsize, layer, _, start = node._st  # one unpack: the hot path
        if kind != "reg":
            _regular(node)
        n = fsize - offset
        if size < n:
            n = size
        if n <= 0:
            return b""
        if self.recorder is not None:
            self.recorder.read(layer, start + offset, n)
        data = self.reader.pread(ino, n, offset, name=node.path)
        if len(data) != n:
            raise errors.FormatError(f"{node.path}: layer {layer} ends inside the file")
        return data

    def pinned(self) -> Any:
        """The reference of exactly this manifest: a ``docker://`` reference by digest (a tag may
        move), else the reference as given (layouts and archives are read from local files)."""
        ref = oci.parse_reference(self.reference)
        if isinstance(ref, oci.RegistryRef) and _is_digest(self.digest):
            return oci.RegistryRef(ref.registry, ref.repository, digest=self.digest)
        return ref

    def local_path(self, layer: Layer) -> str | None:
        """The local file holding ``layer``'s frames as they are read (an OCI layout's blob, the
        stored copy of a layer fetched whole), or None if they come over the network or are
        decoded by a host (a layer of another format, read chunk by chunk: :class:`ChunkSource`)."""
        if isinstance(layer.source, ChunkSource):
            return None
        return _local_file(layer.source.blob)

    # -- information ------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """What reads cost so far: frames and compressed bytes fetched over the network
        (``frames_fetched``, ``bytes_fetched``), frames found in the disk cache (by C or by the
        Python fetch path), frames read from local files (``frames_local``, ``bytes_local``: an
        OCI layout's blobs, layers kept whole), calls into Python for missing frames
        (``host_calls``); and what opening cost: layers that were not lazy, fetched whole
        (``layers_fetched_whole``, ``bytes_fetched_whole``; 0 when the disk cache had them)."""
        out = {"frames_fetched": 0, "bytes_fetched": 0, "frames_from_disk": 0, "frames_local": 0, "bytes_local": 0}
        for layer in self.layers:
            for k in out:
                out[k] += getattr(layer.source, k)
        reader = getattr(self, "reader", None)
        if reader is not None:
            native = reader.stats()
            out["frames_from_disk"] += native["frames_disk"]
            out["host_calls"] = native["host_calls"]
        out["layers_fetched_whole"], out["bytes_fetched_whole"] = self._whole
        if self.prefetcher is not None:
            out.update(self.prefetcher.stats())
        return out

    def close(self) -> None:
        """Release the layers' readers, pins and temporary files."""
        if self._checker is not None:
            self._checker.close()
        if self.prefetcher is not None:
            self.prefetcher.close()
        self.reader = None  # freed with its last reference
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


_WHOLE_SUFFIX = "stored"  # disk-cache name of a layer kept whole: sha256-<layer hex>.stored


class _AttachedCheck:
    """Checks, in the background, each layer an image reads through an index attached to it:
    fetches the layer whole (at background priority), checks its digest and diff_id, and that the
    index's files and spans are the layer's (:func:`lazylayer.format.gzindex.verify`).  A layer
    that passes has its index kept in the disk cache (trusted from then on, as one built here); one
    that does not is poisoned (:meth:`Image.poison`) and its index remembered as refuted.  A check
    that cannot finish (the network) is tried again a few times, then said in the log; the layer's
    reads go on, unchecked (docs/filesystem.md, "Plain gzip layers").

    It starts :attr:`DELAY` seconds after the open, on a thread at the lowest CPU priority: a
    check during a cold start fetched every layer whole beside the workload's reads and made the
    start 2.5x slower (docs/benchmarks.md, case y); the reads of that time are the unchecked ones
    the policy accepts."""

    TRIES = 3
    RETRY_SECONDS = 5.0
    DELAY = 20.0

    def __init__(self, image: Image) -> None:
        self.image = image
        self.done = threading.Event()
        """Set when every layer has been checked (or given up on)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lazylayer-gzindex-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from ..format import gzindex
        from ..remote import background

        img = self.image
        try:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
            except OSError:
                pass
            if self._stop.wait(self.DELAY):
                return
            for i, (desc, diff_id, layer, chunks, data, key) in list(img._unchecked.items()):
                for attempt in range(self.TRIES):
                    if self._stop.is_set():
                        return
                    try:
                        with background():
                            raw = img._source.open_blob(desc)
                            try:
                                gzindex.verify(raw, desc, diff_id, layer, chunks, cancel=self._stop)
                            finally:
                                raw.close()
                    except (errors.IntegrityError, errors.FormatError, errors.CorruptFrameError) as exc:
                        if self._stop.is_set():
                            return
                        if img.gzip_index_cache is not None:
                            img.gzip_index_cache.ensure_file(gzindex.refuted_name(key), lambda f: f.write(b"refuted\n"))
                        img.poison(i, f"layer {desc['digest']} does not match the gzip index attached to the "
                                      f"image ({exc})")
                        break
                    except Exception as exc:  # noqa: BLE001 - the network: tried again, then said
                        if self._stop.is_set():
                            return
                        log.warning("%s: checking layer %s against its attached gzip index failed (%s)%s",
                                    img.reference, desc["digest"], exc,
                                    "; trying again" if attempt + 1 < self.TRIES else "; its reads stay unchecked")
                        self._stop.wait(self.RETRY_SECONDS)
                        continue
                    del img._unchecked[i]
                    log.info("%s: layer %s matches its attached gzip index", img.reference, desc["digest"])
                    if img.gzip_index_cache is not None:
                        img.gzip_index_cache.ensure_file(gzindex.cache_name(desc["digest"]),
                                                 lambda f, d=data: f.write(d))
                    break
        finally:
            self.done.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _WholeLayers:
    """The layers an open must fetch whole, fetched all at once (at most :attr:`PARALLEL` at a
    time, as a full pull does), each decoded as it streams into stored frames; one progress bar
    for all of them (on a terminal only)."""

    PARALLEL = 4  # layers at once: each holds ~45 MB of buffers while it streams

    def __init__(self, image: Image, plain: list[int], descs: list[oci.Descriptor], ids: list[str]) -> None:
        self._cancel = threading.Event()
        self.layers_fetched = 0
        """Layers fetched now (the others were in the disk cache)."""
        self.bytes_fetched = 0
        """Their compressed bytes, streamed over the network (or read from the source)."""
        self._futures: dict[int, Any] = {}
        self._pool: Any = None
        self._bar: Progress | None = None
        if not plain:
            return
        todo = [i for i in plain if not image._whole_cached(descs[i])]
        image._tell_not_lazy(todo, descs)
        self.layers_fetched = len(todo)
        total = sum(int(descs[i].get("size") or 0) for i in todo)
        self._bar = Progress(total or None, f"fetching {len(todo)} layer{'s' if len(todo) != 1 else ''} whole "
                             f"(not lazy)", enabled=None if todo else False)
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(min(self.PARALLEL, len(plain)), thread_name_prefix="lazylayer-layer")
        for i in plain:
            self._futures[i] = self._pool.submit(image._plain_layer, descs[i], ids[i], self._bar, self._cancel)

    def results(self) -> dict[int, tuple[IndexLayer, Any, Any]]:
        """Each layer's (TOC spec, local blob, pin), once all are done.  The first layer to fail
        stops the others (they fail as 'cancelled' at their next read); its error is raised once
        they have stopped, and the pins of those that finished are released."""
        from concurrent.futures import FIRST_EXCEPTION, wait

        out: dict[int, tuple[IndexLayer, Any, Any]] = {}
        failure: BaseException | None = None
        try:
            done, _ = wait(self._futures.values(), return_when=FIRST_EXCEPTION)
            first = next((f for f in done if f.exception() is not None), None)
            if first is not None:
                failure = first.exception()
                self._cancel.set()
            for i, future in self._futures.items():
                try:
                    out[i] = future.result()
                except BaseException as exc:  # noqa: BLE001 - the first is raised below
                    failure = failure or exc
        finally:
            self.close()
        if failure is not None:
            for _, _, keep in out.values():
                keep.close()
            raise failure
        return out

    def cancel(self) -> None:
        """Stop the layers still streaming (they fail with 'cancelled'), and wait for them."""
        self._cancel.set()
        for future in self._futures.values():
            try:
                _, _, keep = future.result()
                keep.close()
            except BaseException:  # noqa: BLE001 - cancelled or failed: nothing to release
                pass
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._bar is not None:
            self.bytes_fetched = self._bar.done
            self._bar.close()
            self._bar = None


def _local_file(blob: Any) -> str | None:
    """The path of the local file ``blob`` reads, or None if its bytes come over the network."""
    fs = getattr(blob, "fs", None)
    if fs is None or "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return None
    return str(blob.path)


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


@contextlib.contextmanager
def _no_gc() -> Any:
    """The cyclic garbage collector held off while an open builds its tables: the tens of thousands
    of small objects a peer format's TOC becomes (entries, chunks, frames) are acyclic, yet their
    allocation set off repeated full collections that cost a quarter of an eStargz open (4.5 s ->
    3.5 s cold, 0.80 -> 0.63 s from the disk cache, docs/benchmarks.md).  Reference counting still
    frees everything; the collector runs again as usual afterwards.  Process-wide: left alone if
    someone else turned it off."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _is_digest(digest: str) -> bool:
    try:
        oci.check_digest(digest)
        return True
    except errors.FormatError:
        return False
