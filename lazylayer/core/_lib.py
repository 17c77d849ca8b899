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

# The version is written once, in csrc/lazylayer.h; the cdef carries its
# LL_VERSION_* defines, and ll_version() is what the compiled library says.
try:
    _HEADER_VERSION = lib.LL_VERSION_MAJOR * 10000 + lib.LL_VERSION_MINOR * 100 + lib.LL_VERSION_PATCH
    _check_zstd = lib.ll_check_zstd
except AttributeError as exc:  # pragma: no cover - an extension built from older sources
    raise ImportError(f"lazylayer.core._native is out of date ({exc}): rebuild it with `pip install .`") from exc
if lib.ll_version() != _HEADER_VERSION:  # pragma: no cover
    raise ImportError(
        f"lazylayer.core._native reports version {lib.ll_version()}, its header says "
        f"{_HEADER_VERSION}: rebuild it with `pip install .`"
    )
VERSION = f"{lib.LL_VERSION_MAJOR}.{lib.LL_VERSION_MINOR}.{lib.LL_VERSION_PATCH}"
"""lazylayer's version ("M.m.p"), as csrc/lazylayer.h had it when the extension was built."""


def _zstd_check() -> str:
    """ll_check_zstd(): the libzstd under the extension is one it can use, else ImportError."""
    msg = ffi.new("char[]", 512)
    rc = _check_zstd(msg, len(msg))
    detail = ffi.string(msg).decode(errors="replace")
    if rc != lib.LL_OK:
        raise ImportError(
            f"lazylayer.core._native cannot use the libzstd loaded at run time: {detail}. "
            f"({ffi.string(lib.ll_strerror(rc)).decode()}; rebuild lazylayer with `pip install .` "
            "against the libzstd you run with, or run with the one it was built against.)"
        )
    return detail


ZSTD = _zstd_check()
"""What ll_check_zstd() found, e.g. "libzstd 1.5.4 (built with 1.5.4)"."""

_CLASSES: dict[int, type[errors.LazyLayerError]] = {
    lib.LL_ERR_SEEKTABLE: errors.FormatError,
    lib.LL_ERR_NEED_MORE: errors.FormatError,
    lib.LL_ERR_LIMIT: errors.LimitError,
    lib.LL_ERR_FRAME: errors.CorruptFrameError,
    lib.LL_ERR_CHECKSUM: errors.ChecksumError,
    lib.LL_ERR_IO: errors.SourceError,
    lib.LL_ERR_ZSTD: errors.NativeError,  # only from ll_check_zstd, which import turns into ImportError
    lib.LL_ERR_FORMAT: errors.FormatError,
    lib.LL_ERR_DIGEST: errors.IntegrityError,
    lib.LL_ERR_CACHE: errors.NativeError,  # the image layer turns it into CacheError with the path
}

# The other way, for the read and write callbacks (ll_read_fn: a status from
# LL_ERR_NOMEM down reaches the C caller unchanged): a lazylayer data error
# raised by Python code becomes its own status, anything else LL_ERR_IO.  Most
# specific class first.
_STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (errors.ChecksumError, lib.LL_ERR_CHECKSUM),
    (errors.CorruptFrameError, lib.LL_ERR_FRAME),
    (errors.LimitError, lib.LL_ERR_LIMIT),
    (errors.FormatError, lib.LL_ERR_SEEKTABLE),
    (errors.IntegrityError, lib.LL_ERR_DIGEST),
)


def callback_status(exc: BaseException) -> int:
    """The status a read or write callback returns to C when it failed with ``exc``."""
    for cls, code in _STATUSES:
        if isinstance(exc, cls):
            return code
    return lib.LL_ERR_IO


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
