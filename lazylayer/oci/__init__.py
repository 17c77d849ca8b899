"""OCI images as data: references, media types, digests, platforms, and the stores that hold them.

- :mod:`.media`: media types, digests, descriptors, manifest JSON;
- :mod:`.reference`: ``oci:``, ``docker-archive:`` and ``docker://`` references, platforms;
- :mod:`.store`: the :class:`ImageSource` / :class:`ImageDestination` /
  :class:`ArtifactStore` protocols and :func:`select_image`;
- :mod:`.layout`: OCI image layout directories (read and written);
- :mod:`.archive`: ``docker save`` tarballs (read).

Registries implement the same protocols one package up, in
:mod:`lazylayer.registry`, which also has :func:`~lazylayer.registry.open_source`
to open any reference.
"""

from __future__ import annotations

from .._exports import lazy_exports

_getattr, __dir__, __all__ = lazy_exports(__name__, {
    "archive": ("DockerArchive",),
    "layout": ("BlobWriter", "OciLayout",),
    "media": ("DOCKER_CONFIG", "DOCKER_LAYER_GZIP", "DOCKER_LIST", "DOCKER_MANIFEST", "INDEX_TYPES", "MANIFEST_TYPES",
              "MAX_METADATA_BYTES", "OCI_CONFIG", "OCI_INDEX", "OCI_LAYER_GZIP", "OCI_LAYER_TAR", "OCI_LAYER_ZSTD",
              "OCI_MANIFEST", "REF_NAME", "TAR_LAYER_TYPES", "Descriptor", "HashingReader", "canonical_json",
              "check_digest", "check_json_shape", "descriptor", "is_tar_layer", "load_json", "parse_json",
              "sha256_digest",),
    "reference": ("DockerArchiveRef", "ImageRef", "OciLayoutRef", "ReferenceError", "RegistryRef", "host_platform",
                  "parse_platform", "parse_reference", "parse_registry_reference",),
    "store": ("EMPTY_DESCRIPTOR", "EMPTY_JSON", "EMPTY_MEDIA_TYPE", "ArtifactStore", "ImageDestination", "ImageSource",
              "SourceImage", "check_annotations", "check_descriptor", "diff_ids", "images", "referrers_entries",
              "select_image", "select_manifest",),
})

_MOVED = {"open_source": "lazylayer.registry", "open_destination": "lazylayer.registry"}


def __getattr__(name: str) -> object:
    # Opening a docker:// reference needs the registry client, one package up:
    # the functions moved there; the old names still work, with a warning.
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"lazylayer.oci.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    return _getattr(name)
