"""The wheel: built from a copy of this tree, it holds every subpackage, the compiled extension and
py.typed, and it imports and runs on its own — with the repository nowhere on ``sys.path``.

Slow (it compiles the C extension), so marked ``slow``; it still runs in the
default suite.  The wheel is built with pip as a user would (``pip wheel``,
build isolation; ``--no-build-isolation`` if that cannot get the build
requirements), from a copy of the sources without any built artefact in it, so
a stale ``build/`` or an in-place ``_native*.so`` cannot stand in for what the
build really produces.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: what a source checkout needs to build (pyproject.toml, setup.py's cffi build, MANIFEST.in's C sources)
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "lazylayer", "csrc"]
#: modules that are not imported when checking the wheel: the build script (needs csrc/) and
#: ``python -m lazylayer`` (run below as a program instead)
NOT_IMPORTED = {"lazylayer.core._build", "lazylayer.__main__"}
#: module files from before the subpackages: the aliases in lazylayer/_compat.py stand for them now
OLD_FILES = ["auth.py", "referrers.py", "cache.py", "tree.py", "tarstream.py", "seekable.py", "_lib.py",
             "oci.py", "prefetch.py", "mount.py", "registry.py", "remote.py", "format.py", "image.py"]


def _copy_sources(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.o", "*.a", "build", "build-*", "*.egg-info")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def _build_wheel(src: Path, out: Path) -> Path:
    attempts = []
    for extra in ([], ["--no-build-isolation"]):
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-input", *extra, "-w", str(out), str(src)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=src, check=False)
        wheels = sorted(out.glob("lazylayer-*.whl"))
        if res.returncode == 0 and len(wheels) == 1:
            return wheels[0]
        attempts.append(f"$ {' '.join(cmd)}\nexit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    pytest.fail("could not build the wheel:\n\n" + "\n\n".join(attempts))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    _copy_sources(src)
    return _build_wheel(src, tmp_path_factory.mktemp("wheel"))


def _source_modules() -> set[str]:
    """Every module file under lazylayer/ in this tree, as a wheel path (``lazylayer/image/cache.py``)."""
    return {str(p.relative_to(ROOT)) for p in (ROOT / "lazylayer").rglob("*.py") if "__pycache__" not in p.parts}


def test_the_wheel_holds_every_module_the_extension_and_py_typed(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_source_modules() - names)
    assert not missing, f"not in {wheel.name}: {missing}"
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "lazylayer").rglob("__init__.py")}
    assert {"lazylayer/core", "lazylayer/remote", "lazylayer/oci", "lazylayer/registry", "lazylayer/format",
            "lazylayer/image", "lazylayer/prefetch", "lazylayer/mount"} <= packages
    assert "lazylayer/py.typed" in names
    native = [n for n in names if n.startswith("lazylayer/core/_native") and n.endswith(".so")]
    assert len(native) == 1, f"want one compiled lazylayer/core/_native*.so, got {native}"
    assert not [n for n in names if n.startswith("lazylayer/_native")], "an extension at the old path"
    # the erofs backend's supervisor, a program beside the extension (setup.py), executable once installed
    info = zipfile.ZipFile(wheel).getinfo("lazylayer/core/lazylayer-erofsd")
    assert (info.external_attr >> 16) & 0o111 == 0o111, oct(info.external_attr >> 16)
    stale = sorted(f"lazylayer/{f}" for f in OLD_FILES if f"lazylayer/{f}" in names)
    assert not stale, f"modules from before the subpackages: {stale}"
    assert not [n for n in names if not n.startswith(("lazylayer/", "lazylayer-"))], "files outside the package"


def test_the_wheel_metadata_has_the_entry_points(wheel: Path) -> None:
    z = zipfile.ZipFile(wheel)
    info = next(n.split("/")[0] for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert "[fsspec.specs]" in entry_points and "lazylayer = lazylayer.fs:ImageFileSystem" in entry_points
    assert "[console_scripts]" in entry_points and "lazylayer = lazylayer.cli:main" in entry_points
    metadata = z.read(f"{info}/METADATA").decode()
    for dep in ("zstandard", "aiohttp", "fsspec", "cffi"):
        assert f"Requires-Dist: {dep}" in metadata, dep


_CHECK = r'''
import importlib, importlib.metadata, json, os, runpy, sys

site, deps, modules, root = json.loads(sys.argv[1])
sys.path[:0] = [site]
sys.path.append(deps)       # the third-party dependencies only: no .pth files, so no editable finder
assert not any(p and os.path.realpath(p) == root for p in sys.path), sys.path

out = {}
for name in modules:
    mod = importlib.import_module(name)
    out[name] = mod.__file__
# (cffi's ``lazylayer.core._native.lib`` is a module object without a file: it is the extension's)
from_repo = sorted(name for name, m in list(sys.modules.items())
                   if name.startswith("lazylayer") and getattr(m, "__file__", None)
                   and not m.__file__.startswith(site))

import lazylayer
with lazylayer.SeekableWriter("blob.zst", frame_size=4096) as w:   # in the (temporary) cwd
    w.write(bytes(range(256)) * 64)
with lazylayer.SeekableReader("blob.zst") as r:
    assert r.pread(10, 4090) == (bytes(range(256)) * 64)[4090:4100] and r.frames == 4

import fsspec
assert fsspec.get_filesystem_class("lazylayer") is sys.modules["lazylayer.fs"].ImageFileSystem

sys.argv = ["lazylayer", "--help"]
try:
    runpy.run_module("lazylayer", run_name="__main__")
    code = None
except SystemExit as exc:
    code = exc.code
print(json.dumps({"files": out, "from_repo": from_repo, "help_exit": code,
                  "version": importlib.metadata.version("lazylayer"), "native": lazylayer.core._native.__file__}))
'''


def test_the_wheel_imports_on_its_own(wheel: Path, tmp_path: Path) -> None:
    """Every module of the unpacked wheel imports with the repository off ``sys.path``; the C
    extension works; fsspec finds ``lazylayer://``; ``python -m lazylayer --help`` runs."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
        modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in z.namelist()
                         if n.endswith(".py"))
    modules = [m for m in modules if m not in NOT_IMPORTED]
    deps = sysconfig.get_paths()["purelib"]  # this venv's site-packages: aiohttp, fsspec, cffi...
    work = tmp_path / "cwd"
    work.mkdir()
    # -I: no PYTHONPATH, no user site, not the script's directory; -S: no site-packages .pth files
    # (the editable install's finder would map lazylayer back to this repository).
    res = subprocess.run([sys.executable, "-I", "-S", "-c", _CHECK,
                          json.dumps([str(site), deps, modules, str(ROOT.resolve())])],
                         capture_output=True, text=True, timeout=300, cwd=work, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(got["files"]) == len(modules) > 40
    outside = {m: f for m, f in got["files"].items() if not f.startswith(str(site))}
    assert not outside, f"imported from outside the wheel: {outside}"
    assert got["from_repo"] == []
    assert got["native"].startswith(str(site / "lazylayer" / "core" / "_native"))
    assert got["help_exit"] in (0, None)
    assert got["version"]
