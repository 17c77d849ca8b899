#!/usr/bin/env python3
"""Remote blob reads over an emulated long link: lazylayer against fsspec, curl and the link itself.

What it measures
    A random blob (``--size-mb``, default 400 MB, MB = 10**6 B) is stored in a
    real registry, Debian's ``docker-registry`` (distribution 2.8), with
    filesystem storage.  It is read through ``benchmarks/netem.py``'s
    ``ShapedProxy``: a loopback TCP proxy that adds ``--rtt`` (10 ms) of round
    trip and caps each direction at ``--rate`` (125e6 B/s = 1 Gbit/s), shared
    by all connections.  All of these are measured in one run:

    Sequential (the whole blob):
      * the link: ``size / rate`` (plus two round trips: handshake and request);
      * ``curl -s -o /dev/null URL``: one TCP stream;
      * ``--curl-streams`` (16) curl processes, each fetching one contiguous
        range (``-r a-b``): the most a client can get out of the link;
      * fsspec ``HTTPFileSystem``: ``fs.cat_file(url)``, and ``fs.open(url,
        block_size=B)`` read in 1 MiB pieces, for each ``--fsspec-block-mib``;
      * lazylayer: ``blob.read(0, size)`` (split into parallel part requests)
        and ``blob.open()`` read in 1 MiB pieces (readahead).
    Random (``--reads`` reads of ``--read-size`` (64 KiB) at distinct random
    64 KiB-aligned offsets, sampled with seed ``--seed`` + 1, the same list for
    everyone):
      * the ideal at concurrency C: ``ceil(reads / C) * rtt + reads * read_size / rate``;
      * a reference client: C threads, each with one keep-alive
        ``http.client`` connection, one GET with ``Range`` per read.  It shows
        what this server and link allow a minimal client at C; the same
        client straight to the registry, without the link, shows the server's
        own limit;
      * fsspec: ``fs.cat_ranges([url] * reads, starts, ends)``;
      * lazylayer: ``blob.read_ranges(list)`` in one call, and C threads each
        calling ``blob.read(offset, read_size)``, for C in ``--concurrency``
        (8, 16, 32).  The thread cases use a transport with
        ``max_connections=C``; everything else of lazylayer uses
        ``--connections`` (16).
    The random cases run twice: against the registry, and against a minimal
    range server (``StaticServer``: asyncio + ``sendfile``) behind its own
    identical link.  docker-registry 2.8 spends milliseconds of CPU on every
    ranged GET, so with the registry every client is bound by the server;
    the minimal server shows what the client itself does.  ``--no-static``
    skips it.  The issue's ideal adds the transfer time to the round trips;
    the tables also give a tighter bound that lets transfers overlap other
    reads' round trips: ``max(ceil(n / C) * (rtt + s / rate), rtt + n * s / rate)``.

Why this way
    Everything reads the same bytes from the same server over the same link,
    in one run, so the ratios hold even on a busy machine.  Cases are
    interleaved (a, b, c, ..., a, b, c, ...), ``--repeat`` runs each, and the
    median is reported with the range.  Every timed run starts with a fresh
    client (new curl process, new fsspec filesystem and aiohttp session, new
    lazylayer ``Transport``), so connection setup is paid as a new process
    would pay it.  The HEAD that fsspec's ``open()`` and lazylayer's
    ``blob.size`` send is made before the clock starts.

    Every read is checked, outside the timed part, so no speed is reported
    for wrong bytes.  Whole-blob results must hash to the blob's sha256.  The
    random results, joined in order, must hash to the sha256 of the expected
    slices.  Streamed 1 MiB pieces are compared with the known data as they
    arrive, which costs about 20 ms per 400 MB.  curl's exit status, HTTP
    status and byte count are checked, and one untimed curl through the proxy
    is hashed.

    The proxy counts the connections accepted and the HTTP request lines
    sent, so every row shows how many requests a client made.  CPU time is
    recorded per run for the client (this process, or curl), the proxy and
    the registry.  Other processes' CPU is taken from /proc/stat minus those;
    on 2 cores a run where others used more than 0.1 core is marked
    **disturbed**.

Targets (from the issue)
    Through a loopback proxy that adds 10 ms round trip and caps at 1 Gbit/s:
      * a 400 MB blob read sequentially reaches >= 90% of the link rate;
      * 1000 random 64 KiB reads finish within 1.3x of the ideal for the
        concurrency used.

Usage
    python -m benchmarks.fetch [--size-mb N] [--reads N] [--repeat N] [--concurrency 8,16,32]
        [--connections N] [--part-mib N] [--curl-streams N] [--fsspec-block-mib 5,64] [--rtt S]
        [--rate B/s] [--seed N] [--only GROUPS] [--no-static] [--quick] [--out FILE] [--json FILE]

    ``--quick`` (64 MB, 200 reads, 1 run, under a minute) is a smoke check only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __name__ == "__main__" and not __package__:
    sys.exit("run it from the repository root as a module: python -m benchmarks.fetch --help")

from benchmarks.common import (
    cpu_children,
    cpu_self,
    machine_line,
    package_version,
    stop_process,
)
from benchmarks.netem import ShapedProxy, die_with_parent

#: the repository root: the static server runs as ``python -m benchmarks.fetch`` from there
ROOT = Path(__file__).resolve().parent.parent

MB = 10**6
KiB = 1 << 10
MiB = 1 << 20
REPO = "bench"
DISTURBED = 0.1  # other processes busy on more than this many cores on average during a run


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------- the registry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Registry:
    """Debian's docker-registry on a free loopback port, filesystem storage under ``root``."""

    CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
