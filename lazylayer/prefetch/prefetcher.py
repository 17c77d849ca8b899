"""The :class:`Prefetcher`: fetches an image's frames into its disk cache ahead of the reads that need them.

- the plan's frames, in plan order, in requests of up to ``request_bytes`` of
  adjacent frames, ``workers`` at a time;
- *read-ahead*: a frame a read missed gets the ``neighbours`` frames after
  it fetched too, and a layer read frame after frame a window that doubles
  with every sequential step up to ``max(32 MiB, 8 x the measured
  bandwidth-delay product)``, as :class:`lazylayer.remote.ReadAhead` decides
  (docs/filesystem.md, "Read-ahead"), except in a layer of small frames
  (eStargz, zstd:chunked chunks not read as runs), whose window stays at its
  first size; the newest window is fetched first;
- optionally the rest of the image (*fill*), at a rate limit if asked.

Everything it fetches goes to the disk cache, checked against the TOC's sha256
like any other frame.  It runs at background priority (:func:`lazylayer.remote.background`):
its requests take connections of their own, so an on-demand read never queues
behind them; a read that needs a frame the prefetcher is fetching right now
waits for that frame (the disk cache's single-flight lock) rather than fetching
it twice.  A prefetch failure is logged and left to the on-demand read, which
retries and raises as usual: prefetch never makes a read fail."""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .. import remote
from ..format import LAYER_FRAME_SIZE, frame_column
from .plan import Plan

if TYPE_CHECKING:
    from ..image import Image

log = logging.getLogger("lazylayer")

# Queue priorities: smaller is served first.
_READAHEAD, _PLAN, _FILL = 0, 1, 2


# ---------------------------------------------------------------- fetching


