"""A full pull as containerd does it: every layer at once, decompressed and untarred as it streams.

For each layer a pipeline ``curl URL | pigz -dc | tar -x`` (``gzip -dc`` when
pigz is missing) writes into its own snapshot directory, all layers
concurrently, so download, decompression and extraction overlap.  ``tar -v``
names every entry; the ones called ``.wh.*`` are turned into overlayfs form
when the layer's tar is done: ``.wh.NAME`` becomes a character device 0:0
called NAME, ``.wh..wh..opq`` becomes the xattr ``trusted.overlay.opaque=y``
on its directory.  (containerd does the same inside its Go tar reader.)

Why GNU tar and pigz: layer 2 of the cold-start image (589 MB gzip, 1.97 GB
of tar, 56,000 entries), read from local disk with a warm page cache, on the
2-core machine the benchmark was written on: ``pigz -dc > /dev/null`` 6.2 s,
``gzip -dc`` 9.3 s; ``pigz -dc | tar -x`` 8.7 s, ``pigz -dc |`` Python
``tarfile`` ``extractall`` 28.8 s.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
GUNZIP = ["pigz", "-dc"] if shutil.which("pigz") else ["gzip", "-dc"]
TAR = ["tar", "-x", "-v", "-f", "-", "--numeric-owner", "--same-owner", "--same-permissions",
       "--xattrs", "--xattrs-include=*"]


def get_json(host: str, port: int, path: str) -> dict:
    c = http.client.HTTPConnection(host, port, timeout=120)
    try:
        c.request("GET", path, headers={"Accept": ACCEPT})
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {r.status}")
        return json.loads(body)
    finally:
        c.close()


def apply_whiteouts(root: Path, names: list[str]) -> int:
    """Turn the OCI whiteout files ``names`` (relative to ``root``) into overlayfs whiteouts."""
    n = 0
    for name in names:
        rel = name.rstrip("/").removeprefix("./")
        d, _, base = rel.rpartition("/")
        parent = root / d
        os.unlink(root / rel)
        if base == ".wh..wh..opq":
            os.setxattr(parent, "trusted.overlay.opaque", b"y")
        else:
            os.mknod(parent / base[4:], stat.S_IFCHR | 0o000, os.makedev(0, 0))
        n += 1
    return n


class LayerPull(threading.Thread):
    """One layer: ``curl | gunzip | tar -x -v`` into ``dest``, then its whiteouts converted."""

    def __init__(self, url: str, dest: Path) -> None:
        super().__init__(daemon=True)
        self.url, self.dest = url, dest
        self.error: str | None = None
        self.whiteouts = 0
        self.done_s = 0.0

    def run(self) -> None:
        t0 = time.perf_counter()
        self.dest.mkdir(parents=True)
        curl = subprocess.Popen(["curl", "-sSf", "--http1.1", "-o", "-", self.url], stdout=subprocess.PIPE)
        unz = subprocess.Popen(GUNZIP, stdin=curl.stdout, stdout=subprocess.PIPE)
        tar = subprocess.Popen(TAR, stdin=unz.stdout, stdout=subprocess.PIPE, cwd=self.dest)
        assert curl.stdout and unz.stdout and tar.stdout
        curl.stdout.close()  # the children hold their own copies
        unz.stdout.close()
        wh = [ln.decode().rstrip("\n") for ln in tar.stdout if b"/.wh." in ln or ln.startswith(b".wh.")]
        codes = [p.wait() for p in (curl, unz, tar)]
        if any(codes):
            self.error = f"{self.url}: curl/gunzip/tar exited {codes}"
            return
        self.whiteouts = apply_whiteouts(self.dest, wh)
        self.done_s = time.perf_counter() - t0


def full_pull(host: str, port: int, repo: str, tag: str, dest: Path) -> dict:
    """Pull ``repo:tag`` from ``http://host:port`` into ``dest/0``, ``dest/1``, ...; return the layer dirs, bottom first."""
    t0 = time.perf_counter()
    manifest = get_json(host, port, f"/v2/{repo}/manifests/{tag}")
    t_manifest = time.perf_counter() - t0
    base = f"http://{host}:{port}/v2/{repo}/blobs/"
    config = threading.Thread(target=get_json, args=(host, port, f"/v2/{repo}/blobs/{manifest['config']['digest']}"))
    config.start()
    pulls = [LayerPull(base + d["digest"], dest / str(i)) for i, d in enumerate(manifest["layers"])]
    for p in pulls:
        p.start()
    for t in [*pulls, config]:
        t.join()
    errors = [p.error for p in pulls if p.error]
    if errors:
        raise RuntimeError("; ".join(errors))
    return {"dirs": [p.dest for p in pulls], "manifest_s": t_manifest, "layer_s": [p.done_s for p in pulls],
            "whiteouts": sum(p.whiteouts for p in pulls)}
