"""The C core's Python binding (cffi): random access into seekable zstd, the writer, the shared caches.

It imports nothing of lazylayer but :mod:`lazylayer.errors`: everything else
stands on it.  The extension, ``lazylayer.core._native``, is compiled from
``csrc/`` by ``pip install .`` (:mod:`._build`); :mod:`._lib` loads it and
turns its status codes into exceptions; :mod:`.seekable` (seekable zstd, the
caches) and :mod:`.index` (the image index, the disk cache from C, the image
reader) are the API.
"""

from __future__ import annotations

from .index import (
    ImageReader,
    Index,
    IndexLayer,
    NativeDiskCache,
    Stat,
)
from .seekable import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_FRAME_SIZE,
    DEFAULT_MAX_FRAME_SIZE,
    BlockCache,
    CacheStats,
    FrameInfo,
    SeekableReader,
    SeekableWriter,
    WorkerPool,
    build_seek_table,
    default_cache,
    default_pool,
    parse_seek_table,
    seek_position,
    seek_table_size,
)

__all__ = [
    "BlockCache",
    "ImageReader",
    "Index",
    "IndexLayer",
    "NativeDiskCache",
    "Stat",
    "CacheStats",
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_FRAME_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "FrameInfo",
    "SeekableReader",
    "SeekableWriter",
    "WorkerPool",
    "build_seek_table",
    "default_cache",
    "default_pool",
    "parse_seek_table",
    "seek_position",
    "seek_table_size",
]
