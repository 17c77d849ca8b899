#!/usr/bin/env python3
"""Seekable-zstd decompression: lazylayer against its peers, all in one run.

What it measures
    Sequential throughput (MB/s of *uncompressed* data, MB = 10**6 bytes) and
    random-read rates (reads/s of 4 KiB and of 64 KiB at uniform offsets) for:

    * lazylayer ``SeekableReader`` - decode threads=1 and threads=2, cache cold
      (``cache=None``: every read decodes) and warm (a ``BlockCache`` holding
      every frame, filled before timing), one and two Python threads;
    * python-zstandard, frame by frame (seek table parsed here, whole frames
      decoded with ``ZstdDecompressor.decompress``);
    * pyzstd ``SeekableZstdFile`` (seek + read);
    * indexed_zstd ``IndexedZstdFile`` (seek + read);
    * ``zstd -d -c FILE > /dev/null`` - the practical limit for sequential decode;
    * ``os.pread`` on the uncompressed file (page cache warm) - the ceiling.

Why this way
    Every reader reads the *same* seekable file, written by lazylayer's own
    ``SeekableWriter`` (1 MiB frames, level 3) from a tar of ``/usr`` of at
    least 500 MB.  A second copy written with ``checksum=False`` shows the
    partial-frame decode path (without checksums lazylayer stops decoding at
    the end of the read instead of decoding, and verifying, the whole frame);
    the peers are measured on that copy too so each comparison is like for
    like.  Random reads use one fixed list of offsets (fixed seed) for every
    reader.  Every measurement is repeated ``--repeat`` times and the median is
    reported; all ratios come from medians taken in the same run.  Fast cases
    are looped over the same offsets until at least ``--min-time`` seconds have
    passed, so timer resolution does not matter.  Nothing here asserts on
    timings: the targets are reported as met or not met.

    Before any timing, every reader's output for a sample of the random reads
    is compared with the uncompressed file, so a fast but wrong reader cannot
    slip through.  glibc malloc is put in its long-running state first (see
    ``settle_allocator``), which matters for the peers that return a fresh
    1 MiB ``bytes`` per read.  The report records how much CPU other processes
    used during the run: on 2 cores any other work distorts the numbers.

    Extra rows that explain rather than compete: lazylayer with
    ``verify=False`` (the cost of checking seek-table checksums) and a raw cffi
    call of ``ll_reader_read`` on a warm cache (what the Python wrapper costs).

Usage
    python benchmarks/decompress.py [--workdir DIR] [--size-mb N] [--reads N]
        [--repeat N] [--rebuild] [--quick] [--out FILE]

    ``--quick`` (64 MiB of data, 200 reads, 1 repeat) is a smoke check only.
"""

from __future__ import annotations

import argparse
import bisect
import ctypes
import gc
import os
import platform
import random
import resource
import shlex
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import indexed_zstd
import pyzstd
import zstandard
from common import machine_line

import lazylayer

MiB = 1 << 20
FRAME_SIZE = 1 * MiB
LEVEL = 3
SEEKABLE_MAGIC = 0x8F92EAB1
SKIPPABLE_MAGIC = 0x184D2A5E
DISTURBED = 0.1  # flag rows measured while other processes used this many cores...
MIN_DISTURBANCE = 0.05  # ...and at least this many CPU-s (/proc/stat counts 10 ms ticks)


# ----------------------------------------------------------------- test data


