"""The fetcher: a process of its own that fetches frames for a mount served by C threads.

A mount's server threads never wait on Python: reads of frames in the memory
or disk cache are answered in C, and a frame that must come from the registry
is asked of this process over a socket (``ll_sockhost``, the protocol in
``csrc/lazylayer.h``).  Why another process: a thread of the serving process
that holds the GIL and touches the mount (``import`` of an extension module
that lives there, a fault on an mmap of a file there) would otherwise wait for
a miss that waits for the GIL; here the fetch has a GIL of its own
(docs/mount.md, "Deadlock hazard").

The fetcher opens the same manifest (by digest), with the same registry
settings and disk cache, and answers each request with its layer's
:class:`~lazylayer.image.FrameSource`: fetched (coalesced, retried), verified
against the TOC's sha256 and stored in the disk cache, exactly as
``lazylayer://`` reads.  It also runs the mount's prefetcher (plans,
read-ahead, fill), since it sees the misses read-ahead follows.  It exits when
the mount closes its ends of the sockets (or the serving process dies).

:class:`Fetcher` is the serving side's handle: it starts the process and hands
its socket ends to C.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fetcher", "FetcherSpec"]

log = logging.getLogger("lazylayer.mount")

_REQ = struct.Struct("<IIQQ")  # magic (LL_SOCKHOST_MAGIC), layer, offset, size: csrc/lazylayer.h
_ANS = struct.Struct("<iIQ")
MAX_REQUEST = 1 << 31


@dataclass
class FetcherSpec:
    """What the fetcher opens and how it prefetches (pickled to its stdin)."""

    reference: Any                      #: the manifest, pinned (Image.pinned())
    registry: Any = None                #: RegistryConfig without its transport
    cache: str | None = None            #: the disk cache's directory
    layers: list[int] = field(default_factory=list)  #: the layers it may be asked for
    prefetch: Any = None                #: as lazylayer.prefetch.start's (None: no plan)
    fill: bool = False
    fill_rate: float | None = None
    readahead: bool = False
    verbose: int = 0
    gzip_indexes: str = "local"         #: the Image's policy (its checks of attached indexes run in the mount)
    attached: dict[str, str] = field(default_factory=dict)  #: the attached indexes the mount chose (by digest)
    chunk_runs: bool = False            #: the Image's (the frames the mount asks for must be the fetcher's)
    fds: list[int] = field(default_factory=list)


# ``python -c`` puts the working directory first on sys.path: a ``lazylayer`` directory there (a
# checkout of another version; anything planted in a directory a root daemon was started from)
# would be imported instead of this package.  The package's own directory is on PYTHONPATH.
_MAIN = "import sys; sys.path[:] = [p for p in sys.path if p]; from lazylayer.mount.fetcher import main; main()"


class Fetcher:
    """The fetcher process with ``connections`` socket pairs; :meth:`take_fds` hands over the
    serving side's ends, for ``ll_sockhost_create`` (which then owns them).

    It is started before its spec is known (:meth:`send` gives it), so that its interpreter's
    start-up and imports overlap the mount's own open of the image instead of following it
    (0.5 s on this machine's cold starts).  A fetcher never sent a spec exits on its own:
    :meth:`close` ends its input."""

    def __init__(self, connections: int) -> None:
        pairs = [socket.socketpair() for _ in range(max(1, connections))]
        self._theirs = [b.fileno() for _, b in pairs]
        env = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _MAIN], stdin=subprocess.PIPE, pass_fds=self._theirs,
                                         env=env)
        except BaseException:
            for a, b in pairs:
                a.close()
                b.close()
            raise
        for _, b in pairs:
            b.close()
        self._fds = [a.detach() for a, _ in pairs]

    def take_fds(self) -> list[int]:
        """The serving side's socket ends, now the caller's to close."""
        fds, self._fds = self._fds, []
        return fds

    def send(self, spec: FetcherSpec) -> None:
        """Give the process what it opens and how it prefetches."""
        spec = dataclasses.replace(spec, fds=self._theirs)
        if spec.registry is not None and getattr(spec.registry, "transport", None) is not None:
            spec.registry = dataclasses.replace(spec.registry, transport=None)  # (threads and sockets)
        assert self.proc.stdin is not None
        pickle.dump(spec, self.proc.stdin)
        self.proc.stdin.close()

    def close(self, timeout: float = 10.0) -> None:
        """Wait for the process to exit (once the serving side closed its ends, or at once if it was
        sent nothing); kill it after ``timeout``."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        for fd in self.take_fds():  # (never handed over: the mount failed first)
            os.close(fd)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the fetcher (pid %d) did not exit; killing it", self.proc.pid)
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------ the process


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(sock: socket.socket, head: bytes, data: bytes) -> None:
    """``head`` then ``data``, whole (``sendmsg`` may send part of them, e.g. after a signal)."""
    sent = sock.sendmsg([head, data])
    if sent < len(head):
        sock.sendall(head[sent:])
        sent = len(head)
    if sent - len(head) < len(data):
        sock.sendall(memoryview(data)[sent - len(head):])


def _serve(sock: socket.socket, image: Any, allowed: set[int]) -> None:
    from ..core._lib import callback_status, lib

    with sock:
        while True:
            head = _recv_exact(sock, _REQ.size)
            if head is None:
                return
            magic, layer, offset, size = _REQ.unpack(head)
            if magic != lib.LL_SOCKHOST_MAGIC or layer not in allowed or size > MAX_REQUEST:
                log.error("fetcher: bad request (layer %d, %d bytes): closing the connection", layer, size)
                return
            try:
                data = image.layers[layer].source(offset, size)
                _send(sock, _ANS.pack(0, 0, len(data)), data)
            except Exception as exc:  # noqa: BLE001 - the read gets EIO, the log says why
                log.error("fetch of %d bytes at %d of layer %d (%s) failed: %s: %s", size, offset, layer,
                          image.layers[layer].descriptor.get("digest", "?"), type(exc).__name__, exc)
                msg = str(exc).encode(errors="replace")[:4096]
                try:
                    sock.sendall(_ANS.pack(callback_status(exc), 0, len(msg)) + msg)
                except OSError:
                    return


def main() -> None:
    # Its start-up and its prefetch are background work: when the CPU is short, the workload
    # reading from the mount (and the server answering it) go first.  Fetches wait on the network.
    try:
        os.nice(5)
    except OSError:
        pass
    from ..image import DiskCache, Image  # (while the mount still opens the image: see Fetcher)

    try:
        spec: FetcherSpec = pickle.load(sys.stdin.buffer)
    except EOFError:  # the mount gave up before it needed a fetcher
        sys.exit(0)
    level = logging.DEBUG if spec.verbose > 1 else logging.INFO if spec.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    socks = [socket.socket(fileno=fd) for fd in spec.fds]
    try:
        image = Image(spec.reference, registry=spec.registry, cache=DiskCache(spec.cache) if spec.cache else None,
                      memory_cache=None, gzip_indexes=spec.gzip_indexes, check_attached=False,
                      attached=spec.attached, chunk_runs=spec.chunk_runs)
    except Exception as exc:  # noqa: BLE001 - every read of the mount gets EIO, the log says why
        log.error("fetcher: cannot open %s: %s: %s", spec.reference, type(exc).__name__, exc)
        for s in socks:
            s.close()
        sys.exit(1)
    with image:
        if spec.prefetch is not None or spec.fill or spec.readahead:
            from ..prefetch import start

            try:
                start(image, spec.prefetch, fill=spec.fill, fill_rate=spec.fill_rate, readahead=spec.readahead)
            except Exception as exc:  # noqa: BLE001 - prefetch is advice: reads work without it
                log.warning("fetcher: no prefetch: %s: %s", type(exc).__name__, exc)
        threads = [threading.Thread(target=_serve, args=(s, image, set(spec.layers)), daemon=True) for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = image.stats()
        log.info("fetcher: %d frames fetched (%d bytes)", stats["frames_fetched"], stats["bytes_fetched"])
