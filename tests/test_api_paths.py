"""Every import path the docs name works: new paths quietly, old ones with a warning that names the new one.

The package was split into subpackages (docs/architecture.md).  The names in
docs/*.md and README.md are read from the text itself — dotted
``lazylayer.x.y`` names and ``from lazylayer.x import a, b`` lines — so a doc
that names something that does not exist fails here.  Paths are resolved in a
fresh interpreter (imported modules are cached, and a module that warns when
first imported warns only once): the current paths first, with every warning
recorded, then each old path after its alias is dropped from ``sys.modules``.
An old path must warn with a ``DeprecationWarning`` naming its new home and
give the very same object.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import images
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

#: old module -> the module it is now (lazylayer/_compat.py's table, which the test checks against this)
MOVED_MODULES = {
    "lazylayer.auth": "lazylayer.registry.auth",
    "lazylayer.referrers": "lazylayer.registry.referrers",
    "lazylayer.cache": "lazylayer.image.cache",
    "lazylayer.tree": "lazylayer.image.tree",
    "lazylayer.tarstream": "lazylayer.format.tar",
    "lazylayer.seekable": "lazylayer.core.seekable",
    "lazylayer._lib": "lazylayer.core._lib",
    "lazylayer._native": "lazylayer.core._native",
}
#: old attribute -> where it is now
MOVED_NAMES = {
    "lazylayer.oci.open_source": "lazylayer.registry.open_source",
    "lazylayer.oci.open_destination": "lazylayer.registry.open_destination",
}

#: the current paths docs/python-api.md is built on, whether or not a doc names each today
CURRENT = [
    "lazylayer.SeekableReader", "lazylayer.SeekableWriter", "lazylayer.BlockCache", "lazylayer.WorkerPool",
    "lazylayer.CacheStats", "lazylayer.FrameInfo", "lazylayer.default_cache", "lazylayer.default_pool",
    "lazylayer.LazyLayerError", "lazylayer.IntegrityError", "lazylayer.FormatError", "lazylayer.SourceError",
    "lazylayer.Image", "lazylayer.ImageFileSystem", "lazylayer.DiskCache",
    "lazylayer.errors.RemoteError", "lazylayer.errors.AuthError", "lazylayer.errors.NotFoundError",
    "lazylayer.errors.RemoteTimeoutError", "lazylayer.errors.NativeError",
    "lazylayer.core.SeekableReader", "lazylayer.core.SeekableWriter", "lazylayer.core.BlockCache",
    "lazylayer.core.WorkerPool", "lazylayer.core.seekable", "lazylayer.core._lib", "lazylayer.core._native",
    "lazylayer.units.parse_size", "lazylayer.units.human_size",
    "lazylayer.remote.Transport", "lazylayer.remote.RemoteOptions", "lazylayer.remote.open_blob",
    "lazylayer.remote.HttpBlob", "lazylayer.remote.FsspecBlob", "lazylayer.remote.background",
    "lazylayer.remote.network_retry", "lazylayer.remote.transport", "lazylayer.remote.blob",
    "lazylayer.oci.select_image", "lazylayer.oci.OciLayout", "lazylayer.oci.DockerArchive",
    "lazylayer.oci.ReferenceError", "lazylayer.oci.parse_reference", "lazylayer.oci.media",
    "lazylayer.oci.reference", "lazylayer.oci.store", "lazylayer.oci.layout", "lazylayer.oci.archive",
    "lazylayer.registry.Registry", "lazylayer.registry.RegistryConfig", "lazylayer.registry.open_source",
    "lazylayer.registry.open_destination", "lazylayer.registry.client", "lazylayer.registry.sources",
    "lazylayer.registry.auth", "lazylayer.registry.auth.Credentials", "lazylayer.registry.referrers.attach",
    "lazylayer.registry.referrers.find", "lazylayer.registry.referrers.read_payload",
    "lazylayer.format.LayerWriter", "lazylayer.format.read_toc", "lazylayer.format.Toc",
    "lazylayer.format.LayerInfo", "lazylayer.format.TarScanner", "lazylayer.format.decompressed_chunks",
    "lazylayer.format.reencode_layer", "lazylayer.format.tar", "lazylayer.format.layer", "lazylayer.format.reencode",
    "lazylayer.image.Image", "lazylayer.image.Layer", "lazylayer.image.DiskCache", "lazylayer.image.CacheError",
    "lazylayer.image.Tree", "lazylayer.image.FrameSource", "lazylayer.image.NotLazyWarning",
    "lazylayer.image.image", "lazylayer.image.frames", "lazylayer.image.cache", "lazylayer.image.tree",
    "lazylayer.prefetch.start", "lazylayer.prefetch.Plan", "lazylayer.prefetch.LayerPlan",
    "lazylayer.prefetch.PlanError", "lazylayer.prefetch.load_plan", "lazylayer.prefetch.Recorder",
    "lazylayer.prefetch.Prefetcher", "lazylayer.prefetch.attach", "lazylayer.prefetch.find_attached",
    "lazylayer.prefetch.plan", "lazylayer.prefetch.recorder", "lazylayer.prefetch.prefetcher",
    "lazylayer.prefetch.start", "lazylayer.fs.ImageFileSystem",
    "lazylayer.Mount", "lazylayer.mount.Mount", "lazylayer.mount.AsyncMount", "lazylayer.mount.unmount",
    "lazylayer.mount.is_mounted", "lazylayer.mount.MountError", "lazylayer.mount.fuse",
    "lazylayer.mount.control", "lazylayer.mount.daemon",
    "lazylayer.convert.Converter", "lazylayer.convert.convert", "lazylayer.convert.ConvertResult",
    "lazylayer.record.record", "lazylayer.record.RecordResult",
]

# ------------------------------------------------------------------ what the docs name

_DOTTED = re.compile(r"(?<![\w.\-/])lazylayer(?:\.[A-Za-z_]\w*)+")
_FROM = re.compile(r"^\s*from\s+(lazylayer(?:\.\w+)*)\s+import\s+([\w\s,]+?)\s*(?:#.*)?$")
#: file names and such that look like dotted names: lazylayer.h, lazylayer.pc, lazylayer.so
_NOT_PYTHON = {"h", "pc", "so", "a", "c"}


def documented() -> dict[str, list[str]]:
    """Every ``lazylayer...`` Python path the docs and the README name, with where."""
    found: dict[str, list[str]] = {}
    for path in DOC_FILES:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{lineno}"
            names = [n for n in _DOTTED.findall(line) if n.rsplit(".", 1)[1] not in _NOT_PYTHON]
            m = _FROM.match(line)
            if m:
                for part in m.group(2).split(","):
                    if part.strip():
                        names.append(f"{m.group(1)}.{part.split()[0]}")
            for name in names:
                found.setdefault(name, []).append(where)
    return found


def new_path(name: str) -> str | None:
    """Where an old (moved) path is now; None for a current path."""
    for old, new in MOVED_NAMES.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    for old, new in MOVED_MODULES.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


# ------------------------------------------------------------------ resolving, in a fresh interpreter

_RESOLVER = r'''
import importlib, json, sys, warnings

def resolve(name):
    parts = name.split(".")
    obj = importlib.import_module(parts[0])
    done = parts[0]
    for part in parts[1:]:
        full = f"{done}.{part}"
        if isinstance(obj, type(sys)) and part in vars(obj):
            obj = vars(obj)[part]
        else:
            try:
                obj = importlib.import_module(full)
            except ModuleNotFoundError as exc:
                if exc.name != full:
                    raise
                obj = getattr(obj, part)
        done = full
    return obj

def forget(old):
    """Drop an alias so that importing it again runs (and warns) again."""
    sys.modules.pop(old, None)
    parent, _, child = old.rpartition(".")
    if parent in sys.modules and child in vars(sys.modules[parent]):
        delattr(sys.modules[parent], child)

def check(name, new, moved):
    for old in moved:
        forget(old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = resolve(name)
            error = None
        except Exception as exc:
            obj, error = None, f"{type(exc).__name__}: {exc}"
    out = {"name": name, "error": error,
           "warnings": [[w.category.__name__, str(w.message), f"{w.filename}:{w.lineno}"] for w in caught]}
    if new is not None and error is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out["same"] = resolve(new) is obj
    return out

todo = json.load(sys.stdin)
json.dump([check(name, new, todo["moved"]) for name, new in todo["names"]], sys.stdout)
'''


def resolve_all(names: list[tuple[str, str | None]]) -> dict[str, dict[str, Any]]:
    """``check`` each (name, new name or None) in order, in one fresh interpreter run from tmp."""
    todo = {"names": names, "moved": list(MOVED_MODULES)}
    res = subprocess.run([sys.executable, "-c", _RESOLVER], input=json.dumps(todo), capture_output=True,
                         text=True, timeout=120, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    return {r["name"]: r for r in json.loads(res.stdout)}


@pytest.fixture(scope="module")
def docs_names() -> dict[str, list[str]]:
    return documented()


@pytest.fixture(scope="module")
def resolved(docs_names: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Current paths first (a warning at a module's first import is seen), then the old ones."""
    current = sorted({n for n in [*docs_names, *CURRENT] if new_path(n) is None})
    old = sorted({n for n in [*docs_names, *MOVED_MODULES, *MOVED_NAMES] if new_path(n) is not None})
    return resolve_all([(n, None) for n in current] + [(n, new_path(n)) for n in old])


