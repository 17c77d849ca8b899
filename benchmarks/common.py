"""Small helpers the benchmark scripts share (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess


def cpu_self() -> float:
    """CPU seconds (user + system) this process has used."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    """CPU seconds (user + system) of this process's finished, waited-for children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def stop_process(p: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    if p is None:
        return
    p.terminate()
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def package_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or ``?``."""
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


def machine_line() -> str:
    """``- Machine: `nproc` = N, CPU, RAM, kernel, Debian``: the first line of every results block."""
    import os
    import platform
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "unknown")
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), "0")
    deb = Path("/etc/debian_version")
    debian = deb.read_text().strip() if deb.exists() else "n/a"
    return (f"- Machine: `nproc` = {os.cpu_count()}, {cpu}, {int(mem) / 2**20:.0f} GiB RAM, "
            f"kernel `{platform.release()}`, Debian {debian}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """``sha256:HEX`` of a file, read in 8 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
