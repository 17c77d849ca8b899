"""Real servers for tests that talk to registries: no mocks, real processes, real HTTP.

- :class:`RegistryServer` runs Debian's ``docker-registry`` (distribution 2.8)
  on a free loopback port: plain, htpasswd (Basic auth), token auth, or as a
  pull-through mirror of another registry.
- :class:`TokenServer` is a Docker token server (the ``realm`` of token auth)
  that signs RS256 JWTs the registry verifies; tests tune what it hands out.
- :class:`FaultProxy` is a reverse proxy in front of any HTTP server that
  forwards everything faithfully until a test asks it to misbehave (error
  statuses, resets, stalls, truncated or corrupted bodies, lying range
  headers, redirects to a :class:`BlobStore`).
- :class:`BlobStore` stands in for S3/GCS behind presigned URLs: it serves
  files with Range support and, like S3, rejects requests that carry an
  ``Authorization`` header.

The Python servers each run an aiohttp application in their own thread with
their own event loop, so they work the same under synchronous tests and
under tests that run their own asyncio loop.  Everything listens on
127.0.0.1 only.  Every object has ``close()`` and is a context manager;
anything still running when the interpreter exits is closed by an ``atexit``
hook, so no ``docker-registry`` process outlives pytest.

Helpers: :func:`unique_repo` (a fresh repository name per test),
:func:`small_image` (a small real OCI layout), :func:`skopeo_push`.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import datetime
import hashlib
import hmac
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiohttp
import images
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

SETUP_HINT = "run scripts/setup.sh (it installs docker-registry, apache2-utils, skopeo, umoci and the test extras)"

T = TypeVar("T")


class MissingTool(RuntimeError):
    """A program or Python package the real-server tests need is not installed.

    The fixtures turn this into a test *failure* (never a skip) whose message
    says to run scripts/setup.sh.
    """


def start_or_fail(factory: Callable[[], T]) -> T:
    """Call ``factory()`` (e.g. ``lambda: RegistryServer()``); turn :class:`MissingTool` into a test failure.

    Fixtures use this so a machine without docker-registry fails loudly with
    the setup hint instead of skipping the real-server tests.
    """
    try:
        return factory()
    except MissingTool as e:
        message = str(e)
    pytest.fail(message, pytrace=False)  # outside the except: no chained traceback


def require_tools(*names: str) -> None:
    """Raise :class:`MissingTool` unless every program in ``names`` is on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise MissingTool(f"{', '.join(missing)} not found on PATH: {SETUP_HINT}")


_repo_counter = itertools.count(1)


def unique_repo(prefix: str = "test") -> str:
    """A repository name no other test uses, e.g. ``test/7-1f3a9c2e``.

    Session-scoped registries are shared by all tests, so each test pushes to
    its own repositories.  ``prefix`` may contain slashes; with
    ``prefix="public"`` the :class:`TokenServer` lets anonymous clients pull.
    """
    return f"{prefix}/{next(_repo_counter)}-{uuid.uuid4().hex[:8]}"


def wait_for(cond: Any, timeout: float = 30.0) -> None:
    """Poll ``cond()`` until it is true (AssertionError after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def small_image(tmp_path: Path | str, tag: str = "v1") -> str:
    """Build a small real OCI image layout under ``tmp_path``; return ``oci:DIR:TAG``.

    Two gzip layers made with the tar helpers of ``tests/images.py``: a text
    file and a 256 KiB random file (so its blob is incompressible and large
    enough for range requests), then a second file.  The random bytes come
    from ``os.urandom``, so every call yields new blob digests and no two
    tests share blobs by accident.  Read the image back with
    ``images.image(DIR, TAG)``.
    """
    layout = os.path.join(str(tmp_path), f"small-image-{uuid.uuid4().hex[:8]}")
    layer1 = images.make_tar([
        images.entry("etc", b"5"),
        images.reg("etc/hello.txt", b"hello from a small lazylayer test image\n"),
        images.entry("data", b"5"),
        images.reg("data/random.bin", os.urandom(256 << 10)),
    ])
    layer2 = images.make_tar([images.reg("etc/second.txt", b"from the second layer: " + os.urandom(8).hex().encode())])
    return images.build_layout(layout, [layer1, layer2], tag=tag)


def skopeo_push(src_ref: str, dest_host: str, repo_ref: str, credentials: tuple[str, str] | None = None) -> str:
    """``skopeo copy SRC docker://DEST_HOST/REPO_REF`` over plain HTTP; return the pushed manifest digest.

    ``src_ref`` is any skopeo reference (``oci:/dir:tag``, ...); ``repo_ref``
    is ``name:tag`` (``:latest`` when no tag is given).  ``credentials`` is
    ``(user, password)`` for registries with auth (Basic or token).
    """
    require_tools("skopeo")
    if ":" not in repo_ref.rsplit("/", 1)[-1]:
        repo_ref += ":latest"
    with tempfile.TemporaryDirectory(prefix="skopeo-push-") as tmp:
        digestfile = os.path.join(tmp, "digest")
        cmd = ["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", "--digestfile", digestfile]
        if credentials:
            cmd += ["--dest-creds", f"{credentials[0]}:{credentials[1]}"]
        cmd += [src_ref, f"docker://{dest_host}/{repo_ref}"]
        p = subprocess.run(cmd, capture_output=True, timeout=300, check=False)
        if p.returncode != 0:
            shown = [a if not a.startswith(f"{credentials[0]}:") else "USER:***" for a in cmd] if credentials else cmd
            raise AssertionError(f"{' '.join(shown)} exited {p.returncode}:\n{p.stderr.decode(errors='replace')}")
        with open(digestfile) as f:
            return f.read().strip()


# ------------------------------------------------------------------ cleanup at exit

_live: set[Any] = set()  # strong references: an unclosed server is never garbage-collected while running


@atexit.register
def _close_leftovers() -> None:
    """Close every server still open when Python exits (a crashed or interrupted run)."""
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.close()


class _Closeable:
    """Context-manager plumbing shared by the servers."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ docker-registry


