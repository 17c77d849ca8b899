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
