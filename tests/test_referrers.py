"""lazylayer.referrers: artifacts (prefetch plans) attached to images.

Two paths:

- the real docker-registry of tests/servers.py (distribution 2.8.2), which has
  no referrers API: attach maintains the ``sha256-<hex>`` referrers tag and
  find reads it;
- :class:`FakeReferrersRegistry` below, a FAKE registry written for these tests,
  because no registry implementing the distribution-spec 1.1 referrers API is
  installable here.  It speaks just enough of the API (blob upload, manifests,
  ``GET /v2/<repo>/referrers/<digest>``, ``OCI-Subject``) to check that lazylayer
  uses the API and leaves the referrers tag alone when the registry has it.

OCI image layouts are covered too (artifacts listed untagged in index.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from typing import Any

import images
import pytest
from aiohttp import web
from servers import AioServer, _seen, small_image, unique_repo

from lazylayer import errors, oci, remote
from lazylayer.registry import (
    Registry,
    RegistryConfig,
    RegistryDestination,
    RegistrySource,
    open_source,
    referrers,
)

PLAN = "application/vnd.lazylayer.prefetch-plan.v1+json"
OTHER = "application/vnd.example.other.v1"


@pytest.fixture
def transport():
    t = remote.Transport(remote.RemoteOptions(backoff=0.01, max_backoff=0.05, retries=2, read_timeout=5, deadline=20))
    yield t
    t.close()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _source(host: str, repo: str, transport: remote.Transport, tag: str = "v1") -> RegistrySource:
    ref = oci.parse_registry_reference(f"{host}/{repo}:{tag}")
    return RegistrySource(ref, Registry(host, RegistryConfig(transport=transport)))


def _pushed_image(registry, tmp_path, transport) -> tuple[RegistrySource, oci.Descriptor]:
    """Push a fresh small image with skopeo; its source and manifest descriptor."""
    repo = unique_repo("referrers")
    digest = registry.push(small_image(tmp_path), f"{repo}:v1")
    source = _source(registry.host, repo, transport)
    desc, _ = source.root()
    assert desc["digest"] == digest
    return source, desc


# ------------------------------------------------------------------ a real registry without the referrers API


def test_registry_attach_find_read_with_tag_fallback(registry, tmp_path, transport):
    source, subject = _pushed_image(registry, tmp_path, transport)
    reg, repo = source.registry, source.ref.repository
    assert referrers.find(source, subject["digest"]) == []

    plan = json.dumps({"files": ["etc/hello.txt", "data/random.bin"]}).encode()
    other = os.urandom(300)
    a = referrers.attach(source, subject, PLAN, plan, PLAN, {"io.lazylayer.plan.version": "1"})
    b = referrers.attach(source, subject, OTHER, other, "application/octet-stream")
    assert a["mediaType"] == referrers.ARTIFACT_MANIFEST and a["artifactType"] == PLAN
    assert a["annotations"] == {"io.lazylayer.plan.version": "1"}
    assert "annotations" not in b

    # the artifact manifest, as the registry stores it
    _, raw = reg.get_manifest(repo, a["digest"])
    manifest = json.loads(raw)
    assert manifest["artifactType"] == PLAN
    assert manifest["config"] == {"mediaType": referrers.EMPTY_MEDIA_TYPE, "digest": _sha(b"{}"), "size": 2}
    assert manifest["layers"] == [{"mediaType": PLAN, "digest": _sha(plan), "size": len(plan)}]
    assert manifest["subject"] == {k: subject[k] for k in ("mediaType", "digest", "size")}
    assert reg.blob(repo, _sha(b"{}"), 2).read_all() == b"{}"

    # distribution 2.8 has no referrers API: the referrers tag holds the index
    tag = "sha256-" + subject["digest"][7:]
    tdesc, tbody = reg.get_manifest(repo, tag)
    assert tdesc["mediaType"] == oci.OCI_INDEX
    assert json.loads(tbody)["manifests"] == [a, b]

    assert referrers.find(source, subject["digest"]) == [a, b]
    assert referrers.find(source, subject["digest"], PLAN) == [a]
    assert referrers.find(source, subject["digest"], "application/vnd.none") == []
    assert referrers.read_payload(source, a, PLAN) == plan
    assert referrers.read_payload(source, b, "application/octet-stream") == other
    with pytest.raises(errors.FormatError, match="no layer of media type"):
        referrers.read_payload(source, a, "application/octet-stream")

    # attaching the same payload again: same artifact, no second entry, tag untouched
    again = referrers.attach(source, subject, PLAN, plan, PLAN, {"io.lazylayer.plan.version": "1"})
    assert again == a
    assert reg.get_manifest(repo, tag)[0]["digest"] == tdesc["digest"]
    assert referrers.find(source, subject["digest"]) == [a, b]

    # a different payload is a different artifact
    c = referrers.attach(source, subject, PLAN, plan + b" ", PLAN)
    assert c["digest"] != a["digest"]
    assert [d["digest"] for d in referrers.find(source, subject["digest"], PLAN)] == [a["digest"], c["digest"]]


def test_registry_read_payload_checks(registry, tmp_path, transport):
    source, subject = _pushed_image(registry, tmp_path, transport)
    a = referrers.attach(source, subject, PLAN, b'{"files": []}', PLAN)
    with pytest.raises(errors.IntegrityError):
        referrers.read_payload(source, {**a, "size": a["size"] + 1}, PLAN)
    with pytest.raises(errors.NotFoundError):
        referrers.read_payload(source, {**a, "digest": "sha256:" + "0" * 64}, PLAN)
    with pytest.raises(errors.FormatError):
        referrers.read_payload(source, {**a, "digest": "sha256:../../x"}, PLAN)
    with pytest.raises(errors.FormatError, match="not an image manifest"):
        referrers.read_payload(source, {**a, "mediaType": oci.OCI_INDEX}, PLAN)
    # the image itself is no artifact with that layer
    with pytest.raises(errors.FormatError, match="no layer of media type"):
        referrers.read_payload(source, subject, PLAN)


def test_registry_malformed_referrers_tag(registry, tmp_path, transport):
    """The referrers tag holds an image manifest, not an index: find and attach refuse (FormatError)."""
    source, subject = _pushed_image(registry, tmp_path, transport)
    reg, repo = source.registry, source.ref.repository
    _, image_manifest = reg.get_manifest(repo, "v1")
    tag = referrers.referrers_tag(subject["digest"])
    transport.run(reg.aput_manifest(repo, tag, image_manifest, oci.OCI_MANIFEST))
    with pytest.raises(errors.FormatError, match="not an OCI image index"):
        referrers.find(source, subject["digest"])
    with pytest.raises(errors.FormatError, match="not an OCI image index"):
        referrers.attach(source, subject, PLAN, b"{}", PLAN)
    assert reg.get_manifest(repo, tag)[1] == image_manifest  # left as it was


def test_registry_bad_arguments(registry, tmp_path, transport):
    source, subject = _pushed_image(registry, tmp_path, transport)
    with pytest.raises(errors.FormatError):
        referrers.find(source, "sha256:nothex")
    with pytest.raises(errors.FormatError):
        referrers.attach(source, {"mediaType": oci.OCI_MANIFEST, "digest": "md5:00", "size": 1}, PLAN, b"x", PLAN)
    with pytest.raises(errors.FormatError):
        referrers.attach(source, {**subject, "size": -1}, PLAN, b"x", PLAN)
    with pytest.raises(errors.FormatError):
        referrers.attach(source, subject, PLAN, b"x", PLAN, {"k": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        referrers.attach(source, subject, "", b"x", PLAN)
    with pytest.raises(TypeError):
        referrers.find(object(), subject["digest"])  # type: ignore[arg-type]


def test_every_store_is_reached_through_the_artifact_store_protocol(registry, tmp_path, transport):
    """Image sources name their artifact store (``artifacts()``); a registry destination is one too."""
    source, subject = _pushed_image(registry, tmp_path, transport)
    assert source.artifacts() is source
    dest = RegistryDestination(source.ref, source.registry)
    a = referrers.attach(dest, subject, PLAN, b'{"via": "destination"}', PLAN)
    assert referrers.find(source.artifacts(), subject["digest"]) == [a]
    assert referrers.read_payload(dest, a, PLAN) == b'{"via": "destination"}'
    ref = small_image(tmp_path / "oci", "v2")
    layout = open_source(ref)
    assert isinstance(layout, oci.OciLayout) and layout.artifacts() is layout
    archive = str(tmp_path / "image.tar")
    images.run("skopeo", "copy", "--quiet", ref, f"docker-archive:{archive}:example/app:v2")
    docker_archive = open_source(f"docker-archive:{archive}")
    try:
        assert docker_archive.artifacts() is None
        with pytest.raises(TypeError, match="ArtifactStore"):
            referrers.find(docker_archive, subject["digest"])  # type: ignore[arg-type]
    finally:
        docker_archive.close()


# ------------------------------------------------------------------ a FAKE registry with the referrers API


class FakeReferrersRegistry(AioServer):
    """FAKE, for tests only: no registry implementing the distribution-spec 1.1 referrers API is
    installable on this machine (Debian's docker-registry is distribution 2.8.2).

    Implements monolithic blob uploads, blob HEAD/GET, manifest PUT/GET (answering
    ``OCI-Subject`` for manifests with a subject) and ``GET /v2/<repo>/referrers/<digest>``.
    Knobs: ``apply_filter`` (honour ``?artifactType=`` and say so in
    ``OCI-Filters-Applied``), ``page_size`` (paginate with ``Link``), ``referrers_body``
    (answer the referrers API with these bytes instead).  ``log``: every request.
    """

    _UPLOAD = re.compile(r"^/v2/(?P<repo>.+)/blobs/uploads/(?P<id>[^/]*)$")
    _OBJECT = re.compile(r"^/v2/(?P<repo>.+)/(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)$")

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.log: list[Any] = []
        self.apply_filter = True
        self.page_size: int | None = None
        self.referrers_body: bytes | None = None
        super().__init__("fake-referrers-registry")

    def _routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    def requests(self, method: str | None = None, contains: str = "") -> list[str]:
        return [s.path_qs for s in self.log if (method is None or s.method == method) and contains in s.path_qs]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        resp = await self._answer(request)
        self.log.append(_seen(request, resp.status))
        return resp

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == "/v2/":
            return web.json_response({})
        m = self._UPLOAD.match(path)
        if m:
            if method == "POST":
                return web.Response(status=202, headers={"Location": f"/v2/{m['repo']}/blobs/uploads/{uuid.uuid4()}"})
            if method == "PUT":
                data = await request.read()
                if _sha(data) != request.query.get("digest"):
                    return web.json_response({"errors": [{"code": "DIGEST_INVALID"}]}, status=400)
                self.blobs[_sha(data)] = data
                return web.Response(status=201, headers={"Docker-Content-Digest": _sha(data)})
        m = self._OBJECT.match(path)
        if not m:
            return web.Response(status=404)
        repo, kind, ref = m["repo"], m["kind"], m["ref"]
        if kind == "blobs":
            if ref not in self.blobs:
                return web.Response(status=404)
            data = self.blobs[ref]
            return web.Response(body=b"" if method == "HEAD" else data,
                                headers={"Content-Length": str(len(data)), "Docker-Content-Digest": ref})
        if kind == "manifests" and method == "PUT":
            data = await request.read()
            media = request.headers.get("Content-Type", "")
            self.manifests[(repo, _sha(data))] = (data, media)
            self.manifests[(repo, ref)] = (data, media)
            headers = {"Docker-Content-Digest": _sha(data)}
            subject = json.loads(data).get("subject")
            if subject:
                headers["OCI-Subject"] = subject["digest"]
            return web.Response(status=201, headers=headers)
        if kind == "manifests":
            if (repo, ref) not in self.manifests:
                return web.Response(status=404)
            data, media = self.manifests[(repo, ref)]
            return web.Response(body=data, headers={"Content-Type": media, "Docker-Content-Digest": _sha(data)})
        # referrers
        if self.referrers_body is not None:
            return web.Response(body=self.referrers_body, content_type="application/json")
        want = request.query.get("artifactType") if self.apply_filter else None
        found = []
        for (r, key), (data, media) in sorted(self.manifests.items()):
            if r != repo or not key.startswith("sha256:"):
                continue
            doc = json.loads(data)
            if (doc.get("subject") or {}).get("digest") != ref:
                continue
            entry = {"mediaType": media, "digest": key, "size": len(data),
                     "artifactType": doc.get("artifactType") or doc["config"]["mediaType"]}
            if doc.get("annotations"):
                entry["annotations"] = doc["annotations"]
            if want is None or entry["artifactType"] == want:
                found.append(entry)
        headers = {"Content-Type": oci.OCI_INDEX}
        if want is not None:
            headers["OCI-Filters-Applied"] = "artifactType"
        start = int(request.query.get("page", "0"))
        if self.page_size is not None:
            if start + self.page_size < len(found):
                headers["Link"] = f'<{path}?page={start + self.page_size}>; rel="next"'
            found = found[start:start + self.page_size]
        body = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": found}
        return web.Response(body=json.dumps(body).encode(), headers=headers)


@pytest.fixture
def fake_registry():
    server = FakeReferrersRegistry()
    yield server
    server.close()


def _fake_subject(fake: FakeReferrersRegistry, repo: str) -> oci.Descriptor:
    """Store an image manifest in the fake (it does not check what manifests reference)."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    fake.blobs[_sha(config)] = config
    manifest = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                                   "config": oci.descriptor(oci.OCI_CONFIG, config), "layers": []})
    fake.manifests[(repo, _sha(manifest))] = (manifest, oci.OCI_MANIFEST)
    fake.manifests[(repo, "v1")] = (manifest, oci.OCI_MANIFEST)
    return oci.descriptor(oci.OCI_MANIFEST, manifest)


