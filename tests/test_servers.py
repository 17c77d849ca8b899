"""The real-server test fixtures themselves (tests/servers.py), checked with standard clients only.

Before lazylayer's remote code is tested against these servers, these tests
prove the servers are what they claim: skopeo pushes to each registry mode
and plain HTTP (http.client, aiohttp) reads back the same bytes; Basic and
token auth challenge and accept like distribution 2.8 does; the mirror pulls
through from its origin; and every FaultProxy fault observably happens.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import resource
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import images
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from servers import (
    FaultProxy,
    MissingTool,
    RegistryServer,
    TokenServer,
    decode_jwt,
    skopeo_push,
    small_image,
    start_or_fail,
    unique_repo,
)

OCI_ACCEPT = ", ".join([images.OCI_MANIFEST, images.OCI_INDEX,
                        "application/vnd.docker.distribution.manifest.v2+json"])


# ------------------------------------------------------------------ plain HTTP helpers


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None,
            timeout: float = 10) -> Reply:
    """One HTTP request with http.client: no redirects followed, no retries, errors raised as they come."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = value.partition(" ")
    params = {}
    for part in rest.split('",'):
        k, _, v = part.partition("=")
        params[k.strip()] = v.strip().strip('"')
    return scheme, params


@dataclass
class Pushed:
    """An image pushed to a registry, with its layout on disk for expected bytes."""

    repo: str
    tag: str
    digest: str
    image: images.Image

    @property
    def big_layer(self) -> str:
        return max(self.image.layers, key=lambda d: d["size"])["digest"]

    def blob(self, digest: str) -> bytes:
        return images.read_blob(self.image.layout, digest)


def push_small(reg: RegistryServer, tmp_path: Path, prefix: str = "test") -> Pushed:
    ref = small_image(tmp_path)
    repo = unique_repo(prefix)
    digest = reg.push(ref, f"{repo}:v1")
    layout, tag = ref[len("oci:"):].rsplit(":", 1)
    return Pushed(repo, "v1", digest, images.image(layout, tag))


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """One image on the plain registry, read (never changed) by the proxy tests."""
    return push_small(registry, tmp_path_factory.mktemp("pushed"))


# ------------------------------------------------------------------ registry modes


def test_plain_registry_serves_what_skopeo_pushed(registry: RegistryServer, tmp_path: Path) -> None:
    p = push_small(registry, tmp_path)
    r = request(registry.manifest_url(p.repo, "v1"), headers={"Accept": OCI_ACCEPT})
    assert r.status == 200
    assert sha256(r.body) == p.digest == r.headers["docker-content-digest"]
    assert json.loads(r.body)["mediaType"] == images.OCI_MANIFEST
    for layer in p.image.layers:
        blob = request(registry.blob_url(p.repo, layer["digest"]))
        assert blob.status == 200 and blob.body == p.blob(layer["digest"])
    assert json.loads(request(f"{registry.url}/v2/{p.repo}/tags/list").body)["tags"] == ["v1"]
    assert os.path.isdir(os.path.join(registry.root, "docker/registry/v2/repositories", p.repo))
    assert registry.host == registry.url.removeprefix("http://") and registry.host.startswith("127.0.0.1:")


def test_registry_allows_deletes(registry: RegistryServer, tmp_path: Path) -> None:
    p = push_small(registry, tmp_path)
    assert request(registry.manifest_url(p.repo, p.digest), "DELETE").status == 202
    assert request(registry.manifest_url(p.repo, p.digest), headers={"Accept": OCI_ACCEPT}).status == 404


def test_basic_registry_requires_credentials(basic_registry: RegistryServer, tmp_path: Path) -> None:
    assert basic_registry.username and basic_registry.password
    p = push_small(basic_registry, tmp_path)
    url = basic_registry.manifest_url(p.repo, "v1")
    anonymous = request(url, headers={"Accept": OCI_ACCEPT})
    assert anonymous.status == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic realm=")
    assert request(url, headers={"Accept": OCI_ACCEPT, **basic(basic_registry.username, "wrong")}).status == 401
    ok = request(url, headers={"Accept": OCI_ACCEPT, **basic(basic_registry.username, basic_registry.password)})
    assert ok.status == 200 and sha256(ok.body) == p.digest


