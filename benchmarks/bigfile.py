"""A zstd:chunked file too big for one frame, read through its checked copy on disk (issue 18, item 2).

A file zstd:chunked leaves whole (one chunk, named by its ``digest``) over the
C reader's 64 MiB frame limit is read in 4 MiB pieces through a copy that the
first read fetches in 8 MiB range requests, decompresses as it streams, checks
whole against the digest and keeps on disk with a sha256 per piece
(docs/filesystem.md, "zstd:chunked layers").  This measures, interleaved, on
the 10 ms / 1 Gbit/s link (``ShapedProxy`` in front of Debian's
``docker-registry``):

- ``floor``: what any verified reader of the file must do at least: fetch its
  compressed bytes (one ``read``, split into parallel parts), decompress them and
  hash the result;
- ``first``: a fresh disk cache, ``Image`` opened, then one 1 MiB read in the
  middle of the file (it waits for the whole copy);
- ``rest``: then every byte of the file, piece by piece, from the copy;
- ``warm``: another ``Image`` on the same cache reading the whole file.

The layer is built here as containers/storage writes zstd:chunked (the test
fixture's writer, tests/test_peer_formats.py), pushed with skopeo.

    python -m benchmarks.bigfile --mb 256 --runs 3
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine_line
from benchmarks.fetch import Registry
from benchmarks.netem import ShapedProxy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # (the tests import their helpers so)
import images  # noqa: E402
from servers import skopeo_push  # noqa: E402
from test_peer_formats import ZLayer, _containers_zstd_chunked, _zlayout  # noqa: E402

MiB = 1 << 20


def build(work: Path, size: int) -> tuple[str, bytes]:
    """An OCI layout with one zstd:chunked layer: a few small files and ``size`` bytes of big.bin
    (text-like, ~3x compressible), left whole."""
    rng = random.Random(7)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz ") for _ in range(rng.randint(3, 12))) for _ in range(4096)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=4096)) + b"\n"
    big = bytes(out[:size])
    members = [images.reg(f"app/s{i}.txt", b"small %d\n" % i) for i in range(8)] + [images.reg("app/big.bin", big)]
    blob, ann, tar = _containers_zstd_chunked(members, chunk=size + 1)  # one chunk: left whole
    return _zlayout(work / "layout", [ZLayer(blob, ann, images.sha256(tar), members)]), big


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=256, help="size of the big file, MiB, over 64 (default 256)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rtt", type=float, default=0.010)
    ap.add_argument("--rate", type=float, default=125e6)
    ap.add_argument("--workdir", default="/var/tmp")
    a = ap.parse_args()

    import zstandard

    from lazylayer.core import BlockCache
    from lazylayer.image import DiskCache, Image
    from lazylayer.registry import RegistryConfig
    from lazylayer.remote import RemoteOptions, Transport

    res: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="lazylayer-bigfile-", dir=a.workdir) as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        layout, big = build(tmp, a.mb * MiB)
        want = hashlib.sha256(big).hexdigest()
        registry = Registry(tmp).start()
        proxy = ShapedProxy(("127.0.0.1", registry.port), rtt=a.rtt, rate=a.rate).start()
        try:
            skopeo_push(layout, f"127.0.0.1:{registry.port}", "big:v1")
            ref = f"docker://127.0.0.1:{proxy.port}/big:v1"
            print(f"built and pushed in {time.perf_counter() - t0:.1f} s", flush=True)

            def image(cache: str) -> tuple[Any, Any]:
                tr = Transport(RemoteOptions())  # (and a memory cache of its own: nothing shared between steps)
                return Image(ref, cache=DiskCache(cache), memory_cache=BlockCache(64 * MiB),
                             registry=RegistryConfig(transport=tr)), tr

            for run in range(a.runs):
                # floor: fetch the compressed file, decompress, hash
                img, tr = image(tempfile.mkdtemp(dir=tmp))
                try:
                    node = img.tree.resolve("/app/big.bin")
                    c = next(c for c in img.layers[0].source._chunk_list if c.codec == "zstd-whole")
                    t = time.perf_counter()
                    data = img.layers[0].source.blob.read(c.offset, c.end - c.offset)
                    out = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read(len(big) + 1)
                    assert hashlib.sha256(out).hexdigest() == want
                    res.setdefault("floor", []).append(time.perf_counter() - t)
                    del data, out
                finally:
                    img.close()
                    tr.close()
                cache = tempfile.mkdtemp(dir=tmp)
                img, tr = image(cache)
                try:
                    node = img.tree.resolve("/app/big.bin")
                    t = time.perf_counter()
                    mid = len(big) // 2
                    assert img.pread(node, MiB, mid) == big[mid:mid + MiB]
                    t1 = time.perf_counter()
                    h = hashlib.sha256()
                    for off in range(0, len(big), 4 * MiB):
                        h.update(img.pread(node, 4 * MiB, off))
                    assert h.hexdigest() == want
                    res.setdefault("first", []).append(t1 - t)
                    res.setdefault("rest", []).append(time.perf_counter() - t1)
                finally:
                    img.close()
                    tr.close()
                img, tr = image(cache)
                try:
                    node = img.tree.resolve("/app/big.bin")
                    t = time.perf_counter()
                    h = hashlib.sha256()
                    for off in range(0, len(big), 4 * MiB):
                        h.update(img.pread(node, 4 * MiB, off))
                    assert h.hexdigest() == want
                    res.setdefault("warm", []).append(time.perf_counter() - t)
                finally:
                    img.close()
                    tr.close()
                print(f"run {run + 1}/{a.runs}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in res.items()), flush=True)
        finally:
            proxy.close()
            registry.close()
    med = {k: statistics.median(v) for k, v in res.items()}
    mb = len(big) / 1e6
    print()
    print(machine_line())
    print(f"- big.bin: {len(big):,} B; link +{a.rtt * 1e3:.0f} ms, {a.rate * 8 / 1e9:.1f} Gbit/s; "
          f"medians of {a.runs} interleaved runs")
    print()
    print("| step | median s | runs, s | MB/s of the file |")
    print("|---|---:|---|---:|")
    for k in ("floor", "first", "rest", "warm"):
        print(f"| {k} | {med[k]:.3f} | {', '.join(f'{x:.3f}' for x in res[k])} | {mb / med[k]:,.0f} |")
    print()
    print(f"first read / floor: {med['first'] / med['floor']:.2f}x")


if __name__ == "__main__":
    main()