class RegistryServer(_Closeable):
    """A real ``docker-registry serve`` process (distribution v2.8) on 127.0.0.1.

    Storage is the filesystem driver under ``<workdir>/storage`` with deletes
    enabled; the process's output goes to ``<workdir>/registry.log``.  The
    constructor returns once ``GET /v2/`` answers (any status); if the process
    dies or never answers, it raises with the tail of the log.

    ``mode``:

    - ``"plain"``: no auth.
    - ``"htpasswd"``: HTTP Basic auth, one user ``username``/``password``
      (bcrypt file made by ``htpasswd -Bbn``).
    - ``"token"``: Docker token auth.  The realm is ``token_server.realm``
      (or ``realm`` to send clients elsewhere, e.g. through a FaultProxy in
      front of the token server); ``username``/``password`` are added to
      ``token_server.users`` so :meth:`push` can authenticate.  Without a
      ``token_server`` one is created and closed with the registry.
    - ``"proxy"``: a pull-through cache (mirror) of ``remote_url``, optionally
      logging in there with ``remote_credentials``.  Pushes are refused, as
      in any distribution mirror.

    ``config`` is merged (recursively) into the generated configuration.
    ``address`` is the IP to listen on (another of this machine's addresses
    makes a registry that is not on loopback); ``tls`` = ``(cert.pem, key.pem)``
    serves HTTPS.

    Attributes: ``host`` ("127.0.0.1:PORT"), ``url`` ("http://127.0.0.1:PORT"),
    ``root`` (storage directory), ``log_path``, ``mode``, ``username`` and
    ``password`` (None in plain/proxy mode), ``token_server``, ``remote_url``.
    """

    def __init__(self, mode: str = "plain", *, workdir: str | os.PathLike[str] | None = None,
                 username: str = "tester", password: str | None = None,
                 token_server: TokenServer | None = None, realm: str | None = None,
                 remote_url: str | None = None, remote_credentials: tuple[str, str] | None = None,
                 config: dict[str, Any] | None = None, startup_timeout: float = 30.0,
                 address: str = "127.0.0.1", tls: tuple[str, str] | None = None) -> None:
        self.address = address
        self.tls = tls
        if mode not in ("plain", "htpasswd", "token", "proxy"):
            raise ValueError(f"unknown registry mode {mode!r}")
        if mode == "proxy" and not remote_url:
            raise ValueError("proxy mode needs remote_url")
        require_tools("docker-registry", *(["htpasswd"] if mode == "htpasswd" else []))
        self.mode = mode
        self._own_workdir = workdir is None
        self.workdir = str(workdir) if workdir is not None else tempfile.mkdtemp(prefix=f"registry-{mode}-")
        os.makedirs(self.workdir, exist_ok=True)
        self.root = os.path.join(self.workdir, "storage")
        self.log_path = os.path.join(self.workdir, "registry.log")
        self.remote_url = remote_url
        self.username: str | None = username if mode in ("htpasswd", "token") else None
        self.password: str | None = (password or secrets.token_urlsafe(12)) if self.username else None
        self._own_token_server = mode == "token" and token_server is None
        self.token_server = (token_server or TokenServer()) if mode == "token" else None
        if self.token_server is not None and self.username and self.password:
            self.token_server.add_user(self.username, self.password)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        _live.add(self)
        try:
            self._settings = self._config(realm, remote_credentials)
            _merge(self._settings, config or {})
            self._start(startup_timeout)
        except BaseException:
            self.close()
            raise

    # -- configuration

    def _config(self, realm: str | None, remote_credentials: tuple[str, str] | None) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": self.root},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": "127.0.0.1:0", "secret": secrets.token_hex(16)},
        }
        if self.mode == "htpasswd":
            assert self.username and self.password
            path = os.path.join(self.workdir, "htpasswd")
            p = subprocess.run(["htpasswd", "-Bbn", self.username, self.password], capture_output=True, check=True)
            with open(path, "wb") as f:
                f.write(p.stdout)
            cfg["auth"] = {"htpasswd": {"realm": "lazylayer-test-registry", "path": path}}
        elif self.mode == "token":
            ts = self.token_server
            assert ts is not None
            cfg["auth"] = {"token": {"realm": realm or ts.realm, "service": ts.service,
                                     "issuer": ts.issuer, "rootcertbundle": ts.cert_path}}
        elif self.mode == "proxy":
            proxy: dict[str, str] = {"remoteurl": str(self.remote_url)}
            if remote_credentials:
                proxy["username"], proxy["password"] = remote_credentials
            cfg["proxy"] = proxy
        return cfg

    # -- process

    def _start(self, timeout: float) -> None:
        for attempt in range(3):  # a free port can be taken between probing and binding
            port = _free_port(self.address)
            self._settings["http"]["addr"] = f"{self.address}:{port}"
            if self.tls:
                self._settings["http"]["tls"] = {"certificate": self.tls[0], "key": self.tls[1]}
            config_path = os.path.join(self.workdir, "config.yml")
            with open(config_path, "w") as f:
                json.dump(self._settings, f, indent=1)  # JSON is YAML
            self._log_file = open(self.log_path, "ab")
            env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
            self._proc = subprocess.Popen(["docker-registry", "serve", config_path], stdin=subprocess.DEVNULL,
                                          stdout=self._log_file, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
            self.host = f"{self.address}:{port}"
            self.url = f"{'https' if self.tls else 'http'}://{self.host}"
            try:
                self._wait_ready(timeout)
                return
            except RuntimeError:
                self._stop_process()
                if attempt == 2 or "address already in use" not in self.log_tail():
                    raise

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry ({self.mode}) exited with {self._proc.returncode} "
                                   f"during startup; log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1, context=_UNVERIFIED):
                    return
            except urllib.error.HTTPError:
                return  # 401 from an auth mode: it answers
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry ({self.mode}) did not answer GET {self.url}/v2/ within "
                                   f"{timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the registry's log."""
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        """True while the registry process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` in htpasswd and token mode, else None."""
        return (self.username, self.password) if self.username and self.password else None

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def close(self) -> None:
        """Stop the registry (SIGTERM, then SIGKILL after 10 s); remove its workdir if this object made it."""
        self._stop_process()
        _live.discard(self)
        if self._own_token_server and self.token_server is not None:
            self.token_server.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- conveniences

    def push(self, src_ref: str, repo_ref: str) -> str:
        """Push ``src_ref`` (e.g. ``oci:/dir:tag``) to ``REPO:TAG`` here with skopeo; return the manifest digest."""
        return skopeo_push(src_ref, self.host, repo_ref, self.credentials)

    def manifest_url(self, repo: str, reference: str) -> str:
        """``http://HOST/v2/REPO/manifests/REFERENCE`` (a tag or digest)."""
        return f"{self.url}/v2/{repo}/manifests/{reference}"

    def blob_url(self, repo: str, digest: str) -> str:
        """``http://HOST/v2/REPO/blobs/DIGEST``."""
        return f"{self.url}/v2/{repo}/blobs/{digest}"

    def __repr__(self) -> str:
        return f"<RegistryServer {self.mode} {self.url}>"


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _unverified() -> Any:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_UNVERIFIED = _unverified()


def non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback (the one a default route would use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing interface
        addr = s.getsockname()[0]
    if addr.startswith("127."):
        raise MissingTool("this machine has no non-loopback IPv4 address to run a registry on")
    return addr


def self_signed_cert(workdir: str, ip: str) -> tuple[str, str]:
    """A self-signed certificate for ``ip`` (an IP SAN): ``(cert.pem, key.pem)`` paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(workdir, "tls-cert.pem"), os.path.join(workdir, "tls-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


# ------------------------------------------------------------------ aiohttp servers in their own thread


class LoopThread:
    """An asyncio event loop running in a daemon thread.

    Servers built on it keep working while the test thread blocks (urllib,
    subprocess) or runs its own event loop.  :meth:`call` runs a coroutine
    there and waits for its result; :meth:`stop` cancels what is left and
    joins the thread.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            tasks = asyncio.all_tasks(self.loop)
            for t in tasks:
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def call(self, coro: Awaitable[T], timeout: float = 60.0) -> T:
        """Run ``coro`` on this loop from another thread; return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)


class Seen(NamedTuple):
    """One request a server answered (``FaultProxy.log``, ``BlobStore.log``).

    ``headers`` are the request headers with lower-case names; the value of
    ``authorization`` is replaced by ``"<present>"`` so credentials never
    reach logs or assertion messages.  ``status`` is what this server answered,
    or None when it reset the connection before sending headers.
    """

    method: str
    path_qs: str
    headers: dict[str, str]
    status: int | None


def _seen(request: web.BaseRequest, status: int | None) -> Seen:
    headers = {k.lower(): ("<present>" if k.lower() == "authorization" else v) for k, v in request.headers.items()}
    return Seen(request.method, request.raw_path, headers, status)


class AioServer(_Closeable):
    """Base class: an aiohttp application on a free 127.0.0.1 port, served from its own :class:`LoopThread`.

    Subclasses implement :meth:`_routes` (and optionally :meth:`_startup` /
    :meth:`_shutdown`, run on the server's loop).  ``closing`` is an
    ``asyncio.Event`` set when :meth:`close` starts, so long-running handlers
    (stalls) can end promptly.
    """

    def __init__(self, name: str) -> None:
        self._lt = LoopThread(name)
        self._runner: web.AppRunner | None = None
        _live.add(self)
        try:
            self._lt.call(self._start())
        except BaseException:
            self.close()
            raise

    async def _start(self) -> None:
        self.closing = asyncio.Event()
        await self._startup()
        app = web.Application(client_max_size=1 << 30)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port: int = self._runner.addresses[0][1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _startup(self) -> None:
        pass

    async def _shutdown(self) -> None:
        pass

    async def _stop(self) -> None:
        self.closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
        await self._shutdown()

    def close(self) -> None:
        """Stop serving, end hanging handlers, stop the thread.  Safe to call twice."""
        if self._lt._thread.is_alive():
            with contextlib.suppress(Exception):
                self._lt.call(self._stop(), timeout=30)
            self._lt.stop()
        _live.discard(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'url', '(not started)')}>"


# ------------------------------------------------------------------ token server


class TokenRequest(NamedTuple):
    """One request to :class:`TokenServer`: the user it claimed (None if anonymous) and its scopes joined by spaces."""

    username: str | None
    scope: str


class TokenServer(AioServer):
    """A Docker registry token server (``GET /token?service=S&scope=repository:NAME:pull,push``).

    It answers ``{"token", "access_token", "expires_in", "issued_at"}`` with
    an RS256 JWT signed by a key whose self-signed certificate is
    ``cert_path`` (give that to the registry as ``rootcertbundle``; registry
    2.8 checks the ``x5c`` certificate chain in the JWT header against it).

    Policy: HTTP Basic credentials must match ``users`` (else 401); any other
    ``Authorization`` scheme is 401 too.  Authenticated users get every action
    they ask for; anonymous clients get ``pull`` on repositories whose names
    start with ``public/`` and an empty access list otherwise (the registry
    then answers 401 insufficient_scope) — override :meth:`grant` to change that.

    Knobs tests may change at any time (read on every request):

    - ``users``: username -> password.
    - ``expires_in``: what the response *claims* (seconds, default 300).
    - ``jwt_lifetime``: the real ``exp - iat`` inside the JWT; None (default)
      means ``expires_in``.  Registry 2.8 allows 60 s of clock skew, so a
      token is rejected only once ``exp`` is more than 60 s in the past: use
      ``jwt_lifetime=-61`` or lower for "the registry rejects this token
      (401 invalid_token) although the client thinks it is valid for
      ``expires_in`` seconds".
    - ``signing_header``: ``"x5c"`` (default: the certificate chain) or
      ``"kid"`` (the libtrust key id, ``key_id``); the registry accepts both.

    ``requests`` lists a :class:`TokenRequest` for every request, accepted or
    not, so tests can count token fetches.  Passwords are never recorded.
    :meth:`reset` restores the knobs and clears ``requests``.
    """

    def __init__(self, users: dict[str, str] | None = None, *, service: str = "lazylayer-test-registry",
                 issuer: str = "lazylayer-test-token-server", expires_in: int = 300,
                 jwt_lifetime: int | None = None, workdir: str | None = None) -> None:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import padding, rsa
            from cryptography.x509.oid import NameOID
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise MissingTool(f"the token server needs the 'cryptography' package ({e}): {SETUP_HINT}") from None
        self.service = service
        self.issuer = issuer
        self._defaults = (dict(users or {}), expires_in, jwt_lifetime)
        self.users: dict[str, str] = dict(users or {})
        self.expires_in = expires_in
        self.jwt_lifetime = jwt_lifetime
        self.signing_header = "x5c"
        self.requests: list[TokenRequest] = []
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="token-server-")

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lazylayer test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=7))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_path = os.path.join(self.workdir, "token-signer.pem")
        with open(self.cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        spki = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_id = _libtrust_key_id(spki)
        self._sign = lambda data: self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        super().__init__("token-server")

    @property
    def realm(self) -> str:
        """The token endpoint, ``http://127.0.0.1:PORT/token``."""
        return f"{self.url}/token"

    def add_user(self, username: str, password: str) -> None:
        """Add a user now and keep it across :meth:`reset`."""
        self.users[username] = password
        self._defaults[0][username] = password

    def reset(self) -> None:
        """Restore ``users``, ``expires_in``, ``jwt_lifetime`` and ``signing_header``; clear ``requests``."""
        users, self.expires_in, self.jwt_lifetime = self._defaults
        self.users = dict(users)
        self.signing_header = "x5c"
        self.requests.clear()

    def grant(self, username: str | None, rtype: str, name: str, actions: list[str]) -> list[str]:
        """The actions of ``rtype:name:actions`` this user gets (the intersection the spec asks for)."""
        if username is not None:
            return actions
        if rtype == "repository" and name.startswith("public/"):
            return [a for a in actions if a == "pull"]
        return []

    def make_token(self, username: str | None, access: list[dict[str, Any]], *,
                   audience: str | None = None, lifetime: int | None = None) -> str:
        """A signed JWT with the given ``access`` list (tests may call this directly)."""
        now = int(time.time())
        life = lifetime if lifetime is not None else (self.jwt_lifetime if self.jwt_lifetime is not None
                                                      else self.expires_in)
        claims = {"iss": self.issuer, "sub": username or "", "aud": audience or self.service,
                  "exp": now + life, "nbf": now, "iat": now, "jti": secrets.token_hex(16), "access": access}
        header: dict[str, Any] = {"typ": "JWT", "alg": "RS256"}
        if self.signing_header == "kid":
            header["kid"] = self.key_id
        else:
            header["x5c"] = [base64.b64encode(self.cert_der).decode()]
        signing_input = _b64url(_compact(header)) + b"." + _b64url(_compact(claims))
        return (signing_input + b"." + _b64url(self._sign(signing_input))).decode()

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/token", self._token)

    async def _token(self, request: web.Request) -> web.Response:
        scopes = request.query.getall("scope", [])
        username: str | None = None
        auth = request.headers.get("Authorization")
        ok = True
        if auth is not None:
            ok = False
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "basic":
                try:
                    user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    user, sep, password = "", "", ""
                if sep:
                    username = user
                    expected = self.users.get(user)
                    ok = expected is not None and hmac.compare_digest(expected.encode(), password.encode())
        self.requests.append(TokenRequest(username, " ".join(scopes)))
        if not ok:
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, status=401,
                headers={"WWW-Authenticate": 'Basic realm="lazylayer-test-token-server"'})
        access: list[dict[str, Any]] = []
        for scope in scopes:
            for item in scope.split(" "):
                parts = item.split(":")
                if len(parts) < 3:
                    continue
                rtype, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
                granted = self.grant(username, rtype, name, actions)
                if granted:
                    access.append({"type": rtype, "name": name, "actions": granted})
        token = self.make_token(username, access, audience=request.query.get("service"))
        issued = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response({"token": token, "access_token": token,
                                  "expires_in": self.expires_in, "issued_at": issued})

    def close(self) -> None:
        super().close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _libtrust_key_id(spki_der: bytes) -> str:
    """libtrust's key id: SHA-256 of the DER public key, first 240 bits, base32, 12 groups of 4."""
    b32 = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode()
    return ":".join(b32[i:i + 4] for i in range(0, 48, 4))


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT, without checking its signature."""
    def part(s: str) -> dict[str, Any]:
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    header, claims, _ = token.split(".")
    return part(header), part(claims)


# ------------------------------------------------------------------ blob store (S3 stand-in)


class BlobStore(AioServer):
    """A static file server standing in for the object store behind a registry's redirects.

    ``put(name, data)`` / ``put_file(name, path)`` store a blob and return its
    "presigned" URL: ``http://127.0.0.1:PORT/blobs/NAME?X-Amz-...&X-Amz-Signature=...``.
    ``GET``/``HEAD`` on that URL serve the bytes with Range support (206,
    416).  As S3 does for presigned URLs, any request with an
    ``Authorization`` header gets 400 (``InvalidArgument``), and a missing or
    wrong signature gets 403 — so a client that forwards registry
    credentials across hosts fails visibly.  ``log`` lists a :class:`Seen`
    for every request.
    """

    def __init__(self, workdir: str | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="blob-store-")
        self._secret = secrets.token_bytes(16)
        self._files: dict[str, str] = {}
        self._lock = threading.Lock()
        self.log: list[Seen] = []
        super().__init__("blob-store")

    def _routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/blobs/{name}", self._serve)
        app.on_response_prepare.append(self._record)

    async def _record(self, request: web.Request, response: web.StreamResponse) -> None:
        self.log.append(_seen(request, response.status))  # FileResponse knows 200/206/416 only now

    def _signature(self, name: str) -> str:
        return hmac.new(self._secret, name.encode(), "sha256").hexdigest()

    def url_for(self, name: str) -> str:
        """The presigned URL of ``name`` (whether or not it is stored yet)."""
        return (f"{self.url}/blobs/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=lazylayer-test"
                f"&X-Amz-Expires=900&X-Amz-Signature={self._signature(name)}")

    def path_for(self, name: str) -> str:
        """Where ``name`` is (or will be) stored on disk."""
        if not re.fullmatch(r"[A-Za-z0-9._:-]+", name):
            raise ValueError(f"bad blob name {name!r}")
        return os.path.join(self.workdir, name.replace(":", "_"))

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._files

    def put(self, name: str, data: bytes) -> str:
        """Store ``data`` as ``name``; return its URL."""
        tmp = self.path_for(name) + f".tmp{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        return self.put_file(name, tmp)

    def put_file(self, name: str, path: str) -> str:
        """Move the file at ``path`` into the store as ``name``; return its URL."""
        dest = self.path_for(name)
        os.replace(path, dest)
        with self._lock:
            self._files[name] = dest
        return self.url_for(name)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        error = self._check(request)
        if error is not None:
            return error
        return web.FileResponse(self._files[request.match_info["name"]],
                                headers={"Content-Type": "application/octet-stream"})

    def _check(self, request: web.Request) -> web.Response | None:
        name = request.match_info["name"]
        if request.method not in ("GET", "HEAD"):
            return _s3_error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        if "Authorization" in request.headers:
            return _s3_error(400, "InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm "
                             "query parameter, Signature query string parameter or the Authorization header "
                             "should be specified")
        if not hmac.compare_digest(request.query.get("X-Amz-Signature", ""), self._signature(name)):
            return _s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")
        with self._lock:
            if name not in self._files:
                return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return None

    def close(self) -> None:
        super().close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _s3_error(status: int, code: str, message: str) -> web.Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>")
    return web.Response(status=status, text=body, content_type="application/xml")


# ------------------------------------------------------------------ fault-injecting reverse proxy

FAULT_KINDS = ("status", "reset", "stall", "truncate", "flip", "content_range", "wrong_range",
               "ignore_range", "redirect")

# Headers that describe one hop, not the message (RFC 9110 7.6.1), plus Host (set for the upstream).
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host"}


@dataclass
class Fault:
    """One fault rule of a :class:`FaultProxy` (see :meth:`FaultProxy.add_fault`).

    ``hits`` counts the requests it has been applied to; ``times`` is how many
    it may still be applied to (None: no limit).
    """

    kind: str
    path: re.Pattern[str]
    method: str | None
    times: int | None
    after_bytes: int | None
    status: int
    seconds: float
    shift: int
    headers: dict[str, str]
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return ((self.times is None or self.times > 0)
                and (self.method is None or self.method == method) and self.path.search(path) is not None)


class FaultProxy(AioServer):
    """A reverse proxy in front of ``upstream`` (e.g. a RegistryServer's url) that misbehaves on request.

    Without faults it is transparent: method, path and query (byte for
    byte), headers (Authorization, Range, ...) and the request body go
    upstream; status, headers and body come back, streamed in both
    directions (memory stays flat for blobs of any size).  Hop-by-hop headers
    are dropped; ``Location`` headers naming the upstream are rewritten to
    name the proxy, so upload sessions continue through it.  Responses
    without a ``Content-Type`` get aiohttp's ``application/octet-stream``.

    Faults are added at runtime with :meth:`add_fault` and removed with
    :meth:`clear`.  ``log`` lists a :class:`Seen` for every request, in the
    order responses started.  ``blob_store`` is the :class:`BlobStore` the
    ``"redirect"`` fault sends clients to.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.log: list[Seen] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.blob_store = BlobStore()
        try:
            super().__init__("fault-proxy")
        except BaseException:
            self.blob_store.close()
            raise

    def add_fault(self, kind: str, path: str = "", *, times: int | None = None, method: str | None = "GET",
                  after_bytes: int | None = None, status: int = 503, seconds: float = 3600.0, shift: int = 1,
                  headers: dict[str, str] | None = None) -> Fault:
        """Apply fault ``kind`` to requests whose URL path (no query) matches the regex ``path``.

        ``method`` limits it to one HTTP method (None: any).  ``times`` is how
        many matching requests get it, then it stops (None: all of them).
        When several rules match a request, the one added first applies.

        Kinds (``after_bytes`` counts bytes of the response body):

        - ``"status"``: answer ``status`` (default 503) with a registry-style
          JSON error and ``headers`` (e.g. ``{"Retry-After": "1"}``); nothing goes upstream.
        - ``"reset"``: TCP RST — before any header when ``after_bytes`` is
          None, else after the headers and ``after_bytes`` bytes.
        - ``"stall"``: send the headers and ``after_bytes`` (default 0) bytes,
          then hang ``seconds`` (default 3600; ended early by close()), then reset.
        - ``"truncate"``: send the headers (with the upstream's Content-Length)
          and ``after_bytes`` (default 0) bytes, then close the connection cleanly (FIN).
        - ``"flip"``: flip the lowest bit of the body byte at offset ``after_bytes`` (default 0).
        - ``"content_range"``: forward the body untouched but shift both ends of
          the ``Content-Range`` header by ``shift`` (default +1).
        - ``"wrong_range"``: ask upstream for the requested range shifted by
          ``shift`` and report the range shifted back: the headers look right,
          the bytes are wrong.  (Near the end of the blob the shifted range
          is cut short; the header then stays consistent with the shorter body.)
        - ``"ignore_range"``: drop ``Range``/``If-Range`` so upstream answers 200 with everything.
        - ``"redirect"``: fetch the resource from upstream (same credentials,
          no Range) into ``blob_store`` once, then answer 307 to its presigned
          URL.  Only applies when upstream answers 200; other answers (401,
          404) are forwarded and do not use up ``times``.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if after_bytes is None and kind in ("stall", "truncate", "flip"):
            after_bytes = 0
        fault = Fault(kind, re.compile(path), method.upper() if method else None, times, after_bytes,
                      status, seconds, shift, dict(headers or {}))
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault rule (requests already being answered keep theirs)."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                    fault.hits += 1
                    return fault
        return None

    def _refund(self, fault: Fault) -> None:
        with self._lock:
            if fault.times is not None:
                fault.times += 1
            fault.hits -= 1

    # -- serving

    def _routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _startup(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        self._fetch_locks: dict[str, asyncio.Lock] = {}

    async def _shutdown(self) -> None:
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self._take_fault(request.method, request.path)
        kind = fault.kind if fault else None
        if fault is not None and kind == "status":
            body = {"errors": [{"code": "UNAVAILABLE" if fault.status >= 500 else "DENIED",
                                "message": f"fault injected by FaultProxy: status {fault.status}"}]}
            resp = web.json_response(body, status=fault.status, headers=fault.headers)
            self.log.append(_seen(request, fault.status))
            return resp
        if fault is not None and kind == "reset" and fault.after_bytes is None:
            self.log.append(_seen(request, None))
            _reset(request)
            return web.Response()
        if fault is not None and kind == "redirect":
            try:
                redirected = await self._redirect(request, fault)
            except aiohttp.ClientError:
                redirected = None  # upstream unreachable: forward, which answers 502
            if redirected is not None:
                return redirected
            self._refund(fault)
            fault, kind = None, None
        return await self._forward(request, fault)

    def _upstream_headers(self, request: web.Request, fault: Fault | None) -> CIMultiDict[str]:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP)
        kind = fault.kind if fault else None
        if kind == "ignore_range":
            headers.popall("Range", None)
            headers.popall("If-Range", None)
        elif kind == "wrong_range" and fault is not None and "Range" in headers:
            headers["Range"] = _shift_range_request(headers["Range"], fault.shift)
        return headers

    async def _forward(self, request: web.Request, fault: Fault | None) -> web.StreamResponse:
        kind = fault.kind if fault else None
        data = request.content if request.body_exists else None
        try:
            upstream = await self._session.request(
                request.method, URL(self.upstream + request.raw_path, encoded=True),
                headers=self._upstream_headers(request, fault), data=data, allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))
        except aiohttp.ClientError as e:
            self.log.append(_seen(request, 502))
            return web.json_response({"errors": [{"code": "UNAVAILABLE", "message": f"upstream: {e}"}]}, status=502)
        async with upstream:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() in _HOP:
                    continue
                if k.lower() == "location" and v.startswith(self.upstream):
                    v = self.url + v[len(self.upstream):]
                elif k.lower() == "content-range" and fault is not None and kind in ("content_range", "wrong_range"):
                    v = _shift_content_range(v, fault.shift if kind == "content_range" else -fault.shift)
                resp.headers.add(k, v)
            self.log.append(_seen(request, upstream.status))
            try:
                await resp.prepare(request)
                limit = fault.after_bytes if fault is not None and kind in ("reset", "stall", "truncate") else None
                flip_at = fault.after_bytes if fault is not None and kind == "flip" else None
                sent = 0
                async for chunk in upstream.content.iter_any():
                    if flip_at is not None and sent <= flip_at < sent + len(chunk):
                        i = flip_at - sent
                        chunk = chunk[:i] + bytes([chunk[i] ^ 0x01]) + chunk[i + 1:]
                    if limit is not None and sent + len(chunk) >= limit:
                        await resp.write(chunk[:limit - sent])
                        sent = limit
                        break
                    await resp.write(chunk)
                    sent += len(chunk)
                if limit is not None and fault is not None:
                    await self._end_early(request, fault)
                    return resp
                await resp.write_eof()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError):
                _reset(request)  # upstream broke off mid-body: pass the failure on
            except ConnectionError:
                pass  # the client went away
            return resp

    async def _end_early(self, request: web.Request, fault: Fault) -> None:
        """Finish a response cut off by a reset, stall or truncate fault."""
        transport = request.transport
        for _ in range(500):  # let what was written reach the kernel before cutting the connection
            if transport is None or transport.is_closing() or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.002)
        if fault.kind == "stall":
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closing.wait(), fault.seconds)
            _reset(request)
        elif fault.kind == "truncate":
            if transport is not None:
                transport.close()
        else:
            _reset(request)

    async def _redirect(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        """Copy the resource into the blob store (once) and answer 307 to it; None if upstream did not answer 200."""
        m = re.search(r"/blobs/(sha256:[0-9a-f]{64})$", request.path)
        name = m.group(1) if m else "obj-" + hashlib.sha256(request.path.encode()).hexdigest()
        lock = self._fetch_locks.setdefault(name, asyncio.Lock())
        async with lock:
            if not self.blob_store.has(name):
                headers = self._upstream_headers(request, None)
                headers.popall("Range", None)
                headers.popall("If-Range", None)
                async with self._session.get(URL(self.upstream + request.raw_path, encoded=True), headers=headers,
                                             allow_redirects=False,
                                             skip_auto_headers=("User-Agent", "Accept-Encoding")) as upstream:
                    if upstream.status != 200:
                        return None
                    tmp = self.blob_store.path_for(name) + f".tmp{uuid.uuid4().hex}"
                    loop = asyncio.get_running_loop()
                    with open(tmp, "wb") as f:
                        async for chunk in upstream.content.iter_chunked(1 << 20):
                            await loop.run_in_executor(None, f.write, chunk)
                    self.blob_store.put_file(name, tmp)
        self.log.append(_seen(request, 307))
        return web.Response(status=307, headers={"Location": self.blob_store.url_for(name)})

    def close(self) -> None:
        super().close()
        self.blob_store.close()


def _reset(request: web.BaseRequest) -> None:
    """Abort the client connection with a TCP RST (SO_LINGER 0), not a FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)$")


def _shift_range_request(value: str, shift: int) -> str:
    m = _RANGE.match(value.strip())
    if not m or not m.group(1):
        return value  # suffix ranges and multi-ranges are left alone
    start, end = int(m.group(1)) + shift, m.group(2)
    return f"bytes={max(start, 0)}-{'' if not end else max(int(end) + shift, 0)}"


def _shift_content_range(value: str, shift: int) -> str:
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        return value
    return f"bytes {max(int(m.group(1)) + shift, 0)}-{max(int(m.group(2)) + shift, 0)}/{m.group(3)}"


__all__ = [
    "SETUP_HINT", "MissingTool", "start_or_fail", "require_tools", "unique_repo", "small_image", "skopeo_push",
    "RegistryServer", "LoopThread", "AioServer", "Seen", "TokenRequest", "TokenServer", "decode_jwt",
    "BlobStore", "FAULT_KINDS", "Fault", "FaultProxy",
]

