"""The on-disk chunk cache (lazylayer.cache): real files, real threads, real processes.

Processes are started with ``subprocess`` running WORKER (below) and lined up
on a start barrier (files), so they really race.  Nothing here asserts timing:
"exactly once" is counted in logs the fetchers append to.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lazylayer.image import CacheError, CacheUsage, DiskCache, default_cache_dir
from lazylayer.image import cache as cache_mod
from lazylayer.units import parse_size


def payload(i: int, size: int | None = None) -> bytes:
    """Deterministic bytes for seed i (sizes vary, a few KB by default)."""
    size = 1000 + (i * 7919) % 6000 if size is None else size
    block = hashlib.sha256(b"%d" % i).digest()
    return (block * (size // 32 + 1))[:size]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# The worker processes' script: the helpers above, then what each mode does.
HELPERS = "import hashlib\n" + inspect.getsource(payload) + inspect.getsource(digest_of)

WORKER = HELPERS + r'''
import fcntl, json, os, sys, threading, time
from lazylayer.image import DiskCache

args = json.loads(sys.argv[1])
cache = DiskCache(args["dir"], max_bytes=args.get("max_bytes"))
ident = "%d-%s" % (os.getpid(), args["id"])

def barrier():
    open(os.path.join(args["sync"], "ready-%s" % args["id"]), "w").close()
    go = os.path.join(args["sync"], "go")
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("no go")
        time.sleep(0.002)

def log(line):
    fd = os.open(args["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)

mode = args["mode"]
result = {}
if mode == "fetch":
    seeds, size = args["seeds"], args.get("size")
    errors = []

    def one(t):
        order = list(seeds)
        import random
        random.Random("%s-%d" % (ident, t)).shuffle(order)
        order = order + order[: len(order) // 3]  # duplicates in the input too
        digests = [digest_of(payload(s, size)) for s in order]

        def fetch(idx):
            for i in idx:
                log("%s %s" % (ident, digests[i]))
            time.sleep(args.get("sleep", 0.02))
            return [payload(order[i], size) for i in idx]

        got = cache.fetch_many(digests, fetch)
        if [digest_of(g) for g in got] != digests:
            errors.append("wrong bytes")

    barrier()
    threads = [threading.Thread(target=one, args=(t,)) for t in range(args.get("threads", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = {"errors": errors, "stats": cache.stats()}
elif mode == "reader":
    digests = [digest_of(payload(s, args["size"])) for s in args["seeds"]]
    seen = bad = 0
    barrier()
    for _ in range(args["rounds"]):
        for d in digests:
            data = cache.get(d)
            if data is not None:
                seen += 1
                bad += digest_of(data) != d
    result = {"seen": seen, "bad": bad, "stats": cache.stats()}
elif mode == "writer":
    pairs = [(digest_of(payload(s, args["size"])), payload(s, args["size"])) for s in args["seeds"]]
    barrier()
    for _ in range(args["rounds"]):
        for d, data in pairs:
            cache.put(d, data)
        cache.clear()  # so the next round writes again (entries being read are skipped)
    result = {"stats": cache.stats()}
elif mode == "ensure":
    def build(f):
        log(ident)
        time.sleep(args.get("sleep", 0.1))
        f.write(b"built " * 1000)
        if args.get("hang"):
            f.flush()
            log("hanging")
            time.sleep(3600)

    barrier()
    path = cache.ensure_file(args["name"], build)
    with open(path, "rb") as f:
        result = {"path": path, "ok": f.read() == b"built " * 1000}
elif mode == "cross":  # hold A's slot in one thread while another waits for B's
    (a, b) = [digest_of(payload(s)) for s in args["seeds"]]
    release = os.path.join(args["sync"], "release")

    def hold_a(idx):
        log("%s %s" % (ident, a))
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.002)
        return [payload(args["seeds"][0])]

    def fetch_b(idx):
        log("%s %s" % (ident, b))
        return [payload(args["seeds"][1])]

    barrier()
    t = threading.Thread(target=cache.fetch_many, args=([a], hold_a))
    t.start()
    while not os.path.exists(args["log"]) or a not in open(args["log"]).read():
        time.sleep(0.002)
    got_b = cache.fetch_many([b], fetch_b)  # waits: the test process holds B
    t.join()
    result = {"ok": got_b == [payload(args["seeds"][1])]}
elif mode == "hold":  # hold a shared flock on a file, as a get() in progress or a pin does
    fd = os.open(args["path"], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    barrier()
    release = os.path.join(args["sync"], "release")
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.002)
    os.close(fd)
print(json.dumps(result))
'''


class Workers:
    """Worker processes lined up on a start barrier: ``start()`` then ``results()``."""

    def __init__(self, tmp_path: Path, cache_dir: Path, specs: list[dict]) -> None:
        self.sync = tmp_path / f"sync-{random.randrange(1 << 30)}"
        self.sync.mkdir()
        self.log = tmp_path / "fetch.log"
        self.procs = []
        for n, spec in enumerate(specs):
            arg = {"dir": str(cache_dir), "sync": str(self.sync), "log": str(self.log), "id": str(n), **spec}
            self.procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(arg)],
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE))

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while len(list(self.sync.glob("ready-*"))) < len(self.procs):
            for p in self.procs:
                if p.poll() is not None:
                    raise AssertionError(f"worker died: {p.communicate()[1].decode()}")
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.005)

    def go(self) -> None:
        self.wait_ready()
        (self.sync / "go").touch()

    def release(self) -> None:
        (self.sync / "release").touch()

    def results(self) -> list[dict]:
        out = []
        for p in self.procs:
            stdout, stderr = p.communicate(timeout=120)
            assert p.returncode == 0, stderr.decode()
            out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        return out

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def cdir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def entry(seed: int, size: int | None = None) -> tuple[str, bytes]:
    data = payload(seed, size)
    return digest_of(data), data


def entry_path(c: DiskCache, digest: str) -> Path:
    return Path(c._entry_path(digest))


# ------------------------------------------------------------------ basics


def test_put_get_roundtrip_and_miss(cdir):
    c = DiskCache(cdir, max_bytes=1 << 30)
    d, data = entry(1)
    assert c.get(d) is None
    c.put(d, data)
    assert c.get(d) == data
    c.put(d, bytearray(data))  # again: a no-op
    d2, data2 = entry(2)
    c.put(d2, memoryview(data2))
    assert c.get(d2) == data2
    assert c.stats() == {"hits": 2, "misses": 1, "fetched": 0, "corrupt": 0, "evicted": 0}
    assert DiskCache(cdir).get(d) == data  # another instance, same directory
    assert entry_path(c, d).parent.parent == cdir / "v1" / "frames"
    assert (cdir.stat().st_mode & 0o777) == 0o700
    assert not list((cdir / "v1" / "tmp").iterdir())


def test_bad_digests_are_rejected(cdir):
    c = DiskCache(cdir)
    for bad in ("", "sha256:", "sha256:" + "A" * 64, "sha512:" + "a" * 64, "sha256:" + "a" * 63,
                "sha256:../../" + "a" * 58, "a" * 64):
        with pytest.raises(ValueError):
            c.get(bad)
        with pytest.raises(ValueError):
            c.put(bad, b"x")
        with pytest.raises(ValueError):
            c.fetch_many([bad], lambda idx: [b"x"])


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "append"])
def test_corrupt_entry_reads_as_a_miss_and_is_removed(cdir, damage):
    c = DiskCache(cdir)
    d, data = entry(3)
    c.put(d, data)
    p = entry_path(c, d)
    raw = bytearray(p.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
    elif damage == "truncate":
        raw = raw[:-1]
    elif damage == "empty":
        raw = bytearray()
    else:
        raw += b"\0"
    p.write_bytes(raw)
    assert c.get(d) is None
    assert not p.exists()
    assert c.stats()["corrupt"] == 1
    # and the read path fetches it again
    assert c.fetch_many([d], lambda idx: [data]) == [data]
    assert c.get(d) == data


# ------------------------------------------------------------------ fetch_many


def test_fetch_many_fetches_only_misses_and_duplicates_once(cdir):
    c = DiskCache(cdir)
    entries = [entry(s) for s in range(6)]
    for d, data in entries[:3]:
        c.put(d, data)
    digests = [d for d, _ in entries] + [entries[4][0], entries[1][0], entries[4][0]]
    calls = []

    def fetch(idx):
        calls.append(list(idx))
        return [entries[[d for d, _ in entries].index(digests[i])][1] for i in idx]

    got = c.fetch_many(digests, fetch)
    assert calls == [[3, 4, 5]]  # one call, first occurrences only, never the hits
    assert [digest_of(g) for g in got] == digests
    assert c.stats() == {"hits": 3, "misses": 3, "fetched": 3, "corrupt": 0, "evicted": 0}
    assert c.fetch_many(digests, lambda idx: pytest.fail("all cached")) == got
    assert c.fetch_many([], lambda idx: pytest.fail("nothing to fetch")) == []


def test_fetch_exception_propagates_and_releases_every_lock(tmp_path, cdir):
    c = DiskCache(cdir)
    entries = [entry(s) for s in range(10, 14)]
    digests = [d for d, _ in entries]

    class Boom(Exception):
        pass

    def fail(idx):
        raise Boom("network down")

    with pytest.raises(Boom, match="network down"):
        c.fetch_many(digests, fail)
    assert all(c.get(d) is None for d in digests)
    assert not list((cdir / "v1" / "tmp").iterdir())
    assert cache_mod._shared_for(str(cdir / "v1" / "lock")).slots == {}  # no thread lock left behind

    # another thread of this process, and another process, can fetch them now
    out = []
    t = threading.Thread(target=lambda: out.append(c.fetch_many(digests[:2], lambda idx: [entries[i][1] for i in idx])))
    t.start()
    t.join(60)
    assert not t.is_alive() and [digest_of(x) for x in out[0]] == digests[:2]
    w = Workers(tmp_path, cdir, [{"mode": "fetch", "seeds": list(range(10, 14)), "sleep": 0}])
    w.go()
    assert w.results()[0]["errors"] == []
    assert sorted(line.split()[1] for line in w.log_lines()) == sorted(digests[2:])

    with pytest.raises(ValueError, match="results"):  # a fetcher returning too few results
        c.fetch_many([entry(99)[0]], lambda idx: [])
    assert c.get(entry(99)[0]) is None


def test_fill_many_lets_each_entry_go_once_stored(tmp_path, cdir):
    """fill_many's ``stored(i)`` releases that digest's lock at once: a reader (of this process
    or another) waiting for it goes on while the rest of the batch is still being stored, and
    the digests already there, or sharing no lock with the rest, are never held."""
    c = DiskCache(cdir)
    entries = [entry(s) for s in range(20, 24)]
    digests = [d for d, _ in entries]
    c.put(*entries[3])
    first_in, finish = threading.Event(), threading.Event()
    calls = []

    def store(idx, stored):
        calls.append(list(idx))
        for i in idx:
            c.put(*entries[i])
            stored(i)
            stored(i)  # (twice is once)
            if i == 0:
                first_in.set()
                assert finish.wait(60)

    t = threading.Thread(target=lambda: calls.append(c.fill_many(digests, store)))
    t.start()
    assert first_in.wait(60)
    # entry 0 is stored and released; entries 1 and 2 are still held, entry 3 never was
    assert c.fetch_many(digests[:1], lambda idx: pytest.fail("stored")) == [entries[0][1]]
    assert c.fetch_many(digests[3:], lambda idx: pytest.fail("stored")) == [entries[3][1]]
    w = Workers(tmp_path, cdir, [{"mode": "fetch", "seeds": [20], "sleep": 0}])  # another process
    w.go()
    assert w.results()[0]["errors"] == [] and w.log_lines() == []  # read it, fetched nothing
    late = []
    reader = threading.Thread(target=lambda: late.append(c.fetch_many(digests[1:2], lambda idx: ["x"])))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive()  # entry 1 is still the batch's
    finish.set()
    t.join(60)
    reader.join(60)
    assert late == [[entries[1][1]]]  # stored by the batch, not fetched again
    assert calls == [[0, 1, 2], [0, 1, 2]]
    assert cache_mod._shared_for(str(cdir / "v1" / "lock")).slots == {}


def test_threads_fetch_each_digest_once(cdir):
    c = DiskCache(cdir)
    entries = [entry(s) for s in range(40)]
    counts: dict[str, int] = {}
    count_lock = threading.Lock()
    start = threading.Barrier(16)
    errors = []

    def worker(n):
        rng = random.Random(n)
        picks = rng.sample(entries, 20) + rng.sample(entries, 5)
        digests = [d for d, _ in picks]

        def fetch(idx):
            with count_lock:
                for i in idx:
                    counts[digests[i]] = counts.get(digests[i], 0) + 1
            time.sleep(0.01)
            return [picks[i][1] for i in idx]

        start.wait()
        try:
            got = c.fetch_many(digests, fetch)
            if got != [data for _, data in picks]:
                errors.append("wrong bytes")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert counts and all(v == 1 for v in counts.values()), counts
    assert c.stats()["fetched"] == len(counts)


@pytest.mark.parametrize("processes,threads", [(4, 1), (3, 4)])
def test_processes_fetch_each_digest_once(tmp_path, cdir, processes, threads):
    seeds = list(range(100, 130))
    w = Workers(tmp_path, cdir, [{"mode": "fetch", "seeds": seeds, "threads": threads, "sleep": 0.02}] * processes)
    w.go()
    results = w.results()
    assert all(r["errors"] == [] for r in results)
    fetched = [line.split()[1] for line in w.log_lines()]
    assert sorted(fetched) == sorted(digest_of(payload(s)) for s in seeds)  # every digest exactly once overall
    assert sum(r["stats"]["fetched"] for r in results) == len(seeds)
    c = DiskCache(cdir)
    assert all(c.get(digest_of(payload(s))) == payload(s) for s in seeds)


def _fork_child(cache_dir: str, digest: str, data: bytes, q) -> None:
    c = DiskCache(cache_dir)
    got = c.fetch_many([digest], lambda idx: [data])
    q.put((got == [data], c.stats()["fetched"]))


def test_forked_child_does_not_inherit_held_locks(cdir):
    """A fork while a thread holds a slot: the child must wait for the parent's
    record lock (not fetch twice) and must not deadlock on a copied thread lock."""
    c = DiskCache(cdir)
    d, data = entry(7)
    inside, proceed = threading.Event(), threading.Event()

    def slow_fetch(idx):
        inside.set()
        proceed.wait(60)
        return [data]

    t = threading.Thread(target=lambda: c.fetch_many([d], slow_fetch))
    t.start()
    assert inside.wait(60)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_fork_child, args=(str(cdir), d, data, q), daemon=True)
    p.start()
    try:
        deadline = time.monotonic() + 60
        while not _waiting_for_a_lock(p.pid):  # on our record lock, not on a thread lock copied locked
            assert time.monotonic() < deadline, "the child never reached the record lock"
            time.sleep(0.005)
        proceed.set()
        t.join(60)
        ok, fetched = q.get(timeout=60)
        p.join(60)
        assert ok and fetched == 0 and p.exitcode == 0
    finally:
        proceed.set()
        if p.is_alive():
            p.kill()
            p.join()


def test_crossed_waits_between_processes_are_not_deadlocks(tmp_path, cdir):
    """This process holds B and waits for A; the worker holds A and waits for B, in
    another thread.  Not a deadlock (each holder finishes without the other), but
    Linux's detector, which sees processes, not threads, answers EDEADLK."""
    c = DiskCache(cdir)
    (a, data_a), (b, data_b) = entry(300), entry(301)
    assert c._slot(a) != c._slot(b)
    holding_b, release_b = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def hold_b(idx):
        holding_b.set()
        release_b.wait(60)
        return [data_b]

    def run(key, digest, fetch):
        try:
            results[key] = c.fetch_many([digest], fetch)
        except Exception as exc:
            results[key] = exc

    tb = threading.Thread(target=run, args=("b", b, hold_b))
    tb.start()
    assert holding_b.wait(60)
    w = Workers(tmp_path, cdir, [{"mode": "cross", "seeds": [300, 301]}])
    try:
        w.go()
        deadline = time.monotonic() + 60
        while a not in "".join(w.log_lines()) or not _waiting_for_a_lock(w.procs[0].pid):
            assert time.monotonic() < deadline, "the worker never waited for B"
            time.sleep(0.005)
        ta = threading.Thread(target=run, args=("a", a, lambda idx: pytest.fail("the worker fetches A")))
        ta.start()
        time.sleep(0.2)  # setup, not an assertion: let A's lock request meet the worker's wait
    finally:
        release_b.set()
        w.release()
    tb.join(60)
    ta.join(60)
    assert results == {"a": [data_a], "b": [data_b]}
    assert w.results() == [{"ok": True}]
    assert sorted(line.split()[1] for line in w.log_lines()) == [a]  # B was fetched here, once


