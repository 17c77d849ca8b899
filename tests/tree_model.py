"""A reference model of the merged tree, in Python: the C image index (csrc/index.c) is checked against it.

This was lazylayer.image.tree.Tree before the index moved to C (issue 16); tests/test_c_index.py
compares the two on many layer stacks.  Its docstring, as it was:

The merged root of an image: its layers' TOCs stacked, OCI whiteouts applied.

An image's filesystem is its layers applied in order (the OCI image spec's
"changesets").  :class:`Tree` does that on the TOCs alone, in memory, without
touching any file content:

- ``DIR/.wh.NAME`` deletes ``DIR/NAME`` (and everything under it) from the
  layers below; ``DIR/.wh..wh..opq`` hides everything the layers below had in
  ``DIR``.  Whiteouts never affect their own layer, whatever their position in
  the tar.  Other ``.wh..wh.*`` entries (AUFS metadata) are ignored.
- A later entry replaces an earlier one of the same name; a directory over a
  directory only updates its metadata, anything else replaces the whole
  subtree.  Parents a layer does not list are made (``0755``, root-owned).
- A hardlink shares its target's inode: content, metadata, ``nlink``.

Every path the tree hands out is relative to the image root, ``/``-separated,
without a leading slash; the root itself is ``""``.  :meth:`Tree.resolve`
follows symlinks the way a process chrooted into the image would: absolute
targets and ``..`` never leave the image root.
"""

from __future__ import annotations

import base64
import errno
import os
import stat
from collections.abc import Mapping
from typing import Any, Iterator, Sequence

from lazylayer import errors
from lazylayer.format import MAX_PATH_DEPTH, Toc

__all__ = ["Node", "Tree", "MAX_SYMLINK_HOPS"]

MAX_SYMLINK_HOPS = 40  # as Linux's ELOOP limit

_FMT = {
    "reg": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO,
}
_FSSPEC_TYPE = {"reg": "file", "dir": "directory", "symlink": "link",
                "char": "other", "block": "other", "fifo": "other"}
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class Inode:
    """What all names of one file share: type, metadata and where its content is."""

    __slots__ = ("ino", "kind", "mode", "uid", "gid", "mtime", "size", "layer", "offset",
                 "linkname", "rdev", "xattrs", "nlink")

    def __init__(self, ino: int, kind: str, entry: dict[str, Any], layer: int) -> None:
        # Built once per TOC entry (tens of thousands per image): one dict lookup per field.
        get = entry.get
        self.ino = ino
        self.kind = kind
        self.layer = layer
        self.nlink = 1
        self.uid = int(get("uid", 0))
        self.gid = int(get("gid", 0))
        self.mtime = float(get("mtime", 0))
        self.offset = int(get("offset", 0))
        self.linkname: str = ""
        if kind == "reg":
            self.mode = stat.S_IFREG | int(get("mode", 0o644)) & 0o7777
            self.size = int(get("size", 0))
        elif kind == "symlink":  # Linux shows every symlink as 0777, whatever the tar says.
            self.mode = stat.S_IFLNK | 0o777
            self.linkname = get("linkname", "")
            self.size = len(os.fsencode(self.linkname))
        else:
            self.mode = _FMT[kind] | int(get("mode", 0o755 if kind == "dir" else 0o644)) & 0o7777
            self.size = 0
        self.rdev = os.makedev(int(get("devmajor", 0)), int(get("devminor", 0))) \
            if kind == "char" or kind == "block" else 0
        raw = get("xattrs")
        self.xattrs: dict[str, bytes] = {k: base64.b64decode(v) for k, v in raw.items()} if raw else _NO_XATTRS


_NO_XATTRS: dict[str, bytes] = {}  # shared by every inode without xattrs; never modified


