"""``lazylayer://``: an fsspec filesystem over a container image fetched lazily.

>>> import fsspec
>>> fs = fsspec.filesystem("lazylayer", image="docker://registry.example/app:1.0")
>>> fs.cat("etc/os-release")
>>> with fsspec.open("lazylayer://etc/os-release", image="oci:/srv/layout:1.0") as f:
...     f.read()

The filesystem shows the merged root of the image's layers (whiteouts and
opaque directories applied, :mod:`lazylayer.tree`) and reads file content
through :class:`lazylayer.image.Image`: only the frames a read touches are
fetched, each verified against its digest.  It is read-only: every write
raises ``PermissionError``.

Paths are relative to the image root (``etc/os-release``; a leading ``/`` is
ignored; the root is ``""``).  ``ls``, ``info``, ``find`` and ``walk`` describe
names as ``lstat`` does (a symlink has ``type`` ``"link"``); ``open``, ``cat``
and friends follow symlinks, always inside the image root.

It is an fsspec ``AsyncFileSystem``: with ``asynchronous=True`` a caller inside
an event loop awaits ``_info``, ``_ls``, ``_cat_file``, ``_cat_ranges``,
``_get_file``... (reads run on a thread, never blocking the loop).  Metadata
calls never touch the network once the image is open.  See docs/filesystem.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import io
import re
import threading
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

from fsspec import AbstractFileSystem
from fsspec.asyn import AsyncFileSystem

from . import prefetch
from .core import seek_position
from .core.index import KIND_DIR
from .image import DiskCache, Image, Node
from .remote import ReadAhead

__all__ = ["ImageFile", "ImageFileSystem"]

_READONLY = "lazylayer:// is read-only: an image cannot be changed"
_MIN_READAHEAD = 128 << 10
_MAX_READAHEAD = 16 << 20
_PARALLEL_RANGES = 16


def _readonly(*args: Any, **kwargs: Any) -> Any:
    raise PermissionError(errno.EROFS, _READONLY)


async def _areadonly(*args: Any, **kwargs: Any) -> Any:
    raise PermissionError(errno.EROFS, _READONLY)


def image_from_url(fo: str, target_protocol: str | None = None) -> str:
    """The image reference a chained URL's target names.

    - ``https://HOST/v2/REPO/manifests/REF`` (``http://`` for a plain-HTTP
      registry): the manifest's URL in the registry API, i.e. ``docker://HOST/REPO:REF``;
    - a local path or ``file://`` URL of an OCI layout directory, optionally
      followed by ``:TAG`` — ``oci:DIR[:TAG]``;
    - anything else is taken as a lazylayer reference as it is.
    """
    proto = (target_protocol or urlsplit(fo).scheme or "file").lower()
    if proto in ("http", "https"):
        url = fo if "://" in fo else f"{proto}://{fo}"
        parts = urlsplit(url)
        m = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", parts.path)
        if not m:
            raise ValueError(f"{fo}: not a registry manifest URL (https://HOST/v2/REPO/manifests/TAG)")
        repo, ref = m.groups()
        sep = "@" if ref.startswith("sha256:") else ":"
        return f"docker://{parts.netloc}/{repo}{sep}{ref}"
    if proto in ("file", "local"):
        path = fo[len("file://"):] if fo.startswith("file://") else fo
        return f"oci:{path}"
    return fo


class ImageFileSystem(AsyncFileSystem):
    """An fsspec filesystem over the merged root of a lazily fetched container image.

    ``image``: the reference (``docker://HOST/REPO:TAG``, ``oci:DIR[:TAG]``,
    ``docker-archive:FILE``); in a chained URL it comes from the target
    (``lazylayer://PATH::https://HOST/v2/REPO/manifests/TAG`` or
    ``lazylayer://PATH::file:///srv/layout``).  ``platform``:
    ``OS/ARCH[/VARIANT]`` (default: this machine).  ``registry``: a
    :class:`lazylayer.registry.RegistryConfig`.  ``cache_dir``: the disk cache
    (default ``LAZYLAYER_CACHE_DIR``, else ``~/.cache/lazylayer``);
    ``use_cache=False`` keeps nothing on disk; ``cache_max``: its size bound in bytes.
    ``memory_cache``: a :class:`~lazylayer.core.BlockCache` (default: the shared one).
    ``prefetch``, ``fill``, ``fill_rate``, ``readahead``, ``neighbours``: as
    for :func:`lazylayer.prefetch.start` (default: the plan attached to the
    image is used; ``prefetch=None`` or ``False`` turns that off, a path uses a
    plan file; sequential reads are read ahead, but a read that missed fetches
    no neighbours unless ``neighbours`` says how many frames' worth: the mount's
    4 moved 2.2x the bytes 40 files need, docs/benchmarks.md).  ``gzip_indexes``: which
    indexes make plain gzip layers lazy (``local``, ``attached``, ``off``: docs/filesystem.md,
    "Plain gzip layers").  ``chunk_runs``: runs of an eStargz or zstd:chunked layer's small
    chunks read as one frame each (the mount's choice; off here: a reader of chosen files then
    moves only their chunks; :class:`~lazylayer.image.Image`).

    The image's manifest and TOCs are read on first use (so an async caller
    never blocks its loop in the constructor); after that, metadata calls are
    in memory.
    """

    protocol = "lazylayer"
    root_marker = ""
    cachable = True

    def __init__(self, image: str | None = None, *, fo: str | None = None, target_protocol: str | None = None,
                 target_options: dict[str, Any] | None = None, platform: str | None = None,
                 registry: Any = None, cache_dir: str | None = None, use_cache: bool = True,
                 cache_max: int | None = None, memory_cache: Any = None, threads: int | None = None,
                 prefetch: Any = "auto", fill: bool = False, fill_rate: float | None = None,
                 readahead: bool = True, neighbours: int = 0, gzip_indexes: str = "local", chunk_runs: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if image is None and fo is not None:
            image = image_from_url(fo, target_protocol)
        if image is None:
            raise ValueError("lazylayer:// needs an image: ImageFileSystem(image='docker://HOST/REPO:TAG'), "
                             "or a chained URL lazylayer://PATH::https://HOST/v2/REPO/manifests/TAG")
        self.reference = image
        self._options = {"platform": platform, "registry": registry, "threads": threads, "gzip_indexes": gzip_indexes,
                         "chunk_runs": chunk_runs}
        self._prefetch = {"prefetch": prefetch, "fill": fill, "fill_rate": fill_rate, "readahead": readahead,
                          "neighbours": neighbours}
        if memory_cache is not None:
            self._options["memory_cache"] = memory_cache
        self._cache_args = (cache_dir, use_cache, cache_max)
        self._image: Image | None = None
        self._load_lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # -- the image ------------------------------------------------------------

    @property
    def image(self) -> Image:
        """The opened :class:`~lazylayer.image.Image` (opened on first use)."""
        img = self._image
        if img is None:
            with self._load_lock:
                if self._image is None:
                    cache_dir, use_cache, cache_max = self._cache_args
                    disk = DiskCache(cache_dir, max_bytes=cache_max) if use_cache else None
                    img = Image(self.reference, cache=disk, **self._options)
                    try:
                        prefetch.start(img, **self._prefetch)
                    except BaseException:
                        img.close()
                        raise
                    self._image = img
                img = self._image
        return img

    async def _aimage(self) -> Image:
        if self._image is not None:
            return self._image
        return await asyncio.get_running_loop().run_in_executor(self._pool(), lambda: self.image)

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            with self._load_lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        _PARALLEL_RANGES, thread_name_prefix="lazylayer-fs")
        return self._executor

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        await self._aimage()
        return await asyncio.get_running_loop().run_in_executor(self._pool(), lambda: fn(*args))

    def close(self) -> None:
        """Release the image (readers, pins) and worker threads."""
        if self._image is not None:
            self._image.close()
            self._image = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def __repr__(self) -> str:
        platform = self._options.get("platform")
        return f"<ImageFileSystem {self.reference}" + (f" platform={platform}" if platform else "") + ">"

    # -- paths ----------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("lazylayer://"):
            path = path[len("lazylayer://"):]
        elif path.startswith("lazylayer::"):
            path = path[len("lazylayer::"):]
        path = path.split("::", 1)[0]
        return path.strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        return {}

    def _node(self, path: str, follow: bool = False) -> Node:
        return self.image.tree.resolve(self._strip_protocol(path), follow=follow)

    def _dir_node(self, path: str) -> Node:
        """The directory ``path`` names (a symlink to a directory is followed, as ``ls`` does)."""
        node = self._node(path, follow=True)
        if node.children is None:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        return node

    # -- metadata (in memory) -------------------------------------------------

    def info(self, path: str, follow_symlinks: bool = False, **kwargs: Any) -> dict[str, Any]:
        """What ``os.lstat`` would say (``follow_symlinks=True``: ``os.stat``); see :meth:`Node.info`."""
        return self._node(path, follow=follow_symlinks).info()

    def ls(self, path: str = "", detail: bool = True, **kwargs: Any) -> list[Any]:
        """A directory's entries (a symlink to one is followed), or ``[info(path)]`` for anything else.

        Names are under ``path`` as given, even when a symlink led elsewhere.
        """
        path = self._strip_protocol(path)
        node = self._node(path, follow=True)
        if node.children is None:
            return [self.info(path) if detail else path]
        children = [node.children[k] for k in sorted(node.children)]
        if node.path != path:  # reached through a symlink: name entries under the path asked for
            names = [f"{path}/{k}" if path else k for k in sorted(node.children)]
            if not detail:
                return names
            infos = [c.info() for c in children]
            for info, name in zip(infos, names):
                info["name"] = name
            return infos
        if detail:
            return [c.info() for c in children]
        return [c.path for c in children]

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self._node(path, follow=False)
            return True
        except OSError:
            return False

    def lexists(self, path: str, **kwargs: Any) -> bool:
        return self.exists(path)

    def isdir(self, path: str) -> bool:
        try:
            return self._node(path, follow=True).is_dir
        except OSError:
            return False

    def isfile(self, path: str) -> bool:
        try:
            return self._node(path, follow=True).kind == "reg"
        except OSError:
            return False

    def islink(self, path: str) -> bool:
        try:
            return self._node(path, follow=False).kind == "symlink"
        except OSError:
            return False

    def readlink(self, path: str) -> str:
        """A symlink's target, as stored."""
        node = self._node(path, follow=False)
        if node.kind != "symlink":
            raise OSError(errno.EINVAL, "Not a symbolic link", path)
        return node.inode.linkname

    def size(self, path: str) -> int:
        return self.info(path, follow_symlinks=True)["size"]

    def walk(self, path: str = "", maxdepth: int | None = None, topdown: bool = True, on_error: str = "omit",
             **kwargs: Any) -> Iterator[Any]:
        """fsspec's walk, straight off the in-memory tree; symlinks to directories are not descended."""
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        detail = kwargs.get("detail", False)
        try:
            top = self._dir_node(path)
        except OSError:
            if on_error == "raise":
                raise
            return
        out: list[Any] = []
        if detail:  # info dicts made straight from one listing per directory
            tree = self.image.tree
            stack = [(top.path, top.inode.ino, 0)]
            while stack:
                where, ino, depth = stack.pop()
                entries = tree.listing(where, ino)
                dirs = {n: i for n, i in entries if i["type"] == "directory"}
                item: Any = (where, dirs, {n: i for n, i in entries if i["type"] != "directory"})
                if topdown:
                    yield item
                else:
                    out.append(item)
                if maxdepth is None or depth + 1 < maxdepth:
                    stack.extend(reversed([(i["name"], i["ino"], depth + 1) for i in dirs.values()]))
        else:  # names only: one packed listing per directory, no per-entry objects
            listdir, dir_kind = self.image.index.listdir, KIND_DIR
            stack = [(top.path, top.inode.ino, 0)]
            while stack:
                where, ino, depth = stack.pop()
                names, inos, kinds = listdir(ino)
                dirs = [n for n, k in zip(names, kinds) if k == dir_kind]
                item = (where, dirs, [n for n, k in zip(names, kinds) if k != dir_kind])
                if topdown:
                    yield item
                else:
                    out.append(item)
                if maxdepth is None or depth + 1 < maxdepth:
                    prefix = f"{where}/" if where else ""
                    stack.extend(reversed([(prefix + n, i, depth + 1) for n, i, k in zip(names, inos, kinds)
                                           if k == dir_kind]))
        if not topdown:
            yield from reversed(out)

    def find(self, path: str = "", maxdepth: int | None = None, withdirs: bool = False, detail: bool = False,
             **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        out: dict[str, Any] = {}
        try:
            node = self._node(path, follow=True)
        except OSError:
            return out if detail else []
        if not node.is_dir:
            out[node.path] = node.info()
        else:
            if withdirs and node.path:
                out[node.path] = node.info()
            for _, dirs, files in self.walk(path, maxdepth, detail=True):
                if withdirs:
                    out.update((v["name"], v) for v in dirs.values())
                out.update((v["name"], v) for v in files.values())
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def du(self, path: str, total: bool = True, maxdepth: int | None = None, withdirs: bool = False,
           **kwargs: Any) -> Any:
        sizes = {p: i["size"] for p, i in self.find(path, maxdepth, withdirs, detail=True).items()}
        return sum(sizes.values()) if total else sizes

    def ukey(self, path: str) -> str:
        node = self._node(path, follow=True)
        return f"{self.image.digest}:{node.inode.ino}"

    def checksum(self, path: str) -> int:
        return hash(self.ukey(path))

    def modified(self, path: str) -> Any:
        import datetime

        return datetime.datetime.fromtimestamp(self.info(path, follow_symlinks=True)["mtime"], datetime.timezone.utc)

    def created(self, path: str) -> Any:
        return self.modified(path)

    # -- reading --------------------------------------------------------------

    def _file_node(self, path: str) -> Node:
        node = self._node(path, follow=True)
        if node.kind == "dir":
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if node.kind != "reg":
            raise OSError(errno.EINVAL, f"not a regular file ({node.kind})", path)
        return node

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict[str, Any] | None = None, **kwargs: Any) -> ImageFile:
        if mode != "rb":
            raise PermissionError(errno.EROFS, _READONLY)
        return ImageFile(self, self._file_node(path))

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        node = self._file_node(path)
        size = node.inode.size
        start = 0 if start is None else (max(0, size + start) if start < 0 else min(start, size))
        end = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
        if end <= start:
            return b""
        return self.image.pread(node, end - start, start)

    def cat_ranges(self, paths: Sequence[str], starts: Any, ends: Any, max_gap: Any = None,
                   on_error: str = "return", **kwargs: Any) -> list[Any]:
        """Many ranges at once: read on up to 16 threads, so their fetches overlap."""
        if max_gap is not None:
            raise NotImplementedError("max_gap is not supported")
        n = len(paths)
        starts = [starts] * n if not isinstance(starts, list) else starts
        ends = [ends] * n if not isinstance(ends, list) else ends
        if len(starts) != n or len(ends) != n:
            raise ValueError("paths, starts and ends must have the same length")

        def one(i: int) -> Any:
            try:
                return self.cat_file(paths[i], starts[i], ends[i])
            except Exception as exc:  # noqa: BLE001 - fsspec's on_error contract
                if on_error == "raise":
                    raise
                return exc

        if n <= 1:
            return [one(i) for i in range(n)]
        return list(self._pool().map(one, range(n)))

    def get_file(self, rpath: str, lpath: str, callback: Any = None, outfile: Any = None, **kwargs: Any) -> None:
        """Copy one file (or make one directory) out of the image."""
        kw = {"callback": callback} if callback is not None else {}
        return AbstractFileSystem.get_file(self, rpath, lpath, outfile=outfile, **kw, **kwargs)

    # -- async ------------------------------------------------------------------

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        await self._aimage()
        return self.info(path, **kwargs)

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        await self._aimage()
        return self.ls(path, detail, **kwargs)

    async def _exists(self, path: str, **kwargs: Any) -> bool:
        await self._aimage()
        return self.exists(path)

    async def _isdir(self, path: str) -> bool:
        await self._aimage()
        return self.isdir(path)

    async def _isfile(self, path: str) -> bool:
        await self._aimage()
        return self.isfile(path)

    async def _size(self, path: str) -> int:
        await self._aimage()
        return self.size(path)

    async def _find(self, path: str, maxdepth: int | None = None, withdirs: bool = False, **kwargs: Any) -> Any:
        await self._aimage()
        return self.find(path, maxdepth, withdirs, **kwargs)

    async def _walk(self, path: str, maxdepth: int | None = None, **kwargs: Any) -> Any:
        await self._aimage()
        for item in self.walk(path, maxdepth, **kwargs):
            yield item

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        return await self._in_thread(self.cat_file, path, start, end)

    async def _cat_ranges(self, paths: Sequence[str], starts: Any, ends: Any, max_gap: Any = None,
                          on_error: str = "return", **kwargs: Any) -> list[Any]:
        return await self._in_thread(self.cat_ranges, paths, starts, ends, max_gap, on_error)

    async def _get_file(self, rpath: str, lpath: str, **kwargs: Any) -> None:
        return await self._in_thread(self.get_file, rpath, lpath)

    async def open_async(self, path: str, mode: str = "rb", **kwargs: Any) -> AsyncImageFile:
        """A file whose reads are awaited (they run on a thread)."""
        await self._aimage()
        return AsyncImageFile(self._open(path, mode), self)

    # -- writes: refused -------------------------------------------------------

    mkdir = makedirs = rmdir = rm_file = rm = touch = pipe_file = put_file = cp_file = mv = _readonly
    _rm_file = _rm = _pipe_file = _put_file = _cp_file = _mkdir = _makedirs = _touch = _areadonly


