"""An OCI registry client (Distribution API v2): manifests, blobs by range, push.

:class:`Registry` talks to one registry host, through mirrors first when it
has any, on a shared :class:`~lazylayer.remote.Transport`:

- **where**: loopback hosts (``localhost``, ``127.*``, ``[::1]``) speak plain
  HTTP, everything else HTTPS; ``tls_verify=False`` skips certificate checks
  and falls back to HTTP if the host does not speak TLS (skopeo's
  ``--tls-verify=false``).  ``docker.io`` is ``registry-1.docker.io``.
- **auth** (:class:`RegistryAuth`): anonymous, Basic, and bearer tokens from
  the ``WWW-Authenticate`` realm, with or without credentials; tokens are
  cached to their expiry and fetched again when the registry answers 401 or
  403.  Credentials come from the caller or from the auth files skopeo and
  docker use (:func:`lazylayer.auth.find_credentials`).
- **reads**: manifests and indexes (OCI and Docker v2 types) are read whole,
  bounded, and checked against their digest; blobs are
  :class:`~lazylayer.remote.HttpBlob` objects read by range.
- **writes**: blobs are pushed monolithically when small and in chunks when
  large, after a ``HEAD`` says they are missing; a blob another repository of
  the same registry has is mounted instead of uploaded.

:class:`RegistrySource` and :class:`RegistryDestination` are the registry's
side of :func:`lazylayer.oci.open_source` / :func:`lazylayer.oci.open_destination`,
so ``lazylayer convert`` reads and writes ``docker://`` references.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Sequence
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from .. import errors, oci
from ..remote import (
    NETWORK_ERRORS,
    HttpBlob,
    Retry,
    Transport,
    clean_url,
    default_transport,
    network_retry,
    sha256_of,
)
from .auth import (
    Credentials,
    TokenCache,
    find_credentials,
    parse_challenges,
    parse_token_response,
)

MANIFEST_ACCEPT = ", ".join([oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_LIST, oci.DOCKER_MANIFEST])
UPLOAD_CHUNK = 16 << 20  # blobs larger than this are pushed in chunks of this size


@dataclass(frozen=True)
class RegistryConfig:
    """How to reach registries: credentials, TLS, mirrors, the transport.

    ``credentials``: used for every registry this config opens (else the auth
    files are searched per host).  ``mirrors``: base URLs (``http://host:port``
    or ``host:port``) tried in order before the origin for reads — a
    pull-through cache or a P2P distribution proxy.
    """

    credentials: Credentials | None = None
    auth_files: Sequence[str] | None = None
    tls_verify: bool = True
    mirrors: Sequence[str] = ()
    transport: Transport | None = None


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.x.y.z`` and ``::1`` (with or without a port)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.endswith("]") or "]:" in host else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _base_url(text: str, secure_default: bool = True) -> str:
    if "://" in text:
        return text.rstrip("/")
    scheme = "http" if is_loopback(text) or not secure_default else "https"
    return f"{scheme}://{text.rstrip('/')}"


class RegistryAuth:
    """Answers a registry's challenges for one set of scopes (an :class:`~lazylayer.remote.Authorizer`).

    ``scopes`` are token scopes such as ``repository:library/alpine:pull``.
    State (which scheme each host asked for, tokens) lives in the
    :class:`Registry`, so every blob and manifest of an image shares it.
    """

    def __init__(self, registry: Registry, scopes: Sequence[str]) -> None:
        self.registry = registry
        self.scopes = tuple(sorted(set(scopes)))

    def _key(self, host: str) -> tuple[str, ...] | None:
        ch = self.registry._challenges.get(host)
        if ch is None or ch.scheme != "bearer":
            return None
        creds = self.registry._credentials_for(host)
        return (host, ch.params.get("realm", ""), ch.params.get("service", ""), " ".join(self.scopes),
                creds.username if creds else "")

    def apply(self, url: str, headers: dict[str, str]) -> None:
        host = urlsplit(url).netloc
        ch = self.registry._challenges.get(host)
        if ch is None:
            return
        if ch.scheme == "basic":
            creds = self.registry._credentials_for(host)
            if creds is not None:
                headers["Authorization"] = creds.basic_header()
            return
        key = self._key(host)
        token = self.registry.tokens.get(key) if key else None
        if token is not None:
            headers["Authorization"] = "Bearer " + token.value

    async def challenge(self, transport: Transport, url: str, status: int, header: str | None) -> bool:
        host = urlsplit(url).netloc
        known = self.registry._challenges.get(host)
        chosen = None
        for ch in parse_challenges(header or ""):
            if ch.scheme in ("bearer", "basic"):
                chosen = ch
                break
        if chosen is None:
            if known is None or known.scheme != "bearer" or status != 403:
                return False
            chosen = known  # 403 with no challenge: the token lacks a scope; fetch a fresh one
        self.registry._challenges[host] = chosen
        if chosen.scheme == "basic":
            return self.registry._credentials_for(host) is not None and (known is None or known.scheme != "basic")
        key = self._key(host)
        assert key is not None
        self.registry.tokens.drop(key)
        await self.registry._fetch_token(transport, host, chosen.params, self.scopes, key)
        return True


async def read_metadata(resp: aiohttp.ClientResponse, what: str) -> bytes:
    """The body of a manifest, index or other small document: all of it, at most ``oci.MAX_METADATA_BYTES``.

    Read to the end of the body (or just past the limit): a body over the limit
    raises :class:`~lazylayer.errors.LimitError`; one shorter than its
    ``Content-Length`` raises ``Retry`` (a short read, retried).
    """
    limit = oci.MAX_METADATA_BYTES
    length = resp.headers.get("Content-Length")
    declared = int(length) if length and length.isdigit() else None
    if declared is not None and declared > limit:
        raise errors.LimitError(f"{what} is {length} bytes (limit {limit})")
    body = bytearray()
    while True:
        chunk = await resp.content.read(min(1 << 20, limit + 1 - len(body)))
        if not chunk:
            break
        body += chunk
        if len(body) > limit:
            raise errors.LimitError(f"{what} is larger than {limit} bytes")
    if declared is not None and declared != len(body):
        raise Retry(f"short body of {what}: {len(body)} of {declared} bytes")
    return bytes(body)


class Registry:
    """A client for one registry host (``HOST[:PORT]``, ``docker.io`` for Docker Hub)."""

    def __init__(self, host: str, config: RegistryConfig | None = None) -> None:
        self.config = config or RegistryConfig()
        self.host = host
        self.api_host = "registry-1.docker.io" if host in ("docker.io", "index.docker.io") else host
        self.transport = self.config.transport or default_transport()
        self.base = _base_url(self.api_host)
        if not self.config.tls_verify:
            self.transport.skip_tls_verify(self.api_host)
        self.mirrors = [_base_url(m) for m in self.config.mirrors]
        self.tokens = TokenCache()
        self._challenges: dict[str, Any] = {}
        self._token_locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self._creds: dict[str, Credentials | None] = {}
        self._checked_scheme = self.config.tls_verify or self.base.startswith("http:")
        # Resolve the origin's credentials now, on the caller's thread: a credential
        # helper is a subprocess, which must not block the transport's event loop.
        self._credentials_for(urlsplit(self.base).netloc)

    def __repr__(self) -> str:
        return f"Registry({self.host!r}, mirrors={self.mirrors})"

    # -- credentials and tokens

    def _credentials_for(self, netloc: str) -> Credentials | None:
        if netloc not in self._creds:
            if netloc == self.api_host:
                found = self.config.credentials or find_credentials(
                    self.host, list(self.config.auth_files) if self.config.auth_files is not None else None)
            else:  # a mirror: only what the auth files say about it
                found = find_credentials(netloc, list(self.config.auth_files)
                                         if self.config.auth_files is not None else None)
            self._creds[netloc] = found
        return self._creds[netloc]

    async def _fetch_token(self, transport: Transport, host: str, params: dict[str, str],
                           scopes: Sequence[str], key: tuple[str, ...]) -> None:
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if self.tokens.get(key) is not None:
                return  # another request fetched it while we waited
            realm = params.get("realm", "")
            if urlsplit(realm).scheme not in ("http", "https"):
                raise errors.AuthError(f"{host}: the registry's token realm {realm!r} is not an http(s) URL")
            creds = self._credentials_for(host)
            query: list[tuple[str, str]] = []
            if params.get("service"):
                query.append(("service", params["service"]))
            query += [("scope", s) for s in scopes]
            headers: dict[str, str] = {}
            data = None
            method = "GET"
            if creds is not None and creds.identity_token:
                method = "POST"  # OAuth2 refresh-token grant (docker's identity tokens)
                data = urlencode([("grant_type", "refresh_token"), ("refresh_token", creds.identity_token),
                                  ("client_id", "lazylayer"), *query]).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
                url = realm
            else:
                if creds is not None:
                    query.append(("account", creds.username))
                    headers["Authorization"] = creds.basic_header()
                url = realm + ("&" if "?" in realm else "?") + urlencode(query)
            last = ""
            for attempt in range(4):
                try:
                    async with transport.open(method, url, headers=headers, data=data) as resp:
                        if resp.status in (401, 403):
                            who = f"user {creds.username!r}" if creds and creds.username else "anonymous access"
                            raise errors.AuthError(f"{host}: the token server {clean_url(realm)} refused {who} "
                                                   f"({resp.status})", status=resp.status, url=clean_url(realm))
                        transport.check_status(resp, f"token from {clean_url(realm)}")
                        body = await read_metadata(resp, f"token from {clean_url(realm)}")
                    self.tokens.put(key, parse_token_response(body))
                    return
                except Retry as exc:
                    last = str(exc)
                    await asyncio.sleep(0.1 * 2 ** attempt)
                except NETWORK_ERRORS as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    await asyncio.sleep(0.1 * 2 ** attempt)
            raise errors.AuthError(f"{host}: could not get a token from {clean_url(realm)}: {last}")

    def auth(self, repository: str, push: bool = False, mount_from: str | None = None) -> RegistryAuth:
        """The authorizer for reading (or pushing to) ``repository``."""
        scopes = [f"repository:{repository}:{'pull,push' if push else 'pull'}"]
        if mount_from:
            scopes.append(f"repository:{mount_from}:pull")
        return RegistryAuth(self, scopes)

    # -- endpoints

    async def _ensure_scheme(self) -> None:
        """With tls_verify=False, fall back to plain HTTP if the host does not speak TLS."""
        if self._checked_scheme:
            return
        session = await self.transport.session()
        try:
            async with session.get(self.base + "/v2/", ssl=self.transport._ssl(self.base),
                                   allow_redirects=False) as resp:
                await resp.release()
        except (aiohttp.ClientError, OSError):  # no TLS there (or nothing there: HTTP will say so)
            self.base = "http://" + self.api_host
        self._checked_scheme = True

    def urls(self, repository: str, kind: str, reference: str, mirrors: bool = True) -> list[str]:
        """Mirror URLs (with containerd's ``ns=`` hint), then the origin's."""
        path = f"/v2/{repository}/{kind}/{reference}"
        out = [f"{m}{path}?{urlencode({'ns': self.host})}" for m in self.mirrors] if mirrors else []
        return out + [self.base + path]

    # -- reading

    async def aget_manifest(self, repository: str, reference: str,
                            mirrors: bool = True) -> tuple[oci.Descriptor, bytes]:
        """A manifest or index by tag or digest: its descriptor and verified bytes.

        ``mirrors=False`` asks the origin only (a tag about to be rewritten must not be a mirror's stale copy).
        """
        await self._ensure_scheme()
        auth = self.auth(repository)
        what = f"manifest {self.host}/{repository}:{reference}"
        t = self.transport
        mismatches = 0

        def mismatch(message: str) -> Retry:
            nonlocal mismatches
            mismatches += 1
            if mismatches >= 3:
                raise errors.IntegrityError(f"{what}: {message} ({mismatches} attempts)")
            return Retry(message)

        async def attempt(url: str) -> tuple[oci.Descriptor, bytes]:
            with network_retry():
                async with t.open("GET", url, headers={"Accept": MANIFEST_ACCEPT}, auth=auth) as resp:
                    t.check_status(resp, what)
                    body = await read_metadata(resp, what)
                    content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
                    header_digest = resp.headers.get("Docker-Content-Digest", "")
            digest = sha256_of(body)
            if reference.startswith("sha256:") and digest != reference:
                raise mismatch(f"the body's digest is {digest}, not {reference}")
            if header_digest.startswith("sha256:") and header_digest != digest:
                raise mismatch(f"the body's digest is {digest} but Docker-Content-Digest says {header_digest}")
            media = content_type if content_type in oci.INDEX_TYPES + oci.MANIFEST_TYPES else None
            doc = oci.parse_json(body, what)
            media = doc.get("mediaType") or media
            if media not in oci.INDEX_TYPES + oci.MANIFEST_TYPES:
                if doc.get("schemaVersion") == 1:
                    raise errors.FormatError(f"{what} is a Docker schema 1 manifest, which is not supported")
                raise errors.FormatError(f"{what} has unsupported media type {media!r}")
            return {"mediaType": media, "digest": digest, "size": len(body)}, body

        return await t.call(self.urls(repository, "manifests", reference, mirrors=mirrors), attempt, what)

    def get_manifest(self, repository: str, reference: str) -> tuple[oci.Descriptor, bytes]:
        return self.transport.run(self.aget_manifest(repository, reference))

    def blob(self, repository: str, digest: str, size: int | None = None) -> HttpBlob:
        """A blob of ``repository``, read by range (from the mirrors first)."""
        oci.check_digest(digest)
        if not self._checked_scheme:
            self.transport.run(self._ensure_scheme())
        return HttpBlob(self.urls(repository, "blobs", digest), self.transport, digest=digest,
                        auth=self.auth(repository), name=f"blob {self.host}/{repository}@{digest}", _size=size)

    # -- writing

    async def ablob_exists(self, repository: str, digest: str, auth: RegistryAuth | None = None) -> bool:
        t = self.transport
        auth = auth or self.auth(repository, push=True)

        async def attempt(url: str) -> bool:
            with network_retry():
                async with t.open("HEAD", url, auth=auth) as resp:
                    if resp.status == 404:
                        return False
                    t.check_status(resp, f"blob {digest}")
                    return True

        return await t.call(self.urls(repository, "blobs", digest, mirrors=False), attempt, f"HEAD blob {digest}")

    async def _start_upload(self, repository: str, auth: RegistryAuth, query: str = "") -> tuple[int, str]:
        t = self.transport
        what = f"upload to {self.host}/{repository}"

        async def attempt(url: str) -> tuple[int, str]:
            with network_retry():
                async with t.open("POST", url, headers={"Content-Length": "0"}, auth=auth) as resp:
                    t.check_status(resp, what, ok=(201, 202))
                    location = resp.headers.get("Location")
                    if resp.status == 202 and not location:
                        raise errors.RemoteError(f"{what}: the registry gave no upload location")
                    return resp.status, urljoin(url, location or "")

        return await t.call([f"{self.base}/v2/{repository}/blobs/uploads/{query}"], attempt, what)

    async def amount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Mount ``digest`` from another repository of this registry; False if the registry declines."""
        await self._ensure_scheme()
        auth = self.auth(repository, push=True, mount_from=from_repository)
        status, location = await self._start_upload(
            repository, auth, "?" + urlencode({"mount": digest, "from": from_repository}))
        if status == 201:
            return True
        await self._cancel_upload(location, auth)
        return False

    async def _cancel_upload(self, location: str, auth: RegistryAuth) -> None:
        try:
            async with self.transport.open("DELETE", location, auth=auth):
                pass
        except (errors.LazyLayerError, Retry, *NETWORK_ERRORS):
            pass  # the registry expires abandoned uploads anyway

    async def aput_blob(self, repository: str, data: bytes, digest: str | None = None) -> str:
        """Push ``data`` as one blob (monolithic upload) unless the registry already has it."""
        await self._ensure_scheme()
        digest = digest or sha256_of(data)
        auth = self.auth(repository, push=True)
        if await self.ablob_exists(repository, digest, auth):
            return digest
        upload = _Upload(self, repository, auth)
        await upload.finish(data, digest)
        return digest

    async def aput_manifest(self, repository: str, reference: str, data: bytes, media_type: str,
                            response_headers: dict[str, str] | None = None) -> str:
        """Push a manifest or index under a tag or its digest; returns its digest.

        ``response_headers``, when given, is filled with the successful response's
        headers (names lower-cased), e.g. ``oci-subject`` (see lazylayer.referrers).
        """
        await self._ensure_scheme()
        t = self.transport
        auth = self.auth(repository, push=True)
        digest = sha256_of(data)
        what = f"push manifest {self.host}/{repository}:{reference}"

        async def attempt(url: str) -> str:
            with network_retry():
                async with t.open("PUT", url, headers={"Content-Type": media_type}, data=data, auth=auth) as resp:
                    if resp.status == 400:
                        detail = (await resp.content.read(4096)).decode("utf-8", "replace")
                        raise errors.RemoteError(f"{what}: the registry refused it: {detail}", status=400)
                    t.check_status(resp, what, ok=(200, 201, 202))
                    got = resp.headers.get("Docker-Content-Digest")
                    if got and got != digest:
                        raise errors.IntegrityError(f"{what}: the registry stored {got}, we sent {digest}")
                    if response_headers is not None:
                        response_headers.clear()
                        response_headers.update((k.lower(), v) for k, v in resp.headers.items())
                    return digest

        return await t.call(self.urls(repository, "manifests", reference, mirrors=False), attempt, what)


class _Upload:
    """One blob upload session: chunks PATCHed in order, then the closing PUT with the digest.

    A failed PATCH asks the registry how much it has (``GET`` on the upload
    URL answers ``Range: 0-N``) and resends the rest, so a reset mid-chunk
    does not restart the blob.
    """

    def __init__(self, registry: Registry, repository: str, auth: RegistryAuth) -> None:
        self.registry = registry
        self.repository = repository
        self.auth = auth
        self.location: str | None = None
        self.offset = 0
        self.what = f"upload to {registry.host}/{repository}"

    async def _location(self) -> str:
        if self.location is None:
            _, self.location = await self.registry._start_upload(self.repository, self.auth)
        return self.location

    async def _acked(self, t: Transport) -> int:
        """How many bytes the registry has (``Range: 0-N`` → N+1)."""
        async with t.open("GET", await self._location(), auth=self.auth) as resp:
            t.check_status(resp, self.what, ok=(204,))
            rng = resp.headers.get("Range", "")
            if resp.headers.get("Location"):
                self.location = urljoin(self.location or "", resp.headers["Location"])
            if not rng:
                return 0
            try:
                return int(rng.split("-")[1]) + 1
            except (IndexError, ValueError):
                raise errors.RemoteError(f"{self.what}: bad upload status Range {rng!r}") from None

    async def patch(self, chunk: bytes) -> None:
        t = self.registry.transport
        start = self.offset
        failed = False

        async def attempt(_url: str) -> None:
            nonlocal failed
            sent = start
            with network_retry():
                if failed:
                    sent = await self._acked(t)
                    if not start <= sent <= start + len(chunk):
                        raise errors.RemoteError(f"{self.what}: the registry holds {sent} bytes, expected "
                                                 f"between {start} and {start + len(chunk)}")
                failed = True
                body = chunk[sent - start:]
                if body:
                    headers = {"Content-Type": "application/octet-stream",
                               "Content-Range": f"{sent}-{sent + len(body) - 1}"}
                    async with t.open("PATCH", await self._location(), headers=headers, data=body,
                                      auth=self.auth) as resp:
                        t.check_status(resp, self.what, ok=(202, 204))
                        self.location = urljoin(self.location or "", resp.headers.get("Location", ""))
            failed = False

        await t.call([await self._location()], attempt, self.what)
        self.offset = start + len(chunk)

    async def finish(self, last: bytes, digest: str) -> None:
        """PUT the closing request (with ``last`` as its body: the whole blob when nothing was PATCHed)."""
        t = self.registry.transport

        async def attempt(_url: str) -> None:
            loc = await self._location()
            sep = "&" if "?" in loc else "?"

            def forget_session() -> None:
                if not self.offset:
                    self.location = None  # a monolithic PUT can start over

            with network_retry(forget_session):
                headers = {"Content-Type": "application/octet-stream"}
                async with t.open("PUT", loc + sep + urlencode({"digest": digest}), headers=headers,
                                  data=last, auth=self.auth) as resp:
                    if resp.status == 400:
                        detail = (await resp.content.read(4096)).decode("utf-8", "replace")
                        raise errors.IntegrityError(f"{self.what}: the registry refused {digest}: {detail}")
                    if resp.status == 404 and not self.offset:
                        self.location = None  # the session vanished: start a new one next attempt
                        raise Retry("upload session not found")
                    t.check_status(resp, self.what, ok=(201, 204))

        await t.call([self.registry.base], attempt, self.what)

    async def cancel(self) -> None:
        if self.location is not None:
            await self.registry._cancel_upload(self.location, self.auth)


class RegistryBlobWriter:
    """A file to stream a blob into (``.file``); ``commit(digest)`` completes the upload.

    Up to :data:`UPLOAD_CHUNK` bytes are buffered; a larger blob is PATCHed
    chunk by chunk while the caller keeps writing (one chunk in flight).
    """

    def __init__(self, dest: RegistryDestination) -> None:
        self.dest = dest
        reg = dest.registry
        self.upload = _Upload(reg, dest.ref.repository, reg.auth(dest.ref.repository, push=True))
        self.buffer = bytearray()
        self.pending: concurrent.futures.Future[None] | None = None
        self.file = self  # the converter writes to ``out.file``
        self.closed = False

    def write(self, data: Any) -> int:
        self.buffer += data
        if len(self.buffer) >= UPLOAD_CHUNK:
            self._wait()
            chunk, self.buffer = bytes(self.buffer), bytearray()
            self.pending = self.dest.registry.transport.submit(self.upload.patch(chunk))
        return len(data)

    def _wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def flush(self) -> None:
        pass

    def commit(self, digest: str) -> None:
        t = self.dest.registry.transport
        self._wait()
        if self.upload.offset:
            if self.buffer:
                t.run(self.upload.patch(bytes(self.buffer)))
            t.run(self.upload.finish(b"", digest))
        else:
            if t.run(self.dest.registry.ablob_exists(self.dest.ref.repository, digest, self.upload.auth)):
                self.closed = True
                return
            t.run(self.upload.finish(bytes(self.buffer), digest))
        self.buffer = bytearray()
        self.closed = True

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._wait()
        except errors.LazyLayerError:
            pass
        self.dest.registry.transport.run(self.upload.cancel())

    def __enter__(self) -> RegistryBlobWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None or not self.closed:
            self.abort()


# ------------------------------------------------------------------ artifacts (referrers)

MAX_REFERRER_PAGES = 64  # pages of a paginated referrers answer (``Link: <...>; rel="next"``) followed at most
_LINK_NEXT = re.compile(r'<([^>]*)>[^,]*?;\s*rel="?next"?', re.IGNORECASE)
_log = logging.getLogger("lazylayer.registry.referrers")


def referrers_tag(digest: str) -> str:
    """The referrers tag of a ``sha256:<hex>`` digest: ``sha256-<hex>`` (distribution-spec "Referrers Tag Schema")."""
    return "sha256-" + oci.check_digest(digest)


class RegistryArtifacts:
    """A registry repository as an :class:`lazylayer.oci.ArtifactStore` (docs/referrers.md, "Registries").

    Artifacts are pushed by digest.  A registry that answers the push with
    ``OCI-Subject`` indexes subjects itself (the referrers API); otherwise the
    referrers tag ``sha256-<hex>`` is read, extended and written back (no
    lock: two clients attaching at once can lose an entry).  Discovery asks
    the referrers API and falls back to the tag when it answers 404.  Lookups
    and the tag go to the registry itself, never to a mirror.
    :class:`RegistrySource` and :class:`RegistryDestination` are both one.
    """

    ref: oci.RegistryRef
    registry: Registry

    def artifacts(self) -> RegistryArtifacts:
        """The repository keeps the artifacts that refer to its images."""
        return self

    def attach_artifact(self, subject_digest: str, payloads: Sequence[tuple[bytes, str]],
                        manifest: bytes, manifest_desc: oci.Descriptor) -> None:
        self.registry.transport.run(self._aattach(subject_digest, [p for p, _ in payloads], manifest, manifest_desc))

    def referrers(self, subject_digest: str, artifact_type: str | None = None) -> list[oci.Descriptor]:
        return self.registry.transport.run(self._areferrers(subject_digest, artifact_type))

    def read_artifact_manifest(self, desc: oci.Descriptor) -> bytes:
        _, data = self.registry.get_manifest(self.ref.repository, desc["digest"])  # by digest: checked against it
        if len(data) != desc["size"]:
            raise errors.IntegrityError(f"artifact {desc['digest']}: the manifest has {len(data)} bytes, "
                                        f"the descriptor says {desc['size']}")
        return data

    def read_artifact_blob(self, desc: oci.Descriptor) -> bytes:
        # reads exactly size bytes and checks the digest
        return self.registry.blob(self.ref.repository, desc["digest"], desc["size"]).read_all()

    async def _aattach(self, subject_digest: str, payloads: list[bytes], manifest: bytes,
                       desc: oci.Descriptor) -> None:
        reg, repo = self.registry, self.ref.repository
        await reg.aput_blob(repo, oci.EMPTY_JSON, oci.EMPTY_DESCRIPTOR["digest"])
        for payload in payloads:
            await reg.aput_blob(repo, payload)
        headers: dict[str, str] = {}
        await reg.aput_manifest(repo, desc["digest"], manifest, desc["mediaType"], response_headers=headers)
        if headers.get("oci-subject") == subject_digest:
            return  # the registry indexes subjects itself (referrers API)
        _log.debug("%s/%s: no OCI-Subject in the answer: updating the referrers tag", reg.host, repo)
        await self._add_to_referrers_tag(subject_digest, desc)

    async def _add_to_referrers_tag(self, subject_digest: str, desc: oci.Descriptor) -> None:
        reg, repo = self.registry, self.ref.repository
        tag = referrers_tag(subject_digest)
        what = f"referrers tag {reg.host}/{repo}:{tag}"
        try:
            got, body = await reg.aget_manifest(repo, tag, mirrors=False)
        except errors.NotFoundError:
            index: dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []}
        else:
            index = _referrers_tag_index(got, body, what)
        if any(m["digest"] == desc["digest"] for m in index["manifests"]):
            return
        index.setdefault("schemaVersion", 2)
        index["mediaType"] = oci.OCI_INDEX
        index["manifests"].append(dict(desc))
        data = oci.canonical_json(index)
        if len(data) > oci.MAX_METADATA_BYTES:
            raise errors.LimitError(f"{what}: the index would be {len(data)} bytes (limit {oci.MAX_METADATA_BYTES})")
        await reg.aput_manifest(repo, tag, data, oci.OCI_INDEX)

    async def _areferrers(self, subject_digest: str, artifact_type: str | None) -> list[oci.Descriptor]:
        reg, repo = self.registry, self.ref.repository
        entries = await self._referrers_api(subject_digest, artifact_type)
        if entries is not None:
            return entries
        tag = referrers_tag(subject_digest)
        _log.debug("%s/%s: no referrers API (404): reading the referrers tag %s", reg.host, repo, tag)
        try:
            got, body = await reg.aget_manifest(repo, tag, mirrors=False)
        except errors.NotFoundError:
            return []
        index = _referrers_tag_index(got, body, f"referrers tag {reg.host}/{repo}:{tag}")
        return list(index["manifests"])

    async def _referrers_api(self, subject_digest: str, artifact_type: str | None) -> list[oci.Descriptor] | None:
        """The referrers API's entries (every page); None when it answers 404 (no API: use the tag)."""
        reg, repo = self.registry, self.ref.repository
        await reg._ensure_scheme()
        t = reg.transport
        auth = reg.auth(repo)
        what = f"referrers of {reg.host}/{repo}@{subject_digest}"
        first = f"{reg.base}/v2/{repo}/referrers/{subject_digest}"
        if artifact_type is not None:
            first += "?" + urlencode({"artifactType": artifact_type})
        url: str | None = first
        entries: list[oci.Descriptor] = []
        seen: set[str] = set()
        page = 0

        async def attempt(u: str) -> tuple[bytes | None, str | None]:
            with network_retry():
                async with t.open("GET", u, headers={"Accept": oci.OCI_INDEX}, auth=auth) as resp:
                    if resp.status == 404 and page == 0:
                        return None, None
                    t.check_status(resp, what)
                    body = await read_metadata(resp, what)
                    return body, _next_page(u, resp.headers.getall("Link", []))

        while url is not None:
            if page == MAX_REFERRER_PAGES:
                raise errors.LimitError(f"{what}: more than {MAX_REFERRER_PAGES} pages of referrers")
            seen.add(url)
            body, next_url = await t.call([url], attempt, what)
            if body is None:
                return None
            entries += oci.referrers_entries(oci.parse_json(body, what), what)
            page += 1
            url = next_url if next_url not in seen else None
        return entries


def _referrers_tag_index(desc: oci.Descriptor, body: bytes, what: str) -> dict[str, Any]:
    """The referrers tag's image index, checked; anything else there is a FormatError."""
    if desc.get("mediaType") != oci.OCI_INDEX:
        raise errors.FormatError(f"{what} holds a {desc.get('mediaType')!r}, not an OCI image index "
                                 "(the referrers tag schema needs one)")
    index = oci.parse_json(body, what)
    index["manifests"] = oci.referrers_entries(index, what)
    return index


def _next_page(current: str, links: list[str]) -> str | None:
    for value in links:
        m = _LINK_NEXT.search(value)
        if m:
            url = urljoin(current, m.group(1).strip())
            if urlsplit(url).scheme in ("http", "https"):
                return url
    return None


# ------------------------------------------------------------------ image source / destination


@dataclass
class RegistrySource(RegistryArtifacts):
    """A ``docker://`` image to read (an :class:`lazylayer.oci.ImageSource`; its artifacts'
    :class:`lazylayer.oci.ArtifactStore` too)."""

    ref: oci.RegistryRef
    registry: Registry

    def root(self) -> tuple[oci.Descriptor, bytes]:
        return self.registry.get_manifest(self.ref.repository, self.ref.reference)

    def read_blob(self, desc: oci.Descriptor) -> bytes:
        digest = desc.get("digest", "")
        oci.check_digest(digest)
        if desc.get("mediaType") in oci.INDEX_TYPES + oci.MANIFEST_TYPES:
            got, data = self.registry.get_manifest(self.ref.repository, digest)
            return data
        size = desc.get("size")
        if not isinstance(size, int) or not 0 <= size <= oci.MAX_METADATA_BYTES:
            raise errors.LimitError(f"blob {digest}: size {size!r} is not within 0..{oci.MAX_METADATA_BYTES}")
        return self.registry.blob(self.ref.repository, digest, size).read_all()

    def blob(self, desc: oci.Descriptor) -> HttpBlob:
        """The layer blob ``desc`` names, for range reads."""
        size = desc.get("size")
        return self.registry.blob(self.ref.repository, desc.get("digest", ""), size if isinstance(size, int) else None)

    def open_blob(self, desc: oci.Descriptor) -> BinaryIO:
        return self.blob(desc).open()  # type: ignore[return-value]

    def close(self) -> None:
        pass


@dataclass
class RegistryDestination(RegistryArtifacts):
    """A ``docker://`` reference to push a converted image to (an :class:`lazylayer.oci.ImageDestination`;
    an :class:`lazylayer.oci.ArtifactStore` too)."""

    ref: oci.RegistryRef
    registry: Registry
    _manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ref.digest:
            raise oci.ReferenceError(f"{self.ref}: push to a tag, not a digest (the digest is the result)")

    @property
    def tag(self) -> str:
        return self.ref.tag or "latest"

    def write_blob(self, data: bytes, media_type: str, **extra: Any) -> oci.Descriptor:
        desc = oci.descriptor(media_type, data, **extra)
        t = self.registry.transport
        if media_type in oci.INDEX_TYPES + oci.MANIFEST_TYPES:
            t.run(self.registry.aput_manifest(self.ref.repository, desc["digest"], data, media_type))
            self._manifests[desc["digest"]] = (data, media_type)
        else:
            t.run(self.registry.aput_blob(self.ref.repository, data, desc["digest"]))
        return desc

    def blob_writer(self) -> RegistryBlobWriter:
        return RegistryBlobWriter(self)

    def reuse_blob(self, desc: oci.Descriptor, source: object = None) -> bool:
        """True if the registry has ``desc`` already, or mounts it from the source's repository."""
        t, repo, digest = self.registry.transport, self.ref.repository, desc["digest"]
        if t.run(self.registry.ablob_exists(repo, digest)):
            return True
        if isinstance(source, RegistrySource) and source.registry.host == self.registry.host \
                and source.ref.repository != repo:
            return t.run(self.registry.amount_blob(repo, digest, source.ref.repository))
        return False

    def set_tag(self, tag: str | None, desc: oci.Descriptor) -> None:
        data, media_type = self._manifests[desc["digest"]]
        self.registry.transport.run(self.registry.aput_manifest(self.ref.repository, tag or self.tag, data, media_type))

