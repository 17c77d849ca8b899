"""A read-only FUSE mount of an image's merged root, so real processes run from it.

- :mod:`.fuse`: :class:`Mount` (and :class:`AsyncMount`): the image mounted and
  served by the C server (csrc/fuse.c) in this process;
- :mod:`.control`: finding mounts, the daemon's state files, :func:`unmount`;
- :mod:`.daemon`: serving in this process or as a forked daemon
  (``lazylayer mount``).

docs/mount.md has the options, what the kernel sees, and the errors.
"""

from __future__ import annotations

from .control import is_mounted, mount_entry, set_read_ahead, state_paths, unmount
from .fuse import CACHE_TIMEOUT, FSNAME_PREFIX, SUBTYPE, AsyncMount, Mount, MountError

__all__ = ["AsyncMount", "CACHE_TIMEOUT", "FSNAME_PREFIX", "Mount", "MountError", "SUBTYPE", "is_mounted",
           "mount_entry", "set_read_ahead", "state_paths", "unmount"]
