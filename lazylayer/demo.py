"""``lazylayer demo``: the main job on an embedded default, with no network and no service.

It packs a directory that every machine with Python has (its standard library)
into a tar, compresses it in the seekable zstd format, then reads random files
back through a source that counts every compressed byte it is asked for, as a
network fetch would, and checks each byte against the tar.
"""

from __future__ import annotations

import io
import os
import random
import sysconfig
import tarfile
import threading
import time

from . import errors
from .core import DEFAULT_FRAME_SIZE, BlockCache, SeekableReader, SeekableWriter
from .units import human_size as _human


def _pack_tree(root: str, limit: int) -> tuple[bytes, list[tarfile.TarInfo]]:
    """A tar of up to `limit` bytes of regular files under root, in memory."""
    buf = io.BytesIO()
    members = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, files in os.walk(root):
            dirnames.sort()
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    tar.add(path, arcname=os.path.relpath(path, root), recursive=False)
                except OSError:
                    continue
                if buf.tell() > limit:
                    break
            if buf.tell() > limit:
                break
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
    return data, members


def run(directory: str | None = None, limit: int = 64 << 20, files: int = 40,
        frame_size: int = DEFAULT_FRAME_SIZE, seed: int = 1) -> int:
    """Pack, compress and lazily read back a tree; print what it costs.  Returns 0 (or raises)."""
    root = directory or sysconfig.get_paths()["stdlib"]
    print(f"1. packing {root} (up to {_human(limit)}) into a tar ...")
    t0 = time.perf_counter()
    tar, members = _pack_tree(root, limit)
    print(f"   {len(members)} files, {_human(len(tar))}")

    print(f"2. compressing it in the zstd seekable format, frames of {_human(frame_size)} ...")
    out = io.BytesIO()
    t = time.perf_counter()
    with SeekableWriter(out, frame_size=frame_size) as w:
        w.write(tar)
    blob = out.getvalue()
    dt = time.perf_counter() - t
    print(f"   {_human(len(blob))} ({len(blob) / len(tar):.1%} of the tar), {w.frames} frames, "
          f"{len(tar) / dt / 1e6:.0f} MB/s")

    fetched = [0, 0]  # bytes, requests
    lock = threading.Lock()

    def remote(offset: int, size: int) -> bytes:
        """Stands in for an HTTP range request: counts what is asked for."""
        with lock:
            fetched[0] += size
            fetched[1] += 1
        return blob[offset:offset + size]

    rng = random.Random(seed)
    picks = rng.sample(members, min(files, len(members)))
    print(f"3. reading {len(picks)} random files through a counting 'remote' source ...")
    cache = BlockCache(64 << 20)
    t = time.perf_counter()
    read_bytes = 0
    with SeekableReader(remote, blob_size=len(blob), cache=cache) as r:
        for m in picks:
            got = r.pread(m.size, m.offset_data)
            if got != tar[m.offset_data:m.offset_data + m.size]:
                raise errors.IntegrityError(f"demo: wrong bytes for {m.name}")
            read_bytes += m.size
    dt = time.perf_counter() - t
    s = cache.stats()
    print(f"   {_human(read_bytes)} of file data, every byte checked against the tar, in {dt * 1e3:.0f} ms")
    print(f"   fetched {_human(fetched[0])} in {fetched[1]} range requests: "
          f"{fetched[0] / len(blob):.1%} of the blob (a full pull moves 100%)")
    print(f"   cache: {s.hits} hits, {s.misses} misses, {_human(s.peak_bytes)} peak of {_human(s.budget)}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0