def _waiting_for_a_lock(pid: int) -> bool:
    """Whether process `pid` is blocked on a POSIX record lock (per /proc/locks)."""
    try:
        with open("/proc/locks") as f:
            return any(line.split()[1:2] == ["->"] and line.split()[5:6] == [str(pid)] for line in f)
    except OSError:  # pragma: no cover - no /proc: just race
        return True


# ------------------------------------------------------------------ atomicity


def test_readers_never_see_torn_entries_while_writers_write(tmp_path, cdir):
    seeds, size = list(range(200, 208)), 256 << 10
    specs = [{"mode": "writer", "seeds": seeds, "size": size, "rounds": 15}] * 2
    specs += [{"mode": "reader", "seeds": seeds, "size": size, "rounds": 150}] * 3
    w = Workers(tmp_path, cdir, specs)
    w.go()
    results = w.results()
    readers = results[2:]
    assert all(r["bad"] == 0 and r["stats"]["corrupt"] == 0 for r in readers)
    assert sum(r["seen"] for r in readers) > 0  # they did read entries, whole ones


def test_killed_builder_leaves_only_a_temp_file(tmp_path, cdir):
    w = Workers(tmp_path, cdir, [{"mode": "ensure", "name": "x.lazy", "hang": True, "sleep": 0}])
    w.go()
    deadline = time.monotonic() + 60
    while "hanging" not in w.log_lines():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    w.procs[0].kill()
    w.procs[0].wait()
    c = DiskCache(cdir)
    assert not (cdir / "v1" / "files" / "x.lazy").exists()
    temps = list((cdir / "v1" / "tmp").iterdir())
    assert len(temps) == 1
    # its lock died with it: building again works at once
    path = c.ensure_file("x.lazy", lambda f: f.write(b"ok"))
    assert Path(path).read_bytes() == b"ok"
    assert c.trim() == 0 and temps[0].exists()  # young temp files are left alone
    old = time.time() - 2 * 3600
    os.utime(temps[0], (old, old))  # an hour later
    size = temps[0].stat().st_size
    assert c.trim() == size and not temps[0].exists()


