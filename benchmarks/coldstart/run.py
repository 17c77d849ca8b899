#!/usr/bin/env python3
"""Container cold start: a full pull (as containerd does it) against a lazylayer mount.

The image
    Debian bookworm ``debootstrap --variant=minbase`` (layer 1) plus
    ``apt-get install python3 python3-pandas python3-matplotlib`` with
    recommends (layer 2, which also deletes /usr/share/doc/*,
    /var/lib/apt/lists/* and /var/cache/apt/* of layer 1: whiteouts), built
    with ``umoci`` as a normal gzip image and converted by lazylayer's
    ``Converter``.  Built once under ``--workdir`` (``build.py``;
    ``--rebuild`` redoes it).  Both images are pushed with ``skopeo`` to
    Debian's ``docker-registry`` (``benchmarks/fetch.py``'s ``Registry``,
    storage kept under the workdir; the pushed manifest digests are checked)
    and read through ``benchmarks/netem.py``'s ``ShapedProxy``: ``--rtt``
    10 ms added, each direction capped at ``--rate`` 125e6 B/s (1 Gbit/s).
    Every byte a case moves (both directions, headers included) and every
    HTTP request is counted by the proxy.

The workload
    ``chroot ROOT python3 -c "import pandas, matplotlib"`` with a minimal
    environment, where ROOT is an overlay mount: the image's layers as lower
    dirs, a fresh tmpfs as upper and work dir (a writable root, as in a
    container), /proc mounted and /dev bound.  A failing workload aborts the
    benchmark.

The cases (every run does a, d, b, c, p, f, g, i in that order; the clock runs
from nothing local to the workload's exit; unmounting is not timed)
    (a) full pull: manifest, then the config and every layer blob at once,
        each layer streamed through ``curl | pigz -dc | tar -x`` into its own
        snapshot dir, its whiteouts turned into overlayfs form when its tar
        ends (``pull.py``); overlay over the snapshot dirs; workload.
    (d) the reference for (c): overlay over (a)'s extracted layers, workload.
    (b) ``lazylayer mount -v --log F docker://PROXY/cs-lazy:cs MNT --cache-dir
        EMPTY`` (it returns once the FUSE mount is ready and leaves a daemon);
        overlay with MNT as the lower dir; workload.  Then the overlay is
        unmounted and ``lazylayer umount MNT`` waits for the daemon; its last
        log line gives its counters (frames fetched, frames from disk, EIO).
        (b) and (c) run with ``--no-prefetch``: on-demand fetching and read-ahead only.
    (c) the same with the disk cache (b) left, a new mount (a new daemon).
    (p) as (b) but with the default ``prefetch``: the plan ``lazylayer record``
        made of the workload before the runs (untimed), attached to the image
        in the registry as an OCI artifact, is found and fetched first.
    (f) as (a), but the workload reads every file: ``tar -cf - -C ROOT . |
        wc -c`` (GNU tar does not read file contents when the archive is
        /dev/null, hence the pipe); no /proc or /dev in ROOT.
    (g) as (b) with ``--fill`` (the whole image fetched in the background,
        and read-ahead), then (f)'s read-every-file workload.
    (z) as (b), but of the gzip image itself (``cs-gzip``: no lazy layer, no
        index): the mount fetches every layer whole, all at once, decoding
        each as it streams into a local copy, before it is ready; then the
        workload reads the local copies.  Not in the default cases.
    (e) as (b), but of the image as eStargz (``cs-esgz``: written by
        stargz-snapshotter's own library with its defaults, 4 MiB chunks and
        gzip level 9, from the gzip image's tars; ``build.build_estargz``),
        read lazily as it is.  Built, and pushed, only when case (e) is asked
        for and go is installed.  Not in the default cases.
    (k) as (e), but of the image as zstd:chunked written by Debian's skopeo
        (``cs-zchunk``: ``skopeo copy --dest-compress-format zstd:chunked``,
        its defaults: level 10, content-defined chunks; ``build.build_zstd_chunked``).
    (s) as (e), but of the image as stargz's zstd:chunked (``cs-szchunk``:
        the same library with ``-zstdchunked``, its defaults: 4 MiB chunks,
        zstd level 3).  (k) and (s) are built, and pushed, only when asked for.
    (x) as (z), the gzip image itself, but with its layers indexed on this
        machine: ``lazylayer index`` ran once before the runs (untimed, from
        the registry directly) into a side cache, and each run starts from a
        disk cache holding those two index files and nothing else; the layers
        are read lazily through them.  Not in the default cases.
    (y) as (x), but on "another machine": an empty disk cache and
        ``--gzip-indexes attached``: the indexes come from the artifact
        ``lazylayer index --attach`` attached to the image (untimed, before
        the runs), read at once, and each layer is checked in the background
        by a full fetch, which shares the link with the workload's reads.
        Not in the default cases.
    (r), (w), (q), (h): (b), (c), (p), (g) with ``--backend erofs``: the image
        mounted as EROFS, its data file filled on demand through fanotify
        (docs/mount.md, "The erofs backend"); (w) runs on the cache (r)
        left, so its data file holds what the workload reads.  Not in the
        default cases.
    (i) a diagnostic: ``python -c IMPORTS``, the modules the
        mount command loads before it forks: the part of (b) and (c)'s mount
        that is only starting the command.
    Before every case: the page cache is dropped (``sync; echo 3 >
    /proc/sys/vm/drop_caches``), then the registry's storage is read back
    in, because the registry stands for a remote machine whose cache is not
    ours to drop; snapshot dirs (a) and the cache dir (b) are emptied first.
    The ``lazylayer`` command runs with its bytecode compiled once into
    ``WORKDIR/pycache`` (``PYTHONPYCACHEPREFIX``), as an installed package
    has it: lazylayer is an editable install here and this machine sets
    PYTHONDONTWRITEBYTECODE.  Whatever a case leaves mounted is unmounted in
    ``finally`` blocks, and a daemon still running after ``lazylayer umount``
    is killed by pid (and reported).

Check (untimed, before the runs; ``--no-verify`` skips it)
    One full pull and one lazy mount, each under an overlay, are walked and
    compared: every entry's type, mode, owner, size, mtime, link target and
    device number, and the content of 100 random regular files
    (``verify.py``).

Targets (from the issues)
    (b) <= 0.15x (a); (c) <= 1.5x (d); (p) <= 0.08x (a); (g) <= 1.0x (f); (z) <= 1.0x (a);
    (e), (k), (s), (x), (y) <= 1.25x (b); the erofs backend: (w) <= 1.5x (d), (h) <= 0.8x (f),
    (q) <= 0.08x (a).  Ratios are between medians over
    ``--runs`` runs; every run is listed.  CPU-s of the whole machine and of
    the proxy are recorded from each clock's start to its stop: the machine
    has 2 cores, so (a)'s decompression, the proxy and anything else running
    compete for them.

Usage (as root)
    python -m benchmarks.coldstart.run [--runs N] [--out FILE.md] [--json FILE] [--workdir DIR]
        [--rebuild] [--cases a,d,b,c,p,f,g,i] [--rtt S] [--rate B/s] [--no-verify] [--quick] [--gzip-span SIZE]

    ``--quick`` is one run: a smoke check only (about 70 s once the image exists).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:
    sys.exit("run it from the repository root as a module: python -m benchmarks.coldstart.run --help")

from benchmarks.coldstart import build, mounts, verify
from benchmarks.coldstart.pull import GUNZIP, full_pull
from benchmarks.common import machine_line, package_version
from benchmarks.fetch import Registry, machine_busy
from benchmarks.netem import ShapedProxy

TAG = build.TAG
REPO_GZIP, REPO_LAZY, REPO_ESGZ, REPO_ZCHUNK, REPO_SZCHUNK = "cs-gzip", "cs-lazy", "cs-esgz", "cs-zchunk", "cs-szchunk"
TARGET_B, TARGET_C, TARGET_P, TARGET_G, TARGET_Z, TARGET_E = 0.15, 1.5, 0.08, 1.0, 1.0, 1.25
TARGET_W, TARGET_H = 1.5, 0.8  # issue 19 (the erofs backend): (w) <= 1.5x (d); (h) <= 0.8x (f); (q) as (p)
MB = 10**6
VERIFY_SAMPLE = 100
CLI = str(Path(sys.executable).with_name("lazylayer"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mount_cli_ready() -> bool:
    try:
        return subprocess.run([CLI, "mount", "--help"], check=False, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def manifest_digest(port: int, repo: str) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("HEAD", f"/v2/{repo}/manifests/{TAG}",
                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        r = c.getresponse()
        r.read()
        return r.getheader("Docker-Content-Digest") or ""
    finally:
        c.close()


def layout_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    return next(m["digest"] for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG)


def push(workdir: Path, port: int) -> None:
    """Push both layouts with skopeo (blobs already in the kept storage are skipped); check the digests."""
    for layout, repo in ((workdir / "gzip", REPO_GZIP), (workdir / "lazy", REPO_LAZY), (workdir / "esgz", REPO_ESGZ),
                         (workdir / "zchunk", REPO_ZCHUNK), (workdir / "szchunk", REPO_SZCHUNK)):
        if not layout.exists():
            continue  # (the peers' formats are built only for cases e, k, s)
        want = layout_digest(layout)
        if manifest_digest(port, repo) != want:
            subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{TAG}",
                            f"docker://127.0.0.1:{port}/{repo}:{TAG}"], check=True)
        got = manifest_digest(port, repo)
        if got != want:
            raise SystemExit(f"{repo}: the registry has manifest {got}, the layout {want}")


class Bench:
    """The cases; each returns ``{"total": s, phase: s, ...}``; ``timed`` adds CPU and the proxy's counts."""

    def __init__(self, a: argparse.Namespace, proxy: ShapedProxy, registry: Registry) -> None:
        self.a, self.proxy, self.registry = a, proxy, registry
        run = a.workdir / "run"
        self.snap, self.scratch, self.mnt, self.cache = run / "snap", run / "root", run / "mnt", run / "cache"
        self.log = run / "daemon.log"
        self.env = mounts.cli_env(a.workdir / "pycache")
        import lazylayer

        subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(lazylayer.__file__).parent)],
                       env=self.env, check=True)
        self.dirs: list[Path] = []
        self.start: dict[str, float] = {}
        self.stop: dict[str, float] = {}
        self.notes: list[str] = []  # anything odd seen (umount failures, leftovers)
        self.tar_bytes: set[int] = set()  # the read-all workload's archive sizes: one value if all roots agree
        self.gz_indexes: list[Path] = []  # (x, y) the gzip image's index files, built once
        self.plan = ""

    def drop(self) -> None:
        """Drop the page cache, then read the registry's storage back in: the remote side is not ours to chill."""
        mounts.drop_caches()
        mounts.warm([self.registry.workdir / "storage"])
        self.proxy.reset()
        self.start = self.mark()

    def mark(self) -> dict[str, float]:
        """CPU-s so far (machine, proxy, registry) and the proxy's counts: read when the clock starts and stops."""
        st = self.proxy.stats()
        return {"machine_cpu": machine_busy(), "proxy_cpu": st["cpu"], "registry_cpu": self.registry.cpu(),
                "bytes": st["s2c"]["bytes"] + st["c2s"]["bytes"], "requests": st["requests"],
                "connections": st["connections"]}

    def cleanup(self) -> None:
        """Whatever a failed or interrupted run left mounted."""
        for scratch in (self.scratch, self.scratch.with_name("verify")):
            mounts.Overlay([], scratch).unmount()
        msg = mounts.lazy_umount(CLI, self.mnt) if self.mnt.exists() else ""
        if msg:
            self.notes.append(msg)
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """Processes still running with our mount point on their command line (a daemon that did not exit)."""
        needle = str(self.mnt).encode()
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if pid != os.getpid() and needle in cmd.split(b"\0"):
                text = cmd.replace(b"\0", b" ").decode(errors="replace")[:120]
                self.notes.append(f"pid {pid} ({text}) still ran after umount: killed")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def workload(self, lowers: list[Path], read_all: bool = False) -> tuple[float, float]:
        """Overlay over ``lowers`` + the workload (or ``read_all``): (overlay mount s, workload s)."""
        t0 = time.perf_counter()
        ov = mounts.Overlay(lowers, self.scratch, system=not read_all).mount()
        try:
            t1 = time.perf_counter()
            if read_all:
                w, n = ov.read_all()
                self.tar_bytes.add(n)
            else:
                w = ov.run()
            self.stop = self.mark()
            return t1 - t0, w
        finally:
            ov.unmount()

    def pull(self) -> dict[str, Any]:
        mounts.empty_dir(self.snap)
        self.drop()
        t0 = time.perf_counter()
        pulled = full_pull("127.0.0.1", self.proxy.port, REPO_GZIP, TAG, self.snap)
        pulled["pull"] = time.perf_counter() - t0
        self.dirs = pulled["dirs"]
        return pulled

    def case_a(self) -> dict[str, float]:
        pulled = self.pull()
        ov, w = self.workload(self.dirs)
        layers = {f"layer {i + 1} done": t + pulled["manifest_s"] for i, t in enumerate(pulled["layer_s"])}
        return {"total": pulled["pull"] + ov + w, "manifest": pulled["manifest_s"], **layers, "pull": pulled["pull"],
                "overlay": ov, "workload": w, "whiteouts": pulled["whiteouts"]}

    def case_d(self) -> dict[str, float]:
        self.drop()
        ov, w = self.workload(self.dirs)
        return {"total": ov + w, "overlay": ov, "workload": w}

    def mount(self, *extra: str, repo: str = REPO_LAZY) -> float:
        self.log.unlink(missing_ok=True)
        t0 = time.perf_counter()
        mounts.lazy_mount(CLI, f"docker://127.0.0.1:{self.proxy.port}/{repo}:{TAG}", self.mnt, self.cache,
                          self.log, self.env, extra=extra)
        return time.perf_counter() - t0

    def record(self) -> str:
        """Untimed: ``lazylayer record`` the workload, the plan attached to the image in the registry."""
        ref = f"docker://127.0.0.1:{self.registry.port}/{REPO_LAZY}:{TAG}"
        mounts.empty_dir(self.cache)
        argv = [CLI, "record", ref, "--cache-dir", str(self.cache), "--", *mounts.WORKLOAD]
        r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=600, env=self.env)
        if r.returncode:
            raise RuntimeError(f"lazylayer record exited {r.returncode}: {r.stderr.strip()[-2000:]}")
        self.plan = r.stderr.strip().splitlines()[-1]
        return self.plan

    def umount(self) -> dict[str, int]:
        msg = mounts.lazy_umount(CLI, self.mnt)
        if msg:
            self.notes.append(msg)
        self.kill_leftovers()
        counters = mounts.daemon_counters(self.log)
        if counters.get("eio"):
            self.notes.append(f"the daemon counted {counters['eio']} EIO: {self.log.read_text()[-1000:]}")
        return counters

    def lazy(self, empty_cache: bool, *extra: str, read_all: bool = False, repo: str = REPO_LAZY) -> dict[str, float]:
        if empty_cache:
            mounts.empty_dir(self.cache)
        self.drop()
        try:
            m = self.mount(*extra, *self.a.mount_arg, repo=repo)
            ov, w = self.workload([self.mnt], read_all)
        finally:
            counters = self.umount()
        return {"total": m + ov + w, "mount": m, "overlay": ov, "workload": w, **counters}

    def case_b(self) -> dict[str, float]:
        return self.lazy(True, "--no-prefetch")

    def case_c(self) -> dict[str, float]:
        return self.lazy(False, "--no-prefetch")

    def case_p(self) -> dict[str, float]:
        return self.lazy(True)  # the plan attached to the image (record()) is found and used by default

    def case_z(self) -> dict[str, float]:
        """The gzip image itself (no lazy layers, no index): the mount fetches every layer whole first."""
        return self.lazy(True, "--no-prefetch", repo=REPO_GZIP)

    def case_e(self) -> dict[str, float]:
        """The image as eStargz (stargz-snapshotter's library, its defaults), read lazily as it is."""
        return self.lazy(True, "--no-prefetch", repo=REPO_ESGZ)

    def case_k(self) -> dict[str, float]:
        """The image as zstd:chunked (skopeo, its defaults), read lazily as it is."""
        return self.lazy(True, "--no-prefetch", repo=REPO_ZCHUNK)

    def case_s(self) -> dict[str, float]:
        """The image as stargz's zstd:chunked (its defaults), read lazily as it is."""
        return self.lazy(True, "--no-prefetch", repo=REPO_SZCHUNK)

    def index_gzip(self) -> None:
        """Untimed, once: ``lazylayer index --attach`` of the gzip image, from the registry directly,
        into a side cache (case x seeds each run's cache from it; case y finds the artifact)."""
        if self.gz_indexes:
            return
        side = self.cache.with_name("gzindex-cache")
        mounts.empty_dir(side)
        ref = f"docker://127.0.0.1:{self.registry.port}/{REPO_GZIP}:{TAG}"
        t0 = time.perf_counter()
        span = ["--span", self.a.gzip_span] if self.a.gzip_span else []
        r = subprocess.run([CLI, "index", ref, "--cache-dir", str(side), "--attach", "-q", *span], check=False,
                           capture_output=True, text=True, timeout=1200, env=self.env)
        if r.returncode:
            raise RuntimeError(f"lazylayer index exited {r.returncode}: {r.stderr.strip()[-2000:]}")
        self.gz_indexes = sorted(side.rglob("files/gzindex-*"))
        size = sum(p.stat().st_size for p in self.gz_indexes)
        self.notes.append(f"(x, y) `lazylayer index --attach` of the gzip image, before the runs (untimed, no "
                          f"shaping): {time.perf_counter() - t0:.1f} s, {len(self.gz_indexes)} indexes of "
                          f"{size:,} B in all")

    def case_x(self) -> dict[str, float]:
        """The gzip image, its layers indexed on this machine: a cache holding the indexes only."""
        self.index_gzip()
        mounts.empty_dir(self.cache)
        files = self.cache / "v1" / "files"
        files.mkdir(parents=True, exist_ok=True)
        for p in self.gz_indexes:
            shutil.copyfile(p, files / p.name)
        return self.lazy(False, "--no-prefetch", repo=REPO_GZIP)

    def case_y(self) -> dict[str, float]:
        """The gzip image on another machine: the indexes attached to it, checked in the background."""
        self.index_gzip()
        return self.lazy(True, "--no-prefetch", "--gzip-indexes", "attached", repo=REPO_GZIP)

    def case_r(self) -> dict[str, float]:
        """(b) with the erofs backend: the kernel serves the image, the daemon fills what misses."""
        return self.lazy(True, "--no-prefetch", "--backend", "erofs")

    def case_w(self) -> dict[str, float]:
        """(r) again with the cache (r) left: its data file holds what the workload reads."""
        return self.lazy(False, "--no-prefetch", "--backend", "erofs")

    def case_q(self) -> dict[str, float]:
        """(p) with the erofs backend: the recorded plan fetched and written to the data file first."""
        return self.lazy(True, "--backend", "erofs")

    def case_h(self) -> dict[str, float]:
        """(g) with the erofs backend: --fill, then read every file."""
        return self.lazy(True, "--no-prefetch", "--fill", "--backend", "erofs", read_all=True)

    def case_f(self) -> dict[str, float]:
        pulled = self.pull()
        ov, w = self.workload(self.dirs, read_all=True)
        return {"total": pulled["pull"] + ov + w, "pull": pulled["pull"], "overlay": ov, "workload": w}

    def case_g(self) -> dict[str, float]:
        return self.lazy(True, "--no-prefetch", "--fill", read_all=True)

    def case_i(self) -> dict[str, float]:
        """What starting the ``lazylayer`` command costs before it does anything: Python and its imports."""
        self.drop()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], env=self.env, check=True)
        t = time.perf_counter() - t0
        self.stop = self.mark()
        return {"total": t}

    def verify(self) -> str:
        """Untimed: pull and mount, compare the two roots (``verify.py``); a sentence for the report."""
        self.pull()
        mounts.empty_dir(self.cache)
        self.mount()
        full = mounts.Overlay(self.dirs, self.scratch, system=False).mount()
        lazy = mounts.Overlay([self.mnt], self.scratch.with_name("verify"), system=False).mount()
        try:
            n, diffs = verify.compare(full.merged, lazy.merged, VERIFY_SAMPLE)
        finally:
            lazy.unmount()
            full.unmount()
            self.umount()
        if diffs:
            self.notes += [f"roots differ: {d}" for d in diffs]
            return f"**the two roots differ** ({len(diffs)} differences listed under Notes)"
        return (f"the two roots are identical: {n:,} entries (type, mode, owner, size, mtime, link target, "
                f"device) and the content of {VERIFY_SAMPLE} random regular files")


