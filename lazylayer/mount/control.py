"""Finding and removing lazylayer mounts: /proc/self/mountinfo, the daemon's state files, unmount."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time

from .fuse import SUBTYPE, MountError

log = logging.getLogger("lazylayer.mount")


# -- finding and removing mounts ------------------------------------------------------


def _unescape(field: str) -> str:
    """A path field of /proc/self/mountinfo (spaces and such are octal escapes)."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


def mount_entry(mountpoint: str) -> dict[str, str] | None:
    """The /proc/self/mountinfo entry of ``mountpoint`` (``fstype``, ``source``, ``devno``), or None."""
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) >= 5 and len(rfields) >= 2 and _unescape(fields[4]) == target:
            found = {"devno": fields[2], "fstype": rfields[0], "source": _unescape(rfields[1])}
    return found  # the last one: what is visible now


def is_mounted(mountpoint: str) -> bool:
    """True if a lazylayer mount is at ``mountpoint``."""
    entry = mount_entry(mountpoint)
    return entry is not None and _ours(entry)


def _ours(entry: dict[str, str]) -> bool:
    from .erofs import is_erofs_mount

    return entry["fstype"] == "fuse." + SUBTYPE or is_erofs_mount(entry["fstype"], entry["source"])


def state_paths(mountpoint: str) -> tuple[str, str]:
    """Where the daemon of a background mount at ``mountpoint`` keeps its pid and its log.

    In ``$XDG_RUNTIME_DIR/lazylayer`` (or ``/tmp/lazylayer-UID``), named by a
    hash of the mount point's real path.
    """
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/lazylayer-{os.getuid()}"
    d = os.path.join(base, "lazylayer") if os.environ.get("XDG_RUNTIME_DIR") else base
    os.makedirs(d, mode=0o700, exist_ok=True)
    key = hashlib.sha256(os.fsencode(os.path.realpath(mountpoint))).hexdigest()[:16]
    return os.path.join(d, f"mount-{key}.pid"), os.path.join(d, f"mount-{key}.log")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


LAZY_GRACE = 1.0
"""Seconds :func:`unmount` with ``lazy=True`` waits for the daemon before leaving it running."""


def unmount(mountpoint: str, *, timeout: float = 30.0, lazy: bool = False) -> int | None:
    """Unmount a lazylayer mount and wait (up to ``timeout`` s) for its daemon to exit.

    ``lazy``: detach now even if files are open (``umount -l``).  The kernel
    keeps a detached mount alive while a process still uses it (an open file,
    its cwd), and the daemon serves it until the last one leaves: so after a
    successful lazy detach this waits only briefly (``LAZY_GRACE`` s) and
    returns the pid of a daemon still running then; otherwise None.  Raises
    :class:`MountError` if ``mountpoint`` is not a lazylayer mount or the
    unmount fails (for example, busy).
    """
    entry = mount_entry(mountpoint)
    if entry is None or not _ours(entry):
        what = "nothing is mounted" if entry is None else f"a {entry['fstype']} filesystem is mounted"
        raise MountError(f"{mountpoint}: not a lazylayer mount ({what} there)")
    pidfile, _ = state_paths(mountpoint)
    try:
        with open(pidfile) as f:
            pid: int | None = int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        pid = None
    tool = shutil.which("fusermount3") if entry["fstype"].startswith("fuse.") else None
    cmd = [tool, "-u"] + (["-z"] if lazy else []) + [mountpoint] if tool else \
        ["umount"] + (["-l"] if lazy else []) + [mountpoint]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise MountError(f"{mountpoint}: unmount failed: {res.stderr.strip() or res.returncode}")
    if pid is not None:
        deadline = time.monotonic() + (min(timeout, LAZY_GRACE) if lazy else timeout)
        while _alive(pid):
            if time.monotonic() > deadline:
                if lazy:  # detached; the daemon exits (and removes its pid file) when the mount is unused
                    return pid
                raise MountError(f"{mountpoint}: unmounted, but daemon {pid} did not exit in {timeout:g} s")
            time.sleep(0.02)
    try:
        os.unlink(pidfile)
    except OSError:
        pass
    return None


def set_read_ahead(mountpoint: str, size: int) -> bool:
    """Set the kernel's read-ahead for the mount (root only); False if it could not."""
    entry = mount_entry(mountpoint)
    if entry is None:
        return False
    try:
        with open(f"/sys/class/bdi/{entry['devno']}/read_ahead_kb", "w") as f:
            f.write(str(max(4, size // 1024)))
        return True
    except OSError as exc:
        log.info("could not set read-ahead of %s: %s", mountpoint, exc)
        return False