def test_old_temp_files_in_use_are_kept(cdir):
    c = DiskCache(cdir)
    tmp = cdir / "v1" / "tmp"
    stale, busy = tmp / ".w-stale", tmp / ".w-busy"
    stale.write_bytes(b"x" * 100)
    busy.write_bytes(b"y" * 100)
    old = time.time() - 2 * 3600
    for p in (stale, busy):
        os.utime(p, (old, old))
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer that has been at it for two hours
        assert c.trim() == 100
        assert not stale.exists() and busy.exists()
    finally:
        os.close(fd)
    assert c.trim() == 100 and not busy.exists()


# ------------------------------------------------------------------ bound and eviction


def test_putting_more_than_the_limit_trims(cdir):
    limit = 1 << 20
    c = DiskCache(cdir, max_bytes=limit)
    for s in range(48):
        d, data = entry(s, 64 << 10)
        c.put(d, data)
        assert c.usage().bytes <= limit
    u = c.usage()
    assert u == CacheUsage(str(cdir), u.bytes, u.entries, 0, limit)
    assert 0 < u.bytes <= limit and c.stats()["evicted"] >= 48 - 16
    assert c.get(entry(47, 64 << 10)[0]) is not None  # the newest survived


def _age(c: DiskCache, digests: list[str]) -> None:
    """Give the entries distinct mtimes, oldest first (file times are too coarse to rely on)."""
    base = time.time() - 1000
    for n, d in enumerate(digests):
        os.utime(entry_path(c, d), (base + n, base + n))


