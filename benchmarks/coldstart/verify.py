"""Check, untimed, that the full pull and the lazylayer mount give the workload the same root.

Both roots are seen through an overlay, as the workload sees them.  Every
entry's type, mode, owner, size, mtime (not for directories: extracting a
whiteout changes its directory's), symlink target and device number are
compared, then the content of ``sample`` random regular files.
"""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

from benchmarks.common import file_sha256

Entry = tuple[int, int, int, int, int, str, int]


def tree(root: Path) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            is_dir = stat.S_ISDIR(st.st_mode)
            out[os.path.relpath(p, root)] = (
                st.st_mode, st.st_uid, st.st_gid, 0 if is_dir else st.st_size,
                0 if is_dir else int(st.st_mtime), os.readlink(p) if stat.S_ISLNK(st.st_mode) else "",
                st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0)
    return out


def compare(a: Path, b: Path, sample: int = 100, seed: int = 1) -> tuple[int, list[str]]:
    """(entries in ``a``, differences between the trees at ``a`` and ``b``; at most 20 listed)."""
    ta, tb = tree(a), tree(b)
    diffs = [f"only in the full pull: {p}" for p in sorted(ta.keys() - tb.keys())]
    diffs += [f"only in the lazy mount: {p}" for p in sorted(tb.keys() - ta.keys())]
    diffs += [f"{p}: {ta[p]} vs {tb[p]}" for p in sorted(ta.keys() & tb.keys()) if ta[p] != tb[p]]
    regular = sorted(p for p, e in ta.items() if stat.S_ISREG(e[0]) and p in tb)
    for p in random.Random(seed).sample(regular, min(sample, len(regular))):
        if file_sha256(a / p) != file_sha256(b / p):
            diffs.append(f"{p}: content differs")
    return len(ta), diffs[:20] + ([f"... {len(diffs) - 20} more"] if len(diffs) > 20 else [])
