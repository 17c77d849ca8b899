"""Reads through a fault-injecting proxy: the right bytes, or a typed error by the deadline.

The proxy (tests/servers.py FaultProxy) sits in front of a real
docker-registry and resets connections, answers 5xx, stalls, truncates
bodies, lies in Content-Range, serves shifted bytes under a correct header,
flips bits and ignores Range.  Every read here must either return exactly the
blob's bytes or raise a lazylayer error (never wrong bytes, never a hang).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import random
import time

import pytest
from servers import small_image, unique_repo

import lazylayer
from lazylayer import errors, oci, remote
from lazylayer.registry import Registry, RegistryConfig

BLOB_SIZE = 3 << 20
DEADLINE = 4.0


@pytest.fixture(scope="module")
def stored_blob(registry):
    """A 3 MiB random blob pushed to the plain registry with lazylayer's own upload."""
    data = os.urandom(BLOB_SIZE)
    repo = unique_repo("faults")
    t = remote.Transport()
    try:
        digest = t.run(Registry(registry.host, RegistryConfig(transport=t)).aput_blob(repo, data))
    finally:
        t.close()
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    return repo, digest, data


@pytest.fixture
def through_proxy(registry, stored_blob, fault_proxy):
    """(proxy, blob read through it, the blob's bytes) with short timeouts so faults resolve fast."""
    repo, digest, data = stored_blob
    proxy = fault_proxy(registry.url)
    t = remote.Transport(remote.RemoteOptions(part_size=512 << 10, coalesce_gap=64 << 10, read_timeout=0.5,
                                              deadline=DEADLINE, retries=4, backoff=0.01, max_backoff=0.05))
    reg = Registry(proxy.url.split("://", 1)[1], RegistryConfig(transport=t))
    yield proxy, reg.blob(repo, digest, len(data)), data
    t.close()


TRANSIENT = [
    ("status", {"status": 503}),
    ("status", {"status": 429, "headers": {"Retry-After": "0"}}),
    ("reset", {}),
    ("reset", {"after_bytes": 10_000}),
    ("stall", {"after_bytes": 1000}),
    ("stall", {}),
    ("truncate", {"after_bytes": 20_000}),
    ("content_range", {}),
    ("ignore_range", {}),
    ("redirect", {}),
]


@pytest.mark.parametrize("kind,kw", TRANSIENT, ids=[f"{k}-{i}" for i, (k, _) in enumerate(TRANSIENT)])
def test_transient_faults_are_retried(through_proxy, kind, kw):
    proxy, blob, data = through_proxy
    proxy.add_fault(kind, path="/blobs/", times=2, **kw)
    ranges = [(0, 4096), (700_000, 300_000), (BLOB_SIZE - 5000, 5000)]
    assert blob.read_ranges(ranges) == [data[o:o + n] for o, n in ranges]
    assert blob.read(100, 1_500_000) == data[100:1_500_100]  # split into parallel parts
    buf = bytearray(1_200_000)
    assert blob.readinto(buf, 7) == len(buf) and buf == data[7:1_200_007]  # parts land in place


@pytest.mark.parametrize("kind,kw", [("flip", {"after_bytes": 333}), ("wrong_range", {"shift": 1}),
                                     ("wrong_range", {"shift": -4096})])
def test_wrong_bytes_are_caught_by_the_digest_and_refetched(through_proxy, kind, kw):
    proxy, blob, data = through_proxy
    proxy.add_fault(kind, path="/blobs/", times=2, **kw)
    digests = [remote.sha256_of(data[o:o + n]) for o, n in [(8192, 4096), (1 << 20, 1 << 20)]]
    assert blob.read_ranges([(8192, 4096), (1 << 20, 1 << 20)], digests) == \
        [data[8192:12288], data[1 << 20:2 << 20]]
    proxy.clear()
    proxy.add_fault(kind, path="/blobs/", times=3, **kw)
    assert blob.read_all() == data  # verified against the blob's digest
    proxy.clear()
    proxy.add_fault(kind, path="/blobs/", times=2, **kw)
    buf = bytearray(BLOB_SIZE)
    blob.readinto(buf, 0, digest=blob.digest)
    assert buf == data


PERMANENT = [
    ("status", {"status": 503}, errors.RemoteError),
    ("status", {"status": 500}, errors.RemoteError),
    ("reset", {}, errors.RemoteError),
    # (a body cut after N > 0 bytes is resumed, so it makes progress and ends well within the deadline)
    ("reset", {"after_bytes": 0}, errors.RemoteError),
    ("stall", {}, errors.RemoteTimeoutError),
    ("truncate", {"after_bytes": 0}, errors.RemoteError),
    ("content_range", {}, errors.RemoteError),
    ("flip", {"after_bytes": 7}, errors.IntegrityError),
    ("wrong_range", {}, errors.IntegrityError),
]


@pytest.mark.parametrize("kind,kw,error", PERMANENT, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(PERMANENT)])
def test_permanent_faults_raise_typed_errors_by_the_deadline(through_proxy, kind, kw, error):
    proxy, blob, data = through_proxy
    proxy.add_fault(kind, path="/blobs/", **kw)
    start = time.monotonic()
    with pytest.raises(error) as info:
        blob.read(4096, 8192, digest=remote.sha256_of(data[4096:12288]))
    assert time.monotonic() - start < DEADLINE + 2, "the read outlived its deadline"
    assert isinstance(info.value, errors.LazyLayerError)
    if isinstance(info.value, errors.RemoteError):
        assert isinstance(info.value, OSError) and "/blobs/" in (info.value.url or str(info.value))