def test_eviction_is_least_recently_used_first(cdir):
    size = 64 << 10
    c = DiskCache(cdir, max_bytes=1 << 30)
    digests = []
    for s in range(8):
        d, data = entry(s, size)
        c.put(d, data)
        digests.append(d)
    _age(c, digests)
    assert c.get(digests[0]) is not None  # now the most recently used
    assert c.trim(5 * size) == 3 * size
    kept = [c.get(d) is not None for d in digests]
    assert kept == [True, False, False, False, True, True, True, True]
    assert c.stats()["evicted"] == 3
    assert c.trim(5 * size) == 0  # already within the bound


def test_automatic_trim_goes_down_to_90_percent(cdir):
    size, limit = 16 << 10, 1 << 20
    c = DiskCache(cdir, max_bytes=limit)
    for s in range(200):
        c.put(*entry(s, size))
        if c.stats()["evicted"]:  # the put that found the cache near its limit trimmed it
            assert c.usage().bytes <= 0.9 * limit
            assert c.usage().bytes > 0.8 * limit  # not much lower either
            break
    else:
        pytest.fail("never trimmed")


def test_entries_and_files_in_use_are_never_evicted(tmp_path, cdir):
    size = 64 << 10
    c = DiskCache(cdir, max_bytes=1 << 30)
    digests = []
    for s in range(6):
        d, data = entry(s, size)
        c.put(d, data)
        digests.append(d)
    path = c.ensure_file("sha256-" + "ab" * 32 + ".lazy", lambda f: f.write(b"z" * size))
    _age(c, digests)
    old = time.time() - 5000
    os.utime(path, (old, old))  # the oldest of all
    held = digests[0]
    w = Workers(tmp_path, cdir, [{"mode": "hold", "path": str(entry_path(c, held))}])
    w.wait_ready()  # another process is reading that entry
    with c.pin(path) as pin:
        assert pin.path == path and not pin.closed
        freed = c.clear()
        assert freed == 5 * size
        assert Path(path).read_bytes() == b"z" * size
        assert c.get(held) is not None
        assert c.usage() == CacheUsage(str(cdir), 2 * size, 1, 1, 1 << 30)
        with pytest.raises(ValueError):
            c.pin(str(tmp_path / "elsewhere"))
    assert pin.closed
    assert c.clear() == size  # the file, unpinned
    w.release()
    w.go()
    w.results()
    assert c.clear() == size  # and the entry, no longer read
    assert c.usage().bytes == 0
    with pytest.raises(FileNotFoundError):
        c.pin(path)