def test_referrers_api_is_used_and_tag_fallback_is_not(fake_registry, transport):
    repo = "plans/app"
    subject = _fake_subject(fake_registry, repo)
    source = _source(fake_registry.host, repo, transport)
    tag = referrers.referrers_tag(subject["digest"])

    a = referrers.attach(source, subject, PLAN, b'{"plan": 1}', PLAN, {"k": "v"})
    b = referrers.attach(source, subject, OTHER, b"other", "application/octet-stream")
    # OCI-Subject came back: the manifests were pushed by digest and the referrers tag was never touched
    assert fake_registry.requests("PUT", "/manifests/") == [
        f"/v2/{repo}/manifests/{a['digest']}", f"/v2/{repo}/manifests/{b['digest']}"]
    assert fake_registry.requests(contains=tag) == []

    assert referrers.find(source, subject["digest"]) == [d for d in sorted([a, b], key=lambda d: d["digest"])]
    assert referrers.find(source, subject["digest"], PLAN) == [a]
    assert fake_registry.requests("GET", "/referrers/")[-1] == (
        f"/v2/{repo}/referrers/{subject['digest']}?artifactType=application/vnd.lazylayer.prefetch-plan.v1%2Bjson")
    assert referrers.read_payload(source, a, PLAN) == b'{"plan": 1}'
    assert referrers.find(source, "sha256:" + "1" * 64) == []
    assert fake_registry.requests(contains="/manifests/sha256-") == []  # no fallback, ever

    # a registry that ignores ?artifactType= (no OCI-Filters-Applied): lazylayer filters itself
    fake_registry.apply_filter = False
    assert referrers.find(source, subject["digest"], OTHER) == [b]

    # paginated answers (Link: <...>; rel="next") are followed
    fake_registry.page_size = 1
    c = referrers.attach(source, subject, PLAN, b'{"plan": 3}', PLAN)
    assert {d["digest"] for d in referrers.find(source, subject["digest"])} == {a["digest"], b["digest"], c["digest"]}
    assert len(fake_registry.requests("GET", "page=")) == 2


