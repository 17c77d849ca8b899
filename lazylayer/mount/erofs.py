"""The erofs backend: the image mounted as a Linux EROFS file system, its file data filled on demand.

The kernel serves every lookup, ``stat``, ``readdir`` and every read of data
already filled with no user-space step; a read of a range not filled yet
raises a fanotify pre-content event on the image's *data file*, which this
process answers by writing the range (fetched, checked against its digest,
decoded, through the same :class:`~lazylayer.image.Image` reads as every other
front end) before the kernel lets the read through.  Needs Linux >= 6.14 with
``EROFS_FS_BACKED_BY_FILE`` and ``FANOTIFY_ACCESS_PERMISSIONS``, root, and a disk
cache on ext4, xfs or btrfs (tmpfs refuses pre-content marks).

Pieces (docs/mount.md, "The erofs backend"):

- the metadata image and the data file's layout come from C
  (:class:`lazylayer.core.erofs.ErofsLayout`), kept in the disk cache under
  ``erofs/<manifest digest hex>/`` with the data file (``data``) and the bitmap of
  its blocks filled at the last clean stop (``filled``);
- a supervisor process (C, ``ll_erofs_supervise``, forked from here) holds the
  fanotify group, mounts, answers events for filled blocks itself and hands the
  others to this process; it outlives this process so that no reader ever sees a
  hole as zeros: once this process is gone, a read of a block not filled fails
  with EIO, and the supervisor leaves when the last file is closed;
- :class:`ErofsMount` (here): builds the files, forks the supervisor, and fills
  what it is asked on a pool of threads.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import logging
import os
import socket
import struct
import threading
import time
import warnings
from typing import Any

from .. import errors
from ..core._lib import ffi, lib
from ..core.erofs import BLOCK, ErofsLayout
from .fuse import MountError

__all__ = ["ErofsMount", "FILL_WINDOW", "unavailable"]

log = logging.getLogger("lazylayer")

#: A miss fills at least this much around what the kernel asked (aligned to it, cut to the data file):
#: the kernel asks 128 KiB or so at a time, and each event costs a round trip through two processes.
FILL_WINDOW = 512 << 10

_MSG = struct.Struct("=IIiIQQ224s")   # ll_erofs_msg
assert _MSG.size == ffi.sizeof("ll_erofs_msg")
_FILLED_MAGIC = b"LLEROFS1"


def _msg(kind: int, ident: int = 0, status: int = 0, offset: int = 0, length: int = 0) -> bytes:
    return _MSG.pack(kind, ident, status, 0, offset, length, b"")


class ErofsMount:
    """``image`` mounted read-only at ``mountpoint`` as EROFS, its data filled on demand.

    ``image``: an :class:`~lazylayer.image.Image` (kept open; the caller closes
    it after the mount) or a reference, opened here with ``image_options`` and
    closed with the mount.  The image needs a disk cache (where the metadata
    image and the data file live).  ``workers``: fills at once.  Returns once
    the kernel has the mount.  Use as a context manager, or call :meth:`close`
    (detach, wait up to ``timeout`` for the last file to close, stop filling).
    Counters: :meth:`stats`.
    """

    def __init__(self, image: Any, mountpoint: str, *, workers: int = 8, **image_options: Any) -> None:
        from ..image import Image

        self.mountpoint = os.path.abspath(mountpoint)
        self._own = not isinstance(image, Image)
        self.image = Image(image, **image_options) if self._own else image
        self._sock: socket.socket | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._gone = threading.Event()
        self._send_lock = threading.Lock()
        self._windows_lock = threading.Lock()
        self._busy: dict[int, threading.Event] = {}   # windows being filled
        self._filled: set[int] = set()               # windows filled by this process
        self.pid = 0
        self.events = 0          # fills asked by the supervisor
        self.filled_bytes = 0    # bytes written to the data file
        self.errors = 0
        try:
            self._start(workers)
        except BaseException:
            self._release()
            raise

    # -- start

    def _start(self, workers: int) -> None:
        img = self.image
        cache = img.gzip_index_cache  # the disk cache (a local layout's too, whose frames are not kept)
        if cache is None:
            raise MountError(f"{self.mountpoint}: the erofs backend keeps its files in the disk cache, and there is "
                             "none (cache=None)")
        digest = img.digest
        if not digest.startswith("sha256:"):
            raise MountError(f"{img.reference}: no manifest digest to name the EROFS image by")
        t0 = time.perf_counter()
        self.layout = ErofsLayout(img.index, uuid=bytes.fromhex(digest[7:39]))
        self.dir = os.path.join(cache.path, "erofs", digest[7:])
        os.makedirs(self.dir, exist_ok=True)
        why = unavailable(self.dir)
        if why:
            raise MountError(f"{self.mountpoint}: cannot mount as EROFS: {why}")
        self.meta_path = os.path.join(self.dir, "meta.erofs")
        self.data_path = os.path.join(self.dir, "data")
        self.filled_path = os.path.join(self.dir, "filled")
        _write_if_changed(self.meta_path, self.layout.meta)
        size = max(BLOCK, self.layout.data_size)   # (an image without file data still needs a device)
        fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, size)
            filled = self._load_filled(fd, size)
        finally:
            os.close(fd)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        bits = ffi.new("uint8_t[]", filled) if filled else ffi.NULL
        args = [ffi.new("char[]", p.encode()) for p in (self.meta_path, self.data_path, self.mountpoint,
                                                        self.filled_path)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # (fork with threads: the child runs only C)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the supervisor; never returns unless it could not start
            try:
                ours.close()
                err = ffi.new("char[]", lib.LL_ERR_MSG_SIZE)
                lib.ll_erofs_supervise(args[0], args[1], args[2], size, bits, args[3], theirs.fileno(), err,
                                       lib.LL_ERR_MSG_SIZE)
            finally:
                os._exit(1)
        self.pid = pid
        theirs.close()
        self._sock = ours
        kind, _, status, _, _, _, text = _MSG.unpack(_recv(ours) or b"\0" * _MSG.size)
        if kind != lib.LL_EROFS_MSG_MOUNTED or status != 0:
            os.waitpid(pid, 0)
            self.pid = 0
            reason = text.rstrip(b"\0").decode(errors="replace") if kind else "the supervisor died"
            raise MountError(f"{self.mountpoint}: cannot mount the EROFS image: {reason}")
        threading.Thread(target=os.waitpid, args=(pid, 0), name="lazylayer-erofs-reap", daemon=True).start()
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="lazylayer-erofs-fill")
        self._thread = threading.Thread(target=self._serve, name="lazylayer-erofs", daemon=True)
        self._thread.start()
        log.info("%s: mounted %s as EROFS in %.1f ms (%d inodes, %.1f MB of file data, %.0f%% filled)",
                 self.mountpoint, img.reference, (time.perf_counter() - t0) * 1e3, img.index.inodes,
                 self.layout.data_size / 1e6, 100 * _count_bits(filled) * BLOCK / size if filled else 0)

    def _load_filled(self, fd: int, size: int) -> bytes | None:
        """The bitmap the supervisor left at its last clean stop, if it is about this very data file;
        removed either way (the next clean stop writes it again, a crash leaves none)."""
        try:
            with open(self.filled_path, "rb") as f:
                raw = f.read()
            os.unlink(self.filled_path)
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        nbytes = (size // BLOCK + 7) // 8
        if len(raw) != 32 + nbytes or raw[:8] != _FILLED_MAGIC or \
                struct.unpack_from("<QQQ", raw, 8) != (size, st.st_ino, st.st_dev):
            return None
        return raw[32:]

    # -- serving

    def _serve(self) -> None:
        assert self._sock is not None and self._pool is not None
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(self._sock, _MSG.size, 1)
            except OSError:
                break
            if not msg:
                break
            kind, ident, _, _, offset, length, _ = _MSG.unpack(msg)
            if kind == lib.LL_EROFS_MSG_GONE:
                self._gone.set()
                break
            if kind == lib.LL_EROFS_MSG_FILL and fds:
                self.events += 1
                self._pool.submit(self._fill, ident, fds[0], offset, length)
            else:
                for fd in fds:
                    os.close(fd)
        self._gone.set()

    def _fill(self, ident: int, fd: int, offset: int, length: int) -> None:
        """Fill the FILL_WINDOW-aligned windows around ``[offset, offset + length)`` that are not filled
        yet (one thread per window: a window another thread is filling is waited for), then answer."""
        size = self.layout.data_size
        start = offset // FILL_WINDOW * FILL_WINDOW
        end = min(size, -(-(offset + max(length, 1)) // FILL_WINDOW) * FILL_WINDOW)
        status = 0
        try:
            for w in range(start, end, FILL_WINDOW):
                if not self._window(fd, w, min(size, w + FILL_WINDOW)):
                    status = errno.EIO
                    break
        finally:
            try:
                self._send(_msg(lib.LL_EROFS_MSG_DONE, ident, status, start, end - start))
            finally:
                os.close(fd)

    def _window(self, fd: int, start: int, end: int) -> bool:
        with self._windows_lock:
            if start in self._filled:
                return True
            busy = self._busy.get(start)
            if busy is None:
                busy = self._busy[start] = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            busy.wait()
            with self._windows_lock:
                return start in self._filled
        ok = False
        try:
            reader = self.image.reader
            for e in self.layout.extents(start, end - start):
                if e.ino == 0:
                    continue  # padding after a file's last byte: never read
                data = reader.pread(e.ino, e.length, e.file_offset)
                if len(data) != e.length:
                    raise errors.IntegrityError(f"inode {e.ino}: {len(data)} bytes read of {e.length}")
                at = self.layout.file_offset(e.ino)
                assert at is not None
                os.pwrite(fd, data, at + e.file_offset)
                self.filled_bytes += len(data)
            ok = True
        except Exception as exc:  # the read fails with EIO; the cause goes to the log
            self.errors += 1
            log.error("%s: data file bytes %d..%d: %s", self.mountpoint, start, end, exc)
        finally:
            with self._windows_lock:
                if ok:
                    self._filled.add(start)
                del self._busy[start]
            busy.set()
        return ok

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            if self._sock is not None:
                self._sock.send(data)

    # -- control

    def stats(self) -> dict[str, int]:
        return {"fill_events": self.events, "filled_bytes": self.filled_bytes, "fill_errors": self.errors,
                **self.image.stats()}

    def close(self, timeout: float = 10.0) -> bool:
        """Detach the mount; wait up to ``timeout`` s for the file system to go (the last file closed)
        while still filling.  True if it went; False: the supervisor stays until then (reads of blocks
        not filled fail with EIO from now on)."""
        gone = True
        if self._sock is not None:
            try:
                self._send(_msg(lib.LL_EROFS_MSG_UNMOUNT))
            except OSError:
                pass
            gone = self._gone.wait(timeout)
        self._release()
        return gone

    def _release(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(5)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._own:
            self.image.close()

    def __enter__(self) -> ErofsMount:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def unavailable(directory: str) -> str | None:
    """Why the erofs backend cannot keep a data file in ``directory`` on this machine, or None if it can:
    it needs root, EROFS in the kernel, and fanotify pre-content events (Linux >= 6.14) on that file
    system (ext4, xfs, btrfs; not tmpfs).  Probes with a scratch file and a group of its own."""
    if os.geteuid() != 0:
        return "the erofs backend needs root (mount(2), fanotify pre-content events)"
    try:
        with open("/proc/filesystems") as f:
            if not any(line.split()[-1:] == ["erofs"] for line in f):
                return "this kernel has no EROFS (CONFIG_EROFS_FS)"
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc}"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    fan = libc.fanotify_init(0x08 | 0x01, os.O_RDONLY)  # FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC
    if fan < 0:
        return f"fanotify_init: {os.strerror(ctypes.get_errno())} (pre-content events need Linux >= 6.14)"
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".erofs-probe-{os.getpid()}-{threading.get_ident()}")
    try:
        open(probe, "wb").close()
        if libc.fanotify_mark(fan, 0x01, 0x00100000, -100, probe.encode()) != 0:  # FAN_MARK_ADD, FAN_PRE_ACCESS
            err = ctypes.get_errno()
            hint = " (tmpfs refuses them: put the cache on ext4, xfs or btrfs)" if err == errno.EOPNOTSUPP else ""
            return f"{directory}: no fanotify pre-content events here: {os.strerror(err)}{hint}"
        return None
    finally:
        os.close(fan)
        try:
            os.unlink(probe)
        except OSError:
            pass


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(_MSG.size)
    except OSError:
        return b""


def _count_bits(b: bytes) -> int:
    return int.from_bytes(b, "little").bit_count()


def _write_if_changed(path: str, data: memoryview) -> None:
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except FileNotFoundError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