def test_trim_is_one_at_a_time(cdir):
    c = DiskCache(cdir, max_bytes=1 << 30)
    c.put(*entry(1))
    fd = os.open(cdir / "v1" / "trim.lock", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process is trimming
        assert c.clear() == 0 and c.usage().entries == 1
    finally:
        os.close(fd)
    assert c.clear() > 0 and c.usage().entries == 0


# ------------------------------------------------------------------ ensure_file


def test_ensure_file_builds_once_across_processes(tmp_path, cdir):
    w = Workers(tmp_path, cdir, [{"mode": "ensure", "name": "sha256-" + "cd" * 32 + ".lazy"}] * 3)
    w.go()
    results = w.results()
    assert len(w.log_lines()) == 1  # built once
    assert all(r["ok"] for r in results) and len({r["path"] for r in results}) == 1
    c = DiskCache(cdir)
    assert c.usage().files == 1
    assert c.ensure_file("sha256-" + "cd" * 32 + ".lazy", lambda f: pytest.fail("exists")) == results[0]["path"]


def test_ensure_file_builds_once_across_threads(cdir):
    c = DiskCache(cdir)
    calls = []
    start = threading.Barrier(8)
    paths = []

    def build(f):
        calls.append(1)
        time.sleep(0.05)
        f.write(b"data")

    def worker():
        start.wait()
        paths.append(c.ensure_file("t.bin", build))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1 and len(set(paths)) == 1 and len(paths) == 8


def test_failed_build_leaves_nothing(cdir):
    c = DiskCache(cdir)

    def build(f):
        f.write(b"half a file")
        raise OSError("source went away")

    with pytest.raises(OSError, match="source went away") as info:
        c.ensure_file("x.lazy", build)
    assert not isinstance(info.value, CacheError)  # unchanged
    assert not (cdir / "v1" / "files" / "x.lazy").exists()
    assert not list((cdir / "v1" / "tmp").iterdir())
    assert c.ensure_file("x.lazy", lambda f: f.write(b"whole")) == str(cdir / "v1" / "files" / "x.lazy")
    with c.ensure_pinned("x.lazy", lambda f: pytest.fail("exists")) as pin:
        assert os.pread(pin.fileno(), 5, 0) == b"whole"


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc/passwd", "a..b", ".hidden", "a b",
                                  "x" * 201, "a\0b", "é"])
