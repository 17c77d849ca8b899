"""The parts of lazylayer.remote/.auth/.oci that need no server: planning, parsing, credentials."""

from __future__ import annotations

import base64
import json
import os
import stat
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazylayer import errors, oci, remote
from lazylayer.registry import auth, is_loopback

# ------------------------------------------------------------------ range planning


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 700)), max_size=30),
       st.integers(0, 300), st.integers(1, 1000))
def test_plan_covers_every_range_with_bounded_requests(ranges, gap, part):
    requests = remote.plan_requests(ranges, gap, part)
    assert all(0 < n <= part for _, n in requests)
    assert requests == sorted(requests)
    for (a, n), (b, _) in zip(requests, requests[1:]):
        assert a + n <= b  # no byte is fetched twice
    covered = set()
    for off, n in requests:
        covered.update(range(off, off + n))
    for off, n in ranges:
        assert set(range(off, off + n)) <= covered
    # Assembling from bodies that encode their own offsets gives back each range exactly.
    blob = bytes(i % 251 for i in range(6000))
    bodies = [blob[o:o + n] for o, n in requests]
    assert remote.transport._assemble(ranges, requests, bodies) == [blob[o:o + n] for o, n in ranges]


def test_plan_merges_near_ranges_and_splits_long_ones():
    assert remote.plan_requests([(0, 10), (20, 10), (1000, 5)], gap=15, part_size=100) == [(0, 30), (1000, 5)]
    assert remote.plan_requests([(0, 10), (30, 10)], gap=15, part_size=100) == [(0, 10), (30, 10)]
    assert remote.plan_requests([(0, 250)], gap=0, part_size=100) == [(0, 84), (84, 84), (168, 82)]
    # Merging stops at the part size: the gap is not worth an oversized request.
    assert remote.plan_requests([(0, 60), (70, 60)], gap=20, part_size=100) == [(0, 60), (70, 60)]


def test_clean_url_drops_secrets():
    assert remote.clean_url("https://user:pw@host:8443/v2/x/blobs/sha256:ab?X-Amz-Signature=s3cr3t#f") == \
        "https://host:8443/v2/x/blobs/sha256:ab"


def test_options_are_checked():
    with pytest.raises(ValueError):
        remote.RemoteOptions(max_connections=0)


# ------------------------------------------------------------------ challenges and tokens


def test_parse_challenges():
    (c,) = auth.parse_challenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                 'scope="repository:library/alpine:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                        "scope": "repository:library/alpine:pull,push"}
    basic, bearer = auth.parse_challenges('Basic realm="x y", Bearer realm=http://t/token')
    assert (basic.scheme, basic.params) == ("basic", {"realm": "x y"})
    assert bearer.params["realm"] == "http://t/token"
    assert auth.parse_challenges("") == []
    assert auth.parse_challenges("garbage !!!")[0].scheme == "garbage"


def test_token_response_and_cache_expiry():
    tok = auth.parse_token_response(json.dumps({"access_token": "abc", "expires_in": 2}).encode(), now=100.0)
    assert tok.value == "abc" and 100.0 < tok.expires < 102.0
    for bad in (b"not json", b"[]", b"{}", json.dumps({"token": ""}).encode()):
        with pytest.raises(errors.AuthError):
            auth.parse_token_response(bad)
    cache = auth.TokenCache()
    cache.put(("k",), auth.Token("v", time.monotonic() + 0.2))
    assert cache.get(("k",)).value == "v"
    time.sleep(0.3)
    assert cache.get(("k",)) is None and len(cache) == 0
    cache.put(("k",), auth.Token("v", time.monotonic() + 60))
    cache.drop(("k",))
    assert cache.get(("k",)) is None


def test_tokens_never_show_in_repr():
    tok = auth.Token("sekrit-token", 1.0)
    creds = auth.Credentials("alice", "hunter2", "idtok")
    for text in (repr(tok), repr(creds), str(creds)):
        assert "sekrit" not in text and "hunter2" not in text and "idtok" not in text
    assert "alice" in repr(creds)


# ------------------------------------------------------------------ credentials from auth files


def _write_json(path, doc):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f)
    return str(path)


def test_find_credentials_in_docker_and_podman_files(tmp_path):
    b64 = base64.b64encode(b"bob:pa:ss").decode()
    docker = _write_json(tmp_path / "docker" / "config.json", {"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hubuser:hubpw").decode()},
        "registry.example.com:5000": {"auth": b64},
        "https://quay.io": {"username": "q", "password": "qp"},
        "tok.example": {"identitytoken": "refresh-me"},
    }})
    podman = _write_json(tmp_path / "podman" / "auth.json", {"auths": {"registry.example.com:5000": {
        "auth": base64.b64encode(b"first:wins").decode()}}})
    assert auth.find_credentials("docker.io", [docker]) == auth.Credentials("hubuser", "hubpw")
    assert auth.find_credentials("registry.example.com:5000", [docker]) == auth.Credentials("bob", "pa:ss")
    assert auth.find_credentials("registry.example.com:5000", [podman, docker]).username == "first"
    assert auth.find_credentials("quay.io", [docker]) == auth.Credentials("q", "qp")
    assert auth.find_credentials("tok.example", [docker]).identity_token == "refresh-me"
    assert auth.find_credentials("elsewhere.example", [docker]) is None
    assert auth.find_credentials("docker.io", [str(tmp_path / "missing.json")]) is None


