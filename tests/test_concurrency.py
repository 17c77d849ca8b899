"""Many threads on one reader, and the cache budget under churn."""

from __future__ import annotations

import io
import random
import threading

import pytest

from lazylayer import BlockCache, SeekableReader, SeekableWriter


@pytest.fixture(scope="module")
def blob_and_data(corpus):
    data = corpus[:4_000_000]
    out = io.BytesIO()
    with SeekableWriter(out, frame_size=64 * 1024, checksum=True) as w:
        w.write(data)
    return out.getvalue(), data


def hammer(reader: SeekableReader, data: bytes, seed: int, n: int, errors: list) -> None:
    rng = random.Random(seed)
    try:
        for _ in range(n):
            off = rng.randrange(len(data))
            size = rng.choice([1, 512, 4096, 65536, 300_000])
            got = reader.pread(size, off)
            if got != data[off:off + size]:
                errors.append(f"mismatch at {off}+{size}")
                return
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(repr(exc))


def run_threads(target, count: int) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("budget", [0, 200_000, 64 << 20])
def test_eight_threads_against_reference(blob_and_data, threads, budget):
    blob, data = blob_and_data
    cache = BlockCache(budget)
    errors: list = []
    with SeekableReader(blob, cache=cache, threads=threads) as r:
        run_threads(lambda i: hammer(r, data, i, 150, errors), 8)
    assert errors == []
    s = cache.stats()
    assert s.peak_bytes <= budget
    assert s.hits + s.misses > 0


def test_budget_holds_under_churn_with_many_readers(blob_and_data):
    """Several readers share a cache smaller than what they touch; a sampler thread
    checks the budget at every instant it looks, and the peak counter covers the rest."""
    blob, data = blob_and_data
    budget = 5 * 64 * 1024 + 1000
    cache = BlockCache(budget)
    readers = [SeekableReader(blob, cache=cache, threads=2) for _ in range(3)]
    errors: list = []
    stop = threading.Event()
    over: list = []

    def sample() -> None:
        while not stop.is_set():
            b = cache.stats().bytes
            if b > budget:
                over.append(b)

    sampler = threading.Thread(target=sample)
    sampler.start()
    run_threads(lambda i: hammer(readers[i % 3], data, 100 + i, 200, errors), 6)
    stop.set()
    sampler.join()
    s = cache.stats()
    assert errors == []
    assert over == [] and s.peak_bytes <= budget
    assert s.evictions > 0 and s.inserts > 0
    for r in readers:
        r.close()


def test_budget_changes_and_clear(blob_and_data):
    blob, data = blob_and_data
    cache = BlockCache(64 << 20)
    with SeekableReader(blob, cache=cache, threads=1) as r:
        for off in range(0, len(data), 100_000):
            assert r.pread(10, off) == data[off:off + 10]
        full = cache.stats()
        assert full.entries > 0 and full.bytes > 0
        cache.budget = 200_000
        assert cache.stats().bytes <= 200_000
        cache.clear()
        assert cache.stats().entries == 0 and cache.stats().bytes == 0
        assert r.pread(10, 5) == data[5:15]  # still reads after clear


def test_close_while_reading_is_safe(blob_and_data):
    blob, data = blob_and_data
    r = SeekableReader(blob, cache=None, threads=1)
    outcomes: list = []

    def reader_loop(i: int) -> None:
        rng = random.Random(i)
        for _ in range(200):
            off = rng.randrange(len(data))
            try:
                if r.pread(70_000, off) != data[off:off + 70_000]:
                    outcomes.append("wrong bytes")
            except ValueError:  # closed: the only acceptable failure
                return

    threads = [threading.Thread(target=reader_loop, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    r.close()
    for t in threads:
        t.join()
    assert outcomes == []
