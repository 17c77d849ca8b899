#!/usr/bin/env python3
"""Gzip checkpoints (issue 18, item 3): how fast ``lazylayer index`` indexes a gzip layer, and what a span costs.

What it measures, on one real gzip layer (default: the largest layer of the
cold-start benchmark's gzip image, 589 MB of gzip, 1.97 GB of tar, written by
umoci; ``--blob`` takes any gzip file)
    * throughput, MB/s of compressed input: lazylayer's ``GzipIndexer`` (C:
      zlib's inflate with Z_BLOCK, a checkpoint every span; driven from Python
      in 1 MiB reads, output dropped), ``pigz -dc > /dev/null`` and
      ``gzip -dc > /dev/null``, interleaved, ``--runs`` times each, medians;
      the file is in the page cache throughout (read once before);
    * for each span (1, 2, 4 and 8 MiB of output between checkpoints): the
      checkpoints, their windows' bytes (raw and zstd -3 compressed, which is
      what an index would carry), and the median time of ``inflate_span`` over
      20 spans picked at random (seeded) - the cost of a read that misses.

    * ``lazylayer index`` itself (the command, in a fresh process and a fresh
      disk cache each run) of a one-image OCI layout holding just that layer,
      interleaved with the above: what the issue's target (>= 0.8x ``pigz
      -dc``) is about.  It also checks the blob's digest, walks the tar and
      hashes every span; the C indexer alone is the first row.

Nothing else should run meanwhile; the report says what the machine did besides.

Usage
    python -m benchmarks.gzindex [--blob FILE] [--runs 3] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.exit("run it from the repository root as a module: python -m benchmarks.gzindex --help")

from benchmarks.common import machine_line, package_version
from benchmarks.fetch import machine_busy

DEFAULT_DIR = Path("/var/tmp/lazylayer-coldstart/gzip/blobs/sha256")
MB = 10**6


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def index_once(path: Path, span: int) -> tuple[float, list, int]:
    from lazylayer.core.gzindex import GzipIndexer

    g = GzipIndexer(span)
    cps = []
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            g.decompress(chunk)
            cps += g.checkpoints()
    dt = time.perf_counter() - t0
    if not g.eof:
        raise SystemExit(f"{path}: not a complete gzip stream")
    return dt, cps, g.total_out


def one_layer_layout(blob: Path, work: Path) -> str:
    """An OCI layout of one image whose only layer is ``blob`` (hardlinked when it can be);
    ``oci:DIR:bench``.  The config's diff_id is the tar's sha256 (computed once)."""
    import hashlib
    import json

    layout = work / "layout"
    ref = f"oci:{layout}:bench"
    if (layout / "index.json").exists():
        return ref
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    tar = hashlib.sha256()
    d = zlib.decompressobj(31)
    with open(blob, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
            while chunk:
                tar.update(d.decompress(chunk))
                chunk = d.unused_data
                if d.eof and chunk:
                    d = zlib.decompressobj(31)
    target = blobs / digest.hexdigest()
    try:
        target.hardlink_to(blob)
    except OSError:
        shutil.copyfile(blob, target)

    def put(data: bytes, media: str) -> dict:
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return {"mediaType": media, "digest": f"sha256:{h}", "size": len(data)}

    config = put(json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [f"sha256:{tar.hexdigest()}"]}}).encode(),
                 "application/vnd.oci.image.config.v1+json")
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f"sha256:{digest.hexdigest()}",
             "size": blob.stat().st_size}
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": config, "layers": [layer]}).encode(),
                   "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "bench"}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    return ref


def index_command_once(ref: str, work: Path) -> float:
    """``lazylayer index REF`` in a fresh process, into a fresh disk cache; its wall time."""
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lazylayer", "index", ref, "--cache-dir", str(cache), "-q"], check=True)
    return time.perf_counter() - t0


def tool_version(tool: str) -> str:
    if not shutil.which(tool):
        return f"no {tool}"
    r = subprocess.run([tool, "--version"], capture_output=True, text=True)
    return ((r.stdout or r.stderr).strip().splitlines() or [tool])[0]


def tool_once(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blob", type=Path, help="a gzip file (default: the cold-start image's largest layer)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/lazylayer-gzindex-bench"),
                    help="where the one-layer layout and the command's disk cache go")
    a = ap.parse_args(argv)
    path = a.blob or max(DEFAULT_DIR.iterdir(), key=lambda p: p.stat().st_size, default=None)
    if path is None or not path.exists():
        raise SystemExit("no gzip blob: build the cold-start image first (python -m benchmarks.coldstart.run "
                         "--quick) or pass --blob FILE")
    size = path.stat().st_size
    with open(path, "rb") as f:  # into the page cache
        while f.read(8 << 20):
            pass
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    ref = one_layer_layout(path, work)
    busy0, t_start = machine_busy(), time.perf_counter()
    tools = {"pigz -dc": ["pigz", "-dc", str(path)], "gzip -dc": ["gzip", "-dc", str(path)]}
    tools = {k: v for k, v in tools.items() if shutil.which(v[0])}
    command = "`lazylayer index` (the command: digest, tar, span hashes; default span, 2 MiB)"
    times: dict[str, list[float]] = {"GzipIndexer alone (C, span 4 MiB)": [], command: [],
                                     **{k: [] for k in tools}}
    out_size = 0
    for run in range(a.runs):
        dt, _, out_size = index_once(path, 4 << 20)
        times["GzipIndexer alone (C, span 4 MiB)"].append(dt)
        times[command].append(index_command_once(ref, work))
        for name, cmd in tools.items():
            times[name].append(tool_once(cmd))
        log(f"run {run + 1}/{a.runs}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}

    import zstandard

    from lazylayer.core.gzindex import inflate_span

    blob = path.read_bytes()
    rows = []
    for span_mib in (1, 2, 4, 8):
        _, cps, total = index_once(path, span_mib << 20)
        windows = b"".join(c.window for c in cps)
        packed = sum(len(zstandard.ZstdCompressor(level=3).compress(c.window)) for c in cps)
        ends = [(c.input, c.output) for c in cps[1:]] + [(size, total)]
        rng = random.Random(span_mib)
        picks = rng.sample(range(len(cps)), min(20, len(cps)))
        costs, outs = [], []
        for k in picks:
            c, (end_in, end_out) = cps[k], ends[k]
            t0 = time.perf_counter()
            inflate_span(c, blob[c.input:end_in], end_out - c.output)
            costs.append(time.perf_counter() - t0)
            outs.append(end_out - c.output)
        rows.append((span_mib, len(cps), len(windows), packed, statistics.median(costs), statistics.median(outs)))
    busy = machine_busy() - busy0
    wall = time.perf_counter() - t_start

    pigz = med.get("pigz -dc")
    lines = ["### Gzip checkpoints: indexing a gzip layer, and the cost of a span", "",
             f"Command: `python -m benchmarks.gzindex {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             machine_line(), f"- lazylayer {package_version('lazylayer')} (zlib {zlib.ZLIB_RUNTIME_VERSION}); "
             f"{tool_version('pigz')}; {tool_version('gzip')}",
             f"- Blob: `{path.name[:12]}…`, {size:,} B of gzip, {out_size:,} B inflated; in the page cache.",
             f"- The machine was busy {busy:.1f} CPU-s over the run's {wall:.1f} s, the run's own work included "
             "(one thread at a time: anything near the wall time is the run itself).", "",
             "| what | runs, s | median s | MB/s of gzip | vs `pigz -dc` |", "|---|---|---:|---:|---:|"]
    for name, ts in times.items():
        ratio = f"{pigz / med[name]:.2f}x" if pigz else "—"
        lines.append(f"| {name} | {', '.join(f'{t:.2f}' for t in ts)} | {med[name]:.2f} | {size / med[name] / MB:.0f} "
                     f"| {ratio} |")
    lines += ["", "| span (output between checkpoints) | checkpoints | windows, raw | windows, zstd -3 | "
              "windows / gzip bytes | inflate one span (median of 20) | its output (median) |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for span_mib, n, raw, packed, cost, outn in rows:
        lines.append(f"| {span_mib} MiB | {n:,} | {raw / MB:.1f} MB | {packed / MB:.1f} MB | {packed / size:.1%} | "
                     f"{cost * 1e3:.1f} ms | {outn / MB:.1f} MB |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
