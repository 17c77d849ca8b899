"""Resident memory while lazylayer reads a whole image and serves a long soak (issue 15's memory targets).

What it measures
    The image: benchmarks/image.py's target-2 image (``t2_build``: four layers
    of real files from /usr, ``--size-mb`` (1,000) MB uncompressed, about
    26,000 entries), built once under ``--work`` and pushed, converted to lazy
    layers, to a real ``docker-registry`` on loopback (``tests.servers
    .RegistryServer``), so every read goes registry -> disk cache -> memory
    cache as in real use.  Every case starts with a new, empty disk cache.

    whole image through ``lazylayer://`` (``fs``), per budget in ``--budgets``:
        a fresh child process with ``LAZYLAYER_MEMORY_CACHE_MB`` = the budget
        opens ``ImageFileSystem(image=docker://..., cache_dir=fresh)``, lists
        the tree (``fs.find(detail=True)``), samples its RSS
        (/proc/self/statm) and resets its peak (``5`` into
        /proc/self/clear_refs), then reads every regular file in tree order
        with ``fs.open(path).read(1 MiB)`` until EOF.  A thread samples RSS
        every 0.2 s; the peak is VmHWM at the end.  Reported: peak and final
        growth over the after-open sample, the C cache's pool
        (``BlockCache.pool_bytes``), anonymous memory (/proc/self/smaps_rollup)
        and the number of anonymous mappings.
    whole image through the mount (``mount``), per budget:
        ``lazylayer mount -f`` (a foreground daemon, our child) with that
        budget and a fresh ``--cache-dir``; once the mount is in
        /proc/mounts and has settled (1 s), the daemon's RSS is sampled and
        its peak reset, then ``tar -cf - -C MNT . | wc -c`` reads every file
        while the daemon's RSS is sampled every second; peak = the daemon's
        VmHWM.
    soak (``soak``):
        a mount with the default budget (``LAZYLAYER_MEMORY_CACHE_MB`` unset:
        256 MiB) serving 4 reader threads for ``--soak-seconds`` (600): each
        picks a regular file with probability proportional to its size
        (every byte of the image equally likely, so the working set is the
        whole image, far above the budget), a random 4 KiB-aligned offset
        and a length of 128 KiB-4 MiB, and reads it with ``os.pread`` in
        128 KiB pieces.  Every ``--sample-every`` (5) s the daemon's RSS is
        the mean of 5 reads 0.1 s apart.  Reported: the least-squares slope
        over the second half (MiB/min), and the peak (daemon VmHWM after the
        warm-up, reset at its end) over the after-warm-up baseline (the mean
        sample at ``--warmup`` (0.2) of the run).

    The bound a whole-image read is held to (issue 15): the memory budget +
    64 MiB + the documented caps on read-ahead and requests in flight, which
    this script takes as
      * read-ahead: ``ImageFile``'s buffer, at most 16 MiB (docs/filesystem.md,
        "Read-ahead"; ``fs`` only: the mount has no ``ImageFile``, and the
        kernel's 128 KiB is in the page cache, not the daemon).  The
        prefetcher's window (up to 256 MiB) is fetched into the disk cache,
        not memory; what it holds in memory is its requests in flight:
      * in flight: (``max_connections`` 16 + ``background_connections`` 8)
        requests x ``part_size`` 4 MiB = 96 MiB (docs/remote.md, "What a read
        does").
    So ``fs``: budget + 176 MiB, ``mount``: budget + 160 MiB.  The table also
    shows growth against budget + 64 MiB alone.

Usage
    python -m benchmarks.memory [--work DIR] [--only fs,mount,soak] [--budgets 32,256]
        [--soak-seconds 600] [--size-mb 1000] [--out FILE]

    Needs root (or FUSE rights), /dev/fuse, docker-registry and tar.  Nothing
    asserts; targets are reported as met or not met.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

if __name__ == "__main__" and not __package__:
    sys.exit("run it from the repository root as a module: python -m benchmarks.memory --help")

import tests.images
from benchmarks.common import machine_line, package_version, stop_process
from benchmarks.image import TAG, t2_build

# tests/servers.py imports tests/images.py as the top-level module ``images`` (pytest puts tests/ on the path).
sys.modules.setdefault("images", tests.images)
from tests.servers import RegistryServer

MiB = 1 << 20
SLACK = 64  # MiB, issue 15
READAHEAD_CAP = 16  # MiB: ImageFile's read-ahead buffer (docs/filesystem.md)
IN_FLIGHT = (16 + 8) * 4  # MiB: (max_connections + background_connections) x part_size (docs/remote.md)
MAX_SLOPE = 0.5  # MiB/min
DEFAULT_BUDGET = 256
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc

def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / MiB


def status_mib(pid: int | str, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith(key + ":"):
                return int(ln.split()[1]) / 1024
    return 0.0


def reset_peak(pid: int | str = "self") -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def anon_info(pid: int | str = "self") -> dict[str, float]:
    """Anonymous MiB (smaps_rollup) and the number of anonymous mappings (maps lines without a path)."""
    anon = 0.0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for ln in f:
            if ln.startswith("Anonymous:"):
                anon = int(ln.split()[1]) / 1024
    with open(f"/proc/{pid}/maps") as f:
        maps = sum(1 for ln in f if len(ln.split()) < 6)
    return {"anon_mib": round(anon, 1), "anon_maps": maps}


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope in MiB/min of (seconds, MiB) points."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 60 * sum((t - mx) * (v - my) for t, v in points) / var if var else 0.0


# ---------------------------------------------------------------- the image and the registry

def build_image(a: argparse.Namespace) -> dict[str, Any]:
    return t2_build(SimpleNamespace(workdir=a.work, t2_size_mb=a.size_mb, rebuild=a.rebuild))


def push(lazy: Path, host: str) -> str:
    from lazylayer.convert import Converter

    ref = f"docker://{host}/bench:{TAG}"
    Converter(progress=False).convert(f"oci:{lazy}:{TAG}", ref)
    return ref


# ---------------------------------------------------------------- whole image through lazylayer://

FS_CHILD = r"""
import json, os, sys, threading, time
from benchmarks.memory import rss_mib, status_mib, reset_peak, anon_info
from lazylayer.fs import ImageFileSystem