def _mean(ends: list[int]) -> int:
    """The mean frame size of a layer whose frames' cumulative sizes are ``ends`` (at least 1)."""
    return max(1, ends[-1] // len(ends)) if ends else 1


class Prefetcher:
    """Fetches an image's frames into its disk cache ahead of the reads that need them.

    ``workers``: requests in flight at once (at most the transport's
    ``background_connections`` are used).  ``request_bytes``: most bytes of
    adjacent frames fetched by one request.  ``budget``: most bytes it fetches
    in all (default: half the disk cache's limit, so prefetch cannot evict
    what it fetched).  ``neighbours``: with read-ahead on, frames fetched after
    any frame a read missed, sequential or not (4, about 2.4 MB of a layer's
    2 MiB frames: SOCI fetches 4 MiB spans; 0: read-ahead only for sequential
    reads).  Counters: ``frames``, ``bytes``, ``errors``.
    """

    def __init__(self, image: Image, *, workers: int = 8, request_bytes: int = 4 << 20,
                 budget: int | None = None, readahead: bool = True, neighbours: int = 4) -> None:
        if image.disk is None:
            raise ValueError("prefetch needs a disk cache to fetch into")
        self.image = image
        self.disk = image.disk
        self.workers = max(1, workers)
        self.request_bytes = request_bytes
        self.budget = budget if budget is not None else self.disk.max_bytes // 2
        self.readahead_enabled = readahead
        # (priority, order, seq, layer, frames): read-ahead newest window first (order = -window's
        # number: the reader has moved on from an older one), its requests in order (seq); plans and
        # fill first come, first served (order 0)
        self._heap: list[tuple[int, int, int, int, tuple[int, ...]]] = []
        self._windows = itertools.count(1)
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._queued: list[bytearray] = [bytearray(len(layer.toc.frames)) for layer in image.layers]
        # Read-ahead, per layer, in frames: `neighbours` frames' worth of bytes after any read that
        # missed (a program's next files are mostly the tar's next ones), doubling with every
        # sequential read up to max_window() bytes' worth; the frames ahead are topped up once half
        # the window is read.  With neighbours=0: 2 frames once two reads in a row were sequential.
        self.neighbours = max(0, neighbours)
        # ReadAhead counts frames of the layer's mean size; where frames differ in size (an eStargz
        # layer's chunks: files of a few bytes to 4 MiB) a window is cut to those bytes (see _readahead).
        self._ends = [list(itertools.accumulate(frame_column(layer.toc.frames, "size"))) for layer in image.layers]
        # A layer of small frames (mean under LAYER_FRAME_SIZE / 4: an eStargz layer's files, a
        # zstd:chunked layer's chunks) keeps its window at the neighbours' bytes: a program that
        # reads some files of a directory does not read the next 32 MiB of it, and every frame
        # fetched ahead is a file of the disk cache to write (~150 us of this machine's kernel
        # time each: thousands of them cost more than the misses they save; docs/benchmarks.md).
        self._ra = [self._read_ahead(layer.toc.frames, ends) for layer, ends in zip(image.layers, self._ends)]
        self._ra_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._active = 0
        self._pending_plan = 0
        self._closed = False
        self._fill_rate: float | None = None
        self._fill_next = 0.0
        self._planned = 0     # bytes queued in all, against the budget
        self._over_budget = False
        self.frames = 0
        self.bytes = 0
        self.errors = 0
        self.plan_frames = 0
        self.plan: Plan | None = None     # the plan started (the erofs backend fills its data file in its order)
        self.plan_done = threading.Event()
        self.plan_done.set()
        # bandwidth-delay estimate, from background fetches
        self._rtt = 0.05
        self._rate = 50e6
        self._started = time.monotonic()

    # -- what to fetch

    def start_plan(self, plan: Plan) -> int:
        """Queue ``plan``'s frames, in plan order; returns how many frames (not on disk yet) it queued."""
        self.plan = plan
        total = 0
        for layer in self.image.layers:
            lp = plan.for_layer(layer.digest, layer.diff_id)
            if lp is None or layer.source.disk is None:
                continue
            frames = _frames_of(layer.toc.frames, lp.ranges)
            total += self._enqueue(_PLAN, layer.index, frames)
        self.plan_frames += total
        log.info("%s: prefetching %d frames of the plan", self.image.reference, total)
        return total

    def start_fill(self, rate: float | None = None) -> int:
        """Queue every frame of every layer, after anything else, at ``rate`` bytes/s at most (None: any)."""
        self._fill_rate = rate
        total = 0
        for layer in self.image.layers:
            if layer.source.disk is not None:
                total += self._enqueue(_FILL, layer.index, range(len(layer.toc.frames)))
        return total

    def on_read(self, layer: int, first: int, last: int) -> None:
        """Tell the prefetcher a read needed frames ``first..last`` of ``layer`` (read-ahead's input).
        Reads made as background work (:func:`lazylayer.remote.background`: the erofs backend filling
        its data file ahead, in a plan's order) are not a reader to follow, and are ignored."""
        if not self.readahead_enabled or self._closed or remote.in_background():
            return
        with self._ra_lock:
            self._readahead(layer, first, last)

    def reads_ahead(self, layer: int) -> bool:
        """True if sequential reads of layer ``layer`` get read-ahead here (a front end need not add its own)."""
        return self.readahead_enabled and not self._closed and self.image.layers[layer].lazy

    def _readahead(self, layer: int, first: int, last: int) -> None:
        ahead = self._ra[layer].read(first, last + 1)  # gap=1: a frame served from memory in between
        if ahead is not None:
            lo, hi = ahead
            ends = self._ends[layer]
            hi = min(hi, len(ends))
            if lo < hi:  # at most the bytes of hi - lo mean frames (and one frame's slack, so that a layer of
                # equal frames, whose last is short, keeps its whole count): one big file is not a window of them
                before = ends[lo - 1] if lo else 0
                budget = (hi - lo) * _mean(ends) + LAYER_FRAME_SIZE
                hi = max(lo + 1, min(hi, bisect.bisect_right(ends, before + budget, lo, hi)))
            self._enqueue(_READAHEAD, layer, range(lo, hi))

    def _read_ahead(self, frames: Sequence[Any], ends: list[int]) -> remote.ReadAhead:
        """A layer's read-ahead: the neighbours' frames at first, growing to max_window() (not in a
        layer of small frames)."""
        first = self._neighbour_frames(ends) or 2
        most = first if _mean(ends) < LAYER_FRAME_SIZE // 4 else self._frames_in(frames)
        return remote.ReadAhead(first, most, after=0 if self.neighbours else 2, gap=1, refill=0.5)

    def _neighbour_frames(self, ends: list[int]) -> int:
        """``neighbours`` frames of a lazy layer's size (2 MiB), in this layer's mean frame (``ends``:
        its frames' cumulative sizes): 4 frames of a lazy layer, a few hundred of an eStargz layer,
        whose frames are its files' chunks."""
        if not self.neighbours:
            return 0
        return max(self.neighbours, self.neighbours * LAYER_FRAME_SIZE // _mean(ends))

    def _frames_in(self, frames: Sequence[Any]) -> Callable[[], int]:
        """The read-ahead maximum of a layer, in frames: max_window() bytes of its mean frame (at least 2)."""
        mean = max(1, sum(frame_column(frames, "compressed_size")) // max(1, len(frames)))
        return lambda: max(2, self.max_window() // mean)

    def max_window(self) -> int:
        """Most bytes read-ahead keeps ahead of a sequential reader: max(32 MiB, 8 x bandwidth x delay)."""
        return int(min(256 << 20, max(32 << 20, 8 * self._rate * self._rtt)))

    def _enqueue(self, priority: int, layer: int, frames: Iterable[int]) -> int:
        """Queue ``frames`` (in order) as requests of adjacent frames; returns how many were new."""
        queued = self._queued[layer]
        src = self.image.layers[layer].source
        toc_frames = self.image.layers[layer].toc.frames
        items: list[tuple[int, ...]] = []
        run: list[int] = []
        run_bytes = 0
        count = 0
        for i in frames:
            if queued[i]:
                continue
            f = toc_frames[i]
            if self._planned + f.compressed_size > self.budget:
                if not self._over_budget:
                    self._over_budget = True
                    log.warning("%s: prefetch stops at its budget of %d MB (half the disk cache; raise "
                                "LAZYLAYER_CACHE_MAX to prefetch more)", self.image.reference, self.budget >> 20)
                break
            queued[i] = 1
            if src.disk is not None and src.disk.has("sha256:" + f.sha256):
                continue
            self._planned += f.compressed_size
            count += 1
            if run and (i != run[-1] + 1 or run_bytes + f.compressed_size > self.request_bytes):
                items.append(tuple(run))
                run, run_bytes = [], 0
            run.append(i)
            run_bytes += f.compressed_size
        if run:
            items.append(tuple(run))
        if items:
            with self._cv:
                if self._closed:
                    return 0
                order = -next(self._windows) if priority == _READAHEAD else 0
                for item in items:
                    heapq.heappush(self._heap, (priority, order, next(self._seq), layer, item))
                if priority == _PLAN:
                    self._pending_plan += len(items)
                    self.plan_done.clear()
                self._start_threads()
                self._cv.notify(len(items))
        return count

    # -- the workers

    def _start_threads(self) -> None:
        want = min(self.workers, len(self._heap) + self._active)
        while len(self._threads) < want:
            t = threading.Thread(target=self._work, name=f"lazylayer-prefetch-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                priority, _, _, layer, item = heapq.heappop(self._heap)
                self._active += 1
            try:
                if priority == _FILL and self._fill_rate:
                    self._throttle(sum(self.image.layers[layer].toc.frames[i].compressed_size for i in item))
                self._fetch(layer, item)
            except Exception as exc:  # never fatal: the on-demand read will try (and report) again
                self.errors += 1
                # A fetch cut short by close(), a closing transport or interpreter exit is no news.
                quiet = self._closed or remote.transport.exiting() or \
                    getattr(getattr(getattr(self.image.layers[layer].source, "blob", None), "transport", None),
                            "closed", False)
                (log.debug if quiet else log.warning)(
                    "%s: prefetch of layer %d frames %d..%d failed: %s", self.image.reference,
                    layer, item[0], item[-1], exc)
            finally:
                with self._cv:
                    self._active -= 1
                    if priority == _PLAN:
                        self._pending_plan -= 1
                        if self._pending_plan == 0:
                            self.plan_done.set()
                            log.info("%s: plan prefetched in %.2f s", self.image.reference,
                                     time.monotonic() - self._started)

    def _throttle(self, n: int) -> None:
        assert self._fill_rate
        with self._cv:
            now = time.monotonic()
            at = max(now, self._fill_next)
            self._fill_next = at + n / self._fill_rate
        if at > now:
            time.sleep(at - now)

    def _fetch(self, layer: int, item: tuple[int, ...]) -> None:
        if self._closed:
            return
        source = self.image.layers[layer].source
        t0 = time.monotonic()
        with remote.background():
            got = source.prefetch(item)
        dt = max(time.monotonic() - t0, 1e-4)
        if got:
            with self._cv:
                self.frames += len(item)
                self.bytes += got
                # delay: the fastest request seen; rate: what one request achieves, times the workers
                self._rtt = min(self._rtt, dt) if self.frames > len(item) else dt
                self._rate = 0.8 * self._rate + 0.2 * (got / dt) * self.workers

    # -- control

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the plan's frames are fetched (or failed); False on timeout."""
        return self.plan_done.wait(timeout)

    def idle(self) -> bool:
        with self._cv:
            return not self._heap and self._active == 0

    def close(self) -> None:
        """Drop what is queued and stop the workers (a request in flight finishes in the background)."""
        with self._cv:
            self._closed = True
            self._heap.clear()
            self._pending_plan = 0
            self.plan_done.set()
            self._cv.notify_all()

    def stats(self) -> dict[str, int]:
        return {"prefetched_frames": self.frames, "prefetched_bytes": self.bytes, "prefetch_errors": self.errors}


def _frames_of(frames: Sequence[Any], ranges: Sequence[tuple[int, int]]) -> list[int]:
    """Indices of the frames that hold tar ranges ``ranges``, in first-needed order (ranges
    outside the tar are ignored: a plan is advice, and every frame is verified anyway).

    O((frames + ranges) log frames) whatever the plan: one bisect per range, and
    each frame is visited once over all ranges (a taken frame is skipped by
    jumping to the next one not taken yet, with path compression).
    """
    out: list[int] = []
    if not frames:
        return out
    n = len(frames)
    starts = frame_column(frames, "offset")
    end_of_tar = frames[-1].offset + frames[-1].size
    nxt = list(range(n + 1))  # nxt[i] leads to the first frame >= i not taken yet (n: none)

    def untaken(i: int) -> int:
        root = i
        while nxt[root] != root:
            root = nxt[root]
        while nxt[i] != root:
            nxt[i], i = root, nxt[i]
        return root

    for off, length in ranges:
        if length <= 0 or off >= end_of_tar:
            continue
        end = min(off + length, end_of_tar)
        i = untaken(max(0, bisect.bisect_right(starts, off) - 1))
        while i < n and starts[i] < end:
            out.append(i)
            nxt[i] = i + 1
            i = untaken(i + 1)
    return out
