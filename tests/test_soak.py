"""Resident memory stays bounded while a long-running reader serves random reads (issue 15, item 10).

A child process opens a real lazy image of many frames (a local OCI layout),
with a small memory cache, and 4 threads read random ranges of random files in
128 KiB reads (as the FUSE mount answers the kernel) for ``SOAK_SECONDS``; the
main thread samples RSS from /proc/self/statm: the mount daemon's memory
profile without FUSE (the daemon tunes nothing in malloc either).  RSS swings
by a few MiB with the reads in flight, so each sample is the mean of 10 reads
over a second: a least-squares slope over a minute of single reads would be
too noisy to hold to 0.5 MiB/min.

Fails if, over the second half, RSS grows faster than ``MAX_SLOPE`` MiB/min
(a least-squares fit), or if RSS after the warm-up goes above the baseline
(the image open, nothing read) + the memory-cache budget + ``SLACK`` MiB.
The samples are in the assertion message.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tarfile
from typing import Any

import images
import pytest

from lazylayer.convert import Converter

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("LAZYLAYER_SOAK_SECONDS", "150"))
WARMUP = 0.2  # of the run: samples before this are not checked against the peak bound
BUDGET_MB = 32
MAX_SLOPE = 0.5  # MiB/min over the second half
# Over baseline + budget: the buffer pool's free list (docs/cache.md, at most 1/4
# of the budget here), 4 readers' workspaces (a compressed frame in, a decoded
# frame out: 2 x 2 MiB each), Python's per-thread scratch (256 KiB), allocator slack.
SLACK = 64

CHILD = r"""
import json, os, random, sys, threading, time
from lazylayer.image import Image

layout, seconds = sys.argv[1], float(sys.argv[2])
page = os.sysconf("SC_PAGE_SIZE")

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page / 2**20

img = Image(f"oci:{layout}:v1", cache=None)
files = [img.tree.resolve(p) for p in json.loads(sys.argv[3])]
baseline = rss_mib()
stop = threading.Event()
errors = []

def reader(seed):
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            node = rng.choice(files)
            size = node.inode.size
            off = rng.randrange(0, size) & ~0xFFF
            end = min(size, off + rng.randrange(128 << 10, 4 << 20))
            while off < end and not stop.is_set():
                img.pread(node, 128 << 10, off)
                off += 128 << 10
    except BaseException as exc:
        errors.append(repr(exc))
        stop.set()

threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
samples = []
t0 = time.monotonic()
while time.monotonic() - t0 < seconds and not stop.is_set():
    reads = []
    for _ in range(10):
        time.sleep(0.1)
        reads.append(rss_mib())
    samples.append((round(time.monotonic() - t0, 1), round(sum(reads) / len(reads), 2), round(max(reads), 1)))
stop.set()
for t in threads:
    t.join()
print(json.dumps({"baseline": round(baseline, 1), "samples": samples, "errors": errors,
                  "cache": img.memory.stats()._asdict()}))
"""


def _data(rng: random.Random, size: int) -> bytes:
    """Half random, half runs: compresses to about half, decodes at a realistic speed."""
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(2048) + bytes([rng.randrange(256)]) * 2048
    return bytes(out[:size])


@pytest.fixture(scope="module")
def soak_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """A lazy image of ~200 MiB in 40 files (about 100 frames of 2 MiB) in a local OCI layout."""
    work = tmp_path_factory.mktemp("soak")
    rng = random.Random(15)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    paths = []
    for i in range(40):
        name = f"data/f{i:02d}.bin"
        members.append(images.reg(name, _data(rng, rng.randrange(1 << 20, 9 << 20))))
        paths.append("/" + name)
    plain = str(work / "plain")
    images.build_layout(plain, [images.make_tar(members)], tag="v1")
    lazy = str(work / "lazy")
    Converter(progress=False).convert(f"oci:{plain}:v1", f"oci:{lazy}:v1")
    return lazy, paths


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS (MiB) over time, in MiB per minute."""
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 60 * sum((t - mx) * (v - my) for t, v in points) / var if var else 0.0


def test_rss_is_bounded_and_flat_under_random_reads(soak_image: tuple[str, list[str]]) -> None:
    layout, paths = soak_image
    env = dict(os.environ, LAZYLAYER_MEMORY_CACHE_MB=str(BUDGET_MB))
    res = subprocess.run([sys.executable, "-c", CHILD, layout, str(SOAK_SECONDS), json.dumps(paths)],
                         capture_output=True, text=True, env=env, timeout=SOAK_SECONDS + 120)
    assert res.returncode == 0, res.stderr[-3000:]
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    assert not out["errors"], out["errors"]
    samples = [tuple(s) for s in out["samples"]]  # (s, mean MiB, max MiB) of each second
    baseline = out["baseline"]
    second_half = [(t, mean) for t, mean, _ in samples if t >= SOAK_SECONDS / 2]
    slope = _slope(second_half)
    after_warmup = [peak for t, _, peak in samples if t >= SOAK_SECONDS * WARMUP]
    peak = max(after_warmup)
    report = (f"baseline {baseline} MiB, peak after warm-up {peak} MiB (+{peak - baseline:.1f}), "
              f"second-half slope {slope:+.2f} MiB/min, cache {out['cache']}; samples (s, mean MiB, max MiB): "
              f"{samples}")
    print(report)
    assert len(second_half) >= 20, report
    assert slope <= MAX_SLOPE, "RSS creeps: " + report
    assert peak <= baseline + BUDGET_MB + SLACK, "RSS above baseline + budget + slack: " + report
