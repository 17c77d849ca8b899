"""OCI image layout directories, read and written atomically.

Every blob read whole is checked against its digest; blobs are written under
a temporary name and renamed into place, and ``index.json`` is replaced
atomically last, so an interrupted write never leaves an image that looks
complete.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, BinaryIO, Sequence

from .. import errors
from .media import (
    MAX_METADATA_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME,
    Descriptor,
    canonical_json,
    check_digest,
    descriptor,
    parse_json,
    sha256_digest,
)
from .reference import OciLayoutRef, ReferenceError
from .store import EMPTY_JSON, EMPTY_MEDIA_TYPE, check_annotations, check_descriptor

# ------------------------------------------------------------------ OCI layout


class OciLayout:
    """An OCI image layout directory: read, and written atomically."""

    def __init__(self, path: str, tag: str | None = None, create: bool = False) -> None:
        self.path = path
        self.ref = OciLayoutRef(path, tag)
        self.tag = tag
        layout = os.path.join(path, "oci-layout")
        if not os.path.exists(layout):
            if not create:
                raise ReferenceError(f"{path}: not an OCI image layout (no oci-layout file)")
            os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
            self._replace(layout, canonical_json({"imageLayoutVersion": "1.0.0"}))
            if not os.path.exists(self._index_path()):
                self._replace(self._index_path(), canonical_json(
                    {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}))

    def _index_path(self) -> str:
        return os.path.join(self.path, "index.json")

    def index(self) -> dict[str, Any]:
        with open(self._index_path(), "rb") as f:
            return parse_json(f.read(MAX_METADATA_BYTES + 1), f"{self.path}/index.json")

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.path, "blobs", "sha256", check_digest(digest))

    # -- reading

    def root(self) -> tuple[Descriptor, bytes]:
        manifests = self.index().get("manifests", [])
        if self.tag is not None:
            found = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) == self.tag]
            if not found:
                tags = sorted(m.get("annotations", {}).get(REF_NAME, "?") for m in manifests)
                raise ReferenceError(f"{self.ref}: no image tagged {self.tag!r} (tags: {', '.join(tags) or 'none'})")
            desc = found[-1]
        elif len(manifests) == 1:
            desc = manifests[0]
        elif len(plain := [m for m in manifests if isinstance(m, dict) and "artifactType" not in m]) == 1:
            desc = plain[0]  # one image plus untagged artifacts that refer to it (lazylayer.referrers)
        else:
            raise ReferenceError(f"{self.ref}: the layout holds {len(manifests)} images; name one with oci:DIR:TAG")
        return desc, self.read_blob(desc)

    def read_blob(self, desc: Descriptor) -> bytes:
        size = desc.get("size")
        if not isinstance(size, int) or size < 0 or size > MAX_METADATA_BYTES:
            raise errors.LimitError(f"blob {desc.get('digest')} of size {size!r} is too large to read whole")
        try:
            with open(self.blob_path(desc["digest"]), "rb") as f:
                data = f.read(size + 1)
        except FileNotFoundError:
            raise errors.FormatError(f"{self.path}: blob {desc['digest']} is missing") from None
        if len(data) != size or sha256_digest(data) != desc["digest"]:
            raise errors.IntegrityError(f"{self.path}: blob {desc['digest']} does not match its descriptor "
                                        "(wrong size or digest)")
        return data

    def blob(self, desc: Descriptor) -> Any:
        """The layer blob ``desc`` names, for range reads (a :class:`lazylayer.remote.FsspecBlob`)."""
        from ..remote import (
            FsspecBlob,  # here, not at the top: reading references and layouts needs no HTTP stack
        )

        path = self.blob_path(desc["digest"])
        if not os.path.exists(path):
            raise errors.FormatError(f"{self.path}: blob {desc['digest']} is missing")
        size = desc.get("size")
        return FsspecBlob(path, digest=desc["digest"], size=size if isinstance(size, int) else None)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        try:
            return open(self.blob_path(desc["digest"]), "rb")
        except FileNotFoundError:
            raise errors.FormatError(f"{self.path}: blob {desc['digest']} is missing") from None

    def close(self) -> None:
        pass

    # -- artifacts that refer to an image (an ArtifactStore: docs/referrers.md)

    def artifacts(self) -> OciLayout:
        """The layout keeps its artifacts itself: listed in index.json, untagged."""
        return self

    def attach_artifact(self, subject_digest: str, payloads: Sequence[tuple[bytes, str]],
                        manifest: bytes, manifest_desc: Descriptor) -> None:
        """Write the blobs, then list ``manifest_desc`` in index.json without a tag (as oras does),
        unless it is listed already; index.json is replaced atomically."""
        self.write_blob(EMPTY_JSON, EMPTY_MEDIA_TYPE)
        for payload, media_type in payloads:
            self.write_blob(payload, media_type)
        self.write_blob(manifest, manifest_desc["mediaType"])
        manifests = self.index().get("manifests", [])
        if isinstance(manifests, list) and any(isinstance(m, dict) and m.get("digest") == manifest_desc["digest"]
                                               for m in manifests):
            return  # already listed (tagged or not): leave index.json alone
        self.set_tag(None, manifest_desc)

    def referrers(self, subject_digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        """Every OCI manifest or index listed in index.json whose ``subject`` is ``subject_digest``.

        ``artifactType`` comes from the manifest, else (an image manifest) from its config's
        media type, as the referrers API has it; ``annotations`` from the manifest.
        """
        what = f"{self.path}/index.json"
        manifests = self.index().get("manifests", [])
        if not isinstance(manifests, list):
            raise errors.FormatError(f"{what}: 'manifests' is not a list")
        out: list[Descriptor] = []
        for i, entry in enumerate(manifests):
            if not isinstance(entry, dict) or entry.get("mediaType") not in (OCI_MANIFEST, OCI_INDEX):
                continue  # Docker media types have no subject
            entry = check_descriptor(entry, f"{what}: manifests[{i}]")
            doc = parse_json(self.read_blob(entry), f"{self.path}: manifest {entry['digest']}")
            subject = doc.get("subject")
            if not isinstance(subject, dict) or subject.get("digest") != subject_digest:
                continue
            found: Descriptor = {"mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"]}
            kind = doc.get("artifactType")
            config = doc.get("config")
            if not kind and entry["mediaType"] == OCI_MANIFEST and isinstance(config, dict):
                kind = config.get("mediaType")
            if isinstance(kind, str) and kind:
                found["artifactType"] = kind
            if doc.get("annotations"):
                found["annotations"] = check_annotations(doc["annotations"], f"manifest {entry['digest']}: annotations")
            out.append(found)
        return out

    def read_artifact_manifest(self, desc: Descriptor) -> bytes:
        return self.read_blob(desc)  # checks size and digest

    def read_artifact_blob(self, desc: Descriptor) -> bytes:
        return self.read_blob(desc)

    # -- writing

    def _replace(self, path: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def write_blob(self, data: bytes, media_type: str, **extra: Any) -> Descriptor:
        desc = descriptor(media_type, data, **extra)
        path = self.blob_path(desc["digest"])
        if not os.path.exists(path):
            self._replace(path, data)
        return desc

    def blob_writer(self) -> BlobWriter:
        return BlobWriter(self)

    def reuse_blob(self, desc: Descriptor, source: object = None) -> bool:
        """True if the layout has the blob already (blobs are only ever written verified)."""
        return os.path.exists(self.blob_path(desc["digest"]))

    def set_tag(self, tag: str | None, desc: Descriptor) -> None:
        """Point ``tag`` at ``desc`` in index.json (written last, atomically)."""
        index = self.index()
        entry = dict(desc)
        if tag is not None:
            entry["annotations"] = {**entry.get("annotations", {}), REF_NAME: tag}
            keep = [m for m in index.get("manifests", []) if m.get("annotations", {}).get(REF_NAME) != tag]
        else:
            keep = [m for m in index.get("manifests", []) if m.get("digest") != desc["digest"]]
        index["manifests"] = keep + [entry]
        self._replace(self._index_path(), canonical_json(index))


class BlobWriter:
    """A file to stream a blob into; ``commit()`` renames it to its digest's name."""

    def __init__(self, layout: OciLayout) -> None:
        self.layout = layout
        d = os.path.join(layout.path, "blobs", "sha256")
        fd, self.tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self, digest: str) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.layout.blob_path(digest))

    def abort(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None or not self.file.closed:
            self.abort()
