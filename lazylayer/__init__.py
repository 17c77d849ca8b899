"""lazylayer: start containers before their images are downloaded.

This release provides the core engine: random access into seekable zstd
(:class:`SeekableReader`), the writer (:class:`SeekableWriter`), and the shared,
bounded decompressed-frame cache (:class:`BlockCache`).  See ``docs/``.
"""

from . import errors
from .errors import (
    ChecksumError,
    CorruptFrameError,
    FormatError,
    IntegrityError,
    LazyLayerError,
    LimitError,
    SourceError,
)
from .seekable import (
    BlockCache,
    CacheStats,
    FrameInfo,
    SeekableReader,
    SeekableWriter,
    WorkerPool,
    default_cache,
    default_pool,
)

__version__ = "0.1.0"

__all__ = [
    "BlockCache",
    "CacheStats",
    "ChecksumError",
    "CorruptFrameError",
    "FormatError",
    "FrameInfo",
    "IntegrityError",
    "LazyLayerError",
    "LimitError",
    "SeekableReader",
    "SeekableWriter",
    "SourceError",
    "WorkerPool",
    "default_cache",
    "default_pool",
    "errors",
]
