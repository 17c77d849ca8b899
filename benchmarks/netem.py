#!/usr/bin/env python3
"""A loopback TCP proxy that behaves like a long, narrow link (netem in userspace).

What it emulates
    Every connection accepted on ``127.0.0.1:PORT`` is forwarded to one
    upstream ``host:port``.  Between the two, each direction goes through an
    emulated link:

    * **Propagation delay.**  Every chunk is delivered ``rtt / 2`` after it
      left the serializer.  Chunks are *scheduled* (delivery time = departure
      + delay), never processed one after the other, so pipelined requests and
      many connections overlap the way they do on a real long link.
    * **Rate cap.**  One serializer per direction, shared by all connections: a
      FIFO virtual clock (a token bucket of depth zero).  A chunk of ``n``
      bytes that arrives at ``t`` departs at ``max(t, link_free) + n / rate``.
      ``rate`` is in bytes per second (1 Gbit/s = 125e6).
    * **Window.**  A connection may have at most ``window`` bytes per direction
      read from its sender and not yet acknowledged, where a chunk counts as
      acknowledged ``rtt / 2`` after its delivery (the ACK's trip back).  One
      stream therefore moves at most ``window / rtt``, as a TCP stream does.
      The default, 4 MiB, is Linux's default ``tcp_wmem`` maximum, which
      bounds a sender's unacknowledged data.  At 10 ms that allows 400 MB/s,
      more than 1 Gbit/s, so one stream can fill the link.
    * **Bottleneck buffer.**  When a direction's serializer queue holds more
      than ``buffer`` bytes (default: one bandwidth-delay product), senders are
      paused until it drains.  This stands in for a router buffer plus the
      congestion control that keeps a queue bounded.  Without it, 16 parallel
      streams with 4 MiB windows would queue 64 MiB, which is half a second.
    * **Handshake.**  The client's connect() to the proxy returns at once. So,
      as with a real SYN/SYN-ACK, its first bytes are not sent on before one
      RTT has passed since the accept.

    Not emulated: packet loss, slow start (a new connection may use its whole
    window at once; real TCP starts at 10 segments and needs about 3 RTTs to
    send 64 KiB), TLS, and link-layer overheads.  Those would all make a real
    link slower, so this is a best case for the client.

Accuracy
    A stock asyncio loop fires timers with 1 ms resolution: epoll timeouts are
    whole milliseconds, rounded up, and a float rounding in that conversion
    often adds one more millisecond.  On a 5 ms delay that adds about
    +1 ms to every round trip.  The proxy's loop therefore sleeps on a timerfd
    (nanosecond resolution; see ``TimerfdEpollSelector``) with the process's
    timer slack set to 1 us.  What remains is the time the machine takes to
    wake the process, 0.15-0.3 ms on the VM this was written on.  The proxy
    measures how late its timers fire (a moving average, ``Wakeup``) and aims
    every delivery that much early, plus 0.1 ms for its own forwarding.  A
    ping-pong through it then measures 10.1-10.35 ms at rtt 10 ms (0.05 ms
    straight).  Chunks are read up to 256 KiB at a time (asyncio's transport
    maximum) and socket buffers are left to the kernel's autotuning; with no
    cap the proxy forwards about 1.5 GB/s, so at 125 MB/s it is not the
    bottleneck (0.15 cores).  ``python benchmarks/netem.py --selftest``
    measures the round-trip time by ping-pong, bulk throughput with one and
    with 8 connections, and the proxy's own capacity and CPU use with no cap.

Use
    As a library (the proxy runs in its own process, so it does not share a GIL
    with the client being measured)::

        with ShapedProxy(upstream=("127.0.0.1", 5000), rtt=0.010, rate=125e6) as p:
            url = f"http://127.0.0.1:{p.port}/..."
            p.stats()     # {"connections": .., "requests": .., "c2s": {...}, "s2c": {...}, "cpu": ..}
            p.reset()     # zero the counters

    As a script::

        python benchmarks/netem.py --upstream 127.0.0.1:5000 [--port 0] [--rtt 0.010] [--rate 125e6]
        python benchmarks/netem.py --selftest

    The script prints ``PORT <n>`` once it listens.  It then reads commands on
    stdin, one per line: ``stats`` (prints one JSON line), ``reset``, ``quit``.
    It stops at end of stdin or on Ctrl-C; with ``--no-stdin``, only on
    Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import json
import os
import resource
import select
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


class Wakeup:
    """How early to aim deliveries: how late the loop's timers fire (moving average) plus ``FORWARD``."""

    FORWARD = 0.0001  # what forwarding costs past the timer, per direction (measured: about 0.1 ms)

    def __init__(self) -> None:
        self.late = 0.0001

    @property
    def early(self) -> float:
        return self.late + self.FORWARD

    def observe(self, late: float) -> None:
        self.late += 0.02 * (min(max(late, 0.0), 0.002) - self.late)


