"""Build the cold-start image once: Debian bookworm minbase + python3, pandas and matplotlib.

Layer 1 is ``debootstrap --variant=minbase``; layer 2 installs the packages and
deletes what layer 1 had under /usr/share/doc, /var/lib/apt/lists and
/var/cache/apt (whiteouts).  ``umoci`` writes the gzip image to an OCI layout;
lazylayer's ``Converter`` writes its lazy conversion to a second layout.  Both
are kept under the work directory with a stamp; ``--rebuild`` redoes them.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import file_sha256

TAG = "cs"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ["python3", "python3-pandas", "python3-matplotlib"]
# Deleted in layer 2, present in layer 1: these become whiteouts.
DELETE = ["usr/share/doc/*", "var/lib/apt/lists/*", "var/cache/apt/*"]
STAMP_VERSION = 1
GB = 10**9


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(*argv: str | Path, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=True, **kw)


def layout_manifest(layout: Path, tag: str = TAG) -> dict[str, Any]:
    """The image manifest tagged ``tag`` in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return json.loads(blob_path(layout, m["digest"]).read_bytes())
    raise SystemExit(f"{layout}: no tag {tag}")


def blob_path(layout: Path, digest: str) -> Path:
    algo, hexd = digest.split(":", 1)
    return layout / "blobs" / algo / hexd


def _chroot_install(rootfs: Path) -> None:
    """apt-get install PACKAGES in ``rootfs`` (with /proc, /sys and /dev mounted, no services started)."""
    mounts = [("proc", rootfs / "proc", ["-t", "proc", "proc"]), ("sys", rootfs / "sys", ["-t", "sysfs", "sysfs"]),
              ("dev", rootfs / "dev", ["--rbind", "/dev"])]
    policy = rootfs / "usr/sbin/policy-rc.d"
    resolv = rootfs / "etc/resolv.conf"
    resolv_before = resolv.read_bytes() if resolv.exists() else None
    done: list[Path] = []
    try:
        for _, target, args in mounts:
            sh("mount", *args, target)
            done.append(target)
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        shutil.copyfile("/etc/resolv.conf", resolv)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
               "HOME": "/root"}
        sh("chroot", rootfs, "apt-get", "update", env=env)
        sh("chroot", rootfs, "apt-get", "install", "-y", *PACKAGES, env=env)
        sh("chroot", rootfs, "apt-get", "clean", env=env)
        sh("chroot", rootfs, "sh", "-c", "rm -rf " + " ".join("/" + d for d in DELETE), env=env)
    finally:
        policy.unlink(missing_ok=True)
        resolv.unlink(missing_ok=True)
        if resolv_before is not None:
            resolv.write_bytes(resolv_before)
        for target in reversed(done):
            subprocess.run(["umount", "-R", str(target)], check=False)


def layer_stats(layout: Path) -> list[dict[str, Any]]:
    """Per layer of the gzip image: compressed and tar size, entries and whiteouts (read with ``tarfile``)."""
    out = []
    for desc in layout_manifest(layout)["layers"]:
        entries = whiteouts = opaque = 0
        with gzip.open(blob_path(layout, desc["digest"]), "rb") as raw:
            counter = _Counting(raw)
            with tarfile.open(fileobj=counter, mode="r|") as tf:  # type: ignore[call-overload]
                for m in tf:
                    entries += 1
                    base = m.name.rsplit("/", 1)[-1]
                    if base == ".wh..wh..opq":
                        opaque += 1
                    elif base.startswith(".wh."):
                        whiteouts += 1
            while counter.read(1 << 20):  # the tar's end-of-archive blocks and padding
                pass
        out.append({"digest": desc["digest"], "gzip": desc["size"], "tar": counter.n, "entries": entries,
                    "whiteouts": whiteouts, "opaque": opaque})
    return out


class _Counting:
    def __init__(self, f: Any) -> None:
        self.f, self.n = f, 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.n += len(b)
        return b


