"""Byte ranges of blobs: HTTP(S) with lazylayer's own engine, anything else through fsspec.

- :mod:`.transport`: the :class:`Transport` (one event loop, pooled
  connections, retries, deadlines, mirrors), range planning
  (:func:`plan_requests`) and :func:`background` priority;
- :mod:`.blob`: :class:`HttpBlob`, :class:`FsspecBlob` and :func:`open_blob`,
  with every range checked against a digest when the caller knows it;
- :mod:`.readahead`: :class:`ReadAhead`, the one read-ahead policy (the
  blob stream, the prefetcher and ``lazylayer://`` files use it).

Nothing here knows about images: :mod:`lazylayer.oci` and
:mod:`lazylayer.registry` stand on it.
"""

from __future__ import annotations

from .blob import (
    Blob,
    FsspecBlob,
    HttpBlob,
    open_blob,
)
from .readahead import ReadAhead
from .transport import (
    NETWORK_ERRORS,
    Authorizer,
    Range,
    RemoteOptions,
    Retry,
    Transport,
    TransportStats,
    background,
    clean_url,
    default_transport,
    in_background,
    network_retry,
    plan_requests,
    sha256_of,
)

__all__ = [
    "Retry",
    "network_retry",
    "Authorizer",
    "Blob",
    "FsspecBlob",
    "HttpBlob",
    "NETWORK_ERRORS",
    "Range",
    "ReadAhead",
    "RemoteOptions",
    "Transport",
    "TransportStats",
    "background",
    "clean_url",
    "default_transport",
    "in_background",
    "open_blob",
    "plan_requests",
    "sha256_of",
]
