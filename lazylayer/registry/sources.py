"""Open any image reference as a store: an OCI layout, a docker-archive or a registry repository."""

from __future__ import annotations

from typing import Any

from ..oci import (
    DockerArchiveRef,
    ImageDestination,
    ImageRef,
    ImageSource,
    OciLayoutRef,
    ReferenceError,
    RegistryRef,
    parse_reference,
)
from .client import Registry, RegistryDestination, RegistrySource


def open_source(ref: str | ImageRef, registry: Any = None) -> ImageSource:
    """An image to read.  ``registry``: a :class:`lazylayer.registry.RegistryConfig` for ``docker://``."""
    r = parse_reference(ref) if isinstance(ref, str) else ref
    # The stores are imported where used: a mount of a docker:// image loads no tar reader (start-up).
    if isinstance(r, OciLayoutRef):
        from ..oci.layout import OciLayout

        return OciLayout(r.path, r.tag)
    if isinstance(r, DockerArchiveRef):
        from ..oci.archive import DockerArchive

        return DockerArchive(r.path, r.ref)
    return RegistrySource(r, Registry(r.registry, registry))


def open_destination(ref: str | ImageRef, registry: Any = None) -> ImageDestination:
    """Where to write an image: an :class:`OciLayout` or a registry (``docker://``)."""
    r = parse_reference(ref) if isinstance(ref, str) else ref
    if isinstance(r, OciLayoutRef):
        from ..oci.layout import OciLayout

        return OciLayout(r.path, r.tag, create=True)
    if isinstance(r, RegistryRef):
        return RegistryDestination(r, Registry(r.registry, registry))
    raise ReferenceError(f"{r}: lazylayer writes images to oci:DIR[:TAG] or docker://HOST/REPO[:TAG] "
                         "(docker-archive is read only)")
