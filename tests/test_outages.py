"""Outages, one deadline per read, declared sizes and large manifests, against a real docker-registry.

- A registry that refuses connections, then stalls, for most of a read's
  deadline: the read rides it out (retries go on in rounds until the deadline).
- A registry down for good: a typed error by the deadline (plus one request
  timeout), and the next read fails at once while the endpoint is remembered
  as down (``RemoteOptions.down_memo``), then works again once it is back.
- A manifest that declares a layer of 2^62 bytes for a small real blob: a typed
  error, without allocating by the declared size (peak RSS measured in a
  subprocess).
- Manifests larger than one network chunk (300 KB), with and without
  ``Content-Length``, and a body over the 16 MiB limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from aiohttp import web
from servers import AioServer, small_image, unique_repo

from lazylayer import convert, errors, oci, remote
from lazylayer.registry import Registry, RegistryConfig

BLOB_SIZE = 1 << 20


class Relay:
    """A TCP relay on a fixed loopback port in front of ``upstream`` (``host:port``) that can go down.

    ``set("refuse")`` closes the listening socket (connections are refused),
    ``set("stall")`` accepts connections and never answers, ``set("up")``
    forwards bytes both ways.  Every switch cuts the connections in flight.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.mode = ""
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._thread.start()
        self.set("up")

    def set(self, mode: str) -> None:
        asyncio.run_coroutine_threadsafe(self._set(mode), self._loop).result(10)

    async def _set(self, mode: str) -> None:
        self.mode = mode
        for w in list(self._conns):
            w.transport.abort()
        self._conns.clear()
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
        elif self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            if self.mode == "stall":
                while await reader.read(65536):
                    pass
                return
            ur, uw = await asyncio.open_connection(*self.upstream)
            self._conns.add(uw)

            async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                try:
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                except (OSError, asyncio.CancelledError):
                    pass
                finally:
                    w.close()

            await asyncio.gather(pipe(reader, uw), pipe(ur, writer))
        except OSError:
            pass
        finally:
            writer.close()
            self._conns.discard(writer)

    def close(self) -> None:
        self.set("refuse")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def stored(registry):
    data = os.urandom(BLOB_SIZE)
    repo = unique_repo("outage")
    t = remote.Transport()
    try:
        digest = t.run(Registry(registry.host, RegistryConfig(transport=t)).aput_blob(repo, data))
    finally:
        t.close()
    return repo, digest, data


@pytest.fixture
def relay(registry):
    r = Relay(registry.host)
    yield r
    r.close()


def _blob(relay, stored, **options):
    repo, digest, data = stored
    t = remote.Transport(remote.RemoteOptions(**options))
    return t, Registry(relay.host, RegistryConfig(transport=t)).blob(repo, digest, len(data))


def test_an_outage_shorter_than_the_deadline_is_ridden_out(relay, stored):
    """Refused for 6 s, then stalled for 6 s, with a 20 s deadline: the read waits and succeeds."""
    data = stored[2]
    t, blob = _blob(relay, stored, deadline=20, read_timeout=2, connect_timeout=2, retries=2, backoff=0.05,
                    max_backoff=1.0, part_size=256 << 10)
    try:
        assert blob.read(0, 1000) == data[:1000]
        relay.set("refuse")
        timers = [threading.Timer(6, relay.set, ["stall"]), threading.Timer(12, relay.set, ["up"])]
        for timer in timers:
            timer.start()
        start = time.monotonic()
        assert blob.read(4096, 700_000, digest=remote.sha256_of(data[4096:704_096])) == data[4096:704_096]
        elapsed = time.monotonic() - start
        for timer in timers:
            timer.join()
        assert 11 < elapsed < 20, elapsed
        assert t.stats.retries > 3
    finally:
        t.close()


