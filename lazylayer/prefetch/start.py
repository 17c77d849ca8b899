"""Start prefetching for an opened image: what the front ends (``lazylayer://``, the mount) call.

:class:`~lazylayer.image.Image` itself never prefetches: it reads what it is
asked for.  A front end that wants plans, read-ahead or fill calls
:func:`start` once the image is open; the prefetcher then hooks the image's
layers (their ``on_read``) and fetches into the image's disk cache.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from ..remote import transport
from .attach import find_attached
from .plan import Plan, load_plan
from .prefetcher import Prefetcher

if TYPE_CHECKING:
    from ..image import Image

log = logging.getLogger("lazylayer")


def start(image: Image, prefetch: Any = "auto", *, fill: bool = False, fill_rate: float | None = None,
          readahead: bool = True, neighbours: int = 4) -> Prefetcher | None:
    """Start prefetching for ``image``; its :class:`Prefetcher`, also set as ``image.prefetcher``.

    ``prefetch``: ``"auto"`` (the plan attached to the image in its registry,
    else the plans in its layers' TOCs, looked up in the background), a
    :class:`Plan`, a plan file's path, or ``None``/``False`` for no plan.
    ``fill``: fetch the rest of the image too, after the plan, at ``fill_rate``
    bytes/s at most (None: as fast as the link allows).  ``readahead``:
    sequential reads of a layer fetch the frames after them too, and with
    ``neighbours`` (frames; 4 by default, the mount's) any read that missed
    fetches that many frames' worth after it (a starting program's next reads
    are mostly the tar's next files); ``lazylayer://`` passes 0.

    Returns None (and starts nothing) for an image without a disk cache or
    without lazy layers, with a warning if a plan or fill was asked for.
    ``image.prefetch_started`` is set once the plan is looked up and queued.
    """
    if prefetch is False:
        prefetch = None
    if image.disk is None or not any(layer.lazy for layer in image.layers):
        if prefetch not in ("auto", None) or fill:
            log.warning("%s: no prefetch: it needs a disk cache and lazy layers", image.reference)
        return None
    prefetcher = Prefetcher(image, readahead=readahead, neighbours=neighbours)
    image.prefetcher = prefetcher
    for layer in image.layers:
        if layer.lazy:
            layer.source.on_read = functools.partial(prefetcher.on_read, layer.index)
    plan = load_plan(prefetch) if isinstance(prefetch, (str, os.PathLike)) and prefetch != "auto" else prefetch
    if plan is not None and plan != "auto" and not isinstance(plan, Plan):
        raise TypeError(f"prefetch must be 'auto', a Plan, a plan file's path or None, not {type(plan).__name__}")
    if plan is None and not fill:
        return prefetcher

    def run() -> None:
        try:
            found = find_attached(image) if plan == "auto" else plan
            if found is not None:
                prefetcher.start_plan(found)
            if fill:
                prefetcher.start_fill(fill_rate)
        except Exception as exc:  # a plan is advice: reads work without it
            if transport.exiting():  # cut short by interpreter exit: no news
                log.debug("%s: no prefetch (exiting): %s", image.reference, exc)
            else:
                log.warning("%s: no prefetch: %s", image.reference, exc)
        finally:
            image.prefetch_started.set()

    image.prefetch_started.clear()
    threading.Thread(target=run, name="lazylayer-plan", daemon=True).start()
    return prefetcher
