"""What lazylayer knows of eStargz (stargz-snapshotter's docs/estargz.md) and stargz's zstd:chunked.

For now, only what reading such a layer whole needs: how to tell one (the layer
descriptor's TOC-digest annotation, which both write) and the files of its own
that stargz-snapshotter hides from the merged root (its TOC, a tar entry in
eStargz, and the prefetch landmarks).  Lazy reads of these layers are issue 18,
items 1 and 2.
"""

from __future__ import annotations

from typing import Any

ANNOTATION_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
"""The sha256 of a layer's eStargz TOC JSON (stargz-snapshotter's ``estargz.TOCJSONDigestAnnotation``)."""
TOC_TAR_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
HIDDEN = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
"""Names at a layer's root that are the format's, not the image's: left out of the tree."""


def is_stargz(desc: dict[str, Any]) -> bool:
    """True for a layer written by stargz-snapshotter's library (eStargz, or its zstd:chunked)."""
    return ANNOTATION_TOC_DIGEST in (desc.get("annotations") or {})


def hidden_names(desc: dict[str, Any]) -> frozenset[str]:
    """The names to leave out of layer ``desc``'s tree (none for other layers)."""
    return HIDDEN if is_stargz(desc) else frozenset()