@pytest.mark.parametrize("mode", ["refuse", "stall"])
def test_a_registry_down_for_good_fails_by_the_deadline_then_fast_until_it_is_back(relay, stored, mode):
    data = stored[2]
    deadline, read_timeout, memo = 5.0, 1.0, 3.0
    t, blob = _blob(relay, stored, deadline=deadline, read_timeout=read_timeout, connect_timeout=1, retries=2,
                    backoff=0.05, max_backoff=0.5, down_memo=memo)
    try:
        assert blob.read(0, 100) == data[:100]
        relay.set(mode)
        start = time.monotonic()
        with pytest.raises(errors.RemoteTimeoutError) as info:
            blob.read(8192, 300_000)
        elapsed = time.monotonic() - start
        assert deadline - 0.5 < elapsed < deadline + read_timeout + 2, elapsed
        assert "no endpoint" not in str(info.value) and "/blobs/" in info.value.url
        # The endpoint is remembered as down: the next read (the kernel's smaller retry) fails at once.
        start = time.monotonic()
        with pytest.raises(errors.RemoteTimeoutError, match="failed on every endpoint"):
            blob.read(8192, 4096)
        assert time.monotonic() - start < 1.0
        # Back up: once the memo expires (a few seconds), reads work again.
        relay.set("up")
        time.sleep(memo + 0.2)
        assert blob.read(8192, 4096) == data[8192:12288]
    finally:
        t.close()


def test_mirror_and_origin_are_both_tried_each_round(relay, registry, stored):
    """A mirror refusing connections and the origin down for 4 s: the read succeeds through the origin."""
    repo, digest, data = stored
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    t = remote.Transport(remote.RemoteOptions(deadline=15, read_timeout=1, connect_timeout=1, retries=1,
                                              backoff=0.05, max_backoff=0.5))
    try:
        blob = Registry(relay.host, RegistryConfig(transport=t, mirrors=[dead])).blob(repo, digest, len(data))
        assert blob.read(0, 10) == data[:10]  # the origin has answered: an outage there is ridden out
        relay.set("refuse")
        timer = threading.Timer(4, relay.set, ["up"])
        timer.start()
        assert blob.read(0, 5000) == data[:5000]
        timer.join()
    finally:
        t.close()


# ------------------------------------------------------------------ declared sizes


