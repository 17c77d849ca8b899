"""Convert OCI and Docker images to lazy layers (docs/format.md).

Each layer is streamed once: a background thread reads the source blob and
decompresses it (gzip with ISA-L's inflate, zstd, or plain tar) into a bounded
queue; the calling thread walks the tar and feeds the layer writer, whose
frames are compressed on the worker pool.  Memory stays bounded whatever the
layer size, and both cores are busy.

The tar is kept byte for byte, so each layer's diff_id (checked against the
image config) and the config itself are unchanged; only the manifest changes:
new layer descriptors (media type ``tar+zstd``, TOC annotations) and an
annotation naming the source manifest.  A multi-platform index converts every
platform.  Layers already in the lazy format are copied as they are.
Blobs are written under temporary names and the destination's index.json is
updated last, so a failed conversion never looks complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from . import errors, oci
from .format import (
    ARCHIVE_MEMBER,
    LAYER_FRAME_SIZE,
    LayerInfo,
    LayerWriter,
    is_lazy_layer,
    reencode_layer,
)
from .progress import Progress
from .registry import open_destination, open_source
from .units import human_size

ANNOTATION_SOURCE = "io.lazylayer.source-manifest"
_CHUNK = 1 << 20


@dataclass
class ConvertedLayer:
    """One converted layer: the source layer's descriptor, what was written, and how long it took."""

    source: oci.Descriptor
    info: LayerInfo
    seconds: float

    def summary(self) -> str:
        """``12.3 MiB gzip -> 40.1 MiB tar -> 13.0 MiB lazy (32.4%), 21 frames, 1503 entries, 2.1 s``."""
        h = human_size
        i = self.info
        src = f"{h(int(self.source.get('size') or 0))} {_kind(self.source)}"
        return (f"{src} -> {h(i.tar_size)} tar -> {h(i.size)} lazy ({i.size / max(i.tar_size, 1):.1%} of the tar), "
                f"{i.frames} frames, {i.entries} entries, {self.seconds:.1f} s")


@dataclass
class ConvertResult:
    """What a conversion wrote: the root descriptor (index or manifest) and per-layer facts.

    ``layers``: what each converted layer became (in order); ``converted``: the
    same with its source layer and time; ``seconds``: the whole conversion.
    """

    root: oci.Descriptor
    layers: list[LayerInfo]
    copied_layers: int
    converted: list[ConvertedLayer] = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------ conversion


