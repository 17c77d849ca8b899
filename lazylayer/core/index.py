"""The C image index, disk cache and image reader (``ll_index``, ``ll_diskcache``, ``ll_image``).

- :class:`Index`: an image's merged tree and its layers' frame tables, built
  in C from the layers' TOC frames (:meth:`Index.build`) or served from stored
  bytes (:meth:`Index.from_buffer`, :meth:`NativeDiskCache.load_index`).
  Lookups never enter Python beyond the call itself.
- :class:`NativeDiskCache`: the disk cache directory opened from C (the same
  layout and locks as :class:`lazylayer.image.DiskCache`): verified frame
  reads, and index files mapped and pinned while used.
- :class:`ImageReader`: reads files of an indexed image; frames on disk are
  read, verified and decoded in C, only missing ones go to a Python callable.

docs/c-api.md describes the C side; docs/index-format.md the stored index.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from typing import Any, Callable, NamedTuple, Sequence

from .. import errors
from ._lib import check, ffi, lib, raise_status, strerror
from .seekable import BlockCache, WorkerPool, _CallbackSource, _owned, scratch_read

__all__ = ["Index", "IndexLayer", "ImageReader", "NativeDiskCache", "Stat", "KINDS", "KIND_DIR", "ROOT"]

KINDS = {lib.LL_KIND_REG: "reg", lib.LL_KIND_DIR: "dir", lib.LL_KIND_SYMLINK: "symlink",
         lib.LL_KIND_CHAR: "char", lib.LL_KIND_BLOCK: "block", lib.LL_KIND_FIFO: "fifo"}
ROOT = lib.LL_ROOT_INO
KIND_DIR = lib.LL_KIND_DIR
_ERR = lib.LL_ERR_MSG_SIZE


class Stat(NamedTuple):
    """One inode of an :class:`Index` (``ll_stat``)."""

    ino: int
    kind: str
    mode: int
    nlink: int
    uid: int
    gid: int
    mtime_sec: int
    mtime_nsec: int
    devmajor: int
    devminor: int
    size: int
    layer: int
    nxattrs: int
    offset: int

    @property
    def mtime(self) -> float:
        return self.mtime_sec + self.mtime_nsec / 1e9


_new_tuple = tuple.__new__
# ll_dirent as Python's struct sees it (checked against the compiled layout below): readdir
# converts a whole directory with one iter_unpack instead of a dozen cffi field reads per entry.
_DIRENT = struct.Struct("<QQ" + "QIIIII4xqIII4xQiIQ")
_FAST_DIRENT = (_DIRENT.size == ffi.sizeof("ll_dirent") and ffi.offsetof("ll_dirent", "st") == 16
                and ffi.offsetof("ll_stat", "offset") == 72 and ffi.offsetof("ll_stat", "mtime_sec") == 32)


def _stat(s: Any) -> Stat:
    return Stat(s.ino, KINDS[s.kind], s.mode, s.nlink, s.uid, s.gid, s.mtime_sec, s.mtime_nsec,
                s.devmajor, s.devminor, s.size, s.layer, s.nxattrs, s.offset)


class IndexLayer(NamedTuple):
    """What :meth:`Index.build` needs of a layer: its descriptor's digest and size, the
    TOC's digest and position, and the TOC frame's bytes (checked against its digest in C)."""

    digest: str
    blob_size: int
    toc_digest: str
    toc_offset: int
    toc_length: int
    toc_frame: bytes


def _fail(rc: int, err: Any, context: str) -> None:
    detail = ffi.string(err).decode(errors="replace") if err is not None else ""
    if rc == lib.LL_ERR_NOMEM:
        raise MemoryError(f"{context}: {detail or strerror(rc)}")
    if rc in (lib.LL_ERR_FORMAT, lib.LL_ERR_DIGEST, lib.LL_ERR_LIMIT) and detail:
        cls = {lib.LL_ERR_FORMAT: errors.FormatError, lib.LL_ERR_DIGEST: errors.IntegrityError,
               lib.LL_ERR_LIMIT: errors.LimitError}[rc]
        raise cls(f"{context}: {detail}")
    if detail:
        raise_status(rc, f"{context}: {detail}")
    raise_status(rc, context)


def _path_error(rc: int, path: str) -> OSError:
    if rc == lib.LL_ERR_NOENT:
        return FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    if rc == lib.LL_ERR_NOTDIR:
        return NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
    if rc == lib.LL_ERR_LOOP:
        return OSError(errno.ELOOP, "Too many levels of symbolic links", path)
    if rc == lib.LL_ERR_NOTREG:
        return OSError(errno.EINVAL, "Not a regular file", path)
    return OSError(errno.EIO, strerror(rc), path)


_tls = threading.local()


def _scratch() -> Any:
    """Per-thread out-parameters for lookups (no allocation per call)."""
    s = getattr(_tls, "s", None)
    if s is None:
        s = _tls.s = (ffi.new("uint64_t *"), ffi.new("ll_stat *"), ffi.new("char[]", 8192),
                      ffi.new("size_t *"), ffi.new("const char **"), ffi.new("const void **"))
    return s


class Index:
    """An image's merged tree (``ll_index``): immutable, safe to use from any number of threads."""

    def __init__(self, ptr: Any, keep: object = None) -> None:
        self._ptr = _owned(ptr, lib.ll_index_free, keep)
        self.inodes: int = lib.ll_index_inodes(self._ptr)
        self.names: int = lib.ll_index_names(self._ptr)
        self.layers: int = lib.ll_index_layers(self._ptr)

    @classmethod
    def build(cls, layers: Sequence[IndexLayer]) -> Index:
        """Parse and merge the layers' TOC frames (bottom layer first), checking each against its digest."""
        arr = ffi.new("ll_index_layer[]", max(1, len(layers)))
        keep = []
        for i, layer in enumerate(layers):
            strs = (ffi.new("char[]", layer.digest.encode()), ffi.new("char[]", layer.toc_digest.encode()),
                    ffi.from_buffer(layer.toc_frame))
            keep.append(strs)
            if len(layer.toc_frame) != layer.toc_length:
                raise errors.FormatError(f"layer {layer.digest}: the TOC frame has {len(layer.toc_frame)} bytes, "
                                         f"its position annotation says {layer.toc_length}")
            arr[i].digest, arr[i].toc_digest, arr[i].toc_frame = strs
            arr[i].blob_size = layer.blob_size
            arr[i].toc_offset = layer.toc_offset
            arr[i].toc_length = layer.toc_length
        out = ffi.new("ll_index **")
        err = ffi.new("char[]", _ERR)
        rc = lib.ll_index_build(arr, len(layers), out, err, _ERR)
        for strs in keep:
            ffi.release(strs[2])
        if rc != lib.LL_OK:
            _fail(rc, err, "building the image index")
        return cls(out[0])

    @classmethod
    def from_buffer(cls, data: bytes | bytearray | memoryview) -> Index:
        """An index from its stored bytes (:meth:`data`), copied; validated first (FormatError)."""
        buf = ffi.from_buffer(data)
        out = ffi.new("ll_index **")
        err = ffi.new("char[]", _ERR)
        try:
            rc = lib.ll_index_open_buffer(buf, len(buf), 1, out, err, _ERR)
        finally:
            ffi.release(buf)
        if rc != lib.LL_OK:
            _fail(rc, err, "opening a stored image index")
        return cls(out[0])

    def data(self) -> bytes:
        """The stored form."""
        p, n = ffi.new("const void **"), ffi.new("size_t *")
        lib.ll_index_data(self._ptr, p, n)
        return bytes(ffi.buffer(p[0], n[0]))

    # -- lookups --------------------------------------------------------------

    def resolve(self, path: str, follow: bool = True) -> int:
        """The inode at ``path`` (symlinks followed inside the image; ``follow=False``: not the last)."""
        ino = _scratch()[0]
        raw = path.encode("utf-8", "surrogateescape")
        rc = lib.ll_index_resolve(self._ptr, raw, len(raw), int(follow), ino)
        if rc != lib.LL_OK:
            raise _path_error(rc, path)
        return ino[0]

    def resolve_path(self, path: str, follow: bool = True) -> tuple[int, str]:
        """The inode at ``path`` and its real path (symlinks on the way replaced by where they led)."""
        ino, _, real, n = _scratch()[:4]
        raw = path.encode("utf-8", "surrogateescape")
        rc = lib.ll_index_resolve_path(self._ptr, raw, len(raw), int(follow), ino, real, len(real), n)
        if rc == lib.LL_ERR_LIMIT:
            big = ffi.new("char[]", n[0] + 1)
            rc = lib.ll_index_resolve_path(self._ptr, raw, len(raw), int(follow), ino, big, len(big), n)
            real = big
        if rc != lib.LL_OK:
            raise _path_error(rc, path)
        return ino[0], ffi.string(real, n[0]).decode("utf-8", "surrogateescape")

    def lookup(self, directory: int, name: str) -> int | None:
        """The inode of ``name`` in ``directory``, or None."""
        ino = _scratch()[0]
        raw = name.encode("utf-8", "surrogateescape")
        rc = lib.ll_index_lookup(self._ptr, directory, raw, len(raw), ino)
        if rc == lib.LL_OK:
            return ino[0]
        if rc in (lib.LL_ERR_NOENT, lib.LL_ERR_NOTDIR):
            return None
        raise_status(rc, f"looking up {name!r} in inode {directory}")

    def stat(self, ino: int) -> Stat:
        st = _scratch()[1]
        check(lib.ll_index_stat(self._ptr, ino, st), f"stat of inode {ino}")
        return _stat(st)

    def readdir(self, ino: int) -> list[tuple[str, Stat]]:
        """A directory's entries in name order, each with its inode's attributes."""
        n, count = ffi.new("size_t *"), ffi.new("uint64_t *")
        rc = lib.ll_index_readdir(self._ptr, ino, 0, ffi.NULL, 0, n, count)
        if rc != lib.LL_OK:
            raise _path_error(rc, f"inode {ino}") if rc == lib.LL_ERR_NOTDIR else raise_status(rc, "readdir")
        total = count[0]
        if total == 0:
            return []
        ents = ffi.new("ll_dirent[]", total)
        check(lib.ll_index_readdir(self._ptr, ino, 0, ents, total, n, count), "readdir")
        if not _FAST_DIRENT:  # pragma: no cover - an ABI where the struct module's layout differs
            return [(ffi.string(e.name, e.name_len).decode("utf-8", "surrogateescape"), _stat(e.st))
                    for e in (ents[i] for i in range(n[0]))]
        kinds = KINDS
        return [(t[0], _new_tuple(Stat, (t[1], kinds[t[2]], *t[3:]))) for t in self._raw(ents, n[0])]

    def readdir_raw(self, ino: int) -> list[tuple]:
        """:meth:`readdir` as plain tuples, ``(name, ino, kind, mode, nlink, uid, gid, mtime_sec,
        mtime_nsec, devmajor, devminor, size, layer, nxattrs, offset)`` with ``kind`` an ``LL_KIND_*``
        value: for listings that turn every entry into something else at once (fsspec info dicts)."""
        n, count = ffi.new("size_t *"), ffi.new("uint64_t *")
        rc = lib.ll_index_readdir(self._ptr, ino, 0, ffi.NULL, 0, n, count)
        if rc != lib.LL_OK:
            raise _path_error(rc, f"inode {ino}") if rc == lib.LL_ERR_NOTDIR else raise_status(rc, "readdir")
        if count[0] == 0:
            return []
        ents = ffi.new("ll_dirent[]", count[0])
        check(lib.ll_index_readdir(self._ptr, ino, 0, ents, count[0], n, count), "readdir")
        if not _FAST_DIRENT:  # pragma: no cover
            return [(name, st.ino, {v: k for k, v in KINDS.items()}[st.kind], *st[2:])
                    for name, st in self.readdir(ino)]
        return self._raw(ents, n[0])

    def _raw(self, ents: Any, n: int) -> list[tuple]:
        base, size, pool = self._pool()
        out = []
        for t in _DIRENT.iter_unpack(ffi.buffer(ents, n * _DIRENT.size)):
            at = t[0] - base
            name = pool[at:at + t[1]] if 0 <= at and at + t[1] <= size else \
                ffi.buffer(ffi.cast("char *", t[0]), t[1])[:]  # (names live in the index buffer)
            out.append((name.decode("utf-8", "surrogateescape"), *t[2:]))
        return out

    def listdir(self, ino: int) -> tuple[list[str], list[int], bytes]:
        """A directory's entry names, inode numbers and kinds (``LL_KIND_*`` values), in name order:
        three calls' worth of data in one, for walks that need no other attribute."""
        n, used, count = ffi.new("size_t *"), ffi.new("size_t *"), ffi.new("uint64_t *")
        rc = lib.ll_index_readdir(self._ptr, ino, 0, ffi.NULL, 0, n, count)
        if rc != lib.LL_OK:
            raise _path_error(rc, f"inode {ino}") if rc == lib.LL_ERR_NOTDIR else raise_status(rc, "readdir")
        total = count[0]
        if total == 0:
            return [], [], b""
        room = total * 24
        while True:
            names, inos, kinds = ffi.new("char[]", room), ffi.new("uint64_t[]", total), ffi.new("uint8_t[]", total)
            rc = lib.ll_index_readdir_names(self._ptr, ino, names, room, used, inos, kinds, total, n)
            if rc != lib.LL_ERR_LIMIT or used[0] <= room:
                break
            room = used[0]
        check(rc, "readdir")
        k = n[0]
        text = ffi.buffer(names, used[0] - 1)[:].decode("utf-8", "surrogateescape")
        return text.split("\0"), ffi.unpack(inos, k), ffi.buffer(kinds, k)[:]

    def _pool(self) -> tuple[int, int, Any]:
        """The index buffer's address, size and bytes (names point into it)."""
        pool = self.__dict__.get("_pool_cache")
        if pool is None:
            p, n = ffi.new("const void **"), ffi.new("size_t *")
            lib.ll_index_data(self._ptr, p, n)
            pool = self._pool_cache = (int(ffi.cast("uintptr_t", p[0])), n[0], ffi.buffer(p[0], n[0]))
        return pool

    def readlink(self, ino: int) -> str:
        target, n = _scratch()[4], _scratch()[3]
        rc = lib.ll_index_readlink(self._ptr, ino, target, n)
        if rc != lib.LL_OK:
            raise _path_error(rc, f"inode {ino}")
        return ffi.string(target[0], n[0]).decode("utf-8", "surrogateescape")

    def xattrs(self, ino: int, count: int | None = None) -> dict[str, bytes]:
        """Extended attributes of ``ino`` (name -> value)."""
        if count is None:
            count = self.stat(ino).nxattrs
        name, value, n = ffi.new("const char **"), ffi.new("const void **"), ffi.new("size_t *")
        out = {}
        for i in range(count):
            check(lib.ll_index_xattr(self._ptr, ino, i, name, value, n), f"xattr {i} of inode {ino}")
            out[ffi.string(name[0]).decode("utf-8", "surrogateescape")] = bytes(ffi.buffer(value[0], n[0]))
        return out

    # -- layers ---------------------------------------------------------------

    def layer_info(self, layer: int) -> tuple[str, int, int, int]:
        """(blob digest, blob size, tar size, data frames) of ``layer``."""
        digest, blob, tar, frames = (ffi.new("const char **"), ffi.new("uint64_t *"), ffi.new("uint64_t *"),
                                     ffi.new("uint32_t *"))
        check(lib.ll_index_layer_info(self._ptr, layer, digest, blob, tar, frames), f"layer {layer}")
        return ffi.string(digest[0]).decode(), blob[0], tar[0], frames[0]

    def layer_codec(self, layer: int) -> str:
        """How ``layer``'s frames are stored: ``zstd`` (the lazy layer format) or ``raw`` (each frame
        its data as is: a layer of another format, decoded by its host)."""
        rc = lib.ll_index_layer_codec(self._ptr, layer)
        if rc < 0:
            check(rc, f"layer {layer}")
        return "raw" if rc == lib.LL_CODEC_RAW else "zstd"

    def frames(self, layer: int) -> list[tuple[int, int, int, int, str]]:
        """``(compressed_offset, compressed_size, offset, size, sha256 hex)`` of every data frame of ``layer``."""
        count = self.layer_info(layer)[3]
        f = ffi.new("ll_layer_frame *")
        out = []
        for i in range(count):
            check(lib.ll_index_frame(self._ptr, layer, i, f), f"frame {i} of layer {layer}")
            out.append((f.c_offset, f.c_size, f.d_offset, f.d_size, bytes(ffi.buffer(f.sha256, 32)).hex()))
        return out

    def frame_table(self, layer: int) -> bytes:
        """Every data frame of ``layer`` as ``ll_index_frame_table`` records (56 bytes each:
        :class:`lazylayer.format.layer.FrameTable` reads them)."""
        table, count = ffi.new("const void **"), ffi.new("uint32_t *")
        check(lib.ll_index_frame_table(self._ptr, layer, table, count), f"frames of layer {layer}")
        return bytes(ffi.buffer(table[0], count[0] * lib.LL_INDEX_FRAME_RECORD)) if count[0] else b""

    def prefetch(self, layer: int) -> list[tuple[int, int]]:
        """The layer's prefetch plan from its TOC: ``(offset, length)`` ranges of its tar."""
        count, off, length = ffi.new("uint64_t *"), ffi.new("uint64_t *"), ffi.new("uint64_t *")
        check(lib.ll_index_prefetch(self._ptr, layer, 0, count, ffi.NULL, ffi.NULL), f"prefetch of layer {layer}")
        out = []
        for i in range(count[0]):
            check(lib.ll_index_prefetch(self._ptr, layer, i, count, off, length), f"prefetch of layer {layer}")
            out.append((off[0], length[0]))
        return out

    def __repr__(self) -> str:
        return f"<Index {self.inodes} inodes, {self.names} names, {self.layers} layers>"


