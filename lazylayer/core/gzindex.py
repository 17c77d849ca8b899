"""Random access into gzip streams as they are: checkpoints taken while inflating once (csrc/gzindex.c).

A plain gzip layer cannot be read from the middle: deflate refers back up to
32 KiB into its own output.  :class:`GzipIndexer` inflates a stream once, like
:func:`zlib.decompressobj`, and takes a :class:`Checkpoint` at a deflate block
boundary every ``span`` bytes of output or more — the compressed position (a
byte, and 0..7 bits of the byte before it) and the 32 KiB window before it.
:func:`inflate_span` then gives the output from one checkpoint to the next from
that checkpoint and the compressed bytes between them alone, so a reader needs
to fetch only the span that holds what it wants (the idea of zlib's zran.c, of
SOCI's zTOC and nydus' zran).  Both run in C, without the GIL, and treat their
input as hostile (fuzzed: csrc/fuzz/fuzz_gzindex.c).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._lib import check, ffi, lib

_alloc = ffi.new_allocator(should_clear_after_alloc=False)

WINDOW = 32768
"""Bytes of output a checkpoint keeps (deflate's largest distance)."""


class Checkpoint(NamedTuple):
    """Where inflating may start: compressed offset ``input`` (plus the low ``bits`` of ``byte``,
    the byte before it), uncompressed offset ``output``, and the ``window`` before it."""

    input: int
    output: int
    bits: int
    byte: int
    window: bytes


class GzipIndexer:
    """Inflates one gzip stream (one member or several, concatenated) and takes checkpoints.

    ``decompress(data, max_length=0)`` is zlib's: the output for ``data``, at
    most ``max_length`` bytes of it (0: all), keeping the rest of the input in
    :attr:`unconsumed_tail`; :meth:`checkpoints` hands over those taken so far.
    :class:`~lazylayer.errors.CorruptFrameError` for bytes that are not gzip or
    are corrupt (every member's CRC-32 and length are checked, unless
    ``check_crc=False``: for a caller that checks a digest of the compressed
    bytes instead, which the output is a function of).  One thread at a time.
    """

    def __init__(self, span: int = 4 << 20, check_crc: bool = True) -> None:
        if span < 1:
            raise ValueError("span must be >= 1")
        out = ffi.new("ll_gzindexer **")
        check(lib.ll_gzindexer_create(span, out), "creating a gzip indexer")
        self._ptr = ffi.gc(out[0], lib.ll_gzindexer_free)
        if not check_crc:
            check(lib.ll_gzindexer_skip_crc(self._ptr), "creating a gzip indexer")
        self._cp = ffi.new("ll_gz_checkpoint *")
        self._used = ffi.new("size_t *")
        self._made = ffi.new("size_t *")
        self.unconsumed_tail = b""
        self.span = span

    def decompress(self, data: Any, max_length: int = 0, view: bool = False) -> Any:
        """(``view=True``, with ``max_length``: the output as a memoryview of a fresh buffer, not
        copied into bytes: the indexer's hot loop.)"""
        src = bytes(data)
        if view and max_length > 0:
            buf = _alloc("uint8_t[]", max_length)
            rc = lib.ll_gzindexer_inflate(self._ptr, ffi.from_buffer(src), len(src), self._used, buf, max_length,
                                          self._made)
            check(rc, "inflating a gzip stream")
            self.unconsumed_tail = src[self._used[0]:]
            return memoryview(ffi.buffer(buf, self._made[0]))
        room = max_length if max_length > 0 else max(4 * len(src), 1 << 16)
        parts, pos = [], 0
        base = ffi.from_buffer(src)  # (no copy of the rest of the input per round)
        while True:
            buf = _alloc("uint8_t[]", room)  # (not zeroed: zlib writes what is read back)
            rc = lib.ll_gzindexer_inflate(self._ptr, base + pos, len(src) - pos, self._used, buf, room, self._made)
            check(rc, "inflating a gzip stream")
            pos += self._used[0]
            parts.append(bytes(ffi.buffer(buf, self._made[0])))
            if max_length > 0 or pos >= len(src) or (self._used[0] == 0 and self._made[0] == 0):
                break
            room = min(room * 2, 64 << 20)
        self.unconsumed_tail = src[pos:]
        return b"".join(parts)

    @property
    def eof(self) -> bool:
        """True when the input so far ends exactly at the end of a member."""
        return bool(lib.ll_gzindexer_complete(self._ptr))

    @property
    def total_in(self) -> int:
        n = ffi.new("uint64_t *")
        lib.ll_gzindexer_totals(self._ptr, n, ffi.NULL)
        return int(n[0])

    @property
    def total_out(self) -> int:
        n = ffi.new("uint64_t *")
        lib.ll_gzindexer_totals(self._ptr, ffi.NULL, n)
        return int(n[0])

    def checkpoints(self) -> list[Checkpoint]:
        """The checkpoints taken since the last call, in stream order."""
        out = []
        cp = self._cp
        while lib.ll_gzindexer_take(self._ptr, cp) == lib.LL_OK:
            out.append(Checkpoint(int(getattr(cp, "in")), int(cp.out), int(cp.bits), int(cp.byte),
                                  bytes(ffi.buffer(cp.window, cp.window_size))))
        return out


def inflate_span(checkpoint: Checkpoint, compressed: Any, size: int) -> bytes:
    """Exactly ``size`` bytes of output from ``checkpoint``, given the compressed bytes that follow
    it (up to the next checkpoint).  :class:`~lazylayer.errors.CorruptFrameError` if they are
    corrupt or give less."""
    src = ffi.from_buffer(compressed)
    dst = _alloc("uint8_t[]", max(size, 1))
    rc = lib.ll_gz_inflate_span(checkpoint.bits, checkpoint.byte, checkpoint.window, len(checkpoint.window), src,
                                len(src), dst, size)
    check(rc, f"inflating {size} bytes from gzip checkpoint at {checkpoint.input}")
    return bytes(ffi.buffer(dst, size))