class Converter:
    """Converts images into lazy-layer images in an OCI layout.

    ``frame_size``, ``level`` and ``threads`` go to :class:`LayerWriter`.
    ``progress``: draw a bar on stderr, naming the layer at work (default: when
    stderr is a terminal; never on stdout).
    ``source_registry`` / ``dest_registry``: :class:`lazylayer.registry.RegistryConfig`
    for ``docker://`` references (credentials, TLS, mirrors).
    ``prefetch``: a :class:`lazylayer.prefetch.Plan` whose ranges go into the
    TOC of the layers it covers (matched by digest or diff_id); a layer that is
    lazy already is re-encoded to take its plan.
    """

    def __init__(self, frame_size: int = LAYER_FRAME_SIZE, level: int = 3,
                 threads: int | None = None, progress: bool | None = None,
                 source_registry: Any = None, dest_registry: Any = None, prefetch: Any = None) -> None:
        self.writer = LayerWriter(frame_size=frame_size, level=level, threads=threads)
        self.prefetch = prefetch
        self.progress = progress
        self.source_registry = source_registry
        self.dest_registry = dest_registry

    def convert(self, src: str | oci.ImageRef, dst: str | oci.ImageRef) -> ConvertResult:
        start = time.monotonic()
        source = open_source(src, self.source_registry)
        try:
            dest = open_destination(dst, self.dest_registry)
            root_desc, index, images = oci.images(source)
            total = sum(int(layer.get("size") or 0) for img in images for layer in img.manifest["layers"])
            count = len({layer.get("digest") for img in images for layer in img.manifest["layers"]
                         if any(oci.is_tar_layer(x) for x in img.manifest["layers"])})
            bar = Progress(total, "convert", self.progress)
            done: dict[str, oci.Descriptor] = {}  # source layer key -> converted descriptor
            infos: list[LayerInfo] = []
            converted: list[ConvertedLayer] = []
            copied = 0
            manifests = []
            try:
                for img in images:
                    if not any(oci.is_tar_layer(layer) for layer in img.manifest["layers"]):
                        # An artifact (e.g. a BuildKit attestation): nothing to convert.
                        manifests.append(self._copy_manifest(source, dest, img, bar))
                        continue
                    new_layers = []
                    layer_diff_ids = oci.diff_ids(img)
                    for i, layer in enumerate(img.manifest["layers"]):
                        key = layer.get("digest") or f"{id(img)}:{i}"
                        if key not in done:
                            short = str(layer.get("digest", "?"))[:19]
                            bar.set_label(f"convert: layer {len(done) + 1}/{count} {short}…")
                            plan = self.prefetch.for_layer(layer.get("digest", ""), layer_diff_ids[i]) \
                                if self.prefetch is not None and oci.is_tar_layer(layer) else None
                            if (is_lazy_layer(layer) and plan is None) or not oci.is_tar_layer(layer):
                                done[key] = self._copy_layer(source, dest, layer, bar)
                                copied += 1
                            else:
                                t = time.monotonic()
                                desc, info = self._convert_layer(source, dest, layer, layer_diff_ids[i], bar,
                                                                 plan.ranges if plan is not None else ())
                                done[key] = desc
                                infos.append(info)
                                converted.append(ConvertedLayer(dict(layer), info, time.monotonic() - t))
                        new_layers.append(done[key])
                    manifests.append(self._write_manifest(dest, img, new_layers))
            finally:
                bar.close()
            if index is not None:
                new_index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": manifests}
                if index.get("annotations"):
                    new_index["annotations"] = index["annotations"]
                root = dest.write_blob(oci.canonical_json(new_index), oci.OCI_INDEX)
            else:
                root = manifests[0]
            dest.set_tag(dest.tag, root)
            return ConvertResult(root=root, layers=infos, copied_layers=copied, converted=converted,
                                 seconds=time.monotonic() - start)
        finally:
            source.close()

    def _convert_layer(self, source: oci.ImageSource, dest: oci.ImageDestination, layer: oci.Descriptor,
                       diff_id: str, bar: Progress, prefetch: Any = ()) -> tuple[oci.Descriptor, LayerInfo]:
        with dest.blob_writer() as out:
            info = reencode_layer(source, layer, diff_id, out.file, self.writer, bar, prefetch)
            out.commit(info.digest)
        annotations = {k: v for k, v in (layer.get("annotations") or {}).items() if k != ARCHIVE_MEMBER}
        annotations.update(info.annotations())
        desc = {"mediaType": oci.OCI_LAYER_ZSTD, "digest": info.digest, "size": info.size,
                "annotations": annotations}
        return desc, info

    def _copy_manifest(self, source: oci.ImageSource, dest: oci.ImageDestination, img: oci.SourceImage,
                       bar: Progress) -> oci.Descriptor:
        """Copy a manifest that has no filesystem layers, byte for byte, with its blobs."""
        for layer in img.manifest["layers"]:
            self._copy_layer(source, dest, layer, bar)
        dest.write_blob(img.config, img.manifest["config"].get("mediaType", oci.OCI_CONFIG))
        data = source.read_blob(img.manifest_descriptor)
        dest.write_blob(data, img.manifest_descriptor.get("mediaType", oci.OCI_MANIFEST))
        return dict(img.manifest_descriptor)

    def _copy_layer(self, source: oci.ImageSource, dest: oci.ImageDestination, layer: oci.Descriptor,
                    bar: Progress) -> oci.Descriptor:
        if dest.reuse_blob(layer, source):  # already there, or mounted from the source repository
            bar.update(int(layer.get("size") or 0))
            return dict(layer)
        raw = oci.HashingReader(source.open_blob(layer))
        try:
            with dest.blob_writer() as out:
                while chunk := raw.read(4 * _CHUNK):
                    out.file.write(chunk)
                    bar.update(len(chunk))
                if raw.digest() != layer["digest"]:
                    raise errors.IntegrityError(f"layer {layer['digest']}: the source blob's digest is {raw.digest()}")
                out.commit(layer["digest"])
        finally:
            raw.raw.close()
        return dict(layer)

    def _write_manifest(self, dest: oci.ImageDestination, img: oci.SourceImage,
                        layers: list[oci.Descriptor]) -> oci.Descriptor:
        config_desc = dest.write_blob(img.config, oci.OCI_CONFIG)
        manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                                    "config": config_desc, "layers": layers}
        annotations = dict(img.manifest.get("annotations") or {})
        annotations[ANNOTATION_SOURCE] = img.manifest_descriptor["digest"]
        manifest["annotations"] = annotations
        extra: dict[str, Any] = {"platform": img.platform} if img.platform else {}
        if img.manifest_descriptor.get("annotations") and img.platform:  # an index entry's own annotations
            extra["annotations"] = img.manifest_descriptor["annotations"]
        return dest.write_blob(oci.canonical_json(manifest), oci.OCI_MANIFEST, **extra)


def _kind(layer: oci.Descriptor) -> str:
    """How a source layer is stored: ``gzip``, ``zstd``, ``lazy`` (re-encoded for a plan) or ``tar``."""
    media = str(layer.get("mediaType") or "")
    if is_lazy_layer(layer):
        return "lazy"
    return "gzip" if "gzip" in media else "zstd" if "zstd" in media else "tar"


def convert(src: str, dst: str, **options: Any) -> ConvertResult:
    """Convert image ``src`` to lazy layers at ``dst`` (see :class:`Converter` for options)."""
    return Converter(**options).convert(src, dst)