class NativeDiskCache:
    """The disk cache directory as C sees it (``ll_diskcache``): for index files and C-side frame reads."""

    def __init__(self, path: str) -> None:
        out = ffi.new("ll_diskcache **")
        err = ffi.new("char[]", _ERR)
        rc = lib.ll_diskcache_open(os.fsencode(path), out, err, _ERR)
        if rc != lib.LL_OK:
            _fail(rc, err, f"opening the disk cache {path}")
        self.path = path
        self._ptr = _owned(out[0], lib.ll_diskcache_free, None)

    def load_index(self, manifest_digest: str) -> Index | None:
        """The index stored for this manifest (mapped and pinned while the Index lives), or None."""
        out = ffi.new("ll_index **")
        rc = lib.ll_diskcache_load_index(self._ptr, manifest_digest.encode(), out)
        if rc == lib.LL_ERR_NOENT:
            return None
        check(rc, f"loading the index of {manifest_digest}")
        return Index(out[0], keep=self)  # the cache outlives the index mapped from it

    def store_index(self, manifest_digest: str, index: Index) -> None:
        check(lib.ll_diskcache_store_index(self._ptr, manifest_digest.encode(), index._ptr),
              f"storing the index of {manifest_digest}")

    def get(self, sha256_hex: str, size: int) -> bytes | None:
        """The frame with this sha256 if it is on disk, exactly ``size`` bytes and intact."""
        buf = ffi.new("char[]", size)
        rc = lib.ll_diskcache_get(self._ptr, bytes.fromhex(sha256_hex), buf, size)
        return bytes(ffi.buffer(buf, size)) if rc == lib.LL_OK else None


