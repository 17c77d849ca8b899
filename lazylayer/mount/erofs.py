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
  (:class:`lazylayer.core.erofs.ErofsLayout`), kept in the disk cache's files as
  ``erofs-<manifest digest hex>.v<N>.meta`` (with its checksum, ``.sum``: a mount
  of an image whose metadata image is intact only computes the layout), with the
  data file (``.data``) and the bitmap of its blocks filled at the last clean
  stop (``.filled``): counted against the cache's limit (the data file by the
  blocks it holds), pinned while mounted, evicted with the rest;
- a supervisor process (C, forked by ``ll_erofs_spawn``; no Python runs in it) holds the
  fanotify group, mounts, answers events for filled blocks itself and hands the
  others to this process; it outlives this process so that no reader ever sees a
  hole as zeros: once this process is gone, a read of a block not filled fails
  with EIO, and the supervisor leaves when the last file is closed;
- :class:`ErofsMount` (here): builds the files, forks the supervisor, and fills
  what it is asked on a pool of threads.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import errno
import logging
import os
import re
import socket
import struct
import threading
import time
from typing import Any

from ..core._lib import ffi, lib
from ..core.erofs import BLOCK, VERSION, ErofsLayout, meta_sum, supervisor_program
from ..errors import MountError

__all__ = ["BACKENDS", "ErofsMount", "FILL_WINDOW", "choose_backend", "is_erofs_mount", "unavailable"]

log = logging.getLogger("lazylayer")

#: A miss fills at least this much around what the kernel asked (aligned to it, cut to the data file):
#: the kernel asks 16-128 KiB at a time, and each event costs a round trip through two processes
#: (512 KiB moved 10% more bytes in the cold-start benchmark, for the same time).
FILL_WINDOW = 128 << 10