def test_auth_file_environment_order(tmp_path, monkeypatch):
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "a.json"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dockercfg"))
    files = auth.auth_files()
    assert files[0] == str(tmp_path / "a.json")
    assert files[-1] == str(tmp_path / "dockercfg" / "config.json")


def test_bad_auth_file_is_a_typed_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(errors.FormatError, match="not valid JSON"):
        auth.find_credentials("x.example", [str(bad)])
    notb64 = _write_json(tmp_path / "c.json", {"auths": {"x.example": {"auth": "%%%"}}})
    with pytest.raises(errors.FormatError, match="base64"):
        auth.find_credentials("x.example", [notb64])


def test_credential_helper_program(tmp_path, monkeypatch):
    """A real docker-credential-* program on PATH, speaking the helper protocol on stdin/stdout."""
    helper = tmp_path / "bin" / "docker-credential-lltest"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread server\n[ "$1" = get ] || exit 3\n'
                      'case "$server" in helped.example) printf \'{"Username":"hu","Secret":"hs"}\';; '
                      '*) echo "credentials not found" >&2; exit 1;; esac\n')
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    cfg = _write_json(tmp_path / "config.json", {"credHelpers": {"helped.example": "lltest"}})
    assert auth.find_credentials("helped.example", [cfg]) == auth.Credentials("hu", "hs")
    store = _write_json(tmp_path / "store.json", {"credsStore": "lltest"})
    assert auth.find_credentials("other.example", [store]) is None


def test_credentials_parse():
    assert auth.Credentials.parse("u:p:q") == auth.Credentials("u", "p:q")
    with pytest.raises(ValueError):
        auth.Credentials.parse(":nouser")


# ------------------------------------------------------------------ hosts and platforms


@pytest.mark.parametrize("host,expected", [
    ("localhost:5000", True), ("127.0.0.1", True), ("127.1.2.3:80", True), ("[::1]:5000", True), ("::1", True),
    ("registry.example.com", False), ("10.0.0.1:5000", False), ("localhost.example.com", False),
])
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