class ImageReader:
    """Reads files of an indexed image (``ll_image``); the GIL is released while C works.

    ``sources[i]`` is ``(fetch, use_disk)`` for layer ``i``: ``fetch(offset, size)``
    returns the compressed bytes of a run of frames the disk cache does not have
    (it must verify and store them: the Python host does both); with ``use_disk``
    False every frame comes from ``fetch``; a ``fetch`` whose ``local`` attribute is
    true reads a local file (C counts its frames as ``frames_local``).

    ``c_sources`` instead: a filled ``ll_image_source[]`` of C callbacks (no
    Python on any read: the mount's, lazylayer/mount/fuse.py), kept alive with
    ``keep``; the frames they return are checked against their sha256 here, and
    stored by whoever fetched them — but with ``raw_checked_by_host`` raw layers'
    frames, which the process behind the callbacks decoded and checked chunk by
    chunk (a run of chunks is named by its table, not by its data).
    """

    def __init__(self, index: Index, sources: Sequence[tuple[Callable[[int, int], bytes], bool]], *,
                 cache: BlockCache | None, pool: WorkerPool | None, disk: NativeDiskCache | None,
                 c_sources: Any = None, keep: object = None, raw_checked_by_host: bool = False) -> None:
        self.index = index
        self._failed: dict[int, str] = {}
        self._callbacks = [_CallbackSource(fetch) for fetch, _ in sources]
        if c_sources is None:
            arr = ffi.new("ll_image_source[]", max(1, len(sources)))
            for i, ((fetch, use_disk), cb) in enumerate(zip(sources, self._callbacks)):
                arr[i].read = lib._ll_py_read
                arr[i].opaque = cb.handle
                arr[i].use_disk = int(bool(use_disk) and disk is not None)
                arr[i].local = int(bool(getattr(fetch, "local", False)))
        else:
            arr = c_sources
        opts = ffi.new("ll_image_options *")
        check(lib.ll_image_options_init(opts, ffi.sizeof(opts[0])), "initialising image options")
        opts.cache = cache._ptr if cache is not None else ffi.NULL
        opts.pool = pool._ptr if pool is not None else ffi.NULL
        opts.disk = disk._ptr if disk is not None else ffi.NULL
        # The Python host verifies every frame it fetches (remote.read_ranges); C sources' frames are
        # verified here.  Either way the fetcher stores them (DiskCache.fetch_many, single-flight locks).
        opts.verify_fetched = int(c_sources is not None)
        opts.store_fetched = 0
        # C sources whose raw layers' frames a Python host decoded and checked, chunk by chunk (the
        # mount's fetcher): a run of chunks is named by its table, not its data, so C could not hash it
        # against that name.
        opts.raw_checked_by_host = int(raw_checked_by_host)
        out = ffi.new("ll_image **")
        check(lib.ll_image_create(index._ptr, arr, opts, out), "opening the image reader")
        # What C uses lives as long as the reader: the index, caches, pool and callbacks.
        self._ptr = _owned(out[0], lib.ll_image_free, (index, cache, pool, disk, self._callbacks, arr, keep))

    def readinto(self, ino: int, buffer: Any, offset: int, *, name: str = "", size: int | None = None) -> int:
        """Read file ``ino`` at ``offset`` into ``buffer`` (its first ``size`` bytes: default all of
        it); the bytes read (short at the file's end)."""
        buf = ffi.from_buffer(buffer, require_writable=True)
        try:
            n = lib.ll_image_read(self._ptr, ino, offset, buf, len(buf) if size is None else min(size, len(buf)))
        finally:
            ffi.release(buf)
        if n < 0:
            self._raise(int(n), name or f"inode {ino}", ino)
        return int(n)

    def pread(self, ino: int, size: int, offset: int, *, name: str = "") -> bytes:
        """Up to ``size`` bytes of file ``ino`` at ``offset`` (fewer at its end)."""
        def read(buf: Any) -> int:
            n = lib.ll_image_read(self._ptr, ino, offset, buf, size)
            if n < 0:
                self._raise(int(n), name or f"inode {ino}", ino)
            return n

        return scratch_read(size, size, read)

    def fail_layer(self, layer: int, reason: str) -> None:
        """Fail every later read of ``layer``, cache hits included (``ll_image_fail_layer``):
        :class:`~lazylayer.errors.IntegrityError` with ``reason``.  Any thread."""
        self._failed[layer] = reason
        check(lib.ll_image_fail_layer(self._ptr, layer, lib.LL_ERR_DIGEST), f"failing layer {layer}")

    def _raise(self, rc: int, what: str, ino: int) -> None:
        if rc == lib.LL_ERR_DIGEST and self._failed:
            layer = self.index.stat(ino).layer
            if layer in self._failed:
                raise errors.IntegrityError(f"{what}: {self._failed[layer]}")
        for cb in self._callbacks:  # the Python exception behind a callback status, if any
            exc = cb.take_failure()
            if exc is not None:
                if isinstance(exc, errors.LazyLayerError):
                    raise exc
                raise errors.SourceError(f"{what}: {exc}") from exc
        if rc == lib.LL_ERR_NOTREG:
            raise OSError(errno.EINVAL, "Not a regular file", what)
        raise_status(rc, f"reading {what}")

    def stats(self) -> dict[str, int]:
        s = ffi.new("ll_image_stats *")
        lib.ll_image_get_stats(self._ptr, s)
        return {"reads": s.reads, "frames_disk": s.frames_disk, "frames_fetched": s.frames_fetched,
                "host_calls": s.host_calls, "bytes_fetched": s.bytes_fetched, "digest_errors": s.digest_errors,
                "frames_local": s.frames_local, "bytes_local": s.bytes_local}