def test_token_registry_challenge_token_and_pull(token_registry: RegistryServer, tmp_path: Path) -> None:
    ts = token_registry.token_server
    assert ts is not None and token_registry.username and token_registry.password
    p = push_small(token_registry, tmp_path)
    assert ts.requests and ts.requests[0].username == token_registry.username  # skopeo fetched a token

    url = token_registry.manifest_url(p.repo, "v1")
    challenge = request(url, headers={"Accept": OCI_ACCEPT})
    assert challenge.status == 401
    scheme, params = parse_challenge(challenge.headers["www-authenticate"])
    assert scheme == "Bearer"
    assert params == {"realm": ts.realm, "service": ts.service, "scope": f"repository:{p.repo}:pull"}

    query = urllib.parse.urlencode({"service": params["service"], "scope": params["scope"]})
    reply = request(f"{params['realm']}?{query}",
                    headers=basic(token_registry.username, token_registry.password))
    assert reply.status == 200
    doc = json.loads(reply.body)
    assert doc["token"] == doc["access_token"] and doc["expires_in"] == 300
    assert time.time() - time.mktime(time.strptime(doc["issued_at"], "%Y-%m-%dT%H:%M:%SZ")) < 86400 + 60
    header, claims = decode_jwt(doc["token"])
    assert header["alg"] == "RS256" and header["typ"] == "JWT" and len(header["x5c"]) == 1
    assert claims["iss"] == ts.issuer and claims["aud"] == ts.service and claims["sub"] == token_registry.username
    assert claims["access"] == [{"type": "repository", "name": p.repo, "actions": ["pull"]}]
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"] and claims["jti"]
    # the signature checks out with the certificate the registry trusts
    with open(ts.cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    signing_input, _, sig = doc["token"].rpartition(".")
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), signing_input.encode(),
               padding.PKCS1v15(), hashes.SHA256())

    ok = request(url, headers={"Accept": OCI_ACCEPT, **bearer(doc["token"])})
    assert ok.status == 200 and sha256(ok.body) == p.digest
    assert ts.requests[-1] == (token_registry.username, f"repository:{p.repo}:pull")


def test_token_server_refuses_bad_credentials_and_never_records_passwords(token_registry: RegistryServer) -> None:
    ts = token_registry.token_server
    assert ts is not None and token_registry.username and token_registry.password
    for headers in (basic(token_registry.username, "not-the-password"), basic("nobody", "x"),
                    {"Authorization": "Basic !!!"}, bearer("abc")):
        assert request(f"{ts.realm}?service={ts.service}&scope=repository:a/b:pull", headers=headers).status == 401
    assert len(ts.requests) == 4
    assert "not-the-password" not in repr(ts.requests) and token_registry.password not in repr(ts.requests)


def test_anonymous_tokens_pull_public_repositories_only(token_registry: RegistryServer, tmp_path: Path) -> None:
    ts = token_registry.token_server
    assert ts is not None
    public = push_small(token_registry, tmp_path / "pub", prefix="public")
    private = push_small(token_registry, tmp_path / "priv", prefix="private")

    def anonymous_token(repo: str, actions: str) -> str:
        doc = json.loads(request(f"{ts.realm}?service={ts.service}&scope=repository:{repo}:{actions}").body)
        return str(doc["token"])

    token = anonymous_token(public.repo, "pull,push")
    assert decode_jwt(token)[1]["access"] == [{"type": "repository", "name": public.repo, "actions": ["pull"]}]
    assert decode_jwt(token)[1]["sub"] == ""
    assert request(token_registry.manifest_url(public.repo, "v1"),
                   headers={"Accept": OCI_ACCEPT, **bearer(token)}).status == 200

    token = anonymous_token(private.repo, "pull")
    assert decode_jwt(token)[1]["access"] == []
    denied = request(token_registry.manifest_url(private.repo, "v1"), headers={"Accept": OCI_ACCEPT, **bearer(token)})
    assert denied.status == 401 and 'error="insufficient_scope"' in denied.headers["www-authenticate"]
    assert (None, f"repository:{private.repo}:pull") in ts.requests