def test_a_declared_size_of_2_62_is_refused_without_allocating_it(registry, tmp_path):
    """A lazy layer whose descriptor says 2^62 bytes: `lazylayer ls` fails with a typed error, RSS stays flat."""
    repo = unique_repo("huge")
    host = registry.host
    convert.convert(small_image(tmp_path), f"docker://{host}/{repo}:v1", progress=False)
    t = remote.Transport()
    try:
        reg = Registry(host, RegistryConfig(transport=t))
        desc, body = reg.get_manifest(repo, "v1")
        manifest = json.loads(body)
        if manifest.get("manifests"):  # an index: take the image manifest
            desc, body = reg.get_manifest(repo, manifest["manifests"][0]["digest"])
            manifest = json.loads(body)
        for layer in manifest["layers"]:
            layer["size"] = 1 << 62
        t.run(reg.aput_manifest(repo, "huge", json.dumps(manifest).encode(), desc["mediaType"]))
    finally:
        t.close()
    script = textwrap.dedent(f"""
        import json, resource, sys, io, contextlib
        import lazylayer.cli
        def peak_kb():  # VmHWM: ru_maxrss would carry over the pytest parent's peak through fork and exec
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
        base = peak_kb()
        # A regression must not take the machine down: cap the address space (2 GiB above now).
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) << 10
        resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), resource.RLIM_INFINITY))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                rc = lazylayer.cli.main(["ls", "docker://{host}/{repo}:huge", "/"])
            except SystemExit as e:
                rc = e.code
        peak = peak_kb()
        print(json.dumps({{"rc": rc, "grew_kb": peak - base, "stderr": err.getvalue()}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rc"] != 0
    assert str(1 << 62) in result["stderr"] and "declares" in result["stderr"], result["stderr"]
    assert result["grew_kb"] < 256 << 10, result
    print(f"2^62 declared: peak RSS grew by {result['grew_kb']} KiB; {result['stderr'].strip()}")


def test_a_declared_size_larger_than_the_blob_is_an_integrity_error(relay, stored):
    repo, digest, data = stored
    t = remote.Transport(remote.RemoteOptions(deadline=10))
    try:
        reg = Registry(relay.host, RegistryConfig(transport=t))
        for declared in (len(data) + 1, 10 ** 12, 1 << 62):
            blob = reg.blob(repo, digest, declared)
            with pytest.raises(errors.IntegrityError, match=str(declared)):
                blob.read(0, 100)  # a small read: the Content-Range total disagrees
            with pytest.raises(errors.IntegrityError, match=str(declared)):
                blob.read(0, declared)  # a read planned by the declared size: checked before planning
            with pytest.raises(errors.IntegrityError, match=str(declared)):
                blob.read(declared - 100, 100)  # past the real end
    finally:
        t.close()


# ------------------------------------------------------------------ large manifests


def _big_manifest(registry, tmp_path):
    src = small_image(tmp_path)
    repo = unique_repo("bigmanifest")
    registry.push(src, f"{repo}:v1")
    return repo


def test_a_300_kb_manifest_is_read_whole(registry, tmp_path):
    repo = _big_manifest(registry, tmp_path)
    t = remote.Transport(remote.RemoteOptions(deadline=20))
    try:
        reg = Registry(registry.host, RegistryConfig(transport=t))
        desc, body = reg.get_manifest(repo, "v1")
        manifest = json.loads(body)
        manifest["annotations"] = {f"org.example.note.{i}": os.urandom(40).hex() for i in range(3500)}
        data = json.dumps(manifest).encode()
        assert len(data) > 300_000
        digest = t.run(reg.aput_manifest(repo, "big", data, desc["mediaType"]))
        for ref in ("big", digest):
            got_desc, got = reg.get_manifest(repo, ref)
            assert got == data and got_desc["size"] == len(data)
    finally:
        t.close()


class ManifestServer(AioServer):
    """Serves one manifest at /v2/r/manifests/t, streamed in 64 KiB chunks without Content-Length."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        super().__init__("manifest-server")

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/", self._ping)
        app.router.add_get("/v2/r/manifests/t", self._manifest)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": oci.OCI_MANIFEST})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(self.body), 64 << 10):
            await resp.write(self.body[i:i + (64 << 10)])
            await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp


def test_a_manifest_without_content_length_is_read_to_its_end():
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": {}, "layers": [],
           "annotations": {f"n{i}": "x" * 100 for i in range(3000)}}
    body = json.dumps(doc).encode()
    server = ManifestServer(body)
    t = remote.Transport(remote.RemoteOptions(deadline=10))
    try:
        desc, got = Registry(server.host, RegistryConfig(transport=t)).get_manifest("r", "t")
        assert got == body and desc["digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
    finally:
        t.close()
        server.close()


def test_a_manifest_over_the_limit_is_a_limit_error():
    body = b'{"schemaVersion": 2, "x": "' + b"x" * oci.MAX_METADATA_BYTES + b'"}'
    server = ManifestServer(body)
    t = remote.Transport(remote.RemoteOptions(deadline=10))
    try:
        with pytest.raises(errors.LimitError):
            Registry(server.host, RegistryConfig(transport=t)).get_manifest("r", "t")
    finally:
        t.close()
        server.close()


def test_a_host_that_never_answered_fails_after_one_round():
    """A wrong port is not an outage: the error comes in seconds, not at the deadline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = remote.Transport(remote.RemoteOptions(deadline=60, backoff=0.05, max_backoff=0.5))
    try:
        start = time.monotonic()
        with pytest.raises(errors.RemoteError, match="Connection refused"):
            Registry(f"127.0.0.1:{port}", RegistryConfig(transport=t)).get_manifest("r", "t")
        assert time.monotonic() - start < 15
    finally:
        t.close()


# ------------------------------------------------------------------ exit with prefetch in flight


def test_exit_without_close_does_not_warn_about_prefetch(registry, fault_proxy, tmp_path):
    """A script that exits with prefetch in flight (no fs.close()): the cut-short fetches are no news."""
    from lazylayer.image import DiskCache, Image

    repo = unique_repo("exit")
    convert.convert(small_image(tmp_path), f"docker://{registry.host}/{repo}:v1", progress=False)
    proxy = fault_proxy(registry.url)
    ref = f"docker://{proxy.host}/{repo}:v1"
    cache = str(tmp_path / "cache")
    with Image(ref, cache=DiskCache(cache)) as img:  # the TOCs land in the cache; no prefetch here
        layers = [layer.digest for layer in img.layers]
    proxy.add_fault("stall", path="/blobs/(" + "|".join(layers) + ")$")  # every frame fetch hangs
    script = textwrap.dedent(f"""
        import time
        from lazylayer.fs import ImageFileSystem
        fs = ImageFileSystem(image={ref!r}, cache_dir={cache!r}, fill=True, skip_instance_cache=True)
        fs.image
        time.sleep(1.0)
        print("exiting", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and "exiting" in out.stdout, out.stderr[-3000:]
    assert any(layers[0] in s.path_qs for s in proxy.log)  # the prefetch was in flight
    assert "prefetch of layer" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
