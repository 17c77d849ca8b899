"""What every image store offers, and the images in one.

:class:`ImageSource` (read: an OCI layout, a docker-archive, a registry
repository), :class:`ImageDestination` (write) and :class:`ArtifactStore`
(artifacts that refer to an image) are the protocols the converter, the image
reader and the prefetch plans work through, without knowing where the blobs
live.  :func:`select_image` picks a platform's image from an index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, Sequence

from .. import errors
from .media import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    check_digest,
    parse_json,
)
from .reference import (
    ImageRef,
    ReferenceError,
    _platform_text,
    host_platform,
    parse_platform,
)

# ------------------------------------------------------------------ source protocol


@dataclass
class SourceImage:
    """One platform's image from a source: what the converter needs."""

    manifest: dict[str, Any]
    manifest_descriptor: Descriptor
    config: bytes
    platform: dict[str, Any] | None = None


class ImageSource(Protocol):
    @property
    def ref(self) -> ImageRef:
        """Where the image comes from."""

    def root(self) -> tuple[Descriptor, bytes]:
        """The reference's top descriptor (an index or a manifest) and its verified bytes."""

    def read_blob(self, desc: Descriptor) -> bytes:
        """A small blob (manifest, index, config), read whole and checked against its digest."""

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """A layer blob as a stream; the caller checks its digest as it reads."""

    def blob(self, desc: Descriptor) -> Any:
        """A layer blob for range reads (a :class:`lazylayer.remote.Blob`), or None when the
        store cannot read ranges (a docker-archive): such a layer is read whole."""

    def artifacts(self) -> ArtifactStore | None:
        """Where artifacts that refer to this source's images live (an :class:`ArtifactStore`:
        the registry repository, the OCI layout itself), or None when the store keeps none
        (a docker-archive)."""

    def close(self) -> None: ...


class ImageDestination(Protocol):
    """Where the converter writes: an :class:`OciLayout` or a registry repository."""

    @property
    def tag(self) -> str | None:
        """The tag the write ends by pointing at the image (None: untagged)."""

    def write_blob(self, data: bytes, media_type: str, **extra: Any) -> Descriptor:
        """Store a small blob (a manifest or index goes where the store keeps those)."""

    def blob_writer(self) -> Any:
        """A context manager with ``.file`` to stream into and ``commit(digest)``."""

    def reuse_blob(self, desc: Descriptor, source: object = None) -> bool:
        """True if the blob is there already (or was mounted from ``source``): no copy needed."""

    def set_tag(self, tag: str | None, desc: Descriptor) -> None:
        """Point ``tag`` at ``desc``: the last step of a write."""


# ------------------------------------------------------------------ artifacts

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"  # the empty config: the 2-byte blob "{}"
EMPTY_JSON = b"{}"
EMPTY_DESCRIPTOR: Descriptor = {
    "mediaType": EMPTY_MEDIA_TYPE,
    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    "size": 2,
}