class Node:
    """One name in the tree: its name in its directory, its inode and, for a directory, its children.

    A node keeps its own name and its parent, not its whole path: a tree's
    memory stays linear in its TOCs' size however deep the paths (``path``
    is put together when asked for).
    """

    __slots__ = ("name", "parent", "inode", "children", "_info")

    def __init__(self, parent: Node | None, name: str, inode: Inode,
                 children: dict[str, Node] | None = None) -> None:
        self.parent = parent
        self.name = name
        self.inode = inode
        self.children = children
        self._info: dict[str, Any] | None = None

    @property
    def path(self) -> str:
        """The path from the image root, ``/``-separated, without a leading slash (the root: ``""``)."""
        if self.parent is None:
            return self.name
        names = [self.name]
        node = self.parent
        while node.parent is not None:
            names.append(node.name)
            node = node.parent
        names.reverse()
        return "/".join(names)

    @property
    def kind(self) -> str:
        """``reg``, ``dir``, ``symlink``, ``char``, ``block`` or ``fifo``."""
        return self.inode.kind

    def info(self) -> dict[str, Any]:
        """fsspec's info dict for this name, as ``os.lstat`` sees it (a symlink is not followed).

        Keys: ``name``, ``size``, ``type`` (``file``, ``directory``, ``link``,
        ``other``), ``kind`` (the precise type), ``mode`` (``st_mode``),
        ``uid``, ``gid``, ``mtime``, ``ino``, ``nlink``, ``islink``; symlinks add
        ``destination``, devices ``rdev``, ``devmajor``, ``devminor``; files
        with extended attributes ``xattrs`` (name -> bytes); regular files
        ``layer`` (index of the layer holding the content).
        """
        info = self._info
        if info is None:  # cached without the name: the path is not kept per node
            i = self.inode
            info = {"size": i.size if i.kind != "dir" else 0,
                    "type": _FSSPEC_TYPE[i.kind], "kind": i.kind, "mode": i.mode,
                    "uid": i.uid, "gid": i.gid, "mtime": i.mtime, "ino": i.ino, "nlink": i.nlink,
                    "islink": i.kind == "symlink"}
            if i.kind == "symlink":
                info["destination"] = i.linkname
            elif i.kind in ("char", "block"):
                info.update(rdev=i.rdev, devmajor=os.major(i.rdev), devminor=os.minor(i.rdev))
            elif i.kind == "reg":
                info["layer"] = i.layer
            if i.xattrs:
                info["xattrs"] = dict(i.xattrs)
            self._info = info
        return {"name": self.path, **info}

    def __repr__(self) -> str:
        return f"<Node {self.path or '/'!r} {self.kind}>"


def split_path(path: str) -> list[str]:
    """The components of a path, without empty ones and ``.``."""
    return [p for p in path.split("/") if p and p != "."]


