"""Image references and local image stores: OCI image layouts and docker-archive files.

References use skopeo's transport syntax:

- ``oci:DIR[:TAG]`` — an OCI image layout directory;
- ``docker-archive:FILE[:REPO:TAG]`` — a ``docker save`` tarball (read only);
- ``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`` — a registry (see lazylayer.registry).

:func:`open_source` gives an :class:`ImageSource` for any of them and
:func:`open_destination` somewhere to write to, so the converter
works on descriptors and blobs without knowing where they live.  Every blob
read whole is checked against its digest; blobs are written under a temporary
name and renamed into place, and ``index.json`` is replaced atomically last, so
an interrupted write never leaves an image that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Protocol

from . import errors

# Media types
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
REF_NAME = "org.opencontainers.image.ref.name"

MAX_METADATA_BYTES = 16 << 20  # manifests, indexes and configs are read whole: bound them

Descriptor = dict[str, Any]


class ReferenceError(errors.LazyLayerError, ValueError):
    """An image reference that cannot be parsed or resolved."""


# ------------------------------------------------------------------ references


@dataclass(frozen=True)
class OciLayoutRef:
    path: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class DockerArchiveRef:
    path: str
    ref: str | None = None

    def __str__(self) -> str:
        return f"docker-archive:{self.path}" + (f":{self.ref}" if self.ref else "")


@dataclass(frozen=True)
class RegistryRef:
    """``docker://`` reference, with Docker Hub's defaults applied."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = f"docker://{self.registry}/{self.repository}"
        return s + (f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}")


ImageRef = OciLayoutRef | DockerArchiveRef | RegistryRef

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def parse_registry_reference(text: str) -> RegistryRef:
    """``HOST[:PORT]/REPO[:TAG|@DIGEST]`` (the ``docker://`` part already removed)."""
    name, digest = text, None
    if "@" in text:
        name, digest = text.split("@", 1)
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ReferenceError(f"invalid tag {tag!r} in {text!r}")
    if digest is not None and not _DIGEST.match(digest):
        raise ReferenceError(f"invalid digest {digest!r} in {text!r} (expected sha256:<64 hex>)")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repo = first, rest
    else:
        registry, repo = "docker.io", name
    if registry == "docker.io" and "/" not in repo:
        repo = "library/" + repo
    if not repo or not re.match(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$", repo):
        raise ReferenceError(f"invalid repository {repo!r} in {text!r}")
    return RegistryRef(registry, repo, tag, digest)


def parse_reference(text: str) -> ImageRef:
    """Parse a skopeo-style image reference (``oci:``, ``docker-archive:``, ``docker://``).

    A bare ``HOST/REPO:TAG`` is taken as a registry reference.
    """
    if text.startswith("oci:"):
        rest = text[4:]
        path, _, tag = rest.partition(":")
        if not path:
            raise ReferenceError(f"{text!r}: oci: needs a directory")
        return OciLayoutRef(path, tag or None)
    if text.startswith("docker-archive:"):
        rest = text[len("docker-archive:"):]
        path, _, ref = rest.partition(":")
        if not path:
            raise ReferenceError(f"{text!r}: docker-archive: needs a file")
        return DockerArchiveRef(path, ref or None)
    if text.startswith("docker://"):
        return parse_registry_reference(text[len("docker://"):])
    if "://" in text or (":" in text.split("/", 1)[0] and "/" not in text):
        raise ReferenceError(f"{text!r}: unknown transport (use oci:DIR[:TAG], docker-archive:FILE "
                             "or docker://HOST/REPO[:TAG])")
    return parse_registry_reference(text)


# ------------------------------------------------------------------ blobs


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """The hex part of a sha256 digest; anything else (or a path trick) is refused."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise errors.FormatError(f"unsupported or malformed digest {digest!r}")
    return digest[7:]


def descriptor(media_type: str, data: bytes, **extra: Any) -> Descriptor:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), **extra}


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.FormatError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise errors.FormatError(f"{what} is not a JSON object")
    return doc


def canonical_json(doc: Any) -> bytes:
    """Deterministic JSON for manifests we write (so converting twice gives identical digests)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class HashingReader:
    """Wraps a binary stream; hashes what is read so the digest can be checked at the end."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


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


TAR_LAYER_TYPES = (OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP,
                   "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")


def is_tar_layer(desc: Descriptor) -> bool:
    """A filesystem layer (as opposed to an attestation, signature or other artifact blob)."""
    media = desc.get("mediaType")
    return media is None or media in TAR_LAYER_TYPES


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
        from .remote import FsspecBlob

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
        try:
            entries = json.loads(self._member("manifest.json", MAX_METADATA_BYTES))
        except ValueError as exc:
            raise errors.FormatError(f"{path}: manifest.json is not valid JSON: {exc}") from None
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

    def close(self) -> None:
        self.tar.close()


def _same_name(name: str) -> tuple[str, str, str] | str:
    """A repo:tag in canonical form (docker.io/library/... defaults applied), for comparison."""
    try:
        r = parse_registry_reference(name)
    except ReferenceError:
        return name
    return (r.registry, r.repository, r.tag or "latest")


def open_source(ref: str | ImageRef, registry: Any = None) -> ImageSource:
    """An image to read.  ``registry``: a :class:`lazylayer.registry.RegistryConfig` for ``docker://``."""
    r = parse_reference(ref) if isinstance(ref, str) else ref
    if isinstance(r, OciLayoutRef):
        return OciLayout(r.path, r.tag)
    if isinstance(r, DockerArchiveRef):
        return DockerArchive(r.path, r.ref)
    from .registry import Registry, RegistrySource

    return RegistrySource(r, Registry(r.registry, registry))


def open_destination(ref: str | ImageRef, registry: Any = None) -> ImageDestination:
    """Where to write an image: an :class:`OciLayout` or a registry (``docker://``)."""
    r = parse_reference(ref) if isinstance(ref, str) else ref
    if isinstance(r, OciLayoutRef):
        return OciLayout(r.path, r.tag, create=True)
    if isinstance(r, RegistryRef):
        from .registry import Registry, RegistryDestination

        return RegistryDestination(r, Registry(r.registry, registry))
    raise ReferenceError(f"{r}: lazylayer writes images to oci:DIR[:TAG] or docker://HOST/REPO[:TAG] "
                         "(docker-archive is read only)")


# ------------------------------------------------------------------ platforms

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64"}


def host_platform() -> str:
    """This machine as an OCI platform string: ``linux/amd64``, ``linux/arm64``, ``linux/arm/v7``..."""
    import platform as _platform

    machine = _platform.machine().lower()
    arch = _ARCH.get(machine, machine)
    if arch == "arm":
        return f"linux/arm/v{machine[4]}" if machine.startswith("armv") else "linux/arm"
    return f"linux/{arch}"


def parse_platform(text: str) -> dict[str, str]:
    """``OS/ARCH[/VARIANT]`` into an OCI platform object."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ReferenceError(f"invalid platform {text!r} (expected OS/ARCH[/VARIANT], e.g. linux/arm64)")
    out = {"os": parts[0], "architecture": _ARCH.get(parts[1], parts[1])}
    if len(parts) == 3:
        out["variant"] = parts[2]
    return out


def _platform_text(p: dict[str, Any] | None) -> str:
    if not p:
        return "?"
    return "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


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