def test_registry_checks_jwt_expiry_with_60s_leeway_and_the_signer(token_registry: RegistryServer,
                                                                     tmp_path: Path) -> None:
    ts = token_registry.token_server
    assert ts is not None and token_registry.username and token_registry.password
    p = push_small(token_registry, tmp_path)
    url = token_registry.manifest_url(p.repo, "v1")
    creds = basic(token_registry.username, token_registry.password)

    def fetch_token() -> dict[str, Any]:
        return dict(json.loads(request(f"{ts.realm}?service={ts.service}&scope=repository:{p.repo}:pull",
                                       headers=creds).body))

    ts.jwt_lifetime = -61  # the registry allows 60 s of skew: this one is already past it
    doc = fetch_token()
    assert doc["expires_in"] == 300  # what the client is told
    rejected = request(url, headers={"Accept": OCI_ACCEPT, **bearer(doc["token"])})
    assert rejected.status == 401 and 'error="invalid_token"' in rejected.headers["www-authenticate"]

    ts.jwt_lifetime = -30  # expired, but within the leeway
    assert request(url, headers={"Accept": OCI_ACCEPT, **bearer(fetch_token()["token"])}).status == 200

    ts.jwt_lifetime, ts.signing_header = None, "kid"  # the libtrust key id instead of the certificate chain
    doc = fetch_token()
    assert decode_jwt(doc["token"])[0]["kid"] == ts.key_id
    assert request(url, headers={"Accept": OCI_ACCEPT, **bearer(doc["token"])}).status == 200

    with TokenServer() as stranger:  # same issuer and service, a key the registry does not trust
        forged = stranger.make_token("tester", [{"type": "repository", "name": p.repo, "actions": ["pull"]}])
    assert request(url, headers={"Accept": OCI_ACCEPT, **bearer(forged)}).status == 401


def test_token_server_answers_concurrent_requests(token_registry: RegistryServer) -> None:
    ts = token_registry.token_server
    assert ts is not None

    async def main() -> list[int]:
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> int:
                async with s.get(ts.realm, params={"service": ts.service, "scope": f"repository:public/x{i}:pull"},
                                 headers=basic(str(token_registry.username), str(token_registry.password))) as r:
                    assert (await r.json())["token"]
                    return r.status
            return await asyncio.gather(*(one(i) for i in range(40)))

    assert asyncio.run(main()) == [200] * 40
    assert len(ts.requests) == 40


def test_mirror_pulls_through_from_origin_and_caches(registry: RegistryServer, fault_proxy: Callable[[str], FaultProxy],
                                                     mirror_registry: Callable[..., RegistryServer],
                                                     tmp_path: Path) -> None:
    p = push_small(registry, tmp_path)
    link = fault_proxy(registry.url)  # origin <- link <- mirror, so the test can cut the origin off
    mirror = mirror_registry(link.url)
    m = request(mirror.manifest_url(p.repo, "v1"), headers={"Accept": OCI_ACCEPT})
    assert m.status == 200 and sha256(m.body) == p.digest
    layer = p.big_layer
    assert request(mirror.blob_url(p.repo, layer)).body == p.blob(layer)
    assert any(e.path_qs == f"/v2/{p.repo}/blobs/{layer}" for e in link.log)  # it came from the origin

    # The mirror stores the blob in the background: its data, then the repository's link to it (the
    # blob is served from storage only once both are there; a busy machine can see the data first).
    cached = [os.path.join(mirror.root, "docker/registry/v2/blobs/sha256", layer[7:9], layer[7:], "data"),
              os.path.join(mirror.root, "docker/registry/v2/repositories", p.repo, "_layers/sha256", layer[7:], "link")]
    deadline = time.monotonic() + 10
    while not all(os.path.exists(c) for c in cached):
        assert time.monotonic() < deadline, "mirror never cached the blob"
        time.sleep(0.02)
    link.add_fault("status", r"/blobs/", method=None, status=503)
    again = request(mirror.blob_url(p.repo, layer))
    assert again.status == 200 and again.body == p.blob(layer)  # served from the mirror's own storage


# ------------------------------------------------------------------ startup, failure, cleanup


