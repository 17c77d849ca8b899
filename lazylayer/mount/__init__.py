"""A read-only FUSE mount of an image's merged root, so real processes run from it.

- :mod:`.fuse`: :class:`ImageOperations` answers the kernel's requests from an
  opened :class:`~lazylayer.image.Image`; :func:`serve` runs libfuse's loop;
- :mod:`.control`: finding mounts, the daemon's state files, :func:`unmount`;
- :mod:`.daemon`: serving in this process or as a forked daemon
  (``lazylayer mount``).

docs/mount.md has the options, what the kernel sees, and the errors.
"""

from __future__ import annotations

from .control import is_mounted, mount_entry, set_read_ahead, state_paths, unmount
from .fuse import (
           CACHE_TIMEOUT,
           FSNAME_PREFIX,
           MAX_THREADS,
           SUBTYPE,
           ImageOperations,
           MountError,
           fuse_module,
           serve,
)

__all__ = ["CACHE_TIMEOUT", "FSNAME_PREFIX", "ImageOperations", "MAX_THREADS", "MountError", "SUBTYPE",
           "fuse_module", "is_mounted", "mount_entry", "serve", "set_read_ahead", "state_paths", "unmount"]
