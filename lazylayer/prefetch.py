"""Prefetch: record what a workload reads, then fetch it before it is asked for.

A :class:`Plan` lists, per layer, the ranges of the layer's tar a workload
read, in the order it first read them.  Ranges are in *tar* offsets, so a plan
holds for any encoding of the same tar: a layer is matched by its blob digest
or, failing that, by its diff_id (the sha256 of the tar).

Plans come from :class:`Recorder` (``lazylayer record`` puts one on the FUSE
mount) and are kept three ways: a JSON file, the ``prefetch`` field of a lazy
layer's TOC (``lazylayer convert --prefetch``), or an OCI artifact that refers
to the image (:func:`attach`, :func:`find_attached`; see docs/referrers.md).

:class:`Prefetcher` does the fetching for an opened :class:`~lazylayer.image.Image`:

- the plan's frames, in plan order, in requests of up to ``request_bytes`` of
  adjacent frames, ``workers`` at a time;
- *read-ahead*: a layer read frame after frame gets the frames after it
  fetched too, in a window that doubles with every sequential step up to
  ``max(32 MiB, 8 x the measured bandwidth-delay product)``;
- optionally the rest of the image (*fill*), at a rate limit if asked.

Everything it fetches goes to the disk cache, checked against the TOC's sha256
like any other frame.  It runs at background priority (:func:`lazylayer.remote.background`):
its requests take connections of their own, so an on-demand read never queues
behind them; a read that needs a frame the prefetcher is fetching right now
waits for that frame (the disk cache's single-flight lock) rather than fetching
it twice.  A prefetch failure is logged and left to the on-demand read, which
retries and raises as usual: prefetch never makes a read fail.
"""

from __future__ import annotations

import bisect
import datetime
import heapq
import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from . import errors, oci, remote

if TYPE_CHECKING:
    from .image import Image

__all__ = ["ARTIFACT_TYPE", "LayerPlan", "Plan", "PlanError", "Prefetcher", "Recorder", "attach",
           "find_attached", "load_plan"]

log = logging.getLogger("lazylayer")

PLAN_MEDIA_TYPE = "application/vnd.lazylayer.prefetch.v1+json"
ARTIFACT_TYPE = PLAN_MEDIA_TYPE  #: the ``artifactType`` of plan artifacts in a registry
PLAN_VERSION = 1
MAX_PLAN_BYTES = 64 << 20        #: a plan file or artifact larger than this is refused
MAX_PLAN_RANGES = 4_000_000      #: as is one with more ranges than this, over all layers
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_WORKLOAD = "io.lazylayer.prefetch.workload"

# Queue priorities: smaller is served first.
_READAHEAD, _PLAN, _FILL = 0, 1, 2


class PlanError(errors.FormatError):
    """A prefetch plan is malformed (or too large)."""


# ---------------------------------------------------------------------- plans


@dataclass
class LayerPlan:
    """The ranges of one layer's tar a workload read, as ``(offset, length)`` in first-read order."""

    digest: str
    diff_id: str = ""
    ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self.ranges)


