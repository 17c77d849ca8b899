#!/usr/bin/env python3
"""Daemon CPU per FUSE request: the C server (issue 17) against the mfusepy mount before it, one run.

Each implementation serves the image of ``benchmarks/native.py`` (63,000
entries and five data files, a local OCI layout) in a server process of its
own; a client process runs a loop against the mount; the server's CPU time
(user + system of the whole process, read with ``os.times()`` inside it) over
the loop is divided by the requests the server answered in that time.

    stat      ``os.stat`` of the five data files in turn, on a mount whose entry
              and attribute timeouts are 0, so every call reaches the server
              (a LOOKUP and a GETATTR, or so): requests counted by the server.
    read4k    random 4 KiB ``os.pread`` of a 50 MiB file read once before (its
              frames in the memory cache), on a mount that answers OPEN with
              FOPEN_DIRECT_IO, so every read reaches the server (C server only:
              the mfusepy mount has no direct-I/O mode; its reads went through
              the page cache).

``c, one CPU`` is the C server with the server and the client both pinned to
CPU 0: a diagnostic (no thread is woken on another CPU).

The client's own rate (operations/s, wall) is reported next to the same loop
on the files extracted to local disk (ext4, page cache warm), the physical
limit.  Implementations alternate within each run; medians of ``--runs``.

``--baseline REV`` (default 7beb0c5, the mfusepy mount before the native
core) is built in a git worktree as ``benchmarks/native.py`` does; the old
mount's requests are counted by wrapping its Python operations (libfuse
answers OPENDIR, RELEASE, FLUSH and ACCESS itself, uncounted: its figure is an
upper bound, a little high).  mfusepy must be installed (it is no longer a
dependency).

    python -m benchmarks.mount_requests [--runs 5] [--ops 20000] [--baseline REV|none]

Results and the exact command go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import native

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
FILES = ["data/small16m.bin"] + [f"data/big{i}.bin" for i in range(native.DATA_FILES)]

# The server: mount, say "ready", then answer "cpu" with its CPU time and request count, "quit" to end.
SERVER = r"""
import json, os, sys, threading
sys.path.insert(0, sys.argv[1])
kind, ref, mnt = sys.argv[2], sys.argv[3], sys.argv[4]
if kind == "c":
    import lazylayer
    m = lazylayer.Mount(ref, mnt, timeout=0, direct_io=True, cache=None, threads=int(os.environ.get("LL_BENCH_THREADS", "2")))
    count = lambda: m.stats()["requests"]
    stop = m.close
else:
    from lazylayer.image import Image
    from lazylayer.mount import fuse as F
    F.CACHE_TIMEOUT = 0.0
    img = Image(ref, cache=None)
    n = [0]
    class Counted(F.ImageOperations):
        pass
    for name in ("getattr", "readlink", "readdir", "readdir_plus", "open", "read", "getxattr", "listxattr", "statfs"):
        def wrap(f):
            def g(self, *a, **k):
                n[0] += 1
                return f(self, *a, **k)
            return g
        setattr(Counted, name, wrap(getattr(F.ImageOperations, name)))
    F.ImageOperations = Counted
    ready = threading.Event()
    t = threading.Thread(target=F.serve, args=(img, mnt), kwargs={"on_ready": ready.set}, daemon=True)
    t.start()
    ready.wait()
    count = lambda: n[0]
    def stop():
        F.unmount(mnt) if hasattr(F, "unmount") else None
        import subprocess; subprocess.run(["fusermount3", "-u", mnt])
        t.join()
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "cpu":
        t_ = os.times()
        print(json.dumps({"cpu": t_.user + t_.system, "requests": count()}), flush=True)
    else:
        break
