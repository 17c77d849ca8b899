"""Read-ahead: when a reader is sequential, and how far ahead of it to fetch.

One policy for every place that reads ahead (docs/filesystem.md, "Read-ahead"):
the remote stream (:meth:`lazylayer.remote.HttpBlob.open`, in parts), the
prefetcher (:class:`lazylayer.prefetch.Prefetcher`, in frames of a layer) and
the fsspec file object (:class:`lazylayer.fs.ImageFile`, in bytes of a file).
Each tells it about its reads in its own unit and decides itself *what* the
window it gets back means (parts to request, frames to queue, bytes to read
into a buffer).
"""

from __future__ import annotations

from typing import Callable

__all__ = ["ReadAhead"]


class ReadAhead:
    """Detects sequential runs of reads and sizes the window to fetch ahead of them.

    Positions are in the caller's unit.  Tell it about every read that goes
    to the source with :meth:`read` (``start``, ``end``: the half-open range
    read); it answers with the range to fetch ahead now, or None.

    - A read is **sequential** when it starts where the previous one ended,
      or anywhere up to the end of what was fetched ahead (plus ``gap``
      units): a reader that skips over data it already has is still
      sequential.  Any other read is a **seek**: the run and the window
      start over, and nothing fetched ahead counts any more.
    - After ``after`` sequential reads in a row the window is ``minimum``; it
      doubles with every further sequential read, up to ``maximum`` (a
      number, or a callable read at every step, for a bound measured as the
      reads go: the prefetcher's bandwidth-delay product).
    - The window is topped up (the range from the end of what was fetched
      ahead to ``end + window``) once no more than ``refill`` x window is
      still ahead of the reader: 1 tops it up at every read, 0.5 once half
      of it has been read.
    """

    def __init__(self, minimum: int, maximum: int | Callable[[], int], *, after: int = 1, gap: int = 0,
                 refill: float = 1.0) -> None:
        if minimum < 1 or after < 0 or gap < 0 or not 0 <= refill <= 1:
            raise ValueError("ReadAhead needs minimum >= 1, after >= 0, gap >= 0 and 0 <= refill <= 1")
        self.minimum = minimum
        self._maximum = maximum
        self.after = after
        self.gap = gap
        self.refill = refill
        self.steps = 0
        """Sequential reads in a row (0: the last read was a seek, or the first)."""
        self.window = 0
        """The window of the last read (0: no read-ahead)."""
        self.end: int | None = None
        """Where the last read ended."""
        self.ahead = 0
        """The end of what was fetched ahead (never before ``end`` after a seek)."""

    @property
    def maximum(self) -> int:
        m = self._maximum
        return max(0, int(m() if callable(m) else m))

    def sequential(self, start: int) -> bool:
        """Would a read at ``start`` continue the run?"""
        return self.end is not None and self.end <= start <= max(self.end, self.ahead) + self.gap

    def read(self, start: int, end: int) -> tuple[int, int] | None:
        """Record a read of ``[start, end)``; the range ``(lo, hi)`` to fetch ahead now, or None."""
        if self.sequential(start):
            self.steps += 1
        else:
            self.steps = 0
            self.ahead = end
        self.end = end
        if self.steps < self.after:
            self.window = 0
            return None
        self.window = min(self.maximum, self.minimum << min(self.steps - self.after, 62))
        lo, hi = max(end, self.ahead), end + self.window
        if lo >= hi or lo - end > self.window * self.refill:
            return None
        self.ahead = hi
        return lo, hi

    def reset(self) -> None:
        """Forget the run (the next read is a seek)."""
        self.steps = self.window = self.ahead = 0
        self.end = None

    def __repr__(self) -> str:
        return (f"ReadAhead(steps={self.steps}, window={self.window}, end={self.end}, ahead={self.ahead}, "
                f"minimum={self.minimum}, maximum={self.maximum})")