def build(workdir: Path, rebuild: bool = False) -> dict[str, Any]:
    """Build (or reuse) the gzip layout ``workdir/gzip`` and the lazy layout ``workdir/lazy``; return the stats."""
    stamp = workdir / "image.json"
    if not rebuild and stamp.exists():
        info = json.loads(stamp.read_text())
        if info.get("version") == STAMP_VERSION:
            log(f"image: reusing {workdir} (built in {info['build_s']:.0f} s; --rebuild to redo)")
            return info
    gz, lazy, bundle = workdir / "gzip", workdir / "lazy", workdir / "bundle"
    for d in (gz, lazy, bundle):
        if d.exists():
            subprocess.run(["umount", "-R", str(d / "rootfs" / "proc")], check=False, capture_output=True)
            shutil.rmtree(d)
    stamp.unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sh("umoci", "init", "--layout", gz)
    sh("umoci", "new", "--image", f"{gz}:{TAG}")
    sh("umoci", "unpack", "--image", f"{gz}:{TAG}", bundle)
    log("image: debootstrap --variant=minbase bookworm (layer 1)")
    sh("debootstrap", "--variant=minbase", "bookworm", bundle / "rootfs", MIRROR)
    sh("umoci", "repack", "--refresh-bundle", "--image", f"{gz}:{TAG}", bundle)
    t1 = time.perf_counter()
    log(f"image: apt-get install {' '.join(PACKAGES)} (layer 2)")
    _chroot_install(bundle / "rootfs")
    sh("umoci", "repack", "--image", f"{gz}:{TAG}", bundle)
    sh("umoci", "gc", "--layout", gz)
    t2 = time.perf_counter()
    shutil.rmtree(bundle)
    layers = layer_stats(gz)
    total = sum(x["tar"] for x in layers)
    log(f"image: {len(layers)} layers, {total:,} B uncompressed, "
        f"{sum(x['whiteouts'] + x['opaque'] for x in layers)} whiteouts")
    if total < GB:
        raise SystemExit(f"image is {total:,} B uncompressed, less than 1 GB")
    if not layers[-1]["whiteouts"]:
        raise SystemExit("the top layer has no whiteouts")
    log("image: converting to lazy layers")
    from lazylayer.convert import Converter

    t3 = time.perf_counter()
    Converter(progress=False).convert(f"oci:{gz}:{TAG}", f"oci:{lazy}:{TAG}")
    t4 = time.perf_counter()
    lazy_sizes = [d["size"] for d in layout_manifest(lazy)["layers"]]
    info = {"version": STAMP_VERSION, "layers": layers, "lazy": lazy_sizes, "build_s": t4 - t0,
            "phases": {"debootstrap": t1 - t0, "install": t2 - t1, "stats": t3 - t2, "convert": t4 - t3},
            "packages": PACKAGES, "delete": DELETE}
    stamp.write_text(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/var/tmp/lazylayer-coldstart"),
                           rebuild="--rebuild" in sys.argv), indent=1))


ESGZ_STAMP_VERSION = 1