@dataclass
class Plan:
    """A prefetch plan: per layer, what to fetch first and in which order."""

    layers: list[LayerPlan] = field(default_factory=list)
    image: str = ""              #: the manifest digest of the image it was recorded on
    workload: str = ""           #: what was run (for people; not used to match)
    created: str = ""            #: RFC 3339 time of recording

    def for_layer(self, digest: str, diff_id: str = "") -> LayerPlan | None:
        """The plan of the layer with blob ``digest`` or, failing that, with ``diff_id``."""
        for lp in self.layers:
            if lp.digest == digest:
                return lp
        for lp in self.layers:
            if diff_id and lp.diff_id == diff_id:
                return lp
        return None

    def to_json(self) -> bytes:
        doc = {
            "mediaType": PLAN_MEDIA_TYPE,
            "version": PLAN_VERSION,
            "image": self.image,
            "workload": self.workload,
            "created": self.created,
            "layers": [{"digest": lp.digest, "diff_id": lp.diff_id, "ranges": [list(r) for r in lp.ranges]}
                       for lp in self.layers],
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, what: str = "prefetch plan") -> Plan:
        """Parse and check a plan; :class:`PlanError` says what is wrong with a bad one."""
        if len(data) > MAX_PLAN_BYTES:
            raise PlanError(f"{what} is {len(data)} bytes (limit {MAX_PLAN_BYTES})")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PlanError(f"{what} is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("mediaType") != PLAN_MEDIA_TYPE:
            raise PlanError(f"{what} is not a lazylayer prefetch plan (mediaType should be {PLAN_MEDIA_TYPE})")
        if doc.get("version") != PLAN_VERSION:
            raise PlanError(f"{what}: version {doc.get('version')!r} is not supported (this lazylayer reads "
                            f"version {PLAN_VERSION})")
        layers, count = [], 0
        raw_layers = doc.get("layers")
        if not isinstance(raw_layers, list):
            raise PlanError(f"{what}: 'layers' is not a list")
        for i, raw in enumerate(raw_layers):
            if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str) \
                    or not isinstance(raw.get("diff_id", ""), str) or not isinstance(raw.get("ranges"), list):
                raise PlanError(f"{what}: layer {i} is malformed (needs digest, diff_id and ranges)")
            ranges = raw["ranges"]
            count += len(ranges)
            if count > MAX_PLAN_RANGES:
                raise PlanError(f"{what} has more than {MAX_PLAN_RANGES} ranges")
            out = []
            for r in ranges:
                if not (isinstance(r, list) and len(r) == 2 and all(type(x) is int and 0 <= x < 1 << 62 for x in r)):
                    raise PlanError(f"{what}: layer {i}: range {r!r} is not [offset, length] "
                                    "with non-negative integers")
                out.append((r[0], r[1]))
            layers.append(LayerPlan(raw["digest"], raw.get("diff_id", ""), out))
        strings = {k: doc.get(k, "") for k in ("image", "workload", "created")}
        if not all(isinstance(v, str) for v in strings.values()):
            raise PlanError(f"{what}: image, workload and created must be strings")
        return cls(layers, **strings)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan to ``path`` (atomically)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    def summary(self) -> str:
        parts = [f"layer {lp.digest[7:19]}: {len(lp.ranges)} ranges, {lp.bytes / 1e6:.1f} MB" for lp in self.layers]
        return "; ".join(parts) or "empty"


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read a plan file (``-`` is not special); errors name the file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the prefetch plan: {exc.strerror or exc}") from None
    return Plan.from_json(data, path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


# ---------------------------------------------------------------- attaching


def _artifact_store(image: Image) -> Any:
    """Where artifacts referring to ``image`` live: its registry repository or OCI layout (else None)."""
    from .registry import RegistrySource

    source = image._source
    return source if isinstance(source, (RegistrySource, oci.OciLayout)) else None


def attach(image: Image, plan: Plan) -> oci.Descriptor:
    """Store ``plan`` in the image's registry (or OCI layout) as an artifact that refers to the image."""
    from . import referrers

    store = _artifact_store(image)
    if store is None:
        raise PlanError(f"{image.reference}: plans can be attached only to images in a registry or an OCI "
                        "layout; write it to a file instead (lazylayer record -o FILE)")
    subject = dict(image.manifest_image.manifest_descriptor)
    subject.pop("platform", None)
    subject.pop("annotations", None)
    annotations = {ANNOTATION_CREATED: plan.created or _now()}
    if plan.workload:
        annotations[ANNOTATION_WORKLOAD] = plan.workload[:200]
    return referrers.attach(store, subject, ARTIFACT_TYPE, plan.to_json(), PLAN_MEDIA_TYPE, annotations)


def find_attached(image: Image) -> Plan | None:
    """The newest plan attached to the image as an artifact, else one built from the layers' TOCs.

    Returns None when there is neither.  A registry that cannot be asked (no
    referrers, no permission) counts as "no artifact"; a malformed artifact
    raises :class:`PlanError`.
    """
    from . import referrers

    found: list[oci.Descriptor] = []
    store = _artifact_store(image)
    if image.digest and store is not None:
        try:
            found = referrers.find(store, image.digest, ARTIFACT_TYPE)
        except (errors.NotFoundError, errors.AuthError) as exc:
            log.debug("%s: no plan artifacts: %s", image.reference, exc)
    if found:
        newest = max(found, key=lambda d: (d.get("annotations") or {}).get(ANNOTATION_CREATED, ""))
        data = referrers.read_payload(store, newest, PLAN_MEDIA_TYPE)
        plan = Plan.from_json(data, f"prefetch plan {newest.get('digest')}")
        log.info("%s: using the prefetch plan attached as %s (%s)", image.reference, newest.get("digest"),
                 plan.summary())
        return plan
    layers = [LayerPlan(layer.digest, "", [(int(o), int(n)) for o, n in layer.toc.prefetch])
              for layer in image.layers if layer.toc.prefetch]
    if layers:
        log.info("%s: using the prefetch plans in the layers' TOCs", image.reference)
        return Plan(layers, image=image.digest)
    return None


# ---------------------------------------------------------------- fetching


@dataclass
class _Sequence:
    """Read-ahead state of one layer."""

    next: int = -1     # the frame after the last one read
    steps: int = 0     # sequential steps in a row
    ahead: int = 0     # frames before this one are queued (or read)


class Prefetcher:
    """Fetches an image's frames into its disk cache ahead of the reads that need them.

    ``workers``: requests in flight at once (at most the transport's
    ``background_connections`` are used).  ``request_bytes``: most bytes of
    adjacent frames fetched by one request.  ``budget``: most bytes it fetches
    in all (default: half the disk cache's limit, so prefetch cannot evict
    what it fetched).  Counters: ``frames``, ``bytes``, ``errors``.
    """

    def __init__(self, image: Image, *, workers: int = 8, request_bytes: int = 4 << 20,
                 budget: int | None = None, readahead: bool = True) -> None:
        if image.disk is None:
            raise ValueError("prefetch needs a disk cache to fetch into")
        self.image = image
        self.disk = image.disk
        self.workers = max(1, workers)
        self.request_bytes = request_bytes
        self.budget = budget if budget is not None else self.disk.max_bytes // 2
        self.readahead_enabled = readahead
        self._heap: list[tuple[int, int, int, tuple[int, ...]]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._queued: list[bytearray] = [bytearray(len(layer.toc.frames)) for layer in image.layers]
        self._ra = [_Sequence() for _ in image.layers]
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
        self.plan_done = threading.Event()
        self.plan_done.set()
        # bandwidth-delay estimate, from background fetches
        self._rtt = 0.05
        self._rate = 50e6
        self._started = time.monotonic()

    # -- what to fetch

    def start_plan(self, plan: Plan) -> int:
        """Queue ``plan``'s frames, in plan order; returns how many frames (not on disk yet) it queued."""
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
        """Tell the prefetcher a read needed frames ``first..last`` of ``layer`` (read-ahead's input)."""
        if not self.readahead_enabled or self._closed:
            return
        with self._ra_lock:
            self._readahead(layer, first, last)

    def _readahead(self, layer: int, first: int, last: int) -> None:
        st = self._ra[layer]
        if st.next <= first <= st.next + 1 and st.next >= 0:
            st.steps += 1
        else:
            st.steps = 0
            st.ahead = 0
        st.next = last + 1
        if st.steps < 2:
            return
        frames = self.image.layers[layer].toc.frames
        size = frames[first].compressed_size or 1
        window = min(2 << min(st.steps - 2, 30), max(2, self.max_window() // size))
        start, end = max(last + 1, st.ahead), min(len(frames), last + 1 + window)
        if start < end and (start - last - 1) <= window // 2:  # refill once half the window is read
            self._enqueue(_READAHEAD, layer, range(start, end))
            st.ahead = end

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
                for item in items:
                    heapq.heappush(self._heap, (priority, next(self._seq), layer, item))
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
                priority, _, layer, item = heapq.heappop(self._heap)
                self._active += 1
            try:
                if priority == _FILL and self._fill_rate:
                    self._throttle(sum(self.image.layers[layer].toc.frames[i].compressed_size for i in item))
                self._fetch(layer, item)
            except Exception as exc:  # never fatal: the on-demand read will try (and report) again
                self.errors += 1
                if not self._closed:  # (a fetch cut short by close() is no news)
                    log.warning("%s: prefetch of layer %d frames %d..%d failed: %s", self.image.reference,
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
    outside the tar are ignored: a plan is advice, and every frame is verified anyway)."""
    starts = [f.offset for f in frames]
    seen: set[int] = set()
    out: list[int] = []
    if not frames:
        return out
    end_of_tar = frames[-1].offset + frames[-1].size
    for off, n in ranges:
        if n <= 0 or off >= end_of_tar:
            continue
        i = max(0, bisect.bisect_right(starts, off) - 1)
        end = min(off + n, end_of_tar)
        while i < len(frames) and frames[i].offset < end:
            if i not in seen:
                seen.add(i)
                out.append(i)
            i += 1
    return out