# ------------------------------------------------------------------ the tests


def test_the_docs_name_what_this_test_knows(docs_names: dict[str, list[str]]) -> None:
    """The scan finds the paths docs/python-api.md is about (a guard against a regex that finds nothing)."""
    for name in ("lazylayer.prefetch.start", "lazylayer.units.parse_size", "lazylayer.image.Image",
                 "lazylayer.registry.open_source", "lazylayer.convert.Converter", "lazylayer.record.record",
                 "lazylayer.core._native", "lazylayer.cache"):
        assert name in docs_names, f"{name} is no longer named in docs/ or README.md"
    assert not [n for n in docs_names if n.endswith((".h", ".pc", ".so"))]


def test_the_moved_table_is_lazylayers_own() -> None:
    from lazylayer import _compat

    assert _compat.MOVED == MOVED_MODULES


def test_current_paths_import_without_any_warning(resolved: dict[str, dict[str, Any]],
                                                  docs_names: dict[str, list[str]]) -> None:
    bad = []
    for name, r in resolved.items():
        if new_path(name) is not None:
            continue
        where = ", ".join(docs_names.get(name, ["tests/test_api_paths.py CURRENT"])[:3])
        if r["error"]:
            bad.append(f"{name} ({where}): {r['error']}")
        elif r["warnings"]:
            bad.append(f"{name} ({where}) warns: {r['warnings']}")
    assert not bad, "\n".join(bad)


