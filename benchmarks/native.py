#!/usr/bin/env python3
"""The native image core (issue 16) against the code before it and against the physical limit, one run.

What it measures (every number a median of ``--runs`` runs, implementations interleaved):

    open      a fresh process opens a cached image through ``lazylayer://``
              (``ImageFileSystem`` on ``docker://`` from a loopback
              ``docker-registry``; disk cache warm: TOCs or index on disk) and
              stats one file.  Timed from after the imports to the stat's
              return: manifest and config fetched, index mapped (or TOCs
              parsed and the tree built).  Imports are reported apart.
    read4k    warm random 4 KiB reads of a 16 MiB file, already read once (so
              in the memory cache): ``fs.open().seek().read(4096)`` and
              ``fs.cat_file(p, s, s + 4096)``, against ``os.pread`` of the same
              file extracted to local disk (page cache warm): reads/s.
    ws200     random 4 KiB reads over a 200 MiB working set (four 50 MiB
              files) with a 32 MiB memory cache and every frame in the disk
              cache, so most reads load a frame from disk: reads/s.
    find      on a fresh filesystem of the cached image, the first
              ``fs.find("", withdirs=True, detail=True)``; and, on another,
              ``fs.walk("")``: entries/s.
    index     (this tree only) ``ll_index_build`` from the layers' TOC frames,
              and ``ll_index_open_buffer`` of the stored index: ms.

The image: ``--files`` (63,000) entries over two layers shaped like a system
image (benchmarks/image.py's target-1 model: Pareto-sized directories, 2%%
symlinks, whiteouts in layer 2), and a third layer of four 50 MiB files of
half-compressible data; converted to lazy layers and pushed to the registry.

``--baseline REV`` (default: the commit before the native core, 7beb0c5)
builds that revision in a git worktree (its C extension compiled in place) and
runs the same measurements with it in the same run, alternating.

    python -m benchmarks.native [--runs 5] [--baseline REV] [--workdir DIR]

Results and the exact command go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DATA_FILES = 4
DATA_MB = 50
MiB = 1 << 20
TAG = "v1"


def log(msg: str) -> None:
    print(f"[native] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the image


def data_tar(seed: int) -> bytes:
    """Four 50 MiB files of half-compressible bytes (random runs and text), plus a 16 MiB one."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnop") for _ in range(rng.randrange(3, 9))) for _ in range(500)]
    out = []
    info = tarfile.TarInfo("data")
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
    out.append(info.tobuf(tarfile.PAX_FORMAT))
    sizes = [("data/small16m.bin", 16 * MiB)] + [(f"data/big{i}.bin", DATA_MB * MiB) for i in range(DATA_FILES)]
    for name, size in sizes:
        chunks, n = [], 0
        while n < size:
            c = os.urandom(2048) if rng.random() < 0.5 else b" ".join(rng.choices(words, k=400))
            chunks.append(c)
            n += len(c)
        data = b"".join(chunks)[:size]
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.mtime = tarfile.REGTYPE, 0o644, size, 1_700_000_000
        out += [info.tobuf(tarfile.PAX_FORMAT), data, b"\0" * (-size % 512)]
    out.append(b"\0" * 1024)
    return b"".join(out)


def image_arguments(p: argparse.ArgumentParser) -> None:
    """``--runs`` and the arguments :func:`build` reads (``--files``, ``--workdir``): the benchmarks
    on this image (this one, mount_requests, mount_startup, mount_passthrough) share them."""
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--files", type=int, default=63_000)
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/lazylayer-native"))


