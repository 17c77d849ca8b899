#!/usr/bin/env python3
"""How the lazy layer's frame size trades compressed size against bytes fetched per file read.

For each frame size, convert the same tar with lazylayer's LayerWriter and report:

- size of the blob relative to plain ``zstd -3`` of the tar (one frame, the
  format's floor: independent frames cost ratio);
- number of frames;
- compressed bytes a reader must fetch to read one file, as the mean over a
  fixed random sample of regular files: the sum of the compressed sizes of the
  frames its content overlaps (what a lazy reader moves); and the total of that
  over the sample divided by the sample files' own size at zstd -3's ratio
  (read amplification: 1.0 would be fetching exactly the files' bytes).

All of these are byte counts, deterministic for a given tar, so the script can
run on a busy machine.  Usage:

    python benchmarks/frame_size.py TAR [--sizes 128K,256K,512K,1M,2M,4M] [--files 2000]
"""

from __future__ import annotations

import argparse
import bisect
import io
import os
import random
import subprocess
import sys

from lazylayer.format import LayerWriter, read_toc


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
    return int(s[:-1] if mult > 1 else s) * mult


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tar")
    ap.add_argument("--sizes", default="128K,256K,512K,1M,2M,4M")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    tar_size = os.path.getsize(args.tar)
    zstd3 = int(subprocess.run(f"zstd -3 -q -c {args.tar} | wc -c", shell=True, check=True,
                               capture_output=True, text=True).stdout)
    ratio = zstd3 / tar_size
    print(f"tar: {args.tar}, {tar_size:,} bytes; zstd -3: {zstd3:,} bytes ({ratio:.3f})\n")
    print("| frame size | blob bytes | vs zstd -3 | frames | mean fetched per file read | amplification |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        out = io.BytesIO()
        with open(args.tar, "rb") as f:
            info = LayerWriter(frame_size=size).write(f.read, out)
        blob = out.getvalue()
        toc = read_toc(lambda o, n: blob[o:o + n], len(blob), info.annotations()).toc
        starts = [f.offset for f in toc.frames]
        files = [e for e in toc.entries if e["type"] == "reg" and e.get("size")]
        rng = random.Random(args.seed)
        sample = rng.sample(files, min(args.files, len(files)))
        fetched = own = 0.0
        for e in sample:
            a = bisect.bisect_right(starts, e["offset"]) - 1
            b = bisect.bisect_right(starts, e["offset"] + e["size"] - 1) - 1
            moved = sum(toc.frames[i].compressed_size for i in range(a, b + 1))
            fetched += moved
            own += e["size"] * ratio
        n = len(sample)
        print(f"| {size >> 10} KiB | {len(blob):,} | {len(blob) / zstd3:.3f}x | {len(toc.frames):,} "
              f"| {fetched / n / 1024:,.0f} KiB | {fetched / own:,.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