CASES = {
    "a": "(a) full pull (all layers at once, each `curl`, `pigz -dc`, `tar -x` piped) + overlay + workload",
    "d": "(d) workload on the extracted layers, page cache dropped",
    "b": "(b) `lazylayer mount`, empty cache + overlay + workload",
    "c": "(c) `lazylayer mount`, warm disk cache + overlay + workload",
    "p": "(p) `lazylayer mount` with the recorded plan (attached in the registry), empty cache + overlay + workload",
    "f": "(f) full pull as (a) + overlay + read every file (`tar -cf - -C ROOT . \\| wc -c`)",
    "g": "(g) `lazylayer mount --fill`, empty cache + overlay + read every file (as f)",
    "e": "(e) `lazylayer mount` of the image as eStargz (4 MiB chunks, gzip -9: stargz's defaults), read lazily "
         "as it is, empty cache + overlay + workload",
    "k": "(k) `lazylayer mount` of the image as zstd:chunked (skopeo 1.9.3, its defaults: level 10), read lazily "
         "as it is, empty cache + overlay + workload",
    "s": "(s) `lazylayer mount` of the image as stargz's zstd:chunked (4 MiB chunks, level 3: its defaults), read "
         "lazily as it is, empty cache + overlay + workload",
    "z": "(z) `lazylayer mount` of the gzip image itself (not lazy, no index: every layer fetched whole first), "
         "empty cache + overlay + workload",
    "x": "(x) `lazylayer mount` of the gzip image, its layers indexed here before (`lazylayer index`): a cache "
         "holding only the indexes + overlay + workload",
    "y": "(y) `lazylayer mount --gzip-indexes attached` of the gzip image, empty cache: the indexes attached to it, "
         "each layer checked by a background full fetch + overlay + workload",
    "r": "(r) `lazylayer mount --backend erofs`, empty cache + overlay + workload",
    "w": "(w) `lazylayer mount --backend erofs`, the cache (r) left (its data file warm) + overlay + workload",
    "q": "(q) `lazylayer mount --backend erofs` with the recorded plan, empty cache + overlay + workload",
    "h": "(h) `lazylayer mount --backend erofs --fill`, empty cache + overlay + read every file (as f)",
    "i": "(diagnostic) starting the command: `python -c IMPORTS` (see below), page cache dropped",
}
# What `lazylayer mount docker://...` loads before it forks its daemon.
IMPORTS = "import lazylayer.cli, lazylayer.image, lazylayer.mount, lazylayer.registry, lazylayer.remote"
PHASES = ("manifest", "pull", "mount", "overlay", "workload")