WAKEUP = Wakeup()
DEFAULT_WINDOW = 4 << 20
CHUNK = 256 << 10  # asyncio's socket transports read at most this much per recv()


# ============================================================== the proxy process


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)


class TimerfdEpollSelector(selectors.EpollSelector):
    """An epoll selector whose timeouts are kept by a timerfd: nanoseconds, not epoll's rounded-up milliseconds.

    asyncio calls ``select(timeout)`` with the time to its next timer.  Here a
    one-shot timerfd, registered in the same epoll set, is armed for exactly
    that long, and epoll waits for it (with a 2 ms safety margin).  The
    timerfd's own events never reach asyncio.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tfd = _libc.timerfd_create(1, 0o4000 | 0o2000000)  # CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC
        if self._tfd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        self._selector.register(self._tfd, select.EPOLLIN)  # type: ignore[attr-defined]
        self._spec = _Itimerspec()

    def close(self) -> None:
        os.close(self._tfd)
        super().close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            t = -1.0
        elif timeout <= 0:
            t = 0.0
        else:
            ns = max(1, int(timeout * 1e9))
            self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(ns, 1_000_000_000)
            _libc.timerfd_settime(self._tfd, 0, ctypes.byref(self._spec), None)
            t = timeout + 0.002
        ready: list[tuple[selectors.SelectorKey, int]] = []
        try:
            events = self._selector.poll(t, len(self._fd_to_key) + 1)  # type: ignore[attr-defined]
        except InterruptedError:
            return ready
        for fd, event in events:
            if fd == self._tfd:
                try:
                    os.read(fd, 8)
                except BlockingIOError:
                    pass
                continue
            mask = 0
            if event & ~select.EPOLLIN:
                mask |= selectors.EVENT_WRITE
            if event & ~select.EPOLLOUT:
                mask |= selectors.EVENT_READ
            key = self._fd_to_key.get(fd)  # type: ignore[attr-defined]
            if key:
                ready.append((key, mask & key.events))
        return ready


def precise_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers fire within a fraction of a millisecond (stock asyncio: 1-2 ms late)."""
    _libc.prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK: 1 us instead of 50 us
    try:
        return asyncio.SelectorEventLoop(TimerfdEpollSelector())
    except (OSError, AttributeError):
        return asyncio.new_event_loop()


