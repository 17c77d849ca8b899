"""A one-line progress bar for long work, on stderr when it is a terminal, silent otherwise."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    """A one-line progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total: int | None, label: str, enabled: bool | None = None) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        """Count n more bytes done; safe from several threads."""
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self.enabled and now - self._last > 0.1:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-9) / 1e6
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac:6.1%} {rate:7.1f} MB/s")
        else:
            sys.stderr.write(f"\r{self.label} {self.done / 1e6:10.1f} MB {rate:7.1f} MB/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