def test_bad_file_names_are_rejected(cdir, name):
    with pytest.raises(ValueError):
        DiskCache(cdir).ensure_file(name, lambda f: pytest.fail("must not build"))


# ------------------------------------------------------------------ configuration


def test_default_dir_and_limit_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("LAZYLAYER_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "lazylayer")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "lazylayer")
    monkeypatch.setenv("LAZYLAYER_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == str(tmp_path / "explicit")

    monkeypatch.delenv("LAZYLAYER_CACHE_MAX", raising=False)
    assert DiskCache().max_bytes == cache_mod.DEFAULT_MAX_BYTES == 10 << 30
    assert DiskCache().path == str(tmp_path / "explicit")
    monkeypatch.setenv("LAZYLAYER_CACHE_MAX", "512M")
    assert DiskCache().max_bytes == 512 << 20
    assert DiskCache(max_bytes=5).max_bytes == 5
    monkeypatch.setenv("LAZYLAYER_CACHE_MAX", "lots")
    with pytest.raises(ValueError, match="LAZYLAYER_CACHE_MAX"):
        DiskCache()


def test_parse_size():
    assert [parse_size(s) for s in ("123", "20G", "512M", "64KiB", "1 MB", "2t")] == \
        [123, 20 << 30, 512 << 20, 64 << 10, 1 << 20, 2 << 40]
    for bad in ("", "1.5G", "-1", "G", "10X"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_unusable_directory_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(CacheError, match=str(tmp_path / "file")) as info:
        DiskCache(tmp_path / "file" / "cache")
    assert isinstance(info.value, OSError)


# ------------------------------------------------------------------ CLI


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lazylayer", "cache", *args], capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_cli_info_trim_clear(cdir):
    c = DiskCache(cdir, max_bytes=1 << 30)
    digests = []
    for s in range(40):
        d, data = entry(s, 64 << 10)
        c.put(d, data)
        digests.append(d)
    c.ensure_file("f.bin", lambda f: f.write(b"x" * 1000))

    res = cli("info", "--cache-dir", str(cdir))
    assert res.returncode == 0, res.stderr
    assert str(cdir).encode() in res.stdout and b"entries  40" in res.stdout and b"files    1" in res.stdout

    res = cli("--cache-dir", str(cdir), "info", "--json", env={"LAZYLAYER_CACHE_MAX": "2G"})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"path": str(cdir), "bytes": 40 * (64 << 10) + 1000, "entries": 40,
                                      "files": 1, "max_bytes": 2 << 30}

    res = cli("trim", "--max-size", "1M", "--cache-dir", str(cdir))
    assert res.returncode == 0, res.stderr
    assert b"freed" in res.stdout
    assert c.usage().bytes <= 1 << 20

    res = cli("info", "--json", env={"LAZYLAYER_CACHE_DIR": str(cdir)})  # the default directory
    assert json.loads(res.stdout)["path"] == str(cdir)
    res = cli("clear", env={"LAZYLAYER_CACHE_DIR": str(cdir)})
    assert res.returncode == 0 and b"freed" in res.stdout, res.stderr
    assert c.usage().bytes == 0


def test_cli_usage_errors(cdir, tmp_path):
    assert cli("trim", "--max-size", "lots", "--cache-dir", str(cdir)).returncode == 2
    assert cli("info", "--cache-dir", str(cdir), env={"LAZYLAYER_CACHE_MAX": "lots"}).returncode == 2
    assert cli("frobnicate", "--cache-dir", str(cdir)).returncode == 2
    (tmp_path / "file").write_bytes(b"")
    res = cli("info", "--cache-dir", str(tmp_path / "file" / "sub"))
    assert res.returncode == 1 and str(tmp_path / "file").encode() in res.stderr
    assert b"Traceback" not in res.stderr


def test_cli_never_creates_a_missing_cache_and_says_limit_for_the_limit_only(cdir, tmp_path):
    missing = tmp_path / "nothing" / "here"
    res = cli("info", "--cache-dir", str(missing))
    assert res.returncode == 0, res.stderr
    assert b"(does not exist yet)" in res.stdout and b"used     0 B" in res.stdout
    res = cli("info", "--json", "--cache-dir", str(missing), env={"LAZYLAYER_CACHE_MAX": "1G"})
    assert json.loads(res.stdout) == {"path": str(missing), "bytes": 0, "entries": 0, "files": 0,
                                      "max_bytes": 1 << 30}
    for action in (["trim"], ["trim", "--max-size", "0"], ["clear"]):
        res = cli(*action, "--cache-dir", str(missing))
        assert res.returncode == 0 and res.stdout.startswith(b"freed 0 B"), res.stderr
    assert not (tmp_path / "nothing").exists()

    # "limit" is the configured maximum (info); trim says what it trimmed to
    c = DiskCache(cdir, max_bytes=1 << 30)
    for s in range(8):
        c.put(*entry(s, 64 << 10))
    res = cli("trim", "--max-size", "256K", "--cache-dir", str(cdir))
    assert res.returncode == 0 and res.stdout.decode().rstrip().endswith("trimmed to 256.0 KiB"), res.stdout
    assert b"limit" not in res.stdout
    res = cli("trim", "--cache-dir", str(cdir), env={"LAZYLAYER_CACHE_MAX": "2G"})
    assert res.stdout.decode().rstrip().endswith("trimmed to the limit, 2.0 GiB"), res.stdout
    res = cli("info", "--cache-dir", str(cdir), env={"LAZYLAYER_CACHE_MAX": "2G"})
    assert b"limit    2.0 GiB" in res.stdout and b"does not exist" not in res.stdout


def test_a_cache_that_is_not_a_directory_is_an_error_not_an_empty_cache(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    for path in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(CacheError, match=str(tmp_path / "file")):
            DiskCache(path, create=False)
        res = cli("info", "--cache-dir", str(path))
        assert res.returncode == 1 and str(tmp_path / "file").encode() in res.stderr
        assert b"Traceback" not in res.stderr and b"[Errno" not in res.stderr
    assert DiskCache(tmp_path / "missing", create=False).usage().bytes == 0
    assert not (tmp_path / "missing").exists()
