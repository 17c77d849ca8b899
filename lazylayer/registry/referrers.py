"""Artifacts that refer to an image: OCI image-spec 1.1 ``subject``, distribution-spec 1.1 referrers.

lazylayer stores small documents about an image (prefetch plans) as OCI
artifacts *next to* the image instead of inside it, so the image's digest does
not change:

- the artifact is an image manifest (``application/vnd.oci.image.manifest.v1+json``)
  with an ``artifactType``, the empty config (``{}``,
  ``application/vnd.oci.empty.v1+json``), one layer holding the payload, and a
  ``subject`` descriptor naming the image manifest (image-spec "Guidelines
  for Artifact Usage");
- in a registry it is pushed by digest.  A registry with the referrers API
  answers the push with ``OCI-Subject``; otherwise the client maintains the
  *referrers tag* ``sha256-<hex>`` (an image index listing the referrers),
  as distribution-spec 1.1 "Pushing Manifests with Subject" requires;
- discovery asks ``GET /v2/<repo>/referrers/<digest>`` and falls back to the
  referrers tag when that answers 404 (distribution-spec "Unavailable
  Referrers API");
- in an OCI image layout the artifact's descriptor is added to ``index.json``
  without a tag (as oras does), and discovery reads the manifests listed there.

Referrer lookups and the referrers tag always go to the registry itself, never
to a mirror (a pull-through cache may hold a stale referrers tag).  The
referrers tag is read, extended and written back without a lock: two clients
attaching to the same image at the same moment can lose one entry (the spec
leaves that race to clients; a registry with the referrers API has none).

The functions here build and check the documents; where they are kept is the
store's business: any :class:`lazylayer.oci.ArtifactStore` — an
:class:`~lazylayer.oci.OciLayout` (:mod:`lazylayer.oci.layout`), a
:class:`~lazylayer.registry.RegistrySource` or ``RegistryDestination``
(:class:`~lazylayer.registry.client.RegistryArtifacts`) — or what an image
source's ``artifacts()`` returns.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import errors, oci
from .client import MAX_REFERRER_PAGES, referrers_tag

__all__ = [
    "ARTIFACT_MANIFEST",
    "EMPTY_DESCRIPTOR",
    "EMPTY_JSON",
    "EMPTY_MEDIA_TYPE",
    "MAX_REFERRER_PAGES",
    "Payload",
    "artifact_manifest",
    "attach",
    "find",
    "read_layer",
    "read_manifest",
    "read_payload",
    "referrers_tag",
]

ARTIFACT_MANIFEST = oci.OCI_MANIFEST  # an artifact is an image manifest with an artifactType
EMPTY_MEDIA_TYPE = oci.EMPTY_MEDIA_TYPE  # the empty config: the 2-byte blob "{}"
EMPTY_JSON = oci.EMPTY_JSON
EMPTY_DESCRIPTOR: oci.Descriptor = oci.EMPTY_DESCRIPTOR

class Payload(NamedTuple):
    """One layer of an artifact: its bytes, media type and (optional) annotations."""

    data: bytes
    media_type: str
    annotations: dict[str, str] | None = None


_STORE_METHODS = ("attach_artifact", "referrers", "read_artifact_manifest", "read_artifact_blob")


# ------------------------------------------------------------------ public interface


def artifact_manifest(subject: oci.Descriptor, artifact_type: str, layer: oci.Descriptor | list[oci.Descriptor],
                      annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The artifact manifest :func:`attach` pushes (``layer``: the payload's descriptor, or the
    descriptors of several)."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": ARTIFACT_MANIFEST,
        "artifactType": artifact_type,
        "config": dict(EMPTY_DESCRIPTOR),
        "layers": list(layer) if isinstance(layer, list) else [layer],
        "subject": _subject(subject),
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return manifest


def attach(store: oci.ArtifactStore, subject: oci.Descriptor, artifact_type: str, payload: bytes | list[Payload],
           payload_media_type: str | None = None, annotations: dict[str, str] | None = None,
           max_payload: int = oci.MAX_METADATA_BYTES) -> oci.Descriptor:
    """Push an artifact manifest whose ``subject`` is ``subject`` and whose one layer is ``payload``
    (of ``payload_media_type``) — or whose layers are the :class:`Payload` list ``payload``.

    ``store``: an :class:`~lazylayer.oci.ArtifactStore` (a registry source or
    destination, an OCI layout).  ``subject`` is the descriptor (``mediaType``,
    ``digest``, ``size``) of an image manifest or index.  Returns the artifact
    manifest's descriptor (``mediaType``, ``digest``, ``size``,
    ``artifactType`` and, when given, ``annotations``): the entry :func:`find`
    lists.  The manifest is deterministic (canonical JSON, no timestamps), so
    attaching the same payload twice stores one artifact and one referrers entry.
    A payload over ``max_payload`` bytes raises :class:`~lazylayer.errors.LimitError`.
    """
    store = _store(store)
    subj = _subject(subject)
    _media_type(artifact_type, "artifact_type")
    ann = oci.check_annotations(annotations, "annotations")
    if isinstance(payload, list):
        payloads = payload
    else:
        payloads = [Payload(bytes(payload), _media_type(payload_media_type, "payload_media_type"))]
    layers = []
    for p in payloads:
        _media_type(p.media_type, "payload_media_type")
        if len(p.data) > max_payload:
            raise errors.LimitError(f"payload of {len(p.data)} bytes is larger than {max_payload}")
        layer = oci.descriptor(p.media_type, bytes(p.data))
        if p.annotations:
            layer["annotations"] = oci.check_annotations(p.annotations, "payload annotations")
        layers.append(layer)
    data = oci.canonical_json(artifact_manifest(subj, artifact_type, layers, ann))
    if len(data) > oci.MAX_METADATA_BYTES:
        raise errors.LimitError(f"artifact manifest of {len(data)} bytes is larger than {oci.MAX_METADATA_BYTES}")
    desc = oci.descriptor(ARTIFACT_MANIFEST, data, artifactType=artifact_type)
    if ann:
        desc["annotations"] = ann
    store.attach_artifact(subj["digest"], [(bytes(p.data), p.media_type) for p in payloads], data, dict(desc))
    return dict(desc)


def find(store: oci.ArtifactStore, subject_digest: str, artifact_type: str | None = None) -> list[oci.Descriptor]:
    """Descriptors of the artifacts that refer to ``subject_digest``, only ``artifact_type``'s when given.

    Each has ``mediaType``, ``digest``, ``size`` and, as the referrers index
    gives them, ``artifactType`` and ``annotations``.  An empty list when
    there are none.  A referrers answer or referrers tag that is not a
    well-formed image index raises :class:`~lazylayer.errors.FormatError`.
    """
    store = _store(store)
    oci.check_digest(subject_digest)
    if artifact_type is not None:
        _media_type(artifact_type, "artifact_type")
    out: list[oci.Descriptor] = []
    seen: set[str] = set()
    for entry in store.referrers(subject_digest, artifact_type):
        if artifact_type is not None and entry.get("artifactType") != artifact_type:
            continue  # a registry may ignore ?artifactType= (no OCI-Filters-Applied): filter here too
        if entry["digest"] not in seen:
            seen.add(entry["digest"])
            out.append(entry)
    return out


def read_manifest(store: oci.ArtifactStore, artifact: oci.Descriptor) -> dict[str, Any]:
    """The artifact's manifest (``artifact``: a descriptor from :func:`find` or :func:`attach`),
    checked against its digest (:class:`~lazylayer.errors.IntegrityError`), with a ``layers``
    list (else :class:`~lazylayer.errors.FormatError`)."""
    store = _store(store)
    desc = oci.check_descriptor(artifact, "artifact descriptor")
    what = f"artifact {desc['digest']}"
    if desc["mediaType"] != ARTIFACT_MANIFEST:
        raise errors.FormatError(f"{what} is a {desc['mediaType']!r}, not an image manifest")
    if desc["size"] > oci.MAX_METADATA_BYTES:
        raise errors.LimitError(f"{what}: manifest of {desc['size']} bytes is too large to read")
    manifest = oci.parse_json(store.read_artifact_manifest(desc), f"{what} manifest")
    if not isinstance(manifest.get("layers"), list):
        raise errors.FormatError(f"{what}: the manifest has no layers list")
    return manifest


def read_layer(store: oci.ArtifactStore, layer: Any, what: str, max_bytes: int = oci.MAX_METADATA_BYTES) -> bytes:
    """The verified bytes of one layer of an artifact's manifest (``layer``: its descriptor);
    :class:`~lazylayer.errors.LimitError` over ``max_bytes``."""
    layer = oci.check_descriptor(layer, f"{what}: layer")
    if layer["size"] > max_bytes:
        raise errors.LimitError(f"{what}: layer {layer['digest']} of {layer['size']} bytes is too large "
                                f"(limit {max_bytes})")
    return _store(store).read_artifact_blob(layer)  # checks size and digest


def read_payload(store: oci.ArtifactStore, artifact: oci.Descriptor, media_type: str) -> bytes:
    """The verified bytes of the artifact's first layer of ``media_type``.

    ``artifact`` is a descriptor from :func:`find` or :func:`attach`.  The
    manifest and the layer are checked against their digests
    (:class:`~lazylayer.errors.IntegrityError`); a manifest without such a
    layer, or a malformed one, raises :class:`~lazylayer.errors.FormatError`;
    a layer over ``oci.MAX_METADATA_BYTES`` raises :class:`~lazylayer.errors.LimitError`.
    """
    _media_type(media_type, "media_type")
    manifest = read_manifest(store, artifact)
    what = f"artifact {artifact['digest']}"
    layers = manifest["layers"]
    chosen = next((layer for layer in layers if isinstance(layer, dict) and layer.get("mediaType") == media_type), None)
    if chosen is None:
        have = sorted({str(layer.get("mediaType")) for layer in layers if isinstance(layer, dict)})
        raise errors.FormatError(f"{what} has no layer of media type {media_type!r} "
                                 f"(its layers: {', '.join(have) or 'none'})")
    return read_layer(store, chosen, what)


# ------------------------------------------------------------------ validation


def _store(store: Any) -> oci.ArtifactStore:
    """``store`` if it has the :class:`~lazylayer.oci.ArtifactStore` methods, else a TypeError."""
    missing = [name for name in _STORE_METHODS if not callable(getattr(store, name, None))]
    if missing:
        raise TypeError(f"expected an ArtifactStore (a RegistrySource, RegistryDestination or OciLayout), "
                        f"not {type(store).__name__} (it has no {', '.join(missing)})")
    return store  # type: ignore[no-any-return]


def _media_type(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise ValueError(f"{what} must be a non-empty media type string, not {value!r}")
    return value


def _subject(subject: Any) -> oci.Descriptor:
    d = oci.check_descriptor(subject, "subject descriptor")
    return {"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]}
