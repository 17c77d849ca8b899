"""OCI image layout directories, read and written atomically.

Every blob read whole is checked against its digest; blobs are written under
a temporary name and renamed into place, and ``index.json`` is replaced
atomically last, so an interrupted write never leaves an image that looks
complete.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, BinaryIO

from .. import errors
from ..remote import FsspecBlob
from .media import (
    MAX_METADATA_BYTES,
    OCI_INDEX,
    REF_NAME,
    Descriptor,
    canonical_json,
    check_digest,
    descriptor,
    parse_json,
    sha256_digest,
)
from .reference import OciLayoutRef, ReferenceError

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