def test_old_paths_warn_naming_the_new_one_and_give_the_same_object(resolved: dict[str, dict[str, Any]],
                                                                     docs_names: dict[str, list[str]]) -> None:
    bad = []
    olds = [n for n in resolved if new_path(n) is not None]
    assert set(MOVED_MODULES) | set(MOVED_NAMES) <= set(olds)
    for name in olds:
        r, new = resolved[name], new_path(name)
        assert new is not None
        where = ", ".join(docs_names.get(name, ["the moved table"])[:3])
        home = next(n for n in [*MOVED_NAMES.values(), *MOVED_MODULES.values()] if new.startswith(n))
        if r["error"]:
            bad.append(f"{name} ({where}): {r['error']}")
            continue
        deprecations = [w for w in r["warnings"] if w[0] == "DeprecationWarning"]
        if len(deprecations) != 1 or home not in deprecations[0][1] or len(r["warnings"]) != 1:
            bad.append(f"{name} ({where}): want one DeprecationWarning naming {home}, got {r['warnings']}")
        if not r.get("same"):
            bad.append(f"{name} ({where}) is not the very object {new} is")
    assert not bad, "\n".join(bad)


def _import_again(old: str) -> Any:
    """Import an old path as if for the first time (its alias dropped from ``sys.modules`` and its parent)."""
    sys.modules.pop(old, None)
    parent, _, child = old.rpartition(".")
    vars(sys.modules[parent]).pop(child, None)
    return importlib.import_module(old)


