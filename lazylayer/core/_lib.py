"""Load the C extension and turn its status codes into exceptions.

There is no pure-Python fallback: a missing or broken extension is an
ImportError that says what to install, never a silently slow library.
"""

from __future__ import annotations

from typing import NoReturn

from .. import errors

try:
    from ._native import ffi, lib  # type: ignore[import-not-found]
except ImportError as exc:  # pragma: no cover - exercised by packaging, not tests
    raise ImportError(
        f"lazylayer's C extension (lazylayer.core._native) is not available: {exc}. "
        "It is compiled by `pip install .` from csrc/ and needs libzstd at run time "
        "(Debian/Ubuntu: apt-get install libzstd1; to build: libzstd-dev libxxhash-dev gcc). "
        "There is no pure-Python fallback."
    ) from exc

EXPECTED_VERSION = 100  # 0.1.0, as ll_version() encodes it
if lib.ll_version() != EXPECTED_VERSION:  # pragma: no cover
    raise ImportError(
        f"lazylayer.core._native is version {lib.ll_version()}, the Python package expects "
        f"{EXPECTED_VERSION}: rebuild it with `pip install .`"
    )

_CLASSES: dict[int, type[errors.LazyLayerError]] = {
    lib.LL_ERR_SEEKTABLE: errors.FormatError,
    lib.LL_ERR_NEED_MORE: errors.FormatError,
    lib.LL_ERR_LIMIT: errors.LimitError,
    lib.LL_ERR_FRAME: errors.CorruptFrameError,
    lib.LL_ERR_CHECKSUM: errors.ChecksumError,
    lib.LL_ERR_IO: errors.SourceError,
}


def strerror(code: int) -> str:
    return ffi.string(lib.ll_strerror(code)).decode()


def raise_status(code: int, context: str, cause: BaseException | None = None) -> NoReturn:
    """Raise the exception for a C status code, with what was being done."""
    if code == lib.LL_ERR_NOMEM:
        raise MemoryError(f"{context}: {strerror(code)}")
    if code == lib.LL_ERR_ARG:
        raise ValueError(f"{context}: {strerror(code)}")
    cls = _CLASSES.get(code, errors.NativeError)
    if cause is not None:
        raise cls(f"{context}: {strerror(code)}: {cause}") from cause
    raise cls(f"{context}: {strerror(code)}")


def check(code: int, context: str) -> None:
    if code != lib.LL_OK:
        raise_status(code, context)