@pytest.mark.parametrize("body, match", [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"manifests": {"a": 1}}', "not a list"),
    (b'{"mediaType": "application/vnd.oci.image.manifest.v1+json", "manifests": []}', "media type"),
    (b'{"manifests": [42]}', "not a JSON object"),
    (b'{"manifests": [{"mediaType": "x", "digest": "sha256:../../etc/passwd", "size": 1}]}', "digest"),
    (b'{"manifests": [{"mediaType": "x", "digest": "sha256:' + b"a" * 64 + b'", "size": -3}]}', "size"),
    (b'{"manifests": [{"mediaType": "x", "digest": "sha256:' + b"a" * 64 + b'", "size": 3, "annotations": []}]}',
     "strings"),
    (b'{"manifests": [{"mediaType": "x", "digest": "sha256:' + b"a" * 64 + b'", "size": 3, "artifactType": 7}]}',
     "artifactType"),
])
def test_hostile_referrers_answers(fake_registry, transport, body, match):
    repo = "hostile/app"
    subject = _fake_subject(fake_registry, repo)
    fake_registry.referrers_body = body
    with pytest.raises(errors.FormatError, match=match):
        referrers.find(_source(fake_registry.host, repo, transport), subject["digest"])


def test_oversized_referrers_answer(fake_registry, transport, monkeypatch):
    repo = "hostile/big"
    subject = _fake_subject(fake_registry, repo)
    fake_registry.referrers_body = b'{"manifests": []' + b" " * 5000 + b"}"
    monkeypatch.setattr(oci, "MAX_METADATA_BYTES", 4096)
    with pytest.raises(errors.LimitError):
        referrers.find(_source(fake_registry.host, repo, transport), subject["digest"])


