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
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from .. import errors, oci
from ..remote import network_retry
from .client import Registry, RegistryDestination, RegistrySource, read_metadata

log = logging.getLogger(__name__)

ARTIFACT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"  # the empty config: the 2-byte blob "{}"
EMPTY_JSON = b"{}"
EMPTY_DESCRIPTOR: oci.Descriptor = {
    "mediaType": EMPTY_MEDIA_TYPE,
    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    "size": 2,
}
MAX_REFERRER_PAGES = 64  # pages of a paginated referrers answer (``Link: <...>; rel="next"``) followed at most

Source = RegistrySource | RegistryDestination | oci.OciLayout

_LINK_NEXT = re.compile(r'<([^>]*)>[^,]*?;\s*rel="?next"?', re.IGNORECASE)


# ------------------------------------------------------------------ public interface


def referrers_tag(digest: str) -> str:
    """The referrers tag of a ``sha256:<hex>`` digest: ``sha256-<hex>`` (distribution-spec "Referrers Tag Schema")."""
    return "sha256-" + oci.check_digest(digest)


def artifact_manifest(subject: oci.Descriptor, artifact_type: str, layer: oci.Descriptor,
                      annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The artifact manifest :func:`attach` pushes (``layer``: the payload's descriptor)."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": ARTIFACT_MANIFEST,
        "artifactType": artifact_type,
        "config": dict(EMPTY_DESCRIPTOR),
        "layers": [layer],
        "subject": _subject(subject),
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return manifest


def attach(source: Source, subject: oci.Descriptor, artifact_type: str, payload: bytes, payload_media_type: str,
           annotations: dict[str, str] | None = None) -> oci.Descriptor:
    """Push an artifact manifest whose ``subject`` is ``subject`` and whose one layer is ``payload``.

    ``subject`` is the descriptor (``mediaType``, ``digest``, ``size``) of an
    image manifest or index.  Returns the artifact manifest's descriptor
    (``mediaType``, ``digest``, ``size``, ``artifactType`` and, when given,
    ``annotations``): the entry :func:`find` lists.  The manifest is
    deterministic (canonical JSON, no timestamps), so attaching the same
    payload twice stores one artifact and one referrers entry.
    """
    subj = _subject(subject)
    _media_type(artifact_type, "artifact_type")
    _media_type(payload_media_type, "payload_media_type")
    ann = _annotations(annotations, "annotations")
    payload = bytes(payload)
    if len(payload) > oci.MAX_METADATA_BYTES:
        raise errors.LimitError(f"payload of {len(payload)} bytes is larger than {oci.MAX_METADATA_BYTES}")
    layer = oci.descriptor(payload_media_type, payload)
    data = oci.canonical_json(artifact_manifest(subj, artifact_type, layer, ann))
    if len(data) > oci.MAX_METADATA_BYTES:
        raise errors.LimitError(f"artifact manifest of {len(data)} bytes is larger than {oci.MAX_METADATA_BYTES}")
    desc = oci.descriptor(ARTIFACT_MANIFEST, data, artifactType=artifact_type)
    if ann:
        desc["annotations"] = ann
    if isinstance(source, oci.OciLayout):
        _attach_layout(source, payload, payload_media_type, data, desc)
    else:
        reg, repo = _registry(source)
        reg.transport.run(_attach_registry(reg, repo, subj["digest"], payload, data, desc))
    return dict(desc)


def find(source: Source, subject_digest: str, artifact_type: str | None = None) -> list[oci.Descriptor]:
    """Descriptors of the artifacts that refer to ``subject_digest``, only ``artifact_type``'s when given.

    Each has ``mediaType``, ``digest``, ``size`` and, as the referrers index
    gives them, ``artifactType`` and ``annotations``.  An empty list when
    there are none.  A referrers answer or referrers tag that is not a
    well-formed image index raises :class:`~lazylayer.errors.FormatError`.
    """
    oci.check_digest(subject_digest)
    if artifact_type is not None:
        _media_type(artifact_type, "artifact_type")
    if isinstance(source, oci.OciLayout):
        entries = _find_layout(source, subject_digest)
    else:
        reg, repo = _registry(source)
        entries = reg.transport.run(_find_registry(reg, repo, subject_digest, artifact_type))
    out: list[oci.Descriptor] = []
    seen: set[str] = set()
    for entry in entries:
        if artifact_type is not None and entry.get("artifactType") != artifact_type:
            continue  # a registry may ignore ?artifactType= (no OCI-Filters-Applied): filter here too
        if entry["digest"] not in seen:
            seen.add(entry["digest"])
            out.append(entry)
    return out


def read_payload(source: Source, artifact: oci.Descriptor, media_type: str) -> bytes:
    """The verified bytes of the artifact's first layer of ``media_type``.

    ``artifact`` is a descriptor from :func:`find` or :func:`attach`.  The
    manifest and the layer are checked against their digests
    (:class:`~lazylayer.errors.IntegrityError`); a manifest without such a
    layer, or a malformed one, raises :class:`~lazylayer.errors.FormatError`;
    a layer over ``oci.MAX_METADATA_BYTES`` raises :class:`~lazylayer.errors.LimitError`.
    """
    desc = _descriptor(artifact, "artifact descriptor")
    _media_type(media_type, "media_type")
    what = f"artifact {desc['digest']}"
    if desc["mediaType"] != ARTIFACT_MANIFEST:
        raise errors.FormatError(f"{what} is a {desc['mediaType']!r}, not an image manifest")
    if desc["size"] > oci.MAX_METADATA_BYTES:
        raise errors.LimitError(f"{what}: manifest of {desc['size']} bytes is too large to read")
    data = _read_manifest(source, desc, what)
    manifest = oci.parse_json(data, f"{what} manifest")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise errors.FormatError(f"{what}: the manifest has no layers list")
    chosen = next((layer for layer in layers if isinstance(layer, dict) and layer.get("mediaType") == media_type), None)
    if chosen is None:
        have = sorted({str(layer.get("mediaType")) for layer in layers if isinstance(layer, dict)})
        raise errors.FormatError(f"{what} has no layer of media type {media_type!r} "
                                 f"(its layers: {', '.join(have) or 'none'})")
    layer = _descriptor(chosen, f"{what}: layer")
    if layer["size"] > oci.MAX_METADATA_BYTES:
        raise errors.LimitError(f"{what}: layer {layer['digest']} of {layer['size']} bytes is too large "
                                f"(limit {oci.MAX_METADATA_BYTES})")
    if isinstance(source, oci.OciLayout):
        return source.read_blob(layer)  # checks size and digest
    reg, repo = _registry(source)
    return reg.blob(repo, layer["digest"], layer["size"]).read_all()  # reads exactly size bytes, checks the digest


def _read_manifest(source: Source, desc: oci.Descriptor, what: str) -> bytes:
    if isinstance(source, oci.OciLayout):
        return source.read_blob(desc)
    reg, repo = _registry(source)
    _, data = reg.get_manifest(repo, desc["digest"])  # fetched by digest: checked against it
    if len(data) != desc["size"]:
        raise errors.IntegrityError(f"{what}: the manifest has {len(data)} bytes, the descriptor says {desc['size']}")
    return data


# ------------------------------------------------------------------ validation


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _media_type(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise ValueError(f"{what} must be a non-empty media type string, not {value!r}")
    return value


def _annotations(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise errors.FormatError(f"{what} must map strings to strings")
    return dict(value)


def _descriptor(value: Any, what: str) -> oci.Descriptor:
    """A checked copy of a descriptor: ``mediaType`` string, sha256 ``digest``, ``size`` >= 0."""
    if not isinstance(value, dict):
        raise errors.FormatError(f"{what} is not a JSON object")
    media = value.get("mediaType")
    if not isinstance(media, str) or not media:
        raise errors.FormatError(f"{what} has no mediaType")
    oci.check_digest(value.get("digest", ""))  # FormatError for anything but sha256:<64 hex>
    if not _is_size(value.get("size")):
        raise errors.FormatError(f"{what} has an invalid size {value.get('size')!r}")
    return dict(value)


def _subject(subject: Any) -> oci.Descriptor:
    d = _descriptor(subject, "subject descriptor")
    return {"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]}


def _entries(index: dict[str, Any], what: str) -> list[oci.Descriptor]:
    """The checked ``manifests`` of a referrers index (each entry a copy, extra fields kept)."""
    media = index.get("mediaType")
    if media is not None and media != oci.OCI_INDEX:
        raise errors.FormatError(f"{what} has media type {media!r}, not {oci.OCI_INDEX}")
    manifests = index.get("manifests", [])
    if not isinstance(manifests, list):
        raise errors.FormatError(f"{what}: 'manifests' is not a list")
    out = []
    for i, entry in enumerate(manifests):
        d = _descriptor(entry, f"{what}: manifests[{i}]")
        if "artifactType" in d and not isinstance(d["artifactType"], str):
            raise errors.FormatError(f"{what}: manifests[{i}] has a non-string artifactType")
        if "annotations" in d:
            d["annotations"] = _annotations(d["annotations"], f"{what}: manifests[{i}].annotations")
        out.append(d)
    return out


def _fallback_index(desc: oci.Descriptor, body: bytes, what: str) -> dict[str, Any]:
    """The referrers tag's image index, checked; anything else there is a FormatError."""
    if desc.get("mediaType") != oci.OCI_INDEX:
        raise errors.FormatError(f"{what} holds a {desc.get('mediaType')!r}, not an OCI image index "
                                 "(the referrers tag schema needs one)")
    index = oci.parse_json(body, what)
    index["manifests"] = _entries(index, what)
    return index


def _registry(source: Any) -> tuple[Registry, str]:
    reg, ref = getattr(source, "registry", None), getattr(source, "ref", None)
    if isinstance(reg, Registry) and isinstance(ref, oci.RegistryRef):
        return reg, ref.repository
    raise TypeError(f"expected a RegistrySource or an OciLayout, not {type(source).__name__}")


# ------------------------------------------------------------------ OCI layouts


def _attach_layout(layout: oci.OciLayout, payload: bytes, payload_media_type: str, data: bytes,
                   desc: oci.Descriptor) -> None:
    layout.write_blob(EMPTY_JSON, EMPTY_MEDIA_TYPE)
    layout.write_blob(payload, payload_media_type)
    layout.write_blob(data, ARTIFACT_MANIFEST)
    manifests = layout.index().get("manifests", [])
    if isinstance(manifests, list) and any(isinstance(m, dict) and m.get("digest") == desc["digest"]
                                           for m in manifests):
        return  # already listed (tagged or not): leave index.json alone
    layout.set_tag(None, desc)  # untagged, like oras; index.json is replaced atomically


def _find_layout(layout: oci.OciLayout, subject_digest: str) -> list[oci.Descriptor]:
    """Every manifest or index listed in index.json whose ``subject`` is ``subject_digest``."""
    what = f"{layout.path}/index.json"
    manifests = layout.index().get("manifests", [])
    if not isinstance(manifests, list):
        raise errors.FormatError(f"{what}: 'manifests' is not a list")
    out: list[oci.Descriptor] = []
    for i, entry in enumerate(manifests):
        if not isinstance(entry, dict) or entry.get("mediaType") not in (oci.OCI_MANIFEST, oci.OCI_INDEX):
            continue  # Docker media types have no subject
        entry = _descriptor(entry, f"{what}: manifests[{i}]")
        doc = oci.parse_json(layout.read_blob(entry), f"{layout.path}: manifest {entry['digest']}")
        subject = doc.get("subject")
        if not isinstance(subject, dict) or subject.get("digest") != subject_digest:
            continue
        found: oci.Descriptor = {"mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"]}
        artifact_type = doc.get("artifactType")
        if not artifact_type and entry["mediaType"] == oci.OCI_MANIFEST:
            artifact_type = (doc.get("config") or {}).get("mediaType") if isinstance(doc.get("config"), dict) else None
        if isinstance(artifact_type, str) and artifact_type:
            found["artifactType"] = artifact_type
        if doc.get("annotations"):
            found["annotations"] = _annotations(doc["annotations"], f"manifest {entry['digest']}: annotations")
        out.append(found)
    return out


# ------------------------------------------------------------------ registries


async def _attach_registry(reg: Registry, repo: str, subject_digest: str, payload: bytes, data: bytes,
                           desc: oci.Descriptor) -> None:
    await reg.aput_blob(repo, EMPTY_JSON, EMPTY_DESCRIPTOR["digest"])
    await reg.aput_blob(repo, payload)
    headers: dict[str, str] = {}
    await reg.aput_manifest(repo, desc["digest"], data, ARTIFACT_MANIFEST, response_headers=headers)
    if headers.get("oci-subject") == subject_digest:
        return  # the registry indexes subjects itself (referrers API)
    log.debug("%s/%s: no OCI-Subject in the answer: updating the referrers tag", reg.host, repo)
    await _add_to_referrers_tag(reg, repo, subject_digest, desc)


async def _add_to_referrers_tag(reg: Registry, repo: str, subject_digest: str, desc: oci.Descriptor) -> None:
    tag = referrers_tag(subject_digest)
    what = f"referrers tag {reg.host}/{repo}:{tag}"
    try:
        got, body = await reg.aget_manifest(repo, tag, mirrors=False)
    except errors.NotFoundError:
        index: dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []}
    else:
        index = _fallback_index(got, body, what)
    if any(m["digest"] == desc["digest"] for m in index["manifests"]):
        return
    index.setdefault("schemaVersion", 2)
    index["mediaType"] = oci.OCI_INDEX
    index["manifests"].append(dict(desc))
    data = oci.canonical_json(index)
    if len(data) > oci.MAX_METADATA_BYTES:
        raise errors.LimitError(f"{what}: the index would be {len(data)} bytes (limit {oci.MAX_METADATA_BYTES})")
    await reg.aput_manifest(repo, tag, data, oci.OCI_INDEX)


async def _find_registry(reg: Registry, repo: str, subject_digest: str,
                         artifact_type: str | None) -> list[oci.Descriptor]:
    entries = await _referrers_api(reg, repo, subject_digest, artifact_type)
    if entries is not None:
        return entries
    tag = referrers_tag(subject_digest)
    log.debug("%s/%s: no referrers API (404): reading the referrers tag %s", reg.host, repo, tag)
    try:
        got, body = await reg.aget_manifest(repo, tag, mirrors=False)
    except errors.NotFoundError:
        return []
    index = _fallback_index(got, body, f"referrers tag {reg.host}/{repo}:{tag}")
    return list(index["manifests"])


def _next_page(current: str, links: list[str]) -> str | None:
    for value in links:
        m = _LINK_NEXT.search(value)
        if m:
            url = urljoin(current, m.group(1).strip())
            if urlsplit(url).scheme in ("http", "https"):
                return url
    return None


async def _referrers_api(reg: Registry, repo: str, subject_digest: str,
                         artifact_type: str | None) -> list[oci.Descriptor] | None:
    """The referrers API's entries (every page); None when it answers 404 (no API: use the tag)."""
    await reg._ensure_scheme()
    t = reg.transport
    auth = reg.auth(repo)
    what = f"referrers of {reg.host}/{repo}@{subject_digest}"
    first = f"{reg.base}/v2/{repo}/referrers/{subject_digest}"
    if artifact_type is not None:
        first += "?" + urlencode({"artifactType": artifact_type})
    url: str | None = first
    entries: list[oci.Descriptor] = []
    seen: set[str] = set()
    page = 0

    async def attempt(u: str) -> tuple[bytes | None, str | None]:
        with network_retry():
            async with t.open("GET", u, headers={"Accept": oci.OCI_INDEX}, auth=auth) as resp:
                if resp.status == 404 and page == 0:
                    return None, None
                t.check_status(resp, what)
                body = await read_metadata(resp, what)
                return body, _next_page(u, resp.headers.getall("Link", []))

    while url is not None:
        if page == MAX_REFERRER_PAGES:
            raise errors.LimitError(f"{what}: more than {MAX_REFERRER_PAGES} pages of referrers")
        seen.add(url)
        body, next_url = await t.call([url], attempt, what)
        if body is None:
            return None
        entries += _entries(oci.parse_json(body, what), what)
        page += 1
        url = next_url if next_url not in seen else None
    return entries