"""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> Registry:
        for _ in range(3):  # the free port may be taken between our check and its bind
            self.port = free_port()
            config = self.workdir / "registry.yml"
            config.write_text(self.CONFIG.format(root=self.workdir / "storage", port=self.port))
            with open(self.workdir / "registry.log", "ab") as logf:
                # Own session: a Ctrl-C reaches this script, which stops the registry itself.
                # setpriv: the registry gets SIGTERM if this script dies, even by SIGKILL.
                pdeath = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
                self.proc = subprocess.Popen([*pdeath, "docker-registry", "serve", str(config)], stdout=logf,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.request("GET", "/v2/")[0] == 200:
                        return self
                except OSError:
                    time.sleep(0.05)
            self.close()
        raise SystemExit(f"docker-registry did not start; see {self.workdir / 'registry.log'}")

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def upload(self, data: bytes) -> str:
        """Push ``data`` as a blob of repository REPO (monolithic upload); return its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers, body = self.request("POST", f"/v2/{REPO}/blobs/uploads/")
        if status != 202:
            raise SystemExit(f"upload POST: {status} {body[:200]!r}")
        loc = urlsplit(headers["location"])
        path = loc.path + ("?" + loc.query + "&" if loc.query else "?") + "digest=" + digest
        status, _, body = self.request("PUT", path, body=memoryview(data),
                                       headers={"Content-Type": "application/octet-stream",
                                                "Content-Length": str(len(data))})
        if status != 201:
            raise SystemExit(f"upload PUT: {status} {body[:200]!r}")
        status, headers, _ = self.request("HEAD", f"/v2/{REPO}/blobs/{digest}")
        if status != 200 or int(headers["content-length"]) != len(data):
            raise SystemExit(f"HEAD after upload: {status} {headers}")
        return digest

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid) if self.proc is not None else 0.0

    def version(self) -> str:
        p = subprocess.run(["docker-registry", "--version"], capture_output=True, text=True, check=False)
        return (p.stdout or p.stderr).strip()

    def close(self) -> None:
        p, self.proc = self.proc, None
        stop_process(p)


class StaticServer:
    """A minimal HTTP/1.1 range server for one file (``sendfile``), in its own process.

    It stands in for the registry when the question is what the *client* can
    do.  docker-registry 2.8 reads every blob through a 4 MiB ``bufio.Reader``,
    so each 64 KiB ranged GET costs it 4 MiB of reads and several
    milliseconds of CPU.  This server answers ``GET``/``HEAD`` of ``path``
    (single ``Range``, keep-alive) and ``GET /v2/``; anything else is a 404.
    """

    def __init__(self, file: Path, path: str) -> None:
        self.file, self.path = file, path
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> StaticServer:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fetch", "--_static-server",
                                      str(self.file), self.path, str(os.getpid())], stdout=subprocess.PIPE,
                                     text=True, start_new_session=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.close()
            raise SystemExit(f"static server did not start ({line!r})")
        self.port = int(line.split()[1])
        return self

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid) if self.proc is not None else 0.0

    def close(self) -> None:
        p, self.proc = self.proc, None
        stop_process(p)
        if p is not None and p.stdout is not None:
            p.stdout.close()


def static_server_main(file: str, path: str, parent: int) -> None:
    import asyncio

    die_with_parent(parent)

    size = os.path.getsize(file)
    fobj = open(file, "rb")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                if target == "/v2/":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
                    continue
                if target != path or method not in ("GET", "HEAD"):
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                start, end, status = 0, size - 1, "200 OK"
                rng = headers.get("range")
                if rng and rng.startswith("bytes="):
                    a, _, z = rng[6:].partition("-")
                    if a:
                        start, end = int(a), min(size - 1, int(z) if z else size - 1)
                    else:
                        start = max(0, size - int(z))
                    status = "206 Partial Content"
                    if start > end:
                        writer.write(f"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\n"
                                     "Content-Length: 0\r\n\r\n".encode())
                        continue
                n = end - start + 1
                hdr = f"HTTP/1.1 {status}\r\nContent-Length: {n}\r\nAccept-Ranges: bytes\r\n" \
                      "Content-Type: application/octet-stream\r\n"
                if status.startswith("206"):
                    hdr += f"Content-Range: bytes {start}-{end}/{size}\r\n"
                writer.write((hdr + "\r\n").encode())
                if method == "GET":
                    await loop.sendfile(writer.transport, fobj, start, n)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


# ----------------------------------------------------------------- measuring