#: Filling ahead (plans, --fill): threads, and windows each takes at a time.
AHEAD_THREADS, AHEAD_RUN = 4, 32

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
    image and the data file live).  ``workers``: fills at once.  ``prefetch``,
    ``fill``, ``fill_rate``, ``readahead``: as for the FUSE mount
    (:func:`lazylayer.prefetch.start` fetches the plan's frames, then the rest
    with ``fill``); the data file is then filled in the same order, ahead of
    the reads, and once every block is filled the kernel raises no more
    events.  Returns once the kernel has the mount.  Use as a context manager,
    or call :meth:`close` (detach, wait up to ``timeout`` for the last file to
    close, stop filling).  Counters: :meth:`stats`.
    """

    def __init__(self, image: Any, mountpoint: str, *, workers: int = 8, prefetch: Any = "auto", fill: bool = False,
                 fill_rate: float | None = None, readahead: bool = True, **image_options: Any) -> None:
        from ..image import Image

        self.mountpoint = os.path.abspath(mountpoint)
        self._own = not isinstance(image, Image)
        self.image = Image(image, **{"chunk_runs": True, **image_options}) if self._own else image
        self._sock: socket.socket | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._gone = threading.Event()
        self._send_lock = threading.Lock()
        self._layout: ErofsLayout | None = None
        self._layout_done = threading.Event()
        self._layout_error: Exception | None = None
        self.data_size = 0
        self._windows_lock = threading.Lock()
        self._busy: dict[int, threading.Event] = {}   # windows being filled
        self._filled: set[int] = set()               # windows filled by this process
        self._left = b""                             # the bitmap the last clean end left
        self.pid = 0
        self.events = 0          # fills asked by the supervisor
        self.filled_bytes = 0    # bytes written to the data file
        self.errors = 0
        self._writer_fd = -1        # a dup of an event's descriptor: writes through it raise no event
        self._writer_ready = threading.Event()
        self._closing = False
        self._prefetcher: Any = None
        self._pins: list[Any] = []
        self.ahead_done = threading.Event()  # set once the plan's (and with fill, every) window is filled
        self.ahead_done.set()
        # what the serving thread starts once the mount is ready (_after_mount)
        self._ahead = (prefetch, fill, fill_rate, readahead)
        if self.image.disk is not None and (prefetch not in (None, False) or fill):
            self.ahead_done.clear()
        try:
            self._start(workers)
        except BaseException:
            self._release()
            raise

    # -- start

    def _start(self, workers: int, rebuild: bool = False) -> None:
        img = self.image
        cache = img.gzip_index_cache  # the disk cache (a local layout's too, whose frames are not kept)
        if cache is None:
            raise MountError(f"{self.mountpoint}: the erofs backend keeps its files in the disk cache, and there is "
                             "none (cache=None)")
        digest = img.digest
        if not digest.startswith("sha256:"):
            raise MountError(f"{img.reference}: no manifest digest to name the EROFS image by")
        t0 = time.perf_counter()
        # In the disk cache's files: counted (a sparse data file by what it holds) and evicted with the
        # rest, least recently used first; pinned while mounted (here, and by the supervisor).
        self.dir = cache.files_dir
        os.makedirs(self.dir, exist_ok=True)
        name = os.path.join(self.dir, f"erofs-{digest[7:]}.v{VERSION}")
        self.meta_path, self.data_path, self.filled_path = name + ".meta", name + ".data", name + ".filled"
        # The supervisor starts first and waits for START while this thread readies the files: as
        # lazylayer-erofsd (posix_spawn: ~0.5 ms, nothing of this process copied), or, where that program
        # was not built, forked by C on a thread (a fork of a big process takes milliseconds; C releases
        # the GIL).
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spawned: dict[str, Any] = {}
        args = [p.encode() for p in (self.meta_path, self.data_path, self.mountpoint, self.filled_path)]
        program = supervisor_program()

        def spawn() -> None:
            pid, err = ffi.new("int *"), ffi.new("char[]", lib.LL_ERR_MSG_SIZE)
            if program:
                rc = lib.ll_erofs_exec(program.encode(), *args, theirs.fileno(), pid, err, lib.LL_ERR_MSG_SIZE)
            else:
                rc = lib.ll_erofs_spawn(*args, theirs.fileno(), pid, err, lib.LL_ERR_MSG_SIZE)
            spawned.update(rc=rc, pid=pid[0], err=ffi.string(err).decode(errors="replace"))

        forker = None if program else threading.Thread(target=spawn, name="lazylayer-erofs-spawn")
        spawn() if forker is None else forker.start()
        try:
            self.data_size, meta_xxh3 = self._meta(name + ".sum", bytes.fromhex(digest[7:39]), rebuild)
            self._pins.append(cache.pin(self.meta_path))
            size = max(BLOCK, self.data_size)   # (an image without file data still needs a device)
            fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size != size:  # (a new one too: empty)
                    # A bitmap left beside an earlier data file says nothing of this one, though it may have
                    # its inode number (the cache evicts files one by one; ext4 hands out a freed number again).
                    try:
                        os.unlink(self.filled_path)
                    except FileNotFoundError:
                        pass
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, size)
                self._pins.append(cache.pin(self.data_path))
                self._left = self._bitmap_left(fd, size)
            finally:
                os.close(fd)
        finally:
            if forker is not None:
                forker.join()
            theirs.close()
        if spawned["rc"] != lib.LL_OK:
            raise MountError(f"{self.mountpoint}: cannot start the EROFS supervisor: {spawned['err']}")
        self.pid = pid = spawned["pid"]
        self._sock.send(_msg(lib.LL_EROFS_MSG_START, 0, 0, meta_xxh3, size))
        kind, _, status, _, held, _, text = _MSG.unpack(_recv(self._sock) or b"\0" * _MSG.size)
        if kind != lib.LL_EROFS_MSG_MOUNTED or status != 0:
            os.waitpid(pid, 0)
            self.pid = 0
            reason = text.rstrip(b"\0").decode(errors="replace") if kind else "the supervisor died"
            if kind == lib.LL_EROFS_MSG_MOUNTED and status == errno.EBADMSG and not rebuild:
                # the kept metadata image is damaged: built again, and a new supervisor started
                log.warning("%s: %s: %s; building it again", self.mountpoint, self.meta_path, reason)
                self._sock.close()
                for pin in self._pins:
                    pin.close()
                self._pins.clear()
                return self._start(workers, rebuild=True)
            raise MountError(f"{self.mountpoint}: cannot mount the EROFS image: {reason}")
        self._thread = threading.Thread(target=self._serve, args=(workers,), name="lazylayer-erofs", daemon=True)
        self._thread.start()
        log.info("%s: mounted %s as EROFS in %.1f ms (%d inodes, %.1f MB of file data, %.0f%% filled)",
                 self.mountpoint, img.reference, (time.perf_counter() - t0) * 1e3, img.index.inodes,
                 self.data_size / 1e6, 100 * held / size)

    @property
    def layout(self) -> ErofsLayout:
        """The data file's layout (computed in the background when the metadata image was kept: the
        mount does not wait for it, the first fill does)."""
        self._layout_done.wait()
        if self._layout is None:
            raise MountError(f"{self.mountpoint}: no data file layout: {self._layout_error}")
        return self._layout

    def _meta(self, sum_path: str, uuid: bytes, rebuild: bool) -> tuple[int, int]:
        """Make sure there is a metadata image for this image on disk; the data file's size and the
        image's checksum.  The one kept before (``.sum``: its size, its XXH3, the data file's size) is
        taken if its size holds (the supervisor checks its XXH3 before mounting it, while this process
        readies the data file; the layout is then computed after the mount); else, or with
        ``rebuild``, it is built (with the layout) and written, then its checksum."""
        if not rebuild:
            try:
                with open(sum_path, "rb") as f:
                    size, want, data_size = struct.unpack("<QQQ", f.read(24))
                if os.stat(self.meta_path).st_size == size > 0:
                    return data_size, want
            except (OSError, ValueError, struct.error):
                pass
        layout = self._layout = ErofsLayout(self.image.index, uuid=uuid)
        self._layout_done.set()
        meta = layout.meta
        want = meta_sum(meta)
        _write(self.meta_path, meta)
        _write(sum_path, struct.pack("<QQQ", len(meta), want, layout.data_size))
        return layout.data_size, want

    def _compute_layout(self) -> None:
        try:
            layout = ErofsLayout(self.image.index, layout_only=True)
            if layout.data_size != self.data_size:
                raise MountError(f"the layout gives {layout.data_size} bytes of data, the kept metadata image "
                                 f"{self.data_size}")
            self._layout = layout
        except Exception as exc:  # (every fill then fails, with this in the log)
            self._layout_error = exc
            log.error("%s: %s", self.mountpoint, exc)
        finally:
            self._layout_done.set()

    def _bitmap_left(self, fd: int, size: int) -> bytes:
        """The bitmap of filled blocks the supervisor left at its last clean end, if it is about this
        very data file (b"" if not): the supervisor reads it too, then removes it."""
        try:
            with open(self.filled_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return b""
        st = os.fstat(fd)
        if len(raw) != 32 + (size // BLOCK + 7) // 8 or raw[:8] != _FILLED_MAGIC or \
                struct.unpack_from("<QQQ", raw, 8) != (size, st.st_ino, st.st_dev):
            return b""
        return raw[32:]

    def _filled_windows(self, bits: bytes, size: int) -> list[int]:
        """The FILL_WINDOW windows wholly filled in ``bits`` (:meth:`_bitmap_left`)."""
        nblocks, per = size // BLOCK, FILL_WINDOW // BLOCK   # (per: a multiple of 8)
        out = []
        for b0 in range(0, nblocks, per):
            n = min(per, nblocks - b0)
            whole, rest = divmod(n, 8)
            chunk = bits[b0 // 8:b0 // 8 + whole]
            tail = (1 << rest) - 1
            if chunk.count(0xFF) == whole and (not rest or bits[b0 // 8 + whole] & tail == tail):
                out.append(b0 * BLOCK)
        return out

    # -- serving

    def _serve(self, workers: int) -> None:
        sock, pool = self._sock, None
        if sock is None:
            self._gone.set()
            return
        try:
            self._after_mount()
        except Exception as exc:  # (no thread for the prefetcher: the reads still get filled, below)
            log.error("%s: prefetch, or filling ahead, not started: %s", self.mountpoint, exc)
            self.ahead_done.set()
        gone = False
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(sock, _MSG.size, 1)
            except OSError:
                break
            if not msg:
                break
            kind, ident, _, _, offset, length, _ = _MSG.unpack(msg)
            if kind == lib.LL_EROFS_MSG_GONE:
                gone = True
                break
            if kind == lib.LL_EROFS_MSG_FILL and fds and pool is None:
                # The fill pool is made at the first fill, not before the mount is ready (a warm mount may
                # never need it; its first use in a process imports concurrent.futures.thread).
                with self._windows_lock:
                    if not self._closing:
                        pool = self._pool = concurrent.futures.ThreadPoolExecutor(
                            max(1, workers), thread_name_prefix="lazylayer-erofs-fill")
            if kind == lib.LL_EROFS_MSG_FILL and fds and pool is not None:
                self.events += 1
                pool.submit(self._fill, ident, fds[0], offset, length)
            else:
                for fd in fds:
                    os.close(fd)
        # Reap the supervisor: it is exiting if it said GONE or closed its end; if this process closed
        # its own first, it may stay as long as a file in the mount is open, so a thread waits for it.
        if gone or not self._closing:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        else:
            threading.Thread(target=os.waitpid, args=(self.pid, 0), name="lazylayer-erofs-reap", daemon=True).start()
        self._gone.set()

    def _fill(self, ident: int, fd: int, offset: int, length: int) -> None:
        """Fill the FILL_WINDOW-aligned windows around ``[offset, offset + length)`` that are not filled
        yet (one thread per window: a window another thread is filling is waited for), then answer."""
        size = self.data_size
        start = offset // FILL_WINDOW * FILL_WINDOW
        end = min(size, -(-(offset + max(length, 1)) // FILL_WINDOW) * FILL_WINDOW)
        status = 0
        t0 = time.perf_counter()
        if self._writer_fd < 0:
            with self._windows_lock:
                if self._writer_fd < 0:
                    self._writer_fd = os.dup(fd)
                    self._writer_ready.set()
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
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: fill %d+%d (asked %d+%d) in %.1f ms", self.mountpoint, start, end - start, offset,
                          length, (time.perf_counter() - t0) * 1e3)

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
            written, bad = ffi.new("uint64_t *"), ffi.new("uint64_t *")
            rc = lib.ll_erofs_fill(self.layout._ptr, reader._ptr, fd, start, end - start, written, bad)
            with self._windows_lock:
                self.filled_bytes += written[0]
            if rc != lib.LL_OK:
                if rc == lib.LL_ERR_IO:
                    raise OSError(ffi.errno, f"writing the data file: {os.strerror(ffi.errno)}")
                reader._raise(rc, f"inode {bad[0]}", bad[0])  # (the exception behind the status)
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

    # -- filling ahead

    def _after_mount(self) -> None:
        """What the mount does not wait for, done by the serving thread before it serves: the data
        file's layout (when the metadata image was kept: fills wait for it), then the prefetcher
        (:func:`lazylayer.prefetch.start`) and the filling ahead, on a thread of their own."""
        if not self._layout_done.is_set():
            self._compute_layout()
        if self.image.disk is None:
            return  # a local layout: nothing to fetch, and its files are read as they are asked for
        prefetch, fill, fill_rate, readahead = self._ahead
        wants_ahead = not self.ahead_done.is_set()

        def run() -> None:
            try:
                from ..prefetch import start

                with self._windows_lock:
                    if self._closing:
                        return
                    prefetcher = self._prefetcher = start(self.image, prefetch, fill=fill, fill_rate=fill_rate,
                                                          readahead=readahead)
                if prefetcher is not None and wants_ahead:
                    self._fill_windows(prefetcher, fill)
            except Exception as exc:  # advice only: the reads fill what they need
                log.warning("%s: prefetch, or filling ahead, stopped: %s", self.mountpoint, exc)
            finally:
                self.ahead_done.set()

        threading.Thread(target=run, name="lazylayer-erofs-prefetch", daemon=True).start()

    def _fill_windows(self, prefetcher: Any, fill: bool) -> None:
        """Fill the data file's windows in the plan's order (then all of them, with fill), through a
        descriptor of an event (:meth:`_writer`), while the prefetcher fetches their frames."""
        if self._left:
            done = self._filled_windows(self._left, max(BLOCK, self.data_size))
            with self._windows_lock:
                self._filled.update(done)
        self.image.prefetch_started.wait()
        windows = self._plan_windows(prefetcher.plan) if prefetcher.plan is not None else []
        if fill:
            windows += range(0, self.data_size, FILL_WINDOW)
        todo = [w for w in dict.fromkeys(windows) if w not in self._filled]
        if not todo or not self._writer(todo[0]):
            return
        size = self.data_size
        # AHEAD_THREADS threads take runs of AHEAD_RUN windows in turn (in order, roughly): decoding
        # frames and writing the data file are both worth a core on this kind of machine.
        from ..remote import background

        runs = [todo[i:i + AHEAD_RUN] for i in range(0, len(todo), AHEAD_RUN)]
        it = iter(runs)
        lock = threading.Lock()

        def work() -> None:
            _lower_priority()
            with background():  # (its fetches are background requests; its reads lead no read-ahead)
                fill()

        def fill() -> None:
            while not self._closing:
                with lock:
                    run = next(it, None)
                if run is None:
                    return
                for w in run:
                    end = min(size, w + FILL_WINDOW)
                    if self._closing or not self._window(self._writer_fd, w, end):
                        continue
                    try:
                        self._send(_msg(lib.LL_EROFS_MSG_FILLED, 0, 0, w, end - w))
                    except OSError:
                        return

        threads = [threading.Thread(target=work, name=f"lazylayer-erofs-ahead-{i}", daemon=True)
                   for i in range(AHEAD_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _plan_windows(self, plan: Any) -> list[int]:
        """The data file's windows holding what ``plan`` lists, in its order."""
        index, layout = self.image.index, self.layout
        by_layer: dict[int, list[tuple[int, int, int]]] = {}
        for ino in range(1, index.inodes + 1):
            at = layout.file_offset(ino)
            if at is not None:
                st = index.stat(ino)
                by_layer.setdefault(st.layer, []).append((st.offset, st.size, at))
        for files in by_layer.values():
            files.sort()
        out: list[int] = []
        for layer in self.image.layers:
            lp = plan.for_layer(layer.digest, layer.diff_id)
            files = by_layer.get(layer.index, [])
            if lp is None or not files:
                continue
            starts = [f[0] for f in files]
            for off, length in lp.ranges:
                i = max(0, bisect.bisect_right(starts, off) - 1)
                while i < len(files) and files[i][0] < off + length:
                    fstart, fsize, at = files[i]
                    lo, hi = max(off, fstart), min(off + length, fstart + fsize)
                    if lo < hi:
                        out.extend(range((at + lo - fstart) // FILL_WINDOW * FILL_WINDOW, at + hi - fstart,
                                         FILL_WINDOW))
                    i += 1
        return out

    def _writer(self, block: int) -> bool:
        """A descriptor to fill through: the first event's; if none came yet, one is made to come by a
        read of window ``block`` (not filled yet), which this process then answers."""
        if not self._writer_ready.is_set():
            try:
                fd = os.open(self.data_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.pread(fd, 1, block)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("%s: no filling ahead: %s", self.mountpoint, exc)
        return self._writer_ready.wait(30)

    # -- control

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the file system is gone (unmounted, the last file closed); False on timeout."""
        return self._gone.wait(timeout)

    def unmount(self, wait: bool = True, timeout: float = 30.0) -> bool:
        """Detach the mount (lazily: a process with a file open keeps it until it closes it; reads go on
        being filled meanwhile); with ``wait``, wait up to ``timeout`` s for it to be gone."""
        try:
            self._send(_msg(lib.LL_EROFS_MSG_UNMOUNT))
        except OSError:
            pass
        return self._gone.wait(timeout) if wait else self._gone.is_set()

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
            gone = self._gone.wait(timeout)  # (set once the supervisor has exited: its pins are let go)
        self._release()
        return gone

    def _release(self) -> None:
        with self._windows_lock:
            self._closing = True
        if self._prefetcher is not None:
            self._prefetcher.close()
            if self.image.prefetcher is self._prefetcher:
                self.image.prefetcher = None
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
        if self._writer_fd >= 0:
            os.close(self._writer_fd)
            self._writer_fd = -1
        for pin in self._pins:
            pin.close()
        self._pins.clear()
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
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".erofs-probe-{os.getpid()}-{threading.get_ident()}")
    what = ffi.new("int *")
    try:
        open(probe, "wb").close()
        err = lib.ll_erofs_probe(probe.encode(), what)
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
    if err and what[0] == 1:
        return f"fanotify_init: {os.strerror(err)} (pre-content events need Linux >= 6.14)"
    if err:
        hint = " (tmpfs refuses them: put the cache on ext4, xfs or btrfs)" if err == errno.EOPNOTSUPP else ""
        return f"{directory}: no fanotify pre-content events here: {os.strerror(err)}{hint}"
    return None


BACKENDS = ("fuse", "erofs", "auto")


def choose_backend(backend: str, cache: Any) -> tuple[str, str]:
    """The backend a mount uses for ``backend`` (one of :data:`BACKENDS`), and why: ``auto`` is erofs
    where :func:`unavailable` finds nothing missing for ``cache`` (the image's
    :class:`~lazylayer.image.DiskCache`, where the erofs files would live; None: none), else fuse."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend != "auto":
        return backend, "asked for"
    why = "the image has no disk cache" if cache is None else unavailable(cache.files_dir)
    return ("fuse", f"no erofs: {why}") if why else ("erofs", "the kernel, the cache's file system and root allow it")


def is_erofs_mount(fstype: str, source: str) -> bool:
    """True for a /proc/self/mountinfo entry of an erofs backend mount (its source is a metadata image
    in a disk cache, ``.../files/erofs-<64 hex>.v<N>.meta``)."""
    name = os.path.basename(source)
    return fstype == "erofs" and re.fullmatch(r"erofs-[0-9a-f]{64}\.v[0-9]+\.meta", name) is not None


def _lower_priority() -> None:
    """Lower this thread's CPU priority (nice 10): filling ahead must not keep a core from the readers,
    nor from the supervisor they wait on."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except OSError:
        pass


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(_MSG.size)
    except OSError:
        return b""


def _write(path: str, data: Any) -> None:
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
