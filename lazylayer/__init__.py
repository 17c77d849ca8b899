"""lazylayer: start containers before their images are downloaded.

- :class:`ImageFileSystem` (``lazylayer://``): an fsspec filesystem over a
  lazily fetched image (:mod:`lazylayer.fs`, docs/filesystem.md), on
  :class:`Image` (:mod:`lazylayer.image`) and the :class:`DiskCache`;
- the core engine: random access into seekable zstd (:class:`SeekableReader`),
  the writer (:class:`SeekableWriter`), and the shared, bounded
  decompressed-frame cache (:class:`BlockCache`).  See ``docs/``.

- :class:`Mount`: an image mounted read-only with FUSE (:mod:`lazylayer.mount`).

``ImageFileSystem``, ``Image``, ``DiskCache`` and ``Mount`` are imported on first use, so
``import lazylayer`` stays light for callers of the core engine only.
"""

from . import _compat, errors
from .core import (
    BlockCache,
    CacheStats,
    FrameInfo,
    SeekableReader,
    SeekableWriter,
    WorkerPool,
    default_cache,
    default_pool,
)
from .core._lib import (
    VERSION as __version__,  # noqa: F401  ("M.m.p", written once in csrc/lazylayer.h)
)
from .errors import (
    ChecksumError,
    CorruptFrameError,
    FormatError,
    IntegrityError,
    LazyLayerError,
    LimitError,
    SourceError,
)

_LAZY = {"ImageFileSystem": "fs", "Image": "image", "DiskCache": "image", "Mount": "mount"}

_compat.install()


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lazylayer' has no attribute {name!r}")


__all__ = [
    "BlockCache",
    "CacheStats",
    "ChecksumError",
    "DiskCache",
    "Image",
    "ImageFileSystem",
    "CorruptFrameError",
    "FormatError",
    "FrameInfo",
    "IntegrityError",
    "LazyLayerError",
    "LimitError",
    "Mount",
    "SeekableReader",
    "SeekableWriter",
    "SourceError",
    "WorkerPool",
    "default_cache",
    "default_pool",
    "errors",
]