def machine_busy() -> float:
    """CPU-s the whole machine has spent busy (all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Endpoint:
    """A server holding the blob, and the emulated link in front of it."""

    label: str  # "registry" | "static"
    url: str  # the blob through the link
    direct: str  # the blob straight from the server
    proxy: ShapedProxy
    cpu: Callable[[], float]  # CPU-s the server process has used


@dataclass
class Bench:
    """What every case needs: the blob, the random offsets."""

    args: argparse.Namespace
    data: bytes
    digest: str
    offsets: list[int]
    random_sha: str  # sha256 of the expected random reads, joined in order

    @property
    def size(self) -> int:
        return len(self.data)

    def random_ranges(self) -> list[tuple[int, int]]:
        return [(o, self.args.read_size) for o in self.offsets]

    def check_whole(self, what: str, got: bytes) -> None:
        if len(got) != self.size or "sha256:" + hashlib.sha256(got).hexdigest() != self.digest:
            raise SystemExit(f"{what}: wrong bytes ({len(got):,} B, not the blob)")

    def check_random(self, what: str, got: list[bytes]) -> None:
        h = hashlib.sha256()
        for b in got:
            h.update(b)
        if len(got) != len(self.offsets) or h.hexdigest() != self.random_sha:
            sizes = {len(b) for b in got}
            raise SystemExit(f"{what}: wrong bytes for the random reads ({len(got)} results, sizes {sizes})")


# A case's setup, untimed: it returns (timed, cleanup).  ``timed()`` does the reads and may return a
# checker, run after the clock stops; ``cleanup()`` may return the client's own counters.
Prepare = Callable[[], tuple[Callable[[], Any], Callable[[], Any]]]


@dataclass
class Run:
    wall: float
    client_cpu: float
    proxy_cpu: float
    registry_cpu: float
    other: float  # cores other processes kept busy on average
    connections: int
    requests: int
    s2c_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)  # the client's own counters, if it has any


@dataclass
class Case:
    """One timed case.  ``prepare`` (untimed) returns the timed callable; it returns a checker (untimed)."""

    name: str
    kind: str  # "seq" | "rand"
    group: str  # "link" | "peer" | "lazylayer" | "reference" | "server"
    command: str
    prepare: Prepare
    ep: Endpoint
    concurrency: int | None = None  # for random reads: the C of the ideal
    via_proxy: bool = True
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    def once(self, b: Bench) -> None:
        timed, cleanup = self.prepare()
        try:
            st0 = self.ep.proxy.stats()
            busy0, self0, child0 = machine_busy(), cpu_self(), cpu_children()
            px0, rg0 = st0["cpu"], self.ep.cpu()
            t0 = time.perf_counter()
            check = timed()
            t1 = time.perf_counter()
            busy1, self1, child1 = machine_busy(), cpu_self(), cpu_children()
            st1 = self.ep.proxy.stats()
            rg1 = self.ep.cpu()
        finally:
            extra = cleanup()
        if check is not None:
            check()  # raises SystemExit on wrong bytes
        wall = t1 - t0
        client = (self1 - self0) + (child1 - child0)
        proxy, reg = st1["cpu"] - px0, rg1 - rg0
        other = max(0.0, (busy1 - busy0) - client - proxy - reg) / wall
        self.runs.append(Run(wall, client, proxy, reg, other, st1["connections"] - st0["connections"],
                             st1["requests"] - st0["requests"], st1["s2c"]["bytes"] - st0["s2c"]["bytes"],
                             extra if isinstance(extra, dict) else {}))

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    @property
    def wall(self) -> float:
        return self.median("wall")

    @property
    def disturbed(self) -> bool:
        return any(r.other > DISTURBED for r in self.runs)


def nothing() -> None:
    pass


# ----------------------------------------------------------------- the cases


def curl_cases(b: Bench, ep: Endpoint) -> list[Case]:
    size, url, n = b.size, ep.url, b.args.curl_streams

    def curl_argv(rng: tuple[int, int] | None) -> list[str]:
        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
        if rng is not None:
            argv += ["-r", f"{rng[0]}-{rng[1]}"]
        return argv + [url]

    def run_curls(ranges: Sequence[tuple[int, int] | None]) -> Callable[[], None]:
        procs = [subprocess.Popen(curl_argv(r), stdout=subprocess.PIPE, text=True) for r in ranges]
        outs = [(p.communicate()[0], p.returncode) for p in procs]

        def check() -> None:
            for (out, rc), r in zip(outs, ranges, strict=True):
                want_status, want = ("200", size) if r is None else ("206", r[1] - r[0] + 1)
                status, got = out.split()
                if rc != 0 or status != want_status or int(got) != want:
                    raise SystemExit(f"curl {r}: exit {rc}, status {status}, {got} bytes (want {want})")
        return check

    step = -(-size // n)
    parts = [(o, min(size, o + step) - 1) for o in range(0, size, step)]
    return [
        Case("`curl -s -o /dev/null URL` (one stream)", "seq", "link", shlex.join(curl_argv(None)),
             lambda: (lambda: run_curls([None]), nothing), ep),
        Case(f"{len(parts)} × `curl -r A-B` in parallel (contiguous ranges)", "seq", "link",
             f"{len(parts)} concurrent `curl -s -o /dev/null -r A-B URL`, equal ranges covering the blob",
             lambda: (lambda: run_curls(parts), nothing), ep),
    ]


def fsspec_cases(b: Bench, ep: Endpoint) -> list[Case]:
    import fsspec
    import fsspec.asyn

    def new_fs() -> tuple[Any, Callable[[], None]]:
        fs = fsspec.filesystem("http", skip_instance_cache=True)

        def close() -> None:
            if fs._session is not None:
                fsspec.asyn.sync(fs.loop, fs._session.close)
        return fs, close

    def cat_file() -> tuple[Callable[[], Any], Callable[[], Any]]:
        fs, close = new_fs()

        def timed() -> Callable[[], None]:
            got = fs.cat_file(ep.url)
            return lambda: b.check_whole("fsspec cat_file", got)
        return timed, close

    def open_read(block: int) -> Prepare:
        def prepare() -> tuple[Callable[[], Any], Callable[[], Any]]:
            fs, close = new_fs()
            f = fs.open(ep.url, "rb", block_size=block)  # sends the HEAD, untimed

            def timed() -> None:
                read_stream(b, f, "fsspec open().read")

            def cleanup() -> None:
                f.close()
                close()
            return timed, cleanup
        return prepare

    def cat_ranges() -> tuple[Callable[[], Any], Callable[[], Any]]:
        fs, close = new_fs()
        n = len(b.offsets)
        starts = b.offsets
        ends = [o + b.args.read_size for o in b.offsets]

        def timed() -> Callable[[], None]:
            got = fs.cat_ranges([ep.url] * n, starts, ends)
            return lambda: b.check_random("fsspec cat_ranges", got)
        return timed, close

    # fsspec runs every coroutine of cat_ranges at once (batch size: open-file limit / 8), and
    # aiohttp's default connector caps open connections at 100: that is its concurrency.
    from fsspec.asyn import _get_batch_size
    batch = _get_batch_size()
    conc = min(x for x in (batch if batch > 0 else 10**9, 100, len(b.offsets)))
    cases = [Case("fsspec `fs.cat_file(url)`", "seq", "peer", "fsspec.filesystem('http').cat_file(url)",
                  cat_file, ep)]
    for mib in b.args.fsspec_block_mib:
        cases.append(Case(f"fsspec `fs.open(url, block_size={mib} MiB)`, 1 MiB reads", "seq", "peer",
                          f"f = fsspec.filesystem('http').open(url, block_size={mib} << 20); f.read(1 << 20) ...",
                          open_read(mib * MiB), ep))
    cases.append(Case(f"fsspec `fs.cat_ranges([url]*{len(b.offsets)}, starts, ends)`", "rand", "peer",
                      "fsspec.filesystem('http').cat_ranges([url] * n, starts, ends)", cat_ranges, ep, conc))
    return cases


def read_stream(b: Bench, f: Any, what: str) -> None:
    """Read file object ``f`` to the end in 1 MiB pieces, comparing each with the known data."""
    data, pos = b.data, 0
    while True:
        chunk = f.read(MiB)
        if not chunk:
            break
        if data[pos:pos + len(chunk)] != chunk:
            raise SystemExit(f"{what}: wrong bytes at offset {pos:,}")
        pos += len(chunk)
    if pos != b.size:
        raise SystemExit(f"{what}: read {pos:,} of {b.size:,} bytes")


def reference_cases(b: Bench, ep: Endpoint, direct: bool) -> list[Case]:
    """C threads, one keep-alive http.client connection each, one ranged GET per read."""
    target = ep.direct if direct else ep.url
    u = urlsplit(target)

    def make(conc: int) -> Prepare:
        def prepare() -> tuple[Callable[[], Any], Callable[[], Any]]:
            local = threading.local()
            conns: list[http.client.HTTPConnection] = []
            lock = threading.Lock()
            n = b.args.read_size

            def one(off: int) -> bytes:
                c = getattr(local, "c", None)
                if c is None:
                    c = local.c = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=60)
                    with lock:
                        conns.append(c)
                c.request("GET", u.path, headers={"Range": f"bytes={off}-{off + n - 1}"})
                r = c.getresponse()
                body = r.read()
                if r.status != 206:
                    raise SystemExit(f"reference client: HTTP {r.status}")
                return body

            pool = concurrent.futures.ThreadPoolExecutor(conc)

            def timed() -> Callable[[], None]:
                got = list(pool.map(one, b.offsets))
                return lambda: b.check_random("reference client", got)

            def cleanup() -> None:
                pool.shutdown(cancel_futures=True)  # on Ctrl-C, drop the reads not yet started
                for c in conns:
                    c.close()
            return timed, cleanup
        return prepare

    where = f"straight to the {'registry' if ep.label == 'registry' else 'server'}, no link" if direct \
        else "through the link"
    return [Case(f"reference: {c} threads × `http.client` keep-alive, {where}", "rand",
                 "server" if direct else "reference",
                 f"{c} threads, each: HTTPConnection.request('GET', path, headers={{'Range': ...}})",
                 make(c), ep, c, via_proxy=not direct)
            for c in b.args.concurrency]


def lazylayer_cases(b: Bench, ep: Endpoint, remote: Any) -> list[Case]:
    args = b.args

    def options(conns: int) -> Any:
        kw: dict[str, Any] = {"max_connections": conns}
        if args.part_mib:
            kw["part_size"] = args.part_mib * MiB
        return remote.RemoteOptions(**kw)

    def new_blob(conns: int) -> tuple[Any, Callable[[], dict[str, Any]]]:
        t = remote.Transport(options(conns))
        blob = remote.open_blob(ep.url, transport=t)
        if blob.size != b.size:  # the HEAD, untimed
            raise SystemExit(f"lazylayer: blob.size {blob.size} != {b.size}")

        def close() -> dict[str, Any]:
            stats = dict(getattr(t, "stats", None).__dict__) if hasattr(t, "stats") else {}
            t.close()
            return stats
        return blob, close

    def read_whole() -> tuple[Callable[[], Any], Callable[[], Any]]:
        blob, close = new_blob(args.connections)

        def timed() -> Callable[[], None]:
            got = blob.read(0, b.size)
            return lambda: b.check_whole("lazylayer read(0, size)", got)
        return timed, close

    def read_into() -> tuple[Callable[[], Any], Callable[[], Any]]:
        blob, close = new_blob(args.connections)
        buf = bytearray(b.size)  # the caller's buffer, allocated (and faulted in) untimed
        buf[::4096] = b"\x01" * len(buf[::4096])

        def timed() -> Callable[[], None]:
            blob.readinto(buf, 0)
            return lambda: b.check_whole("lazylayer readinto(buf, 0)", buf)
        return timed, close

    def read_open() -> tuple[Callable[[], Any], Callable[[], Any]]:
        blob, close = new_blob(args.connections)
        f = blob.open()

        def timed() -> None:
            read_stream(b, f, "lazylayer open().read")

        def cleanup() -> dict[str, Any]:
            f.close()
            return close()
        return timed, cleanup

    def read_ranges() -> tuple[Callable[[], Any], Callable[[], Any]]:
        blob, close = new_blob(args.connections)
        ranges = b.random_ranges()

        def timed() -> Callable[[], None]:
            got = blob.read_ranges(ranges)
            return lambda: b.check_random("lazylayer read_ranges", got)
        return timed, close

    def threads(conc: int) -> Prepare:
        def prepare() -> tuple[Callable[[], Any], Callable[[], Any]]:
            blob, close = new_blob(conc)
            pool = concurrent.futures.ThreadPoolExecutor(conc)
            list(pool.map(lambda _: None, range(conc)))  # start the threads, untimed
            n = args.read_size

            def timed() -> Callable[[], None]:
                got = list(pool.map(lambda off: blob.read(off, n), b.offsets))
                return lambda: b.check_random(f"lazylayer {conc} threads", got)

            def cleanup() -> dict[str, Any]:
                pool.shutdown(cancel_futures=True)  # on Ctrl-C, drop the reads not yet started
                return close()
            return timed, cleanup
        return prepare

    c = args.connections
    cases = [
        Case(f"lazylayer `blob.read(0, size)`, max_connections={c}", "seq", "lazylayer",
             f"remote.open_blob(url, transport=Transport(RemoteOptions(max_connections={c}))).read(0, size)",
             read_whole, ep),
        Case(f"lazylayer `blob.readinto(buf, 0)`, max_connections={c}", "seq", "lazylayer",
             "blob.readinto(bytearray(size), 0)", read_into, ep),
        Case(f"lazylayer `blob.open()`, 1 MiB reads, max_connections={c}", "seq", "lazylayer",
             "f = blob.open(); f.read(1 << 20) ...", read_open, ep),
        Case(f"lazylayer `blob.read_ranges(list)`, max_connections={c}", "rand", "lazylayer",
             "blob.read_ranges([(offset, 65536), ...])", read_ranges, ep, c),
    ]
    for conc in args.concurrency:
        cases.append(Case(f"lazylayer, {conc} threads × `blob.read(off, {args.read_size // KiB} KiB)`, "
                          f"max_connections={conc}", "rand", "lazylayer",
                          f"ThreadPoolExecutor({conc}).map(lambda o: blob.read(o, 65536), offsets)",
                          threads(conc), ep, conc))
    return cases


# ----------------------------------------------------------------- link probes


def http_rtts(url: str, n: int) -> list[float]:
    """Round trips of ``GET /v2/`` on one keep-alive connection (after one to open it)."""
    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    out = []
    try:
        for i in range(n + 1):
            t0 = time.perf_counter()
            c.request("GET", "/v2/")
            r = c.getresponse()
            r.read()
            if i:
                out.append(time.perf_counter() - t0)
    finally:
        c.close()
    return out


def range_latencies(url: str, offsets: list[int], size: int) -> list[float]:
    """Latency of single ranged GETs, one at a time on one keep-alive connection."""
    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    out = []
    try:
        for off in offsets:
            t0 = time.perf_counter()
            c.request("GET", u.path, headers={"Range": f"bytes={off}-{off + size - 1}"})
            r = c.getresponse()
            r.read()
            out.append(time.perf_counter() - t0)
    finally:
        c.close()
    return out


# ----------------------------------------------------------------- report


def ms(x: float) -> str:
    return f"{x * 1e3:.2f}"


def ideal_random(reads: int, conc: int, read_size: int, rtt: float, rate: float) -> float:
    """The issue's ideal: every round of C reads costs one round trip, and the bytes cost the link rate."""
    return math.ceil(reads / conc) * rtt + reads * read_size / rate


