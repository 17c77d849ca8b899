"""lazylayer.registry against real docker-registry processes (tests/servers.py).

Images are built by the tests and pushed with skopeo; reads go through
lazylayer's client and are compared with what skopeo pushed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys

import images
import pytest
from servers import small_image, unique_repo

import lazylayer
from lazylayer import cli, convert, errors, oci, remote
from lazylayer.format import ANNOTATION_TOC_DIGEST
from lazylayer.registry import Registry, RegistryConfig
from lazylayer.registry.auth import Credentials


@pytest.fixture
def transport():
    t = remote.Transport(remote.RemoteOptions(part_size=64 << 10, backoff=0.01, read_timeout=5, deadline=30))
    yield t
    t.close()


def _layout(ref: str) -> tuple[str, str]:
    path, tag = ref[len("oci:"):].rsplit(":", 1)
    return path, tag


def _pushed(reg, tmp_path, prefix="test"):
    """Push a fresh small image; return (repo, manifest digest, layout path, tag)."""
    src = small_image(tmp_path)
    repo = unique_repo(prefix)
    digest = reg.push(src, f"{repo}:v1")
    path, tag = _layout(src)
    return repo, digest, path, tag


# ------------------------------------------------------------------ reading


def test_read_image_and_blobs(registry, tmp_path, transport):
    repo, digest, path, tag = _pushed(registry, tmp_path)
    source = lazylayer.registry.open_source(f"docker://{registry.host}/{repo}:v1", RegistryConfig(transport=transport))
    img = oci.select_image(source)
    assert img.manifest_descriptor["digest"] == digest
    local = images.image(path, tag)
    assert oci.parse_json(img.config, "config")["rootfs"] == local.config["rootfs"]
    layer = img.manifest["layers"][0]
    want = images.read_blob(path, layer["digest"])
    blob = source.blob(layer)
    assert blob.size == len(want)
    assert blob.read_all() == want
    assert blob.read(1000, 5000) == want[1000:6000]
    ranges = [(0, 10), (50, 100), (70_000, 150_000), (len(want) - 7, 7), (5, 0)]
    assert blob.read_ranges(ranges) == [want[o:o + n] for o, n in ranges]
    with blob.open() as f:
        assert f.read(3) == want[:3]
        f.seek(100_000)
        assert f.read() == want[100_000:]
    # by digest, and from inside someone else's event loop
    by_digest = lazylayer.registry.open_source(f"docker://{registry.host}/{repo}@{digest}", RegistryConfig(transport=transport))
    assert by_digest.root()[0]["digest"] == digest

    async def in_a_loop() -> list[bytes]:
        return await blob.aread_ranges([(3, 4), (9, 1)])

    assert asyncio.run(in_a_loop()) == [want[3:7], want[9:10]]


def test_not_found_is_typed(registry, tmp_path, transport):
    repo, _, _, _ = _pushed(registry, tmp_path)
    reg = Registry(registry.host, RegistryConfig(transport=transport))
    with pytest.raises(errors.NotFoundError, match="not found"):
        reg.get_manifest(repo, "nosuchtag")
    with pytest.raises(errors.NotFoundError):
        reg.get_manifest("no/such/repo", "v1")
    with pytest.raises(errors.NotFoundError):
        reg.blob(repo, "sha256:" + "0" * 64).read(0, 1)
    with pytest.raises(errors.FormatError):
        reg.blob(repo, "sha256:../../etc/passwd")


def test_multi_platform_index_selects_this_machine(registry, tmp_path, transport):
    """An index with two platforms: the default picks this machine's, --platform the other."""
    layout = str(tmp_path / "multi")
    images.init_layout(layout)
    descs = []
    for arch in ("amd64", "arm64"):
        tar = images.make_tar([images.reg(f"{arch}.txt", arch.encode() * 100)])
        desc = images.write_image(layout, [tar], compression="gzip", architecture=arch)
        desc = {**desc, "platform": {"os": "linux", "architecture": arch}}
        descs.append(desc)
    images.write_index(layout, [])
    index = images.write_blob(layout, oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
                                                          "manifests": descs}), oci.OCI_INDEX)
    images.write_index(layout, [images.tagged(index, "multi")])
    repo = unique_repo()
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--all", "--dest-tls-verify=false",
                    f"oci:{layout}:multi", f"docker://{registry.host}/{repo}:multi"], check=True,
                   capture_output=True)
    source = lazylayer.registry.open_source(f"docker://{registry.host}/{repo}:multi", RegistryConfig(transport=transport))
    here = oci.parse_platform(oci.host_platform())["architecture"]
    if here in ("amd64", "arm64"):
        assert oci.parse_json(oci.select_image(source).config, "c")["architecture"] == here
    for arch in ("amd64", "arm64"):
        assert oci.parse_json(oci.select_image(source, f"linux/{arch}").config, "c")["architecture"] == arch
    with pytest.raises(oci.ReferenceError, match="linux/amd64, linux/arm64"):
        oci.select_image(source, "linux/s390x")