def build(a: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.image import convert, gz_layout, t1_model, t1_pool, t1_tar

    d = a.workdir / f"image-{a.files}"
    stamp = d / "stamp.json"
    params = {"files": a.files, "v": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return {"dir": d, "lazy": d / "lazy", "extracted": d / "extracted"}
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    log(f"building the image: {a.files:,} entries + {DATA_FILES} x {DATA_MB} MiB")
    l1, l2, deleted, pool_size = t1_model(a.files, 16)
    pool = t1_pool(pool_size, 16)
    data = data_tar(16)
    gz_layout(d / "src", [t1_tar(l1, pool), t1_tar(l2, pool, deleted), data])
    convert(d / "src", f"oci:{d / 'lazy'}:{TAG}")
    ext = d / "extracted"
    ext.mkdir()
    with tarfile.open(fileobj=__import__("io").BytesIO(data)) as tf:
        tf.extractall(ext, filter="data")
    stamp.write_text(json.dumps(params))
    return {"dir": d, "lazy": d / "lazy", "extracted": d / "extracted"}


@contextlib.contextmanager
def pushed(img: dict[str, Any], workdir: Path) -> Iterator[tuple[str, str]]:
    """The image pushed to a loopback ``docker-registry`` kept in a temporary directory under
    ``workdir`` (on disk, not tmpfs): yields its ``docker://`` reference and that directory."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.fetch import Registry
    from benchmarks.image import convert

    with tempfile.TemporaryDirectory(prefix="native-", dir=workdir) as tmp:
        registry = Registry(Path(tmp)).start()
        try:
            ref = f"docker://127.0.0.1:{registry.port}/bench:{TAG}"
            t0 = time.perf_counter()
            convert(img["lazy"], ref)
            log(f"pushed in {time.perf_counter() - t0:.1f} s; registry on port {registry.port}")
            yield ref, tmp
        finally:
            registry.close()


def baseline_tree(a: argparse.Namespace) -> Path | None:
    """A worktree of --baseline with its extension compiled in place (cached)."""
    if a.baseline == "none":
        return None
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", a.baseline], check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = a.workdir / f"baseline-{rev}"
    if not list(tree.glob("lazylayer/core/_native*.so")):
        log(f"building the baseline {rev} in {tree}")
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(tree), rev], check=True,
                       capture_output=True)
        with tempfile.TemporaryDirectory() as tmp:  # cffi compiles under the cwd: keep setuptools out of it
            code = (f"import sys; sys.path.insert(0, {str(tree / 'lazylayer/core')!r}); "
                    "from _build import ffibuilder; print(ffibuilder.compile(tmpdir='.', verbose=False))")
            out = subprocess.run([PY, "-c", code], cwd=tmp, check=True, capture_output=True, text=True)
            built = out.stdout.strip().splitlines()[-1]
            shutil.copy(built, tree / "lazylayer/core" / os.path.basename(built))
    return tree


# ------------------------------------------------------------------ children (one measurement each)


def child(what: str, ref: str, cache: str, extracted: str, n: int) -> dict[str, Any]:
    t_imp = time.perf_counter()
    import lazylayer
    from lazylayer.core import BlockCache
    from lazylayer.fs import ImageFileSystem

    imports = time.perf_counter() - t_imp
    out: dict[str, Any] = {"imports_s": imports, "lazylayer": lazylayer.__file__}

    def open_fs(memory: int = 256 * MiB) -> Any:
        return ImageFileSystem(image=ref, cache_dir=cache, use_cache=True, memory_cache=BlockCache(memory),
                               skip_instance_cache=True, prefetch=False)

    rng = random.Random(7)
    if what == "warm":  # fill the disk cache: TOCs/index and every data frame
        fs = open_fs()
        for i in range(DATA_FILES):
            with fs.open(f"data/big{i}.bin") as f:
                while f.read(8 * MiB):
                    pass
        fs.cat_file("data/small16m.bin")
        out["entries"] = len(fs.find("", withdirs=True))
    elif what == "open":
        t0 = time.perf_counter()
        fs = open_fs()
        info = fs.info("data/small16m.bin")
        out["open_s"] = time.perf_counter() - t0
        assert info["size"] == 16 * MiB
    elif what == "read4k":
        fs = open_fs()
        p = "data/small16m.bin"
        size = 16 * MiB
        fs.cat_file(p)  # into the memory cache
        offs = [rng.randrange(0, size - 4096) for _ in range(n)]
        with fs.open(p) as f:
            t0 = time.perf_counter()
            for o in offs:
                f.seek(o)
                f.read(4096)
            out["open_read_rate"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for o in offs:
            fs.cat_file(p, o, o + 4096)
        out["cat_file_rate"] = n / (time.perf_counter() - t0)
        fd = os.open(os.path.join(extracted, p), os.O_RDONLY)
        try:
            for o in range(0, size, MiB):
                os.pread(fd, MiB, o)
            t0 = time.perf_counter()
            for o in offs:
                os.pread(fd, 4096, o)
            out["pread_rate"] = n / (time.perf_counter() - t0)
        finally:
            os.close(fd)
        with open(os.path.join(extracted, p), "rb") as f:
            sample = offs[: min(200, n)]
            for o in sample:
                f.seek(o)
                assert fs.cat_file(p, o, o + 4096) == f.read(4096), "wrong bytes"
    elif what == "ws200":
        fs = open_fs(32 * MiB)
        files = [f"data/big{i}.bin" for i in range(DATA_FILES)]
        picks = [(rng.choice(files), rng.randrange(0, DATA_MB * MiB - 4096)) for _ in range(n)]
        t0 = time.perf_counter()
        for p, o in picks:
            fs.cat_file(p, o, o + 4096)
        out["ws_rate"] = n / (time.perf_counter() - t0)
        st = fs.image.stats()
        out["frames_fetched"] = st.get("frames_fetched", 0)
    elif what == "find":
        fs = open_fs()
        fs.image  # noqa: B018 - opened before the clock starts
        t0 = time.perf_counter()
        found = fs.find("", withdirs=True, detail=True)
        out["find_s"] = time.perf_counter() - t0
        out["entries"] = len(found)
        fs2 = open_fs()
        fs2.image  # noqa: B018
        t0 = time.perf_counter()
        count = sum(len(d) + len(f) for _, d, f in fs2.walk(""))
        out["walk_s"] = time.perf_counter() - t0
        out["walk_entries"] = count
    elif what == "index":
        from lazylayer.core.index import Index
        from lazylayer.image import Image

        img = Image(ref, cache=None) if ref.startswith("oci:") else None
        assert img is not None
        layers = [img._lazy_toc(layer.descriptor, layer.source.blob) for layer in img.layers]
        builds = []
        for _ in range(5):
            t0 = time.perf_counter()
            idx = Index.build(layers)
            builds.append(time.perf_counter() - t0)
        data = idx.data()
        opens = []
        for _ in range(20):
            t0 = time.perf_counter()
            Index.from_buffer(data)
            opens.append(time.perf_counter() - t0)
        out.update(build_s=statistics.median(builds), reopen_s=statistics.median(opens), index_bytes=len(data),
                   toc_bytes=sum(len(x.toc_frame) for x in layers), names=idx.names)
    return out


def run_child(what: str, tree: Path | None, ref: str, cache: str, extracted: str, n: int) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree or ROOT)  # this file runs as a script: only lazylayer comes from there
    args = [PY, str(Path(__file__).resolve()), "--child", what, ref, cache, extracted or "-", str(n)]
    res = subprocess.run(args, env=env, capture_output=True, text=True, cwd="/")
    if res.returncode != 0:
        raise SystemExit(f"{what} ({tree or 'this tree'}) failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    want = str((tree or ROOT) / "lazylayer" / "__init__.py")
    if out["lazylayer"] != want:
        raise SystemExit(f"{what}: imported {out['lazylayer']}, wanted {want}")
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        what, ref, cache, extracted, n = argv[1:]
        print(json.dumps(child(what, ref, cache, extracted, int(n))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    image_arguments(p)
    p.add_argument("--baseline", default="7beb0c5", help="git revision to compare with ('none': skip)")
    p.add_argument("--reads", type=int, default=20_000, help="4 KiB reads per read4k run")
    p.add_argument("--ws-reads", type=int, default=3_000, help="4 KiB reads per ws200 run")
    a = p.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    img = build(a)
    base = baseline_tree(a)
    impls = {"native": None} | ({"before": base} if base is not None else {})
    with pushed(img, a.workdir) as (ref, tmp):
        caches = {k: os.path.join(tmp, f"cache-{k}") for k in impls}
        for k, tree in impls.items():
            w = run_child("warm", tree, ref, caches[k], str(img["extracted"]), 0)
            log(f"{k}: warmed the disk cache ({w['entries']:,} entries)")
        res: dict[str, dict[str, list[float]]] = {k: {} for k in impls}
        for r in range(a.runs):
            for what, n in (("open", 0), ("read4k", a.reads), ("ws200", a.ws_reads), ("find", 0)):
                order = list(impls.items()) if r % 2 == 0 else list(reversed(impls.items()))
                for k, tree in order:
                    out = run_child(what, tree, ref, caches[k], str(img["extracted"]), n)
                    for key, v in out.items():
                        if isinstance(v, (int, float)):
                            res[k].setdefault(key, []).append(v)
            log(f"run {r + 1}/{a.runs} done")
        idx = run_child("index", None, f"oci:{img['lazy']}:{TAG}", caches["native"], "", 0)
    report(a, res, idx)


def report(a: argparse.Namespace, res: dict[str, dict[str, list[float]]], idx: dict[str, Any]) -> None:
    def m(k: str, key: str) -> float:
        return statistics.median(res[k][key]) if key in res.get(k, {}) else float("nan")

    have_base = "before" in res
    rows = [
        ("fresh process: open cached image + stat (ms)", "open_s", 1e3, "<= 40 ms"),
        ("  imports (ms)", "imports_s", 1e3, ""),
        ("warm 4 KiB reads, fs.open().read (reads/s)", "open_read_rate", 1, ">= 0.6x os.pread"),
        ("warm 4 KiB reads, cat_file (reads/s)", "cat_file_rate", 1, ">= 0.6x os.pread"),
        ("  os.pread, extracted file (reads/s)", "pread_rate", 1, ""),
        ("200 MiB working set, 32 MiB memory cache, 4 KiB reads (reads/s)", "ws_rate", 1, ">= 3x before"),
        ("first fs.find(detail=True) (s)", "find_s", 1, ">= 2x before's rate"),
        ("fs.walk (s)", "walk_s", 1, "no slower"),
    ]
    print(f"\n## Native image core: {int(m('native', 'entries')):,} entries, medians of {a.runs} runs\n")
    print("| measure | native | before | native/before | target |")
    print("|---|---:|---:|---:|---|")
    for label, key, scale, target in rows:
        nv, bv = m("native", key) * scale, m("before", key) * scale if have_base else float("nan")
        ratio = nv / bv if have_base and bv else float("nan")
        print(f"| {label} | {nv:,.1f} | {bv:,.1f} | {ratio:.2f}x | {target} |")
    pr = m("native", "pread_rate")
    print(f"\nfs.open().read / os.pread = {m('native', 'open_read_rate') / pr:.2f}; "
          f"cat_file / os.pread = {m('native', 'cat_file_rate') / pr:.2f}")
    if have_base:
        print(f"find rate native/before = {m('before', 'find_s') / m('native', 'find_s'):.2f}x; "
              f"walk rate native/before = {m('before', 'walk_s') / m('native', 'walk_s'):.2f}x; "
              f"ws200 rate native/before = {m('native', 'ws_rate') / m('before', 'ws_rate'):.2f}x")
    print(f"\nindex: {idx['names']:,} names; TOC frames {idx['toc_bytes']:,} B -> index {idx['index_bytes']:,} B; "
          f"ll_index_build {idx['build_s'] * 1e3:.1f} ms (target <= 50 ms from decompressed TOCs: this includes "
          f"their decompression), ll_index_open_buffer {idx['reopen_s'] * 1e3:.2f} ms (target <= 5 ms)")
    print(f"\nmachine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    if sys.path[0] == str(Path(__file__).resolve().parent):
        sys.path.pop(0)  # run as a script (a measurement child): not the benchmarks directory
    main()