def timed(bench: Bench, case: str) -> dict[str, float]:
    """Run one case; add what the machine, the proxy and the registry did between its clock's start and stop."""
    r = getattr(bench, f"case_{case}")()
    r.update({k: bench.stop[k] - bench.start[k] for k in ("machine_cpu", "proxy_cpu", "registry_cpu")})
    r.update({k: bench.stop[k] for k in ("bytes", "requests", "connections")})
    return r


# ----------------------------------------------------------------- report


def med(v: list[float]) -> float:
    return statistics.median(v)


def image_lines(info: dict[str, Any]) -> list[str]:
    layers = info["layers"]
    L = ["| layer | tar (uncompressed) | gzip blob | lazy blob | entries | whiteouts (opaque) |",
         "|---|---:|---:|---:|---:|---:|"]
    for i, (x, lz) in enumerate(zip(layers, info["lazy"], strict=True)):
        L.append(f"| {i + 1} | {x['tar']:,} | {x['gzip']:,} | {lz:,} | {x['entries']:,} | "
                 f"{x['whiteouts']:,} ({x['opaque']}) |")
    tot = {k: sum(x[k] for x in layers) for k in ("tar", "gzip", "entries", "whiteouts", "opaque")}
    L.append(f"| total | {tot['tar']:,} | {tot['gzip']:,} | {sum(info['lazy']):,} | {tot['entries']:,} | "
             f"{tot['whiteouts']:,} ({tot['opaque']}) |")
    return L


