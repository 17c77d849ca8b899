"""Record what a workload reads through an :class:`~lazylayer.image.Image`, as a :class:`~.plan.Plan`."""

from __future__ import annotations

import bisect
import threading
from typing import TYPE_CHECKING, Sequence

from .plan import LayerPlan, Plan, _now

if TYPE_CHECKING:
    from ..image import Image

# ---------------------------------------------------------------- recording


class Recorder:
    """Collects the reads of an image's files, in order, and turns them into a :class:`Plan`.

    :meth:`read` is called with the layer index and the tar range of every
    read (the :class:`~lazylayer.image.Image` does so while ``image.recorder``
    is set); a read that continues the layer's last range extends it.  Safe to
    call from many threads.  At most ``max_ranges`` ranges are kept (later
    reads are counted in ``dropped``), so recording a long run stays bounded.
    """

    def __init__(self, image: Image, *, max_ranges: int = 1_000_000) -> None:
        self.image = image
        self.max_ranges = max_ranges
        self._ranges: list[list[list[int]]] = [[] for _ in image.layers]
        self._count = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def read(self, layer: int, offset: int, size: int) -> None:
        if size <= 0:
            return
        with self._lock:
            ranges = self._ranges[layer]
            if ranges:
                last = ranges[-1]
                if last[0] <= offset <= last[0] + last[1]:
                    last[1] = max(last[1], offset + size - last[0])
                    return
            if self._count >= self.max_ranges:
                self.dropped += 1
                return
            ranges.append([offset, size])
            self._count += 1

    def plan(self, workload: str = "") -> Plan:
        """The plan so far: per layer, the ranges in first-read order (ranges read before are dropped)."""
        layers = []
        with self._lock:
            snapshot = [[(r[0], r[1]) for r in rs] for rs in self._ranges]
        for layer, ranges in zip(self.image.layers, snapshot):
            if ranges:
                layers.append(LayerPlan(layer.digest, layer.diff_id, _first_reads(ranges)))
        return Plan(layers, image=self.image.digest, workload=workload, created=_now())


def _first_reads(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` without the parts an earlier range covered (order kept)."""
    starts: list[int] = []  # the union so far: sorted, disjoint [start, end) intervals
    ends: list[int] = []
    out: list[tuple[int, int]] = []
    for off, n in ranges:
        end = off + n
        pos = off
        i = max(0, bisect.bisect_right(starts, off) - 1)
        while pos < end:
            while i < len(starts) and ends[i] <= pos:
                i += 1
            if i == len(starts) or starts[i] >= end:
                out.append((pos, end - pos))
                break
            if starts[i] > pos:
                out.append((pos, starts[i] - pos))
            pos = ends[i]
            i += 1
        lo = bisect.bisect_left(ends, off)
        hi = bisect.bisect_right(starts, end)
        if lo < hi:
            off, end = min(off, starts[lo]), max(end, ends[hi - 1])
        starts[lo:hi] = [off]
        ends[lo:hi] = [end]
    return out