ref, cache_dir = sys.argv[1], sys.argv[2]
fs = ImageFileSystem(image=ref, cache_dir=cache_dir, skip_instance_cache=True)
info = fs.find("", detail=True)
files = [(p, d["size"]) for p, d in info.items() if d["type"] == "file"]
time.sleep(0.5)
base = rss_mib()
reset_peak()
samples, stop = [], threading.Event()
t0 = time.monotonic()

def sampler():
    while not stop.wait(0.2):
        samples.append((round(time.monotonic() - t0, 1), round(rss_mib(), 1)))

th = threading.Thread(target=sampler, daemon=True)
th.start()
total = 0
for p, size in files:
    with fs.open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
wall = time.monotonic() - t0
stop.set(); th.join()
mem = fs.image.memory
out = {"base": round(base, 1), "peak": round(status_mib("self", "VmHWM"), 1), "final": round(rss_mib(), 1),
       "samples_max": max((v for _, v in samples), default=base), "files": len(files), "bytes": total,
       "expected": sum(s for _, s in files), "wall": round(wall, 1), "pool": mem.pool_bytes,
       "cache": mem.stats()._asdict(), **anon_info()}
print(json.dumps(out))
"""


def run_fs(ref: str, budget: int, work: Path) -> dict[str, Any]:
    cache_dir = tempfile.mkdtemp(prefix="fs-cache-", dir=work)
    env = dict(os.environ, LAZYLAYER_MEMORY_CACHE_MB=str(budget))
    try:
        p = subprocess.run([sys.executable, "-c", FS_CHILD, ref, cache_dir], capture_output=True, text=True,
                           env=env, cwd=Path(__file__).resolve().parent.parent, timeout=3600, check=False)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    if p.returncode != 0:
        raise SystemExit(f"fs child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if r["bytes"] != r["expected"]:
        raise SystemExit(f"fs: read {r['bytes']:,} B, the tree says {r['expected']:,} B")
    r["bound"] = budget + SLACK + READAHEAD_CAP + IN_FLIGHT
    return r


# ---------------------------------------------------------------- the mount

class Mount:
    """``lazylayer mount -f`` as our child; ``pid`` is the daemon (the foreground process itself)."""

    def __init__(self, ref: str, work: Path, budget: int | None) -> None:
        self.mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
        self.cache = tempfile.mkdtemp(prefix="mount-cache-", dir=work)
        self.log_path = Path(self.cache + ".log")
        env = dict(os.environ)
        env.pop("LAZYLAYER_MEMORY_CACHE_MB", None)
        if budget is not None:
            env["LAZYLAYER_MEMORY_CACHE_MB"] = str(budget)
        exe = Path(sys.executable).parent / "lazylayer"
        cmd = [str(exe), "mount", "-f", "--cache-dir", self.cache, ref, self.mnt]
        self.logf = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
                                     env=env)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 120
        while not self.mounted():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"lazylayer mount failed: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)

    def mounted(self) -> bool:
        real = os.path.realpath(self.mnt)
        with open("/proc/mounts") as f:
            return any(ln.split()[1] == real for ln in f)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)
        if self.mounted():
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], check=False)
        self.logf.close()
        shutil.rmtree(self.cache, ignore_errors=True)
        try:
            os.rmdir(self.mnt)
        except OSError:
            pass


class Sampler(threading.Thread):
    """RSS of ``pid`` every ``every`` s, each the mean of ``reads`` reads 0.1 s apart: (s, mean, max)."""

    def __init__(self, pid: int, every: float, reads: int = 1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.reads = pid, every, reads
        self.samples: list[tuple[float, float, float]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(max(0.0, self.every - 0.1 * (self.reads - 1))):
            try:
                vals = [rss_mib(self.pid)]
                for _ in range(self.reads - 1):
                    time.sleep(0.1)
                    vals.append(rss_mib(self.pid))
            except OSError:
                return
            self.samples.append((round(time.monotonic() - self.t0, 1), round(sum(vals) / len(vals), 2),
                                 round(max(vals), 1)))

    def finish(self) -> list[tuple[float, float, float]]:
        self.stop.set()
        self.join()
        return self.samples


def run_mount(ref: str, budget: int, work: Path) -> dict[str, Any]:
    m = Mount(ref, work, budget)
    try:
        time.sleep(1.0)
        base = rss_mib(m.pid)
        reset_peak(m.pid)
        s = Sampler(m.pid, 1.0)
        s.start()
        t0 = time.monotonic()
        p = subprocess.run(f"tar -cf - -C {shlex.quote(m.mnt)} . | wc -c", shell=True, capture_output=True,
                           text=True, check=False)
        wall = time.monotonic() - t0
        samples = s.finish()
        if p.returncode != 0:
            raise SystemExit(f"tar through the mount failed: {p.stderr[-2000:]}")
        r = {"base": round(base, 1), "peak": round(status_mib(m.pid, "VmHWM"), 1),
             "final": round(rss_mib(m.pid), 1), "samples_max": max((v for _, v, _ in samples), default=base),
             "tar_bytes": int(p.stdout.split()[0]), "wall": round(wall, 1), **anon_info(m.pid),
             "bound": budget + SLACK + IN_FLIGHT}
    finally:
        m.close()
    return r


# ---------------------------------------------------------------- soak

def run_soak(ref: str, work: Path, seconds: float, every: float, warmup: float, seed: int) -> dict[str, Any]:
    m = Mount(ref, work, None)
    try:
        files: list[tuple[str, int]] = []
        for dirpath, _, names in os.walk(m.mnt):
            for n in names:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                if st.st_mode & 0o170000 == 0o100000 and st.st_size > 0:
                    files.append((p, st.st_size))
        weights = [s for _, s in files]
        time.sleep(1.0)
        ready = rss_mib(m.pid)
        stop = threading.Event()
        errors: list[str] = []
        counts = [0] * 4

        def reader(i: int) -> None:
            rng = random.Random(seed + i)
            try:
                while not stop.is_set():
                    (path, size), = rng.choices(files, weights)
                    off = rng.randrange(size) & ~0xFFF
                    end = min(size, off + rng.randrange(128 << 10, 4 << 20))
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        while off < end and not stop.is_set():
                            counts[i] += len(os.pread(fd, 128 << 10, off))
                            off += 128 << 10
                        # Out of the page cache again, so the next read of these pages reaches the daemon.
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
            except BaseException as exc:  # noqa: BLE001 - reported after the run
                errors.append(repr(exc))
                stop.set()

        s = Sampler(m.pid, every, reads=5)
        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        s.start()
        t0 = time.monotonic()
        peak_reset = False
        while time.monotonic() - t0 < seconds and not stop.is_set():
            time.sleep(1.0)
            if not peak_reset and time.monotonic() - t0 >= warmup * seconds:
                reset_peak(m.pid)
                peak_reset = True
        stop.set()
        for t in threads:
            t.join()
        samples = s.finish()
        peak = status_mib(m.pid, "VmHWM")
        extra = anon_info(m.pid)
    finally:
        m.close()
    if errors:
        raise SystemExit(f"soak readers failed: {errors}")
    after = [(t, v) for t, v, _ in samples if t >= warmup * seconds]
    base = after[0][1] if after else ready
    half = [(t, v) for t, v, _ in samples if t >= seconds / 2]
    return {"ready": round(ready, 1), "base": round(base, 1), "peak": round(peak, 1),
            "peak_sampled": max((mx for t, _, mx in samples if t >= warmup * seconds), default=base),
            "final": samples[-1][1] if samples else ready, "slope": slope(half),
            "slope_all_after_warmup": slope(after), "bytes": sum(counts), "files": len(files),
            "samples": samples, "seconds": seconds, "warmup": warmup, **extra}


# ---------------------------------------------------------------- report

def report(a: argparse.Namespace, cmd: str, image: dict[str, Any], res: dict[str, Any]) -> str:
    L = ["### Results of one run", "", f"Command: `{cmd}`", "", machine_line(),
         (f"- Python {sys.version.split()[0]}; lazylayer {package_version('lazylayer')}; fsspec "
         f"{package_version('fsspec')}; registry: Debian `docker-registry` on loopback"),
         f"- Image: {image['desc']}", ""]
    whole = [(k, v) for k, v in res.items() if k.startswith(("fs-", "mount-"))]
    if whole:
        L += [("| case | budget | after open, MiB | peak, MiB (growth) | final, MiB (growth) | bound: budget + 64 "
              "+ caps | growth vs budget + 64 | met? | read | anon MiB / anon maps at end | C pool |"),
              "|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|"]
        for key, r in whole:
            kind, budget = key.split("-")
            g_peak, g_final = r["peak"] - r["base"], r["final"] - r["base"]
            label = "`lazylayer://` (child process)" if kind == "fs" else "mount (`tar -c` of the mount; daemon)"
            read = (f"{r['files']:,} files, {r['bytes']:,} B, {r['wall']} s" if kind == "fs"
                    else f"tar stream {r['tar_bytes']:,} B, {r['wall']} s")
            pool = f"{r['pool'] / MiB:.1f} MiB" if "pool" in r else "—"
            L.append(f"| {label} | {budget} MiB | {r['base']:.1f} | {r['peak']:.1f} (+{g_peak:.1f}) | "
                     f"{r['final']:.1f} ({g_final:+.1f}) | {r['bound']} MiB | "
                     f"{g_peak:.1f} vs {int(budget) + SLACK} | {'met' if g_peak <= r['bound'] else '**not met**'} "
                     f"| {read} | {r['anon_mib']} / {r['anon_maps']} | {pool} |")
        L += ["", (f"Bound = budget + {SLACK} MiB + {READAHEAD_CAP} MiB read-ahead (`ImageFile`, `lazylayer://` "
              f"only) + {IN_FLIGHT} MiB in flight ((16 + 8) connections x 4 MiB parts). Peak = VmHWM after "
              "the after-open sample reset it.")]
    if "soak" in res:
        r = res["soak"]
        ok = r["slope"] < MAX_SLOPE
        L += ["", "| soak | value |", "|---|---|",
              (f"| length, readers | {r['seconds']:.0f} s, 4 threads, {r['bytes'] / 1e9:.1f} GB read from "
              f"{r['files']:,} files |"),
              (f"| daemon RSS when ready / at end of warm-up ({r['warmup']:.0%}) / at the end | {r['ready']} / "
              f"{r['base']} / {r['final']} MiB |"),
              (f"| peak after warm-up (VmHWM) | {r['peak']} MiB (+{r['peak'] - r['base']:.1f} over the after-warm-up "
              f"baseline; +{r['peak'] - r['ready']:.1f} over ready) |"),
              (f"| slope over the second half | {r['slope']:+.3f} MiB/min (target < {MAX_SLOPE}: "
              f"{'met' if ok else '**not met**'}) |"),
              f"| slope over everything after warm-up | {r['slope_all_after_warmup']:+.3f} MiB/min |",
              f"| anon MiB / anon mappings at the end | {r['anon_mib']} / {r['anon_maps']} |",
              "", "Samples (s, mean MiB): " + ", ".join(f"{t:.0f}: {v:.1f}" for t, v, _ in r["samples"][::6])]
    return "\n".join(L) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lazylayer-bench-memory"),
                    help="the image (kept between runs), registry storage, caches (default /tmp/lazylayer-bench-memory)")
    ap.add_argument("--only", default="fs,mount,soak", help="cases: fs, mount, soak (default all)")
    ap.add_argument("--budgets", default="32,256", help="LAZYLAYER_MEMORY_CACHE_MB values for fs and mount")
    ap.add_argument("--soak-seconds", type=float, default=600.0)
    ap.add_argument("--sample-every", type=float, default=5.0, help="soak: seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=0.2, help="soak: fraction of the run that is warm-up")
    ap.add_argument("--size-mb", type=int, default=1000, help="image size, MB (benchmarks/image.py t2)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the image")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--out", type=Path, help="also write the Markdown report here")
    ap.add_argument("--json", type=Path, help="write every number (and the soak samples) as JSON here")
    a = ap.parse_args(argv)
    a.only = {x.strip() for x in a.only.split(",") if x.strip()}
    a.budgets = [int(x) for x in a.budgets.split(",") if x.strip()]
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    cmd = shlex.join(["python", "-m", "benchmarks.memory", *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in ("docker-registry", "tar", "fusermount3"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    a.work.mkdir(parents=True, exist_ok=True)
    inp = build_image(a)
    tars = inp["tars"]
    image = {"desc": f"benchmarks/image.py's t2 image, {len(tars)} layers, "
                     f"{sum(p.stat().st_size for p in tars):,} B of tar"}
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="run-", dir=a.work) as tmp_s:
        tmp = Path(tmp_s)
        registry = RegistryServer(workdir=tmp / "registry")
        try:
            log(f"registry on {registry.host}; pushing the image")
            ref = push(inp["lazy"], registry.host)
            if "fs" in a.only:
                for b in a.budgets:
                    log(f"fs, budget {b} MiB")
                    res[f"fs-{b}"] = run_fs(ref, b, tmp)
                    log(f"  {res[f'fs-{b}']}")
            if "mount" in a.only:
                for b in a.budgets:
                    log(f"mount, budget {b} MiB")
                    res[f"mount-{b}"] = run_mount(ref, b, tmp)
                    log(f"  {res[f'mount-{b}']}")
            if "soak" in a.only:
                log(f"soak, {a.soak_seconds:.0f} s")
                res["soak"] = run_soak(ref, tmp, a.soak_seconds, a.sample_every, a.warmup, a.seed)
        finally:
            registry.close()
    md = report(a, cmd, image, res)
    print(md)
    if a.out:
        a.out.write_text(md)
    if a.json:
        a.json.write_text(json.dumps({"command": cmd, "results": res}, indent=1) + "\n")


if __name__ == "__main__":
    main()
