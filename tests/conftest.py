import os
import random

import pytest


@pytest.fixture(scope="session")
def corpus() -> bytes:
    """~6 MB of mixed, compressible and incompressible data (real files plus noise)."""
    rng = random.Random(1234)
    chunks = []
    total = 0
    for root in ("/usr/lib/python3", "/usr/share/doc", "/etc"):
        for dirpath, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path):
                        continue
                    with open(path, "rb") as f:
                        data = f.read(200_000)
                except OSError:
                    continue
                chunks.append(data)
                total += len(data)
                if rng.random() < 0.05:
                    chunks.append(rng.randbytes(rng.randrange(1, 50_000)))
                if total > 6_000_000:
                    return b"".join(chunks)
    chunks.append(rng.randbytes(6_000_000 - total if total < 6_000_000 else 1000))
    return b"".join(chunks)


# ------------------------------------------------------------------ real servers (see tests/servers.py)
#
# Registries are session-scoped and shared: every test pushes to its own
# repositories (servers.unique_repo()).  Factories (fault_proxy,
# mirror_registry) are function-scoped and close what they made.  A machine
# without docker-registry fails these tests with a hint to run scripts/setup.sh.

from collections.abc import Callable, Iterator  # noqa: E402

from servers import FaultProxy, RegistryServer, TokenServer, start_or_fail  # noqa: E402


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain docker-registry (no auth) for the whole session."""
    with start_or_fail(lambda: RegistryServer("plain", workdir=tmp_path_factory.mktemp("registry-plain"))) as r:
        yield r


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A docker-registry with HTTP Basic auth (htpasswd); credentials in ``.username``/``.password``."""
    with start_or_fail(lambda: RegistryServer("htpasswd", workdir=tmp_path_factory.mktemp("registry-basic"))) as r:
        yield r


@pytest.fixture(scope="session")
def shared_token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """The session's token-auth registry without the per-test reset (for module/session-scoped fixtures)."""
    ts = start_or_fail(lambda: TokenServer(workdir=str(tmp_path_factory.mktemp("token-server"))))
    try:
        with start_or_fail(lambda: RegistryServer("token", token_server=ts,
                                                  workdir=tmp_path_factory.mktemp("registry-token"))) as r:
            yield r
    finally:
        ts.close()


@pytest.fixture
def token_registry(shared_token_registry: RegistryServer) -> Iterator[RegistryServer]:
    """A docker-registry with token auth; ``.token_server`` is its TokenServer.

    The token server's knobs (users, expires_in, jwt_lifetime, signing_header)
    are reset and its ``requests`` cleared before and after each test, so a
    test sees only its own token requests and may change knobs freely.
    """
    assert shared_token_registry.token_server is not None
    shared_token_registry.token_server.reset()
    yield shared_token_registry
    shared_token_registry.token_server.reset()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str], FaultProxy]]:
    """Factory: ``fault_proxy(upstream_url) -> FaultProxy``; every proxy made is closed after the test."""
    made: list[FaultProxy] = []

    def make(upstream_url: str) -> FaultProxy:
        proxy = start_or_fail(lambda: FaultProxy(upstream_url))
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def mirror_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RegistryServer]]:
    """Factory: ``mirror_registry(upstream_url, remote_credentials=None) -> RegistryServer``.

    A docker-registry in proxy (pull-through cache) mode in front of
    ``upstream_url``; closed after the test.
    """
    made: list[RegistryServer] = []

    def make(upstream_url: str, remote_credentials: tuple[str, str] | None = None) -> RegistryServer:
        mirror = start_or_fail(lambda: RegistryServer("proxy", remote_url=upstream_url,
                                                      remote_credentials=remote_credentials,
                                                      workdir=tmp_path_factory.mktemp("registry-mirror")))
        made.append(mirror)
        return mirror

    yield make
    for mirror in made:
        mirror.close()