def build_estargz(workdir: Path, rebuild: bool = False, zstd: bool = False, src: Path | None = None,
                  out: Path | None = None, tag: str = TAG) -> dict[str, Any] | None:
    """The same image as eStargz, written by stargz-snapshotter's own library (tests/estargz_gen,
    built here offline against Debian's golang-github-containerd-stargz-snapshotter-dev) with its
    defaults (4 MiB chunks, gzip level 9), layer by layer from the gzip image's tars, into
    ``WORKDIR/esgz`` with the config's diff_ids rewritten (an eStargz tar holds its TOC entry and a
    landmark too).  With ``zstd``, stargz's zstd:chunked instead (its defaults: 4 MiB chunks, zstd
    level 3), into ``WORKDIR/szchunk``.  ``src``/``out``/``tag``: another gzip layout (tagged
    ``tag``) to convert, and where to (benchmarks/image.py's).  None when go or that source is missing."""
    gen_src = Path(__file__).resolve().parents[2] / "tests" / "estargz_gen"
    gocode = Path("/usr/share/gocode/src/github.com/containerd/stargz-snapshotter")
    if shutil.which("go") is None or not gocode.is_dir():
        log("eStargz image: needs go and golang-github-containerd-stargz-snapshotter-dev: skipped")
        return None
    name = "szchunk" if zstd else "esgz"
    out = out or workdir / name
    stamp = out.with_name(out.name + ".json")
    if (kept := _kept(out, stamp, ESGZ_STAMP_VERSION, rebuild)) is not None:
        return kept
    t0 = time.perf_counter()
    gen = workdir / "estargz_gen"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{workdir / 'gopath'}:/usr/share/gocode",
           "GOCACHE": str(workdir / "gocache"), "GOFLAGS": ""}
    subprocess.run(["go", "build", "-o", str(gen), "."], cwd=gen_src, env=env, check=True)
    gz = src or workdir / "gzip"
    manifest = layout_manifest(gz, tag)
    config = json.loads((gz / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes())
    (out / "blobs" / "sha256").mkdir(parents=True)
    (out / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layers, diff_ids = [], []
    for i, desc in enumerate(manifest["layers"]):
        log(f"{name} image: layer {i + 1} of {len(manifest['layers'])}")
        tar, blob = workdir / "esgz-in.tar", workdir / "esgz-out.blob"
        with open(tar, "wb") as f:
            subprocess.run(["pigz", "-dc", str(gz / "blobs" / "sha256" / desc["digest"][7:])], stdout=f, check=True)
        argv = [str(gen), *(["-zstdchunked"] if zstd else []), str(tar), str(blob)]
        meta = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
        digest, size = file_sha256(blob), blob.stat().st_size
        blob.rename(blob_path(out, digest))
        tar.unlink()
        media = "application/vnd.oci.image.layer.v1.tar+" + ("zstd" if zstd else "gzip")
        layers.append({"mediaType": media, "digest": digest, "size": size,
                       "annotations": meta["annotations"]})
        diff_ids.append(meta["diff_id"])
    config["rootfs"]["diff_ids"] = diff_ids
    cdesc = _write_json_blob(out, config,
                             manifest["config"].get("mediaType", "application/vnd.oci.image.config.v1+json"))
    mdesc = _write_json_blob(out, {**manifest, "config": cdesc, "layers": layers},
                             manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json"))
    mdesc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    info = {"version": ESGZ_STAMP_VERSION, "sizes": [x["size"] for x in layers], "build_s": time.perf_counter() - t0}
    stamp.write_text(json.dumps(info))
    return info


ZCHUNK_STAMP_VERSION = 1


def build_zstd_chunked(workdir: Path, rebuild: bool = False, src: Path | None = None, out: Path | None = None,
                       tag: str = TAG) -> dict[str, Any]:
    """The same image as zstd:chunked, as Debian's skopeo (1.9.3) writes it with its defaults
    (``skopeo copy --dest-compress-format zstd:chunked``: level 10, content-defined chunks), from
    the gzip image (or ``src``, tagged ``tag``), into ``WORKDIR/zchunk`` (or ``out``)."""
    out = out or workdir / "zchunk"
    stamp = out.with_name(out.name + ".json")
    if (kept := _kept(out, stamp, ZCHUNK_STAMP_VERSION, rebuild)) is not None:
        return kept
    t0 = time.perf_counter()
    log("zstd:chunked image: skopeo copy (level 10, its default: a few minutes)")
    subprocess.run(["skopeo", "copy", "-q", "--dest-compress-format", "zstd:chunked",
                    f"oci:{src or workdir / 'gzip'}:{tag}", f"oci:{out}:{tag}"], check=True)
    info = {"version": ZCHUNK_STAMP_VERSION, "sizes": [x["size"] for x in layout_manifest(out, tag)["layers"]],
            "build_s": time.perf_counter() - t0}
    stamp.write_text(json.dumps(info))
    return info


def _kept(out: Path, stamp: Path, version: int, rebuild: bool) -> dict[str, Any] | None:
    """The stamp of a layout built before (``version``), or None, ``out`` cleared for a build."""
    if not rebuild and stamp.exists() and out.exists():
        info = json.loads(stamp.read_text())
        if info.get("version") == version:
            return info
    if out.exists():
        shutil.rmtree(out)
    return None


def _write_json_blob(layout: Path, doc: dict[str, Any], media_type: str) -> dict[str, Any]:
    from lazylayer.oci.media import descriptor

    data = json.dumps(doc).encode()
    desc = descriptor(media_type, data)
    blob_path(layout, desc["digest"]).write_bytes(data)
    return desc