def bound_random(reads: int, conc: int, read_size: int, rtt: float, rate: float) -> float:
    """A tighter physical bound: transfers overlap other requests' round trips.

    Each read needs a round trip plus its own bytes on the link, C at a time,
    and all the bytes need the link: max(ceil(n / C) * (rtt + s / rate), rtt + n * s / rate).
    Connection setup is not counted.
    """
    return max(math.ceil(reads / conc) * (rtt + read_size / rate), rtt + reads * read_size / rate)


def environment(remote: Any, registry: Registry) -> list[str]:
    ver = package_version
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    opts = repr(remote.RemoteOptions()) if remote is not None else "not importable"
    machine = machine_line()
    software = (f"- Python {platform.python_version()}; lazylayer {ver('lazylayer')}; fsspec {ver('fsspec')}; "
                f"aiohttp {ver('aiohttp')}; {' '.join(curl.split()[:2])}; {registry.version()}")
    return [machine, software, f"- lazylayer defaults: `{opts}`"]


def other_cell(c: Case) -> str:
    return f"{max(r.other for r in c.runs):.2f}{' **disturbed**' if c.disturbed else ''}"


def random_table(b: Bench, rows: list[Case]) -> list[str]:
    a, n = b.args, len(b.offsets)
    header = ("| reader | C | seconds | ideal s | vs ideal | vs bound | reads/s | requests | connections | MB moved "
              "| client cores | proxy cores | server cores | other load |")
    L = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in rows:
        walls = [r.wall for r in c.runs]
        ideal = ideal_random(n, c.concurrency or 1, a.read_size, a.rtt, a.rate)
        bound = bound_random(n, c.concurrency or 1, a.read_size, a.rtt, a.rate)
        vs = f"{c.wall / ideal:.2f}x | {c.wall / bound:.2f}x" if c.via_proxy else "(no link) | (no link)"
        req = (f"{c.median('requests'):,.0f} | {c.median('connections'):,.0f} | {c.median('s2c_bytes') / MB:,.1f}"
               if c.via_proxy else "— | — | —")
        L.append(f"| {c.name} | {c.concurrency} | {c.wall:.3f} ({min(walls):.3f}–{max(walls):.3f}) | {ideal:.3f} "
                 f"| {vs} | {n / c.wall:,.0f} | {req} | {c.median('client_cpu') / c.wall:.2f} "
                 f"| {c.median('proxy_cpu') / c.wall:.2f} | {c.median('registry_cpu') / c.wall:.2f} "
                 f"| {other_cell(c)} |")
    return L