def report(a: argparse.Namespace, cmd: str, info: dict[str, Any], res: dict[str, list[dict[str, float]]],
           phases: dict[str, float], notes: list[str], skipped: str, verified: str, bench_plan: str = "",
           tar_bytes: set[int] | None = None) -> str:
    tar_bytes = tar_bytes or set()
    tar_v = subprocess.run(["tar", "--version"], check=False, capture_output=True, text=True).stdout
    tar_v = tar_v.split("\n")[0]
    gz = subprocess.run([GUNZIP[0], "--version"], check=False, capture_output=True, text=True)
    gz_v = (gz.stdout or gz.stderr).split("\n")[0]
    L = ["### Cold start: full pull vs lazylayer mount", "", f"Command: `{cmd}`", "", machine_line(),
         (f"- Python {platform.python_version()}; lazylayer {package_version('lazylayer')}; "
          f"{Registry(a.workdir).version()}; {tar_v}; {gz_v}"),
         (f"- Link: `ShapedProxy`, +{a.rtt * 1e3:g} ms round trip, {a.rate * 8 / 1e9:g} Gbit/s each way; "
          "bytes = both directions through the proxy, headers included; MB = 10^6 B."),
         f"- Workload: `chroot ROOT {shlex.join(mounts.WORKLOAD)}` on an overlay (tmpfs upper dir).",
         f"- Median of {a.runs} run(s) per case; all runs listed in order.", "",
         "#### Image", "",
         (f"Debian bookworm minbase (layer 1) + `apt-get install {' '.join(info['packages'])}` with recommends "
          f"(layer 2, which deletes `{'`, `'.join(info['delete'])}` of layer 1). Gzip layers written by umoci; "
          "lazy layers by lazylayer's `Converter`."), "", *image_lines(info), "",
         "#### Results", "",
         ("| case | median s | runs, s | phases (median s) | MB via proxy | requests "
          "| CPU-s: machine, proxy, registry | daemon: frames fetched, from disk, from local files |"),
         "|---|---:|---|---|---:|---:|---|---|"]
    for key, label in CASES.items():
        runs = res.get(key)
        if not runs:
            continue
        tot = [r["total"] for r in runs]
        ph = ", ".join(f"{p} {med([r[p] for r in runs]):.3f}" for p in runs[0] if p in PHASES or p.endswith(" done"))
        daemon = (f"{med([r['frames_fetched'] for r in runs]):.0f}, {med([r['frames_from_disk'] for r in runs]):.0f}, "
                  f"{med([r.get('frames_local', 0) for r in runs]):.0f}" if "frames_fetched" in runs[0] else "—")
        L.append(f"| {label} | {med(tot):.3f} | {', '.join(f'{t:.3f}' for t in tot)} | {ph} | "
                 f"{med([r['bytes'] for r in runs]) / MB:,.1f} | {med([r['requests'] for r in runs]):.0f} | "
                 f"{med([r['machine_cpu'] for r in runs]):.1f}, {med([r['proxy_cpu'] for r in runs]):.1f}, "
                 f"{med([r.get('registry_cpu', 0.0) for r in runs]):.1f} | "
                 f"{daemon} |")
    L += ["", ("Medians over the runs; CPU-s are the whole machine's busy time, the proxy's and the registry's own "
          "(both stand for the remote side, yet share this machine's cores), from the clock's start to the "
          "workload's exit. Daemon counters are the mount's own (`-v` log line at unmount): frames "
          "fetched from the registry, frame loads served from the disk cache, and frames read from local layer "
          "files (the copies of (z)'s layers, fetched whole).")]
    if res.get("i"):
        L += ["", f"IMPORTS = `{IMPORTS}`"]
    if verified:
        L += ["", f"Check before timing (untimed): {verified}."]
    if res.get("p") or res.get("q"):
        L += ["", f"The plan of (p) and (q), recorded before the runs (untimed): `{bench_plan}`."]
    if res.get("f") or res.get("g") or res.get("h"):
        sizes = ", ".join(f"{n:,}" for n in sorted(tar_bytes))
        L += ["", f"Archive bytes `tar` wrote in (f) and (g): {sizes} "
              f"({'the same in every run' if len(tar_bytes) == 1 else '**they differ**'})."]
    L += ["", "#### Targets", "", "| target | measured | met? |", "|---|---|---|"]

    def ratio_row(num: str, den: str, target: float | None, text: str) -> None:
        if res.get(num) and res.get(den):
            n, d = med([r["total"] for r in res[num]]), med([r["total"] for r in res[den]])
            met = "—" if target is None else "met" if n / d <= target else "**not met**"
            L.append(f"| {text} | {n:.3f} s / {d:.3f} s = **{n / d:.3f}x** | {met} |")
        else:
            L.append(f"| {text} | not measured{skipped} | — |")

    ratio_row("b", "a", TARGET_B, f"(b) lazy mount, empty cache <= {TARGET_B}x (a) full pull, end to end")
    ratio_row("c", "d", TARGET_C, f"(c) lazy mount, warm disk cache <= {TARGET_C}x (d) extracted root")
    ratio_row("p", "a", TARGET_P, f"(p) lazy mount with the recorded plan <= {TARGET_P}x (a) full pull")
    ratio_row("g", "f", TARGET_G, f"(g) lazy mount, read every file <= {TARGET_G}x (f) full pull + the same read")
    ratio_row("z", "a", TARGET_Z, f"(z) mount of the gzip image, no index <= {TARGET_Z}x (a) full pull + workload")
    ratio_row("e", "b", TARGET_E, f"(e) mount of the eStargz image <= {TARGET_E}x (b), the same in lazylayer's format")
    ratio_row("k", "b", TARGET_E, f"(k) mount of skopeo's zstd:chunked image <= {TARGET_E}x (b)")
    ratio_row("s", "b", TARGET_E, f"(s) mount of stargz's zstd:chunked image <= {TARGET_E}x (b)")
    ratio_row("r", "b", None, "(r) erofs backend, empty cache, against (b) the FUSE mount (a comparison, no target)")
    ratio_row("w", "d", TARGET_W, f"(w) erofs backend, warm data file <= {TARGET_W}x (d) the workload on the "
              "extracted root")
    ratio_row("q", "a", TARGET_P, f"(q) erofs backend with the recorded plan <= {TARGET_P}x (a) full pull")
    ratio_row("h", "f", TARGET_H, f"(h) erofs backend --fill, read every file <= {TARGET_H}x (f) full pull + the "
              "same read")
    ratio_row("x", "b", TARGET_E, f"(x) mount of the gzip image, indexed here <= {TARGET_E}x (b)")
    ratio_row("y", "b", TARGET_E, f"(y) mount of the gzip image, indexes attached (checked) <= {TARGET_E}x (b)")
    L += ["", "#### Time taken by the benchmark", "",
          ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + "."]
    if info.get("phases"):
        L.append("Image build (cached since): " + ", ".join(f"{k} {v:.0f} s" for k, v in info["phases"].items()) + ".")
    if notes:
        L += ["", "#### Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="runs per case, median reported (default 5; 1 with --quick)")
    ap.add_argument("--cases", default="a,d,b,c,p,f,g,i",
                    help="cases to run, in this order per run (default a,d,b,c,p,f,g,i; i: the lazylayer CLI's "
                         "imports)")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/lazylayer-coldstart"),
                    help="image, registry storage and scratch dirs (default /var/tmp/lazylayer-coldstart)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the image even if it exists")
    ap.add_argument("--rtt", type=float, default=0.010, help="round trip added by the link, s (default 0.010)")
    ap.add_argument("--rate", type=float, default=125e6, help="link rate, bytes/s (default 125e6 = 1 Gbit/s)")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the untimed check that both roots are the same (one extra pull and mount)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 run")
    ap.add_argument("--mount-arg", action="append", default=[],
                    help="an extra argument for every `lazylayer mount` (repeat it; for experiments)")
    ap.add_argument("--gzip-span", help="(x, y) `lazylayer index --span` (default: its default)")
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--json", type=Path, help="write all numbers as JSON here")
    a = ap.parse_args(argv)
    a.runs = a.runs or (1 if a.quick else 5)
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    if bad := set(cases) - set(CASES):
        ap.error(f"unknown cases {sorted(bad)}")
    if "d" in cases and "a" not in cases:
        ap.error("case d needs case a (it runs on a's extracted layers)")
    if os.geteuid() != 0:
        raise SystemExit("run as root: it mounts overlays, drops the page cache and chroots")
    cmd = shlex.join(["python", "-m", "benchmarks.coldstart.run", *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in ("docker-registry", "skopeo", "umoci", "debootstrap", "curl", "tar", GUNZIP[0]):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    skipped = ""
    if ({"b", "c", "p", "g", "z", "e", "k", "s", "x", "y", "r", "w", "q", "h"} & set(cases)) and \
            not mount_cli_ready():
        skipped = f" (`{CLI} mount --help` failed: the mount command is missing)"
        log("lazylayer mount is not available: skipping (b), (c), (p), (g), (z), (e), (k), (s), (x) and (y)")
        cases = [c for c in cases if c not in "bcpgzeksxyrwqh"]

    phases: dict[str, float] = {}
    t = time.perf_counter()
    info = build.build(a.workdir, a.rebuild)
    if "e" in cases and build.build_estargz(a.workdir, a.rebuild) is None:
        cases = [c for c in cases if c != "e"]
    if "s" in cases and build.build_estargz(a.workdir, a.rebuild, zstd=True) is None:
        cases = [c for c in cases if c != "s"]
    if "k" in cases:
        build.build_zstd_chunked(a.workdir, a.rebuild)
    phases["image (build or reuse)"] = time.perf_counter() - t
    reg_dir = a.workdir / "registry"
    reg_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(reg_dir).start()
    res: dict[str, list[dict[str, float]]] = {}
    bench: Bench | None = None
    verified = ""
    try:
        t = time.perf_counter()
        push(a.workdir, registry.port)
        phases["push"] = time.perf_counter() - t
        with ShapedProxy(("127.0.0.1", registry.port), rtt=a.rtt, rate=a.rate) as proxy:
            bench = Bench(a, proxy, registry)
            bench.cleanup()
            if not a.no_verify and "a" in cases and "b" in cases:
                t = time.perf_counter()
                verified = bench.verify()
                phases["verify"] = time.perf_counter() - t
                log(f"verify: {verified}")
            if "p" in cases or "q" in cases:
                t = time.perf_counter()
                log(f"record: {bench.record()}")
                phases["record"] = time.perf_counter() - t
            t = time.perf_counter()
            for run in range(a.runs):
                for c in cases:
                    r = timed(bench, c)
                    res.setdefault(c, []).append(r)
                    log(f"run {run + 1}/{a.runs} ({c}): {r['total']:.3f} s, {r['bytes'] / MB:,.1f} MB, "
                        + ", ".join(f"{k} {v:.3f}" for k, v in r.items()
                                    if k in ("pull", "mount", "overlay", "workload")))
            phases[f"{a.runs} run(s) of {','.join(cases)}"] = time.perf_counter() - t
    finally:
        if bench is not None:
            bench.cleanup()
            shutil.rmtree(bench.snap, ignore_errors=True)
        registry.close()
    text = report(a, cmd, info, res, phases, bench.notes if bench else [], skipped, verified,
                  bench.plan if bench else "", bench.tar_bytes if bench else set())
    print(text)
    if a.out:
        a.out.write_text(text)
    if a.json:
        a.json.write_text(json.dumps({"command": cmd, "image": info, "results": res, "phases": phases}, indent=1))


if __name__ == "__main__":
    main()
