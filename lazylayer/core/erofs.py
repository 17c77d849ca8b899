"""The EROFS view of an image index (``ll_erofs``, csrc/erofs.c).

:class:`ErofsLayout` builds, in C, the metadata image of an :class:`~lazylayer.core.index.Index`
(superblock, inodes, directories, symlinks, devices, extended attributes) and
the layout of its data file, in which every regular file's content lies at a
block-aligned offset.  :mod:`lazylayer.mount.erofs` mounts the two and fills
the data file on demand.  docs/mount.md, "The erofs backend".
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from ._lib import check, ffi, lib
from .index import Index, _fail
from .seekable import _owned

__all__ = ["BLOCK", "VERSION", "ErofsLayout", "Extent", "meta_sum", "supervisor_program"]

BLOCK: int = lib.LL_EROFS_BLOCK
VERSION: int = lib.LL_EROFS_VERSION  #: of the layout: part of the names a metadata image is kept under


def meta_sum(data: Any) -> int:
    """The checksum (XXH3-64) kept beside a stored metadata image, to find it intact before using it."""
    buf = ffi.from_buffer(data)
    try:
        return int(lib.ll_erofs_sum(buf, len(buf)))
    finally:
        ffi.release(buf)


def supervisor_program() -> str | None:
    """``lazylayer-erofsd``, the supervisor of an erofs mount as a program (``ll_erofs_exec``), where
    setup.py builds it: beside the extension.  None if it is not there (an extension built some other
    way): the supervisor is then forked (``ll_erofs_spawn``)."""
    from . import _native  # type: ignore[attr-defined]

    path = os.path.join(os.path.dirname(_native.__file__), "lazylayer-erofsd")
    return path if os.access(path, os.X_OK) else None


class Extent(NamedTuple):
    """What the data file holds from some offset on: ``length`` bytes of inode ``ino``'s content from
    ``file_offset`` (``ino`` 0: zero padding up to the end of a file's last block)."""

    ino: int
    file_offset: int
    length: int


class ErofsLayout:
    """An index as EROFS: :attr:`meta` (the metadata image's bytes) and the data file's layout.

    ``layout_only``: the data file's layout alone (no :attr:`meta`), for a mount
    that kept the metadata image it built before.  Immutable; any thread.
    Raises :class:`lazylayer.errors.LimitError` for an
    image EROFS cannot hold (an extended attribute outside ``user.``,
    ``trusted.``, ``security.`` and the POSIX ACLs, a data file over 16 TiB)."""

    def __init__(self, index: Index, uuid: bytes | None = None, *, layout_only: bool = False) -> None:
        if uuid is not None and len(uuid) != 16:
            raise ValueError("uuid: 16 bytes")
        out = ffi.new("ll_erofs **")
        err = ffi.new("char[]", lib.LL_ERR_MSG_SIZE)
        rc = lib.ll_erofs_build(index._ptr, uuid if uuid is not None else ffi.NULL, int(layout_only), out, err,
                                lib.LL_ERR_MSG_SIZE)
        if rc != lib.LL_OK:
            _fail(rc, err, "building the EROFS image")
        self._ptr: Any = _owned(out[0], lib.ll_erofs_free, index)
        self.index = index
        self.data_size: int = lib.ll_erofs_data_size(self._ptr)

    @property
    def meta(self) -> memoryview:
        """The metadata image (a multiple of :data:`BLOCK` bytes), valid while this layout lives."""
        p, n = ffi.new("const void **"), ffi.new("size_t *")
        lib.ll_erofs_meta(self._ptr, p, n)
        return memoryview(ffi.buffer(p[0], n[0]))

    def file_offset(self, ino: int) -> int | None:
        """Where regular file ``ino``'s content starts in the data file (None: not a file with content)."""
        off = ffi.new("uint64_t *")
        rc = lib.ll_erofs_file_offset(self._ptr, ino, off)
        if rc == lib.LL_ERR_NOTREG:
            return None
        check(rc, f"data offset of inode {ino}")
        return off[0]

    def extent_at(self, offset: int) -> Extent:
        """What the data file holds at ``offset`` (ValueError at or past :attr:`data_size`)."""
        ino, fo, n = ffi.new("uint64_t *"), ffi.new("uint64_t *"), ffi.new("uint64_t *")
        check(lib.ll_erofs_data_at(self._ptr, offset, ino, fo, n), f"data file offset {offset}")
        return Extent(ino[0], fo[0], n[0])

    def extents(self, offset: int, length: int) -> list[Extent]:
        """The extents covering ``[offset, offset + length)`` of the data file (cut to it and to its end)."""
        out = []
        end = min(offset + length, self.data_size)
        while offset < end:
            e = self.extent_at(offset)
            n = min(e.length, end - offset)
            out.append(Extent(e.ino, e.file_offset, n))
            offset += n
        return out