stop()
"""


def log(msg: str) -> None:
    print(f"[mount_requests] {msg}", file=sys.stderr, flush=True)


class Server:
    def __init__(self, tree: Path, kind: str, ref: str, mnt: str, cpu: int | None = None) -> None:
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self.p = subprocess.Popen([*pin, PY, "-c", SERVER, str(tree), kind, ref, mnt], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.p.stdout is not None and self.p.stdin is not None
        line = self.p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the {kind} server did not start: {line!r}")

    def sample(self) -> dict[str, float]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write("cpu\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write("quit\n")
        self.p.stdin.close()
        self.p.wait(60)


def stat_loop(root: str, ops: int) -> float:
    paths = [os.path.join(root, f) for f in FILES]
    t = time.perf_counter()
    for i in range(ops):
        os.stat(paths[i % len(paths)])
    return ops / (time.perf_counter() - t)


def read_loop(root: str, ops: int, warm: bool = False) -> float:
    path = os.path.join(root, FILES[1])
    size = os.path.getsize(path)
    rng = random.Random(42)
    offs = [rng.randrange(0, size // 4096) * 4096 for _ in range(ops)]
    fd = os.open(path, os.O_RDONLY)
    try:
        while warm and os.read(fd, 1 << 20):  # read once: frames in the memory cache (page cache for ext4)
            pass
        t = time.perf_counter()
        for off in offs:
            os.pread(fd, 4096, off)
        return ops / (time.perf_counter() - t)
    finally:
        os.close(fd)


def measure(server: Server | None, root: str, what: str, ops: int, cpu: int | None = None) -> dict[str, float]:
    allowed = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        return _measure(server, root, what, ops)
    finally:
        os.sched_setaffinity(0, allowed)


def _measure(server: Server | None, root: str, what: str, ops: int) -> dict[str, float]:
    loop = stat_loop if what == "stat" else read_loop
    if what == "read4k":
        read_loop(root, 16, warm=True)  # the file read once, before the timed part
    else:
        stat_loop(root, 16)
    before = server.sample() if server else None
    rate = loop(root, ops)
    out = {"rate": rate}
    if server and before:
        after = server.sample()
        req = after["requests"] - before["requests"]
        out["requests"] = req
        out["us_per_request"] = (after["cpu"] - before["cpu"]) / max(1, req) * 1e6
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    native.image_arguments(ap)
    ap.add_argument("--ops", type=int, default=20000)
    ap.add_argument("--baseline", default="7beb0c5")
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    img = native.build(a)
    ref = f"oci:{img['lazy']}:{native.TAG}"
    old_tree = native.baseline_tree(a)
    # "c, one CPU": the C server and the client both pinned to CPU 0, a diagnostic of what a request
    # costs without waking a thread on another (idle) CPU, which is most of it on this VM.
    kinds = [("c", ROOT), ("c, one CPU", ROOT)] + ([("mfusepy", old_tree)] if old_tree else [])
    res: dict[str, list[dict[str, float]]] = {}
    t0 = time.time()
    for run in range(a.runs):
        for what in ("stat", "read4k"):
            res.setdefault(f"local {what}", []).append(measure(None, str(img["extracted"]), what, a.ops))
            for kind, tree in kinds if run % 2 == 0 else kinds[::-1]:
                if kind == "mfusepy" and what == "read4k":
                    continue
                cpu = 0 if "one CPU" in kind else None
                with tempfile.TemporaryDirectory(prefix="llmnt-") as mnt:
                    s = Server(tree, kind.split(",")[0], ref, mnt, cpu)
                    try:
                        res.setdefault(f"{kind} {what}", []).append(measure(s, mnt, what, a.ops, cpu))
                    finally:
                        s.close()
        log(f"run {run + 1}/{a.runs} done")
    print(f"# {time.strftime('%Y-%m-%d')}: python -m benchmarks.mount_requests --runs {a.runs} --ops {a.ops} "
          f"--baseline {a.baseline}; {time.time() - t0:.0f} s")
    print("| case | ops/s (median) | requests per op | daemon CPU per request, µs (median; all) |")
    print("|---|---|---|---|")
    for key, rows in res.items():
        rate = statistics.median(r["rate"] for r in rows)
        if "us_per_request" in rows[0]:
            us = [r["us_per_request"] for r in rows]
            per = statistics.median(r["requests"] for r in rows) / a.ops
            print(f"| {key} | {rate:,.0f} | {per:.2f} | {statistics.median(us):.1f} "
                  f"({', '.join(f'{u:.1f}' for u in us)}) |")
        else:
            print(f"| {key} | {rate:,.0f} | — | — |")


if __name__ == "__main__":
    main()