def render(b: Bench, cases: list[Case], cmd: str, probes: dict[str, dict[str, Any]], load: str,
           env: list[str], lazylayer_error: str | None, window: int) -> tuple[str, dict[str, Any]]:
    a = b.args
    rate, rtt, size, n = a.rate, a.rtt, b.size, len(b.offsets)
    link_mbps = rate / MB
    seq_ideal = size / rate + 2 * rtt
    done = [c for c in cases if c.runs]
    runs = max((len(c.runs) for c in done), default=0)
    L = [f"Command: `{cmd}`", ""] + env
    blob = (f"- Blob: {size:,} B of seeded random bytes (seed {a.seed}), `{b.digest[:19]}…`, pushed to "
            f"`docker-registry` (filesystem storage) as `{REPO}`; every client reads "
            f"`http://127.0.0.1:PORT/v2/{REPO}/blobs/sha256:…` through `ShapedProxy(rtt={rtt}, rate={rate:g})` "
            f"(window {window >> 20} MiB per connection, bottleneck buffer one bandwidth-delay product)")
    how = (f"- Median of {runs} run(s) per case, cases interleaved; range over runs in brackets. "
           f"MB = 10^6 B. Cores = CPU-s / wall-s. Requests and connections are counted by the proxy. "
           f"Other load = the most cores other processes kept busy during any run of the case "
           f"(**disturbed** above {DISTURBED}).")
    L += [blob, how, f"- Load: {load}"]
    if lazylayer_error:
        L.append(f"- **lazylayer not measured (or failed)**: {lazylayer_error}")
    L += ["", "Link and servers, measured in the same run (median, p10–p90):", ""]
    for label, pr in probes.items():
        for what, key in (("HTTP `GET /v2/` round trip through the link (keep-alive)", "rtt_link"),
                          ("HTTP `GET /v2/` straight to the server", "rtt_direct"),
                          (f"one {a.read_size // KiB} KiB ranged GET through the link, one at a time", "range_link"),
                          (f"one {a.read_size // KiB} KiB ranged GET straight to the server, one at a time",
                           "range_direct")):
            xs = pr[key]
            q = statistics.quantiles(xs, n=10)
            L.append(f"- {label}: {what}: {ms(statistics.median(xs))} ms ({ms(q[0])}–{ms(q[-1])}), "
                     f"{len(xs)} requests")
        L.append(f"- {label}: server CPU per {a.read_size // KiB} KiB ranged GET (the ones straight to it): "
                 f"{pr['server_cpu_per_range'] * 1e3:.2f} ms")

    seq = [c for c in done if c.kind == "seq"]
    best_curl = max((size / MB / c.wall for c in seq if c.group == "link"), default=float("nan"))
    intro = (f"Link rate {link_mbps:,.0f} MB/s = 100%. Ideal time {seq_ideal:.3f} s ({size / MB / seq_ideal:,.1f} "
             "MB/s): the transfer plus two round trips, for the handshake and the request.")
    header = ("| reader | MB/s | % of link | vs best curl | requests | connections | client cores | proxy cores "
              "| registry cores | other load |")
    L += ["", f"#### Sequential read of the whole blob, docker-registry ({size / MB:,.0f} MB)", "", intro, "",
          header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in seq:
        rates = [size / MB / r.wall for r in c.runs]
        mbps = size / MB / c.wall
        L.append(f"| {c.name} | {mbps:,.1f} ({min(rates):,.1f}–{max(rates):,.1f}) | {mbps / link_mbps * 100:.1f}% "
                 f"| {mbps / best_curl:.2f}x | {c.median('requests'):,.0f} | {c.median('connections'):,.0f} "
                 f"| {c.median('client_cpu') / c.wall:.2f} | {c.median('proxy_cpu') / c.wall:.2f} "
                 f"| {c.median('registry_cpu') / c.wall:.2f} | {other_cell(c)} |")

    formula = (f"ideal at concurrency C = ceil({n} / C) × {rtt * 1e3:g} ms + {n} × {a.read_size // KiB} KiB / "
               f"{link_mbps:,.0f} MB/s (the issue's formula); bound = max(ceil({n} / C) × ({rtt * 1e3:g} ms + "
               f"{a.read_size // KiB} KiB / {link_mbps:,.0f} MB/s), {rtt * 1e3:g} ms + {n} × {a.read_size // KiB} KiB "
               f"/ {link_mbps:,.0f} MB/s), which lets transfers overlap other reads' round trips")
    rnd_reg = [c for c in done if c.kind == "rand" and c.ep.label == "registry"]
    rnd_static = [c for c in done if c.kind == "rand" and c.ep.label == "static"]
    sample = (f"{n:,} random reads of {a.read_size // KiB} KiB (distinct aligned offsets, sampled with seed "
              f"{a.seed + 1})")
    if rnd_reg:
        L += ["", f"#### {sample}, docker-registry", "", f"{formula}.", ""] + random_table(b, rnd_reg)
    if rnd_static:
        L += ["", f"#### {sample}, minimal range server (`sendfile`) in place of the registry", "",
              f"Same link, same {formula}.", ""] + random_table(b, rnd_static)

    L += ["", "#### Targets", "", "| target | server | measured | met? |", "|---|---|---|---|"]
    targets: list[dict[str, Any]] = []
    for c in seq:
        if c.group != "lazylayer":
            continue
        mbps = size / MB / c.wall
        ok = mbps >= 0.9 * link_mbps
        targets.append({"target": "sequential >= 90% of link", "server": c.ep.label, "case": c.name,
                        "value": mbps / link_mbps, "met": ok})
        L.append(f"| {size / MB:,.0f} MB sequential ≥ 90% of the link rate: {c.name} | {c.ep.label} | "
                 f"{mbps:,.1f} of {link_mbps:,.0f} MB/s = {mbps / link_mbps * 100:.1f}% | "
                 f"{'met' if ok else '**not met**'} |")
    for c in rnd_reg + rnd_static:
        if c.group != "lazylayer":
            continue
        ideal = ideal_random(n, c.concurrency or 1, a.read_size, rtt, rate)
        ok = c.wall <= 1.3 * ideal
        targets.append({"target": "random <= 1.3x ideal", "server": c.ep.label, "case": c.name,
                        "value": c.wall / ideal, "met": ok})
        L.append(f"| {n:,} random {a.read_size // KiB} KiB reads ≤ 1.3x ideal at C={c.concurrency}: {c.name} "
                 f"| {c.ep.label} | {c.wall:.3f} s vs {ideal:.3f} s = {c.wall / ideal:.2f}x | "
                 f"{'met' if ok else '**not met**'} |")
    if not targets:
        L.append("| both targets | — | lazylayer not measured | — |")

    result = {
        "command": cmd, "environment": env, "load": load, "lazylayer_error": lazylayer_error,
        "blob": {"size": size, "digest": b.digest, "seed": a.seed},
        "link": {"rtt": rtt, "rate": rate, "window": window},
        "probes": {label: {k: (statistics.median(v) if isinstance(v, list) else v) for k, v in pr.items()}
                   for label, pr in probes.items()},
        "random": {"reads": n, "read_size": a.read_size},
        "cases": [{"name": c.name, "kind": c.kind, "group": c.group, "server": c.ep.label, "command": c.command,
                   "concurrency": c.concurrency, "via_proxy": c.via_proxy, "median_wall": c.wall,
                   "ideal": (ideal_random(n, c.concurrency, a.read_size, rtt, rate)
                             if c.kind == "rand" and c.concurrency else seq_ideal),
                   "bound": (bound_random(n, c.concurrency, a.read_size, rtt, rate)
                             if c.kind == "rand" and c.concurrency else seq_ideal),
                   "disturbed": c.disturbed, "runs": [r.__dict__ for r in c.runs]} for c in done],
        "targets": targets,
    }
    return "\n".join(L) + "\n", result


def probe(ep: Endpoint, offsets: list[int], read_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {"rtt_link": http_rtts(ep.url, 50), "rtt_direct": http_rtts(ep.direct, 50),
                           "range_link": range_latencies(ep.url, offsets, read_size)}
    c0 = ep.cpu()
    out["range_direct"] = range_latencies(ep.direct, offsets, read_size)
    out["server_cpu_per_range"] = (ep.cpu() - c0) / len(offsets)
    log(f"{ep.label}: HTTP round trip through the link {ms(statistics.median(out['rtt_link']))} ms, straight "
        f"{ms(statistics.median(out['rtt_direct']))} ms; one {read_size // KiB} KiB range "
        f"{ms(statistics.median(out['range_link']))} / {ms(statistics.median(out['range_direct']))} ms; server "
        f"CPU {out['server_cpu_per_range'] * 1e3:.2f} ms per range")
    return out


# ----------------------------------------------------------------- main


def make_data(size: int, seed: int) -> bytes:
    r = random.Random(seed)
    chunks = [r.randbytes(MiB) for _ in range(size // MiB)]
    if size % MiB:
        chunks.append(r.randbytes(size % MiB))
    return b"".join(chunks)


def import_lazylayer() -> tuple[Any, str | None]:
    try:
        from lazylayer import remote
        for name in ("RemoteOptions", "Transport", "open_blob"):
            getattr(remote, name)
        return remote, None
    except Exception as e:
        return None, f"`from lazylayer import remote` failed: {type(e).__name__}: {e}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, help="blob size in MB of 10**6 B (default 400; 64 with --quick)")
    ap.add_argument("--reads", type=int, help="random reads (default 1000; 200 with --quick)")
    ap.add_argument("--read-size", type=int, default=64 * KiB, help="bytes per random read (default 65536)")
    ap.add_argument("--repeat", type=int, help="runs per case, median reported (default 5; 1 with --quick)")
    ap.add_argument("--concurrency", default="8,16,32", help="thread counts for random reads (default 8,16,32)")
    ap.add_argument("--connections", type=int, default=16,
                    help="lazylayer max_connections for the sequential and read_ranges cases (default 16)")
    ap.add_argument("--part-mib", type=int, default=0, help="lazylayer part_size in MiB (default: its own)")
    ap.add_argument("--curl-streams", type=int, default=16, help="parallel curl range requests (default 16)")
    ap.add_argument("--fsspec-block-mib", default="5,64",
                    help="block sizes for fsspec open() in MiB (default 5,64; 5 MiB is fsspec's default)")
    ap.add_argument("--rtt", type=float, default=0.010, help="round-trip time of the link, s (default 0.010)")
    ap.add_argument("--rate", type=float, default=125e6, help="link rate, bytes/s (default 125e6 = 1 Gbit/s)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--only", default="", help="comma-separated groups to run: link,peer,reference,server,lazylayer")
    ap.add_argument("--no-static", action="store_true",
                    help="skip the random reads against the minimal range server")
    ap.add_argument("--workdir", type=Path, default=None, help="registry storage (default: a temporary directory)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 MB, 200 reads, 1 run")
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--json", type=Path, help="write all numbers as JSON here")
    args = ap.parse_args(argv)
    args.size_mb = args.size_mb or (64 if args.quick else 400)
    args.reads = args.reads or (200 if args.quick else 1000)
    args.repeat = args.repeat or (1 if args.quick else 5)
    args.concurrency = [int(x) for x in args.concurrency.split(",") if x]
    args.fsspec_block_mib = [int(x) for x in args.fsspec_block_mib.split(",") if x]
    args.only = {x for x in args.only.split(",") if x}
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cmd = shlex.join(["python", "-m", "benchmarks.fetch", *(sys.argv[1:] if argv is None else argv)])
    for tool in ("docker-registry", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    # SIGTERM unwinds like Ctrl-C, so the registry, the servers and the proxies are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    remote, lazylayer_error = import_lazylayer()
    if lazylayer_error:
        log(f"warning: {lazylayer_error}; measuring the others only")

    size = args.size_mb * MB
    blocks = size // args.read_size
    if args.reads > blocks:
        raise SystemExit(f"{args.reads} distinct {args.read_size}-byte reads need a blob of at least "
                         f"{args.reads * args.read_size:,} bytes")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lazylayer-fetch-",
                                                                   dir=args.workdir)))
        log(f"generating {size:,} random bytes (seed {args.seed})")
        data = make_data(size, args.seed)
        registry = Registry(tmp).start()
        stack.callback(registry.close)
        log(f"registry on 127.0.0.1:{registry.port}; uploading")
        t0 = time.perf_counter()
        digest = registry.upload(data)
        log(f"uploaded {digest} in {time.perf_counter() - t0:.1f} s")
        path = f"/v2/{REPO}/blobs/{digest}"

        def endpoint(label: str, port: int, cpu: Callable[[], float]) -> Endpoint:
            proxy = ShapedProxy(("127.0.0.1", port), rtt=args.rtt, rate=args.rate).start()
            stack.callback(proxy.close)
            log(f"{label} on 127.0.0.1:{port}, behind the proxy on 127.0.0.1:{proxy.port} "
                f"(rtt {args.rtt * 1e3:g} ms, {args.rate * 8 / 1e9:g} Gbit/s)")
            return Endpoint(label, f"http://127.0.0.1:{proxy.port}{path}", f"http://127.0.0.1:{port}{path}",
                            proxy, cpu)

        endpoints = [endpoint("registry", registry.port, registry.cpu)]
        if not args.no_static:
            # The registry's own copy of the blob, served by the minimal server.
            blob_file = tmp / "storage/docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
            static = StaticServer(blob_file, path).start()
            stack.callback(static.close)
            endpoints.append(endpoint("static", static.port, static.cpu))

        rng = random.Random(args.seed + 1)
        offsets = [k * args.read_size for k in rng.sample(range(blocks), args.reads)]
        h = hashlib.sha256()
        for o in offsets:
            h.update(data[o:o + args.read_size])
        b = Bench(args, data, digest, offsets, h.hexdigest())

        # Untimed: each link delivers the exact blob (this also puts it in the page cache).
        for ep in endpoints:
            got = subprocess.run(f"curl -sf {shlex.quote(ep.url)} | sha256sum", shell=True, capture_output=True,
                                 text=True, check=True).stdout.split()[0]
            if "sha256:" + got != digest:
                raise SystemExit(f"curl through the proxy to the {ep.label} got sha256:{got}, not {digest}")
        log("curl through each proxy: bytes match the digest")
        probes = {ep.label: probe(ep, offsets[:50], args.read_size) for ep in endpoints}

        reg = endpoints[0]
        cases = curl_cases(b, reg) + fsspec_cases(b, reg)
        if remote is not None:
            cases += lazylayer_cases(b, reg, remote)
        cases += reference_cases(b, reg, direct=False) + reference_cases(b, reg, direct=True)
        for ep in endpoints[1:]:  # random reads only: sequential reads are not what the registry limits
            more = fsspec_cases(b, ep) + (lazylayer_cases(b, ep, remote) if remote is not None else [])
            more += reference_cases(b, ep, direct=False) + reference_cases(b, ep, direct=True)
            cases += [c for c in more if c.kind == "rand"]
        if args.only:
            cases = [c for c in cases if c.group in args.only]
        order = ["link", "peer", "lazylayer", "reference", "server"]
        cases.sort(key=lambda c: (c.kind != "seq", c.ep.label != "registry", order.index(c.group)))

        def ours() -> float:
            return (cpu_self() + cpu_children() + sum(ep.proxy.stats()["cpu"] + ep.cpu() for ep in endpoints))

        busy0, ours0 = machine_busy(), ours()
        t_start, load0 = time.perf_counter(), os.getloadavg()[0]
        for i in range(args.repeat):
            for c in cases:
                if c.error:
                    continue
                try:
                    c.once(b)
                except SystemExit:
                    raise
                except Exception as e:
                    c.error = f"{type(e).__name__}: {e}"
                    log(f"run {i + 1}/{args.repeat}: [{c.ep.label}] {c.name}: FAILED: {c.error}")
                    if c.group == "lazylayer" and lazylayer_error is None:
                        lazylayer_error = f"{c.name}: {c.error}"
                    continue
                r = c.runs[-1]
                extra = (f"{size / MB / r.wall:,.1f} MB/s" if c.kind == "seq" else
                         f"{len(offsets) / r.wall:,.0f} reads/s")
                log(f"run {i + 1}/{args.repeat}: [{c.ep.label}] {c.name}: {r.wall:.3f} s, {extra}, "
                    f"{r.requests} requests, {r.connections} connections, client {r.client_cpu / r.wall:.2f} "
                    f"cores, server {r.registry_cpu / r.wall:.2f}, others {r.other:.2f}")
        t_total = time.perf_counter() - t_start
        other = max(0.0, machine_busy() - busy0 - (ours() - ours0))
        load = (f"the timed part took {t_total:.0f} s; other processes used {other:.1f} CPU-s "
                f"({other / t_total:.2f} cores on average); 1-min load average {load0:.2f} at start, "
                f"{os.getloadavg()[0]:.2f} at end")
        failed = [f"[{c.ep.label}] {c.name}: {c.error}" for c in cases if c.error]
        report, result = render(b, cases, cmd, probes, load, environment(remote, registry), lazylayer_error,
                                reg.proxy.window)
        if failed:
            report += "\nFailed cases: " + "; ".join(failed) + "\n"
            result["failed"] = failed
    print(report)
    if args.out:
        args.out.write_text(report)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--_static-server":
        static_server_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