def test_one_deadline_covers_the_refetch_after_a_digest_mismatch(through_proxy):
    """Stalls for most of the deadline, then wrong bytes, then stalls for good: the read ends by its
    one deadline (the re-fetch does not start a fresh one), and says what failed."""
    proxy, blob, data = through_proxy
    t = remote.Transport(remote.RemoteOptions(read_timeout=1.5, deadline=DEADLINE, retries=4, backoff=0.01,
                                              max_backoff=0.05))
    try:
        blob = remote.HttpBlob(blob.urls, t, digest=blob.digest, _size=len(data))
        proxy.add_fault("stall", path="/blobs/", times=2)  # each costs read_timeout (1.5 s): 3 s of 4
        proxy.add_fault("flip", path="/blobs/", times=1, after_bytes=10)
        proxy.add_fault("stall", path="/blobs/")
        start = time.monotonic()
        with pytest.raises(errors.RemoteTimeoutError) as info:
            blob.read(4096, 8192, digest=remote.sha256_of(data[4096:12288]))
        assert time.monotonic() - start < DEADLINE + 1.5, "the re-fetch got a deadline of its own"
        assert "no endpoint" not in str(info.value)
    finally:
        t.close()


def test_stalled_stream_times_out(through_proxy):
    proxy, blob, data = through_proxy
    proxy.add_fault("stall", path="/blobs/", after_bytes=100)
    with blob.open() as f:
        start = time.monotonic()
        with pytest.raises(errors.RemoteTimeoutError):
            f.read(1 << 20)
        assert time.monotonic() - start < DEADLINE + 2


def test_random_fault_mix_from_many_threads(through_proxy):
    """16 threads of random reads while random faults come and go: right bytes or typed errors only."""
    proxy, blob, data = through_proxy
    rng = random.Random(7)
    kinds = [("status", {"status": 502}), ("reset", {}), ("reset", {"after_bytes": 3000}),
             ("truncate", {"after_bytes": 1000}), ("flip", {"after_bytes": 50}), ("wrong_range", {}),
             ("content_range", {}), ("stall", {"after_bytes": 10}), ("ignore_range", {})]
    for _ in range(30):
        kind, kw = rng.choice(kinds)
        proxy.add_fault(kind, path="/blobs/", times=rng.randint(1, 3), **kw)

    def one(seed: int) -> str:
        r = random.Random(seed)
        off = r.randrange(0, BLOB_SIZE - 1)
        n = r.randint(1, min(300_000, BLOB_SIZE - off))
        try:
            got = blob.read(off, n, digest=remote.sha256_of(data[off:off + n]))
        except errors.LazyLayerError:
            return "error"
        assert got == data[off:off + n]
        return "ok"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    assert results.count("ok") >= 150, results.count("error")


def test_manifest_faults(registry, fault_proxy, tmp_path):
    src = small_image(tmp_path)
    repo = unique_repo("faults")
    digest = registry.push(src, f"{repo}:v1")
    proxy = fault_proxy(registry.url)
    t = remote.Transport(remote.RemoteOptions(read_timeout=0.5, deadline=DEADLINE, backoff=0.01, max_backoff=0.05))
    try:
        reg = Registry(proxy.url.split("://", 1)[1], RegistryConfig(transport=t))
        proxy.add_fault("flip", path="/manifests/", times=1, after_bytes=20)
        proxy.add_fault("truncate", path="/manifests/", times=1, after_bytes=20)
        assert reg.get_manifest(repo, digest)[0]["digest"] == digest
        proxy.clear()
        proxy.add_fault("flip", path="/manifests/", after_bytes=20)
        with pytest.raises(errors.IntegrityError, match="digest"):
            reg.get_manifest(repo, digest)  # by digest: the body is checked
        with pytest.raises(errors.IntegrityError, match="Docker-Content-Digest"):
            reg.get_manifest(repo, "v1")  # by tag: checked against the registry's header
        proxy.clear()
        proxy.add_fault("status", path="/manifests/", status=200, times=None)
        with pytest.raises(errors.FormatError):
            reg.get_manifest(repo, "v1")  # a 200 whose body is not a manifest
    finally:
        t.close()


def test_wrong_digest_for_whole_blob(through_proxy):
    """A blob whose descriptor names another digest is refused, however often it is fetched."""
    proxy, blob, data = through_proxy
    lying = remote.HttpBlob(blob.urls, blob.transport, digest="sha256:" + "0" * 64, _size=len(data))
    with pytest.raises(errors.IntegrityError):
        lying.read_all()
    with pytest.raises(ValueError):
        blob.read(BLOB_SIZE - 10, 11)  # past the end: refused before any request


def test_convert_from_a_faulty_registry(registry, fault_proxy, tmp_path):
    """Conversion streams layers through the proxy's faults and still produces the right image."""
    from lazylayer import convert

    src = small_image(tmp_path)
    repo = unique_repo("faults")
    registry.push(src, f"{repo}:v1")
    proxy = fault_proxy(registry.url)
    for kind, kw in [("reset", {"after_bytes": 2000}), ("status", {"status": 503}), ("truncate", {"after_bytes": 10})]:
        proxy.add_fault(kind, path="/blobs/", times=1, **kw)
    t = remote.Transport(remote.RemoteOptions(read_timeout=0.5, deadline=DEADLINE * 3, backoff=0.01))
    try:
        conv = convert.Converter(progress=False, source_registry=RegistryConfig(transport=t))
        res = conv.convert(f"docker://{proxy.url.split('://', 1)[1]}/{repo}:v1", f"oci:{tmp_path}/out:v1")
    finally:
        t.close()
    assert len(res.layers) == 2
    out = lazylayer.registry.open_source(f"oci:{tmp_path}/out:v1")
    assert oci.select_image(out).manifest["layers"][0]["digest"] == res.layers[0].digest
