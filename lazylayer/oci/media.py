"""OCI media types, digests, descriptors and the JSON of manifests."""

from __future__ import annotations

import hashlib
import json
import re
from typing import IO, Any

from .. import errors

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

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


# ------------------------------------------------------------------ blobs


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """The hex part of a sha256 digest; anything else (or a path trick) is refused."""
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise errors.FormatError(f"unsupported or malformed digest {digest!r}")
    return digest[7:]


def descriptor(media_type: str, data: bytes, **extra: Any) -> Descriptor:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), **extra}


def check_json_shape(data: bytes, what: str, max_values: int) -> None:
    """Refuse JSON that may hold more than ``max_values`` values, before it is parsed.

    Values are counted as ``[``, ``{`` and ``,`` bytes (an object's keys are
    not counted; brackets and commas inside strings are, so this is a bound,
    not a parse).  It runs in C over the bytes and allocates nothing, and it
    bounds the objects the parser would build from a small input: each value
    costs it up to ~100 bytes (docs/format.md).  Raises LimitError naming ``what``.
    Nesting depth is left to the parser (see :func:`load_json`).
    """
    values = data.count(b"[") + data.count(b"{") + data.count(b",") + 1
    if values > max_values:
        raise errors.LimitError(f"{what} holds more than {max_values} JSON values")


def load_json(data: bytes, what: str, max_values: int | None = None) -> Any:
    """Parse untrusted JSON: :class:`~lazylayer.errors.FormatError` naming ``what`` for anything bad.

    ``max_values``: refuse more values than that before parsing
    (:func:`check_json_shape`).  Nesting too deep is a FormatError too: json's
    C parser checks its depth and raises RecursionError, an exception, not a crash.
    """
    if max_values is not None:
        check_json_shape(data, what, max_values)
    try:
        return json.loads(data)
    except RecursionError:
        raise errors.FormatError(f"{what} is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.FormatError(f"{what} is not valid JSON: {exc}") from None


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object (a manifest, index, config): :func:`load_json`, and it must be an object."""
    doc = load_json(data, what)
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


TAR_LAYER_TYPES = (OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP,
                   "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")


def is_tar_layer(desc: Descriptor) -> bool:
    """A filesystem layer (as opposed to an attestation, signature or other artifact blob)."""
    media = desc.get("mediaType")
    return media is None or media in TAR_LAYER_TYPES
