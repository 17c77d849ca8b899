#!/usr/bin/env python3
"""FUSE passthrough against the C server's own reads (issue 17), one run, as root.

The image of ``benchmarks/native.py`` (its four 50 MiB files) in a loopback
registry; every frame in the disk cache first (one read of each file through
a mount, untimed). Then, alternating a mount with ``passthrough=True`` and one
without, each a fresh ``lazylayer.Mount`` in a fresh process:

    first     open + read of the four files right after the mount: with
              passthrough each file is decoded into the disk cache (or its
              copy checked by sha256) at its first open, then read by the kernel
    cold      the same again after ``echo 3 > /proc/sys/vm/drop_caches``, in a new mount
              (passthrough: the decoded copies are on disk and checked once)
    again     a second read of the four files in the same mount (page cache)

Medians of ``--runs``, MB/s of file content; the same four files extracted on
ext4 with the page cache dropped, the limit.

    python -m benchmarks.mount_passthrough [--runs 5]

Results and the exact command go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks import native

FILES = [f"data/big{i}.bin" for i in range(native.DATA_FILES)]

CHILD = r"""
import json, os, sys, time
import lazylayer
from lazylayer.image import DiskCache
ref, mnt, cache, pt, drop = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", sys.argv[5] == "1"
files = json.loads(sys.argv[6])
def read_all():
    t = time.perf_counter(); n = 0
    for f in files:
        with open(os.path.join(mnt, f), "rb", buffering=0) as fh:
            while True:
                b = fh.read(1 << 20)
                if not b:
                    break
                n += len(b)
    return n / (time.perf_counter() - t) / 1e6
if drop:
    os.sync(); open("/proc/sys/vm/drop_caches", "w").write("3")
with lazylayer.Mount(ref, mnt, cache=DiskCache(cache), passthrough=pt, prefetch=None, readahead=False) as m:
    first = read_all()
    again = read_all()
    print(json.dumps({"first": first, "again": again, "passthrough": m.stats()["passthrough"],
                      "reads": m.stats()["reads"]}))
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    native.image_arguments(ap)
    a = ap.parse_args(argv)
    img = native.build(a)
    res: dict[str, list[float]] = {}
    with native.pushed(img, a.workdir) as (ref, work):  # on ext4, not tmpfs: passthrough needs it
        cache, mnt = f"{work}/cache", f"{work}/mnt"
        os.makedirs(mnt)

        def child(pt: bool, drop: bool) -> dict[str, float]:
            out = subprocess.run([sys.executable, "-c", CHILD, ref, mnt, cache, "1" if pt else "0",
                                  "1" if drop else "0", json.dumps(FILES)], check=True, capture_output=True,
                                 text=True).stdout
            return json.loads(out)

        child(False, False)  # every frame into the disk cache
        t0 = time.time()
        for run in range(a.runs):
            for pt in ((False, True) if run % 2 == 0 else (True, False)):
                name = "passthrough" if pt else "C server"
                for drop in (False, True):
                    r = child(pt, drop)
                    key = "cold" if drop else "first"
                    res.setdefault(f"{name} {key}", []).append(r["first"])
                    res.setdefault(f"{name} again", []).append(r["again"])
                    if pt:
                        res.setdefault("passthrough opens", []).append(r["passthrough"])
            os.sync()
            open("/proc/sys/vm/drop_caches", "w").write("3")
            t = time.perf_counter()
            n = 0
            for f in FILES:
                with open(os.path.join(img["extracted"], f), "rb", buffering=0) as fh:
                    while b := fh.read(1 << 20):
                        n += len(b)
            res.setdefault("ext4, page cache dropped", []).append(n / (time.perf_counter() - t) / 1e6)
    print(f"# {time.strftime('%Y-%m-%d')}: python -m benchmarks.mount_passthrough --runs {a.runs}; "
          f"{time.time() - t0:.0f} s")
    print("| case | MB/s (median) | runs |")
    print("|---|---:|---|")
    for key, xs in res.items():
        print(f"| {key} | {statistics.median(xs):,.0f} | {', '.join(f'{x:,.0f}' for x in xs)} |")


if __name__ == "__main__":
    main()
