"""``lazylayer index IMAGE``: make an image's plain gzip layers lazy without rebuilding it.

Each gzip layer is read once, checked against its digest, and indexed
(:func:`lazylayer.format.gzindex.build`: inflate checkpoints, its tar entries,
the sha256 of each span); the index is kept in the disk cache under the
layer's digest.  From then on every open of an image with that layer on this
machine — a mount, ``lazylayer://``, ``lazylayer ls`` — reads it lazily,
fetching only the spans its reads need, instead of fetching it whole.

An index made here is trusted because it was made from bytes checked against
the layer's digest.  (docs/filesystem.md, "Plain gzip layers".)
"""

from __future__ import annotations

import errno
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import errors, oci
from .format.layer import Toc
from .image.cache import CacheError, DiskCache
from .progress import Progress
from .registry import open_source

_DEFAULT: Any = object()
PARALLEL = 2
"""Layers indexed at once: each keeps about one core and a half busy (inflate; span hashes and tar)."""


@dataclass
class IndexedLayer:
    """One gzip layer: its digest and blob size, the spans and files of its index, and whether it
    was indexed now (False: the disk cache had it)."""

    digest: str
    size: int
    spans: int
    entries: int
    tar_size: int
    built: bool
    seconds: float = 0.0


@dataclass
class IndexResult:
    """What :func:`index_image` did: the image's manifest digest, its gzip layers, the layers it
    skipped (not gzip), the time taken and the attached artifact."""

    manifest: str
    layers: list[IndexedLayer] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    artifact: dict[str, Any] | None = None
    """The descriptor of the artifact the indexes were attached as (``attach=True``)."""


def index_image(reference: str | oci.ImageRef, *, platform: str | None = None, registry: Any = None,
                cache: DiskCache | None = _DEFAULT, span: int | None = None,
                progress: bool | None = None, attach: bool = False) -> IndexResult:
    """Index every plain gzip layer of ``reference`` (one platform) into the disk cache ``cache``
    (default: the user's); layers indexed already are not read again.  Raises
    :class:`~lazylayer.errors.IntegrityError` if a layer is not the blob its digest names (no
    index is kept for it).

    ``attach``: also store the indexes next to the image, as an OCI artifact that refers to it
    (in its registry repository or OCI layout; ``result.artifact`` is its descriptor), for other
    machines to use under the ``attached`` policy (docs/filesystem.md, "Plain gzip layers")."""
    from .format import gzindex
    from .format.estargz import cached_raw_layer

    disk = DiskCache() if cache is _DEFAULT else cache
    if disk is None:
        raise ValueError("index_image needs a disk cache: the index is kept there")
    start = time.monotonic()
    ref = oci.parse_reference(reference) if isinstance(reference, str) else reference
    source = open_source(ref, registry)
    try:
        img = oci.select_image(source, platform)
        descs = [d for d in img.manifest["layers"] if oci.is_tar_layer(d)]
        todo = {d["digest"]: d for d in descs if gzindex.is_gzip_layer(d) and isinstance(d.get("digest"), str)}
        result = IndexResult(img.manifest_descriptor.get("digest", ""), skipped=len(descs) - len(todo))
        bar = Progress(sum(int(d.get("size") or 0) for d in todo.values()) or None,
                       f"indexing {len(todo)} gzip layer{'s' if len(todo) != 1 else ''}", progress)

        def one(desc: oci.Descriptor) -> IndexedLayer:
            t0 = time.monotonic()
            digest = desc["digest"]
            oci.check_digest(digest)  # (it names a file in the disk cache)
            counts: dict[str, int] = {}

            def build() -> Any:
                raw = source.open_blob(desc)
                try:
                    return gzindex.build(raw, desc, span or gzindex.SPAN, bar, counts=counts)
                finally:
                    raw.close()

            (layer, chunks), built = cached_raw_layer(disk, gzindex.cache_name(digest), digest, build)
            if not built:  # indexed before
                bar.update(int(desc.get("size") or 0))
            entries = counts["entries"] if "entries" in counts else len(Toc.from_frame(layer.toc_frame).entries)
            return IndexedLayer(digest, int(desc.get("size") or 0), len(chunks), entries, layer.toc_offset,
                                built, time.monotonic() - t0)

        try:
            with ThreadPoolExecutor(max(1, min(PARALLEL, len(todo))), thread_name_prefix="lazylayer-index") as pool:
                result.layers = list(pool.map(one, todo.values()))
        finally:
            bar.close()
        if attach and result.layers:
            store = source.artifacts()
            if store is None:
                raise errors.LazyLayerError(f"{reference}: indexes can be attached only to images in a registry "
                                            "or an OCI layout")
            subject = {k: img.manifest_descriptor[k] for k in ("mediaType", "digest", "size")}
            payloads = []
            for x in result.layers:
                data = disk.read_file(gzindex.cache_name(x.digest))
                if data is None:
                    raise CacheError(errno.ENOENT, f"layer {x.digest}: its index vanished from the disk cache")
                payloads.append((x.digest, data))
            result.artifact = gzindex.attach(store, subject, payloads)
        result.seconds = time.monotonic() - start
        return result
    finally:
        source.close()