def test_old_module_is_the_new_module_object() -> None:
    """In this process too: ``lazylayer.cache`` *is* ``lazylayer.image.cache`` (isinstance, monkeypatching)."""
    import lazylayer.core._native

    import lazylayer.image.cache
    import lazylayer.oci
    import lazylayer.registry

    with pytest.warns(DeprecationWarning, match=r"lazylayer\.image\.cache"):
        cache = _import_again("lazylayer.cache")
    assert cache is lazylayer.image.cache is sys.modules["lazylayer.cache"]
    assert cache.DiskCache is lazylayer.image.DiskCache is lazylayer.DiskCache
    with pytest.warns(DeprecationWarning, match=r"lazylayer\.registry\.open_source"):
        open_source = lazylayer.oci.open_source
    assert open_source is lazylayer.registry.open_source
    with pytest.warns(DeprecationWarning, match=r"lazylayer\.core\._native"):
        native = _import_again("lazylayer._native")
    assert native is lazylayer.core._native and native.ffi is lazylayer.core._native.ffi


def test_the_fsspec_entry_point_is_the_filesystem() -> None:
    import fsspec

    import lazylayer.fs

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls = fsspec.get_filesystem_class("lazylayer")
    assert cls is lazylayer.fs.ImageFileSystem
    assert cls.protocol == "lazylayer" or "lazylayer" in cls.protocol


def test_mount_is_a_module_with_its_functions() -> None:
    import types

    import lazylayer.mount

    assert isinstance(lazylayer.mount, types.ModuleType)
    for name in ("unmount", "is_mounted"):
        assert callable(getattr(lazylayer.mount, name)), name
    assert issubclass(lazylayer.mount.MountError, lazylayer.errors.LazyLayerError)
    # lazylayer.Mount is the class (the worker agents' API), lazylayer.mount stays the package
    assert isinstance(lazylayer.Mount, type) and lazylayer.Mount is lazylayer.mount.Mount
    assert not hasattr(lazylayer.mount, "serve")  # replaced by Mount (docs/python-api.md)


def test_image_prefetch_keywords_are_deprecated(tmp_path: Path) -> None:
    """A real (tiny, converted) image: ``Image(ref)`` is quiet, ``Image(ref, prefetch=None)`` warns toward
    ``lazylayer.prefetch.start``, and both read the file."""
    from lazylayer.convert import Converter
    from lazylayer.image import Image
    from lazylayer.prefetch import start

    plain = images.build_layout(str(tmp_path / "plain"), [images.make_tar([images.reg("hello.txt", b"hi\n")])],
                                tag="v1")
    Converter(progress=False).convert(plain, f"oci:{tmp_path / 'lazy'}:v1")
    ref = f"oci:{tmp_path / 'lazy'}:v1"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Image(ref) as img:
            node = img.tree.resolve("hello.txt")
            assert img.pread(node, 100, 0) == b"hi\n"
            assert start(img, None) is None  # an OCI layout: no disk cache, nothing to prefetch into
            assert img.prefetcher is None
    with pytest.warns(DeprecationWarning, match=r"lazylayer\.prefetch\.start") as caught:
        img = Image(ref, prefetch=None)
    with img:
        assert img.pread(img.tree.resolve("hello.txt"), 100, 0) == b"hi\n"
    assert caught[0].filename == __file__  # blamed on the caller, not on lazylayer
    for kw in ({"fill": True}, {"fill_rate": 1 << 20}, {"readahead": False}):
        with pytest.warns(DeprecationWarning, match="deprecated"):
            Image(ref, **kw).close()
    assert "prefetch" in inspect.signature(Image).parameters  # still accepted, for now
