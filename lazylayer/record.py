"""``lazylayer record``: run a command in an image and record what it reads, as a prefetch plan.

The image is FUSE-mounted in this process (:class:`lazylayer.mount.Mount`) with a
:class:`~lazylayer.prefetch.Recorder` on it; the command runs chrooted into
an overlay of that mount (a tmpfs takes its writes, ``/proc`` and ``/dev`` are
there, as in a container), with the image config's environment and working
directory.  When it exits, or at the time limit, everything is unmounted and
the reads so far become the plan.  Needs root (mounts and chroot).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .mount import Mount, MountError
from .prefetch import Plan, Recorder

if TYPE_CHECKING:
    from .image import Image

__all__ = ["RecordResult", "record"]

log = logging.getLogger("lazylayer")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class RecordResult:
    plan: Plan
    returncode: int | None  #: the command's exit status; None if it was stopped at the time limit
    seconds: float          #: how long it ran


def record(image: Image, argv: Sequence[str], *, timeout: float | None = None, overlay: bool = True) -> RecordResult:
    """Run ``argv`` chrooted into ``image`` and return the plan of what it read.

    ``timeout``: stop the command (SIGTERM, then SIGKILL) after so many
    seconds; the plan keeps what it read until then.  ``overlay=False`` runs it
    on the read-only mount itself, without ``/proc`` and ``/dev``.
    """
    if not argv:
        raise ValueError("record needs a command to run")
    if os.geteuid() != 0:
        raise MountError("lazylayer record mounts the image and runs the command chrooted into it: "
                         "it must run as root")
    recorder = Recorder(image)
    index = image.index

    def on_read(ino: int, offset: int, size: int) -> None:  # a C server thread, for each READ
        st = index.stat(ino)
        n = min(size, st.size - offset)
        if n > 0 and st.layer >= 0:
            recorder.read(st.layer, st.offset + offset, n)

    top = tempfile.mkdtemp(prefix="lazylayer-record-")
    mnt = os.path.join(top, "image")
    os.mkdir(mnt)
    result: list[tuple[int | None, float]] = []
    failure: list[BaseException] = []
    proc: list[subprocess.Popen[bytes]] = []
    try:
        with Mount(image, mnt, on_read=on_read):
            try:
                result.append(_run_chrooted(image, mnt, top, argv, timeout, overlay, proc))
            except BaseException as exc:  # noqa: BLE001 - reported below, after the unmount
                failure.append(exc)
    finally:
        for p in proc:  # the mount ended under the command (a signal): do not leave it running
            if p.poll() is None:
                _stop(p)
        shutil.rmtree(top, ignore_errors=True)
    if failure:
        raise failure[0]
    if not result:
        raise MountError("the mount ended before the command finished (interrupted?)")
    rc, seconds = result[0]
    plan = recorder.plan(workload=" ".join(argv))
    if recorder.dropped:
        log.warning("record: %d reads were not kept (more than %d ranges)", recorder.dropped, recorder.max_ranges)
    return RecordResult(plan, rc, seconds)


def _run_chrooted(image: Image, mnt: str, top: str, argv: Sequence[str], timeout: float | None, overlay: bool,
                  proc: list[subprocess.Popen[bytes]]) -> tuple[int | None, float]:
    root, mounted = mnt, []
    try:
        if overlay:
            scratch = os.path.join(top, "scratch")
            os.mkdir(scratch)
            _mount(["-t", "tmpfs", "-o", "size=1g,mode=0755", "tmpfs", scratch])
            mounted.append(scratch)
            for d in ("upper", "work", "root"):
                os.mkdir(os.path.join(scratch, d))
            root = os.path.join(scratch, "root")
            _mount(["-t", "overlay", "overlay", "-o",
                    f"lowerdir={mnt},upperdir={scratch}/upper,workdir={scratch}/work", root])
            mounted.append(root)
            for what, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--rbind", "/dev"])):
                target = os.path.join(root, what)
                if not os.path.lexists(target):
                    os.mkdir(target)  # in the tmpfs upper dir, as a container runtime would
                if os.path.isdir(target) and not os.path.islink(target):
                    _mount(args + [target])
                    mounted.append(target)
        config = image.config.get("config") or {}
        env = {"PATH": DEFAULT_PATH, "HOME": "/root"}
        for item in config.get("Env") or []:
            if isinstance(item, str) and "=" in item:
                k, _, v = item.partition("=")
                env[k] = v
        workdir = config.get("WorkingDir") or "/"
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"  # found on this machine's PATH, not the image's
        cmd = [chroot, root, *argv]
        if workdir != "/":  # chroot(1) cannot change directory; the image's shell can
            if os.path.lexists(os.path.join(root, "bin/sh")):
                cmd = [chroot, root, "/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", workdir, *argv]
            else:
                log.warning("record: the image has no /bin/sh to change to its WorkingDir %s; running in /",
                            workdir)
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, env=env, start_new_session=True)
        proc.append(p)
        try:
            rc: int | None = p.wait(timeout)
        except subprocess.TimeoutExpired:
            log.info("record: stopping the command at the %g s time limit", timeout)
            _stop(p)
            rc = None
        return rc, time.monotonic() - t0
    finally:
        for target in reversed(mounted):
            if subprocess.run(["umount", "-R", target], capture_output=True).returncode:
                subprocess.run(["umount", "-l", target], capture_output=True)


def _mount(args: list[str]) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True)
    if res.returncode:
        raise MountError(f"mount {' '.join(args)}: {res.stderr.strip() or res.returncode}")


def _stop(p: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(3)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        pass