class Link:
    """One direction of the emulated link, shared by every connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rate: float, delay: float, buffer: int) -> None:
        self.loop = loop
        self.rate = rate  # bytes/s; 0 = unlimited
        self.delay = delay
        self.buffer = buffer
        self.free_at = 0.0  # when the serializer finishes what it has been given
        self.waiters: collections.deque[Pump] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.bytes = 0
        self.chunks = 0

    def send(self, n: int, t: float) -> float:
        """Put ``n`` bytes on the wire at ``t`` (or later, behind earlier chunks); return their delivery time."""
        self.bytes += n
        self.chunks += 1
        if self.rate:
            self.free_at = max(t, self.free_at) + n / self.rate
            return self.free_at + self.delay
        return t + self.delay

    def full(self, now: float) -> bool:
        return bool(self.rate) and (self.free_at - now) * self.rate > self.buffer

    def wait(self, pump: Pump) -> None:
        self.waiters.append(pump)
        if self.timer is None:
            self.timer = self.loop.call_at(self.free_at - self.buffer / self.rate, self._wake)

    def _wake(self) -> None:
        self.timer = None
        now = self.loop.time()
        if self.full(now):
            self.timer = self.loop.call_at(self.free_at - self.buffer / self.rate, self._wake)
            return
        waiters, self.waiters = self.waiters, collections.deque()
        for pump in waiters:
            pump.maybe_resume()


class Pump:
    """One direction of one connection: reads from ``src``, delivers to ``dst`` through ``link``."""

    def __init__(self, conn: Conn, link: Link, window: int, not_before: float = 0.0,
                 count_requests: bool = False) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.link = link
        self.window = window
        self.not_before = not_before
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.unacked = 0
        self.paused = False  # src.pause_reading() in force
        self.dst_blocked = False  # dst's write buffer is above its high-water mark
        self.eof_in = False  # src sent EOF (queued for delivery)
        self.done = False  # EOF delivered to dst
        self.count_requests = count_requests
        self.tail = b""

    # --- input side
    def data(self, data: bytes) -> None:
        now = self.loop.time()
        if self.count_requests:  # HTTP/1.x request lines seen by the proxy
            seen = self.tail + data
            self.conn.server.requests += seen.count(b" HTTP/1.1\r\n") + seen.count(b" HTTP/1.0\r\n")
            self.tail = seen[-10:]
        deliver = self.link.send(len(data), max(now, self.not_before))
        self.unacked += len(data)
        self.queue.append((deliver, data))
        if self.timer is None:
            self._schedule(now)
        self.check_pause(now)

    def eof(self) -> None:
        if self.eof_in:
            return
        self.eof_in = True
        now = self.loop.time()
        self.queue.append((self.link.send(0, max(now, self.not_before)), None))
        if self.timer is None:
            self._schedule(now)

    def check_pause(self, now: float) -> None:
        if self.paused or self.src is None:
            return
        full = self.link.full(now)
        if self.unacked >= self.window or self.dst_blocked or full:
            self.paused = True
            self.src.pause_reading()
            if full:
                self.link.wait(self)

    def maybe_resume(self) -> None:
        if not self.paused or self.src is None or self.src.is_closing():
            return
        now = self.loop.time()
        if self.unacked < self.window and not self.dst_blocked:
            if self.link.full(now):
                self.link.wait(self)
                return
            self.paused = False
            self.src.resume_reading()

    # --- output side
    def _schedule(self, now: float) -> None:
        when = self.queue[0][0]
        if when - WAKEUP.early <= now:
            self.flush()
        else:
            self.timer = self.loop.call_at(when - WAKEUP.early, self.flush, when - WAKEUP.early)

    def flush(self, aimed: float | None = None) -> None:
        self.timer = None
        if self.dst is None:  # upstream not connected yet: Side.connection_made reschedules
            return
        now = self.loop.time()
        if aimed is not None:  # fired by a timer: learn how late timers are
            WAKEUP.observe(now - aimed)
        batch: list[bytes] = []
        eof = False
        while self.queue and self.queue[0][0] - WAKEUP.early <= now:
            _, data = self.queue.popleft()
            if data is None:
                eof = True
                break
            batch.append(data)
        n = sum(map(len, batch))
        dst = self.dst
        if dst is not None and not dst.is_closing():
            if batch:
                dst.write(batch[0] if len(batch) == 1 else b"".join(batch))
            if eof:
                if dst.can_write_eof():
                    dst.write_eof()
                else:
                    dst.close()
        if eof:
            self.queue.clear()
            self.done = True
            self.conn.maybe_close()
        if n:
            if self.link.delay:
                self.loop.call_at(now + self.link.delay, self.ack, n)
            else:
                self.ack(n)
        if self.queue:
            self._schedule(now)

    def ack(self, n: int) -> None:
        self.unacked -= n
        self.maybe_resume()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class Side(asyncio.Protocol):
    """The protocol of one socket (the client's or the upstream's) of a proxied connection."""

    def __init__(self, conn: Conn, reads: Pump, writes: Pump) -> None:
        self.conn = conn
        self.reads = reads  # the pump this socket feeds
        self.writes = writes  # the pump that delivers into this socket
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.reads.src = transport
        self.writes.dst = transport
        transport.set_write_buffer_limits(high=1 << 20)
        if self.writes.queue and self.writes.timer is None:
            self.writes._schedule(self.conn.loop.time())

    def data_received(self, data: bytes) -> None:
        self.reads.data(data)

    def eof_received(self) -> bool:
        self.reads.eof()
        return True  # keep the other half open until our EOF is delivered

    def pause_writing(self) -> None:
        self.writes.dst_blocked = True
        self.writes.check_pause(self.conn.loop.time())

    def resume_writing(self) -> None:
        self.writes.dst_blocked = False
        self.writes.maybe_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.conn.abort()
        else:
            self.reads.eof()
            if not self.writes.done:  # it can no longer take what is queued for it
                self.writes.close()
                self.writes.done = True
            self.conn.maybe_close()


class Conn:
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = server.loop
        now = self.loop.time()
        hs = server.rtt if server.handshake else 0.0
        self.c2s = Pump(self, server.up, server.window, not_before=now + hs, count_requests=True)
        self.s2c = Pump(self, server.down, server.window)
        self.client = Side(self, self.c2s, self.s2c)
        self.upstream = Side(self, self.s2c, self.c2s)
        self.closed = False

    def maybe_close(self) -> None:
        if self.c2s.done and self.s2c.done and not self.closed:
            self.closed = True
            self.server.active -= 1
            for side in (self.client, self.upstream):
                if side.transport is not None:
                    side.transport.close()

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.active -= 1
        for pump in (self.c2s, self.s2c):
            pump.close()
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.abort()


class ProxyServer:
    def __init__(self, loop: asyncio.AbstractEventLoop, upstream: tuple[str, int], rtt: float, rate: float,
                 window: int, buffer: int | None, handshake: bool) -> None:
        self.loop = loop
        self.upstream = upstream
        self.rtt = rtt
        self.rate = rate
        self.window = window
        self.handshake = handshake
        if buffer is None:
            buffer = max(256 << 10, int(rate * rtt)) if rate else 0
        self.buffer = buffer
        self.up = Link(loop, rate, rtt / 2, buffer)  # client -> server
        self.down = Link(loop, rate, rtt / 2, buffer)  # server -> client
        self.connections = 0
        self.active = 0
        self.requests = 0
        self.failed_connects = 0
        self.t0 = time.perf_counter()

    def accept(self) -> asyncio.Protocol:
        conn = Conn(self)
        self.connections += 1
        self.active += 1
        # What the client sends before the upstream socket exists is queued; its pump waits for it.
        self.loop.create_task(self._connect(conn))
        return conn.client

    async def _connect(self, conn: Conn) -> None:
        try:
            await self.loop.create_connection(lambda: conn.upstream, *self.upstream)
        except OSError:
            self.failed_connects += 1
            conn.abort()
            return

    def stats(self) -> dict[str, Any]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "connections": self.connections, "active": self.active, "requests": self.requests,
            "failed_connects": self.failed_connects,
            "c2s": {"bytes": self.up.bytes, "chunks": self.up.chunks},
            "s2c": {"bytes": self.down.bytes, "chunks": self.down.chunks},
            "cpu": r.ru_utime + r.ru_stime, "time": time.perf_counter() - self.t0,
            "rtt": self.rtt, "rate": self.rate, "window": self.window, "buffer": self.buffer,
            "early": WAKEUP.early,
        }

    def reset(self) -> None:
        self.connections = self.requests = self.failed_connects = 0
        for link in (self.up, self.down):
            link.bytes = link.chunks = 0


def serve(args: argparse.Namespace) -> None:
    """The proxy process: listen, print ``PORT n``, serve until stdin ends, ``quit``, Ctrl-C or SIGTERM."""
    host, _, port = args.upstream.rpartition(":")
    loop = precise_loop()
    asyncio.set_event_loop(loop)
    server = ProxyServer(loop, (host, int(port)), args.rtt, args.rate, args.window, args.buffer,
                         not args.no_handshake)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.host, args.port))
    lsock.listen(1024)
    srv = loop.run_until_complete(loop.create_server(server.accept, sock=lsock, backlog=1024))
    print(f"PORT {lsock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()

    def command(line: str) -> None:
        cmd = line.strip()
        if cmd == "stats":
            print(json.dumps(server.stats()), flush=True)
        elif cmd == "reset":
            server.reset()
            print(json.dumps({"ok": True}), flush=True)
        elif cmd in ("quit", ""):
            stop.set()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(command, line)
            if line.strip() == "quit":
                return
        loop.call_soon_threadsafe(stop.set)

    if not args.no_stdin:
        threading.Thread(target=read_stdin, daemon=True).start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(stop.wait())
    finally:
        srv.close()
        loop.close()


# ============================================================== the library side


def die_with_parent(parent: int | None) -> None:
    """Called in a child process: get SIGTERM when ``parent`` dies, even by SIGKILL."""
    if not parent:
        return
    _libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


class ShapedProxy:
    """Runs the shaping proxy in a child process; ``port`` is where it listens on 127.0.0.1.

    ``rate`` is bytes/s (0: no cap); ``rtt`` seconds (0: no delay); ``window`` and
    ``buffer`` bytes (see the module docstring).
    """

    def __init__(self, upstream: tuple[str, int], rtt: float = 0.010, rate: float = 125e6,
                 window: int = DEFAULT_WINDOW, buffer: int | None = None, handshake: bool = True,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self.rtt, self.rate, self.window, self.buffer = rtt, rate, window, buffer
        self.handshake = handshake
        self.host = host
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def start(self) -> ShapedProxy:
        argv = [sys.executable, str(Path(__file__).resolve()), "--upstream", f"{self.upstream[0]}:{self.upstream[1]}",
                "--host", self.host, "--port", str(self.port), "--rtt", repr(self.rtt), "--rate", repr(self.rate),
                "--window", str(self.window), "--parent-pid", str(os.getpid())]
        if self.buffer is not None:
            argv += ["--buffer", str(self.buffer)]
        if not self.handshake:
            argv.append("--no-handshake")
        # Own process group: a Ctrl-C in the terminal reaches us, and we stop the proxy ourselves.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"netem proxy did not start (said {line!r})")
        self.port = int(line.split()[1])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def reset(self) -> None:
        self._ask("reset")

    def close(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            if p.stdin is not None:
                p.stdin.close()  # end of stdin: the proxy stops
            p.wait(timeout=3)
        except (OSError, subprocess.TimeoutExpired):
            p.kill()
            p.wait()
        finally:
            if p.stdout is not None:
                p.stdout.close()

    def __enter__(self) -> ShapedProxy:  # noqa: PYI034 - start() returns self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ============================================================== self-test


def _test_server() -> None:
    """Upstream for the self-test: per connection, ``E\\n`` echoes; ``S n\\n`` sends n bytes and closes."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(256)
    print(f"PORT {lsock.getsockname()[1]}", flush=True)
    payload = memoryview(os.urandom(4 << 20))

    def handle(c: socket.socket) -> None:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        line = b""
        while not line.endswith(b"\n"):  # byte by byte: nothing after the line may be consumed
            b = c.recv(1)
            if not b:
                break
            line += b
        if line == b"E\n":
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
        elif line.startswith(b"S "):
            n = int(line[2:])
            while n > 0:
                k = min(n, len(payload))
                c.sendall(payload[:k])
                n -= k
        c.close()

    while True:
        c, _ = lsock.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ping(port: int, n: int) -> list[float]:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"E\n")
    out = []
    for i in range(n + 1):  # the first round trip also waits for the emulated handshake: not counted
        t0 = time.perf_counter()
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise RuntimeError("echo broke")
        if i:
            out.append(time.perf_counter() - t0)
    s.close()
    return out


