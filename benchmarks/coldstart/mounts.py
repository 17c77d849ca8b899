"""Overlay roots, the chroot workload, lazylayer mounts and page-cache drops (root only)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

WORKLOAD = ["python3", "-c", "import pandas, matplotlib"]
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C.UTF-8"}


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def is_mount(p: Path) -> bool:
    target = str(p.resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def umount(p: Path) -> None:
    """Unmount ``p`` if it is a mount point; lazily if it is busy."""
    if not is_mount(p):
        return
    if subprocess.run(["umount", str(p)], check=False, capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(p)], check=False, capture_output=True)


class Overlay:
    """``lowers`` (bottom first) under a tmpfs upper dir, merged at ``scratch/merged``, with /proc and /dev."""

    def __init__(self, lowers: Sequence[Path], scratch: Path, system: bool = True) -> None:
        self.lowers, self.scratch, self.system = list(lowers), scratch, system
        self.merged = scratch / "merged"

    def mount(self) -> Overlay:
        self.scratch.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(self.scratch)], check=True)
        for d in ("upper", "work", "merged"):
            (self.scratch / d).mkdir()
        lower = ":".join(str(p) for p in reversed(self.lowers))  # overlayfs lists the top layer first
        opts = f"lowerdir={lower},upperdir={self.scratch / 'upper'},workdir={self.scratch / 'work'}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.merged)], check=True)
        if self.system:
            subprocess.run(["mount", "-t", "proc", "proc", str(self.merged / "proc")], check=True)
            subprocess.run(["mount", "--bind", "/dev", str(self.merged / "dev")], check=True)
        return self

    def read_all(self) -> tuple[float, int]:
        """``tar -cf - -C ROOT . | wc -c``: read every file (GNU tar skips file contents when the
        archive is /dev/null, so the archive goes through a pipe); (wall time, bytes)."""
        t0 = time.perf_counter()
        r = subprocess.run(["sh", "-c", 'tar -cf - -C "$1" . | wc -c', "sh", str(self.merged)], check=False,
                           capture_output=True, text=True)
        t = time.perf_counter() - t0
        if r.returncode or not r.stdout.strip().isdigit():
            raise RuntimeError(f"tar exited {r.returncode}: {r.stderr.strip()[-2000:]}")
        return t, int(r.stdout)

    def run(self, argv: Sequence[str] = WORKLOAD) -> float:
        """Run ``argv`` chrooted in the merged root; return its wall time."""
        t0 = time.perf_counter()
        r = subprocess.run(["chroot", str(self.merged), *argv], env=ENV, check=False, capture_output=True, text=True)
        t = time.perf_counter() - t0
        if r.returncode:
            raise RuntimeError(f"workload exited {r.returncode}: {r.stderr.strip()[-2000:]}")
        return t

    def unmount(self) -> None:
        for p in (self.merged / "dev", self.merged / "proc", self.merged, self.scratch):
            umount(p)


def cli_env(pycache: Path) -> dict[str, str]:
    """The environment for the ``lazylayer`` command: its bytecode cached under ``pycache``, as an install has it.

    (lazylayer is an editable install here, and this machine sets PYTHONDONTWRITEBYTECODE.)
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def lazy_mount(cli: str, ref: str, mnt: Path, cache_dir: Path, log: Path, env: dict[str, str],
               timeout: float = 300, extra: Sequence[str] = ()) -> None:
    """``lazylayer mount -v --log LOG REF MNT --cache-dir DIR [EXTRA]`` (returns once the mount is ready)."""
    mnt.mkdir(parents=True, exist_ok=True)
    argv = [cli, "mount", "-v", "--log", str(log), ref, str(mnt), "--cache-dir", str(cache_dir), *extra]
    r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode:
        raise RuntimeError(f"lazylayer mount exited {r.returncode}: {(r.stderr or r.stdout).strip()[-2000:]}")


def lazy_umount(cli: str, mnt: Path, timeout: float = 60) -> str:
    """``lazylayer umount``; falls back to ``fusermount3 -uz`` and says so in the returned text."""
    if not is_mount(mnt):
        return ""
    try:
        r = subprocess.run([cli, "umount", str(mnt)], check=False, capture_output=True, text=True, timeout=timeout)
        if r.returncode == 0 and not is_mount(mnt):
            return ""
        msg = f"lazylayer umount exited {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}"
    except subprocess.TimeoutExpired:
        msg = f"lazylayer umount did not return in {timeout:.0f} s"
    if is_mount(mnt):
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, capture_output=True)
    if is_mount(mnt):  # (not FUSE: the erofs backend)
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
    return msg


COUNTERS = re.compile(r"unmounted .*: (?:\d+ requests, )?(\d+) frames fetched \((\d+) bytes\), (\d+) from disk, (\d+) EIO"
                      r"(?:, (\d+) from local layer files)?")


def daemon_counters(log: Path) -> dict[str, int]:
    """The counters of the daemon's last ``unmounted`` log line (``-v``); empty if there is none."""
    found = COUNTERS.findall(log.read_text(errors="replace")) if log.exists() else []
    if not found:
        return {}
    keys = ("frames_fetched", "bytes_fetched", "frames_from_disk", "eio", "frames_local")
    return {k: int(v or 0) for k, v in zip(keys, found[-1], strict=True)}


def warm(paths: Sequence[Path]) -> None:
    """Read every file under ``paths`` into the page cache."""
    for top in paths:
        for dirpath, _, files in os.walk(top):
            for name in files:
                with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                    while f.read(8 << 20):
                        pass


def empty_dir(d: Path) -> None:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
