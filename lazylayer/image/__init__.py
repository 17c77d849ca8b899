"""An image opened for lazy reading: frames, the disk cache, the merged tree, :class:`Image`.

- :mod:`.image`: :class:`Image` (manifest, per-layer readers, verified reads);
- :mod:`.frames`: :class:`FrameSource`, the compressed frames a layer's C reader
  asks for, from the disk cache or fetched and checked;
- :mod:`.cache`: :class:`DiskCache`, content-addressed frames shared by processes;
- :mod:`.tree`: :class:`Tree`, the layers' TOCs merged (whiteouts, hardlinks, symlinks).
"""

from __future__ import annotations

from .cache import (
    CacheError,
    CacheUsage,
    DiskCache,
    Pin,
    default_cache_dir,
)
from .frames import (
    FrameSource,
)
from .image import (
    Image,
    Layer,
    NotLazyWarning,
)
from .tree import (
    Inode,
    Node,
    Tree,
    split_path,
)

__all__ = [
    "CacheError",
    "CacheUsage",
    "DiskCache",
    "FrameSource",
    "Image",
    "Inode",
    "Layer",
    "Node",
    "NotLazyWarning",
    "Pin",
    "Tree",
    "default_cache_dir",
    "split_path",
]
