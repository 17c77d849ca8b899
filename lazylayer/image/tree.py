"""The merged root of an image, as the C image index has it: a thin, read-only view.

An image's filesystem is its layers applied in order (the OCI image spec's
"changesets"): whiteouts (``DIR/.wh.NAME``, opaque ``DIR/.wh..wh..opq``)
applied to the layers below, later entries replacing earlier ones, parents a
layer does not list made, hardlinks sharing an inode.  The C library builds
that once per image (``ll_index``, docs/index-format.md) and may keep it in
the disk cache, so a later open of the same image maps it instead of parsing
TOCs; the FUSE mount and ``lazylayer://`` read the same index.

:class:`Tree` wraps a :class:`lazylayer.core.Index`; :class:`Node` is one
name in it (made on demand, nothing is kept per name).  Every path is
relative to the image root, ``/``-separated, without a leading slash; the
root itself is ``""``.  :meth:`Tree.resolve` follows symlinks the way a
process chrooted into the image would: absolute targets and ``..`` never
leave the image root.
"""

from __future__ import annotations

import hashlib
import os
import stat as _stat
import struct
from collections.abc import Mapping
from typing import Any, Iterator, Sequence

from ..core.index import KINDS as _KIND_NAMES
from ..core.index import ROOT, Index, IndexLayer, Stat
from ..format import Toc, TOC_SKIPPABLE_VARIANT

__all__ = ["Inode", "Node", "Tree", "MAX_SYMLINK_HOPS", "split_path"]

MAX_SYMLINK_HOPS = 40  # as Linux's ELOOP limit (LL_MAX_SYMLINK_HOPS)

_FSSPEC_TYPE = {"reg": "file", "dir": "directory", "symlink": "link",
                "char": "other", "block": "other", "fifo": "other"}
_RESOLVED_MAX = 4096  # paths whose resolution a Tree remembers
_NO_XATTRS: dict[str, bytes] = {}  # shared by every inode without xattrs; never modified


class Inode:
    """What all names of one file share: type, metadata and where its content is."""

    __slots__ = ("_index", "_st", "_linkname", "_xattrs")

    def __init__(self, index: Index, st: Stat) -> None:
        self._index = index
        self._st = st
        self._linkname: str | None = None
        self._xattrs: dict[str, bytes] | None = None

    ino = property(lambda self: self._st.ino)
    kind = property(lambda self: self._st.kind)
    mode = property(lambda self: self._st.mode)
    uid = property(lambda self: self._st.uid)
    gid = property(lambda self: self._st.gid)
    nlink = property(lambda self: self._st.nlink)
    mtime = property(lambda self: self._st.mtime)
    size = property(lambda self: self._st.size)
    layer = property(lambda self: self._st.layer)
    offset = property(lambda self: self._st.offset)

    @property
    def mtime_ns(self) -> int:
        return self._st.mtime_sec * 1_000_000_000 + self._st.mtime_nsec

    @property
    def rdev(self) -> int:
        st = self._st
        return os.makedev(st.devmajor, st.devminor) if st.kind in ("char", "block") else 0

    @property
    def linkname(self) -> str:
        if self._linkname is None:
            self._linkname = self._index.readlink(self._st.ino) if self._st.kind == "symlink" else ""
        return self._linkname

    @property
    def xattrs(self) -> dict[str, bytes]:
        if self._xattrs is None:
            self._xattrs = self._index.xattrs(self._st.ino, self._st.nxattrs) if self._st.nxattrs else _NO_XATTRS
        return self._xattrs


class Node:
    """One name in the tree: its path, its inode and, for a directory, its children (read on demand)."""

    __slots__ = ("tree", "path", "name", "_st", "_inode", "_children")

    def __init__(self, tree: Tree, path: str, st: Stat, name: str | None = None) -> None:
        self.tree = tree
        self.path = path
        self.name = path.rpartition("/")[2] if name is None else name
        self._st = st
        self._inode: Inode | None = None
        self._children: dict[str, Node] | None = None

    @property
    def inode(self) -> Inode:
        inode = self._inode
        if inode is None:
            inode = self._inode = Inode(self.tree.index, self._st)
        return inode

    @property
    def kind(self) -> str:
        """``reg``, ``dir``, ``symlink``, ``char``, ``block`` or ``fifo``."""
        return self._st[1]

    @property
    def is_dir(self) -> bool:
        return self._st[1] == "dir"

    @property
    def children(self) -> dict[str, Node] | None:
        """A directory's entries by name, in name order (None for anything else)."""
        if self._st[1] != "dir":
            return None
        if self._children is None:
            prefix = f"{self.path}/" if self.path else ""
            tree = self.tree
            self._children = {name: Node(tree, prefix + name, st, name)
                              for name, st in tree.index.readdir(self._st[0])}
        return self._children

    def info(self) -> dict[str, Any]:
        """fsspec's info dict for this name, as ``os.lstat`` sees it (a symlink is not followed).

        Keys: ``name``, ``size``, ``type`` (``file``, ``directory``, ``link``,
        ``other``), ``kind`` (the precise type), ``mode`` (``st_mode``),
        ``uid``, ``gid``, ``mtime``, ``ino``, ``nlink``, ``islink``; symlinks add
        ``destination``, devices ``rdev``, ``devmajor``, ``devminor``; files
        with extended attributes ``xattrs`` (name -> bytes); regular files
        ``layer`` (index of the layer holding the content).
        """
        st = self._st
        kind = st.kind
        info = {"name": self.path, "size": st.size if kind != "dir" else 0,
                "type": _FSSPEC_TYPE[kind], "kind": kind, "mode": st.mode,
                "uid": st.uid, "gid": st.gid, "mtime": st.mtime, "ino": st.ino, "nlink": st.nlink,
                "islink": kind == "symlink"}
        if kind == "symlink":
            info["destination"] = self.inode.linkname
        elif kind == "char" or kind == "block":
            info.update(rdev=os.makedev(st.devmajor, st.devminor), devmajor=st.devmajor, devminor=st.devminor)
        elif kind == "reg":
            info["layer"] = st.layer
        if st.nxattrs:
            info["xattrs"] = dict(self.inode.xattrs)
        return info

    def __repr__(self) -> str:
        return f"<Node {self.path or '/'!r} {self.kind}>"