# ------------------------------------------------------------------ auth


def test_basic_auth(basic_registry, tmp_path, transport, caplog):
    caplog.set_level(logging.DEBUG)
    repo, digest, _, _ = _pushed(basic_registry, tmp_path)
    user, password = basic_registry.credentials
    ref = f"docker://{basic_registry.host}/{repo}:v1"
    with pytest.raises(errors.AuthError) as anon:
        lazylayer.registry.open_source(ref, RegistryConfig(transport=transport, auth_files=[])).root()
    with pytest.raises(errors.AuthError) as wrong:
        lazylayer.registry.open_source(ref, RegistryConfig(Credentials(user, "wrong-" + password), transport=transport)).root()
    ok = lazylayer.registry.open_source(ref, RegistryConfig(Credentials(user, password), transport=transport))
    assert ok.root()[0]["digest"] == digest
    for exc in (anon.value, wrong.value):
        assert exc.status == 401
        for text in (str(exc), repr(exc), repr(exc.__cause__), repr(exc.__context__)):
            assert password not in text
    assert password not in caplog.text


def test_credentials_from_an_auth_file(basic_registry, tmp_path, transport):
    repo, digest, _, _ = _pushed(basic_registry, tmp_path)
    user, password = basic_registry.credentials
    import base64

    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {basic_registry.host: {
        "auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}))
    src = lazylayer.registry.open_source(f"docker://{basic_registry.host}/{repo}:v1",
                          RegistryConfig(auth_files=[str(authfile)], transport=transport))
    assert src.root()[0]["digest"] == digest


def test_token_auth_anonymous_and_credentialed(token_registry, tmp_path, transport, caplog):
    caplog.set_level(logging.DEBUG)
    ts = token_registry.token_server
    user, password = token_registry.credentials
    public, pub_digest, _, _ = _pushed(token_registry, tmp_path, prefix="public")
    private, priv_digest, _, _ = _pushed(token_registry, tmp_path, prefix="private")
    ts.requests.clear()
    anon = RegistryConfig(transport=transport, auth_files=[])
    assert lazylayer.registry.open_source(f"docker://{token_registry.host}/{public}:v1", anon).root()[0]["digest"] == pub_digest
    assert ts.requests[-1].username is None and f"repository:{public}:pull" in ts.requests[-1].scope
    with pytest.raises(errors.AuthError) as denied:
        lazylayer.registry.open_source(f"docker://{token_registry.host}/{private}:v1", anon).root()
    assert denied.value.status == 401

    ts.requests.clear()
    reg = Registry(token_registry.host, RegistryConfig(Credentials(user, password), transport=transport))
    desc, data = reg.get_manifest(private, "v1")
    assert desc["digest"] == priv_digest
    manifest = json.loads(data)
    layer = manifest["layers"][0]
    blob = reg.blob(private, layer["digest"], layer["size"])
    blob.read_ranges([(i * 1000, 100) for i in range(20)])
    blob.read_all()
    assert [r.username for r in ts.requests] == [user]  # one token, cached for every later request
    token = reg.tokens.get(next(iter(reg.tokens._cache.keys())))
    assert token is not None
    assert password not in caplog.text and token.value not in caplog.text

    with pytest.raises(errors.AuthError, match="refused user") as wrong:
        Registry(token_registry.host, RegistryConfig(Credentials(user, "bad" + password),
                                                     transport=transport)).get_manifest(private, "v1")
    assert password not in str(wrong.value)


def test_token_refreshed_on_expiry_and_on_401(token_registry, tmp_path, transport):
    ts = token_registry.token_server
    user, password = token_registry.credentials
    repo, digest, _, _ = _pushed(token_registry, tmp_path, prefix="private")
    reg = Registry(token_registry.host, RegistryConfig(Credentials(user, password), transport=transport))

    # The registry rejects a token the client still believes valid: 401 -> a fresh token -> success.
    ts.jwt_lifetime = -120
    ts.requests.clear()
    with pytest.raises(errors.AuthError):
        reg.get_manifest(repo, "v1")  # a freshly fetched token refused: an error, not a loop
    assert len(ts.requests) == 1
    ts.jwt_lifetime = None
    # The client still holds the refused token (it claims 300 s): the 401 makes it fetch a new one.
    assert reg.get_manifest(repo, "v1")[0]["digest"] == digest
    assert len(ts.requests) == 2

    # A token that says it lives 1 s is not reused after that.
    ts.expires_in = 1
    ts.requests.clear()
    reg2 = Registry(token_registry.host, RegistryConfig(Credentials(user, password), transport=transport))
    reg2.get_manifest(repo, "v1")
    reg2.get_manifest(repo, "v1")
    assert len(ts.requests) == 1
    import time

    time.sleep(1.1)
    reg2.get_manifest(repo, "v1")
    assert len(ts.requests) == 2


# ------------------------------------------------------------------ pushing


def _skopeo_fetch(ref: str, dest: str, creds: tuple[str, str] | None = None) -> None:
    cmd = ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false"]
    if creds:
        cmd += ["--src-creds", f"{creds[0]}:{creds[1]}"]
    subprocess.run(cmd + [ref, f"oci:{dest}:got"], check=True, capture_output=True)


def test_convert_to_and_from_a_registry(registry, tmp_path, fault_proxy, monkeypatch):
    """oci: -> docker:// (chunked upload) -> docker:// (cross-repository mount), checked with skopeo."""
    monkeypatch.setattr(registry_module(), "UPLOAD_CHUNK", 64 << 10)  # force PATCHed chunks
    proxy = fault_proxy(registry.url)
    host = proxy.url.split("://", 1)[1]
    src = small_image(tmp_path)
    path, tag = _layout(src)
    lazy = unique_repo("lazy")
    convert.convert(src, f"docker://{host}/{lazy}:v1", progress=False)
    methods = [(s.method, s.path_qs.split("?")[0].rsplit("/", 2)[-2]) for s in proxy.log]
    assert ("PATCH", "uploads") in methods or any(s.method == "PATCH" for s in proxy.log)
    # skopeo reads back what we pushed: same diff_ids, lazy layers
    _skopeo_fetch(f"docker://{registry.host}/{lazy}:v1", str(tmp_path / "back"))
    back = images.image(str(tmp_path / "back"), "got")
    assert back.config["rootfs"] == images.image(path, tag).config["rootfs"]
    assert all(ANNOTATION_TOC_DIGEST in (la.get("annotations") or {}) for la in back.manifest["layers"])
    assert images.decompress(images.read_blob(str(tmp_path / "back"), back.manifest["layers"][0]["digest"])) == \
        images.decompress(images.read_blob(path, images.image(path, tag).manifest["layers"][0]["digest"]))

    # lazy -> another repository of the same registry: the layers are mounted, not uploaded again
    proxy.log.clear()
    other = unique_repo("lazy")
    res2 = convert.convert(f"docker://{host}/{lazy}:v1", f"docker://{host}/{other}:v1", progress=False)
    assert res2.copied_layers == len(back.manifest["layers"]) and not res2.layers
    mounts = [s for s in proxy.log if s.method == "POST" and "mount=" in s.path_qs]
    assert len(mounts) == len(back.manifest["layers"])
    assert not any(s.method in ("PATCH",) for s in proxy.log)
    blob_gets = [s for s in proxy.log if s.method == "GET" and "/blobs/" in s.path_qs and "uploads" not in s.path_qs]
    assert all(back.manifest["layers"][0]["digest"] not in s.path_qs for s in blob_gets)


def registry_module():
    return lazylayer.registry.client


def test_cli_convert_with_credentials(token_registry, tmp_path, capsys):
    user, password = token_registry.credentials
    src = small_image(tmp_path)
    repo = unique_repo("private")
    token_registry.push(src, f"{repo}:v1")
    dst = f"docker://{token_registry.host}/{unique_repo('private')}:lazy"
    rc = cli.main(["convert", "-q", "--creds", f"{user}:{password}", f"docker://{token_registry.host}/{repo}:v1", dst])
    assert rc == 0
    rc = cli.main(["inspect", "--json", "--creds", f"{user}:{password}", dst])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and all(layer["lazy"] for layer in out["layers"])
    rc = cli.main(["inspect", "--authfile", str(tmp_path / "none.json"), dst])
    err = capsys.readouterr().err
    assert rc == 1 and "401" in err and password not in err


# ------------------------------------------------------------------ mirrors and redirects


def test_mirror_is_tried_first_and_skipped_when_down(registry, mirror_registry, fault_proxy, tmp_path, transport):
    repo, digest, path, tag = _pushed(registry, tmp_path)
    mirror = mirror_registry(registry.url)
    watched = fault_proxy(mirror.url)
    cfg = RegistryConfig(mirrors=[watched.url], transport=transport)
    src = lazylayer.registry.open_source(f"docker://{registry.host}/{repo}:v1", cfg)
    img = oci.select_image(src)
    layer = img.manifest["layers"][0]
    assert src.blob(layer).read_all() == images.read_blob(path, layer["digest"])
    assert any("/manifests/" in s.path_qs for s in watched.log) and any(layer["digest"] in s.path_qs for s in watched.log)
    assert all("ns=" in s.path_qs for s in watched.log)

    # A mirror that refuses connections, and one that answers 503: the origin serves.
    watched.add_fault("status", status=503)
    dead = f"http://127.0.0.1:{_closed_port()}"
    for mirrors in ([dead], [watched.url]):
        t = remote.Transport(remote.RemoteOptions(backoff=0.01, retries=1, deadline=20))
        try:
            src = lazylayer.registry.open_source(f"docker://{registry.host}/{repo}:v1", RegistryConfig(mirrors=mirrors, transport=t))
            assert oci.select_image(src).manifest_descriptor["digest"] == digest
            assert src.blob(layer).read(0, 100) == images.read_blob(path, layer["digest"])[:100]
        finally:
            t.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redirect_to_blob_storage_without_credentials(basic_registry, fault_proxy, tmp_path, transport):
    repo, _, path, tag = _pushed(basic_registry, tmp_path)
    proxy = fault_proxy(basic_registry.url)
    proxy.add_fault("redirect", path=r"/blobs/sha256:")
    user, password = basic_registry.credentials
    host = proxy.url.split("://", 1)[1]
    src = lazylayer.registry.open_source(f"docker://{host}/{repo}:v1", RegistryConfig(Credentials(user, password), transport=transport))
    img = oci.select_image(src)  # the config blob comes through the redirect too
    layer = img.manifest["layers"][0]
    want = images.read_blob(path, layer["digest"])
    blob = src.blob(layer)
    assert blob.read_ranges([(0, 100), (200_000, 5000)]) == [want[:100], want[200_000:205_000]]
    assert blob.read_all() == want
    assert transport.stats.redirects >= 1


def test_token_refreshed_on_403(token_registry, fault_proxy, tmp_path, transport):
    """A 403 without a challenge (a registry that wants a token with more scope) drops the token and fetches one."""
    ts = token_registry.token_server
    user, password = token_registry.credentials
    repo, digest, _, _ = _pushed(token_registry, tmp_path, prefix="private")
    proxy = fault_proxy(token_registry.url)
    reg = Registry(proxy.url.split("://", 1)[1], RegistryConfig(Credentials(user, password), transport=transport))
    assert reg.get_manifest(repo, "v1")[0]["digest"] == digest
    ts.requests.clear()
    proxy.add_fault("status", path="/manifests/", status=403, times=1)
    assert reg.get_manifest(repo, digest)[0]["digest"] == digest
    assert len(ts.requests) == 1
    proxy.add_fault("status", path="/manifests/", status=403)
    with pytest.raises(errors.AuthError) as info:
        reg.get_manifest(repo, digest)
    assert info.value.status == 403 and len(ts.requests) == 2


def test_tls_and_plain_http_off_loopback(tmp_path):
    """Registries on this machine's non-loopback address: HTTPS is the default there, verified.

    A self-signed certificate is refused (naming the way out), accepted with
    tls_verify=False; a plain-HTTP registry is unreachable by default and
    reached with tls_verify=False, as with skopeo's --tls-verify=false.
    """
    from servers import (
        RegistryServer,
        non_loopback_address,
        self_signed_cert,
        start_or_fail,
    )

    ip = non_loopback_address()
    cert = self_signed_cert(str(tmp_path), ip)
    src = small_image(tmp_path)
    t = remote.Transport(remote.RemoteOptions(retries=1, backoff=0.01, deadline=15))
    with start_or_fail(lambda: RegistryServer("plain", workdir=tmp_path / "tls", address=ip, tls=cert)) as tls_reg, \
            start_or_fail(lambda: RegistryServer("plain", workdir=tmp_path / "http", address=ip)) as http_reg:
        try:
            for reg, scheme in ((tls_reg, "https"), (http_reg, "http")):
                digest = reg.push(src, "app/x:v1")
                ref = f"docker://{reg.host}/app/x:v1"
                with pytest.raises(errors.RemoteError) as info:
                    lazylayer.registry.open_source(ref, RegistryConfig(transport=t)).root()
                if scheme == "https":
                    assert "tls-verify=false" in str(info.value)
                insecure = lazylayer.registry.open_source(ref, RegistryConfig(transport=t, tls_verify=False))
                img = oci.select_image(insecure)
                assert img.manifest_descriptor["digest"] == digest
                assert insecure.registry.base.startswith(scheme + "://")
                layer = img.manifest["layers"][0]
                assert len(insecure.blob(layer).read_all()) == layer["size"]
        finally:
            t.close()


def test_cli_cat_reads_a_registry_blob_by_url(registry, tmp_path, corpus):
    """`lazylayer cat http://.../blobs/sha256:...` decompresses a range of a seekable blob fetched by range."""
    seekable = tmp_path / "blob.zst"
    with lazylayer.SeekableWriter(str(seekable), frame_size=256 << 10) as w:
        w.write(corpus[:2_000_000])
    repo = unique_repo()
    t = remote.Transport()
    try:
        digest = t.run(Registry(registry.host, RegistryConfig(transport=t)).aput_blob(repo, seekable.read_bytes()))
    finally:
        t.close()
    url = f"{registry.url}/v2/{repo}/blobs/{digest}"
    res = subprocess.run([os.path.join(os.path.dirname(sys.executable), "lazylayer"), "cat", url,
                          "--offset", "700000", "--length", "300000"], capture_output=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == corpus[700_000:1_000_000]
