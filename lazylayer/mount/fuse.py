"""A read-only FUSE mount of an image, answered by the C server (``ll_fuse``, csrc/fuse.c).

:class:`Mount` mounts an opened :class:`lazylayer.image.Image` (or a reference
it opens) and returns once the kernel has the mount and it answers.  Every
request is answered in C from the image index: lookups, attributes,
directory listings, symlinks, xattrs, and reads of frames already in the
memory or disk cache never enter Python.  A read that needs a frame from
the registry waits on one of the server's miss threads, while the others keep
answering, and the frame is fetched by a fetcher process
(:mod:`lazylayer.mount.fetcher`: the image's verified, coalesced fetch and its
prefetcher); layers held in local files are read by C itself.

Because an image never changes, the kernel is told to keep what it learns:
entries, attributes and negative lookups for a day, file pages across opens,
and each directory listing with every entry's attributes (READDIRPLUS), so
``ls -l``, ``find`` and ``tar`` cost one request per directory.

Errors become errno values: a frame that fails its sha256 (or any data error),
or a fetch that fails after the remote layer's retries, is ``EIO`` and is
logged (to ``log_fd``) with the file's path; the mount keeps serving.  Writes
of any kind are ``EROFS``.

Deadlock hazard, designed away: a thread of *this* process that holds the GIL
while it touches the mount (importing an extension module from it, faulting on
an mmap of a file there) must not wait for a server that needs the GIL.  No
server thread does: fetches have the fetcher's own GIL.  Only an ``on_read``
hook runs Python on the server threads (docs/mount.md, "Deadlock hazard").
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable

from .. import errors
from ..core._lib import check, ffi, lib
from ..core.index import ImageReader
from ..core.seekable import _resolve_pool

if TYPE_CHECKING:  # (imported when a FUSE mount starts: an erofs mount never needs the fetcher)
    from .fetcher import Fetcher, FetcherSpec

__all__ = ["Mount", "MountError", "FSNAME_PREFIX", "SUBTYPE", "CACHE_TIMEOUT"]

log = logging.getLogger("lazylayer.mount")

#: ``/proc/mounts`` shows a lazylayer mount with type ``fuse.lazylayer``.
SUBTYPE = "lazylayer"
FSNAME_PREFIX = "lazylayer:"
#: How long the kernel may keep attributes, entries and negative lookups: the image is immutable.
CACHE_TIMEOUT = 86400.0


MISS_THREADS = 16
"""Threads that wait on fetches, by default (and the fetcher's connections: one each)."""

MountError = errors.MountError  # (defined with the other typed errors; its home here kept)


def remote_reference(image: Any) -> bool:
    """True if ``image`` names an image in a registry (its layers' frames are fetched: a fetcher is
    needed), not a local layout or archive."""
    from .. import oci

    try:
        ref = oci.parse_reference(image) if isinstance(image, str) else image
    except Exception:  # noqa: BLE001 - Image says what is wrong with it
        return False
    return isinstance(ref, oci.RegistryRef)


def _err_text(buf: Any, rc: int) -> str:
    text = ffi.string(buf).decode(errors="replace")
    return text or ffi.string(lib.ll_strerror(rc)).decode()


class _ReadHook:
    """Calls ``on_read(ino, offset, size)`` for each READ (from C server threads)."""

    def __init__(self, fn: Callable[[int, int, int], None]) -> None:
        self.fn = fn
        self.handle = ffi.new_handle(self)


@ffi.def_extern()
def _ll_py_on_read(opaque: Any, ino: int, offset: int, size: int) -> None:
    hook: _ReadHook = ffi.from_handle(opaque)
    try:
        hook.fn(ino, offset, size)
    except Exception:  # noqa: BLE001 - a hook must never break serving
        log.exception("on_read hook failed")


_FUSE_ONLY = ("fetcher", "allow_other", "threads", "miss_threads", "timeout", "direct_io", "on_read", "log_fd",
              "verbose", "passthrough")


class Mount:
    """``image`` mounted read-only at ``mountpoint``, served by C threads of this process.

    ``image``: an :class:`~lazylayer.image.Image` (kept open; the caller closes
    it after the mount) or a reference, opened here with ``image_options`` and
    closed with the mount.  Returns once the kernel has the mount and it
    answers.  ``threads``: server threads reading ``/dev/fuse`` (each its own
    clone of the session); ``miss_threads``: threads that wait on fetches.
    ``timeout``: seconds the kernel keeps entries and attributes (0 makes every
    stat reach the server: benchmarks).  ``direct_io``: every read reaches the
    server, bypassing the page cache (benchmarks).  ``on_read(ino, offset,
    size)``: called for every READ, on a server thread (a recorder).
    ``log_fd``: where EIO lines go (default stderr; None: nowhere).
    ``passthrough``: FUSE passthrough (Linux >= 6.9, root) for files of 1 MiB
    or more whose frames are all cached: each is decoded once into a file of
    the disk cache and the kernel reads it directly (off by default:
    docs/mount.md, "Passthrough").  The frames a read misses are fetched by a
    process of its own (:mod:`lazylayer.mount.fetcher`), started while the
    image opens; ``fetcher``: one the caller started ahead (a
    :class:`~lazylayer.mount.fetcher.Fetcher` with ``miss_threads``
    connections, e.g. while it opened the image itself), which the mount sends
    its work or closes if no layer needs it.

    Use as a context manager, or call :meth:`close` (unmount, wait, release).
    Several mounts in one process share the process-wide memory cache and the
    default disk cache.  This process may read the mount itself (see the
    module's "Deadlock hazard"), unless it passes an ``on_read`` hook.
    """

    def __new__(cls, image: Any = None, mountpoint: str = "", *, backend: str = "fuse", **options: Any) -> Any:
        """``backend="erofs"`` gives a :class:`lazylayer.mount.erofs.ErofsMount` instead (``"auto"``: that
        where this machine allows it for the image's disk cache; docs/mount.md, "The erofs backend"); the
        FUSE-only options are then left out."""
        if backend == "fuse":
            return super().__new__(cls)
        from ..image import DiskCache, Image
        from .erofs import ErofsMount, choose_backend

        if isinstance(image, Image):
            cache = image.gzip_index_cache  # (a local layout's too)
        else:
            cache = options["cache"] if "cache" in options else DiskCache()  # (Image's own default)
        chosen, why = choose_backend(backend, cache)
        log.info("%s: %s backend (%s)", mountpoint, chosen, why)
        if chosen == "fuse":
            return super().__new__(cls)
        if options.get("fetcher") is not None:  # (started ahead for a FUSE mount: not needed)
            options["fetcher"].close()
        return ErofsMount(image, mountpoint, **{k: v for k, v in options.items() if k not in _FUSE_ONLY})

    def __init__(self, image: Any, mountpoint: str, *, allow_other: bool = False, threads: int = 2,
                 miss_threads: int = MISS_THREADS, timeout: float = CACHE_TIMEOUT, direct_io: bool = False,
                 on_read: Callable[[int, int, int], None] | None = None, log_fd: int | None = 2,
                 prefetch: Any = "auto", fill: bool = False, fill_rate: float | None = None,
                 readahead: bool = True, verbose: int = 0, passthrough: bool = False, backend: str = "fuse",
                 fetcher: Fetcher | None = None, **image_options: Any) -> None:
        from ..image import Image
        from .fetcher import Fetcher, FetcherSpec

        self.mountpoint = os.path.abspath(mountpoint)
        self._own = not isinstance(image, Image)
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._closing = False
        self._ptr: Any = None
        self._reader: ImageReader | None = None
        self._fetcher: Fetcher | None = None
        self._sockhost: Any = None
        self._fds: list[int] = []  # local layer files C reads
        self._hook = _ReadHook(on_read) if on_read is not None else None
        self._fetcher = fetcher
        if fetcher is None and self._own and remote_reference(image):  # its start-up overlaps the open (Fetcher)
            self._fetcher = Fetcher(miss_threads)
        try:
            # (a mount reads around every miss: runs of small chunks are one frame; Image's chunk_runs)
            self.image = Image(image, **{"chunk_runs": True, **image_options}) if self._own else image
        except BaseException:
            if self._fetcher is not None:
                self._fetcher.close()
            raise
        try:
            if isinstance(prefetch, (str, os.PathLike)) and prefetch != "auto":
                from ..prefetch import load_plan

                prefetch = load_plan(prefetch)  # a bad plan file fails the mount here, with its reason
            self._open_reader(miss_threads, FetcherSpec(None, prefetch=None if prefetch is False else prefetch,
                                                        fill=fill, fill_rate=fill_rate, readahead=readahead,
                                                        verbose=verbose))
            self._mount(allow_other, threads, miss_threads, timeout, direct_io, log_fd, passthrough)
        except BaseException:
            self._release()
            raise

    def _open_reader(self, connections: int, spec: FetcherSpec) -> None:
        """The mount's own ``ll_image`` over the image's index: layers kept in local files are
        read by C from those files; the others' missing frames are asked of the fetcher process."""
        img = self.image
        remote = []
        arr = ffi.new("ll_image_source[]", max(1, len(img.layers)))
        keep: list[Any] = [arr]
        for i, layer in enumerate(img.layers):
            path = img.local_path(layer)
            if path is None:
                remote.append(i)
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self._fds.append(fd)
            box = ffi.new("int *", fd)
            keep.append(box)
            arr[i].read = lib.ll_fd_read
            arr[i].opaque = box
            arr[i].use_disk = 0
            arr[i].local = 1
        if remote:
            cache = img.gzip_index_cache  # (the disk cache; a layout's too, for its gzip indexes)
            if self._fetcher is None:
                from .fetcher import Fetcher

                self._fetcher = Fetcher(connections)
            self._fetcher.send(dataclasses.replace(spec, reference=img.pinned(), registry=img.registry,
                                                   cache=cache.path if cache is not None else None,
                                                   layers=remote, gzip_indexes=img.gzip_indexes,
                                                   attached=img.attached_indexes, chunk_runs=img.chunk_runs))
            taken = self._fetcher.take_fds()
            fds = ffi.new("int[]", taken)
            out = ffi.new("ll_sockhost **")
            check(lib.ll_sockhost_create(fds, len(taken), len(img.layers), out), "starting the fetcher")
            self._sockhost = out[0]
            for i in remote:
                check(lib.ll_sockhost_source(self._sockhost, i, ffi.addressof(arr, i)), "starting the fetcher")
        else:
            if self._fetcher is not None:  # (started early, not needed)
                self._fetcher.close()
                self._fetcher = None
            if spec.prefetch not in (None, "auto") or spec.fill:
                log.warning("%s: no prefetch: every layer is in a local file", img.reference)
        self._reader = ImageReader(img.index, [], cache=img.memory, pool=_resolve_pool(img.threads), disk=img.native,
                                   c_sources=arr, keep=keep, raw_checked_by_host=True)  # (by the fetcher)
        img.on_poison.append(self._poison)  # (and the layers poisoned before this listened:)
        for layer, reason in img.poisoned.items():
            self._poison(layer, reason)

    def _mount(self, allow_other: bool, threads: int, miss_threads: int, timeout: float, direct_io: bool,
               log_fd: int | None, passthrough: bool) -> None:
        opts = ffi.new("ll_fuse_options *")
        check(lib.ll_fuse_options_init(opts, ffi.sizeof(opts[0])), "initialising mount options")
        fsname = ffi.new("char[]", (FSNAME_PREFIX + self.image.reference).encode())
        subtype = ffi.new("char[]", SUBTYPE.encode())
        opts.fsname, opts.subtype = fsname, subtype
        opts.allow_other = int(allow_other)
        opts.entry_timeout = opts.attr_timeout = opts.negative_timeout = float(timeout)
        opts.threads = max(1, int(threads))
        opts.miss_threads = max(1, int(miss_threads))
        opts.direct_io = int(direct_io)
        opts.log_fd = -1 if log_fd is None else int(log_fd)
        if self._hook is not None:
            opts.on_read = lib._ll_py_on_read
            opts.on_read_opaque = self._hook.handle
        files = None
        if passthrough:
            if self.image.disk is None:
                log.warning("%s: no passthrough: it keeps decoded files in the disk cache, and there is none",
                            self.mountpoint)
            else:
                files = ffi.new("char[]", self.image.disk.files_dir.encode())
                opts.passthrough_dir = files
        if not os.path.isdir(self.mountpoint):
            raise MountError(f"{self.mountpoint}: mount point is not a directory")
        err = ffi.new("char[]", lib.LL_ERR_MSG_SIZE)
        out = ffi.new("ll_fuse **")
        assert self._reader is not None
        rc = lib.ll_fuse_mount(self._reader._ptr, self.mountpoint.encode(), opts, out, err, len(err))
        if rc != lib.LL_OK:
            raise MountError(_err_text(err, rc))  # (it names the mount point)
        ptr = out[0]
        rc = lib.ll_fuse_start(ptr, err, len(err))
        if rc != lib.LL_OK:
            lib.ll_fuse_free(ptr)  # (unmounts)
            raise MountError(f"{self.mountpoint}: {_err_text(err, rc)}")
        self._ptr = ptr
        # ll_fuse_wait blocks (without the GIL) until the kernel lets go of the mount.
        self._waiter = threading.Thread(target=self._wait, name=f"lazylayer-mount {self.mountpoint}", daemon=True)
        self._waiter.start()

    def _poison(self, layer: int, reason: str) -> None:
        """The image found ``layer`` not to match its index (Image.poison): this mount's reader
        refuses it too, and the kernel drops the pages of its files, so that no later read is
        answered with its bytes (EIO instead)."""
        with self._lock:
            if self._reader is not None:
                self._reader.fail_layer(layer, reason)
            if self._ptr is not None and not self._closing and not self._done.is_set():
                told = lib.ll_fuse_invalidate_layer(self._ptr, layer)
                log.error("%s: %s; its %d cached files dropped, every read of it is EIO from now on",
                          self.mountpoint, reason, max(0, told))

    def _wait(self) -> None:
        lib.ll_fuse_wait(self._ptr)
        self._done.set()
        with self._lock:
            if self._closing:  # close() returned while the mount was still in use
                self._release()

    # -- state ------------------------------------------------------------------

    @property
    def mounted(self) -> bool:
        """True until the kernel has let go of the mount (unmounted by anyone)."""
        return self._ptr is not None and not self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the mount is gone (True), or ``timeout`` seconds pass (False)."""
        return self._done.wait(timeout)

    def stats(self) -> dict[str, int]:
        """Requests the server answered (by kind), bytes read, reads that waited on a fetch
        (``misses``), EIO answers; frames fetched for reads by the fetcher (``fetches``,
        ``bytes_fetched``), read from local layer files (``frames_local``, ``bytes_local``) and
        found in the disk cache (``frames_from_disk``)."""
        out: dict[str, int] = {}
        if self._ptr is not None:
            s = ffi.new("ll_fuse_stats *")
            lib.ll_fuse_get_stats(self._ptr, s)
            for name in ("requests", "lookups", "getattrs", "readdirs", "reads", "readlinks", "xattrs", "forgets",
                         "others", "negative", "bytes_read", "misses", "eio", "passthrough"):
                out[name] = int(getattr(s, name))
        if self._reader is not None:
            s = self._reader.stats()
            out.update(fetches=s["frames_fetched"], bytes_fetched=s["bytes_fetched"],
                       frames_from_disk=s["frames_disk"], frames_local=s["frames_local"],
                       bytes_local=s["bytes_local"], digest_errors=s["digest_errors"])
        return out

    # -- ending -----------------------------------------------------------------

    def unmount(self, *, wait: bool = True, timeout: float | None = 30.0) -> None:
        """Unmount (lazily: processes inside keep what they hold open until they let go), then
        wait up to ``timeout`` seconds for the kernel to let go of the mount (``wait``)."""
        if self._ptr is None or self._done.is_set():
            return
        err = ffi.new("char[]", lib.LL_ERR_MSG_SIZE)
        rc = lib.ll_fuse_unmount(self._ptr, err, len(err))
        if rc != lib.LL_OK:
            raise MountError(f"{self.mountpoint}: {_err_text(err, rc)}")
        if wait and not self._done.wait(timeout):
            raise MountError(f"{self.mountpoint}: still in use {timeout} s after it was detached")

    def close(self, timeout: float | None = 5.0) -> None:
        """Unmount, wait (up to ``timeout`` seconds) for the kernel to let go, and release the
        server, the fetcher (and the image, if opened here).

        The unmount is lazy: the mount leaves the file tree at once, and processes that still
        hold files there (this one too, say, through an extension module imported from the
        mount) keep being served.  If the kernel has not let go after ``timeout`` seconds the
        server keeps running in this process's threads and is released when the last user lets
        go, or when the process exits."""
        if self._ptr is not None and not self._done.is_set():
            self.unmount(wait=False)
            if not self._done.wait(timeout):
                with self._lock:
                    if not self._done.is_set():
                        self._closing = True
                        log.warning("%s: unmounted but still in use; served until the last user lets go",
                                    self.mountpoint)
                        return
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self._poison in self.image.on_poison:
            self.image.on_poison.remove(self._poison)
        if self._ptr is not None:
            lib.ll_fuse_free(self._ptr)  # (unmounts first if it never started)
            self._ptr = None
        self._reader = None  # (freed with it: nothing reads any more)
        if self._sockhost is not None:
            lib.ll_sockhost_free(self._sockhost)  # closes our ends of the sockets: the fetcher exits
            self._sockhost = None
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self._own:
            self.image.close()
            self._own = False

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "mounted" if self.mounted else "unmounted"
        return f"<Mount {self.image.reference} at {self.mountpoint} ({state})>"


class AsyncMount:
    """:class:`Mount` for callers in an event loop: ``mnt = await AsyncMount.open(image, dir)``,
    ``async with``, ``await mnt.aclose()``.  The blocking steps run in a thread."""

    def __init__(self, mount: Mount) -> None:
        self.mount = mount

    @classmethod
    async def open(cls, image: Any, mountpoint: str, **options: Any) -> AsyncMount:
        import asyncio

        return cls(await asyncio.to_thread(Mount, image, mountpoint, **options))

    def stats(self) -> dict[str, int]:
        return self.mount.stats()

    async def wait(self) -> None:
        import asyncio

        await asyncio.to_thread(self.mount.wait)

    async def aclose(self) -> None:
        import asyncio

        await asyncio.to_thread(self.mount.close)

    async def __aenter__(self) -> AsyncMount:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
