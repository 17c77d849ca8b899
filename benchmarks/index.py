#!/usr/bin/env python3
"""The C image index against the Python Tree, on a synthetic 63k-entry, 4-layer image.

What it measures (medians of --repeat runs, one process, one core at a time)
    * ``ll_index_build`` from the layers' TOC frames: sha256 of each frame,
      zstd decompression, JSON parse and checks, the merge, the stored buffer;
    * the part of that spent outside our code, decompressing and hashing the
      frames (python-zstandard and hashlib, the same libzstd and libcrypto),
      and so the build "from decompressed JSON" (the difference);
    * ``ll_index_open_buffer`` of the stored index (what reopening it from the
      disk cache costs: checksum and validation; the file mapping aside),
      without and with a copy;
    * Python: ``Toc.from_json`` of every layer plus the Python ``Tree`` the C
      index replaced (tests/tree_model.py): what opening an image cost before.

Why this way
    The image is generated (fixed seed), so the run needs no registry: names
    like a Debian + Python image's (usr/lib/python3/dist-packages/..., share,
    etc), mostly regular files, directories listed, some symlinks and
    hardlinks, PAX mtimes with fractions on some, a few xattrs, whiteouts and
    an opaque directory in the upper layers: about 63,000 entries and ~10 MB
    of TOC JSON in 4 layers, the shape of the cold-start benchmark's image.
    Targets (issue 16): build <= 50 ms from decompressed TOCs, reopen <= 5 ms.

    python benchmarks/index.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import zstandard  # noqa: E402

from lazylayer.core._lib import ffi, lib  # noqa: E402
from lazylayer.format import TOC_MAGIC, Toc  # noqa: E402
from tests.tree_model import Tree  # noqa: E402  (the Python Tree the C index replaced)

TOC_OFFSET = 1 << 30  # each synthetic layer's data frames end here


def layer_entries(rng: random.Random, layer: int, n: int) -> list[dict]:
    tops = ["usr/lib/python3/dist-packages", "usr/share/doc", "usr/lib/x86_64-linux-gnu", "usr/share/locale",
            "usr/include", "etc", "var/lib/dpkg/info", "opt/app/node_modules"]
    entries: list[dict] = []
    dirs_made: set[str] = set()
    offset = 512
    i = 0
    while len(entries) < n:
        top = rng.choice(tops)
        pkg = f"{top}/pkg{layer}_{i // 40:04d}"
        for d in (top, pkg):
            if d not in dirs_made:
                dirs_made.add(d)
                entries.append({"name": d, "type": "dir", "mode": 0o755, "mtime": 1700000000 + layer,
                                "uname": "root", "gname": "root"})
        k = rng.random()
        name = f"{pkg}/{rng.choice(['module', 'helper', 'data', 'README', '__init__'])}_{i:06d}" \
               f"{rng.choice(['.py', '.so', '.txt', '.json', ''])}"
        if k < 0.04:
            entries.append({"name": name, "type": "symlink", "linkname": f"../{rng.choice(['a', 'b'])}/target_{i}",
                            "mode": 0o777, "mtime": 1700000000, "uname": "root", "gname": "root"})
        elif k < 0.05 and entries and entries[-1]["type"] == "reg":
            entries.append({"name": name, "type": "hardlink", "linkname": entries[-1]["name"], "mode": 0o644,
                            "uname": "root", "gname": "root"})
        else:
            size = int(rng.expovariate(1 / 6000))
            e = {"name": name, "type": "reg", "mode": rng.choice([0o644, 0o755]),
                 "mtime": 1700000000 + rng.randint(0, 10**6) + (0.5 if k < 0.2 else 0),
                 "size": size, "offset": offset, "uname": "root", "gname": "root"}
            if k > 0.995:
                e["xattrs"] = {"user.mime": "dGV4dC9wbGFpbg=="}
            entries.append(e)
            offset += 512 + (size + 511) // 512 * 512
        i += 1
    if layer > 0:
        entries.append({"name": f"usr/share/doc/pkg{layer - 1}_0001/.wh.README_000040.txt", "type": "reg"})
        entries.append({"name": f"usr/share/locale/pkg{layer - 1}_0002/.wh..wh..opq", "type": "reg"})
    return entries, offset + 1024


def make_layer(rng: random.Random, layer: int, n: int) -> tuple[bytes, bytes]:
    entries, tar_size = layer_entries(rng, layer, n)
    frames, c, d = [], 0, 0
    fsize = 2 << 20
    nframes = (tar_size + fsize - 1) // fsize
    for k in range(nframes):
        size = min(fsize, tar_size - d)
        csize = TOC_OFFSET // nframes if k < nframes - 1 else TOC_OFFSET - c
        frames.append([c, csize, d, size, hashlib.sha256(b"%d" % k).hexdigest()])
        c += csize
        d += size
    toc = Toc(frames=[], entries=entries, frame_size=fsize, tar_size=tar_size)
    doc = json.loads(toc.to_json())
    doc["frames"] = frames
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    comp = TOC_MAGIC + zstandard.ZstdCompressor(level=9).compress(data)
    return data, struct.pack("<II", 0x184D2A5A, len(comp)) + comp


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--entries", type=int, default=63_000)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    rng = random.Random(16)
    sizes = [args.entries * w // 10 for w in (5, 3, 1)]
    sizes.append(args.entries - sum(sizes))
    sizes = sizes[:args.layers] if args.layers < 4 else sizes
    layers = [make_layer(rng, i, n) for i, n in enumerate(sizes)]
    jsons = [j for j, _ in layers]
    arr = ffi.new("ll_index_layer[]", len(layers))
    keep = []
    for i, (_, frame) in enumerate(layers):
        d = ffi.new("char[]", ("sha256:" + hashlib.sha256(b"layer%d" % i).hexdigest()).encode())
        td = ffi.new("char[]", ("sha256:" + hashlib.sha256(frame).hexdigest()).encode())
        fr = ffi.from_buffer(frame)
        keep += [d, td, fr]
        arr[i].digest, arr[i].toc_digest, arr[i].toc_frame = d, td, fr
        arr[i].blob_size, arr[i].toc_offset, arr[i].toc_length = TOC_OFFSET + len(frame) + 1000, TOC_OFFSET, len(frame)
    out, err = ffi.new("ll_index **"), ffi.new("char[256]")

    def build() -> None:
        rc = lib.ll_index_build(arr, len(layers), out, err, 256)
        assert rc == 0, ffi.string(err)
        lib.ll_index_free(out[0])

    def unpack() -> None:
        for _, frame in layers:
            hashlib.sha256(frame).digest()
            zstandard.ZstdDecompressor().decompress(frame[16:])

    assert lib.ll_index_build(arr, len(layers), out, err, 256) == 0, ffi.string(err)
    idx = out[0]
    entries, names, inodes = sum(len(json.loads(j)["entries"]) for j in jsons), lib.ll_index_names(idx), \
        lib.ll_index_inodes(idx)
    p, n = ffi.new("void **"), ffi.new("size_t *")
    lib.ll_index_data(idx, ffi.cast("const void **", p), n)
    stored = bytes(ffi.buffer(p[0], n[0]))
    lib.ll_index_free(idx)
    sbuf = ffi.from_buffer(stored)

    def reopen(copy: int) -> None:
        rc = lib.ll_index_open_buffer(sbuf, len(stored), copy, out, err, 256)
        assert rc == 0, ffi.string(err)
        lib.ll_index_free(out[0])

    def python_tree() -> None:
        Tree([Toc.from_json(j) for j in jsons])

    t_build = median_time(build, args.repeat)
    t_unpack = median_time(unpack, args.repeat)
    t_open = median_time(lambda: reopen(0), max(args.repeat, 21))
    t_open_copy = median_time(lambda: reopen(1), max(args.repeat, 21))
    t_py = median_time(python_tree, args.repeat)
    tree = Tree([Toc.from_json(j) for j in jsons])
    assert len(tree) == names, (len(tree), names)
    mb = sum(len(j) for j in jsons) / 1e6
    print(f"image: {len(layers)} layers, {entries} TOC entries, {mb:.1f} MB of TOC JSON "
          f"({sum(len(f) for _, f in layers) / 1e6:.2f} MB compressed); index: {names} names, {inodes} inodes, "
          f"{len(stored) / 1e6:.1f} MB stored; medians of {args.repeat}")
    rows = [
        ("C ll_index_build from TOC frames", t_build, ""),
        ("  of which sha256 + zstd decompression", t_unpack, "(hashlib + python-zstandard, same libs)"),
        ("C build from decompressed JSON (difference)", t_build - t_unpack, "target <= 50 ms"),
        ("C ll_index_open_buffer (mapped, no copy)", t_open, "target <= 5 ms"),
        ("C ll_index_open_buffer (copy)", t_open_copy, ""),
        ("Python Toc.from_json + Tree", t_py, f"{t_py / max(t_build, 1e-9):.1f}x the C build"),
    ]
    print(f"{'':46} {'ms':>9}")
    for name, t, note in rows:
        print(f"{name:46} {t * 1000:9.2f}  {note}")


if __name__ == "__main__":
    main()
