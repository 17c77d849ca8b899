"""Registries: the distribution-API client, credentials, referrers, and opening any image reference.

- :mod:`.client`: :class:`Registry` (manifests, blobs, uploads, mounts) and the
  :class:`RegistrySource` / :class:`RegistryDestination` stores;
- :mod:`.auth`: credentials from docker's and podman's auth files and helpers,
  bearer-token challenges;
- :mod:`.referrers`: OCI artifacts that refer to an image (docs/referrers.md);
- :mod:`.sources`: :func:`open_source` and :func:`open_destination` for
  ``oci:``, ``docker-archive:`` and ``docker://`` references alike.
"""

from __future__ import annotations

from .client import (
    MANIFEST_ACCEPT,
    UPLOAD_CHUNK,
    Registry,
    RegistryAuth,
    RegistryBlobWriter,
    RegistryConfig,
    RegistryDestination,
    RegistrySource,
    is_loopback,
    read_metadata,
)
from .sources import (
    open_destination,
    open_source,
)

__all__ = [
    "MANIFEST_ACCEPT",
    "Registry",
    "RegistryAuth",
    "RegistryBlobWriter",
    "RegistryConfig",
    "RegistryDestination",
    "RegistrySource",
    "UPLOAD_CHUNK",
    "is_loopback",
    "open_destination",
    "open_source",
    "read_metadata",
]