INDEX = {"manifests": [
    {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
    {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + "2" * 64,
     "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + "3" * 64,
     "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
    {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + "4" * 64,
     "platform": {"os": "unknown", "architecture": "unknown"}},
]}


def test_select_manifest():
    assert oci.select_manifest(INDEX, "linux/amd64")["digest"].endswith("1" * 64)
    assert oci.select_manifest(INDEX, "linux/arm64")["digest"].endswith("2" * 64)
    assert oci.select_manifest(INDEX, "linux/aarch64")["digest"].endswith("2" * 64)
    assert oci.select_manifest(INDEX, "linux/arm/v7")["digest"].endswith("3" * 64)
    with pytest.raises(oci.ReferenceError, match="linux/amd64, linux/arm/v7, linux/arm64/v8"):
        oci.select_manifest(INDEX, "linux/s390x")
    with pytest.raises(oci.ReferenceError, match="invalid platform"):
        oci.select_manifest(INDEX, "amd64")
    assert oci.host_platform().startswith("linux/")
    oci.parse_platform(oci.host_platform())


def test_open_blob_routes_by_scheme(tmp_path):
    p = tmp_path / "blob"
    p.write_bytes(b"0123456789")
    blob = remote.open_blob(f"file://{p}")
    assert isinstance(blob, remote.FsspecBlob)
    assert blob.size == 10 and blob.read(2, 3) == b"234"
    assert blob.read_ranges([(0, 2), (8, 2)]) == [b"01", b"89"]
    with pytest.raises(ValueError, match="outside the blob"):
        blob.read(8, 5)
    with pytest.raises(errors.NotFoundError):
        remote.open_blob(f"file://{tmp_path}/nope").size
    digest = remote.sha256_of(b"0123456789")
    assert remote.open_blob(f"file://{p}", digest=digest).read_all() == b"0123456789"
    with pytest.raises(errors.IntegrityError):
        remote.open_blob(f"file://{p}", digest="sha256:" + "0" * 64).read_all()
    with pytest.raises(errors.IntegrityError):
        blob.read(0, 2, digest="sha256:" + "0" * 64)


# ------------------------------------------------------------------ read-ahead policy


def test_read_ahead_grows_while_sequential_up_to_the_cap():
    ra = remote.ReadAhead(128, 1024)
    assert ra.read(0, 100) is None  # a first read is not a run yet
    windows, pos = [], 100
    for _ in range(6):
        got = ra.read(pos, pos + 100)
        assert got is not None and got[1] == pos + 100 + ra.window
        windows.append(ra.window)
        pos = got[1]  # the caller read up to there (the window it fetched)
    assert windows == [128, 256, 512, 1024, 1024, 1024]
    assert ra.steps == 6


def test_read_ahead_resets_on_a_seek():
    ra = remote.ReadAhead(4, 64)
    ra.read(0, 10)
    assert ra.read(10, 20) == (20, 24) and ra.read(24, 30) == (30, 38)
    assert ra.read(5, 6) is None and ra.steps == 0 and ra.window == 0  # backwards: a seek
    assert ra.read(6, 7) == (7, 11)  # a new run starts at the minimum
    assert ra.read(1000, 1010) is None and ra.steps == 0  # forwards past what was fetched: a seek
    ra.reset()
    assert ra.end is None and ra.read(1010, 1020) is None


def test_read_ahead_counts_reads_inside_the_window_as_sequential_and_refills_at_half():
    ra = remote.ReadAhead(2, 8, after=2, gap=1, refill=0.5)  # the prefetcher's, in frames
    assert ra.read(0, 1) is None and ra.read(1, 2) is None  # two steps before any read-ahead
    assert ra.read(2, 3) == (3, 5)
    assert ra.read(4, 5) == (5, 9)  # frame 3 skipped (gap 1): still sequential; window 4
    assert ra.read(5, 6) == (9, 14)  # window 8, 3 still ahead: half or less, so top up
    assert ra.read(6, 7) is None and ra.window == 8  # at the cap; 7 of 8 still ahead
    assert ra.read(10, 11) == (14, 19)  # inside what was fetched: sequential; 3 ahead: top up
    assert ra.read(30, 31) is None and ra.steps == 0  # beyond it: a seek


def test_read_ahead_maximum_may_be_measured_and_zero():
    cap = [4]
    ra = remote.ReadAhead(1, lambda: cap[0], after=0)  # the blob stream's, in parts
    assert ra.read(0, 1) == (1, 2)  # at once: one part ahead
    assert ra.read(1, 2) == (2, 4) and ra.read(2, 3) == (4, 7)
    cap[0] = 2
    assert ra.read(3, 4) is None and ra.window == 2  # the cap shrank: 3 ahead already, nothing more
    none = remote.ReadAhead(1, 0, after=0)
    assert none.read(0, 1) is None and none.read(1, 2) is None and none.window == 0
    with pytest.raises(ValueError):
        remote.ReadAhead(0, 10)
    with pytest.raises(ValueError):
        remote.ReadAhead(1, 10, refill=2)


# ------------------------------------------------------------------ call: deadlines, rounds, memo


def test_a_deadline_with_nothing_failed_says_so_not_no_endpoint():
    """An attempt that never ends: RemoteTimeoutError at the deadline, without "(last error: no endpoint)"."""
    import asyncio

    async def forever(url: str) -> None:
        await asyncio.sleep(3600)

    with remote.Transport(remote.RemoteOptions(deadline=0.3, down_memo=0)) as t:
        start = time.monotonic()
        with pytest.raises(errors.RemoteTimeoutError) as info:
            t.run(t.call(["http://127.0.0.1:9/x"], forever, "thing"))
        assert time.monotonic() - start < 3
        assert "no endpoint" not in str(info.value) and "0.3 s deadline" in str(info.value)


def test_retries_go_on_in_rounds_until_the_deadline_and_definitive_errors_stop_at_once():
    """`retries` counts per endpoint per round: transient failures are retried until the deadline."""
    seen: list[str] = []

    async def flaky(url: str) -> str:
        seen.append(url)
        if len(seen) < 12:
            raise remote.Retry("503 Service Unavailable")
        return url

    async def missing(url: str) -> str:
        seen.append(url)
        raise errors.NotFoundError("gone", status=404, url=url)

    async def fine(url: str) -> str:
        return url

    urls = ["http://mirror.invalid/x", "http://origin.invalid/x"]
    with remote.Transport(remote.RemoteOptions(deadline=20, retries=1, backoff=0.001, max_backoff=0.01)) as t:
        with pytest.raises(errors.RemoteError, match="gave up after 2 attempts"):
            t.run(t.call(urls[1:], flaky, "thing"))  # never answered: a wrong host, one round
        seen.clear()
        t.run(t.call(urls[1:], fine, "thing"))  # it answered once: an outage there is ridden out
        assert t.run(t.call(urls, flaky, "thing")) == urls[1]
        # rounds of (1 + retries) attempts per endpoint: the mirror in the first round, then both
        assert seen[:2] == [urls[0]] * 2 and seen[2:4] == [urls[1]] * 2 and seen[4] == urls[0]
        seen.clear()
        start = time.monotonic()
        with pytest.raises(errors.NotFoundError):
            t.run(t.call(urls[1:], missing, "thing"))
        assert seen == urls[1:] and time.monotonic() - start < 1
