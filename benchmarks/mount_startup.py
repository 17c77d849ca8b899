#!/usr/bin/env python3
"""How fast a mount of a cached image is ready (issue 17): the command and the Python API, one run.

The image of ``benchmarks/native.py`` (63,000 entries) is pushed to a
loopback ``docker-registry`` (``native.pushed``); its index goes into a fresh disk cache on the
first mount (not timed). Then:

    cli     ``lazylayer mount -q --cache-dir C docker://HOST/bench/n63k:v1 DIR``
            end to end (interpreter start, imports, the tag resolved over the
            network, the daemon forked, the mount ready), then a ``stat`` in
            it and ``lazylayer umount``; ``--runs`` times, median.
    api     in a fresh process each time: the imports, then the image
            opened (``Image(ref, cache=DiskCache(C))``: manifest and config
            fetched, index mapped), then ``lazylayer.Mount(img, dir)`` until it
            returns (fetcher spawned, mount(2), INIT answered), then the first
            ``stat``; with
            ``backend="erofs"`` too (issue 19: the erofs module imported, the
            supervisor started, the kept metadata image checked, the data
            file readied and marked, mount(2)), interleaved with the FUSE
            runs, after one untimed erofs mount that writes the metadata image.

The package's bytecode is compiled first, as ``pip install`` does.  Run as root (mount(2));
nothing else running.

    python -m benchmarks.mount_startup [--runs 5]

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
from pathlib import Path

from benchmarks import native

API = r"""
import json, os, sys, time
t0 = time.perf_counter()
import lazylayer
from lazylayer.image import DiskCache, Image
t1 = time.perf_counter()
ref, mnt, cache = sys.argv[1:4]
img = Image(ref, cache=DiskCache(cache))
t2 = time.perf_counter()
m = lazylayer.Mount(img, mnt, backend=sys.argv[4])
t3 = time.perf_counter()
os.stat(os.path.join(mnt, "data/big0.bin"))
t4 = time.perf_counter()
m.close()
img.close()
print(json.dumps({"imports": t1 - t0, "open": t2 - t1, "mount": t3 - t2, "first_stat": t4 - t3}))
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    native.image_arguments(ap)
    a = ap.parse_args(argv)
    img = native.build(a)
    # pip compiles an installed package's bytecode; an editable checkout under PYTHONDONTWRITEBYTECODE
    # (set on this machine) would compile lazylayer's sources at every start (~70 ms), so compile it once.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(__file__).resolve().parents[1] / "lazylayer")],
                   check=True, stdout=subprocess.DEVNULL)
    lazylayer_cmd = os.path.join(os.path.dirname(sys.executable), "lazylayer")
    with native.pushed(img, a.workdir) as (ref, work):
        cache, mnt = f"{work}/cache", f"{work}/mnt"
        os.makedirs(mnt)
        cli: list[float] = []
        for i in range(a.runs + 1):  # the first one stores the index (not counted)
            t = time.perf_counter()
            subprocess.run([lazylayer_cmd, "mount", "-q", "--cache-dir", cache, ref, mnt], check=True)
            dt = time.perf_counter() - t
            os.stat(os.path.join(mnt, "data/big0.bin"))
            subprocess.run([lazylayer_cmd, "umount", mnt], check=True)
            if i:
                cli.append(dt)
        backends = ["fuse"] + (["erofs"] if _erofs_ok(cache) else [])
        api: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
        for i in range(a.runs + 1):
            for b in backends:
                r = json.loads(subprocess.run([sys.executable, "-c", API, ref, mnt, cache, b], check=True,
                                              capture_output=True, text=True).stdout)
                if i or b == "fuse":  # (the first erofs mount writes the metadata image: not counted)
                    api[b].append(r)
    print(f"# {time.strftime('%Y-%m-%d')}: python -m benchmarks.mount_startup --runs {a.runs}")
    print("| what | median s | runs, s |")
    print("|---|---:|---|")
    print(f"| `lazylayer mount` end to end | {statistics.median(cli):.3f} | {', '.join(f'{x:.3f}' for x in cli)} |")
    for b, runs in api.items():
        for key in ("imports", "open", "mount", "first_stat"):
            xs = [r[key] for r in runs[:a.runs]]
            print(f"| `Mount(backend={b!r})`: {key} | {statistics.median(xs):.4f} | "
                  f"{', '.join(f'{x:.4f}' for x in xs)} |")


def _erofs_ok(cache: str) -> bool:
    from lazylayer.mount.erofs import unavailable

    why = unavailable(os.path.join(cache, "erofs"))
    if why:
        print(f"no erofs backend here: {why}", file=sys.stderr)
    return why is None


if __name__ == "__main__":
    main()
