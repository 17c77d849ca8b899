"""The lazy layer format (docs/format.md): tar scanning, writing, reading TOCs, re-encoding.

- :mod:`.tar`: a streaming tar scanner that keeps every byte (pax, GNU long names);
- :mod:`.layer`: the TOC, :class:`LayerWriter`, :func:`read_toc` and :func:`parse_toc_position`;
- :mod:`.reencode`: a layer blob of any compression to a lazy layer, in one pass;
- :mod:`.estargz`: eStargz layers, and the TOC schema they share with zstd:chunked;
- :mod:`.zstdchunked`: zstd:chunked layers (all three dialects), read lazily.
"""

from __future__ import annotations

from .._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "layer": ("ANNOTATION_TOC_DIGEST", "ANNOTATION_TOC_POSITION", "ANNOTATION_UNCOMPRESSED_SIZE", "ANNOTATION_VERSION",
              "FORMAT_VERSION", "LAYER_FRAME_SIZE", "MEDIA_TYPE_LAYER_ZSTD", "TOC_MAGIC", "TOC_SKIPPABLE_VARIANT",
              "Frame", "FrameTable", "LayerIndex", "LayerInfo", "LayerWriter", "Toc", "check_json_shape",
              "check_toc_frames", "frame_column", "is_lazy_layer", "parse_toc_position", "read_toc", "toc_entry",),
    "reencode": ("ARCHIVE_MEMBER", "decompressed_chunks", "reencode_layer",),
    "estargz": ("is_stargz",),
    "tar": ("MAX_NAME_BYTES", "MAX_PATH_BYTES", "MAX_PATH_DEPTH", "MAX_PLAN_RANGES", "MAX_TOC_BYTES", "MAX_TOC_ENTRIES",
            "MAX_TOC_FRAMES", "TarMember", "TarScanner", "check_name", "normalize_name",),
})
