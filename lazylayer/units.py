"""Sizes as people write them: one parser for the command line, the environment and the docs."""

from __future__ import annotations

import re

__all__ = ["human_size", "parse_size"]

_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:I?B)?")


def parse_size(text: str) -> int:
    """Bytes in a size like ``1048576``, ``512M``, ``20G``, ``64KiB``, ``1 MB`` or ``2t``.

    Units are powers of 1024 (``K``, ``M``, ``G``, ``T``, with or without
    ``B``/``iB``, any case).  Anything else is a :class:`ValueError` that
    shows the text and an example.
    """
    m = _SIZE.fullmatch(text.strip().upper())
    if not m:
        raise ValueError(f"not a size: {text!r} (expected e.g. 512M, 20G, 64KiB or a number of bytes)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2)]


def human_size(n: float, *, si: bool = False) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 KiB``, ``3.2 GiB``; ``si``: powers of 1000
    (``1.5 kB``, up to ``TB``), to stand next to a rate in MB/s."""
    step, names = (1000, ("B", "kB", "MB", "GB", "TB")) if si else (1024, ("B", "KiB", "MiB", "GiB"))
    for unit in names:
        if abs(n) < step or unit == names[-1]:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= step
    raise AssertionError
