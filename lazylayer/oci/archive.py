"""``docker save`` tarballs (``docker-archive:``), read only."""

from __future__ import annotations

import tarfile
from typing import BinaryIO

from .. import errors
from .media import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    MAX_METADATA_BYTES,
    OCI_LAYER_TAR,
    Descriptor,
    canonical_json,
    descriptor,
    load_json,
    sha256_digest,
)
from .reference import DockerArchiveRef, ReferenceError, _same_name

# ------------------------------------------------------------------ docker-archive


class DockerArchive:
    """A ``docker save`` / ``skopeo copy ... docker-archive:`` tarball, read only.

    It is presented as an OCI-style manifest whose layer descriptors carry the
    archive's member names; digests are unknown there, so layers are checked
    against the config's diff_ids instead.
    """

    def __init__(self, path: str, ref: str | None = None) -> None:
        self.ref = DockerArchiveRef(path, ref)
        try:
            self.tar = tarfile.open(path, "r:")
        except (OSError, tarfile.TarError) as exc:
            raise ReferenceError(f"{path}: not a docker-archive tarball: {exc}") from None
        entries = load_json(self._member("manifest.json", MAX_METADATA_BYTES), f"{path}: manifest.json")
        if not isinstance(entries, list) or not entries:
            raise errors.FormatError(f"{path}: manifest.json lists no image")
        if ref is not None:
            want = _same_name(ref)
            entries = [e for e in entries if any(_same_name(t) == want for t in (e.get("RepoTags") or []))]
            if not entries:
                raise ReferenceError(f"{path}: no image tagged {ref!r}")
        self.entry = entries[0]

    def _member(self, name: str, limit: int | None = None) -> bytes:
        try:
            info = self.tar.getmember(name)
        except KeyError:
            raise errors.FormatError(f"{self.ref.path}: member {name!r} is missing") from None
        if limit is not None and info.size > limit:
            raise errors.LimitError(f"{self.ref.path}: {name} is too large ({info.size} bytes)")
        f = self.tar.extractfile(info)
        if f is None:
            raise errors.FormatError(f"{self.ref.path}: {name!r} is not a file")
        return f.read()

    def root(self) -> tuple[Descriptor, bytes]:
        config = self._member(self.entry["Config"], MAX_METADATA_BYTES)
        layers = []
        for name in self.entry.get("Layers", []):
            info = self.tar.getmember(name)
            layers.append({"mediaType": OCI_LAYER_TAR, "size": info.size, "digest": None,
                           "annotations": {"io.lazylayer.docker-archive.member": name}})
        manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                    "config": descriptor(DOCKER_CONFIG, config), "layers": layers}
        self._config = config
        data = canonical_json(manifest)
        return descriptor(DOCKER_MANIFEST, data), data

    def read_blob(self, desc: Descriptor) -> bytes:
        if desc.get("digest") == sha256_digest(getattr(self, "_config", b"")):
            return self._config
        raise errors.FormatError(f"{self.ref.path}: no blob {desc.get('digest')}")

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        name = desc.get("annotations", {}).get("io.lazylayer.docker-archive.member")
        f = self.tar.extractfile(name) if name else None
        if f is None:
            raise errors.FormatError(f"{self.ref.path}: layer {name!r} is missing")
        return f  # type: ignore[return-value]

    def blob(self, desc: Descriptor) -> None:
        """None: a member of a tarball has no range reads here, so its layer is read whole."""
        return None

    def artifacts(self) -> None:
        """None: a docker-archive keeps no artifacts that refer to its image."""
        return None

    def close(self) -> None:
        self.tar.close()