class ArtifactStore(Protocol):
    """Where OCI artifacts that refer to an image (their manifest's ``subject``) are kept.

    :mod:`lazylayer.registry.referrers` (``attach``, ``find``, ``read_payload``;
    docs/referrers.md) works through these four methods and nothing else.
    Implemented by :class:`~lazylayer.oci.OciLayout` (index.json lists the
    artifacts, untagged) and by the registry stores
    (:class:`~lazylayer.registry.RegistrySource`, ``RegistryDestination``:
    the referrers API, else the referrers tag).  An image's store is its
    source's :meth:`ImageSource.artifacts`.
    """

    def attach_artifact(self, subject_digest: str, payloads: Sequence[tuple[bytes, str]],
                        manifest: bytes, manifest_desc: Descriptor) -> None:
        """Store the empty config (:data:`EMPTY_JSON`), the ``payloads`` (its layers' bytes, each
        with its media type) and the artifact ``manifest`` (whose descriptor, with
        ``artifactType`` and ``annotations``, is ``manifest_desc``), and make it findable from
        ``subject_digest``.  Storing the same manifest again changes nothing."""

    def referrers(self, subject_digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        """The descriptors of the manifests whose ``subject`` is ``subject_digest``, each checked
        with :func:`check_descriptor`.  ``artifact_type`` is a hint the store may ignore: the
        caller filters by type (and drops duplicates) itself."""

    def read_artifact_manifest(self, desc: Descriptor) -> bytes:
        """An artifact manifest's bytes, checked against ``desc``'s digest and size."""

    def read_artifact_blob(self, desc: Descriptor) -> bytes:
        """A blob an artifact manifest lists (its payload), read whole and checked against
        ``desc``'s digest and size."""


def check_annotations(value: Any, what: str) -> dict[str, str]:
    """A copy of an ``annotations`` map (None: empty); anything but strings to strings is a FormatError."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise errors.FormatError(f"{what} must map strings to strings")
    return dict(value)


def check_descriptor(value: Any, what: str) -> Descriptor:
    """A checked copy of a descriptor: ``mediaType`` string, sha256 ``digest``, ``size`` >= 0."""
    if not isinstance(value, dict):
        raise errors.FormatError(f"{what} is not a JSON object")
    media = value.get("mediaType")
    if not isinstance(media, str) or not media:
        raise errors.FormatError(f"{what} has no mediaType")
    check_digest(value.get("digest", ""))  # FormatError for anything but sha256:<64 hex>
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise errors.FormatError(f"{what} has an invalid size {size!r}")
    return dict(value)


def referrers_entries(index: dict[str, Any], what: str) -> list[Descriptor]:
    """The checked ``manifests`` of a referrers index (each entry a copy, extra fields kept)."""
    media = index.get("mediaType")
    if media is not None and media != OCI_INDEX:
        raise errors.FormatError(f"{what} has media type {media!r}, not {OCI_INDEX}")
    manifests = index.get("manifests", [])
    if not isinstance(manifests, list):
        raise errors.FormatError(f"{what}: 'manifests' is not a list")
    out = []
    for i, entry in enumerate(manifests):
        d = check_descriptor(entry, f"{what}: manifests[{i}]")
        if "artifactType" in d and not isinstance(d["artifactType"], str):
            raise errors.FormatError(f"{what}: manifests[{i}] has a non-string artifactType")
        if "annotations" in d:
            d["annotations"] = check_annotations(d["annotations"], f"{what}: manifests[{i}].annotations")
        out.append(d)
    return out


# ------------------------------------------------------------------ images


def images(source: ImageSource) -> tuple[Descriptor, dict[str, Any] | None, list[SourceImage]]:
    """Every platform image of a source: (root descriptor, index or None, images)."""
    desc, data = source.root()
    media = desc.get("mediaType") or parse_json(data, "manifest").get("mediaType")
    out: list[SourceImage] = []
    if media in INDEX_TYPES:
        index = parse_json(data, f"index {desc['digest']}")
        for mdesc in index.get("manifests", []):
            if mdesc.get("mediaType") not in MANIFEST_TYPES:
                raise errors.FormatError(f"index entry {mdesc.get('digest')} has media type "
                                         f"{mdesc.get('mediaType')!r}; nested indexes are not supported")
            out.append(_image(source, mdesc))
        return desc, index, out
    if media in MANIFEST_TYPES or media is None:
        out.append(_image(source, desc, data))
        return desc, None, out
    raise errors.FormatError(f"{source.ref}: unsupported media type {media!r}")


def _image(source: ImageSource, desc: Descriptor, data: bytes | None = None) -> SourceImage:
    data = source.read_blob(desc) if data is None else data
    manifest = parse_json(data, f"manifest {desc['digest']}")
    cdesc = manifest.get("config")
    if not isinstance(cdesc, dict) or not isinstance(manifest.get("layers"), list):
        raise errors.FormatError(f"manifest {desc['digest']} has no config or layers")
    return SourceImage(manifest=manifest, manifest_descriptor=desc, config=source.read_blob(cdesc),
                       platform=desc.get("platform"))


def select_manifest(index: dict[str, Any], platform: str | None = None) -> Descriptor:
    """The index entry for ``platform`` (default: this machine's).

    An exact variant wins; without a requested variant, an entry without one
    (or arm64's default ``v8``) is preferred.  Attestations (``unknown/unknown``)
    never match.
    """
    want = parse_platform(platform or host_platform())
    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)
               and m.get("mediaType", OCI_MANIFEST) in MANIFEST_TYPES]
    same = [m for m in entries if (m.get("platform") or {}).get("os") == want["os"]
            and (m.get("platform") or {}).get("architecture") == want["architecture"]]
    if "variant" in want:
        exact = [m for m in same if m["platform"].get("variant") == want["variant"]]
        same = exact or [m for m in same if not m["platform"].get("variant")]
    else:
        plain = [m for m in same if m["platform"].get("variant") in (None, "", "v8")]
        same = plain or same
    if not same:
        have = sorted({_platform_text(m.get("platform")) for m in entries if m.get("platform")} - {"unknown/unknown"})
        raise ReferenceError(f"no image for {_platform_text(want)} in the index; it has: {', '.join(have) or 'none'}")
    return same[0]


def select_image(source: ImageSource, platform: str | None = None) -> SourceImage:
    """The image a source's reference means on ``platform`` (default: this machine)."""
    desc, data = source.root()
    media = desc.get("mediaType") or parse_json(data, "manifest").get("mediaType")
    if media in INDEX_TYPES:
        return _image(source, select_manifest(parse_json(data, f"index {desc['digest']}"), platform))
    return _image(source, desc, data)


def diff_ids(img: SourceImage) -> list[str]:
    """The image config's ``rootfs.diff_ids``: the sha256 of each layer's tar, one per manifest layer."""
    config = parse_json(img.config, "image config")
    ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(ids, list) or len(ids) != len(img.manifest["layers"]):
        raise errors.FormatError(f"image config lists {len(ids or [])} diff_ids for "
                                 f"{len(img.manifest['layers'])} layers")
    return ids
