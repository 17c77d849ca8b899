"""A read-only FUSE mount of an image's merged root, so real processes run from it.

:class:`ImageOperations` answers the kernel's FUSE requests from an opened
:class:`lazylayer.image.Image`: metadata from the in-memory tree (no network),
file content through the same verified frame fetches, disk cache and memory
cache as ``lazylayer://``.  :func:`serve` runs the FUSE loop (libfuse 3 through
`mfusepy <https://github.com/mxmlnkn/mfusepy>`_; ``docs/mount.md`` says why that
binding).  The ``lazylayer mount`` and ``lazylayer umount`` commands
(:mod:`lazylayer.cli`) use :func:`serve`, :func:`unmount` and the state files
below.

Because an image never changes, the kernel is told to keep what it learns:
attributes, directory entries and negative lookups for a day, and file pages
in its page cache across opens (``kernel_cache``).  A process that reads a file
twice, or two processes that map the same library, cost one fetch.

Errors become errno values: a frame that fails its sha256 (or any data error)
is ``EIO`` and is logged; so is a network failure after the remote layer's own
retries.  Writes of any kind are ``EROFS``.

A background mount leaves two state files (see :func:`state_paths`) keyed by
the mount point: the daemon's pid and its log, so ``lazylayer umount`` can wait
for the daemon to exit after the unmount.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from typing import Any, Callable, Iterable

from .. import errors
from ..image import Image, Node

__all__ = ["ImageOperations", "MountError", "serve", "fuse_module", "FSNAME_PREFIX", "SUBTYPE"]

log = logging.getLogger("lazylayer.mount")

#: ``/proc/mounts`` shows a lazylayer mount with type ``fuse.lazylayer``.
SUBTYPE = "lazylayer"
FSNAME_PREFIX = "lazylayer:"
#: How long the kernel may keep attributes, entries and negative lookups: the image is immutable.
CACHE_TIMEOUT = 86400.0
_BLOCK = 512  # st_blocks unit
#: libfuse threads at most: requests waiting on fetches overlap (the fetches release the GIL).
MAX_THREADS = 16


class MountError(errors.LazyLayerError):
    """The mount could not be made, found or removed."""


def fuse_module() -> Any:
    """The mfusepy module, bound to libfuse 3.

    mfusepy would pick libfuse 2 first if both are installed, and finds the
    library with ``ctypes.util.find_library``, which runs ``ldconfig`` (30 ms);
    naming libfuse 3's soname skips both.  ``FUSE_LIBRARY_PATH`` still wins.
    """
    if "FUSE_LIBRARY_PATH" not in os.environ and "FUSE_LIBRARY_NAME" not in os.environ:
        try:
            import ctypes

            ctypes.CDLL("libfuse3.so.3")
            os.environ["FUSE_LIBRARY_PATH"] = "libfuse3.so.3"
        except OSError:
            os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
    try:
        import mfusepy
    except (ImportError, OSError, EnvironmentError) as exc:  # mfusepy raises EnvironmentError without libfuse
        raise MountError(f"FUSE is not available: {exc} (Debian: apt-get install fuse3; pip install mfusepy)") \
            from None
    return mfusepy


class ImageOperations:
    """The FUSE operations of a read-only image (mfusepy's high-level, path-based interface).

    Paths come from the kernel one component at a time, so they never hold a
    symlink to follow: each is a key of ``image.tree.paths``; reads get the
    path too, so there is no table of open files.  The kernel is asked for as
    few round trips as it allows: ``open`` answers ENOSYS once, after which it
    stops sending OPEN and RELEASE ("no_open"; ``opendir`` cannot do the same,
    libfuse's high-level readdir needs the handle its opendir makes); ``readdir_plus``
    gives every entry's attributes with the listing, so no LOOKUP follows;
    ``release``, ``access`` (the kernel checks permissions itself,
    ``default_permissions``) and ``flush`` (ENOSYS) are left to libfuse, in C.
    Every method may be called from several libfuse threads at once.
    """

    use_ns = True  # timestamps in nanoseconds (mfusepy)

    def __init__(self, image: Image, *, on_ready: Callable[[], None] | None = None) -> None:
        self.image = image
        self.tree = image.tree
        self.on_ready = on_ready
        self._fuse = fuse_module()
        self.eio = 0
        """How many requests failed with EIO (bad data or a failed fetch)."""

    # -- helpers ----------------------------------------------------------------

    def _node(self, path: str) -> Node:
        node = self.tree.paths.get(path[1:])
        if node is None:
            raise self._fuse.FuseOSError(errno.ENOENT)
        return node

    @staticmethod
    def stat(node: Node) -> dict[str, Any]:
        """``struct stat`` of a node, as ``lstat`` on an unpacked image shows it."""
        i = node.inode
        mtime = i.mtime_ns
        size = i.size if i.kind != "dir" else 4096
        return {"st_mode": i.mode, "st_ino": i.ino, "st_nlink": i.nlink, "st_uid": i.uid, "st_gid": i.gid,
                "st_size": size, "st_blocks": (size + _BLOCK - 1) // _BLOCK if i.kind in ("reg", "dir") else 0,
                "st_blksize": 4096, "st_rdev": i.rdev, "st_mtime": mtime, "st_ctime": mtime, "st_atime": mtime}

    # -- FUSE operations ----------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.use_ino = 1  # st_ino is ours: hardlinks share one
            config.kernel_cache = 1  # content never changes: keep pages across opens
            config.entry_timeout = config.attr_timeout = config.negative_timeout = CACHE_TIMEOUT
        if self.on_ready is not None:
            threading.Thread(target=self.on_ready, name="lazylayer-ready", daemon=True).start()

    def destroy(self, path: str) -> None:
        pass

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        return self.stat(self._node(path))

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if node.kind != "symlink":
            raise self._fuse.FuseOSError(errno.EINVAL)
        return node.inode.linkname

    def readdir(self, path: str, fh: int) -> Iterable[Any]:
        node = self._node(path)
        if node.children is None:
            raise self._fuse.FuseOSError(errno.ENOTDIR)
        out: list[Any] = [(".", {"st_mode": node.inode.mode, "st_ino": node.inode.ino}, 0), ".."]
        for name, child in node.children.items():
            out.append((name, {"st_mode": child.inode.mode, "st_ino": child.inode.ino}, 0))
        return out

    def readdir_plus(self, path: str) -> Iterable[tuple[str, dict[str, Any]]]:
        """The entries of a directory with their full attributes, for READDIRPLUS (see :class:`_PlusFUSE`)."""
        node = self._node(path)
        if node.children is None:
            raise self._fuse.FuseOSError(errno.ENOTDIR)
        stat = self.stat
        yield ".", stat(node)
        yield "..", {"st_mode": stat(node)["st_mode"]}  # the kernel skips . and .. in READDIRPLUS
        for name, child in node.children.items():
            yield name, stat(child)

    def open(self, path: str, flags: int) -> int:
        # ENOSYS makes the kernel stop sending OPEN (and RELEASE) for good, keeping the
        # page cache across opens ("no_open", Linux 4.19+): one round trip per file saved
        # twice.  Writes never get here: the mount is read-only, the kernel answers EROFS.
        raise self._fuse.FuseOSError(errno.ENOSYS)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        node = self._node(path)
        if node.kind != "reg":
            raise self._fuse.FuseOSError(errno.EINVAL)
        try:
            return self.image.pread(node, size, offset)
        except (errors.LazyLayerError, OSError) as exc:
            # Bad bytes are never served: the reader refused them (or could not fetch them).
            self.eio += 1
            log.error("EIO: read of %d bytes at %d of /%s: %s: %s", size, offset, node.path,
                      type(exc).__name__, exc)
            raise self._fuse.FuseOSError(errno.EIO) from None

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self._node(path).inode.xattrs.get(name)
        if value is None:
            raise self._fuse.FuseOSError(errno.ENODATA)
        return value

    def listxattr(self, path: str) -> list[str]:
        return list(self._node(path).inode.xattrs)

    def statfs(self, path: str) -> dict[str, int]:
        used = sum((layer.toc.frames[-1].offset + layer.toc.frames[-1].size) if layer.toc.frames else 0
                   for layer in self.image.layers)
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": (used + 4095) // 4096, "f_bfree": 0,
                "f_bavail": 0, "f_files": len(self.tree), "f_ffree": 0, "f_favail": 0, "f_namemax": 255}

    # Everything that would change the image: EROFS.
    def _readonly(self, *args: Any) -> int:
        raise self._fuse.FuseOSError(errno.EROFS)

    chmod = chown = create = link = mkdir = mknod = rename = rmdir = symlink = truncate = unlink = \
        utimens = write = setxattr = removexattr = _readonly


def _plus_fuse(fuse: Any) -> Any:
    """mfusepy's ``FUSE`` class, answering READDIRPLUS with full attributes.

    mfusepy 3.1 passes only an entry's mode and inode to libfuse's filler, so
    the kernel sends a LOOKUP for every name it then stats.  With the
    attributes (and FUSE_FILL_DIR_PLUS) libfuse answers READDIRPLUS in full and
    the kernel caches every entry of the directory at once: ``ls -l``, ``find``
    and ``tar`` cost one request per directory instead of one per file.
    """

    class PlusFUSE(fuse.FUSE):  # type: ignore[misc, name-defined]
        def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any,
                           flags: int) -> int:
            if not flags & 1 or path is None:  # FUSE_READDIR_PLUS
                return super().readdir_fuse_3(path, buf, filler, offset, fip, flags)  # type: ignore[no-any-return]
            for name, attrs in self.operations.readdir_plus(path.decode(self.encoding, self.errors)):
                st = fuse.c_stat()
                fuse.set_st_attrs(st, attrs, use_ns=True)
                if filler(buf, name.encode(self.encoding, self.errors), st, 0, 2) != 0:  # FUSE_FILL_DIR_PLUS
                    break
            return 0

    return PlusFUSE


def serve(image: Image, mountpoint: str, *, on_ready: Callable[[], None] | None = None,
          threads: bool = True, allow_other: bool = False, debug: bool = False) -> ImageOperations:
    """Mount ``image`` read-only at ``mountpoint`` and answer requests until it is unmounted.

    Blocks.  ``on_ready`` is called (on its own thread) once the kernel has the
    mount.  SIGINT, SIGTERM and SIGHUP end the loop and unmount (libfuse's
    handlers), as does :func:`unmount` from anywhere.  ``threads``: libfuse's
    multi-threaded loop, so a slow fetch for one process does not hold up the
    others.  Returns the operations object (its counters) after the unmount.
    """
    fuse = fuse_module()
    if not os.path.isdir(mountpoint):
        raise MountError(f"{mountpoint}: mount point is not a directory")
    ready = threading.Event()

    def signal_ready() -> None:
        ready.set()
        if on_ready is not None:
            on_ready()

    ops = ImageOperations(image, on_ready=signal_ready)
    # No malloc tuning here: decoded frames live in the C core's own mmap'd buffer
    # pool (docs/c-api.md, "The cache"), not in malloc's per-thread arenas.
    fsname = (FSNAME_PREFIX + image.reference).replace(",", "_").replace(" ", "_")
    options: dict[str, Any] = {"ro": True, "fsname": fsname, "subtype": SUBTYPE, "default_permissions": True,
                               "foreground": True, "nothreads": not threads, "debug": debug,
                               "max_threads": MAX_THREADS, "max_idle_threads": MAX_THREADS}
    if allow_other:
        options["allow_other"] = True
    try:
        _plus_fuse(fuse)(ops, mountpoint, **options)
    except RuntimeError as exc:
        # libfuse's fuse_main returns 8 when its loop ends by a signal (SIGINT, SIGTERM, SIGHUP),
        # after it has unmounted: the normal end of a mount that was up.
        if ready.is_set() and exc.args == (8,):
            log.info("%s: the FUSE loop ended on a signal; unmounted", mountpoint)
            return ops
        raise MountError(f"{mountpoint}: libfuse could not mount ({exc}); is /dev/fuse there, and "
                         "fusermount3 installed (Debian: fuse3)?") from None
    return ops
