"""Gzip checkpoints (csrc/gzindex.c through lazylayer.core.gzindex): streams written by real tools
(gzip, pigz, Python's gzip, several members) inflate to their data, and every span inflates alone
from its checkpoint to exactly the bytes between it and the next; corrupt, truncated and foreign
bytes are errors.  (Hostile input in bulk: the fuzz target fuzz_gzindex, tests/test_c_sanitizers.py.)"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess

import pytest

from lazylayer import errors
from lazylayer.core.gzindex import WINDOW, Checkpoint, GzipIndexer, inflate_span


def _data(n: int, seed: int = 1) -> bytes:
    """Text-like bytes with long repeats (deflate's distances reach back the whole window) and noise."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij/._- \n0123") for _ in range(rng.randrange(2, 12))) for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.05:
            out += os.urandom(rng.randrange(1, 3000))
        elif rng.random() < 0.1 and len(out) > 40000:
            start = rng.randrange(len(out) - 32768, len(out) - 100)
            out += out[start:start + rng.randrange(50, 100)]
        else:
            out += rng.choice(words)
    return bytes(out[:n])


def _index(gz: bytes, span: int, chunk: int) -> tuple[bytes, list[Checkpoint], GzipIndexer]:
    g = GzipIndexer(span)
    out, cps = [], []
    for i in range(0, len(gz), chunk):
        out.append(g.decompress(gz[i:i + chunk]))
        assert g.unconsumed_tail == b""
        cps += g.checkpoints()
    return b"".join(out), cps, g


def _check_spans(gz: bytes, data: bytes, cps: list[Checkpoint]) -> None:
    ends = [(c.input, c.output) for c in cps[1:]] + [(len(gz), len(data))]
    for c, (end_in, end_out) in zip(cps, ends):
        assert inflate_span(c, gz[c.input:end_in], end_out - c.output) == data[c.output:end_out], c.output


def _tool(argv: list[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


WRITERS = {
    "gzip -6": lambda d: _tool(["gzip", "-6", "-c"], d),
    "gzip -1": lambda d: _tool(["gzip", "-1", "-c"], d),
    "pigz -9": lambda d: _tool(["pigz", "-9", "-c"], d) if shutil.which("pigz") else pytest.skip("no pigz"),
    "python level 0 (stored blocks)": lambda d: gzip.compress(d, 0),
    "three members": lambda d: b"".join(gzip.compress(d[i:i + 400_000], 5) for i in range(0, len(d), 400_000)),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_streams_from_real_tools_round_trip_span_by_span(writer: str) -> None:
    data = _data(1_100_000)
    gz = WRITERS[writer](data)
    for span, chunk in ((64 << 10, 1 << 20), (100_000, 4099)):
        out, cps, g = _index(gz, span, chunk)
        assert out == data and g.eof and g.total_in == len(gz) and g.total_out == len(data)
        assert cps[0].output == 0 and len(cps) >= 3
        gaps = [b.output - a.output for a, b in zip(cps, cps[1:])]
        assert all(gap >= span for gap in gaps), gaps  # one per span or more, never closer
        assert all(0 <= c.bits <= 7 and len(c.window) <= WINDOW for c in cps)
        assert any(len(c.window) == WINDOW for c in cps)
        _check_spans(gz, data, cps)


def test_a_span_that_crosses_into_the_next_member_is_inflated_whole() -> None:
    """With a span larger than a member, spans hold a member's end, its trailer and the next
    member's header: inflated as one, with each later member's CRC-32 checked."""
    data = _data(300_000, 5)
    gz = b"".join(gzip.compress(data[i:i + 30_000]) for i in range(0, len(data), 30_000))
    out, cps, _ = _index(gz, 100_000, 7777)
    assert out == data
    _check_spans(gz, data, cps)
    c = cps[0]  # a later member in this span with a wrong CRC-32 fails it
    bad = bytearray(gz)
    second_trailer = len(gzip.compress(data[30_000:60_000])) + len(gzip.compress(data[:30_000])) - 8
    bad[second_trailer] ^= 1
    with pytest.raises(errors.CorruptFrameError):
        inflate_span(c, bytes(bad[c.input:cps[1].input]), cps[1].output - c.output)


def test_corrupt_truncated_and_foreign_bytes_are_errors() -> None:
    data = _data(200_000, 2)
    gz = gzip.compress(data)
    bad = bytearray(gz)
    bad[len(gz) // 2] ^= 0x55
    with pytest.raises(errors.CorruptFrameError):
        _index(bytes(bad), 50_000, 1 << 20)
    crc = bytearray(gz)
    crc[-6] ^= 1  # the CRC-32 in the trailer
    with pytest.raises(errors.CorruptFrameError):
        _index(bytes(crc), 50_000, 1 << 20)
    out, _, g = _index(gz[:-100], 50_000, 1 << 20)
    assert not g.eof and data.startswith(out)  # truncated: never complete
    with pytest.raises(errors.CorruptFrameError):
        _index(gz + b"\0" * 10, 50_000, 1 << 20)  # what follows a member must be a member
    with pytest.raises(errors.CorruptFrameError):
        _index(b"\x28\xb5\x2f\xfd" + bytes(100), 50_000, 1 << 20)  # zstd, not gzip
    g = GzipIndexer(1000)
    with pytest.raises(errors.CorruptFrameError):
        g.decompress(bytes(bad))
    with pytest.raises(errors.LazyLayerError):  # failed: it stays failed
        g.decompress(gz)


def test_a_span_given_too_few_bytes_or_a_bad_checkpoint_is_an_error() -> None:
    data = _data(400_000, 3)
    gz = gzip.compress(data)
    _, cps, _ = _index(gz, 60_000, 1 << 20)
    c, nxt = cps[1], cps[2]
    with pytest.raises(errors.CorruptFrameError):
        inflate_span(c, gz[c.input:nxt.input - 200], nxt.output - c.output)
    with pytest.raises(ValueError):  # a checkpoint no indexer makes is refused as an argument
        inflate_span(c._replace(bits=9), gz[c.input:nxt.input], 10)
    with pytest.raises(ValueError):
        inflate_span(c._replace(window=bytes(WINDOW + 1)), gz[c.input:nxt.input], 10)
    # A wrong window gives wrong bytes or an error, never more than asked for: why spans are hashed.
    try:
        got = inflate_span(c._replace(window=bytes(len(c.window))), gz[c.input:nxt.input], nxt.output - c.output)
        assert len(got) == nxt.output - c.output
    except errors.CorruptFrameError:
        pass
    assert inflate_span(c, b"", 0) == b""


def test_decompress_honours_max_length_like_zlib() -> None:
    data = _data(500_000, 4)
    gz = gzip.compress(data)
    g = GzipIndexer(1 << 16)
    out = g.decompress(gz, 1000)
    assert len(out) <= 1000 and g.unconsumed_tail
    while g.unconsumed_tail:
        out += g.decompress(g.unconsumed_tail, 77_777)
    assert out == data and g.eof


def test_crc_checks_can_be_left_to_a_digest() -> None:
    """``check_crc=False`` (the image indexer, which checks the blob's sha256 instead): a member
    whose CRC-32 is wrong inflates to the same output with the same checkpoints; with the default
    it is an error; it cannot be switched off once inflating began."""
    data = _data(3 << 20, seed=7)
    gz = bytearray(gzip.compress(data, 6))
    gz[-8] ^= 0xFF  # the CRC-32 in the trailer
    with pytest.raises(errors.CorruptFrameError):
        _index(bytes(gz), 1 << 20, 1 << 16)
    g = GzipIndexer(1 << 20, check_crc=False)
    out = g.decompress(bytes(gz))
    assert out == data and g.eof
    good_out, good_cps, _ = _index(gzip.compress(data, 6), 1 << 20, 1 << 16)
    g2 = GzipIndexer(1 << 20, check_crc=False)
    assert g2.decompress(gzip.compress(data, 6), 8 << 20, view=True).tobytes() == data[:8 << 20]
    from lazylayer.core._lib import lib

    g3 = GzipIndexer(1 << 20)
    g3.decompress(gzip.compress(b"x" * 1000))
    assert lib.ll_gzindexer_skip_crc(g3._ptr) == lib.LL_ERR_STATE
    assert [c.output for c in g2.checkpoints()] == [c.output for c in good_cps]
