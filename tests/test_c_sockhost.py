"""ll_sockhost (csrc/sockhost.c): image sources answered by another process over stream sockets.

The other side here is a Python thread on real socketpairs, playing the
fetcher (lazylayer/mount/fetcher.py) well and badly: the right bytes; an
error status with its message; and answers out of protocol (a wrong length,
a positive status, a non-zero reserved field, a message over 4 KiB, a closed
connection), each of which must be LL_ERR_IO and drop that connection, never
bytes that were not asked for.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Callable

import pytest

from lazylayer.core._lib import ffi, lib

REQ = struct.Struct("<IIQQ")
ANS = struct.Struct("<iIQ")


def _recv(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class Peer:
    """Serves one socket: ``answer(layer, offset, size) -> bytes`` (the raw answer, header included)."""

    def __init__(self, sock: socket.socket, answer: Callable[[int, int, int], object]) -> None:
        self.sock, self.answer = sock, answer
        self.requests: list[tuple[int, int, int, int]] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            self.serve()
        except OSError:  # C closed its end first (it gave up on this connection)
            pass
        finally:
            self.sock.close()

    def serve(self) -> None:
        while True:
            head = _recv(self.sock, REQ.size)
            if head is None:
                return
            self.requests.append(REQ.unpack(head))
            out = self.answer(*REQ.unpack(head)[1:])
            if out is None:
                return  # hang up
            if isinstance(out, tuple):  # (bytes, True): send them, then hang up
                self.sock.sendall(out[0])
                return
            self.sock.sendall(out)


def good(layer: int, offset: int, size: int) -> bytes:
    data = bytes((offset + i + layer) % 251 for i in range(size))
    return ANS.pack(0, 0, size) + data


def make(answers: list[Callable[[int, int, int], bytes | None]], nlayers: int = 3):
    ours, peers = [], []
    for answer in answers:
        a, b = socket.socketpair()
        ours.append(a.detach())
        peers.append(Peer(b, answer))
    fds = ffi.new("int[]", ours)
    out = ffi.new("ll_sockhost **")
    assert lib.ll_sockhost_create(fds, len(ours), nlayers, out) == lib.LL_OK
    return ffi.gc(out[0], lib.ll_sockhost_free), peers


def read(host, layer: int, offset: int, size: int) -> tuple[int, bytes]:
    src = ffi.new("ll_image_source *")
    assert lib.ll_sockhost_source(host, layer, src) == lib.LL_OK
    assert src.use_disk == 1
    buf = ffi.new("char[]", max(1, size))
    rc = src.read(src.opaque, offset, size, buf)
    return rc, ffi.buffer(buf, size)[:]


def test_requests_and_answers_follow_the_protocol() -> None:
    host, (peer,) = make([good])
    rc, data = read(host, 2, 1 << 40, 5000)
    assert rc == 0 and data == good(2, 1 << 40, 5000)[ANS.size:]
    assert peer.requests == [(lib.LL_SOCKHOST_MAGIC, 2, 1 << 40, 5000)]
    src = ffi.new("ll_image_source *")
    assert lib.ll_sockhost_source(host, 3, src) == lib.LL_ERR_ARG  # only layers 0..nlayers-1


def test_an_error_status_passes_through_and_keeps_the_connection() -> None:
    calls = []

    def failing(layer: int, offset: int, size: int) -> bytes:
        calls.append(offset)
        if len(calls) == 1:
            msg = b"IntegrityError: frame 3 does not match"
            return ANS.pack(lib.LL_ERR_DIGEST, 0, len(msg)) + msg
        return good(layer, offset, size)

    host, _ = make([failing])
    assert read(host, 0, 0, 10)[0] == lib.LL_ERR_DIGEST
    rc, data = read(host, 0, 7, 10)  # the same connection still serves
    assert rc == 0 and data == good(0, 7, 10)[ANS.size:]


@pytest.mark.parametrize("bad", [
    lambda l, o, s: ANS.pack(0, 0, s - 1) + b"x" * (s - 1),              # short
    lambda l, o, s: ANS.pack(0, 0, s + 1) + b"x" * (s + 1),              # long
    lambda l, o, s: ANS.pack(5, 0, 0),                                  # a positive status
    lambda l, o, s: ANS.pack(0, 1, s) + b"x" * s,                       # reserved field set
    lambda l, o, s: ANS.pack(lib.LL_ERR_IO, 0, 5000) + b"m" * 5000,      # a message over 4 KiB
    lambda l, o, s: (ANS.pack(0, 0, s) + b"x" * (s // 2), True),         # hangs up mid-answer
    lambda l, o, s: None,                                               # hangs up before answering
], ids=["short", "long", "positive", "reserved", "long-message", "cut", "hangup"])
def test_out_of_protocol_answers_are_io_errors_and_drop_the_connection(bad) -> None:
    host, peers = make([bad, good])  # the first read takes the first connection
    assert read(host, 0, 0, 100)[0] == lib.LL_ERR_IO
    assert len(peers[0].requests) == 1
    for i in range(4):  # the connection left serves the rest, with the right bytes
        rc, data = read(host, 1, i, 100)
        assert rc == 0 and data == good(1, i, 100)[ANS.size:]
    assert len(peers[0].requests) == 1 and len(peers[1].requests) == 4


def test_no_connection_left_is_an_io_error_at_once() -> None:
    host, _ = make([lambda l, o, s: None])
    assert read(host, 0, 0, 10)[0] == lib.LL_ERR_IO
    assert read(host, 0, 0, 10)[0] == lib.LL_ERR_IO  # none left: no wait


def test_many_threads_share_the_pool() -> None:
    host, peers = make([good, good, good])
    errors: list[str] = []

    def worker(k: int) -> None:
        for i in range(200):
            rc, data = read(host, k % 3, k * 1000 + i, 64 + i)
            if rc != 0 or data != good(k % 3, k * 1000 + i, 64 + i)[ANS.size:]:
                errors.append(f"{k} {i} {rc}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(len(p.requests) for p in peers) == 8 * 200