class ImageFile(io.RawIOBase):
    """A file of the image, open for reading (``read``, ``readinto``, ``seek``, ``tell``).

    Random reads fetch and decode only the frames they touch.  Sequential
    reads are read ahead (docs/filesystem.md, "Read-ahead"): by the image's
    prefetcher, in frames fetched in the background, when it reads ahead in
    this file's layer; otherwise here, by :class:`lazylayer.remote.ReadAhead`
    in bytes of the file (128 KiB at the second sequential read, doubling at
    each read the buffer cannot serve, up to 16 MiB), so a long scan turns
    into a few large parallel fetches and decodes; a seek starts over.
    """

    def __init__(self, fs: ImageFileSystem, node: Node) -> None:
        super().__init__()
        self.fs = fs
        self.path = node.path
        self.node = node
        self.size = node.inode.size
        self._image = fs.image
        self._pos = 0
        self._buf = b""  # read-ahead: bytes of the file from _buf_start
        self._buf_start = 0
        self._ra = ReadAhead(_MIN_READAHEAD, _MAX_READAHEAD)  # in bytes of the file
        # The prefetcher's frame read-ahead (when it has one for this layer) fetches the same frames
        # in the background, which is faster than reading ahead here (docs/filesystem.md, "Read-ahead").
        prefetcher = self._image.prefetcher
        self._read_ahead = prefetcher is None or not prefetcher.reads_ahead(node.inode.layer)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("seek on a closed file")
        self._pos = seek_position(self._pos, offset, whence, lambda: self.size)
        return self._pos

    def info(self) -> dict[str, Any]:
        return self.node.info()

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed file")
        pos = self._pos
        if size is None or size < 0:
            size = self.size - pos
        size = max(0, min(size, self.size - pos))
        if size == 0:
            return b""
        # Served from the read-ahead buffer?
        rel = pos - self._buf_start
        if 0 <= rel and rel + size <= len(self._buf):
            self._pos = pos + size
            return self._buf[rel:rel + size]
        ahead = self._ra.read(pos, pos + size) if self._read_ahead else None
        if ahead is None:  # random access (or the prefetcher reads ahead): just this read
            data = self._image.pread(self.node, size, pos)
            self._pos = pos + len(data)
            return data
        # sequential: what the buffer has of this read, then the rest and a window more, in one read
        # (a window from where the buffer ends: from the start of the file, the reads stay frame-aligned)
        head = self._buf[rel:] if 0 <= rel < len(self._buf) else b""
        start = pos + len(head)
        buf = head + self._image.pread(self.node, max(pos + size, start + self._ra.window) - start, start)
        out = buf[:size]
        self._buf, self._buf_start = buf, pos
        self._pos = pos + len(out)
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer)))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        self._buf = b""
        super().close()

    def __repr__(self) -> str:
        return f"<ImageFile lazylayer://{self.path}>"


class AsyncImageFile:
    """:class:`ImageFile` for ``async`` callers: ``await f.read(n)`` runs the read on a thread."""

    def __init__(self, file: ImageFile, fs: ImageFileSystem) -> None:
        self.file = file
        self.fs = fs

    async def read(self, size: int = -1) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self.fs._pool(), self.file.read, size)

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    async def close(self) -> None:
        self.file.close()

    async def __aenter__(self) -> AsyncImageFile:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

