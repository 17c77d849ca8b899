"""Exceptions raised by lazylayer.

Every error lazylayer raises on purpose derives from :class:`LazyLayerError`.
Errors about the data itself derive from :class:`IntegrityError` too, so a
caller can tell "these bytes are bad" (never serve them; EIO through FUSE) from
"the source could not be read" (maybe retry).
"""

from __future__ import annotations


class LazyLayerError(Exception):
    """Base class of lazylayer's errors."""


class IntegrityError(LazyLayerError):
    """The data is malformed or corrupt: it must not be used."""


class FormatError(IntegrityError, ValueError):
    """A seek table (or other structure) is missing or malformed."""


class LimitError(FormatError):
    """The input is well formed but exceeds a format limit or a configured one."""


class CorruptFrameError(IntegrityError):
    """A compressed frame does not decode, or decodes to the wrong size."""


class ChecksumError(CorruptFrameError):
    """A frame decoded, but its checksum does not match the seek table."""


class SourceError(LazyLayerError, OSError):
    """The source of compressed bytes (file, callback, network) failed."""


class NativeError(LazyLayerError):
    """The C library reported an error that has no more specific class."""


class RemoteError(SourceError):
    """A remote source (registry, HTTP server, object store) failed or refused.

    ``status`` is the HTTP status when there was one; ``url`` is the address
    without its query string (which may carry a signature).  Messages never
    contain credentials or tokens.
    """

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class AuthError(RemoteError):
    """The registry refused the credentials (or their absence): 401 or 403 after a fresh token."""


class NotFoundError(RemoteError):
    """The manifest, tag, repository or blob does not exist (404)."""


class RemoteTimeoutError(RemoteError, TimeoutError):
    """A remote read did not complete before its deadline (stalls, endless retries)."""


class MountError(LazyLayerError):
    """A mount could not be made, found or removed (``lazylayer.mount.MountError``)."""