def _bulk(port: int, nbytes: int, streams: int = 1) -> float:
    """Seconds from connect() to the last byte of ``nbytes`` split over ``streams`` connections."""
    part = nbytes // streams
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"S %d\n" % n)
            buf = bytearray(1 << 20)
            got = 0
            while True:
                k = s.recv_into(buf)
                if not k:
                    break
                got += k
            s.close()
            if got != n:
                raise RuntimeError(f"got {got} of {n} bytes")
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(part,)) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def selftest(args: argparse.Namespace) -> None:
    size = args.size_mb * 10**6
    up = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_test-server",
                           "--parent-pid", str(os.getpid())],
                          stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert up.stdout is not None
        uport = int(up.stdout.readline().split()[1])
        upstream = ("127.0.0.1", uport)
        direct = _ping(uport, 200)
        print(f"direct loopback ping-pong (no proxy): median {statistics.median(direct) * 1e3:.3f} ms", flush=True)
        rows = []
        for label, rtt, rate in ((f"rtt {args.rtt * 1e3:g} ms, {args.rate * 8 / 1e9:g} Gbit/s", args.rtt, args.rate),
                                 ("rtt 0, no cap (the proxy's own capacity)", 0.0, 0.0),
                                 (f"rtt {args.rtt * 1e3:g} ms, no cap (window-limited)", args.rtt, 0.0)):
            with ShapedProxy(upstream, rtt=rtt, rate=rate, window=args.window) as p:
                pings = _ping(p.port, 200)
                q = statistics.quantiles(pings, n=10)
                print(f"[{label}] ping-pong RTT over 200 round trips: median {statistics.median(pings) * 1e3:.3f} ms, "
                      f"p10 {q[0] * 1e3:.3f}, p90 {q[-1] * 1e3:.3f}, min {min(pings) * 1e3:.3f}, "
                      f"max {max(pings) * 1e3:.3f}; the proxy aims deliveries {p.stats()['early'] * 1e3:.3f} ms "
                      "early", flush=True)
                for streams in (1, 8):
                    times, cpus = [], []
                    for _ in range(args.repeat):
                        c0 = _proc_cpu(p.pid)
                        t = _bulk(p.port, size, streams)
                        cpus.append((_proc_cpu(p.pid) - c0) / t)
                        times.append(t)
                    t = statistics.median(times)
                    mbps = size / t / 1e6
                    ideal = (size / rate if rate else 0) + 2 * rtt  # handshake + request/first byte
                    line = (f"[{label}] bulk {size / 1e6:.0f} MB over {streams} stream(s): {mbps:,.1f} MB/s "
                            f"(median of {args.repeat}: {', '.join(f'{size / x / 1e6:,.1f}' for x in times)})")
                    if rate:
                        line += (f" = {mbps / (rate / 1e6) * 100:.1f}% of the cap; "
                                 f"ideal time {ideal:.3f} s, measured {t:.3f} s")
                    line += f"; proxy CPU {statistics.median(cpus):.2f} cores"
                    print(line, flush=True)
                    rows.append((label, streams, mbps, statistics.median(cpus)))
    finally:
        up.kill()
        up.wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", help="host:port to forward to")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    ap.add_argument("--rtt", type=float, default=0.010, help="round-trip time added, seconds (default 0.010)")
    ap.add_argument("--rate", type=float, default=125e6,
                    help="cap per direction, bytes/s, shared by all connections; 0 = none (default 125e6)")
    ap.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                    help="unacknowledged bytes per connection and direction (default 4 MiB)")
    ap.add_argument("--buffer", type=int, default=None,
                    help="bottleneck queue, bytes (default: one bandwidth-delay product, at least 256 KiB)")
    ap.add_argument("--no-handshake", action="store_true", help="do not charge one RTT for a new connection")
    ap.add_argument("--no-stdin", action="store_true", help="ignore stdin; run until Ctrl-C or SIGTERM")
    ap.add_argument("--selftest", action="store_true", help="measure the proxy's accuracy and capacity")
    ap.add_argument("--size-mb", type=int, default=400, help="bulk transfer size for --selftest (MB)")
    ap.add_argument("--repeat", type=int, default=3, help="bulk runs per case for --selftest")
    ap.add_argument("--parent-pid", type=int, default=0, help="exit when this process dies")
    ap.add_argument("--_test-server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    die_with_parent(args.parent_pid)
    if args._test_server:
        _test_server()
    elif args.selftest:
        selftest(args)
    elif args.upstream:
        try:
            serve(args)
        except KeyboardInterrupt:
            pass
    else:
        ap.error("--upstream or --selftest is required")


if __name__ == "__main__":
    main()
