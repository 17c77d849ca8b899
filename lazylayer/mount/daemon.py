"""The mount daemon: serve a mount in this process, or fork a daemon and wait until it is mounted.

``lazylayer mount`` forks once everything the daemon needs is imported (so
the child starts serving without a second interpreter start-up) and returns
when the child says, through a pipe, that the kernel has the mount, or why it
failed.  The daemon keeps its pid and log in the state files of
:func:`~lazylayer.mount.control.state_paths`, which ``lazylayer umount`` reads.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .. import errors
from ..image import Image
from .control import set_read_ahead, state_paths
from .fetcher import Fetcher
from .fuse import MISS_THREADS, Mount, remote_reference

log = logging.getLogger("lazylayer.mount")


@dataclass
class ServeOptions:
    """How to serve a mount: where, with how many threads, and what to log."""

    mountpoint: str
    label: str = ""               #: the image reference, for messages
    threads: bool = True          #: two server threads (False: one)
    allow_other: bool = False
    debug: bool = False           #: DEBUG logs
    read_ahead: int | None = None  #: the kernel's read-ahead for the mount (root only)
    verbose: int = 0              #: 1: the INFO logs of prefetch and fetches; 2: every fetch too (DEBUG)
    prefetch: Any = "auto"        #: the plan: "auto", a plan file, or None (lazylayer.prefetch.start)
    fill: bool = False            #: fetch the whole image in the background
    fill_rate: float | None = None
    readahead: bool = True
    passthrough: bool = False     #: FUSE passthrough of large cached files (Mount's option)
    backend: str = "fuse"         #: "fuse", "erofs" or "auto" (lazylayer.mount.erofs.choose_backend)


def run(open_image: Callable[[], Image], opts: ServeOptions, ready_fd: int | None = None) -> int:
    """Open the image, mount it, serve until unmounted; tell ``ready_fd`` (if any) how it went."""
    level = logging.DEBUG if opts.debug or opts.verbose > 1 else logging.INFO if opts.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if level > logging.INFO:  # the mount's own lines (mounted; unmounted, with counters) always
        log.setLevel(logging.INFO)

    def tell(text: str) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            try:
                os.write(ready_fd, text.encode() + b"\n")
                os.close(ready_fd)
            except OSError:
                pass
            ready_fd = None

    pidfile, _ = state_paths(opts.mountpoint)

    def ready() -> None:
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
        if opts.read_ahead:
            set_read_ahead(opts.mountpoint, opts.read_ahead)
        log.info("mounted %s at %s", opts.label, opts.mountpoint)
        tell("ready")

    # The fetcher process (FUSE: the default backend) starts now, its interpreter's start-up
    # overlapping the image's open (0.4 s of every cold start here); sent its work by the mount.
    fetcher = Fetcher(MISS_THREADS) if opts.backend == "fuse" and remote_reference(opts.label) else None
    try:
        img = open_image()
    except (errors.LazyLayerError, OSError) as exc:
        if fetcher is not None:
            fetcher.close()
        tell(f"error: {exc}")
        raise
    mnt = None
    signalled = threading.Event()

    # SIGINT, SIGTERM and SIGHUP unmount (lazily); the kernel ends the session once
    # the last process inside lets go, and mnt.wait() returns.  Installed before the
    # mount is made: the kernel has it (and a caller may signal) before Mount() returns.
    def on_signal(signum: int, frame: object) -> None:
        log.info("%s: signal %d: unmounting", opts.mountpoint, signum)
        signalled.set()
        if mnt is not None:
            try:
                mnt.unmount(wait=False)
            except errors.LazyLayerError as exc:
                log.error("%s", exc)

    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, on_signal)
        try:
            mnt = Mount(img, opts.mountpoint, threads=2 if opts.threads else 1, allow_other=opts.allow_other,
                        prefetch=opts.prefetch, fill=opts.fill, fill_rate=opts.fill_rate, readahead=opts.readahead,
                        verbose=opts.verbose + (2 if opts.debug else 0), passthrough=opts.passthrough,
                        backend=opts.backend, fetcher=fetcher)
        except BaseException as exc:
            if fetcher is not None:
                fetcher.close()  # (idempotent: the mount may have closed it)
            if isinstance(exc, errors.LazyLayerError):
                tell(f"error: {exc}")
            raise
        if signalled.is_set():  # (a signal while the mount was being made)
            on_signal(0, None)
        ready()
        while not mnt.wait(1.0):
            pass
        stats = mnt.stats()
    finally:
        tell("error: the mount ended before it was ready")
        if mnt is not None:
            mnt.close()
        img.close()
    if "fill_events" in stats:  # the erofs backend
        log.info("unmounted %s: %d frames fetched (%d bytes), %d from disk, %d EIO; %d fills asked, %d bytes "
                 "written to the data file", opts.mountpoint, stats["frames_fetched"], stats["bytes_fetched"],
                 stats["frames_from_disk"], stats["fill_errors"], stats["fill_events"], stats["filled_bytes"])
    else:
        log.info("unmounted %s: %d requests, %d frames fetched (%d bytes), %d from disk, %d EIO, %d from local "
                 "layer files", opts.mountpoint, stats["requests"], stats["fetches"], stats["bytes_fetched"],
                 stats["frames_from_disk"], stats["eio"], stats["frames_local"])
    try:
        with open(pidfile) as f:
            if f.read().strip() == str(os.getpid()):
                os.unlink(pidfile)
    except OSError:
        pass
    return 0


def spawn(child: Callable[[int], int], mountpoint: str, *, log_path: str | None = None, label: str = "",
          quiet: bool = False) -> int:
    """Fork the daemon into its own session; return 0 once it is mounted, else 1 (the reason is printed).

    ``child(ready_fd)`` runs in the daemon, with stdout and stderr sent to the
    log, and must write ``ready`` or ``error: MESSAGE`` to ``ready_fd`` (as
    :func:`run` does).  The log is ``log_path``, appended to, or else the mount
    point's default log (:func:`~lazylayer.mount.control.state_paths`), started
    afresh by each mount.  No thread may be running when this is called.
    """
    _, default_log = state_paths(mountpoint)
    logpath = os.path.abspath(log_path or default_log)
    if threading.active_count() > 1:  # pragma: no cover - nothing before this starts threads
        raise errors.LazyLayerError("internal error: threads running before the mount daemon forks")
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon
        code = 1
        try:
            os.close(r)
            os.setsid()
            # The user's --log FILE collects every mount; the default log holds the last mount only.
            logfd = os.open(logpath, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if log_path else os.O_TRUNC), 0o600)
            nullfd = os.open(os.devnull, os.O_RDONLY)
            os.dup2(nullfd, 0)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            os.close(logfd)
            os.close(nullfd)
            code = child(w)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        said = pipe.read().decode(errors="replace").strip()
    if said.startswith("ready"):
        if not quiet:
            print(f"lazylayer: mounted {label} at {mountpoint} (daemon {pid}, log {logpath})", file=sys.stderr)
        return 0
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    message = said.removeprefix("error:").strip() or f"the mount daemon exited with {code}; see {logpath}"
    print(f"lazylayer: {message}", file=sys.stderr)
    return 1  # a mount that failed, whatever the daemon's code (2 is for usage errors, found before the fork)
