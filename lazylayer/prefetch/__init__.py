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

from .attach import attach, find_attached
from .plan import (
    ANNOTATION_CREATED,
    ANNOTATION_WORKLOAD,
    ARTIFACT_TYPE,
    MAX_PLAN_BYTES,
    MAX_PLAN_RANGES,
    PLAN_MEDIA_TYPE,
    PLAN_VERSION,
    LayerPlan,
    Plan,
    PlanError,
    load_plan,
)
from .prefetcher import Prefetcher
from .recorder import Recorder
from .start import start

__all__ = ["ANNOTATION_CREATED", "ANNOTATION_WORKLOAD", "ARTIFACT_TYPE", "MAX_PLAN_BYTES", "MAX_PLAN_RANGES",
           "PLAN_MEDIA_TYPE", "PLAN_VERSION", "LayerPlan", "Plan", "PlanError", "Prefetcher", "Recorder", "attach",
           "find_attached", "load_plan", "start"]