class Tree:
    """The merged filesystem of a stack of layer TOCs (the first is the bottom layer)."""

    def __init__(self, tocs: Sequence[Toc]) -> None:
        self._next_ino = 1
        self.root = Node(None, "", self._inode("dir", {"mode": 0o755}, -1), {})
        self.paths = _Paths(self.root)
        """Every name, by its path (no symlink on the way): a read-only mapping over the tree."""
        self._implicit = 0  # parents made that the layer being applied did not list
        self._last_parent: tuple[str, Node] | None = None  # tar entries come grouped by directory
        for index, toc in enumerate(tocs):
            self._apply(index, toc.entries)
        self._finish()

    # -- building -------------------------------------------------------------

    def _inode(self, kind: str, entry: dict[str, Any], layer: int) -> Inode:
        ino = self._next_ino
        self._next_ino += 1
        return Inode(ino, kind, entry, layer)

    def _apply(self, layer: int, entries: list[dict[str, Any]]) -> None:
        # Parents a layer does not list are made, but no more of them than the layer has entries
        # (+ one path's depth): the tree stays linear in the TOC's size.
        self._implicit = len(entries) + MAX_PATH_DEPTH
        # Whiteouts first: they act on the layers below only.
        for e in entries:
            parent, _, base = e["name"].rpartition("/")
            if not base.startswith(WHITEOUT):
                continue
            directory = self._lookup_dir(parent)
            if directory is None or directory.children is None:
                continue
            if base == OPAQUE:
                directory.children.clear()
            elif not base.startswith(WHITEOUT + WHITEOUT):
                directory.children.pop(base[len(WHITEOUT):], None)
        for e in entries:
            name = e["name"]
            base = name.rpartition("/")[2]
            if base.startswith(WHITEOUT):
                continue
            self._add(layer, e)

    def _lookup_dir(self, path: str) -> Node | None:
        """The directory at ``path`` as the layers applied so far have it (symlinks followed), or None."""
        try:
            node = self.resolve(path)
        except (errors.LazyLayerError, OSError):
            return None
        return node if node.children is not None else None

    def _parent_for(self, path: str) -> Node:
        """The directory that will hold ``path``, made (with its parents) if missing.

        A parent that is a symlink is followed inside the root, as runtimes do when
        unpacking; one that is neither a directory nor a link to one is replaced.
        """
        last = self._last_parent
        if last is not None and last[0] == path:
            return last[1]
        node = self._walk_to_parent(path)
        self._last_parent = (path, node)
        return node

    def _walk_to_parent(self, path: str) -> Node:
        node = self.root
        for part in split_path(path):
            assert node.children is not None
            child = node.children.get(part)
            if child is not None and child.kind == "symlink":
                try:
                    target = self.resolve(f"{node.path}/{part}" if node.path else part)
                except (errors.LazyLayerError, OSError):
                    target = None
                if target is not None and target.children is not None:
                    node = target
                    continue
                child = None
            if child is None or child.children is None:
                self._implicit -= 1
                if self._implicit < 0:
                    raise errors.LimitError(f"a layer makes more parent directories it does not list than it "
                                            f"has entries (at {path[:200]!r})")
                child = Node(node, part, self._inode("dir", {"mode": 0o755}, -1), {})
                assert node.children is not None
                node.children[part] = child
            node = child
        return node

    def _add(self, layer: int, e: dict[str, Any]) -> None:
        name, kind = e["name"], e.get("type", "reg")
        if name in ("", "."):
            if kind == "dir":
                self._update_dir(self.root, e, layer)
            return
        parent_path, _, base = name.rpartition("/")
        parent = self._parent_for(parent_path)
        assert parent.children is not None
        old = parent.children.get(base)
        if old is not None and (old.children is not None or old.kind == "symlink") and kind != "dir":
            self._last_parent = None  # a directory (or a link to one) is replaced: cached parents may be gone
        if kind == "dir":
            if old is not None and old.children is not None:
                self._update_dir(old, e, layer)
            else:
                parent.children[base] = Node(parent, base, self._inode("dir", e, layer), {})
            return
        if kind == "hardlink":
            target = e.get("linkname", "")
            try:
                tnode = self.resolve(target, follow=False)
            except (errors.LazyLayerError, OSError):
                tnode = None
            if tnode is None or tnode.kind == "dir":
                raise errors.FormatError(f"layer {layer}: hardlink {name!r} -> {target!r}: "
                                         "the target is not a file of this image")
            parent.children[base] = Node(parent, base, tnode.inode)
            return
        if kind not in _FMT:
            raise errors.FormatError(f"layer {layer}: {name!r} has an unknown type {kind!r}")
        parent.children[base] = Node(parent, base, self._inode(kind, e, layer))

    def _update_dir(self, node: Node, e: dict[str, Any], layer: int) -> None:
        node.inode = self._inode("dir", e, layer)

    def _finish(self) -> None:
        """Index every path; count links (files: names per inode; dirs: 2 + subdirectories)."""
        names: dict[int, int] = {}
        leaves: list[Node] = []
        count = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            count += 1
            if node.children is not None:
                subdirs = 0
                for child in node.children.values():
                    if child.children is not None:
                        subdirs += 1
                    stack.append(child)
                node.inode.nlink = 2 + subdirs
            else:
                names[node.inode.ino] = names.get(node.inode.ino, 0) + 1
                leaves.append(node)
        for node in leaves:
            node.inode.nlink = names[node.inode.ino]
        self.paths._len = count

    # -- looking up -----------------------------------------------------------

    def resolve(self, path: str, follow: bool = True) -> Node:
        """The node at ``path``, following symlinks inside the image root.

        ``follow=False`` does not follow a symlink in the last component (like
        ``lstat``).  Raises ``FileNotFoundError``, ``NotADirectoryError`` or
        ``OSError(ELOOP)``.
        """
        fast = self.paths.get(path.strip("/"))
        if fast is not None and (not follow or fast.kind != "symlink"):
            return fast
        parts = split_path(path)
        parts.reverse()  # a stack: the next component is last
        stack = [self.root]
        hops = 0
        while parts:
            part = parts.pop()
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            cur = stack[-1]
            if cur.children is None:
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            child = cur.children.get(part)
            if child is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            if child.kind == "symlink" and (parts or follow):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)
                target = child.inode.linkname
                if target.startswith("/"):
                    del stack[1:]
                parts.extend(reversed(split_path(target)))
                continue
            stack.append(child)
        return stack[-1]

    def walk(self, top: Node) -> Iterator[tuple[Node, list[Node]]]:
        """Every directory under ``top`` (itself first) with its children, sorted by name."""
        stack = [top]
        while stack:
            node = stack.pop()
            assert node.children is not None
            children = [node.children[k] for k in sorted(node.children)]
            yield node, children
            stack.extend(c for c in reversed(children) if c.children is not None)

    def __len__(self) -> int:
        return len(self.paths)


class _Paths(Mapping[str, Node]):
    """Every node of a tree by its path (symlinks not followed), looked up by walking the tree.

    Keys are paths as :attr:`Node.path` gives them; nothing is stored per path.
    """

    def __init__(self, root: Node) -> None:
        self._root = root
        self._len = 0

    def __getitem__(self, path: str) -> Node:
        node = self._root
        if path == "":
            return node
        if not isinstance(path, str):
            raise KeyError(path)
        for part in path.split("/"):
            children = node.children
            child = children.get(part) if children is not None else None
            if child is None:
                raise KeyError(path)
            node = child
        return node

    def __iter__(self) -> Iterator[str]:
        stack = [self._root]
        while stack:
            node = stack.pop()
            yield node.path
            if node.children is not None:
                stack.extend(node.children.values())

    def __len__(self) -> int:
        return self._len