def test_missing_docker_registry_fails_with_the_setup_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingTool, match="scripts/setup.sh"):
        RegistryServer()
    with pytest.raises(pytest.fail.Exception, match="docker-registry not found.*scripts/setup.sh"):
        start_or_fail(lambda: RegistryServer())


def test_startup_failure_shows_the_log_and_close_stops_the_process(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"exited with \d+ during startup; log .*\n.*storage"):
        RegistryServer(workdir=tmp_path / "bad", config={"storage": {"inmemory": {}}})  # two storage drivers
    server = RegistryServer(workdir=tmp_path / "good")
    assert server._proc is not None
    pid = server._proc.pid
    server.close()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ------------------------------------------------------------------ FaultProxy


def test_proxy_is_transparent(pushed: Pushed, registry: RegistryServer,
                              fault_proxy: Callable[[str], FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    m = request(f"{proxy.url}/v2/{pushed.repo}/manifests/v1", headers={"Accept": OCI_ACCEPT, **bearer("x")})
    assert m.status == 200 and sha256(m.body) == pushed.digest
    assert m.headers["docker-content-digest"] == pushed.digest
    blob = pushed.blob(pushed.big_layer)
    path = f"/v2/{pushed.repo}/blobs/{pushed.big_layer}"
    r = request(proxy.url + path, headers={"Range": "bytes=1000-1999"})
    assert r.status == 206 and r.body == blob[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(blob)}"
    head = request(proxy.url + path, "HEAD")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) == len(blob)
    assert [(e.method, e.path_qs, e.status) for e in proxy.log] == [
        ("GET", f"/v2/{pushed.repo}/manifests/v1", 200), ("GET", path, 206), ("HEAD", path, 200)]
    assert proxy.log[0].headers["authorization"] == "<present>" and proxy.log[1].headers["range"] == "bytes=1000-1999"


def test_push_through_the_proxy_keeps_uploads_on_the_proxy(registry: RegistryServer,
                                                           fault_proxy: Callable[[str], FaultProxy],
                                                           tmp_path: Path) -> None:
    proxy = fault_proxy(registry.url)
    repo = unique_repo()
    started = request(f"{proxy.url}/v2/{repo}/blobs/uploads/", "POST")
    assert started.status == 202 and started.headers["location"].startswith(proxy.url + "/v2/")
    digest = skopeo_push(small_image(tmp_path), proxy.host, f"{repo}:v1")
    assert sha256(request(registry.manifest_url(repo, "v1"), headers={"Accept": OCI_ACCEPT}).body) == digest
    assert {e.method for e in proxy.log} >= {"POST", "PUT"}
    assert all(e.status is not None and e.status < 500 for e in proxy.log)


def test_status_fault_applies_times_then_stops(pushed: Pushed, registry: RegistryServer,
                                               fault_proxy: Callable[[str], FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    url = f"{proxy.url}/v2/{pushed.repo}/blobs/{pushed.big_layer}"
    fault = proxy.add_fault("status", r"/blobs/sha256:", times=2, status=503, headers={"Retry-After": "1"})
    assert request(url, "HEAD").status == 200  # only GET was asked for
    first = request(url)
    assert first.status == 503 and first.headers["retry-after"] == "1"
    assert json.loads(first.body)["errors"][0]["code"] == "UNAVAILABLE"
    assert request(url).status == 503
    assert request(url).status == 200
    assert fault.hits == 2 and fault.times == 0
    proxy.add_fault("status", r"/manifests/", status=404)
    assert request(url).status == 200  # path does not match
    proxy.clear()
    assert request(f"{proxy.url}/v2/{pushed.repo}/manifests/v1", headers={"Accept": OCI_ACCEPT}).status == 200
    assert [e.status for e in proxy.log] == [200, 503, 503, 200, 200, 200]


def test_reset_before_headers_and_after_some_bytes(pushed: Pushed, registry: RegistryServer,
                                                   fault_proxy: Callable[[str], FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    url = f"{proxy.url}/v2/{pushed.repo}/blobs/{pushed.big_layer}"
    proxy.add_fault("reset", r"/blobs/", times=1)
    with pytest.raises(ConnectionError):
        request(url)
    proxy.add_fault("reset", r"/blobs/", times=1, after_bytes=1000)
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)
    conn.request("GET", u.path)
    resp = conn.getresponse()
    assert resp.status == 200
    got = b""
    with pytest.raises((ConnectionError, http.client.IncompleteRead)):
        while chunk := resp.read1(65536):
            got += chunk
        resp.read()
    conn.close()
    assert got == pushed.blob(pushed.big_layer)[:len(got)] and len(got) <= 1000
    assert request(url).status == 200
    assert [e.status for e in proxy.log] == [None, 200, 200]


def test_stall_times_out_a_client_with_a_1s_read_timeout(pushed: Pushed, registry: RegistryServer,
                                                         fault_proxy: Callable[[str], FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    proxy.add_fault("stall", r"/blobs/", after_bytes=100)
    url = f"{proxy.url}/v2/{pushed.repo}/blobs/{pushed.big_layer}"

    async def main() -> tuple[int, bytes]:
        got = b""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=1)) as s:
            async with s.get(url) as r:
                with pytest.raises(asyncio.TimeoutError):
                    async for chunk in r.content.iter_any():
                        got += chunk
                return r.status, got

    start = time.monotonic()
    status, got = asyncio.run(main())
    assert status == 200 and got == pushed.blob(pushed.big_layer)[:100]
    assert time.monotonic() - start > 0.9  # it hung until the client gave up


def test_truncate_sends_a_short_body_with_the_full_length(pushed: Pushed, registry: RegistryServer,
                                                          fault_proxy: Callable[[str], FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    proxy.add_fault("truncate", r"/blobs/", after_bytes=1000)
    blob = pushed.blob(pushed.big_layer)
    with pytest.raises(http.client.IncompleteRead) as e:
        request(f"{proxy.url}/v2/{pushed.repo}/blobs/{pushed.big_layer}")
    assert e.value.partial == blob[:1000] and e.value.expected == len(blob) - 1000


def test_flip_changes_one_bit(pushed: Pushed, registry: RegistryServer,
                              fault_proxy: Callable[[str], FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    proxy.add_fault("flip", r"/blobs/", after_bytes=5)
    r = request(f"{proxy.url}/v2/{pushed.repo}/blobs/{pushed.big_layer}", headers={"Range": "bytes=1000-1999"})
    truth = pushed.blob(pushed.big_layer)[1000:2000]
    assert r.status == 206 and len(r.body) == 1000 and r.body != truth
    assert [i for i in range(1000) if r.body[i] != truth[i]] == [5] and r.body[5] ^ truth[5] == 1


def test_content_range_lies_about_the_start(pushed: Pushed, registry: RegistryServer,
                                            fault_proxy: Callable[[str], FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    proxy.add_fault("content_range", r"/blobs/")
    blob = pushed.blob(pushed.big_layer)
    r = request(f"{proxy.url}/v2/{pushed.repo}/blobs/{pushed.big_layer}", headers={"Range": "bytes=1000-1999"})
    assert r.status == 206 and r.body == blob[1000:2000]
    assert r.headers["content-range"] == f"bytes 1001-2000/{len(blob)}"


def test_wrong_range_serves_other_bytes_under_the_right_header(pushed: Pushed, registry: RegistryServer,
                                                               fault_proxy: Callable[[str], FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    proxy.add_fault("wrong_range", r"/blobs/", shift=1)
    blob = pushed.blob(pushed.big_layer)
    r = request(f"{proxy.url}/v2/{pushed.repo}/blobs/{pushed.big_layer}", headers={"Range": "bytes=1000-1999"})
    assert r.status == 206 and r.headers["content-range"] == f"bytes 1000-1999/{len(blob)}"
    assert r.body == blob[1001:2001] != blob[1000:2000]
    assert proxy.log[0].headers["range"] == "bytes=1000-1999"  # the log shows what the client asked for


def test_ignore_range_returns_the_whole_blob(pushed: Pushed, registry: RegistryServer,
                                             fault_proxy: Callable[[str], FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    proxy.add_fault("ignore_range", r"/blobs/")
    r = request(f"{proxy.url}/v2/{pushed.repo}/blobs/{pushed.big_layer}", headers={"Range": "bytes=1000-1999"})
    assert r.status == 200 and r.body == pushed.blob(pushed.big_layer) and "content-range" not in r.headers


def test_redirect_goes_to_a_blob_store_that_refuses_credentials(basic_registry: RegistryServer,
                                                                fault_proxy: Callable[[str], FaultProxy],
                                                                tmp_path: Path) -> None:
    assert basic_registry.username and basic_registry.password
    p = push_small(basic_registry, tmp_path)
    proxy = fault_proxy(basic_registry.url)
    fault = proxy.add_fault("redirect", r"/blobs/sha256:", times=1)
    url = f"{proxy.url}/v2/{p.repo}/blobs/{p.big_layer}"
    assert request(url).status == 401  # upstream's 401 is passed on and does not use the fault up
    assert fault.times == 1
    creds = basic(basic_registry.username, basic_registry.password)
    r = request(url, headers=creds)
    assert r.status == 307 and fault.times == 0
    location = r.headers["location"]
    assert location.startswith(proxy.blob_store.url + "/") and proxy.blob_store.url != proxy.url

    blob = p.blob(p.big_layer)
    assert request(location).body == blob
    ranged = request(location, headers={"Range": "bytes=10-19"})
    assert ranged.status == 206 and ranged.body == blob[10:20]
    assert request(location, "HEAD").headers["content-length"] == str(len(blob))
    refused = request(location, headers=creds)  # what a client that forwards credentials across hosts gets
    assert refused.status == 400 and b"<Code>InvalidArgument</Code>" in refused.body
    assert request(location.replace("X-Amz-Signature=", "X-Amz-Signature=0")).status == 403
    assert [e.status for e in proxy.blob_store.log] == [200, 206, 200, 400, 403]
    assert proxy.blob_store.log[3].headers["authorization"] == "<present>"
    assert request(url, headers=creds).body == blob  # times=1: back to forwarding


def test_proxy_streams_large_blobs_without_buffering(registry: RegistryServer,
                                                     fault_proxy: Callable[[str], FaultProxy],
                                                     tmp_path: Path) -> None:
    size = 256 << 20
    path = tmp_path / "big"
    h = hashlib.sha256()
    with open(path, "wb") as f:
        chunk = os.urandom(1 << 20)
        for i in range(size >> 20):
            piece = chunk[:-4] + i.to_bytes(4, "big")
            h.update(piece)
            f.write(piece)
    digest = "sha256:" + h.hexdigest()
    repo = unique_repo()
    proxy = fault_proxy(registry.url)
    started = request(f"{proxy.url}/v2/{repo}/blobs/uploads/", "POST")
    location = urllib.parse.urlsplit(started.headers["location"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    conn = http.client.HTTPConnection(location.hostname or "127.0.0.1", location.port, timeout=60)
    with open(path, "rb") as f:  # http.client streams file bodies in blocks
        conn.request("PUT", f"{location.path}?{location.query}&digest={digest}", body=f,
                     headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
    assert conn.getresponse().status == 201
    conn.close()

    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
    conn.request("GET", f"/v2/{repo}/blobs/{digest}")
    resp = conn.getresponse()
    got, n = hashlib.sha256(), 0
    while chunk := resp.read(1 << 20):
        got.update(chunk)
        n += len(chunk)
    conn.close()
    assert n == size and "sha256:" + got.hexdigest() == digest
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100, f"peak memory grew by {grown_mib:.0f} MiB moving a 256 MiB blob through the proxy"


def test_proxy_serves_concurrent_range_requests(pushed: Pushed, registry: RegistryServer,
                                                fault_proxy: Callable[[str], FaultProxy]) -> None:
    proxy = fault_proxy(registry.url)
    blob = pushed.blob(pushed.big_layer)
    url = f"{proxy.url}/v2/{pushed.repo}/blobs/{pushed.big_layer}"

    async def main() -> list[bool]:
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> bool:
                start = i * 4096
                async with s.get(url, headers={"Range": f"bytes={start}-{start + 4095}"}) as r:
                    return r.status == 206 and await r.read() == blob[start:start + 4096]
            return await asyncio.gather(*(one(i) for i in range(32)))

    assert all(asyncio.run(main()))
    assert len(proxy.log) == 32