def make_tar(path: Path, size: int) -> None:
    """Write the first `size` bytes of ``tar -c /usr`` (real files, real mix)."""
    tmp = path.with_suffix(".part")
    proc = subprocess.Popen(["tar", "-cf", "-", "-C", "/", "usr"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    written = 0
    with open(tmp, "wb") as out:
        while written < size:
            chunk = proc.stdout.read(min(8 * MiB, size - written))
            if not chunk:
                break
            out.write(chunk)
            written += len(chunk)
    proc.stdout.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if written < size:
        raise SystemExit(f"tar of /usr gave only {written:,} bytes, need {size:,}; "
                         "use a smaller --size-mb")
    tmp.rename(path)


def make_seekable(src: Path, dst: Path, checksum: bool) -> None:
    """Compress `src` with lazylayer's SeekableWriter (1 MiB frames, level 3)."""
    tmp = dst.with_suffix(".part")
    with open(src, "rb") as f, lazylayer.SeekableWriter(
            str(tmp), frame_size=FRAME_SIZE, level=LEVEL, checksum=checksum) as w:
        while chunk := f.read(8 * MiB):
            w.write(chunk)
    tmp.rename(dst)


@dataclass
class Frame:
    c_off: int
    c_size: int
    d_off: int
    d_size: int


def parse_seek_table(path: Path) -> list[Frame]:
    """Frames with data, from the seek table at the file's tail (seekable format v0.1.0)."""
    with open(path, "rb") as f:
        f.seek(-9, os.SEEK_END)
        count, descriptor, magic = struct.unpack("<IBI", f.read(9))
        if magic != SEEKABLE_MAGIC or descriptor & 0x7C:
            raise ValueError(f"{path}: no seek table")
        entry = 12 if descriptor & 0x80 else 8
        f.seek(-(9 + 8 + count * entry), os.SEEK_END)
        skip_magic, _ = struct.unpack("<II", f.read(8))
        if skip_magic != SKIPPABLE_MAGIC:
            raise ValueError(f"{path}: bad seek table frame")
        table = f.read(count * entry)
    frames, c_off, d_off = [], 0, 0
    for i in range(count):
        c_size, d_size = struct.unpack_from("<II", table, i * entry)
        if d_size:
            frames.append(Frame(c_off, c_size, d_off, d_size))
        c_off += c_size
        d_off += d_size
    return frames


@dataclass
class Data:
    tar: Path
    chk: Path     # checksum=True (the writer's default)
    nochk: Path   # checksum=False
    size: int
    frames: dict[Path, list[Frame]] = field(default_factory=dict)


def prepare_data(workdir: Path, size: int, rebuild: bool) -> Data:
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"usr-{size // MiB}M"
    tar = workdir / f"{stem}.tar"
    data = Data(tar, workdir / f"{stem}.chk.zst", workdir / f"{stem}.nochk.zst", size)
    if rebuild:
        for p in (data.tar, data.chk, data.nochk):
            p.unlink(missing_ok=True)
    if not tar.exists() or tar.stat().st_size != size:
        log(f"writing {tar} ({size:,} bytes of tar -c /usr)")
        make_tar(tar, size)
    for path, checksum in ((data.chk, True), (data.nochk, False)):
        if not path.exists():
            log(f"compressing {path.name} (lazylayer SeekableWriter, checksum={checksum})")
            t = time.perf_counter()
            make_seekable(tar, path, checksum)
            log(f"  {time.perf_counter() - t:.1f} s")
    for path in (data.chk, data.nochk):
        frames = parse_seek_table(path)
        if sum(f.d_size for f in frames) != size:
            raise SystemExit(f"{path}: seek table does not cover {tar}; use --rebuild")
        data.frames[path] = frames
    for path in (data.tar, data.chk, data.nochk):   # pull everything into the page cache
        with open(path, "rb") as f:
            while f.read(16 * MiB):
                pass
    return data


def settle_allocator() -> None:
    """Put glibc malloc in its steady state before timing anything.

    glibc serves blocks above a dynamic threshold (128 KiB at start) with
    mmap/munmap, and raises the threshold to the size of any such block freed,
    up to 32 MiB.  A fresh process therefore pays page faults on every 1 MiB
    `bytes` a peer returns, a long-running one does not: the difference was
    20-60% for python-zstandard and pyzstd here.  Freeing one 16 MiB block
    gives every reader the long-running state, whatever ran before.
    """
    block = bytearray(16 * MiB)
    del block


# ----------------------------------------------------------------- readers
#
# A random-read "opener" returns (read(offset, size) -> bytes, close()).  It is
# called once per Python thread, so readers that are not thread-safe get one
# object per thread, and lazylayer (thread-safe) can hand out the same reader.

Opener = Callable[[], tuple[Callable[[int, int], bytes], Callable[[], None]]]


def open_pread(path: Path) -> Opener:
    def opener():
        fd = os.open(path, os.O_RDONLY)
        return (lambda off, n: os.pread(fd, n, off)), (lambda: os.close(fd))
    return opener


def open_seek_read(factory: Callable[[], object]) -> Opener:
    def opener():
        f = factory()

        def read(off, n):
            f.seek(off)
            return f.read(n)
        return read, f.close
    return opener


def open_zstandard(path: Path, frames: list[Frame]) -> Opener:
    """python-zstandard, frame by frame: decode every frame the read touches, whole."""
    starts = [f.d_off for f in frames]

    def opener():
        fd = os.open(path, os.O_RDONLY)
        dctx = zstandard.ZstdDecompressor()

        def read(off, n):
            i = bisect.bisect_right(starts, off) - 1
            parts, end = [], off + n
            while i < len(frames) and frames[i].d_off < end:
                fr = frames[i]
                data = dctx.decompress(os.pread(fd, fr.c_size, fr.c_off),
                                       max_output_size=fr.d_size)
                parts.append(data[max(off - fr.d_off, 0):end - fr.d_off])
                i += 1
            return b"".join(parts)
        return read, (lambda: os.close(fd))
    return opener


def open_lazylayer(reader) -> Opener:
    pread = reader.pread
    return lambda: ((lambda off, n: pread(n, off)), lambda: None)


def open_lazylayer_readinto(reader, size: int) -> Opener:
    """`readinto` a reused buffer; returns the buffer itself, no copy."""
    def opener():
        view = memoryview(bytearray(size))
        readinto = reader.readinto

        def read(off, n):
            got = readinto(view, off)
            return view if got == n else view[:got]
        return read, (lambda: None)
    return opener


def open_lazylayer_raw(reader, size: int) -> Opener:
    """Diagnostic only: the C call through cffi without the Python wrapper
    (private attributes), to show how much of a warm read the wrapper costs."""
    from lazylayer.core._native import ffi, lib

    def opener():
        buf = bytearray(size)
        dst, ptr, c_read = ffi.from_buffer(buf), reader._ptr, lib.ll_reader_read

        def read(off, n):
            if c_read(ptr, off, dst, n) != n:
                raise RuntimeError("short read")
            return buf
        return read, (lambda: None)
    return opener


# ----------------------------------------------------------------- timing


@dataclass
class Result:
    name: str
    unit: str
    values: list[float]
    note: str = ""
    other: tuple[float, float] = (0.0, 1.0)  # (CPU-s other processes used, wall s) while measured

    @property
    def disturbed(self) -> bool:
        cpu, wall = self.other
        return cpu >= DISTURBED * wall and cpu >= MIN_DISTURBANCE

    @property
    def median(self) -> float:
        return statistics.median(self.values)


def timed_random(opener: Opener, offsets: list[int], size: int, nthreads: int,
                 min_time: float, passes: int = 0) -> tuple[float, int]:
    """Reads/s doing `size`-byte reads at `offsets`, split over `nthreads` Python
    threads (interleaved halves).  Loops over the list `passes` times; with
    passes=0, first finds how many passes take at least `min_time`."""
    if passes == 0:
        passes = 1
        while True:
            rate, _ = timed_random(opener, offsets, size, nthreads, min_time, passes)
            elapsed = passes * len(offsets) / rate
            if elapsed >= min_time:
                return rate, passes
            passes = max(passes * 2, int(passes * min_time / max(elapsed, 1e-6)) + 1)

    parts = [offsets[i::nthreads] for i in range(nthreads)]
    handles = [opener() for _ in range(nthreads)]
    barrier = threading.Barrier(nthreads + 1)

    def work(read, offs):
        barrier.wait()
        for _ in range(passes):
            for off in offs:
                read(off, size)

    threads = [threading.Thread(target=work, args=(h[0], p)) for h, p in zip(handles, parts)]
    for t in threads:
        t.start()
    gc.collect()
    gc.disable()
    try:
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        gc.enable()
        for _, close in handles:
            close()
    return passes * len(offsets) / elapsed, passes


def repeat(n: int, fn: Callable[[], float]) -> list[float]:
    return [fn() for _ in range(n)]


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def seq_read(f_read: Callable[[int], bytes], total: int, chunk: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    got = 0
    while data := f_read(chunk):
        got += len(data)
    elapsed = time.perf_counter() - t0
    if got != total:
        raise RuntimeError(f"sequential read gave {got:,} bytes, expected {total:,}")
    return mbps(total, elapsed)


def seq_seek_read(factory: Callable[[], object], total: int, chunk: int) -> float:
    f = factory()
    try:
        return seq_read(f.read, total, chunk)
    finally:
        f.close()


def seq_pread(path: Path, total: int, chunk: int) -> float:
    fd = os.open(path, os.O_RDONLY)
    pos = 0

    def read(n):
        nonlocal pos
        data = os.pread(fd, n, pos)
        pos += len(data)
        return data
    try:
        return seq_read(read, total, chunk)
    finally:
        os.close(fd)


def seq_zstandard(path: Path, frames: list[Frame], total: int) -> float:
    fd = os.open(path, os.O_RDONLY)
    dctx = zstandard.ZstdDecompressor()
    it = iter(frames)

    def read(_n):
        fr = next(it, None)
        if fr is None:
            return b""
        return dctx.decompress(os.pread(fd, fr.c_size, fr.c_off), max_output_size=fr.d_size)
    try:
        return seq_read(read, total, FRAME_SIZE)
    finally:
        os.close(fd)


def seq_lazylayer(reader, total: int, chunk: int, readinto: bool) -> float:
    buf = memoryview(bytearray(chunk))
    gc.collect()
    t0 = time.perf_counter()
    off = 0
    if readinto:
        while n := reader.readinto(buf, off):
            off += n
    else:
        while data := reader.pread(chunk, off):
            off += len(data)
    elapsed = time.perf_counter() - t0
    if off != total:
        raise RuntimeError(f"lazylayer read {off:,} bytes, expected {total:,}")
    return mbps(total, elapsed)


def seq_zstd_cli(path: Path, total: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(["zstd", "-d", "-q", "-c", str(path)], stdout=subprocess.DEVNULL,
                   check=True)
    return mbps(total, time.perf_counter() - t0)


# ----------------------------------------------------------------- lazylayer helpers


def ll_reader(path: Path, *, threads: int = 1, cache=None, verify: bool = True):
    return lazylayer.SeekableReader(str(path), cache=cache, threads=threads, verify=verify)


def warm_cache(reader, frames: list[Frame]) -> None:
    """Fill the reader's cache with every frame: a 1-byte read at each frame's last
    byte covers the frame only in part, so the frame goes through the cache, and
    decoding it up to that byte means decoding all of it."""
    for fr in frames:
        reader.pread(1, fr.d_off + fr.d_size - 1)


def cache_delta(before, after) -> str:
    return (f"hits {after.hits - before.hits:,}, misses {after.misses - before.misses:,}, "
            f"bypasses {after.bypasses - before.bypasses:,}")


# ----------------------------------------------------------------- the run


class OtherLoad:
    """CPU time other processes used while the benchmark ran (from /proc/stat,
    minus our own and our children's), so a disturbed run shows in the report."""

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
        own = sum(getattr(resource.getrusage(who), k) for who in
                  (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for k in ("ru_utime", "ru_stime"))
        return busy, own, time.perf_counter()

    def __init__(self) -> None:
        self.start = self._sample()
        self.load_start = os.getloadavg()[0]

    def cpu_seconds(self) -> tuple[float, float]:
        """(CPU-s other processes used, wall seconds) since this object was made."""
        (b0, o0, t0), (b1, o1, t1) = self.start, self._sample()
        return max(0.0, (b1 - b0) - (o1 - o0)), t1 - t0

    def summary(self) -> str:
        other, wall = self.cpu_seconds()
        return (f"run took {wall:.0f} s; other processes used {other:.1f} CPU-s "
                f"({other / wall:.2f} cores on average); 1-min load average "
                f"{self.load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_reader(name: str, opener: Opener, tar: Path, offsets: list[int], size: int) -> None:
    """Compare a reader's bytes with the uncompressed file (untimed)."""
    read, close = opener()
    fd = os.open(tar, os.O_RDONLY)
    try:
        for off in offsets:
            if read(off, size) != os.pread(fd, size, off):
                raise RuntimeError(f"{name}: wrong data for {size} bytes at {off}")
    finally:
        os.close(fd)
        close()


def bench_sequential(d: Data, reps: int) -> list[Result]:
    out: list[Result] = []
    total = d.size
    frames = d.frames[d.chk]

    def add(name, fn):
        log(f"  seq: {name}")
        probe = OtherLoad()
        vals = repeat(reps, fn)
        out.append(Result(name, "MB/s", vals, other=probe.cpu_seconds()))
        log(f"    other processes: {out[-1].other[0]:.2f} CPU-s in {out[-1].other[1]:.1f} s")

    add("`zstd -d -c FILE > /dev/null` (CLI)", lambda: seq_zstd_cli(d.chk, total))
    add("`os.pread` 1 MiB, uncompressed tar", lambda: seq_pread(d.tar, total, MiB))
    add("python-zstandard, frame by frame", lambda: seq_zstandard(d.chk, frames, total))
    add("pyzstd `SeekableZstdFile.read(1 MiB)`",
        lambda: seq_seek_read(lambda: pyzstd.SeekableZstdFile(str(d.chk)), total, MiB))
    add("indexed_zstd `read(1 MiB)`",
        lambda: seq_seek_read(lambda: indexed_zstd.IndexedZstdFile(str(d.chk)), total, MiB))

    for threads in (1, 2):
        r = ll_reader(d.chk, threads=threads)
        for chunk in (MiB, 8 * MiB):
            add(f"lazylayer `readinto` {chunk // MiB} MiB, threads={threads}, cold",
                lambda: seq_lazylayer(r, total, chunk, readinto=True))
        r.close()
    r = ll_reader(d.chk, threads=1)
    add("lazylayer `pread` 1 MiB, threads=1, cold",
        lambda: seq_lazylayer(r, total, MiB, readinto=False))
    r.close()
    r = ll_reader(d.chk, threads=1, verify=False)
    add("lazylayer `readinto` 1 MiB, threads=1, cold, `verify=False`",
        lambda: seq_lazylayer(r, total, MiB, readinto=True))
    r.close()

    cache = lazylayer.BlockCache(total + 16 * MiB)
    r = ll_reader(d.chk, threads=1, cache=cache)
    warm_cache(r, frames)
    before = cache.stats()
    add("lazylayer `readinto` 1 MiB, threads=1, warm",
        lambda: seq_lazylayer(r, total, MiB, readinto=True))
    out[-1].note = "cache " + cache_delta(before, cache.stats())
    r.close()
    cache.clear()
    return out


def bench_random(d: Data, path: Path, label: str, size: int, offsets: list[int],
                 reps: int, min_time: float, full: bool) -> list[Result]:
    """Random reads of `size` bytes on seekable file `path` (and, if `full`, the
    uncompressed, python-zstandard and warm-cache cases, which do not depend on
    the checksum variant)."""
    out: list[Result] = []
    frames = d.frames[path]
    sample = offsets[:50]

    def add(name, opener, nthreads=1):
        log(f"  random {size // 1024} KiB, {label}: {name}")
        check_reader(name, opener, d.tar, sample, size)
        _, passes = timed_random(opener, offsets, size, nthreads, min_time)
        probe = OtherLoad()
        vals = [timed_random(opener, offsets, size, nthreads, min_time, passes)[0]
                for _ in range(reps)]
        out.append(Result(name, "reads/s", vals, other=probe.cpu_seconds()))
        log(f"    other processes: {out[-1].other[0]:.2f} CPU-s in {out[-1].other[1]:.1f} s")

    pyz = open_seek_read(lambda: pyzstd.SeekableZstdFile(str(path)))
    idz = open_seek_read(lambda: indexed_zstd.IndexedZstdFile(str(path)))
    if full:
        add("`os.pread`, uncompressed tar (page cache)", open_pread(d.tar))
        add("python-zstandard, frame by frame", open_zstandard(path, frames))
    add("pyzstd `SeekableZstdFile` seek+read", pyz)
    add("indexed_zstd seek+read", idz)
    add("pyzstd seek+read, 2 Python threads", pyz, 2)
    add("indexed_zstd seek+read, 2 Python threads", idz, 2)

    r = ll_reader(path, threads=1)
    add("lazylayer `pread`, cold, threads=1", open_lazylayer(r))
    add("lazylayer `pread`, cold, threads=1, 2 Python threads", open_lazylayer(r), 2)
    r.close()

    if full:
        cache = lazylayer.BlockCache(d.size + 16 * MiB)
        r = ll_reader(path, threads=1, cache=cache)
        warm_cache(r, frames)
        for name, opener, nthreads in (
                ("lazylayer `pread`, warm", open_lazylayer(r), 1),
                ("lazylayer `readinto`, warm", open_lazylayer_readinto(r, size), 1),
                ("(diagnostic) raw cffi `ll_reader_read`, warm", open_lazylayer_raw(r, size), 1),
                ("lazylayer `pread`, warm, 2 Python threads", open_lazylayer(r), 2)):
            before = cache.stats()
            add(name, opener, nthreads)
            out[-1].note = "cache " + cache_delta(before, cache.stats())
        r.close()
        cache.clear()
        del cache
    return out


# ----------------------------------------------------------------- report


def fmt_num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def fmt_range(vals: list[float]) -> str:
    return f"{fmt_num(min(vals))}–{fmt_num(max(vals))}" if len(vals) > 1 else "—"


def label_of(r: Result) -> str:
    return r.name + (" †" if r.disturbed else "")


def find(results: list[Result], name: str) -> Result:
    return next(r for r in results if r.name == name)


def libzstd_of(module) -> str:
    """Version of the libzstd a compiled module links, from its ldd output."""
    pkg = Path(module.__file__)
    sos = sorted(pkg.parent.glob("*.so")) if pkg.name == "__init__.py" else [pkg]
    for so in sos:
        try:
            ldd = subprocess.run(["ldd", str(so)], capture_output=True, text=True).stdout
        except OSError:
            break
        for line in ldd.splitlines():
            if "libzstd" in line and "=>" in line:
                lib = line.split("=>")[1].split("(")[0].strip()
                fn = ctypes.CDLL(lib).ZSTD_versionString
                fn.restype = ctypes.c_char_p
                return f"{fn().decode()} ({lib})"
    return "unknown (not dynamically linked)"


def environment() -> list[str]:
    def sh(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "n/a"
    idz_libs = Path(indexed_zstd.__file__).parent / "indexed_zstd.libs"
    idz_zstd = ", ".join(sorted(p.name for p in idz_libs.glob("libzstd*"))) if idz_libs.exists() else "?"
    import importlib.metadata as md

    def ver(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return getattr(sys.modules.get(dist), "__version__", "?")
    return [
        machine_line(),
        f"- Python {platform.python_version()}",
        f"- lazylayer {ver('lazylayer')}, libzstd {libzstd_of(lazylayer)}",
        f"- python-zstandard {ver('zstandard')} ({zstandard.backend}), libzstd "
        f"{'.'.join(map(str, zstandard.ZSTD_VERSION))}",
        f"- pyzstd {ver('pyzstd')} (backports.zstd {ver('backports.zstd')}), libzstd {pyzstd.zstd_version}",
        f"- indexed_zstd {ver('indexed_zstd')}, bundled {idz_zstd}",
        f"- zstd CLI: {sh('zstd', '--version').strip('* ')}",
    ]


def render(args, d: Data, seq: list[Result], rnd: dict, cmd: str, reps: int, load: str) -> str:
    L: list[str] = []
    chk_c, nochk_c = d.chk.stat().st_size, d.nochk.stat().st_size
    L += [f"Command: `{cmd}`", ""]
    L += environment()
    L += [f"- Data: first {d.size:,} bytes of `tar -c -C / usr`; seekable files written by "
          f"lazylayer `SeekableWriter` (1 MiB frames, level {LEVEL}): checksummed "
          f"{chk_c:,} B ({d.size / chk_c:.2f}x), `checksum=False` {nochk_c:,} B "
          f"({d.size / nochk_c:.2f}x), {len(d.frames[d.chk]):,} frames",
          f"- Median of {reps} runs (min–max shown); random reads: {args.reads:,} "
          f"uniform offsets, seed {args.seed}, same offsets for every reader; "
          f"fast cases loop over them for at least {args.min_time} s per run.",
          f"- Quietness: {load}", ""]

    zcli = find(seq, "`zstd -d -c FILE > /dev/null` (CLI)").median
    L += ["### Sequential read (checksummed file), MB/s of uncompressed data", "",
          "| Reader | MB/s | min–max | vs `zstd -d` |", "|---|---:|---:|---:|"]
    for r in seq:
        L.append(f"| {label_of(r)} | {fmt_num(r.median)} | {fmt_range(r.values)} | "
                 f"{r.median / zcli:.2f}x |")
    notes = [f"{r.name}: {r.note}" for r in seq if r.note]

    pread_name = "`os.pread`, uncompressed tar (page cache)"
    for label in ("checksummed", "checksum=False"):
        L += ["", f"### Random reads, {label} file, reads/s", "",
              "| Reader | 4 KiB | min–max | vs `os.pread` | vs best peer "
              "| 64 KiB | min–max | vs `os.pread` | vs best peer |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        sizes = (4096, 65536)
        names = [r.name for r in rnd[(label, 4096)]]
        for name in names:
            flag = any(find(rnd[(label, size)], name).disturbed for size in sizes)
            cells = []
            for size in sizes:
                res = rnd[(label, size)]
                r = find(res, name)
                pr = find(rnd[("checksummed", size)], pread_name).median
                peer = max(find(res, "pyzstd `SeekableZstdFile` seek+read").median,
                           find(res, "indexed_zstd seek+read").median)
                cells += [fmt_num(r.median), fmt_range(r.values),
                          f"{r.median / pr:.3f}x", f"{r.median / peer:.2f}x"]
                if r.note:
                    notes.append(f"{size // 1024} KiB, {label}, {name}: {r.note}")
            L.append(f"| {name}{' †' if flag else ''} | " + " | ".join(cells) + " |")
    all_rows = seq + [r for res in rnd.values() for r in res]
    if any(r.disturbed for r in all_rows):
        L += ["", f"† Other processes used at least {DISTURBED} of a core on average while "
              "this row was measured (for a random-read row: at either read size); treat its "
              "numbers, above all the two-thread ones, as suspect."]
    L += ["", "\"best peer\" = the faster of pyzstd `SeekableZstdFile` and indexed_zstd "
          "(one Python thread) on the same file and read size."]
    if notes:
        L += ["", "Cache counters during the timed runs of the warm cases:", ""]
        L += [f"- {n}" for n in notes]

    L += ["", "### Targets", "", "| Target | Measured | Met? |", "|---|---|---|"]
    for name, measured, met, disturbed in targets(seq, rnd):
        verdict = "met" if met else "**not met**"
        L.append(f"| {name} | {measured} | {verdict}{' (†: measured while disturbed)' if disturbed else ''} |")
    return "\n".join(L) + "\n"


def targets(seq, rnd):
    """(target, measured, met?, any row involved measured while disturbed?)"""
    zcli = find(seq, "`zstd -d -c FILE > /dev/null` (CLI)")
    t1 = {c: find(seq, f"lazylayer `readinto` {c} MiB, threads=1, cold") for c in (1, 8)}
    t2 = {c: find(seq, f"lazylayer `readinto` {c} MiB, threads=2, cold") for c in (1, 8)}
    best1 = max(t1.values(), key=lambda r: r.median)
    z = zcli.median
    out = [("Sequential, threads=1 >= 1.0x `zstd -d`",
            f"{fmt_num(best1.median)} vs {fmt_num(z)} MB/s = {best1.median / z:.2f}x "
            f"(1 MiB reads {t1[1].median / z:.2f}x, 8 MiB reads {t1[8].median / z:.2f}x)",
            best1.median >= z, any(r.disturbed for r in (zcli, t1[1], t1[8]))),
           ("Sequential, threads=2 >= 1.7x threads=1 (8 MiB reads)",
            f"{fmt_num(t2[8].median)} vs {fmt_num(t1[8].median)} MB/s = "
            f"{t2[8].median / t1[8].median:.2f}x",
            t2[8].median >= 1.7 * t1[8].median, t2[8].disturbed or t1[8].disturbed)]
    res = rnd[("checksummed", 4096)]
    warm = find(res, "lazylayer `pread`, warm")
    pr = find(res, "`os.pread`, uncompressed tar (page cache)")
    out.append(("Random 4 KiB, warm cache, Python API (`pread`) >= 0.5x `os.pread`",
                f"{fmt_num(warm.median)} vs {fmt_num(pr.median)} reads/s = "
                f"{warm.median / pr.median:.2f}x",
                warm.median >= 0.5 * pr.median, warm.disturbed or pr.disturbed))
    for label in ("checksummed", "checksum=False"):
        res = rnd[(label, 65536)]
        cold = find(res, "lazylayer `pread`, cold, threads=1")
        peers = [find(res, "pyzstd `SeekableZstdFile` seek+read"), find(res, "indexed_zstd seek+read")]
        best = max(peers, key=lambda r: r.median)
        out.append((f"Random 64 KiB, cold, {label} file >= 1.2x best of pyzstd/indexed_zstd",
                    f"{fmt_num(cold.median)} vs {fmt_num(best.median)} reads/s "
                    f"({best.name.split()[0]}) = {cold.median / best.median:.2f}x",
                    cold.median >= 1.2 * best.median,
                    cold.disturbed or any(r.disturbed for r in peers)))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lazylayer-bench"),
                    help="where the tar and the seekable files live (default %(default)s)")
    ap.add_argument("--size-mb", type=int, default=None,
                    help="MiB of tar data (default 512; 64 with --quick)")
    ap.add_argument("--reads", type=int, default=None,
                    help="random reads per case (default 2000; 200 with --quick)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per measurement, median reported (default 3; 1 with --quick)")
    ap.add_argument("--min-time", type=float, default=None,
                    help="seconds a random-read run lasts at least (default 0.2; 0.05 with --quick)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rebuild", action="store_true", help="rewrite the data files")
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    args = ap.parse_args(argv)
    q = args.quick
    args.size_mb = args.size_mb or (64 if q else 512)
    args.reads = args.reads or (200 if q else 2000)
    args.repeat = args.repeat or (1 if q else 3)
    args.min_time = args.min_time if args.min_time is not None else (0.05 if q else 0.2)
    cmd = " ".join(["python", "benchmarks/decompress.py"] + [shlex.quote(a) for a in sys.argv[1:]])

    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {os.getloadavg()[0]:.2f}; other work will distort the numbers")
    d = prepare_data(args.workdir, args.size_mb * MiB, args.rebuild)
    log(f"data: {d.tar} {d.size:,} B; {d.chk.name} {d.chk.stat().st_size:,} B; "
        f"{d.nochk.name} {d.nochk.stat().st_size:,} B")

    settle_allocator()
    load = OtherLoad()
    seq = bench_sequential(d, args.repeat)
    rng = random.Random(args.seed)
    rnd = {}
    for size in (4096, 65536):
        offsets = [rng.randrange(0, d.size - size + 1) for _ in range(args.reads)]
        for label, path, full in (("checksummed", d.chk, True), ("checksum=False", d.nochk, False)):
            rnd[(label, size)] = bench_random(d, path, label, size, offsets, args.repeat,
                                              args.min_time, full)
    quiet = load.summary()
    log(quiet)
    report = render(args, d, seq, rnd, cmd, args.repeat, quiet)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
