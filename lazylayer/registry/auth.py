"""Registry credentials, authentication challenges and the token cache.

Registries answer an unauthenticated request with ``401`` and a
``WWW-Authenticate`` challenge: ``Basic realm=...`` (send the username and
password on every request) or ``Bearer realm=...,service=...,scope=...`` (ask
the realm for a token, with the credentials if there are any, and send the
token).  This module holds what that flow needs that is not HTTP:

- :class:`Credentials`, whose ``repr`` never shows the secret;
- :func:`find_credentials`: the same places skopeo, podman and docker look
  (``REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
  ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``), including
  ``credHelpers``/``credsStore`` programs (``docker-credential-NAME get``);
- :func:`parse_challenges` for ``WWW-Authenticate``;
- :class:`TokenCache`: bearer tokens kept until shortly before their own
  expiry (cachetools' TLRUCache, a TTL cache whose time to live is per item:
  each token says how long it lives).

The HTTP side of the flow is :class:`lazylayer.registry.RegistryAuth`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cachetools import TLRUCache

from .. import errors

DOCKER_HUB = "docker.io"
_DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    """A username and a password (or a registry identity/refresh token).

    ``str``/``repr`` show the username only, so credentials can be logged or
    end up in a traceback without leaking the secret.
    """

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """``USER[:PASSWORD]`` as skopeo's ``--creds`` takes it."""
        user, _, password = text.partition(":")
        if not user:
            raise ValueError("credentials must look like USER[:PASSWORD]")
        return cls(user, password)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __str__(self) -> str:
        return f"{self.username or '<identity token>'}:***"


def _registry_key(key: str) -> str:
    """An auth file key (``https://host/v1/``, ``host``, ``host/repo``) reduced to the host."""
    host = re.sub(r"^[a-z]+://", "", key.strip()).split("/", 1)[0]
    return DOCKER_HUB if host in _DOCKER_HUB_HOSTS else host


def auth_files() -> list[str]:
    """The auth files searched, in order (the first with an entry for a host wins)."""
    out = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        out.append(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    out.append(os.path.join(os.path.expanduser("~"), ".config", "containers", "auth.json"))
    docker = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    out.append(os.path.join(docker, "config.json"))
    return out


def _load(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = f.read(4 << 20)
    except OSError:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        raise errors.FormatError(f"auth file {path} is not valid JSON") from None
    return doc if isinstance(doc, dict) else None


def find_credentials(registry: str, files: list[str] | None = None) -> Credentials | None:
    """Credentials for ``registry`` (a host, ``docker.io`` for Docker Hub) from auth files.

    ``files`` defaults to :func:`auth_files`.  Entries are ``auths`` (base64
    ``auth`` or ``username``/``password``, and ``identitytoken``), then
    ``credHelpers`` for that host, then ``credsStore``.
    """
    want = _registry_key(registry)
    for path in files if files is not None else auth_files():
        doc = _load(path)
        if doc is None:
            continue
        for key, entry in (doc.get("auths") or {}).items():
            if _registry_key(key) != want or not isinstance(entry, dict):
                continue
            creds = _from_entry(entry, path)
            if creds is not None:
                return creds
        helpers = doc.get("credHelpers") or {}
        helper = next((h for k, h in helpers.items() if _registry_key(k) == want), None) \
            or doc.get("credsStore")
        if isinstance(helper, str) and helper:
            creds = _from_helper(helper, registry)
            if creds is not None:
                return creds
    return None


def _from_entry(entry: dict[str, Any], path: str) -> Credentials | None:
    token = entry.get("identitytoken") or ""
    if entry.get("auth"):
        try:
            raw = base64.b64decode(entry["auth"], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise errors.FormatError(f"auth file {path}: an 'auth' entry is not base64 of USER:PASSWORD") from None
        user, _, password = raw.partition(":")
        return Credentials(user, password, token)
    if entry.get("username") or token:
        return Credentials(entry.get("username") or "", entry.get("password") or "", token)
    return None


def _from_helper(helper: str, registry: str) -> Credentials | None:
    """Ask ``docker-credential-HELPER get`` (the docker credential helper protocol)."""
    exe = shutil.which(f"docker-credential-{helper}")
    if exe is None:
        return None
    server = "https://index.docker.io/v1/" if _registry_key(registry) == DOCKER_HUB else registry
    try:
        out = subprocess.run([exe, "get"], input=server.encode(), capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None  # "credentials not found" is a normal answer
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        raise errors.AuthError(f"docker-credential-{helper} printed something that is not JSON") from None
    user, secret = doc.get("Username") or "", doc.get("Secret") or ""
    if user == "<token>":
        return Credentials("", "", secret)
    return Credentials(user, secret)


# ------------------------------------------------------------------ challenges

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: its scheme (lower case) and parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` (``Bearer realm="...",service="...",scope="..."``, ``Basic realm=...``)."""
    out: list[Challenge] = []
    rest = header.strip()
    while rest:
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if not m:
            break
        scheme, rest = m.group(1).lower(), rest[m.end():]
        params: dict[str, str] = {}
        while True:
            p = _PARAM.match(rest)
            if not p or (p.group(2) is None and p.group(3) is None):
                break
            params[p.group(1).lower()] = p.group(2).replace('\\"', '"') if p.group(2) is not None else p.group(3)
            rest = rest[p.end():]
        out.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return out


# ------------------------------------------------------------------ tokens


@dataclass(frozen=True)
class Token:
    """A bearer token and when it stops being used (monotonic seconds)."""

    value: str = field(repr=False)
    expires: float


def parse_token_response(body: bytes, now: float | None = None) -> Token:
    """The JSON a token realm returns: ``token`` or ``access_token``, ``expires_in`` (default 60 s)."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise errors.AuthError("the token server's answer is not JSON") from None
    if not isinstance(doc, dict):
        raise errors.AuthError("the token server's answer is not a JSON object")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise errors.AuthError("the token server's answer has no token")
    try:
        lifetime = float(doc.get("expires_in") or 60)
    except (TypeError, ValueError):
        lifetime = 60.0
    lifetime = max(lifetime, 1.0)
    now = time.monotonic() if now is None else now
    # Stop using a token a little before it expires, so it does not expire in flight.
    return Token(value, now + lifetime - min(10.0, lifetime * 0.1))


class TokenCache:
    """Bearer tokens by (realm, service, scope, user), each kept until its own expiry.

    Thread safe.  ``drop`` forgets a token the registry refused (401/403), so
    the next request fetches a fresh one.
    """

    def __init__(self, maxsize: int = 1024) -> None:
        self._cache: TLRUCache = TLRUCache(maxsize=maxsize, ttu=lambda _k, tok, _now: tok.expires,
                                           timer=time.monotonic)
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...]) -> Token | None:
        with self._lock:
            return self._cache.get(key)

    def put(self, key: tuple[str, ...], token: Token) -> None:
        with self._lock:
            self._cache[key] = token

    def drop(self, key: tuple[str, ...]) -> None:
        with self._lock:
            self._cache.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire()
            return len(self._cache)
