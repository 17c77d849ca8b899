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
from ._exports import lazy_exports
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

__getattr__, __dir__, _ = lazy_exports(__name__, {"fs": ("ImageFileSystem",), "image": ("Image", "DiskCache"),
                                                   "mount": ("Mount",)})

_compat.install()


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
