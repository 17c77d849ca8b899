import inspect
import os
import random
import re

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


# ------------------------------------------------------------------ markers (pyproject.toml registers them)
#
# Set here from what a test uses, so no test file has to remember them; the
# fast part of the suite alone is
#     pytest -m "not registry and not fuse and not sanitizers and not slow"
# (docs/testing.md).  `root` is informational: as root (CI, scripts/setup.sh)
# those tests run; elsewhere their own skipif skips them.

#: fixtures that start docker-registry (or stand in front of one)
REGISTRY_FIXTURES = {"registry", "basic_registry", "shared_token_registry", "token_registry", "fault_proxy",
                     "mirror_registry"}
#: whole files, by what they are about (test_packaging.py marks itself `slow`)
FILE_MARKS = {
    "test_c_sanitizers.py": ("sanitizers",),
    "test_mount.py": ("fuse", "root"),  # chroot and umoci unpack as root; skipped without /dev/fuse
}


def _skip_reasons(item: pytest.Item) -> str:
    return " ".join(str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))


def _starts_a_registry(item: pytest.Item) -> bool:
    """A test body that starts its own ``RegistryServer(...)`` (no fixture to see it by)."""
    try:
        return "RegistryServer(" in inspect.getsource(item.function)  # type: ignore[attr-defined]
    except (AttributeError, OSError, TypeError):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(FILE_MARKS.get(item.path.name, ()))
        if REGISTRY_FIXTURES & set(getattr(item, "fixturenames", ())) or _starts_a_registry(item):
            names.add("registry")
        reasons = _skip_reasons(item)
        if "/dev/fuse" in reasons:  # test_mount's pytestmark, test_prefetch's needs_fuse
            names.add("fuse")
        if re.search(r"\broot\b", reasons):  # skipif(os.geteuid() != 0, reason="needs root ...")
            names.add("root")
        for name in sorted(names):
            item.add_marker(name)


@pytest.fixture
def pair(tmp_path):
    """A Python DiskCache and a C ll_diskcache (tests/test_c_diskcache.py's CDisk) on one directory."""
    from lazylayer.image.cache import DiskCache

    from .test_c_diskcache import CDisk

    py = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    c = CDisk(tmp_path / "cache")
    yield py, c
    c.close()
