"""Prefetch: plans recorded from real reads, fetched ahead into the disk cache, at background priority.

The images are real (this machine's dash and coreutils, converted with small
frames so that files span many frames) in Debian's docker-registry;
``lazylayer record`` runs a real command chrooted into a real FUSE mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import os
import re
import shutil
import subprocess
import threading
from typing import Any, Iterator

import pytest
from aiohttp import web
from servers import AioServer, RegistryServer, unique_repo, wait_for
from test_mount import Programs, cli

from lazylayer import errors, remote
from lazylayer.convert import Converter
from lazylayer.image import DiskCache, Image
from lazylayer.prefetch import (
    PLAN_MEDIA_TYPE,
    LayerPlan,
    Plan,
    PlanError,
    Recorder,
    load_plan,
    start,
)
from lazylayer.prefetch.prefetcher import _frames_of
from lazylayer.prefetch.recorder import _first_reads

FRAME = 64 << 10
BIG = os.urandom(3 << 20)  # 48 frames of 64 KiB


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer) -> Programs:
    return Programs(str(tmp_path_factory.mktemp("prefetch")), registry, frame_size=FRAME,
                    extra={"data/big.bin": BIG})


def read_file(img: Image, path: str) -> bytes:
    node = img.tree.resolve(path)
    return img.pread(node, node.inode.size, 0)


# ----------------------------------------------------------------- plans


def test_plan_round_trip_and_first_reads() -> None:
    plan = Plan([LayerPlan("sha256:" + "a" * 64, "sha256:" + "b" * 64, [(0, 10), (100, 5)])],
                image="sha256:" + "c" * 64, workload="python3 -c 'import x'", created="2026-11-26T00:00:00Z")
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.for_layer("sha256:" + "a" * 64) is plan.layers[0]
    assert plan.for_layer("sha256:other", "sha256:" + "b" * 64) is plan.layers[0]  # re-encoded: by diff_id
    assert plan.for_layer("sha256:other", "sha256:other") is None
    # Overlaps with what was read before are dropped, order is kept.
    assert _first_reads([(0, 10), (5, 10), (20, 5), (0, 30)]) == [(0, 10), (10, 5), (20, 5), (15, 5), (25, 5)]
    assert _first_reads([(10, 5), (0, 20)]) == [(10, 5), (0, 10), (15, 5)]


@pytest.mark.parametrize("doc, why", [
    (b"not json", "not JSON"),
    (b"[]", "not a lazylayer prefetch plan"),
    (json.dumps({"mediaType": "x"}).encode(), "not a lazylayer prefetch plan"),
    (json.dumps({"mediaType": PLAN_MEDIA_TYPE, "version": 9, "layers": []}).encode(), "version 9"),
    (json.dumps({"mediaType": PLAN_MEDIA_TYPE, "version": 1, "layers": {}}).encode(), "not a list"),
    (json.dumps({"mediaType": PLAN_MEDIA_TYPE, "version": 1, "layers": [{"digest": 1}]}).encode(), "malformed"),
    (json.dumps({"mediaType": PLAN_MEDIA_TYPE, "version": 1,
                 "layers": [{"digest": "d", "ranges": [[-1, 5]]}]}).encode(), "non-negative"),
    (json.dumps({"mediaType": PLAN_MEDIA_TYPE, "version": 1,
                 "layers": [{"digest": "d", "ranges": [[1.5, 5]]}]}).encode(), "non-negative"),
    (json.dumps({"mediaType": PLAN_MEDIA_TYPE, "version": 1,
                 "layers": [{"digest": "d", "ranges": [[1, 2, 3]]}]}).encode(), "[offset, length]"),
])
def test_hostile_plans_are_refused_with_a_reason(doc: bytes, why: str, tmp_path: Any) -> None:
    with pytest.raises(PlanError, match=why.replace("[", r"\[")):
        Plan.from_json(doc)
    path = tmp_path / "plan.json"
    path.write_bytes(doc)
    with pytest.raises(PlanError, match=str(path)):
        load_plan(path)
    assert isinstance(PlanError("x"), errors.FormatError)


def test_plan_ranges_outside_the_layer_are_ignored(programs: Programs, tmp_path: Any) -> None:
    with Image(programs.ref, cache=DiskCache(tmp_path / "c")) as img:
        frames = img.layers[0].toc.frames
        tar_end = frames[-1].offset + frames[-1].size
        assert _frames_of(frames, [(tar_end, 100), (1 << 61, 1 << 61), (0, 0)]) == []
        assert _frames_of(frames, [(frames[3].offset + 1, 1), (0, 1), (frames[3].offset, 2)]) == [3, 0]


@contextlib.contextmanager
def prefetched(ref: str, *, cache: Any, prefetch: Any = "auto", **options: Any) -> Iterator[Image]:
    """An Image with its prefetcher started the way the front ends start it (lazylayer.prefetch.start)."""
    with Image(ref, cache=cache) as img:
        start(img, prefetch, **options)
        yield img


# ----------------------------------------------------------------- fetching


def test_a_recorded_plan_is_fetched_before_it_is_read(programs: Programs, tmp_path: Any) -> None:
    wanted = ["/usr/bin/sha256sum", "/data/file5.bin", "/data/file3.bin"]
    with Image(programs.ref, cache=DiskCache(tmp_path / "record")) as img:
        rec = Recorder(img)
        img.recorder = rec
        expected = {p: read_file(img, p) for p in wanted}
        plan = rec.plan(workload="test")
    assert plan.image and plan.layers and all(lp.diff_id.startswith("sha256:") for lp in plan.layers)
    plan.save(tmp_path / "plan.json")

    with prefetched(programs.ref, cache=DiskCache(tmp_path / "fresh"), prefetch=str(tmp_path / "plan.json"),
                    readahead=False) as img:
        assert img.prefetch_started.wait(30) and img.prefetcher.wait(30)
        before = img.stats()
        assert before["prefetched_frames"] > 0 and before["prefetch_errors"] == 0
        assert before["frames_fetched"] == before["prefetched_frames"]  # nothing else was fetched yet
        for p in wanted:
            assert read_file(img, p) == expected[p]
        after = img.stats()
        assert after["frames_fetched"] == before["frames_fetched"]  # every read came from the disk cache
        assert after["frames_from_disk"] > 0


def test_sequential_reads_get_read_ahead(programs: Programs, tmp_path: Any) -> None:
    with prefetched(programs.ref, cache=DiskCache(tmp_path / "c"), prefetch=None) as img:
        node = img.tree.resolve("/data/big.bin")
        got = bytearray(img.pread(node, 32 << 10, 0))
        # The miss queued the frames after it; wait for them before reading on, so that the reader
        # cannot outrun the prefetcher on a loaded machine (it did in CI: then every frame is the
        # reader's own and nothing counts as prefetched).
        assert img.prefetcher is not None
        wait_for(img.prefetcher.idle)
        assert img.stats()["prefetched_frames"] > 0
        while len(got) < len(BIG):
            got += img.pread(node, 32 << 10, len(got))
        assert bytes(got) == BIG
        s = img.stats()
        frames = len(img.layers[node.inode.layer].toc.frames)
        assert s["frames_fetched"] <= frames  # no frame fetched twice
    with prefetched(programs.ref, cache=DiskCache(tmp_path / "d"), prefetch=None, readahead=False) as img:
        node = img.tree.resolve("/data/big.bin")
        for off in range(0, len(BIG), 32 << 10):
            img.pread(node, 32 << 10, off)
        assert img.stats()["prefetched_frames"] == 0


def test_read_ahead_fetches_the_newest_window_first_and_small_frames_do_not_double(programs: Programs,
                                                                                  tmp_path: Any) -> None:
    """Windows queued while the workers are busy: the newest goes first (the reader has moved on),
    its requests in order.  This layer's frames are 64 KiB, a layer of small frames: its window
    stays at its first size however sequential the reads."""
    from lazylayer.prefetch.prefetcher import Prefetcher

    with Image(programs.ref, cache=DiskCache(tmp_path / "c")) as img:
        node = img.tree.resolve("/data/big.bin")
        layer = node.inode.layer
        frames = img.layers[layer].toc.frames
        at = next(i for i, f in enumerate(frames) if f.offset + f.size > node.inode.offset)  # big.bin's first
        pf = Prefetcher(img, workers=1, request_bytes=4 * FRAME, neighbours=1)  # window: 2 MiB, ~32 frames
        try:
            pf._start_threads = lambda: None  # type: ignore[method-assign]  # (nothing taken: see the queue)
            ra = pf._ra[layer]
            assert 8 < ra.minimum < 40
            pf.on_read(layer, at + 40, at + 40)  # a seek, then a seek before it
            pf.on_read(layer, at, at)
            order = []
            while pf._heap:
                order.append(heapq.heappop(pf._heap)[-1])
            starts = [item[0] for item in order]
            newest = [s for s in starts if s <= at + 40]
            assert starts[0] == at + 1 and starts == newest + [s for s in starts if s > at + 40], starts
            assert newest == sorted(newest) and len(order) > 2  # (each window's requests in order)
            pf.on_read(layer, at + 1, at + 1)  # sequential: a layer of 2 MiB frames would double here
            assert ra.steps == 1 and ra.window == ra.minimum
        finally:
            pf.close()


def test_reads_made_as_background_work_lead_no_read_ahead(programs: Programs, tmp_path: Any) -> None:
    """The erofs backend fills its data file ahead (a plan's order, then everything) inside
    remote.background(): those reads are not a reader to follow."""
    from lazylayer import remote
    from lazylayer.prefetch.prefetcher import Prefetcher

    with Image(programs.ref, cache=DiskCache(tmp_path / "c")) as img:
        node = img.tree.resolve("/data/big.bin")
        layer = node.inode.layer
        frames = img.layers[layer].toc.frames
        at = next(i for i, f in enumerate(frames) if f.offset + f.size > node.inode.offset)
        pf = Prefetcher(img, workers=1, request_bytes=4 * FRAME, neighbours=1)
        try:
            pf._start_threads = lambda: None  # type: ignore[method-assign]  # (nothing taken: see the queue)
            with remote.background():
                pf.on_read(layer, at, at)
                pf.on_read(layer, at + 1, at + 1)
            assert not pf._heap
            pf.on_read(layer, at, at)  # the same read in the foreground
            assert pf._heap
        finally:
            pf.close()


def test_fill_fetches_every_frame(programs: Programs, tmp_path: Any) -> None:
    disk = DiskCache(tmp_path / "c")
    with prefetched(programs.ref, cache=disk, prefetch=None, fill=True) as img:
        assert img.prefetch_started.wait(30)
        wait_for(img.prefetcher.idle)
        for layer in img.layers:
            assert all(disk.has("sha256:" + f.sha256) for f in layer.toc.frames)
        assert img.stats()["prefetched_frames"] == sum(len(layer.toc.frames) for layer in img.layers)
        assert read_file(img, "/data/big.bin") == BIG


def test_prefetch_budget_bounds_what_is_fetched(programs: Programs, tmp_path: Any) -> None:
    disk = DiskCache(tmp_path / "c", max_bytes=2 * 3 * FRAME)  # budget: half, three 64 KiB frames at most
    with prefetched(programs.ref, cache=disk, prefetch=None, fill=True) as img:
        assert img.prefetch_started.wait(30)
        wait_for(img.prefetcher.idle)
        assert img.stats()["prefetched_bytes"] <= 3 * FRAME


class _Gated(AioServer):
    """A blob server whose /slow answers only once ``gate`` is set (a stand-in for a long prefetch)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        super().__init__("gated")

    def _routes(self, app: web.Application) -> None:
        async def slow(request: web.Request) -> web.Response:
            while not self.gate.is_set() and not self.closing.is_set():
                await asyncio.sleep(0.01)
            return web.Response(body=b"s" * 100)

        async def fast(request: web.Request) -> web.Response:
            return web.Response(body=b"f" * 100)

        app.router.add_get("/slow", slow)
        app.router.add_get("/fast", fast)


def test_foreground_reads_never_queue_behind_background_ones() -> None:
    server = _Gated()
    t = remote.Transport(remote.RemoteOptions(max_connections=1, background_connections=1, retries=0))
    try:
        slow = remote.HttpBlob([server.url + "/slow"], t, _size=100)
        with remote.background():
            pending = [t.submit(slow._fetch_ranges([(0, 10)], None)) for _ in range(2)]  # fills the bg pool
        assert remote.HttpBlob([server.url + "/fast"], t, _size=100).read(0, 10) == b"f" * 10
        assert not any(p.done() for p in pending)  # the foreground read went past them
        server.gate.set()
        assert [p.result(30) for p in pending] == [[b"s" * 10]] * 2
    finally:
        server.gate.set()
        t.close()
        server.close()


class _Trickle(AioServer):
    """Serves ``data`` by range, but only up to blob offset ``allowed`` until the test raises it (a
    prefetch request whose first frames are in while the rest is still on the way).  ``requests``
    counts the GETs."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.allowed = 0
        self.requests = 0
        super().__init__("trickle")

    def _routes(self, app: web.Application) -> None:
        async def blob(request: web.Request) -> web.StreamResponse:
            self.requests += 1
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
            assert m, request.headers
            a, b = int(m[1]), int(m[2]) + 1
            resp = web.StreamResponse(status=206, headers={
                "Content-Range": f"bytes {a}-{b - 1}/{len(self.data)}", "Content-Length": str(b - a)})
            await resp.prepare(request)
            at = a
            while at < b and not self.closing.is_set():
                upto = min(b, self.allowed)
                if upto > at:
                    await resp.write(self.data[at:upto])
                    at = upto
                else:
                    await asyncio.sleep(0.01)
            await resp.write_eof()
            return resp

        app.router.add_get("/blob", blob)


def test_a_prefetched_frame_reaches_a_waiting_read_before_the_rest_of_its_request(tmp_path: Any) -> None:
    """A prefetch request of several frames stores and releases each one as it arrives: a read of
    one of the first, waiting on the prefetch's lock, goes on while the rest is still on the way
    (it used to wait for the whole request: up to 300 ms of an eStargz cold start's misses)."""
    from lazylayer.format import Frame
    from lazylayer.image.frames import FrameSource

    data = os.urandom(8000)
    frames = [Frame(i * 1000, 1000, i * 1000, 1000, hashlib.sha256(data[i * 1000:(i + 1) * 1000]).hexdigest())
              for i in range(8)]
    server = _Trickle(data)
    t = remote.Transport(remote.RemoteOptions(retries=0, read_timeout=60))
    try:
        blob = remote.HttpBlob([server.url + "/blob"], t, _size=len(data))
        # iter_ranges hands over each range once its last byte is in, while the request goes on
        it = blob.iter_ranges([(0, 1000), (1000, 1000), (2000, 1000), (3000, 5000)])
        server.allowed = 2500
        assert next(it) == (0, data[:1000])
        assert next(it) == (1, data[1000:2000])
        server.allowed = len(data)
        assert sorted(it) == [(2, data[2000:3000]), (3, data[3000:])]
        assert server.requests == 1  # (coalesced)

        server.allowed = 500
        src = FrameSource(blob, frames, DiskCache(str(tmp_path / "cache")), "trickle")
        prefetch = threading.Thread(target=src.prefetch, args=(range(8),))
        prefetch.start()
        wait_for(lambda: server.requests == 2)  # the prefetch holds every frame's lock now
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(src(1000, 1000)))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive()  # waits for the prefetch's frame 1, not fetching it twice
        server.allowed = 2000
        reader.join(30)
        assert got == [data[1000:2000]]
        assert prefetch.is_alive() and server.requests == 2  # frames 2..7 still on the way
        server.allowed = len(data)
        prefetch.join(30)
        assert not prefetch.is_alive()
        assert [src(f.compressed_offset, 1000) for f in frames] == [data[i:i + 1000] for i in range(0, 8000, 1000)]
        assert server.requests == 2 and src.frames_fetched == 8
    finally:
        server.allowed = len(data)
        t.close()
        server.close()


def test_convert_puts_a_plan_in_the_toc_and_images_use_it(programs: Programs, registry: RegistryServer,
                                                          tmp_path: Any) -> None:
    with Image(programs.ref, cache=DiskCache(tmp_path / "r")) as img:
        rec = Recorder(img)
        img.recorder = rec
        data = read_file(img, "/data/file4.bin")
        plan = rec.plan()
        layer_digests = [layer.digest for layer in img.layers]
    # Convert the lazy image again with the plan: the layer is re-encoded (new digest, same tar) to carry it.
    out = tmp_path / "withplan"
    Converter(progress=False, frame_size=FRAME, prefetch=plan).convert(f"oci:{programs.lazy}:v1", f"oci:{out}:v1")
    repo = unique_repo("planned")
    Converter(progress=False).convert(f"oci:{out}:v1", f"docker://{registry.host}/{repo}:v1")
    with prefetched(f"docker://{registry.host}/{repo}:v1", cache=DiskCache(tmp_path / "c"), readahead=False) as img:
        planned = [layer for layer in img.layers if layer.toc.prefetch]
        assert len(planned) == 1 and planned[0].digest not in layer_digests
        lp = plan.layers[0]
        assert [tuple(r) for r in planned[0].toc.prefetch] == lp.ranges
        assert img.prefetch_started.wait(30) and img.prefetcher.wait(30)
        n = img.stats()["frames_fetched"]
        assert n > 0
        assert read_file(img, "/data/file4.bin") == data
        assert img.stats()["frames_fetched"] == n


def test_toc_with_a_malformed_prefetch_field_is_refused() -> None:
    from lazylayer.format import Toc

    toc = Toc(frames=[], entries=[], prefetch=[[0, 1]])
    doc = json.loads(toc.to_json())
    doc["prefetch"] = [[0, "x"]]
    with pytest.raises(errors.FormatError, match="prefetch"):
        Toc.from_json(json.dumps(doc).encode())


# ------------------------------------------------------------ the commands


needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None or os.geteuid() != 0,
    reason="needs /dev/fuse, fusermount3 (apt install fuse3) and root (record mounts and chroots)")