def split_path(path: str) -> list[str]:
    """The components of a path, without empty ones and ``.``."""
    return [p for p in path.split("/") if p and p != "."]


def toc_frame(toc: Toc) -> bytes:
    """A TOC as the skippable frame a lazy layer stores it in (header included)."""
    payload = toc.frame_payload()
    return struct.pack("<II", 0x184D2A50 + TOC_SKIPPABLE_VARIANT, len(payload)) + payload


class Tree:
    """The merged filesystem of an image, over its C index (:class:`lazylayer.core.Index`)."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.paths = _Paths(self)
        """Every name, by its path (no symlink on the way): a read-only mapping over the tree."""
        self.root = Node(self, "", index.stat(ROOT))
        self._resolved: dict[tuple[str, bool], tuple[str, Stat]] = {}  # path -> (real path, stat), bounded

    @classmethod
    def from_tocs(cls, tocs: Sequence[Toc]) -> Tree:
        """The tree of TOCs held in memory (the first is the bottom layer), e.g. to check a TOC.

        Each TOC gets a layer of its own whose frames end where its TOC frame starts.
        """
        layers = []
        for i, toc in enumerate(tocs):
            frame = toc_frame(toc)
            end = sum(f.compressed_size for f in toc.frames)
            layers.append(IndexLayer(f"sha256:{i:064x}", end + len(frame) + 64,
                                     "sha256:" + hashlib.sha256(frame).hexdigest(), end, len(frame), frame))
        return cls(Index.build(layers))

    # -- looking up -----------------------------------------------------------

    def resolve(self, path: str, follow: bool = True) -> Node:
        """The node at ``path``, following symlinks inside the image root.

        ``follow=False`` does not follow a symlink in the last component (like
        ``lstat``).  The node's ``path`` is where the path led (symlinks on the
        way replaced).  Raises ``FileNotFoundError``, ``NotADirectoryError`` or
        ``OSError(ELOOP)``.
        """
        key = (path, follow)
        hit = self._resolved.get(key)
        if hit is None:
            ino, real = self.index.resolve_path(path, follow)
            hit = (real, self.index.stat(ino))
            if len(self._resolved) >= _RESOLVED_MAX:
                self._resolved.clear()  # (the index never changes: any entry stays right; this bounds memory)
            self._resolved[key] = hit
        return Node(self, hit[0], hit[1])

    def listing(self, path: str, ino: int) -> list[tuple[str, dict[str, Any]]]:
        """Directory ``ino``'s entries as ``(name, info)``, the info dicts :meth:`Node.info` gives,
        named under ``path``: made in one pass, without a :class:`Node` per entry."""
        index = self.index
        prefix = f"{path}/" if path else ""
        out = []
        kinds, types = _KIND_NAMES, _FSSPEC_TYPE
        for name, ino_, kind, mode, nlink, uid, gid, msec, mnsec, dmaj, dmin, size, layer, nx, _ in \
                index.readdir_raw(ino):
            k = kinds[kind]
            info = {"name": prefix + name, "size": size if k != "dir" else 0, "type": types[k], "kind": k,
                    "mode": mode, "uid": uid, "gid": gid, "mtime": msec + mnsec / 1e9, "ino": ino_,
                    "nlink": nlink, "islink": k == "symlink"}
            if k == "reg":
                info["layer"] = layer
            elif k == "symlink":
                info["destination"] = index.readlink(ino_)
            elif k == "char" or k == "block":
                info.update(rdev=os.makedev(dmaj, dmin), devmajor=dmaj, devminor=dmin)
            if nx:
                info["xattrs"] = index.xattrs(ino_, nx)
            out.append((name, info))
        return out

    def walk(self, top: Node) -> Iterator[tuple[Node, list[Node]]]:
        """Every directory under ``top`` (itself first) with its children, sorted by name."""
        stack = [top]
        while stack:
            node = stack.pop()
            children = list((node.children or {}).values())
            yield node, children
            stack.extend(c for c in reversed(children) if c.is_dir)

    def __len__(self) -> int:
        return self.index.names


class _Paths(Mapping[str, Node]):
    """Every node of a tree by its exact path (a symlink on the way is not followed: a miss)."""

    def __init__(self, tree: Tree) -> None:
        self._tree = tree

    def __getitem__(self, path: str) -> Node:
        if not isinstance(path, str):
            raise KeyError(path)
        if path == "":
            return self._tree.root
        index = self._tree.index
        try:
            ino, real = index.resolve_path(path, False)
        except OSError:
            raise KeyError(path) from None
        if real != path:  # a symlink, '.', '..' or '//' on the way: not a key
            raise KeyError(path)
        return Node(self._tree, path, index.stat(ino))

    def __iter__(self) -> Iterator[str]:
        for node, children in self._tree.walk(self._tree.root):
            if node.path == "":
                yield ""
            for c in children:
                yield c.path

    def __len__(self) -> int:
        return self._tree.index.names
