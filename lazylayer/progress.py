"""A one-line progress bar for long work, on stderr when it is a terminal, silent otherwise.

Never on stdout: scripts parse it (``--json``).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time

from .units import human_size


class Progress:
    """A one-line progress bar on stderr when it is a terminal; silent otherwise.

    ``total``: the bytes expected (None: unknown, no bar, just a count).
    ``label``: what is happening, e.g. ``fetching layer sha256:abcd… (not lazy)``;
    it may be changed while the bar runs.  ``enabled``: None draws when stderr is
    a terminal.  Thread-safe: any thread may :meth:`update`.
    """

    def __init__(self, total: int | None, label: str, enabled: bool | None = None) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.enabled = _is_tty() if enabled is None else enabled
        self._last = 0.0
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._drawn = False

    @property
    def seconds(self) -> float:
        """Time since the bar was made."""
        return time.monotonic() - self._start

    def update(self, n: int) -> None:
        """Count n more bytes done; safe from several threads."""
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self.enabled and now - self._last > 0.1:
                self._last = now
                self._draw(now)

    def set_label(self, label: str) -> None:
        """Say what is happening now (redrawn at once)."""
        with self._lock:
            self.label = label
            if self.enabled:
                self._draw(time.monotonic())

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = f" {human_size(self.done / elapsed, si=True)}/s"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        if self.total:
            frac = min(1.0, self.done / self.total)
            pct, total = f" {frac:4.0%}", f" of {human_size(self.total, si=True)}"
            eta = f", {elapsed * (1 - frac) / frac:.0f} s left" if 0 < frac < 1 and elapsed > 2 else ""
            bar = " [" + ("#" * int(frac * 20)).ljust(20) + "]"
            # what does not fit goes: the bar first, then the time left, then the total
            for parts in ((bar, pct, total, rate, eta), (pct, total, rate, eta), (pct, total, rate), (pct, rate)):
                tail = "".join(parts)
                if len(self.label) + len(tail) <= width:
                    break
        else:
            tail = f" {human_size(self.done, si=True)}{rate}"
        line = self.label[:max(width - len(tail), 0)] + tail
        sys.stderr.write("\r" + line[:max(width, 1)] + "\033[K")
        sys.stderr.flush()
        self._drawn = True

    def close(self) -> None:
        """Draw the final state and end the line (if anything was drawn)."""
        with self._lock:
            if self.enabled and (self._drawn or self.done):
                self._draw(time.monotonic())
                sys.stderr.write("\n")
                sys.stderr.flush()
            self.enabled = False


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False
