"""Image references (skopeo's transport syntax) and platforms.

- ``oci:DIR[:TAG]`` — an OCI image layout directory;
- ``docker-archive:FILE[:REPO:TAG]`` — a ``docker save`` tarball (read only);
- ``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`` — a registry (see :mod:`lazylayer.registry`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .. import errors
from .media import DIGEST


class ReferenceError(errors.LazyLayerError, ValueError):
    """An image reference that cannot be parsed or resolved."""


# ------------------------------------------------------------------ references


@dataclass(frozen=True)
class OciLayoutRef:
    path: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class DockerArchiveRef:
    path: str
    ref: str | None = None

    def __str__(self) -> str:
        return f"docker-archive:{self.path}" + (f":{self.ref}" if self.ref else "")


@dataclass(frozen=True)
class RegistryRef:
    """``docker://`` reference, with Docker Hub's defaults applied."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = f"docker://{self.registry}/{self.repository}"
        return s + (f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}")


ImageRef = OciLayoutRef | DockerArchiveRef | RegistryRef

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def parse_registry_reference(text: str) -> RegistryRef:
    """``HOST[:PORT]/REPO[:TAG|@DIGEST]`` (the ``docker://`` part already removed)."""
    name, digest = text, None
    if "@" in text:
        name, digest = text.split("@", 1)
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise ReferenceError(f"invalid tag {tag!r} in {text!r}")
    if digest is not None and not DIGEST.fullmatch(digest):
        raise ReferenceError(f"invalid digest {digest!r} in {text!r} (expected sha256:<64 hex>)")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repo = first, rest
    else:
        registry, repo = "docker.io", name
    if registry == "docker.io" and "/" not in repo:
        repo = "library/" + repo
    if not repo or not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", repo):
        raise ReferenceError(f"invalid repository {repo!r} in {text!r}")
    return RegistryRef(registry, repo, tag, digest)


def parse_reference(text: str) -> ImageRef:
    """Parse a skopeo-style image reference (``oci:``, ``docker-archive:``, ``docker://``).

    A bare ``HOST/REPO:TAG`` is taken as a registry reference.
    """
    if text.startswith("oci:"):
        rest = text[4:]
        path, _, tag = rest.partition(":")
        if not path:
            raise ReferenceError(f"{text!r}: oci: needs a directory")
        return OciLayoutRef(path, tag or None)
    if text.startswith("docker-archive:"):
        rest = text[len("docker-archive:"):]
        path, _, ref = rest.partition(":")
        if not path:
            raise ReferenceError(f"{text!r}: docker-archive: needs a file")
        return DockerArchiveRef(path, ref or None)
    if text.startswith("docker://"):
        return parse_registry_reference(text[len("docker://"):])
    if "://" in text or (":" in text.split("/", 1)[0] and "/" not in text):
        raise ReferenceError(f"{text!r}: unknown transport (use oci:DIR[:TAG], docker-archive:FILE "
                             "or docker://HOST/REPO[:TAG])")
    return parse_registry_reference(text)


def _same_name(name: str) -> tuple[str, str, str] | str:
    """A repo:tag in canonical form (docker.io/library/... defaults applied), for comparison."""
    try:
        r = parse_registry_reference(name)
    except ReferenceError:
        return name
    return (r.registry, r.repository, r.tag or "latest")


# ------------------------------------------------------------------ platforms

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64"}


def host_platform() -> str:
    """This machine as an OCI platform string: ``linux/amd64``, ``linux/arm64``, ``linux/arm/v7``..."""
    import platform as _platform

    machine = _platform.machine().lower()
    arch = _ARCH.get(machine, machine)
    if arch == "arm":
        return f"linux/arm/v{machine[4]}" if machine.startswith("armv") else "linux/arm"
    return f"linux/{arch}"


def parse_platform(text: str) -> dict[str, str]:
    """``OS/ARCH[/VARIANT]`` into an OCI platform object."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ReferenceError(f"invalid platform {text!r} (expected OS/ARCH[/VARIANT], e.g. linux/arm64)")
    out = {"os": parts[0], "architecture": _ARCH.get(parts[1], parts[1])}
    if len(parts) == 3:
        out["variant"] = parts[2]
    return out


def _platform_text(p: dict[str, Any] | None) -> str:
    if not p:
        return "?"
    return "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
