"""Prefetch: record what a workload reads, then fetch it before it is asked for.

A :class:`Plan` lists, per layer, the ranges of the layer's tar a workload
read, in the order it first read them.  Ranges are in *tar* offsets, so a plan
holds for any encoding of the same tar: a layer is matched by its blob digest
or, failing that, by its diff_id (the sha256 of the tar).

Plans come from :class:`Recorder` (``lazylayer record`` puts one on the FUSE
mount) and are kept three ways: a JSON file, the ``prefetch`` field of a lazy
layer's TOC (``lazylayer convert --prefetch``), or an OCI artifact that refers
to the image (:func:`attach`, :func:`find_attached`; see docs/referrers.md).

:class:`Prefetcher` (:mod:`.prefetcher`) does the fetching for an opened
:class:`~lazylayer.image.Image`, at background priority, into its disk cache:
the plan first, read-ahead of sequential reads, and optionally the rest of the
image (*fill*).  The front ends (``lazylayer://``, the mount) start it with
:func:`start`; an ``Image`` on its own reads only what it is asked for.
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