def hash_big_through_a_mount(ref: str, tmp_path: Any, *options: str) -> str:
    """``lazylayer mount -v REF`` (fresh cache), sha256sum /data/big.bin chrooted into it, unmount: the daemon's log."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "mount.log"  # not the default log: a test leaves nothing outside its tmp_path
    cli("mount", ref, str(mnt), "--cache-dir", str(tmp_path / "mountcache"), "-v", "--log", str(log), *options)
    try:
        res = subprocess.run(["chroot", str(mnt), "/bin/sh", "-c", "sha256sum /data/big.bin"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split()[0] == hashlib.sha256(BIG).hexdigest()
    finally:
        cli("umount", str(mnt))
    return log.read_text()


@needs_fuse
def test_record_to_a_file_then_mount_with_it(programs: Programs, tmp_path: Any) -> None:
    plan_file = tmp_path / "plan.json"
    res = cli("record", programs.ref, "--cache-dir", str(tmp_path / "rc"), "-o", str(plan_file), "--",
              "/bin/sh", "-c", "sha256sum /data/file5.bin /data/big.bin > /dev/null && ls /proc/self > /dev/null")
    assert "exited 0" in res.stderr
    plan = load_plan(plan_file)
    assert plan.workload.startswith("/bin/sh -c") and sum(lp.bytes for lp in plan.layers) >= len(BIG)

    log = hash_big_through_a_mount(programs.ref, tmp_path, "--prefetch", str(plan_file), "--no-readahead")
    planned = re.search(r"prefetching (\d+) frames of the plan", log)
    assert planned and int(planned.group(1)) > 0 and "plan prefetched" in log, log

    # A command that fails still leaves its plan, with a warning; a missing command is a usage error.
    res = cli("record", programs.ref, "--cache-dir", str(tmp_path / "rc"), "-o", str(tmp_path / "p2.json"), "--",
              "/bin/sh", "-c", "cat /data/file1.bin > /dev/null; exit 3")
    assert "exited 3" in res.stderr and load_plan(tmp_path / "p2.json").layers
    assert cli("record", programs.ref, check=False).returncode == 2


@needs_fuse
def test_a_plan_attached_by_record_is_found_by_mount_and_by_images(programs: Programs, registry: RegistryServer,
                                                                    tmp_path: Any) -> None:
    repo = unique_repo("attached")
    ref = f"docker://{registry.host}/{repo}:v1"
    digest = Converter(progress=False).convert(f"oci:{programs.lazy}:v1", ref).root["digest"]
    res = cli("record", ref, "--cache-dir", str(tmp_path / "rc"), "--", "/bin/sh", "-c",
              "cat /data/file5.bin /data/big.bin > /dev/null")
    assert "saved to " + ref in res.stderr and "artifact sha256:" in res.stderr

    with prefetched(ref, cache=DiskCache(tmp_path / "c1"), readahead=False) as img:  # the default: prefetch="auto"
        assert img.prefetch_started.wait(30) and img.prefetcher.wait(30)
        assert img.prefetcher.plan_frames > 0
        n = img.stats()["frames_fetched"]
        assert read_file(img, "/data/big.bin") == BIG
        assert img.stats()["frames_fetched"] == n
    with prefetched(ref, cache=DiskCache(tmp_path / "c2"), prefetch=None, readahead=False) as img:
        assert img.prefetch_started.wait(30)
        assert img.prefetcher.plan_frames == 0 and img.stats()["frames_fetched"] == 0

    log = hash_big_through_a_mount(ref, tmp_path)
    assert "using the prefetch plan attached as sha256:" in log, log
    # The image itself is unchanged: its tag still names the manifest it named.
    with Image(ref, cache=None) as img:
        assert img.digest == digest


@needs_fuse
def test_a_bad_plan_file_fails_the_mount_with_its_reason(programs: Programs, tmp_path: Any) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = cli("mount", programs.ref, str(mnt), "--cache-dir", str(tmp_path / "c"), "--prefetch", str(bad),
              "--log", str(tmp_path / "mount.log"), check=False)
    assert res.returncode == 1 and "not a lazylayer prefetch plan" in res.stderr


def test_frames_of_matches_the_plain_scan_on_random_plans() -> None:
    """The planner visits each frame once over all ranges; what it returns is what scanning
    every frame for every range (in order, first need wins) returns."""
    import random

    from lazylayer.format import Frame

    rng = random.Random(15)
    for _ in range(200):
        sizes = [rng.choice([1, 7, 100, 512]) for _ in range(rng.randint(0, 30))]  # data frames are never empty
        frames, off = [], 0
        for s in sizes:
            frames.append(Frame(0, 1, off, s, "0" * 64))
            off += s
        ranges = [(rng.randint(0, off + 50), rng.choice([0, 1, 5, 300, 10**6])) for _ in range(rng.randint(0, 40))]
        want: list[int] = []
        end = off
        for o, n in ranges:
            if n <= 0 or o >= end:
                continue
            for i, f in enumerate(frames):
                if f.offset + f.size > o and f.offset < min(o + n, end) and i not in want:
                    want.append(i)
        assert _frames_of(frames, ranges) == want, (sizes, ranges)