# ------------------------------------------------------------------ OCI image layouts


def _layout(tmp_path, tag: str = "v1") -> tuple[str, oci.OciLayout, oci.Descriptor]:
    ref = small_image(tmp_path, tag)
    path = ref[len("oci:"):].rsplit(":", 1)[0]
    layout = oci.OciLayout(path, tag)
    return path, layout, layout.root()[0]


def test_oci_layout_round_trip(tmp_path):
    path, layout, subject = _layout(tmp_path)
    assert referrers.find(layout, subject["digest"]) == []
    plan = b'{"files": ["etc/hello.txt"]}'
    a = referrers.attach(layout, subject, PLAN, plan, PLAN, {"io.lazylayer.plan.version": "1"})
    b = referrers.attach(layout, subject, OTHER, b"\x00\x01", "application/octet-stream")
    assert referrers.find(layout, subject["digest"]) == [a, b]
    assert referrers.find(layout, subject["digest"], OTHER) == [b]
    assert referrers.read_payload(layout, a, PLAN) == plan
    assert referrers.read_payload(oci.OciLayout(path), b, "application/octet-stream") == b"\x00\x01"

    # index.json: the image (tagged) and the two artifacts (untagged); attaching again changes nothing
    with open(os.path.join(path, "index.json"), "rb") as f:
        before = f.read()
    entries = json.loads(before)["manifests"]
    assert [e.get("annotations", {}).get(oci.REF_NAME) for e in entries] == ["v1", None, None]
    assert entries[1:] == [a, b]
    assert referrers.attach(layout, subject, PLAN, plan, PLAN, {"io.lazylayer.plan.version": "1"}) == a
    with open(os.path.join(path, "index.json"), "rb") as f:
        assert f.read() == before
    artifact = images.read_json_blob(path, a)
    assert artifact["subject"]["digest"] == subject["digest"] and artifact["config"]["size"] == 2

    # the image still reads as before (tagged, and as the only image of an untagged reference)
    assert oci.OciLayout(path, "v1").root()[0]["digest"] == subject["digest"]
    assert oci.OciLayout(path).root()[0]["digest"] == subject["digest"]

    # a corrupt artifact blob is caught
    with open(images.blob_path(path, a["digest"]), "wb") as f:
        f.write(b"{}")
    with pytest.raises(errors.IntegrityError):
        referrers.find(layout, subject["digest"])


def test_oci_layout_finds_artifacts_of_other_tools(tmp_path):
    """An artifact written without artifactType (config media type instead) and without an index.json
    artifactType is still found; its type is the config's media type, as the referrers API would say."""
    _, layout, subject = _layout(tmp_path)
    config = layout.write_blob(b'{"tool": "x"}', "application/vnd.example.config.v1+json")
    payload = layout.write_blob(b"data", "application/vnd.example.data")
    manifest = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": config,
                                   "layers": [payload], "subject": referrers._subject(subject)})
    desc = layout.write_blob(manifest, oci.OCI_MANIFEST)
    layout.set_tag(None, desc)
    assert referrers.find(layout, subject["digest"]) == [{**desc, "artifactType": config["mediaType"]}]
    assert referrers.read_payload(layout, desc, "application/vnd.example.data") == b"data"
